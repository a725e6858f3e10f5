//! aether-control's schema migrations: Aether's tables, created only where missing.

pub use sea_orm_migration::prelude::*;

mod m20251225_000001_aether_baseline;

/// Runs aether-control's migrations, tracked in its own `aether_control_migrations` table.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20251225_000001_aether_baseline::Migration)]
    }

    // Not sea-orm's default `seaql_migrations`: the table must be obviously ours in Aether's DB.
    fn migration_table_name() -> DynIden {
        "aether_control_migrations".into_iden()
    }
}
