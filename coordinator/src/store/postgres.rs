//! The PostgreSQL backend: the same tables and meaning as the SQLite one, with its own
//! migration history in `migrations/postgres/` (BIGINT for i64, DOUBLE PRECISION for f64,
//! BOOLEAN for flags, TEXT for JSON), for several coordinators on one database.
//!
//! Connections go over a Unix socket or TCP, with TLS when the URL asks for it
//! (`sslmode=verify-full&sslrootcert=/etc/backfill/pki/ca.pem`): rustls on the ring provider,
//! the system's roots or the given CA, as everywhere else in backfill.

use super::StoreError;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

/// The schema, embedded in the binary: versions and meaning match the SQLite history.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "scheduler",
        include_str!("../../migrations/postgres/0002_scheduler.sql"),
    ),
    (
        3,
        "accounts and usage",
        include_str!("../../migrations/postgres/0003_accounts_usage.sql"),
    ),
    (
        4,
        "shutdown",
        include_str!("../../migrations/postgres/0004_shutdown.sql"),
    ),
    (
        5,
        "operator",
        include_str!("../../migrations/postgres/0005_admin.sql"),
    ),
    (
        6,
        "accelerators",
        include_str!("../../migrations/postgres/0006_accelerators.sql"),
    ),
    (
        7,
        "webhooks",
        include_str!("../../migrations/postgres/0007_webhooks.sql"),
    ),
    (
        8,
        "last host",
        include_str!("../../migrations/postgres/0008_last_host.sql"),
    ),
    (
        9,
        "drives",
        include_str!("../../migrations/postgres/0009_drives.sql"),
    ),
    (
        10,
        "leader",
        include_str!("../../migrations/postgres/0010_leader.sql"),
    ),
    (
        11,
        "storage_quota",
        include_str!("../../migrations/postgres/0011_storage_quota.sql"),
    ),
    (
        12,
        "drives_fence",
        include_str!("../../migrations/postgres/0012_drives_fence.sql"),
    ),
];

/// A store on a PostgreSQL server.
#[derive(Debug, Clone)]
pub struct PgStore {
    pub(super) pool: PgPool,
    /// The leadership epoch this coordinator writes under (0: none; see `store::leader`).
    pub(super) epoch: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

/// `url` with any password replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    // A password may come as a query parameter ...
    let mut out = match url.find("password=") {
        Some(i) => {
            let end = url[i..].find('&').map_or(url.len(), |e| i + e);
            format!("{}password=<redacted>{}", &url[..i], &url[end..])
        }
        None => url.to_owned(),
    };
    // ... or in the authority (`user:password@host`).
    if let Some((scheme, rest)) = out.split_once("://") {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some((userinfo, host)) = rest[..end].rsplit_once('@')
            && let Some((user, _)) = userinfo.split_once(':')
        {
            out = format!("{scheme}://{user}:<redacted>@{host}{}", &rest[end..]);
        }
    }
    out
}

impl PgStore {
    /// Connects (waiting up to `connect_timeout` for the server) and brings the schema up to
    /// date. Migrations take PostgreSQL's advisory lock, so coordinators starting together
    /// migrate once.
    pub async fn open(url: &str, connect_timeout: Duration) -> Result<PgStore, StoreError> {
        let err = |source| StoreError::Connect {
            url: redact_url(url),
            source,
        };
        let opts = PgConnectOptions::from_str(url)
            .map_err(err)?
            .application_name("backfill-coordinator");
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(connect_timeout)
            .connect_with(opts)
            .await
            .map_err(err)?;
        Migrator::new(super::Embedded(MIGRATIONS))
            .await?
            .run(&pool)
            .await?;
        Ok(PgStore {
            pool,
            epoch: std::sync::Arc::default(),
        })
    }

    /// Starts a transaction that writes. Every atomic change goes through here: it carries the
    /// epoch this coordinator leads under, which the database checks at COMMIT against the
    /// lease (migration 0010), so a deposed leader's commit fails (see `store::leader`).
    pub(super) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let epoch = self.epoch.load(std::sync::atomic::Ordering::SeqCst);
        if epoch > 0 {
            sqlx::query("SELECT set_config('backfill.epoch', $1, true)")
                .bind(epoch.to_string())
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("postgres://u:secret@db:5432/backfill"),
            "postgres://u:<redacted>@db:5432/backfill"
        );
        assert_eq!(
            redact_url("postgres://u@db/backfill?password=x&sslmode=disable"),
            "postgres://u@db/backfill?password=<redacted>&sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres:///backfill?host=/run/postgresql&password=y"),
            "postgres:///backfill?host=/run/postgresql&password=<redacted>"
        );
    }
}
