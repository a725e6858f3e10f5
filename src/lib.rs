//! aether-control: the gRPC control plane beside a live Aether gateway.
//!
//! Layers, outside in: `grpc` (thin adapters) -> `domain` (rules, no
//! transport or store types) -> `store` / `db` (Redis, memory, sea-orm).
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod health;
pub mod http;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod trace;
