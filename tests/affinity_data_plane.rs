//! The affinity data plane over real gRPC, one suite run against the memory
//! store and against the real Redis.

mod common;

use std::time::Duration;

use aether_control::proto::affinity_service_client::AffinityServiceClient;
use aether_control::proto::*;
use common::server::{AuthedChannel, TestServer};
use tonic::Code;
use tonic_types::StatusExt;

fn set_request(key: &str, endpoint: &str) -> SetAffinityRequest {
    SetAffinityRequest {
        affinity_key: key.into(),
        api_format: "claude".into(),
        global_model_id: "gm-1".into(),
        provider_id: "prov-1".into(),
        endpoint_id: endpoint.into(),
        key_id: "pk-1".into(),
        model_name: String::new(),
        ttl: None,
        ..Default::default()
    }
}

fn get_request(key: &str) -> GetAffinityRequest {
    GetAffinityRequest {
        affinity_key: key.into(),
        api_format: "CLAUDE".into(),
        global_model_id: "gm-1".into(),
    }
}

async fn data_plane_suite(channel: AuthedChannel) {
    let mut client = AffinityServiceClient::new(channel);

    // Missing: NOT_FOUND with ResourceInfo.
    let status = client.get_affinity(get_request("ak-1")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.get_error_details().resource_info().is_some());

    // Create, refresh (count + 1, created_at kept), switch (count 1).
    let created = client
        .set_affinity(set_request("ak-1", "ep-1"))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(created.outcome(), SetAffinityOutcome::Created);
    let first = created.affinity.expect("affinity");
    assert_eq!(
        (
            first.request_count,
            first.api_format.as_str(),
            first.model_name.as_str()
        ),
        (1, "CLAUDE", "gm-1")
    );
    let ttl = first.expire_at.as_ref().unwrap().seconds - first.created_at.as_ref().unwrap().seconds;
    assert!((299..=300).contains(&ttl), "default TTL is Aether's 300 s, got {ttl}");

    let refreshed = client
        .set_affinity(set_request("ak-1", "ep-1"))
        .await
        .expect("refresh")
        .into_inner();
    assert_eq!(refreshed.outcome(), SetAffinityOutcome::Refreshed);
    let second = refreshed.affinity.expect("affinity");
    assert_eq!(second.request_count, 2);
    assert_eq!(second.created_at, first.created_at);

    let switched = client
        .set_affinity(set_request("ak-1", "ep-2"))
        .await
        .expect("switch")
        .into_inner();
    assert_eq!(switched.outcome(), SetAffinityOutcome::Switched);
    assert_eq!(switched.affinity.as_ref().unwrap().request_count, 1);
    assert_eq!(switched.previous.as_ref().unwrap().endpoint_id, "ep-1");

    let got = client
        .get_affinity(get_request("ak-1"))
        .await
        .expect("get")
        .into_inner()
        .affinity
        .unwrap();
    assert_eq!((got.endpoint_id.as_str(), got.request_count), ("ep-2", 1));

    // Guards: a stale endpoint does not delete; the pinned one does.
    let mut invalidate = InvalidateAffinityRequest {
        affinity_key: "ak-1".into(),
        api_format: "claude".into(),
        global_model_id: "gm-1".into(),
        endpoint_id: Some("ep-1".into()),
        key_id: Some("pk-1".into()),
        provider_id: None,
        reason: InvalidationReason::UpstreamRateLimit.into(),
    };
    let kept = client
        .invalidate_affinity(invalidate.clone())
        .await
        .expect("guarded")
        .into_inner();
    assert!(!kept.deleted);
    invalidate.endpoint_id = Some("ep-2".into());
    let deleted = client
        .invalidate_affinity(invalidate.clone())
        .await
        .expect("invalidate")
        .into_inner();
    assert!(deleted.deleted);
    assert_eq!(deleted.affinity.unwrap().endpoint_id, "ep-2");
    assert_eq!(
        client.get_affinity(get_request("ak-1")).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(
        !client
            .invalidate_affinity(invalidate)
            .await
            .expect("again")
            .into_inner()
            .deleted
    );

    // Sliding TTL: a 1 s entry is gone after it lapses.
    let mut short = set_request("ak-ttl", "ep-1");
    short.ttl = Some(prost_types::Duration { seconds: 1, nanos: 0 });
    client.set_affinity(short).await.expect("short ttl");
    client.get_affinity(get_request("ak-ttl")).await.expect("live");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        client.get_affinity(get_request("ak-ttl")).await.unwrap_err().code(),
        Code::NotFound
    );

    // Glob characters are plain data: they match only themselves.
    client
        .set_affinity(set_request("ak-*", "ep-1"))
        .await
        .expect("glob key is data");
    assert_eq!(
        client.get_affinity(get_request("ak-?")).await.unwrap_err().code(),
        Code::NotFound
    );
    client.get_affinity(get_request("ak-*")).await.expect("exact glob key");
}

async fn bad_input_suite(channel: AuthedChannel) {
    let mut client = AffinityServiceClient::new(channel);
    let cases: Vec<(SetAffinityRequest, &str)> = vec![
        (
            SetAffinityRequest {
                affinity_key: String::new(),
                ..set_request("x", "e")
            },
            "affinity_key",
        ),
        (
            SetAffinityRequest {
                affinity_key: "a:b".into(),
                ..set_request("x", "e")
            },
            "affinity_key",
        ),
        (
            SetAffinityRequest {
                affinity_key: "k".repeat(300),
                ..set_request("x", "e")
            },
            "affinity_key",
        ),
        (
            SetAffinityRequest {
                api_format: "COBOL".into(),
                ..set_request("x", "e")
            },
            "api_format",
        ),
        (
            SetAffinityRequest {
                endpoint_id: String::new(),
                ..set_request("x", "e")
            },
            "endpoint_id",
        ),
        (
            SetAffinityRequest {
                ttl: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
                ..set_request("x", "e")
            },
            "ttl",
        ),
        (
            SetAffinityRequest {
                ttl: Some(prost_types::Duration { seconds: -5, nanos: 0 }),
                ..set_request("x", "e")
            },
            "ttl",
        ),
    ];
    for (request, field) in cases {
        let status = client.set_affinity(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let details = status.get_error_details();
        let violations = &details.bad_request().expect("BadRequest detail").field_violations;
        assert_eq!(violations[0].field, field);
    }
}

#[tokio::test]
async fn memory_store_serves_the_data_plane() {
    let server = TestServer::start(&[]).await;
    data_plane_suite(server.channel().await).await;
    bad_input_suite(server.channel().await).await;
    server.stop().await;
}

#[tokio::test]
async fn redis_store_serves_the_data_plane() {
    let namespace = common::redis::namespace();
    let server = TestServer::start(&["--redis-url", &common::redis::url(), "--redis-namespace", &namespace]).await;
    data_plane_suite(server.channel().await).await;
    bad_input_suite(server.channel().await).await;
    server.stop().await;
    common::redis::cleanup(&common::redis::client().await, &namespace).await;
}
