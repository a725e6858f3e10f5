//! UserService adapter.

use std::collections::BTreeMap;

use std::time::Instant;

use chrono::{DateTime, FixedOffset};
use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};
use serde_json::json;
use tonic::{Request, Response, Status};

use super::context::{audited, call_context, details};
use crate::domain::audit::Auditor;
use crate::domain::directory::{UserKey, UserMatch, UserRole};
use crate::domain::python_json::OrderedJson;
use crate::domain::users::{self, UserEngine};
use crate::error::Error;
use crate::proto::get_user_request::Lookup;
use crate::proto::user_service_server::UserService;
use crate::proto::*;

/// gRPC face of the user look-ups.
pub struct UserGrpc {
    engine: UserEngine,
    auditor: Auditor,
}

impl UserGrpc {
    /// An adapter over `engine`; cache invalidations are audited.
    pub fn new(engine: UserEngine, auditor: Auditor) -> Self {
        Self { engine, auditor }
    }
}

fn timestamp(value: &DateTime<FixedOffset>) -> Timestamp {
    Timestamp {
        seconds: value.timestamp(),
        // A leap second (nanos >= 1e9) is not a valid Timestamp.
        nanos: value.timestamp_subsec_nanos().min(999_999_999) as i32,
    }
}

fn json_value(value: &OrderedJson) -> Value {
    let kind = match value {
        OrderedJson::Null => Kind::NullValue(0),
        OrderedJson::Bool(b) => Kind::BoolValue(*b),
        OrderedJson::Int(i) => Kind::NumberValue(*i as f64),
        OrderedJson::Float(f) => Kind::NumberValue(*f),
        OrderedJson::String(s) => Kind::StringValue(s.clone()),
        OrderedJson::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_value).collect(),
        }),
        OrderedJson::Object(members) => Kind::StructValue(json_struct(members)),
    };
    Value { kind: Some(kind) }
}

fn json_struct(members: &[(String, OrderedJson)]) -> Struct {
    Struct {
        fields: members
            .iter()
            .map(|(k, v)| (k.clone(), json_value(v)))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn user(value: users::User) -> User {
    let role = match value.role {
        Some(UserRole::Admin) => crate::proto::UserRole::Admin,
        Some(UserRole::User) => crate::proto::UserRole::User,
        None => crate::proto::UserRole::Unspecified,
    };
    User {
        id: value.id,
        email: value.email,
        username: value.username,
        role: role.into(),
        is_active: value.is_active,
        quota_usd: value.quota_usd,
        used_usd: value.used_usd,
        created_at: value.created_at.as_ref().map(timestamp),
        last_login_at: value.last_login_at.as_ref().map(timestamp),
        // Only a JSON object is a Struct; other stored values stay unset.
        model_capability_settings: match &value.model_capability_settings {
            Some(OrderedJson::Object(members)) => Some(json_struct(members)),
            _ => None,
        },
    }
}

fn shadowed(value: UserMatch) -> ShadowedUserMatch {
    ShadowedUserMatch {
        matched_by: UserMatchKind::from(value.kind).into(),
        user_id: value.user.id,
    }
}

#[tonic::async_trait]
impl UserService for UserGrpc {
    async fn resolve_user(
        &self,
        request: Request<ResolveUserRequest>,
    ) -> Result<Response<ResolveUserResponse>, Status> {
        let resolved = self.engine.resolve(&request.into_inner().identifier).await?;
        Ok(Response::new(ResolveUserResponse {
            user: Some(user(resolved.user)),
            matched_by: UserMatchKind::from(resolved.matched_by).into(),
            api_key_id: resolved.api_key_id.unwrap_or_default(),
            shadowed_matches: resolved.shadowed.into_iter().map(shadowed).collect(),
        }))
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<GetUserResponse>, Status> {
        let key = match request.into_inner().lookup {
            Some(Lookup::UserId(id)) => UserKey::Id(id),
            Some(Lookup::Email(email)) => UserKey::Email(email),
            None => return Err(Error::invalid("lookup", "one of user_id or email is required").into()),
        };
        let fetched = self.engine.get(&key).await?;
        Ok(Response::new(GetUserResponse {
            user: Some(user(fetched.user)),
            from_cache: fetched.from_cache,
        }))
    }

    async fn invalidate_user_cache(
        &self,
        request: Request<InvalidateUserCacheRequest>,
    ) -> Result<Response<InvalidateUserCacheResponse>, Status> {
        let context = call_context(&request, "/aether.control.v1.UserService/InvalidateUserCache");
        let (r, started) = (request.into_inner(), Instant::now());
        let result = self.engine.invalidate(&r.user_id, r.email.as_deref()).await;
        let deleted = audited(
            &self.auditor,
            &context,
            "user_cache_invalidate",
            false,
            started,
            result,
            |done| {
                details([
                    ("user_id", json!(r.user_id)),
                    ("with_email", json!(r.email.is_some())),
                    ("deleted_keys", json!(done)),
                ])
            },
        )
        .await?;
        Ok(Response::new(InvalidateUserCacheResponse {
            deleted_keys: i32::try_from(deleted).unwrap_or(i32::MAX),
        }))
    }
}
