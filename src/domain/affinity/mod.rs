//! Cache affinity: the types, Aether's key and JSON value, and the pure rules
//! of a sliding-TTL write. Stores implement the rules atomically.

pub mod engine;
pub mod events;
pub mod listing;
pub mod stats;
pub mod usage;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::domain::python_json::{to_python_json, write_float};
use crate::domain::validate;
use crate::error::{Error, Result};

/// Aether's API formats (upper case, as they appear in keys). Requests may
/// use any case.
pub const API_FORMATS: &[&str] = &["CLAUDE", "CLAUDE_CLI", "OPENAI", "OPENAI_CLI", "GEMINI", "GEMINI_CLI"];

/// Prefix of every affinity key, Aether's.
pub const KEY_PREFIX: &str = "cache_affinity:";

/// Normalises an API format name to Aether's upper-case form.
pub fn parse_api_format(field: &'static str, value: &str) -> Result<String> {
    let upper = value.trim().to_ascii_uppercase();
    if API_FORMATS.contains(&upper.as_str()) {
        Ok(upper)
    } else if upper.is_empty() {
        Err(Error::invalid(field, "is required"))
    } else {
        Err(Error::invalid(
            field,
            format!("must be one of {}", API_FORMATS.join(", ")),
        ))
    }
}

/// What an affinity is for: a client API key, an API format and a global model.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AffinityKey {
    /// `api_keys.id` of the caller.
    pub affinity_key: String,
    /// Upper-case API format.
    pub api_format: String,
    /// `global_models.id`.
    pub global_model_id: String,
}

impl AffinityKey {
    /// Validates the three parts of a key.
    pub fn parse(affinity_key: &str, api_format: &str, global_model_id: &str) -> Result<Self> {
        Ok(Self {
            affinity_key: validate::key_part("affinity_key", affinity_key)?,
            api_format: parse_api_format("api_format", api_format)?,
            global_model_id: validate::key_part("global_model_id", global_model_id)?,
        })
    }

    /// Aether's Redis key, without any namespace.
    pub fn redis_key(&self) -> String {
        format!("{KEY_PREFIX}{}", self.member())
    }

    /// The key without Aether's prefix: `{affinity_key}:{API_FORMAT}:{global_model_id}`,
    /// the member name in our indexes.
    pub fn member(&self) -> String {
        format!("{}:{}:{}", self.affinity_key, self.api_format, self.global_model_id)
    }

    /// Parses a member or an Aether key (after its prefix) back into a key.
    /// Parts are not re-validated: they come from the store, not a caller.
    pub fn from_member(member: &str) -> Option<Self> {
        let mut parts = member.splitn(3, ':');
        let (affinity_key, api_format, global_model_id) = (parts.next()?, parts.next()?, parts.next()?);
        if affinity_key.is_empty() || api_format.is_empty() || global_model_id.is_empty() {
            return None;
        }
        Some(Self {
            affinity_key: affinity_key.to_owned(),
            api_format: api_format.to_owned(),
            global_model_id: global_model_id.to_owned(),
        })
    }
}

/// A secondary index over affinities; every index is a superset hint that
/// readers verify against the stored value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IndexRef {
    /// Affinities of one client API key.
    AffinityKey(String),
    /// Affinities pinned to one provider.
    Provider(String),
    /// Affinities pinned to one provider key.
    ProviderKey(String),
    /// Affinities pinned to one endpoint.
    Endpoint(String),
}

impl IndexRef {
    /// Whether a stored affinity belongs to this index.
    pub fn contains(&self, affinity: &Affinity) -> bool {
        match self {
            Self::AffinityKey(id) => &affinity.key.affinity_key == id,
            Self::Provider(id) => &affinity.record.provider_id == id,
            Self::ProviderKey(id) => &affinity.record.key_id == id,
            Self::Endpoint(id) => &affinity.record.endpoint_id == id,
        }
    }

    /// Every index an entry belongs to.
    pub fn all_of(key: &AffinityKey, record: &AffinityRecord) -> [Self; 4] {
        TargetKind::ALL.map(|kind| kind.index(kind.id_of(key, record).to_owned()))
    }
}

/// The rows of Aether's a binding points at; disabling or deleting one
/// drops the bindings that point at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetKind {
    /// `providers`.
    Provider,
    /// `provider_endpoints`.
    Endpoint,
    /// `provider_api_keys`.
    ProviderKey,
    /// `api_keys` (the client's key, and through it its owner in `users`).
    ApiKey,
}

impl TargetKind {
    /// Every kind.
    pub const ALL: [Self; 4] = [Self::ApiKey, Self::Provider, Self::ProviderKey, Self::Endpoint];

    /// Stored name (Redis key part).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provider => "provider",
            Self::Endpoint => "endpoint",
            Self::ProviderKey => "pkey",
            Self::ApiKey => "ak",
        }
    }

    /// The index of the bindings that point at `id`.
    pub fn index(self, id: String) -> IndexRef {
        match self {
            Self::Provider => IndexRef::Provider(id),
            Self::Endpoint => IndexRef::Endpoint(id),
            Self::ProviderKey => IndexRef::ProviderKey(id),
            Self::ApiKey => IndexRef::AffinityKey(id),
        }
    }

    /// The id of this kind an entry points at.
    pub fn id_of<'a>(self, key: &'a AffinityKey, record: &'a AffinityRecord) -> &'a str {
        match self {
            Self::Provider => &record.provider_id,
            Self::Endpoint => &record.endpoint_id,
            Self::ProviderKey => &record.key_id,
            Self::ApiKey => &key.affinity_key,
        }
    }

    /// Why a binding goes when its row of this kind is disabled or deleted.
    pub fn inactive_reason(self) -> events::InvalidationReason {
        match self {
            Self::Provider => events::InvalidationReason::ProviderInactive,
            Self::Endpoint => events::InvalidationReason::EndpointInactive,
            Self::ProviderKey => events::InvalidationReason::ProviderKeyInactive,
            Self::ApiKey => events::InvalidationReason::ApiKeyInactive,
        }
    }

    /// The guard that deletes an entry only while it still points at `id`
    /// (an API key is part of the entry's key, so it needs none).
    pub fn guard(self, id: &str) -> InvalidationGuard {
        let id = Some(id.to_owned());
        match self {
            Self::Provider => InvalidationGuard {
                provider_id: id,
                ..Default::default()
            },
            Self::Endpoint => InvalidationGuard {
                endpoint_id: id,
                ..Default::default()
            },
            Self::ProviderKey => InvalidationGuard {
                key_id: id,
                ..Default::default()
            },
            Self::ApiKey => InvalidationGuard::default(),
        }
    }
}

/// One page of all live affinities, newest expiry first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    /// The entries.
    pub affinities: Vec<Affinity>,
    /// Rank to continue from, when more may follow.
    pub next_offset: Option<u64>,
    /// Live entries in the index.
    pub total: u64,
}

/// The upstream an affinity pins a request to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffinityTarget {
    /// `providers.id`.
    pub provider_id: String,
    /// `provider_endpoints.id`.
    pub endpoint_id: String,
    /// `provider_api_keys.id`.
    pub key_id: String,
}

/// Aether's JSON value, field for field and in its order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AffinityRecord {
    /// `providers.id`.
    pub provider_id: String,
    /// `provider_endpoints.id`.
    pub endpoint_id: String,
    /// `provider_api_keys.id`.
    pub key_id: String,
    /// Upper-case API format.
    pub api_format: String,
    /// Aether stores the global model id here.
    pub model_name: String,
    /// Epoch seconds when the current target was pinned.
    pub created_at: f64,
    /// Epoch seconds when the entry expires.
    pub expire_at: f64,
    /// Requests served by the current target.
    pub request_count: i64,
}

/// Fields of the value that do not change on a refresh, in Aether's order.
#[derive(Serialize)]
struct RecordHead<'a> {
    provider_id: &'a str,
    endpoint_id: &'a str,
    key_id: &'a str,
    api_format: &'a str,
    model_name: &'a str,
}

/// Formats epoch seconds as Python's `repr(float)` does for such values.
pub fn format_epoch(seconds: f64) -> String {
    let mut text = String::new();
    write_float(&mut text, seconds);
    text
}

impl AffinityRecord {
    /// Aether's JSON text for this record.
    pub fn to_aether_json(&self) -> String {
        to_python_json(self)
    }

    /// Parses a value written by Aether or by us. Integers are accepted for
    /// the timestamps, as Aether tolerates them.
    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    /// The JSON text up to and including `"created_at": `, for stores that
    /// finish the value atomically (the Redis script).
    pub fn json_head(write: &AffinityWrite, api_format: &str) -> String {
        let head = to_python_json(&RecordHead {
            provider_id: &write.target.provider_id,
            endpoint_id: &write.target.endpoint_id,
            key_id: &write.target.key_id,
            api_format,
            model_name: &write.model_name,
        });
        let open = head.strip_suffix('}').unwrap_or(&head);
        format!("{open}, \"created_at\": ")
    }

    /// The upstream this record pins.
    pub fn target(&self) -> AffinityTarget {
        AffinityTarget {
            provider_id: self.provider_id.clone(),
            endpoint_id: self.endpoint_id.clone(),
            key_id: self.key_id.clone(),
        }
    }

    /// Whether the entry is still live at `now` (Aether deletes on `now > expire_at`).
    pub fn is_live(&self, now: f64) -> bool {
        now <= self.expire_at
    }
}

/// One affinity: its key and its value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Affinity {
    /// Which client/format/model.
    pub key: AffinityKey,
    /// The stored value.
    pub record: AffinityRecord,
}

/// A validated SetAffinity.
#[derive(Clone, Debug)]
pub struct AffinityWrite {
    /// Where requests go.
    pub target: AffinityTarget,
    /// Stored as `model_name` (Aether: the global model id).
    pub model_name: String,
    /// Sliding TTL.
    pub ttl: Duration,
}

/// What a write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetOutcome {
    /// No live entry before.
    Created,
    /// Same target: count + 1.
    Refreshed,
    /// Different target replaced the entry.
    Switched {
        /// Whether the provider changed (else only endpoint or key).
        provider_changed: bool,
    },
    /// A switch was not allowed: nothing was written; the record is the
    /// live entry left in place.
    Refused,
}

/// Result of a write.
#[derive(Clone, Debug, PartialEq)]
pub struct SetResult {
    /// The value now stored.
    pub record: AffinityRecord,
    /// What happened.
    pub outcome: SetOutcome,
    /// The replaced value, on a switch.
    pub previous: Option<AffinityRecord>,
}

/// Applies Aether's write rules to the current value: the one definition of
/// the sliding-TTL semantics (the Redis script mirrors it). Without
/// `allow_switch`, a write that would replace a live entry's target is
/// refused and the entry stays as it is.
pub fn apply_write(
    current: Option<&AffinityRecord>,
    key: &AffinityKey,
    write: &AffinityWrite,
    now: f64,
    allow_switch: bool,
) -> SetResult {
    let expire_at = now + write.ttl.as_secs_f64();
    let fresh = |previous: Option<AffinityRecord>, outcome| SetResult {
        record: AffinityRecord {
            provider_id: write.target.provider_id.clone(),
            endpoint_id: write.target.endpoint_id.clone(),
            key_id: write.target.key_id.clone(),
            api_format: key.api_format.clone(),
            model_name: write.model_name.clone(),
            created_at: now,
            expire_at,
            request_count: 1,
        },
        outcome,
        previous,
    };
    match current.filter(|record| record.is_live(now)) {
        None => fresh(None, SetOutcome::Created),
        Some(old) if old.target() == write.target => {
            let mut record = fresh(None, SetOutcome::Refreshed).record;
            record.created_at = old.created_at;
            record.request_count = old.request_count.saturating_add(1);
            SetResult {
                record,
                outcome: SetOutcome::Refreshed,
                previous: None,
            }
        }
        Some(old) if !allow_switch => SetResult {
            record: old.clone(),
            outcome: SetOutcome::Refused,
            previous: None,
        },
        Some(old) => {
            let provider_changed = old.provider_id != write.target.provider_id;
            fresh(Some(old.clone()), SetOutcome::Switched { provider_changed })
        }
    }
}

/// Guards of an invalidation: each one that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InvalidationGuard {
    /// Stored endpoint must equal this.
    pub endpoint_id: Option<String>,
    /// Stored key must equal this.
    pub key_id: Option<String>,
    /// Stored provider must equal this.
    pub provider_id: Option<String>,
}

impl InvalidationGuard {
    /// Whether no guard is set (anything may be deleted).
    pub fn is_empty(&self) -> bool {
        self.endpoint_id.is_none() && self.key_id.is_none() && self.provider_id.is_none()
    }

    /// Whether the stored record may be deleted.
    pub fn matches(&self, record: &AffinityRecord) -> bool {
        let ok = |guard: &Option<String>, actual: &str| guard.as_deref().is_none_or(|g| g == actual);
        ok(&self.endpoint_id, &record.endpoint_id)
            && ok(&self.key_id, &record.key_id)
            && ok(&self.provider_id, &record.provider_id)
    }
}

/// Current time as epoch seconds with sub-second precision (Python's `time.time()`).
pub fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AffinityKey {
        AffinityKey::parse("ak", "claude", "gm").expect("valid key")
    }

    fn write(provider: &str, endpoint: &str) -> AffinityWrite {
        AffinityWrite {
            target: AffinityTarget {
                provider_id: provider.into(),
                endpoint_id: endpoint.into(),
                key_id: "k".into(),
            },
            model_name: "gm".into(),
            ttl: Duration::from_secs(300),
        }
    }

    #[test]
    fn key_is_aethers_with_upper_case_format() {
        assert_eq!(key().redis_key(), "cache_affinity:ak:CLAUDE:gm");
        assert!(AffinityKey::parse("ak", "cobol", "gm").is_err());
    }

    #[test]
    fn json_matches_python_json_dumps() {
        let record = AffinityRecord {
            provider_id: "p".into(),
            endpoint_id: "e".into(),
            key_id: "k".into(),
            api_format: "CLAUDE".into(),
            model_name: "gm".into(),
            created_at: 1735689600.0,
            expire_at: 1735689900.123456,
            request_count: 3,
        };
        let text = record.to_aether_json();
        assert_eq!(
            text,
            r#"{"provider_id": "p", "endpoint_id": "e", "key_id": "k", "api_format": "CLAUDE", "model_name": "gm", "created_at": 1735689600.0, "expire_at": 1735689900.123456, "request_count": 3}"#
        );
        assert_eq!(AffinityRecord::from_json(&text), Some(record));
        let head = AffinityRecord::json_head(&write("p", "e"), "CLAUDE");
        assert!(text.starts_with(&head), "{head}");
    }

    #[test]
    fn integer_timestamps_are_accepted() {
        let text = r#"{"provider_id": "p", "endpoint_id": "e", "key_id": "k", "api_format": "CLAUDE", "model_name": "gm", "created_at": 1735689600, "expire_at": 1735689900, "request_count": 1}"#;
        assert_eq!(AffinityRecord::from_json(text).map(|r| r.expire_at), Some(1735689900.0));
    }

    #[test]
    fn write_rules_follow_aether() {
        let created = apply_write(None, &key(), &write("p", "e"), 100.0, true);
        assert_eq!(created.outcome, SetOutcome::Created);
        assert_eq!((created.record.request_count, created.record.expire_at), (1, 400.0));

        let refreshed = apply_write(Some(&created.record), &key(), &write("p", "e"), 150.0, true);
        assert_eq!(refreshed.outcome, SetOutcome::Refreshed);
        assert_eq!(
            (refreshed.record.request_count, refreshed.record.created_at),
            (2, 100.0)
        );
        assert_eq!(refreshed.record.expire_at, 450.0);

        let switched = apply_write(Some(&refreshed.record), &key(), &write("p", "e2"), 160.0, true);
        assert_eq!(
            switched.outcome,
            SetOutcome::Switched {
                provider_changed: false
            }
        );
        assert_eq!((switched.record.request_count, switched.record.created_at), (1, 160.0));
        assert_eq!(switched.previous, Some(refreshed.record.clone()));

        let expired = apply_write(Some(&refreshed.record), &key(), &write("p2", "e"), 10_000.0, true);
        assert_eq!(expired.outcome, SetOutcome::Created);

        let refused = apply_write(Some(&refreshed.record), &key(), &write("p", "e2"), 160.0, false);
        assert_eq!(refused.outcome, SetOutcome::Refused);
        assert_eq!(refused.record, refreshed.record);
        let still_refreshes = apply_write(Some(&refreshed.record), &key(), &write("p", "e"), 160.0, false);
        assert_eq!(still_refreshes.outcome, SetOutcome::Refreshed);
    }

    #[test]
    fn guards_must_all_match() {
        let record = apply_write(None, &key(), &write("p", "e"), 0.0, true).record;
        assert!(InvalidationGuard::default().matches(&record));
        let guard = InvalidationGuard {
            endpoint_id: Some("e".into()),
            key_id: Some("k".into()),
            provider_id: None,
        };
        assert!(guard.matches(&record));
        let guard = InvalidationGuard {
            endpoint_id: Some("e".into()),
            key_id: Some("other".into()),
            provider_id: None,
        };
        assert!(!guard.matches(&record));
    }
}
