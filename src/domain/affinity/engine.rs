//! The affinity use cases: the data plane (get / set / invalidate) and the
//! operator calls of Aether's cache-monitoring API, over the store traits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::events::{AffinityEvent, EventKind, EventPublisher, InvalidationReason, decision};
use super::listing::{self, AffinityDetail, PageToken, ResolvedUser};
use super::stats::{AffinityStats, CounterBuffer, names};
use super::usage::{BindingUsage, UpstreamOutcome, UsageReport};
use super::{
    Affinity, AffinityKey, AffinityRecord, AffinityTarget, AffinityWrite, IndexRef, InvalidationGuard, SetOutcome,
    TargetKind, now_epoch,
};
use crate::config::MAX_AFFINITY_TTL;
use crate::domain::crypto::KeyCipher;
use crate::domain::directory::{ClientKey, Directory, MatchKind};
use crate::domain::validate;
use crate::error::{Error, Result, StoreError};
use crate::store::{AffinityStore, CounterStore, EventBus, UsageStore};

/// The flapping guard counts switches per binding over this window.
const SWITCH_WINDOW: Duration = Duration::from_secs(60);

/// Most switches per minute a policy may allow (beyond, the guard is moot).
pub const MAX_SWITCHES_PER_MINUTE: u32 = 10_000;

/// Most ids of each kind a free-text keyword may expand to.
const KEYWORD_HIT_LIMIT: u64 = 1000;

/// The target watcher's name for [`AffinityStore::claim_pass`].
const TARGET_WATCH_TASK: &str = "target_watch";

/// Settings the engine reports and runs with.
#[derive(Clone, Debug)]
pub struct AffinitySettings {
    /// TTL when a write gives none.
    pub default_ttl: Duration,
    /// How often the reconciler runs.
    pub reconcile_interval: Duration,
    /// This instance, in events.
    pub instance_id: String,
    /// SetAffinity's default: write only when the outcome is a success.
    pub write_only_on_success: bool,
    /// SetAffinity's default flapping guard (switches per binding per
    /// minute; 0: no cap).
    pub max_switches_per_minute: u32,
    /// How often bindings to disabled or deleted targets are dropped.
    pub target_watch_interval: Duration,
    /// The in-memory store's cap (0 on Redis).
    pub memory_max_affinities: u64,
}

/// SetAffinity's per-call overrides of the write policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WritePolicy {
    /// Write even after a failed upstream request.
    pub write_on_failure: Option<bool>,
    /// Switches allowed per binding per minute (0: no cap).
    pub max_switches_per_minute: Option<u32>,
}

/// What SetAffinity decided.
#[derive(Clone, Debug, PartialEq)]
pub struct SetDecision {
    /// What happened to the entry.
    pub outcome: SetOutcome,
    /// The entry now stored (for a refusal: the live one left in place).
    pub record: Option<AffinityRecord>,
    /// The replaced value, on a switch.
    pub previous: Option<AffinityRecord>,
    /// Why (a [`decision`] constant).
    pub reason: &'static str,
}

/// What RecordUpstreamUsage decided.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageDecision {
    /// The binding's totals, when the live binding points at the reporter.
    pub binding: Option<BindingUsage>,
    /// The binding removed by a failure outcome.
    pub invalidated: Option<AffinityRecord>,
    /// Why (a [`decision`] constant or an invalidation reason name).
    pub reason: &'static str,
}

/// The stores the engine works over.
#[derive(Clone)]
pub struct AffinityStores {
    /// Entries and indexes.
    pub affinities: Arc<dyn AffinityStore>,
    /// Shared counters.
    pub counters: Arc<dyn CounterStore>,
    /// Event fan-out.
    pub events: Arc<dyn EventBus>,
    /// Aether's tables.
    pub directory: Arc<dyn Directory>,
    /// Decrypts stored keys for masking.
    pub cipher: Arc<KeyCipher>,
    /// Upstream usage reports.
    pub usage: Arc<dyn UsageStore>,
}

/// Aether's scheduling switches from `system_configs` (its defaults when unset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulingModes {
    /// `scheduling_mode`: cache_affinity or fixed_order.
    pub scheduling_mode: String,
    /// `provider_priority_mode`: provider or global_key.
    pub provider_priority_mode: String,
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AffinityListing {
    /// Entries, newest expiry first.
    pub details: Vec<AffinityDetail>,
    /// Token for the next page, if any.
    pub next_page_token: Option<String>,
    /// Entries matching the filter.
    pub total: u64,
    /// The user the keyword resolved to.
    pub matched_user_id: Option<String>,
    /// The API key the keyword matched.
    pub matched_api_key_id: Option<String>,
    /// Upstream usage of the listed bindings that have any.
    pub usage: HashMap<AffinityKey, BindingUsage>,
}

/// A user's affinities.
#[derive(Clone, Debug, PartialEq)]
pub struct UserAffinities {
    /// Who.
    pub user: ResolvedUser,
    /// Their live affinities, newest expiry first.
    pub details: Vec<AffinityDetail>,
    /// Distinct endpoints among them.
    pub total_endpoints: usize,
    /// Upstream usage of the bindings that have any.
    pub usage: HashMap<AffinityKey, BindingUsage>,
}

/// The affinity use cases.
#[derive(Clone)]
pub struct AffinityEngine {
    stores: AffinityStores,
    settings: AffinitySettings,
    pending: Arc<CounterBuffer>,
    /// Held shared by a stats read and alone by a flush, so a read never
    /// sees deltas that left the buffer but have not reached the store
    /// (a Prometheus counter would seem to go down).
    flush_gate: Arc<tokio::sync::RwLock<()>>,
    publisher: EventPublisher,
}

/// The per-key index of each client key.
fn key_indexes(keys: &[ClientKey]) -> Vec<IndexRef> {
    keys.iter().map(|k| IndexRef::AffinityKey(k.key.id.clone())).collect()
}

fn newest_first(affinities: &mut [Affinity]) {
    affinities.sort_by(|a, b| {
        b.record
            .expire_at
            .total_cmp(&a.record.expire_at)
            .then_with(|| a.key.cmp(&b.key))
    });
}

impl AffinityEngine {
    /// An engine over `stores`; starts its event publisher (needs a Tokio
    /// runtime).
    pub fn new(stores: AffinityStores, settings: AffinitySettings) -> Self {
        let publisher = EventPublisher::start(stores.events.clone());
        Self {
            stores,
            settings,
            pending: Arc::new(CounterBuffer::default()),
            flush_gate: Arc::default(),
            publisher,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &AffinitySettings {
        &self.settings
    }

    /// "redis" or "memory".
    pub fn storage_type(&self) -> &'static str {
        self.stores.affinities.storage_type()
    }

    /// Queues a decision for every instance's watchers, with the caller's
    /// trace id.
    fn publish(
        &self,
        kind: EventKind,
        key: &AffinityKey,
        record: Option<AffinityRecord>,
        previous: Option<AffinityRecord>,
        reason: Option<InvalidationReason>,
        decision_reason: &str,
    ) {
        self.publisher.send(AffinityEvent {
            kind,
            key: key.clone(),
            record,
            previous,
            reason,
            decision_reason: decision_reason.to_owned(),
            trace_id: crate::trace::current_trace_id(),
            occurred_at: now_epoch(),
            instance_id: self.settings.instance_id.clone(),
        });
    }

    /// The live affinity for `key`; counts a hit or a miss.
    pub async fn get(&self, key: &AffinityKey) -> Result<Affinity> {
        match self.stores.affinities.get(key, now_epoch()).await? {
            Some(record) => {
                self.pending.add(names::CACHE_HITS, 1);
                self.publish(
                    EventKind::Followed,
                    key,
                    Some(record.clone()),
                    None,
                    None,
                    decision::LIVE_BINDING,
                );
                Ok(Affinity {
                    key: key.clone(),
                    record,
                })
            }
            None => {
                self.pending.add(names::CACHE_MISSES, 1);
                self.publish(EventKind::Missed, key, None, None, None, decision::NO_LIVE_BINDING);
                Err(Error::not_found("affinity", key.redis_key()))
            }
        }
    }

    /// Validates an upstream target's ids.
    fn target(target: AffinityTarget) -> Result<AffinityTarget> {
        Ok(AffinityTarget {
            provider_id: validate::key_part("provider_id", &target.provider_id)?,
            endpoint_id: validate::key_part("endpoint_id", &target.endpoint_id)?,
            key_id: validate::key_part("key_id", &target.key_id)?,
        })
    }

    /// Counts and streams a refused write.
    fn refuse(&self, key: &AffinityKey, live: Option<AffinityRecord>, reason: &'static str) -> SetDecision {
        self.pending.add(&format!("{}{reason}", names::REFUSALS_BY_REASON), 1);
        self.publish(EventKind::Refused, key, live.clone(), None, None, reason);
        SetDecision {
            outcome: SetOutcome::Refused,
            record: live,
            previous: None,
            reason,
        }
    }

    /// Records a write after an upstream request with `outcome` (None: a
    /// success), under the server's write policy with the call's overrides:
    /// a failure writes nothing unless allowed, and a binding that already
    /// switched as often as allowed this minute keeps its target.
    pub async fn set(
        &self,
        key: &AffinityKey,
        target: AffinityTarget,
        model_name: &str,
        ttl: Option<Duration>,
        outcome: Option<UpstreamOutcome>,
        policy: WritePolicy,
    ) -> Result<SetDecision> {
        let target = Self::target(target)?;
        let max_switches = policy
            .max_switches_per_minute
            .unwrap_or(self.settings.max_switches_per_minute);
        if max_switches > MAX_SWITCHES_PER_MINUTE {
            return Err(Error::invalid(
                "policy.max_switches_per_minute",
                format!("must be 0..{MAX_SWITCHES_PER_MINUTE}"),
            ));
        }
        let model_name = if model_name.is_empty() {
            key.global_model_id.clone()
        } else {
            validate::key_part("model_name", model_name)?
        };
        let ttl = ttl.unwrap_or(self.settings.default_ttl);
        if ttl < Duration::from_secs(1) || ttl > MAX_AFFINITY_TTL {
            return Err(Error::invalid("ttl", "must be between 1s and 7 days"));
        }
        let write = AffinityWrite {
            target,
            model_name,
            ttl,
        };
        let write_on_failure = policy.write_on_failure.unwrap_or(!self.settings.write_only_on_success);
        let failed = outcome.is_some_and(|o| o != UpstreamOutcome::Success);
        if failed && !write_on_failure {
            let live = self.stores.affinities.get(key, now_epoch()).await?;
            return Ok(self.refuse(key, live, decision::UPSTREAM_FAILURE));
        }
        let store = &self.stores.affinities;
        let mut result = store.set(key, &write, now_epoch(), max_switches == 0).await?;
        if result.outcome == SetOutcome::Refused {
            // A switch wants through: it takes one of the binding's switches
            // this minute, if any is left.
            if store.count_switch(key, SWITCH_WINDOW).await? > u64::from(max_switches) {
                return Ok(self.refuse(key, Some(result.record), decision::FLAPPING_GUARD));
            }
            result = store.set(key, &write, now_epoch(), true).await?;
        }
        let reason = match result.outcome {
            SetOutcome::Created => {
                self.pending.add(names::TOTAL_AFFINITIES, 1);
                decision::NO_LIVE_BINDING
            }
            SetOutcome::Refreshed => decision::SAME_TARGET,
            SetOutcome::Switched { provider_changed } => {
                self.pending.add(names::KEY_SWITCHES, 1);
                if provider_changed {
                    self.pending.add(names::PROVIDER_SWITCHES, 1);
                }
                decision::TARGET_CHANGED
            }
            SetOutcome::Refused => decision::FLAPPING_GUARD,
        };
        self.publish(
            result.outcome.into(),
            key,
            Some(result.record.clone()),
            result.previous.clone(),
            None,
            reason,
        );
        Ok(SetDecision {
            outcome: result.outcome,
            record: Some(result.record),
            previous: result.previous,
            reason,
        })
    }

    /// RecordUpstreamUsage: adds the report to the totals and, when the live
    /// binding points at the reporting target, to the binding's own; a
    /// failure outcome then drops that binding, guarded by endpoint and key.
    pub async fn record_usage(&self, report: UsageReport) -> Result<UsageDecision> {
        let report = UsageReport {
            target: Self::target(report.target)?,
            ..report
        }
        .validate()?;
        let now = now_epoch();
        let live = self.stores.affinities.get(&report.key, now).await?;
        let binding = live.filter(|record| record.target() == report.target);
        let drop_reason = report.outcome.invalidation_reason().filter(|_| binding.is_some());
        let guard = InvalidationGuard {
            endpoint_id: Some(report.target.endpoint_id.clone()),
            key_id: Some(report.target.key_id.clone()),
            provider_id: None,
        };
        let dropped = async {
            match drop_reason {
                Some(reason) => self.invalidate(&report.key, &guard, reason).await,
                None => Ok(None),
            }
        };
        let recorded = async {
            self.stores
                .usage
                .record(&report, binding.as_ref(), now)
                .await
                .map_err(Error::from)
        };
        let (usage, invalidated) = futures::future::try_join(recorded, dropped).await?;
        let reason = match (report.outcome.invalidation_reason(), &invalidated) {
            (Some(dropped_for), Some(_)) => dropped_for.as_str(),
            (Some(_), None) => decision::BINDING_MOVED,
            (None, _) if report.outcome == UpstreamOutcome::ClientError => decision::CLIENT_ERROR_KEEPS_BINDING,
            (None, _) => decision::SUCCESS_KEEPS_BINDING,
        };
        Ok(UsageDecision {
            binding: usage,
            invalidated,
            reason,
        })
    }

    /// The target watcher's periodic pass, run by one instance per
    /// interval: [`Self::drop_inactive_bindings`] when this instance claims
    /// the pass, else None (another instance ran it).
    pub async fn watch_targets(&self) -> Result<Option<HashMap<InvalidationReason, u64>>> {
        let period = self.settings.target_watch_interval;
        if !self.stores.affinities.claim_pass(TARGET_WATCH_TASK, period).await? {
            return Ok(None);
        }
        self.drop_inactive_bindings().await.map(Some)
    }

    /// One pass of the target watcher: every binding that points at a
    /// provider, endpoint, provider key or client API key (or its owner)
    /// that is disabled or deleted is dropped, guarded so a binding that
    /// moved meanwhile stays. Returns how many went, by reason.
    pub async fn drop_inactive_bindings(&self) -> Result<HashMap<InvalidationReason, u64>> {
        let mut dropped: HashMap<InvalidationReason, u64> = HashMap::new();
        for kind in TargetKind::ALL {
            let ids = self.stores.affinities.referenced(kind, now_epoch()).await?;
            for chunk in ids.chunks(crate::store::BATCH) {
                for (id, reason) in self.stores.directory.inactive_targets(kind, chunk).await? {
                    let affinities = self
                        .stores
                        .affinities
                        .list_indexed(&[kind.index(id.clone())], now_epoch())
                        .await?;
                    let count = self.delete_listed(&affinities, &kind.guard(&id), false, reason).await?;
                    if count > 0 {
                        tracing::info!(kind = kind.as_str(), %id, count, reason = reason.as_str(), "dropped bindings to an inactive target");
                        *dropped.entry(reason).or_default() += count;
                    }
                }
            }
        }
        Ok(dropped)
    }

    /// Deletes the entry when the guards match; returns the deleted value.
    pub async fn invalidate(
        &self,
        key: &AffinityKey,
        guard: &InvalidationGuard,
        reason: InvalidationReason,
    ) -> Result<Option<AffinityRecord>> {
        let deleted = self.stores.affinities.invalidate(key, guard).await?;
        if let Some(record) = &deleted {
            self.pending.invalidated(reason, 1);
            self.publish(
                EventKind::Invalidated,
                key,
                Some(record.clone()),
                None,
                Some(reason),
                reason.as_str(),
            );
        }
        Ok(deleted)
    }

    /// DeleteAffinity: deletes one entry only if pinned to `endpoint_id`.
    pub async fn delete_one(&self, key: &AffinityKey, endpoint_id: &str) -> Result<Affinity> {
        let guard = InvalidationGuard {
            endpoint_id: Some(validate::key_part("endpoint_id", endpoint_id)?),
            ..Default::default()
        };
        match self.invalidate(key, &guard, InvalidationReason::Admin).await? {
            Some(record) => Ok(Affinity {
                key: key.clone(),
                record,
            }),
            None => Err(Error::not_found("affinity", key.redis_key())),
        }
    }

    /// Aether's scheduling switches as stored in `system_configs`.
    pub async fn scheduling_modes(&self) -> Result<SchedulingModes> {
        let read = |key: &'static str, default: &'static str| async move {
            let value = self.stores.directory.system_config(key).await?;
            Ok::<_, Error>(value.as_ref().and_then(|v| v.as_str()).unwrap_or(default).to_owned())
        };
        Ok(SchedulingModes {
            scheduling_mode: read("scheduling_mode", "cache_affinity").await?,
            provider_priority_mode: read("provider_priority_mode", "provider").await?,
        })
    }

    /// The shared counters plus this instance's unflushed deltas, and the
    /// upstream usage totals.
    pub async fn stats(&self) -> Result<AffinityStats> {
        let _no_flush = self.flush_gate.read().await;
        let (stored, active, usage) = futures::future::try_join3(
            self.stores.counters.load(),
            self.stores.affinities.count_live(now_epoch()),
            self.stores.usage.totals(),
        )
        .await?;
        let mut stats = AffinityStats::from_counters(self.storage_type(), active, &stored, &self.pending.snapshot());
        stats.upstream = usage;
        stats.evictions = self.stores.affinities.evictions();
        stats.events_dropped = self.publisher.dropped();
        Ok(stats)
    }

    /// Adds pending counter deltas to the shared store; on failure they are
    /// kept for the next flush.
    pub async fn flush_counters(&self) -> std::result::Result<(), StoreError> {
        let _flushing = self.flush_gate.write().await;
        let deltas = self.pending.take();
        if deltas.is_empty() {
            return Ok(());
        }
        let result = self.stores.counters.add(&deltas).await;
        if result.is_err() {
            self.pending.restore(deltas);
        }
        result
    }

    /// Runs one reconcile pass (see [`AffinityStore::reconcile`]).
    pub async fn reconcile(&self) -> std::result::Result<u64, StoreError> {
        self.stores.affinities.reconcile(now_epoch()).await
    }

    /// This instance's feed of events from every instance.
    pub fn subscribe(&self) -> broadcast::Receiver<AffinityEvent> {
        self.stores.events.subscribe()
    }

    /// Names, masked keys and each binding's upstream usage, read side by
    /// side. The client keys in `known` (with owners) are not read again.
    async fn enrich(
        &self,
        affinities: Vec<Affinity>,
        known: Vec<ClientKey>,
    ) -> Result<(Vec<AffinityDetail>, HashMap<AffinityKey, BindingUsage>)> {
        let (rows, usage) = futures::future::try_join(
            listing::EnrichmentRows::look_up(self.stores.directory.as_ref(), &affinities, known),
            self.stores.usage.bindings(&affinities),
        )
        .await?;
        Ok((rows.attach(&self.stores.cipher, affinities), usage))
    }

    /// The API key whose id is exactly `id`, with its owner.
    async fn client_key(&self, id: &str) -> Result<Option<ClientKey>> {
        let found = self.stores.directory.client_keys(&[id.to_owned()]).await?;
        Ok(found.into_iter().next())
    }

    /// ListUserAffinities: resolve any identifier, then read that user's
    /// affinities through the per-key indexes.
    pub async fn list_user(&self, identifier: &str) -> Result<UserAffinities> {
        let identifier = validate::identifier("user_identifier", identifier)?;
        let listing::UserWithKeys { resolved: user, keys } =
            listing::resolve_user(self.stores.directory.as_ref(), identifier).await?;
        let mut affinities = self
            .stores
            .affinities
            .list_indexed(&key_indexes(&keys), now_epoch())
            .await?;
        newest_first(&mut affinities);
        let total_endpoints = affinities
            .iter()
            .map(|a| a.record.endpoint_id.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len();
        let (details, usage) = self.enrich(affinities, keys).await?;
        Ok(UserAffinities {
            user,
            details,
            total_endpoints,
            usage,
        })
    }

    /// ListAffinities, with Aether's keyword rules: an API key id, else a
    /// user identifier, else a case-insensitive substring.
    pub async fn list(&self, keyword: &str, page_size: i32, page_token: &str, offset: i32) -> Result<AffinityListing> {
        let keyword = keyword.trim();
        if keyword.len() > validate::MAX_IDENTIFIER_LEN || keyword.chars().any(char::is_control) {
            return Err(Error::invalid(
                "keyword",
                "must be at most 255 bytes without control characters",
            ));
        }
        let limit = listing::page_size(page_size)?;
        let offset = if page_token.is_empty() {
            u64::try_from(offset).map_err(|_| Error::invalid("offset", "must not be negative"))?
        } else {
            PageToken::decode(page_token, keyword)?.offset
        };
        let now = now_epoch();
        if keyword.is_empty() {
            let page = self.stores.affinities.page(offset, limit, now).await?;
            let (details, usage) = self.enrich(page.affinities, Vec::new()).await?;
            return Ok(AffinityListing {
                details,
                next_page_token: page.next_offset.map(|next| PageToken::new(next, keyword).encode()),
                total: page.total,
                usage,
                ..Default::default()
            });
        }

        let mut listing = AffinityListing::default();
        let directory = self.stores.directory.as_ref();
        let (indexes, known, substring) = if let Some(key) = self.client_key(keyword).await? {
            listing.matched_api_key_id = Some(key.key.id.clone());
            listing.matched_user_id = Some(key.key.user_id.clone());
            (vec![IndexRef::AffinityKey(key.key.id.clone())], vec![key], false)
        } else if let Some(found) = listing::find_user_with_keys(directory, keyword).await? {
            listing.matched_user_id = Some(found.resolved.user.id);
            (key_indexes(&found.keys), found.keys, false)
        } else {
            let hits = directory.search(keyword, KEYWORD_HIT_LIMIT).await?;
            let indexes = hits
                .affinity_keys
                .into_iter()
                .map(IndexRef::AffinityKey)
                .chain(hits.provider_ids.into_iter().map(IndexRef::Provider))
                .chain(hits.provider_key_ids.into_iter().map(IndexRef::ProviderKey))
                .collect();
            (indexes, Vec::new(), true)
        };
        let mut affinities = self.stores.affinities.list_indexed(&indexes, now).await?;
        newest_first(&mut affinities);
        let (mut details, usage) = self.enrich(affinities, known).await?;
        if substring {
            let lower = keyword.to_lowercase();
            details.retain(|d| d.matches_keyword(&lower));
        }
        listing.total = details.len() as u64;
        let start = (offset as usize).min(details.len());
        let end = (start + limit as usize).min(details.len());
        listing.next_page_token = (end < details.len()).then(|| PageToken::new(end as u64, keyword).encode());
        listing.details = details.drain(start..end).collect();
        listing.usage = usage
            .into_iter()
            .filter(|(key, _)| listing.details.iter().any(|d| &d.affinity.key == key))
            .collect();
        Ok(listing)
    }

    /// ClearUserAffinities: an API key id clears that key only (checked
    /// first, untrimmed, as Aether does); otherwise every key of the resolved
    /// user. Returns the exact count deleted (or that would be).
    pub async fn clear_user(&self, identifier: &str, dry_run: bool) -> Result<(u64, ResolvedUser)> {
        validate::identifier("user_identifier", identifier)?;
        let directory = self.stores.directory.as_ref();
        let (resolved, indexes) = match self.client_key(identifier).await? {
            Some(ClientKey { key, owner }) => {
                let user = owner.ok_or_else(|| Error::not_found("user", key.user_id.clone()))?;
                let indexes = vec![IndexRef::AffinityKey(key.id.clone())];
                (
                    ResolvedUser {
                        user,
                        matched_by: MatchKind::ApiKeyId,
                        api_key: Some(key),
                    },
                    indexes,
                )
            }
            None => {
                let found = listing::resolve_user(directory, identifier.trim()).await?;
                let indexes = key_indexes(&found.keys);
                let resolved = found.resolved;
                // An identifier resolved through an API key still clears the
                // whole user (only a raw key id narrows the clear).
                (
                    ResolvedUser {
                        api_key: None,
                        ..resolved
                    },
                    indexes,
                )
            }
        };
        let affinities = self.stores.affinities.list_indexed(&indexes, now_epoch()).await?;
        let count = self
            .delete_listed(
                &affinities,
                &InvalidationGuard::default(),
                dry_run,
                InvalidationReason::Admin,
            )
            .await?;
        Ok((count, resolved))
    }

    /// ClearProviderAffinities: every entry still pinned to the provider.
    pub async fn clear_provider(&self, provider_id: &str, dry_run: bool) -> Result<u64> {
        let provider_id = validate::key_part("provider_id", provider_id)?;
        let affinities = self
            .stores
            .affinities
            .list_indexed(&[IndexRef::Provider(provider_id.clone())], now_epoch())
            .await?;
        let guard = InvalidationGuard {
            provider_id: Some(provider_id),
            ..Default::default()
        };
        self.delete_listed(&affinities, &guard, dry_run, InvalidationReason::Admin)
            .await
    }

    /// ClearAllAffinities: needs `confirm`.
    pub async fn clear_all(&self, confirm: bool, dry_run: bool) -> Result<u64> {
        if !confirm {
            return Err(Error::FailedPrecondition {
                reason: "CONFIRMATION_REQUIRED",
                description: "clearing every affinity needs confirm=true".into(),
            });
        }
        let count = self.stores.affinities.clear_all(dry_run).await?;
        if !dry_run && count > 0 {
            self.pending.invalidated(InvalidationReason::Admin, count as i64);
        }
        Ok(count)
    }

    async fn delete_listed(
        &self,
        affinities: &[Affinity],
        guard: &InvalidationGuard,
        dry_run: bool,
        reason: InvalidationReason,
    ) -> Result<u64> {
        let keys: Vec<AffinityKey> = affinities.iter().map(|a| a.key.clone()).collect();
        let count = self.stores.affinities.delete_many(&keys, guard, dry_run).await?;
        if !dry_run && count > 0 {
            self.pending.invalidated(reason, count as i64);
            // The guard held for these at listing time; an entry that moved
            // meanwhile was left alone and is not announced.
            for affinity in affinities.iter().filter(|a| guard.matches(&a.record)) {
                self.publish(
                    EventKind::Invalidated,
                    &affinity.key,
                    Some(affinity.record.clone()),
                    None,
                    Some(reason),
                    reason.as_str(),
                );
            }
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use tokio::sync::Notify;

    use super::*;
    use crate::db::directory::SeaOrmDirectory;
    use crate::store::memory::{MemoryAffinityStore, MemoryCounterStore, MemoryEventBus, MemoryUsageStore};

    /// Counters whose `add` stops half-way until released, so a test can
    /// read stats while a flush is between taking and storing its deltas.
    #[derive(Default)]
    struct HeldCounters {
        inner: MemoryCounterStore,
        adding: Notify,
        release: Notify,
    }

    #[async_trait]
    impl CounterStore for HeldCounters {
        async fn add(&self, deltas: &[(String, i64)]) -> std::result::Result<(), StoreError> {
            self.adding.notify_one();
            self.release.notified().await;
            self.inner.add(deltas).await
        }

        async fn load(&self) -> std::result::Result<HashMap<String, i64>, StoreError> {
            self.inner.load().await
        }
    }

    async fn engine(counters: Arc<HeldCounters>) -> AffinityEngine {
        let database = sea_orm::Database::connect("sqlite::memory:").await.expect("sqlite");
        AffinityEngine::new(
            AffinityStores {
                affinities: Arc::new(MemoryAffinityStore::new(100)),
                counters,
                events: Arc::new(MemoryEventBus::default()),
                directory: Arc::new(SeaOrmDirectory::new(database)),
                cipher: Arc::new(KeyCipher::from_secret(None, false).expect("cipher")),
                usage: Arc::new(MemoryUsageStore::default()),
            },
            AffinitySettings {
                default_ttl: Duration::from_secs(300),
                reconcile_interval: Duration::from_secs(30),
                instance_id: "test".into(),
                write_only_on_success: true,
                max_switches_per_minute: 0,
                target_watch_interval: Duration::from_secs(15),
                memory_max_affinities: 100,
            },
        )
    }

    #[tokio::test]
    async fn a_stats_read_during_a_flush_misses_no_count() {
        let counters = Arc::new(HeldCounters::default());
        let engine = Arc::new(engine(counters.clone()).await);
        let key = AffinityKey::parse("key-1", "CLAUDE", "model-1").expect("key");
        let target = AffinityTarget {
            provider_id: "p".into(),
            endpoint_id: "e".into(),
            key_id: "k".into(),
        };
        engine
            .set(&key, target, "", None, None, WritePolicy::default())
            .await
            .expect("set");

        let flushing = tokio::spawn({
            let engine = engine.clone();
            async move { engine.flush_counters().await }
        });
        counters.adding.notified().await;
        let reading = tokio::spawn({
            let engine = engine.clone();
            async move { engine.stats().await }
        });
        // Give the read every chance to run while the deltas are in flight.
        tokio::time::sleep(Duration::from_millis(50)).await;
        counters.release.notify_one();

        flushing.await.expect("flush task").expect("flush");
        let stats = reading.await.expect("stats task").expect("stats");
        assert_eq!(stats.total_affinities, 1, "the set is counted exactly once");
    }
}
