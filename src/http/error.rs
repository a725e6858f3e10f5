//! gRPC statuses as HTTP errors, as grpc-gateway writes them: the HTTP status
//! from the gRPC code and a JSON body `{code, message, details}`, the details
//! being the `google.rpc` messages of `grpc-status-details-bin` in the proto3
//! JSON mapping, each with its `@type`.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Map, Value, json};
use tonic::{Code, Status};

use super::json_options;

/// The HTTP status for a gRPC code (grpc-gateway's `HTTPStatusFromCode`).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        // 499 "Client Closed Request" (nginx), as grpc-gateway.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The details of `status` as JSON objects with `@type`. A detail whose type
/// is not in `pool` keeps its bytes, base64, under `value`.
fn details_json(status: &Status, pool: &DescriptorPool) -> Vec<Value> {
    if status.details().is_empty() {
        return Vec::new();
    }
    let Ok(rpc_status) = tonic_types::pb::Status::decode(status.details()) else {
        tracing::debug!("undecodable grpc-status-details-bin");
        return Vec::new();
    };
    rpc_status
        .details
        .iter()
        .map(|any| {
            let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
            let decoded = pool
                .get_message_by_name(type_name)
                .and_then(|descriptor| DynamicMessage::decode(descriptor, any.value.as_slice()).ok())
                .and_then(|message| {
                    message
                        .serialize_with_options(serde_json::value::Serializer, &json_options())
                        .ok()
                });
            let mut object = match decoded {
                Some(Value::Object(object)) => object,
                // Well-known types map to a non-object; the mapping puts them under "value".
                Some(other) => Map::from_iter([("value".to_owned(), other)]),
                None => Map::from_iter([(
                    "value".to_owned(),
                    Value::String(base64::engine::general_purpose::STANDARD.encode(&any.value)),
                )]),
            };
            object.insert("@type".to_owned(), Value::String(any.type_url.clone()));
            Value::Object(object)
        })
        .collect()
}

/// The grpc-gateway error body of `status`.
pub fn error_body(status: &Status, pool: &DescriptorPool) -> Value {
    json!({
        "code": status.code() as i32,
        "message": status.message(),
        "details": details_json(status, pool),
    })
}

/// `status` as an HTTP response.
pub fn status_response(status: &Status, pool: &DescriptorPool) -> Response {
    json_response(http_status(status.code()), &error_body(status, pool))
}

/// An error that has no gRPC call behind it (no route, wrong method).
pub fn plain_error(http: StatusCode, code: Code, message: &str) -> Response {
    json_response(http, &json!({"code": code as i32, "message": message, "details": []}))
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn codes_map_to_the_grpc_gateway_statuses() {
        let table = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn details_are_decoded_with_their_type() {
        let pool = super::super::descriptor_pool().unwrap();
        let mut details = ErrorDetails::with_bad_request_violation("api_format", "unknown format");
        details.set_error_info(
            "INVALID_ARGUMENT",
            "aether-control",
            HashMap::from([("k".into(), "v".into())]),
        );
        details.set_retry_info(Some(Duration::from_millis(1500)));
        details.set_resource_info("affinity", "k1", "", "affinity not found");
        let status = Status::with_error_details(Code::InvalidArgument, "invalid api_format", details);
        let body = error_body(&status, &pool);
        assert_eq!(body["code"], 3);
        assert_eq!(body["message"], "invalid api_format");
        let details = body["details"].as_array().unwrap();
        let of_type = |name: &str| {
            details
                .iter()
                .find(|d| d["@type"] == format!("type.googleapis.com/google.rpc.{name}"))
                .unwrap_or_else(|| panic!("{name} in {details:?}"))
        };
        assert_eq!(of_type("BadRequest")["field_violations"][0]["field"], "api_format");
        assert_eq!(of_type("ErrorInfo")["reason"], "INVALID_ARGUMENT");
        assert_eq!(of_type("ErrorInfo")["metadata"]["k"], "v");
        assert_eq!(of_type("RetryInfo")["retry_delay"], "1.500s");
        assert_eq!(of_type("ResourceInfo")["resource_name"], "k1");
    }

    #[test]
    fn unknown_detail_types_keep_their_bytes() {
        let pool = super::super::descriptor_pool().unwrap();
        let rpc = tonic_types::pb::Status {
            code: 2,
            message: "x".into(),
            details: vec![prost_types::Any {
                type_url: "type.googleapis.com/example.Unknown".into(),
                value: vec![1, 2, 3],
            }],
        };
        let status = Status::with_details(Code::Unknown, "x", rpc.encode_to_vec().into());
        let body = error_body(&status, &pool);
        assert_eq!(body["details"][0]["@type"], "type.googleapis.com/example.Unknown");
        assert_eq!(body["details"][0]["value"], "AQID");
        assert_eq!(error_body(&Status::not_found("gone"), &pool)["details"], json!([]));
    }
}
