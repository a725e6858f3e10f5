//! Store traits (what the domain needs) and their implementations: Redis and
//! memory for affinities, counters and events; sea-orm for the relational
//! side (`crate::db`). The traits carry only domain types, so one behaviour
//! suite runs against every backend.

pub mod memory;
pub mod redis;

use std::collections::HashMap;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::domain::affinity::events::AffinityEvent;
use crate::domain::affinity::{
    Affinity, AffinityKey, AffinityRecord, AffinityWrite, IndexRef, InvalidationGuard, Page, SetResult,
};
use crate::error::StoreError;

/// Most entries one store call reads or deletes at once; bigger jobs are
/// split so neither Redis nor a reply is ever held long.
pub const BATCH: usize = 500;

/// Where affinities live. Writes are atomic per entry across instances;
/// indexes are kept in step with every write and verified on every read.
#[async_trait]
pub trait AffinityStore: Send + Sync + 'static {
    /// "redis" or "memory".
    fn storage_type(&self) -> &'static str;

    /// The live value of `key` at `now` (epoch seconds).
    async fn get(&self, key: &AffinityKey, now: f64) -> Result<Option<AffinityRecord>, StoreError>;

    /// Applies [`crate::domain::affinity::apply_write`] atomically, stores the
    /// result with the write's TTL and indexes it.
    async fn set(&self, key: &AffinityKey, write: &AffinityWrite, now: f64) -> Result<SetResult, StoreError>;

    /// Deletes `key` if the guards match its value, atomically; returns the
    /// deleted value.
    async fn invalidate(
        &self,
        key: &AffinityKey,
        guard: &InvalidationGuard,
    ) -> Result<Option<AffinityRecord>, StoreError>;

    /// Every live affinity in any of the indexes, each verified against its
    /// stored value. Costs the size of those indexes, not of the keyspace.
    async fn list_indexed(&self, indexes: &[IndexRef], now: f64) -> Result<Vec<Affinity>, StoreError>;

    /// Live affinities by expiry rank (newest expiry first), from `offset`,
    /// at most `limit`. Costs O(log n + limit).
    async fn page(&self, offset: u64, limit: u64, now: f64) -> Result<Page, StoreError>;

    /// Live entries (from the expiry index).
    async fn count_live(&self, now: f64) -> Result<u64, StoreError>;

    /// Deletes these entries where the guard still matches; with `dry_run`
    /// only counts those that would go. Returns the exact number deleted.
    async fn delete_many(
        &self,
        keys: &[AffinityKey],
        guard: &InvalidationGuard,
        dry_run: bool,
    ) -> Result<u64, StoreError>;

    /// Deletes every affinity (in bounded batches) and the indexes; with
    /// `dry_run` only counts. Returns the exact number of entries deleted.
    async fn clear_all(&self, dry_run: bool) -> Result<u64, StoreError>;

    /// Brings the indexes in line with the entries: adds entries written by
    /// others (Aether) and drops members whose entry is gone. Safe to call
    /// from every instance; on Redis one instance at a time does the work.
    /// Returns how many entries were newly indexed.
    async fn reconcile(&self, now: f64) -> Result<u64, StoreError>;
}

/// Counters shared by every instance.
#[async_trait]
pub trait CounterStore: Send + Sync + 'static {
    /// Adds the deltas.
    async fn add(&self, deltas: &[(String, i64)]) -> Result<(), StoreError>;

    /// Every counter.
    async fn load(&self) -> Result<HashMap<String, i64>, StoreError>;
}

/// Fan-out of affinity events to every instance.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Sends an event to every instance's watchers.
    async fn publish(&self, event: &AffinityEvent) -> Result<(), StoreError>;

    /// This instance's feed of every event. A receiver that falls more than
    /// the channel capacity behind gets `Lagged`.
    fn subscribe(&self) -> broadcast::Receiver<AffinityEvent>;
}

/// Something whose reachability decides the service's health.
#[async_trait]
pub trait HealthProbe: Send + Sync + 'static {
    /// Store name for logs ("redis", "database").
    fn name(&self) -> &'static str;

    /// Ok when the store answers a trivial request in time.
    async fn probe(&self) -> Result<(), StoreError>;
}

/// Capacity of the per-instance event channel.
pub const EVENT_CHANNEL_CAPACITY: usize = 1024;
