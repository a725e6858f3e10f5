//! Shared test support: real stores, isolated per test.
#![allow(dead_code)]

pub mod bearer;
pub mod cluster;
pub mod fixtures;
pub mod jwt;
pub mod pg;
pub mod proxy;
pub mod redis;
pub mod rows;
pub mod server;
pub mod stores;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A name unique across concurrent tests and test processes, led by the
/// run id that scripts/test.sh sets (so it can clean up after a killed run),
/// e.g. `actl_test_5f3a2c_18c3f2a1b4e2_4e21_0`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let run = std::env::var("AETHER_CONTROL_TEST_RUN_ID").unwrap_or_else(|_| "adhoc".to_owned());
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!(
        "{prefix}_{run}_{micros:x}_{:x}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `host[:port]` of a store URL, without credentials.
pub fn authority(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or("");
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority.rsplit('@').next().unwrap_or(authority).to_owned()
}

/// The socket address of a store URL, with `default_port` when it names none.
pub fn store_address(url: &str, default_port: u16) -> std::net::SocketAddr {
    let host_port = authority(url);
    let with_port = if host_port.contains(':') {
        host_port
    } else {
        format!("{host_port}:{default_port}")
    };
    std::net::ToSocketAddrs::to_socket_addrs(&with_port)
        .expect("resolvable")
        .next()
        .expect("an address")
}

/// An SQLite database file in `dir` (created on first connect).
pub fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}?mode=rwc", dir.path().join("aether.db").display())
}
