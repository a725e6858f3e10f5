//! A small Aether world in the database: two users with API keys, two
//! providers with an endpoint and a key each, a global model, and a
//! scheduling switch. Keys are stored encrypted as Aether stores them.

use aether_control::db::entities::{
    api_keys, global_models, provider_api_keys, provider_endpoints, providers, system_configs, users,
};
use aether_control::domain::crypto::KeyCipher;
use sea_orm::{ActiveModelTrait, Database, Set};
use serde_json::json;

pub const ALICE: &str = "u-alice";
pub const BOB: &str = "u-bob";
pub const ALICE_KEY_1: &str = "ak-alice-1";
pub const ALICE_KEY_2: &str = "ak-alice-2";
pub const BOB_KEY: &str = "ak-bob-1";
pub const ALPHA: &str = "prov-alpha";
pub const BETA: &str = "prov-beta";
pub const ALPHA_ENDPOINT: &str = "ep-alpha";
pub const BETA_ENDPOINT: &str = "ep-beta";
pub const ALPHA_KEY: &str = "pk-alpha";
pub const BETA_KEY: &str = "pk-beta";
pub const MODEL: &str = "gm-sonnet";

/// A `users` row: active, not deleted, with `role`; other columns by struct
/// update (`users::ActiveModel { quota_usd: .., ..fixtures::user(..) }`).
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

/// Inserts the world into the database at `url` (schema already migrated).
pub async fn seed(url: &str) {
    let db = Database::connect(url).await.expect("connect to fixture database");
    // The service decrypts with the development default key, as here.
    let cipher = KeyCipher::from_secret(None, false).expect("dev cipher");
    for (id, username, email) in [(ALICE, "alice", "alice@example.com"), (BOB, "bob", "bob@example.com")] {
        user(id, username, email, users::UserRole::User)
            .insert(&db)
            .await
            .expect("insert user");
    }
    for (id, user, name, plaintext) in [
        (ALICE_KEY_1, ALICE, "alice laptop", "sk-alice-laptop-0001"),
        (ALICE_KEY_2, ALICE, "alice ci", "sk-alice-ci-000000002"),
        (BOB_KEY, BOB, "bob main", "sk-bob-main-00000003"),
    ] {
        api_keys::ActiveModel {
            id: Set(id.into()),
            user_id: Set(user.into()),
            key_hash: Set(format!("{id:0>64}")),
            key_encrypted: Set(Some(cipher.encrypt(plaintext))),
            name: Set(Some(name.into())),
            is_standalone: Set(false),
            is_active: Set(true),
            ..Default::default()
        }
        .insert(&db)
        .await
        .expect("insert api key");
    }
    for (name, display, endpoint_id, format, key, secret) in [
        (
            ALPHA,
            "Alpha Cloud",
            ALPHA_ENDPOINT,
            "CLAUDE",
            ALPHA_KEY,
            "sk-upstream-alpha-000111",
        ),
        (
            BETA,
            "Beta AI",
            BETA_ENDPOINT,
            "OPENAI",
            BETA_KEY,
            "sk-upstream-beta-000222",
        ),
    ] {
        provider(name, name, display)
            .insert(&db)
            .await
            .expect("insert provider");
        endpoint(endpoint_id, name, format, &format!("https://{name}.example/v1"))
            .insert(&db)
            .await
            .expect("insert endpoint");
        provider_key(key, endpoint_id, &cipher.encrypt(secret), &format!("{name} key"))
            .insert(&db)
            .await
            .expect("insert provider key");
    }
    global_model(MODEL, "claude-sonnet-4", "Claude Sonnet 4")
        .insert(&db)
        .await
        .expect("insert global model");
    system_configs::ActiveModel {
        id: Set("sc-scheduling".into()),
        key: Set("scheduling_mode".into()),
        value: Set(json!("fixed_order")),
        ..Default::default()
    }
    .insert(&db)
    .await
    .expect("insert system config");
    db.close().await.expect("close fixture connection");
}
