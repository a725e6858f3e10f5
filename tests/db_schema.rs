//! The Migrator and the entities against real databases: a fresh PostgreSQL database and a
//! fresh SQLite file run the same checks, and an existing PostgreSQL table is never altered.

mod common;

use aether_control::db::entities::{
    api_keys, audit_logs, global_models, models, provider_api_keys, provider_endpoints, providers, system_configs,
    users,
};
use common::pg::TestDatabase;
use migration::{Migrator, MigratorTrait, SchemaManager};
use providers::ProviderBillingType;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, Database, DatabaseConnection, DbBackend, EntityTrait, ModelTrait,
    PaginatorTrait, QueryFilter, Set, Statement,
};
use serde_json::json;
use users::UserRole;

const USER_ID: &str = "11111111-2222-4333-8444-555555555555";
const API_KEY_ID: &str = "00000000-0000-4000-8000-000000000001";
const PROVIDER_ID: &str = "00000000-0000-4000-8000-000000000002";
const ENDPOINT_ID: &str = "00000000-0000-4000-8000-000000000003";
const PROVIDER_KEY_ID: &str = "00000000-0000-4000-8000-000000000004";
const GLOBAL_MODEL_ID: &str = "00000000-0000-4000-8000-000000000005";
const MODEL_ID: &str = "00000000-0000-4000-8000-000000000006";
const AUDIT_LOG_ID: &str = "00000000-0000-4000-8000-000000000007";
const SYSTEM_CONFIG_ID: &str = "00000000-0000-4000-8000-000000000008";

#[tokio::test]
async fn schema_round_trips_on_postgres() {
    TestDatabase::scoped(|url| async move { exercise_schema(&url).await }).await;
}

#[tokio::test]
async fn schema_round_trips_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = common::sqlite_url(&dir);
    exercise_schema(&url).await;
}

/// A connection the server ends mid-query reads as UNAVAILABLE, not INTERNAL:
/// `pg_ctl stop -m immediate` ends every backend this way (SQLSTATE 57P01),
/// and the fault bench once saw a ResolveUser answered INTERNAL then.
#[tokio::test]
async fn a_connection_the_server_ends_is_unavailable() {
    TestDatabase::scoped(|url| async move {
        let db = connect(&url).await;
        let error = db
            .execute_unprepared("SELECT pg_terminate_backend(pg_backend_pid())")
            .await
            .expect_err("the server ends the connection");
        assert!(
            matches!(
                aether_control::db::store_error(&error),
                aether_control::error::StoreError::Unavailable { .. }
            ),
            "{error:?}"
        );
        db.close().await.ok();
    })
    .await;
}

#[tokio::test]
async fn migrator_leaves_an_existing_postgres_table_alone() {
    TestDatabase::scoped(|url| async move {
        let db = connect(&url).await;
        db.execute_unprepared("CREATE TABLE users (id varchar(36) PRIMARY KEY, legacy_col text)")
            .await
            .expect("hand-made users table");

        Migrator::up(&db, None)
            .await
            .expect("migrate over an existing users table");

        let users_columns: Vec<String> = pg_columns(&db)
            .await
            .into_iter()
            .filter(|column| column.table == "users")
            .map(|column| column.name)
            .collect();
        assert_eq!(users_columns, ["id", "legacy_col"]);
        let manager = SchemaManager::new(&db);
        for table in ["api_keys", "audit_logs", "system_configs"] {
            assert!(manager.has_table(table).await.expect("probe"), "{table} created");
        }
    })
    .await;
}

/// The shared body: migrate twice, write one row per table, read them back, migrate again.
async fn exercise_schema(url: &str) {
    let db = connect(url).await;
    Migrator::up(&db, None).await.expect("first migration");
    Migrator::up(&db, None).await.expect("second migration is a no-op");
    assert_migration_bookkeeping(&db).await;
    if db.get_database_backend() == DbBackend::Postgres {
        assert_postgres_column_types(&db).await;
    }

    insert_one_row_per_table(&db).await;
    read_rows_back(&db).await;
    assert_unique_pairs_enforced(&db).await;

    Migrator::up(&db, None).await.expect("migration over data");
    assert_eq!(users::Entity::find().count(&db).await.expect("count"), 1);
}

async fn connect(url: &str) -> DatabaseConnection {
    Database::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

async fn assert_migration_bookkeeping(db: &DatabaseConnection) {
    let applied = Migrator::get_applied_migrations(db).await.expect("applied migrations");
    assert_eq!(applied.len(), 1);
    let rows = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM aether_control_migrations",
        ))
        .await
        .expect("count migrations")
        .expect("one row");
    assert_eq!(rows.try_get::<i64>("", "n").expect("n"), 1);
    let manager = SchemaManager::new(db);
    assert!(!manager.has_table("seaql_migrations").await.expect("probe"));
}

struct PgColumn {
    table: String,
    name: String,
    udt: String,
    nullable: bool,
    has_default: bool,
}

async fn pg_columns(db: &DatabaseConnection) -> Vec<PgColumn> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT table_name::text AS table_name, column_name::text AS column_name, \
             udt_name::text AS udt_name, is_nullable::text AS is_nullable, \
             column_default IS NOT NULL AS has_default \
             FROM information_schema.columns WHERE table_schema = current_schema() \
             ORDER BY table_name, ordinal_position",
        ))
        .await
        .expect("information_schema.columns");
    rows.iter()
        .map(|row| PgColumn {
            table: row.try_get("", "table_name").expect("table_name"),
            name: row.try_get("", "column_name").expect("column_name"),
            udt: row.try_get("", "udt_name").expect("udt_name"),
            nullable: row.try_get::<String>("", "is_nullable").expect("is_nullable") == "YES",
            has_default: row.try_get("", "has_default").expect("has_default"),
        })
        .collect()
}

async fn assert_postgres_column_types(db: &DatabaseConnection) {
    let columns = pg_columns(db).await;
    let find = |table: &str, name: &str| {
        columns
            .iter()
            .find(|c| c.table == table && c.name == name)
            .unwrap_or_else(|| panic!("{table}.{name} missing"))
    };
    // (table, column, udt_name, nullable)
    let expected = [
        ("users", "role", "userrole", false),
        ("users", "quota_usd", "float8", true),
        ("users", "allowed_models", "json", true),
        ("users", "created_at", "timestamptz", false),
        ("api_keys", "key_hash", "varchar", false),
        ("api_keys", "key_encrypted", "text", true),
        ("providers", "billing_type", "providerbillingtype", false),
        ("providers", "provider_priority", "int4", true),
        ("provider_endpoints", "proxy", "jsonb", true),
        ("provider_endpoints", "headers", "json", true),
        ("provider_api_keys", "rate_multiplier", "float8", false),
        ("global_models", "config", "jsonb", true),
        ("global_models", "default_tiered_pricing", "json", false),
        ("models", "provider_model_mappings", "jsonb", true),
        ("audit_logs", "event_metadata", "json", true),
        ("system_configs", "value", "json", false),
    ];
    for (table, name, udt, nullable) in expected {
        let column = find(table, name);
        assert_eq!(
            (column.udt.as_str(), column.nullable),
            (udt, nullable),
            "{table}.{name}"
        );
    }
    for id in columns.iter().filter(|c| c.name == "id") {
        assert_eq!((id.udt.as_str(), id.has_default), ("varchar", false), "{}.id", id.table);
    }
    assert!(find("users", "updated_at").has_default);
}

async fn insert_one_row_per_table(db: &DatabaseConnection) {
    users::ActiveModel {
        quota_usd: Set(Some(12.5)),
        allowed_models: Set(Some(json!(["claude-sonnet-4"]))),
        ..common::rows::user(USER_ID, "admin", "admin@example.com", UserRole::Admin)
    }
    .insert(db)
    .await
    .expect("insert user");
    api_keys::ActiveModel {
        name: Set(Some("default".to_owned())),
        allowed_api_formats: Set(Some(json!(["CLAUDE"]))),
        ..common::rows::api_key(API_KEY_ID, USER_ID, &"a".repeat(64))
    }
    .insert(db)
    .await
    .expect("insert api key");
    common::rows::provider(PROVIDER_ID, "anthropic", "Anthropic")
        .insert(db)
        .await
        .expect("insert provider");
    provider_endpoints::ActiveModel {
        proxy: Set(Some(json!({"url": "http://proxy:3128"}))),
        ..common::rows::endpoint(ENDPOINT_ID, PROVIDER_ID, "CLAUDE", "https://api.anthropic.com")
    }
    .insert(db)
    .await
    .expect("insert endpoint");
    common::rows::provider_key(PROVIDER_KEY_ID, ENDPOINT_ID, "gAAAAA-encrypted", "primary")
        .insert(db)
        .await
        .expect("insert provider key");
    global_models::ActiveModel {
        config: Set(Some(json!({"streaming": true}))),
        ..common::rows::global_model(GLOBAL_MODEL_ID, "claude-sonnet-4", "Claude Sonnet 4")
    }
    .insert(db)
    .await
    .expect("insert global model");
    models::ActiveModel {
        id: Set(MODEL_ID.to_owned()),
        provider_id: Set(PROVIDER_ID.to_owned()),
        global_model_id: Set(GLOBAL_MODEL_ID.to_owned()),
        provider_model_name: Set("claude-sonnet-4-20250514".to_owned()),
        provider_model_mappings: Set(Some(json!([{"name": "sonnet", "priority": 1}]))),
        is_active: Set(true),
        ..Default::default()
    }
    .insert(db)
    .await
    .expect("insert model");
    audit_logs::ActiveModel {
        id: Set(AUDIT_LOG_ID.to_owned()),
        event_type: Set("request_success".to_owned()),
        user_id: Set(Some(USER_ID.to_owned())),
        description: Set("GET /api/admin/monitoring/cache/stats via base".to_owned()),
        request_id: Set(Some("abcd1234".to_owned())),
        event_metadata: Set(Some(json!({"details": {"action": "cache_stats"}}))),
        ..Default::default()
    }
    .insert(db)
    .await
    .expect("insert audit log");
    system_configs::ActiveModel {
        id: Set(SYSTEM_CONFIG_ID.to_owned()),
        key: Set("cache_ttl_seconds".to_owned()),
        value: Set(json!(300)),
        ..Default::default()
    }
    .insert(db)
    .await
    .expect("insert system config");
}

async fn read_rows_back(db: &DatabaseConnection) {
    let admins = users::Entity::find()
        .filter(users::Column::Role.eq(UserRole::Admin))
        .all(db)
        .await
        .expect("admins");
    assert_eq!(admins.len(), 1);
    let admin = &admins[0];
    assert_eq!((admin.id.as_str(), admin.role), (USER_ID, UserRole::Admin));
    assert_eq!(admin.quota_usd, Some(12.5));
    assert_eq!(admin.used_usd, Some(0.0), "server default");
    assert_eq!(admin.allowed_models, Some(json!(["claude-sonnet-4"])));
    let age = chrono::Utc::now() - admin.created_at.to_utc();
    assert!(
        age.num_minutes().abs() < 5,
        "created_at defaults to now, got {}",
        admin.created_at
    );
    let plain_users = users::Entity::find()
        .filter(users::Column::Role.eq(UserRole::User))
        .count(db)
        .await
        .expect("plain users");
    assert_eq!(plain_users, 0);

    let keys = admin.find_related(api_keys::Entity).all(db).await.expect("user's keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].allowed_api_formats, Some(json!(["CLAUDE"])));

    let provider = providers::Entity::find()
        .filter(providers::Column::BillingType.eq(ProviderBillingType::PayAsYouGo))
        .one(db)
        .await
        .expect("provider query")
        .expect("pay-as-you-go provider");
    assert_eq!(provider.provider_priority, Some(100), "server default");
    let endpoints = provider
        .find_related(provider_endpoints::Entity)
        .all(db)
        .await
        .expect("eps");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].proxy, Some(json!({"url": "http://proxy:3128"})));
    let provider_keys = endpoints[0]
        .find_related(provider_api_keys::Entity)
        .all(db)
        .await
        .expect("endpoint keys");
    assert_eq!(provider_keys.len(), 1);
    assert_eq!(provider_keys[0].rate_multiplier, 1.5);
    assert_eq!(provider_keys[0].internal_priority, Some(50), "server default");

    let (model, global_model) = models::Entity::find_by_id(MODEL_ID)
        .find_also_related(global_models::Entity)
        .one(db)
        .await
        .expect("model query")
        .expect("model");
    assert_eq!(model.is_available, Some(true), "server default");
    assert_eq!(
        model.provider_model_mappings,
        Some(json!([{"name": "sonnet", "priority": 1}]))
    );
    let global_model = global_model.expect("model's global model");
    assert_eq!(global_model.config, Some(json!({"streaming": true})));

    let (log, log_user) = audit_logs::Entity::find_by_id(AUDIT_LOG_ID)
        .find_also_related(users::Entity)
        .one(db)
        .await
        .expect("audit log query")
        .expect("audit log");
    assert_eq!(log.event_metadata, Some(json!({"details": {"action": "cache_stats"}})));
    assert_eq!(log_user.map(|user| user.id).as_deref(), Some(USER_ID));

    let config = system_configs::Entity::find()
        .filter(system_configs::Column::Key.eq("cache_ttl_seconds"))
        .one(db)
        .await
        .expect("config query")
        .expect("config");
    assert_eq!((config.id.as_str(), config.value), (SYSTEM_CONFIG_ID, json!(300)));
}

async fn assert_unique_pairs_enforced(db: &DatabaseConnection) {
    let duplicate_endpoint = provider_endpoints::ActiveModel {
        id: Set("00000000-0000-4000-8000-000000000013".to_owned()),
        provider_id: Set(PROVIDER_ID.to_owned()),
        api_format: Set("CLAUDE".to_owned()),
        base_url: Set("https://elsewhere.example".to_owned()),
        is_active: Set(true),
        ..Default::default()
    };
    assert!(
        duplicate_endpoint.insert(db).await.is_err(),
        "UNIQUE(provider_id, api_format)"
    );
    let duplicate_model = models::ActiveModel {
        id: Set("00000000-0000-4000-8000-000000000016".to_owned()),
        provider_id: Set(PROVIDER_ID.to_owned()),
        global_model_id: Set(GLOBAL_MODEL_ID.to_owned()),
        provider_model_name: Set("claude-sonnet-4-20250514".to_owned()),
        is_active: Set(true),
        ..Default::default()
    };
    assert!(
        duplicate_model.insert(db).await.is_err(),
        "UNIQUE(provider_id, provider_model_name)"
    );
}
