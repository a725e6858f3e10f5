//! `provider_endpoints`: one per provider and API format (`UNIQUE(provider_id, api_format)`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "provider_endpoints")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub provider_id: String,
    /// Aether's `APIFormat` value, upper case.
    pub api_format: String,
    pub base_url: String,
    pub is_active: bool,
    pub max_concurrent: Option<i32>,
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub proxy: Option<Json>,
    pub headers: Option<Json>,
    pub config: Option<Json>,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::providers::Entity",
        from = "Column::ProviderId",
        to = "super::providers::Column::Id",
        on_delete = "Cascade"
    )]
    Provider,
    #[sea_orm(has_many = "super::provider_api_keys::Entity")]
    ProviderApiKeys,
}

impl Related<super::providers::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Provider.def()
    }
}

impl Related<super::provider_api_keys::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ProviderApiKeys.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
