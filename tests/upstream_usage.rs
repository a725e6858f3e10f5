//! What affinities really save and bindings that heal themselves:
//! RecordUpstreamUsage totals (exact across two instances), failure outcomes
//! that drop exactly the guarded binding, the target watcher, the write
//! policy (success only, flapping guard), decision events with the caller's
//! trace id, and the in-memory store's cap.

mod common;

use std::time::{Duration, Instant};

use aether_control::proto::affinity_service_client::AffinityServiceClient;
use aether_control::proto::*;
use common::fixtures::{
    self, ALICE, ALICE_KEY_1, ALICE_KEY_2, ALPHA, ALPHA_ENDPOINT, ALPHA_KEY, BETA, BETA_ENDPOINT, BETA_KEY, BOB,
    BOB_KEY, MODEL,
};
use common::server::{AuthedChannel, TestServer};
use common::stores::SharedStores;
use sea_orm::{ConnectionTrait, Database};
use tonic::Code;

type Client = AffinityServiceClient<AuthedChannel>;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn set(affinity_key: &str, format: &str, provider: &str, endpoint: &str, key: &str) -> SetAffinityRequest {
    SetAffinityRequest {
        affinity_key: affinity_key.into(),
        api_format: format.into(),
        global_model_id: MODEL.into(),
        provider_id: provider.into(),
        endpoint_id: endpoint.into(),
        key_id: key.into(),
        ..Default::default()
    }
}

fn usage(provider: &str, endpoint: &str, key: &str, outcome: UpstreamOutcome) -> RecordUpstreamUsageRequest {
    RecordUpstreamUsageRequest {
        affinity_key: ALICE_KEY_1.into(),
        api_format: "CLAUDE".into(),
        global_model_id: MODEL.into(),
        provider_id: provider.into(),
        endpoint_id: endpoint.into(),
        key_id: key.into(),
        outcome: outcome.into(),
        input_tokens: 1000,
        cache_read_tokens: 600,
        cache_creation_tokens: 100,
    }
}

fn get(affinity_key: &str, format: &str) -> GetAffinityRequest {
    GetAffinityRequest {
        affinity_key: affinity_key.into(),
        api_format: format.into(),
        global_model_id: MODEL.into(),
    }
}

fn traced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().expect("ascii"));
    request
}

async fn stats(client: &mut Client) -> AffinityStats {
    client
        .get_affinity_stats(GetAffinityStatsRequest {})
        .await
        .expect("stats")
        .into_inner()
        .stats
        .expect("stats")
}

/// The next event of the stream, within a few seconds.
async fn next_event(events: &mut tonic::Streaming<WatchAffinityEventsResponse>) -> WatchAffinityEventsResponse {
    tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .expect("an event within 5 s")
        .expect("stream open")
        .expect("an event")
}

#[tokio::test]
async fn usage_is_exact_across_instances_and_failures_drop_only_the_guarded_binding() {
    let stores = SharedStores::create().await;
    let first = stores.start_server(&[]).await;
    let second = stores.start_server(&[]).await;
    fixtures::seed(&stores.database.url).await;
    let mut one = AffinityServiceClient::new(first.channel().await);
    let mut two = AffinityServiceClient::new(second.channel().await);
    let mut events = two
        .watch_affinity_events(WatchAffinityEventsRequest {
            affinity_key: ALICE_KEY_1.into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();

    one.set_affinity(set(ALICE_KEY_1, "CLAUDE", ALPHA, ALPHA_ENDPOINT, ALPHA_KEY))
        .await
        .expect("pin");
    assert_eq!(next_event(&mut events).await.r#type(), AffinityEventType::Created);

    // 2 x 40 successes, from both instances at once.
    let report = |client: &Client| {
        let mut client = client.clone();
        async move {
            for _ in 0..40 {
                let answer = client
                    .record_upstream_usage(usage(ALPHA, ALPHA_ENDPOINT, ALPHA_KEY, UpstreamOutcome::Success))
                    .await
                    .expect("report")
                    .into_inner();
                assert!(answer.binding_matched && !answer.invalidated);
                assert_eq!(answer.decision_reason, "success_keeps_binding");
            }
        }
    };
    tokio::join!(report(&one), report(&two));
    let totals = stats(&mut one).await.upstream.expect("upstream totals");
    assert_eq!(
        (
            totals.requests,
            totals.successes,
            totals.input_tokens,
            totals.cache_read_tokens,
            totals.cache_creation_tokens
        ),
        (80, 80, 80_000, 48_000, 8_000)
    );
    assert!((totals.cache_read_ratio - 0.6).abs() < 1e-12);
    let by_provider = stats(&mut two).await.upstream_by_provider;
    assert_eq!(by_provider.len(), 1);
    assert_eq!(by_provider[0].id, ALPHA);
    assert_eq!(by_provider[0].usage.as_ref().map(|u| u.requests), Some(80));

    // The binding carries its own totals in the operator's listing.
    let listed = two
        .list_user_affinities(ListUserAffinitiesRequest {
            user_identifier: "alice".into(),
        })
        .await
        .expect("list")
        .into_inner();
    let binding = listed.affinities[0].usage.as_ref().expect("binding usage");
    assert_eq!(binding.usage.as_ref().map(|u| u.requests), Some(80));
    assert_eq!(binding.last_outcome(), UpstreamOutcome::Success);

    // A failure of another target leaves the binding alone; so does a
    // client's own error on the pinned one.
    let moved = one
        .record_upstream_usage(usage(BETA, BETA_ENDPOINT, BETA_KEY, UpstreamOutcome::ServerError))
        .await
        .expect("report")
        .into_inner();
    assert!(!moved.binding_matched && !moved.invalidated);
    assert_eq!(moved.decision_reason, "binding_moved");
    let client_error = one
        .record_upstream_usage(usage(ALPHA, ALPHA_ENDPOINT, ALPHA_KEY, UpstreamOutcome::ClientError))
        .await
        .expect("report")
        .into_inner();
    assert!(client_error.binding_matched && !client_error.invalidated);
    assert_eq!(client_error.decision_reason, "client_error_keeps_binding");
    one.get_affinity(get(ALICE_KEY_1, "CLAUDE"))
        .await
        .expect("still pinned");

    // An auth failure of the pinned target drops it, with the reason, the
    // event and the caller's trace id.
    let dropped = two
        .record_upstream_usage(traced(usage(
            ALPHA,
            ALPHA_ENDPOINT,
            ALPHA_KEY,
            UpstreamOutcome::AuthError,
        )))
        .await
        .expect("report")
        .into_inner();
    assert!(dropped.invalidated);
    assert_eq!(dropped.decision_reason, "upstream_auth");
    assert_eq!(dropped.invalidated_affinity.map(|a| a.key_id), Some(ALPHA_KEY.into()));
    let status = one.get_affinity(get(ALICE_KEY_1, "CLAUDE")).await.expect_err("gone");
    assert_eq!(status.code(), Code::NotFound);
    let event = loop {
        let event = next_event(&mut events).await;
        if event.r#type() == AffinityEventType::Invalidated {
            break event;
        }
    };
    assert_eq!(event.reason(), InvalidationReason::UpstreamAuth);
    assert_eq!(event.trace_id, TRACE_ID);
    let after = stats(&mut two).await;
    assert_eq!(after.invalidations_by_reason.get("upstream_auth"), Some(&1));
    assert_eq!(
        after.upstream.map(|u| (u.requests, u.auth_errors, u.client_errors)),
        Some((83, 1, 1))
    );

    first.stop().await;
    second.stop().await;
    stores.drop().await;
}

#[tokio::test]
async fn bindings_to_disabled_rows_are_dropped_within_the_bound() {
    let stores = SharedStores::create().await;
    let server = stores.start_server(&["--target-watch-interval-seconds", "1"]).await;
    fixtures::seed(&stores.database.url).await;
    let mut client = AffinityServiceClient::new(server.channel().await);
    for request in [
        set(ALICE_KEY_1, "CLAUDE", ALPHA, ALPHA_ENDPOINT, ALPHA_KEY),
        set(ALICE_KEY_2, "CLAUDE", ALPHA, ALPHA_ENDPOINT, ALPHA_KEY),
        set(BOB_KEY, "OPENAI", BETA, BETA_ENDPOINT, BETA_KEY),
        set(ALICE_KEY_2, "OPENAI", BETA, BETA_ENDPOINT, BETA_KEY),
    ] {
        client.set_affinity(request).await.expect("pin");
    }
    let db = Database::connect(&stores.database.url).await.expect("connect");
    let watch_bound = Duration::from_secs(10);

    db.execute_unprepared(&format!(
        "UPDATE provider_api_keys SET is_active = false WHERE id = '{ALPHA_KEY}'"
    ))
    .await
    .expect("disable a provider key");
    let started = Instant::now();
    while client.get_affinity(get(ALICE_KEY_1, "CLAUDE")).await.is_ok()
        || client.get_affinity(get(ALICE_KEY_2, "CLAUDE")).await.is_ok()
    {
        assert!(
            started.elapsed() < watch_bound,
            "bindings to a disabled key still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (key, format) in [(BOB_KEY, "OPENAI"), (ALICE_KEY_2, "OPENAI")] {
        client
            .get_affinity(get(key, format))
            .await
            .expect("other key's binding stays");
    }

    db.execute_unprepared(&format!("UPDATE users SET is_active = false WHERE id = '{BOB}'"))
        .await
        .expect("disable a user");
    let started = Instant::now();
    while client.get_affinity(get(BOB_KEY, "OPENAI")).await.is_ok() {
        assert!(
            started.elapsed() < watch_bound,
            "binding of a disabled user still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .get_affinity(get(ALICE_KEY_2, "OPENAI"))
        .await
        .expect("another user's binding stays");

    db.execute_unprepared(&format!(
        "DELETE FROM api_keys WHERE user_id = '{ALICE}' AND id = '{ALICE_KEY_2}'"
    ))
    .await
    .expect("delete an API key");
    let started = Instant::now();
    while client.get_affinity(get(ALICE_KEY_2, "OPENAI")).await.is_ok() {
        assert!(
            started.elapsed() < watch_bound,
            "binding of a deleted API key still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A drop is counted just after its delete, so a read racing the last
    // one may not see it yet: wait for the counts, then check that no drop
    // is counted twice.
    let expected: [(&str, i64); 3] = [
        ("provider_key_inactive", 2),
        ("user_inactive", 1),
        ("api_key_inactive", 1),
    ];
    let started = Instant::now();
    loop {
        let by_reason = stats(&mut client).await.invalidations_by_reason;
        let seen = expected.map(|(reason, _)| (reason, by_reason.get(reason).copied().unwrap_or(0)));
        if seen == expected {
            break;
        }
        assert!(
            started.elapsed() < watch_bound,
            "drops counted {seen:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past the next watcher pass (every 1 s here), nothing more is counted.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let by_reason = stats(&mut client).await.invalidations_by_reason;
    assert_eq!(
        expected.map(|(reason, _)| (reason, by_reason.get(reason).copied().unwrap_or(0))),
        expected
    );

    server.stop().await;
    stores.drop().await;
}

/// Failures write nothing by default; the flapping guard caps switches.
async fn write_policy_holds(server: &TestServer) {
    let mut client = AffinityServiceClient::new(server.channel().await);
    let pin = set("ak-policy", "GEMINI", "p", "e1", "k");
    let created = client.set_affinity(pin.clone()).await.expect("pin").into_inner();
    assert_eq!(created.decision_reason, "no_live_binding");

    let failed = client
        .set_affinity(SetAffinityRequest {
            endpoint_id: "e-failing".into(),
            outcome: UpstreamOutcome::RateLimited.into(),
            ..pin.clone()
        })
        .await
        .expect("refused, not an error")
        .into_inner();
    assert_eq!(failed.outcome(), SetAffinityOutcome::Refused);
    assert_eq!(failed.decision_reason, "upstream_failure");
    assert_eq!(failed.affinity.map(|a| a.endpoint_id), Some("e1".into()));

    let capped = |endpoint: &str| SetAffinityRequest {
        endpoint_id: endpoint.into(),
        policy: Some(AffinityWritePolicy {
            max_switches_per_minute: Some(1),
            ..Default::default()
        }),
        ..pin.clone()
    };
    let switched = client.set_affinity(capped("e2")).await.expect("switch").into_inner();
    assert_eq!(switched.outcome(), SetAffinityOutcome::Switched);
    let refreshed = client.set_affinity(capped("e2")).await.expect("refresh").into_inner();
    assert_eq!(refreshed.outcome(), SetAffinityOutcome::Refreshed);
    let flapping = client.set_affinity(capped("e3")).await.expect("refused").into_inner();
    assert_eq!(flapping.outcome(), SetAffinityOutcome::Refused);
    assert_eq!(flapping.decision_reason, "flapping_guard");
    let kept = client.get_affinity(get("ak-policy", "GEMINI")).await.expect("kept");
    assert_eq!(kept.into_inner().affinity.map(|a| a.endpoint_id), Some("e2".into()));

    let status = client
        .set_affinity(SetAffinityRequest {
            policy: Some(AffinityWritePolicy {
                max_switches_per_minute: Some(-1),
                ..Default::default()
            }),
            ..pin.clone()
        })
        .await
        .expect_err("negative cap");
    assert_eq!(status.code(), Code::InvalidArgument);

    let refusals = stats(&mut client).await.refusals_by_reason;
    assert_eq!(
        (refusals.get("upstream_failure"), refusals.get("flapping_guard")),
        (Some(&1), Some(&1))
    );
}

#[tokio::test]
async fn write_policy_holds_in_memory() {
    let server = TestServer::start(&[]).await;
    write_policy_holds(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn write_policy_holds_on_redis() {
    let stores = SharedStores::create().await;
    let server = stores.start_server(&[]).await;
    write_policy_holds(&server).await;
    server.stop().await;
    stores.drop().await;
}

#[tokio::test]
async fn gets_stream_their_decision_with_the_trace_id() {
    let server = TestServer::start(&[]).await;
    let mut client = AffinityServiceClient::new(server.channel().await);
    let mut events = client
        .watch_affinity_events(WatchAffinityEventsRequest {
            types: vec![AffinityEventType::Followed.into(), AffinityEventType::Missed.into()],
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let status = client
        .get_affinity(traced(get("ak-trace", "CLAUDE")))
        .await
        .expect_err("miss");
    assert_eq!(status.code(), Code::NotFound);
    client
        .set_affinity(set("ak-trace", "CLAUDE", "p", "e", "k"))
        .await
        .expect("pin");
    client.get_affinity(get("ak-trace", "CLAUDE")).await.expect("hit");

    let missed = next_event(&mut events).await;
    assert_eq!(missed.r#type(), AffinityEventType::Missed);
    assert_eq!(
        (missed.decision_reason.as_str(), missed.trace_id.as_str()),
        ("no_live_binding", TRACE_ID)
    );
    assert_eq!(
        missed.affinity.map(|a| (a.affinity_key, a.endpoint_id)),
        Some(("ak-trace".into(), String::new()))
    );
    let followed = next_event(&mut events).await;
    assert_eq!(followed.r#type(), AffinityEventType::Followed);
    assert_eq!(
        (followed.decision_reason.as_str(), followed.trace_id.as_str()),
        ("live_binding", "")
    );
    server.stop().await;
}

#[tokio::test]
async fn the_memory_store_evicts_the_soonest_expiring_at_its_cap() {
    let server = TestServer::start(&["--memory-max-affinities", "3"]).await;
    let mut client = AffinityServiceClient::new(server.channel().await);
    for (key, ttl) in [("ak-a", 100), ("ak-b", 50), ("ak-c", 200), ("ak-d", 300)] {
        client
            .set_affinity(SetAffinityRequest {
                ttl: Some(prost_types::Duration { seconds: ttl, nanos: 0 }),
                ..set(key, "CLAUDE", "p", "e", "k")
            })
            .await
            .expect("pin");
    }
    let status = client.get_affinity(get("ak-b", "CLAUDE")).await.expect_err("evicted");
    assert_eq!(status.code(), Code::NotFound);
    for key in ["ak-a", "ak-c", "ak-d"] {
        client.get_affinity(get(key, "CLAUDE")).await.expect("kept");
    }
    let stats = stats(&mut client).await;
    assert_eq!((stats.evictions, stats.active_affinities), (1, 3));
    let config = client
        .get_affinity_config(GetAffinityConfigRequest {})
        .await
        .expect("config")
        .into_inner()
        .config
        .expect("config");
    assert_eq!(config.memory_max_affinities, 3);
    server.stop().await;
}
