//! HTTP request -> request message (body, then path variables, then query
//! parameters, as grpc-gateway) and reply message -> HTTP response (proto3
//! JSON mapping with proto field names).
//!
//! Query parameters set the fields that neither the path nor the body binds
//! (none when `body: "*"`): scalars and enums (by name or number) by proto or
//! JSON name, nested fields by dotted path, repeated fields by repeating the
//! key; well-known types take their JSON string form (`ttl=30s`). Unknown
//! parameters are ignored, as grpc-gateway does; a JSON body with an unknown
//! field is refused.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use futures::StreamExt as _;
use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::error::{error_body, json_response};
use super::grpc::Replies;
use super::json_options;
use super::rules::{Binding, BodyRule, resolve_field_path};
use super::template::percent_decode;

/// INVALID_ARGUMENT naming the offending request field, like the services do.
fn invalid(field: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    let message = format!("invalid {field}: {description}");
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

fn is_blank(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

/// The message a JSON body describes.
fn message_from_json(descriptor: MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, Status> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let message = DynamicMessage::deserialize_with_options(descriptor, &mut deserializer, &DeserializeOptions::new())
        .and_then(|message| deserializer.end().map(|()| message))
        .map_err(|e| invalid("body", format!("not a valid JSON request: {e}")))?;
    Ok(message)
}

/// Parses one path or query value for `field` (a repeated field's element).
fn field_value(field: &FieldDescriptor, text: &str) -> Result<Value, String> {
    fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String> {
        text.trim().parse().map_err(|_| format!("`{text}` is not {what}"))
    }
    Ok(match field.kind() {
        Kind::Double => Value::F64(number(text, "a number")?),
        Kind::Float => Value::F32(number(text, "a number")?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(number(text, "a 32-bit integer")?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(number(text, "a 64-bit integer")?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(number(text, "an unsigned 32-bit integer")?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(number(text, "an unsigned 64-bit integer")?),
        Kind::Bool => Value::Bool(match text.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "1" => true,
            "false" | "f" | "0" => false,
            _ => return Err(format!("`{text}` is not true or false")),
        }),
        Kind::String => Value::String(text.to_owned()),
        Kind::Bytes => {
            let config = base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent);
            let standard = base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, config);
            let url_safe = base64::engine::GeneralPurpose::new(&base64::alphabet::URL_SAFE, config);
            let bytes = standard
                .decode(text)
                .or_else(|_| url_safe.decode(text))
                .map_err(|_| format!("`{text}` is not base64"))?;
            Value::Bytes(bytes.into())
        }
        Kind::Enum(descriptor) => {
            let number = descriptor
                .get_value_by_name(text)
                .map(|value| value.number())
                .or_else(|| text.parse().ok());
            match number {
                Some(number) => Value::EnumNumber(number),
                None => {
                    let names: Vec<String> = descriptor.values().map(|v| v.name().to_owned()).collect();
                    return Err(format!("`{text}` is not one of {}", names.join(", ")));
                }
            }
        }
        // Well-known types (Timestamp, Duration, wrappers, FieldMask) read
        // their JSON string form; anything else may be given as JSON.
        Kind::Message(descriptor) => {
            let as_string = DynamicMessage::deserialize(descriptor.clone(), serde_json::Value::String(text.to_owned()));
            match as_string {
                Ok(message) => Value::Message(message),
                Err(first) => serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|json| DynamicMessage::deserialize(descriptor, json).ok())
                    .map(Value::Message)
                    .ok_or_else(|| format!("`{text}` is not a valid value: {first}"))?,
            }
        }
    })
}

/// Sets the field at the end of `fields`, creating the messages on the way.
fn set_path(message: &mut DynamicMessage, fields: &[FieldDescriptor], value: Value) -> Result<(), Status> {
    let Some((last, parents)) = fields.split_last() else {
        return Ok(());
    };
    let mut current = message;
    for field in parents {
        current = match current.get_field_mut(field) {
            Value::Message(inner) => inner,
            _ => return Err(invalid(field.name(), "is not a message")),
        };
    }
    current
        .try_set_field(last, value)
        .map_err(|e| invalid(last.name(), e.to_string()))
}

/// Field numbers along a path: what identifies a field whatever its spelling.
fn numbers(fields: &[FieldDescriptor]) -> Vec<u32> {
    fields.iter().map(FieldDescriptor::number).collect()
}

/// `key=value` pairs of a query string, decoded, in order.
fn query_pairs(query: &str) -> Result<Vec<(String, String)>, Status> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match (percent_decode(key, true), percent_decode(value, true)) {
                (Some(key), Some(value)) => Ok((key, value)),
                _ => Err(invalid("query", format!("`{pair}` is not valid percent-encoded UTF-8"))),
            }
        })
        .collect()
}

/// The request message for `binding` from the matched path values, the query
/// string and the body.
pub fn request_message(
    binding: &Binding,
    path_values: &[(String, String)],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, Status> {
    let input = binding.method.input();
    let mut message = match &binding.body {
        BodyRule::None => DynamicMessage::new(input.clone()),
        BodyRule::Whole if is_blank(body) => DynamicMessage::new(input.clone()),
        BodyRule::Whole => message_from_json(input.clone(), body)?,
        BodyRule::Field(_) if is_blank(body) => DynamicMessage::new(input.clone()),
        BodyRule::Field(path) => {
            // `{"a": {"b": <body>}}` for `body: "a.b"`, read as the request.
            let value: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| invalid("body", format!("not valid JSON: {e}")))?;
            let wrapped = path
                .rsplit('.')
                .fold(value, |inner, name| serde_json::json!({ name: inner }));
            DynamicMessage::deserialize_with_options(input.clone(), wrapped, &DeserializeOptions::new())
                .map_err(|e| invalid(path, e.to_string()))?
        }
    };

    let mut bound: Vec<Vec<u32>> = Vec::new();
    if let BodyRule::Field(path) = &binding.body
        && let Some(fields) = resolve_field_path(&input, path)
    {
        bound.push(numbers(&fields));
    }
    for (path, text) in path_values {
        let fields = resolve_field_path(&input, path).ok_or_else(|| invalid(path, "is not a request field"))?;
        let leaf = fields.last().ok_or_else(|| invalid(path, "is empty"))?;
        let value = field_value(leaf, text).map_err(|e| invalid(path, e))?;
        set_path(&mut message, &fields, value)?;
        bound.push(numbers(&fields));
    }

    let Some(query) = query.filter(|_| binding.body != BodyRule::Whole) else {
        return Ok(message);
    };
    let mut pairs = query_pairs(query)?;
    for (alias, field) in &binding.aliases {
        let target = resolve_field_path(&input, field).map(|f| numbers(&f));
        let given = pairs
            .iter()
            .any(|(key, _)| resolve_field_path(&input, key).map(|f| numbers(&f)) == target);
        pairs.retain_mut(|(key, _)| {
            if key != alias {
                return true;
            }
            (*field).clone_into(key);
            !given
        });
    }
    let mut keys: Vec<&str> = Vec::new();
    for (key, _) in &pairs {
        if !keys.contains(&key.as_str()) {
            keys.push(key);
        }
    }
    for key in keys {
        let Some(fields) = resolve_field_path(&input, key) else {
            continue;
        };
        let path = numbers(&fields);
        if bound.iter().any(|b| b.starts_with(&path) || path.starts_with(b)) {
            continue;
        }
        let Some(leaf) = fields.last() else { continue };
        if leaf.is_map() {
            continue;
        }
        let values: Vec<&str> = pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        let value = if leaf.is_list() {
            let items = values.iter().map(|text| field_value(leaf, text));
            Value::List(items.collect::<Result<_, _>>().map_err(|e| invalid(key, e))?)
        } else if let [text] = values.as_slice() {
            field_value(leaf, text).map_err(|e| invalid(key, e))?
        } else {
            return Err(invalid(key, "is given more than once but is not repeated"));
        };
        set_path(&mut message, &fields, value)?;
    }
    Ok(message)
}

/// `message` in the proto3 JSON mapping.
pub fn to_json(message: &DynamicMessage) -> Result<serde_json::Value, Status> {
    message
        .serialize_with_options(serde_json::value::Serializer, &json_options())
        .map_err(|e| Status::internal(format!("cannot write the reply as JSON: {e}")))
}

/// What a reply renders to.
enum Rendered {
    Json(serde_json::Value),
    /// A string or bytes `response_body`, sent as is.
    Raw {
        content_type: String,
        bytes: Vec<u8>,
    },
}

fn render(binding: &Binding, encoded: &[u8]) -> Result<Rendered, Status> {
    let output = binding.method.output();
    let message = DynamicMessage::decode(output.clone(), encoded)
        .map_err(|e| Status::internal(format!("cannot decode the reply: {e}")))?;
    let Some(path) = &binding.response_body else {
        return to_json(&message).map(Rendered::Json);
    };
    let fields = resolve_field_path(&output, path).ok_or_else(|| Status::internal("bad response_body"))?;
    let Some((leaf, parents)) = fields.split_last() else {
        return to_json(&message).map(Rendered::Json);
    };
    let mut parent = message;
    for field in parents {
        let Some(inner) = parent.get_field(field).as_message().cloned() else {
            return Err(Status::internal("bad response_body"));
        };
        parent = inner;
    }
    // A string or bytes field goes out as is (like google.api.HttpBody), typed
    // by a sibling `content_type` field when there is one.
    let content_type = parent
        .get_field_by_name("content_type")
        .and_then(|value| value.as_str().map(str::to_owned))
        .filter(|value| !value.is_empty());
    if !leaf.is_list() && !leaf.is_map() {
        match parent.get_field(leaf).as_ref() {
            Value::String(text) => {
                return Ok(Rendered::Raw {
                    content_type: content_type.unwrap_or_else(|| "text/plain; charset=utf-8".to_owned()),
                    bytes: text.clone().into_bytes(),
                });
            }
            Value::Bytes(bytes) => {
                return Ok(Rendered::Raw {
                    content_type: content_type.unwrap_or_else(|| "application/octet-stream".to_owned()),
                    bytes: bytes.to_vec(),
                });
            }
            _ => {}
        }
    }
    let json = to_json(&parent)?;
    Ok(Rendered::Json(
        json.get(leaf.name()).cloned().unwrap_or(serde_json::Value::Null),
    ))
}

/// The HTTP response of a unary reply.
pub fn unary_response(binding: &Binding, encoded: &[u8]) -> Result<Response, Status> {
    Ok(match render(binding, encoded)? {
        Rendered::Json(json) => json_response(StatusCode::OK, &json),
        Rendered::Raw { content_type, bytes } => {
            let mut response = Response::new(Body::from(bytes));
            let value = header::HeaderValue::from_str(&content_type)
                .unwrap_or_else(|_| header::HeaderValue::from_static("application/octet-stream"));
            response.headers_mut().insert(header::CONTENT_TYPE, value);
            response
        }
    })
}

/// The HTTP response of a server stream: newline-delimited JSON objects, one
/// `{"result": ...}` per reply and, when the stream fails, a last
/// `{"error": {code, message, details}}` (grpc-gateway's format).
pub fn stream_response(binding: Binding, replies: Replies, pool: prost_reflect::DescriptorPool) -> Response {
    let lines = futures::stream::unfold(Some(replies), move |state| {
        let binding = binding.clone();
        let pool = pool.clone();
        async move {
            let mut replies = state?;
            let (line, next) = match replies.next().await {
                Ok(None) => return None,
                Ok(Some(encoded)) => match render(&binding, &encoded) {
                    Ok(Rendered::Json(json)) => (serde_json::json!({ "result": json }), Some(replies)),
                    Ok(Rendered::Raw { bytes, .. }) => (
                        serde_json::json!({ "result": String::from_utf8_lossy(&bytes) }),
                        Some(replies),
                    ),
                    Err(status) => (serde_json::json!({ "error": error_body(&status, &pool) }), None),
                },
                Err(status) => (serde_json::json!({ "error": error_body(&status, &pool) }), None),
            };
            let mut bytes = line.to_string().into_bytes();
            bytes.push(b'\n');
            Some((Ok::<_, std::convert::Infallible>(bytes), next))
        }
    });
    let mut response = Response::new(Body::from_stream(lines.boxed()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::rules::bindings;

    fn binding(method: &str) -> Binding {
        let pool = crate::http::descriptor_pool().unwrap();
        bindings(&pool)
            .unwrap()
            .into_iter()
            .find(|b| b.method.full_name().ends_with(method))
            .unwrap()
    }

    fn field(message: &DynamicMessage, name: &str) -> Value {
        message.get_field_by_name(name).unwrap().into_owned()
    }

    #[test]
    fn body_then_path_variables() {
        let set = binding("AffinityService.SetAffinity");
        let path = [
            ("affinity_key".to_owned(), "ak".to_owned()),
            ("api_format".to_owned(), "claude".to_owned()),
            ("global_model_id".to_owned(), "gm".to_owned()),
        ];
        let body = br#"{"affinityKey": "ignored", "provider_id": "p", "endpointId": "e", "ttl": "90s"}"#;
        let message = request_message(&set, &path, Some("key_id=ignored-with-body-star"), body).unwrap();
        assert_eq!(
            field(&message, "affinity_key"),
            Value::String("ak".into()),
            "the path wins"
        );
        assert_eq!(
            field(&message, "endpoint_id"),
            Value::String("e".into()),
            "camelCase accepted"
        );
        assert_eq!(
            field(&message, "key_id"),
            Value::String(String::new()),
            "no query with body *"
        );
        let ttl = field(&message, "ttl");
        assert_eq!(
            ttl.as_message().unwrap().get_field_by_name("seconds").unwrap().as_i64(),
            Some(90)
        );

        let unknown = request_message(&set, &path, None, br#"{"provider": "p"}"#).unwrap_err();
        assert_eq!(unknown.code(), Code::InvalidArgument);
        assert!(unknown.message().contains("provider"), "{}", unknown.message());
        let malformed = request_message(&set, &path, None, b"{").unwrap_err();
        assert_eq!(malformed.code(), Code::InvalidArgument);
    }

    #[test]
    fn query_parameters_fill_the_rest() {
        let list = binding("AffinityService.ListAffinities");
        let message = request_message(&list, &[], Some("keyword=a+b%21&limit=2&offset=4&other=1"), b"").unwrap();
        assert_eq!(field(&message, "keyword"), Value::String("a b!".into()));
        assert_eq!(field(&message, "page_size"), Value::I32(2), "limit is page_size");
        assert_eq!(field(&message, "offset"), Value::I32(4));
        let explicit = request_message(&list, &[], Some("limit=2&pageSize=7"), b"").unwrap();
        assert_eq!(
            field(&explicit, "page_size"),
            Value::I32(7),
            "the field wins over its alias"
        );
        let bad = request_message(&list, &[], Some("page_size=ten"), b"").unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(bad.message().contains("page_size"), "{}", bad.message());
        let twice = request_message(&list, &[], Some("keyword=a&keyword=b"), b"").unwrap_err();
        assert_eq!(twice.code(), Code::InvalidArgument);
    }

    #[test]
    fn repeated_enums_and_booleans_from_the_query() {
        let watch = binding("AffinityService.WatchAffinityEvents");
        let message = request_message(
            &watch,
            &[],
            Some("types=AFFINITY_EVENT_TYPE_CREATED&types=3&api_format=CLAUDE"),
            b"",
        )
        .unwrap();
        assert_eq!(
            field(&message, "types"),
            Value::List(vec![Value::EnumNumber(1), Value::EnumNumber(3)])
        );
        let bad = request_message(&watch, &[], Some("types=NOPE"), b"").unwrap_err();
        assert!(
            bad.message().contains("AFFINITY_EVENT_TYPE_CREATED"),
            "{}",
            bad.message()
        );

        let clear = binding("AffinityService.ClearAllAffinities");
        let message = request_message(&clear, &[], Some("confirm=true&dryRun=1"), b"").unwrap();
        assert_eq!(field(&message, "confirm"), Value::Bool(true));
        assert_eq!(field(&message, "dry_run"), Value::Bool(true));
        assert!(request_message(&clear, &[], Some("confirm=yes"), b"").is_err());
    }

    #[test]
    fn path_fields_are_not_overridden_by_the_query() {
        let get = binding("AffinityService.GetAffinity");
        let path = [
            ("affinity_key".to_owned(), "ak".to_owned()),
            ("api_format".to_owned(), "CLAUDE".to_owned()),
            ("global_model_id".to_owned(), "gm".to_owned()),
        ];
        let message = request_message(&get, &path, Some("affinityKey=other"), b"").unwrap();
        assert_eq!(field(&message, "affinity_key"), Value::String("ak".into()));
    }

    #[test]
    fn string_response_bodies_are_sent_raw() {
        use prost::Message as _;
        let metrics = binding("AffinityService.ExportMetrics");
        let reply = crate::proto::ExportMetricsResponse {
            content_type: "text/plain; version=0.0.4; charset=utf-8".into(),
            text: "# TYPE x counter\nx 1\n".into(),
        };
        match render(&metrics, &reply.encode_to_vec()).unwrap() {
            Rendered::Raw { content_type, bytes } => {
                assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
                assert_eq!(bytes, b"# TYPE x counter\nx 1\n");
            }
            Rendered::Json(json) => panic!("expected raw text, got {json}"),
        }
    }

    #[test]
    fn replies_use_proto_names_and_emit_defaults() {
        use prost::Message as _;
        let clear = binding("AffinityService.ClearAllAffinities");
        let reply = crate::proto::ClearAllAffinitiesResponse {
            deleted_count: 3,
            dry_run: false,
        };
        let Rendered::Json(json) = render(&clear, &reply.encode_to_vec()).unwrap() else {
            panic!("json expected");
        };
        assert_eq!(json, serde_json::json!({"deleted_count": "3", "dry_run": false}));
    }
}
