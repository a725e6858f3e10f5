//! A small Aether world in the database: two users with API keys, two
//! providers with an endpoint and a key each, a global model, and a
//! scheduling switch. Keys are stored encrypted as Aether stores them.

use aether_control::db::entities::{api_keys, system_configs, users};
use aether_control::domain::crypto::KeyCipher;

use super::rows::{api_key, endpoint, global_model, provider, provider_key, user};
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
        user(id, username, email, users::UserRole::User)
            .insert(&db)
            .await
            .expect("insert user");
    }
    for (id, owner, name, plaintext) in [
        (ALICE_KEY_1, ALICE, "alice laptop", "sk-alice-laptop-0001"),
        (ALICE_KEY_2, ALICE, "alice ci", "sk-alice-ci-000000002"),
        (BOB_KEY, BOB, "bob main", "sk-bob-main-00000003"),
    ] {
        api_keys::ActiveModel {
            key_encrypted: Set(Some(cipher.encrypt(plaintext))),
            name: Set(Some(name.into())),
            ..api_key(id, owner, &format!("{id:0>64}"))
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
