//! Runs the real server in-process on an ephemeral port.

use std::net::SocketAddr;

use aether_control::config::Config;
use aether_control::server::{self, StartError};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Service tokens every test server accepts, by scope.
pub mod tokens {
    use aether_control::auth::service_tokens::hash_hex;

    /// read only.
    pub const READ: &str = "test-read-token";
    /// write only.
    pub const WRITE: &str = "test-write-token";
    /// admin only.
    pub const ADMIN: &str = "test-admin-token";
    /// read + write + admin.
    pub const ALL: &str = "test-all-token";

    /// The `--service-tokens` value for them.
    pub fn config() -> String {
        [
            ("reader", "read", READ),
            ("writer", "write", WRITE),
            ("admin", "admin", ADMIN),
            ("all", "read+write+admin", ALL),
        ]
        .iter()
        .map(|(name, scopes, token)| format!("{name}:{scopes}:{}", hash_hex(token)))
        .collect::<Vec<_>>()
        .join(",")
    }
}

pub use super::bearer::{AuthedChannel, BearerToken};

/// A running server and what it needs to stop cleanly.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where the REST/JSON shim listens (nothing there with `--http-listen off`).
    http_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), StartError>>,
    _data_dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server with a fresh data dir, a fast health interval and
    /// `args` (flags as on the command line).
    pub async fn start(args: &[&str]) -> Self {
        let data_dir = tempfile::tempdir().expect("temp data dir");
        let dir = data_dir.path().to_str().expect("utf-8 temp path").to_owned();
        let mut argv = vec![
            "aether-control",
            "--data-dir",
            &dir,
            "--health-interval-ms",
            "100",
            "--store-timeout-ms",
            "500",
        ];
        // The REST shim gets a pre-bound ephemeral port (below) unless the
        // test configures it.
        if !args.contains(&"--http-listen") {
            argv.extend_from_slice(&["--http-listen", "127.0.0.1:0"]);
        }
        // The target watcher drops bindings to rows missing from a non-empty
        // table: only the tests of the watcher want it within a test's time.
        if !args.contains(&"--target-watch-interval-seconds") {
            argv.extend_from_slice(&["--target-watch-interval-seconds", "3600"]);
        }
        let token_config = tokens::config();
        argv.extend_from_slice(&["--service-tokens", &token_config]);
        argv.extend_from_slice(args);
        let config = Config::try_parse_from(argv).expect("test flags parse");
        config.validate().expect("test config is valid");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind ephemeral port");
        let addr = listener.local_addr().expect("local addr");
        let http_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind ephemeral HTTP port");
        let http_addr = http_listener.local_addr().expect("local HTTP addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server::serve(config, listener, Some(http_listener), async {
            let _ = rx.await;
        }));
        let server = Self {
            addr,
            http_addr,
            shutdown: Some(tx),
            handle,
            _data_dir: data_dir,
        };
        server.wait_answering().await;
        server
    }

    /// Waits until the gRPC server answers (its stores are open and
    /// migrated by then), whatever health it reports.
    async fn wait_answering(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Ok(channel) = Endpoint::from_shared(format!("http://{}", self.addr))
                .expect("endpoint")
                .connect()
                .await
            {
                let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
                if tonic_health::pb::health_client::HealthClient::new(channel)
                    .check(request)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            assert!(!self.handle.is_finished(), "the server stopped while starting");
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not answer within 20 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// Where the REST/JSON shim listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// A client channel to the server that sends a token with every scope.
    pub async fn channel(&self) -> AuthedChannel {
        InterceptedService::new(self.raw_channel().await, BearerToken(tokens::ALL))
    }

    /// A client channel without credentials.
    pub async fn raw_channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to test server")
    }

    /// Signals shutdown and waits for the drain to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let result = (&mut self.handle).await.expect("server task");
        result.expect("server stopped cleanly");
    }
}
