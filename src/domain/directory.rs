//! What the affinity and user use cases need to know from Aether's tables:
//! who owns an API key, how an identifier resolves, and the names that
//! enrich an affinity. Implemented over sea-orm in `crate::db::directory`.

use std::collections::HashMap;

use async_trait::async_trait;

use crate::domain::affinity::TargetKind;
use crate::domain::affinity::events::InvalidationReason;
use crate::error::StoreError;

/// How an identifier matched, in Aether's resolution order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MatchKind {
    /// `users.id`.
    UserId,
    /// `users.username`.
    Username,
    /// `users.email`.
    Email,
    /// `api_keys.id` (the key's owner).
    ApiKeyId,
}

/// One way an identifier matched a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserMatch {
    /// Which column matched.
    pub kind: MatchKind,
    /// The user it points at (read by the same query, so resolving needs no
    /// second round trip).
    pub user: UserSummary,
    /// The API key, for [`MatchKind::ApiKeyId`].
    pub api_key: Option<ApiKeySummary>,
}

/// A user row's identity fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    /// `users.id`.
    pub id: String,
    /// `users.username`.
    pub username: String,
    /// `users.email`.
    pub email: String,
}

/// A client API key row's fields used here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeySummary {
    /// `api_keys.id` (the affinity key).
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// `api_keys.name`.
    pub name: Option<String>,
    /// `api_keys.key_encrypted` (Aether's double-base64 Fernet), if stored.
    pub key_encrypted: Option<String>,
    /// `api_keys.is_standalone`.
    pub is_standalone: bool,
}

/// A client API key with its owner, read together (one joined query).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientKey {
    /// The `api_keys` row.
    pub key: ApiKeySummary,
    /// Its `users` row; `None` when the owner row is missing.
    pub owner: Option<UserSummary>,
}

/// Names of the upstream side of an affinity.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UpstreamNames {
    /// `providers.display_name` by provider id.
    pub provider_display_names: HashMap<String, String>,
    /// (`api_format`, `base_url`) by endpoint id.
    pub endpoints: HashMap<String, (String, String)>,
    /// Provider keys by id.
    pub provider_keys: HashMap<String, ProviderKeySummary>,
    /// (`name`, `display_name`) by global model id.
    pub global_models: HashMap<String, (String, String)>,
}

/// A provider key row's fields used here.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderKeySummary {
    /// `provider_api_keys.name`.
    pub name: String,
    /// `provider_api_keys.api_key` (encrypted).
    pub api_key_encrypted: String,
    /// `provider_api_keys.rate_multiplier`.
    pub rate_multiplier: f64,
}

/// What a free-text keyword matched (case-insensitive substring), as ids
/// whose affinities are then read through the indexes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeywordHits {
    /// API key ids whose id or name matched, or whose owner's id, username
    /// or email matched.
    pub affinity_keys: Vec<String>,
    /// Provider ids that matched.
    pub provider_ids: Vec<String>,
    /// Provider key ids that matched.
    pub provider_key_ids: Vec<String>,
}

/// Read access to Aether's tables. Every method is one or two indexed
/// queries; none scans a table.
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    /// Every way `identifier` (already trimmed) matches, in Aether's order:
    /// users.id, users.username, users.email, api_keys.id (of a key whose
    /// owner row exists). Exact, case-sensitive, no active/deleted filter.
    /// Empty when nothing matches.
    async fn match_user(&self, identifier: &str) -> Result<Vec<UserMatch>, StoreError>;

    /// [`Directory::match_user`], and every API key of the users it matched
    /// by a user column (id, username, email), read by the same query.
    async fn match_user_with_keys(&self, identifier: &str) -> Result<(Vec<UserMatch>, Vec<ApiKeySummary>), StoreError>;

    /// Every API key of a user.
    async fn api_keys_of_user(&self, user_id: &str) -> Result<Vec<ApiKeySummary>, StoreError>;

    /// API keys by id with their owners (missing ids are left out).
    async fn client_keys(&self, ids: &[String]) -> Result<Vec<ClientKey>, StoreError>;

    /// Names of providers, endpoints, provider keys and global models by id.
    async fn upstream_names(
        &self,
        provider_ids: &[String],
        endpoint_ids: &[String],
        provider_key_ids: &[String],
        global_model_ids: &[String],
    ) -> Result<UpstreamNames, StoreError>;

    /// The JSON value of a `system_configs` row, if present.
    async fn system_config(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError>;

    /// Case-insensitive substring search of `keyword` over api_keys.id,
    /// api_keys.name, users.id / username / email (giving their keys),
    /// providers.id and provider_api_keys.id. `%`, `_` and `\` in the
    /// keyword are literal. At most `limit` ids of each kind.
    async fn search(&self, keyword: &str, limit: u64) -> Result<KeywordHits, StoreError>;

    /// The full `users` row with this id or email (exact, case-sensitive;
    /// no active/deleted filter), if any.
    async fn user_row(&self, key: &UserKey) -> Result<Option<UserRow>, StoreError>;

    /// Which of `ids` (rows of `kind`) a binding must no longer point at,
    /// and why: the row is not active, or missing from a table that has rows
    /// (deleted); for an API key, also its owner missing, inactive or
    /// deleted. One indexed query per 500 ids, and one to see whether the
    /// table has any row.
    async fn inactive_targets(
        &self,
        kind: TargetKind,
        ids: &[String],
    ) -> Result<Vec<(String, InvalidationReason)>, StoreError>;
}

/// A `users` column that identifies one row (both are unique).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UserKey {
    /// `users.id`.
    Id(String),
    /// `users.email`, exact (no case folding).
    Email(String),
}

/// Aether's `userrole`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UserRole {
    /// `'admin'`.
    Admin,
    /// `'user'`.
    User,
}

/// A `users` row: the columns Aether caches for a user, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct UserRow {
    /// `users.id`.
    pub id: String,
    /// `users.email`.
    pub email: String,
    /// `users.username`.
    pub username: String,
    /// `users.role`.
    pub role: UserRole,
    /// `users.is_active`.
    pub is_active: bool,
    /// `users.quota_usd`.
    pub quota_usd: Option<f64>,
    /// `users.used_usd` (nullable in Aether's schema).
    pub used_usd: Option<f64>,
    /// `users.created_at`.
    pub created_at: chrono::DateTime<chrono::FixedOffset>,
    /// `users.last_login_at`.
    pub last_login_at: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// `users.model_capability_settings` as the JSON text stored (members in
    /// document order, as Aether's driver reads them).
    pub model_capability_settings: Option<String>,
}
