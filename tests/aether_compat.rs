//! Affinities shared with a live Aether: values Aether writes are read and
//! refreshed by us, and values we write are byte-for-byte what Aether writes.

mod common;

use aether_control::proto::affinity_service_client::AffinityServiceClient;
use aether_control::proto::*;
use common::server::TestServer;
use fred::prelude::*;

/// What Aether's `json.dumps` produces for an entry.
fn aether_value(endpoint: &str, created_at: &str, expire_at: &str, count: i64) -> String {
    format!(
        r#"{{"provider_id": "prov-1", "endpoint_id": "{endpoint}", "key_id": "pk-1", "api_format": "OPENAI", "model_name": "gm-1", "created_at": {created_at}, "expire_at": {expire_at}, "request_count": {count}}}"#
    )
}

#[tokio::test]
async fn reads_and_refreshes_what_aether_wrote_and_writes_what_aether_reads() {
    let namespace = common::redis::namespace();
    let redis = common::redis::client().await;
    let server = TestServer::start(&["--redis-url", &common::redis::url(), "--redis-namespace", &namespace]).await;
    let mut client = AffinityServiceClient::new(server.channel().await);
    let key = format!("{namespace}cache_affinity:ak-aether:OPENAI:gm-1");

    // Aether wrote it (SETEX 300) with a float created_at of its own.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let created_at = format!("{:.6}", now - 10.0);
    let expire_at = format!("{:.6}", now + 290.0);
    let _: () = redis
        .set(
            &key,
            aether_value("ep-1", &created_at, &expire_at, 7),
            Some(Expiration::EX(300)),
            None,
            false,
        )
        .await
        .unwrap();

    let got = client
        .get_affinity(GetAffinityRequest {
            affinity_key: "ak-aether".into(),
            api_format: "openai".into(),
            global_model_id: "gm-1".into(),
        })
        .await
        .expect("reads Aether's entry")
        .into_inner()
        .affinity
        .unwrap();
    assert_eq!((got.endpoint_id.as_str(), got.request_count), ("ep-1", 7));

    // We refresh it: count + 1, Aether's created_at kept verbatim.
    let response = client
        .set_affinity(SetAffinityRequest {
            affinity_key: "ak-aether".into(),
            api_format: "OPENAI".into(),
            global_model_id: "gm-1".into(),
            provider_id: "prov-1".into(),
            endpoint_id: "ep-1".into(),
            key_id: "pk-1".into(),
            model_name: String::new(),
            ttl: None,
            ..Default::default()
        })
        .await
        .expect("refresh")
        .into_inner();
    assert_eq!(response.outcome(), SetAffinityOutcome::Refreshed);
    let stored: String = redis.get(&key).await.unwrap();
    let expire = response.affinity.unwrap().expire_at.unwrap();
    let expire_text =
        aether_control::domain::affinity::format_epoch(expire.seconds as f64 + f64::from(expire.nanos) / 1e9);
    let expected = aether_value("ep-1", &created_at, "EXPIRE", 8);
    let (before, after) = expected.split_once("EXPIRE").unwrap();
    assert!(stored.starts_with(before) && stored.ends_with(after), "stored {stored}");
    let stored_expire: f64 = stored[before.len()..stored.len() - after.len()]
        .parse()
        .expect("float expire_at");
    assert!((stored_expire - expire_text.parse::<f64>().unwrap()).abs() < 1e-5);
    let ttl: i64 = redis.ttl(&key).await.unwrap();
    assert!((299..=300).contains(&ttl), "SETEX-like TTL, got {ttl}");

    server.stop().await;
    common::redis::cleanup(&redis, &namespace).await;
}

#[tokio::test]
async fn entries_aether_wrote_are_indexed_by_the_reconciler_and_cleared() {
    use aether_control::proto::ListUserAffinitiesRequest;
    use common::fixtures::{self, ALICE_KEY_1, MODEL};

    let namespace = common::redis::namespace();
    let redis = common::redis::client().await;
    let dir = tempfile::tempdir().unwrap();
    let url = common::sqlite_url(&dir);
    let server = TestServer::start(&[
        "--database-url",
        &url,
        "--redis-url",
        &common::redis::url(),
        "--redis-namespace",
        &namespace,
        "--reconcile-interval-seconds",
        "1",
    ])
    .await;
    fixtures::seed(&url).await;
    let mut client = AffinityServiceClient::new(server.channel().await);

    // Aether writes an entry directly; none of our indexes know it yet.
    let key = format!("{namespace}cache_affinity:{ALICE_KEY_1}:CLAUDE:{MODEL}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let value = aether_value("ep-1", &format!("{now:.6}"), &format!("{:.6}", now + 300.0), 1);
    let _: () = redis
        .set(&key, value, Some(Expiration::EX(300)), None, false)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    loop {
        let request = ListUserAffinitiesRequest {
            user_identifier: "alice".into(),
        };
        let found = client.list_user_affinities(request).await.expect("list").into_inner();
        if found.affinities.len() == 1 {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "never indexed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    eprintln!("indexed {:?} after Aether wrote it", started.elapsed());

    let cleared = client
        .clear_user_affinities(ClearUserAffinitiesRequest {
            user_identifier: "alice".into(),
            dry_run: false,
        })
        .await
        .expect("clear")
        .into_inner();
    assert_eq!(cleared.deleted_count, 1);
    let exists: i64 = redis.exists(&key).await.unwrap();
    assert_eq!(exists, 0, "Aether's entry is gone");

    server.stop().await;
    common::redis::cleanup(&redis, &namespace).await;
}

/// A pass longer than a third of the interval renews its lease; when it ends
/// the lease must end where the claim put it, not a lease after the last
/// renewal, or the holder's next tick (one interval on) is skipped.
#[tokio::test]
async fn a_long_reconcile_pass_leaves_its_lease_ending_where_the_claim_put_it() {
    use std::time::Duration;

    use aether_control::domain::affinity::now_epoch;
    use aether_control::store::AffinityStore;
    use aether_control::store::redis::RedisAffinityStore;

    const ENTRIES: u64 = 10_000;
    let namespace = common::redis::namespace();
    let redis = common::redis::client().await;
    let connection = common::redis::store_connection(&namespace).await;
    // A 600 ms interval: the lease lasts 540 ms, and a pass renews it after
    // a SCAN page (500 entries, about 90 ms in a debug build) once 200 ms
    // have passed since the last renewal.
    let interval = Duration::from_millis(600);
    let store = RedisAffinityStore::new(connection, "long-pass", interval);
    let now = now_epoch();
    let value = aether_value("ep-1", &format!("{now:.6}"), &format!("{:.6}", now + 300.0), 1);
    let pipeline = redis.pipeline();
    for i in 0..ENTRIES {
        let key = format!("{namespace}cache_affinity:ak-{i}:OPENAI:gm-1");
        let _: () = pipeline
            .set(key, value.as_str(), Some(Expiration::EX(300)), None, false)
            .await
            .unwrap();
    }
    let _: Vec<Value> = pipeline.all().await.unwrap();

    let started = std::time::Instant::now();
    assert_eq!(store.reconcile(now).await.unwrap(), ENTRIES);
    let took = started.elapsed();
    // The premise: the pass outlasted its lease (so it renewed it).
    assert!(took > interval, "the pass took only {took:?}");
    let left: i64 = redis
        .pttl(format!("{namespace}aether_control:reconcile:lease"))
        .await
        .unwrap();
    assert_eq!(left, -2, "the lease outlived the pass by {left} ms");

    common::redis::cleanup(&redis, &namespace).await;
}

#[tokio::test]
async fn the_reconciler_rereads_only_unindexed_or_soon_expiring_entries() {
    use std::time::Duration;

    use aether_control::domain::affinity::{IndexRef, now_epoch};
    use aether_control::store::AffinityStore;
    use aether_control::store::redis::RedisAffinityStore;

    let namespace = common::redis::namespace();
    let redis = common::redis::client().await;
    let connection = common::redis::store_connection(&namespace).await;
    // A 5 s interval: entries indexed to expire within 10 s are read again.
    let store = RedisAffinityStore::new(connection, "reconcile-test", Duration::from_secs(5));
    let lease = format!("{namespace}aether_control:reconcile:lease");
    let all = format!("{namespace}aether_control:idx:all");
    let now = now_epoch();
    let write_as_aether = |affinity_key: &'static str, expire_at: f64| {
        let redis = redis.clone();
        let key = format!("{namespace}cache_affinity:{affinity_key}:OPENAI:gm-1");
        let value = aether_value("ep-1", &format!("{now:.6}"), &format!("{expire_at:.6}"), 1);
        async move {
            let ttl = (expire_at - now).ceil() as i64;
            let _: () = redis
                .set(key, value, Some(Expiration::EX(ttl)), None, false)
                .await
                .unwrap();
        }
    };
    let indexed_expiry = |affinity_key: &'static str| {
        let redis = redis.clone();
        let all = all.clone();
        async move {
            let score: Option<f64> = redis.zscore(all, format!("{affinity_key}:OPENAI:gm-1")).await.unwrap();
            score
        }
    };
    let parsed = |expire_at: f64| format!("{expire_at:.6}").parse::<f64>().unwrap();

    // Aether wrote one entry about to expire and one far from it.
    write_as_aether("ak-soon", now + 3.0).await;
    write_as_aether("ak-far", now + 300.0).await;
    assert_eq!(store.reconcile(now).await.unwrap(), 2);
    // The lease holds the next pass off for most of an interval.
    write_as_aether("ak-new", now + 300.0).await;
    assert_eq!(store.reconcile(now).await.unwrap(), 0);
    assert_eq!(indexed_expiry("ak-new").await, None);

    // Aether refreshes both, and an index member outlived its entry.
    write_as_aether("ak-soon", now + 600.0).await;
    write_as_aether("ak-far", now + 900.0).await;
    let _: i64 = redis
        .zadd(&all, None, None, false, false, (now - 10.0, "ak-gone:OPENAI:gm-1"))
        .await
        .unwrap();
    let _: i64 = redis.del(&lease).await.unwrap();
    assert_eq!(store.reconcile(now).await.unwrap(), 1, "only ak-new is new");
    // The entry due to expire was read again and now carries its new expiry
    // in every index; the other keeps its indexed one until it comes due.
    assert_eq!(indexed_expiry("ak-soon").await, Some(parsed(now + 600.0)));
    assert_eq!(indexed_expiry("ak-far").await, Some(parsed(now + 300.0)));
    assert_eq!(indexed_expiry("ak-new").await, Some(parsed(now + 300.0)));
    assert_eq!(indexed_expiry("ak-gone").await, None, "expired members are dropped");
    let listed = store
        .list_indexed(&[IndexRef::AffinityKey("ak-soon".into())], now)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].record.expire_at, parsed(now + 600.0));

    // Another instance's lease is never taken over.
    let _: () = redis.set(&lease, "other-instance", None, None, false).await.unwrap();
    write_as_aether("ak-later", now + 300.0).await;
    assert_eq!(store.reconcile(now).await.unwrap(), 0);
    assert_eq!(indexed_expiry("ak-later").await, None);

    common::redis::cleanup(&redis, &namespace).await;
}
