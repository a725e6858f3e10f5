//! [`ModelCatalog`] over sea-orm: Aether's `global_models`, `models` and
//! `providers` tables, on PostgreSQL or SQLite.
//!
//! Aether's `models` table has columns our baseline migration does not
//! create (`price_per_request`, `tiered_pricing`, `supports_*`, `config`).
//! A provider model is read with those of them the table has (looked up on
//! each read, so a column Aether adds later is picked up), so that on a live
//! Aether database the row we cache carries them exactly as Aether's would;
//! an absent column is cached as null, which is what it means there. The
//! columns are always named, never `*`: a cached `SELECT *` plan breaks when
//! the table changes under it.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use sea_orm::sea_query::{Alias, Expr};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, JoinType, QueryFilter,
    QueryResult, QuerySelect, QueryTrait, RelationTrait, Statement, TryGetable,
};
use serde_json::Value;

use crate::db::entities::{global_models, models, providers};
use crate::db::{DbHandle, db_error, unique_chunks};
use crate::domain::models::{GlobalModel, GlobalModelNames, ModelCatalog, ProviderModel, ProviderNames, ServedModel};
use crate::error::StoreError;

/// Aether's `models` columns beyond our baseline, in Model JSON order.
const OPTIONAL_MODEL_COLUMNS: [&str; 8] = [
    "price_per_request",
    "tiered_pricing",
    "supports_vision",
    "supports_function_calling",
    "supports_streaming",
    "supports_extended_thinking",
    "supports_image_generation",
    "config",
];

/// The selected `global_models` columns, in [`global_model_columns`] order.
type GlobalModelRow = (
    String,
    String,
    String,
    Option<Value>,
    Option<Value>,
    Option<Value>,
    Option<f64>,
    bool,
);

/// [`ModelCatalog`] over a sea-orm connection (PostgreSQL or SQLite).
#[derive(Clone)]
pub struct SeaOrmModelCatalog {
    db: DbHandle,
}

impl SeaOrmModelCatalog {
    /// Reads through `db`.
    pub fn new(db: impl Into<DbHandle>) -> Self {
        Self { db: db.into() }
    }
}

fn global_model_columns() -> [global_models::Column; 8] {
    [
        global_models::Column::Id,
        global_models::Column::Name,
        global_models::Column::DisplayName,
        global_models::Column::SupportedCapabilities,
        global_models::Column::Config,
        global_models::Column::DefaultTieredPricing,
        global_models::Column::DefaultPricePerRequest,
        global_models::Column::IsActive,
    ]
}

fn global_model(
    (
        id,
        name,
        display_name,
        supported_capabilities,
        config,
        default_tiered_pricing,
        default_price_per_request,
        is_active,
    ): GlobalModelRow,
) -> GlobalModel {
    GlobalModel {
        id,
        name,
        display_name,
        supported_capabilities,
        config,
        default_tiered_pricing,
        default_price_per_request,
        is_active,
    }
}

/// `(id, name, display_name)` of the active rows of `E` among `ids`, read in
/// chunks; `columns` are those three columns, in that order.
async fn active_names<E: EntityTrait>(
    db: &DatabaseConnection,
    ids: &[String],
    columns: [E::Column; 3],
    is_active: E::Column,
) -> Result<Vec<(String, String, String)>, StoreError> {
    let mut found = Vec::new();
    for chunk in unique_chunks(ids) {
        let rows: Vec<(String, String, String)> = E::find()
            .select_only()
            .columns(columns)
            .filter(columns[0].is_in(chunk))
            .filter(is_active.eq(true))
            .into_tuple()
            .all(db)
            .await
            .map_err(db_error)?;
        found.extend(rows);
    }
    Ok(found)
}

/// The columns `models` has, as the query planner resolves the table name.
async fn model_columns(db: &DatabaseConnection) -> Result<HashSet<String>, DbErr> {
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => {
            "SELECT attname::text AS name FROM pg_attribute \
             WHERE attrelid = to_regclass('models') AND attnum > 0 AND NOT attisdropped"
        }
        _ => "SELECT name FROM pragma_table_info('models')",
    };
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    rows.iter().map(|row| row.try_get::<String>("", "name")).collect()
}

/// A `models` row: the baseline columns are required, Aether's others are
/// read when selected.
fn provider_model(row: &QueryResult, columns: &HashSet<String>) -> Result<ProviderModel, DbErr> {
    fn optional<T: TryGetable>(row: &QueryResult, columns: &HashSet<String>, name: &str) -> Result<Option<T>, DbErr> {
        if columns.contains(name) {
            row.try_get::<Option<T>>("", name)
        } else {
            Ok(None)
        }
    }
    Ok(ProviderModel {
        id: row.try_get("", "id")?,
        provider_id: row.try_get("", "provider_id")?,
        global_model_id: row.try_get("", "global_model_id")?,
        provider_model_name: row.try_get("", "provider_model_name")?,
        provider_model_mappings: row.try_get("", "provider_model_mappings")?,
        is_active: row.try_get("", "is_active")?,
        is_available: row.try_get("", "is_available")?,
        price_per_request: optional(row, columns, "price_per_request")?,
        tiered_pricing: optional(row, columns, "tiered_pricing")?,
        supports_vision: optional(row, columns, "supports_vision")?,
        supports_function_calling: optional(row, columns, "supports_function_calling")?,
        supports_streaming: optional(row, columns, "supports_streaming")?,
        supports_extended_thinking: optional(row, columns, "supports_extended_thinking")?,
        supports_image_generation: optional(row, columns, "supports_image_generation")?,
        config: optional(row, columns, "config")?,
    })
}

#[async_trait]
impl ModelCatalog for SeaOrmModelCatalog {
    async fn global_models_by_provider_model_name(
        &self,
        provider_model_name: &str,
    ) -> Result<Vec<GlobalModel>, StoreError> {
        // No DISTINCT: PostgreSQL has no equality on `json` columns. One row
        // per provider at most (UNIQUE(provider_id, provider_model_name)).
        let rows: Vec<GlobalModelRow> = global_models::Entity::find()
            .select_only()
            .columns(global_model_columns())
            .join(JoinType::InnerJoin, global_models::Relation::Models.def())
            .join(JoinType::InnerJoin, models::Relation::Provider.def())
            .filter(models::Column::ProviderModelName.eq(provider_model_name))
            .filter(models::Column::IsActive.eq(true))
            .filter(providers::Column::IsActive.eq(true))
            .filter(global_models::Column::IsActive.eq(true))
            .into_tuple()
            .all(self.db.get()?)
            .await
            .map_err(db_error)?;
        let mut seen = HashSet::new();
        Ok(rows
            .into_iter()
            .filter(|row| seen.insert(row.0.clone()))
            .map(global_model)
            .collect())
    }

    async fn active_global_model_by_name(&self, name: &str) -> Result<Option<GlobalModel>, StoreError> {
        let row: Option<GlobalModelRow> = global_models::Entity::find()
            .select_only()
            .columns(global_model_columns())
            .filter(global_models::Column::Name.eq(name))
            .filter(global_models::Column::IsActive.eq(true))
            .into_tuple()
            .one(self.db.get()?)
            .await
            .map_err(db_error)?;
        Ok(row.map(global_model))
    }

    async fn active_provider_models(
        &self,
        provider_id: &str,
        global_model_id: &str,
    ) -> Result<Vec<ProviderModel>, StoreError> {
        let present = model_columns(self.db.get()?).await.map_err(db_error)?;
        let optional: HashSet<String> = OPTIONAL_MODEL_COLUMNS
            .iter()
            .filter(|c| present.contains(**c))
            .map(|c| (*c).to_owned())
            .collect();
        let mut select = models::Entity::find()
            .select_only()
            .columns([
                models::Column::Id,
                models::Column::ProviderId,
                models::Column::GlobalModelId,
                models::Column::ProviderModelName,
                models::Column::ProviderModelMappings,
                models::Column::IsActive,
                models::Column::IsAvailable,
            ])
            .filter(models::Column::ProviderId.eq(provider_id))
            .filter(models::Column::GlobalModelId.eq(global_model_id))
            .filter(models::Column::IsActive.eq(true));
        for column in OPTIONAL_MODEL_COLUMNS.iter().filter(|c| optional.contains(**c)) {
            select = select.column_as(Expr::col((models::Entity, Alias::new(*column))), *column);
        }
        let rows = self.db.get()?.query_all(&select.into_query()).await.map_err(db_error)?;
        rows.iter()
            .map(|row| provider_model(row, &optional))
            .collect::<Result<_, _>>()
            .map_err(db_error)
    }

    async fn active_providers(&self, ids: &[String]) -> Result<HashMap<String, ProviderNames>, StoreError> {
        use providers::Column;
        let rows = active_names::<providers::Entity>(
            self.db.get()?,
            ids,
            [Column::Id, Column::Name, Column::DisplayName],
            Column::IsActive,
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name, display_name)| (id, ProviderNames { name, display_name }))
            .collect())
    }

    async fn active_global_models(&self, ids: &[String]) -> Result<HashMap<String, GlobalModelNames>, StoreError> {
        use global_models::Column;
        let rows = active_names::<global_models::Entity>(
            self.db.get()?,
            ids,
            [Column::Id, Column::Name, Column::DisplayName],
            Column::IsActive,
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name, display_name)| (id, GlobalModelNames { name, display_name }))
            .collect())
    }

    async fn served_models(&self, global_model_ids: &[String]) -> Result<Vec<ServedModel>, StoreError> {
        let mut served = Vec::new();
        for chunk in unique_chunks(global_model_ids) {
            let rows: Vec<(String, String, Option<Value>, String, String)> = models::Entity::find()
                .select_only()
                .columns([
                    models::Column::GlobalModelId,
                    models::Column::ProviderModelName,
                    models::Column::ProviderModelMappings,
                ])
                .columns([providers::Column::Name, providers::Column::DisplayName])
                .join(JoinType::InnerJoin, models::Relation::Provider.def())
                .filter(models::Column::GlobalModelId.is_in(chunk))
                .filter(models::Column::IsActive.eq(true))
                .filter(providers::Column::IsActive.eq(true))
                .into_tuple()
                .all(self.db.get()?)
                .await
                .map_err(db_error)?;
            served.extend(rows.into_iter().map(
                |(global_model_id, provider_model_name, provider_model_mappings, name, display_name)| ServedModel {
                    global_model_id,
                    provider_model_name,
                    provider_model_mappings,
                    provider: ProviderNames { name, display_name },
                },
            ));
        }
        Ok(served)
    }
}
