//! What handlers need to know about a call besides its message: who made it
//! (set by the auth layer), from where, and its request id (set by the
//! envelope); and the audit step of destructive calls.

use std::time::Instant;

use serde_json::{Map, Value};
use tonic::Request;

use super::envelope::REQUEST_ID;
use crate::auth::Principal;
use crate::domain::audit::{Auditor, CallContext};
use crate::error::Error;

/// The context of `request`, a call to `method` (`/pkg.Service/Method`).
pub fn call_context<T>(request: &Request<T>, method: &str) -> CallContext {
    let principal = request.extensions().get::<Principal>();
    let metadata = request.metadata();
    let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok()).map(str::to_owned);
    CallContext {
        method: method.to_owned(),
        subject: principal.map(|p| p.subject.clone()).unwrap_or_default(),
        admin_user_id: principal.and_then(|p| p.admin_user_id.clone()),
        ip_address: request.remote_addr().map(|addr| addr.ip().to_string()),
        user_agent: text("user-agent").unwrap_or_else(|| "unknown".to_owned()),
        request_id: text(REQUEST_ID).unwrap_or_default(),
    }
}

/// Audits a destructive call's outcome, then returns it. A failed call is
/// audited as failed and keeps its own error; a successful call whose audit
/// row cannot be written reports that (the change itself is done).
pub async fn audited<T>(
    auditor: &Auditor,
    context: &CallContext,
    action: &str,
    dry_run: bool,
    started: Instant,
    result: Result<T, Error>,
    details: impl FnOnce(Option<&T>) -> Map<String, Value>,
) -> Result<T, Error> {
    let details = details(result.as_ref().ok());
    let elapsed = started.elapsed().as_millis() as u64;
    let written = auditor
        .record(context, action, dry_run, details, result.as_ref().map(|_| ()), elapsed)
        .await;
    match (result, written) {
        (Ok(value), Ok(())) => Ok(value),
        (Ok(_), Err(audit_error)) => Err(audit_error),
        (Err(error), _) => Err(error),
    }
}

/// A details map from pairs.
pub fn details<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
