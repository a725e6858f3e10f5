//! Two instances on one Redis: events cross instances, and clear counts are
//! exact while the other instance keeps writing.

mod common;

use std::time::Duration;

use aether_control::proto::affinity_service_client::AffinityServiceClient;
use aether_control::proto::*;
use common::server::TestServer;

fn set_request(i: usize) -> SetAffinityRequest {
    SetAffinityRequest {
        affinity_key: format!("ak-{i}"),
        api_format: "CLAUDE".into(),
        global_model_id: "gm".into(),
        provider_id: "prov-shared".into(),
        endpoint_id: "ep".into(),
        key_id: "pk".into(),
        model_name: String::new(),
        ttl: None,
        ..Default::default()
    }
}

#[tokio::test]
async fn two_instances_share_events_and_count_clears_exactly() {
    let namespace = common::redis::namespace();
    let args = ["--redis-url", &common::redis::url(), "--redis-namespace", &namespace];
    let first = TestServer::start(&args).await;
    let second = TestServer::start(&args).await;
    let mut a = AffinityServiceClient::new(first.channel().await);
    let mut b = AffinityServiceClient::new(second.channel().await);

    // A change made through one instance reaches a watcher on the other.
    let mut events = b
        .watch_affinity_events(WatchAffinityEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.set_affinity(set_request(0)).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.affinity.unwrap().affinity_key, "ak-0");
    drop(events);

    // B writes 300 entries while A clears the provider: every entry is either
    // counted as deleted or still there, never both, never neither.
    let writer = tokio::spawn(async move {
        for i in 1..=300 {
            b.set_affinity(set_request(i)).await.unwrap();
        }
    });
    let mut deleted = 0;
    while !writer.is_finished() {
        let request = ClearProviderAffinitiesRequest {
            provider_id: "prov-shared".into(),
            dry_run: false,
        };
        deleted += a
            .clear_provider_affinities(request)
            .await
            .unwrap()
            .into_inner()
            .deleted_count;
    }
    writer.await.unwrap();
    let remaining = a
        .list_affinities(ListAffinitiesRequest {
            keyword: String::new(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let live = remaining.affinities.len() as i64;
    assert_eq!(deleted + live, 301, "deleted {deleted} + live {live}");
    let request = ClearAllAffinitiesRequest {
        confirm: true,
        dry_run: false,
    };
    assert_eq!(
        a.clear_all_affinities(request)
            .await
            .unwrap()
            .into_inner()
            .deleted_count,
        live
    );

    first.stop().await;
    second.stop().await;
    common::redis::cleanup(&common::redis::client().await, &namespace).await;
}

/// A periodic pass (the reconciler, the target watcher) runs on one instance
/// per period, on every tick of that instance's schedule; when it stops
/// ticking, another takes over within a period.
#[tokio::test]
async fn one_instance_runs_each_periodic_pass_on_every_tick() {
    use aether_control::store::AffinityStore;
    use aether_control::store::memory::MemoryAffinityStore;
    use aether_control::store::redis::RedisAffinityStore;
    use fred::prelude::*;

    let namespace = common::redis::namespace();
    let store = |instance: &'static str| {
        let namespace = namespace.clone();
        async move {
            let connection = common::redis::store_connection(&namespace).await;
            RedisAffinityStore::new(connection, instance, Duration::from_secs(10))
        }
    };
    let a = store("instance-a").await;
    let b = store("instance-b").await;

    // The lease ends before the holder's next tick: a lease as long as the
    // period, taken a round trip after a tick, could outlast the next one.
    let period = Duration::from_secs(1);
    assert!(a.claim_pass("target_watch", period).await.unwrap());
    let redis = common::redis::client().await;
    let lease = format!("{namespace}aether_control:target_watch:lease");
    let left: i64 = redis.pttl(&lease).await.unwrap();
    assert!((1..=900).contains(&left), "lease ends in {left} ms");
    let _: i64 = redis.del(&lease).await.unwrap();

    // On the server's schedule, `a` runs on every tick and `b` never beside it.
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut passes = Vec::new();
    for _ in 0..3 {
        ticks.tick().await;
        let by_a = a.claim_pass("target_watch", period).await.unwrap();
        let by_b = b.claim_pass("target_watch", period).await.unwrap();
        passes.push((by_a, by_b));
    }
    assert_eq!(passes, vec![(true, false); 3], "(a ran, b ran) per tick");
    // Each task has its own lease.
    assert!(b.claim_pass("reconcile", period).await.unwrap());

    // `a` stops ticking: `b` takes over once the lease lapses.
    tokio::time::sleep(period).await;
    assert!(b.claim_pass("target_watch", period).await.unwrap());
    assert!(!a.claim_pass("target_watch", period).await.unwrap());

    // The memory store is one process's own: every pass runs.
    let memory = MemoryAffinityStore::new(10);
    assert!(memory.claim_pass("target_watch", period).await.unwrap());
    assert!(memory.claim_pass("target_watch", period).await.unwrap());

    common::redis::cleanup(&redis, &namespace).await;
}
