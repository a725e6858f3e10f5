//! What affinities really save: upstream outcomes and token usage reported
//! back by the data plane (RecordUpstreamUsage), aggregated cluster-wide and
//! per live binding. Counters only go up; ratios are derived on read.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::events::InvalidationReason;
use super::{AffinityKey, AffinityRecord, AffinityTarget};
use crate::error::{Error, Result};

/// How an upstream request went, as Aether's error classifier sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamOutcome {
    /// Served.
    Success,
    /// 401/403: the provider key was rejected.
    AuthError,
    /// 429.
    RateLimited,
    /// 5xx, timeout, connection error.
    ServerError,
    /// Other 4xx: the request's fault, not the binding's.
    ClientError,
}

impl UpstreamOutcome {
    /// Every outcome.
    pub const ALL: [Self; 5] = [
        Self::Success,
        Self::AuthError,
        Self::RateLimited,
        Self::ServerError,
        Self::ClientError,
    ];

    /// Stored and exported name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::AuthError => "auth_error",
            Self::RateLimited => "rate_limited",
            Self::ServerError => "server_error",
            Self::ClientError => "client_error",
        }
    }

    /// Parses [`Self::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|outcome| outcome.as_str() == name)
    }

    /// The counter this outcome bumps.
    fn counter(self) -> &'static str {
        match self {
            Self::Success => fields::SUCCESSES,
            Self::AuthError => fields::AUTH_ERRORS,
            Self::RateLimited => fields::RATE_LIMITED,
            Self::ServerError => fields::SERVER_ERRORS,
            Self::ClientError => fields::CLIENT_ERRORS,
        }
    }

    /// Why a binding goes after this outcome, as Aether's classifier drops
    /// it; None for outcomes that keep it (success, a client's own error).
    pub fn invalidation_reason(self) -> Option<InvalidationReason> {
        match self {
            Self::Success | Self::ClientError => None,
            Self::AuthError => Some(InvalidationReason::UpstreamAuth),
            Self::RateLimited => Some(InvalidationReason::UpstreamRateLimit),
            Self::ServerError => Some(InvalidationReason::UpstreamError),
        }
    }
}

/// Counter names, as stored (hash fields in Redis).
pub mod fields {
    /// Reports of every outcome.
    pub const REQUESTS: &str = "requests";
    /// Success reports.
    pub const SUCCESSES: &str = "successes";
    /// Auth error reports.
    pub const AUTH_ERRORS: &str = "auth_errors";
    /// Rate limited reports.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// Server error reports.
    pub const SERVER_ERRORS: &str = "server_errors";
    /// Client error reports.
    pub const CLIENT_ERRORS: &str = "client_errors";
    /// Prompt tokens, cache reads and writes included.
    pub const INPUT_TOKENS: &str = "input_tokens";
    /// Prompt tokens read from the upstream's cache.
    pub const CACHE_READ_TOKENS: &str = "cache_read_tokens";
    /// Prompt tokens written to the upstream's cache.
    pub const CACHE_CREATION_TOKENS: &str = "cache_creation_tokens";
}

/// One validated RecordUpstreamUsage.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageReport {
    /// The affinity the request was routed under.
    pub key: AffinityKey,
    /// The upstream that served it.
    pub target: AffinityTarget,
    /// How it went.
    pub outcome: UpstreamOutcome,
    /// Prompt tokens, cache reads and writes included.
    pub input_tokens: i64,
    /// Of those, read from the upstream's cache.
    pub cache_read_tokens: i64,
    /// Of those, written to the upstream's cache.
    pub cache_creation_tokens: i64,
}

impl UsageReport {
    /// Checks the token counts: none negative, cache reads and writes within
    /// the input (a caller that forgot to normalise Anthropic's numbers,
    /// whose input_tokens exclude the cache, is told so instead of skewing
    /// every ratio).
    pub fn validate(self) -> Result<Self> {
        for (field, value) in [
            ("input_tokens", self.input_tokens),
            ("cache_read_tokens", self.cache_read_tokens),
            ("cache_creation_tokens", self.cache_creation_tokens),
        ] {
            if value < 0 {
                return Err(Error::invalid(field, "must not be negative"));
            }
        }
        if self.cache_read_tokens.saturating_add(self.cache_creation_tokens) > self.input_tokens {
            return Err(Error::invalid(
                "input_tokens",
                "must include cache_read_tokens and cache_creation_tokens (normalise the provider's usage)",
            ));
        }
        Ok(self)
    }

    /// The counter deltas of this report (zero deltas left out).
    pub fn deltas(&self) -> Vec<(&'static str, i64)> {
        [
            (fields::REQUESTS, 1),
            (self.outcome.counter(), 1),
            (fields::INPUT_TOKENS, self.input_tokens),
            (fields::CACHE_READ_TOKENS, self.cache_read_tokens),
            (fields::CACHE_CREATION_TOKENS, self.cache_creation_tokens),
        ]
        .into_iter()
        .filter(|(_, delta)| *delta != 0)
        .collect()
    }
}

/// Outcome and token totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageCounters {
    /// Reports of every outcome.
    pub requests: i64,
    /// Success reports.
    pub successes: i64,
    /// Auth error reports.
    pub auth_errors: i64,
    /// Rate limited reports.
    pub rate_limited: i64,
    /// Server error reports.
    pub server_errors: i64,
    /// Client error reports.
    pub client_errors: i64,
    /// Prompt tokens, cache reads and writes included.
    pub input_tokens: i64,
    /// Prompt tokens read from the upstream's cache.
    pub cache_read_tokens: i64,
    /// Prompt tokens written to the upstream's cache.
    pub cache_creation_tokens: i64,
}

impl UsageCounters {
    fn slot(&mut self, field: &str) -> Option<&mut i64> {
        Some(match field {
            fields::REQUESTS => &mut self.requests,
            fields::SUCCESSES => &mut self.successes,
            fields::AUTH_ERRORS => &mut self.auth_errors,
            fields::RATE_LIMITED => &mut self.rate_limited,
            fields::SERVER_ERRORS => &mut self.server_errors,
            fields::CLIENT_ERRORS => &mut self.client_errors,
            fields::INPUT_TOKENS => &mut self.input_tokens,
            fields::CACHE_READ_TOKENS => &mut self.cache_read_tokens,
            fields::CACHE_CREATION_TOKENS => &mut self.cache_creation_tokens,
            _ => return None,
        })
    }

    /// Adds `delta` to the counter named `field`; unknown names are ignored
    /// (a newer instance may store more).
    pub fn add(&mut self, field: &str, delta: i64) {
        if let Some(slot) = self.slot(field) {
            *slot = slot.saturating_add(delta);
        }
    }

    /// The reports of `outcome`.
    pub fn outcome_count(&self, outcome: UpstreamOutcome) -> i64 {
        // The counters are Copy: read through the one name-to-field map.
        let mut counters = *self;
        counters.slot(outcome.counter()).map_or(0, |count| *count)
    }

    /// Adds a report's deltas.
    pub fn apply(&mut self, report: &UsageReport) {
        for (field, delta) in report.deltas() {
            self.add(field, delta);
        }
    }

    /// cache_read_tokens / input_tokens; 0 without input.
    pub fn cache_read_ratio(&self) -> f64 {
        if self.input_tokens <= 0 {
            0.0
        } else {
            self.cache_read_tokens as f64 / self.input_tokens as f64
        }
    }
}

/// The groups usage is aggregated by, besides the overall total. Each is
/// bounded by a table of Aether's (providers, provider keys, global models),
/// never by users or requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UsageGroup {
    /// By `providers.id`.
    Provider,
    /// By `provider_api_keys.id`.
    ProviderKey,
    /// By `global_models.id`.
    Model,
}

impl UsageGroup {
    /// Every group.
    pub const ALL: [Self; 3] = [Self::Provider, Self::ProviderKey, Self::Model];

    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provider => "provider",
            Self::ProviderKey => "pkey",
            Self::Model => "model",
        }
    }

    /// The id a report is counted under in this group.
    pub fn id_of(self, report: &UsageReport) -> &str {
        match self {
            Self::Provider => &report.target.provider_id,
            Self::ProviderKey => &report.target.key_id,
            Self::Model => &report.key.global_model_id,
        }
    }
}

/// Cluster-wide totals.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsageTotals {
    /// Over everything.
    pub total: UsageCounters,
    /// Per group, per id (sorted by id).
    pub groups: HashMap<UsageGroup, BTreeMap<String, UsageCounters>>,
}

impl UsageTotals {
    /// Adds a report everywhere it counts.
    pub fn apply(&mut self, report: &UsageReport) {
        self.total.apply(report);
        for group in UsageGroup::ALL {
            self.groups
                .entry(group)
                .or_default()
                .entry(group.id_of(report).to_owned())
                .or_default()
                .apply(report);
        }
    }

    /// The totals of one group.
    pub fn group(&self, group: UsageGroup) -> impl Iterator<Item = (&String, &UsageCounters)> {
        self.groups.get(&group).into_iter().flatten()
    }
}

/// What one binding achieved for its current target.
#[derive(Clone, Debug, PartialEq)]
pub struct BindingUsage {
    /// The target the totals belong to.
    pub target: AffinityTarget,
    /// The binding's `created_at` when the totals started: a binding pinned
    /// anew (even to the same target) starts from zero.
    pub pinned_at: f64,
    /// Totals since the binding was pinned to it (as far as reported).
    pub counters: UsageCounters,
    /// The last reported outcome.
    pub last_outcome: UpstreamOutcome,
    /// When (epoch seconds).
    pub last_reported_at: f64,
}

impl BindingUsage {
    /// Whether these totals belong to `record`'s current pin.
    pub fn belongs_to(&self, record: &AffinityRecord) -> bool {
        self.target == record.target() && self.pinned_at == record.created_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(outcome: UpstreamOutcome, input: i64, read: i64, created: i64) -> UsageReport {
        UsageReport {
            key: AffinityKey::parse("ak", "CLAUDE", "gm").expect("valid"),
            target: AffinityTarget {
                provider_id: "p".into(),
                endpoint_id: "e".into(),
                key_id: "k".into(),
            },
            outcome,
            input_tokens: input,
            cache_read_tokens: read,
            cache_creation_tokens: created,
        }
    }

    #[test]
    fn token_counts_must_be_normalised() {
        assert!(report(UpstreamOutcome::Success, 100, 60, 40).validate().is_ok());
        assert!(report(UpstreamOutcome::Success, 100, 80, 40).validate().is_err());
        assert!(report(UpstreamOutcome::Success, -1, 0, 0).validate().is_err());
        assert!(report(UpstreamOutcome::Success, 100, i64::MAX, 1).validate().is_err());
    }

    #[test]
    fn totals_add_up_and_ratios_derive() {
        let mut totals = UsageTotals::default();
        totals.apply(&report(UpstreamOutcome::Success, 1000, 900, 0));
        totals.apply(&report(UpstreamOutcome::RateLimited, 1000, 0, 100));
        assert_eq!(totals.total.requests, 2);
        assert_eq!((totals.total.successes, totals.total.rate_limited), (1, 1));
        assert_eq!(totals.total.outcome_count(UpstreamOutcome::RateLimited), 1);
        assert_eq!(totals.total.outcome_count(UpstreamOutcome::AuthError), 0);
        assert_eq!(totals.total.cache_read_ratio(), 0.45);
        let providers: Vec<_> = totals.group(UsageGroup::Provider).collect();
        assert_eq!(providers.len(), 1);
        assert_eq!(providers[0].1.input_tokens, 2000);
        assert_eq!(UsageCounters::default().cache_read_ratio(), 0.0);
    }

    #[test]
    fn only_upstream_failures_drop_a_binding() {
        assert_eq!(UpstreamOutcome::Success.invalidation_reason(), None);
        assert_eq!(UpstreamOutcome::ClientError.invalidation_reason(), None);
        assert_eq!(
            UpstreamOutcome::AuthError.invalidation_reason(),
            Some(InvalidationReason::UpstreamAuth)
        );
        for outcome in UpstreamOutcome::ALL {
            assert_eq!(UpstreamOutcome::parse(outcome.as_str()), Some(outcome));
        }
    }
}
