//! Store traits (what the domain needs) and their implementations: Redis and
//! memory for affinities, counters and events; sea-orm for the relational
//! side (`crate::db`). The traits carry only domain types, so one behaviour
//! suite runs against every backend.

pub mod memory;
pub mod redis;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::domain::affinity::events::AffinityEvent;
use crate::domain::affinity::usage::{BindingUsage, UsageReport, UsageTotals};
use crate::domain::affinity::{
    Affinity, AffinityKey, AffinityRecord, AffinityWrite, IndexRef, InvalidationGuard, Page, SetResult, TargetKind,
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
    /// result with the write's TTL and indexes it. Without `allow_switch` a
    /// write that would switch a live entry's target writes nothing.
    async fn set(
        &self,
        key: &AffinityKey,
        write: &AffinityWrite,
        now: f64,
        allow_switch: bool,
    ) -> Result<SetResult, StoreError>;

    /// Counts one switch of `key` in the current window (which starts with
    /// the first switch counted and lasts `window`); returns the count
    /// including this one. Shared by every instance.
    async fn count_switch(&self, key: &AffinityKey, window: std::time::Duration) -> Result<u64, StoreError>;

    /// The ids of `kind` that live entries point at (a superset: entries
    /// removed since may still be counted). Costs the number of such ids.
    async fn referenced(&self, kind: TargetKind, now: f64) -> Result<Vec<String>, StoreError>;

    /// Entries evicted to keep the store within its cap (memory only).
    fn evictions(&self) -> u64 {
        0
    }

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

    /// Claims this period's pass of a periodic `task` (a name such as
    /// `target_watch`) for this instance: true when no instance ran one in
    /// most of the last `period`. Every instance ticks; on a shared store
    /// one of them does each pass. The memory store is one process's own
    /// and always says yes.
    async fn claim_pass(&self, task: &str, period: Duration) -> Result<bool, StoreError>;
}

/// Counters shared by every instance.
#[async_trait]
pub trait CounterStore: Send + Sync + 'static {
    /// Adds the deltas.
    async fn add(&self, deltas: &[(String, i64)]) -> Result<(), StoreError>;

    /// Every counter.
    async fn load(&self) -> Result<HashMap<String, i64>, StoreError>;
}

/// Upstream usage reported by the data plane: cluster-wide totals and each
/// live binding's own.
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Adds the report to the totals; with `binding` (the live entry, which
    /// points at the report's target), to that binding's totals too, which
    /// restart whenever it was pinned anew and expire with it. Returns the
    /// binding's totals after the report.
    async fn record(
        &self,
        report: &UsageReport,
        binding: Option<&AffinityRecord>,
        now: f64,
    ) -> Result<Option<BindingUsage>, StoreError>;

    /// Every total.
    async fn totals(&self) -> Result<UsageTotals, StoreError>;

    /// The usage of these bindings, for their current pin only.
    async fn bindings(&self, affinities: &[Affinity]) -> Result<HashMap<AffinityKey, BindingUsage>, StoreError>;
}

/// Fan-out of affinity events to every instance.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Sends events to every instance's watchers, in order.
    async fn publish(&self, events: &[AffinityEvent]) -> Result<(), StoreError>;

    /// This instance's feed of every event. A receiver that falls more than
    /// the channel capacity behind gets `Lagged`.
    fn subscribe(&self) -> broadcast::Receiver<AffinityEvent>;
}

/// A plain key-value cache with TTLs: Aether's user and model-mapping caches
/// in Redis (keys exactly as Aether names them), or memory. Prefix
/// operations work in bounded batches (SCAN, never KEYS) and treat the
/// prefix literally (glob characters never widen them).
#[async_trait]
pub trait CacheStore: Send + Sync + 'static {
    /// The value at `key`.
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Sets `key` to `value` for `ttl` (SETEX).
    async fn set_ex(&self, key: &str, value: &str, ttl: std::time::Duration) -> Result<(), StoreError>;

    /// Deletes keys; returns how many existed. With `dry_run`, only counts.
    async fn delete(&self, keys: &[String], dry_run: bool) -> Result<u64, StoreError>;

    /// INCR then EXPIRE (Aether's hit counters); returns the new value.
    async fn incr_with_ttl(&self, key: &str, ttl: std::time::Duration) -> Result<i64, StoreError>;

    /// Time left on `key`; None when missing or without expiry.
    async fn ttl(&self, key: &str) -> Result<Option<std::time::Duration>, StoreError>;

    /// Keys starting with `prefix`, at most `max` of them.
    async fn keys_with_prefix(&self, prefix: &str, max: usize) -> Result<Vec<String>, StoreError>;

    /// Counts (or deletes, unless `dry_run`) every key starting with
    /// `prefix`; returns the exact number.
    async fn delete_prefix(&self, prefix: &str, dry_run: bool) -> Result<u64, StoreError>;
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
