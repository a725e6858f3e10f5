//! The shared-store setup of a test: a fresh PostgreSQL database and Redis
//! key namespace, a server on them, and their removal afterwards.

use super::server::TestServer;
use super::{pg, redis};

/// A test's own database and namespace on the real PostgreSQL and Redis.
pub struct SharedStores {
    /// The database (dropped by [`SharedStores::drop`]).
    pub database: pg::TestDatabase,
    /// The Redis key namespace (cleaned by [`SharedStores::drop`]).
    pub namespace: String,
}

impl SharedStores {
    /// Creates the database and picks the namespace.
    pub async fn create() -> Self {
        Self {
            database: pg::TestDatabase::create().await,
            namespace: redis::namespace(),
        }
    }

    /// Starts a server on these stores (migrating the empty database), with
    /// `extra` flags after the store flags.
    pub async fn start_server(&self, extra: &[&str]) -> TestServer {
        let redis_url = redis::url();
        let mut args = vec![
            "--database-url",
            &self.database.url,
            "--db-migrate",
            "always",
            "--redis-url",
            &redis_url,
            "--redis-namespace",
            &self.namespace,
        ];
        args.extend_from_slice(extra);
        TestServer::start(&args).await
    }

    /// Deletes the namespace's keys and drops the database.
    pub async fn drop(self) {
        redis::cleanup(&redis::client().await, &self.namespace).await;
        self.database.drop().await;
    }
}
