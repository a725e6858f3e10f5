//! Data-plane decisions, fanned out to watchers on every instance.

use serde::{Deserialize, Serialize};

use super::{AffinityKey, AffinityRecord, SetOutcome};

/// Why the service decided as it did; the text callers and watchers read.
pub mod decision {
    /// GetAffinity found a live binding.
    pub const LIVE_BINDING: &str = "live_binding";
    /// No live binding: GetAffinity missed or SetAffinity created one.
    pub const NO_LIVE_BINDING: &str = "no_live_binding";
    /// SetAffinity named the pinned target again.
    pub const SAME_TARGET: &str = "same_target";
    /// SetAffinity named another target.
    pub const TARGET_CHANGED: &str = "target_changed";
    /// SetAffinity reported a failed upstream request (write only on success).
    pub const UPSTREAM_FAILURE: &str = "upstream_failure";
    /// The binding switched as often as its per-minute cap allows.
    pub const FLAPPING_GUARD: &str = "flapping_guard";
    /// RecordUpstreamUsage: a client error is not the binding's fault.
    pub const CLIENT_ERROR_KEEPS_BINDING: &str = "client_error_keeps_binding";
    /// RecordUpstreamUsage: the request succeeded.
    pub const SUCCESS_KEEPS_BINDING: &str = "success_keeps_binding";
    /// RecordUpstreamUsage: the live binding points elsewhere (or is gone),
    /// so a failure of the reported target leaves it alone.
    pub const BINDING_MOVED: &str = "binding_moved";
}

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
    /// GetAffinity found a live entry.
    Followed,
    /// GetAffinity found none.
    Missed,
    /// SetAffinity wrote nothing.
    Refused,
}

impl From<SetOutcome> for EventKind {
    fn from(outcome: SetOutcome) -> Self {
        match outcome {
            SetOutcome::Created => Self::Created,
            SetOutcome::Refreshed => Self::Refreshed,
            SetOutcome::Switched { .. } => Self::Switched,
            SetOutcome::Refused => Self::Refused,
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
    /// Its provider was disabled or deleted.
    ProviderInactive,
    /// Its endpoint was disabled or deleted.
    EndpointInactive,
    /// Its provider key was disabled or deleted.
    ProviderKeyInactive,
    /// The client API key was disabled or deleted.
    ApiKeyInactive,
    /// The client API key's owner was disabled or deleted.
    UserInactive,
}

impl InvalidationReason {
    /// Every reason, for exporting zero-valued series.
    pub const ALL: [Self; 11] = [
        Self::Unspecified,
        Self::UpstreamAuth,
        Self::UpstreamRateLimit,
        Self::UpstreamError,
        Self::Admin,
        Self::Ineffective,
        Self::ProviderInactive,
        Self::EndpointInactive,
        Self::ProviderKeyInactive,
        Self::ApiKeyInactive,
        Self::UserInactive,
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
            Self::ProviderInactive => "provider_inactive",
            Self::EndpointInactive => "endpoint_inactive",
            Self::ProviderKeyInactive => "provider_key_inactive",
            Self::ApiKeyInactive => "api_key_inactive",
            Self::UserInactive => "user_inactive",
        }
    }
}

/// One decision, as published to every instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AffinityEvent {
    /// What happened.
    pub kind: EventKind,
    /// Which affinity.
    pub key: AffinityKey,
    /// The entry after the change (before it, for invalidations; the one
    /// left in place, for refusals); None on a miss.
    pub record: Option<AffinityRecord>,
    /// The replaced value, on a switch.
    pub previous: Option<AffinityRecord>,
    /// Why, for invalidations.
    pub reason: Option<InvalidationReason>,
    /// Why the service decided so (a [`decision`] constant or a reason name).
    pub decision_reason: String,
    /// The caller's W3C trace id, when it sent one.
    pub trace_id: Option<String>,
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
        let key = &event.key;
        let provider_matches = |p: &String| event.record.iter().chain(&event.previous).any(|r| &r.provider_id == p);
        self.affinity_key.as_ref().is_none_or(|k| &key.affinity_key == k)
            && self.api_format.as_ref().is_none_or(|f| &key.api_format == f)
            && self.provider_id.as_ref().is_none_or(provider_matches)
            && (self.kinds.is_empty() || self.kinds.contains(&event.kind))
    }
}

/// Events waiting for the publisher at most; beyond, new events are dropped
/// (and counted) rather than slowing the data plane.
const PUBLISH_QUEUE: usize = 8192;

/// Events one publish carries at most.
const PUBLISH_BATCH: usize = 256;

/// Publishes events off the request path: calls queue them without waiting,
/// one task sends them in batches (one Redis PUBLISH per batch).
#[derive(Clone)]
pub struct EventPublisher {
    queue: tokio::sync::mpsc::Sender<AffinityEvent>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl EventPublisher {
    /// Starts the publishing task; it ends when every publisher is dropped.
    pub fn start(bus: std::sync::Arc<dyn crate::store::EventBus>) -> Self {
        let (queue, mut pending) = tokio::sync::mpsc::channel::<AffinityEvent>(PUBLISH_QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(PUBLISH_BATCH);
            while pending.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
                // Best effort: the changes themselves have been made.
                if let Err(error) = bus.publish(&batch).await {
                    tracing::warn!(%error, events = batch.len(), "affinity events not published");
                }
                batch.clear();
            }
        });
        Self {
            queue,
            dropped: std::sync::Arc::default(),
        }
    }

    /// Queues an event; drops it when the queue is full.
    pub fn send(&self, event: AffinityEvent) {
        if self.queue.try_send(event).is_err() {
            self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Events dropped so far (queue full).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}
