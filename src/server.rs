//! Wiring: open the stores, build the services, serve until shutdown, drain.

use std::future::Future;

use futures::FutureExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::auth::jwt::JwtVerifier;
use crate::auth::service_tokens::{self, ServiceTokens};
use crate::auth::{Authenticator, Scopes};
use crate::config::{Config, Environment};
use crate::db::DbConnection;
use crate::db::audit::SeaOrmAuditSink;
use crate::db::auth::SeaOrmUserAccess;
use crate::db::directory::SeaOrmDirectory;
use crate::db::models::SeaOrmModelCatalog;
use crate::domain::affinity::engine::{AffinityEngine, AffinitySettings, AffinityStores};
use crate::domain::audit::Auditor;
use crate::domain::crypto::KeyCipher;
use crate::domain::models::{ModelMappingSettings, ModelResolver};
use crate::domain::users::UserEngine;
use crate::grpc::affinity::AffinityGrpc;
use crate::grpc::auth::AuthLayer;
use crate::grpc::envelope::{Envelope, EnvelopeLayer};
use crate::grpc::model_mapping::ModelMappingGrpc;
use crate::grpc::user::UserGrpc;
use crate::health::{self, HealthPlan};
use crate::metrics::ServiceMetrics;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::affinity_service_server::AffinityServiceServer;
use crate::proto::model_mapping_service_server::ModelMappingServiceServer;
use crate::proto::user_service_server::UserServiceServer;
use crate::store::memory::{MemoryAffinityStore, MemoryCache, MemoryCounterStore, MemoryEventBus, MemoryUsageStore};
use crate::store::redis::{
    RedisAffinityStore, RedisCache, RedisConnection, RedisCounterStore, RedisEventBus, RedisUsageStore,
};
use crate::store::{AffinityStore, CacheStore, CounterStore, EventBus, HealthProbe, UsageStore};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory cannot be created.
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The database cannot be opened or migrated.
    #[error("database: {0}")]
    Database(String),
    /// Redis is misconfigured.
    #[error("redis: {0}")]
    Redis(String),
    /// The credential configuration cannot be used.
    #[error("auth: {0}")]
    Auth(String),
    /// ENCRYPTION_KEY is missing where required.
    #[error("encryption key: {0}")]
    Crypto(String),
    /// Reflection could not load the descriptors (a build problem).
    #[error("reflection: {0}")]
    Reflection(String),
    /// The transport failed.
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The REST/JSON shim cannot listen or start.
    #[error("http: {0}")]
    Http(String),
}

/// The opened stores.
struct Stores {
    affinity: AffinityStores,
    /// Aether's user and model-mapping caches (Redis, or memory).
    cache: Arc<dyn CacheStore>,
    /// Aether's tables.
    database: DbConnection,
    health: HealthPlan,
}

/// This instance's name in events and the periodic passes' leases: the pod name on
/// Kubernetes, else the process id.
fn instance_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "aether-control".to_owned());
    format!("{host}-{}", std::process::id())
}

async fn open_stores(config: &Config, instance_id: &str) -> Result<Stores, StartError> {
    if config.database_url.is_none() {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
    }
    let cipher = KeyCipher::from_secret(
        config.encryption_key.as_deref(),
        config.environment == Environment::Production,
    )
    .map_err(|e| StartError::Crypto(e.to_string()))?;
    let database = DbConnection::open(
        &config.effective_database_url(),
        config.store_timeout(),
        config.should_migrate(),
    )
    .await
    .map_err(|e| StartError::Database(e.to_string()))?;
    let directory = Arc::new(SeaOrmDirectory::new(database.handle()).caching_names(config.name_cache_ttl()));
    let backends = match &config.redis_url {
        Some(url) => redis_backends(config, url, instance_id).await?,
        None => AffinityBackends {
            affinities: Arc::new(MemoryAffinityStore::new(
                usize::try_from(config.memory_max_affinities).unwrap_or(usize::MAX),
            )),
            counters: Arc::new(MemoryCounterStore::default()),
            usage: Arc::new(MemoryUsageStore::default()),
            events: Arc::new(MemoryEventBus::default()),
            cache: Arc::new(MemoryCache::default()),
            redis_probe: None,
        },
    };
    Ok(Stores {
        affinity: AffinityStores {
            affinities: backends.affinities,
            counters: backends.counters,
            events: backends.events,
            directory,
            cipher: Arc::new(cipher),
            usage: backends.usage,
        },
        cache: backends.cache,
        health: HealthPlan::new(Arc::new(database.clone()), backends.redis_probe),
        database,
    })
}

/// The affinity-side stores: Redis, or memory for the embedded default.
struct AffinityBackends {
    affinities: Arc<dyn AffinityStore>,
    counters: Arc<dyn CounterStore>,
    usage: Arc<dyn UsageStore>,
    events: Arc<dyn EventBus>,
    cache: Arc<dyn CacheStore>,
    redis_probe: Option<Arc<dyn HealthProbe>>,
}

async fn redis_backends(config: &Config, url: &str, instance_id: &str) -> Result<AffinityBackends, StartError> {
    let redis = RedisConnection::connect(
        url,
        config.redis_pool_size,
        config.store_timeout(),
        &config.redis_namespace,
    )
    .map_err(|e| StartError::Redis(e.to_string()))?;
    if !redis.wait_connected(config.store_timeout()).await {
        tracing::warn!("redis is not reachable yet; serving NOT_SERVING until it is");
    }
    let events = RedisEventBus::start(redis.clone()).map_err(|e| StartError::Redis(e.to_string()))?;
    Ok(AffinityBackends {
        affinities: Arc::new(RedisAffinityStore::new(
            redis.clone(),
            instance_id,
            config.reconcile_interval(),
        )),
        counters: Arc::new(RedisCounterStore::new(redis.clone())),
        usage: Arc::new(RedisUsageStore::new(redis.clone())),
        events: Arc::new(events),
        cache: Arc::new(RedisCache::new(redis.clone())),
        redis_probe: Some(Arc::new(redis)),
    })
}

/// Credentials: configured service tokens (or, outside production with none
/// configured, a generated local admin token in the data dir), Aether admin
/// JWTs when JWT_SECRET_KEY is set, and Aether's logout blacklist in Redis.
fn authenticator(
    config: &Config,
    cache: &Arc<dyn CacheStore>,
    database: &DbConnection,
) -> Result<Authenticator, StartError> {
    let mut tokens = ServiceTokens::parse(&config.service_tokens).map_err(|e| StartError::Auth(e.to_string()))?;
    if tokens.is_empty() && config.environment != Environment::Production {
        let (token, path, created) = service_tokens::local_admin_token(&config.data_dir)
            .map_err(|e| StartError::Auth(format!("local admin token in {}: {e}", config.data_dir.display())))?;
        tokens.add(service_tokens::LOCAL_ADMIN, Scopes::ALL, &token);
        tracing::info!(
            path = %path.display(),
            created,
            "no service tokens configured: the local admin token is in this file; send it as `authorization: Bearer <token>`"
        );
    }
    let jwt = config
        .jwt_secret_key
        .as_deref()
        .filter(|secret| !secret.is_empty())
        .map(JwtVerifier::new);
    if jwt.is_none() {
        tracing::info!("JWT_SECRET_KEY is not set: Aether admin tokens are not accepted, only service tokens");
    }
    let users = Arc::new(SeaOrmUserAccess::new(database.handle()));
    let blacklist = config.redis_url.is_some().then(|| cache.clone());
    Ok(Authenticator::new(jwt, tokens, users, blacklist))
}

/// Largest request message accepted (requests are a few ids).
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Largest response message sent (a 1000-entry enriched page is ~1 MiB).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Counters kept outside the affinity statistics, exported with them.
fn register_counters(metrics: &ServiceMetrics, users: &UserEngine, models: &ModelResolver, auditor: &Auditor) {
    let users = users.clone();
    metrics.register_counter(
        "aether_control_user_cache_fallbacks_total",
        "User look-ups answered from the database because the cache failed.",
        Box::new(move || users.cache_fallbacks()),
    );
    let models = models.clone();
    metrics.register_counter(
        "aether_control_model_cache_fallbacks_total",
        "Model look-ups answered from the database because the cache failed.",
        Box::new(move || models.cache_fallbacks()),
    );
    let auditor = auditor.clone();
    metrics.register_counter(
        "aether_control_audit_write_failures_total",
        "Destructive calls whose audit row could not be written.",
        Box::new(move || auditor.failures()),
    );
}

/// Background upkeep: counter flushes every second, reconciles and the
/// target watcher on their intervals. Ends with a last flush when `stop`
/// turns true.
async fn upkeep(engine: AffinityEngine, mut stop: watch::Receiver<bool>) {
    let every = |period: Duration| {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    };
    let mut flush = every(Duration::from_secs(1));
    let mut reconcile = every(engine.settings().reconcile_interval);
    let mut watch_targets = every(engine.settings().target_watch_interval);
    loop {
        tokio::select! {
            _ = flush.tick() => {
                if let Err(error) = engine.flush_counters().await {
                    tracing::debug!(%error, "counter flush deferred");
                }
            }
            _ = reconcile.tick() => match engine.reconcile().await {
                Ok(0) => {}
                Ok(added) => tracing::info!(added, "indexed affinities written by others"),
                Err(error) => tracing::debug!(%error, "reconcile deferred"),
            },
            _ = watch_targets.tick() => if let Err(error) = engine.watch_targets().await {
                tracing::debug!(%error, "target watch deferred");
            },
            _ = stop.wait_for(|stopped| *stopped).map(|r| r.is_ok()) => break,
        }
    }
    if let Err(error) = engine.flush_counters().await {
        tracing::warn!(%error, "last counter flush failed; those counts are lost");
    }
}

/// The REST/JSON shim's listener: `given` (pre-bound, e.g. on port 0 in
/// tests) or the configured address; None when the shim is off.
async fn http_listener(config: &Config, given: Option<TcpListener>) -> Result<Option<TcpListener>, StartError> {
    let Some(address) = config.http_listen.address() else {
        return Ok(None);
    };
    match given {
        Some(listener) => Ok(Some(listener)),
        None => TcpListener::bind(address)
            .await
            .map(Some)
            .map_err(|e| StartError::Http(format!("cannot listen on {address}: {e}"))),
    }
}

/// Serves the REST/JSON shim over `grpc` (the same stack as the gRPC port)
/// until the drain starts, then lets requests in flight finish.
fn serve_http(
    listener: Option<TcpListener>,
    grpc: crate::http::GrpcService,
    authenticator: Arc<Authenticator>,
    mut drain: watch::Receiver<bool>,
) -> Result<futures::future::BoxFuture<'static, Result<(), StartError>>, StartError> {
    let Some(listener) = listener else {
        return Ok(futures::future::ready(Ok(())).boxed());
    };
    let router = crate::http::router(grpc, authenticator).map_err(StartError::Http)?;
    let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(http = %address, "serving the REST/JSON shim (/openapi.json, /healthz, /readyz)");
    let stopped = async move {
        let _ = drain.wait_for(|draining| *draining).await;
    };
    Ok(async move {
        crate::http::serve(listener, router, stopped)
            .await
            .map_err(|e| StartError::Http(e.to_string()))
    }
    .boxed())
}

/// Serves gRPC on `listener` and the REST/JSON shim on `http` (or on the
/// configured `--http-listen`; not at all when it is `off`) until `shutdown`
/// resolves, then stops accepting, reports NOT_SERVING and waits up to the
/// grace period for calls in flight.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let http = http_listener(&config, http).await?;
    let instance_id = instance_id();
    let stores = open_stores(&config, &instance_id).await?;
    let memory_max_affinities = if config.redis_url.is_some() {
        0
    } else {
        config.memory_max_affinities
    };
    let engine = AffinityEngine::new(
        stores.affinity,
        AffinitySettings {
            default_ttl: config.affinity_ttl(),
            reconcile_interval: config.reconcile_interval(),
            instance_id,
            write_only_on_success: !config.write_on_failure,
            max_switches_per_minute: config.max_switches_per_minute,
            target_watch_interval: config.target_watch_interval(),
            memory_max_affinities,
        },
    );

    let (reporter, health_service) = tonic_health::server::health_reporter();
    for name in stores.health.service_names() {
        reporter
            .set_service_status(name, tonic_health::ServingStatus::NotServing)
            .await;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let monitor = tokio::spawn(health::monitor(
        reporter,
        stores.health,
        config.health_interval(),
        stop_rx.clone(),
    ));
    let upkeep_task = tokio::spawn(upkeep(engine.clone(), stop_rx.clone()));

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| StartError::Reflection(e.to_string()))?;

    let address = listener
        .local_addr()
        .map_or_else(|_| config.listen.to_string(), |a| a.to_string());
    tracing::info!(
        %address,
        affinity_store = if config.redis_url.is_some() { "redis" } else { "memory" },
        database = if config.database_url.is_some() { "configured" } else { "embedded sqlite" },
        environment = ?config.environment,
        "aether-control serving gRPC (health, reflection v1 + v1alpha)"
    );
    let grace = config.shutdown_grace();
    let (drain_tx, drain_rx) = watch::channel(false);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutdown requested: draining in-flight calls");
        let _ = stop_tx.send(true);
        let _ = drain_tx.send(true);
    };

    let directory = Arc::new(SeaOrmDirectory::new(stores.database.handle()));
    let users = UserEngine::new(stores.cache.clone(), directory);
    let models = ModelResolver::new(
        stores.cache.clone(),
        Arc::new(SeaOrmModelCatalog::new(stores.database.handle())),
        ModelMappingSettings {
            negative_ttl: config.model_negative_cache_ttl(),
            shared_cache: config.redis_url.is_some(),
        },
    );
    let authenticator = Arc::new(authenticator(&config, &stores.cache, &stores.database)?);
    let auditor = Auditor::new(Arc::new(SeaOrmAuditSink::new(stores.database.handle())));
    let metrics = Arc::new(ServiceMetrics::default());
    register_counters(&metrics, &users, &models, &auditor);
    let envelope = EnvelopeLayer::new(Envelope {
        metrics: metrics.clone(),
        max_in_flight: config.max_in_flight,
        default_timeout: config.request_timeout(),
    });

    // One stack for the gRPC port and the REST shim: tower layers go here,
    // not on the Server builder, so that both get them.
    let layers = tower::ServiceBuilder::new()
        .layer(envelope)
        .layer(AuthLayer::new(authenticator.clone()));
    let routes = Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            AffinityServiceServer::new(AffinityGrpc::new(engine, stop_rx, auditor.clone(), metrics))
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_RESPONSE_BYTES),
        )
        .add_service(
            UserServiceServer::new(UserGrpc::new(users, auditor.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_RESPONSE_BYTES),
        )
        .add_service(
            ModelMappingServiceServer::new(ModelMappingGrpc::new(models, auditor))
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_RESPONSE_BYTES),
        );
    let http_server = serve_http(
        http,
        crate::http::boxed(layers.clone().service(routes.clone())),
        authenticator,
        drain_rx.clone(),
    )?;
    // serve_with_incoming ignores the builder's TCP options, so they go on the
    // accepted sockets here. Without TCP_NODELAY, concurrent calls on one
    // connection waited for delayed ACKs (about 40 ms each).
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(layers)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, signal);
    let servers = async {
        let (grpc, http) = tokio::join!(server, http_server);
        grpc.map_err(StartError::from)?;
        http
    };

    let result = tokio::select! {
        result = servers => result,
        () = grace_expired(drain_rx, grace) => {
            tracing::warn!(grace_seconds = grace.as_secs(), "drain grace period expired; closing remaining calls");
            Ok(())
        }
    };
    monitor.abort();
    let _ = upkeep_task.await;
    result
}

/// Resolves `grace` after the drain starts.
async fn grace_expired(mut drain: watch::Receiver<bool>, grace: Duration) {
    if drain.wait_for(|draining| *draining).await.is_err() {
        // The sender lives as long as the server future; without it there
        // is nothing to wait for.
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(grace).await;
}
