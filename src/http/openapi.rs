//! The OpenAPI 3.1 document of the REST shim, generated from the same
//! bindings and descriptors the transcoder uses: one operation per binding,
//! path and query parameters and bodies from the request message, schemas
//! from the message descriptors, descriptions from the proto comments.

use std::collections::{BTreeMap, HashMap};

use prost_reflect::{DescriptorPool, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use super::rules::{Binding, BodyRule, resolve_field_path};

/// Leading comments by (file, descriptor path).
struct Comments(HashMap<(String, Vec<i32>), String>);

impl Comments {
    fn new(pool: &DescriptorPool) -> Self {
        let mut comments = HashMap::new();
        for file in pool.files() {
            let proto = file.file_descriptor_proto();
            let Some(info) = &proto.source_code_info else {
                continue;
            };
            for location in &info.location {
                let Some(text) = location.leading_comments.as_deref() else {
                    continue;
                };
                let text = text
                    .lines()
                    .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end())
                    .collect::<Vec<_>>()
                    .join("\n");
                let text = text.trim();
                if !text.is_empty() {
                    comments.insert((file.name().to_owned(), location.path.clone()), text.to_owned());
                }
            }
        }
        Self(comments)
    }

    fn get(&self, file: &str, path: &[i32]) -> Option<&str> {
        self.0.get(&(file.to_owned(), path.to_vec())).map(String::as_str)
    }

    fn message(&self, message: &MessageDescriptor) -> Option<&str> {
        self.get(message.parent_file().name(), message.path())
    }

    fn field(&self, field: &FieldDescriptor) -> Option<&str> {
        self.get(field.parent_file().name(), field.path())
    }
}

/// Component schemas, built as they are referenced.
struct Schemas<'a> {
    comments: &'a Comments,
    defined: BTreeMap<String, Value>,
}

fn with_description(mut schema: Value, description: Option<&str>) -> Value {
    if let (Some(text), Some(object)) = (description, schema.as_object_mut()) {
        object.insert("description".to_owned(), Value::String(text.to_owned()));
    }
    schema
}

/// Inline schemas of the well-known types, as their JSON mapping writes them.
fn well_known(message: &MessageDescriptor) -> Option<Value> {
    Some(match message.full_name() {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$", "examples": ["300s"]})
        }
        "google.protobuf.FieldMask" => json!({"type": "string"}),
        "google.protobuf.Empty" => json!({"type": "object"}),
        "google.protobuf.Struct" => json!({"type": "object", "additionalProperties": true}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array", "items": {}}),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": {"@type": {"type": "string"}},
            "required": ["@type"],
            "additionalProperties": true,
        }),
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => json!({"type": "number"}),
        "google.protobuf.Int64Value" => json!({"type": "string", "format": "int64"}),
        "google.protobuf.UInt64Value" => json!({"type": "string", "format": "uint64"}),
        "google.protobuf.Int32Value" => json!({"type": "integer", "format": "int32"}),
        "google.protobuf.UInt32Value" => json!({"type": "integer", "minimum": 0}),
        "google.protobuf.BoolValue" => json!({"type": "boolean"}),
        "google.protobuf.StringValue" => json!({"type": "string"}),
        "google.protobuf.BytesValue" => json!({"type": "string", "format": "byte"}),
        _ => return None,
    })
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

impl Schemas<'_> {
    /// A `$ref` to the message's schema (inline for well-known types).
    fn message(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(schema) = well_known(message) {
            return schema;
        }
        let name = message.full_name().to_owned();
        if !self.defined.contains_key(&name) {
            // Placeholder first: recursive messages refer to themselves.
            self.defined.insert(name.clone(), Value::Null);
            let schema = self.object(message, &[]);
            self.defined.insert(name.clone(), schema);
        }
        reference(&name)
    }

    /// The object schema of `message` without the top-level fields numbered in `skip`.
    fn object(&mut self, message: &MessageDescriptor, skip: &[u32]) -> Value {
        let mut properties = Map::new();
        for field in message.fields().filter(|f| !skip.contains(&f.number())) {
            let schema = with_description(self.field(&field), self.comments.field(&field));
            properties.insert(field.name().to_owned(), schema);
        }
        with_description(
            json!({"type": "object", "properties": properties}),
            self.comments.message(message),
        )
    }

    fn enumeration(&mut self, enumeration: &EnumDescriptor) -> Value {
        let name = enumeration.full_name().to_owned();
        if !self.defined.contains_key(&name) {
            let values: Vec<String> = enumeration.values().map(|v| v.name().to_owned()).collect();
            let comment = self.comments.get(enumeration.parent_file().name(), enumeration.path());
            self.defined.insert(
                name.clone(),
                with_description(json!({"type": "string", "enum": values}), comment),
            );
        }
        reference(&name)
    }

    fn kind(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double => json!({"type": "number", "format": "double"}),
            Kind::Float => json!({"type": "number", "format": "float"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({"type": "integer", "format": "int32"}),
            Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "minimum": 0}),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({"type": "string", "format": "int64"}),
            Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "format": "uint64"}),
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "format": "byte"}),
            Kind::Enum(enumeration) => self.enumeration(enumeration),
            Kind::Message(message) => self.message(message),
        }
    }

    fn field(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map()
            && let Kind::Message(entry) = field.kind()
        {
            let value = self.field(&entry.map_entry_value_field());
            return json!({"type": "object", "additionalProperties": value});
        }
        let item = self.kind(&field.kind());
        if field.is_list() {
            json!({"type": "array", "items": item})
        } else {
            item
        }
    }
}

/// Query parameters for the fields of `message` not bound elsewhere; nested
/// messages flatten to dotted names (three levels at most).
fn query_parameters(
    schemas: &mut Schemas<'_>,
    message: &MessageDescriptor,
    prefix: &str,
    bound: &[Vec<u32>],
    trail: &[u32],
    out: &mut Vec<Value>,
) {
    for field in message.fields() {
        let mut path = trail.to_vec();
        path.push(field.number());
        if field.is_map() || bound.iter().any(|b| b.starts_with(&path) || path.starts_with(b)) {
            continue;
        }
        let name = format!("{prefix}{}", field.name());
        if let Kind::Message(inner) = field.kind()
            && well_known(&inner).is_none()
        {
            if !field.is_list() && path.len() < 3 {
                query_parameters(schemas, &inner, &format!("{name}."), bound, &path, out);
            }
            continue;
        }
        let mut parameter = json!({
            "name": name,
            "in": "query",
            "required": false,
            "schema": schemas.field(&field),
        });
        if let Some(text) = schemas.comments.field(&field) {
            parameter["description"] = Value::String(text.to_owned());
        }
        if field.is_list() {
            parameter["style"] = json!("form");
            parameter["explode"] = json!(true);
        }
        out.push(parameter);
    }
}

fn operation(binding: &Binding, schemas: &mut Schemas<'_>, status: &Value) -> Value {
    let method = &binding.method;
    let input = method.input();
    let output = method.output();
    let mut parameters = Vec::new();
    let mut bound: Vec<Vec<u32>> = Vec::new();
    for path in binding.template.field_paths() {
        let Some(fields) = resolve_field_path(&input, path) else {
            continue;
        };
        bound.push(fields.iter().map(FieldDescriptor::number).collect());
        let Some(leaf) = fields.last() else { continue };
        let mut parameter = json!({"name": path, "in": "path", "required": true, "schema": schemas.field(leaf)});
        if let Some(text) = schemas.comments.field(leaf) {
            parameter["description"] = Value::String(text.to_owned());
        }
        parameters.push(parameter);
    }
    let mut operation = json!({
        "operationId": binding.operation_id,
        "summary": method.name(),
        "tags": [method.parent_service().name()],
    });
    if let Some(text) = schemas.comments.get(method.parent_file().name(), method.path()) {
        operation["description"] = Value::String(text.to_owned());
    }
    match &binding.body {
        BodyRule::None => {}
        BodyRule::Whole => {
            // Path fields come from the path: the body schema leaves them out.
            let top: Vec<u32> = bound.iter().filter(|b| b.len() == 1).map(|b| b[0]).collect();
            let schema = if top.is_empty() {
                schemas.message(&input)
            } else {
                schemas.object(&input, &top)
            };
            // As grpc-gateway, an absent body is an empty message (every proto3
            // field is optional on the wire), so the body is not required.
            operation["requestBody"] = json!({"required": false, "content": {"application/json": {"schema": schema}}});
        }
        BodyRule::Field(path) => {
            if let Some(fields) = resolve_field_path(&input, path) {
                bound.push(fields.iter().map(FieldDescriptor::number).collect());
                if let Some(leaf) = fields.last() {
                    let schema = schemas.field(leaf);
                    operation["requestBody"] =
                        json!({"required": false, "content": {"application/json": {"schema": schema}}});
                }
            }
        }
    }
    if binding.body != BodyRule::Whole {
        query_parameters(schemas, &input, "", &bound, &[], &mut parameters);
        for (alias, field) in &binding.aliases {
            if let Some(leaf) = resolve_field_path(&input, field).and_then(|f| f.last().cloned()) {
                parameters.push(json!({
                    "name": alias,
                    "in": "query",
                    "required": false,
                    "schema": schemas.field(&leaf),
                    "description": format!("Alias of `{field}` (the name in Aether's admin API); `{field}` wins when both are given."),
                }));
            }
        }
    }
    if !parameters.is_empty() {
        operation["parameters"] = Value::Array(parameters);
    }

    let (reply_schema, content_type) = match binding
        .response_body
        .as_deref()
        .and_then(|path| resolve_field_path(&output, path))
        .and_then(|fields| fields.last().cloned())
    {
        Some(leaf) if !leaf.is_list() && matches!(leaf.kind(), Kind::String) => {
            (json!({"type": "string"}), "text/plain")
        }
        Some(leaf) if !leaf.is_list() && matches!(leaf.kind(), Kind::Bytes) => (
            json!({"type": "string", "format": "binary"}),
            "application/octet-stream",
        ),
        Some(leaf) => (schemas.field(&leaf), "application/json"),
        None => (schemas.message(&output), "application/json"),
    };
    let success = if method.is_server_streaming() {
        json!({
            "description": "A stream of newline-delimited JSON objects: `{\"result\": ...}` per message; a stream that fails ends with `{\"error\": {...}}`.",
            "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {"result": reply_schema, "error": status},
            }}},
        })
    } else {
        json!({"description": "OK", "content": {content_type: {"schema": reply_schema}}})
    };
    operation["responses"] = json!({
        "200": success,
        "default": {
            "description": "An error: `code` is the gRPC code, `details` the google.rpc details with their `@type`.",
            "content": {"application/json": {"schema": status}},
        },
    });
    operation
}

/// The fixed endpoints beside the transcoded ones.
fn service_paths() -> Value {
    let status = json!({"type": "object", "properties": {"status": {"type": "string"}}});
    json!({
        "/healthz": {"get": {
            "operationId": "healthz",
            "summary": "The process is up.",
            "tags": ["Health"],
            "security": [],
            "responses": {"200": {"description": "Up", "content": {"application/json": {"schema": status}}}},
        }},
        "/readyz": {"get": {
            "operationId": "readyz",
            "summary": "Ready: the gRPC health status of the whole server is SERVING.",
            "tags": ["Health"],
            "security": [],
            "responses": {
                "200": {"description": "SERVING", "content": {"application/json": {"schema": status}}},
                "503": {"description": "Not serving (a store is down, or draining)", "content": {"application/json": {"schema": status}}},
            },
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi",
            "summary": "This document.",
            "tags": ["Health"],
            "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
        }},
    })
}

/// The OpenAPI document for `bindings`.
pub fn document(bindings: &[Binding], pool: &DescriptorPool) -> Value {
    let comments = Comments::new(pool);
    let mut schemas = Schemas {
        comments: &comments,
        defined: BTreeMap::new(),
    };
    let status = pool
        .get_message_by_name("google.rpc.Status")
        .map_or_else(|| json!({"type": "object"}), |status| schemas.message(&status));

    let mut paths = Map::new();
    let mut tags: Vec<Value> = Vec::new();
    for binding in bindings {
        let service = binding.method.parent_service();
        if !tags.iter().any(|t| t["name"] == service.name()) {
            let mut tag = json!({"name": service.name()});
            if let Some(text) = comments.get(service.parent_file().name(), service.path()) {
                tag["description"] = Value::String(text.to_owned());
            }
            tags.push(tag);
        }
        let item = paths
            .entry(binding.template.openapi_path())
            .or_insert_with(|| json!({}));
        item[binding.http_method.as_str().to_ascii_lowercase()] = operation(binding, &mut schemas, &status);
    }
    if let Value::Object(fixed) = service_paths() {
        paths.extend(fixed);
    }
    tags.push(json!({"name": "Health", "description": "Liveness, readiness and this document (no credential)."}));

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "aether-control REST/JSON API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Transcoded from the gRPC API by its google.api.http annotations: the proto3 JSON \
                mapping with proto field names (lowerCamelCase accepted on input), 64-bit integers as strings, \
                enums by name, timestamps in RFC 3339. Send `authorization: Bearer <token>` as for gRPC.",
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": schemas.defined,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated() -> Value {
        let pool = super::super::descriptor_pool().unwrap();
        let bindings = super::super::rules::bindings(&pool).unwrap();
        document(&bindings, &pool)
    }

    #[test]
    fn operations_carry_parameters_bodies_and_comments() {
        let doc = generated();
        let list = &doc["paths"]["/api/admin/monitoring/cache/affinities"]["get"];
        assert_eq!(list["operationId"], "AffinityService_ListAffinities");
        assert!(
            list["description"]
                .as_str()
                .unwrap()
                .starts_with("Lists live affinities")
        );
        let names: Vec<&str> = list["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["keyword", "page_size", "page_token", "offset", "limit"]);

        let set = &doc["paths"]["/v1/affinities/{affinity_key}/{api_format}/{global_model_id}"]["put"];
        let body = &set["requestBody"]["content"]["application/json"]["schema"]["properties"];
        assert!(body.get("provider_id").is_some());
        assert!(body.get("affinity_key").is_none(), "path fields are not in the body");
        assert_eq!(set["parameters"].as_array().unwrap().len(), 3);

        let metrics = &doc["paths"]["/api/admin/monitoring/cache/metrics"]["get"]["responses"]["200"]["content"];
        assert!(metrics.get("text/plain").is_some());
        assert!(
            doc["paths"]["/v1/users:lookup"]["get"].is_object(),
            "additional binding"
        );
        let affinity = &doc["components"]["schemas"]["aether.control.v1.Affinity"];
        assert_eq!(affinity["properties"]["expire_at"]["format"], "date-time");
        assert_eq!(affinity["properties"]["request_count"]["format"], "int64");
        assert!(doc["components"]["schemas"]["google.rpc.Status"].is_object());
        let outcome = &doc["components"]["schemas"]["aether.control.v1.SetAffinityOutcome"];
        assert_eq!(outcome["enum"][1], "SET_AFFINITY_OUTCOME_CREATED");
    }

    #[test]
    fn every_reference_resolves() {
        let doc = generated();
        let text = doc.to_string();
        for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = piece.split('"').next().unwrap();
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "dangling reference {name}"
            );
        }
    }
}
