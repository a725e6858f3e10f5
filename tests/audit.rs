//! Destructive operator calls leave Aether-shaped rows in `audit_logs`, dry
//! runs included; a call whose row cannot be written says so and is counted.

mod common;

use aether_control::db::entities::{audit_logs, users};
use aether_control::proto::affinity_service_client::AffinityServiceClient;
use aether_control::proto::*;
use common::fixtures::{self, ALICE_KEY_1, ALPHA, ALPHA_ENDPOINT, ALPHA_KEY, MODEL};
use common::server::TestServer;
use sea_orm::{ActiveModelTrait, ConnectionTrait, Database, EntityTrait, QueryOrder};
use tonic::Code;
use tonic_types::StatusExt;

const ADMIN_ID: &str = "11111111-2222-4333-8444-555555555555";

#[tokio::test]
async fn clears_are_audited_as_aether_audits_them() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::sqlite_url(&dir);
    let server = TestServer::start(&["--database-url", &url, "--jwt-secret-key", common::jwt::SECRET]).await;
    fixtures::seed(&url).await;
    let db = Database::connect(&url).await.unwrap();
    common::rows::user(ADMIN_ID, "admin", "admin@example.com", users::UserRole::Admin)
        .insert(&db)
        .await
        .unwrap();

    let mut service_client = AffinityServiceClient::new(server.channel().await);
    service_client
        .set_affinity(SetAffinityRequest {
            affinity_key: ALICE_KEY_1.into(),
            api_format: "CLAUDE".into(),
            global_model_id: MODEL.into(),
            provider_id: ALPHA.into(),
            endpoint_id: ALPHA_ENDPOINT.into(),
            key_id: ALPHA_KEY.into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // A dry run by a service token, then the real clear by an admin JWT.
    let dry = service_client
        .clear_user_affinities(ClearUserAffinitiesRequest {
            user_identifier: "alice".into(),
            dry_run: true,
        })
        .await
        .unwrap();
    let dry_request_id = dry.metadata().get("x-request-id").unwrap().to_str().unwrap().to_owned();
    let mut admin_request = tonic::Request::new(ClearUserAffinitiesRequest {
        user_identifier: "alice".into(),
        dry_run: false,
    });
    admin_request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", common::jwt::ACCESS_ADMIN).parse().unwrap(),
    );
    admin_request
        .metadata_mut()
        .insert("x-request-id", "req-admin-0001".parse().unwrap());
    let mut raw_client = AffinityServiceClient::new(server.raw_channel().await);
    let real = raw_client.clear_user_affinities(admin_request).await.unwrap();
    assert_eq!(real.metadata().get("x-request-id").unwrap(), "req-admin-0001");
    assert_eq!(real.get_ref().deleted_count, 1);

    let rows = audit_logs::Entity::find()
        .order_by_asc(audit_logs::Column::CreatedAt)
        .all(&db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let (dry_row, real_row) = (&rows[0], &rows[1]);
    assert_eq!(dry_row.event_type, "request_success");
    assert_eq!(dry_row.user_id, None, "service tokens are not users");
    assert_eq!(dry_row.request_id.as_deref(), Some(dry_request_id.as_str()));
    let dry_meta = dry_row.event_metadata.as_ref().unwrap();
    assert_eq!(dry_meta["details"]["action"], "cache_clear_user");
    assert_eq!(dry_meta["details"]["dry_run"], true);
    assert_eq!(dry_meta["details"]["cleared_count"], 1);
    assert_eq!(dry_meta["details"]["resolved_user_id"], "u-alice");
    assert_eq!(real_row.user_id.as_deref(), Some(ADMIN_ID));
    assert_eq!(real_row.request_id.as_deref(), Some("req-admin-0001"));
    assert_eq!(
        real_row.description,
        "/aether.control.v1.AffinityService/ClearUserAffinities via aether-control"
    );
    let real_meta = real_row.event_metadata.as_ref().unwrap();
    assert_eq!(
        (real_meta["details"]["dry_run"].clone(), real_meta["user_role"].clone()),
        (false.into(), "admin".into())
    );

    // A refused clear (no confirm) is audited as failed.
    let refused = service_client
        .clear_all_affinities(ClearAllAffinitiesRequest {
            confirm: false,
            dry_run: false,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let rows = audit_logs::Entity::find()
        .order_by_asc(audit_logs::Column::CreatedAt)
        .all(&db)
        .await
        .unwrap();
    let failed = rows.last().unwrap();
    assert_eq!(failed.event_type, "request_failed");
    assert_eq!(
        failed.event_metadata.as_ref().unwrap()["details"]["action"],
        "cache_clear_all"
    );

    // The audit table is gone: the clear runs, reports it, and is counted.
    db.execute_unprepared("DROP TABLE audit_logs").await.unwrap();
    let unaudited = service_client
        .clear_all_affinities(ClearAllAffinitiesRequest {
            confirm: true,
            dry_run: true,
        })
        .await
        .unwrap_err();
    assert_eq!(unaudited.code(), Code::Internal);
    assert_eq!(
        unaudited.get_error_details().error_info().unwrap().reason,
        "AUDIT_WRITE_FAILED"
    );
    let metrics = service_client
        .export_metrics(ExportMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .text;
    assert!(
        metrics.contains("aether_control_audit_write_failures_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("rpc_server_requests_total{rpc_system=\"grpc\",rpc_service=\"aether.control.v1.AffinityService\",rpc_method=\"ClearAllAffinities\",rpc_grpc_status_code=\"9\"} 1"));

    db.close().await.unwrap();
    server.stop().await;
}
