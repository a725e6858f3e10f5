//! The REST/JSON shim (grpc-gateway style), beside the gRPC port.
//!
//! Routes come from the `google.api.http` options in the embedded descriptor
//! set, not from per-route handlers. A request is transcoded into a real gRPC
//! request (protobuf body, gRPC framing, `authorization`, `x-request-id` and
//! `user-agent` as metadata) and sent in-process through the same tower stack
//! the gRPC server runs, auth included; the reply (or status) is transcoded
//! back:
//! - JSON in the proto3 mapping with proto field names (lowerCamelCase is
//!   accepted on input), defaults included, 64-bit integers as strings, enums
//!   by name, Timestamps in RFC 3339.
//! - Errors as grpc-gateway: HTTP status from the gRPC code, body
//!   `{code, message, details}` with the google.rpc details and their `@type`.
//! - A string `response_body` (ExportMetrics' `text`) is sent as is, with the
//!   reply's `content_type` field as Content-Type.
//! - Server streams are newline-delimited `{"result": ...}` objects.
//! - Query aliases (see [`rules::QUERY_ALIASES`]): `limit` for `page_size`
//!   on `GET /api/admin/monitoring/cache/affinities`, as in Aether.
//!
//! Also `/healthz` (the process is up), `/readyz` (200 when the gRPC health
//! of the whole server is SERVING, else 503) and `/openapi.json` (generated
//! from the same bindings and descriptors).

pub mod error;
pub mod grpc;
pub mod openapi;
pub mod rules;
pub mod template;
pub mod transcode;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prost::Message as _;
use prost_reflect::{DescriptorPool, SerializeOptions};
use serde_json::json;
use tokio::net::TcpListener;
use tonic::Code;

use crate::auth::Authenticator;
use crate::proto::FILE_DESCRIPTOR_SET;
pub use grpc::{GrpcService, boxed};
use rules::{Binding, BodyRule};

/// Largest request body read.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The service descriptors (with their `google.api.http` options) and the
/// google.rpc error details.
pub fn descriptor_pool() -> Result<DescriptorPool, String> {
    let mut pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).map_err(|e| format!("descriptor set: {e}"))?;
    pool.decode_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .map_err(|e| format!("google.rpc descriptors: {e}"))?;
    Ok(pool)
}

/// The proto3 JSON mapping as we write it: proto field names, defaults too.
pub(crate) fn json_options() -> SerializeOptions {
    SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false)
}

struct Shim {
    grpc: GrpcService,
    authenticator: Arc<Authenticator>,
    pool: DescriptorPool,
    bindings: Vec<Binding>,
    openapi: Bytes,
}

/// The REST router over `grpc` (the gRPC stack: layers and services);
/// `authenticator` is the stack's, for requests that never reach it (a body
/// that cannot be transcoded is refused after the credential is checked).
/// Fails only on a bad annotation, which is a build problem.
pub fn router(grpc: GrpcService, authenticator: Arc<Authenticator>) -> Result<Router, String> {
    let pool = descriptor_pool()?;
    let bindings = rules::bindings(&pool)?;
    let openapi = openapi::document(&bindings, &pool).to_string();
    let shim = Arc::new(Shim {
        grpc,
        authenticator,
        pool,
        bindings,
        openapi: Bytes::from(openapi),
    });
    Ok(Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .fallback(transcode)
        .with_state(shim))
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets the
/// requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

async fn healthz() -> Response {
    error::json_response(StatusCode::OK, &json!({"status": "ok"}))
}

async fn readyz(State(shim): State<Arc<Shim>>) -> Response {
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus};
    let request = HealthCheckRequest { service: String::new() };
    let reply = match grpc::call(
        &shim.grpc,
        "/grpc.health.v1.Health/Check",
        &request.encode_to_vec(),
        &HeaderMap::new(),
    )
    .await
    {
        Ok(replies) => replies.single().await,
        Err(status) => Err(status),
    };
    let status = match reply.map(|bytes| HealthCheckResponse::decode(bytes).map(|r| r.status)) {
        Ok(Ok(status)) => ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown),
        _ => ServingStatus::Unknown,
    };
    let http = if status == ServingStatus::Serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    error::json_response(http, &json!({"status": status.as_str_name()}))
}

async fn openapi_json(State(shim): State<Arc<Shim>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], shim.openapi.clone()).into_response()
}

/// Where a request goes.
enum Route<'a> {
    /// This binding, with the values of its path variables.
    Found(&'a Binding, Vec<(String, String)>),
    /// No template matches the path.
    NotFound,
    /// Templates match the path for these methods only.
    WrongMethod(String),
}

impl Route<'_> {
    fn error(self) -> Response {
        match self {
            Route::WrongMethod(allowed) => {
                let mut response = error::plain_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    Code::Unimplemented,
                    "Method Not Allowed",
                );
                if let Ok(value) = HeaderValue::from_str(&allowed) {
                    response.headers_mut().insert(header::ALLOW, value);
                }
                response
            }
            _ => error::plain_error(StatusCode::NOT_FOUND, Code::NotFound, "Not Found"),
        }
    }
}

/// The most specific binding of `method` matching `path`. A path that
/// a template with a custom verb (`...:invalidate`) matches belongs to
/// the verb's templates only: a verb-less template whose last variable
/// would swallow the `:verb` does not count. A wrong method is answered
/// with the methods of the most specific templates that match (the
/// path's own, as the OpenAPI document lists them).
fn route<'a>(bindings: &'a [Binding], method: &Method, path: &str) -> Route<'a> {
    let mut matching: Vec<(&Binding, Vec<(String, String)>)> = bindings
        .iter()
        .filter_map(|binding| Some((binding, binding.template.matches(path)?)))
        .collect();
    if matching.iter().any(|(binding, _)| binding.template.has_verb()) {
        matching.retain(|(binding, _)| binding.template.has_verb());
    }
    let top = matching.iter().map(|(binding, _)| binding.template.specificity()).max();
    let mut best: Option<(&Binding, Vec<(String, String)>)> = None;
    let mut allowed: Vec<&str> = Vec::new();
    for (binding, values) in matching {
        if binding.http_method != *method {
            if Some(binding.template.specificity()) == top && !allowed.contains(&binding.http_method.as_str()) {
                allowed.push(binding.http_method.as_str());
            }
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|(current, _)| binding.template.specificity() > current.template.specificity())
        {
            best = Some((binding, values));
        }
    }
    match best {
        Some((binding, values)) => Route::Found(binding, values),
        None if allowed.is_empty() => Route::NotFound,
        None => Route::WrongMethod(allowed.join(", ")),
    }
}

async fn transcode(State(shim): State<Arc<Shim>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let (binding, path_values) = match route(&shim.bindings, &parts.method, parts.uri.path()) {
        Route::Found(binding, values) => (binding, values),
        other => return other.error(),
    };
    let body = if binding.body == BodyRule::None {
        Bytes::new()
    } else {
        match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
            Ok(bytes) => bytes,
            Err(_) => {
                return error::plain_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Code::InvalidArgument,
                    "the request body cannot be read or exceeds 4 MiB",
                );
            }
        }
    };
    let mut request_id = None;
    let result = async {
        let message = match transcode::request_message(binding, &path_values, parts.uri.query(), &body) {
            Ok(message) => message,
            Err(invalid) => {
                // A caller without the right credential hears that first.
                crate::grpc::auth::check(&shim.authenticator, &parts.headers, &binding.grpc_path).await?;
                return Err(invalid);
            }
        };
        let replies = grpc::call(&shim.grpc, &binding.grpc_path, &message.encode_to_vec(), &parts.headers).await?;
        request_id = replies.request_id().cloned();
        if binding.method.is_server_streaming() {
            return Ok(transcode::stream_response(binding.clone(), replies, shim.pool.clone()));
        }
        transcode::unary_response(binding, &replies.single().await?)
    }
    .await;
    let mut response = result.unwrap_or_else(|status| {
        request_id = request_id.take().or_else(|| grpc::status_request_id(&status));
        error::status_response(&status, &shim.pool)
    });
    if let Some(id) = request_id {
        response.headers_mut().insert(grpc::REQUEST_ID, id);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_descriptors_build_a_router() {
        let pool = descriptor_pool().expect("pool");
        assert!(pool.get_message_by_name("google.rpc.BadRequest").is_some());
        assert!(pool.get_message_by_name("aether.control.v1.Affinity").is_some());
        let bindings = rules::bindings(&pool).unwrap();
        let found = |method: Method, path: &str| match route(&bindings, &method, path) {
            Route::Found(binding, values) => (binding.operation_id.clone(), values),
            _ => panic!("{method} {path} should be routed"),
        };
        assert_eq!(
            found(Method::GET, "/v1/users:lookup"),
            ("UserService_GetUser2".to_owned(), vec![])
        );
        assert_eq!(found(Method::GET, "/v1/users/u-1").0, "UserService_GetUser");
        assert_eq!(
            found(Method::DELETE, "/api/admin/monitoring/cache/model-mapping/provider/p/g").0,
            "ModelMappingService_ClearProviderModelMappingCache"
        );
        assert_eq!(
            found(Method::DELETE, "/api/admin/monitoring/cache/model-mapping/m").1,
            [("model_name".to_owned(), "m".to_owned())]
        );
        let wrong = route(&bindings, &Method::POST, "/api/admin/monitoring/cache").error();
        assert_eq!(wrong.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(wrong.headers()[header::ALLOW], "DELETE");
        let missing = route(&bindings, &Method::GET, "/nope").error();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }
}
