//! Affinity change events, fanned out to watchers on every instance.

use serde::{Deserialize, Serialize};

use super::{Affinity, AffinityRecord, SetOutcome};

/// What happened to an affinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A new entry.
    Created,
    /// Same target, TTL slid.
    Refreshed,
    /// A different target replaced the entry.
    Switched,
    /// The entry was deleted.
    Invalidated,
}

impl From<SetOutcome> for EventKind {
    fn from(outcome: SetOutcome) -> Self {
        match outcome {
            SetOutcome::Created => Self::Created,
            SetOutcome::Refreshed => Self::Refreshed,
            SetOutcome::Switched { .. } => Self::Switched,
        }
    }
}

/// Why an affinity was removed; the lower-case name is the stats label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidationReason {
    /// Not given.
    Unspecified,
    /// Upstream rejected the key.
    UpstreamAuth,
    /// Upstream rate limited.
    UpstreamRateLimit,
    /// Other upstream failure.
    UpstreamError,
    /// An operator deleted it.
    Admin,
    /// The binding stopped paying off.
    Ineffective,
}

impl InvalidationReason {
    /// Every reason, for exporting zero-valued series.
    pub const ALL: [Self; 6] = [
        Self::Unspecified,
        Self::UpstreamAuth,
        Self::UpstreamRateLimit,
        Self::UpstreamError,
        Self::Admin,
        Self::Ineffective,
    ];

    /// Stats label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::UpstreamAuth => "upstream_auth",
            Self::UpstreamRateLimit => "upstream_rate_limit",
            Self::UpstreamError => "upstream_error",
            Self::Admin => "admin",
            Self::Ineffective => "ineffective",
        }
    }
}

/// One change, as published to every instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AffinityEvent {
    /// What happened.
    pub kind: EventKind,
    /// The entry after the change (before it, for invalidations).
    pub affinity: Affinity,
    /// The replaced value, on a switch.
    pub previous: Option<AffinityRecord>,
    /// Why, for invalidations.
    pub reason: Option<InvalidationReason>,
    /// Epoch seconds.
    pub occurred_at: f64,
    /// The instance that made the change.
    pub instance_id: String,
}

/// A watcher's filter; every field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Client API key.
    pub affinity_key: Option<String>,
    /// Provider (the current or the replaced one).
    pub provider_id: Option<String>,
    /// Upper-case API format.
    pub api_format: Option<String>,
    /// Kinds; all when empty.
    pub kinds: Vec<EventKind>,
}

impl EventFilter {
    /// Whether `event` passes.
    pub fn matches(&self, event: &AffinityEvent) -> bool {
        let key = &event.affinity.key;
        let provider_matches = |p: &String| {
            &event.affinity.record.provider_id == p
                || event.previous.as_ref().is_some_and(|prev| &prev.provider_id == p)
        };
        self.affinity_key.as_ref().is_none_or(|k| &key.affinity_key == k)
            && self.api_format.as_ref().is_none_or(|f| &key.api_format == f)
            && self.provider_id.as_ref().is_none_or(provider_matches)
            && (self.kinds.is_empty() || self.kinds.contains(&event.kind))
    }
}
