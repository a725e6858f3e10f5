//! Baseline: the Aether tables aether-control reads (AETHER_COMPAT §4), created only where missing.
//!
//! On a live Aether database every table already exists and is left exactly as it is, indexes
//! included; the embedded SQLite default and the tests get the same shape from scratch.
//! Names of constraints and indexes follow Aether's alembic baseline.

use sea_orm_migration::{prelude::*, schema::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Aether's PostgreSQL enum types; `duplicate_object` means Aether already made them.
const PG_ENUM_TYPES: [&str; 2] = [
    "DO $$ BEGIN CREATE TYPE userrole AS ENUM ('admin', 'user'); \
     EXCEPTION WHEN duplicate_object THEN null; END $$;",
    "DO $$ BEGIN CREATE TYPE providerbillingtype AS ENUM \
     ('monthly_quota', 'pay_as_you_go', 'free_tier'); \
     EXCEPTION WHEN duplicate_object THEN null; END $$;",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        if backend == DbBackend::Postgres {
            for sql in PG_ENUM_TYPES {
                manager.get_connection().execute_unprepared(sql).await?;
            }
        }
        for table in aether_tables(backend) {
            // An existing table is Aether's: no index or constraint of ours is added to it.
            if manager.has_table(table.name).await? {
                continue;
            }
            manager.create_table(table.create).await?;
            for index in table.indexes {
                manager.create_index(index).await?;
            }
        }
        Ok(())
    }

    // Aether owns these tables, so rolling back aether-control must never drop them.
    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Ok(())
    }
}

/// One Aether table and the secondary indexes Aether keeps on it.
struct AetherTable {
    name: &'static str,
    create: TableCreateStatement,
    indexes: Vec<IndexCreateStatement>,
}

/// Every table, parents before children so that foreign keys resolve.
fn aether_tables(backend: DbBackend) -> Vec<AetherTable> {
    vec![
        users(backend),
        providers(backend),
        global_models(),
        api_keys(),
        provider_endpoints(),
        provider_api_keys(),
        models(),
        audit_logs(),
        system_configs(),
    ]
}

fn users(backend: DbBackend) -> AetherTable {
    let create = table("users")
        .col(string_len_uniq("email", 255))
        .col(string_len_uniq("username", 100))
        .col(enum_column(backend, "role", "userrole").default("user"))
        .col(boolean("is_active").default(true))
        .col(boolean("is_deleted").default(false))
        .col(double_null("quota_usd"))
        .col(double_null("used_usd").default(0.0))
        .col(json_null("allowed_providers"))
        .col(json_null("allowed_endpoints"))
        .col(json_null("allowed_models"))
        .col(json_null("model_capability_settings"))
        .col(created_at())
        .col(updated_at())
        .col(timestamp_with_time_zone_null("last_login_at"))
        .take();
    AetherTable {
        name: "users",
        create,
        indexes: vec![],
    }
}

fn providers(backend: DbBackend) -> AetherTable {
    let create = table("providers")
        .col(string_len_uniq("name", 100))
        .col(string_len("display_name", 100))
        .col(boolean("is_active").default(true))
        .col(integer_null("provider_priority").default(100))
        .col(enum_column(backend, "billing_type", "providerbillingtype").default("pay_as_you_go"))
        .col(created_at())
        .col(updated_at())
        .take();
    AetherTable {
        name: "providers",
        create,
        indexes: vec![],
    }
}

fn global_models() -> AetherTable {
    let create = table("global_models")
        .col(string_len_uniq("name", 100))
        .col(string_len("display_name", 100))
        .col(boolean("is_active").default(true))
        .col(json_null("supported_capabilities"))
        .col(json_binary_null("config"))
        .col(json("default_tiered_pricing"))
        .col(double_null("default_price_per_request"))
        .col(created_at())
        .col(updated_at())
        .take();
    AetherTable {
        name: "global_models",
        create,
        indexes: vec![],
    }
}

fn api_keys() -> AetherTable {
    let create = table("api_keys")
        .col(string_len("user_id", 36))
        .col(string_len_uniq("key_hash", 64))
        .col(text_null("key_encrypted"))
        .col(string_len_null("name", 100))
        .col(boolean("is_standalone").default(false))
        .col(boolean("is_active").default(true))
        .col(timestamp_with_time_zone_null("expires_at"))
        .col(json_null("allowed_providers"))
        .col(json_null("allowed_endpoints"))
        .col(json_null("allowed_api_formats"))
        .col(json_null("allowed_models"))
        .col(created_at())
        .col(updated_at())
        .foreign_key(&mut foreign_key(
            "api_keys",
            "user_id",
            "users",
            ForeignKeyAction::Cascade,
        ))
        .take();
    // Every per-user call looks up a user's keys; without this index that is a
    // scan of all keys (measured: 108 ms at 50k keys on SQLite, 50 us with it).
    AetherTable {
        name: "api_keys",
        create,
        indexes: vec![index("api_keys", "ix_api_keys_user_id", ["user_id"])],
    }
}

fn provider_endpoints() -> AetherTable {
    let create = table("provider_endpoints")
        .col(string_len("provider_id", 36))
        .col(string_len("api_format", 50))
        .col(string_len("base_url", 500))
        .col(boolean("is_active").default(true))
        .col(integer_null("max_concurrent"))
        .col(json_binary_null("proxy"))
        .col(json_null("headers"))
        .col(json_null("config"))
        .col(created_at())
        .col(updated_at())
        .index(&mut unique("uq_provider_api_format", ["provider_id", "api_format"]))
        .foreign_key(&mut foreign_key(
            "provider_endpoints",
            "provider_id",
            "providers",
            ForeignKeyAction::Cascade,
        ))
        .take();
    let indexes = vec![index(
        "provider_endpoints",
        "idx_endpoint_format_active",
        ["api_format", "is_active"],
    )];
    AetherTable {
        name: "provider_endpoints",
        create,
        indexes,
    }
}

fn provider_api_keys() -> AetherTable {
    let create = table("provider_api_keys")
        .col(string_len("endpoint_id", 36))
        .col(string_len("api_key", 500))
        .col(string_len("name", 100))
        .col(double("rate_multiplier").default(1.0))
        .col(integer("cache_ttl_minutes").default(5))
        .col(integer_null("internal_priority").default(50))
        .col(integer_null("global_priority"))
        .col(boolean("is_active").default(true))
        .col(json_null("allowed_models"))
        .col(json_null("capabilities"))
        .col(created_at())
        .col(updated_at())
        .foreign_key(&mut foreign_key(
            "provider_api_keys",
            "endpoint_id",
            "provider_endpoints",
            ForeignKeyAction::Cascade,
        ))
        .take();
    AetherTable {
        name: "provider_api_keys",
        create,
        indexes: vec![],
    }
}

fn models() -> AetherTable {
    let create = table("models")
        .col(string_len("provider_id", 36))
        .col(string_len("global_model_id", 36))
        .col(string_len("provider_model_name", 200))
        .col(json_binary_null("provider_model_mappings"))
        .col(boolean("is_active").default(true))
        .col(boolean_null("is_available").default(true))
        .col(created_at())
        .col(updated_at())
        .index(&mut unique("uq_provider_model", ["provider_id", "provider_model_name"]))
        .foreign_key(&mut foreign_key(
            "models",
            "provider_id",
            "providers",
            ForeignKeyAction::NoAction,
        ))
        .foreign_key(&mut foreign_key(
            "models",
            "global_model_id",
            "global_models",
            ForeignKeyAction::NoAction,
        ))
        .take();
    let indexes = vec![index("models", "ix_models_global_model_id", ["global_model_id"])];
    AetherTable {
        name: "models",
        create,
        indexes,
    }
}

fn audit_logs() -> AetherTable {
    let create = table("audit_logs")
        .col(string_len("event_type", 50))
        .col(string_len_null("user_id", 36))
        .col(string_len_null("api_key_id", 36))
        .col(text("description"))
        .col(string_len_null("ip_address", 45))
        .col(string_len_null("user_agent", 500))
        .col(string_len_null("request_id", 100))
        .col(json_null("event_metadata"))
        .col(integer_null("status_code"))
        .col(text_null("error_message"))
        .col(created_at())
        .foreign_key(&mut foreign_key(
            "audit_logs",
            "user_id",
            "users",
            ForeignKeyAction::SetNull,
        ))
        .take();
    let indexes = ["event_type", "user_id", "request_id", "created_at"]
        .into_iter()
        .map(|column| index("audit_logs", &format!("ix_audit_logs_{column}"), [column]))
        .collect();
    AetherTable {
        name: "audit_logs",
        create,
        indexes,
    }
}

fn system_configs() -> AetherTable {
    let create = table("system_configs")
        .col(string_len_uniq("key", 100))
        .col(json("value"))
        .col(text_null("description"))
        .col(created_at())
        .col(updated_at())
        .take();
    AetherTable {
        name: "system_configs",
        create,
        indexes: vec![],
    }
}

/// `CREATE TABLE IF NOT EXISTS` with Aether's id: `varchar(36)` holding a uuid4, no default.
fn table(name: &'static str) -> TableCreateStatement {
    Table::create()
        .table(name)
        .if_not_exists()
        .col(string_len("id", 36).primary_key())
        .take()
}

/// A native enum type on PostgreSQL; plain text on SQLite.
fn enum_column(backend: DbBackend, column: &'static str, pg_type: &'static str) -> ColumnDef {
    match backend {
        DbBackend::Postgres => custom(column, pg_type),
        _ => text(column),
    }
}

fn created_at() -> ColumnDef {
    timestamp_with_time_zone_default_now("created_at")
}

fn updated_at() -> ColumnDef {
    timestamp_with_time_zone_default_now("updated_at")
}

/// A foreign key to `to.id`, named as PostgreSQL names it by default.
fn foreign_key(
    from: &'static str,
    column: &'static str,
    to: &'static str,
    on_delete: ForeignKeyAction,
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(format!("{from}_{column}_fkey"))
        .from(from, column)
        .to(to, "id")
        .on_delete(on_delete)
        .take()
}

/// A named multi-column UNIQUE constraint, declared inside `CREATE TABLE`.
fn unique<const N: usize>(name: &'static str, columns: [&'static str; N]) -> IndexCreateStatement {
    let mut unique = Index::create().name(name).unique().take();
    for column in columns {
        unique.col(column);
    }
    unique
}

fn index<const N: usize>(table: &'static str, name: &str, columns: [&'static str; N]) -> IndexCreateStatement {
    let mut index = Index::create().if_not_exists().name(name).table(table).take();
    for column in columns {
        index.col(column);
    }
    index
}
