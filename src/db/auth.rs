//! The users-table side of authentication: an admin's standing.

use async_trait::async_trait;
use sea_orm::{EntityTrait, QuerySelect};

use super::entities::users::{self, UserRole};
use super::{DbHandle, store_error};
use crate::auth::{UserAccess, UserAccessLookup};
use crate::error::StoreError;

/// Reads role and active flags from `users`.
pub struct SeaOrmUserAccess {
    db: DbHandle,
}

impl SeaOrmUserAccess {
    /// A lookup over `db`.
    pub fn new(db: impl Into<DbHandle>) -> Self {
        Self { db: db.into() }
    }
}

#[async_trait]
impl UserAccessLookup for SeaOrmUserAccess {
    async fn user_access(&self, user_id: &str) -> Result<Option<UserAccess>, StoreError> {
        let row: Option<(UserRole, bool, bool)> = users::Entity::find_by_id(user_id.to_owned())
            .select_only()
            .column(users::Column::Role)
            .column(users::Column::IsActive)
            .column(users::Column::IsDeleted)
            .into_tuple()
            .one(self.db.get()?)
            .await
            .map_err(|e| store_error(&e))?;
        Ok(row.map(|(role, is_active, is_deleted)| UserAccess {
            is_admin: role == UserRole::Admin,
            is_active: is_active && !is_deleted,
        }))
    }
}
