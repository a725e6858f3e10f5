//! Audit of destructive operator calls, as rows shaped like Aether's own
//! `audit_logs` rows (AETHER_COMPAT.md §8), so Aether's audit views show them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use crate::error::{Error, StoreError};

/// Who made a call and how it reached us.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallContext {
    /// The gRPC method path, e.g. `/aether.control.v1.AffinityService/ClearAllAffinities`.
    pub method: String,
    /// `user:{id}` or `service:{name}`.
    pub subject: String,
    /// The admin's users.id (None for service tokens).
    pub admin_user_id: Option<String>,
    /// Peer address.
    pub ip_address: Option<String>,
    /// user-agent metadata, or "unknown".
    pub user_agent: String,
    /// The request id the caller also gets back.
    pub request_id: String,
}

/// One audit row.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditRecord {
    /// `request_success` or `request_failed`.
    pub event_type: &'static str,
    /// The admin, if the caller is one.
    pub user_id: Option<String>,
    /// `"{method} via aether-control"`.
    pub description: String,
    /// Peer address.
    pub ip_address: Option<String>,
    /// Caller's user agent.
    pub user_agent: String,
    /// Request id.
    pub request_id: String,
    /// Aether's `event_metadata`, with `details.action`.
    pub event_metadata: Value,
    /// Error text on failure.
    pub error_message: Option<String>,
}

/// Where audit rows go.
#[async_trait]
pub trait AuditSink: Send + Sync + 'static {
    /// Writes one row.
    async fn write(&self, record: &AuditRecord) -> Result<(), StoreError>;
}

/// Writes audit rows and counts the ones that could not be written.
#[derive(Clone)]
pub struct Auditor {
    sink: Arc<dyn AuditSink>,
    failures: Arc<AtomicU64>,
}

impl Auditor {
    /// An auditor over `sink`.
    pub fn new(sink: Arc<dyn AuditSink>) -> Self {
        Self {
            sink,
            failures: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Audit writes that failed since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Records the outcome of a destructive call. `details` are the action's
    /// extras (Aether's names: `cleared_count`, `user_identifier`, ...) and
    /// get `action` and `dry_run` added. A failed write is counted and
    /// returned as an error, so the caller is told the call went unaudited.
    pub async fn record(
        &self,
        context: &CallContext,
        action: &str,
        dry_run: bool,
        mut details: Map<String, Value>,
        outcome: Result<(), &Error>,
        duration_ms: u64,
    ) -> Result<(), Error> {
        details.insert("action".into(), json!(action));
        details.insert("dry_run".into(), json!(dry_run));
        let success = outcome.is_ok();
        let mut metadata = json!({
            "path": context.method,
            "method": "POST",
            "adapter": "aether-control",
            "adapter_mode": "grpc",
            "mode": "admin",
            "duration_ms": duration_ms,
            "success": success,
            "user_role": if context.admin_user_id.is_some() { "admin" } else { "service" },
            "subject": context.subject,
            "details": Value::Object(details),
        });
        let error_message = outcome.err().map(ToString::to_string);
        if let (Some(error), Some(object)) = (&error_message, metadata.as_object_mut()) {
            object.insert("error".into(), json!(error));
        }
        let record = AuditRecord {
            event_type: if success { "request_success" } else { "request_failed" },
            user_id: context.admin_user_id.clone(),
            description: format!("{} via aether-control", context.method),
            ip_address: context.ip_address.clone(),
            user_agent: context.user_agent.clone(),
            request_id: context.request_id.clone(),
            event_metadata: metadata,
            error_message,
        };
        self.sink.write(&record).await.map_err(|error| {
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, request_id = %context.request_id, action, "audit row not written");
            Error::AuditFailed {
                action: action.to_owned(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::error::StoreKind;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<AuditRecord>>, bool);

    #[async_trait]
    impl AuditSink for Recorder {
        async fn write(&self, record: &AuditRecord) -> Result<(), StoreError> {
            if self.1 {
                return Err(StoreError::Unavailable {
                    store: StoreKind::Database,
                    detail: "down".into(),
                });
            }
            self.0.lock().unwrap().push(record.clone());
            Ok(())
        }
    }

    fn context() -> CallContext {
        CallContext {
            method: "/aether.control.v1.AffinityService/ClearAllAffinities".into(),
            subject: "user:u1".into(),
            admin_user_id: Some("u1".into()),
            ip_address: Some("127.0.0.1".into()),
            user_agent: "grpcurl".into(),
            request_id: "abcd1234".into(),
        }
    }

    #[tokio::test]
    async fn rows_carry_aethers_shape() {
        let sink = Arc::new(Recorder::default());
        let auditor = Auditor::new(sink.clone());
        let details = Map::from_iter([("cleared_count".to_owned(), json!(3))]);
        auditor
            .record(&context(), "cache_clear_all", false, details, Ok(()), 5)
            .await
            .unwrap();
        let rows = sink.0.lock().unwrap();
        let row = &rows[0];
        assert_eq!(
            (row.event_type, row.user_id.as_deref(), row.request_id.as_str()),
            ("request_success", Some("u1"), "abcd1234")
        );
        assert_eq!(row.event_metadata["details"]["action"], "cache_clear_all");
        assert_eq!(row.event_metadata["details"]["cleared_count"], 3);
        assert_eq!(row.event_metadata["details"]["dry_run"], false);
    }

    #[tokio::test]
    async fn failed_writes_are_reported_and_counted() {
        let auditor = Auditor::new(Arc::new(Recorder(Mutex::default(), true)));
        let result = auditor
            .record(&context(), "cache_clear_all", true, Map::new(), Ok(()), 1)
            .await;
        assert!(matches!(result, Err(Error::AuditFailed { .. })));
        assert_eq!(auditor.failures(), 1);
    }
}
