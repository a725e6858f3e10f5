//! Domain <-> proto conversions.

use std::time::Duration;

use prost_types::Timestamp;

use crate::domain::affinity::{Affinity, AffinityKey, AffinityRecord, SetOutcome};
use crate::error::{Error, Result};
use crate::proto;

/// Epoch seconds (Aether's floats) as a Timestamp, to the microsecond.
pub fn timestamp(epoch_seconds: f64) -> Timestamp {
    let micros = (epoch_seconds * 1e6).round() as i64;
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// A proto Duration as a std Duration; negative or out-of-range values are
/// INVALID_ARGUMENT on `field`.
pub fn duration(field: &'static str, value: Option<prost_types::Duration>) -> Result<Option<Duration>> {
    value
        .map(|d| {
            if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
                Err(Error::invalid(field, "must be a positive duration"))
            } else {
                Ok(Duration::new(d.seconds as u64, d.nanos as u32))
            }
        })
        .transpose()
}

/// A std Duration as a proto Duration.
pub fn proto_duration(value: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: value.as_secs() as i64,
        nanos: value.subsec_nanos() as i32,
    }
}

/// One affinity as the proto message.
pub fn affinity(key: &AffinityKey, record: &AffinityRecord) -> proto::Affinity {
    proto::Affinity {
        affinity_key: key.affinity_key.clone(),
        api_format: key.api_format.clone(),
        global_model_id: key.global_model_id.clone(),
        provider_id: record.provider_id.clone(),
        endpoint_id: record.endpoint_id.clone(),
        key_id: record.key_id.clone(),
        model_name: record.model_name.clone(),
        created_at: Some(timestamp(record.created_at)),
        expire_at: Some(timestamp(record.expire_at)),
        request_count: record.request_count,
    }
}

impl From<&Affinity> for proto::Affinity {
    fn from(value: &Affinity) -> Self {
        affinity(&value.key, &value.record)
    }
}

impl From<SetOutcome> for proto::SetAffinityOutcome {
    fn from(value: SetOutcome) -> Self {
        match value {
            SetOutcome::Created => Self::Created,
            SetOutcome::Refreshed => Self::Refreshed,
            SetOutcome::Switched { .. } => Self::Switched,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_floats_keep_microseconds() {
        assert_eq!(
            timestamp(1735689600.25),
            Timestamp {
                seconds: 1735689600,
                nanos: 250_000_000
            }
        );
        assert_eq!(
            timestamp(-0.5),
            Timestamp {
                seconds: -1,
                nanos: 500_000_000
            }
        );
    }

    #[test]
    fn negative_durations_are_rejected() {
        let bad = prost_types::Duration { seconds: -1, nanos: 0 };
        assert!(duration("ttl", Some(bad)).is_err());
        assert_eq!(duration("ttl", None).ok(), Some(None));
    }
}
