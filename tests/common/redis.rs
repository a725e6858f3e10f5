//! Isolation on the shared test Redis: every test gets its own key
//! namespace and deletes it afterwards.

use fred::prelude::*;
use fred::types::Key;
use futures::TryStreamExt;

/// The test Redis (override with AETHER_CONTROL_TEST_REDIS_URL).
pub fn url() -> String {
    std::env::var("AETHER_CONTROL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

/// A fresh namespace such as `actl_test_1a2b3c:`.
pub fn namespace() -> String {
    format!("{}:", super::unique_name("actl_test"))
}

/// A plain client for arranging and checking data.
pub async fn client() -> Client {
    let client = Builder::from_config(Config::from_url(&url()).expect("redis url"))
        .build()
        .expect("redis client");
    client.init().await.expect("connect to test redis");
    client
}

/// Deletes every key under `namespace` (SCAN, never KEYS).
pub async fn cleanup(client: &Client, namespace: &str) {
    let keys: Vec<Key> = client
        .scan_buffered(format!("{namespace}*"), Some(500), None)
        .try_collect()
        .await
        .expect("scan test namespace");
    for chunk in keys.chunks(500) {
        let _: i64 = client.del(chunk.to_vec()).await.expect("delete test keys");
    }
}

/// The service's own Redis connection under `namespace`, connected (2
/// connections, 2 s command timeout).
pub async fn store_connection(namespace: &str) -> aether_control::store::redis::RedisConnection {
    let timeout = std::time::Duration::from_secs(2);
    let connection = aether_control::store::redis::RedisConnection::connect(&url(), 2, timeout, namespace)
        .expect("redis connection");
    assert!(
        connection.wait_connected(std::time::Duration::from_secs(5)).await,
        "redis reachable"
    );
    connection
}
