//! The authentication matrix over real gRPC: every RPC of the contract
//! (read from the embedded descriptors, so new RPCs are covered by
//! construction) against every kind of credential.

mod common;

use aether_control::db::entities::users;
use aether_control::proto::FILE_DESCRIPTOR_SET;
use common::server::{TestServer, tokens};
use prost::Message;
use sea_orm::{ActiveModelTrait, Database, Set};
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

/// Any request: every field is optional on the wire.
#[derive(Clone, PartialEq, Message)]
struct Empty {}

struct Rpc {
    path: String,
    server_streaming: bool,
}

fn contract_rpcs() -> Vec<Rpc> {
    let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set");
    let mut rpcs = Vec::new();
    for file in set.file.iter().filter(|f| f.package() == "aether.control.v1") {
        for service in &file.service {
            for method in &service.method {
                rpcs.push(Rpc {
                    path: format!("/aether.control.v1.{}/{}", service.name(), method.name()),
                    server_streaming: method.server_streaming(),
                });
            }
        }
    }
    assert!(rpcs.len() >= 20, "the whole contract: {}", rpcs.len());
    rpcs
}

/// The status an RPC answers with `authorization` (Ok means the call got
/// past authentication, whatever the handler then said).
async fn call(channel: &Channel, rpc: &Rpc, authorization: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let mut request = tonic::Request::new(Empty {});
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("ascii metadata"));
    }
    let path = PathAndQuery::from_maybe_shared(rpc.path.clone()).expect("path");
    let codec = tonic_prost::ProstCodec::<Empty, Empty>::default();
    let result = if rpc.server_streaming {
        grpc.server_streaming(request, path, codec).await.map(|_| ())
    } else {
        grpc.unary(request, path, codec).await.map(|_| ())
    };
    match result {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}

fn passed_auth(code: Code) -> bool {
    !matches!(code, Code::Unauthenticated | Code::PermissionDenied)
}

const ADMIN_ID: &str = "11111111-2222-4333-8444-555555555555";

async fn add_user(url: &str, id: &str, role: users::UserRole, active: bool) {
    let db = Database::connect(url).await.unwrap();
    users::ActiveModel {
        is_active: Set(active),
        ..common::rows::user(id, id, &format!("{id}@example.com"), role)
    }
    .insert(&db)
    .await
    .unwrap();
    db.close().await.unwrap();
}

#[tokio::test]
async fn every_rpc_against_every_credential() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::sqlite_url(&dir);
    let server = TestServer::start(&["--database-url", &url, "--jwt-secret-key", common::jwt::SECRET]).await;
    add_user(&url, ADMIN_ID, users::UserRole::Admin, true).await;
    add_user(&url, "u-plain", users::UserRole::User, true).await;
    add_user(&url, "u-retired", users::UserRole::Admin, false).await;
    let channel = server.raw_channel().await;

    let far = 4_102_444_800;
    let bearer = |token: &str| format!("Bearer {token}");
    let unauthenticated = [
        None,
        Some("Basic dXNlcjpwYXNz".to_owned()),
        Some("Bearer".to_owned()),
        Some("Bearer not-a-token".to_owned()),
        Some(bearer(common::jwt::EXPIRED_ADMIN)),
        Some(bearer(&common::jwt::sign(
            "wrong-secret-0123456789abcdef0123",
            ADMIN_ID,
            far,
            "access",
        ))),
        Some(bearer(common::jwt::REFRESH_ADMIN)),
        Some(bearer(&common::jwt::unsigned(ADMIN_ID, far))),
    ];
    let forbidden = [
        bearer(&common::jwt::sign(common::jwt::SECRET, "u-plain", far, "access")),
        bearer(&common::jwt::sign(common::jwt::SECRET, "u-retired", far, "access")),
        bearer(&common::jwt::sign(common::jwt::SECRET, "u-missing", far, "access")),
    ];
    for rpc in contract_rpcs() {
        for credential in &unauthenticated {
            let code = call(&channel, &rpc, credential.as_deref()).await;
            assert_eq!(code, Code::Unauthenticated, "{} with {credential:?}", rpc.path);
        }
        for credential in &forbidden {
            assert_eq!(
                call(&channel, &rpc, Some(credential)).await,
                Code::PermissionDenied,
                "{}",
                rpc.path
            );
        }
        let admin_jwt = bearer(common::jwt::ACCESS_ADMIN);
        assert!(
            passed_auth(call(&channel, &rpc, Some(&admin_jwt)).await),
            "{} as admin",
            rpc.path
        );

        let needed = aether_control::auth::required_scope(&rpc.path).expect("contract RPCs need a scope");
        for (token, scopes) in [
            (tokens::READ, aether_control::auth::Scopes::READ),
            (tokens::WRITE, aether_control::auth::Scopes::WRITE),
            (tokens::ADMIN, aether_control::auth::Scopes::ADMIN),
        ] {
            let code = call(&channel, &rpc, Some(&bearer(token))).await;
            if scopes.contains(needed) {
                assert!(passed_auth(code), "{} with scope {scopes:?}: {code:?}", rpc.path);
            } else {
                assert_eq!(code, Code::PermissionDenied, "{} with scope {scopes:?}", rpc.path);
            }
        }
    }

    // Health and reflection stay open.
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await;
    assert!(health.is_ok());
    server.stop().await;
}

#[tokio::test]
async fn a_demoted_admin_is_refused_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::sqlite_url(&dir);
    let server = TestServer::start(&["--database-url", &url, "--jwt-secret-key", common::jwt::SECRET]).await;
    add_user(&url, ADMIN_ID, users::UserRole::Admin, true).await;
    let channel = server.raw_channel().await;
    let rpc = Rpc {
        path: "/aether.control.v1.AffinityService/GetAffinityStats".into(),
        server_streaming: false,
    };
    let admin = format!("Bearer {}", common::jwt::ACCESS_ADMIN);
    assert!(passed_auth(call(&channel, &rpc, Some(&admin)).await));

    let db = Database::connect(&url).await.unwrap();
    let demoted = users::ActiveModel {
        id: Set(ADMIN_ID.into()),
        role: Set(users::UserRole::User),
        ..Default::default()
    };
    demoted.update(&db).await.unwrap();
    let started = std::time::Instant::now();
    while call(&channel, &rpc, Some(&admin)).await != Code::PermissionDenied {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "still allowed");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    eprintln!("refused {:?} after the demotion", started.elapsed());
    server.stop().await;
}

#[tokio::test]
async fn a_logged_out_token_is_refused_and_redis_down_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::sqlite_url(&dir);
    let namespace = common::redis::namespace();
    let proxy = common::proxy::CuttableProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let redis_url = format!("redis://{}/0", proxy.addr);
    let server = TestServer::start(&[
        "--database-url",
        &url,
        "--jwt-secret-key",
        common::jwt::SECRET,
        "--redis-url",
        &redis_url,
        "--redis-namespace",
        &namespace,
    ])
    .await;
    add_user(&url, ADMIN_ID, users::UserRole::Admin, true).await;
    let channel = server.raw_channel().await;
    let rpc = Rpc {
        path: "/aether.control.v1.AffinityService/GetAffinityStats".into(),
        server_streaming: false,
    };
    let admin = format!("Bearer {}", common::jwt::ACCESS_ADMIN);
    assert!(passed_auth(call(&channel, &rpc, Some(&admin)).await));

    // Redis unreachable: the blacklist cannot be read, so the token is refused.
    proxy.cut();
    let code = call(&channel, &rpc, Some(&admin)).await;
    assert!(
        !passed_auth(code) || code == Code::Unavailable,
        "fails closed, got {code:?}"
    );
    proxy.restore();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    // Aether's logout writes jwt:blacklist:{sha256(token)}.
    let redis = common::redis::client().await;
    let key = format!(
        "{namespace}jwt:blacklist:{}",
        aether_control::auth::service_tokens::hash_hex(common::jwt::ACCESS_ADMIN)
    );
    let _: () = fred::interfaces::KeysInterface::set(&redis, &key, "1", None, None, false)
        .await
        .unwrap();
    assert_eq!(call(&channel, &rpc, Some(&admin)).await, Code::Unauthenticated);

    server.stop().await;
    common::redis::cleanup(&redis, &namespace).await;
}
