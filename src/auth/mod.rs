//! Who may call what. Every call except health and reflection needs a
//! credential in `authorization: Bearer ...`: an Aether admin JWT (verified
//! as Aether does, admin role and active flag read from the users table) or
//! a service token with scopes. Fails closed: no credential, an unknown
//! method, or a store that cannot answer never lets a call through.

pub mod jwt;
pub mod service_tokens;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::domain::affinity::now_epoch;
use crate::error::{Error, Result, StoreError};
use crate::store::CacheStore;
use jwt::JwtVerifier;
use service_tokens::ServiceTokens;

/// A set of scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    /// Read-only calls.
    pub const READ: Self = Self(1);
    /// Data-plane writes (SetAffinity, InvalidateAffinity, cache invalidation).
    pub const WRITE: Self = Self(2);
    /// Destructive operator calls (clears, deletes) and configuration.
    pub const ADMIN: Self = Self(4);
    /// Everything.
    pub const ALL: Self = Self(7);

    /// Whether every scope of `other` is in `self`.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Parses `read+write+admin`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut scopes = Self(0);
        for part in text.split('+') {
            scopes.0 |= match part.trim() {
                "read" => Self::READ.0,
                "write" => Self::WRITE.0,
                "admin" => Self::ADMIN.0,
                _ => return None,
            };
        }
        Some(scopes)
    }
}

/// The scope a gRPC method needs; None for the open ones (health,
/// reflection). Methods not listed need admin.
pub fn required_scope(path: &str) -> Option<Scopes> {
    const OPEN: [&str; 3] = [
        "/grpc.health.v1.Health/",
        "/grpc.reflection.v1.ServerReflection/",
        "/grpc.reflection.v1alpha.ServerReflection/",
    ];
    if OPEN.iter().any(|prefix| path.starts_with(prefix)) {
        return None;
    }
    let method = path.strip_prefix("/aether.control.v1.").unwrap_or("");
    Some(match method {
        "AffinityService/GetAffinity"
        | "AffinityService/GetAffinityStats"
        | "AffinityService/ListUserAffinities"
        | "AffinityService/ListAffinities"
        | "AffinityService/ExportMetrics"
        | "AffinityService/WatchAffinityEvents"
        | "UserService/ResolveUser"
        | "UserService/GetUser"
        | "ModelMappingService/ResolveModel"
        | "ModelMappingService/GetProviderModel"
        | "ModelMappingService/GetModelMappingStats" => Scopes::READ,
        "AffinityService/SetAffinity" | "AffinityService/InvalidateAffinity" | "UserService/InvalidateUserCache" => {
            Scopes::WRITE
        }
        _ => Scopes::ADMIN,
    })
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Admin user id, or `service:{name}`.
    pub subject: String,
    /// The admin's `users.id`, for audit rows (None for service tokens).
    pub admin_user_id: Option<String>,
    /// What it may do.
    pub scopes: Scopes,
}

/// A user's standing, as the auth check needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserAccess {
    /// role == admin.
    pub is_admin: bool,
    /// is_active (and not deleted).
    pub is_active: bool,
}

/// Reads a user's standing from Aether's users table.
#[async_trait]
pub trait UserAccessLookup: Send + Sync + 'static {
    /// None when the user does not exist.
    async fn user_access(&self, user_id: &str) -> std::result::Result<Option<UserAccess>, StoreError>;
}

/// How long a user's standing is reused: a user who loses admin or is
/// deactivated is refused within this time.
pub const USER_ACCESS_TTL: Duration = Duration::from_secs(3);

/// Checks credentials.
pub struct Authenticator {
    jwt: Option<JwtVerifier>,
    tokens: ServiceTokens,
    users: Arc<dyn UserAccessLookup>,
    /// Aether's logout blacklist (`jwt:blacklist:{sha256}`); None without Redis.
    blacklist: Option<Arc<dyn CacheStore>>,
    access_cache: Mutex<HashMap<String, (UserAccess, Instant)>>,
}

impl Authenticator {
    /// An authenticator; `jwt` is None when JWT_SECRET_KEY is not set (then
    /// only service tokens work).
    pub fn new(
        jwt: Option<JwtVerifier>,
        tokens: ServiceTokens,
        users: Arc<dyn UserAccessLookup>,
        blacklist: Option<Arc<dyn CacheStore>>,
    ) -> Self {
        Self {
            jwt,
            tokens,
            users,
            blacklist,
            access_cache: Mutex::new(HashMap::new()),
        }
    }

    /// The caller behind an `authorization` header value.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal> {
        let value = authorization.ok_or(Error::Unauthenticated {
            reason: "MISSING_CREDENTIAL",
        })?;
        let token = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
            .map(|_| value[7..].trim())
            .filter(|t| !t.is_empty())
            .ok_or(Error::Unauthenticated {
                reason: "MALFORMED_CREDENTIAL",
            })?;
        if let Some((name, scopes)) = self.tokens.authenticate(token) {
            return Ok(Principal {
                subject: format!("service:{name}"),
                admin_user_id: None,
                scopes,
            });
        }
        let jwt = self.jwt.as_ref().ok_or(Error::Unauthenticated {
            reason: "UNKNOWN_CREDENTIAL",
        })?;
        let user_id = jwt.verify(token, now_epoch()).map_err(|error| {
            tracing::debug!(%error, "admin token refused");
            Error::Unauthenticated {
                reason: "INVALID_TOKEN",
            }
        })?;
        if let Some(blacklist) = &self.blacklist {
            // Fails closed: if Redis cannot say, the call is refused (UNAVAILABLE).
            let key = format!("jwt:blacklist:{}", service_tokens::hash_hex(token));
            if blacklist.get(&key).await?.is_some() {
                return Err(Error::Unauthenticated {
                    reason: "TOKEN_REVOKED",
                });
            }
        }
        let access = self.user_access(&user_id).await?;
        match access {
            None => Err(Error::PermissionDenied {
                reason: "USER_NOT_FOUND",
            }),
            Some(access) if !access.is_active => Err(Error::PermissionDenied {
                reason: "USER_INACTIVE",
            }),
            Some(access) if !access.is_admin => Err(Error::PermissionDenied { reason: "NOT_ADMIN" }),
            Some(_) => Ok(Principal {
                subject: format!("user:{user_id}"),
                admin_user_id: Some(user_id),
                scopes: Scopes::ALL,
            }),
        }
    }

    async fn user_access(&self, user_id: &str) -> Result<Option<UserAccess>> {
        let cached = self.access_cache.lock().ok().and_then(|cache| {
            cache
                .get(user_id)
                .filter(|(_, at)| at.elapsed() < USER_ACCESS_TTL)
                .map(|(access, _)| *access)
        });
        if let Some(access) = cached {
            return Ok(Some(access));
        }
        let access = self.users.user_access(user_id).await?;
        if let (Some(access), Ok(mut cache)) = (access, self.access_cache.lock()) {
            cache.retain(|_, (_, at)| at.elapsed() < USER_ACCESS_TTL);
            cache.insert(user_id.to_owned(), (access, Instant::now()));
        }
        Ok(access)
    }
}

/// Refuses a principal that lacks `needed`.
pub fn authorize(principal: &Principal, needed: Scopes) -> Result<()> {
    if principal.scopes.contains(needed) {
        Ok(())
    } else {
        Err(Error::PermissionDenied {
            reason: "MISSING_SCOPE",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_by_method() {
        assert_eq!(required_scope("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            required_scope("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(
            required_scope("/aether.control.v1.AffinityService/GetAffinity"),
            Some(Scopes::READ)
        );
        assert_eq!(
            required_scope("/aether.control.v1.AffinityService/SetAffinity"),
            Some(Scopes::WRITE)
        );
        assert_eq!(
            required_scope("/aether.control.v1.AffinityService/ClearAllAffinities"),
            Some(Scopes::ADMIN)
        );
        assert_eq!(
            required_scope("/aether.control.v1.AffinityService/GetAffinityConfig"),
            Some(Scopes::ADMIN)
        );
        assert_eq!(required_scope("/aether.control.v1.Unknown/Thing"), Some(Scopes::ADMIN));
        assert_eq!(required_scope("/grpc.health.v1.HealthX/Check"), Some(Scopes::ADMIN));
    }

    #[test]
    fn scope_parsing() {
        assert_eq!(Scopes::parse("read+write"), Some(Scopes(3)));
        assert_eq!(Scopes::parse("admin"), Some(Scopes::ADMIN));
        assert_eq!(Scopes::parse("root"), None);
        assert!(Scopes::ALL.contains(Scopes::ADMIN) && !Scopes::READ.contains(Scopes::WRITE));
    }
}
