//! `api_keys`: users' gateway keys, found by `key_hash` (sha256 hex of the key).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub user_id: String,
    #[sea_orm(unique)]
    pub key_hash: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub key_encrypted: Option<String>,
    pub name: Option<String>,
    pub is_standalone: bool,
    pub is_active: bool,
    pub expires_at: Option<DateTimeWithTimeZone>,
    pub allowed_providers: Option<Json>,
    pub allowed_endpoints: Option<Json>,
    pub allowed_api_formats: Option<Json>,
    pub allowed_models: Option<Json>,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::users::Entity",
        from = "Column::UserId",
        to = "super::users::Column::Id",
        on_delete = "Cascade"
    )]
    User,
}

impl Related<super::users::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::User.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
