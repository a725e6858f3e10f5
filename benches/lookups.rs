//! Latency of the cached look-ups over real gRPC against an empty RPC:
//! GetUser, ResolveUser and ResolveModel, each cached (Redis) and uncached
//! (database), on the in-process server with SQLite + the local Redis.
//!
//! `cargo bench --bench lookups` (env AETHER_CONTROL_BENCH_REDIS_URL, default
//! redis://127.0.0.1:6379/0). Prints p50 / p99 in microseconds and the cached
//! overhead over the empty RPC (target: < 500 us).

use std::time::{Duration, Instant};

use aether_control::auth::service_tokens::hash_hex;
use aether_control::config::Config;
use aether_control::db::entities::{global_models, models, users};
use aether_control::proto::model_mapping_service_client::ModelMappingServiceClient;
use aether_control::proto::user_service_client::UserServiceClient;
use aether_control::proto::*;
use clap::Parser;
use sea_orm::{ActiveModelTrait, Database, Set};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[path = "../tests/common/bearer.rs"]
mod bearer;
#[allow(dead_code)]
#[path = "../tests/common/rows.rs"]
mod rows;

use bearer::{AuthedChannel, BearerToken};

const TOKEN: &str = "bench-token";
const ITERATIONS: usize = 2000;

/// p50 and p99 of `iterations` runs of `call`, in microseconds.
async fn measure<F, Fut>(iterations: usize, mut call: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..iterations / 10 {
        call().await;
    }
    let mut samples: Vec<Duration> = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        call().await;
        samples.push(started.elapsed());
    }
    samples.sort();
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    (micros(samples[iterations / 2]), micros(samples[iterations * 99 / 100]))
}

async fn seed(url: &str) {
    let db = Database::connect(url).await.expect("fixture database");
    rows::user("u-bench", "bench", "bench@example.com", users::UserRole::User)
        .insert(&db)
        .await
        .expect("user");
    rows::provider("p-bench", "bench", "Bench")
        .insert(&db)
        .await
        .expect("provider");
    global_models::ActiveModel {
        supported_capabilities: Set(Some(serde_json::json!([]))),
        ..rows::global_model("gm-bench", "bench-model", "Bench Model")
    }
    .insert(&db)
    .await
    .expect("global model");
    models::ActiveModel {
        id: Set("m-bench".into()),
        provider_id: Set("p-bench".into()),
        global_model_id: Set("gm-bench".into()),
        provider_model_name: Set("bench-upstream".into()),
        is_active: Set(true),
        ..Default::default()
    }
    .insert(&db)
    .await
    .expect("model");
    db.close().await.expect("close");
}

#[tokio::main]
async fn main() {
    let redis = std::env::var("AETHER_CONTROL_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let dir = tempfile::tempdir().expect("temp dir");
    let db_url = format!("sqlite://{}?mode=rwc", dir.path().join("bench.db").display());
    let namespace = format!("actl_lookup_bench_{}:", std::process::id());
    let tokens = format!("bench:read+write+admin:{}", hash_hex(TOKEN));
    let data_dir = dir.path().display().to_string();
    let config = Config::try_parse_from([
        "aether-control",
        "--data-dir",
        &data_dir,
        "--database-url",
        &db_url,
        "--redis-url",
        &redis,
        "--redis-namespace",
        &namespace,
        "--service-tokens",
        &tokens,
        "--http-listen",
        "off",
    ])
    .expect("bench flags");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(aether_control::server::serve(config, listener, None, async {
        let _ = stopped.await;
    }));
    let channel = loop {
        if let Ok(channel) = Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
        {
            let mut health = HealthClient::new(channel.clone());
            if health
                .check(HealthCheckRequest { service: String::new() })
                .await
                .is_ok()
            {
                break channel;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    seed(&db_url).await;
    let authed: AuthedChannel = InterceptedService::new(channel.clone(), BearerToken(TOKEN));
    let users = UserServiceClient::new(authed.clone());
    let models = ModelMappingServiceClient::new(authed);
    let health = HealthClient::new(channel);

    let empty = measure(ITERATIONS, || {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest { service: String::new() })
                .await
                .expect("health");
        }
    })
    .await;
    let get_user = |id: &'static str| GetUserRequest {
        lookup: Some(get_user_request::Lookup::UserId(id.into())),
    };
    // Fill both caches once so the cached runs only ever hit.
    users
        .clone()
        .get_user(get_user("u-bench"))
        .await
        .expect("prime user cache");
    models
        .clone()
        .resolve_model(ResolveModelRequest {
            model_name: "bench-upstream".into(),
        })
        .await
        .expect("prime");
    let user_cached = measure(ITERATIONS, || {
        let mut users = users.clone();
        async move {
            assert!(
                users
                    .get_user(get_user("u-bench"))
                    .await
                    .expect("get user")
                    .into_inner()
                    .from_cache
            );
        }
    })
    .await;
    let user_uncached = measure(ITERATIONS / 4, || {
        let mut users = users.clone();
        async move {
            users
                .invalidate_user_cache(InvalidateUserCacheRequest {
                    user_id: "u-bench".into(),
                    email: None,
                })
                .await
                .expect("invalidate");
            assert!(
                !users
                    .get_user(get_user("u-bench"))
                    .await
                    .expect("get user")
                    .into_inner()
                    .from_cache
            );
        }
    })
    .await;
    let resolve_user = measure(ITERATIONS, || {
        let mut users = users.clone();
        async move {
            users
                .resolve_user(ResolveUserRequest {
                    identifier: "bench@example.com".into(),
                })
                .await
                .expect("resolve");
        }
    })
    .await;
    models
        .clone()
        .resolve_model(ResolveModelRequest {
            model_name: "bench-upstream".into(),
        })
        .await
        .expect("prime");
    let model_cached = measure(ITERATIONS, || {
        let mut models = models.clone();
        async move {
            let reply = models
                .resolve_model(ResolveModelRequest {
                    model_name: "bench-upstream".into(),
                })
                .await;
            assert!(reply.expect("resolve model").into_inner().from_cache);
        }
    })
    .await;
    let model_uncached = measure(ITERATIONS / 4, || {
        let mut models = models.clone();
        async move {
            let clear = ClearModelMappingCacheByNameRequest {
                model_name: "bench-upstream".into(),
                dry_run: false,
            };
            models.clear_model_mapping_cache_by_name(clear).await.expect("clear");
            let reply = models
                .resolve_model(ResolveModelRequest {
                    model_name: "bench-upstream".into(),
                })
                .await;
            assert!(!reply.expect("resolve model").into_inner().from_cache);
        }
    })
    .await;

    println!("| call | p50 us | p99 us | p50 over the empty RPC |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, (p50, p99): (f64, f64)| {
        println!("| {name} | {p50:.0} | {p99:.0} | {:+.0} |", p50 - empty.0);
    };
    row("empty RPC (health Check)", empty);
    row("GetUser, cached", user_cached);
    row("GetUser, uncached (incl. InvalidateUserCache)", user_uncached);
    row("ResolveUser (database)", resolve_user);
    row("ResolveModel, cached", model_cached);
    row(
        "ResolveModel, uncached (incl. ClearModelMappingCacheByName)",
        model_uncached,
    );
    let overhead = (user_cached.0 - empty.0).max(model_cached.0 - empty.0);
    println!("\ncached overhead over the empty RPC: {overhead:.0} us (target < 500 us)");

    let _ = stop.send(());
    let _ = server.await;
    // Leave nothing behind in the shared Redis.
    let client = fred::prelude::Builder::from_config(fred::prelude::Config::from_url(&redis).expect("url"))
        .build()
        .expect("client");
    fred::prelude::ClientLike::init(&client).await.expect("connect");
    let keys: Vec<fred::types::Key> =
        futures::TryStreamExt::try_collect(client.scan_buffered(format!("{namespace}*"), Some(500), None))
            .await
            .expect("scan");
    if !keys.is_empty() {
        let _: i64 = fred::prelude::KeysInterface::del(&client, keys).await.expect("del");
    }
}
