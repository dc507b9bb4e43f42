//! The operator's state: per-host admin settings, the audit log of admin actions,
//! coordinator-wide settings, pool limits an operator rewrote, and hosts a provisioner launched.
//! Each change is written with its audit entry in one transaction.

use super::StoreError;
use std::collections::BTreeMap;

/// One admin action: who did what to which target, when, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: i64,
    pub actor: String,
    /// `host`, `server`, `pool` or `coordinator`.
    pub target_kind: &'static str,
    pub target: String,
    pub action: String,
    pub reason: Option<String>,
}

/// A host a provisioner was asked to create, until its agent registers or it is given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchRecord {
    pub host: String,
    pub pool: String,
    pub launched_at: i64,
}

/// This file's queries for one backend: `backend!(module, Store, Database)` expands them with
/// that backend's types (the SQL is shared; see `super::Backend` for placeholders).
macro_rules! backend {
    ($m:ident, $Store:ident, $DB:ty) => {
        pub(in crate::store) mod $m {
            #[allow(unused_imports)]
            use super::*;
            use crate::store::$Store;
            #[allow(unused_imports)]
            use sqlx::Row;
            #[allow(dead_code)]
            type DbRow = <$DB as sqlx::Database>::Row;
            #[allow(dead_code)]
            fn q<'a>(
                sql: impl Into<std::borrow::Cow<'static, str>>,
            ) -> sqlx::query::Query<'a, $DB, <$DB as sqlx::Database>::Arguments> {
                crate::store::query::<$DB>(sql)
            }

        type Tx<'a> = sqlx::Transaction<'a, $DB>;

        pub(in crate::store) async fn insert_action(tx: &mut Tx<'_>, a: &AuditEntry) -> Result<(), StoreError> {
            q(
                "INSERT INTO admin_actions (at, actor, target_kind, target, action, reason)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(a.at)
            .bind(&a.actor)
            .bind(a.target_kind)
            .bind(&a.target)
            .bind(&a.action)
            .bind(a.reason.as_deref())
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        /// Forgets a host and any launch of it, inside a transaction another write owns.
        /// Servers that still name it as their host are refused by the foreign key, so nothing
        /// is orphaned.
        pub(in crate::store) async fn delete_host_in(tx: &mut Tx<'_>, id: &str) -> Result<(), StoreError> {
            q("DELETE FROM hosts WHERE id = ?")
                .bind(id)
                .execute(&mut **tx)
                .await?;
            delete_launch_in(tx, id).await
        }

        pub(in crate::store) async fn set_setting_in(
            tx: &mut Tx<'_>,
            key: &str,
            value: &str,
        ) -> Result<(), StoreError> {
            q(
                "INSERT INTO settings (key, value) VALUES (?, ?)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )
            .bind(key)
            .bind(value)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        pub(in crate::store) async fn set_pool_limits_in(
            tx: &mut Tx<'_>,
            name: &str,
            limits: Option<(u32, u32)>,
        ) -> Result<(), StoreError> {
            match limits {
                Some((min, max)) => {
                    q(
                        "INSERT INTO pool_limits (name, min, max) VALUES (?, ?, ?)
                         ON CONFLICT(name) DO UPDATE SET min = excluded.min, max = excluded.max",
                    )
                    .bind(name)
                    .bind(i64::from(min))
                    .bind(i64::from(max))
                    .execute(&mut **tx)
                    .await?;
                }
                None => {
                    q("DELETE FROM pool_limits WHERE name = ?")
                        .bind(name)
                        .execute(&mut **tx)
                        .await?;
                }
            }
            Ok(())
        }

        pub(in crate::store) async fn insert_launches_in(
            tx: &mut Tx<'_>,
            launches: &[LaunchRecord],
        ) -> Result<(), StoreError> {
            for l in launches {
                q("INSERT INTO launches (host, pool, launched_at) VALUES (?, ?, ?)")
                    .bind(&l.host)
                    .bind(&l.pool)
                    .bind(l.launched_at)
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(())
        }

        pub(in crate::store) async fn delete_launch_in(tx: &mut Tx<'_>, host: &str) -> Result<(), StoreError> {
            q("DELETE FROM launches WHERE host = ?")
                .bind(host)
                .execute(&mut **tx)
                .await?;
            Ok(())
        }

        impl $Store {
            /// The newest `limit` actions on a target, newest first.
            pub async fn actions(
                &self,
                target_kind: &'static str,
                target: &str,
                limit: u32,
            ) -> Result<Vec<AuditEntry>, StoreError> {
                let rows = q(
                    "SELECT at, actor, target_kind, target, action, reason FROM admin_actions
                     WHERE target_kind = ? AND target = ? ORDER BY id DESC LIMIT ?",
                )
                .bind(target_kind)
                .bind(target)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(AuditEntry {
                            at: r.try_get("at")?,
                            actor: r.try_get("actor")?,
                            target_kind,
                            target: r.try_get("target")?,
                            action: r.try_get("action")?,
                            reason: r.try_get("reason")?,
                        })
                    })
                    .collect()
            }

            pub async fn settings(&self) -> Result<BTreeMap<String, String>, StoreError> {
                let rows = q("SELECT key, value FROM settings")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("key")?, r.try_get("value")?)))
                    .collect()
            }

            pub async fn set_setting(
                &self,
                key: &str,
                value: &str,
                a: &AuditEntry,
            ) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                set_setting_in(&mut tx, key, value).await?;
                insert_action(&mut tx, a).await?;
                tx.commit().await?;
                Ok(())
            }

            /// Pool limits in force where an operator rewrote them (freeze, drain).
            pub async fn pool_limits(&self) -> Result<BTreeMap<String, (u32, u32)>, StoreError> {
                let rows = q("SELECT name, min, max FROM pool_limits")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        let name: String = r.try_get("name")?;
                        let min: i64 = r.try_get("min")?;
                        let max: i64 = r.try_get("max")?;
                        let bad = |e: std::num::TryFromIntError| StoreError::Corrupt {
                            table: "pool_limits",
                            key: name.clone(),
                            reason: e.to_string(),
                        };
                        Ok((
                            name.clone(),
                            (
                                u32::try_from(min).map_err(bad)?,
                                u32::try_from(max).map_err(bad)?,
                            ),
                        ))
                    })
                    .collect()
            }

            /// Sets (`Some`) or clears (`None`: back to the configured limits) a pool's limits.
            pub async fn set_pool_limits(
                &self,
                name: &str,
                limits: Option<(u32, u32)>,
                a: &AuditEntry,
            ) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                set_pool_limits_in(&mut tx, name, limits).await?;
                insert_action(&mut tx, a).await?;
                tx.commit().await?;
                Ok(())
            }

            pub async fn launches(&self) -> Result<Vec<LaunchRecord>, StoreError> {
                let rows = q("SELECT host, pool, launched_at FROM launches ORDER BY host")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok(LaunchRecord {
                            host: r.try_get("host")?,
                            pool: r.try_get("pool")?,
                            launched_at: r.try_get("launched_at")?,
                        })
                    })
                    .collect()
            }

            /// Records launches before their provisioner runs, so a crash in between is seen.
            pub async fn insert_launches(
                &self,
                launches: &[LaunchRecord],
                a: &AuditEntry,
            ) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                insert_launches_in(&mut tx, launches).await?;
                insert_action(&mut tx, a).await?;
                tx.commit().await?;
                Ok(())
            }

            pub async fn delete_launch(&self, host: &str) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                delete_launch_in(&mut tx, host).await?;
                tx.commit().await?;
                Ok(())
            }
        }
        }
    };
}

backend!(sqlite, SqliteStore, sqlx::Sqlite);
backend!(postgres, PgStore, sqlx::Postgres);
