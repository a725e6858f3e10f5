//! Throwaway PostgreSQL databases, one per test, on the server named by
//! `AETHER_CONTROL_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`).

use std::future::Future;

use sea_orm::{ConnectionTrait, Database};

const ADMIN_URL_VAR: &str = "AETHER_CONTROL_TEST_PG_URL";
const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A database created for one test; [`TestDatabase::drop`] removes it.
pub struct TestDatabase {
    /// Connection URL of the new database.
    pub url: String,
    /// Its name, from [`super::unique_name`].
    pub name: String,
}

impl TestDatabase {
    /// Creates an empty database with a fresh random name.
    pub async fn create() -> TestDatabase {
        let admin_url = admin_url();
        let name = super::unique_name("actl_test");
        execute_as_admin(&admin_url, &format!("CREATE DATABASE \"{name}\"")).await;
        TestDatabase {
            url: database_url(&admin_url, &name),
            name,
        }
    }

    /// Drops the database, disconnecting whoever still uses it.
    pub async fn drop(self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        execute_as_admin(&admin_url(), &sql).await;
    }

    /// Runs `test` with the URL of a fresh database, then drops the database even if `test`
    /// panicked (the panic is re-raised afterwards).
    pub async fn scoped<F, Fut>(test: F)
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let database = TestDatabase::create().await;
        let outcome = tokio::spawn(test(database.url.clone())).await;
        database.drop().await;
        if let Err(error) = outcome {
            match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(error) => panic!("test task did not finish: {error}"),
            }
        }
    }
}

fn admin_url() -> String {
    std::env::var(ADMIN_URL_VAR).unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

async fn execute_as_admin(admin_url: &str, sql: &str) {
    let admin = Database::connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("connect to {admin_url} (set {ADMIN_URL_VAR}): {e}"));
    admin
        .execute_unprepared(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    admin.close().await.expect("close admin connection");
}

/// `admin_url` with its database path replaced by `name`, keeping any query string.
fn database_url(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin_url, None),
    };
    let authority = base.find("://").map_or(0, |scheme_end| scheme_end + 3);
    let server = base[authority..]
        .find('/')
        .map_or(base, |path| &base[..authority + path]);
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}
