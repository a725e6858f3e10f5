//! sea-orm entities for the Aether tables the service reads (AETHER_COMPAT §4).

pub mod api_keys;
pub mod audit_logs;
pub mod global_models;
pub mod models;
pub mod provider_api_keys;
pub mod provider_endpoints;
pub mod providers;
pub mod system_configs;
pub mod users;
