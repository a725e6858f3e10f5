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

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sea_orm::sea_query::{BinOper, Expr, ExprTrait, Func};
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, JoinType, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait, RelationTrait, Select, TryGetableMany, Value,
};

use crate::db::entities::{
    api_keys, global_models, provider_api_keys, provider_endpoints, providers, system_configs, users,
};
use crate::db::name_cache::NameCache;
use crate::db::{DbHandle, db_error, unique_chunks};
use crate::domain::affinity::TargetKind;
use crate::domain::affinity::events::InvalidationReason;
use crate::domain::directory::{
    ApiKeySummary, ClientKey, Directory, KeywordHits, MatchKind, ProviderKeySummary, UpstreamNames, UserMatch,
    UserSummary,
};
use crate::error::StoreError;

/// The `LIKE` escape character.
const LIKE_ESCAPE: char = '\\';

/// The selected columns of an `api_keys` row, in [`api_key_columns`] order.
type ApiKeyRow = (String, String, Option<String>, Option<String>, bool);

/// A user's id, username and email, then the [`ApiKeyRow`] columns of one of
/// their keys (NULL for a user without keys).
type UserKeyRow = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<bool>,
);

/// An [`ApiKeyRow`] followed by its owner's id, username and email (NULL when
/// the owner row is missing), as [`client_keys_select`] reads them.
type ClientKeyRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    bool,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// [`Directory`] over a sea-orm connection (PostgreSQL or SQLite).
#[derive(Clone)]
pub struct SeaOrmDirectory {
    db: DbHandle,
    name_caches: Option<Arc<UpstreamNameCaches>>,
}

/// The rows [`Directory::upstream_names`] reads, cached by id.
struct UpstreamNameCaches {
    providers: NameCache<String>,
    endpoints: NameCache<(String, String)>,
    provider_keys: NameCache<ProviderKeySummary>,
    global_models: NameCache<(String, String)>,
}

impl SeaOrmDirectory {
    /// Reads through `db`, every time.
    pub fn new(db: impl Into<DbHandle>) -> Self {
        Self {
            db: db.into(),
            name_caches: None,
        }
    }

    /// Keeps the rows of [`Directory::upstream_names`] for `ttl` (see
    /// [`crate::db::name_cache`]); a zero `ttl` reads every time.
    pub fn caching_names(mut self, ttl: Duration) -> Self {
        self.name_caches = (!ttl.is_zero()).then(|| {
            Arc::new(UpstreamNameCaches {
                providers: NameCache::new(ttl),
                endpoints: NameCache::new(ttl),
                provider_keys: NameCache::new(ttl),
                global_models: NameCache::new(ttl),
            })
        });
        self
    }
}

/// The cached rows of `ids` and the ids to read (all of them without a cache).
fn split_cached<V: Clone>(cache: Option<&NameCache<V>>, ids: &[String]) -> (Vec<(String, V)>, Vec<String>) {
    cache.map_or_else(|| (Vec::new(), ids.to_vec()), |cache| cache.split(ids))
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
    selected_by_id(db, E::find().select_only().columns(columns), id, ids).await
}

/// The tuples `select` reads for the rows whose `id` is in `ids`, chunked
/// and deduplicated as in [`rows_by_id`].
async fn selected_by_id<E, T>(
    db: &DatabaseConnection,
    select: Select<E>,
    id: impl ColumnTrait,
    ids: &[String],
) -> Result<Vec<T>, StoreError>
where
    E: EntityTrait,
    T: TryGetableMany + Send,
{
    let mut rows = Vec::new();
    for chunk in unique_chunks(ids) {
        let found: Vec<T> = select
            .clone()
            .filter(id.is_in(chunk))
            .into_tuple()
            .all(db)
            .await
            .map_err(db_error)?;
        rows.extend(found);
    }
    Ok(rows)
}

/// The keys `select` (a find of `api_keys`, maybe joined and filtered)
/// reads, as summaries in id order.
async fn api_key_summaries(
    db: &DatabaseConnection,
    select: Select<api_keys::Entity>,
) -> Result<Vec<ApiKeySummary>, StoreError> {
    let rows: Vec<ApiKeyRow> = select
        .select_only()
        .columns(api_key_columns())
        .order_by_asc(api_keys::Column::Id)
        .into_tuple()
        .all(db)
        .await
        .map_err(db_error)?;
    Ok(rows.into_iter().map(api_key_summary).collect())
}

/// Users whose id, username or email is exactly `identifier` (each column
/// is unique, so at most three rows).
fn user_matches(identifier: &str) -> Condition {
    Condition::any()
        .add(users::Column::Id.eq(identifier))
        .add(users::Column::Username.eq(identifier))
        .add(users::Column::Email.eq(identifier))
}

/// The id, username and email of the users [`user_matches`] finds.
fn matched_users_select(identifier: &str) -> Select<users::Entity> {
    users::Entity::find()
        .select_only()
        .columns([users::Column::Id, users::Column::Username, users::Column::Email])
        .filter(user_matches(identifier))
}

/// Runs `users` (a read of the matched users) beside the read of the API key
/// whose id is exactly `identifier` (with its owner's columns).
async fn beside_client_key<T>(
    db: &DatabaseConnection,
    identifier: &str,
    users: impl Future<Output = Result<T, sea_orm::DbErr>>,
) -> Result<(T, Option<ClientKeyRow>), StoreError> {
    let key = client_keys_select()
        .filter(api_keys::Column::Id.eq(identifier))
        .into_tuple::<ClientKeyRow>()
        .one(db);
    futures::future::try_join(users, key).await.map_err(db_error)
}

/// The ways `identifier` matched, in Aether's order: the user columns of
/// `users` (found with `=`; compared again here to learn which column
/// matched, both exact byte-wise comparisons), then the API key of `key` if
/// its owner exists.
fn matches_in_order(
    identifier: &str,
    users: impl Iterator<Item = UserSummary>,
    key: Option<ClientKeyRow>,
) -> Vec<UserMatch> {
    let mut matches = Vec::new();
    for user in users {
        for (kind, value) in [
            (MatchKind::UserId, &user.id),
            (MatchKind::Username, &user.username),
            (MatchKind::Email, &user.email),
        ] {
            if value == identifier {
                matches.push(UserMatch {
                    kind,
                    user: user.clone(),
                    api_key: None,
                });
            }
        }
    }
    matches.sort_by_key(|m| m.kind);
    if let Some(ClientKey { key, owner: Some(user) }) = key.map(client_key) {
        matches.push(UserMatch {
            kind: MatchKind::ApiKeyId,
            user,
            api_key: Some(key),
        });
    }
    matches
}

/// `api_keys` LEFT JOIN `users`: a key's columns and its owner's, in
/// [`ClientKeyRow`] order, so a key and its owner take one round trip.
fn client_keys_select() -> Select<api_keys::Entity> {
    api_keys::Entity::find()
        .select_only()
        .columns(api_key_columns())
        .columns([users::Column::Id, users::Column::Username, users::Column::Email])
        .join(JoinType::LeftJoin, api_keys::Relation::User.def())
}

fn client_key((id, user_id, name, key_encrypted, is_standalone, owner_id, username, email): ClientKeyRow) -> ClientKey {
    let owner = match (owner_id, username, email) {
        (Some(id), Some(username), Some(email)) => Some(UserSummary { id, username, email }),
        _ => None,
    };
    ClientKey {
        key: api_key_summary((id, user_id, name, key_encrypted, is_standalone)),
        owner,
    }
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
        // matches per column; one query finds them all. The API key (with
        // its owner) is a second query, run beside the first.
        let db = self.db.get()?;
        let users = matched_users_select(identifier)
            .into_tuple::<(String, String, String)>()
            .all(db);
        let (users, key) = beside_client_key(db, identifier, users).await?;
        let users = users
            .into_iter()
            .map(|(id, username, email)| UserSummary { id, username, email });
        Ok(matches_in_order(identifier, users, key))
    }

    async fn match_user_with_keys(&self, identifier: &str) -> Result<(Vec<UserMatch>, Vec<ApiKeySummary>), StoreError> {
        // match_user's first query, joined with the matched users' keys: one
        // row per (user, key), or one with no key for a user without any.
        let db = self.db.get()?;
        let users = matched_users_select(identifier)
            .columns(api_key_columns())
            .join(JoinType::LeftJoin, users::Relation::ApiKeys.def())
            .order_by_asc(api_keys::Column::Id)
            .into_tuple::<UserKeyRow>()
            .all(db);
        let (rows, key) = beside_client_key(db, identifier, users).await?;
        let mut users: Vec<UserSummary> = Vec::new();
        let mut keys = Vec::new();
        for (id, username, email, key_id, owner, name, key_encrypted, is_standalone) in rows {
            if !users.iter().any(|u| u.id == id) {
                users.push(UserSummary { id, username, email });
            }
            if let (Some(key_id), Some(owner), Some(is_standalone)) = (key_id, owner, is_standalone) {
                keys.push(api_key_summary((key_id, owner, name, key_encrypted, is_standalone)));
            }
        }
        Ok((matches_in_order(identifier, users.into_iter(), key), keys))
    }

    async fn api_keys_of_user(&self, user_id: &str) -> Result<Vec<ApiKeySummary>, StoreError> {
        let of_user = api_keys::Entity::find().filter(api_keys::Column::UserId.eq(user_id));
        api_key_summaries(self.db.get()?, of_user).await
    }

    async fn client_keys(&self, ids: &[String]) -> Result<Vec<ClientKey>, StoreError> {
        let rows: Vec<ClientKeyRow> =
            selected_by_id(self.db.get()?, client_keys_select(), api_keys::Column::Id, ids).await?;
        Ok(rows.into_iter().map(client_key).collect())
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
        let caches = self.name_caches.as_deref();
        let (known_providers, provider_ids) = split_cached(caches.map(|c| &c.providers), provider_ids);
        let (known_endpoints, endpoint_ids) = split_cached(caches.map(|c| &c.endpoints), endpoint_ids);
        let (known_keys, provider_key_ids) = split_cached(caches.map(|c| &c.provider_keys), provider_key_ids);
        let (known_models, global_model_ids) = split_cached(caches.map(|c| &c.global_models), global_model_ids);
        // Four independent look-ups (of the ids not cached; none for an empty
        // list) run side by side: the call waits for the slowest one.
        let (providers, endpoints, provider_keys, models) = futures::future::try_join4(
            rows_by_id::<providers::Entity, (String, String), 2>(
                self.db.get()?,
                providers::Column::Id,
                [providers::Column::Id, providers::Column::DisplayName],
                &provider_ids,
            ),
            rows_by_id::<provider_endpoints::Entity, (String, String, String), 3>(
                self.db.get()?,
                EndpointColumn::Id,
                [EndpointColumn::Id, EndpointColumn::ApiFormat, EndpointColumn::BaseUrl],
                &endpoint_ids,
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
                &provider_key_ids,
            ),
            rows_by_id::<global_models::Entity, (String, String, String), 3>(
                self.db.get()?,
                global_models::Column::Id,
                [
                    global_models::Column::Id,
                    global_models::Column::Name,
                    global_models::Column::DisplayName,
                ],
                &global_model_ids,
            ),
        )
        .await?;
        let endpoints: Vec<(String, (String, String))> = endpoints
            .into_iter()
            .map(|(id, api_format, base_url)| (id, (api_format, base_url)))
            .collect();
        let provider_keys: Vec<(String, ProviderKeySummary)> = provider_keys
            .into_iter()
            .map(|(id, name, api_key_encrypted, rate_multiplier)| {
                let key = ProviderKeySummary {
                    name,
                    api_key_encrypted,
                    rate_multiplier,
                };
                (id, key)
            })
            .collect();
        let models: Vec<(String, (String, String))> = models
            .into_iter()
            .map(|(id, name, display_name)| (id, (name, display_name)))
            .collect();
        if let Some(caches) = caches {
            caches.providers.store(&provider_ids, &providers);
            caches.endpoints.store(&endpoint_ids, &endpoints);
            caches.provider_keys.store(&provider_key_ids, &provider_keys);
            caches.global_models.store(&global_model_ids, &models);
        }
        Ok(UpstreamNames {
            provider_display_names: known_providers.into_iter().chain(providers).collect(),
            endpoints: known_endpoints.into_iter().chain(endpoints).collect(),
            provider_keys: known_keys.into_iter().chain(provider_keys).collect(),
            global_models: known_models.into_iter().chain(models).collect(),
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
