//! `google.api.http` path templates: parse once, match request paths.
//!
//! Grammar (google/api/http.proto):
//! `Template = "/" Segments [":" Verb]`, `Segment = "*" | "**" | LITERAL | Variable`,
//! `Variable = "{" FieldPath ["=" Segments] "}"`. A variable without a pattern
//! matches one segment; `**` matches the rest of the path and must come last.

/// One segment of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// Matches exactly this text (after percent-decoding the request).
    Literal(String),
    /// `*`: one non-empty segment.
    One,
    /// `**`: zero or more segments, at the end only.
    Rest,
}

/// A variable: the request field it sets and the segments it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Variable {
    field_path: String,
    start: usize,
    end: usize,
}

/// A parsed path template.
#[derive(Clone, Debug)]
pub struct PathTemplate {
    source: String,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

/// Splits on `separator` outside braces.
fn split_outside_braces(text: &str, separator: char) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, c) in text.char_indices() {
        match c {
            '{' if depth == 0 => depth = 1,
            '{' => return Err("nested `{`".to_owned()),
            '}' if depth == 1 => depth = 0,
            '}' => return Err("unbalanced `}`".to_owned()),
            c if c == separator && depth == 0 => {
                parts.push(&text[start..index]);
                start = index + c.len_utf8();
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unclosed `{`".to_owned());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn plain_segment(text: &str) -> Result<Segment, String> {
    match text {
        "" => Err("empty segment".to_owned()),
        "*" => Ok(Segment::One),
        "**" => Ok(Segment::Rest),
        literal if literal.contains(['{', '}', '=', ':']) => Err(format!("bad literal segment `{literal}`")),
        literal => Ok(Segment::Literal(literal.to_owned())),
    }
}

fn is_field_path(text: &str) -> bool {
    !text.is_empty()
        && text.split('.').all(|ident| {
            ident
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && ident.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

impl PathTemplate {
    /// Parses `text`, e.g. `/v1/affinities/{affinity_key}:invalidate`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fail = |reason: String| format!("path template `{text}`: {reason}");
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| fail("must start with `/`".into()))?;
        // The verb follows the last `:` outside braces, after the last `/`.
        let mut pieces = split_outside_braces(rest, '/').map_err(fail)?;
        let last = pieces.pop().unwrap_or_default();
        let mut last_parts = split_outside_braces(last, ':').map_err(fail)?;
        let verb = match last_parts.len() {
            1 => None,
            2 => last_parts.pop().map(str::to_owned),
            _ => return Err(fail("more than one verb".into())),
        };
        if verb.as_deref() == Some("") {
            return Err(fail("empty verb".into()));
        }
        pieces.push(last_parts[0]);

        let mut segments = Vec::new();
        let mut variables: Vec<Variable> = Vec::new();
        for piece in pieces {
            if let Some(inner) = piece.strip_prefix('{') {
                let inner = inner
                    .strip_suffix('}')
                    .ok_or_else(|| fail(format!("bad variable `{piece}`")))?;
                let (field_path, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
                if !is_field_path(field_path) {
                    return Err(fail(format!("bad field path `{field_path}`")));
                }
                if variables.iter().any(|v| v.field_path == field_path) {
                    return Err(fail(format!("`{field_path}` bound twice")));
                }
                let start = segments.len();
                for part in pattern.split('/') {
                    segments.push(plain_segment(part).map_err(fail)?);
                }
                variables.push(Variable {
                    field_path: field_path.to_owned(),
                    start,
                    end: segments.len(),
                });
            } else {
                segments.push(plain_segment(piece).map_err(fail)?);
            }
        }
        if let Some(position) = segments.iter().position(|s| *s == Segment::Rest)
            && position + 1 != segments.len()
        {
            return Err(fail("`**` must be the last segment".into()));
        }
        Ok(Self {
            source: text.to_owned(),
            segments,
            variables,
            verb,
        })
    }

    /// The template as written in the proto.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The request fields bound by the path, in order.
    pub fn field_paths(&self) -> impl Iterator<Item = &str> {
        self.variables.iter().map(|v| v.field_path.as_str())
    }

    /// Whether the template ends in a custom verb (`:name`).
    pub fn has_verb(&self) -> bool {
        self.verb.is_some()
    }

    /// How specific the template is: literal segments (and a verb) win when
    /// several templates match one path.
    pub fn specificity(&self) -> usize {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        literals * 2 + usize::from(self.verb.is_some())
    }

    /// The path in OpenAPI form: one `{field.path}` per variable.
    pub fn openapi_path(&self) -> String {
        let mut path = String::new();
        let mut index = 0;
        while index < self.segments.len() {
            path.push('/');
            if let Some(variable) = self.variables.iter().find(|v| v.start == index) {
                path.push('{');
                path.push_str(&variable.field_path);
                path.push('}');
                index = variable.end.max(index + 1);
                continue;
            }
            match &self.segments[index] {
                Segment::Literal(literal) => path.push_str(literal),
                Segment::One => path.push('*'),
                Segment::Rest => path.push_str("**"),
            }
            index += 1;
        }
        if let Some(verb) = &self.verb {
            path.push(':');
            path.push_str(verb);
        }
        path
    }

    /// Matches a request path (as sent, percent-encoded); on a match returns
    /// each bound field path with its decoded value.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let mut rest = path.strip_prefix('/')?;
        if let Some(verb) = &self.verb {
            rest = rest.strip_suffix(verb.as_str())?.strip_suffix(':')?;
        }
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let open_ended = self.segments.last() == Some(&Segment::Rest);
        let fixed = self.segments.len() - usize::from(open_ended);
        if parts.len() < fixed || (!open_ended && parts.len() != fixed) {
            return None;
        }
        for (segment, part) in self.segments.iter().zip(&parts) {
            match segment {
                Segment::Literal(literal) => {
                    if percent_decode(part, false)? != *literal {
                        return None;
                    }
                }
                Segment::One => {
                    if part.is_empty() {
                        return None;
                    }
                }
                Segment::Rest => {}
            }
        }
        self.variables
            .iter()
            .map(|variable| {
                let end = if variable.end == self.segments.len() && open_ended {
                    parts.len()
                } else {
                    variable.end
                };
                let raw = parts[variable.start..end].join("/");
                Some((variable.field_path.clone(), percent_decode(&raw, false)?))
            })
            .collect()
    }
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`, for query
/// strings). None when an escape is malformed or the result is not UTF-8.
pub fn percent_decode(text: &str, plus_is_space: bool) -> Option<String> {
    if !text.contains(['%', '+']) {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let hex = bytes.get(index + 1..index + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                index += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        PathTemplate::parse(template).expect("template parses").matches(path)
    }

    fn pairs(list: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(list.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
    }

    #[test]
    fn variables_bind_one_segment_each() {
        let template = "/v1/affinities/{affinity_key}/{api_format}/{global_model_id}";
        assert_eq!(
            vars(template, "/v1/affinities/ak-1/CLAUDE/gm-1"),
            pairs(&[
                ("affinity_key", "ak-1"),
                ("api_format", "CLAUDE"),
                ("global_model_id", "gm-1")
            ])
        );
        assert_eq!(vars(template, "/v1/affinities/ak-1/CLAUDE"), None, "too short");
        assert_eq!(vars(template, "/v1/affinities/ak-1/CLAUDE/gm/x"), None, "too long");
        assert_eq!(vars(template, "/v1/affinities/ak-1//gm"), None, "empty segment");
        assert_eq!(vars(template, "/v2/affinities/a/b/c"), None, "literal differs");
    }

    #[test]
    fn values_are_percent_decoded() {
        assert_eq!(
            vars("/v1/users/{user_id}", "/v1/users/a%2Fb%20c+d"),
            pairs(&[("user_id", "a/b c+d")])
        );
        assert_eq!(vars("/v1/users/{user_id}", "/v1/users/%zz"), None, "bad escape");
        assert_eq!(vars("/v1/users/{user_id}", "/v1/users/%ff"), None, "not UTF-8");
    }

    #[test]
    fn verbs_are_split_from_the_last_segment() {
        let template = "/v1/affinities/{affinity_key}/{api_format}/{global_model_id}:invalidate";
        assert_eq!(
            vars(template, "/v1/affinities/k/OPENAI/m:invalidate"),
            pairs(&[
                ("affinity_key", "k"),
                ("api_format", "OPENAI"),
                ("global_model_id", "m")
            ])
        );
        assert_eq!(vars(template, "/v1/affinities/k/OPENAI/m"), None, "verb missing");
        assert_eq!(vars(template, "/v1/affinities/k/OPENAI/m:other"), None, "other verb");
        assert_eq!(vars("/v1/users:resolve", "/v1/users:resolve"), pairs(&[]));
        assert_eq!(vars("/v1/users:resolve", "/v1/users"), None);
        // Without a verb in the template, a colon is part of the value.
        assert_eq!(
            vars("/v1/users/{user_id}", "/v1/users/a:b"),
            pairs(&[("user_id", "a:b")])
        );
    }

    #[test]
    fn literal_only_and_wildcard_templates() {
        assert_eq!(
            vars("/api/admin/monitoring/cache", "/api/admin/monitoring/cache"),
            pairs(&[])
        );
        assert_eq!(
            vars("/api/admin/monitoring/cache", "/api/admin/monitoring/cache/"),
            None
        );
        assert_eq!(
            vars("/v1/{name=things/*}/x", "/v1/things/7/x"),
            pairs(&[("name", "things/7")])
        );
        assert_eq!(vars("/v1/{name=things/*}/x", "/v1/other/7/x"), None);
        assert_eq!(vars("/files/{path=**}", "/files/a/b/c"), pairs(&[("path", "a/b/c")]));
        assert_eq!(vars("/files/{path=**}", "/files"), pairs(&[("path", "")]));
        assert_eq!(vars("/v1/*/x", "/v1/anything/x"), pairs(&[]));
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in [
            "v1/x",
            "/v1/{x",
            "/v1/x}",
            "/v1/{a{b}}",
            "/v1//x",
            "/v1/{1x}",
            "/v1/{a}/{a}",
            "/v1/**/x",
            "/v1/x:",
            "/v1/x:a:b",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn openapi_paths_and_specificity() {
        let template = PathTemplate::parse("/v1/{name=things/*}/x:go").unwrap();
        assert_eq!(template.openapi_path(), "/v1/{name}/x:go");
        assert_eq!(template.field_paths().collect::<Vec<_>>(), ["name"]);
        let literal = PathTemplate::parse("/v1/users:lookup").unwrap();
        let variable = PathTemplate::parse("/v1/users/{user_id}").unwrap();
        assert!(literal.specificity() > variable.specificity());
        assert_eq!(variable.openapi_path(), "/v1/users/{user_id}");
    }

    #[test]
    fn query_decoding_turns_plus_into_space() {
        assert_eq!(percent_decode("a+b%2Bc", true).as_deref(), Some("a b+c"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%4", true), None);
    }
}
