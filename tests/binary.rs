//! The real `aether-control` binary: embedded default start, reflection,
//! graceful stop on SIGTERM, and clear configuration errors.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1alpha::ServerReflectionRequest as AlphaReflectionRequest;
use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;

const BINARY: &str = env!("CARGO_BIN_EXE_aether-control");

/// A command with none of the developer's service variables leaking in.
fn command() -> Command {
    let mut command = Command::new(BINARY);
    for name in [
        "REDIS_URL",
        "DATABASE_URL",
        "JWT_SECRET_KEY",
        "ENCRYPTION_KEY",
        "ENVIRONMENT",
        "AETHER_CONTROL_LISTEN",
    ] {
        command.env_remove(name);
    }
    command.env("RUST_LOG", "info");
    command
}

/// The binary, started with `command` on ephemeral ports in `data_dir`;
/// returns it, its gRPC address and its log lines.
fn start(
    mut command: Command,
    data_dir: &std::path::Path,
) -> (std::process::Child, String, std::sync::mpsc::Receiver<String>) {
    let mut child = command
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    let address = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a log line before the deadline");
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    eprintln!("listening after {:?}", started.elapsed());
    (child, address, rx)
}

#[tokio::test]
async fn embedded_default_serves_reflection_and_stops_on_sigterm() {
    let data_dir = tempfile::tempdir().unwrap();
    let (mut child, address, _logs) = start(command(), data_dir.path());
    assert!(
        data_dir.path().join("aether-control.db").exists(),
        "SQLite created in the data dir"
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection v1")
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    drop(stream);
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    for expected in [
        "aether.control.v1.AffinityService",
        "aether.control.v1.ModelMappingService",
        "aether.control.v1.UserService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }

    // v1alpha (older grpcurl) resolves a symbol to its file, comments included.
    let request = AlphaReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::FileContainingSymbol(
            "aether.control.v1.AffinityService".into(),
        )),
    };
    let mut stream = AlphaClient::new(channel)
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    let Some(AlphaResponse::FileDescriptorResponse(files)) = stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    // Finished calls leave nothing in flight; an unread stream would hold
    // the drain until the grace period.
    drop(stream);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "did not stop after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "graceful stop exits 0, got {exit:?}");
}

#[tokio::test]
async fn spans_are_exported_to_the_configured_otlp_endpoint() {
    // A bare TCP listener stands in for the collector: the exporter opening an
    // HTTP/2 connection to it and sending its preface shows spans are exported.
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let data_dir = tempfile::tempdir().unwrap();
    let mut command = command();
    command
        .args(["--otlp-endpoint", &endpoint])
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let (mut child, address, _logs) = start(command, data_dir.path());

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut check = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
    check.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(check)
        .await
        .expect("health answers with the exporter on");

    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(15), collector.accept())
        .await
        .expect("the exporter connects within 15 s")
        .unwrap();
    let mut preface = [0u8; 14];
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut preface),
    )
    .await
    .expect("the exporter speaks")
    .unwrap();
    assert_eq!(&preface, b"PRI * HTTP/2.0", "an OTLP/gRPC (HTTP/2) export");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn bad_configuration_exits_78_naming_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("REDIS_URL", "http://localhost")], "REDIS_URL"),
        (&[("DATABASE_URL", "mysql://db")], "DATABASE_URL"),
        (
            &[("AETHER_CONTROL_AFFINITY_TTL_SECONDS", "0")],
            "AETHER_CONTROL_AFFINITY_TTL_SECONDS",
        ),
        (&[("ENVIRONMENT", "production")], "DATABASE_URL"),
    ];
    for (env, name) in cases {
        let output = command()
            .envs(env.iter().copied())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(78), "{env:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(name) && stderr.contains("configuration error"),
            "{env:?}: {stderr}"
        );
    }
    // clap rejects a malformed value before validation, with usage exit code 2.
    let output = command()
        .env("AETHER_CONTROL_LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--listen"));
}
