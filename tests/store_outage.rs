//! Store outages: health turns NOT_SERVING within seconds, calls fail fast
//! with UNAVAILABLE, and everything recovers by itself. The real stores stay
//! up for other tests; a cuttable proxy makes them unreachable for this one.

mod common;

use std::time::{Duration, Instant};

use aether_control::proto::affinity_service_client::AffinityServiceClient;
use aether_control::proto::user_service_client::UserServiceClient;
use aether_control::proto::*;
use common::proxy::CuttableProxy;
use common::server::AuthedChannel;
use common::server::TestServer;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

async fn status_of(channel: &AuthedChannel, service: &str) -> ServingStatus {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check answers");
    response.into_inner().status()
}

/// Polls until `service` reports `want`; returns how long it took.
async fn wait_for_status(channel: &AuthedChannel, service: &str, want: ServingStatus) -> Duration {
    let started = Instant::now();
    while status_of(channel, service).await != want {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{service:?} never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

fn set_request() -> SetAffinityRequest {
    SetAffinityRequest {
        affinity_key: "ak".into(),
        api_format: "GEMINI".into(),
        global_model_id: "gm".into(),
        provider_id: "p".into(),
        endpoint_id: "e".into(),
        key_id: "k".into(),
        model_name: String::new(),
        ttl: None,
        ..Default::default()
    }
}

#[tokio::test]
async fn redis_outage_is_reported_and_recovered() {
    let proxy = CuttableProxy::start(common::store_address(&common::redis::url(), 6379)).await;
    let namespace = common::redis::namespace();
    let url = format!("redis://{}/0", proxy.addr);
    let server = TestServer::start(&["--redis-url", &url, "--redis-namespace", &namespace]).await;
    let channel = server.channel().await;
    let affinity = affinity_service_server_name();
    wait_for_status(&channel, "", ServingStatus::Serving).await;
    let mut client = AffinityServiceClient::new(channel.clone());
    client.set_affinity(set_request()).await.expect("works while up");

    proxy.cut();
    let took = wait_for_status(&channel, affinity, ServingStatus::NotServing).await;
    assert_eq!(status_of(&channel, "").await, ServingStatus::NotServing);
    // The database-backed services stay up.
    assert_eq!(
        status_of(&channel, "aether.control.v1.UserService").await,
        ServingStatus::Serving
    );
    eprintln!("NOT_SERVING {took:?} after the cut");

    let started = Instant::now();
    let status = client.set_affinity(set_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "fails fast, took {:?}",
        started.elapsed()
    );
    assert!(status.get_error_details().retry_info().is_some());
    assert!(
        !status.message().contains(&proxy.addr.to_string()),
        "no internals leak: {}",
        status.message()
    );

    proxy.restore();
    let took = wait_for_status(&channel, "", ServingStatus::Serving).await;
    eprintln!("SERVING again {took:?} after the restore");
    client.set_affinity(set_request()).await.expect("works again");

    server.stop().await;
    common::redis::cleanup(&common::redis::client().await, &namespace).await;
}

#[tokio::test]
async fn database_outage_is_reported_and_recovered() {
    let database = common::pg::TestDatabase::create().await;
    let proxy = CuttableProxy::start(common::store_address(&database.url, 5432)).await;
    let url = database
        .url
        .replacen(&common::authority(&database.url), &proxy.addr.to_string(), 1);
    let server = TestServer::start(&["--database-url", &url, "--db-migrate", "always"]).await;
    let channel = server.channel().await;
    wait_for_status(&channel, "", ServingStatus::Serving).await;

    proxy.partition();
    wait_for_status(&channel, "", ServingStatus::NotServing).await;
    assert_eq!(
        status_of(&channel, "aether.control.v1.UserService").await,
        ServingStatus::NotServing
    );
    // The memory affinity store does not depend on the database.
    assert_eq!(
        status_of(&channel, affinity_service_server_name()).await,
        ServingStatus::Serving
    );
    // Once the probe has found it down, a call that needs the database
    // fails at once instead of waiting out the store timeout (500 ms here).
    let mut users = UserServiceClient::new(channel.clone());
    let resolve = || ResolveUserRequest {
        identifier: "nobody".into(),
    };
    for _ in 0..5 {
        let started = Instant::now();
        let status = users.resolve_user(resolve()).await.expect_err("database down");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "UNAVAILABLE after {:?}",
            started.elapsed()
        );
    }

    proxy.restore();
    wait_for_status(&channel, "", ServingStatus::Serving).await;
    let answered = users.resolve_user(resolve()).await;
    assert_ne!(answered.err().map(|s| s.code()), Some(Code::Unavailable), "recovered");
    server.stop().await;
    database.drop().await;
}

fn affinity_service_server_name() -> &'static str {
    aether_control::proto::affinity_service_server::SERVICE_NAME
}
