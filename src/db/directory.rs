//! [`Directory`] over sea-orm: Aether's `users`, `api_keys`, `providers`,
//! `provider_endpoints`, `provider_api_keys`, `global_models` and `system_configs`
//! tables, on
//! PostgreSQL or SQLite.
//!
//! Only the columns a method needs are selected (as tuples), so Aether's wider
//! rows (JSON, timestamps) are never decoded here. Id lists are deduplicated
//! and sent in chunks of [`crate::db::CHUNK`] so no statement comes near a backend's
//! bind-parameter limit (SQLite 32766, PostgreSQL 65535).
//!
//! Keyword search is a case-insensitive substring match written as
//! `LOWER(col) LIKE LOWER(?) ESCAPE '\'`, with `\`, `%` and `_` of the keyword
//! escaped, so every character of the keyword is literal. Both sides are
//! lower-cased by the same database function, so a keyword always finds a
//! value spelled with the same case. Folding of other cases follows the
//! backend: PostgreSQL's `LOWER` folds whatever the database's `LC_CTYPE`
//! knows (only ASCII under the `C` locale); SQLite's `LOWER` (without the ICU
//! extension) folds ASCII only, so on SQLite non-ASCII case folding is
//! best-effort (`É` does not find `é`). A substring match cannot use a b-tree
//! index, so [`Directory::search`] reads the searched columns in full.

use async_trait::async_trait;
use sea_orm::sea_query::{BinOper, Expr, ExprTrait, Func};
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    TryGetableMany, Value,
};

use crate::db::entities::{
    api_keys, global_models, provider_api_keys, provider_endpoints, providers, system_configs, users,
};
use crate::db::{DbHandle, db_error, unique_chunks};
use crate::domain::affinity::TargetKind;
use crate::domain::affinity::events::InvalidationReason;
use crate::domain::directory::{
    ApiKeySummary, Directory, KeywordHits, MatchKind, ProviderKeySummary, UpstreamNames, UserMatch, UserSummary,
};
use crate::error::StoreError;

/// The `LIKE` escape character.
const LIKE_ESCAPE: char = '\\';

/// The selected columns of an `api_keys` row, in [`api_key_columns`] order.
type ApiKeyRow = (String, String, Option<String>, Option<String>, bool);

/// [`Directory`] over a sea-orm connection (PostgreSQL or SQLite).
#[derive(Clone)]
pub struct SeaOrmDirectory {
    db: DbHandle,
}

impl SeaOrmDirectory {
    /// Reads through `db`.
    pub fn new(db: impl Into<DbHandle>) -> Self {
        Self { db: db.into() }
    }
}

/// What a target table says of `ids`: (id, row active, owner active) of the
/// rows found (no owner here, so it counts as active), and whether the table
/// has any row at all.
async fn standing<E: EntityTrait>(
    db: &DatabaseConnection,
    id: E::Column,
    is_active: E::Column,
    ids: &[String],
) -> Result<(Vec<(String, bool, bool)>, bool), StoreError> {
    let rows: Vec<(String, bool)> = rows_by_id::<E, _, 2>(db, id, [id, is_active], ids).await?;
    let rows = rows.into_iter().map(|(id, active)| (id, active, true)).collect();
    Ok((rows, has_rows::<E>(db).await?))
}

/// Whether `E`'s table has any row.
async fn has_rows<E: EntityTrait>(db: &DatabaseConnection) -> Result<bool, StoreError> {
    Ok(E::find().one(db).await.map_err(db_error)?.is_some())
}

/// The `api_keys` columns of an [`ApiKeySummary`].
fn api_key_columns() -> [api_keys::Column; 5] {
    [
        api_keys::Column::Id,
        api_keys::Column::UserId,
        api_keys::Column::Name,
        api_keys::Column::KeyEncrypted,
        api_keys::Column::IsStandalone,
    ]
}

fn api_key_summary((id, user_id, name, key_encrypted, is_standalone): ApiKeyRow) -> ApiKeySummary {
    ApiKeySummary {
        id,
        user_id,
        name,
        key_encrypted,
        is_standalone,
    }
}

/// Rows of `E` whose `id` column is in `ids`, as tuples of `columns`; one
/// query per chunk of ids (the bind-parameter limit), duplicates asked once.
async fn rows_by_id<E, T, const N: usize>(
    db: &DatabaseConnection,
    id: E::Column,
    columns: [E::Column; N],
    ids: &[String],
) -> Result<Vec<T>, StoreError>
where
    E: EntityTrait,
    T: TryGetableMany + Send,
{
    let mut rows = Vec::new();
    for chunk in unique_chunks(ids) {
        let found: Vec<T> = E::find()
            .select_only()
            .columns(columns)
            .filter(id.is_in(chunk))
            .into_tuple()
            .all(db)
            .await
            .map_err(db_error)?;
        rows.extend(found);
    }
    Ok(rows)
}

/// A `LIKE` pattern matching values that contain `keyword`, every character
/// of which is literal (`\`, `%` and `_` are escaped with [`LIKE_ESCAPE`]).
fn contains_pattern(keyword: &str) -> String {
    let mut pattern = String::with_capacity(keyword.len() + 2);
    pattern.push('%');
    for c in keyword.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push(LIKE_ESCAPE);
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// `LOWER(table.column) LIKE LOWER(<pattern>) ESCAPE '\'`, the pattern bound
/// as a parameter.
fn matches_ci(column: impl ColumnTrait, pattern: &str) -> Expr {
    let lowered_pattern = Expr::expr(Func::lower(Expr::val(pattern.to_owned())));
    Expr::expr(Func::lower(Expr::col(column.as_column_ref()))).binary(
        BinOper::Like,
        lowered_pattern.binary(BinOper::Escape, Expr::Constant(Value::Char(Some(LIKE_ESCAPE)))),
    )
}

#[async_trait]
impl Directory for SeaOrmDirectory {
    async fn match_user(&self, identifier: &str) -> Result<Vec<UserMatch>, StoreError> {
        // Each of users.id / username / email is unique, so at most one row
        // matches per column; one query finds them all.
        let users: Vec<(String, String, String)> = users::Entity::find()
            .select_only()
            .columns([users::Column::Id, users::Column::Username, users::Column::Email])
            .filter(
                Condition::any()
                    .add(users::Column::Id.eq(identifier))
                    .add(users::Column::Username.eq(identifier))
                    .add(users::Column::Email.eq(identifier)),
            )
            .into_tuple()
            .all(self.db.get()?)
            .await
            .map_err(db_error)?;
        let mut matches = Vec::new();
        for (id, username, email) in users {
            // The database compared with `=`; compare again to learn which
            // column matched (both are exact, byte-wise comparisons).
            for (kind, value) in [
                (MatchKind::UserId, &id),
                (MatchKind::Username, &username),
                (MatchKind::Email, &email),
            ] {
                if value == identifier {
                    matches.push(UserMatch {
                        kind,
                        user_id: id.clone(),
                        api_key_id: None,
                    });
                }
            }
        }
        matches.sort_by_key(|m| m.kind);

        let key: Option<(String, String)> = api_keys::Entity::find()
            .select_only()
            .columns([api_keys::Column::Id, api_keys::Column::UserId])
            .filter(api_keys::Column::Id.eq(identifier))
            .into_tuple()
            .one(self.db.get()?)
            .await
            .map_err(db_error)?;
        if let Some((key_id, user_id)) = key {
            matches.push(UserMatch {
                kind: MatchKind::ApiKeyId,
                user_id,
                api_key_id: Some(key_id),
            });
        }
        Ok(matches)
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKeySummary>, StoreError> {
        let row: Option<ApiKeyRow> = api_keys::Entity::find()
            .select_only()
            .columns(api_key_columns())
            .filter(api_keys::Column::Id.eq(id))
            .into_tuple()
            .one(self.db.get()?)
            .await
            .map_err(db_error)?;
        Ok(row.map(api_key_summary))
    }

    async fn api_keys_of_user(&self, user_id: &str) -> Result<Vec<ApiKeySummary>, StoreError> {
        let rows: Vec<ApiKeyRow> = api_keys::Entity::find()
            .select_only()
            .columns(api_key_columns())
            .filter(api_keys::Column::UserId.eq(user_id))
            .order_by_asc(api_keys::Column::Id)
            .into_tuple()
            .all(self.db.get()?)
            .await
            .map_err(db_error)?;
        Ok(rows.into_iter().map(api_key_summary).collect())
    }

    async fn api_keys(&self, ids: &[String]) -> Result<Vec<ApiKeySummary>, StoreError> {
        let rows: Vec<ApiKeyRow> =
            rows_by_id::<api_keys::Entity, _, 5>(self.db.get()?, api_keys::Column::Id, api_key_columns(), ids).await?;
        Ok(rows.into_iter().map(api_key_summary).collect())
    }

    async fn users(&self, ids: &[String]) -> Result<Vec<UserSummary>, StoreError> {
        let columns = [users::Column::Id, users::Column::Username, users::Column::Email];
        let rows: Vec<(String, String, String)> =
            rows_by_id::<users::Entity, _, 3>(self.db.get()?, users::Column::Id, columns, ids).await?;
        Ok(rows
            .into_iter()
            .map(|(id, username, email)| UserSummary { id, username, email })
            .collect())
    }

    async fn upstream_names(
        &self,
        provider_ids: &[String],
        endpoint_ids: &[String],
        provider_key_ids: &[String],
        global_model_ids: &[String],
    ) -> Result<UpstreamNames, StoreError> {
        use provider_api_keys::Column as KeyColumn;
        use provider_endpoints::Column as EndpointColumn;
        // Four independent look-ups run side by side: the call waits for the
        // slowest one, not for all four in a row.
        let (providers, endpoints, provider_keys, models) = futures::future::try_join4(
            rows_by_id::<providers::Entity, (String, String), 2>(
                self.db.get()?,
                providers::Column::Id,
                [providers::Column::Id, providers::Column::DisplayName],
                provider_ids,
            ),
            rows_by_id::<provider_endpoints::Entity, (String, String, String), 3>(
                self.db.get()?,
                EndpointColumn::Id,
                [EndpointColumn::Id, EndpointColumn::ApiFormat, EndpointColumn::BaseUrl],
                endpoint_ids,
            ),
            rows_by_id::<provider_api_keys::Entity, (String, String, String, f64), 4>(
                self.db.get()?,
                KeyColumn::Id,
                [
                    KeyColumn::Id,
                    KeyColumn::Name,
                    KeyColumn::ApiKey,
                    KeyColumn::RateMultiplier,
                ],
                provider_key_ids,
            ),
            rows_by_id::<global_models::Entity, (String, String, String), 3>(
                self.db.get()?,
                global_models::Column::Id,
                [
                    global_models::Column::Id,
                    global_models::Column::Name,
                    global_models::Column::DisplayName,
                ],
                global_model_ids,
            ),
        )
        .await?;
        Ok(UpstreamNames {
            provider_display_names: providers.into_iter().collect(),
            endpoints: endpoints
                .into_iter()
                .map(|(id, api_format, base_url)| (id, (api_format, base_url)))
                .collect(),
            provider_keys: provider_keys
                .into_iter()
                .map(|(id, name, api_key_encrypted, rate_multiplier)| {
                    let key = ProviderKeySummary {
                        name,
                        api_key_encrypted,
                        rate_multiplier,
                    };
                    (id, key)
                })
                .collect(),
            global_models: models
                .into_iter()
                .map(|(id, name, display_name)| (id, (name, display_name)))
                .collect(),
        })
    }

    async fn system_config(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        system_configs::Entity::find()
            .select_only()
            .column(system_configs::Column::Value)
            .filter(system_configs::Column::Key.eq(key))
            .into_tuple()
            .one(self.db.get()?)
            .await
            .map_err(db_error)
    }

    async fn search(&self, keyword: &str, limit: u64) -> Result<KeywordHits, StoreError> {
        if limit == 0 {
            return Ok(KeywordHits::default());
        }
        // sqlx binds LIMIT as i64 (and panics on a larger u64).
        let limit = Ord::min(limit, i64::MAX as u64);
        let pattern = contains_pattern(keyword);

        let matching_users = users::Entity::find()
            .select_only()
            .column(users::Column::Id)
            .filter(
                Condition::any()
                    .add(matches_ci(users::Column::Id, &pattern))
                    .add(matches_ci(users::Column::Username, &pattern))
                    .add(matches_ci(users::Column::Email, &pattern)),
            )
            .into_query();
        let affinity_keys: Vec<String> = api_keys::Entity::find()
            .select_only()
            .column(api_keys::Column::Id)
            .filter(
                Condition::any()
                    .add(matches_ci(api_keys::Column::Id, &pattern))
                    .add(matches_ci(api_keys::Column::Name, &pattern))
                    .add(api_keys::Column::UserId.in_subquery(matching_users)),
            )
            .order_by_asc(api_keys::Column::Id)
            .limit(limit)
            .into_tuple()
            .all(self.db.get()?)
            .await
            .map_err(db_error)?;

        let provider_ids: Vec<String> = providers::Entity::find()
            .select_only()
            .column(providers::Column::Id)
            .filter(matches_ci(providers::Column::Id, &pattern))
            .order_by_asc(providers::Column::Id)
            .limit(limit)
            .into_tuple()
            .all(self.db.get()?)
            .await
            .map_err(db_error)?;

        let provider_key_ids: Vec<String> = provider_api_keys::Entity::find()
            .select_only()
            .column(provider_api_keys::Column::Id)
            .filter(matches_ci(provider_api_keys::Column::Id, &pattern))
            .order_by_asc(provider_api_keys::Column::Id)
            .limit(limit)
            .into_tuple()
            .all(self.db.get()?)
            .await
            .map_err(db_error)?;

        Ok(KeywordHits {
            affinity_keys,
            provider_ids,
            provider_key_ids,
        })
    }

    async fn inactive_targets(
        &self,
        kind: TargetKind,
        ids: &[String],
    ) -> Result<Vec<(String, InvalidationReason)>, StoreError> {
        let db = self.db.get()?;
        let (rows, table_has_rows) = match kind {
            TargetKind::Provider => {
                standing::<providers::Entity>(db, providers::Column::Id, providers::Column::IsActive, ids).await?
            }
            TargetKind::Endpoint => {
                use provider_endpoints::Column;
                standing::<provider_endpoints::Entity>(db, Column::Id, Column::IsActive, ids).await?
            }
            TargetKind::ProviderKey => {
                use provider_api_keys::Column;
                standing::<provider_api_keys::Entity>(db, Column::Id, Column::IsActive, ids).await?
            }
            TargetKind::ApiKey => {
                let mut rows = Vec::new();
                for chunk in unique_chunks(ids) {
                    let found: Vec<(String, bool, Option<bool>, Option<bool>)> = api_keys::Entity::find()
                        .select_only()
                        .column(api_keys::Column::Id)
                        .column(api_keys::Column::IsActive)
                        .column(users::Column::IsActive)
                        .column(users::Column::IsDeleted)
                        .left_join(users::Entity)
                        .filter(api_keys::Column::Id.is_in(chunk))
                        .into_tuple()
                        .all(db)
                        .await
                        .map_err(db_error)?;
                    rows.extend(found.into_iter().map(|(id, key_active, user_active, user_deleted)| {
                        (id, key_active, user_active == Some(true) && user_deleted == Some(false))
                    }));
                }
                (rows, has_rows::<api_keys::Entity>(db).await?)
            }
        };
        let found: std::collections::HashMap<String, (bool, bool)> = rows
            .into_iter()
            .map(|(id, active, owner)| (id, (active, owner)))
            .collect();
        // A row missing from an empty table was never there (the embedded
        // default, a database not yet filled): only a table with rows
        // proves a missing one was deleted.
        let row_reason = kind.inactive_reason();
        Ok(unique_chunks(ids)
            .into_iter()
            .flatten()
            .filter_map(|id| match found.get(&id) {
                Some((true, true)) => None,
                Some((true, false)) => Some((id, InvalidationReason::UserInactive)),
                Some((false, _)) => Some((id, row_reason)),
                None => table_has_rows.then_some((id, row_reason)),
            })
            .collect())
    }

    async fn user_row(
        &self,
        key: &crate::domain::directory::UserKey,
    ) -> Result<Option<crate::domain::directory::UserRow>, StoreError> {
        user_row(self.db.get()?, key).await
    }
}

/// The selected columns of a `users` row, in [`user_row`] order.
type UserRowColumns = (
    String,
    String,
    String,
    users::UserRole,
    bool,
    Option<f64>,
    Option<f64>,
    sea_orm::prelude::DateTimeWithTimeZone,
    Option<sea_orm::prelude::DateTimeWithTimeZone>,
    Option<String>,
);

/// One `users` row by id or email. `model_capability_settings` is read as
/// its stored text (`CAST(.. AS text)`: verbatim for PostgreSQL `json`, and
/// the text itself on SQLite), so object members keep their document order.
async fn user_row(
    db: &DatabaseConnection,
    key: &crate::domain::directory::UserKey,
) -> Result<Option<crate::domain::directory::UserRow>, StoreError> {
    use crate::domain::directory::{UserKey, UserRole, UserRow};

    let filter = match key {
        UserKey::Id(id) => users::Column::Id.eq(id.as_str()),
        UserKey::Email(email) => users::Column::Email.eq(email.as_str()),
    };
    let settings_text = Expr::col(users::Column::ModelCapabilitySettings.as_column_ref()).cast_as("text");
    let row: Option<UserRowColumns> = users::Entity::find()
        .select_only()
        .columns([
            users::Column::Id,
            users::Column::Email,
            users::Column::Username,
            users::Column::Role,
            users::Column::IsActive,
            users::Column::QuotaUsd,
            users::Column::UsedUsd,
            users::Column::CreatedAt,
            users::Column::LastLoginAt,
        ])
        .column_as(settings_text, "model_capability_settings")
        .filter(filter)
        .into_tuple()
        .one(db)
        .await
        .map_err(db_error)?;
    Ok(row.map(
        |(id, email, username, role, is_active, quota_usd, used_usd, created_at, last_login_at, settings)| UserRow {
            id,
            email,
            username,
            role: match role {
                users::UserRole::Admin => UserRole::Admin,
                users::UserRole::User => UserRole::User,
            },
            is_active,
            quota_usd,
            used_usd,
            created_at,
            last_login_at,
            model_capability_settings: settings,
        },
    ))
}

#[cfg(test)]
mod tests {
    use sea_orm::{DbBackend, EntityTrait, QueryFilter, QueryTrait};

    use super::*;

    #[test]
    fn pattern_escapes_like_metacharacters() {
        assert_eq!(contains_pattern("abc"), "%abc%");
        assert_eq!(contains_pattern(r"50%_o\k"), r"%50\%\_o\\k%");
        assert_eq!(contains_pattern("*?[É"), "%*?[É%");
        assert_eq!(contains_pattern(""), "%%");
    }

    #[test]
    fn chunks_are_deduplicated_and_bounded() {
        let ids: Vec<String> = (0..1203).map(|i| format!("id-{}", i % 1201)).collect();
        let chunks = unique_chunks(&ids);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [500, 500, 201]);
        assert!(unique_chunks(&[]).is_empty());
    }

    #[test]
    fn like_renders_with_escape_clause() {
        let query = api_keys::Entity::find().filter(matches_ci(api_keys::Column::Name, "%x%"));
        let postgres = query.clone().build(DbBackend::Postgres).to_string();
        assert!(
            postgres.ends_with(r#"WHERE LOWER("api_keys"."name") LIKE LOWER('%x%') ESCAPE E'\\'"#),
            "{postgres}"
        );
        let sqlite = query.build(DbBackend::Sqlite).to_string();
        assert!(
            sqlite.ends_with(r#"WHERE LOWER("api_keys"."name") LIKE LOWER('%x%') ESCAPE '\'"#),
            "{sqlite}"
        );
    }
}
