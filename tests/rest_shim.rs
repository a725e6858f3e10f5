//! The REST/JSON shim over real HTTP/1.1 (a small client on a TcpStream),
//! against the real server on the embedded default and on Redis +
//! PostgreSQL: transcoded calls, paging with Aether's `limit`, raw metrics
//! text, grpc-gateway errors with decoded details, the NDJSON event stream,
//! health endpoints and the generated OpenAPI document.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::fixtures::{self, *};
use common::server::{TestServer, tokens};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One HTTP response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("JSON body expected ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn request_head(method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> String {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nUser-Agent: rest-shim-test\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    match body {
        Some(body) => head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        None => head.push_str("\r\n"),
    }
    head
}

/// Reads the status line and headers.
async fn read_head(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.expect("header line");
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').expect("header");
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    (status, headers)
}

/// Reads one chunk of a chunked body; None at the last chunk.
async fn read_chunk(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("chunk size");
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16).expect("hex chunk size");
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk).await.expect("chunk");
    chunk.truncate(size);
    (size > 0).then_some(chunk)
}

async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Reply {
    send(addr, &request_head(method, path, token, body)).await
}

/// Sends a raw HTTP/1.1 request and reads the whole response.
async fn send(addr: SocketAddr, request: &str) -> Reply {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect to the REST port");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader).await;
        let chunked = headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
        let mut body = Vec::new();
        if chunked {
            while let Some(chunk) = read_chunk(&mut reader).await {
                body.extend_from_slice(&chunk);
            }
        } else {
            reader.read_to_end(&mut body).await.expect("body");
        }
        Reply { status, headers, body }
    };
    tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .unwrap_or_else(|_| panic!("{} timed out", request.lines().next().unwrap_or_default()))
}

/// An authenticated call with every scope.
async fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Reply {
    http(addr, method, path, Some(tokens::ALL), body).await
}

/// Asserts a grpc-gateway error and returns its detail of `type_name`.
fn error_detail(reply: &Reply, http_status: u16, grpc_code: i64, type_name: &str) -> Value {
    assert_eq!(reply.status, http_status, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(body["code"], grpc_code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    let url = format!("type.googleapis.com/google.rpc.{type_name}");
    body["details"]
        .as_array()
        .expect("details array")
        .iter()
        .find(|d| d["@type"] == url)
        .cloned()
        .unwrap_or_else(|| panic!("no {type_name} in {body}"))
}

/// Every object key in `value`, recursively.
fn keys(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                out.push(key.clone());
                keys(inner, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

fn rfc3339(value: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(value.as_str().expect("timestamp string"))
        .unwrap_or_else(|e| panic!("{value} is not RFC 3339: {e}"))
}

async fn pin(addr: SocketAddr, key: &str, format: &str, provider: &str, endpoint: &str, provider_key: &str) -> Value {
    let body = json!({"provider_id": provider, "endpointId": endpoint, "key_id": provider_key, "ttl": "120s"});
    let reply = call(
        addr,
        "PUT",
        &format!("/v1/affinities/{key}/{format}/{MODEL}"),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

async fn health_endpoints(addr: SocketAddr) {
    let up = http(addr, "GET", "/healthz", None, None).await;
    assert_eq!((up.status, up.json()), (200, json!({"status": "ok"})));
    // Ready once the health monitor has probed every store.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready = http(addr, "GET", "/readyz", None, None).await;
        if ready.status == 200 {
            assert_eq!(ready.json(), json!({"status": "SERVING"}));
            break;
        }
        assert_eq!(ready.status, 503);
        assert!(
            std::time::Instant::now() < deadline,
            "not ready within 10 s: {}",
            ready.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn openapi_document(addr: SocketAddr) {
    let reply = http(addr, "GET", "/openapi.json", None, None).await;
    assert_eq!(reply.status, 200);
    let doc = reply.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/admin/monitoring/cache",
        "/api/admin/monitoring/cache/stats",
        "/api/admin/monitoring/cache/affinities",
        "/api/admin/monitoring/cache/affinity/{user_identifier}",
        "/api/admin/monitoring/cache/affinity/{affinity_key}/{endpoint_id}/{global_model_id}/{api_format}",
        "/api/admin/monitoring/cache/users/{user_identifier}",
        "/api/admin/monitoring/cache/providers/{provider_id}",
        "/api/admin/monitoring/cache/config",
        "/api/admin/monitoring/cache/metrics",
        "/api/admin/monitoring/cache/model-mapping/stats",
        "/v1/affinities/{affinity_key}/{api_format}/{global_model_id}",
        "/v1/affinity-events",
        "/v1/users:lookup",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing from /openapi.json");
    }
    let clear = &doc["paths"]["/api/admin/monitoring/cache"]["delete"];
    assert_eq!(clear["operationId"], "AffinityService_ClearAllAffinities");
    assert!(clear["description"].as_str().unwrap().contains("FAILED_PRECONDITION"));
}

async fn errors(addr: SocketAddr) {
    // No credential: 401, like gRPC's UNAUTHENTICATED, with its ErrorInfo.
    let reply = http(addr, "GET", "/api/admin/monitoring/cache/stats", None, None).await;
    let info = error_detail(&reply, 401, 16, "ErrorInfo");
    assert_eq!(info["reason"], "MISSING_CREDENTIAL");
    assert_eq!(info["domain"], "aether-control");
    // A body that cannot be transcoded is refused only after the credential
    // is checked: without one, 401 as well; with one, 400 naming the body.
    let usage_path = format!("/v1/affinities/{BOB_KEY}/CLAUDE/{MODEL}:recordUsage");
    let bad_body = Some(r#"{"input_tokens": ""}"#);
    let reply = http(addr, "POST", &usage_path, None, bad_body).await;
    error_detail(&reply, 401, 16, "ErrorInfo");
    let reply = http(addr, "POST", &usage_path, Some(tokens::READ), bad_body).await;
    error_detail(&reply, 403, 7, "ErrorInfo");
    let reply = call(addr, "POST", &usage_path, bad_body).await;
    error_detail(&reply, 400, 3, "BadRequest");
    // The request id goes through as gRPC metadata and comes back, on errors too.
    let with_id = |token: &str| {
        format!(
            "GET /api/admin/monitoring/cache/config HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             X-Request-Id: rest-test-42\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
    };
    let reply = send(addr, &with_id(tokens::ALL)).await;
    assert_eq!(
        (reply.status, reply.header("x-request-id")),
        (200, Some("rest-test-42"))
    );
    let reply = send(addr, &with_id("wrong")).await;
    assert_eq!(
        (reply.status, reply.header("x-request-id")),
        (401, Some("rest-test-42"))
    );
    // A read-only token may not clear: 403.
    let reply = http(
        addr,
        "DELETE",
        "/api/admin/monitoring/cache?confirm=true",
        Some(tokens::READ),
        None,
    )
    .await;
    error_detail(&reply, 403, 7, "ErrorInfo");

    // A bad API format: 400 with the BadRequest naming the field.
    let reply = call(
        addr,
        "GET",
        &format!("/v1/affinities/{BOB_KEY}/NOT_A_FORMAT/{MODEL}"),
        None,
    )
    .await;
    let bad = error_detail(&reply, 400, 3, "BadRequest");
    assert_eq!(bad["field_violations"][0]["field"], "api_format");
    // A bad query value is refused before the call, the same way.
    let reply = call(addr, "GET", "/api/admin/monitoring/cache/affinities?limit=ten", None).await;
    let bad = error_detail(&reply, 400, 3, "BadRequest");
    assert_eq!(bad["field_violations"][0]["field"], "page_size");
    // An unknown body field.
    let reply = call(
        addr,
        "PUT",
        &format!("/v1/affinities/{BOB_KEY}/CLAUDE/{MODEL}"),
        Some(r#"{"provider": "x"}"#),
    )
    .await;
    error_detail(&reply, 400, 3, "BadRequest");

    // Nothing pinned: 404 with the ResourceInfo.
    let reply = call(addr, "GET", &format!("/v1/affinities/{BOB_KEY}/GEMINI/{MODEL}"), None).await;
    let resource = error_detail(&reply, 404, 5, "ResourceInfo");
    assert_eq!(resource["resource_type"], "affinity");

    // No such route / method.
    let reply = call(addr, "GET", "/v1/nothing-here", None).await;
    assert_eq!((reply.status, reply.json()["code"].clone()), (404, json!(5)));
    let reply = call(addr, "POST", "/api/admin/monitoring/cache", None).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("DELETE"));
    // A custom verb's path belongs to its own template, not to the GET / PUT
    // template whose last variable could swallow `:invalidate`.
    let verb_path = format!("/v1/affinities/{BOB_KEY}/CLAUDE/{MODEL}:invalidate");
    for method in ["GET", "PUT"] {
        let reply = call(addr, method, &verb_path, None).await;
        assert_eq!((reply.status, reply.header("allow")), (405, Some("POST")), "{method}");
    }
    // The Allow header lists the path's own methods, not those of a less
    // specific template that also matches.
    let reply = call(addr, "POST", "/api/admin/monitoring/cache/model-mapping/stats", None).await;
    assert_eq!((reply.status, reply.header("allow")), (405, Some("GET")));
}

async fn affinity_calls(addr: SocketAddr) {
    // PUT: created, with proto field names and RFC 3339 timestamps.
    let created = pin(addr, ALICE_KEY_1, "claude", ALPHA, ALPHA_ENDPOINT, ALPHA_KEY).await;
    assert_eq!(created["outcome"], "SET_AFFINITY_OUTCOME_CREATED");
    let affinity = &created["affinity"];
    assert_eq!(affinity["affinity_key"], ALICE_KEY_1);
    assert_eq!(affinity["api_format"], "CLAUDE");
    assert_eq!(affinity["endpoint_id"], ALPHA_ENDPOINT);
    assert_eq!(
        affinity["request_count"], "1",
        "int64 is a string in the proto3 JSON mapping"
    );
    let lifetime = rfc3339(&affinity["expire_at"]) - rfc3339(&affinity["created_at"]);
    assert!((119..=121).contains(&lifetime.num_seconds()), "ttl 120s: {lifetime}");
    let mut names = Vec::new();
    keys(&created, &mut names);
    assert!(
        names.iter().all(|k| !k.chars().any(|c| c.is_ascii_uppercase())),
        "snake_case keys only: {names:?}"
    );
    assert!(created.get("previous").is_none(), "unset messages are left out");

    // Same target again: refreshed.
    let refreshed = pin(addr, ALICE_KEY_1, "CLAUDE", ALPHA, ALPHA_ENDPOINT, ALPHA_KEY).await;
    assert_eq!(refreshed["outcome"], "SET_AFFINITY_OUTCOME_REFRESHED");
    assert_eq!(refreshed["affinity"]["request_count"], "2");

    // GET it back.
    let reply = call(
        addr,
        "GET",
        &format!("/v1/affinities/{ALICE_KEY_1}/CLAUDE/{MODEL}"),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let got = reply.json();
    assert_eq!(got["affinity"]["provider_id"], ALPHA);
    assert_eq!(got["affinity"]["request_count"], "2");
    assert_eq!(got["affinity"]["created_at"], created["affinity"]["created_at"]);

    // The rest of the world, then Aether-style paging with limit + offset.
    pin(addr, ALICE_KEY_1, "OPENAI", BETA, BETA_ENDPOINT, BETA_KEY).await;
    pin(addr, ALICE_KEY_2, "CLAUDE", ALPHA, ALPHA_ENDPOINT, ALPHA_KEY).await;
    pin(addr, BOB_KEY, "CLAUDE", ALPHA, ALPHA_ENDPOINT, ALPHA_KEY).await;
    let page = |query: &'static str| async move {
        let reply = call(
            addr,
            "GET",
            &format!("/api/admin/monitoring/cache/affinities?{query}"),
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "{query}: {}", reply.text());
        reply.json()
    };
    let first = page("limit=2").await;
    assert_eq!(first["affinities"].as_array().unwrap().len(), 2);
    assert_eq!(first["total_size"], 4);
    assert!(!first["next_page_token"].as_str().unwrap().is_empty());
    let second = page("limit=2&offset=2").await;
    assert_eq!(second["affinities"].as_array().unwrap().len(), 2);
    let mut seen: Vec<String> = first["affinities"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["affinities"].as_array().unwrap())
        .map(|d| format!("{}:{}", d["affinity"]["affinity_key"], d["affinity"]["api_format"]))
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "every entry once across the pages");
    let alice = page("keyword=alice&limit=2").await;
    assert_eq!(
        (alice["total_size"].clone(), alice["matched_user_id"].clone()),
        (json!(3), json!(ALICE))
    );
    let detail = &alice["affinities"][0];
    assert_eq!(detail["username"], "alice");
    assert!(detail["rate_multiplier"].is_number());
    let by_text = page("keyword=LAPTOP").await;
    assert_eq!(by_text["total_size"], 2);

    // The user's affinities, and the additional binding of GetUser.
    let reply = call(
        addr,
        "GET",
        "/api/admin/monitoring/cache/affinity/alice%40example.com",
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let found = reply.json();
    assert_eq!(found["user"]["matched_by"], "USER_MATCH_KIND_EMAIL");
    assert_eq!(found["affinities"].as_array().unwrap().len(), 3);
    let reply = call(addr, "GET", "/v1/users:lookup?email=bob%40example.com", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["user"]["id"], BOB);

    // Invalidate with a body (verb path), then metrics as Prometheus text.
    let reply = call(
        addr,
        "POST",
        &format!("/v1/affinities/{BOB_KEY}/CLAUDE/{MODEL}:invalidate"),
        Some(r#"{"reason": "INVALIDATION_REASON_UPSTREAM_ERROR", "endpoint_id": "ep-alpha"}"#),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["deleted"], true);
    let reply = call(addr, "GET", "/api/admin/monitoring/cache/metrics", None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = reply.text();
    assert!(
        text.contains("# TYPE aether_control_affinity_hits_total counter"),
        "{text}"
    );
    // The conventional scrape path serves the same exposition.
    let scrape = call(addr, "GET", "/metrics", None).await;
    assert_eq!(
        (scrape.status, scrape.header("content-type")),
        (200, Some("text/plain; version=0.0.4; charset=utf-8"))
    );
    assert!(scrape.text().contains("# TYPE rpc_server_requests_total counter"));
    let stats = call(addr, "GET", "/api/admin/monitoring/cache/stats", None)
        .await
        .json();
    assert_eq!(stats["stats"]["active_affinities"], "3");
    assert_eq!(stats["config"]["default_ttl"], "300s");

    // Clearing everything needs confirm=true (FAILED_PRECONDITION -> 400).
    let reply = call(addr, "DELETE", "/api/admin/monitoring/cache", None).await;
    error_detail(&reply, 400, 9, "ErrorInfo");
    let reply = call(addr, "DELETE", "/api/admin/monitoring/cache?confirm=true", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json(), json!({"deleted_count": "3", "dry_run": false}));
    assert_eq!(page("").await["total_size"], 0);
}

/// GET /v1/affinity-events: newline-delimited `{"result": ...}` objects.
async fn event_stream(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let path = format!("/v1/affinity-events?affinity_key={BOB_KEY}&types=AFFINITY_EVENT_TYPE_CREATED&types=4");
    stream
        .write_all(request_head("GET", &path, Some(tokens::ALL), None).as_bytes())
        .await
        .unwrap();
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader).await;
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v == "chunked")
    );
    tokio::time::sleep(Duration::from_millis(200)).await; // the subscription is live
    pin(addr, ALICE_KEY_2, "GEMINI", ALPHA, ALPHA_ENDPOINT, ALPHA_KEY).await; // filtered out
    pin(addr, BOB_KEY, "GEMINI", ALPHA, ALPHA_ENDPOINT, ALPHA_KEY).await;
    pin(addr, BOB_KEY, "GEMINI", BETA, BETA_ENDPOINT, BETA_KEY).await; // switched: filtered out
    let reply = call(
        addr,
        "POST",
        &format!("/v1/affinities/{BOB_KEY}/GEMINI/{MODEL}:invalidate"),
        Some("{}"),
    )
    .await;
    assert_eq!(reply.status, 200);

    let mut buffer = Vec::new();
    let mut events = Vec::new();
    while events.len() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), read_chunk(&mut reader))
            .await
            .expect("an event within 5 s")
            .expect("the stream stays open");
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            events.push(serde_json::from_slice::<Value>(&line).expect("one JSON object per line"));
        }
    }
    assert_eq!(events[0]["result"]["type"], "AFFINITY_EVENT_TYPE_CREATED", "{events:?}");
    assert_eq!(events[0]["result"]["affinity"]["affinity_key"], BOB_KEY);
    assert_eq!(
        events[1]["result"]["type"], "AFFINITY_EVENT_TYPE_INVALIDATED",
        "{events:?}"
    );
    assert_eq!(events[1]["result"]["reason"], "INVALIDATION_REASON_UNSPECIFIED");
    rfc3339(&events[1]["result"]["occurred_at"]);
}

async fn full_suite(server: &TestServer) {
    let addr = server.http_addr();
    health_endpoints(addr).await;
    openapi_document(addr).await;
    errors(addr).await;
    affinity_calls(addr).await;
    event_stream(addr).await;
}

#[tokio::test]
async fn embedded_default_serves_rest() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::sqlite_url(&dir);
    let server = TestServer::start(&["--database-url", &url]).await;
    fixtures::seed(&url).await;
    full_suite(&server).await;
    let addr = server.http_addr();
    server.stop().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the REST port closes with the gRPC server"
    );
}

#[tokio::test]
async fn redis_and_postgres_serve_rest() {
    let stores = common::stores::SharedStores::create().await;
    let server = stores.start_server(&[]).await;
    fixtures::seed(&stores.database.url).await;
    full_suite(&server).await;
    server.stop().await;
    stores.drop().await;
}

#[tokio::test]
async fn the_shim_can_be_turned_off() {
    let server = TestServer::start(&["--http-listen", "off"]).await;
    assert!(
        TcpStream::connect(server.http_addr()).await.is_err(),
        "nothing listens with --http-listen off"
    );
    server.stop().await;
}
