//! The relational side: Aether's tables through sea-orm (PostgreSQL in
//! production, SQLite for the embedded default).

pub mod audit;
pub mod auth;
pub mod directory;
pub mod entities;
pub mod models;
pub mod name_cache;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

use crate::error::{StoreError, StoreKind};
use crate::store::HealthProbe;

/// Classifies a database error: connection and pool problems are worth a
/// retry, anything else is a bug or bad data.
pub fn store_error(error: &DbErr) -> StoreError {
    let detail = error.to_string();
    if is_unavailable(error) {
        StoreError::Unavailable {
            store: StoreKind::Database,
            detail,
        }
    } else {
        StoreError::Internal {
            store: StoreKind::Database,
            detail,
        }
    }
}

/// Whether `error` says the database (or the way to it) is down, not that
/// the statement was wrong: no connection, a connection lost mid-query, or
/// the server refusing work while it shuts down or starts up (SQLSTATE
/// class 08, and 57P01..57P03: a PostgreSQL stopped with `-m immediate`
/// answers in-flight queries with 57P01).
fn is_unavailable(error: &DbErr) -> bool {
    use sea_orm::sqlx::Error as SqlxError;
    let runtime = match error {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => return true,
        DbErr::Query(runtime) | DbErr::Exec(runtime) => runtime,
        _ => return false,
    };
    let sea_orm::RuntimeErr::SqlxError(sqlx) = runtime else {
        return false;
    };
    match sqlx.as_ref() {
        SqlxError::Io(_) | SqlxError::PoolTimedOut | SqlxError::PoolClosed | SqlxError::WorkerCrashed => true,
        SqlxError::Database(database) => database
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// [`store_error`] for `map_err` on owned errors.
pub fn db_error(error: DbErr) -> StoreError {
    store_error(&error)
}

/// Ids per `IN (...)` query: far below every backend's parameter limit.
pub const CHUNK: usize = 500;

/// `ids` without repeats (first occurrence kept), in chunks of [`CHUNK`].
pub fn unique_chunks(ids: &[String]) -> Vec<Vec<String>> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    let unique: Vec<String> = ids.iter().filter(|id| seen.insert(id.as_str())).cloned().collect();
    unique.chunks(CHUNK).map(<[String]>::to_vec).collect()
}

/// The database pool.
#[derive(Clone)]
pub struct DbConnection {
    connection: DatabaseConnection,
    timeout: Duration,
    reachable: Arc<AtomicBool>,
}

/// A connection for the stores, behind the health probe's verdict: while the
/// last probe failed, calls answer UNAVAILABLE at once instead of each
/// waiting out the pool's acquire timeout (which would also fill the
/// in-flight limit and refuse calls that need no database at all).
#[derive(Clone)]
pub struct DbHandle {
    connection: DatabaseConnection,
    reachable: Arc<AtomicBool>,
}

impl DbHandle {
    /// The connection, or UNAVAILABLE while the database is known down.
    pub fn get(&self) -> Result<&DatabaseConnection, StoreError> {
        if self.reachable.load(Ordering::Relaxed) {
            Ok(&self.connection)
        } else {
            Err(StoreError::Unavailable {
                store: StoreKind::Database,
                detail: "database unreachable at the last health probe".into(),
            })
        }
    }
}

/// A handle without a health probe (tools, tests): always tries.
impl From<DatabaseConnection> for DbHandle {
    fn from(connection: DatabaseConnection) -> Self {
        Self {
            connection,
            reachable: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl DbConnection {
    /// Opens the pool lazily (PostgreSQL may be down at start; health says so
    /// until it answers), then runs the migrations when asked. Migrations
    /// only create missing tables; a failure there stops the start.
    pub async fn open(url: &str, timeout: Duration, migrate: bool) -> Result<Self, DbErr> {
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .connect_timeout(timeout)
            .acquire_timeout(timeout)
            .max_connections(16)
            .min_connections(0)
            .connect_lazy(!migrate)
            .sqlx_logging(false);
        let connection = Database::connect(options).await?;
        if migrate {
            Migrator::up(&connection, None).await?;
        }
        Ok(Self {
            connection,
            timeout,
            reachable: Arc::new(AtomicBool::new(true)),
        })
    }

    /// The sea-orm connection, for queries.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.connection
    }

    /// A handle that fails fast while the health probe finds the database
    /// down.
    pub fn handle(&self) -> DbHandle {
        DbHandle {
            connection: self.connection.clone(),
            reachable: self.reachable.clone(),
        }
    }
}

#[async_trait]
impl HealthProbe for DbConnection {
    fn name(&self) -> &'static str {
        "database"
    }

    async fn probe(&self) -> Result<(), StoreError> {
        // The monitor may cancel a probe that hangs (its own timeout): a
        // probe that does not finish counts as a failure too.
        struct Unfinished<'a>(&'a AtomicBool);
        impl Drop for Unfinished<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Relaxed);
            }
        }
        let unfinished = Unfinished(&self.reachable);
        let result = match tokio::time::timeout(self.timeout, self.connection.ping()).await {
            Ok(result) => result.map_err(|e| store_error(&e)),
            Err(_) => Err(StoreError::Unavailable {
                store: StoreKind::Database,
                detail: "ping timed out".into(),
            }),
        };
        std::mem::forget(unfinished);
        self.reachable.store(result.is_ok(), Ordering::Relaxed);
        result
    }
}
