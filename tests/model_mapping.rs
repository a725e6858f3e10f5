//! ModelMappingService over real gRPC, one suite run on the embedded default
//! (memory cache + SQLite) and on Redis + PostgreSQL, with Aether's model
//! tables filled here. On Redis the suite also reads and writes the cache
//! exactly as Aether does.

mod common;

use std::time::Duration;

use aether_control::db::DbConnection;
use aether_control::db::entities::{global_models, models, providers};
use aether_control::proto::model_mapping_service_client::ModelMappingServiceClient;
use aether_control::proto::*;
use common::proxy::CuttableProxy;
use common::server::{AuthedChannel, TestServer};
use fred::prelude::{Expiration, KeysInterface};
use sea_orm::{ActiveModelTrait, ConnectionTrait, Database, DatabaseConnection, Set};
use serde_json::{Value, json};
use tonic::{Code, Status};
use tonic_types::StatusExt;

type Client = ModelMappingServiceClient<AuthedChannel>;

// The world. Providers: one (active), two (active, no display name), off
// (inactive). Global models a < b < c by id, and an inactive one.
const P_ONE: &str = "mm-prov-one";
const P_TWO: &str = "mm-prov-two";
const P_OFF: &str = "mm-prov-off";
const GM_A: &str = "gm-a";
const GM_B: &str = "gm-b";
const GM_C: &str = "gm-c";
const GM_OFF: &str = "gm-off";

/// Aether's JSON for global model a (`json.dumps(_global_model_to_dict(gm))`).
const GM_A_JSON: &str = r#"{"id": "gm-a", "name": "gpt-4o", "display_name": "GPT-4o", "supported_capabilities": ["chat", "vision"], "config": {"max_tokens": 4096}, "default_tiered_pricing": {"tiers": [{"input_price_per_1m": 2.5, "output_price_per_1m": 10.0}]}, "default_price_per_request": 0.01, "is_active": true}"#;

/// Aether's JSON for provider one's model of global model b.
const M_SONNET_JSON: &str = r#"{"id": "m-1-sonnet", "provider_id": "mm-prov-one", "global_model_id": "gm-b", "provider_model_name": "sonnet-latest", "provider_model_mappings": [{"name": "sonnet", "priority": 2}, {"name": "sonnet-4", "priority": 1}], "is_active": true, "is_available": true, "price_per_request": null, "tiered_pricing": null, "supports_vision": null, "supports_function_calling": null, "supports_streaming": null, "supports_extended_thinking": null, "supports_image_generation": null, "config": null}"#;

async fn insert_provider(db: &DatabaseConnection, id: &str, display_name: &str, is_active: bool) {
    providers::ActiveModel {
        id: Set(id.into()),
        name: Set(id.into()),
        display_name: Set(display_name.into()),
        is_active: Set(is_active),
        billing_type: Set(providers::ProviderBillingType::PayAsYouGo),
        ..Default::default()
    }
    .insert(db)
    .await
    .expect("insert provider");
}

async fn insert_global_model(db: &DatabaseConnection, id: &str, name: &str, display_name: &str, is_active: bool) {
    global_models::ActiveModel {
        id: Set(id.into()),
        name: Set(name.into()),
        display_name: Set(display_name.into()),
        is_active: Set(is_active),
        supported_capabilities: Set(Some(json!(["chat", "vision"]))),
        config: Set(Some(json!({"max_tokens": 4096}))),
        default_tiered_pricing: Set(json!({"tiers": [{"input_price_per_1m": 2.5, "output_price_per_1m": 10.0}]})),
        default_price_per_request: Set(Some(0.01)),
        ..Default::default()
    }
    .insert(db)
    .await
    .expect("insert global model");
}

async fn insert_model(
    db: &DatabaseConnection,
    id: &str,
    provider_id: &str,
    global_model_id: &str,
    provider_model_name: &str,
    mappings: Option<Value>,
    is_active: bool,
) {
    models::ActiveModel {
        id: Set(id.into()),
        provider_id: Set(provider_id.into()),
        global_model_id: Set(global_model_id.into()),
        provider_model_name: Set(provider_model_name.into()),
        provider_model_mappings: Set(mappings),
        is_active: Set(is_active),
        is_available: Set(Some(true)),
        ..Default::default()
    }
    .insert(db)
    .await
    .expect("insert model");
}

/// Creates Aether's tables at `url` and fills them, before the service
/// starts (as on a live Aether). `models` also gets the columns a live
/// Aether has and our baseline lacks.
async fn prepare_database(url: &str) -> DatabaseConnection {
    let database = DbConnection::open(url, Duration::from_secs(5), true)
        .await
        .expect("create Aether's tables");
    let db = database.connection().clone();

    for sql in [
        "ALTER TABLE models ADD COLUMN price_per_request DOUBLE PRECISION",
        "ALTER TABLE models ADD COLUMN tiered_pricing JSON",
        "ALTER TABLE models ADD COLUMN supports_vision BOOLEAN",
        "ALTER TABLE models ADD COLUMN config JSON",
    ] {
        db.execute_unprepared(sql).await.expect(sql);
    }
    insert_provider(&db, P_ONE, "Provider One", true).await;
    insert_provider(&db, P_TWO, "", true).await;
    insert_provider(&db, P_OFF, "Provider Off", false).await;
    insert_global_model(&db, GM_A, "gpt-4o", "GPT-4o", true).await;
    insert_global_model(&db, GM_B, "claude-sonnet-4", "Claude Sonnet 4", true).await;
    insert_global_model(&db, GM_C, "claude-haiku", "Claude Haiku", true).await;
    insert_global_model(&db, GM_OFF, "retired-model", "Retired", false).await;
    let sonnet_mappings = json!([{"name": "sonnet", "priority": 2}, {"name": "sonnet-4", "priority": 1}]);
    for (id, provider, global, name, mappings, active) in [
        // An alias of b, with upstream name mappings.
        ("m-1-sonnet", P_ONE, GM_B, "sonnet-latest", Some(sonnet_mappings), true),
        // A provider model name equal to global model c's name, pointing at b.
        ("m-2-haiku", P_ONE, GM_B, "claude-haiku", None, true),
        // Ambiguous: b through provider one, a through provider two, c
        // through the inactive provider.
        ("m-3-ambiguous", P_ONE, GM_B, "ambiguous", None, true),
        ("m-4-ambiguous", P_TWO, GM_A, "ambiguous", None, true),
        ("m-5-ambiguous", P_OFF, GM_C, "ambiguous", None, true),
        // Inactive in each of the three ways.
        ("m-6-ghost", P_OFF, GM_A, "ghost-provider", None, true),
        ("m-7-ghost", P_ONE, GM_A, "ghost-model", None, false),
        ("m-8-ghost", P_ONE, GM_OFF, "ghost-global", None, true),
    ] {
        insert_model(&db, id, provider, global, name, mappings, active).await;
    }
    db.execute_unprepared(
        "UPDATE models SET price_per_request = 0.002, tiered_pricing = '{\"tiers\": []}', \
         supports_vision = true WHERE id = 'm-4-ambiguous'",
    )
    .await
    .expect("set Aether's extra columns");
    db
}

/// Redis as Aether sees it (namespaced keys), for the Redis run.
struct AetherRedis {
    client: fred::prelude::Client,
    namespace: String,
}

impl AetherRedis {
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    async fn set(&self, key: &str, value: &str, ttl_seconds: i64) {
        self.client
            .set::<(), _, _>(self.key(key), value, Some(Expiration::EX(ttl_seconds)), None, false)
            .await
            .expect("redis set");
    }

    async fn get(&self, key: &str) -> Option<String> {
        self.client.get(self.key(key)).await.expect("redis get")
    }

    async fn ttl(&self, key: &str) -> i64 {
        self.client.ttl(self.key(key)).await.expect("redis ttl")
    }
}

fn assert_invalid(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let violations = &details.bad_request().expect("BadRequest detail").field_violations;
    assert_eq!(violations[0].field, field, "{status:?}");
}

async fn resolve(client: &mut Client, name: &str) -> Result<ResolveModelResponse, Status> {
    client
        .resolve_model(ResolveModelRequest {
            model_name: name.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn resolved_id(client: &mut Client, name: &str) -> String {
    resolve(client, name)
        .await
        .unwrap_or_else(|e| panic!("{name} resolves: {e:?}"))
        .global_model
        .expect("global model")
        .id
}

async fn assert_not_found(client: &mut Client, name: &str) {
    let status = resolve(client, name).await.expect_err(name);
    assert_eq!(status.code(), Code::NotFound, "{name}: {status:?}");
}

async fn provider_model(client: &mut Client, provider_id: &str, global_model_id: &str) -> GetProviderModelResponse {
    client
        .get_provider_model(GetProviderModelRequest {
            provider_id: provider_id.into(),
            global_model_id: global_model_id.into(),
        })
        .await
        .expect("provider model")
        .into_inner()
}

async fn stats(client: &mut Client) -> GetModelMappingStatsResponse {
    client
        .get_model_mapping_stats(GetModelMappingStatsRequest {})
        .await
        .expect("stats")
        .into_inner()
}

async fn clear_all(client: &mut Client, dry_run: bool) -> i64 {
    let response = client
        .clear_model_mapping_cache(ClearModelMappingCacheRequest { dry_run })
        .await
        .expect("clear all")
        .into_inner();
    assert_eq!(response.dry_run, dry_run);
    response.deleted_count
}

async fn clear_name(client: &mut Client, name: &str, dry_run: bool) -> Vec<String> {
    let response = client
        .clear_model_mapping_cache_by_name(ClearModelMappingCacheByNameRequest {
            model_name: name.into(),
            dry_run,
        })
        .await
        .expect("clear by name")
        .into_inner();
    assert_eq!(response.dry_run, dry_run);
    assert_eq!(response.deleted_count, response.deleted_keys.len() as i64);
    response.deleted_keys
}

async fn clear_provider(client: &mut Client, provider_id: &str, global_model_id: &str, dry_run: bool) -> Vec<String> {
    let response = client
        .clear_provider_model_mapping_cache(ClearProviderModelMappingCacheRequest {
            provider_id: provider_id.into(),
            global_model_id: global_model_id.into(),
            dry_run,
        })
        .await
        .expect("clear provider model")
        .into_inner();
    assert_eq!(response.dry_run, dry_run);
    assert_eq!(response.deleted_count, response.deleted_keys.len() as i64);
    response.deleted_keys
}

fn seconds(ttl: Option<&prost_types::Duration>) -> i64 {
    ttl.expect("a ttl").seconds
}

async fn resolution_suite(client: &mut Client) {
    // An alias: a provider's model name.
    let first = resolve(client, "sonnet-latest").await.expect("alias resolves");
    assert_eq!(first.global_model.as_ref().expect("global model").id, GM_B);
    assert_eq!(first.matched_by(), ModelMatchKind::ProviderModelName);
    assert!(!first.from_cache);
    assert!(first.conflicting_global_model_ids.is_empty());
    // Served from the cache the second time.
    let second = resolve(client, "sonnet-latest").await.expect("cached");
    assert_eq!((second.matched_by(), second.from_cache), (ModelMatchKind::Cache, true));
    assert_eq!(second.global_model, first.global_model);

    // A global model name, whitespace stripped; every field carried.
    let direct = resolve(client, " \tgpt-4o  ").await.expect("global name resolves");
    assert_eq!(direct.matched_by(), ModelMatchKind::GlobalModelName);
    let model = direct.global_model.expect("global model");
    assert_eq!(
        (
            model.id.as_str(),
            model.name.as_str(),
            model.display_name.as_str(),
            model.is_active
        ),
        (GM_A, "gpt-4o", "GPT-4o", true)
    );
    assert_eq!(model.default_price_per_request, Some(0.01));
    let capabilities = match model.supported_capabilities.and_then(|v| v.kind) {
        Some(prost_types::value::Kind::ListValue(list)) => list.values.len(),
        other => panic!("capabilities as a list: {other:?}"),
    };
    assert_eq!(capabilities, 2);
    assert!(model.default_tiered_pricing.is_some() && model.config.is_some());

    // A provider model name beats a global model of the same name (Aether's order).
    let shadowed = resolve(client, "claude-haiku").await.expect("resolves");
    assert_eq!(shadowed.matched_by(), ModelMatchKind::ProviderModelName);
    assert_eq!(shadowed.global_model.expect("global model").id, GM_B);

    // Ambiguous: the lowest global model id wins, active others are listed.
    let ambiguous = resolve(client, "ambiguous").await.expect("resolves");
    assert_eq!(ambiguous.global_model.expect("global model").id, GM_A);
    assert_eq!(ambiguous.conflicting_global_model_ids, [GM_B]);

    // Inactive provider, model or global model: no match.
    for name in [
        "ghost-provider",
        "ghost-model",
        "ghost-global",
        "retired-model",
        "unknown",
    ] {
        assert_not_found(client, name).await;
    }
    // Mapping names are not resolved globally (Aether).
    assert_not_found(client, "sonnet-4").await;

    // Bad input names the field.
    let long = "x".repeat(201);
    for bad in ["", "   ", long.as_str()] {
        assert_invalid(&resolve(client, bad).await.expect_err("invalid"), "model_name");
    }
}

async fn negative_cache_suite(client: &mut Client, db: &DatabaseConnection, aether: Option<&AetherRedis>) {
    assert_not_found(client, "late-model").await;
    if let Some(aether) = aether {
        // Aether's raw sentinel, with our configured TTL (120 s here, under Aether's 300 s).
        let key = "global_model:resolve:late-model";
        assert_eq!(aether.get(key).await.as_deref(), Some("NOT_FOUND"));
        let ttl = aether.ttl(key).await;
        assert!((1..=120).contains(&ttl), "negative TTL {ttl}");
    }
    let unmapped = stats(client).await.unmapped;
    let entry = unmapped
        .iter()
        .find(|u| u.mapping_name == "late-model")
        .expect("listed as unmapped");
    assert_eq!(entry.status(), UnmappedStatus::NotFound);
    assert!((1..=120).contains(&seconds(entry.ttl.as_ref())));

    // Created after the miss: hidden by the negative entry until it is cleared.
    insert_model(db, "m-9-late", P_TWO, GM_C, "late-model", None, true).await;
    assert_not_found(client, "late-model").await;
    assert_eq!(
        clear_name(client, "late-model", true).await,
        ["global_model:resolve:late-model"]
    );
    assert_not_found(client, "late-model").await;
    assert_eq!(
        clear_name(client, "late-model", false).await,
        ["global_model:resolve:late-model"]
    );
    assert_eq!(resolved_id(client, "late-model").await, GM_C);
    // By-name clears also take the by-name key (which Aether only deletes).
    let mut both = vec!["global_model:resolve:late-model"];
    if let Some(aether) = aether {
        aether.set("global_model:name:late-model", GM_A_JSON, 300).await;
        both.push("global_model:name:late-model");
    }
    assert_eq!(clear_name(client, " late-model ", false).await, both);
    assert!(clear_name(client, "late-model", false).await.is_empty());
    assert_invalid(
        &client
            .clear_model_mapping_cache_by_name(ClearModelMappingCacheByNameRequest {
                model_name: " ".into(),
                dry_run: false,
            })
            .await
            .expect_err("invalid"),
        "model_name",
    );
}

async fn aether_format_suite(client: &mut Client, aether: &AetherRedis) {
    // Aether's negative entry hides even a resolvable name.
    aether
        .set("global_model:resolve:claude-sonnet-4", "NOT_FOUND", 300)
        .await;
    assert_not_found(client, "claude-sonnet-4").await;
    // Aether's positive entry is served as is.
    let written = r#"{"id": "gm-elsewhere", "name": "aether-only", "display_name": "Aether Only", "supported_capabilities": null, "config": null, "default_tiered_pricing": {"tiers": []}, "default_price_per_request": null, "is_active": true}"#;
    aether.set("global_model:resolve:aether-alias", written, 300).await;
    let cached = resolve(client, "aether-alias").await.expect("cached");
    assert!(cached.from_cache);
    let model = cached.global_model.expect("global model");
    assert_eq!(
        (model.id.as_str(), model.name.as_str(), model.default_price_per_request),
        ("gm-elsewhere", "aether-only", None)
    );
    // An entry of an older schema (no supported_capabilities) is refreshed.
    aether
        .set(
            "global_model:resolve:gpt-4o",
            r#"{"id": "gm-a", "name": "gpt-4o"}"#,
            300,
        )
        .await;
    let refreshed = resolve(client, "gpt-4o").await.expect("from the database");
    assert!(!refreshed.from_cache);
    // What we write is what Aether writes, byte for byte, for 300 s.
    assert_eq!(
        aether.get("global_model:resolve:gpt-4o").await.as_deref(),
        Some(GM_A_JSON)
    );
    let ttl = aether.ttl("global_model:resolve:gpt-4o").await;
    assert!((290..=300).contains(&ttl), "positive TTL {ttl}");
    // Garbage is a miss, and gets overwritten.
    aether.set("global_model:resolve:gpt-4o", "{not json", 300).await;
    assert!(!resolve(client, "gpt-4o").await.expect("resolves").from_cache);
    assert_eq!(
        aether.get("global_model:resolve:gpt-4o").await.as_deref(),
        Some(GM_A_JSON)
    );
    // Aether's provider-model entry is served, and its hit counter bumped.
    aether
        .set("model:provider_global:mm-prov-two:gm-c", M_SONNET_JSON, 300)
        .await;
    aether
        .set("model:provider_global:hits:mm-prov-two:gm-c", "41", 300)
        .await;
    let found = provider_model(client, P_TWO, GM_C).await;
    assert!(found.from_cache);
    assert_eq!(found.model.expect("model").id, "m-1-sonnet");
    assert_eq!(
        aether
            .get("model:provider_global:hits:mm-prov-two:gm-c")
            .await
            .as_deref(),
        Some("42")
    );
    clear_all(client, false).await;
}

async fn provider_model_suite(client: &mut Client, aether: Option<&AetherRedis>) {
    let first = provider_model(client, P_ONE, GM_B).await;
    assert!(!first.from_cache);
    let model = first.model.expect("model");
    // Three active rows serve b at provider one: the lowest id is taken.
    assert_eq!(
        (model.id.as_str(), model.provider_model_name.as_str()),
        ("m-1-sonnet", "sonnet-latest")
    );
    let mappings: Vec<(&str, i32)> = model
        .provider_model_mappings
        .iter()
        .map(|m| (m.name.as_str(), m.priority))
        .collect();
    assert_eq!(mappings, [("sonnet-4", 1), ("sonnet", 2)]);
    assert!(model.is_active && model.is_available);
    assert_eq!(
        (
            model.price_per_request,
            model.supports_vision,
            model.tiered_pricing.as_ref()
        ),
        (None, None, None)
    );
    for _ in 0..2 {
        let again = provider_model(client, P_ONE, GM_B).await;
        assert!(again.from_cache);
        assert_eq!(again.model.expect("model"), model);
    }

    // Aether's columns beyond our baseline are read and carried.
    let priced = provider_model(client, P_TWO, GM_A).await.model.expect("model");
    assert_eq!(
        (priced.id.as_str(), priced.price_per_request, priced.supports_vision),
        ("m-4-ambiguous", Some(0.002), Some(true))
    );
    assert!(priced.tiered_pricing.is_some());

    if let Some(aether) = aether {
        let key = "model:provider_global:mm-prov-one:gm-b";
        assert_eq!(aether.get(key).await.as_deref(), Some(M_SONNET_JSON));
        assert_eq!(
            aether
                .get("model:provider_global:hits:mm-prov-one:gm-b")
                .await
                .as_deref(),
            Some("3")
        );
        let ttl = aether.ttl(key).await;
        assert!((290..=300).contains(&ttl), "TTL {ttl}");
        let priced_json = aether
            .get("model:provider_global:mm-prov-two:gm-a")
            .await
            .expect("cached");
        assert!(
            priced_json
                .contains(r#""price_per_request": 0.002, "tiered_pricing": {"tiers": []}, "supports_vision": true"#),
            "{priced_json}"
        );
    }

    // Only an inactive row: none (Aether filters models.is_active).
    let missing = client
        .get_provider_model(GetProviderModelRequest {
            provider_id: P_ONE.into(),
            global_model_id: GM_A.into(),
        })
        .await
        .expect_err("no active model");
    assert_eq!(missing.code(), Code::NotFound);

    for (provider_id, global_model_id, field) in [
        ("", GM_A, "provider_id"),
        ("a b", GM_A, "provider_id"),
        (P_ONE, "x:y", "global_model_id"),
        (P_ONE, "", "global_model_id"),
    ] {
        let status = client
            .get_provider_model(GetProviderModelRequest {
                provider_id: provider_id.into(),
                global_model_id: global_model_id.into(),
            })
            .await
            .expect_err("invalid");
        assert_invalid(&status, field);
    }
}

async fn stats_suite(client: &mut Client, aether: Option<&AetherRedis>, shared: bool) {
    clear_all(client, false).await;
    for name in ["sonnet-latest", "claude-sonnet-4", "claude-haiku", "ambiguous"] {
        resolved_id(client, name).await;
    }
    assert_not_found(client, "nope").await;
    provider_model(client, P_ONE, GM_B).await;
    provider_model(client, P_ONE, GM_B).await;
    provider_model(client, P_ONE, GM_B).await;
    provider_model(client, P_TWO, GM_A).await;
    let redis = i64::from(aether.is_some());
    if let Some(aether) = aether {
        for key in ["model:id:m-x", "global_model:id:gm-x", "global_model:name:gpt-4o"] {
            aether.set(key, "{}", 300).await;
        }
        aether.set("global_model:resolve:broken", "{not json", 300).await;
        // A provider model under its global model's own name: not a mapping.
        let plain = M_SONNET_JSON.replace("sonnet-latest", "claude-haiku").replace(
            r#"[{"name": "sonnet", "priority": 2}, {"name": "sonnet-4", "priority": 1}]"#,
            "null",
        );
        aether.set("model:provider_global:mm-prov-two:gm-c", &plain, 300).await;
        // Outside the model-mapping scope.
        aether.set("models:list:all", "[]", 300).await;
    }

    let stats = stats(client).await;
    assert!(stats.available);
    assert_eq!(stats.message.is_empty(), shared, "{}", stats.message);
    assert_eq!(seconds(stats.ttl.as_ref()), 300);
    let breakdown = stats.breakdown.expect("breakdown");
    assert_eq!(breakdown.global_model_resolve, 5 + redis);
    assert_eq!(breakdown.model_by_provider_global, 2 + redis);
    assert_eq!(
        (
            breakdown.model_by_id,
            breakdown.global_model_by_id,
            breakdown.global_model_by_name
        ),
        (redis, redis, redis)
    );
    assert_eq!(stats.total_keys, 7 + 5 * redis);

    // Aliases by name, each with the providers serving it.
    let mappings: Vec<(&str, &str, &str, Vec<&str>)> = stats
        .mappings
        .iter()
        .map(|m| {
            (
                m.mapping_name.as_str(),
                m.global_model_name.as_str(),
                m.global_model_display_name.as_str(),
                m.providers.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        mappings,
        [
            ("ambiguous", "gpt-4o", "GPT-4o", vec![P_TWO]),
            (
                "claude-haiku",
                "claude-sonnet-4",
                "Claude Sonnet 4",
                vec!["Provider One"]
            ),
            (
                "sonnet-latest",
                "claude-sonnet-4",
                "Claude Sonnet 4",
                vec!["Provider One"]
            ),
        ]
    );
    assert!(
        stats
            .mappings
            .iter()
            .all(|m| (1..=300).contains(&seconds(m.ttl.as_ref())))
    );

    // Provider models that rename their global model, by provider label.
    let cached: Vec<(&str, &str, &str, Vec<&str>, i64)> = stats
        .provider_model_mappings
        .iter()
        .map(|m| {
            (
                m.provider_name.as_str(),
                m.global_model_name.as_str(),
                m.provider_model_name.as_str(),
                m.aliases.iter().map(String::as_str).collect(),
                m.hit_count,
            )
        })
        .collect();
    assert_eq!(
        cached,
        [
            (
                "Provider One",
                "claude-sonnet-4",
                "sonnet-latest",
                vec!["sonnet", "sonnet-4"],
                3
            ),
            (P_TWO, "gpt-4o", "ambiguous", vec!["gpt-4o"], 1),
        ]
    );
    let one = &stats.provider_model_mappings[0];
    assert_eq!(
        (
            one.provider_id.as_str(),
            one.global_model_id.as_str(),
            one.global_model_display_name.as_str()
        ),
        (P_ONE, GM_B, "Claude Sonnet 4")
    );
    assert!((1..=300).contains(&seconds(one.ttl.as_ref())));

    let unmapped: Vec<(&str, UnmappedStatus)> = stats
        .unmapped
        .iter()
        .map(|u| (u.mapping_name.as_str(), u.status()))
        .collect();
    let mut expected = vec![("nope", UnmappedStatus::NotFound)];
    if aether.is_some() {
        expected.insert(0, ("broken", UnmappedStatus::Invalid));
    }
    assert_eq!(unmapped, expected);
}

async fn clearing_suite(client: &mut Client, aether: Option<&AetherRedis>) {
    // Glob characters are data: clearing `a*` leaves `ab`.
    for name in ["a*", "ab", "a?", "[ab]"] {
        assert_not_found(client, name).await;
    }
    assert_eq!(clear_name(client, "a*", false).await, ["global_model:resolve:a*"]);
    assert_eq!(clear_name(client, "ab", true).await, ["global_model:resolve:ab"]);
    assert_eq!(clear_name(client, "a?", true).await, ["global_model:resolve:a?"]);
    assert_eq!(clear_name(client, "[ab]", true).await, ["global_model:resolve:[ab]"]);
    assert!(clear_name(client, "a*", false).await.is_empty());

    // One provider model and its counter; globs in ids match nothing.
    assert!(clear_provider(client, "*", "*", false).await.is_empty());
    assert!(clear_provider(client, "mm-prov-*", GM_B, false).await.is_empty());
    let both = [
        "model:provider_global:mm-prov-one:gm-b",
        "model:provider_global:hits:mm-prov-one:gm-b",
    ];
    assert_eq!(clear_provider(client, P_ONE, GM_B, true).await, both);
    assert_eq!(clear_provider(client, P_ONE, GM_B, false).await, both);
    assert!(clear_provider(client, P_ONE, GM_B, false).await.is_empty());
    assert!(!provider_model(client, P_ONE, GM_B).await.from_cache);
    for (provider_id, global_model_id, field) in [("", GM_B, "provider_id"), (P_ONE, "a b", "global_model_id")] {
        let status = client
            .clear_provider_model_mapping_cache(ClearProviderModelMappingCacheRequest {
                provider_id: provider_id.into(),
                global_model_id: global_model_id.into(),
                dry_run: true,
            })
            .await
            .expect_err("invalid");
        assert_invalid(&status, field);
    }

    // Everything: exact counts (hit counters included), dry run first.
    let before = stats(client).await.total_keys;
    let hit_counters = 2;
    let all = clear_all(client, true).await;
    assert_eq!(all, before + hit_counters);
    assert_eq!(clear_all(client, true).await, all);
    assert_eq!(clear_all(client, false).await, all);
    assert_eq!(clear_all(client, true).await, 0);
    assert_eq!(stats(client).await.total_keys, 0);
    if let Some(aether) = aether {
        assert_eq!(aether.get("models:list:all").await.as_deref(), Some("[]"));
    }
}

async fn full_suite(channel: AuthedChannel, db: DatabaseConnection, aether: Option<&AetherRedis>) {
    let mut client = ModelMappingServiceClient::new(channel);
    resolution_suite(&mut client).await;
    negative_cache_suite(&mut client, &db, aether).await;
    if let Some(aether) = aether {
        aether_format_suite(&mut client, aether).await;
    }
    provider_model_suite(&mut client, aether).await;
    stats_suite(&mut client, aether, aether.is_some()).await;
    clearing_suite(&mut client, aether).await;
    db.close().await.expect("close");
}

/// Flags for a server whose negative cache entries last 1 s.
const SHORT_NEGATIVE_TTL: [&str; 2] = ["--model-negative-cache-ttl-seconds", "1"];

/// A model created after a miss resolves once the negative TTL has passed;
/// `server` runs with [`SHORT_NEGATIVE_TTL`].
async fn negative_ttl_expiry_suite(server: TestServer, db_url: &str) {
    let mut client = ModelMappingServiceClient::new(server.channel().await);
    assert_not_found(&mut client, "later-model").await;
    let db = Database::connect(db_url).await.expect("connect");
    insert_model(&db, "m-10-later", P_TWO, GM_B, "later-model", None, true).await;
    assert_not_found(&mut client, "later-model").await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(resolved_id(&mut client, "later-model").await, GM_B);
    db.close().await.expect("close");
    server.stop().await;
}

#[tokio::test]
async fn embedded_default_serves_every_model_mapping_call() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = common::sqlite_url(&dir);
    let db = prepare_database(&url).await;
    // A negative TTL long enough that no entry expires while the suite counts keys.
    let server = TestServer::start(&["--database-url", &url, "--model-negative-cache-ttl-seconds", "120"]).await;
    full_suite(server.channel().await, db, None).await;
    server.stop().await;
    let short = TestServer::start(&[SHORT_NEGATIVE_TTL[0], SHORT_NEGATIVE_TTL[1], "--database-url", &url]).await;
    negative_ttl_expiry_suite(short, &url).await;
}

#[tokio::test]
async fn redis_and_postgres_serve_every_model_mapping_call() {
    let stores = common::stores::SharedStores::create().await;
    let db = prepare_database(&stores.database.url).await;
    let server = stores
        .start_server(&["--model-negative-cache-ttl-seconds", "120"])
        .await;
    let aether = AetherRedis {
        client: common::redis::client().await,
        namespace: stores.namespace.clone(),
    };
    full_suite(server.channel().await, db, Some(&aether)).await;
    server.stop().await;
    negative_ttl_expiry_suite(stores.start_server(&SHORT_NEGATIVE_TTL).await, &stores.database.url).await;
    stores.drop().await;
}

#[tokio::test]
async fn a_redis_outage_never_fails_resolution() {
    let proxy = CuttableProxy::start(common::store_address(&common::redis::url(), 6379)).await;
    let namespace = common::redis::namespace();
    let dir = tempfile::tempdir().expect("temp dir");
    let db_url = common::sqlite_url(&dir);
    let redis_url = format!("redis://{}/0", proxy.addr);
    let db = prepare_database(&db_url).await;
    let server = TestServer::start(&[
        "--database-url",
        &db_url,
        "--redis-url",
        &redis_url,
        "--redis-namespace",
        &namespace,
    ])
    .await;
    let mut client = ModelMappingServiceClient::new(server.channel().await);
    assert_eq!(resolved_id(&mut client, "sonnet-latest").await, GM_B);
    assert!(resolve(&mut client, "sonnet-latest").await.expect("cached").from_cache);

    proxy.cut();
    // Resolution and provider models fall back to the database.
    let resolved = resolve(&mut client, "sonnet-latest").await.expect("from the database");
    assert!(!resolved.from_cache);
    assert_eq!(resolved.global_model.expect("global model").id, GM_B);
    assert!(!provider_model(&mut client, P_ONE, GM_B).await.from_cache);
    assert_not_found(&mut client, "unknown").await;
    // Cache management reports the outage rather than pretending.
    let status = client
        .clear_model_mapping_cache(ClearModelMappingCacheRequest { dry_run: true })
        .await
        .expect_err("redis is down");
    assert_eq!(status.code(), Code::Unavailable);

    proxy.restore();
    db.close().await.expect("close");
    server.stop().await;
    common::redis::cleanup(&common::redis::client().await, &namespace).await;
}
