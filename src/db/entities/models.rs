//! `models`: how a provider serves a global model (`UNIQUE(provider_id, provider_model_name)`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "models")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub provider_id: String,
    pub global_model_id: String,
    pub provider_model_name: String,
    /// jsonb since Aether's rename from `provider_model_aliases` (its ORM still says json).
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub provider_model_mappings: Option<Json>,
    pub is_active: bool,
    pub is_available: Option<bool>,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::providers::Entity",
        from = "Column::ProviderId",
        to = "super::providers::Column::Id"
    )]
    Provider,
    #[sea_orm(
        belongs_to = "super::global_models::Entity",
        from = "Column::GlobalModelId",
        to = "super::global_models::Column::Id"
    )]
    GlobalModel,
}

impl Related<super::providers::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Provider.def()
    }
}

impl Related<super::global_models::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::GlobalModel.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
