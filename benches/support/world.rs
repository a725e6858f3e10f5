//! The Aether world the benchmarks load: users, API keys, providers and
//! global models with uuid4-shaped ids, and N affinities over them, written
//! into the database and into Redis exactly as Aether writes them.

use std::fmt::Write as _;

use aether_control::db::entities::{api_keys, global_models, provider_api_keys, provider_endpoints, providers, users};
use aether_control::domain::affinity::{AffinityKey, AffinityRecord, AffinityTarget, now_epoch};
use aether_control::domain::crypto::KeyCipher;
use aether_control::store::redis::RedisConnection;

use crate::rows;
use fred::prelude::*;
use futures::{StreamExt, TryStreamExt};
use sea_orm::{ConnectionTrait, EntityTrait, Set, TransactionTrait};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type BenchResult<T> = Result<T, BoxError>;

/// Data shape: every API key has 5 formats x 4 global models = 20 affinities,
/// every user 2 API keys (40 affinities).
pub const FORMATS: [&str; 5] = ["CLAUDE", "CLAUDE_CLI", "OPENAI", "OPENAI_CLI", "GEMINI"];
pub const MODELS: [(&str, &str); 4] = [
    ("claude-sonnet-4", "Claude Sonnet 4"),
    ("gpt-4o", "GPT-4o"),
    ("gemini-2.5-pro", "Gemini 2.5 Pro"),
    ("claude-haiku-4", "Claude Haiku 4"),
];
pub const PER_KEY: usize = FORMATS.len() * MODELS.len();
pub const KEYS_PER_USER: usize = 2;
/// Providers, each with one endpoint per format and two keys per endpoint.
pub const PROVIDERS: usize = 10;
pub const KEYS_PER_ENDPOINT: usize = 2;

/// Loaded entries expire 1-2 h out (Aether uses 5 min), so none expires
/// during a run; writes in the benchmark use the upper bound.
const MIN_TTL_SECONDS: f64 = 3600.0;
const TTL_SPREAD_MICROS: u64 = 3_600_000_000;

/// SETs per pipeline while loading, and pipelines in flight.
const LOAD_BATCH: usize = 1000;
const LOAD_PIPELINES: usize = 8;
/// Rows per INSERT while seeding the database (7 columns: far below SQLite's 32766 binds).
const INSERT_CHUNK: usize = 1000;

pub fn splitmix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic generator (the benchmark needs no crypto-grade randomness).
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, bound: usize) -> usize {
        self.0 = splitmix(self.0);
        (self.0 % bound as u64) as usize
    }
}

/// A `str(uuid4())`-shaped id, stable per (kind, index), as Aether's ids are.
fn uuid_like(kind: u64, index: u64) -> String {
    let a = splitmix((kind << 56) ^ index);
    let b = splitmix(a);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The Aether world of one size: ids by index. Affinity `j` belongs to API
/// key `j / 20` (format `(j % 20) / 4`, model `j % 4`), which belongs to user
/// `key / 2`; its provider and provider key are drawn from `j`.
pub struct World {
    pub n: usize,
    pub users: Vec<(String, String)>,
    pub api_keys: Vec<String>,
    pub providers: Vec<String>,
    pub endpoints: Vec<String>,
    pub provider_keys: Vec<String>,
    pub models: Vec<String>,
}

impl World {
    pub fn new(n: usize) -> Self {
        let key_count = n.div_ceil(PER_KEY);
        let user_count = key_count.div_ceil(KEYS_PER_USER);
        let ids = |kind: u64, count: usize| (0..count as u64).map(|i| uuid_like(kind, i)).collect::<Vec<_>>();
        Self {
            n,
            users: ids(1, user_count)
                .into_iter()
                .enumerate()
                .map(|(u, id)| (id, format!("bench_user_{u:06}")))
                .collect(),
            api_keys: ids(2, key_count),
            providers: ids(3, PROVIDERS),
            endpoints: ids(4, PROVIDERS * FORMATS.len()),
            provider_keys: ids(5, PROVIDERS * FORMATS.len() * KEYS_PER_ENDPOINT),
            models: ids(6, MODELS.len()),
        }
    }

    pub fn key(&self, j: usize) -> AffinityKey {
        let combo = j % PER_KEY;
        AffinityKey {
            affinity_key: self.api_keys[j / PER_KEY].clone(),
            api_format: FORMATS[combo / MODELS.len()].to_owned(),
            global_model_id: self.models[combo % MODELS.len()].clone(),
        }
    }

    pub fn target(&self, j: usize) -> AffinityTarget {
        let mix = splitmix(j as u64 ^ 0xAFF1_0000);
        let provider = (mix % PROVIDERS as u64) as usize;
        let endpoint = provider * FORMATS.len() + (j % PER_KEY) / MODELS.len();
        let key = endpoint * KEYS_PER_ENDPOINT + ((mix >> 32) as usize % KEYS_PER_ENDPOINT);
        AffinityTarget {
            provider_id: self.providers[provider].clone(),
            endpoint_id: self.endpoints[endpoint].clone(),
            key_id: self.provider_keys[key].clone(),
        }
    }

    /// Aether's value for entry `j`, written at `now`, and its Redis TTL.
    pub fn aether_value(&self, j: usize, now: f64) -> (String, i64) {
        let key = self.key(j);
        let target = self.target(j);
        let mix = splitmix(j as u64 ^ 0x7713_0000);
        let expire_at = now + MIN_TTL_SECONDS + (mix % TTL_SPREAD_MICROS) as f64 / 1e6;
        let record = AffinityRecord {
            provider_id: target.provider_id,
            endpoint_id: target.endpoint_id,
            key_id: target.key_id,
            api_format: key.api_format,
            model_name: key.global_model_id,
            created_at: now - ((mix >> 40) % 600_000) as f64 / 1e3,
            expire_at,
            request_count: 1 + ((mix >> 20) % 50) as i64,
        };
        (record.to_aether_json(), (expire_at - now).ceil() as i64 + 1)
    }
}

/// Inserts the world's rows in bulk, in one transaction.
pub async fn seed_database(db: &sea_orm::DatabaseConnection, world: &World, cipher: &KeyCipher) -> BenchResult<()> {
    let txn = db.begin().await?;
    for (p, id) in world.providers.iter().enumerate() {
        providers::Entity::insert(rows::provider(
            id,
            &format!("bench-provider-{p:02}"),
            &format!("Bench Provider {p:02}"),
        ))
        .exec_without_returning(&txn)
        .await?;
    }
    let endpoints = world.endpoints.iter().enumerate().map(|(e, id)| {
        rows::endpoint(
            id,
            &world.providers[e / FORMATS.len()],
            FORMATS[e % FORMATS.len()],
            &format!("https://provider-{:02}.example/v1", e / FORMATS.len()),
        )
    });
    provider_endpoints::Entity::insert_many(endpoints)
        .exec_without_returning(&txn)
        .await?;
    let provider_keys = world
        .provider_keys
        .iter()
        .enumerate()
        .map(|(k, id)| provider_api_keys::ActiveModel {
            rate_multiplier: Set(1.0),
            ..rows::provider_key(
                id,
                &world.endpoints[k / KEYS_PER_ENDPOINT],
                &cipher.encrypt(&format!("sk-upstream-{:024x}", splitmix(k as u64 ^ 0x5EC0))),
                &format!("upstream key {k:03}"),
            )
        });
    provider_api_keys::Entity::insert_many(provider_keys)
        .exec_without_returning(&txn)
        .await?;
    let models = world
        .models
        .iter()
        .zip(MODELS)
        .map(|(id, (name, display))| rows::global_model(id, name, display));
    global_models::Entity::insert_many(models)
        .exec_without_returning(&txn)
        .await?;
    for chunk in world.users.chunks(INSERT_CHUNK) {
        let users = chunk
            .iter()
            .map(|(id, username)| rows::user(id, username, &format!("{username}@example.com"), users::UserRole::User));
        users::Entity::insert_many(users).exec_without_returning(&txn).await?;
    }
    for (chunk_index, chunk) in world.api_keys.chunks(INSERT_CHUNK).enumerate() {
        let rows = chunk.iter().enumerate().map(|(offset, id)| {
            let k = chunk_index * INSERT_CHUNK + offset;
            let plaintext = format!("sk-bench-{:032x}", splitmix(k as u64 ^ 0xA9E7));
            let hash = ring::digest::digest(&ring::digest::SHA256, plaintext.as_bytes());
            api_keys::ActiveModel {
                key_encrypted: Set(Some(cipher.encrypt(&plaintext))),
                name: Set(Some(format!("bench key {k:06}"))),
                ..rows::api_key(id, &world.users[k / KEYS_PER_USER].0, &hex(hash.as_ref()))
            }
        });
        api_keys::Entity::insert_many(rows).exec_without_returning(&txn).await?;
    }
    txn.commit().await?;
    // Fresh statistics, as a long-lived database would have.
    db.execute_unprepared("ANALYZE").await?;
    Ok(())
}

/// Writes every entry as Aether does (SET EX with its JSON), pipelined.
pub async fn load_redis(client: &Client, redis: &RedisConnection, world: &World) -> BenchResult<()> {
    let now = now_epoch();
    let batches = (0..world.n)
        .step_by(LOAD_BATCH)
        .map(|start| start..(start + LOAD_BATCH).min(world.n));
    futures::stream::iter(batches)
        .map(|range| async move {
            let pipeline = client.pipeline();
            for j in range {
                let (value, ttl) = world.aether_value(j, now);
                let name = redis.key(&world.key(j).redis_key());
                let () = pipeline
                    .set(name, value, Some(Expiration::EX(ttl)), None, false)
                    .await?;
            }
            let _: Vec<Value> = pipeline.all().await?;
            Ok::<_, BoxError>(())
        })
        .buffer_unordered(LOAD_PIPELINES)
        .try_for_each(|()| async { Ok(()) })
        .await
}
