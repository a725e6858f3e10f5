//! `providers`: upstream LLM vendors; `billing_type` is the PostgreSQL enum `providerbillingtype`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "providers")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(unique)]
    pub name: String,
    pub display_name: String,
    pub is_active: bool,
    pub provider_priority: Option<i32>,
    pub billing_type: ProviderBillingType,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
}

/// Aether's `providerbillingtype`, stored by value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "Enum", enum_name = "providerbillingtype")]
pub enum ProviderBillingType {
    #[sea_orm(string_value = "monthly_quota")]
    MonthlyQuota,
    #[sea_orm(string_value = "pay_as_you_go")]
    PayAsYouGo,
    #[sea_orm(string_value = "free_tier")]
    FreeTier,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::provider_endpoints::Entity")]
    ProviderEndpoints,
    #[sea_orm(has_many = "super::models::Entity")]
    Models,
}

impl Related<super::provider_endpoints::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ProviderEndpoints.def()
    }
}

impl Related<super::models::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Models.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
