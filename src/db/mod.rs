//! The relational side: Aether's tables through sea-orm (PostgreSQL in
//! production, SQLite for the embedded default).

pub mod entities;
