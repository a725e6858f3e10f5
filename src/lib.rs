//! aether-control: the gRPC control plane beside a live Aether gateway.
#![forbid(unsafe_code)]

pub mod db;
pub mod proto;
