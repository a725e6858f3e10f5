//! Domain logic: no tonic, no fred, no sea-orm types here. Stores are reached
//! through the traits in `crate::store`.

pub mod affinity;
pub mod audit;
pub mod crypto;
pub mod directory;
pub mod models;
pub mod python_json;
pub mod users;
pub mod validate;
