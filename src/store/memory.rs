//! In-memory stores: the embedded default (one instance only), with the same
//! semantics as Redis: TTL expiry, indexes, counters, events.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{AffinityStore, CacheStore, CounterStore, EVENT_CHANNEL_CAPACITY, EventBus, UsageStore};
use crate::domain::affinity::events::AffinityEvent;
use crate::domain::affinity::usage::{BindingUsage, UsageCounters, UsageReport, UsageTotals};
use crate::domain::affinity::{
    Affinity, AffinityKey, AffinityRecord, AffinityWrite, IndexRef, InvalidationGuard, Page, SetResult, TargetKind,
    apply_write,
};
use crate::error::{StoreError, StoreKind};

struct Entry {
    record: AffinityRecord,
    /// Mirrors the Redis TTL: the entry is gone after this instant.
    evict_at: Instant,
}

/// Expiry as integer microseconds, so it orders totally.
fn expiry_rank(record: &AffinityRecord) -> i64 {
    (record.expire_at * 1e6) as i64
}

#[derive(Default)]
struct Entries {
    by_key: HashMap<AffinityKey, Entry>,
    by_expiry: BTreeSet<(i64, AffinityKey)>,
    indexes: HashMap<IndexRef, HashSet<AffinityKey>>,
    /// Switches counted per key: (count, end of the window).
    switches: HashMap<AffinityKey, (u64, Instant)>,
}

impl Entries {
    fn live(&self, key: &AffinityKey, now: f64, instant: Instant) -> Option<&Entry> {
        self.by_key
            .get(key)
            .filter(|e| instant < e.evict_at && e.record.is_live(now))
    }

    fn remove(&mut self, key: &AffinityKey) -> Option<Entry> {
        let entry = self.by_key.remove(key)?;
        self.by_expiry.remove(&(expiry_rank(&entry.record), key.clone()));
        for index in IndexRef::all_of(key, &entry.record) {
            if let Some(members) = self.indexes.get_mut(&index) {
                members.remove(key);
                if members.is_empty() {
                    self.indexes.remove(&index);
                }
            }
        }
        Some(entry)
    }

    fn insert(&mut self, key: &AffinityKey, record: AffinityRecord, evict_at: Instant) {
        self.remove(key);
        self.by_expiry.insert((expiry_rank(&record), key.clone()));
        for index in IndexRef::all_of(key, &record) {
            self.indexes.entry(index).or_default().insert(key.clone());
        }
        self.by_key.insert(key.clone(), Entry { record, evict_at });
    }

    /// Live entries, newest expiry first.
    fn newest_first(&self, now: f64, instant: Instant) -> impl Iterator<Item = (&AffinityKey, &Entry)> {
        let floor = (now * 1e6) as i64;
        self.by_expiry
            .iter()
            .rev()
            .take_while(move |(rank, _)| *rank >= floor)
            .filter_map(move |(_, key)| self.by_key.get(key).filter(|e| instant < e.evict_at).map(|e| (key, e)))
    }
}

/// Affinities in a process-local map, at most `max_entries` of them: a new
/// entry beyond the cap evicts the live entries that expire soonest.
pub struct MemoryAffinityStore {
    entries: Mutex<Entries>,
    max_entries: usize,
    evictions: AtomicU64,
}

/// The embedded default's cap.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

impl Default for MemoryAffinityStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES)
    }
}

impl MemoryAffinityStore {
    /// An empty store keeping at most `max_entries` (at least 1).
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: Mutex::default(),
            max_entries: max_entries.max(1),
            evictions: AtomicU64::new(0),
        }
    }

    /// Evicts the entries that expire soonest (never `keep`) until the store
    /// is within its cap; counts the live ones evicted.
    fn enforce_cap(&self, entries: &mut Entries, keep: &AffinityKey, instant: Instant) {
        while entries.by_key.len() > self.max_entries {
            let Some(victim) = entries.by_expiry.iter().map(|(_, k)| k).find(|k| *k != keep).cloned() else {
                return;
            };
            if entries.remove(&victim).is_some_and(|e| instant < e.evict_at) {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Entries>, StoreError> {
        // A poisoned lock means a panic mid-update: report it instead of
        // serving possibly half-written state.
        self.entries.lock().map_err(|_| poisoned())
    }
}

fn poisoned() -> StoreError {
    StoreError::Internal {
        store: StoreKind::Redis,
        detail: "memory store lock poisoned".into(),
    }
}

#[async_trait]
impl AffinityStore for MemoryAffinityStore {
    fn storage_type(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &AffinityKey, now: f64) -> Result<Option<AffinityRecord>, StoreError> {
        let entries = self.lock()?;
        Ok(entries.live(key, now, Instant::now()).map(|e| e.record.clone()))
    }

    async fn set(
        &self,
        key: &AffinityKey,
        write: &AffinityWrite,
        now: f64,
        allow_switch: bool,
    ) -> Result<SetResult, StoreError> {
        let mut entries = self.lock()?;
        let instant = Instant::now();
        let current = entries.live(key, now, instant).map(|e| &e.record);
        let result = apply_write(current, key, write, now, allow_switch);
        if result.outcome != crate::domain::affinity::SetOutcome::Refused {
            let evict_at = instant + write.ttl.max(Duration::from_millis(1));
            entries.insert(key, result.record.clone(), evict_at);
            self.enforce_cap(&mut entries, key, instant);
        }
        Ok(result)
    }

    async fn count_switch(&self, key: &AffinityKey, window: Duration) -> Result<u64, StoreError> {
        let mut entries = self.lock()?;
        let instant = Instant::now();
        // Ended windows go once the map outgrows the entries it guards.
        if entries.switches.len() > entries.by_key.len().max(1024) {
            entries.switches.retain(|_, (_, ends)| *ends > instant);
        }
        let slot = entries.switches.entry(key.clone()).or_insert((0, instant + window));
        if slot.1 <= instant {
            *slot = (0, instant + window);
        }
        slot.0 += 1;
        Ok(slot.0)
    }

    async fn referenced(&self, kind: TargetKind, _now: f64) -> Result<Vec<String>, StoreError> {
        let entries = self.lock()?;
        Ok(entries
            .indexes
            .keys()
            .filter_map(|index| match (kind, index) {
                (TargetKind::Provider, IndexRef::Provider(id))
                | (TargetKind::Endpoint, IndexRef::Endpoint(id))
                | (TargetKind::ProviderKey, IndexRef::ProviderKey(id))
                | (TargetKind::ApiKey, IndexRef::AffinityKey(id)) => Some(id.clone()),
                _ => None,
            })
            .collect())
    }

    fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
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
            .by_key
            .get(key)
            .is_some_and(|e| instant < e.evict_at && guard.matches(&e.record));
        Ok(if deletable {
            entries.remove(key).map(|e| e.record)
        } else {
            None
        })
    }

    async fn list_indexed(&self, indexes: &[IndexRef], now: f64) -> Result<Vec<Affinity>, StoreError> {
        let entries = self.lock()?;
        let instant = Instant::now();
        let keys: BTreeSet<&AffinityKey> = indexes
            .iter()
            .filter_map(|index| entries.indexes.get(index))
            .flatten()
            .collect();
        Ok(keys
            .into_iter()
            .filter_map(|key| {
                let entry = entries.live(key, now, instant)?;
                Some(Affinity {
                    key: key.clone(),
                    record: entry.record.clone(),
                })
            })
            .collect())
    }

    async fn page(&self, offset: u64, limit: u64, now: f64) -> Result<Page, StoreError> {
        let entries = self.lock()?;
        let instant = Instant::now();
        let total = entries.newest_first(now, instant).count() as u64;
        let affinities: Vec<Affinity> = entries
            .newest_first(now, instant)
            .skip(offset as usize)
            .take(limit as usize)
            .map(|(key, e)| Affinity {
                key: key.clone(),
                record: e.record.clone(),
            })
            .collect();
        let end = offset + affinities.len() as u64;
        Ok(Page {
            affinities,
            next_offset: (end < total).then_some(end),
            total,
        })
    }

    async fn count_live(&self, now: f64) -> Result<u64, StoreError> {
        let entries = self.lock()?;
        Ok(entries.newest_first(now, Instant::now()).count() as u64)
    }

    async fn delete_many(
        &self,
        keys: &[AffinityKey],
        guard: &InvalidationGuard,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        let mut entries = self.lock()?;
        let instant = Instant::now();
        let mut count = 0;
        for key in keys {
            let deletable = entries
                .by_key
                .get(key)
                .is_some_and(|e| instant < e.evict_at && guard.matches(&e.record));
            if deletable {
                count += 1;
                if !dry_run {
                    entries.remove(key);
                }
            }
        }
        Ok(count)
    }

    async fn clear_all(&self, dry_run: bool) -> Result<u64, StoreError> {
        let mut entries = self.lock()?;
        let instant = Instant::now();
        let count = entries.by_key.values().filter(|e| instant < e.evict_at).count() as u64;
        if !dry_run {
            *entries = Entries::default();
        }
        Ok(count)
    }

    async fn claim_pass(&self, _task: &str, _period: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn reconcile(&self, _now: f64) -> Result<u64, StoreError> {
        // Nobody else writes here; reconciling means dropping evicted entries.
        let mut entries = self.lock()?;
        let instant = Instant::now();
        let evicted: Vec<AffinityKey> = entries
            .by_key
            .iter()
            .filter(|(_, e)| instant >= e.evict_at)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &evicted {
            entries.remove(key);
        }
        Ok(0)
    }
}

/// Counters in a process-local map.
#[derive(Default)]
pub struct MemoryCounterStore {
    counters: Mutex<HashMap<String, i64>>,
}

#[async_trait]
impl CounterStore for MemoryCounterStore {
    async fn add(&self, deltas: &[(String, i64)]) -> Result<(), StoreError> {
        let mut counters = self.counters.lock().map_err(|_| poisoned())?;
        for (name, delta) in deltas {
            *counters.entry(name.clone()).or_default() += delta;
        }
        Ok(())
    }

    async fn load(&self) -> Result<HashMap<String, i64>, StoreError> {
        Ok(self.counters.lock().map_err(|_| poisoned())?.clone())
    }
}

/// Events within this process.
pub struct MemoryEventBus {
    sender: broadcast::Sender<AffinityEvent>,
}

impl Default for MemoryEventBus {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(EVENT_CHANNEL_CAPACITY).0,
        }
    }
}

#[async_trait]
impl EventBus for MemoryEventBus {
    async fn publish(&self, events: &[AffinityEvent]) -> Result<(), StoreError> {
        for event in events {
            // No receivers is fine: nobody is watching.
            let _ = self.sender.send(event.clone());
        }
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<AffinityEvent> {
        self.sender.subscribe()
    }
}

#[derive(Default)]
struct UsageState {
    totals: UsageTotals,
    /// Per binding: its usage and when the binding expires (epoch seconds).
    bindings: HashMap<AffinityKey, (BindingUsage, f64)>,
    /// Expired bindings are swept when the map reaches this size.
    sweep_at: usize,
}

/// Upstream usage in process-local maps.
#[derive(Default)]
pub struct MemoryUsageStore {
    state: Mutex<UsageState>,
}

#[async_trait]
impl UsageStore for MemoryUsageStore {
    async fn record(
        &self,
        report: &UsageReport,
        binding: Option<&AffinityRecord>,
        now: f64,
    ) -> Result<Option<BindingUsage>, StoreError> {
        let mut state = self.state.lock().map_err(|_| poisoned())?;
        state.totals.apply(report);
        let Some(binding) = binding else {
            return Ok(None);
        };
        if state.bindings.len() >= state.sweep_at {
            state.bindings.retain(|_, (_, expires)| *expires >= now);
            state.sweep_at = (state.bindings.len() * 2).max(1024);
        }
        let fresh = || BindingUsage {
            target: binding.target(),
            pinned_at: binding.created_at,
            counters: UsageCounters::default(),
            last_outcome: report.outcome,
            last_reported_at: now,
        };
        let (usage, expires) = state
            .bindings
            .entry(report.key.clone())
            .or_insert_with(|| (fresh(), binding.expire_at));
        if !usage.belongs_to(binding) {
            *usage = fresh();
        }
        usage.counters.apply(report);
        usage.last_outcome = report.outcome;
        usage.last_reported_at = now;
        *expires = binding.expire_at;
        Ok(Some(usage.clone()))
    }

    async fn totals(&self) -> Result<UsageTotals, StoreError> {
        Ok(self.state.lock().map_err(|_| poisoned())?.totals.clone())
    }

    async fn bindings(&self, affinities: &[Affinity]) -> Result<HashMap<AffinityKey, BindingUsage>, StoreError> {
        let state = self.state.lock().map_err(|_| poisoned())?;
        Ok(affinities
            .iter()
            .filter_map(|affinity| {
                let (usage, _) = state.bindings.get(&affinity.key)?;
                usage
                    .belongs_to(&affinity.record)
                    .then(|| (affinity.key.clone(), usage.clone()))
            })
            .collect())
    }
}

/// Cached values with the instant they expire.
type CacheEntries = HashMap<String, (String, Instant)>;

/// Aether's caches in a process-local map, with TTLs.
#[derive(Default)]
pub struct MemoryCache {
    entries: Mutex<CacheEntries>,
}

impl MemoryCache {
    /// The live entries (expired ones are dropped on the way).
    fn lock(&self) -> Result<MutexGuard<'_, CacheEntries>, StoreError> {
        let mut entries = self.entries.lock().map_err(|_| poisoned())?;
        let now = Instant::now();
        entries.retain(|_, (_, expires)| *expires > now);
        Ok(entries)
    }
}

#[async_trait]
impl CacheStore for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock()?.get(key).map(|(value, _)| value.clone()))
    }

    async fn set_ex(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        self.lock()?
            .insert(key.to_owned(), (value.to_owned(), Instant::now() + ttl));
        Ok(())
    }

    async fn delete(&self, keys: &[String], dry_run: bool) -> Result<u64, StoreError> {
        let mut entries = self.lock()?;
        let present = keys
            .iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .filter(|k| entries.contains_key(*k))
            .count();
        if !dry_run {
            for key in keys {
                entries.remove(key);
            }
        }
        Ok(present as u64)
    }

    async fn incr_with_ttl(&self, key: &str, ttl: Duration) -> Result<i64, StoreError> {
        let mut entries = self.lock()?;
        let current = entries
            .get(key)
            .and_then(|(value, _)| value.parse::<i64>().ok())
            .unwrap_or(0);
        let next = current + 1;
        entries.insert(key.to_owned(), (next.to_string(), Instant::now() + ttl));
        Ok(next)
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        Ok(self
            .lock()?
            .get(key)
            .map(|(_, expires)| expires.saturating_duration_since(Instant::now())))
    }

    async fn keys_with_prefix(&self, prefix: &str, max: usize) -> Result<Vec<String>, StoreError> {
        Ok(self
            .lock()?
            .keys()
            .filter(|k| k.starts_with(prefix))
            .take(max)
            .cloned()
            .collect())
    }

    async fn delete_prefix(&self, prefix: &str, dry_run: bool) -> Result<u64, StoreError> {
        let mut entries = self.lock()?;
        let before = entries.len();
        if dry_run {
            return Ok(entries.keys().filter(|k| k.starts_with(prefix)).count() as u64);
        }
        entries.retain(|k, _| !k.starts_with(prefix));
        Ok((before - entries.len()) as u64)
    }
}
