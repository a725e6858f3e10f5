//! Generated gRPC code and the embedded descriptor set.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("aether.control.v1");

/// Encoded `FileDescriptorSet` of every proto file, with source info and the
/// `google.api.http` options (for reflection and the REST transcoder).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/aether_control_descriptor.bin"));
