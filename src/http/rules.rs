//! The REST routes, read from the `google.api.http` option of every method in
//! the descriptor pool (primary rule and `additional_bindings`), checked once
//! at start: every path variable, body and response_body field must exist.

use axum::http::Method;
use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor};

use super::template::PathTemplate;

/// Extra query-parameter names, as (method, alias, field): the alias sets the
/// field when the field itself is not given. Aether's admin `/affinities`
/// pages with `limit` + `offset`; `offset` is a field already, `limit` is
/// our `page_size`.
pub const QUERY_ALIASES: &[(&str, &str, &str)] =
    &[("aether.control.v1.AffinityService.ListAffinities", "limit", "page_size")];

/// Where the HTTP body goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyRule {
    /// No body; fields come from the path and the query.
    None,
    /// `body: "*"`: the whole request message (minus path fields).
    Whole,
    /// `body: "field"`: that field; the rest comes from the path and the query.
    Field(String),
}

/// One HTTP route to one gRPC method.
#[derive(Clone, Debug)]
pub struct Binding {
    /// The HTTP method.
    pub http_method: Method,
    /// The path template.
    pub template: PathTemplate,
    /// Where the body goes.
    pub body: BodyRule,
    /// The response field sent instead of the whole response.
    pub response_body: Option<String>,
    /// The gRPC method.
    pub method: MethodDescriptor,
    /// `/package.Service/Method`.
    pub grpc_path: String,
    /// `Service_Method`, with the binding's index after the first.
    pub operation_id: String,
    /// Query aliases of this method, (alias, field).
    pub aliases: Vec<(&'static str, &'static str)>,
}

/// The fields along a dotted path (proto or JSON names); intermediate fields
/// must be singular messages.
pub fn resolve_field_path(message: &MessageDescriptor, path: &str) -> Option<Vec<FieldDescriptor>> {
    let mut current = message.clone();
    let mut fields = Vec::new();
    let mut parts = path.split('.').peekable();
    while let Some(name) = parts.next() {
        let field = current
            .get_field_by_name(name)
            .or_else(|| current.get_field_by_json_name(name))?;
        if parts.peek().is_some() {
            match field.kind() {
                Kind::Message(next) if !field.is_list() && !field.is_map() => current = next,
                _ => return None,
            }
        }
        fields.push(field);
    }
    Some(fields)
}

fn string_field(rule: &DynamicMessage, name: &str) -> String {
    rule.get_field_by_name(name)
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The HTTP method and path template of one HttpRule.
fn pattern(rule: &DynamicMessage) -> Result<(Method, String), String> {
    for (name, method) in [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ] {
        if rule.has_field_by_name(name) {
            return Ok((method, string_field(rule, name)));
        }
    }
    if let Some(custom) = rule.get_field_by_name("custom")
        && let Some(custom) = custom.as_message()
    {
        let kind = string_field(custom, "kind");
        let method = Method::from_bytes(kind.as_bytes()).map_err(|_| format!("bad custom method `{kind}`"))?;
        return Ok((method, string_field(custom, "path")));
    }
    Err("no pattern (get, put, post, delete, patch or custom)".to_owned())
}

fn binding(method: &MethodDescriptor, rule: &DynamicMessage, index: usize) -> Result<Binding, String> {
    let (http_method, path) = pattern(rule)?;
    let template = PathTemplate::parse(&path)?;
    let input = method.input();
    for field_path in template.field_paths() {
        let fields = resolve_field_path(&input, field_path)
            .ok_or_else(|| format!("path variable `{field_path}` is not a field of {}", input.full_name()))?;
        if fields.last().is_some_and(|f| f.is_list() || f.is_map()) {
            return Err(format!("path variable `{field_path}` is repeated"));
        }
    }
    let body = match string_field(rule, "body").as_str() {
        "" => BodyRule::None,
        "*" => BodyRule::Whole,
        field => {
            resolve_field_path(&input, field)
                .ok_or_else(|| format!("body `{field}` is not a field of {}", input.full_name()))?;
            BodyRule::Field(field.to_owned())
        }
    };
    let response_body = Some(string_field(rule, "response_body")).filter(|f| !f.is_empty());
    if let Some(field) = &response_body {
        resolve_field_path(&method.output(), field).ok_or_else(|| {
            format!(
                "response_body `{field}` is not a field of {}",
                method.output().full_name()
            )
        })?;
    }
    let aliases = QUERY_ALIASES
        .iter()
        .filter(|(name, _, _)| *name == method.full_name())
        .map(|&(_, alias, field)| {
            if resolve_field_path(&input, field).is_none() || input.get_field_by_name(alias).is_some() {
                return Err(format!(
                    "query alias `{alias}` -> `{field}` does not fit {}",
                    input.full_name()
                ));
            }
            Ok((alias, field))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let service = method.parent_service();
    let suffix = if index == 0 {
        String::new()
    } else {
        (index + 1).to_string()
    };
    Ok(Binding {
        http_method,
        template,
        body,
        response_body,
        grpc_path: format!("/{}/{}", service.full_name(), method.name()),
        operation_id: format!("{}_{}{suffix}", service.name(), method.name()),
        method: method.clone(),
        aliases,
    })
}

/// Every binding of every annotated method, in declaration order.
pub fn bindings(pool: &DescriptorPool) -> Result<Vec<Binding>, String> {
    let Some(http) = pool.get_extension_by_name("google.api.http") else {
        return Err("the descriptor set lacks google.api.http".to_owned());
    };
    let mut bindings = Vec::new();
    for service in pool.services() {
        for method in service.methods() {
            if method.is_client_streaming() {
                continue;
            }
            let options = method.options();
            if !options.has_extension(&http) {
                continue;
            }
            let rule = options.get_extension(&http);
            let Some(rule) = rule.as_message() else {
                continue;
            };
            let fail = |e: String| format!("{}: {e}", method.full_name());
            bindings.push(binding(&method, rule, 0).map_err(fail)?);
            let additional = rule.get_field_by_name("additional_bindings");
            for (index, extra) in additional.iter().flat_map(|v| v.as_list()).flatten().enumerate() {
                if let Some(extra) = extra.as_message() {
                    bindings.push(binding(&method, extra, index + 1).map_err(fail)?);
                }
            }
        }
    }
    Ok(bindings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded() -> Vec<Binding> {
        let pool = super::super::descriptor_pool().expect("descriptor pool");
        bindings(&pool).expect("every annotation is valid")
    }

    #[test]
    fn every_annotated_method_is_bound() {
        let bindings = embedded();
        let find = |method: &str| {
            bindings
                .iter()
                .filter(|b| b.method.full_name() == method)
                .collect::<Vec<_>>()
        };
        let set = find("aether.control.v1.AffinityService.SetAffinity");
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].http_method, Method::PUT);
        assert_eq!(set[0].body, BodyRule::Whole);
        assert_eq!(set[0].grpc_path, "/aether.control.v1.AffinityService/SetAffinity");

        let metrics = find("aether.control.v1.AffinityService.ExportMetrics");
        assert_eq!(metrics[0].response_body.as_deref(), Some("text"));

        let get_user = find("aether.control.v1.UserService.GetUser");
        assert_eq!(get_user.len(), 2, "primary + additional binding");
        assert_eq!(get_user[1].template.source(), "/v1/users:lookup");
        assert_eq!(get_user[1].operation_id, "UserService_GetUser2");

        let list = find("aether.control.v1.AffinityService.ListAffinities");
        assert_eq!(list[0].aliases, [("limit", "page_size")]);
        assert!(
            find("aether.control.v1.AffinityService.WatchAffinityEvents")[0]
                .method
                .is_server_streaming()
        );
        // Health and reflection have no annotations.
        assert!(bindings.iter().all(|b| b.grpc_path.starts_with("/aether.control.v1.")));
    }

    #[test]
    fn field_paths_accept_proto_and_json_names() {
        let pool = super::super::descriptor_pool().unwrap();
        let request = pool
            .get_message_by_name("aether.control.v1.SetAffinityRequest")
            .unwrap();
        assert_eq!(
            resolve_field_path(&request, "affinity_key").unwrap()[0].name(),
            "affinity_key"
        );
        assert_eq!(
            resolve_field_path(&request, "affinityKey").unwrap()[0].name(),
            "affinity_key"
        );
        assert_eq!(resolve_field_path(&request, "ttl.seconds").unwrap().len(), 2);
        assert!(
            resolve_field_path(&request, "affinity_key.x").is_none(),
            "not a message"
        );
        assert!(resolve_field_path(&request, "nope").is_none());
    }
}
