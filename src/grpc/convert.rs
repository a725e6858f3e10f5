//! Domain <-> proto conversions.

use std::collections::HashMap;
use std::time::Duration;

use prost_types::Timestamp;

use crate::domain::affinity::engine::{AffinitySettings, SchedulingModes};
use crate::domain::affinity::events::{AffinityEvent, EventKind, InvalidationReason};
use crate::domain::affinity::listing::{AffinityDetail, ResolvedUser};
use crate::domain::affinity::stats::AffinityStats;
use crate::domain::affinity::usage::{BindingUsage, UpstreamOutcome, UsageCounters, UsageGroup};
use crate::domain::affinity::{Affinity, AffinityKey, AffinityRecord, SetOutcome};
use crate::domain::directory::MatchKind;
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
            SetOutcome::Refused => Self::Refused,
        }
    }
}

/// A proto outcome as the domain's; None for UNSPECIFIED, an error for
/// values this version does not know.
pub fn upstream_outcome(value: i32) -> Result<Option<UpstreamOutcome>> {
    match proto::UpstreamOutcome::try_from(value) {
        Ok(proto::UpstreamOutcome::Unspecified) => Ok(None),
        Ok(proto::UpstreamOutcome::Success) => Ok(Some(UpstreamOutcome::Success)),
        Ok(proto::UpstreamOutcome::AuthError) => Ok(Some(UpstreamOutcome::AuthError)),
        Ok(proto::UpstreamOutcome::RateLimited) => Ok(Some(UpstreamOutcome::RateLimited)),
        Ok(proto::UpstreamOutcome::ServerError) => Ok(Some(UpstreamOutcome::ServerError)),
        Ok(proto::UpstreamOutcome::ClientError) => Ok(Some(UpstreamOutcome::ClientError)),
        Err(_) => Err(Error::invalid("outcome", "unknown upstream outcome")),
    }
}

impl From<UpstreamOutcome> for proto::UpstreamOutcome {
    fn from(value: UpstreamOutcome) -> Self {
        match value {
            UpstreamOutcome::Success => Self::Success,
            UpstreamOutcome::AuthError => Self::AuthError,
            UpstreamOutcome::RateLimited => Self::RateLimited,
            UpstreamOutcome::ServerError => Self::ServerError,
            UpstreamOutcome::ClientError => Self::ClientError,
        }
    }
}

/// Usage counters with their derived ratio.
pub fn upstream_usage(value: &UsageCounters) -> proto::UpstreamUsage {
    proto::UpstreamUsage {
        requests: value.requests,
        successes: value.successes,
        auth_errors: value.auth_errors,
        rate_limited: value.rate_limited,
        server_errors: value.server_errors,
        client_errors: value.client_errors,
        input_tokens: value.input_tokens,
        cache_read_tokens: value.cache_read_tokens,
        cache_creation_tokens: value.cache_creation_tokens,
        cache_read_ratio: value.cache_read_ratio(),
    }
}

/// A binding's usage.
pub fn binding_usage(value: &BindingUsage) -> proto::BindingUsage {
    proto::BindingUsage {
        usage: Some(upstream_usage(&value.counters)),
        last_outcome: proto::UpstreamOutcome::from(value.last_outcome).into(),
        last_reported_at: Some(timestamp(value.last_reported_at)),
    }
}

impl From<proto::InvalidationReason> for InvalidationReason {
    fn from(value: proto::InvalidationReason) -> Self {
        match value {
            proto::InvalidationReason::Unspecified => Self::Unspecified,
            proto::InvalidationReason::UpstreamAuth => Self::UpstreamAuth,
            proto::InvalidationReason::UpstreamRateLimit => Self::UpstreamRateLimit,
            proto::InvalidationReason::UpstreamError => Self::UpstreamError,
            proto::InvalidationReason::Admin => Self::Admin,
            proto::InvalidationReason::Ineffective => Self::Ineffective,
            proto::InvalidationReason::ProviderInactive => Self::ProviderInactive,
            proto::InvalidationReason::EndpointInactive => Self::EndpointInactive,
            proto::InvalidationReason::ProviderKeyInactive => Self::ProviderKeyInactive,
            proto::InvalidationReason::ApiKeyInactive => Self::ApiKeyInactive,
            proto::InvalidationReason::UserInactive => Self::UserInactive,
        }
    }
}

impl From<InvalidationReason> for proto::InvalidationReason {
    fn from(value: InvalidationReason) -> Self {
        match value {
            InvalidationReason::Unspecified => Self::Unspecified,
            InvalidationReason::UpstreamAuth => Self::UpstreamAuth,
            InvalidationReason::UpstreamRateLimit => Self::UpstreamRateLimit,
            InvalidationReason::UpstreamError => Self::UpstreamError,
            InvalidationReason::Admin => Self::Admin,
            InvalidationReason::Ineffective => Self::Ineffective,
            InvalidationReason::ProviderInactive => Self::ProviderInactive,
            InvalidationReason::EndpointInactive => Self::EndpointInactive,
            InvalidationReason::ProviderKeyInactive => Self::ProviderKeyInactive,
            InvalidationReason::ApiKeyInactive => Self::ApiKeyInactive,
            InvalidationReason::UserInactive => Self::UserInactive,
        }
    }
}

/// A proto event type as the domain kind; UNSPECIFIED is rejected.
pub fn event_kind(value: i32) -> Result<EventKind> {
    match proto::AffinityEventType::try_from(value) {
        Ok(proto::AffinityEventType::Created) => Ok(EventKind::Created),
        Ok(proto::AffinityEventType::Refreshed) => Ok(EventKind::Refreshed),
        Ok(proto::AffinityEventType::Switched) => Ok(EventKind::Switched),
        Ok(proto::AffinityEventType::Invalidated) => Ok(EventKind::Invalidated),
        Ok(proto::AffinityEventType::Followed) => Ok(EventKind::Followed),
        Ok(proto::AffinityEventType::Missed) => Ok(EventKind::Missed),
        Ok(proto::AffinityEventType::Refused) => Ok(EventKind::Refused),
        _ => Err(Error::invalid("types", "unknown event type")),
    }
}

impl From<EventKind> for proto::AffinityEventType {
    fn from(value: EventKind) -> Self {
        match value {
            EventKind::Created => Self::Created,
            EventKind::Refreshed => Self::Refreshed,
            EventKind::Switched => Self::Switched,
            EventKind::Invalidated => Self::Invalidated,
            EventKind::Followed => Self::Followed,
            EventKind::Missed => Self::Missed,
            EventKind::Refused => Self::Refused,
        }
    }
}

impl From<MatchKind> for proto::UserMatchKind {
    fn from(value: MatchKind) -> Self {
        match value {
            MatchKind::UserId => Self::UserId,
            MatchKind::Username => Self::Username,
            MatchKind::Email => Self::Email,
            MatchKind::ApiKeyId => Self::ApiKeyId,
        }
    }
}

/// The resolved user as the proto message.
pub fn resolved_user(value: &ResolvedUser) -> proto::ResolvedUser {
    proto::ResolvedUser {
        user_id: value.user.id.clone(),
        username: value.user.username.clone(),
        email: value.user.email.clone(),
        matched_by: proto::UserMatchKind::from(value.matched_by).into(),
        api_key_id: value.api_key.as_ref().map(|k| k.id.clone()).unwrap_or_default(),
        api_key_name: value.api_key.as_ref().and_then(|k| k.name.clone()).unwrap_or_default(),
    }
}

/// An enriched affinity, with its binding's usage if any, as the proto
/// message.
pub fn affinity_detail(value: AffinityDetail, usage: &HashMap<AffinityKey, BindingUsage>) -> proto::AffinityDetail {
    proto::AffinityDetail {
        usage: usage.get(&value.affinity.key).map(binding_usage),
        affinity: Some((&value.affinity).into()),
        user_api_key_name: value.user_api_key_name.unwrap_or_default(),
        user_api_key_prefix: value.user_api_key_prefix,
        is_standalone: value.is_standalone,
        user_id: value.user_id.unwrap_or_default(),
        username: value.username.unwrap_or_default(),
        email: value.email.unwrap_or_default(),
        provider_name: value.provider_name.unwrap_or_default(),
        endpoint_api_format: value.endpoint_api_format.unwrap_or_default(),
        endpoint_url: value.endpoint_url.unwrap_or_default(),
        key_name: value.key_name.unwrap_or_default(),
        key_prefix: value.key_prefix,
        rate_multiplier: value.rate_multiplier,
        global_model_name: value.global_model_name,
        model_display_name: value.model_display_name.unwrap_or_default(),
    }
}

/// The stats as the proto message.
pub fn stats(value: &AffinityStats) -> proto::AffinityStats {
    proto::AffinityStats {
        storage_type: value.storage_type.to_owned(),
        active_affinities: value.active_affinities as i64,
        total_affinities: value.total_affinities,
        cache_hits: value.cache_hits,
        cache_misses: value.cache_misses,
        cache_hit_rate: value.hit_rate(),
        provider_switches: value.provider_switches,
        key_switches: value.key_switches,
        invalidations: value.invalidations,
        invalidations_by_reason: value.invalidations_by_reason.clone().into_iter().collect(),
        upstream: Some(upstream_usage(&value.upstream.total)),
        upstream_by_provider: usage_groups(value, UsageGroup::Provider),
        upstream_by_provider_key: usage_groups(value, UsageGroup::ProviderKey),
        upstream_by_model: usage_groups(value, UsageGroup::Model),
        refusals_by_reason: value.refusals_by_reason.clone().into_iter().collect(),
        evictions: value.evictions as i64,
    }
}

fn usage_groups(value: &AffinityStats, group: UsageGroup) -> Vec<proto::UpstreamUsageGroup> {
    value
        .upstream
        .group(group)
        .map(|(id, counters)| proto::UpstreamUsageGroup {
            id: id.clone(),
            usage: Some(upstream_usage(counters)),
        })
        .collect()
}

/// The configuration in force. The reservation values are Aether's
/// constants (its scheduler, not this service, applies them).
pub fn config(settings: &AffinitySettings, storage_type: &str, modes: SchedulingModes) -> proto::AffinityConfig {
    proto::AffinityConfig {
        default_ttl: Some(proto_duration(settings.default_ttl)),
        storage_type: storage_type.to_owned(),
        cache_reservation_ratio: 0.1,
        dynamic_reservation: Some(proto::DynamicReservationConfig {
            enabled: true,
            probe_phase_requests: 100,
            probe_reservation: 0.1,
            stable_min_reservation: 0.1,
            stable_max_reservation: 0.35,
            low_load_threshold: 0.5,
            high_load_threshold: 0.8,
        }),
        reconcile_interval: Some(proto_duration(settings.reconcile_interval)),
        scheduling_mode: modes.scheduling_mode,
        provider_priority_mode: modes.provider_priority_mode,
        write_only_on_success: settings.write_only_on_success,
        max_switches_per_minute: settings.max_switches_per_minute as i32,
        target_watch_interval: Some(proto_duration(settings.target_watch_interval)),
        memory_max_affinities: settings.memory_max_affinities as i64,
    }
}

/// An event as the stream message.
pub fn event(value: &AffinityEvent) -> proto::WatchAffinityEventsResponse {
    proto::WatchAffinityEventsResponse {
        r#type: proto::AffinityEventType::from(value.kind).into(),
        // A miss has no entry: the key alone says which affinity.
        affinity: Some(match &value.record {
            Some(record) => affinity(&value.key, record),
            None => proto::Affinity {
                affinity_key: value.key.affinity_key.clone(),
                api_format: value.key.api_format.clone(),
                global_model_id: value.key.global_model_id.clone(),
                ..Default::default()
            },
        }),
        previous: value.previous.as_ref().map(|p| affinity(&value.key, p)),
        reason: value
            .reason
            .map(|r| proto::InvalidationReason::from(r).into())
            .unwrap_or_default(),
        occurred_at: Some(timestamp(value.occurred_at)),
        instance_id: value.instance_id.clone(),
        decision_reason: value.decision_reason.clone(),
        trace_id: value.trace_id.clone().unwrap_or_default(),
    }
}

/// Model-mapping messages (`ModelMappingService`).
pub mod models {
    use serde_json::Value;

    use super::proto_duration;
    use crate::domain::models::{
        CacheBreakdown, CachedMapping, CachedProviderModel, GlobalModel, MappingStats, ModelMatch, ProviderModel,
        Resolution, UnmappedName, UnmappedStatus,
    };
    use crate::proto;

    /// JSON as a `google.protobuf.Value`.
    pub fn json_value(value: &Value) -> prost_types::Value {
        use prost_types::value::Kind;
        let kind = match value {
            Value::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
            Value::Bool(b) => Kind::BoolValue(*b),
            Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            Value::String(s) => Kind::StringValue(s.clone()),
            Value::Array(items) => Kind::ListValue(prost_types::ListValue {
                values: items.iter().map(json_value).collect(),
            }),
            Value::Object(fields) => Kind::StructValue(prost_types::Struct {
                fields: fields.iter().map(|(k, v)| (k.clone(), json_value(v))).collect(),
            }),
        };
        prost_types::Value { kind: Some(kind) }
    }

    fn optional_json(value: Option<&Value>) -> Option<prost_types::Value> {
        value.map(json_value)
    }

    /// A global model as the proto message.
    pub fn global_model(value: &GlobalModel) -> proto::GlobalModel {
        proto::GlobalModel {
            id: value.id.clone(),
            name: value.name.clone(),
            display_name: value.display_name.clone(),
            supported_capabilities: optional_json(value.supported_capabilities.as_ref()),
            config: optional_json(value.config.as_ref()),
            default_tiered_pricing: optional_json(value.default_tiered_pricing.as_ref()),
            default_price_per_request: value.default_price_per_request,
            is_active: value.is_active,
        }
    }

    /// A provider model as the proto message.
    pub fn model(value: &ProviderModel) -> proto::Model {
        proto::Model {
            id: value.id.clone(),
            provider_id: value.provider_id.clone(),
            global_model_id: value.global_model_id.clone(),
            provider_model_name: value.provider_model_name.clone(),
            provider_model_mappings: value
                .name_mappings()
                .into_iter()
                .map(|m| proto::ProviderModelNameMapping {
                    name: m.name,
                    priority: m.priority,
                })
                .collect(),
            is_active: value.is_active,
            // NULL reads as the column default.
            is_available: value.is_available.unwrap_or(true),
            price_per_request: value.price_per_request,
            tiered_pricing: optional_json(value.tiered_pricing.as_ref()),
            supports_vision: value.supports_vision,
            supports_function_calling: value.supports_function_calling,
            supports_streaming: value.supports_streaming,
            supports_extended_thinking: value.supports_extended_thinking,
            supports_image_generation: value.supports_image_generation,
            config: optional_json(value.config.as_ref()),
        }
    }

    impl From<ModelMatch> for proto::ModelMatchKind {
        fn from(value: ModelMatch) -> Self {
            match value {
                ModelMatch::ProviderModelName => Self::ProviderModelName,
                ModelMatch::GlobalModelName => Self::GlobalModelName,
                ModelMatch::Cache => Self::Cache,
            }
        }
    }

    /// A resolution as the response.
    pub fn resolution(value: Resolution) -> proto::ResolveModelResponse {
        proto::ResolveModelResponse {
            global_model: Some(global_model(&value.global_model)),
            matched_by: proto::ModelMatchKind::from(value.matched_by).into(),
            from_cache: value.from_cache,
            conflicting_global_model_ids: value.conflicting_global_model_ids,
        }
    }

    impl From<UnmappedStatus> for proto::UnmappedStatus {
        fn from(value: UnmappedStatus) -> Self {
            match value {
                UnmappedStatus::NotFound => Self::NotFound,
                UnmappedStatus::Invalid => Self::Invalid,
                UnmappedStatus::Error => Self::Error,
            }
        }
    }

    fn count(value: u64) -> i64 {
        i64::try_from(value).unwrap_or(i64::MAX)
    }

    fn breakdown(value: &CacheBreakdown) -> proto::ModelMappingCacheBreakdown {
        proto::ModelMappingCacheBreakdown {
            model_by_id: count(value.model_by_id),
            model_by_provider_global: count(value.model_by_provider_global),
            global_model_by_id: count(value.global_model_by_id),
            global_model_by_name: count(value.global_model_by_name),
            global_model_resolve: count(value.global_model_resolve),
        }
    }

    fn mapping(value: CachedMapping) -> proto::CachedModelMapping {
        proto::CachedModelMapping {
            mapping_name: value.mapping_name,
            global_model_name: value.global_model_name,
            global_model_display_name: value.global_model_display_name,
            providers: value.providers,
            ttl: value.ttl.map(proto_duration),
        }
    }

    fn provider_model(value: CachedProviderModel) -> proto::CachedProviderModel {
        proto::CachedProviderModel {
            provider_id: value.provider_id,
            provider_name: value.provider_name,
            global_model_id: value.global_model_id,
            global_model_name: value.global_model_name,
            global_model_display_name: value.global_model_display_name,
            provider_model_name: value.provider_model_name,
            aliases: value.aliases,
            ttl: value.ttl.map(proto_duration),
            hit_count: value.hit_count,
        }
    }

    fn unmapped(value: UnmappedName) -> proto::UnmappedModelName {
        proto::UnmappedModelName {
            mapping_name: value.mapping_name,
            status: proto::UnmappedStatus::from(value.status).into(),
            ttl: value.ttl.map(proto_duration),
        }
    }

    /// The stats as the response. The in-process memory cache (no Redis)
    /// is reported too, saying it is not Aether's.
    pub fn stats(value: MappingStats) -> proto::GetModelMappingStatsResponse {
        proto::GetModelMappingStatsResponse {
            available: true,
            message: if value.shared_cache {
                String::new()
            } else {
                "no Redis configured: this is the in-process memory cache of this instance, not shared with Aether"
                    .to_owned()
            },
            ttl: Some(proto_duration(value.ttl)),
            total_keys: count(value.breakdown.total()),
            breakdown: Some(breakdown(&value.breakdown)),
            mappings: value.mappings.into_iter().map(mapping).collect(),
            provider_model_mappings: value.provider_models.into_iter().map(provider_model).collect(),
            unmapped: value.unmapped.into_iter().map(unmapped).collect(),
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
