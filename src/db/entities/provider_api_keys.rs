//! `provider_api_keys`: upstream keys of an endpoint; `api_key` holds the encrypted key.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "provider_api_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub endpoint_id: String,
    pub api_key: String,
    pub name: String,
    pub rate_multiplier: f64,
    pub cache_ttl_minutes: i32,
    pub internal_priority: Option<i32>,
    pub global_priority: Option<i32>,
    pub is_active: bool,
    pub allowed_models: Option<Json>,
    pub capabilities: Option<Json>,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::provider_endpoints::Entity",
        from = "Column::EndpointId",
        to = "super::provider_endpoints::Column::Id",
        on_delete = "Cascade"
    )]
    ProviderEndpoint,
}

impl Related<super::provider_endpoints::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ProviderEndpoint.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
