//! Redis: the shared affinity store, with Aether's keys and JSON values.
//! Writes and guarded deletes are single Lua scripts on one key, so they are
//! atomic across instances and work unchanged on Redis Cluster.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::clients::{Client, Pool, SubscriberClient};
use fred::error::{Error as RedisError, ErrorKind};
use fred::interfaces::{
    ClientLike, ClusterInterface, EventInterface, HashesInterface, KeysInterface, PubsubInterface, SortedSetsInterface,
};
use fred::types::cluster::ClusterRouting;
use fred::types::config::{Config as RedisConfig, ReconnectPolicy};
use fred::types::scan::Scanner;
use fred::types::scripts::Script;
use fred::types::{Builder, Expiration, Key, SetOptions};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::broadcast;

use crate::domain::affinity::events::AffinityEvent;
use crate::domain::affinity::usage::{
    BindingUsage, UpstreamOutcome, UsageCounters, UsageGroup, UsageReport, UsageTotals,
};
use crate::domain::affinity::{
    Affinity, AffinityKey, AffinityRecord, AffinityTarget, AffinityWrite, IndexRef, InvalidationGuard, KEY_PREFIX,
    Page, SetOutcome, SetResult, TargetKind, format_epoch,
};
use crate::error::{StoreError, StoreKind};
use crate::store::{
    AffinityStore, BATCH, CacheStore, CounterStore, EVENT_CHANNEL_CAPACITY, EventBus, HealthProbe, UsageStore,
};

/// Prefix of every key of ours. Aether's scans of `cache_affinity:*` can
/// never match it.
pub const OWN_PREFIX: &str = "aether_control:";

/// MGET batches one read keeps in flight.
const MGETS_IN_FLIGHT: usize = 8;

/// Keys one UNLINK frees at most.
const DELETE_BATCH: usize = 100;

/// Index keys expire a week after their last write, so indexes of keys that
/// are never used again do not pile up.
const INDEX_TTL_SECONDS: i64 = 7 * 24 * 3600 + 3600;

/// Mirrors `apply_write`: same target on a live entry refreshes (count + 1,
/// created_at kept verbatim), another target switches (unless ARGV[8] is
/// '0': then nothing is written), else creates. The value is finished here
/// so the fields keep Aether's order and separators.
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
    elseif ARGV[8] == '0' then
      return {'refused', old, old}
    else
      outcome = 'switched'
    end
  end
end
local value = ARGV[1] .. created .. ', "expire_at": ' .. ARGV[3] .. ', "request_count": ' .. string.format('%d', count) .. '}'
redis.call('SET', KEYS[1], value, 'EX', ARGV[4])
return {outcome, value, old or ''}
"#;

/// Counts one switch in a window that starts with the first one.
const COUNT_SWITCH_SCRIPT: &str = r#"
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return count
"#;

/// Deletes the key when every guard (endpoint, key, provider) that is set
/// equals the stored field; returns the deleted value or nil. A set guard
/// arrives as `=value` (so even `=` for an empty value is a guard), an unset
/// one as an empty string.
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
local function differs(guard, actual)
  return guard ~= '' and actual ~= string.sub(guard, 2)
end
if differs(ARGV[1], v.endpoint_id) or differs(ARGV[2], v.key_id) or differs(ARGV[3], v.provider_id) then
  return false
end
redis.call('DEL', KEYS[1])
return old
"#;

/// The lease of [`AffinityStore::reconcile`]'s passes.
const RECONCILE_TASK: &str = "reconcile";

/// How long a periodic task's lease lasts: most of its period. The holder's
/// next tick, one period after it took the lease, must find it gone, else
/// every other tick would be skipped and passes would run at half the
/// configured rate. The tenth (at most 1 s) left over absorbs timer and
/// round-trip jitter. A period of 1 ms or less gets none (the service's
/// are 1 s and longer).
fn lease_millis(period: Duration) -> i64 {
    let margin = (period / 10).min(Duration::from_secs(1));
    (period - margin).as_millis().max(1) as i64
}

/// Sets a lease to end in ARGV[2] ms (a non-positive time ends it at once)
/// only while ARGV[1], this instance, still holds it: 1 if set, else 0.
const LEASE_END_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// The live members (scored at or after ARGV[1]) of the indexes in KEYS
/// with their entries' values (key: ARGV[2] .. member), in one round trip:
/// one array per index of member, value pairs (a missing value, or a key
/// of another type, is nil: as MGET answers).
/// False when the indexes hold more than ARGV[3] live members in all: the
/// caller then reads them in pages, so the script stays short. It reads
/// keys that are not in KEYS, so it runs on standalone Redis only.
const INDEXED_ENTRIES_SCRIPT: &str = r#"
local budget = tonumber(ARGV[3])
local out = {}
for i, index in ipairs(KEYS) do
  local members = redis.call('ZRANGEBYSCORE', index, ARGV[1], '+inf', 'LIMIT', 0, budget + 1)
  budget = budget - #members
  if budget < 0 then
    return false
  end
  local found = {}
  for _, member in ipairs(members) do
    local value = redis.pcall('GET', ARGV[2] .. member)
    if type(value) == 'table' then
      value = false
    end
    found[#found + 1] = member
    found[#found + 1] = value
  end
  out[i] = found
end
return out
"#;

/// Most indexes one [`INDEXED_ENTRIES_SCRIPT`] call reads (each costs a
/// ZRANGEBYSCORE inside it, while Redis waits).
const SCRIPT_MAX_INDEXES: usize = 64;

/// Removes at most ARGV[2] members scored at or below ARGV[1]; returns how
/// many went. One bounded step, repeated by the caller.
const PRUNE_SCRIPT: &str = r#"
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #members > 0 then
  redis.call('ZREM', KEYS[1], unpack(members))
end
return #members
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
    builder: Builder,
    namespace: String,
    clustered: bool,
}

impl RedisConnection {
    /// Builds the pool and starts connecting. It does not wait for Redis:
    /// the service starts NOT_SERVING and recovers when Redis comes up.
    pub fn connect(url: &str, pool_size: usize, timeout: Duration, namespace: &str) -> Result<Self, StoreError> {
        let config = RedisConfig {
            fail_fast: false,
            ..RedisConfig::from_url(url).map_err(|e| store_error(&e))?
        };
        let clustered = config.server.is_clustered();
        let mut builder = Builder::from_config(config);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = timeout;
                // Pub/sub messages wait here for the event forwarder; fred's
                // default (32) overflowed during bursts of clear events.
                p.broadcast_channel_capacity = EVENT_CHANNEL_CAPACITY;
            })
            // Retry forever, 100 ms doubling to 2 s.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        let pool = builder.build_pool(pool_size).map_err(|e| store_error(&e))?;
        let _connections = pool.connect_pool();
        Ok(Self {
            pool,
            builder,
            namespace: namespace.to_owned(),
            clustered,
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

    /// One of our own keys (`aether_control:...`), namespaced.
    pub fn own_key(&self, key: &str) -> String {
        format!("{}{OWN_PREFIX}{key}", self.namespace)
    }

    /// A SCAN pattern matching keys that start with `prefix` literally.
    fn prefix_pattern(&self, prefix: &str) -> String {
        format!("{}*", escape_glob(&self.key(prefix)))
    }

    /// Splits keys into batches a multi-key command accepts: at most `size`
    /// keys, and on a cluster all in one hash slot.
    fn batches(&self, keys: Vec<String>, size: usize) -> Vec<Vec<String>> {
        if !self.clustered {
            return keys.chunks(size).map(<[String]>::to_vec).collect();
        }
        let mut by_slot: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for key in keys {
            by_slot
                .entry(Key::from(key.as_str()).cluster_hash())
                .or_default()
                .push(key);
        }
        by_slot
            .into_values()
            .flat_map(|keys| keys.chunks(size).map(<[String]>::to_vec).collect::<Vec<_>>())
            .collect()
    }

    /// Values of `keys`, in batches (one per cluster slot), a few in flight
    /// at a time: a page spread over many slots is not a chain of round trips.
    async fn mget(&self, keys: &[String]) -> Result<HashMap<String, String>, StoreError> {
        let client = self.client()?;
        let replies: Vec<(Vec<String>, Vec<Option<String>>)> =
            futures::stream::iter(self.batches(keys.to_vec(), BATCH).into_iter().map(|batch| async move {
                // MGET, also for one key: it answers nil for a key of another type.
                let got: Vec<Option<String>> = client.mget(batch.clone()).await.map_err(|e| store_error(&e))?;
                Ok::<_, StoreError>((batch, got))
            }))
            .buffered(MGETS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(replies
            .into_iter()
            .flat_map(|(batch, got)| batch.into_iter().zip(got))
            .filter_map(|(k, v)| Some((k, v?)))
            .collect())
    }

    /// Runs `command` on batches of `keys` (UNLINK, EXISTS) and sums the replies.
    async fn sum_over_batches(&self, command: KeyCountCommand, keys: Vec<String>) -> Result<u64, StoreError> {
        // Freeing keys is the slow part of a delete: smaller batches keep
        // each UNLINK short (measured: 500 keys could take 22 ms at 1M keys).
        let size = match command {
            KeyCountCommand::Unlink => DELETE_BATCH,
            KeyCountCommand::Exists => BATCH,
        };
        let mut total = 0;
        for batch in self.batches(keys, size) {
            let client = self.client()?;
            let count: i64 = match command {
                KeyCountCommand::Unlink => client.unlink(batch).await,
                KeyCountCommand::Exists => client.exists(batch).await,
            }
            .map_err(|e| store_error(&e))?;
            total += count.max(0) as u64;
        }
        Ok(total)
    }

    /// Every key starting with `prefix`, one SCAN page (about [`BATCH`]
    /// keys) at a time, on every cluster node; never KEYS. One page is read
    /// ahead while the caller works on the last, so a pass is not a chain of
    /// SCAN, work, SCAN round trips; no more than that is buffered.
    fn scan_pages(&self, prefix: &str) -> Result<BoxStream<'static, Result<Vec<String>, StoreError>>, StoreError> {
        let pattern = self.prefix_pattern(prefix);
        let client = self.client()?.clone();
        let pages = if self.clustered {
            client.scan_cluster(pattern, Some(BATCH as u32), None).boxed()
        } else {
            client.scan(pattern, Some(BATCH as u32), None).boxed()
        };
        let pages = pages
            .map(|page| {
                let mut page = page.map_err(|e| store_error(&e))?;
                let keys = page
                    .take_results()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|k| k.into_string())
                    .collect();
                page.next();
                Ok(keys)
            })
            .boxed();
        let (ahead, taken) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let mut pages = pages;
            while let Some(page) = pages.next().await {
                // The caller stopped listening (finished early or dropped).
                if ahead.send(page).await.is_err() {
                    break;
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(taken).boxed())
    }
}

#[derive(Clone, Copy)]
enum KeyCountCommand {
    Unlink,
    Exists,
}

/// Escapes Redis glob characters so a key part only ever matches itself.
pub fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
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

/// Affinities in Redis, shared with Aether, with our indexes beside them:
/// sorted sets scored by `expire_at` under `aether_control:idx:` (all
/// entries; per client API key; per provider; per provider key; per
/// endpoint), members `{affinity_key}:{API_FORMAT}:{global_model_id}`; and
/// per target kind the ids live entries point at
/// (`aether_control:idx:ids:{kind}`, scored by the latest expiry).
pub struct RedisAffinityStore {
    redis: RedisConnection,
    instance_id: String,
    reconcile_interval: Duration,
    set_script: Script,
    invalidate_script: Script,
    count_switch_script: Script,
    lease_end_script: Script,
    prune_script: Script,
    indexed_entries_script: Script,
}

impl RedisAffinityStore {
    /// A store over an existing connection. `reconcile_interval` is how
    /// often instances call [`AffinityStore::reconcile`]; one of them works
    /// per interval.
    pub fn new(redis: RedisConnection, instance_id: &str, reconcile_interval: Duration) -> Self {
        Self {
            redis,
            instance_id: instance_id.to_owned(),
            reconcile_interval,
            set_script: Script::from_lua(SET_SCRIPT),
            invalidate_script: Script::from_lua(INVALIDATE_SCRIPT),
            count_switch_script: Script::from_lua(COUNT_SWITCH_SCRIPT),
            lease_end_script: Script::from_lua(LEASE_END_SCRIPT),
            prune_script: Script::from_lua(PRUNE_SCRIPT),
            indexed_entries_script: Script::from_lua(INDEXED_ENTRIES_SCRIPT),
        }
    }

    /// The ids of `kind` that live entries point at.
    fn referenced_key(&self, kind: TargetKind) -> String {
        self.redis.own_key(&format!("idx:ids:{}", kind.as_str()))
    }

    fn all_index(&self) -> String {
        self.redis.own_key("idx:all")
    }

    fn index_key(&self, index: &IndexRef) -> String {
        match index {
            IndexRef::AffinityKey(id) => self.redis.own_key(&format!("idx:ak:{id}")),
            IndexRef::Provider(id) => self.redis.own_key(&format!("idx:provider:{id}")),
            IndexRef::ProviderKey(id) => self.redis.own_key(&format!("idx:pkey:{id}")),
            IndexRef::Endpoint(id) => self.redis.own_key(&format!("idx:endpoint:{id}")),
        }
    }

    /// The index keys an entry belongs to.
    fn index_keys_of(&self, key: &AffinityKey, record: &AffinityRecord) -> Vec<String> {
        std::iter::once(self.all_index())
            .chain(IndexRef::all_of(key, record).iter().map(|i| self.index_key(i)))
            .collect()
    }

    /// Adds entries to their indexes (one ZADD per index key) and their
    /// targets to the referenced ids (ZADD GT, so the latest expiry wins).
    /// Returns how many were new in the all-entries index.
    async fn index(&self, entries: &[(AffinityKey, AffinityRecord)]) -> Result<u64, StoreError> {
        let mut by_index: HashMap<String, Vec<(f64, String)>> = HashMap::new();
        let mut referenced: HashMap<String, HashMap<&str, f64>> = HashMap::new();
        for (key, record) in entries {
            for index in self.index_keys_of(key, record) {
                by_index
                    .entry(index)
                    .or_default()
                    .push((record.expire_at, key.member()));
            }
            for kind in TargetKind::ALL {
                let latest = referenced
                    .entry(self.referenced_key(kind))
                    .or_default()
                    .entry(kind.id_of(key, record))
                    .or_insert(record.expire_at);
                *latest = latest.max(record.expire_at);
            }
        }
        let all = self.all_index();
        let client = self.redis.client()?;
        // All ZADD / EXPIRE commands go out together (fred pipelines them on
        // the connection): one round trip per batch, not two per index key.
        let writes = by_index
            .iter()
            .flat_map(|(index, members)| members.chunks(BATCH).map(move |chunk| (index, chunk.to_vec())));
        let added = futures::future::try_join_all(writes.map(|(index, chunk)| {
            let all = &all;
            async move {
                let new: i64 = client.zadd(index, None, None, false, false, chunk).await?;
                Ok::<u64, RedisError>(if index == all { new.max(0) as u64 } else { 0 })
            }
        }));
        let ids = referenced.iter().flat_map(|(registry, ids)| {
            let ids: Vec<(f64, String)> = ids.iter().map(|(id, at)| (*at, (*id).to_owned())).collect();
            ids.chunks(BATCH)
                .map(|chunk| (registry.clone(), chunk.to_vec()))
                .collect::<Vec<_>>()
        });
        let registered = futures::future::try_join_all(ids.map(|(registry, chunk)| async move {
            client
                .zadd::<i64, _, _>(
                    registry,
                    None,
                    Some(fred::types::sorted_sets::Ordering::GreaterThan),
                    false,
                    false,
                    chunk,
                )
                .await
        }));
        // The four referenced-id sets are pruned by score on every watcher
        // pass; only the per-id indexes need a TTL to not pile up.
        let expiries = futures::future::try_join_all(
            by_index
                .keys()
                .map(|index| client.expire::<i64, _>(index, INDEX_TTL_SECONDS, None)),
        );
        let (added, _, _) = futures::future::try_join3(added, registered, expiries)
            .await
            .map_err(|e| store_error(&e))?;
        Ok(added.into_iter().sum())
    }

    /// Removes `member` from the given index keys.
    async fn unindex(&self, member: &str, index_keys: &[String]) -> Result<(), StoreError> {
        let client = self.redis.client()?;
        futures::future::try_join_all(index_keys.iter().map(|index| client.zrem::<i64, _, _>(index, member)))
            .await
            .map_err(|e| store_error(&e))?;
        Ok(())
    }

    /// Runs the guarded-delete script on one entry.
    async fn delete_guarded(&self, key: &AffinityKey, guard: &InvalidationGuard) -> Result<Option<String>, StoreError> {
        let guard_arg = |g: &Option<String>| g.as_ref().map(|value| format!("={value}")).unwrap_or_default();
        let args = vec![
            guard_arg(&guard.endpoint_id),
            guard_arg(&guard.key_id),
            guard_arg(&guard.provider_id),
        ];
        self.invalidate_script
            .evalsha_with_reload(self.redis.client()?, vec![self.redis.key(&key.redis_key())], args)
            .await
            .map_err(|e| store_error(&e))
    }

    /// Deletes (or, dry, checks) one entry under a guard; true if it went.
    async fn delete_one_guarded(
        &self,
        key: &AffinityKey,
        guard: &InvalidationGuard,
        dry_run: bool,
        now: f64,
    ) -> Result<bool, StoreError> {
        if dry_run {
            Ok(self.get(key, now).await?.is_some_and(|record| guard.matches(&record)))
        } else {
            self.invalidate(key, guard).await.map(|deleted| deleted.is_some())
        }
    }

    /// Reads and parses entries by key; missing or unparsable ones are left out.
    async fn read_entries(&self, keys: &[AffinityKey], now: f64) -> Result<Vec<Affinity>, StoreError> {
        let names: Vec<String> = keys.iter().map(|k| self.redis.key(&k.redis_key())).collect();
        let values = self.redis.mget(&names).await?;
        Ok(live_entries(
            keys.iter().zip(&names).map(|(key, name)| (key, values.get(name))),
            now,
        ))
    }

    /// The live members of each index and, when it could read them in the
    /// same round trip, their entries' values by member. `None` for the
    /// values on a cluster and for indexes too big for one script call.
    async fn indexed_members(
        &self,
        index_keys: &[String],
        now: f64,
    ) -> Result<(Vec<Vec<String>>, Option<HashMap<String, String>>), StoreError> {
        let client = self.redis.client()?;
        if !self.redis.clustered && index_keys.len() <= SCRIPT_MAX_INDEXES {
            let args = vec![now.to_string(), self.redis.key(KEY_PREFIX), BATCH.to_string()];
            let read: Option<Vec<Vec<Option<String>>>> = self
                .indexed_entries_script
                .evalsha_with_reload(client, index_keys.to_vec(), args)
                .await
                .map_err(|e| store_error(&e))?;
            if let Some(per_index) = read {
                let mut values = HashMap::new();
                let member_lists = per_index
                    .into_iter()
                    .map(|pairs| {
                        pairs
                            .chunks_exact(2)
                            .filter_map(|pair| {
                                let member = pair[0].clone()?;
                                if let Some(value) = &pair[1] {
                                    values.insert(member.clone(), value.clone());
                                }
                                Some(member)
                            })
                            .collect()
                    })
                    .collect();
                return Ok((member_lists, Some(values)));
            }
        }
        let member_lists =
            futures::future::try_join_all(index_keys.iter().map(|index| live_members(client, index, now))).await?;
        Ok((member_lists, None))
    }

    fn lease_key(&self, task: &str) -> String {
        self.redis.own_key(&format!("{task}:lease"))
    }

    /// Makes `task`'s lease end in `millis` (at once when not positive) if
    /// this instance still holds it; false when it expired or another
    /// instance holds it.
    async fn set_lease_end(&self, task: &str, millis: i64) -> Result<bool, StoreError> {
        let renewed: i64 = self
            .lease_end_script
            .evalsha_with_reload(
                self.redis.client()?,
                vec![self.lease_key(task)],
                vec![self.instance_id.clone(), millis.to_string()],
            )
            .await
            .map_err(|e| store_error(&e))?;
        Ok(renewed == 1)
    }

    /// Indexes the entries among `names` (one SCAN page of full key names)
    /// that the all-entries index lacks, or holds with an expiry before
    /// `due_before`. Only those are read; an entry whose stored expiry equals
    /// its indexed one is left as it is. Returns how many were new in the
    /// all-entries index.
    async fn index_unindexed(&self, names: &[String], now: f64, due_before: f64) -> Result<u64, StoreError> {
        let prefix_len = self.redis.key(KEY_PREFIX).len();
        let keyed: Vec<(&String, AffinityKey)> = names
            .iter()
            .filter_map(|name| Some((name, AffinityKey::from_member(name.get(prefix_len..)?)?)))
            .collect();
        if keyed.is_empty() {
            return Ok(0);
        }
        let members: Vec<String> = keyed.iter().map(|(_, key)| key.member()).collect();
        let scores: Vec<Option<f64>> = self
            .redis
            .client()?
            .zmscore(self.all_index(), members)
            .await
            .map_err(|e| store_error(&e))?;
        if scores.len() != keyed.len() {
            return Err(StoreError::Internal {
                store: StoreKind::Redis,
                detail: format!("ZMSCORE gave {} scores for {} members", scores.len(), keyed.len()),
            });
        }
        let due: HashMap<&String, (AffinityKey, Option<f64>)> = keyed
            .into_iter()
            .zip(scores)
            .filter(|(_, score)| score.is_none_or(|indexed| indexed < due_before))
            .map(|((name, key), score)| (name, (key, score)))
            .collect();
        let names: Vec<String> = due.keys().map(|name| (*name).clone()).collect();
        let values = self.redis.mget(&names).await?;
        let entries: Vec<(AffinityKey, AffinityRecord)> = values
            .iter()
            .filter_map(|(name, value)| {
                let (key, indexed) = due.get(name)?;
                let record = AffinityRecord::from_json(value)?;
                (record.is_live(now) && *indexed != Some(record.expire_at)).then(|| (key.clone(), record))
            })
            .collect();
        if entries.is_empty() {
            return Ok(0);
        }
        self.index(&entries).await
    }

    /// Drops members scored before `now` from `index`, [`BATCH`] per
    /// command, so a big backlog never holds Redis in one long command.
    async fn prune_expired(&self, index: &str, now: f64) -> Result<(), StoreError> {
        loop {
            let pruned: i64 = self
                .prune_script
                .evalsha_with_reload(
                    self.redis.client()?,
                    vec![index.to_owned()],
                    vec![(now - 1.0).to_string(), BATCH.to_string()],
                )
                .await
                .map_err(|e| store_error(&e))?;
            if pruned < BATCH as i64 {
                return Ok(());
            }
        }
    }
}

fn parse_record(text: &str, what: &str) -> Result<AffinityRecord, StoreError> {
    AffinityRecord::from_json(text).ok_or_else(|| StoreError::Internal {
        store: StoreKind::Redis,
        detail: format!("unparsable {what} value"),
    })
}

/// The entries among `(key, stored value)` that parse and are live at `now`.
fn live_entries<'a>(values: impl Iterator<Item = (&'a AffinityKey, Option<&'a String>)>, now: f64) -> Vec<Affinity> {
    values
        .filter_map(|(key, value)| {
            let record = AffinityRecord::from_json(value?)?;
            record.is_live(now).then(|| Affinity {
                key: key.clone(),
                record,
            })
        })
        .collect()
}

/// Live members of one index (unordered), read by ZSCAN about [`BATCH`] at
/// a time: a big index (a provider's, at a million entries) never holds
/// Redis in one long command, and the whole read stays linear (paging by
/// rank with LIMIT offset re-walks the skipped ranks on every page).
async fn live_members(client: &Client, index: &str, now: f64) -> Result<Vec<String>, StoreError> {
    let mut members = Vec::new();
    // ZSCAN may return a member twice while the set is rehashed.
    let mut seen = std::collections::HashSet::new();
    let mut pages = std::pin::pin!(client.zscan(index, "*", Some(BATCH as u32)));
    while let Some(page) = pages.next().await {
        let mut page = page.map_err(|e| store_error(&e))?;
        for (member, score) in page.take_results().unwrap_or_default() {
            if score >= now
                && let Some(member) = member.into_string()
                && seen.insert(member.clone())
            {
                members.push(member);
            }
        }
        page.next();
    }
    Ok(members)
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

    async fn set(
        &self,
        key: &AffinityKey,
        write: &AffinityWrite,
        now: f64,
        allow_switch: bool,
    ) -> Result<SetResult, StoreError> {
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
            if allow_switch { "1" } else { "0" }.to_owned(),
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
            "refused" => {
                return Ok(SetResult {
                    record,
                    outcome: SetOutcome::Refused,
                    previous: None,
                });
            }
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
        // The entry is written; index upkeep that fails now is repaired by
        // the reconciler, so it does not fail the call.
        let mut upkeep = self.index(&[(key.clone(), record.clone())]).await.map(|_| ());
        if let (Ok(()), Some(previous)) = (&upkeep, &previous) {
            let new_indexes = self.index_keys_of(key, &record);
            let stale: Vec<String> = self
                .index_keys_of(key, previous)
                .into_iter()
                .filter(|k| !new_indexes.contains(k))
                .collect();
            upkeep = self.unindex(&key.member(), &stale).await;
        }
        if let Err(error) = upkeep {
            tracing::warn!(%error, "affinity written but not indexed yet; the reconciler will add it");
        }
        Ok(SetResult {
            record,
            outcome,
            previous,
        })
    }

    async fn count_switch(&self, key: &AffinityKey, window: Duration) -> Result<u64, StoreError> {
        let counter = self.redis.own_key(&format!("switches:{}", key.member()));
        let count: i64 = self
            .count_switch_script
            .evalsha_with_reload(
                self.redis.client()?,
                vec![counter],
                vec![window.as_millis().max(1).to_string()],
            )
            .await
            .map_err(|e| store_error(&e))?;
        Ok(count.max(0) as u64)
    }

    async fn referenced(&self, kind: TargetKind, now: f64) -> Result<Vec<String>, StoreError> {
        let registry = self.referenced_key(kind);
        let client = self.redis.client()?;
        let _: i64 = client
            .zremrangebyscore(&registry, f64::NEG_INFINITY, now - 1.0)
            .await
            .map_err(|e| store_error(&e))?;
        live_members(client, &registry, now).await
    }

    async fn invalidate(
        &self,
        key: &AffinityKey,
        guard: &InvalidationGuard,
    ) -> Result<Option<AffinityRecord>, StoreError> {
        let old = self.delete_guarded(key, guard).await?;
        // A corrupt value deleted by an unguarded invalidation has no record.
        let record = old.and_then(|text| AffinityRecord::from_json(&text));
        if let Some(record) = &record
            && let Err(error) = self.unindex(&key.member(), &self.index_keys_of(key, record)).await
        {
            tracing::warn!(%error, "affinity deleted; stale index members are dropped on read");
        }
        Ok(record)
    }

    async fn list_indexed(&self, indexes: &[IndexRef], now: f64) -> Result<Vec<Affinity>, StoreError> {
        let client = self.redis.client()?;
        let index_keys: Vec<String> = indexes.iter().map(|i| self.index_key(i)).collect();
        let (member_lists, values) = self.indexed_members(&index_keys, now).await?;
        let mut wanted: BTreeMap<AffinityKey, Vec<usize>> = BTreeMap::new();
        for (position, members) in member_lists.iter().enumerate() {
            for member in members {
                if let Some(key) = AffinityKey::from_member(member) {
                    wanted.entry(key).or_default().push(position);
                }
            }
        }
        let keys: Vec<AffinityKey> = wanted.keys().cloned().collect();
        let found = match values {
            Some(values) => live_entries(keys.iter().map(|key| (key, values.get(&key.member()))), now),
            None => self.read_entries(&keys, now).await?,
        };
        let found_by_key: HashMap<&AffinityKey, &Affinity> = found.iter().map(|a| (&a.key, a)).collect();
        let mut result = Vec::with_capacity(found.len());
        let mut stale: Vec<(String, String)> = Vec::new();
        for (key, positions) in &wanted {
            let affinity = found_by_key.get(key);
            let mut belongs = false;
            for &position in positions {
                match affinity {
                    Some(a) if indexes[position].contains(a) => belongs = true,
                    _ => stale.push((index_keys[position].clone(), key.member())),
                }
            }
            if let (true, Some(affinity)) = (belongs, affinity) {
                result.push((*affinity).clone());
            }
        }
        // Members whose entry is gone or moved: drop them (no ranks depend on
        // these indexes), and expired ones by score. The caller does not wait
        // for it: the answer above is already checked against the entries.
        let client = client.clone();
        tokio::spawn(async move {
            let prune = futures::future::try_join_all(
                stale
                    .iter()
                    .map(|(index, member)| client.zrem::<i64, _, _>(index, member.as_str())),
            );
            let expired = futures::future::try_join_all(
                index_keys
                    .iter()
                    .map(|index| client.zremrangebyscore::<i64, _, _, _>(index, f64::NEG_INFINITY, now - 1.0)),
            );
            if let Err(error) = futures::future::try_join(prune, expired).await {
                tracing::debug!(%error, "index pruning skipped");
            }
        });
        Ok(result)
    }

    async fn page(&self, offset: u64, limit: u64, now: f64) -> Result<Page, StoreError> {
        let client = self.redis.client()?;
        let all = self.all_index();
        let all = all.as_str();
        let ranks = |from: u64, want: u64| async move {
            client
                .zrevrange::<Vec<String>, _>(all, from as i64, (from + want - 1) as i64, false)
                .await
                .map_err(|e| store_error(&e))
        };
        // The count and the first ranks are read together: one round trip.
        let count = async {
            client
                .zcount::<i64, _>(all, now, f64::INFINITY)
                .await
                .map_err(|e| store_error(&e))
        };
        let (total, mut members) = futures::future::try_join(count, ranks(offset, limit.min(BATCH as u64))).await?;
        let total = total.max(0) as u64;
        let mut affinities = Vec::new();
        let mut rank = offset;
        // Members whose entry vanished (deleted by Aether) are skipped, so a
        // page may read a few more ranks than it returns. Expired members
        // rank last (lowest expiry) and are dropped when read.
        while !members.is_empty() && rank < total {
            rank += members.len() as u64;
            let keys: Vec<AffinityKey> = members.iter().filter_map(|m| AffinityKey::from_member(m)).collect();
            let mut found = self.read_entries(&keys, now).await?;
            found.sort_by(|a, b| b.record.expire_at.total_cmp(&a.record.expire_at));
            affinities.extend(found);
            if affinities.len() as u64 >= limit || rank >= total {
                break;
            }
            members = ranks(rank, (limit - affinities.len() as u64).min(BATCH as u64)).await?;
        }
        Ok(Page {
            affinities,
            next_offset: (rank < total).then_some(rank),
            total,
        })
    }

    async fn count_live(&self, now: f64) -> Result<u64, StoreError> {
        let count: i64 = self
            .redis
            .client()?
            .zcount(self.all_index(), now, f64::INFINITY)
            .await
            .map_err(|e| store_error(&e))?;
        Ok(count.max(0) as u64)
    }

    async fn delete_many(
        &self,
        keys: &[AffinityKey],
        guard: &InvalidationGuard,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        if guard.is_empty() {
            let names: Vec<String> = keys.iter().map(|k| self.redis.key(&k.redis_key())).collect();
            let command = if dry_run {
                KeyCountCommand::Exists
            } else {
                KeyCountCommand::Unlink
            };
            let count = self.redis.sum_over_batches(command, names).await?;
            if !dry_run {
                let client = self.redis.client()?;
                let mut by_index: HashMap<String, Vec<String>> = HashMap::new();
                for key in keys {
                    by_index.entry(self.all_index()).or_default().push(key.member());
                    by_index
                        .entry(self.index_key(&IndexRef::AffinityKey(key.affinity_key.clone())))
                        .or_default()
                        .push(key.member());
                }
                for (index, members) in by_index {
                    for chunk in members.chunks(BATCH) {
                        let _: i64 = client.zrem(&index, chunk.to_vec()).await.map_err(|e| store_error(&e))?;
                    }
                }
            }
            return Ok(count);
        }
        // Guarded: each entry is checked and deleted atomically, so an entry
        // that moved to another provider meanwhile is left alone.
        let now = crate::domain::affinity::now_epoch();
        let mut deleted = 0;
        // 64 scripts in flight at a time: pipelined, yet never a long block.
        for chunk in keys.chunks(64) {
            let results = futures::future::try_join_all(
                chunk
                    .iter()
                    .map(|key| self.delete_one_guarded(key, guard, dry_run, now)),
            )
            .await?;
            deleted += results.into_iter().filter(|went| *went).count() as u64;
        }
        Ok(deleted)
    }

    async fn clear_all(&self, dry_run: bool) -> Result<u64, StoreError> {
        let command = if dry_run {
            KeyCountCommand::Exists
        } else {
            KeyCountCommand::Unlink
        };
        let mut total = 0;
        let mut pages = self.redis.scan_pages(KEY_PREFIX)?;
        while let Some(keys) = pages.try_next().await? {
            total += self.redis.sum_over_batches(command, keys).await?;
        }
        if !dry_run {
            // Index sets go too (UNLINK frees big ones in the background).
            let mut pages = self.redis.scan_pages(&format!("{OWN_PREFIX}idx:"))?;
            while let Some(keys) = pages.try_next().await? {
                self.redis.sum_over_batches(KeyCountCommand::Unlink, keys).await?;
            }
        }
        Ok(total)
    }

    async fn reconcile(&self, now: f64) -> Result<u64, StoreError> {
        let claimed = Instant::now();
        if !self.claim_pass(RECONCILE_TASK, self.reconcile_interval).await? {
            return Ok(0);
        }
        let lease = lease_millis(self.reconcile_interval);
        // An entry indexed with an expiry inside this window is read again:
        // Aether may have refreshed (or switched) it since, and the next pass
        // comes about one interval after this one, too late to keep it
        // listed. Two intervals cover the interval plus the pass.
        let due_before = now + 2.0 * self.reconcile_interval.as_secs_f64();
        let mut added = 0;
        let mut renewed = Instant::now();
        let mut extended = false;
        let mut pages = self.redis.scan_pages(KEY_PREFIX)?;
        while let Some(names) = pages.try_next().await? {
            added += self.index_unindexed(&names, now, due_before).await?;
            // The lease spans most of one interval; a longer pass keeps it
            // only while it is still ours, and stops if another instance
            // took over.
            if renewed.elapsed() >= self.reconcile_interval / 3 {
                if !self.set_lease_end(RECONCILE_TASK, lease).await? {
                    tracing::warn!(added, "reconcile lease lost mid-pass; stopping this pass");
                    return Ok(added);
                }
                renewed = Instant::now();
                extended = true;
            }
        }
        self.prune_expired(&self.all_index(), now).await?;
        if extended {
            // A renewal ends the lease after this instance's next tick:
            // back to where the claim put it (or now, if that has passed),
            // so that tick is not skipped.
            let left = lease - claimed.elapsed().as_millis() as i64;
            self.set_lease_end(RECONCILE_TASK, left).await?;
        }
        Ok(added)
    }

    async fn claim_pass(&self, task: &str, period: Duration) -> Result<bool, StoreError> {
        let acquired: Option<String> = self
            .redis
            .client()?
            .set(
                self.lease_key(task),
                self.instance_id.as_str(),
                Some(Expiration::PX(lease_millis(period))),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(|e| store_error(&e))?;
        Ok(acquired.is_some())
    }
}

/// Counters in one Redis hash, `aether_control:stats`.
pub struct RedisCounterStore {
    redis: RedisConnection,
}

impl RedisCounterStore {
    /// Counters over an existing connection.
    pub fn new(redis: RedisConnection) -> Self {
        Self { redis }
    }
}

#[async_trait]
impl CounterStore for RedisCounterStore {
    async fn add(&self, deltas: &[(String, i64)]) -> Result<(), StoreError> {
        let client = self.redis.client()?;
        let key = self.redis.own_key("stats");
        futures::future::try_join_all(
            deltas
                .iter()
                .map(|(name, delta)| client.hincrby::<i64, _, _>(&key, name.as_str(), *delta)),
        )
        .await
        .map_err(|e| store_error(&e))?;
        Ok(())
    }

    async fn load(&self) -> Result<HashMap<String, i64>, StoreError> {
        self.redis
            .client()?
            .hgetall(self.redis.own_key("stats"))
            .await
            .map_err(|e| store_error(&e))
    }
}

/// Events over Redis pub/sub (`aether_control:events`), re-broadcast to this
/// instance's watchers by one subscriber connection.
pub struct RedisEventBus {
    redis: RedisConnection,
    channel: String,
    sender: broadcast::Sender<AffinityEvent>,
}

impl RedisEventBus {
    /// Starts the subscriber (it reconnects and resubscribes by itself).
    pub fn start(redis: RedisConnection) -> Result<Self, StoreError> {
        let channel = redis.own_key("events");
        let (sender, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let subscriber: SubscriberClient = redis.builder.build_subscriber_client().map_err(|e| store_error(&e))?;
        let forward = sender.clone();
        let subscribed_channel = channel.clone();
        tokio::spawn(async move {
            let mut messages = subscriber.message_rx();
            let _connection = subscriber.connect();
            let _resubscriber = subscriber.manage_subscriptions();
            if let Err(error) = subscriber.wait_for_connect().await {
                tracing::warn!(%error, "event subscriber could not connect yet; it keeps retrying");
            }
            if let Err(error) = subscriber.subscribe(subscribed_channel.as_str()).await {
                tracing::warn!(%error, "event subscription failed; it is retried on reconnect");
            }
            loop {
                match messages.recv().await {
                    Ok(message) => match message.value.as_str().and_then(|text| parse_events(&text)) {
                        Some(events) => {
                            for event in events {
                                let _ = forward.send(event);
                            }
                        }
                        None => tracing::warn!("ignoring an unparsable affinity event"),
                    },
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "event subscriber fell behind");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Ok(Self { redis, channel, sender })
    }
}

/// One message: a batch of events (a JSON array), or a single event as an
/// instance of an earlier version sends it.
fn parse_events(text: &str) -> Option<Vec<AffinityEvent>> {
    serde_json::from_str::<Vec<AffinityEvent>>(text)
        .or_else(|_| serde_json::from_str::<AffinityEvent>(text).map(|event| vec![event]))
        .ok()
}

#[async_trait]
impl EventBus for RedisEventBus {
    async fn publish(&self, events: &[AffinityEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let payload = serde_json::to_string(events).map_err(|e| StoreError::Internal {
            store: StoreKind::Redis,
            detail: e.to_string(),
        })?;
        let client = self.redis.client()?;
        // fred sends a cluster PUBLISH to a random node, and nodes forward
        // it over the cluster bus independently: two batches could arrive
        // out of order. Every batch goes to the node owning the channel's
        // slot instead, so events keep the order they were published in.
        let home = self
            .redis
            .clustered
            .then(|| client.cached_cluster_state())
            .flatten()
            .and_then(|routing| {
                routing
                    .get_server(ClusterRouting::hash_key(self.channel.as_bytes()))
                    .cloned()
            });
        let published: Result<i64, RedisError> = match home {
            Some(server) => {
                client
                    .with_cluster_node(server)
                    .publish(self.channel.as_str(), payload)
                    .await
            }
            None => client.publish(self.channel.as_str(), payload).await,
        };
        published.map_err(|e| store_error(&e))?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<AffinityEvent> {
        self.sender.subscribe()
    }
}

/// Adds `field, delta` pairs to one hash.
const ADD_USAGE_SCRIPT: &str = r#"
for i = 1, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"#;

/// Adds a report to one binding's hash, first wiping it when it belongs to
/// another pin (target or created_at differ); expires it with the binding;
/// returns the whole hash. ARGV: provider, endpoint, key, pinned-at,
/// outcome, now, expire-at (ms), then field / delta pairs.
const BINDING_USAGE_SCRIPT: &str = r#"
local t = redis.call('HMGET', KEYS[1], 'provider_id', 'endpoint_id', 'key_id', 'pinned_at')
if t[1] ~= ARGV[1] or t[2] ~= ARGV[2] or t[3] ~= ARGV[3] or t[4] ~= ARGV[4] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'provider_id', ARGV[1], 'endpoint_id', ARGV[2], 'key_id', ARGV[3], 'pinned_at', ARGV[4])
end
redis.call('HSET', KEYS[1], 'last_outcome', ARGV[5], 'last_at', ARGV[6])
for i = 8, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIREAT', KEYS[1], ARGV[7])
return redis.call('HGETALL', KEYS[1])
"#;

/// Upstream usage in Redis hashes under `aether_control:usage:`: `total`
/// (one field per counter), one per group (`provider`, `pkey`, `model`;
/// fields `{counter}:{id}`), and one per live binding
/// (`binding:{member}`, expiring with the binding).
pub struct RedisUsageStore {
    redis: RedisConnection,
    add_script: Script,
    binding_script: Script,
}

impl RedisUsageStore {
    /// Usage over an existing connection.
    pub fn new(redis: RedisConnection) -> Self {
        Self {
            redis,
            add_script: Script::from_lua(ADD_USAGE_SCRIPT),
            binding_script: Script::from_lua(BINDING_USAGE_SCRIPT),
        }
    }

    fn binding_key(&self, key: &AffinityKey) -> String {
        self.redis.own_key(&format!("usage:binding:{}", key.member()))
    }
}

/// A binding's hash as stored by [`BINDING_USAGE_SCRIPT`].
fn binding_usage(fields: &HashMap<String, String>) -> Option<BindingUsage> {
    let mut counters = UsageCounters::default();
    for (field, value) in fields {
        if let Ok(delta) = value.parse::<i64>() {
            counters.add(field, delta);
        }
    }
    Some(BindingUsage {
        target: AffinityTarget {
            provider_id: fields.get("provider_id")?.clone(),
            endpoint_id: fields.get("endpoint_id")?.clone(),
            key_id: fields.get("key_id")?.clone(),
        },
        pinned_at: fields.get("pinned_at")?.parse().ok()?,
        counters,
        last_outcome: UpstreamOutcome::parse(fields.get("last_outcome")?)?,
        last_reported_at: fields.get("last_at")?.parse().ok()?,
    })
}

#[async_trait]
impl UsageStore for RedisUsageStore {
    async fn record(
        &self,
        report: &UsageReport,
        binding: Option<&AffinityRecord>,
        now: f64,
    ) -> Result<Option<BindingUsage>, StoreError> {
        let client = self.redis.client()?;
        let deltas = report.deltas();
        let pairs = |prefix: &str| -> Vec<String> {
            deltas
                .iter()
                .flat_map(|(field, delta)| [format!("{field}{prefix}"), delta.to_string()])
                .collect()
        };
        let mut adds = vec![(self.redis.own_key("usage:total"), pairs(""))];
        for group in UsageGroup::ALL {
            let hash = self.redis.own_key(&format!("usage:{}", group.as_str()));
            adds.push((hash, pairs(&format!(":{}", group.id_of(report)))));
        }
        let totals = futures::future::try_join_all(adds.into_iter().map(|(hash, args)| {
            self.add_script
                .evalsha_with_reload::<i64, _, _>(client, vec![hash], args)
        }));
        let binding = async {
            let Some(binding) = binding else {
                return Ok(None);
            };
            let mut args = vec![
                binding.provider_id.clone(),
                binding.endpoint_id.clone(),
                binding.key_id.clone(),
                format_epoch(binding.created_at),
                report.outcome.as_str().to_owned(),
                format_epoch(now),
                format!("{}", (binding.expire_at * 1000.0).ceil() as i64),
            ];
            args.extend(pairs(""));
            let flat: Vec<String> = self
                .binding_script
                .evalsha_with_reload(client, vec![self.binding_key(&report.key)], args)
                .await?;
            let fields: HashMap<String, String> = flat
                .chunks_exact(2)
                .map(|pair| (pair[0].clone(), pair[1].clone()))
                .collect();
            Ok(binding_usage(&fields))
        };
        let (_, binding) = futures::future::try_join(totals, binding)
            .await
            .map_err(|e: RedisError| store_error(&e))?;
        Ok(binding)
    }

    async fn totals(&self) -> Result<UsageTotals, StoreError> {
        let client = self.redis.client()?;
        let read = |name: String| async move { client.hgetall::<HashMap<String, i64>, _>(name).await };
        let groups = futures::future::try_join_all(
            UsageGroup::ALL.map(|group| read(self.redis.own_key(&format!("usage:{}", group.as_str())))),
        );
        let (total, groups) = futures::future::try_join(read(self.redis.own_key("usage:total")), groups)
            .await
            .map_err(|e| store_error(&e))?;
        let mut totals = UsageTotals::default();
        for (field, value) in total {
            totals.total.add(&field, value);
        }
        for (group, fields) in UsageGroup::ALL.into_iter().zip(groups) {
            let by_id = totals.groups.entry(group).or_default();
            for (field, value) in fields {
                if let Some((counter, id)) = field.split_once(':') {
                    by_id.entry(id.to_owned()).or_default().add(counter, value);
                }
            }
        }
        Ok(totals)
    }

    async fn bindings(&self, affinities: &[Affinity]) -> Result<HashMap<AffinityKey, BindingUsage>, StoreError> {
        let client = self.redis.client()?;
        let mut found = HashMap::new();
        for chunk in affinities.chunks(BATCH) {
            let hashes = futures::future::try_join_all(
                chunk
                    .iter()
                    .map(|a| client.hgetall::<HashMap<String, String>, _>(self.binding_key(&a.key))),
            )
            .await
            .map_err(|e| store_error(&e))?;
            for (affinity, fields) in chunk.iter().zip(hashes) {
                if let Some(usage) = binding_usage(&fields).filter(|u| u.belongs_to(&affinity.record)) {
                    found.insert(affinity.key.clone(), usage);
                }
            }
        }
        Ok(found)
    }
}

/// Aether's caches (users, model mappings) in Redis, keys as Aether names them.
pub struct RedisCache {
    redis: RedisConnection,
}

impl RedisCache {
    /// A cache over an existing connection.
    pub fn new(redis: RedisConnection) -> Self {
        Self { redis }
    }
}

#[async_trait]
impl CacheStore for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.redis
            .client()?
            .get(self.redis.key(key))
            .await
            .map_err(|e| store_error(&e))
    }

    async fn set_ex(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        let seconds = ttl.as_secs().max(1) as i64;
        self.redis
            .client()?
            .set::<(), _, _>(self.redis.key(key), value, Some(Expiration::EX(seconds)), None, false)
            .await
            .map_err(|e| store_error(&e))
    }

    async fn delete(&self, keys: &[String], dry_run: bool) -> Result<u64, StoreError> {
        let names = keys.iter().map(|k| self.redis.key(k)).collect();
        let command = if dry_run {
            KeyCountCommand::Exists
        } else {
            KeyCountCommand::Unlink
        };
        self.redis.sum_over_batches(command, names).await
    }

    async fn incr_with_ttl(&self, key: &str, ttl: Duration) -> Result<i64, StoreError> {
        let client = self.redis.client()?;
        let name = self.redis.key(key);
        let value: i64 = client.incr(&name).await.map_err(|e| store_error(&e))?;
        let _: i64 = client
            .expire(&name, ttl.as_secs().max(1) as i64, None)
            .await
            .map_err(|e| store_error(&e))?;
        Ok(value)
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let seconds: i64 = self
            .redis
            .client()?
            .ttl(self.redis.key(key))
            .await
            .map_err(|e| store_error(&e))?;
        Ok((seconds > 0).then(|| Duration::from_secs(seconds as u64)))
    }

    async fn keys_with_prefix(&self, prefix: &str, max: usize) -> Result<Vec<String>, StoreError> {
        let strip = self.redis.key("").len();
        let mut keys = Vec::new();
        let mut pages = self.redis.scan_pages(prefix)?;
        while keys.len() < max {
            let Some(page) = pages.try_next().await? else { break };
            keys.extend(page.into_iter().filter_map(|k| k.get(strip..).map(str::to_owned)));
        }
        keys.truncate(max);
        Ok(keys)
    }

    async fn delete_prefix(&self, prefix: &str, dry_run: bool) -> Result<u64, StoreError> {
        let mut total = 0;
        let mut pages = self.redis.scan_pages(prefix)?;
        while let Some(keys) = pages.try_next().await? {
            total += if dry_run {
                keys.len() as u64
            } else {
                self.redis.sum_over_batches(KeyCountCommand::Unlink, keys).await?
            };
        }
        Ok(total)
    }
}
