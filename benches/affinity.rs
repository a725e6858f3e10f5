//! Affinity benchmark: loads N Aether-format affinities into a real Redis,
//! indexes them with the reconciler, and times the engine's calls at each N
//! (method and results: docs/BENCHMARKS.md).
//!
//! ```text
//! cargo bench --bench affinity                      # 1000,10000,100000,1000000
//! cargo bench --bench affinity -- 1000,10000        # chosen sizes
//! AETHER_CONTROL_BENCH_REDIS_URL=redis://127.0.0.1:6379/15 cargo bench --bench affinity
//! ```
//!
//! Sizes come from the first argument that is not a flag, else
//! `AETHER_CONTROL_BENCH_SIZES`, else the default. The Redis URL defaults to
//! `redis://127.0.0.1:6379/0`; on a shared Redis pick an unused database, so
//! other users' SCANs do not walk the million keys (and theirs not ours).
//! Every key lives under `actl_bench_<pid>_<N>:` and is deleted at the end
//! (SCAN + UNLINK), also on error or Ctrl-C. For the run, the server-wide
//! `slowlog-log-slower-than` and `latency-monitor-threshold` are set to
//! 10 ms and then put back. Progress goes to stderr, the Markdown report to
//! stdout.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Range;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether_control::config::DEFAULT_NAME_CACHE_TTL_SECONDS;
use aether_control::db::DbConnection;
use aether_control::db::directory::SeaOrmDirectory;
use aether_control::domain::affinity::engine::{AffinityEngine, AffinitySettings, AffinityStores, WritePolicy};
use aether_control::domain::affinity::listing::{self, EnrichmentRows};
use aether_control::domain::affinity::usage::{UpstreamOutcome, UsageReport};
use aether_control::domain::affinity::{IndexRef, SetOutcome, now_epoch};
use aether_control::domain::crypto::KeyCipher;
use aether_control::domain::directory::Directory;
use aether_control::store::redis::{
    RedisAffinityStore, RedisConnection, RedisCounterStore, RedisEventBus, RedisUsageStore,
};
use aether_control::store::{AffinityStore, UsageStore};
use fred::cmd;
use fred::prelude::*;
use fred::types::scan::Scanner;
use futures::StreamExt;
use sea_orm::ConnectionTrait;

#[allow(dead_code)]
#[path = "../tests/common/rows.rs"]
mod rows;
#[path = "support/world.rs"]
mod world;

use world::{
    BenchResult, FORMATS, KEYS_PER_ENDPOINT, KEYS_PER_USER, MODELS, PER_KEY, PROVIDERS, Rng, World, load_redis,
    seed_database, splitmix,
};

const DEFAULT_SIZES: &[usize] = &[1_000, 10_000, 100_000, 1_000_000];
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";

const PER_USER: usize = PER_KEY * KEYS_PER_USER;

/// The server's defaults (src/config.rs).
const POOL_SIZE: usize = 4;
const STORE_TIMEOUT: Duration = Duration::from_millis(1000);
const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// Writes in the benchmark use the upper bound of the loaded entries' TTLs.
const WRITE_TTL: Duration = Duration::from_secs(7200);

/// A Redis command at or above this is a stall (SLOWLOG, microseconds; LATENCY, milliseconds).
const STALL_MICROS: u64 = 10_000;
const STALL_MILLIS: u64 = 10;

/// Fewest samples a time budget may cut a measurement to.
const MIN_SAMPLES: usize = 3;

/// What the issue compares against: Aether's measured times at 100k entries.
const AETHER_USER_LOOKUP_SECONDS: f64 = 1.96;
const AETHER_PAGE_SECONDS: f64 = 5.8;
const AETHER_SIZE: usize = 100_000;

/// What this benchmark asks of the shared world beyond loading it.
impl World {
    fn provider_of(j: usize) -> usize {
        (splitmix(j as u64 ^ 0xAFF1_0000) % PROVIDERS as u64) as usize
    }

    fn user_entries(&self, user: usize) -> Range<usize> {
        (user * PER_USER).min(self.n)..((user + 1) * PER_USER).min(self.n)
    }

    /// The per-key indexes of `user`'s API keys.
    fn user_key_indexes(&self, user: usize) -> Vec<IndexRef> {
        self.user_key_ids(user).into_iter().map(IndexRef::AffinityKey).collect()
    }

    fn user_key_ids(&self, user: usize) -> Vec<String> {
        self.api_keys
            .iter()
            .skip(user * KEYS_PER_USER)
            .take(KEYS_PER_USER)
            .cloned()
            .collect()
    }

    fn provider_entries(&self, provider: usize) -> u64 {
        (0..self.n).filter(|&j| Self::provider_of(j) == provider).count() as u64
    }
}

/// One numeric field of `INFO {section}`.
async fn info_number(client: &Client, section: &str, field: &str) -> BenchResult<u64> {
    let info: String = client.custom(cmd!("INFO"), vec![section]).await?;
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| format!("INFO {section}: no {field}").into())
}

/// Redis's process id when it runs on this host (its `process_id` names a
/// `redis-server` here), for [`HostSample`]; else None.
async fn local_redis_pid(client: &Client) -> Option<u32> {
    let pid = u32::try_from(info_number(client, "server", "process_id").await.ok()?).ok()?;
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    name.starts_with("redis").then_some(pid)
}

/// Redis's `used_memory` (INFO memory), in bytes.
async fn used_memory(client: &Client) -> BenchResult<u64> {
    info_number(client, "memory", "used_memory").await
}

/// How much `used_memory` grew, in all and per entry (the whole server's:
/// other clients' writes meanwhile would count too).
fn memory_growth(before: u64, after: u64, entries: usize) -> String {
    let grown = after.saturating_sub(before);
    format!(
        "Redis used_memory +{:.1} MB, {:.0} B per entry",
        grown as f64 / 1e6,
        grown as f64 / entries.max(1) as f64
    )
}

/// Deletes every key matching `pattern`, a SCAN page at a time (never KEYS).
async fn unlink_matching(client: &Client, pattern: &str) -> BenchResult<u64> {
    let mut deleted = 0;
    let mut pages = client.scan(pattern.to_owned(), Some(1000), None);
    while let Some(page) = pages.next().await {
        let mut page = page?;
        if let Some(keys) = page.take_results()
            && !keys.is_empty()
        {
            let count: i64 = client.unlink(keys).await?;
            deleted += count.max(0) as u64;
        }
        page.next();
    }
    Ok(deleted)
}

/// p50 and p99 (nearest rank) of one measured call, in microseconds.
#[derive(Clone, Debug)]
struct Stat {
    samples: usize,
    p50: f64,
    p99: f64,
}

impl Stat {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let rank = |p: f64| {
            let index = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[index].as_secs_f64() * 1e6
        };
        Self {
            samples: samples.len(),
            p50: rank(0.50),
            p99: rank(0.99),
        }
    }

    fn once(elapsed: Duration) -> Self {
        Self::of(vec![elapsed])
    }
}

/// Runs `call` `warmup` times untimed, then up to `iterations` times (at
/// least [`MIN_SAMPLES`], then until `budget` is spent). `call` returns the
/// time of the part it measures.
async fn measure<F, Fut>(
    label: &str,
    warmup: usize,
    iterations: usize,
    budget: Duration,
    mut call: F,
) -> BenchResult<Stat>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = BenchResult<Duration>>,
{
    for _ in 0..warmup {
        call().await?;
    }
    let started = Instant::now();
    let mut samples = Vec::with_capacity(iterations);
    while samples.len() < iterations && (samples.len() < MIN_SAMPLES || started.elapsed() < budget) {
        samples.push(call().await?);
    }
    let stat = Stat::of(samples);
    eprintln!(
        "  {label}: p50 {:.0} us, p99 {:.0} us ({} samples)",
        stat.p50, stat.p99, stat.samples
    );
    Ok(stat)
}

fn ensure(condition: bool, what: impl FnOnce() -> String) -> BenchResult<()> {
    if condition { Ok(()) } else { Err(what().into()) }
}

/// Slow commands and latency events Redis recorded in one phase, and what
/// Redis spent its time on (INFO commandstats, before/after).
#[derive(Clone, Debug, Default)]
struct Stalls {
    ours: usize,
    others: usize,
    /// Our slow commands by name: count, slowest (µs), most arguments seen.
    slow_commands: BTreeMap<String, (usize, u64, usize)>,
    latency: Vec<(String, i64, i64)>,
    /// Commands by total time in the phase: name, calls, µs.
    busiest: Vec<(String, u64, u64)>,
    /// What the kernel saw in the phase, when Redis runs on this host.
    host: Option<HostSample>,
}

impl Stalls {
    fn slow_text(&self) -> String {
        if self.slow_commands.is_empty() {
            return "none".to_owned();
        }
        let mut commands: Vec<_> = self.slow_commands.iter().collect();
        commands.sort_by_key(|(_, (_, slowest, _))| std::cmp::Reverse(*slowest));
        commands
            .iter()
            .map(|(name, (count, slowest, args))| {
                format!("{name} ×{count}, max {:.1} ms ({args} args)", *slowest as f64 / 1e3)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn latency_text(&self) -> String {
        if self.latency.is_empty() {
            return "none".to_owned();
        }
        self.latency
            .iter()
            .map(|(event, latest, max)| format!("{event}: latest {latest} ms, max {max} ms"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn host_text(&self) -> String {
        let Some(host) = self.host else {
            return "not read (Redis not on this host, or /proc unreadable)".to_owned();
        };
        let s = |nanos: u64| format!("{:.2} s", nanos as f64 / 1e9);
        format!(
            "main thread {} on CPU, {} waiting for one, preempted {}×; other Redis threads {}; bench {}; steal {}",
            s(host.main_on_cpu_ns),
            s(host.main_wait_ns),
            host.main_preempted,
            s(host.others_on_cpu_ns),
            s(host.bench_cpu_ns),
            s(host.steal_ns)
        )
    }

    fn busiest_text(&self) -> String {
        self.busiest
            .iter()
            .take(4)
            .map(|(name, calls, micros)| format!("{name} {calls}×{:.0} µs", *micros as f64 / (*calls).max(1) as f64))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Kernel counters that tell a command's own cost from the machine's: how
/// long Redis's main thread ran and waited for a CPU, how often it was
/// preempted, what Redis's other threads (lazy free, jemalloc) and this
/// bench ran, and the hypervisor's steal. Read from /proc, so only where
/// Redis runs on this host; a phase reports the difference of two samples.
#[derive(Clone, Copy, Debug, Default)]
struct HostSample {
    main_on_cpu_ns: u64,
    main_wait_ns: u64,
    main_preempted: u64,
    others_on_cpu_ns: u64,
    bench_cpu_ns: u64,
    steal_ns: u64,
}

/// /proc/stat and /proc/<pid>/stat count in USER_HZ ticks, 100 per second on Linux.
const NANOS_PER_TICK: u64 = 10_000_000;

impl HostSample {
    fn read(redis_pid: u32) -> Option<Self> {
        let read = |path: String| std::fs::read_to_string(path).ok();
        // schedstat: on-CPU ns, run-queue wait ns, timeslices.
        let schedstat = |tid: &str| -> Option<(u64, u64)> {
            let text = read(format!("/proc/{redis_pid}/task/{tid}/schedstat"))?;
            let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
            Some((fields.next()??, fields.next()??))
        };
        let main = redis_pid.to_string();
        let (main_on_cpu_ns, main_wait_ns) = schedstat(&main)?;
        let main_preempted = read(format!("/proc/{redis_pid}/task/{main}/status"))?
            .lines()
            .find_map(|line| line.strip_prefix("nonvoluntary_ctxt_switches:"))?
            .trim()
            .parse()
            .ok()?;
        let mut others_on_cpu_ns = 0;
        for task in std::fs::read_dir(format!("/proc/{redis_pid}/task")).ok()?.flatten() {
            let tid = task.file_name().to_string_lossy().into_owned();
            if tid != main {
                others_on_cpu_ns += schedstat(&tid).map_or(0, |(on_cpu, _)| on_cpu);
            }
        }
        // utime and stime, fields 14 and 15, counted after the `)` that ends the name.
        let own = read("/proc/self/stat".to_owned())?;
        let mut after_name = own.rsplit_once(')')?.1.split_whitespace().skip(11);
        let bench_ticks = after_name.next()?.parse::<u64>().ok()? + after_name.next()?.parse::<u64>().ok()?;
        // The first line: cpu user nice system idle iowait irq softirq steal ...
        let steal_ticks = read("/proc/stat".to_owned())?
            .lines()
            .next()?
            .split_whitespace()
            .nth(8)?
            .parse::<u64>()
            .ok()?;
        Some(Self {
            main_on_cpu_ns,
            main_wait_ns,
            main_preempted,
            others_on_cpu_ns,
            bench_cpu_ns: bench_ticks * NANOS_PER_TICK,
            steal_ns: steal_ticks * NANOS_PER_TICK,
        })
    }

    fn since(self, start: Self) -> Self {
        Self {
            main_on_cpu_ns: self.main_on_cpu_ns.saturating_sub(start.main_on_cpu_ns),
            main_wait_ns: self.main_wait_ns.saturating_sub(start.main_wait_ns),
            main_preempted: self.main_preempted.saturating_sub(start.main_preempted),
            // A thread that exited in the phase takes its time with it.
            others_on_cpu_ns: self.others_on_cpu_ns.saturating_sub(start.others_on_cpu_ns),
            bench_cpu_ns: self.bench_cpu_ns.saturating_sub(start.bench_cpu_ns),
            steal_ns: self.steal_ns.saturating_sub(start.steal_ns),
        }
    }
}

/// `INFO commandstats` as command -> (calls, µs).
fn parse_commandstats(info: &str) -> BTreeMap<String, (u64, u64)> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
            };
            // Subcommands come as `client|id`; a `|` would split a Markdown cell.
            Some((name.to_uppercase().replace('|', " "), (field("calls")?, field("usec")?)))
        })
        .collect()
}

/// SLOWLOG and LATENCY on a plain client; the thresholds it changes are put
/// back by [`RedisWatch::restore`].
struct RedisWatch {
    client: Client,
    /// Keys of this run start with this; other slow commands are someone else's.
    prefix: String,
    saved: Mutex<Vec<(String, String)>>,
    commandstats: Mutex<BTreeMap<String, (u64, u64)>>,
    /// Redis's process id, when that process is on this host.
    redis_pid: Option<u32>,
    host_start: Mutex<Option<HostSample>>,
}

impl RedisWatch {
    async fn config_get(&self, name: &str) -> BenchResult<String> {
        let reply: Vec<String> = self.client.custom(cmd!("CONFIG"), vec!["GET", name]).await?;
        reply
            .get(1)
            .cloned()
            .ok_or_else(|| format!("CONFIG GET {name}: no value").into())
    }

    async fn config_set(&self, name: &str, value: &str) -> BenchResult<()> {
        let _: Value = self.client.custom(cmd!("CONFIG"), vec!["SET", name, value]).await?;
        Ok(())
    }

    /// Remembers the thresholds, then logs commands of 10 ms or more.
    async fn configure(&self) -> BenchResult<()> {
        for (name, value) in [
            ("slowlog-log-slower-than", STALL_MICROS.to_string()),
            ("latency-monitor-threshold", STALL_MILLIS.to_string()),
        ] {
            let previous = self.config_get(name).await?;
            self.saved
                .lock()
                .map_err(|_| "poisoned")?
                .push((name.to_owned(), previous));
            self.config_set(name, &value).await?;
        }
        Ok(())
    }

    async fn restore(&self) -> BenchResult<()> {
        let saved = std::mem::take(&mut *self.saved.lock().map_err(|_| "poisoned")?);
        for (name, value) in saved {
            self.config_set(&name, &value).await?;
            eprintln!("restored {name} = {value}");
        }
        Ok(())
    }

    async fn commandstats(&self) -> BenchResult<BTreeMap<String, (u64, u64)>> {
        let info: String = self.client.custom(cmd!("INFO"), vec!["commandstats"]).await?;
        Ok(parse_commandstats(&info))
    }

    /// Starts a phase: empties SLOWLOG and LATENCY, notes the command counters
    /// (read, never reset: they are the server's).
    async fn reset(&self) -> BenchResult<()> {
        let _: Value = self.client.custom(cmd!("SLOWLOG"), vec!["RESET"]).await?;
        let _: Value = self.client.custom(cmd!("LATENCY"), vec!["RESET"]).await?;
        let stats = self.commandstats().await?;
        *self.commandstats.lock().map_err(|_| "poisoned")? = stats;
        *self.host_start.lock().map_err(|_| "poisoned")? = self.redis_pid.and_then(HostSample::read);
        Ok(())
    }

    /// What was recorded since the last reset.
    async fn report(&self) -> BenchResult<Stalls> {
        // Before this report's own commands, which are not the phase's.
        let host_end = self.redis_pid.and_then(HostSample::read);
        let mut stalls = Stalls::default();
        let entries: Value = self.client.custom(cmd!("SLOWLOG"), vec!["GET", "-1"]).await?;
        for entry in entries.into_array() {
            let fields = entry.into_array();
            let micros = fields.get(2).and_then(Value::as_i64).unwrap_or(0).max(0) as u64;
            let args: Vec<String> = fields
                .get(3)
                .cloned()
                .map(Value::into_array)
                .unwrap_or_default()
                .iter()
                .filter_map(Value::as_string)
                .collect();
            if !args.iter().any(|arg| arg.contains(&self.prefix)) {
                stalls.others += 1;
                continue;
            }
            stalls.ours += 1;
            // Redis keeps 32 arguments and says how many more there were.
            let more = args
                .last()
                .and_then(|last| {
                    last.strip_prefix("... (")?
                        .strip_suffix(" more arguments)")?
                        .parse::<usize>()
                        .ok()
                })
                .map_or(0, |more| more - 1);
            let name = args.first().map_or_else(|| "?".to_owned(), |a| a.to_uppercase());
            let slot = stalls.slow_commands.entry(name).or_default();
            slot.0 += 1;
            slot.1 = slot.1.max(micros);
            slot.2 = slot.2.max(args.len() + more);
        }
        let latest: Value = self.client.custom(cmd!("LATENCY"), vec!["LATEST"]).await?;
        for event in latest.into_array() {
            let fields = event.into_array();
            let name = fields.first().and_then(Value::as_string).unwrap_or_default();
            let at = |i: usize| fields.get(i).and_then(Value::as_i64).unwrap_or(0);
            stalls.latency.push((name, at(2), at(3)));
        }
        let before = self.commandstats.lock().map_err(|_| "poisoned")?.clone();
        let after = self.commandstats().await?;
        stalls.busiest = after
            .into_iter()
            .filter_map(|(name, (calls, micros))| {
                let (calls_before, micros_before) = before.get(&name).copied().unwrap_or_default();
                let calls = calls.saturating_sub(calls_before);
                // Our own bookkeeping commands are not the phase's work.
                (calls > 0 && !name.starts_with("SLOWLOG") && !name.starts_with("LATENCY") && name != "INFO")
                    .then(|| (name, calls, micros.saturating_sub(micros_before)))
            })
            .collect();
        stalls.busiest.sort_by_key(|(_, _, micros)| std::cmp::Reverse(*micros));
        let start = *self.host_start.lock().map_err(|_| "poisoned")?;
        stalls.host = start.zip(host_end).map(|(start, end)| end.since(start));
        Ok(stalls)
    }
}

/// Everything measured at one size.
struct SizeReport {
    n: usize,
    users: usize,
    api_keys: usize,
    provider_entries: u64,
    setup: Vec<(&'static str, Duration, String)>,
    load_average: (String, String),
    calls: Vec<(&'static str, Stat)>,
    stalls: Vec<(&'static str, Stalls)>,
}

impl SizeReport {
    fn stat(&self, call: &str) -> Option<&Stat> {
        self.calls.iter().find(|(name, _)| *name == call).map(|(_, stat)| stat)
    }
}

// Names of the measured calls, shared by the per-size and summary tables.
const PING: &str = "Redis PING (round-trip floor)";
const GET: &str = "GetAffinity (hit)";
const SET: &str = "SetAffinity (refresh)";
const RECORD_USAGE: &str = "RecordUpstreamUsage (success, binding matched)";
const LIST_USER: &str = "ListUserAffinities (by username)";
const PAGE_FIRST: &str = "ListAffinities, first page of 100";
const PAGE_DEEP: &str = "ListAffinities, page of 100 at offset N/2";
const PAGE_STORE: &str = "  part: store page of 100 at offset N/2 (Redis)";
const PAGE_ENRICH: &str = "  part: enrich a page of 100 (SQLite, 5 queries side by side + decrypt/mask)";
const LIST_KEYWORD: &str = "ListAffinities, keyword = username";
const CLEAR_USER_DRY: &str = "ClearUserAffinities dry_run";
const CLEAR_USER: &str = "ClearUserAffinities (real, 40 entries)";
const DIR_KEYS_OF_USER: &str = "  part: directory api_keys_of_user (SQLite)";
const STORE_USER_INDEXES: &str = "  part: store list_indexed, 2 key indexes (Redis)";
const RESOLVE_USER: &str = "  part: resolve_user with the user's keys (SQLite, 2 queries side by side)";
const ENRICH_USER: &str = "  part: enrich 40 entries, keys known (SQLite, 4 queries side by side + decrypt/mask)";
const USAGE_USER: &str = "  part: usage of 40 bindings (Redis, one HGETALL each, pipelined)";
const LIST_USER_INDEXED: &str = "ListUserAffinities, api_keys.user_id surely indexed";
const DIR_KEYS_OF_USER_INDEXED: &str = "  part: api_keys_of_user, api_keys.user_id surely indexed";
const CLEAR_PROVIDER_DRY: &str = "ClearProviderAffinities dry_run (N/10 entries)";
const CLEAR_ALL: &str = "ClearAllAffinities (confirm), end to end";
const PROBE_AFTER_CLEAR: &str = "  probe: EXISTS for 3 s after clear-all (Redis round trip)";

/// Calls expected to be flat in N (per-user and per-entry / per-page work).
const FLAT_CALLS: &[&str] = &[
    GET,
    SET,
    RECORD_USAGE,
    LIST_USER,
    PAGE_FIRST,
    PAGE_DEEP,
    PAGE_STORE,
    PAGE_ENRICH,
    LIST_KEYWORD,
    CLEAR_USER_DRY,
    CLEAR_USER,
    DIR_KEYS_OF_USER,
    STORE_USER_INDEXES,
    RESOLVE_USER,
    ENRICH_USER,
    USAGE_USER,
    LIST_USER_INDEXED,
    DIR_KEYS_OF_USER_INDEXED,
];

async fn phase<T>(
    watch: &RedisWatch,
    stalls: &mut Vec<(&'static str, Stalls)>,
    name: &'static str,
    work: impl Future<Output = BenchResult<T>>,
) -> BenchResult<T> {
    watch.reset().await?;
    let value = work.await?;
    stalls.push((name, watch.report().await?));
    Ok(value)
}

/// Seeds, loads and measures one size; deletes its keys whatever happens.
async fn run_size(
    n: usize,
    url: &str,
    admin: &Client,
    watch: &RedisWatch,
    run_prefix: &str,
) -> BenchResult<SizeReport> {
    let namespace = format!("{run_prefix}{n}:");
    let result = measure_size(n, url, admin, watch, &namespace).await;
    let deleted = unlink_matching(admin, &format!("{namespace}*")).await;
    match (&result, deleted) {
        (_, Ok(count)) => eprintln!("deleted {count} leftover keys under {namespace}"),
        (Ok(_), Err(error)) => return Err(format!("cleanup of {namespace}: {error}").into()),
        (Err(_), Err(error)) => eprintln!("cleanup of {namespace} failed too: {error}"),
    }
    result
}

async fn measure_size(
    n: usize,
    url: &str,
    admin: &Client,
    watch: &RedisWatch,
    namespace: &str,
) -> BenchResult<SizeReport> {
    eprintln!("== N = {n} (namespace {namespace})");
    let load_before = load_average();
    let world = World::new(n);
    let mut setup = Vec::new();
    let mut stalls = Vec::new();
    let mut calls = Vec::new();

    // The server's wiring (src/server.rs), in process, with its defaults.
    let dir = tempfile::tempdir()?;
    let db_url = format!("sqlite://{}?mode=rwc", dir.path().join("aether.db").display());
    let database = DbConnection::open(&db_url, STORE_TIMEOUT, true).await?;
    let cipher = Arc::new(KeyCipher::from_secret(None, false)?);
    let started = Instant::now();
    seed_database(database.connection(), &world, &cipher).await?;
    setup.push((
        "seed SQLite (bulk insert)",
        started.elapsed(),
        format!("{} users, {} API keys", world.users.len(), world.api_keys.len()),
    ));
    // As the service builds it, with its default name cache.
    let directory = Arc::new(
        SeaOrmDirectory::new(database.connection().clone())
            .caching_names(Duration::from_secs(DEFAULT_NAME_CACHE_TTL_SECONDS)),
    );
    let redis = RedisConnection::connect(url, POOL_SIZE, STORE_TIMEOUT, namespace)?;
    ensure(redis.wait_connected(Duration::from_secs(5)).await, || {
        format!("redis at {url} not reachable")
    })?;
    let instance_id = format!("bench-{}", std::process::id());
    let usage = Arc::new(RedisUsageStore::new(redis.clone()));
    let store = Arc::new(RedisAffinityStore::new(redis.clone(), &instance_id, RECONCILE_INTERVAL));
    let engine = AffinityEngine::new(
        AffinityStores {
            affinities: store.clone(),
            counters: Arc::new(RedisCounterStore::new(redis.clone())),
            events: Arc::new(RedisEventBus::start(redis.clone())?),
            directory: directory.clone(),
            cipher: cipher.clone(),
            usage: usage.clone(),
        },
        AffinitySettings {
            default_ttl: DEFAULT_TTL,
            reconcile_interval: RECONCILE_INTERVAL,
            instance_id,
            write_only_on_success: true,
            max_switches_per_minute: 0,
            target_watch_interval: RECONCILE_INTERVAL,
            memory_max_affinities: 0,
        },
    );

    let memory_before = used_memory(admin).await?;
    let started = Instant::now();
    phase(
        watch,
        &mut stalls,
        "load (pipelined SET EX)",
        load_redis(admin, &redis, &world),
    )
    .await?;
    let elapsed = started.elapsed();
    let memory_loaded = used_memory(admin).await?;
    setup.push((
        "load Redis as Aether (pipelined SET EX)",
        elapsed,
        format!(
            "{:.0} entries/s; {}",
            n as f64 / elapsed.as_secs_f64(),
            memory_growth(memory_before, memory_loaded, n)
        ),
    ));

    let started = Instant::now();
    let added = phase(watch, &mut stalls, "reconcile, first pass", async {
        Ok(engine.reconcile().await?)
    })
    .await?;
    let elapsed = started.elapsed();
    ensure(added == n as u64, || format!("reconcile indexed {added} of {n}"))?;
    // The lease would make the next pass a no-op for 9 s; a steady-state
    // pass (nothing new) is what the reconciler costs every interval. A
    // lease already gone means the pass outlived it (another instance could
    // have started a second pass meanwhile).
    let lease: i64 = admin.del(redis.own_key("reconcile:lease")).await?;
    let lease_note = if lease == 1 { "" } else { "; outlived its 9 s lease" };
    let memory_indexed = used_memory(admin).await?;
    setup.push((
        "reconcile, first pass (indexes all N)",
        elapsed,
        format!(
            "{added} indexed, {:.0} entries/s{lease_note}; our indexes: {}",
            n as f64 / elapsed.as_secs_f64(),
            memory_growth(memory_loaded, memory_indexed, n)
        ),
    ));
    let started = Instant::now();
    let added = phase(watch, &mut stalls, "reconcile, steady pass", async {
        Ok(engine.reconcile().await?)
    })
    .await?;
    let elapsed = started.elapsed();
    let lease: i64 = admin.exists(redis.own_key("reconcile:lease")).await?;
    let lease_note = if lease == 1 { "" } else { "; outlived its 9 s lease" };
    setup.push((
        "reconcile, steady pass (nothing new)",
        elapsed,
        format!(
            "{added} indexed, {:.0} entries/s{lease_note}",
            n as f64 / elapsed.as_secs_f64()
        ),
    ));
    let stats = engine.stats().await?;
    ensure(stats.active_affinities == n as u64, || {
        format!("stats report {} active, expected {n}", stats.active_affinities)
    })?;
    eprintln!(
        "  loaded and indexed {n} ({} users, {} keys)",
        world.users.len(),
        world.api_keys.len()
    );

    let mut rng = Rng(0xBE4C_0000 ^ n as u64);
    let user_count = world.users.len();
    let (engine, world, store, directory) = (&engine, &world, &store, &directory);
    watch.reset().await?;

    let stat = measure(PING, 100, 2000, Duration::from_secs(5), || async {
        let started = Instant::now();
        let _: String = admin.ping(None).await?;
        Ok(started.elapsed())
    })
    .await?;
    calls.push((PING, stat));

    let stat = measure(GET, 200, 2000, Duration::from_secs(10), || {
        let j = rng.below(n);
        async move {
            let key = world.key(j);
            let started = Instant::now();
            let found = engine.get(&key).await?;
            let elapsed = started.elapsed();
            ensure(found.record.target() == world.target(j), || {
                format!("entry {j} has another target")
            })?;
            Ok(elapsed)
        }
    })
    .await?;
    calls.push((GET, stat));

    let stat = measure(SET, 200, 2000, Duration::from_secs(10), || {
        let j = rng.below(n);
        async move {
            let key = world.key(j);
            let target = world.target(j);
            let started = Instant::now();
            let written = engine
                .set(&key, target, "", Some(WRITE_TTL), None, WritePolicy::default())
                .await?;
            let elapsed = started.elapsed();
            ensure(written.outcome == SetOutcome::Refreshed, || {
                format!("entry {j}: {:?}, expected a refresh", written.outcome)
            })?;
            Ok(elapsed)
        }
    })
    .await?;
    calls.push((SET, stat));

    let stat = measure(RECORD_USAGE, 200, 2000, Duration::from_secs(10), || {
        let j = rng.below(n);
        async move {
            let report = UsageReport {
                key: world.key(j),
                target: world.target(j),
                outcome: UpstreamOutcome::Success,
                input_tokens: 2000,
                cache_read_tokens: 1800,
                cache_creation_tokens: 100,
            };
            let started = Instant::now();
            let decided = engine.record_usage(report).await?;
            let elapsed = started.elapsed();
            ensure(decided.binding.is_some(), || format!("entry {j}: binding not matched"))?;
            Ok(elapsed)
        }
    })
    .await?;
    calls.push((RECORD_USAGE, stat));

    let stat = measure(LIST_USER, 30, 300, Duration::from_secs(20), || {
        let u = rng.below(user_count);
        async move {
            let started = Instant::now();
            let found = engine.list_user(&world.users[u].1).await?;
            let elapsed = started.elapsed();
            let expected = world.user_entries(u).len();
            ensure(found.details.len() == expected, || {
                format!("user {u}: {} affinities, expected {expected}", found.details.len())
            })?;
            Ok(elapsed)
        }
    })
    .await?;
    calls.push((LIST_USER, stat));

    for (label, offset) in [(PAGE_FIRST, 0), (PAGE_DEEP, n / 2)] {
        let stat = measure(label, 30, 300, Duration::from_secs(20), || async move {
            let started = Instant::now();
            let page = engine.list("", 100, "", i32::try_from(offset)?).await?;
            let elapsed = started.elapsed();
            let expected = (n - offset).min(100);
            ensure(page.details.len() == expected && page.total == n as u64, || {
                format!("page at {offset}: {} of total {}", page.details.len(), page.total)
            })?;
            Ok(elapsed)
        })
        .await?;
        calls.push((label, stat));
    }

    // Where a page spends its time: Redis (rank range + MGET), then names.
    let stat = measure(PAGE_STORE, 30, 300, Duration::from_secs(20), || async move {
        let started = Instant::now();
        let page = store.page((n / 2) as u64, 100, now_epoch()).await?;
        let elapsed = started.elapsed();
        ensure(page.affinities.len() == (n - n / 2).min(100), || {
            format!("store page: {}", page.affinities.len())
        })?;
        Ok(elapsed)
    })
    .await?;
    calls.push((PAGE_STORE, stat));
    let cipher = &cipher;
    let stat = measure(PAGE_ENRICH, 30, 300, Duration::from_secs(20), || {
        let offset = rng.below(n - 99) as u64;
        async move {
            let page = store.page(offset, 100, now_epoch()).await?;
            let started = Instant::now();
            let rows = EnrichmentRows::look_up(directory.as_ref(), &page.affinities, Vec::new()).await?;
            let details = rows.attach(cipher, page.affinities);
            let elapsed = started.elapsed();
            ensure(
                details.len() == 100 && details.iter().all(|d| d.username.is_some()),
                || format!("page at {offset}: enrichment incomplete"),
            )?;
            Ok(elapsed)
        }
    })
    .await?;
    calls.push((PAGE_ENRICH, stat));

    let stat = measure(LIST_KEYWORD, 30, 300, Duration::from_secs(20), || {
        let u = rng.below(user_count);
        async move {
            let started = Instant::now();
            let listing = engine.list(&world.users[u].1, 100, "", 0).await?;
            let elapsed = started.elapsed();
            let expected = world.user_entries(u).len() as u64;
            ensure(listing.total == expected, || {
                format!("keyword user {u}: {} affinities, expected {expected}", listing.total)
            })?;
            Ok(elapsed)
        }
    })
    .await?;
    calls.push((LIST_KEYWORD, stat));

    let stat = measure(CLEAR_USER_DRY, 30, 300, Duration::from_secs(20), || {
        let u = rng.below(user_count);
        async move {
            let started = Instant::now();
            let (count, _) = engine.clear_user(&world.users[u].1, true).await?;
            let elapsed = started.elapsed();
            let expected = world.user_entries(u).len() as u64;
            ensure(count == expected, || {
                format!("dry clear of user {u}: {count}, expected {expected}")
            })?;
            Ok(elapsed)
        }
    })
    .await?;
    calls.push((CLEAR_USER_DRY, stat));

    // Where a per-user call spends its time: the SQL lookup of the user's
    // keys, and the Redis read of their indexes.
    let stat = measure(DIR_KEYS_OF_USER, 30, 300, Duration::from_secs(20), || {
        let u = rng.below(user_count);
        async move {
            let started = Instant::now();
            let keys = directory.api_keys_of_user(&world.users[u].0).await?;
            let elapsed = started.elapsed();
            ensure(!keys.is_empty(), || format!("user {u} has no keys"))?;
            Ok(elapsed)
        }
    })
    .await?;
    calls.push((DIR_KEYS_OF_USER, stat));

    let stat = measure(STORE_USER_INDEXES, 30, 300, Duration::from_secs(20), || {
        let u = rng.below(user_count);
        async move {
            let indexes = world.user_key_indexes(u);
            let started = Instant::now();
            let found = store.list_indexed(&indexes, now_epoch()).await?;
            let elapsed = started.elapsed();
            ensure(found.len() == world.user_entries(u).len(), || {
                format!("user {u}: {} indexed", found.len())
            })?;
            Ok(elapsed)
        }
    })
    .await?;
    calls.push((STORE_USER_INDEXES, stat));

    let stat = measure(RESOLVE_USER, 30, 300, Duration::from_secs(20), || {
        let u = rng.below(user_count);
        async move {
            let started = Instant::now();
            let resolved = listing::resolve_user(directory.as_ref(), &world.users[u].1).await?;
            let elapsed = started.elapsed();
            ensure(
                resolved.resolved.user.id == world.users[u].0 && resolved.keys.len() == KEYS_PER_USER,
                || format!("user {u} resolved to another, or without its keys"),
            )?;
            Ok(elapsed)
        }
    })
    .await?;
    calls.push((RESOLVE_USER, stat));

    let stat = measure(ENRICH_USER, 30, 300, Duration::from_secs(20), || {
        let u = rng.below(user_count);
        async move {
            let indexes = world.user_key_indexes(u);
            let affinities = store.list_indexed(&indexes, now_epoch()).await?;
            let count = affinities.len();
            // As ListUserAffinities has them: the user's keys, already read.
            let known = directory.client_keys(&world.user_key_ids(u)).await?;
            let started = Instant::now();
            let rows = EnrichmentRows::look_up(directory.as_ref(), &affinities, known).await?;
            let details = rows.attach(cipher, affinities);
            let elapsed = started.elapsed();
            ensure(
                details.len() == count && details.iter().all(|d| d.username.is_some()),
                || format!("user {u}: enrichment incomplete"),
            )?;
            Ok(elapsed)
        }
    })
    .await?;
    calls.push((ENRICH_USER, stat));

    let usage = &usage;
    let stat = measure(USAGE_USER, 30, 300, Duration::from_secs(20), || {
        let u = rng.below(user_count);
        async move {
            let indexes = world.user_key_indexes(u);
            let affinities = store.list_indexed(&indexes, now_epoch()).await?;
            let started = Instant::now();
            let found = usage.bindings(&affinities).await?;
            let elapsed = started.elapsed();
            // Only entries the RecordUpstreamUsage row reported on have usage.
            ensure(found.len() <= affinities.len() && !affinities.is_empty(), || {
                format!("user {u}: {} bindings with usage", found.len())
            })?;
            Ok(elapsed)
        }
    })
    .await?;
    calls.push((USAGE_USER, stat));
    stalls.push(("per-call measurements above", watch.report().await?));

    let provider = 0;
    let provider_entries = world.provider_entries(provider);
    let stat = phase(
        watch,
        &mut stalls,
        "clear provider dry-run",
        measure(CLEAR_PROVIDER_DRY, 1, 20, Duration::from_secs(20), || async move {
            let started = Instant::now();
            let count = engine.clear_provider(&world.providers[provider], true).await?;
            let elapsed = started.elapsed();
            ensure(count == provider_entries, || {
                format!("provider dry clear: {count}, expected {provider_entries}")
            })?;
            Ok(elapsed)
        }),
    )
    .await?;
    calls.push((CLEAR_PROVIDER_DRY, stat));

    // Real clears, each on a user that has entries; the user's entries are
    // written back (untimed, through SetAffinity) so N stays as loaded.
    let stat = phase(
        watch,
        &mut stalls,
        "clear user (real) + restore",
        measure(CLEAR_USER, 20, 200, Duration::from_secs(30), || {
            let u = rng.below(user_count);
            async move {
                let entries = world.user_entries(u);
                let started = Instant::now();
                let (count, _) = engine.clear_user(&world.users[u].1, false).await?;
                let elapsed = started.elapsed();
                ensure(count == entries.len() as u64, || format!("clear of user {u}: {count}"))?;
                futures::future::try_join_all(entries.map(|j| async move {
                    let policy = WritePolicy::default();
                    engine
                        .set(&world.key(j), world.target(j), "", Some(WRITE_TTL), None, policy)
                        .await
                }))
                .await?;
                Ok(elapsed)
            }
        }),
    )
    .await?;
    calls.push((CLEAR_USER, stat));

    // The per-user rows again with `ix_api_keys_user_id` in place: a no-op
    // where the migration created it, the fix's effect where it did not
    // (an Aether database without it). Measured last so nothing above sees it.
    database
        .connection()
        .execute_unprepared("CREATE INDEX IF NOT EXISTS ix_api_keys_user_id ON api_keys (user_id)")
        .await?;
    let stat = measure(LIST_USER_INDEXED, 30, 300, Duration::from_secs(20), || {
        let u = rng.below(user_count);
        async move {
            let started = Instant::now();
            let found = engine.list_user(&world.users[u].1).await?;
            let elapsed = started.elapsed();
            ensure(found.details.len() == world.user_entries(u).len(), || {
                format!("user {u}: {} affinities", found.details.len())
            })?;
            Ok(elapsed)
        }
    })
    .await?;
    calls.push((LIST_USER_INDEXED, stat));
    let stat = measure(DIR_KEYS_OF_USER_INDEXED, 30, 300, Duration::from_secs(20), || {
        let u = rng.below(user_count);
        async move {
            let started = Instant::now();
            let keys = directory.api_keys_of_user(&world.users[u].0).await?;
            let elapsed = started.elapsed();
            ensure(
                keys.len() == KEYS_PER_USER.min(world.api_keys.len() - u * KEYS_PER_USER),
                || format!("user {u}: {} keys", keys.len()),
            )?;
            Ok(elapsed)
        }
    })
    .await?;
    calls.push((DIR_KEYS_OF_USER_INDEXED, stat));

    let live = engine.stats().await?.active_affinities;
    ensure(live == n as u64, || {
        format!("{live} live before clear-all, expected {n}")
    })?;
    // The control: the operator call's dry run, which SCANs the same entry
    // keys and counts them (EXISTS, 500 a time) instead of deleting them
    // (UNLINK, 100 a time), and skips the index sets. Nothing is freed.
    let counted = phase(
        watch,
        &mut stalls,
        "clear all, dry run (control: nothing freed)",
        async { Ok(engine.clear_all(true, true).await?) },
    )
    .await?;
    ensure(counted == n as u64, || {
        format!("clear-all dry run counted {counted}, expected {n}")
    })?;
    let started = Instant::now();
    let cleared = phase(watch, &mut stalls, "clear all", async {
        Ok(engine.clear_all(true, false).await?)
    })
    .await?;
    let elapsed = started.elapsed();
    ensure(cleared == n as u64, || {
        format!("clear-all deleted {cleared}, expected {n}")
    })?;
    eprintln!("  {CLEAR_ALL}: {:.3} s for {cleared}", elapsed.as_secs_f64());
    calls.push((CLEAR_ALL, Stat::once(elapsed)));
    // UNLINK leaves the big index sets to Redis's lazy-free thread, which
    // may still be freeing when the clear returns: a probe checks whether a
    // command waits on it meanwhile (its key has this run's prefix, so a
    // stall counts as ours).
    let probe_key = format!("{namespace}probe");
    let stat = phase(watch, &mut stalls, "after clear all (lazy free running)", async {
        measure(PROBE_AFTER_CLEAR, 0, 3000, Duration::from_secs(3), || async {
            let started = Instant::now();
            let _: i64 = admin.exists(&probe_key).await?;
            let elapsed = started.elapsed();
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(elapsed)
        })
        .await
    })
    .await?;
    calls.push((PROBE_AFTER_CLEAR, stat));

    Ok(SizeReport {
        n,
        users: world.users.len(),
        api_keys: world.api_keys.len(),
        provider_entries,
        setup,
        load_average: (load_before, load_average()),
        calls,
        stalls,
    })
}

/// The 1/5/15-minute load averages, for the record (the machine is shared).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_owned())
}

fn seconds(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}

fn micros(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn print_size(report: &SizeReport) {
    println!("### N = {}\n", report.n);
    println!(
        "{} users, {} API keys, {} providers ({} entries on the provider cleared dry), {} endpoints, {} provider keys, {} global models.\n",
        report.users,
        report.api_keys,
        PROVIDERS,
        report.provider_entries,
        PROVIDERS * FORMATS.len(),
        PROVIDERS * FORMATS.len() * KEYS_PER_ENDPOINT,
        MODELS.len()
    );
    println!(
        "Load average (1/5/15 min) at start: {}; at end: {}.\n",
        report.load_average.0, report.load_average.1
    );
    println!("| Setup step | Time | Note |\n|---|---:|---|");
    for (step, elapsed, note) in &report.setup {
        println!("| {step} | {} | {note} |", seconds(*elapsed));
    }
    println!("\n| Call | Samples | p50 µs | p99 µs |\n|---|---:|---:|---:|");
    for (call, stat) in &report.calls {
        println!(
            "| {call} | {} | {} | {} |",
            stat.samples,
            micros(stat.p50),
            micros(stat.p99)
        );
    }
    println!(
        "\n| Phase | SLOWLOG ≥10 ms (ours / others) | Our slow commands | LATENCY LATEST (≥10 ms) | Busiest commands (calls × mean) | Kernel counters |\n|---|---:|---|---|---|---|"
    );
    for (phase, stalls) in &report.stalls {
        println!(
            "| {phase} | {} / {} | {} | {} | {} | {} |",
            stalls.ours,
            stalls.others,
            stalls.slow_text(),
            stalls.latency_text(),
            stalls.busiest_text(),
            stalls.host_text()
        );
    }
    println!();
}

fn print_summary(reports: &[SizeReport]) {
    let (Some(first), Some(last)) = (reports.first(), reports.last()) else {
        return;
    };
    let sizes: Vec<String> = reports.iter().map(|r| format!("N={}", r.n)).collect();
    let mut names: Vec<&str> = Vec::new();
    for report in reports {
        for (name, _) in &report.calls {
            if !names.contains(name) {
                names.push(name);
            }
        }
    }
    for (title, pick) in [("p50", 0), ("p99", 1)] {
        println!("### {title} in µs by N\n");
        println!("| Call | {} | ratio N={} / N={} |", sizes.join(" | "), last.n, first.n);
        println!("|---|{}---:|", "---:|".repeat(reports.len()));
        for name in &names {
            let value = |r: &SizeReport| r.stat(name).map(|s| if pick == 0 { s.p50 } else { s.p99 });
            let cells: Vec<String> = reports.iter().map(|r| value(r).map_or("-".into(), micros)).collect();
            let ratio = match (value(first), value(last)) {
                (Some(a), Some(b)) if a > 0.0 => format!("{:.2}x", b / a),
                _ => "-".into(),
            };
            println!("| {name} | {} | {ratio} |", cells.join(" | "));
        }
        println!();
    }

    println!(
        "### Flatness (p50 at N={} / p50 at N={}; target ≤ 2x)\n",
        last.n, first.n
    );
    println!("| Call | Ratio | Within 2x |\n|---|---:|---|");
    for name in FLAT_CALLS {
        if let (Some(a), Some(b)) = (first.stat(name), last.stat(name)) {
            let ratio = b.p50 / a.p50;
            println!("| {name} | {ratio:.2}x | {} |", if ratio <= 2.0 { "yes" } else { "NO" });
        }
    }
    println!();

    let mut setup: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for report in reports {
        for (step, elapsed, _) in &report.setup {
            setup.entry(step).or_default().push(seconds(*elapsed));
        }
    }
    println!(
        "### Setup by N\n\n| Step | {} |\n|---|{}",
        sizes.join(" | "),
        "---:|".repeat(reports.len())
    );
    for (step, cells) in setup {
        println!("| {step} | {} |", cells.join(" | "));
    }
    println!();

    match reports.iter().find(|r| r.n == AETHER_SIZE) {
        Some(report) => {
            println!("### Against Aether at N={AETHER_SIZE} (target ≥ 1000x)\n");
            println!("| Call | Aether | p50 here | Speed-up (p50) | Speed-up (p99) |\n|---|---:|---:|---:|---:|");
            for (name, aether) in [
                (LIST_USER, AETHER_USER_LOOKUP_SECONDS),
                (PAGE_FIRST, AETHER_PAGE_SECONDS),
                (PAGE_DEEP, AETHER_PAGE_SECONDS),
            ] {
                if let Some(stat) = report.stat(name) {
                    println!(
                        "| {name} | {aether} s | {} µs | {:.0}x | {:.0}x |",
                        micros(stat.p50),
                        aether * 1e6 / stat.p50,
                        aether * 1e6 / stat.p99
                    );
                }
            }
            println!();
        }
        None => println!("(N={AETHER_SIZE} was not run: no comparison with Aether's measurements.)\n"),
    }
}

/// Sizes from the first non-flag argument (cargo passes `--bench`), else the
/// environment, else the default.
fn sizes() -> BenchResult<Vec<usize>> {
    let text = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .or_else(|| std::env::var("AETHER_CONTROL_BENCH_SIZES").ok());
    let Some(text) = text else {
        return Ok(DEFAULT_SIZES.to_vec());
    };
    let sizes = text
        .split(',')
        .map(|part| part.trim().replace('_', "").parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("sizes {text:?}: {e} (expected e.g. 1000,10000)"))?;
    ensure(
        !sizes.is_empty() && sizes.iter().all(|&n| (100..=i32::MAX as usize).contains(&n)),
        || format!("sizes {text:?}: each must be at least 100"),
    )?;
    Ok(sizes)
}

async fn run(sizes: &[usize], url: &str, admin: &Client, watch: &RedisWatch, run_prefix: &str) -> BenchResult<()> {
    let info: String = admin.custom(cmd!("INFO"), vec!["server"]).await?;
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    eprintln!("redis {version} at {url}; sizes {sizes:?}");
    watch.configure().await?;
    let started = Instant::now();
    let mut reports = Vec::new();
    for &n in sizes {
        let size_started = Instant::now();
        reports.push(run_size(n, url, admin, watch, run_prefix).await?);
        eprintln!("  N = {n} took {:.1} s", size_started.elapsed().as_secs_f64());
    }
    println!("## Affinity benchmark (Redis {version}, sizes {sizes:?})\n");
    for report in &reports {
        print_size(report);
    }
    print_summary(&reports);
    println!("Total run time: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let sizes = match sizes() {
        Ok(sizes) => sizes,
        Err(error) => {
            eprintln!("affinity bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    let url = std::env::var("AETHER_CONTROL_BENCH_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned());
    let admin = match Config::from_url(&url).and_then(|config| Builder::from_config(config).build()) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("affinity bench: redis url {url}: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = admin.init().await {
        eprintln!("affinity bench: cannot connect to {url}: {error}");
        return ExitCode::FAILURE;
    }
    let run_prefix = format!("actl_bench_{}_", std::process::id());
    let watch = RedisWatch {
        client: admin.clone(),
        prefix: run_prefix.clone(),
        saved: Mutex::new(Vec::new()),
        commandstats: Mutex::new(BTreeMap::new()),
        redis_pid: local_redis_pid(&admin).await,
        host_start: Mutex::new(None),
    };
    let outcome = tokio::select! {
        outcome = run(&sizes, &url, &admin, &watch, &run_prefix) => outcome,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    // Whatever happened: thresholds back, and no key of this run left.
    if let Err(error) = watch.restore().await {
        eprintln!("affinity bench: could not restore Redis settings: {error}");
    }
    match unlink_matching(&admin, &format!("{run_prefix}*")).await {
        Ok(0) => {}
        Ok(count) => eprintln!("deleted {count} keys left under {run_prefix}*"),
        Err(error) => eprintln!("affinity bench: cleanup of {run_prefix}* failed: {error}"),
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("affinity bench: {error}");
            ExitCode::FAILURE
        }
    }
}
