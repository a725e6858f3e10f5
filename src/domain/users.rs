//! The user use cases: resolve an identifier in Aether's order, read a user
//! through Aether's user cache (`user:id:{id}` / `user:email:{email}`, its
//! JSON, 60 s), and drop those cache entries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Timelike};
use serde::Deserialize;

use crate::domain::directory::{Directory, MatchKind, UserKey, UserMatch, UserRole, UserRow};
use crate::domain::python_json::{OrderedJson, isoformat, parse_isoformat, write_bool, write_float, write_str};
use crate::domain::validate::{self, MAX_IDENTIFIER_LEN};
use crate::error::{Error, Result, StoreError, StoreKind};
use crate::store::CacheStore;

/// How long Aether keeps a cached user (`CacheTTL.USER`).
pub const USER_CACHE_TTL: Duration = Duration::from_secs(60);

/// A user as Aether caches it (`UserCacheService._user_to_dict`).
#[derive(Clone, Debug, PartialEq)]
pub struct User {
    /// `users.id`.
    pub id: String,
    /// `users.email`.
    pub email: String,
    /// `users.username`.
    pub username: String,
    /// The role; None only when a cached entry says `null`.
    pub role: Option<UserRole>,
    /// Whether the account is active.
    pub is_active: bool,
    /// Spending limit; None means unlimited.
    pub quota_usd: Option<f64>,
    /// Spent so far; 0.0 when the column is NULL (where Aether's own
    /// serializer raises).
    pub used_usd: f64,
    /// Creation time, to the microsecond.
    pub created_at: Option<DateTime<FixedOffset>>,
    /// Last login, to the microsecond.
    pub last_login_at: Option<DateTime<FixedOffset>>,
    /// Free-form settings, members in stored order.
    pub model_capability_settings: Option<OrderedJson>,
}

/// A user and whether the cache answered.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchedUser {
    /// The user.
    pub user: User,
    /// True when read from the cache, false when loaded from the database.
    pub from_cache: bool,
}

/// What an identifier resolved to.
#[derive(Clone, Debug, PartialEq)]
pub struct UserResolution {
    /// The user of the first match.
    pub user: User,
    /// The kind that matched first.
    pub matched_by: MatchKind,
    /// The API key, when matched by key id.
    pub api_key_id: Option<String>,
    /// Later matches pointing at other users, in resolution order.
    pub shadowed: Vec<UserMatch>,
}

/// The user use cases over the cache and Aether's tables.
#[derive(Clone)]
pub struct UserEngine {
    cache: Arc<dyn CacheStore>,
    directory: Arc<dyn Directory>,
    cache_fallbacks: Arc<AtomicU64>,
}

/// The cache key of a user look-up, exactly as Aether names it (the value is
/// data, never a pattern).
pub fn cache_key(key: &UserKey) -> String {
    match key {
        UserKey::Id(id) => format!("user:id:{id}"),
        UserKey::Email(email) => format!("user:email:{email}"),
    }
}

/// A required identifier used exactly as given (no trimming, as Aether's
/// cache look-ups): not blank, at most [`MAX_IDENTIFIER_LEN`] bytes, no
/// control characters.
fn exact_identifier(field: &'static str, value: &str) -> Result<()> {
    validate::identifier(field, value)?;
    if value.len() > MAX_IDENTIFIER_LEN {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_IDENTIFIER_LEN} bytes"),
        ));
    }
    Ok(())
}

/// `value` without sub-microsecond digits (Python datetimes have none).
fn to_micros(value: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
    value
        .with_nanosecond(value.nanosecond() / 1_000 * 1_000)
        .unwrap_or(value)
}

impl User {
    /// The user of a database row. Fails only on stored settings that are
    /// not JSON (which PostgreSQL's `json` type rules out).
    pub fn from_row(row: UserRow) -> Result<Self> {
        let model_capability_settings = row
            .model_capability_settings
            .as_deref()
            .map(OrderedJson::parse)
            .transpose()
            .map_err(|e| StoreError::Internal {
                store: StoreKind::Database,
                detail: format!("users.model_capability_settings of {} is not JSON: {e}", row.id),
            })?;
        Ok(Self {
            id: row.id,
            email: row.email,
            username: row.username,
            role: Some(row.role),
            is_active: row.is_active,
            quota_usd: row.quota_usd,
            used_usd: row.used_usd.unwrap_or(0.0),
            created_at: Some(to_micros(row.created_at)),
            last_login_at: row.last_login_at.map(to_micros),
            model_capability_settings,
        })
    }

    /// Whether this user is the one `key` names.
    fn answers(&self, key: &UserKey) -> bool {
        match key {
            UserKey::Id(id) => self.id == *id,
            UserKey::Email(email) => self.email == *email,
        }
    }

    /// Aether's cache JSON: the fields of `_user_to_dict` in its order, as
    /// `json.dumps` writes them.
    pub fn to_cache_json(&self) -> String {
        let mut out = String::with_capacity(320);
        out.push_str("{\"id\": ");
        write_str(&mut out, &self.id);
        out.push_str(", \"email\": ");
        write_str(&mut out, &self.email);
        out.push_str(", \"username\": ");
        write_str(&mut out, &self.username);
        out.push_str(", \"role\": ");
        match self.role {
            Some(UserRole::Admin) => out.push_str("\"admin\""),
            Some(UserRole::User) => out.push_str("\"user\""),
            None => out.push_str("null"),
        }
        out.push_str(", \"is_active\": ");
        write_bool(&mut out, self.is_active);
        out.push_str(", \"quota_usd\": ");
        match self.quota_usd {
            Some(quota) => write_float(&mut out, quota),
            None => out.push_str("null"),
        }
        out.push_str(", \"used_usd\": ");
        write_float(&mut out, self.used_usd);
        for (name, at) in [("created_at", &self.created_at), ("last_login_at", &self.last_login_at)] {
            out.push_str(", \"");
            out.push_str(name);
            out.push_str("\": ");
            match at {
                Some(at) => write_str(&mut out, &isoformat(at)),
                None => out.push_str("null"),
            }
        }
        out.push_str(", \"model_capability_settings\": ");
        match &self.model_capability_settings {
            Some(settings) => settings.write_to(&mut out),
            None => out.push_str("null"),
        }
        out.push('}');
        out
    }

    /// Reads Aether's cache JSON; None when it is not a usable user entry
    /// (the caller treats that as a miss).
    pub fn from_cache_json(text: &str) -> Option<Self> {
        let cached: CachedUser = serde_json::from_str(text).ok()?;
        let role = match cached.role.as_deref() {
            None => None,
            Some("admin") => Some(UserRole::Admin),
            Some("user") => Some(UserRole::User),
            Some(_) => return None,
        };
        let timestamp = |value: Option<String>| match value {
            None => Some(None),
            Some(text) => parse_isoformat(&text).map(|at| Some(to_micros(at))),
        };
        Some(Self {
            id: cached.id,
            email: cached.email,
            username: cached.username,
            role,
            is_active: cached.is_active,
            quota_usd: cached.quota_usd,
            used_usd: cached.used_usd.unwrap_or(0.0),
            created_at: timestamp(cached.created_at)?,
            last_login_at: timestamp(cached.last_login_at)?,
            model_capability_settings: cached.model_capability_settings,
        })
    }
}

/// The cache JSON as Aether's `_dict_to_user` reads it: id, email, username
/// and is_active required, the rest optional; unknown fields ignored.
#[derive(Deserialize)]
struct CachedUser {
    id: String,
    email: String,
    username: String,
    #[serde(default)]
    role: Option<String>,
    is_active: bool,
    #[serde(default)]
    quota_usd: Option<f64>,
    #[serde(default)]
    used_usd: Option<f64>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    last_login_at: Option<String>,
    #[serde(default)]
    model_capability_settings: Option<OrderedJson>,
}

impl UserEngine {
    /// An engine over Aether's user cache and tables.
    pub fn new(cache: Arc<dyn CacheStore>, directory: Arc<dyn Directory>) -> Self {
        Self {
            cache,
            directory,
            cache_fallbacks: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many [`UserEngine::get`] calls the database answered because the
    /// cache failed (a failed read, or a failed fill after a miss), since
    /// start. Shared by clones.
    pub fn cache_fallbacks(&self) -> u64 {
        self.cache_fallbacks.load(Ordering::Relaxed)
    }

    fn count_fallback(&self, operation: &'static str, error: &StoreError) {
        self.cache_fallbacks.fetch_add(1, Ordering::Relaxed);
        // No key in the log: it may hold an email.
        tracing::warn!(%error, operation, "user cache failed; answering from the database");
    }

    /// The full user row, NOT_FOUND when missing.
    async fn load(&self, key: &UserKey, name: &str) -> Result<User> {
        let row = self
            .directory
            .user_row(key)
            .await?
            .ok_or_else(|| Error::not_found("user", name))?;
        User::from_row(row)
    }

    /// Resolves `identifier` (surrounding whitespace ignored) in Aether's
    /// order: users.id, username, email, api_keys.id. The first match wins;
    /// later matches of other users are reported. NOT_FOUND when nothing
    /// matches. Reads the database, not the cache.
    pub async fn resolve(&self, identifier: &str) -> Result<UserResolution> {
        let identifier = validate::identifier("identifier", identifier)?;
        let mut matches = self.directory.match_user(identifier).await?.into_iter();
        let first = matches.next().ok_or_else(|| Error::not_found("user", identifier))?;
        let shadowed = matches.filter(|m| m.user.id != first.user.id).collect();
        let user = self.load(&UserKey::Id(first.user.id.clone()), identifier).await?;
        Ok(UserResolution {
            user,
            matched_by: first.kind,
            api_key_id: first.api_key.map(|k| k.id),
            shadowed,
        })
    }

    /// The user with this id or email (exact), read through the cache: a
    /// hit answers from the cache; a miss (or an unusable entry) loads the
    /// row and stores Aether's JSON for [`USER_CACHE_TTL`]. NOT_FOUND is not
    /// cached. Cache failures never fail the call: the database answers and
    /// [`UserEngine::cache_fallbacks`] counts it.
    pub async fn get(&self, key: &UserKey) -> Result<FetchedUser> {
        let (field, value) = match key {
            UserKey::Id(id) => ("user_id", id),
            UserKey::Email(email) => ("email", email),
        };
        exact_identifier(field, value)?;
        let name = cache_key(key);
        let cache_up = match self.cache.get(&name).await {
            Ok(Some(text)) => match User::from_cache_json(&text) {
                Some(user) if user.answers(key) => return Ok(FetchedUser { user, from_cache: true }),
                _ => {
                    tracing::debug!("unusable cached user entry; reloading it");
                    true
                }
            },
            Ok(None) => true,
            Err(error) => {
                self.count_fallback("get", &error);
                false
            }
        };
        let user = self.load(key, value).await?;
        if cache_up && let Err(error) = self.cache.set_ex(&name, &user.to_cache_json(), USER_CACHE_TTL).await {
            self.count_fallback("set", &error);
        }
        Ok(FetchedUser {
            user,
            from_cache: false,
        })
    }

    /// Deletes `user:id:{user_id}` and, when given, `user:email:{email}`;
    /// returns how many existed. Cache failures are errors here: nothing
    /// else would drop a stale entry.
    pub async fn invalidate(&self, user_id: &str, email: Option<&str>) -> Result<u64> {
        exact_identifier("user_id", user_id)?;
        let mut keys = vec![cache_key(&UserKey::Id(user_id.to_owned()))];
        if let Some(email) = email {
            exact_identifier("email", email)?;
            keys.push(cache_key(&UserKey::Email(email.to_owned())));
        }
        Ok(self.cache.delete(&keys, false).await?)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{FixedOffset, TimeZone};

    use super::*;

    fn sample() -> User {
        let utc = FixedOffset::east_opt(0).unwrap();
        User {
            id: "u-1".into(),
            email: "a@example.com".into(),
            username: "alice".into(),
            role: Some(UserRole::Admin),
            is_active: true,
            quota_usd: None,
            used_usd: 0.0,
            created_at: Some(
                utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
                    .unwrap()
                    .with_nanosecond(123_456_000)
                    .unwrap(),
            ),
            last_login_at: None,
            model_capability_settings: Some(OrderedJson::parse(r#"{"b": {"x": true}, "a": 1.0}"#).unwrap()),
        }
    }

    #[test]
    fn cache_json_is_aethers_shape() {
        assert_eq!(
            sample().to_cache_json(),
            r#"{"id": "u-1", "email": "a@example.com", "username": "alice", "role": "admin", "is_active": true, "quota_usd": null, "used_usd": 0.0, "created_at": "2025-01-01T00:00:00.123456+00:00", "last_login_at": null, "model_capability_settings": {"b": {"x": true}, "a": 1.0}}"#
        );
    }

    #[test]
    fn cache_json_round_trips() {
        let user = sample();
        assert_eq!(User::from_cache_json(&user.to_cache_json()), Some(user));
    }

    #[test]
    fn unusable_entries_are_misses() {
        for text in [
            "",
            "not json",
            "[]",
            r#"{"id": "u"}"#,
            r#"{"id": "u", "email": "e", "username": "n", "is_active": true, "role": "root"}"#,
            r#"{"id": "u", "email": "e", "username": "n", "is_active": true, "created_at": "soon"}"#,
        ] {
            assert_eq!(User::from_cache_json(text), None, "{text}");
        }
        let minimal = User::from_cache_json(
            r#"{"id": "u", "email": "e", "username": "n", "is_active": false, "used_usd": null}"#,
        )
        .expect("minimal entry");
        assert_eq!((minimal.used_usd, minimal.role, minimal.created_at), (0.0, None, None));
    }

    #[test]
    fn keys_are_verbatim() {
        assert_eq!(cache_key(&UserKey::Id("a*b?[c]".into())), "user:id:a*b?[c]");
        assert_eq!(cache_key(&UserKey::Email("A:B@x".into())), "user:email:A:B@x");
    }
}
