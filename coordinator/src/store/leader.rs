//! The leader's lease and epoch (PostgreSQL; migration 0010): several coordinators share one
//! database and exactly one of them leads. See `cmd::ha` for the loop that uses these and
//! docs/ha.md for the design.
//!
//! The lease is one row. Its deadline is kept in the database's clock, so coordinators need no
//! synchronised clocks; the holder's database session (pid and start time) is recorded too, so
//! a killed leader, whose session PostgreSQL closes at once, is replaced without waiting for
//! the deadline. The epoch grows by one at every takeover; `PgStore::begin_write` stamps each
//! write transaction with the epoch it was begun under and a deferred trigger compares it with
//! the lease's at COMMIT.

use super::{PgStore, StoreError};
use sqlx::{ConnectOptions, Connection, PgConnection, Row};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Milliseconds since the Unix epoch on the database's clock.
const NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// The SQLSTATE of a commit refused by the fence (migration 0010's `backfill_fence`).
pub const FENCED_SQLSTATE: &str = "BF001";

/// The lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct LeaderRow {
    pub epoch: i64,
    /// The leading coordinator's name (empty when none ever led or the last one let go).
    pub holder: String,
    /// Its public API, `https://host:port`.
    pub api_url: String,
    /// Its agent link, `host:port`.
    pub link_addr: String,
    pub deadline_ms: i64,
    pub since_ms: i64,
    /// The database's clock when this was read.
    pub now_ms: i64,
}

/// A coordinator that says it is alive.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CoordinatorRow {
    pub name: String,
    pub api_url: String,
    pub link_addr: String,
    pub seen_ms: i64,
}

/// What a coordinator claims the lease with.
#[derive(Debug, Clone)]
pub struct Claim {
    pub holder: String,
    pub api_url: String,
    pub link_addr: String,
    pub lease: Duration,
}

impl Claim {
    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }
}

impl StoreError {
    /// The database refused this commit because another coordinator leads now.
    pub fn is_fenced(&self) -> bool {
        match self {
            StoreError::Sql(sqlx::Error::Database(db)) => {
                db.code().as_deref() == Some(FENCED_SQLSTATE)
            }
            StoreError::Group(e) => e.is_fenced(),
            _ => false,
        }
    }

    /// The database could not be reached (or the connection broke): nothing was changed, and
    /// the same request may succeed in a moment (a PostgreSQL restart, a failover).
    pub fn is_unavailable(&self) -> bool {
        if let StoreError::Group(e) = self {
            return e.is_unavailable();
        }
        matches!(
            self,
            StoreError::Sql(
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Protocol(_)
            )
        ) || matches!(self, StoreError::Sql(sqlx::Error::Database(db))
            if db.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
    }
}

impl PgStore {
    /// From now on every write transaction carries `epoch` (0: none, so that every fenced
    /// write fails once any coordinator has led).
    pub fn set_epoch(&self, epoch: i64) {
        self.epoch.store(epoch, Ordering::SeqCst);
    }

    /// A session of its own for the lease: its liveness is the leader's.
    pub async fn lease_session(&self) -> Result<LeaseSession, StoreError> {
        let opts = (*self.pool.connect_options()).clone();
        let conn = opts.connect().await?;
        Ok(LeaseSession { conn })
    }

    pub async fn leader(&self) -> Result<LeaderRow, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(leader_sql()))
            .fetch_one(&self.pool)
            .await?;
        leader_from(&row)
    }

    /// Coordinators seen within `within` of now, by name.
    pub async fn coordinators(&self, within: Duration) -> Result<Vec<CoordinatorRow>, StoreError> {
        let ms = i64::try_from(within.as_millis()).unwrap_or(i64::MAX);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT name, api_url, link_addr, seen_ms FROM coordinators
             WHERE seen_ms >= {NOW_MS} - $1 ORDER BY name"
        )))
        .bind(ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CoordinatorRow {
                    name: r.try_get("name")?,
                    api_url: r.try_get("api_url")?,
                    link_addr: r.try_get("link_addr")?,
                    seen_ms: r.try_get("seen_ms")?,
                })
            })
            .collect()
    }
}

fn leader_sql() -> String {
    format!(
        "SELECT epoch, holder, api_url, link_addr, deadline_ms, since_ms, {NOW_MS} AS now_ms
         FROM leader WHERE id = 1"
    )
}

fn leader_from(r: &sqlx::postgres::PgRow) -> Result<LeaderRow, StoreError> {
    Ok(LeaderRow {
        epoch: r.try_get("epoch")?,
        holder: r.try_get("holder")?,
        api_url: r.try_get("api_url")?,
        link_addr: r.try_get("link_addr")?,
        deadline_ms: r.try_get("deadline_ms")?,
        since_ms: r.try_get("since_ms")?,
        now_ms: r.try_get("now_ms")?,
    })
}

/// The lease's own database session.
#[derive(Debug)]
pub struct LeaseSession {
    conn: PgConnection,
}

impl LeaseSession {
    /// Takes the lease if it is free, expired, or its holder's session is gone: the new epoch,
    /// or `None` while another coordinator holds it.
    pub async fn try_take(&mut self, c: &Claim) -> Result<Option<i64>, StoreError> {
        let sql = format!(
            "UPDATE leader SET epoch = epoch + 1, holder = $1, api_url = $2, link_addr = $3,
                 backend_pid = pg_backend_pid(),
                 backend_start = (SELECT backend_start FROM pg_stat_activity
                                  WHERE pid = pg_backend_pid()),
                 deadline_ms = {NOW_MS} + $4, since_ms = {NOW_MS}
             WHERE id = 1 AND (holder = '' OR deadline_ms < {NOW_MS} OR NOT EXISTS (
                 SELECT 1 FROM pg_stat_activity a
                 WHERE a.pid = leader.backend_pid AND a.backend_start = leader.backend_start))
             RETURNING epoch"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&c.holder)
            .bind(&c.api_url)
            .bind(&c.link_addr)
            .bind(c.lease_ms())
            .fetch_optional(&mut self.conn)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("epoch")?),
            None => None,
        })
    }

    /// Extends the lease held under `epoch`; false once another coordinator took it.
    pub async fn renew(&mut self, epoch: i64, c: &Claim) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE leader SET deadline_ms = {NOW_MS} + $2, backend_pid = pg_backend_pid(),
                 backend_start = (SELECT backend_start FROM pg_stat_activity
                                  WHERE pid = pg_backend_pid())
             WHERE id = 1 AND epoch = $1"
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(epoch)
            .bind(c.lease_ms())
            .execute(&mut self.conn)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Lets go of the lease held under `epoch` (a clean shutdown): another coordinator takes
    /// it at once instead of after the deadline.
    pub async fn release(&mut self, epoch: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE leader SET holder = '', deadline_ms = 0 WHERE id = 1 AND epoch = $1")
            .bind(epoch)
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }

    /// Says this coordinator is alive (for `backfillctl status`).
    pub async fn heartbeat(&mut self, c: &Claim) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO coordinators (name, api_url, link_addr, seen_ms)
             VALUES ($1, $2, $3, {NOW_MS})
             ON CONFLICT (name) DO UPDATE SET api_url = excluded.api_url,
                 link_addr = excluded.link_addr, seen_ms = excluded.seen_ms"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&c.holder)
            .bind(&c.api_url)
            .bind(&c.link_addr)
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }

    pub async fn leader(&mut self) -> Result<LeaderRow, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(leader_sql()))
            .fetch_one(&mut self.conn)
            .await?;
        leader_from(&row)
    }

    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

#[cfg(test)]
#[path = "leader_tests.rs"]
mod tests;
