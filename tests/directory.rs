//! `SeaOrmDirectory` against real databases: the same body runs on a fresh PostgreSQL
//! database and on a fresh SQLite file, both built by the Migrator and filled with
//! Aether-shaped rows through the entities.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use aether_control::db::directory::SeaOrmDirectory;
use aether_control::db::entities::{api_keys, providers, system_configs, users};
use aether_control::domain::directory::{
    ApiKeySummary, ClientKey, Directory, KeywordHits, MatchKind, ProviderKeySummary, UpstreamNames, UserMatch,
    UserSummary,
};
use common::pg::TestDatabase;
use migration::{Migrator, MigratorTrait};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, Database, DatabaseConnection, EntityTrait, QueryFilter, Set};
use serde_json::json;
use users::UserRole;

const USER_A: &str = "aaaaaaaa-0000-4000-8000-00000000000a";
const USER_B: &str = "bbbbbbbb-0000-4000-8000-00000000000b";
/// User A's username.
const ALICE: &str = "alice";
/// User A's email, and also user B's username.
const ALICE_EMAIL: &str = "alice@example.com";
const BOB_EMAIL: &str = "Bob@Example.org";

const KEY_A1: &str = "11111111-0000-4000-8000-000000000001";
const KEY_A2: &str = "11111111-0000-4000-8000-000000000002";
/// User B's key whose id equals user A's id, so one identifier matches two kinds.
const KEY_B1: &str = USER_A;
const KEY_B2: &str = "22222222-0000-4000-8000-000000000002";
const KEY_A1_NAME: &str = "Alice Laptop";
const KEY_B1_NAME: &str = "50%_off [promo]*?";
const KEY_B2_NAME: &str = r"back\slash ÉTÉ";

const PROVIDER_ID: &str = "PROV0000-0000-4000-8000-00000000abcd";
const ENDPOINT_ID: &str = "eeeeeeee-0000-4000-8000-000000000001";
const PROVIDER_KEY_ID: &str = "KEYP0000-0000-4000-8000-000000000001";
const GLOBAL_MODEL_ID: &str = "99999999-0000-4000-8000-000000000001";

#[tokio::test]
async fn directory_on_postgres() {
    TestDatabase::scoped(|url| async move { exercise_directory(&url).await }).await;
}

#[tokio::test]
async fn directory_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = common::sqlite_url(&dir);
    exercise_directory(&url).await;
}

/// With a name cache, a renamed provider keeps its old name in listings
/// until the TTL passes; an unknown id is remembered as missing.
#[tokio::test]
async fn upstream_names_are_cached_for_their_ttl() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = common::sqlite_url(&dir);
    let db = Database::connect(&url).await.expect("connect");
    Migrator::up(&db, None).await.expect("migrate");
    insert_rows(&db).await;
    let ttl = Duration::from_secs(1);
    let directory = SeaOrmDirectory::new(db.clone()).caching_names(ttl);
    let name = || async {
        let ids = [PROVIDER_ID.to_owned(), "missing".to_owned()];
        let names = directory
            .upstream_names(&ids, &[], &[], &[])
            .await
            .expect("upstream_names");
        assert_eq!(names.provider_display_names.len(), 1, "{names:?}");
        names.provider_display_names[PROVIDER_ID].clone()
    };
    assert_eq!(name().await, "Anthropic");
    providers::Entity::update_many()
        .col_expr(providers::Column::DisplayName, Expr::value("Renamed"))
        .filter(providers::Column::Id.eq(PROVIDER_ID))
        .exec(&db)
        .await
        .expect("rename");
    assert_eq!(name().await, "Anthropic", "still cached");
    assert_eq!(
        SeaOrmDirectory::new(db.clone())
            .upstream_names(&[PROVIDER_ID.to_owned()], &[], &[], &[])
            .await
            .expect("uncached")
            .provider_display_names[PROVIDER_ID],
        "Renamed",
        "without a cache the rename shows at once"
    );
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert_eq!(name().await, "Renamed", "read again after the TTL");
    db.close().await.expect("close");
}

/// The shared body.
async fn exercise_directory(url: &str) {
    let db = Database::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    Migrator::up(&db, None).await.expect("migrate");
    insert_rows(&db).await;
    let directory = SeaOrmDirectory::new(db.clone());

    match_user_follows_aether_order(&directory).await;
    api_keys_are_read(&directory).await;
    id_lists_are_chunked(&directory).await;
    upstream_names_are_read(&directory).await;
    system_configs_are_read(&directory).await;
    search_is_a_literal_case_insensitive_substring_match(&directory).await;

    db.close().await.expect("close");
}

/// User A or B as the directory summarises it.
fn summary(user_id: &str) -> UserSummary {
    let (username, email) = if user_id == USER_A {
        (ALICE, ALICE_EMAIL)
    } else {
        (ALICE_EMAIL, BOB_EMAIL)
    };
    UserSummary {
        id: user_id.to_owned(),
        username: username.to_owned(),
        email: email.to_owned(),
    }
}

fn user(kind: MatchKind, user_id: &str) -> UserMatch {
    UserMatch {
        kind,
        user: summary(user_id),
        api_key: None,
    }
}

fn via_key(key: ApiKeySummary) -> UserMatch {
    UserMatch {
        kind: MatchKind::ApiKeyId,
        user: summary(&key.user_id),
        api_key: Some(key),
    }
}

/// A key with its owner, as [`Directory::client_keys`] reads it.
fn owned(key: ApiKeySummary) -> ClientKey {
    ClientKey {
        owner: Some(summary(&key.user_id)),
        key,
    }
}

async fn match_user_follows_aether_order(directory: &SeaOrmDirectory) {
    let cases: [(&str, Vec<UserMatch>); 9] = [
        // users.id of A and api_keys.id of B's key: both, id first.
        (USER_A, vec![user(MatchKind::UserId, USER_A), via_key(key_b1())]),
        (USER_B, vec![user(MatchKind::UserId, USER_B)]),
        (ALICE, vec![user(MatchKind::Username, USER_A)]),
        // B's username before A's email.
        (
            ALICE_EMAIL,
            vec![user(MatchKind::Username, USER_B), user(MatchKind::Email, USER_A)],
        ),
        (BOB_EMAIL, vec![user(MatchKind::Email, USER_B)]),
        (KEY_A2, vec![via_key(key_a2())]),
        // Exact and case-sensitive.
        ("ALICE", vec![]),
        ("bob@example.org", vec![]),
        ("alice@example", vec![]),
    ];
    for (identifier, expected) in cases {
        let matches = directory.match_user(identifier).await.expect("match_user");
        assert_eq!(matches, expected, "match_user({identifier:?})");
    }
    assert_eq!(directory.match_user("nobody").await.expect("match_user"), []);
    assert_eq!(directory.match_user("%").await.expect("match_user"), []);
}

fn key_a1() -> ApiKeySummary {
    ApiKeySummary {
        id: KEY_A1.to_owned(),
        user_id: USER_A.to_owned(),
        name: Some(KEY_A1_NAME.to_owned()),
        key_encrypted: Some("enc-a1".to_owned()),
        is_standalone: false,
    }
}

fn key_b1() -> ApiKeySummary {
    ApiKeySummary {
        id: KEY_B1.to_owned(),
        user_id: USER_B.to_owned(),
        name: Some(KEY_B1_NAME.to_owned()),
        key_encrypted: None,
        is_standalone: false,
    }
}

fn key_a2() -> ApiKeySummary {
    ApiKeySummary {
        id: KEY_A2.to_owned(),
        user_id: USER_A.to_owned(),
        name: None,
        key_encrypted: None,
        is_standalone: true,
    }
}

async fn api_keys_are_read(directory: &SeaOrmDirectory) {
    let client_key = |id: &str| {
        let ids = vec![id.to_owned()];
        async move {
            let found = directory.client_keys(&ids).await.expect("client_keys");
            assert!(found.len() <= 1, "{found:?}");
            found.into_iter().next()
        }
    };
    assert_eq!(client_key(KEY_A1).await, Some(owned(key_a1())));
    assert_eq!(client_key(KEY_A2).await, Some(owned(key_a2())));
    assert_eq!(client_key(KEY_B1).await, Some(owned(key_b1())));
    assert_eq!(client_key("missing").await, None);
    assert_eq!(client_key(&KEY_B1.to_uppercase()).await, None);

    let mut of_a = directory.api_keys_of_user(USER_A).await.expect("keys of A");
    of_a.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(of_a, [key_a1(), key_a2()]);
    let mut of_b: Vec<String> = directory
        .api_keys_of_user(USER_B)
        .await
        .expect("keys of B")
        .into_iter()
        .map(|key| key.id)
        .collect();
    of_b.sort();
    assert_eq!(of_b, sorted([KEY_B1, KEY_B2]));
    assert_eq!(directory.api_keys_of_user("nobody").await.expect("keys of nobody"), []);

    // The keys come with the matches, which are match_user's.
    let matching = |identifier: &'static str| async move {
        let (matches, keys) = directory
            .match_user_with_keys(identifier)
            .await
            .expect("matches with keys");
        assert_eq!(matches, directory.match_user(identifier).await.expect("match_user"));
        let mut ids: Vec<String> = keys.into_iter().map(|key| key.id).collect();
        ids.sort();
        ids
    };
    // USER_A is also KEY_B1's id: only user columns count here.
    assert_eq!(matching(USER_A).await, sorted([KEY_A1, KEY_A2]));
    assert_eq!(matching(ALICE).await, sorted([KEY_A1, KEY_A2]));
    // B's username and A's email: both users' keys.
    assert_eq!(matching(ALICE_EMAIL).await, sorted([KEY_A1, KEY_A2, KEY_B1, KEY_B2]));
    assert_eq!(matching(KEY_A1).await, Vec::<String>::new());
    assert_eq!(matching(BOB_EMAIL).await, sorted([KEY_B1, KEY_B2]));
    assert_eq!(matching("%").await, Vec::<String>::new());
}

/// 1200 ids (plus a repeat) of which a few exist: more than one chunk, no repeats out.
fn many_ids(existing: &[&str]) -> Vec<String> {
    let mut ids: Vec<String> = (0..1200 - existing.len())
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect();
    for (position, id) in existing.iter().enumerate() {
        ids.insert(position * 400 + 100, (*id).to_owned());
    }
    ids.push(existing[0].to_owned());
    assert_eq!(ids.len(), 1201);
    ids
}

async fn id_lists_are_chunked(directory: &SeaOrmDirectory) {
    let mut keys: Vec<ClientKey> = directory
        .client_keys(&many_ids(&[KEY_A2, KEY_B2, KEY_A1]))
        .await
        .expect("client_keys");
    keys.sort_by(|x, y| x.key.id.cmp(&y.key.id));
    let ids: Vec<&str> = keys.iter().map(|k| k.key.id.as_str()).collect();
    assert_eq!(ids, [KEY_A1, KEY_A2, KEY_B2]);
    assert_eq!(keys[0], owned(key_a1()));
    assert_eq!(keys[1], owned(key_a2()));
    assert_eq!(keys[2].owner, Some(summary(USER_B)));
    assert_eq!(directory.client_keys(&[]).await.expect("no ids"), []);
    assert_eq!(
        directory
            .client_keys(&["missing".to_owned()])
            .await
            .expect("missing id"),
        []
    );
}

async fn upstream_names_are_read(directory: &SeaOrmDirectory) {
    let ids = |id: &str| vec![id.to_owned(), "missing".to_owned(), id.to_owned()];
    let names = directory
        .upstream_names(
            &ids(PROVIDER_ID),
            &ids(ENDPOINT_ID),
            &ids(PROVIDER_KEY_ID),
            &ids(GLOBAL_MODEL_ID),
        )
        .await
        .expect("upstream_names");
    let expected = UpstreamNames {
        provider_display_names: HashMap::from([(PROVIDER_ID.to_owned(), "Anthropic".to_owned())]),
        endpoints: HashMap::from([(
            ENDPOINT_ID.to_owned(),
            ("CLAUDE".to_owned(), "https://api.anthropic.com".to_owned()),
        )]),
        provider_keys: HashMap::from([(
            PROVIDER_KEY_ID.to_owned(),
            ProviderKeySummary {
                name: "primary".to_owned(),
                api_key_encrypted: "gAAAAA-encrypted".to_owned(),
                rate_multiplier: 1.5,
            },
        )]),
        global_models: HashMap::from([(
            GLOBAL_MODEL_ID.to_owned(),
            ("claude-sonnet-4".to_owned(), "Claude Sonnet 4".to_owned()),
        )]),
    };
    assert_eq!(names, expected);

    let only_models = directory
        .upstream_names(&[], &[], &[], &many_ids(&[GLOBAL_MODEL_ID]))
        .await
        .expect("only models");
    assert_eq!(
        only_models,
        UpstreamNames {
            global_models: expected.global_models.clone(),
            ..UpstreamNames::default()
        }
    );
    assert_eq!(
        directory.upstream_names(&[], &[], &[], &[]).await.expect("nothing"),
        UpstreamNames::default()
    );
}

async fn system_configs_are_read(directory: &SeaOrmDirectory) {
    assert_eq!(
        directory.system_config("provider_priority_mode").await.expect("config"),
        Some(json!({"mode": "provider", "weights": [1, 2.5]}))
    );
    assert_eq!(
        directory.system_config("cache_ttl_seconds").await.expect("config"),
        Some(json!(300))
    );
    assert_eq!(
        directory.system_config("Cache_TTL_Seconds").await.expect("config"),
        None
    );
    assert_eq!(directory.system_config("missing").await.expect("config"), None);
}

fn sorted<const N: usize>(ids: [&str; N]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
    ids.sort();
    ids
}

/// `search` with each list sorted, so the comparison does not depend on the backend's collation.
async fn search(directory: &SeaOrmDirectory, keyword: &str, limit: u64) -> KeywordHits {
    let mut hits = directory.search(keyword, limit).await.expect("search");
    hits.affinity_keys.sort();
    hits.provider_ids.sort();
    hits.provider_key_ids.sort();
    hits
}

fn keys<const N: usize>(ids: [&str; N]) -> KeywordHits {
    KeywordHits {
        affinity_keys: sorted(ids),
        ..KeywordHits::default()
    }
}

async fn search_is_a_literal_case_insensitive_substring_match(directory: &SeaOrmDirectory) {
    let all_keys = [KEY_A1, KEY_A2, KEY_B1, KEY_B2];
    let cases: Vec<(&str, KeywordHits)> = vec![
        // api_keys.name, in any case.
        ("ALICE lap", keys([KEY_A1])),
        ("ptop", keys([KEY_A1])),
        // api_keys.id.
        ("11111111-0000", keys([KEY_A1, KEY_A2])),
        ("-000000000002", keys([KEY_A2, KEY_B2])),
        // users.email of A and users.username of B: all keys of both.
        ("EXAMPLE.com", keys(all_keys)),
        // users.email of B only.
        ("bob@", keys([KEY_B1, KEY_B2])),
        // users.username of A (a substring of B's username as well).
        ("Alic", keys(all_keys)),
        // users.id of B; users.id of A is also KEY_B1's id.
        ("BBBBBBBB", keys([KEY_B1, KEY_B2])),
        ("aaaaaaaa-0000", keys([KEY_A1, KEY_A2, KEY_B1])),
        // providers.id and provider_api_keys.id, in any case.
        (
            "prov0000",
            KeywordHits {
                provider_ids: vec![PROVIDER_ID.to_owned()],
                ..KeywordHits::default()
            },
        ),
        (
            "keyp0000-0000",
            KeywordHits {
                provider_key_ids: vec![PROVIDER_KEY_ID.to_owned()],
                ..KeywordHits::default()
            },
        ),
        // "-4000-8000-" is in every id.
        (
            "-4000-8000-",
            KeywordHits {
                affinity_keys: sorted(all_keys),
                provider_ids: vec![PROVIDER_ID.to_owned()],
                provider_key_ids: vec![PROVIDER_KEY_ID.to_owned()],
            },
        ),
        // LIKE metacharacters are literal: only KEY_B1's name holds '%' and '_'.
        ("%", keys([KEY_B1])),
        ("_", keys([KEY_B1])),
        ("%_o", keys([KEY_B1])),
        ("50%_OFF", keys([KEY_B1])),
        ("0%o", keys([])),
        ("50_", keys([])),
        ("%%", keys([])),
        // A backslash is literal too (only KEY_B2's name holds one).
        (r"\", keys([KEY_B2])),
        (r"k\s", keys([KEY_B2])),
        (r"k\\s", keys([])),
        (r"\%", keys([])),
        // Glob characters are plain text.
        ("*", keys([KEY_B1])),
        ("?", keys([KEY_B1])),
        ("[promo]*?", keys([KEY_B1])),
        ("[", keys([KEY_B1])),
        ("a*e", keys([])),
        ("al?ce", keys([])),
        ("[a]lice", keys([])),
        // A non-ASCII value is found in its own case on every backend (folding of
        // non-ASCII case is best-effort on SQLite, so it is not asserted).
        ("ÉTÉ", keys([KEY_B2])),
        ("zzz", KeywordHits::default()),
        ("'; DROP TABLE users; --", KeywordHits::default()),
    ];
    for (keyword, expected) in cases {
        assert_eq!(search(directory, keyword, 100).await, expected, "search({keyword:?})");
    }

    // The limit caps each list.
    let capped = search(directory, "-4000-8000-", 2).await;
    assert_eq!(
        (
            capped.affinity_keys.len(),
            capped.provider_ids.len(),
            capped.provider_key_ids.len()
        ),
        (2, 1, 1)
    );
    assert!(capped.affinity_keys.iter().all(|key| all_keys.contains(&key.as_str())));
    assert_eq!(search(directory, "example.com", 3).await.affinity_keys.len(), 3);
    assert_eq!(search(directory, "-4000-8000-", 0).await, KeywordHits::default());
    assert_eq!(search(directory, "example.com", u64::MAX).await, keys(all_keys));

    // The users table is still there after the hostile keyword above.
    assert_eq!(directory.match_user(ALICE).await.expect("match_user").len(), 1);
}

async fn insert_rows(db: &DatabaseConnection) {
    for (id, username, email) in [(USER_A, ALICE, ALICE_EMAIL), (USER_B, ALICE_EMAIL, BOB_EMAIL)] {
        common::rows::user(id, username, email, UserRole::User)
            .insert(db)
            .await
            .expect("insert user");
    }
    let api_key_rows = [
        (KEY_A1, USER_A, Some(KEY_A1_NAME), Some("enc-a1"), false),
        (KEY_A2, USER_A, None, None, true),
        (KEY_B1, USER_B, Some(KEY_B1_NAME), None, false),
        (KEY_B2, USER_B, Some(KEY_B2_NAME), Some("enc-b2"), false),
    ];
    for (n, (id, user_id, name, key_encrypted, is_standalone)) in api_key_rows.into_iter().enumerate() {
        api_keys::ActiveModel {
            key_encrypted: Set(key_encrypted.map(str::to_owned)),
            name: Set(name.map(str::to_owned)),
            is_standalone: Set(is_standalone),
            is_active: Set(n != 3),
            ..common::rows::api_key(id, user_id, &format!("{n:064}"))
        }
        .insert(db)
        .await
        .expect("insert api key");
    }
    common::rows::provider(PROVIDER_ID, "anthropic", "Anthropic")
        .insert(db)
        .await
        .expect("insert provider");
    common::rows::endpoint(ENDPOINT_ID, PROVIDER_ID, "CLAUDE", "https://api.anthropic.com")
        .insert(db)
        .await
        .expect("insert endpoint");
    common::rows::provider_key(PROVIDER_KEY_ID, ENDPOINT_ID, "gAAAAA-encrypted", "primary")
        .insert(db)
        .await
        .expect("insert provider key");
    common::rows::global_model(GLOBAL_MODEL_ID, "claude-sonnet-4", "Claude Sonnet 4")
        .insert(db)
        .await
        .expect("insert global model");
    for (n, (key, value)) in [
        (
            "provider_priority_mode",
            json!({"mode": "provider", "weights": [1, 2.5]}),
        ),
        ("cache_ttl_seconds", json!(300)),
    ]
    .into_iter()
    .enumerate()
    {
        system_configs::ActiveModel {
            id: Set(format!("cccccccc-0000-4000-8000-{n:012}")),
            key: Set(key.to_owned()),
            value: Set(value),
            ..Default::default()
        }
        .insert(db)
        .await
        .expect("insert system config");
    }
}
