//! Thin gRPC adapters: unpack the request, call the domain, convert the
//! result. Errors become statuses in `status` only.

pub mod affinity;
pub mod auth;
pub mod context;
pub mod convert;
pub mod envelope;
pub mod model_mapping;
pub mod status;
pub mod user;
