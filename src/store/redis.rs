//! Redis: the shared affinity store, with Aether's keys and JSON values.
//! Writes and guarded deletes are single Lua scripts on one key, so they are
//! atomic across instances and work unchanged on Redis Cluster.

use std::time::Duration;

use async_trait::async_trait;
use fred::clients::{Client, Pool};
use fred::error::{Error as RedisError, ErrorKind};
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::Builder;
use fred::types::config::{Config as RedisConfig, ReconnectPolicy};
use fred::types::scripts::Script;

use crate::domain::affinity::{
    AffinityKey, AffinityRecord, AffinityWrite, InvalidationGuard, SetOutcome, SetResult, format_epoch,
};
use crate::error::{StoreError, StoreKind};
use crate::store::{AffinityStore, HealthProbe};

/// Mirrors `apply_write`: same target on a live entry refreshes (count + 1,
/// created_at kept verbatim), another target switches, else creates. The
/// value is finished here so the fields keep Aether's order and separators.
const SET_SCRIPT: &str = r#"
local old = redis.call('GET', KEYS[1])
local now = tonumber(ARGV[2])
local outcome = 'created'
local created = ARGV[2]
local count = 1
if old then
  local ok, v = pcall(cjson.decode, old)
  if ok and type(v) == 'table' and tonumber(v.expire_at) and now <= tonumber(v.expire_at) then
    if v.provider_id == ARGV[5] and v.endpoint_id == ARGV[6] and v.key_id == ARGV[7] then
      outcome = 'refreshed'
      created = string.match(old, '"created_at"%s*:%s*([-+%d%.eE]+)') or ARGV[2]
      count = (tonumber(v.request_count) or 0) + 1
    else
      outcome = 'switched'
    end
  end
end
local value = ARGV[1] .. created .. ', "expire_at": ' .. ARGV[3] .. ', "request_count": ' .. string.format('%d', count) .. '}'
redis.call('SET', KEYS[1], value, 'EX', ARGV[4])
return {outcome, value, old or ''}
"#;

/// Deletes the key when every non-empty guard (endpoint, key, provider)
/// equals the stored field; returns the deleted value or nil.
const INVALIDATE_SCRIPT: &str = r#"
local old = redis.call('GET', KEYS[1])
if not old then return false end
local ok, v = pcall(cjson.decode, old)
if not ok or type(v) ~= 'table' then
  if ARGV[1] == '' and ARGV[2] == '' and ARGV[3] == '' then
    redis.call('DEL', KEYS[1])
    return old
  end
  return false
end
if (ARGV[1] ~= '' and v.endpoint_id ~= ARGV[1]) or (ARGV[2] ~= '' and v.key_id ~= ARGV[2])
  or (ARGV[3] ~= '' and v.provider_id ~= ARGV[3]) then
  return false
end
redis.call('DEL', KEYS[1])
return old
"#;

/// Classifies a Redis error by whether retrying can help.
fn store_error(error: &RedisError) -> StoreError {
    let detail = error.to_string();
    match error.kind() {
        ErrorKind::IO
        | ErrorKind::Timeout
        | ErrorKind::Canceled
        | ErrorKind::Backpressure
        | ErrorKind::Cluster
        | ErrorKind::Routing
        | ErrorKind::Sentinel
        | ErrorKind::Tls
        | ErrorKind::Auth => StoreError::Unavailable {
            store: StoreKind::Redis,
            detail,
        },
        _ => StoreError::Internal {
            store: StoreKind::Redis,
            detail,
        },
    }
}

/// A connected Redis pool with the service's fail-fast settings.
#[derive(Clone)]
pub struct RedisConnection {
    pool: Pool,
    namespace: String,
}

impl RedisConnection {
    /// Builds the pool and starts connecting. It does not wait for Redis:
    /// the service starts NOT_SERVING and recovers when Redis comes up.
    pub fn connect(url: &str, pool_size: usize, timeout: Duration, namespace: &str) -> Result<Self, StoreError> {
        let config = RedisConfig {
            fail_fast: false,
            ..RedisConfig::from_url(url).map_err(|e| store_error(&e))?
        };
        let pool = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| p.default_command_timeout = timeout)
            // Retry forever, 100 ms doubling to 2 s.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build_pool(pool_size)
            .map_err(|e| store_error(&e))?;
        let _connections = pool.connect_pool();
        Ok(Self {
            pool,
            namespace: namespace.to_owned(),
        })
    }

    /// Waits up to `timeout` for the first connection (start-up courtesy).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.pool.wait_for_connect())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A connected client, or UNAVAILABLE at once (never queue behind a
    /// reconnect).
    pub fn client(&self) -> Result<&Client, StoreError> {
        let client = self.pool.next_connected();
        if client.is_connected() {
            Ok(client)
        } else {
            Err(StoreError::Unavailable {
                store: StoreKind::Redis,
                detail: "not connected".into(),
            })
        }
    }

    /// `key` with the configured namespace.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }
}

#[async_trait]
impl HealthProbe for RedisConnection {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn probe(&self) -> Result<(), StoreError> {
        let _: String = self.client()?.ping(None).await.map_err(|e| store_error(&e))?;
        Ok(())
    }
}

/// Affinities in Redis, shared with Aether.
pub struct RedisAffinityStore {
    redis: RedisConnection,
    set_script: Script,
    invalidate_script: Script,
}

impl RedisAffinityStore {
    /// A store over an existing connection.
    pub fn new(redis: RedisConnection) -> Self {
        Self {
            redis,
            set_script: Script::from_lua(SET_SCRIPT),
            invalidate_script: Script::from_lua(INVALIDATE_SCRIPT),
        }
    }
}

fn parse_record(text: &str, what: &str) -> Result<AffinityRecord, StoreError> {
    AffinityRecord::from_json(text).ok_or_else(|| StoreError::Internal {
        store: StoreKind::Redis,
        detail: format!("unparsable {what} value"),
    })
}

#[async_trait]
impl AffinityStore for RedisAffinityStore {
    fn storage_type(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, key: &AffinityKey, now: f64) -> Result<Option<AffinityRecord>, StoreError> {
        let redis_key = self.redis.key(&key.redis_key());
        let value: Option<String> = self
            .redis
            .client()?
            .get(&redis_key)
            .await
            .map_err(|e| store_error(&e))?;
        // A value missing fields counts as a miss, as in Aether.
        Ok(value
            .and_then(|text| AffinityRecord::from_json(&text))
            .filter(|record| record.is_live(now)))
    }

    async fn set(&self, key: &AffinityKey, write: &AffinityWrite, now: f64) -> Result<SetResult, StoreError> {
        let ttl = write.ttl.as_secs_f64();
        let args = vec![
            AffinityRecord::json_head(write, &key.api_format),
            format_epoch(now),
            format_epoch(now + ttl),
            // SET EX takes whole seconds; round up so Redis never drops the
            // entry before expire_at.
            format!("{}", ttl.ceil().max(1.0) as u64),
            write.target.provider_id.clone(),
            write.target.endpoint_id.clone(),
            write.target.key_id.clone(),
        ];
        let client = self.redis.client()?;
        let (outcome, value, old): (String, String, String) = self
            .set_script
            .evalsha_with_reload(client, vec![self.redis.key(&key.redis_key())], args)
            .await
            .map_err(|e| store_error(&e))?;
        let record = parse_record(&value, "written")?;
        let (outcome, previous) = match outcome.as_str() {
            "created" => (SetOutcome::Created, None),
            "refreshed" => (SetOutcome::Refreshed, None),
            _ => {
                let previous = parse_record(&old, "replaced")?;
                (
                    SetOutcome::Switched {
                        provider_changed: previous.provider_id != record.provider_id,
                    },
                    Some(previous),
                )
            }
        };
        Ok(SetResult {
            record,
            outcome,
            previous,
        })
    }

    async fn invalidate(
        &self,
        key: &AffinityKey,
        guard: &InvalidationGuard,
    ) -> Result<Option<AffinityRecord>, StoreError> {
        let guard_arg = |g: &Option<String>| g.clone().unwrap_or_default();
        let args = vec![
            guard_arg(&guard.endpoint_id),
            guard_arg(&guard.key_id),
            guard_arg(&guard.provider_id),
        ];
        let client = self.redis.client()?;
        let old: Option<String> = self
            .invalidate_script
            .evalsha_with_reload(client, vec![self.redis.key(&key.redis_key())], args)
            .await
            .map_err(|e| store_error(&e))?;
        // A corrupt value deleted by an unguarded invalidation has no record.
        Ok(old.and_then(|text| AffinityRecord::from_json(&text)))
    }
}
