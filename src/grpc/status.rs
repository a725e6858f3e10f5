//! The one map from domain errors to gRPC statuses, with google.rpc details:
//! BadRequest for invalid input, ErrorInfo with a stable reason everywhere,
//! RetryInfo on UNAVAILABLE, ResourceInfo on NOT_FOUND. Store details are
//! logged, never sent.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::{Error, RETRY_DELAY, StoreError};

/// ErrorInfo domain of every error this service returns.
pub const ERROR_DOMAIN: &str = "aether-control";

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument { field, description } => {
                let mut details = ErrorDetails::with_bad_request_violation(field, description.clone());
                details.set_error_info("INVALID_ARGUMENT", ERROR_DOMAIN, HashMap::new());
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("invalid {field}: {description}"),
                    details,
                )
            }
            Error::NotFound {
                resource_type,
                resource_name,
            } => {
                let message = format!("{resource_type} not found");
                let mut details = ErrorDetails::with_resource_info(resource_type, resource_name, "", message.clone());
                details.set_error_info("NOT_FOUND", ERROR_DOMAIN, HashMap::new());
                Status::with_error_details(Code::NotFound, message, details)
            }
            Error::FailedPrecondition { reason, description } => {
                let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
                Status::with_error_details(Code::FailedPrecondition, description, details)
            }
            Error::Unauthenticated { reason } => {
                let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
                Status::with_error_details(Code::Unauthenticated, "a valid credential is required", details)
            }
            Error::PermissionDenied { reason } => {
                let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
                Status::with_error_details(
                    Code::PermissionDenied,
                    "this credential may not make this call",
                    details,
                )
            }
            Error::Overloaded => {
                let mut details = ErrorDetails::with_retry_info(Some(RETRY_DELAY));
                details.set_error_info("OVERLOADED", ERROR_DOMAIN, HashMap::new());
                Status::with_error_details(
                    Code::ResourceExhausted,
                    "too many calls in flight; retry later",
                    details,
                )
            }
            Error::DeadlineExceeded => {
                let details = ErrorDetails::with_error_info("DEADLINE_EXCEEDED", ERROR_DOMAIN, HashMap::new());
                Status::with_error_details(Code::DeadlineExceeded, "the call's deadline passed", details)
            }
            Error::AuditFailed { action } => {
                let details = ErrorDetails::with_error_info(
                    "AUDIT_WRITE_FAILED",
                    ERROR_DOMAIN,
                    HashMap::from([("action".to_owned(), action.clone())]),
                );
                let message = format!("{action} ran but its audit record could not be written");
                Status::with_error_details(Code::Internal, message, details)
            }
            Error::Store(StoreError::Unavailable { store, detail }) => {
                tracing::warn!(store = store.as_str(), %detail, "store unavailable");
                let mut details = ErrorDetails::with_retry_info(Some(RETRY_DELAY));
                details.set_error_info(
                    "STORE_UNAVAILABLE",
                    ERROR_DOMAIN,
                    HashMap::from([("store".to_owned(), store.as_str().to_owned())]),
                );
                Status::with_error_details(Code::Unavailable, format!("{} is unavailable", store.as_str()), details)
            }
            Error::Store(StoreError::Internal { store, detail }) => {
                tracing::error!(store = store.as_str(), %detail, "store returned an unusable reply");
                let details = ErrorDetails::with_error_info(
                    "STORE_INTERNAL",
                    ERROR_DOMAIN,
                    HashMap::from([("store".to_owned(), store.as_str().to_owned())]),
                );
                Status::with_error_details(Code::Internal, "internal error", details)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StoreKind;

    #[test]
    fn invalid_argument_names_the_field() {
        let status = Status::from(Error::invalid("api_format", "unknown format"));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad_request = details.bad_request().expect("BadRequest detail");
        assert_eq!(bad_request.field_violations[0].field, "api_format");
        assert_eq!(details.error_info().expect("ErrorInfo").domain, ERROR_DOMAIN);
    }

    #[test]
    fn store_failures_are_retryable_and_hide_internals() {
        let status = Status::from(Error::Store(StoreError::Unavailable {
            store: StoreKind::Redis,
            detail: "connection refused to 10.0.0.7:6379".into(),
        }));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("10.0.0.7"));
        assert!(status.get_error_details().retry_info().is_some());
    }

    #[test]
    fn not_found_carries_resource_info() {
        let status = Status::from(Error::not_found("affinity", "k"));
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(
            status
                .get_error_details()
                .resource_info()
                .expect("ResourceInfo")
                .resource_name,
            "k"
        );
    }
}
