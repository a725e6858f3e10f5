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
