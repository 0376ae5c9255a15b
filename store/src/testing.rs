//! Test support (feature `test-support`): a fresh store per test, on SQLite always and on
//! PostgreSQL when `NPANEL_TEST_POSTGRES_URL` is set (a new database per test, dropped after).

use crate::{Backend, Store};

/// A store that cleans up after itself.
pub struct TestStore {
    /// The store.
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl TestStore {
    /// The URL of a PostgreSQL test database (to open it again, as after an upgrade).
    pub fn postgres_url(&self) -> Option<String> {
        self.pg
            .as_ref()
            .map(|(base, name)| with_database(base, name))
    }
}

impl std::ops::Deref for TestStore {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

/// A fresh SQLite store in a temp dir.
pub async fn sqlite() -> TestStore {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("npanel.db"))
        .await
        .expect("open sqlite store");
    TestStore {
        store,
        _dir: Some(dir),
        pg: None,
    }
}

/// A fresh PostgreSQL database, or `None` (with one line saying so) when
/// `NPANEL_TEST_POSTGRES_URL` is unset.
pub async fn postgres() -> Option<TestStore> {
    let Ok(base) = std::env::var("NPANEL_TEST_POSTGRES_URL") else {
        eprintln!("skipped on PostgreSQL: NPANEL_TEST_POSTGRES_URL is not set");
        return None;
    };
    sqlx::any::install_default_drivers();
    let name = format!("npanel_t_{}", ulid::Ulid::new().to_string().to_lowercase());
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&base)
        .await
        .expect("connect to NPANEL_TEST_POSTGRES_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let url = with_database(&base, &name);
    let store = Store::connect(&url).await.expect("open postgres store");
    assert_eq!(store.backend(), Backend::Postgres);
    Some(TestStore {
        store,
        _dir: None,
        pg: Some((base, name)),
    })
}

/// Both backends (PostgreSQL only when configured).
pub async fn all() -> Vec<TestStore> {
    let mut v = vec![sqlite().await];
    v.extend(postgres().await);
    v
}

pub use crate::with_database;

impl Drop for TestStore {
    fn drop(&mut self) {
        let Some((base, name)) = self.pg.take() else {
            return;
        };
        // Async clean-up from a synchronous drop: a short-lived runtime on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut c) = <sqlx::AnyConnection as sqlx::Connection>::connect(&base).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                }
            })
        })
        .join();
    }
}

impl Store {
    /// Run raw SQL (tests that tamper with records on purpose).
    pub async fn execute_for_tests(&self, sql: &str) -> crate::Result<u64> {
        Ok(sqlx::query(sql).execute(self.pool()).await?.rows_affected())
    }
}
