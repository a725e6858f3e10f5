//! Load, faults under load, soak and memory: the release binary against a
//! private Redis and a private PostgreSQL that this bench starts and stops
//! itself (method and results: docs/BENCHMARKS.md).
//!
//! ```text
//! cargo bench --bench load                 # all scenarios
//! cargo bench --bench load -- load         # or faults, soak, memory (comma-separated)
//! AETHER_CONTROL_LOAD_SOAK_SECONDS=60 cargo bench --bench load -- soak
//! ```
//!
//! Settings from the environment: `AETHER_CONTROL_LOAD_CONCURRENCY` (16),
//! `AETHER_CONTROL_LOAD_SECONDS` per measured pass (10),
//! `AETHER_CONTROL_LOAD_SOAK_SECONDS` (300) and
//! `AETHER_CONTROL_LOAD_MEMORY_ENTRIES` (1000000). Nothing shared is touched:
//! Redis and PostgreSQL run on free loopback ports from temp dirs, and every
//! process and dir is removed on exit, error or Ctrl-C. Progress goes to
//! stderr, the Markdown report to stdout. The load scenario also drives the
//! service with `h2load` (Debian package nghttp2-client) beside its own client.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether_control::auth::service_tokens::hash_hex;
use aether_control::domain::affinity::{AffinityKey, AffinityRecord, KEY_PREFIX};
use aether_control::domain::crypto::KeyCipher;
use aether_control::proto::affinity_service_client::AffinityServiceClient;
use aether_control::proto::user_service_client::UserServiceClient;
use aether_control::proto::{
    ExportMetricsRequest, GetAffinityRequest, ListAffinitiesRequest, RecordUpstreamUsageRequest, ResolveUserRequest,
    SetAffinityRequest, UpstreamOutcome,
};
use aether_control::store::redis::{OWN_PREFIX, RedisConnection};
use fred::cmd;
use fred::prelude::*;
use futures::TryStreamExt;
use prost::Message;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[path = "../tests/common/bearer.rs"]
mod bearer;
#[allow(dead_code)]
#[path = "../tests/common/rows.rs"]
mod rows;
#[path = "support/world.rs"]
mod world;

use bearer::{AuthedChannel, BearerToken};
use world::{BenchResult, Rng, World, load_redis, seed_database};

const BINARY: &str = env!("CARGO_BIN_EXE_aether-control");
const TOKEN: &str = "load-bench-token";

/// Entries loaded for the load, fault and soak scenarios.
const WORKING_SET: usize = 10_000;
/// Longest a single call may take before the client gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Calls a rate-limited generator lets be outstanding; beyond it a send is
/// skipped and counted, so a stalled server cannot exhaust the client.
const OPEN_LOOP_MAX_OUTSTANDING: usize = 4096;
/// Requests per redis-benchmark pass.
const REDIS_BENCHMARK_REQUESTS: u64 = 200_000;

/// Fault timeline: steady load before the fault, how long the store stays
/// down, the longest wait for recovery, and the load kept on afterwards.
const BEFORE_FAULT: Duration = Duration::from_secs(3);
const FAULT_DOWN: Duration = Duration::from_secs(5);
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);
const AFTER_RECOVERY: Duration = Duration::from_secs(3);
/// Calls per second during the fault scenarios (a steady, unsaturated load).
const FAULT_RATE: f64 = 400.0;
/// The reconciler interval for the fault scenario, so the post-fault check
/// sees a full pass within seconds.
const FAULT_RECONCILE_SECONDS: u64 = 2;
/// Health is polled this often while a fault runs.
const HEALTH_POLL: Duration = Duration::from_millis(20);

const SOAK_SAMPLE_EVERY: Duration = Duration::from_secs(30);
/// The reconciler must index the memory scenario's entries within this.
const INDEX_LIMIT: Duration = Duration::from_secs(1200);
const LIST_PAGE_SIZE: i32 = 1000;

/// Aether's figures the issue compares against (Python, 1 worker).
const AETHER_RSS_IDLE_MB: f64 = 151.0;
const AETHER_RSS_100K_MB: f64 = 398.0;

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> BenchResult<T> {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .map_err(|_| format!("{name}={text:?} is not a number").into()),
        Err(_) => Ok(default),
    }
}

fn free_port() -> BenchResult<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn temp_dir(prefix: &str) -> BenchResult<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix(prefix).tempdir()?)
}

/// Runs a command to completion; a non-zero exit is an error with its output.
fn run(command: &mut Command) -> BenchResult<String> {
    let output = command.output()?;
    if !output.status.success() {
        return Err(format!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Blocking work (process control) off the runtime's worker threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> BenchResult<T> + Send + 'static) -> BenchResult<T> {
    tokio::task::spawn_blocking(work).await?
}

// ---------------------------------------------------------------------------
// /proc readings

/// `VmRSS` of a process, in MB.
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Busy and total ticks of the whole machine (`/proc/stat`).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let values: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().sum();
    // idle + iowait
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn clock_ticks_per_second() -> f64 {
    run(Command::new("getconf").arg("CLK_TCK"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU used by named processes over a span of wall time, as % of one core,
/// and the machine's busy share of all cores.
struct CpuMeter {
    started: Instant,
    processes: Vec<(&'static str, u32, u64)>,
    machine: (u64, u64),
}

#[derive(Clone, Debug, Default)]
struct CpuUse {
    processes: Vec<(&'static str, f64)>,
    machine_percent: f64,
}

impl CpuMeter {
    fn start(processes: &[(&'static str, u32)]) -> Self {
        Self {
            started: Instant::now(),
            processes: processes
                .iter()
                .map(|&(name, pid)| (name, pid, cpu_ticks(pid).unwrap_or(0)))
                .collect(),
            machine: machine_ticks().unwrap_or_default(),
        }
    }

    /// `last_seen` holds readings of processes that may have exited already.
    fn finish(&self, last_seen: &BTreeMap<u32, u64>) -> CpuUse {
        let wall = self.started.elapsed().as_secs_f64();
        let hz = clock_ticks_per_second();
        let (busy, total) = machine_ticks().unwrap_or_default();
        CpuUse {
            processes: self
                .processes
                .iter()
                .map(|&(name, pid, before)| {
                    let after = cpu_ticks(pid)
                        .or_else(|| last_seen.get(&pid).copied())
                        .unwrap_or(before);
                    (name, after.saturating_sub(before) as f64 / hz / wall * 100.0)
                })
                .collect(),
            machine_percent: (busy - self.machine.0) as f64 / (total - self.machine.1).max(1) as f64 * 100.0,
        }
    }
}

impl CpuUse {
    fn text(&self) -> String {
        let mut parts: Vec<String> = self
            .processes
            .iter()
            .map(|(name, percent)| format!("{name} {percent:.0}%"))
            .collect();
        parts.push(format!("machine {:.0}% of 2 cores", self.machine_percent));
        parts.join(", ")
    }
}

// ---------------------------------------------------------------------------
// Private stores and the service

/// A child process killed (SIGKILL) and reaped when dropped.
struct Owned(Child);

impl Owned {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-server` on a free port, no persistence.
struct PrivateRedis {
    port: u16,
    process: Option<Owned>,
}

impl PrivateRedis {
    fn start() -> BenchResult<Self> {
        let mut redis = Self {
            port: free_port()?,
            process: None,
        };
        redis.spawn()?;
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, Owned::pid)
    }

    /// Starts the server on this port and waits until it answers PING.
    fn spawn(&mut self) -> BenchResult<()> {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .spawn()?;
        self.process = Some(Owned(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while run(Command::new("redis-cli").args(["-p", &port, "ping"])).map_or(true, |reply| reply.trim() != "PONG") {
            if Instant::now() > deadline {
                return Err("the private redis-server did not answer within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// kill -9: no shutdown, no save.
    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }
}

/// A PostgreSQL cluster in a temp dir on a free port, trust auth. As root,
/// it runs as the `postgres` user (initdb refuses root).
struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
    run_as: Option<&'static str>,
    running: bool,
}

impl PrivatePostgres {
    fn start() -> BenchResult<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")?
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .ok_or("no /usr/lib/postgresql/*/bin/initdb (Debian's postgresql package)")?;
        let root = run(Command::new("id").arg("-u"))?.trim() == "0";
        let mut postgres = Self {
            dir: temp_dir("actl-load-pg-")?,
            port: free_port()?,
            bin,
            run_as: root.then_some("postgres"),
            running: false,
        };
        if let Some(user) = postgres.run_as {
            run(Command::new("chown").arg(user).arg(postgres.dir.path()))?;
        }
        let data = postgres.data_dir();
        run(postgres
            .tool("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "-D"])
            .arg(&data))?;
        postgres.start_server()?;
        Ok(postgres)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn tool(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        match self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pid(&self) -> u32 {
        std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse().ok())
            .unwrap_or(0)
    }

    fn start_server(&mut self) -> BenchResult<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        run(self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]))?;
        self.running = true;
        Ok(())
    }

    /// `pg_ctl stop -m immediate`: the postmaster kills every backend at
    /// once and the next start runs crash recovery.
    fn stop_immediately(&mut self) -> BenchResult<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        run(self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-m", "immediate", "stop"]))
        .map(drop)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Err(error) = self.stop_immediately() {
            eprintln!("stopping the private PostgreSQL: {error}");
        }
    }
}

/// Both private stores and the admin Redis connection the bench uses itself.
struct Rig {
    redis: PrivateRedis,
    postgres: PrivatePostgres,
    admin: RedisConnection,
}

impl Rig {
    async fn start() -> BenchResult<Self> {
        let redis = blocking(PrivateRedis::start).await?;
        let postgres = blocking(PrivatePostgres::start).await?;
        let admin = RedisConnection::connect(&redis.url(), 1, Duration::from_secs(5), "")?;
        if !admin.wait_connected(Duration::from_secs(10)).await {
            return Err("the bench's own Redis connection did not connect".into());
        }
        eprintln!(
            "private redis-server on port {} (pid {}), PostgreSQL on port {} (pid {})",
            redis.port,
            redis.pid(),
            postgres.port,
            postgres.pid()
        );
        Ok(Self { redis, postgres, admin })
    }

    fn client(&self) -> BenchResult<&Client> {
        Ok(self.admin.client()?)
    }

    async fn flush(&self) -> BenchResult<()> {
        let _: Value = self.client()?.custom(cmd!("FLUSHALL"), Vec::<String>::new()).await?;
        Ok(())
    }

    async fn info_field(&self, section: &str, field: &str) -> BenchResult<String> {
        let info: String = self.client()?.custom(cmd!("INFO"), vec![section]).await?;
        info.lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .map(|value| value.trim().to_owned())
            .ok_or_else(|| format!("INFO {section} has no {field}").into())
    }
}

/// The release binary, started fresh for each scenario.
struct Service {
    process: Owned,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Service {
    async fn start(rig: &Rig, reconcile_seconds: u64) -> BenchResult<Self> {
        let dir = temp_dir("actl-load-svc-")?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log = dir.path().join("stderr.log");
        let mut command = Command::new(BINARY);
        for name in [
            "JWT_SECRET_KEY",
            "ENCRYPTION_KEY",
            "ENVIRONMENT",
            "AETHER_CONTROL_REDIS_NAMESPACE",
        ] {
            command.env_remove(name);
        }
        command
            .env("AETHER_CONTROL_LISTEN", addr.to_string())
            .env("AETHER_CONTROL_HTTP_LISTEN", "off")
            .env("AETHER_CONTROL_DATA_DIR", dir.path())
            .env("REDIS_URL", rig.redis.url())
            .env("DATABASE_URL", rig.postgres.url())
            .env("AETHER_CONTROL_DB_MIGRATE", "always")
            .env(
                "AETHER_CONTROL_SERVICE_TOKENS",
                format!("load:read+write+admin:{}", hash_hex(TOKEN)),
            )
            .env(
                "AETHER_CONTROL_RECONCILE_INTERVAL_SECONDS",
                reconcile_seconds.to_string(),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        let service = Self {
            process: Owned(command.spawn()?),
            addr,
            log,
            _dir: dir,
        };
        service.wait_serving().await?;
        Ok(service)
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    async fn channel(&self) -> BenchResult<Channel> {
        Ok(Endpoint::from_shared(format!("http://{}", self.addr))?
            .connect()
            .await?)
    }

    async fn wait_serving(&self) -> BenchResult<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(channel) = self.channel().await
                && health(&mut HealthClient::new(channel)).await == Some(ServingStatus::Serving)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the service was not SERVING within 60 s; see {}", self.log.display()).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn caller(&self, world: Arc<World>) -> BenchResult<Caller> {
        let authed: AuthedChannel = InterceptedService::new(self.channel().await?, BearerToken(TOKEN));
        Ok(Caller {
            affinity: AffinityServiceClient::new(authed.clone()),
            users: UserServiceClient::new(authed),
            world,
        })
    }

    /// Whether the process is still running and its log is free of panics.
    fn verdict(&mut self) -> String {
        let alive = matches!(self.process.0.try_wait(), Ok(None));
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let panics = log.matches("panicked").count();
        let lines = log.lines().count();
        format!(
            "process {} ; {panics} panics in its stderr ({lines} log lines at WARN)",
            if alive { "alive" } else { "**exited**" }
        )
    }
}

async fn health(client: &mut HealthClient<Channel>) -> Option<ServingStatus> {
    let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
    request.set_timeout(Duration::from_millis(500));
    let status = client.check(request).await.ok()?.into_inner().status;
    ServingStatus::try_from(status).ok()
}

// ---------------------------------------------------------------------------
// The load generator

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rpc {
    GetAffinity,
    SetAffinity,
    RecordUpstreamUsage,
    ResolveUser,
}

/// The floor of any call through the service's stack: grpc.health.v1 Check
/// touches no store, yet passes the same listener and layers.
const HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

impl Rpc {
    /// The HTTP/2 path of a load-tested RPC.
    fn path(self) -> &'static str {
        match self {
            Self::GetAffinity => "/aether.control.v1.AffinityService/GetAffinity",
            Self::SetAffinity => "/aether.control.v1.AffinityService/SetAffinity",
            Self::RecordUpstreamUsage => "/aether.control.v1.AffinityService/RecordUpstreamUsage",
            Self::ResolveUser => "/aether.control.v1.UserService/ResolveUser",
        }
    }

    /// A request body on entry 0 (h2load repeats one body, as
    /// redis-benchmark repeats one key).
    fn body(self, world: &World) -> Vec<u8> {
        match self {
            Self::GetAffinity => grpc_body(&get_request(world, 0)),
            Self::SetAffinity => grpc_body(&set_request(world, 0)),
            Self::RecordUpstreamUsage => grpc_body(&usage_request(world, 0)),
            Self::ResolveUser => grpc_body(&ResolveUserRequest {
                identifier: world.users[0].1.clone(),
            }),
        }
    }
}

/// One call: which, when it was sent (since the run's start), how long it
/// took, and its status code.
#[derive(Clone, Copy, Debug)]
struct Outcome {
    rpc: Rpc,
    sent: Duration,
    latency: Duration,
    code: Code,
}

impl Outcome {
    /// NOT_FOUND answers a Get on an entry that is not there (after Redis
    /// lost its data): the service worked.
    fn answered(&self) -> bool {
        matches!(self.code, Code::Ok | Code::NotFound)
    }
}

#[derive(Clone)]
struct Caller {
    affinity: AffinityServiceClient<AuthedChannel>,
    users: UserServiceClient<AuthedChannel>,
    world: Arc<World>,
}

/// GetAffinity of entry `j`.
fn get_request(world: &World, j: usize) -> GetAffinityRequest {
    let key = world.key(j % world.n);
    GetAffinityRequest {
        affinity_key: key.affinity_key,
        api_format: key.api_format,
        global_model_id: key.global_model_id,
    }
}

/// SetAffinity of entry `j` to its own target (a refresh).
fn set_request(world: &World, j: usize) -> SetAffinityRequest {
    let (key, target) = (world.key(j % world.n), world.target(j % world.n));
    SetAffinityRequest {
        affinity_key: key.affinity_key,
        api_format: key.api_format,
        global_model_id: key.global_model_id,
        provider_id: target.provider_id,
        endpoint_id: target.endpoint_id,
        key_id: target.key_id,
        ..Default::default()
    }
}

/// A successful call on entry `j`'s binding, with cache reads.
fn usage_request(world: &World, j: usize) -> RecordUpstreamUsageRequest {
    let (key, target) = (world.key(j % world.n), world.target(j % world.n));
    RecordUpstreamUsageRequest {
        affinity_key: key.affinity_key,
        api_format: key.api_format,
        global_model_id: key.global_model_id,
        provider_id: target.provider_id,
        endpoint_id: target.endpoint_id,
        key_id: target.key_id,
        outcome: UpstreamOutcome::Success.into(),
        input_tokens: 2000,
        cache_read_tokens: 1800,
        cache_creation_tokens: 100,
    }
}

impl Caller {
    /// Calls `rpc` on entry (or user) `pick` of the working set.
    async fn call(&self, rpc: Rpc, pick: usize) -> Code {
        fn timed<T>(message: T) -> tonic::Request<T> {
            let mut request = tonic::Request::new(message);
            request.set_timeout(CALL_TIMEOUT);
            request
        }
        let world = &self.world;
        let mut affinity = self.affinity.clone();
        let result = match rpc {
            Rpc::GetAffinity => affinity.get_affinity(timed(get_request(world, pick))).await.map(drop),
            Rpc::SetAffinity => affinity.set_affinity(timed(set_request(world, pick))).await.map(drop),
            Rpc::RecordUpstreamUsage => {
                let request = timed(usage_request(world, pick));
                affinity.record_upstream_usage(request).await.map(drop)
            }
            Rpc::ResolveUser => {
                let users = &self.world.users;
                self.users
                    .clone()
                    .resolve_user(timed(ResolveUserRequest {
                        identifier: users[pick % users.len()].1.clone(),
                    }))
                    .await
                    .map(drop)
            }
        };
        result.map_or_else(|status| status.code(), |()| Code::Ok)
    }

    /// Calls to `path` the service answered with a status other than OK so
    /// far, by gRPC status code, from its own counters (h2load does not read
    /// gRPC trailers).
    async fn failed_calls(&self, path: &str) -> BenchResult<BTreeMap<String, u64>> {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .ok_or("a gRPC path is /service/method")?;
        let labels = format!("rpc_service=\"{service}\",rpc_method=\"{method}\",");
        let text = self
            .affinity
            .clone()
            .export_metrics(ExportMetricsRequest {})
            .await?
            .into_inner()
            .text;
        Ok(text
            .lines()
            .filter(|line| line.starts_with("rpc_server_requests_total{") && line.contains(&labels))
            .filter_map(|line| {
                let code = line.split("rpc_grpc_status_code=\"").nth(1)?.split('"').next()?;
                let count = line.rsplit(' ').next()?.parse::<u64>().ok()?;
                (code != "0").then(|| (code.to_owned(), count))
            })
            .collect())
    }
}

/// Latency percentiles (nearest rank) in microseconds.
#[derive(Clone, Copy, Debug, Default)]
struct Percentiles {
    count: usize,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Percentiles {
    fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort();
        let rank = |p: f64| {
            let index = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[index].as_secs_f64() * 1e6
        };
        Self {
            count: samples.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            p999: rank(0.999),
            max: rank(1.0),
        }
    }

    fn millis(&self) -> String {
        format!(
            "{:.2} / {:.2} / {:.2} / {:.1}",
            self.p50 / 1e3,
            self.p99 / 1e3,
            self.p999 / 1e3,
            self.max / 1e3
        )
    }
}

/// What a pass of load produced.
struct Pass {
    outcomes: Vec<Outcome>,
    wall: Duration,
    /// Rate-limited passes: sends skipped at the outstanding cap, and the
    /// latest a send went out after its scheduled time.
    skipped: u64,
    worst_send_lag: Duration,
    cpu: CpuUse,
}

impl Pass {
    fn rate(&self) -> f64 {
        self.outcomes.len() as f64 / self.wall.as_secs_f64()
    }

    fn failures(&self) -> usize {
        self.outcomes.iter().filter(|o| !o.answered()).count()
    }

    fn latency(&self) -> Percentiles {
        Percentiles::of(self.outcomes.iter().map(|o| o.latency).collect())
    }
}

/// The processes whose CPU a pass accounts for.
#[derive(Clone)]
struct Processes(Vec<(&'static str, u32)>);

/// Closed loop (ghz `-c`): `concurrency` workers, each sending its next call
/// as soon as the previous one returns, for `duration`.
async fn closed_loop(
    caller: &Caller,
    mix: &[Rpc],
    concurrency: usize,
    duration: Duration,
    watched: &Processes,
) -> Pass {
    let meter = CpuMeter::start(&watched.0);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let caller = caller.clone();
            let mix = mix.to_vec();
            tokio::spawn(async move {
                let mut rng = Rng(0x10AD_0000 ^ worker as u64);
                let mut outcomes = Vec::new();
                while started.elapsed() < duration {
                    let rpc = mix[outcomes.len() % mix.len()];
                    let sent = started.elapsed();
                    let code = caller.call(rpc, rng.below(usize::MAX)).await;
                    outcomes.push(Outcome {
                        rpc,
                        sent,
                        latency: started.elapsed() - sent,
                        code,
                    });
                }
                outcomes
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for worker in workers {
        outcomes.extend(worker.await.unwrap_or_default());
    }
    Pass {
        outcomes,
        wall: started.elapsed(),
        skipped: 0,
        worst_send_lag: Duration::ZERO,
        cpu: meter.finish(&BTreeMap::new()),
    }
}

/// Open loop (ghz `--rps`): calls are sent on a fixed schedule of `rate` per
/// second whatever the answers do, until `stop` is set or `duration` ends.
/// Each call's latency runs from its own send. Outcomes are pushed into
/// `sink` as they complete, so a watcher can read them while the load runs.
struct OpenLoop {
    rate: f64,
    duration: Duration,
    stop: Arc<AtomicBool>,
    sink: Arc<Mutex<Vec<Outcome>>>,
}

impl OpenLoop {
    fn new(rate: f64, duration: Duration) -> Self {
        Self {
            rate,
            duration,
            stop: Arc::new(AtomicBool::new(false)),
            sink: Arc::new(Mutex::new(Vec::new())),
        }
    }

    async fn run(&self, caller: &Caller, mix: &[Rpc], started: Instant, watched: &Processes) -> Pass {
        let meter = CpuMeter::start(&watched.0);
        let period = Duration::from_secs_f64(1.0 / self.rate);
        let mut rng = Rng(0x0BE7_0000);
        let mut calls = tokio::task::JoinSet::new();
        let (mut skipped, mut worst_send_lag) = (0, Duration::ZERO);
        let mut index: u32 = 0;
        loop {
            let due = started + period * index;
            if due.duration_since(started) >= self.duration || self.stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            worst_send_lag = worst_send_lag.max(due.elapsed());
            while calls.try_join_next().is_some() {}
            if calls.len() >= OPEN_LOOP_MAX_OUTSTANDING {
                skipped += 1;
            } else {
                let (caller, sink) = (caller.clone(), Arc::clone(&self.sink));
                let rpc = mix[index as usize % mix.len()];
                let pick = rng.below(usize::MAX);
                calls.spawn(async move {
                    let sent = started.elapsed();
                    let code = caller.call(rpc, pick).await;
                    let outcome = Outcome {
                        rpc,
                        sent,
                        latency: started.elapsed() - sent,
                        code,
                    };
                    if let Ok(mut sink) = sink.lock() {
                        sink.push(outcome);
                    }
                });
            }
            index += 1;
        }
        while calls.join_next().await.is_some() {}
        let outcomes = self.sink.lock().map(|sink| sink.clone()).unwrap_or_default();
        Pass {
            outcomes,
            wall: started.elapsed(),
            skipped,
            worst_send_lag,
            cpu: meter.finish(&BTreeMap::new()),
        }
    }
}

/// One `redis-benchmark` pass: requests per second and latency from its CSV.
struct RawPass {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu: CpuUse,
}

/// Runs a load-generating `command` to its end and returns its stdout, with
/// the CPU it (as `name`) and the `others` used meanwhile.
fn run_metered(
    command: &mut Command,
    name: &'static str,
    others: &[(&'static str, u32)],
) -> BenchResult<(String, CpuUse)> {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let client_pid = child.id();
    let mut watched = vec![(name, client_pid)];
    watched.extend_from_slice(others);
    let meter = CpuMeter::start(&watched);
    // The client's CPU can only be read while it runs: keep the last reading.
    let mut last_seen = BTreeMap::new();
    while child.try_wait()?.is_none() {
        if let Some(ticks) = cpu_ticks(client_pid) {
            last_seen.insert(client_pid, ticks);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu = meter.finish(&last_seen);
    let output = child.wait_with_output()?;
    Ok((String::from_utf8_lossy(&output.stdout).into_owned(), cpu))
}

fn redis_benchmark(port: u16, redis_pid: u32, concurrency: usize, command: &[String]) -> BenchResult<RawPass> {
    let (stdout, cpu) = run_metered(
        Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args([
                "-c",
                &concurrency.to_string(),
                "-n",
                &REDIS_BENCHMARK_REQUESTS.to_string(),
            ])
            .arg("--csv")
            .args(command),
        "redis-benchmark",
        &[("redis-server", redis_pid)],
    )?;
    // "test","rps","avg","min","p50","p95","p99","max": the test name is the
    // command itself (quotes and commas included), so read from the right.
    let numbers: Vec<f64> = stdout
        .lines()
        .last()
        .ok_or("redis-benchmark printed nothing")?
        .rsplitn(8, ',')
        .take(7)
        .map(|field| field.trim_matches('"').parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("unexpected redis-benchmark output: {stdout}"))?;
    // Reversed: max, p99, p95, p50, min, avg, rps.
    Ok(RawPass {
        rps: numbers[6],
        p50_ms: numbers[3],
        p99_ms: numbers[1],
        cpu,
    })
}

/// One h2load pass: nghttp2's C HTTP/2 client, far lighter than this bench's
/// tonic client, so the service (not the generator) sets the rate.
struct H2loadPass {
    rps: f64,
    mean_ms: f64,
    max_ms: f64,
    cpu: CpuUse,
}

/// A unary gRPC request body: the 5-byte message prefix, then the message.
fn grpc_body(message: &impl Message) -> Vec<u8> {
    let encoded = message.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    body.extend_from_slice(&encoded);
    body
}

/// Milliseconds of an h2load duration ("617us", "1.13ms", "2.1s").
fn h2load_ms(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else {
        (text.strip_suffix('s')?, 1e3)
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// `h2load` on one connection with `concurrency` streams for `duration`
/// (after a 1 s warm-up), every request `body` to `path`.
fn h2load(
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    concurrency: usize,
    duration: Duration,
    others: &[(&'static str, u32)],
) -> BenchResult<H2loadPass> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), body)?;
    let (stdout, cpu) = run_metered(
        Command::new("h2load")
            .args(["-c", "1", "-t", "1", "-m", &concurrency.to_string()])
            .args(["-D", &duration.as_secs().to_string(), "--warm-up-time", "1"])
            .arg("-d")
            .arg(file.path())
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            .args(["-H", &format!("authorization: Bearer {TOKEN}")])
            .arg(format!("http://{addr}{path}")),
        "h2load",
        others,
    )?;
    let unexpected = || format!("unexpected h2load output: {stdout}");
    // "finished in 10.00s, 14051.07 req/s, 4.28MB/s"
    let rps = stdout
        .lines()
        .find_map(|line| line.strip_prefix("finished in "))
        .and_then(|rest| rest.split(", ").nth(1)?.strip_suffix(" req/s")?.parse().ok())
        .ok_or_else(unexpected)?;
    // "time for request:  72us  10.04ms  1.13ms  617us  83.97%" (min max mean sd)
    let times: Vec<f64> = stdout
        .lines()
        .find_map(|line| line.strip_prefix("time for request:"))
        .map(|rest| rest.split_whitespace().filter_map(h2load_ms).collect())
        .ok_or_else(unexpected)?;
    let [_, max_ms, mean_ms, ..] = times[..] else {
        return Err(unexpected().into());
    };
    Ok(H2loadPass {
        rps,
        mean_ms,
        max_ms,
        cpu,
    })
}

fn service_processes(rig: &Rig, service: &Service) -> Processes {
    Processes(vec![
        ("client (this bench)", std::process::id()),
        ("aether-control", service.pid()),
        ("redis-server", rig.redis.pid()),
    ])
}

/// Loads the working set as Aether would write it.
async fn load_working_set(rig: &Rig, world: &World) -> BenchResult<Duration> {
    let started = Instant::now();
    load_redis(rig.client()?, &rig.admin, world).await?;
    Ok(started.elapsed())
}

// ---------------------------------------------------------------------------
// Scenarios

struct Settings {
    concurrency: usize,
    pass: Duration,
    soak: Duration,
    memory_entries: usize,
}

/// Fails, naming the Debian package to install, when `tool` is not on PATH.
fn require(tool: &str, package: &str) -> BenchResult<()> {
    let found =
        std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    if found {
        Ok(())
    } else {
        Err(format!("`{tool}` is not installed (Debian: apt-get install {package})").into())
    }
}

async fn scenario_load(rig: &Rig, settings: &Settings, world: Arc<World>, report: &mut String) -> BenchResult<()> {
    require("redis-benchmark", "redis-tools")?;
    require("h2load", "nghttp2-client")?;
    rig.flush().await?;
    let mut service = Service::start(rig, 10).await?;
    let caller = service.caller(Arc::clone(&world)).await?;
    load_working_set(rig, &world).await?;
    let watched = service_processes(rig, &service);
    let c = settings.concurrency;
    eprintln!("load: warm-up");
    closed_loop(
        &caller,
        &[Rpc::GetAffinity, Rpc::SetAffinity],
        c,
        Duration::from_secs(2),
        &watched,
    )
    .await;

    let sample_key = world.key(0).redis_key();
    let (sample_value, _) = world.aether_value(0, aether_control::domain::affinity::now_epoch());
    let h2load_watched = [("aether-control", service.pid()), ("redis-server", rig.redis.pid())];
    let h2load_pass = |path: &'static str, body: Vec<u8>| {
        let (addr, pass) = (service.addr, settings.pass);
        blocking(move || h2load(addr, path, &body, c, pass, &h2load_watched))
    };
    eprintln!("load: grpc.health.v1 Check through h2load (the transport floor)");
    let floor = h2load_pass(HEALTH_CHECK_PATH, grpc_body(&HealthCheckRequest::default())).await?;
    eprintln!("  {:.0} calls/s", floor.rps);
    let mut rows = Vec::new();
    for (rpc, raw_command) in [
        (Rpc::GetAffinity, vec!["GET", sample_key.as_str()]),
        (
            Rpc::SetAffinity,
            vec!["SET", sample_key.as_str(), sample_value.as_str(), "EX", "300"],
        ),
        (
            Rpc::RecordUpstreamUsage,
            vec!["HINCRBY", "aether_control:usage:total", "requests", "1"],
        ),
    ] {
        eprintln!("load: {rpc:?} closed loop at concurrency {c}");
        let saturated = closed_loop(&caller, &[rpc], c, settings.pass, &watched).await;
        eprintln!("  {:.0} calls/s, {} failures", saturated.rate(), saturated.failures());
        eprintln!("load: redis-benchmark {} at -c {c}", raw_command[0]);
        let raw_args: Vec<String> = raw_command.iter().map(|&s| s.to_owned()).collect();
        let (port, pid) = (rig.redis.port, rig.redis.pid());
        let raw = blocking(move || redis_benchmark(port, pid, c, &raw_args)).await?;
        eprintln!("  {:.0} requests/s", raw.rps);
        eprintln!("load: {rpc:?} through h2load at {c} streams");
        let failed_before = caller.failed_calls(rpc.path()).await?;
        let light = h2load_pass(rpc.path(), rpc.body(&world)).await?;
        let light_failed: Vec<String> = caller
            .failed_calls(rpc.path())
            .await?
            .into_iter()
            .filter_map(|(code, count)| {
                let new = count - failed_before.get(&code).copied().unwrap_or(0);
                (new > 0).then(|| format!("{new} × code {code}"))
            })
            .collect();
        let light_failed = if light_failed.is_empty() {
            "none".to_owned()
        } else {
            light_failed.join(", ")
        };
        eprintln!("  {:.0} calls/s, not OK: {light_failed}", light.rps);
        let half = saturated.rate() / 2.0;
        eprintln!("load: {rpc:?} open loop at {half:.0}/s");
        let paced = OpenLoop::new(half, settings.pass)
            .run(&caller, &[rpc], Instant::now(), &watched)
            .await;
        eprintln!("  p99 {:.2} ms", paced.latency().p99 / 1e3);
        rows.push((rpc, raw_command.join(" "), saturated, raw, paced, (light, light_failed)));
    }
    let verdict = service.verdict();
    drop(service);

    let short = |text: &str| {
        text.replace(&sample_key, "<affinity key>")
            .replace(&sample_value, "<Aether JSON value>")
    };
    report.push_str(&format!(
        "### Load (concurrency {c}, {} s per pass, working set {WORKING_SET} entries)\n\n",
        settings.pass.as_secs()
    ));
    report.push_str(
        "| RPC | tonic client: calls/s | p50 / p99 / p99.9 / max ms | h2load: calls/s (not OK) | h2load mean / max ms | raw Redis command | redis-benchmark rps | p50 / p99 ms | ours / raw: tonic client, h2load | target ≥ 50% |\n|---|---:|---|---:|---|---|---:|---|---:|---|\n",
    );
    for (rpc, command, saturated, raw, _, (light, light_failed)) in &rows {
        let ratio = saturated.rate().max(light.rps) / raw.rps;
        report.push_str(&format!(
            "| {rpc:?} | {:.0} ({} failed) | {} | {:.0} ({light_failed}) | {:.2} / {:.1} | `{}` | {:.0} | {:.3} / {:.3} | {:.0}%, {:.0}% | {} |\n",
            saturated.rate(),
            saturated.failures(),
            saturated.latency().millis(),
            light.rps,
            light.mean_ms,
            light.max_ms,
            short(command),
            raw.rps,
            raw.p50_ms,
            raw.p99_ms,
            saturated.rate() / raw.rps * 100.0,
            light.rps / raw.rps * 100.0,
            if ratio >= 0.5 { "met" } else { "**missed**" }
        ));
    }
    let raw_get = rows.first().map_or(f64::NAN, |row| row.3.rps);
    report.push_str(&format!(
        "\n**Transport floor:** `grpc.health.v1.Health/Check` (no store call; the same listener, envelope and auth layers) through h2load at {c} streams: {:.0} calls/s, mean {:.2} ms = {:.0}% of redis-benchmark's `GET`. CPU: {}.\n",
        floor.rps,
        floor.mean_ms,
        floor.rps / raw_get * 100.0,
        floor.cpu.text()
    ));
    report.push_str("\n**Open loop at half the saturating rate**\n\n| RPC | target rate | achieved | p50 / p99 / p99.9 / max ms | failed | skipped sends | worst send lag | target p99 < 2 ms |\n|---|---:|---:|---|---:|---:|---:|---|\n");
    for (rpc, _, saturated, _, paced, _) in &rows {
        let latency = paced.latency();
        report.push_str(&format!(
            "| {rpc:?} | {:.0}/s | {:.0}/s | {} | {} | {} | {:.1} ms | {} |\n",
            saturated.rate() / 2.0,
            paced.rate(),
            latency.millis(),
            paced.failures(),
            paced.skipped,
            paced.worst_send_lag.as_secs_f64() * 1e3,
            if latency.p99 < 2000.0 { "met" } else { "**missed**" }
        ));
    }
    let saturated_rate = |wanted: Rpc| {
        rows.iter()
            .find(|(rpc, ..)| *rpc == wanted)
            .map_or(0.0, |(_, _, saturated, ..)| saturated.rate())
    };
    let usage_vs_set = saturated_rate(Rpc::RecordUpstreamUsage) / saturated_rate(Rpc::SetAffinity);
    report.push_str(&format!(
        "\nRecordUpstreamUsage saturates at {:.0}% of SetAffinity's rate (target: within 20%, i.e. >= 80%): {}.\n",
        usage_vs_set * 100.0,
        if usage_vs_set >= 0.8 { "met" } else { "**missed**" }
    ));
    report.push_str("\n**CPU during each pass** (% of one core; the machine has 2)\n\n| pass | CPU |\n|---|---|\n");
    for (rpc, command, saturated, raw, paced, (light, _)) in &rows {
        report.push_str(&format!("| {rpc:?} saturated | {} |\n", saturated.cpu.text()));
        report.push_str(&format!("| {rpc:?} through h2load | {} |\n", light.cpu.text()));
        report.push_str(&format!(
            "| redis-benchmark `{}` | {} |\n",
            short(command),
            raw.cpu.text()
        ));
        report.push_str(&format!("| {rpc:?} at half rate | {} |\n", paced.cpu.text()));
    }
    report.push_str(&format!("\nService after the scenario: {verdict}.\n\n"));
    Ok(())
}

/// A fault: what goes down and how it comes back.
#[derive(Clone, Copy, Debug)]
enum Fault {
    RedisKilled,
    PostgresStopped,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Self::RedisKilled => "Redis `kill -9`, restarted empty on the same port",
            Self::PostgresStopped => "PostgreSQL `pg_ctl stop -m immediate`, then `pg_ctl start`",
        }
    }

    /// The load during the fault; the first RPC is the one the fault breaks.
    fn mix(self) -> &'static [Rpc] {
        match self {
            Self::RedisKilled => &[Rpc::SetAffinity, Rpc::GetAffinity],
            Self::PostgresStopped => &[Rpc::ResolveUser, Rpc::GetAffinity],
        }
    }
}

/// Health transitions seen by a poller: (since start, status; None = no answer).
type HealthLog = Vec<(Duration, Option<ServingStatus>)>;

async fn watch_health(channel: Channel, started: Instant, stop: Arc<AtomicBool>) -> HealthLog {
    let mut client = HealthClient::new(channel);
    let mut log: HealthLog = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let status = health(&mut client).await;
        if log.last().is_none_or(|(_, last)| *last != status) {
            log.push((started.elapsed(), status));
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
    log
}

/// Moments of a fault run, since the load started.
struct FaultTimes {
    fault: Duration,
    restart: Duration,
    recovered: Option<Duration>,
}

async fn scenario_fault(rig: &mut Rig, fault: Fault, world: Arc<World>, report: &mut String) -> BenchResult<()> {
    rig.flush().await?;
    let mut service = Service::start(rig, FAULT_RECONCILE_SECONDS).await?;
    let caller = service.caller(Arc::clone(&world)).await?;
    load_working_set(rig, &world).await?;
    let watched = service_processes(rig, &service);
    let started = Instant::now();
    let load = Arc::new(OpenLoop::new(FAULT_RATE, Duration::from_secs(3600)));
    let health_stop = Arc::new(AtomicBool::new(false));
    let health_task = tokio::spawn(watch_health(
        service.channel().await?,
        started,
        Arc::clone(&health_stop),
    ));
    let load_task = {
        let (load, caller, mix) = (Arc::clone(&load), caller.clone(), fault.mix());
        tokio::spawn(async move { load.run(&caller, mix, started, &watched).await })
    };
    eprintln!("faults: {fault:?}: steady load at {FAULT_RATE}/s");
    tokio::time::sleep(BEFORE_FAULT).await;
    let fault_at = started.elapsed();
    // Process control blocks; block_in_place keeps the load and the health
    // poller running on the other worker meanwhile.
    tokio::task::block_in_place(|| match fault {
        Fault::RedisKilled => {
            rig.redis.kill();
            Ok(())
        }
        Fault::PostgresStopped => rig.postgres.stop_immediately(),
    })?;
    eprintln!("faults: {fault:?}: down at {:.1} s", fault_at.as_secs_f64());
    tokio::time::sleep(FAULT_DOWN).await;
    let restart_at = started.elapsed();
    tokio::task::block_in_place(|| match fault {
        Fault::RedisKilled => rig.redis.spawn(),
        Fault::PostgresStopped => rig.postgres.start_server(),
    })?;
    eprintln!("faults: {fault:?}: restarted at {:.1} s", restart_at.as_secs_f64());
    // Recovered: the fault's RPC answered again after the restart.
    let broken = fault.mix()[0];
    let recovered = loop {
        let first_ok = load.sink.lock().ok().and_then(|sink| {
            sink.iter()
                .filter(|o| o.rpc == broken && o.sent >= restart_at && o.answered())
                .map(|o| o.sent + o.latency)
                .min()
        });
        if first_ok.is_some() {
            break first_ok;
        }
        if started.elapsed() > restart_at + RECOVERY_LIMIT {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(AFTER_RECOVERY).await;
    load.stop.store(true, Ordering::Relaxed);
    let pass = load_task.await?;
    health_stop.store(true, Ordering::Relaxed);
    let health_log = health_task.await?;
    let times = FaultTimes {
        fault: fault_at,
        restart: restart_at,
        recovered,
    };
    let integrity = match fault {
        Fault::RedisKilled => {
            // Let the reconciler run a full pass over what was written since.
            tokio::time::sleep(Duration::from_secs(FAULT_RECONCILE_SECONDS * 2 + 1)).await;
            Some(check_integrity(rig, &caller).await?)
        }
        Fault::PostgresStopped => None,
    };
    let verdict = service.verdict();
    drop(service);
    report_fault(
        report,
        fault,
        &pass,
        &times,
        &health_log,
        integrity.as_deref(),
        &verdict,
    );
    Ok(())
}

fn seconds_after(at: Duration, since: Duration) -> String {
    format!("{:.0} ms", at.saturating_sub(since).as_secs_f64() * 1e3)
}

fn report_fault(
    report: &mut String,
    fault: Fault,
    pass: &Pass,
    times: &FaultTimes,
    health_log: &HealthLog,
    integrity: Option<&str>,
    verdict: &str,
) {
    let broken = fault.mix()[0];
    let end = times.recovered.unwrap_or(pass.wall);
    let phases = [
        ("before the fault", Duration::ZERO, times.fault),
        ("store down", times.fault, times.restart),
        ("restart → recovered", times.restart, end),
        ("after recovery", end, pass.wall),
    ];
    report.push_str(&format!(
        "#### {}\n\nLoad: {FAULT_RATE:.0} calls/s open loop, alternating {:?} / {:?}. The fault at {:.1} s, the restart at {:.1} s.\n\n",
        fault.name(),
        fault.mix()[0],
        fault.mix()[1],
        times.fault.as_secs_f64(),
        times.restart.as_secs_f64()
    ));
    report.push_str("| phase (by send time) | RPC | calls | answered | failed, by code | latency of answered p50 / p99 ms | latency of failed p50 / p99 / max ms |\n|---|---|---:|---:|---|---|---|\n");
    for (name, from, to) in phases {
        for rpc in fault.mix() {
            let calls: Vec<&Outcome> = pass
                .outcomes
                .iter()
                .filter(|o| o.rpc == *rpc && o.sent >= from && o.sent < to)
                .collect();
            let mut codes: BTreeMap<String, usize> = BTreeMap::new();
            for o in calls.iter().filter(|o| !o.answered()) {
                *codes.entry(format!("{:?}", o.code)).or_default() += 1;
            }
            let answered = Percentiles::of(calls.iter().filter(|o| o.answered()).map(|o| o.latency).collect());
            let failed = Percentiles::of(calls.iter().filter(|o| !o.answered()).map(|o| o.latency).collect());
            let codes_text = if codes.is_empty() {
                "none".to_owned()
            } else {
                codes
                    .iter()
                    .map(|(code, n)| format!("{code} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let failed_text = if failed.count == 0 {
                "-".to_owned()
            } else {
                format!(
                    "{:.2} / {:.2} / {:.1}",
                    failed.p50 / 1e3,
                    failed.p99 / 1e3,
                    failed.max / 1e3
                )
            };
            report.push_str(&format!(
                "| {name} | {rpc:?} | {} | {} | {codes_text} | {:.2} / {:.2} | {failed_text} |\n",
                calls.len(),
                answered.count,
                answered.p50 / 1e3,
                answered.p99 / 1e3
            ));
        }
    }
    let first_failure = pass
        .outcomes
        .iter()
        .filter(|o| o.rpc == broken && !o.answered() && o.sent >= times.fault)
        .map(|o| o.sent + o.latency)
        .min();
    let not_serving = health_log
        .iter()
        .find(|(at, status)| *at >= times.fault && *status != Some(ServingStatus::Serving))
        .map(|(at, _)| *at);
    let serving_again = health_log
        .iter()
        .find(|(at, status)| *at >= times.restart && *status == Some(ServingStatus::Serving))
        .map(|(at, _)| *at);
    let last_failure = pass
        .outcomes
        .iter()
        .filter(|o| o.rpc == broken && !o.answered() && o.sent >= times.restart)
        .map(|o| o.sent + o.latency)
        .max();
    let non_unavailable = pass
        .outcomes
        .iter()
        .filter(|o| !o.answered() && o.code != Code::Unavailable)
        .count();
    let or_never = |at: Option<Duration>, since: Duration| at.map_or("never".to_owned(), |at| seconds_after(at, since));
    report.push_str(&format!(
        "\n| moment | after |\n|---|---:|\n\
         | fault → first failed {broken:?} | {} |\n\
         | fault → health NOT_SERVING | {} |\n\
         | restart → health SERVING | {} |\n\
         | restart → first answered {broken:?} (recovered) | {} |\n\
         | restart → last failed {broken:?} | {} |\n\n",
        or_never(first_failure, times.fault),
        or_never(not_serving, times.fault),
        or_never(serving_again, times.restart),
        or_never(times.recovered, times.restart),
        last_failure.map_or("none after the restart".to_owned(), |at| seconds_after(
            at,
            times.restart
        )),
    ));
    let transitions: Vec<String> = health_log
        .iter()
        .map(|(at, status)| {
            format!(
                "{:.2} s {}",
                at.as_secs_f64(),
                status.map_or("no answer".to_owned(), |s| s.as_str_name().to_owned())
            )
        })
        .collect();
    report.push_str(&format!(
        "Health transitions (polled every {} ms): {}. Failures with a code other than UNAVAILABLE: {non_unavailable}. Sends skipped by the generator: {}.",
        HEALTH_POLL.as_millis(),
        transitions.join(" → "),
        pass.skipped
    ));
    if let Some(integrity) = integrity {
        report.push_str(&format!(" {integrity}"));
    }
    report.push_str(&format!(" Service: {verdict}.\n\n"));
}

/// After the Redis fault and a reconcile pass: every entry parses, every
/// live index member has its entry, and ListAffinities counts what is there.
async fn check_integrity(rig: &Rig, caller: &Caller) -> BenchResult<String> {
    let client = rig.client()?;
    let keys: Vec<String> = client
        .scan_buffered(format!("{KEY_PREFIX}*"), Some(1000), None)
        .map_ok(|key| key.as_str().unwrap_or_default().to_owned())
        .try_collect()
        .await?;
    let mut unparseable = 0;
    for chunk in keys.chunks(500) {
        let values: Vec<Option<String>> = client.mget(chunk.to_vec()).await?;
        unparseable += values
            .iter()
            .filter(|value| value.as_deref().and_then(AffinityRecord::from_json).is_none())
            .count();
    }
    let now = aether_control::domain::affinity::now_epoch().to_string();
    let members: Vec<String> = client
        .custom(
            cmd!("ZRANGEBYSCORE"),
            vec![format!("{OWN_PREFIX}idx:all"), now, "+inf".to_owned()],
        )
        .await?;
    let mut dangling = 0;
    for chunk in members.chunks(500) {
        let entry_keys: Vec<String> = chunk
            .iter()
            .filter_map(|member| AffinityKey::from_member(member).map(|key| key.redis_key()))
            .collect();
        let values: Vec<Option<String>> = client.mget(entry_keys).await?;
        dangling += values.iter().filter(|value| value.is_none()).count();
    }
    let listed = caller
        .affinity
        .clone()
        .list_affinities(ListAffinitiesRequest {
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner()
        .total_size;
    let consistent = unparseable == 0 && dangling == 0 && listed as usize == keys.len();
    Ok(format!(
        "Integrity after a reconcile pass: {} entries in Redis, {unparseable} unparseable; {} live index members, {dangling} without an entry; ListAffinities total_size {listed} ({}).",
        keys.len(),
        members.len(),
        if consistent { "consistent" } else { "**inconsistent**" }
    ))
}

async fn scenario_soak(rig: &Rig, settings: &Settings, world: Arc<World>, report: &mut String) -> BenchResult<()> {
    rig.flush().await?;
    let mut service = Service::start(rig, 10).await?;
    let caller = service.caller(Arc::clone(&world)).await?;
    load_working_set(rig, &world).await?;
    let watched = service_processes(rig, &service);
    let mix = [Rpc::GetAffinity, Rpc::SetAffinity];
    eprintln!("soak: measuring the saturating rate of the mix");
    let saturated = closed_loop(&caller, &mix, settings.concurrency, Duration::from_secs(5), &watched).await;
    let rate = saturated.rate() / 4.0;
    eprintln!("soak: {rate:.0} calls/s for {} s", settings.soak.as_secs());
    let load = Arc::new(OpenLoop::new(rate, settings.soak));
    let started = Instant::now();
    let load_task = {
        let (load, caller, watched) = (Arc::clone(&load), caller.clone(), watched.clone());
        tokio::spawn(async move { load.run(&caller, &mix, started, &watched).await })
    };
    let mut samples = Vec::new();
    let pid = service.pid();
    loop {
        let calls = load.sink.lock().map(|sink| sink.len()).unwrap_or(0);
        let clients = rig.info_field("clients", "connected_clients").await?;
        samples.push((
            started.elapsed(),
            rss_mb(pid).unwrap_or(0.0),
            open_fds(pid).unwrap_or(0),
            clients,
            calls,
        ));
        eprintln!(
            "  {:>4.0} s: RSS {:.1} MB",
            started.elapsed().as_secs_f64(),
            samples.last().map_or(0.0, |s| s.1)
        );
        if load_task.is_finished() || started.elapsed() >= settings.soak {
            break;
        }
        let next = (started.elapsed().as_secs_f64() / SOAK_SAMPLE_EVERY.as_secs_f64()).floor() as u32 + 1;
        let wake = started + (SOAK_SAMPLE_EVERY * next).min(settings.soak);
        tokio::time::sleep_until(wake.into()).await;
    }
    let pass = load_task.await?;
    let verdict = service.verdict();
    drop(service);
    report.push_str(&format!(
        "### Soak ({} s, open loop at {rate:.0} calls/s = 25% of the mix's saturating {:.0}/s, alternating GetAffinity / SetAffinity)\n\n",
        settings.soak.as_secs(),
        saturated.rate()
    ));
    report.push_str(
        "| at | service RSS MB | open fds | Redis connected_clients | calls so far |\n|---:|---:|---:|---:|---:|\n",
    );
    for (at, rss, fds, clients, calls) in &samples {
        report.push_str(&format!(
            "| {:.0} s | {rss:.1} | {fds} | {clients} | {calls} |\n",
            at.as_secs_f64()
        ));
    }
    let latency = pass.latency();
    let (first, last) = (samples.first(), samples.last());
    let rss_change = match (first, last) {
        (Some(first), Some(last)) => format!(
            "{:+.1} MB ({:+.1}%)",
            last.1 - first.1,
            (last.1 / first.1 - 1.0) * 100.0
        ),
        _ => "-".to_owned(),
    };
    let flat = |values: Vec<String>| values.windows(2).all(|pair| pair[0] == pair[1]);
    report.push_str(&format!(
        "\n{} calls at {:.0}/s achieved, {} failed, {} sends skipped; latency p50 / p99 / p99.9 / max {} ms. RSS start → end {rss_change}; open fds {}; Redis clients {}. CPU: {}. Service: {verdict}.\n\n",
        pass.outcomes.len(),
        pass.rate(),
        pass.failures(),
        pass.skipped,
        latency.millis(),
        if flat(samples.iter().map(|s| s.2.to_string()).collect()) { "flat" } else { "**changed**" },
        if flat(samples.iter().map(|s| s.3.clone()).collect()) { "flat" } else { "**changed**" },
        pass.cpu.text()
    ));
    Ok(())
}

/// Highest RSS of a process seen by a background poller.
struct PeakRss {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<f64>,
}

impl PeakRss {
    fn watch(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss_mb(pid).unwrap_or(0.0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        });
        Self { stop, task }
    }

    async fn peak(self) -> BenchResult<f64> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

async fn scenario_memory(rig: &Rig, world: Arc<World>, report: &mut String) -> BenchResult<()> {
    rig.flush().await?;
    let mut service = Service::start(rig, 10).await?;
    let pid = service.pid();
    let caller = service.caller(Arc::clone(&world)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_mb(pid).unwrap_or(0.0);
    let n = world.n;
    eprintln!("memory: idle RSS {idle:.1} MB; loading {n} entries");
    let load_time = load_working_set(rig, &world).await?;
    let redis_memory = rig.info_field("memory", "used_memory_human").await?;

    eprintln!("memory: waiting for the reconciler to index {n} entries");
    let indexing = PeakRss::watch(pid);
    let index_started = Instant::now();
    loop {
        let total = caller
            .affinity
            .clone()
            .list_affinities(ListAffinitiesRequest {
                page_size: 1,
                ..Default::default()
            })
            .await?
            .into_inner()
            .total_size;
        if total as usize >= n {
            break;
        }
        if index_started.elapsed() > INDEX_LIMIT {
            return Err(format!("only {total} of {n} entries indexed after {} s", INDEX_LIMIT.as_secs()).into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let index_time = index_started.elapsed();
    let indexing_peak = indexing.peak().await?;
    let after_index = rss_mb(pid).unwrap_or(0.0);

    eprintln!("memory: listing every entry, {LIST_PAGE_SIZE} per page");
    let listing = PeakRss::watch(pid);
    let list_started = Instant::now();
    let (mut token, mut listed, mut pages) = (String::new(), 0, Vec::new());
    loop {
        let page_started = Instant::now();
        let page = caller
            .affinity
            .clone()
            .list_affinities(ListAffinitiesRequest {
                page_size: LIST_PAGE_SIZE,
                page_token: token,
                ..Default::default()
            })
            .await?
            .into_inner();
        pages.push(page_started.elapsed());
        listed += page.affinities.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let list_time = list_started.elapsed();
    let listing_peak = listing.peak().await?;
    let after_list = rss_mb(pid).unwrap_or(0.0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let settled = rss_mb(pid).unwrap_or(0.0);
    let page_latency = Percentiles::of(pages);
    let verdict = service.verdict();
    drop(service);

    report.push_str(&format!(
        "### Memory ({n} entries)\n\n| moment | service RSS MB | Aether (Python, 1 worker) |\n|---|---:|---:|\n\
         | idle, 2 s after SERVING | {idle:.1} | {AETHER_RSS_IDLE_MB:.0} idle |\n\
         | peak while the reconciler indexed {n} entries ({:.0} s) | {indexing_peak:.1} | |\n\
         | after indexing | {after_index:.1} | |\n\
         | peak while listing all {listed} entries, {} pages of {LIST_PAGE_SIZE} ({:.1} s) | {listing_peak:.1} | {AETHER_RSS_100K_MB:.0} at 100k |\n\
         | right after listing | {after_list:.1} | |\n\
         | 10 s later | {settled:.1} | |\n\n\
         Loading {n} entries with pipelined `SET EX` took {:.1} s; Redis `used_memory` then {redis_memory}. \
         ListAffinities page of {LIST_PAGE_SIZE}: p50 / p99 / p99.9 / max {} ms. Listed {listed} of {n}{}. Service: {verdict}.\n\n",
        index_time.as_secs_f64(),
        page_latency.count,
        list_time.as_secs_f64(),
        load_time.as_secs_f64(),
        page_latency.millis(),
        if listed == n { "" } else { " (**mismatch**)" },
    ));
    Ok(())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let command = |program: &str, args: &[&str]| {
        run(Command::new(program).args(args))
            .map(|text| text.trim().to_owned())
            .unwrap_or_default()
    };
    format!(
        "| | |\n|---|---|\n| CPU | `nproc` = {}; model name \"{}\", {} MHz |\n| Kernel | `uname -r` = {} |\n| Redis | {} |\n| load average at start | {} |\n\n",
        command("nproc", &[]),
        field("model name"),
        field("cpu MHz"),
        command("uname", &["-r"]),
        command("redis-server", &["--version"]),
        load_average()
    )
}

const SCENARIOS: &[&str] = &["load", "faults", "soak", "memory"];

async fn run_all(selected: &[String], settings: &Settings) -> BenchResult<String> {
    let mut rig = Rig::start().await?;
    let working_set = Arc::new(World::new(WORKING_SET));
    let wants_memory = selected.iter().any(|s| s == "memory");
    let largest = Arc::new(World::new(if wants_memory {
        settings.memory_entries.max(WORKING_SET)
    } else {
        WORKING_SET
    }));
    // The migration runs at the service's first start; the rows go in after.
    drop(Service::start(&rig, 10).await?);
    eprintln!(
        "seeding PostgreSQL: {} users, {} API keys",
        largest.users.len(),
        largest.api_keys.len()
    );
    let db = sea_orm::Database::connect(rig.postgres.url()).await?;
    seed_database(&db, &largest, &KeyCipher::from_secret(None, false)?).await?;
    db.close().await?;

    let mut report = format!(
        "## Load, faults and soak (`benches/load.rs`) — run output\n\n{}",
        machine()
    );
    for scenario in selected {
        eprintln!("== {scenario} (load average {})", load_average());
        report.push_str(&format!("<!-- {scenario}: load average {} -->\n", load_average()));
        match scenario.as_str() {
            "load" => scenario_load(&rig, settings, Arc::clone(&working_set), &mut report).await?,
            "faults" => {
                report.push_str("### Faults under load\n\n");
                for fault in [Fault::RedisKilled, Fault::PostgresStopped] {
                    scenario_fault(&mut rig, fault, Arc::clone(&working_set), &mut report).await?;
                }
            }
            "soak" => scenario_soak(&rig, settings, Arc::clone(&working_set), &mut report).await?,
            "memory" => scenario_memory(&rig, Arc::clone(&largest), &mut report).await?,
            other => return Err(format!("unknown scenario {other:?}").into()),
        }
    }
    Ok(report)
}

#[tokio::main]
async fn main() -> ExitCode {
    let selected: Vec<String> = match std::env::args().skip(1).find(|arg| !arg.starts_with('-')) {
        None => SCENARIOS.iter().map(|&s| s.to_owned()).collect(),
        Some(arg) if arg == "all" => SCENARIOS.iter().map(|&s| s.to_owned()).collect(),
        Some(arg) => arg.split(',').map(str::to_owned).collect(),
    };
    let settings = (|| -> BenchResult<Settings> {
        Ok(Settings {
            concurrency: env_number("AETHER_CONTROL_LOAD_CONCURRENCY", 16)?,
            pass: Duration::from_secs(env_number("AETHER_CONTROL_LOAD_SECONDS", 10)?),
            soak: Duration::from_secs(env_number("AETHER_CONTROL_LOAD_SOAK_SECONDS", 300)?),
            memory_entries: env_number("AETHER_CONTROL_LOAD_MEMORY_ENTRIES", 1_000_000)?,
        })
    })();
    let result = match settings {
        Ok(settings) => tokio::select! {
            result = run_all(&selected, &settings) => result,
            _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
        },
        Err(error) => Err(error),
    };
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("load bench failed: {error}");
            ExitCode::FAILURE
        }
    }
}
