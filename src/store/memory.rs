//! In-memory affinity store: the embedded default (one instance only), with
//! the same semantics as Redis, TTL expiry included.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::domain::affinity::{AffinityKey, AffinityRecord, AffinityWrite, InvalidationGuard, SetResult, apply_write};
use crate::error::{StoreError, StoreKind};
use crate::store::AffinityStore;

struct Entry {
    record: AffinityRecord,
    /// Mirrors the Redis TTL: the entry is gone after this instant.
    evict_at: Instant,
}

/// Affinities in a process-local map.
#[derive(Default)]
pub struct MemoryAffinityStore {
    entries: Mutex<HashMap<AffinityKey, Entry>>,
}

impl MemoryAffinityStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<AffinityKey, Entry>>, StoreError> {
        // A poisoned lock means a panic mid-update: report it instead of
        // serving possibly half-written state.
        self.entries.lock().map_err(|_| StoreError::Internal {
            store: StoreKind::Redis,
            detail: "memory store lock poisoned".into(),
        })
    }
}

fn live(entry: &Entry, now: f64, instant: Instant) -> bool {
    instant < entry.evict_at && entry.record.is_live(now)
}

#[async_trait]
impl AffinityStore for MemoryAffinityStore {
    fn storage_type(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &AffinityKey, now: f64) -> Result<Option<AffinityRecord>, StoreError> {
        let entries = self.lock()?;
        let instant = Instant::now();
        Ok(entries
            .get(key)
            .filter(|e| live(e, now, instant))
            .map(|e| e.record.clone()))
    }

    async fn set(&self, key: &AffinityKey, write: &AffinityWrite, now: f64) -> Result<SetResult, StoreError> {
        let mut entries = self.lock()?;
        let instant = Instant::now();
        let current = entries.get(key).filter(|e| live(e, now, instant)).map(|e| &e.record);
        let result = apply_write(current, key, write, now);
        let evict_at = instant + write.ttl.max(Duration::from_millis(1));
        entries.insert(
            key.clone(),
            Entry {
                record: result.record.clone(),
                evict_at,
            },
        );
        Ok(result)
    }

    async fn invalidate(
        &self,
        key: &AffinityKey,
        guard: &InvalidationGuard,
    ) -> Result<Option<AffinityRecord>, StoreError> {
        let mut entries = self.lock()?;
        let instant = Instant::now();
        // Like Redis: any value still present may be deleted, expired or not.
        let deletable = entries
            .get(key)
            .is_some_and(|e| instant < e.evict_at && guard.matches(&e.record));
        Ok(if deletable {
            entries.remove(key).map(|e| e.record)
        } else {
            None
        })
    }
}
