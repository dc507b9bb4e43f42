//! The embedded backend: one SQLite file in WAL mode with `synchronous = FULL`.

use super::StoreError;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::Path;
use std::time::Duration;

/// The schema, embedded in the binary (runtime migrations, no sqlx macros).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/0001_initial.sql"),
    ),
    (
        2,
        "scheduler",
        include_str!("../../migrations/0002_scheduler.sql"),
    ),
    (
        3,
        "accounts and usage",
        include_str!("../../migrations/0003_accounts_usage.sql"),
    ),
    (
        4,
        "shutdown",
        include_str!("../../migrations/0004_shutdown.sql"),
    ),
    (
        5,
        "operator",
        include_str!("../../migrations/0005_admin.sql"),
    ),
    (
        6,
        "accelerators",
        include_str!("../../migrations/0006_accelerators.sql"),
    ),
    (
        7,
        "webhooks",
        include_str!("../../migrations/0007_webhooks.sql"),
    ),
    (
        8,
        "last host",
        include_str!("../../migrations/0008_last_host.sql"),
    ),
    (
        9,
        "drives",
        include_str!("../../migrations/0009_drives.sql"),
    ),
    (
        10,
        "leader",
        include_str!("../../migrations/0010_leader.sql"),
    ),
    (
        11,
        "storage_quota",
        include_str!("../../migrations/0011_storage_quota.sql"),
    ),
    (
        12,
        "drives_fence",
        include_str!("../../migrations/0012_drives_fence.sql"),
    ),
];

/// The embedded store: one SQLite file in WAL mode.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(super) pool: SqlitePool,
}

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        Migrator::new(super::Embedded(MIGRATIONS))
            .await?
            .run(&pool)
            .await?;
        Ok(SqliteStore { pool })
    }

    /// Starts a transaction that writes. Every atomic change goes through here (on PostgreSQL
    /// this is where a leader's epoch will be checked, inside the same transaction).
    pub(super) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.pool.begin().await?)
    }
}
