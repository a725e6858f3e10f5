//! Thin gRPC adapters: unpack the request, call the domain, convert the
//! result. Errors become statuses in `status` only.

pub mod affinity;
pub mod convert;
pub mod model_mapping;
pub mod status;
pub mod user;

use tonic::{Response, Status};

use crate::error::Error;

/// Answer of an RPC that a later milestone delivers.
fn not_yet<T>(rpc: &'static str) -> Result<Response<T>, Status> {
    Err(Error::Unimplemented { rpc }.into())
}
