//! A short-lived, bounded, in-process cache of rows by id, for the small
//! reference tables that name an affinity's upstream side (providers,
//! endpoints, provider keys, global models).
//!
//! Why: every operator listing names its entries, and those names come from
//! a handful of rows that change rarely and are shared by every entry. Read
//! through this cache, a page or a user's list needs no query for them most
//! of the time. An id that was asked for and not found is remembered too, so
//! a binding to a deleted row does not cost a query per listing.
//!
//! The price is staleness: a rename or a rotated provider key shows in
//! listings at most one TTL later. The cache holds at most [`MAX_ENTRIES`]
//! ids and is emptied when full, so memory stays bounded whatever the ids.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Ids one cache holds at most; it is emptied when a store would exceed it.
pub const MAX_ENTRIES: usize = 10_000;

/// Rows of one table by id, each kept for `ttl` after it was read.
pub struct NameCache<V> {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Option<V>)>>,
}

impl<V: Clone> NameCache<V> {
    /// An empty cache whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Splits `ids` into the rows known (found or known missing) and still
    /// fresh, and the ids to read.
    pub fn split(&self, ids: &[String]) -> (Vec<(String, V)>, Vec<String>) {
        let now = Instant::now();
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut known = Vec::new();
        let mut missing = Vec::new();
        for id in ids {
            match entries.get(id) {
                Some((read_at, row)) if now.duration_since(*read_at) < self.ttl => {
                    if let Some(row) = row {
                        known.push((id.clone(), row.clone()));
                    }
                }
                _ => missing.push(id.clone()),
            }
        }
        (known, missing)
    }

    /// Remembers what a read of `asked` found (`found` by id); the ids not
    /// found are remembered as missing.
    pub fn store(&self, asked: &[String], found: &[(String, V)]) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() + asked.len() > MAX_ENTRIES {
            entries.clear();
        }
        for id in asked.iter().take(MAX_ENTRIES) {
            entries.insert(id.clone(), (now, None));
        }
        for (id, row) in found {
            if let Some(entry) = entries.get_mut(id) {
                entry.1 = Some(row.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn found_and_missing_ids_are_remembered_until_the_ttl() {
        let cache = NameCache::new(Duration::from_secs(60));
        let (known, missing) = cache.split(&ids(&["a", "b"]));
        assert!(known.is_empty());
        assert_eq!(missing, ids(&["a", "b"]));
        cache.store(&missing, &[("a".to_owned(), 1)]);
        let (known, missing) = cache.split(&ids(&["a", "b", "c"]));
        assert_eq!(known, vec![("a".to_owned(), 1)]);
        assert_eq!(missing, ids(&["c"]), "b is known to be missing");

        let expired = NameCache::new(Duration::ZERO);
        expired.store(&ids(&["a"]), &[("a".to_owned(), 1)]);
        assert_eq!(expired.split(&ids(&["a"])).1, ids(&["a"]), "a zero TTL caches nothing");
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache: NameCache<u8> = NameCache::new(Duration::from_secs(60));
        let many: Vec<String> = (0..MAX_ENTRIES + 5).map(|i| i.to_string()).collect();
        cache.store(&many[..MAX_ENTRIES], &[]);
        cache.store(&many[MAX_ENTRIES..], &[]);
        let entries = cache.entries.lock().expect("lock").len();
        assert_eq!(entries, 5, "emptied when full, then filled with the new ids");
        cache.store(&many, &[]);
        assert!(cache.entries.lock().expect("lock").len() <= MAX_ENTRIES);
    }
}
