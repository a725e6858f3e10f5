//! The domain error type. It carries no tonic or fred types; it is mapped to
//! a gRPC status in exactly one place (`grpc::status`).

use std::time::Duration;

/// Which store failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// The affinity / cache store (Redis, or memory).
    Redis,
    /// The relational database (PostgreSQL or SQLite).
    Database,
}

impl StoreKind {
    /// Name used in error details and health reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Database => "database",
        }
    }
}

/// A store call that failed. `detail` is for logs only: it may name hosts or
/// SQL and is never sent to callers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time; retrying later
    /// may help.
    #[error("{} unavailable: {detail}", store.as_str())]
    Unavailable {
        /// Which store.
        store: StoreKind,
        /// Log-only detail.
        detail: String,
    },
    /// The store answered with something we cannot use (a bug or corrupt
    /// data); retrying will not help.
    #[error("{} returned an unusable reply: {detail}", store.as_str())]
    Internal {
        /// Which store.
        store: StoreKind,
        /// Log-only detail.
        detail: String,
    },
}

/// Every failure a call can end with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is invalid.
    #[error("invalid {field}: {description}")]
    InvalidArgument {
        /// The request field, as named in the proto.
        field: &'static str,
        /// What is wrong with it.
        description: String,
    },
    /// The addressed resource does not exist.
    #[error("{resource_type} not found: {resource_name}")]
    NotFound {
        /// Kind of resource, e.g. "affinity".
        resource_type: &'static str,
        /// Its name or key.
        resource_name: String,
    },
    /// The call is valid but the system is not in a state to run it.
    #[error("{description}")]
    FailedPrecondition {
        /// Stable machine-readable reason.
        reason: &'static str,
        /// Human-readable explanation.
        description: String,
    },
    /// No valid credential: missing, malformed, expired, revoked or unknown.
    #[error("unauthenticated: {reason}")]
    Unauthenticated {
        /// Stable machine-readable reason.
        reason: &'static str,
    },
    /// A valid credential that may not make this call.
    #[error("permission denied: {reason}")]
    PermissionDenied {
        /// Stable machine-readable reason.
        reason: &'static str,
    },
    /// Too many calls in flight: shed at once rather than queued.
    #[error("server is overloaded")]
    Overloaded,
    /// The call's deadline (the caller's or ours) passed.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// A destructive call ran but its audit row could not be written.
    #[error("{action} ran but its audit record could not be written")]
    AuditFailed {
        /// The audited action.
        action: String,
    },
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long a caller should wait before retrying after UNAVAILABLE.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);

impl Error {
    /// Shorthand for an invalid field.
    pub fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            description: description.into(),
        }
    }

    /// Shorthand for a missing resource.
    pub fn not_found(resource_type: &'static str, resource_name: impl Into<String>) -> Self {
        Self::NotFound {
            resource_type,
            resource_name: resource_name.into(),
        }
    }
}

/// Result of domain calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
