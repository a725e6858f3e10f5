//! UserService over real gRPC, one suite run on the embedded default
//! (memory cache + SQLite) and on Redis + PostgreSQL; on Redis the cache
//! text is checked byte for byte against Aether's `json.dumps`. Plus: Redis
//! down (the database answers), and the fallback counter.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aether_control::db::DbConnection;
use aether_control::db::directory::SeaOrmDirectory;
use aether_control::db::entities::users;
use aether_control::domain::directory::UserKey;
use aether_control::domain::users::UserEngine;
use aether_control::error::{StoreError, StoreKind};
use aether_control::proto::user_service_client::UserServiceClient;
use aether_control::proto::*;
use aether_control::store::CacheStore;
use aether_control::store::memory::MemoryCache;
use async_trait::async_trait;
use chrono::{DateTime, FixedOffset};
use common::fixtures::{self, *};
use common::server::{AuthedChannel, TestServer};
use fred::prelude::*;
use prost_types::value::Kind;
use sea_orm::{ActiveModelTrait, ConnectionTrait, Database, Set};
use tonic::Code;

type Client = UserServiceClient<AuthedChannel>;

const CAROL: &str = "u-carol";
const CAROL_EMAIL: &str = "carol@example.com";
/// Dave's username is Carol's email: "carol@example.com" matches both.
const DAVE: &str = "u-dave";
const DAVE_EMAIL: &str = "dave@example.com";
/// Bob's key whose id is Dave's email: "dave@example.com" matches both.
const BOB_ODD_KEY: &str = DAVE_EMAIL;
/// Carol's key whose id is her own username: not a shadowing match.
const CAROL_KEY: &str = "carol";
/// A user whose id and email hold glob and separator characters.
const GLOB: &str = "u-*?[]:glob";
const GLOB_EMAIL: &str = "g*?[x]:@example.com";

const CAROL_CREATED: &str = "2025-01-01T00:00:00.123456+00:00";
const CAROL_LOGIN: &str = "2025-06-01T12:30:00+00:00";
/// Stored with members out of alphabetical order: the cache keeps them.
const CAROL_SETTINGS: &str = r#"{"zeta": {"b": 1, "a": 2.0}, "alpha": ["é", null, true, 1e-05]}"#;

/// Carol's cache entry as Aether's `json.dumps(_user_to_dict(carol))`.
const CAROL_JSON: &str = concat!(
    r#"{"id": "u-carol", "email": "carol@example.com", "username": "carol", "role": "admin", "#,
    r#""is_active": false, "quota_usd": 12.5, "used_usd": 0.0, "#,
    r#""created_at": "2025-01-01T00:00:00.123456+00:00", "last_login_at": "2025-06-01T12:30:00+00:00", "#,
    r#""model_capability_settings": {"zeta": {"b": 1, "a": 2.0}, "alpha": ["\u00e9", null, true, 1e-05]}}"#
);

fn at(text: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(text).expect("test timestamp")
}

fn proto_time(text: &str) -> prost_types::Timestamp {
    let value = at(text);
    prost_types::Timestamp {
        seconds: value.timestamp(),
        nanos: value.timestamp_subsec_nanos() as i32,
    }
}

/// Adds Carol (admin, inactive, NULL used_usd, settings), Dave, the glob
/// user and two odd API keys to the fixture world.
async fn seed_users(url: &str) {
    fixtures::seed(url).await;
    let db = Database::connect(url).await.expect("connect to fixture database");
    let carol = users::ActiveModel {
        is_active: Set(false),
        quota_usd: Set(Some(12.5)),
        used_usd: Set(None),
        created_at: Set(at(CAROL_CREATED)),
        updated_at: Set(at(CAROL_CREATED)),
        last_login_at: Set(Some(at(CAROL_LOGIN))),
        ..common::rows::user(CAROL, "carol", CAROL_EMAIL, users::UserRole::Admin)
    };
    carol.insert(&db).await.expect("insert carol");
    for (id, username, email) in [(DAVE, CAROL_EMAIL, DAVE_EMAIL), (GLOB, "glob", GLOB_EMAIL)] {
        common::rows::user(id, username, email, users::UserRole::User)
            .insert(&db)
            .await
            .expect("insert user");
    }
    for (id, owner) in [(BOB_ODD_KEY, BOB), (CAROL_KEY, CAROL)] {
        common::rows::api_key(id, owner, &format!("{id:0>64}"))
            .insert(&db)
            .await
            .expect("insert api key");
    }
    // Raw text, so the stored JSON keeps its member order (sea-orm's Value
    // would sort the keys).
    db.execute_unprepared(&format!(
        "UPDATE users SET model_capability_settings = '{CAROL_SETTINGS}' WHERE id = '{CAROL}'"
    ))
    .await
    .expect("store settings text");
    db.close().await.expect("close fixture connection");
}

async fn resolve(client: &mut Client, identifier: &str) -> Result<ResolveUserResponse, tonic::Status> {
    client
        .resolve_user(ResolveUserRequest {
            identifier: identifier.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn get(client: &mut Client, lookup: get_user_request::Lookup) -> Result<GetUserResponse, tonic::Status> {
    client
        .get_user(GetUserRequest { lookup: Some(lookup) })
        .await
        .map(tonic::Response::into_inner)
}

fn by_id(id: &str) -> get_user_request::Lookup {
    get_user_request::Lookup::UserId(id.into())
}

fn by_email(email: &str) -> get_user_request::Lookup {
    get_user_request::Lookup::Email(email.into())
}

async fn invalidate(client: &mut Client, user_id: &str, email: Option<&str>) -> Result<i32, tonic::Status> {
    client
        .invalidate_user_cache(InvalidateUserCacheRequest {
            user_id: user_id.into(),
            email: email.map(str::to_owned),
        })
        .await
        .map(|r| r.into_inner().deleted_keys)
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, tonic::Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
}

fn assert_carol(user: &User) {
    assert_eq!(
        (user.id.as_str(), user.email.as_str(), user.username.as_str()),
        (CAROL, CAROL_EMAIL, "carol")
    );
    assert_eq!(user.role(), aether_control::proto::UserRole::Admin);
    assert!(!user.is_active, "inactive users are returned, flagged");
    assert_eq!(user.quota_usd, Some(12.5));
    assert_eq!(user.used_usd, 0.0, "NULL used_usd reads as 0.0");
    assert_eq!(user.created_at, Some(proto_time(CAROL_CREATED)));
    assert_eq!(user.last_login_at, Some(proto_time(CAROL_LOGIN)));
    let settings = user.model_capability_settings.as_ref().expect("settings struct");
    let Some(Kind::StructValue(zeta)) = &settings.fields["zeta"].kind else {
        panic!("zeta is an object: {settings:?}")
    };
    assert_eq!(zeta.fields["a"].kind, Some(Kind::NumberValue(2.0)));
    assert_eq!(zeta.fields["b"].kind, Some(Kind::NumberValue(1.0)));
    let Some(Kind::ListValue(alpha)) = &settings.fields["alpha"].kind else {
        panic!("alpha is a list: {settings:?}")
    };
    assert_eq!(alpha.values[0].kind, Some(Kind::StringValue("é".into())));
    assert_eq!(alpha.values[1].kind, Some(Kind::NullValue(0)));
    assert_eq!(alpha.values.len(), 4);
}

/// A test's view of the Redis keys behind the cache.
struct RedisView {
    client: fred::clients::Client,
    namespace: String,
}

impl RedisView {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.namespace)
    }

    async fn get(&self, name: &str) -> Option<String> {
        self.client.get(self.key(name)).await.expect("redis get")
    }

    async fn ttl(&self, name: &str) -> i64 {
        self.client.ttl(self.key(name)).await.expect("redis ttl")
    }

    async fn set(&self, name: &str, value: &str) {
        let _: () = self
            .client
            .set(self.key(name), value, Some(Expiration::EX(60)), None, false)
            .await
            .expect("redis set");
    }
}

async fn resolution_suite(client: &mut Client) {
    // Each kind resolves, whitespace around the identifier ignored.
    for (identifier, user, kind, key) in [
        (ALICE, ALICE, UserMatchKind::UserId, ""),
        (" alice ", ALICE, UserMatchKind::Username, ""),
        ("\tbob@example.com\n", BOB, UserMatchKind::Email, ""),
        (ALICE_KEY_2, ALICE, UserMatchKind::ApiKeyId, ALICE_KEY_2),
        (GLOB, GLOB, UserMatchKind::UserId, ""),
    ] {
        let found = resolve(client, identifier).await.expect(identifier);
        let resolved = found.user.as_ref().expect("user");
        assert_eq!(
            (resolved.id.as_str(), found.matched_by(), found.api_key_id.as_str()),
            (user, kind, key),
            "{identifier:?}"
        );
        assert!(found.shadowed_matches.is_empty(), "{identifier:?}");
        assert!(resolved.created_at.is_some());
    }

    // The full user comes back, whatever kind matched.
    let carol = resolve(client, CAROL).await.expect("carol");
    assert_carol(carol.user.as_ref().unwrap());
    let alice = resolve(client, "alice").await.unwrap().user.unwrap();
    assert_eq!(alice.role(), aether_control::proto::UserRole::User);
    assert_eq!((alice.is_active, alice.quota_usd, alice.used_usd), (true, None, 0.0));
    assert!(alice.last_login_at.is_none() && alice.model_capability_settings.is_none());

    // Dave's username is Carol's email: the username wins, Carol is reported.
    let found = resolve(client, CAROL_EMAIL).await.unwrap();
    assert_eq!(
        (found.user.as_ref().unwrap().id.as_str(), found.matched_by()),
        (DAVE, UserMatchKind::Username)
    );
    assert_eq!(
        found.shadowed_matches,
        [ShadowedUserMatch {
            matched_by: UserMatchKind::Email.into(),
            user_id: CAROL.into(),
        }]
    );
    // Dave's email is the id of one of Bob's keys: the email wins.
    let found = resolve(client, DAVE_EMAIL).await.unwrap();
    assert_eq!(
        (
            found.user.as_ref().unwrap().id.as_str(),
            found.matched_by(),
            found.api_key_id.as_str()
        ),
        (DAVE, UserMatchKind::Email, "")
    );
    assert_eq!(
        found.shadowed_matches,
        [ShadowedUserMatch {
            matched_by: UserMatchKind::ApiKeyId.into(),
            user_id: BOB.into(),
        }]
    );
    // A later match of the same user is no ambiguity.
    let found = resolve(client, "carol").await.unwrap();
    assert_eq!(found.matched_by(), UserMatchKind::Username);
    assert!(found.shadowed_matches.is_empty());

    // Exact and case-sensitive; glob characters are plain data.
    for identifier in ["nobody", "Alice", "ALICE@example.com", "u-*", "*", "alice*", "u-?lice"] {
        let status = resolve(client, identifier).await.expect_err(identifier);
        assert_eq!(status.code(), Code::NotFound, "{identifier}");
    }
    for identifier in ["", "   ", &"x".repeat(300), "a\u{0}b"] {
        assert_invalid(resolve(client, identifier).await, "bad identifier");
    }
}

async fn cache_suite(client: &mut Client, redis: Option<&RedisView>) {
    // Miss, then hit; by id and by email are separate entries.
    let first = get(client, by_id(CAROL)).await.expect("get carol");
    assert!(!first.from_cache);
    assert_carol(first.user.as_ref().unwrap());
    let second = get(client, by_id(CAROL)).await.unwrap();
    assert!(second.from_cache);
    assert_eq!(second.user, first.user, "the cache answers what the database did");
    let by_mail = get(client, by_email(CAROL_EMAIL)).await.unwrap();
    assert!(!by_mail.from_cache);
    assert_eq!(by_mail.user, first.user);
    assert!(get(client, by_email(CAROL_EMAIL)).await.unwrap().from_cache);

    if let Some(redis) = redis {
        // Aether's exact text, SETEX 60.
        assert_eq!(redis.get("user:id:u-carol").await.as_deref(), Some(CAROL_JSON));
        assert_eq!(
            redis.get("user:email:carol@example.com").await.as_deref(),
            Some(CAROL_JSON)
        );
        let ttl = redis.ttl("user:id:u-carol").await;
        assert!((1..=60).contains(&ttl), "ttl {ttl}");

        // What Aether wrote is read back (a user only the cache knows).
        redis
            .set(
                "user:id:u-ghost",
                concat!(
                    r#"{"id": "u-ghost", "email": "ghost@example.com", "username": "ghost", "role": "user", "#,
                    r#""is_active": true, "quota_usd": null, "used_usd": 3.25, "#,
                    r#""created_at": "2024-12-31T23:59:59.000001+00:00", "last_login_at": null, "#,
                    r#""model_capability_settings": null}"#
                ),
            )
            .await;
        let ghost = get(client, by_id("u-ghost")).await.expect("cached ghost");
        assert!(ghost.from_cache);
        let user = ghost.user.unwrap();
        assert_eq!(
            (user.username.as_str(), user.role()),
            ("ghost", aether_control::proto::UserRole::User)
        );
        assert_eq!((user.quota_usd, user.used_usd), (None, 3.25));
        assert_eq!(user.created_at, Some(proto_time("2024-12-31T23:59:59.000001+00:00")));
        assert!(user.last_login_at.is_none() && user.model_capability_settings.is_none());

        // An unreadable entry is a miss, and is overwritten.
        redis.set("user:id:u-carol", "{not json").await;
        assert!(!get(client, by_id(CAROL)).await.unwrap().from_cache);
        assert_eq!(redis.get("user:id:u-carol").await.as_deref(), Some(CAROL_JSON));
        // So is an entry of another user under this key.
        redis
            .set("user:id:u-carol", &CAROL_JSON.replace("u-carol", "u-other"))
            .await;
        assert!(!get(client, by_id(CAROL)).await.unwrap().from_cache);
        assert_eq!(redis.get("user:id:u-carol").await.as_deref(), Some(CAROL_JSON));
    }

    // Not found is not cached.
    for lookup in [
        by_id("u-nobody"),
        by_email("nobody@example.com"),
        by_id("u-*"),
        by_email("*"),
    ] {
        let status = get(client, lookup.clone()).await.expect_err("missing user");
        assert_eq!(status.code(), Code::NotFound, "{lookup:?}");
    }
    if let Some(redis) = redis {
        assert_eq!(redis.get("user:id:u-nobody").await, None);
    }
    assert_eq!(
        invalidate(client, "u-nobody", Some("nobody@example.com"))
            .await
            .unwrap(),
        0
    );

    // Glob and separator characters are exact names.
    assert!(!get(client, by_email(GLOB_EMAIL)).await.unwrap().from_cache);
    assert!(get(client, by_email(GLOB_EMAIL)).await.unwrap().from_cache);
    assert!(!get(client, by_id(GLOB)).await.unwrap().from_cache);
    if let Some(redis) = redis {
        assert!(redis.get(&format!("user:email:{GLOB_EMAIL}")).await.is_some());
    }
    assert_eq!(invalidate(client, "u-*", Some("g*")).await.unwrap(), 0);
    assert_eq!(invalidate(client, GLOB, Some(GLOB_EMAIL)).await.unwrap(), 2);

    // Inactive users are served like any other; exact email only.
    let status = get(client, by_email("Carol@example.com")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // Invalidation drops both entries and counts what existed.
    assert_eq!(invalidate(client, CAROL, Some(CAROL_EMAIL)).await.unwrap(), 2);
    assert_eq!(invalidate(client, CAROL, Some(CAROL_EMAIL)).await.unwrap(), 0);
    if let Some(redis) = redis {
        assert_eq!(redis.get("user:id:u-carol").await, None);
        assert_eq!(redis.get("user:email:carol@example.com").await, None);
    }
    assert!(!get(client, by_id(CAROL)).await.unwrap().from_cache);
    assert_eq!(invalidate(client, CAROL, None).await.unwrap(), 1);
    assert!(!get(client, by_id(CAROL)).await.unwrap().from_cache);

    // Bad requests.
    let neither = client.get_user(GetUserRequest { lookup: None }).await;
    assert_invalid(neither, "neither user_id nor email");
    for lookup in [by_id(""), by_id("  "), by_email(""), by_email(&"e".repeat(300))] {
        assert_invalid(get(client, lookup).await, "bad lookup");
    }
    assert_invalid(invalidate(client, "", None).await, "empty user_id");
    assert_invalid(invalidate(client, &"u".repeat(256), None).await, "long user_id");
    assert_invalid(invalidate(client, CAROL, Some("")).await, "empty email");
    assert_invalid(invalidate(client, CAROL, Some(&"e".repeat(256))).await, "long email");
}

async fn full_suite(channel: AuthedChannel, redis: Option<&RedisView>) {
    let mut client = UserServiceClient::new(channel);
    resolution_suite(&mut client).await;
    cache_suite(&mut client, redis).await;
}

#[tokio::test]
async fn embedded_default_serves_every_user_call() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::sqlite_url(&dir);
    let server = TestServer::start(&["--database-url", &url]).await;
    seed_users(&url).await;
    full_suite(server.channel().await, None).await;
    server.stop().await;
}

#[tokio::test]
async fn redis_and_postgres_serve_every_user_call() {
    let stores = common::stores::SharedStores::create().await;
    let server = stores.start_server(&[]).await;
    seed_users(&stores.database.url).await;
    let view = RedisView {
        client: common::redis::client().await,
        namespace: stores.namespace.clone(),
    };
    full_suite(server.channel().await, Some(&view)).await;
    server.stop().await;
    stores.drop().await;
}

/// A port where nothing listens.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test]
async fn redis_down_get_user_answers_from_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::sqlite_url(&dir);
    let redis_url = format!("redis://127.0.0.1:{}/0", dead_port());
    let server = TestServer::start(&["--database-url", &url, "--redis-url", &redis_url]).await;
    seed_users(&url).await;
    let mut client = UserServiceClient::new(server.channel().await);
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let found = get(&mut client, by_id(CAROL)).await.expect("the database answers");
        assert!(!found.from_cache);
        assert_carol(found.user.as_ref().unwrap());
        assert!(started.elapsed() < Duration::from_secs(2), "no wait on Redis");
    }
    let found = get(&mut client, by_email("alice@example.com")).await.unwrap();
    assert_eq!((found.user.unwrap().id.as_str(), found.from_cache), (ALICE, false));
    assert_eq!(
        get(&mut client, by_id("u-nobody")).await.unwrap_err().code(),
        Code::NotFound
    );
    // Resolution never needs the cache.
    assert_eq!(resolve(&mut client, "alice").await.unwrap().user.unwrap().id, ALICE);
    // Invalidation cannot pretend: the entries might still be there.
    let status = invalidate(&mut client, CAROL, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    server.stop().await;
}

/// A cache whose reads and/or writes fail as a down Redis does.
struct FailingCache {
    inner: MemoryCache,
    reads_fail: bool,
    writes_fail: bool,
}

fn down() -> StoreError {
    StoreError::Unavailable {
        store: StoreKind::Redis,
        detail: "connection refused".into(),
    }
}

#[async_trait]
impl CacheStore for FailingCache {
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        if self.reads_fail {
            Err(down())
        } else {
            self.inner.get(key).await
        }
    }

    async fn set_ex(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        if self.writes_fail {
            Err(down())
        } else {
            self.inner.set_ex(key, value, ttl).await
        }
    }

    async fn delete(&self, keys: &[String], dry_run: bool) -> Result<u64, StoreError> {
        self.inner.delete(keys, dry_run).await
    }

    async fn incr_with_ttl(&self, key: &str, ttl: Duration) -> Result<i64, StoreError> {
        self.inner.incr_with_ttl(key, ttl).await
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        self.inner.ttl(key).await
    }

    async fn keys_with_prefix(&self, prefix: &str, max: usize) -> Result<Vec<String>, StoreError> {
        self.inner.keys_with_prefix(prefix, max).await
    }

    async fn delete_prefix(&self, prefix: &str, dry_run: bool) -> Result<u64, StoreError> {
        self.inner.delete_prefix(prefix, dry_run).await
    }
}

#[tokio::test]
async fn cache_failures_are_counted_fallbacks() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::sqlite_url(&dir);
    let database = DbConnection::open(&url, Duration::from_secs(5), true)
        .await
        .expect("open sqlite");
    seed_users(&url).await;
    let directory = Arc::new(SeaOrmDirectory::new(database.connection().clone()));
    let carol = UserKey::Id(CAROL.into());

    for (reads_fail, writes_fail, fallbacks_per_call) in [(true, true, 1), (false, true, 1), (false, false, 0)] {
        let cache = Arc::new(FailingCache {
            inner: MemoryCache::default(),
            reads_fail,
            writes_fail,
        });
        let engine = UserEngine::new(cache, directory.clone());
        let first = engine.get(&carol).await.expect("answered");
        assert!(!first.from_cache);
        let second = engine.get(&carol).await.expect("answered");
        // Only a working cache can answer the second call.
        assert_eq!(second.from_cache, fallbacks_per_call == 0);
        assert_eq!(
            engine.cache_fallbacks(),
            2 * fallbacks_per_call,
            "reads fail {reads_fail}, writes fail {writes_fail}"
        );
        // Not-found is no cache failure.
        let before = engine.cache_fallbacks();
        assert!(engine.get(&UserKey::Id("u-nobody".into())).await.is_err());
        assert_eq!(engine.cache_fallbacks() - before, u64::from(reads_fail));
    }
}
