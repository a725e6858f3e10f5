//! Store traits (what the domain needs) and their implementations: Redis and
//! memory for affinities, sea-orm for the relational side. The traits carry
//! only domain types, so one behaviour suite runs against every backend.

pub mod memory;
pub mod redis;

use async_trait::async_trait;

use crate::domain::affinity::{AffinityKey, AffinityRecord, AffinityWrite, InvalidationGuard, SetResult};
use crate::error::StoreError;

/// Where affinities live. Every method is atomic with respect to other
/// instances sharing the store.
#[async_trait]
pub trait AffinityStore: Send + Sync + 'static {
    /// "redis" or "memory".
    fn storage_type(&self) -> &'static str;

    /// The live value of `key` at `now` (epoch seconds); expired values read
    /// as absent.
    async fn get(&self, key: &AffinityKey, now: f64) -> Result<Option<AffinityRecord>, StoreError>;

    /// Applies [`crate::domain::affinity::apply_write`] atomically and stores
    /// the result with the write's TTL.
    async fn set(&self, key: &AffinityKey, write: &AffinityWrite, now: f64) -> Result<SetResult, StoreError>;

    /// Deletes `key` if the guards match its live value, atomically; returns
    /// the deleted value.
    async fn invalidate(
        &self,
        key: &AffinityKey,
        guard: &InvalidationGuard,
    ) -> Result<Option<AffinityRecord>, StoreError>;
}

/// Something whose reachability decides the service's health.
#[async_trait]
pub trait HealthProbe: Send + Sync + 'static {
    /// Store name for logs ("redis", "database").
    fn name(&self) -> &'static str;

    /// Ok when the store answers a trivial request in time.
    async fn probe(&self) -> Result<(), StoreError>;
}
