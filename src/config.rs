//! One typed configuration from flags and environment, validated at start.
//!
//! Aether's own variable names are used where Aether has them (DATABASE_URL,
//! REDIS_URL, JWT_SECRET_KEY, ENCRYPTION_KEY, ENVIRONMENT); everything else is
//! prefixed `AETHER_CONTROL_`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Default of `AETHER_CONTROL_NAME_CACHE_TTL_SECONDS`.
pub const DEFAULT_NAME_CACHE_TTL_SECONDS: u64 = 5;

/// Deployment environment, as Aether names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "lower")]
pub enum Environment {
    /// Local development: embedded defaults are fine.
    Development,
    /// Tests.
    Test,
    /// Production: secrets and shared stores are required.
    Production,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "lower")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// When to run the schema migrations (which only create missing tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "lower")]
pub enum MigrateMode {
    /// SQLite: always; PostgreSQL: never (Aether owns that schema).
    Auto,
    /// Always create missing tables.
    Always,
    /// Never touch the schema.
    Never,
}

/// Where the REST/JSON shim listens: an address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpListen {
    /// No REST/JSON shim.
    Off,
    /// Listen here.
    On(SocketAddr),
}

impl HttpListen {
    /// The address, unless off.
    pub fn address(self) -> Option<SocketAddr> {
        match self {
            Self::Off => None,
            Self::On(address) => Some(address),
        }
    }
}

impl std::str::FromStr for HttpListen {
    type Err = std::net::AddrParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim().eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        text.trim().parse().map(Self::On)
    }
}

/// The service configuration.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "aether-control",
    version,
    about = "gRPC control plane for the Aether LLM gateway"
)]
pub struct Config {
    /// gRPC listen address.
    #[arg(long, env = "AETHER_CONTROL_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// REST/JSON shim listen address (`/v1/...`, `/api/admin/monitoring/cache/...`,
    /// `/healthz`, `/readyz`, `/openapi.json`), or `off`.
    #[arg(long, env = "AETHER_CONTROL_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: HttpListen,

    /// Directory for the embedded SQLite database and generated secrets.
    #[arg(long, env = "AETHER_CONTROL_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Redis URL (redis://, rediss://, redis-cluster://, redis-sentinel://).
    /// Absent: affinities are kept in memory (one instance only).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Database URL (postgres:// or sqlite:). Absent: SQLite in the data dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Aether's JWT signing secret (admin tokens).
    #[arg(long, env = "JWT_SECRET_KEY", hide_env_values = true)]
    pub jwt_secret_key: Option<String>,

    /// Aether's encryption secret for stored API keys.
    #[arg(long, env = "ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: Option<String>,

    /// Service tokens for internal callers, comma-separated
    /// `name:scope+scope:sha256hex` (scopes read, write, admin; the hash is
    /// the hex SHA-256 of the token). When none are set outside production,
    /// a local admin token is generated in the data dir.
    #[arg(
        long,
        env = "AETHER_CONTROL_SERVICE_TOKENS",
        hide_env_values = true,
        default_value = ""
    )]
    pub service_tokens: String,

    /// Deployment environment.
    #[arg(long, env = "ENVIRONMENT", value_enum, default_value = "development")]
    pub environment: Environment,

    /// Prefix put before every Redis key, Aether's included. Leave empty
    /// beside a live Aether; tests use it to isolate runs.
    #[arg(long, env = "AETHER_CONTROL_REDIS_NAMESPACE", default_value = "")]
    pub redis_namespace: String,

    /// Redis connections in the pool.
    #[arg(long, env = "AETHER_CONTROL_REDIS_POOL_SIZE", default_value_t = 4)]
    pub redis_pool_size: usize,

    /// Timeout of one store call, in milliseconds; past it the call fails
    /// with UNAVAILABLE.
    #[arg(long, env = "AETHER_CONTROL_STORE_TIMEOUT_MS", default_value_t = 1000)]
    pub store_timeout_ms: u64,

    /// How often the stores are probed for health, in milliseconds.
    #[arg(long, env = "AETHER_CONTROL_HEALTH_INTERVAL_MS", default_value_t = 1000)]
    pub health_interval_ms: u64,

    /// Affinity TTL when SetAffinity gives none, in seconds (Aether: 300).
    #[arg(long, env = "AETHER_CONTROL_AFFINITY_TTL_SECONDS", default_value_t = 300)]
    pub affinity_ttl_seconds: u64,

    /// How often affinities written by Aether itself are indexed, in
    /// seconds; such an entry shows up in per-user lists and clears within
    /// about this interval plus one scan.
    #[arg(long, env = "AETHER_CONTROL_RECONCILE_INTERVAL_SECONDS", default_value_t = 10)]
    pub reconcile_interval_seconds: u64,

    /// How often bindings that point at a disabled or deleted provider,
    /// endpoint, provider key, API key or user are looked for and dropped, in
    /// seconds; such a binding is gone within about twice this.
    #[arg(long, env = "AETHER_CONTROL_TARGET_WATCH_INTERVAL_SECONDS", default_value_t = 15)]
    pub target_watch_interval_seconds: u64,

    /// SetAffinity's default: write a binding even when the caller reports a
    /// failed upstream request (default: only successes write).
    #[arg(long, env = "AETHER_CONTROL_WRITE_ON_FAILURE", default_value_t = false, action = clap::ArgAction::Set)]
    pub write_on_failure: bool,

    /// SetAffinity's default flapping guard: most switches of one binding per
    /// minute, further switches are refused (0: no cap, Aether's behaviour).
    #[arg(long, env = "AETHER_CONTROL_MAX_SWITCHES_PER_MINUTE", default_value_t = 0)]
    pub max_switches_per_minute: u32,

    /// Most affinities the in-memory store keeps; beyond, the entries that
    /// expire soonest are evicted (and counted).
    #[arg(long, env = "AETHER_CONTROL_MEMORY_MAX_AFFINITIES", default_value_t = 100_000)]
    pub memory_max_affinities: u64,

    /// TTL of the "model not found" entries we cache, in seconds: a model
    /// created after a miss resolves at most this long later (Aether: 300).
    #[arg(long, env = "AETHER_CONTROL_MODEL_NEGATIVE_CACHE_TTL_SECONDS", default_value_t = 30)]
    pub model_negative_cache_ttl_seconds: u64,

    /// How long the provider, endpoint, provider key and global model rows
    /// that name listed affinities are kept in process, in seconds: a rename
    /// shows in listings at most this late. 0 reads them every time.
    #[arg(long, env = "AETHER_CONTROL_NAME_CACHE_TTL_SECONDS", default_value_t = DEFAULT_NAME_CACHE_TTL_SECONDS)]
    pub name_cache_ttl_seconds: u64,

    /// When to create missing tables.
    #[arg(long, env = "AETHER_CONTROL_DB_MIGRATE", value_enum, default_value = "auto")]
    pub db_migrate: MigrateMode,

    /// Calls allowed in flight at once; more are refused with
    /// RESOURCE_EXHAUSTED at once (load shedding, no queue).
    #[arg(long, env = "AETHER_CONTROL_MAX_IN_FLIGHT", default_value_t = 512)]
    pub max_in_flight: usize,

    /// Longest a call may take, in milliseconds; a caller's shorter
    /// `grpc-timeout` wins. Past it the call ends with DEADLINE_EXCEEDED.
    #[arg(long, env = "AETHER_CONTROL_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,

    /// Where to export traces over OTLP/gRPC (e.g. `http://otel-collector:4317`);
    /// off when unset. Each call's span is a child of the caller's
    /// `traceparent`.
    #[arg(long, env = "AETHER_CONTROL_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Log format: text or json.
    #[arg(long, env = "AETHER_CONTROL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Longest wait for in-flight calls after SIGTERM/SIGINT, in seconds.
    #[arg(long, env = "AETHER_CONTROL_SHUTDOWN_GRACE_SECONDS", default_value_t = 20)]
    pub shutdown_grace_seconds: u64,
}

/// Longest TTL a caller may ask for.
pub const MAX_AFFINITY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A configuration value that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is out of its range or malformed.
    #[error("invalid {name}: {reason}")]
    Invalid {
        /// The flag / variable.
        name: &'static str,
        /// What is wrong, without echoing secrets.
        reason: String,
    },
    /// A value required in this environment is missing.
    #[error("{name} is required when ENVIRONMENT=production")]
    RequiredInProduction {
        /// The variable.
        name: &'static str,
    },
}

fn invalid(name: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        reason: reason.into(),
    }
}

impl Config {
    /// Parses flags and environment without validation (see [`Config::validate`]).
    pub fn from_args() -> Self {
        Self::parse()
    }

    /// Checks every value; the first problem is returned with its variable name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.redis_url {
            let known = ["redis://", "rediss://", "redis-cluster://", "redis-sentinel://"];
            if !known.iter().any(|scheme| url.starts_with(scheme)) {
                return Err(invalid(
                    "REDIS_URL",
                    format!("scheme must be one of {}", known.join(", ")),
                ));
            }
            fred::types::config::Config::from_url(url).map_err(|e| invalid("REDIS_URL", e.details().to_string()))?;
        }
        if let Some(url) = &self.database_url {
            let known = ["postgres://", "postgresql://", "sqlite:"];
            if !known.iter().any(|scheme| url.starts_with(scheme)) {
                return Err(invalid(
                    "DATABASE_URL",
                    format!("scheme must be one of {}", known.join(", ")),
                ));
            }
        }
        if self.redis_namespace.len() > 64
            || self
                .redis_namespace
                .chars()
                .any(|c| matches!(c, '*' | '?' | '[' | ']' | '\\') || c.is_whitespace())
        {
            return Err(invalid(
                "AETHER_CONTROL_REDIS_NAMESPACE",
                "at most 64 characters, no whitespace or glob characters",
            ));
        }
        if !(1..=64).contains(&self.redis_pool_size) {
            return Err(invalid("AETHER_CONTROL_REDIS_POOL_SIZE", "must be 1..=64"));
        }
        if !(10..=60_000).contains(&self.store_timeout_ms) {
            return Err(invalid("AETHER_CONTROL_STORE_TIMEOUT_MS", "must be 10..=60000"));
        }
        if !(50..=60_000).contains(&self.health_interval_ms) {
            return Err(invalid("AETHER_CONTROL_HEALTH_INTERVAL_MS", "must be 50..=60000"));
        }
        if self.affinity_ttl_seconds == 0 || self.affinity_ttl_seconds > MAX_AFFINITY_TTL.as_secs() {
            return Err(invalid("AETHER_CONTROL_AFFINITY_TTL_SECONDS", "must be 1..=604800"));
        }
        crate::auth::service_tokens::ServiceTokens::parse(&self.service_tokens)
            .map_err(|e| invalid("AETHER_CONTROL_SERVICE_TOKENS", e.to_string()))?;
        if !(1..=100_000).contains(&self.max_in_flight) {
            return Err(invalid("AETHER_CONTROL_MAX_IN_FLIGHT", "must be 1..=100000"));
        }
        if !(10..=600_000).contains(&self.request_timeout_ms) {
            return Err(invalid("AETHER_CONTROL_REQUEST_TIMEOUT_MS", "must be 10..=600000"));
        }
        if !(1..=300).contains(&self.model_negative_cache_ttl_seconds) {
            return Err(invalid(
                "AETHER_CONTROL_MODEL_NEGATIVE_CACHE_TTL_SECONDS",
                "must be 1..=300",
            ));
        }
        if self.name_cache_ttl_seconds > 300 {
            return Err(invalid("AETHER_CONTROL_NAME_CACHE_TTL_SECONDS", "must be 0..=300"));
        }
        if self
            .http_listen
            .address()
            .is_some_and(|http| http == self.listen && http.port() != 0)
        {
            return Err(invalid(
                "AETHER_CONTROL_HTTP_LISTEN",
                "must differ from AETHER_CONTROL_LISTEN",
            ));
        }
        if !(1..=3600).contains(&self.reconcile_interval_seconds) {
            return Err(invalid("AETHER_CONTROL_RECONCILE_INTERVAL_SECONDS", "must be 1..=3600"));
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(invalid(
                "AETHER_CONTROL_OTLP_ENDPOINT",
                "must be an http:// or https:// URL",
            ));
        }
        if !(1..=3600).contains(&self.target_watch_interval_seconds) {
            return Err(invalid(
                "AETHER_CONTROL_TARGET_WATCH_INTERVAL_SECONDS",
                "must be 1..=3600",
            ));
        }
        if self.max_switches_per_minute > crate::domain::affinity::engine::MAX_SWITCHES_PER_MINUTE {
            return Err(invalid("AETHER_CONTROL_MAX_SWITCHES_PER_MINUTE", "must be 0..=10000"));
        }
        if !(1..=100_000_000).contains(&self.memory_max_affinities) {
            return Err(invalid("AETHER_CONTROL_MEMORY_MAX_AFFINITIES", "must be 1..=100000000"));
        }
        if self.environment == Environment::Production {
            self.validate_production()?;
        }
        Ok(())
    }

    /// Production runs beside a live Aether: shared stores and real secrets.
    fn validate_production(&self) -> Result<(), ConfigError> {
        match &self.database_url {
            None => return Err(ConfigError::RequiredInProduction { name: "DATABASE_URL" }),
            Some(url) if url.starts_with("sqlite:") => {
                return Err(invalid("DATABASE_URL", "production needs PostgreSQL"));
            }
            Some(_) => {}
        }
        if self.redis_url.is_none() {
            return Err(ConfigError::RequiredInProduction { name: "REDIS_URL" });
        }
        match &self.jwt_secret_key {
            None => return Err(ConfigError::RequiredInProduction { name: "JWT_SECRET_KEY" }),
            Some(secret) if secret.len() < 32 => {
                return Err(invalid(
                    "JWT_SECRET_KEY",
                    "must be at least 32 characters in production",
                ));
            }
            Some(_) => {}
        }
        // Aether tests the secret's truthiness: an empty value is missing.
        if self.encryption_key.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::RequiredInProduction { name: "ENCRYPTION_KEY" });
        }
        Ok(())
    }

    /// Timeout of one store call.
    pub fn store_timeout(&self) -> Duration {
        Duration::from_millis(self.store_timeout_ms)
    }

    /// Interval between health probes.
    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms)
    }

    /// Default affinity TTL.
    pub fn affinity_ttl(&self) -> Duration {
        Duration::from_secs(self.affinity_ttl_seconds)
    }

    /// Longest a call may take.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// TTL of cached model-name misses.
    pub fn model_negative_cache_ttl(&self) -> Duration {
        Duration::from_secs(self.model_negative_cache_ttl_seconds)
    }

    /// TTL of the upstream name rows kept for listings.
    pub fn name_cache_ttl(&self) -> Duration {
        Duration::from_secs(self.name_cache_ttl_seconds)
    }

    /// Interval of the index reconciler.
    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_secs(self.reconcile_interval_seconds)
    }

    /// How often bindings to inactive targets are dropped.
    pub fn target_watch_interval(&self) -> Duration {
        Duration::from_secs(self.target_watch_interval_seconds)
    }

    /// Grace period for draining on shutdown.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }

    /// The database URL in force: the configured one, or SQLite in the data dir.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("aether-control.db").display()
            ),
        }
    }

    /// Whether migrations run for the database in force.
    pub fn should_migrate(&self) -> bool {
        match self.db_migrate {
            MigrateMode::Always => true,
            MigrateMode::Never => false,
            MigrateMode::Auto => self.effective_database_url().starts_with("sqlite:"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("aether-control").chain(args.iter().copied())).expect("flags parse")
    }

    #[test]
    fn defaults_are_the_embedded_default() {
        let config = parse(&[]);
        config.validate().expect("defaults validate");
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
        assert!(config.effective_database_url().starts_with("sqlite://data/"));
        assert!(config.should_migrate());
        assert_eq!(config.affinity_ttl(), Duration::from_secs(300));
        assert_eq!(
            config.http_listen.address().map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:8080")
        );
    }

    #[test]
    fn the_rest_shim_can_be_moved_or_turned_off() {
        assert_eq!(parse(&["--http-listen", "off"]).http_listen, HttpListen::Off);
        assert_eq!(parse(&["--http-listen", " OFF "]).http_listen.address(), None);
        let moved = parse(&["--http-listen", "0.0.0.0:9090"]);
        assert_eq!(moved.http_listen.address().map(|a| a.port()), Some(9090));
        assert!(
            Config::try_parse_from(["aether-control", "--http-listen", "nowhere"]).is_err(),
            "neither an address nor off"
        );
    }

    #[test]
    fn production_requires_shared_stores_and_secrets() {
        let err = parse(&["--environment", "production"]).validate().unwrap_err();
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
        let err = parse(&[
            "--environment",
            "production",
            "--database-url",
            "postgres://db/aether",
            "--redis-url",
            "redis://r:6379/0",
            "--jwt-secret-key",
            "short",
            "--encryption-key",
            "k",
        ])
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("JWT_SECRET_KEY"), "{err}");
        assert!(!err.to_string().contains("short"), "secrets are never echoed: {err}");
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases: &[(&[&str], &str)] = &[
            (&["--redis-url", "http://x"], "REDIS_URL"),
            (&["--database-url", "mysql://x"], "DATABASE_URL"),
            (&["--redis-namespace", "a*"], "AETHER_CONTROL_REDIS_NAMESPACE"),
            (&["--store-timeout-ms", "0"], "AETHER_CONTROL_STORE_TIMEOUT_MS"),
            (&["--affinity-ttl-seconds", "0"], "AETHER_CONTROL_AFFINITY_TTL_SECONDS"),
            (&["--service-tokens", "gw:read:abc"], "AETHER_CONTROL_SERVICE_TOKENS"),
            (
                &["--listen", "127.0.0.1:7000", "--http-listen", "127.0.0.1:7000"],
                "AETHER_CONTROL_HTTP_LISTEN",
            ),
            (
                &["--reconcile-interval-seconds", "0"],
                "AETHER_CONTROL_RECONCILE_INTERVAL_SECONDS",
            ),
            (
                &["--target-watch-interval-seconds", "0"],
                "AETHER_CONTROL_TARGET_WATCH_INTERVAL_SECONDS",
            ),
            (
                &["--max-switches-per-minute", "10001"],
                "AETHER_CONTROL_MAX_SWITCHES_PER_MINUTE",
            ),
            (
                &["--memory-max-affinities", "0"],
                "AETHER_CONTROL_MEMORY_MAX_AFFINITIES",
            ),
            (&["--otlp-endpoint", "collector:4317"], "AETHER_CONTROL_OTLP_ENDPOINT"),
        ];
        for (args, name) in cases {
            let err = parse(args).validate().unwrap_err();
            assert!(err.to_string().contains(name), "{args:?}: {err}");
        }
    }

    #[test]
    fn postgres_is_not_migrated_by_default() {
        let config = parse(&["--database-url", "postgres://localhost/aether"]);
        assert!(!config.should_migrate());
        let config = parse(&[
            "--database-url",
            "postgres://localhost/aether",
            "--db-migrate",
            "always",
        ]);
        assert!(config.should_migrate());
    }
}
