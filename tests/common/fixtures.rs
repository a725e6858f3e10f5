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

/// Inserts the world into the database at `url` (schema already migrated).
pub async fn seed(url: &str) {
    let db = Database::connect(url).await.expect("connect to fixture database");
    // The service decrypts with the development default key, as here.
    let cipher = KeyCipher::from_secret(None, false).expect("dev cipher");
    for (id, username, email) in [(ALICE, "alice", "alice@example.com"), (BOB, "bob", "bob@example.com")] {
        users::ActiveModel {
            id: Set(id.into()),
            email: Set(email.into()),
            username: Set(username.into()),
            role: Set(users::UserRole::User),
            is_active: Set(true),
            is_deleted: Set(false),
            ..Default::default()
        }
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
    for (provider, display, endpoint, format, key, secret) in [
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
        providers::ActiveModel {
            id: Set(provider.into()),
            name: Set(provider.into()),
            display_name: Set(display.into()),
            is_active: Set(true),
            billing_type: Set(providers::ProviderBillingType::PayAsYouGo),
            ..Default::default()
        }
        .insert(&db)
        .await
        .expect("insert provider");
        provider_endpoints::ActiveModel {
            id: Set(endpoint.into()),
            provider_id: Set(provider.into()),
            api_format: Set(format.into()),
            base_url: Set(format!("https://{provider}.example/v1")),
            is_active: Set(true),
            ..Default::default()
        }
        .insert(&db)
        .await
        .expect("insert endpoint");
        provider_api_keys::ActiveModel {
            id: Set(key.into()),
            endpoint_id: Set(endpoint.into()),
            api_key: Set(cipher.encrypt(secret)),
            name: Set(format!("{provider} key")),
            rate_multiplier: Set(1.5),
            cache_ttl_minutes: Set(5),
            is_active: Set(true),
            ..Default::default()
        }
        .insert(&db)
        .await
        .expect("insert provider key");
    }
    global_models::ActiveModel {
        id: Set(MODEL.into()),
        name: Set("claude-sonnet-4".into()),
        display_name: Set("Claude Sonnet 4".into()),
        is_active: Set(true),
        default_tiered_pricing: Set(json!({"tiers": []})),
        ..Default::default()
    }
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
