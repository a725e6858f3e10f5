//! AffinityService operator calls over real gRPC, one suite run on the
//! embedded default (memory + SQLite) and on Redis + PostgreSQL, with an
//! Aether world in the database.

mod common;

use std::time::Duration;

use aether_control::proto::affinity_service_client::AffinityServiceClient;
use aether_control::proto::*;
use common::fixtures::{self, *};
use common::server::{AuthedChannel, TestServer};
use tonic::Code;

type Client = AffinityServiceClient<AuthedChannel>;

async fn pin(client: &mut Client, api_key: &str, format: &str, provider: &str, endpoint: &str, key: &str) -> Affinity {
    let request = SetAffinityRequest {
        affinity_key: api_key.into(),
        api_format: format.into(),
        global_model_id: MODEL.into(),
        provider_id: provider.into(),
        endpoint_id: endpoint.into(),
        key_id: key.into(),
        model_name: String::new(),
        ttl: None,
        ..Default::default()
    };
    client
        .set_affinity(request)
        .await
        .expect("set affinity")
        .into_inner()
        .affinity
        .expect("affinity")
}

/// Four affinities: alice has three (two keys), bob one; alpha serves three.
async fn pin_world(client: &mut Client) {
    pin(client, ALICE_KEY_1, "CLAUDE", ALPHA, ALPHA_ENDPOINT, ALPHA_KEY).await;
    pin(client, ALICE_KEY_1, "OPENAI", BETA, BETA_ENDPOINT, BETA_KEY).await;
    pin(client, ALICE_KEY_2, "CLAUDE", ALPHA, ALPHA_ENDPOINT, ALPHA_KEY).await;
    pin(client, BOB_KEY, "CLAUDE", ALPHA, ALPHA_ENDPOINT, ALPHA_KEY).await;
}

async fn list(client: &mut Client, keyword: &str, page_size: i32, page_token: &str) -> ListAffinitiesResponse {
    let request = ListAffinitiesRequest {
        keyword: keyword.into(),
        page_size,
        page_token: page_token.into(),
        offset: 0,
    };
    client
        .list_affinities(request)
        .await
        .expect("list affinities")
        .into_inner()
}

async fn user_affinities(client: &mut Client, identifier: &str) -> ListUserAffinitiesResponse {
    let request = ListUserAffinitiesRequest {
        user_identifier: identifier.into(),
    };
    client
        .list_user_affinities(request)
        .await
        .expect("list user affinities")
        .into_inner()
}

async fn listing_suite(client: &mut Client) {
    pin_world(client).await;

    // Any identifier of alice finds her three affinities, enriched.
    for (identifier, kind) in [
        (ALICE, UserMatchKind::UserId),
        ("alice", UserMatchKind::Username),
        ("  alice@example.com ", UserMatchKind::Email),
        (ALICE_KEY_2, UserMatchKind::ApiKeyId),
    ] {
        let found = user_affinities(client, identifier).await;
        let user = found.user.expect("resolved user");
        assert_eq!(
            (user.user_id.as_str(), user.matched_by()),
            (ALICE, kind),
            "{identifier}"
        );
        assert_eq!(found.affinities.len(), 3, "{identifier}");
        assert_eq!(found.total_endpoints, 2);
    }
    let found = user_affinities(client, "alice").await;
    let detail = found
        .affinities
        .iter()
        .find(|d| d.affinity.as_ref().unwrap().api_format == "OPENAI")
        .unwrap();
    assert_eq!(detail.username, "alice");
    assert_eq!(detail.email, "alice@example.com");
    assert_eq!(detail.user_api_key_name, "alice laptop");
    assert_eq!(detail.user_api_key_prefix, "sk-alice********0001");
    assert_eq!(detail.provider_name, "Beta AI");
    assert_eq!(detail.endpoint_url, "https://prov-beta.example/v1");
    assert_eq!(detail.key_name, "prov-beta key");
    assert_eq!(detail.key_prefix, "sk-upstr********0222");
    assert_eq!(detail.rate_multiplier, 1.5);
    assert_eq!(
        (detail.global_model_name.as_str(), detail.model_display_name.as_str()),
        ("claude-sonnet-4", "Claude Sonnet 4")
    );
    let expiries: Vec<i64> = found
        .affinities
        .iter()
        .map(|d| d.affinity.as_ref().unwrap().expire_at.unwrap().seconds)
        .collect();
    assert!(
        expiries.windows(2).all(|w| w[0] >= w[1]),
        "newest expiry first: {expiries:?}"
    );

    let missing = client
        .list_user_affinities(ListUserAffinitiesRequest {
            user_identifier: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // Pages of two, then the rest; the token carries on.
    let first = list(client, "", 2, "").await;
    assert_eq!((first.affinities.len(), first.total_size), (2, 4));
    assert!(!first.next_page_token.is_empty());
    let second = list(client, "", 2, &first.next_page_token).await;
    assert_eq!(second.affinities.len(), 2);
    assert!(second.next_page_token.is_empty());
    let mut seen: Vec<String> = first
        .affinities
        .iter()
        .chain(&second.affinities)
        .map(|d| {
            let a = d.affinity.as_ref().unwrap();
            format!("{}:{}", a.affinity_key, a.api_format)
        })
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "every entry exactly once");

    // Keywords: an API key id, a user, then free text (case-insensitive).
    let by_key = list(client, BOB_KEY, 0, "").await;
    assert_eq!(
        (
            by_key.total_size,
            by_key.matched_api_key_id.as_str(),
            by_key.matched_user_id.as_str()
        ),
        (1, BOB_KEY, BOB)
    );
    let by_user = list(client, "alice", 0, "").await;
    assert_eq!((by_user.total_size, by_user.matched_user_id.as_str()), (3, ALICE));
    let by_text = list(client, "BETA", 0, "").await;
    assert_eq!(by_text.total_size, 1, "provider id substring");
    let by_key_name = list(client, "LAPTOP", 0, "").await;
    assert_eq!(by_key_name.total_size, 2, "API key name substring");
    assert_eq!(
        list(client, "*", 0, "").await.total_size,
        0,
        "glob characters are plain text"
    );
    assert_eq!(
        list(client, "%", 0, "").await.total_size,
        0,
        "SQL wildcards are plain text"
    );

    // Bad paging input.
    let too_big = ListAffinitiesRequest {
        page_size: 1001,
        ..Default::default()
    };
    assert_eq!(
        client.list_affinities(too_big).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let other_query = ListAffinitiesRequest {
        keyword: "alice".into(),
        page_token: first.next_page_token.clone(),
        ..Default::default()
    };
    assert_eq!(
        client.list_affinities(other_query).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

async fn clearing_suite(client: &mut Client) {
    // Delete one: only with its endpoint.
    let wrong = DeleteAffinityRequest {
        affinity_key: BOB_KEY.into(),
        endpoint_id: BETA_ENDPOINT.into(),
        global_model_id: MODEL.into(),
        api_format: "claude".into(),
    };
    assert_eq!(
        client.delete_affinity(wrong.clone()).await.unwrap_err().code(),
        Code::NotFound
    );
    let right = DeleteAffinityRequest {
        endpoint_id: ALPHA_ENDPOINT.into(),
        ..wrong
    };
    let deleted = client
        .delete_affinity(right.clone())
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.affinity.unwrap().endpoint_id, ALPHA_ENDPOINT);
    assert_eq!(client.delete_affinity(right).await.unwrap_err().code(), Code::NotFound);

    // Clear a user: dry run counts, nothing goes; then for real.
    let dry = ClearUserAffinitiesRequest {
        user_identifier: "alice@example.com".into(),
        dry_run: true,
    };
    assert_eq!(
        client
            .clear_user_affinities(dry)
            .await
            .unwrap()
            .into_inner()
            .deleted_count,
        3
    );
    assert_eq!(user_affinities(client, "alice").await.affinities.len(), 3);
    // A raw API key id clears only that key.
    let one_key = ClearUserAffinitiesRequest {
        user_identifier: ALICE_KEY_2.into(),
        dry_run: false,
    };
    let cleared = client.clear_user_affinities(one_key).await.unwrap().into_inner();
    assert_eq!(cleared.deleted_count, 1);
    assert_eq!(cleared.user.unwrap().api_key_id, ALICE_KEY_2);
    let all = ClearUserAffinitiesRequest {
        user_identifier: "alice".into(),
        dry_run: false,
    };
    assert_eq!(
        client
            .clear_user_affinities(all)
            .await
            .unwrap()
            .into_inner()
            .deleted_count,
        2
    );
    assert!(user_affinities(client, "alice").await.affinities.is_empty());

    // Clear a provider: only entries still pinned to it.
    pin_world(client).await;
    pin(client, ALICE_KEY_2, "CLAUDE", BETA, BETA_ENDPOINT, BETA_KEY).await; // moved off alpha
    let dry = ClearProviderAffinitiesRequest {
        provider_id: ALPHA.into(),
        dry_run: true,
    };
    assert_eq!(
        client
            .clear_provider_affinities(dry)
            .await
            .unwrap()
            .into_inner()
            .deleted_count,
        2
    );
    let real = ClearProviderAffinitiesRequest {
        provider_id: ALPHA.into(),
        dry_run: false,
    };
    assert_eq!(
        client
            .clear_provider_affinities(real)
            .await
            .unwrap()
            .into_inner()
            .deleted_count,
        2
    );
    assert_eq!(list(client, "", 0, "").await.total_size, 2);

    // Clear all needs confirm.
    let unconfirmed = ClearAllAffinitiesRequest {
        confirm: false,
        dry_run: false,
    };
    assert_eq!(
        client.clear_all_affinities(unconfirmed).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    let dry = ClearAllAffinitiesRequest {
        confirm: true,
        dry_run: true,
    };
    assert_eq!(
        client
            .clear_all_affinities(dry)
            .await
            .unwrap()
            .into_inner()
            .deleted_count,
        2
    );
    let real = ClearAllAffinitiesRequest {
        confirm: true,
        dry_run: false,
    };
    assert_eq!(
        client
            .clear_all_affinities(real)
            .await
            .unwrap()
            .into_inner()
            .deleted_count,
        2
    );
    assert_eq!(list(client, "", 0, "").await.total_size, 0);
}

async fn stats_config_metrics_suite(client: &mut Client) {
    let before = client
        .get_affinity_stats(GetAffinityStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    pin(client, BOB_KEY, "GEMINI", ALPHA, ALPHA_ENDPOINT, ALPHA_KEY).await;
    pin(client, BOB_KEY, "GEMINI", BETA, BETA_ENDPOINT, BETA_KEY).await; // a provider switch
    let get = GetAffinityRequest {
        affinity_key: BOB_KEY.into(),
        api_format: "GEMINI".into(),
        global_model_id: MODEL.into(),
    };
    client.get_affinity(get.clone()).await.expect("hit");
    let miss = GetAffinityRequest {
        api_format: "GEMINI_CLI".into(),
        ..get
    };
    assert_eq!(client.get_affinity(miss).await.unwrap_err().code(), Code::NotFound);

    let response = client
        .get_affinity_stats(GetAffinityStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let stats = response.stats.unwrap();
    assert_eq!(stats.total_affinities - before.total_affinities, 1);
    assert_eq!(stats.provider_switches - before.provider_switches, 1);
    assert_eq!(stats.key_switches - before.key_switches, 1);
    assert_eq!(stats.cache_hits - before.cache_hits, 1);
    assert_eq!(stats.cache_misses - before.cache_misses, 1);
    assert_eq!(stats.active_affinities, 1);
    assert!(stats.invalidations_by_reason.contains_key("admin"));
    let config = response.config.unwrap();
    assert_eq!(config.default_ttl.unwrap().seconds, 300);
    assert_eq!(config.scheduling_mode, "fixed_order", "read from system_configs");
    assert_eq!(config.provider_priority_mode, "provider", "Aether's default when unset");

    let metrics = client
        .export_metrics(ExportMetricsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(metrics.content_type.starts_with("text/plain"));
    assert!(
        metrics
            .text
            .contains("# TYPE aether_control_affinity_hits_total counter")
    );
    assert!(
        metrics
            .text
            .contains(&format!("\naether_control_affinity_hits_total {}\n", stats.cache_hits))
    );
}

async fn events_suite(client: &mut Client) {
    // Only changes: decision events of the earlier suites' Gets may still be
    // on their way.
    let request = WatchAffinityEventsRequest {
        affinity_key: BOB_KEY.into(),
        types: [
            AffinityEventType::Created,
            AffinityEventType::Switched,
            AffinityEventType::Invalidated,
        ]
        .map(Into::into)
        .to_vec(),
        ..Default::default()
    };
    let mut events = client.watch_affinity_events(request).await.expect("watch").into_inner();
    tokio::time::sleep(Duration::from_millis(200)).await; // the subscription is live
    pin(client, ALICE_KEY_1, "CLAUDE", ALPHA, ALPHA_ENDPOINT, ALPHA_KEY).await; // filtered out
    pin(client, BOB_KEY, "CLAUDE_CLI", ALPHA, ALPHA_ENDPOINT, ALPHA_KEY).await;
    pin(client, BOB_KEY, "CLAUDE_CLI", BETA, BETA_ENDPOINT, BETA_KEY).await;
    let invalidate = InvalidateAffinityRequest {
        affinity_key: BOB_KEY.into(),
        api_format: "CLAUDE_CLI".into(),
        global_model_id: MODEL.into(),
        reason: InvalidationReason::UpstreamAuth.into(),
        ..Default::default()
    };
    assert!(
        client
            .invalidate_affinity(invalidate)
            .await
            .unwrap()
            .into_inner()
            .deleted
    );
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("event within 5 s")
            .expect("stream open")
            .expect("an event");
        assert_eq!(event.affinity.as_ref().unwrap().affinity_key, BOB_KEY);
        kinds.push(event.r#type());
        if event.r#type() == AffinityEventType::Switched {
            assert_eq!(event.previous.as_ref().unwrap().provider_id, ALPHA);
        }
        if event.r#type() == AffinityEventType::Invalidated {
            assert_eq!(event.reason(), InvalidationReason::UpstreamAuth);
        }
    }
    assert_eq!(
        kinds,
        [
            AffinityEventType::Created,
            AffinityEventType::Switched,
            AffinityEventType::Invalidated
        ]
    );
}

async fn full_suite(channel: AuthedChannel) {
    let mut client = AffinityServiceClient::new(channel);
    listing_suite(&mut client).await;
    clearing_suite(&mut client).await;
    stats_config_metrics_suite(&mut client).await;
    events_suite(&mut client).await;
}

#[tokio::test]
async fn embedded_default_serves_every_affinity_call() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::sqlite_url(&dir);
    let server = TestServer::start(&["--database-url", &url]).await;
    fixtures::seed(&url).await;
    full_suite(server.channel().await).await;
    server.stop().await;
}

#[tokio::test]
async fn redis_and_postgres_serve_every_affinity_call() {
    let stores = common::stores::SharedStores::create().await;
    let server = stores.start_server(&[]).await;
    fixtures::seed(&stores.database.url).await;
    full_suite(server.channel().await).await;
    server.stop().await;
    stores.drop().await;
}

#[tokio::test]
async fn redis_cluster_serves_every_affinity_call() {
    // Every script touches one key and every multi-key command is grouped
    // by hash slot, so the same suite runs unchanged on three masters.
    let cluster = common::cluster::RedisCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let url = common::sqlite_url(&dir);
    let server = TestServer::start(&["--database-url", &url, "--redis-url", &cluster.url()]).await;
    fixtures::seed(&url).await;
    full_suite(server.channel().await).await;
    let mut client = AffinityServiceClient::new(server.channel().await);
    let before = list(&mut client, "", 0, "").await.total_size;
    for i in 0..60 {
        pin(
            &mut client,
            &format!("ak-spread-{i}"),
            "CLAUDE",
            ALPHA,
            ALPHA_ENDPOINT,
            ALPHA_KEY,
        )
        .await;
    }
    let spread = cluster.keys_per_node();
    assert!(spread.iter().all(|keys| *keys > 0), "keys on every master: {spread:?}");
    assert_eq!(list(&mut client, "", 0, "").await.total_size, before + 60);
    server.stop().await;
}

/// An index bigger than one read batch (500) is read whole, once per
/// member, on both stores; the ids live entries point at are known.
#[tokio::test]
async fn indexes_bigger_than_a_batch_are_read_whole() {
    use aether_control::domain::affinity::{
        AffinityKey, AffinityTarget, AffinityWrite, IndexRef, TargetKind, now_epoch,
    };
    use aether_control::store::AffinityStore;
    use aether_control::store::memory::MemoryAffinityStore;
    use aether_control::store::redis::RedisAffinityStore;

    const ENTRIES: usize = 1234;
    let namespace = common::redis::namespace();
    let redis = common::redis::store_connection(&namespace).await;
    let stores: [Box<dyn AffinityStore>; 2] = [
        Box::new(MemoryAffinityStore::default()),
        Box::new(RedisAffinityStore::new(redis, "big-index", Duration::from_secs(10))),
    ];
    let write = AffinityWrite {
        target: AffinityTarget {
            provider_id: "p-big".into(),
            endpoint_id: "e-big".into(),
            key_id: "k-big".into(),
        },
        model_name: "gm".into(),
        ttl: Duration::from_secs(300),
    };
    for store in &stores {
        let now = now_epoch();
        let keys: Vec<AffinityKey> = (0..ENTRIES)
            .map(|i| AffinityKey::parse(&format!("ak-{i}"), "CLAUDE", "gm").expect("valid key"))
            .collect();
        for chunk in keys.chunks(100) {
            futures::future::try_join_all(chunk.iter().map(|key| store.set(key, &write, now, true)))
                .await
                .expect("set");
        }
        let listed = store
            .list_indexed(&[IndexRef::Provider("p-big".into())], now)
            .await
            .expect("list");
        assert_eq!(listed.len(), ENTRIES, "{}", store.storage_type());
        let referenced = store.referenced(TargetKind::ApiKey, now).await.expect("referenced");
        assert_eq!(referenced.len(), ENTRIES, "{}", store.storage_type());
        let providers = store.referenced(TargetKind::Provider, now).await.expect("referenced");
        assert_eq!(providers, vec!["p-big".to_owned()], "{}", store.storage_type());

        // Clearing empties the big indexes too (on Redis, batch by batch).
        let cleared = store.clear_all(false).await.expect("clear all");
        assert_eq!(cleared, ENTRIES as u64, "{}", store.storage_type());
        let providers = store.referenced(TargetKind::Provider, now).await.expect("referenced");
        assert!(providers.is_empty(), "{}: {providers:?}", store.storage_type());
    }
    let client = common::redis::client().await;
    use futures::TryStreamExt;
    let indexes_left: Vec<fred::types::Key> = client
        .scan_buffered(format!("{namespace}aether_control:idx:*"), Some(500), None)
        .try_collect()
        .await
        .expect("scan");
    assert!(
        indexes_left.is_empty(),
        "index sets left after clear-all: {indexes_left:?}"
    );
    common::redis::cleanup(&client, &namespace).await;
}

/// An indexed entry key that holds another type (not Aether's string) is
/// left out of a per-key listing, as a missing one is; the rest is listed.
/// Both read paths: the one-round-trip script, and past its budget ZSCAN +
/// MGET, where the odd key is alone in its batch.
#[tokio::test]
async fn an_entry_of_another_type_is_skipped_not_an_error() {
    use aether_control::domain::affinity::{AffinityKey, AffinityTarget, AffinityWrite, IndexRef, now_epoch};
    use aether_control::store::AffinityStore;
    use aether_control::store::redis::RedisAffinityStore;
    use fred::prelude::*;

    let namespace = common::redis::namespace();
    let redis = common::redis::store_connection(&namespace).await;
    let store = RedisAffinityStore::new(redis, "wrong-type", Duration::from_secs(10));
    let write = AffinityWrite {
        target: AffinityTarget {
            provider_id: "p".into(),
            endpoint_id: "e".into(),
            key_id: "k".into(),
        },
        model_name: "gm".into(),
        ttl: Duration::from_secs(300),
    };
    let now = now_epoch();
    let kept = AffinityKey::parse("ak-typed", "CLAUDE", "gm-1").expect("valid key");
    let replaced = AffinityKey::parse("ak-typed", "OPENAI", "gm-1").expect("valid key");
    for key in [&kept, &replaced] {
        store.set(key, &write, now, true).await.expect("set");
    }
    let client = common::redis::client().await;
    let entry = format!("{namespace}{}", replaced.redis_key());
    let _: i64 = client.del(&entry).await.expect("del");
    let _: i64 = client.hset(&entry, ("field", "value")).await.expect("hset");

    let index = [IndexRef::AffinityKey("ak-typed".into())];
    let listed = store
        .list_indexed(&index, now)
        .await
        .expect("a listing despite the hash");
    let keys: Vec<&AffinityKey> = listed.iter().map(|a| &a.key).collect();
    assert_eq!(keys, vec![&kept]);

    // Another API key with 501 members: over the script's budget of 500.
    // Keys are read in sorted order, 500 per batch, so the OPENAI one
    // (sorting last) is read alone. (The listing above pruned the odd
    // member from its own index, hence a fresh one.)
    let mut big: Vec<AffinityKey> = (0..500)
        .map(|i| AffinityKey::parse("ak-typed-big", "CLAUDE", &format!("gm-{i:03}")).expect("valid key"))
        .collect();
    let odd = AffinityKey::parse("ak-typed-big", "OPENAI", "gm-1").expect("valid key");
    big.push(odd.clone());
    futures::future::try_join_all(big.iter().map(|key| store.set(key, &write, now, true)))
        .await
        .expect("set");
    let entry = format!("{namespace}{}", odd.redis_key());
    let _: i64 = client.del(&entry).await.expect("del");
    let _: i64 = client.hset(&entry, ("field", "value")).await.expect("hset");
    let listed = store
        .list_indexed(&[IndexRef::AffinityKey("ak-typed-big".into())], now)
        .await
        .expect("a listing despite the hash");
    assert_eq!(listed.len(), 500);
    assert!(listed.iter().all(|a| a.key != odd));
    common::redis::cleanup(&client, &namespace).await;
}
