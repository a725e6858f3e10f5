//! Aether's rows as tests and benchmarks insert them: each builder fills the
//! columns a row needs, active; a caller changes others by struct update
//! (`users::ActiveModel { quota_usd: .., ..rows::user(..) }`). Benchmarks
//! include this file by path, so it depends on nothing else in `common`.

use aether_control::db::entities::{api_keys, global_models, provider_api_keys, provider_endpoints, providers, users};
use sea_orm::Set;
use serde_json::json;

/// An active, not deleted `users` row with `role`.
pub fn user(id: &str, username: &str, email: &str, role: users::UserRole) -> users::ActiveModel {
    users::ActiveModel {
        id: Set(id.into()),
        email: Set(email.into()),
        username: Set(username.into()),
        role: Set(role),
        is_active: Set(true),
        is_deleted: Set(false),
        ..Default::default()
    }
}

/// An active pay-as-you-go `providers` row.
pub fn provider(id: &str, name: &str, display_name: &str) -> providers::ActiveModel {
    providers::ActiveModel {
        id: Set(id.into()),
        name: Set(name.into()),
        display_name: Set(display_name.into()),
        is_active: Set(true),
        billing_type: Set(providers::ProviderBillingType::PayAsYouGo),
        ..Default::default()
    }
}

/// An active `provider_endpoints` row.
pub fn endpoint(id: &str, provider_id: &str, api_format: &str, base_url: &str) -> provider_endpoints::ActiveModel {
    provider_endpoints::ActiveModel {
        id: Set(id.into()),
        provider_id: Set(provider_id.into()),
        api_format: Set(api_format.into()),
        base_url: Set(base_url.into()),
        is_active: Set(true),
        ..Default::default()
    }
}

/// An active `provider_api_keys` row (rate 1.5, cache TTL 5 minutes).
pub fn provider_key(id: &str, endpoint_id: &str, api_key: &str, name: &str) -> provider_api_keys::ActiveModel {
    provider_api_keys::ActiveModel {
        id: Set(id.into()),
        endpoint_id: Set(endpoint_id.into()),
        api_key: Set(api_key.into()),
        name: Set(name.into()),
        rate_multiplier: Set(1.5),
        cache_ttl_minutes: Set(5),
        is_active: Set(true),
        ..Default::default()
    }
}

/// An active `global_models` row without tiers.
pub fn global_model(id: &str, name: &str, display_name: &str) -> global_models::ActiveModel {
    global_models::ActiveModel {
        id: Set(id.into()),
        name: Set(name.into()),
        display_name: Set(display_name.into()),
        is_active: Set(true),
        default_tiered_pricing: Set(json!({"tiers": []})),
        ..Default::default()
    }
}

/// An active, not standalone `api_keys` row of `user_id`, without a stored
/// key or a name.
pub fn api_key(id: &str, user_id: &str, key_hash: &str) -> api_keys::ActiveModel {
    api_keys::ActiveModel {
        id: Set(id.into()),
        user_id: Set(user_id.into()),
        key_hash: Set(key_hash.into()),
        is_standalone: Set(false),
        is_active: Set(true),
        ..Default::default()
    }
}
