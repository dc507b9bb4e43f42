//! Accounts: created by the operator, bound to certificates by CN, with quotas.

use super::StoreError;

/// Per-account limits; `None` = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    /// MHz over all the account's servers that hold resources.
    pub cpu: Option<u64>,
    /// Bytes.
    pub mem: Option<u64>,
    pub gpus: Option<u64>,
    /// Servers that exist (any status).
    pub servers: Option<u64>,
    /// Bytes of drives; `None` = the configured default (`[drives] storage_quota_bytes`,
    /// itself unlimited when unset); [`UNLIMITED_STORAGE`] = unlimited whatever the default.
    pub storage: Option<u64>,
}

/// A storage quota the operator set to unlimited explicitly (the API's `"unlimited"`): the
/// largest quota the store keeps (a signed 64-bit column), which no account can reach.
pub const UNLIMITED_STORAGE: u64 = i64::MAX.unsigned_abs();

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uuid: String,
    pub backfill: bool,
    pub quota: Quota,
    pub created_at: i64,
}

/// A change to an account; `None` leaves a field as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountChange {
    pub backfill: Option<bool>,
    /// Each present field replaces that quota (its inner `None` = unlimited).
    pub quota: QuotaChange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaChange {
    pub cpu: Option<Option<u64>>,
    pub mem: Option<Option<u64>>,
    pub gpus: Option<Option<u64>>,
    pub servers: Option<Option<u64>>,
    /// Its inner `None` = the configured default.
    pub storage: Option<Option<u64>>,
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

        fn opt_u64(r: &DbRow, col: &str) -> Result<Option<u64>, StoreError> {
            let v: Option<i64> = r.try_get(col)?;
            Ok(v.map(|v| u64::try_from(v).unwrap_or(0)))
        }

        fn opt_i64(v: Option<u64>) -> Option<i64> {
            v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
        }

        fn account_from_row(r: &DbRow) -> Result<Account, StoreError> {
            Ok(Account {
                name: r.try_get("name")?,
                uuid: r.try_get("uuid")?,
                backfill: r.try_get("backfill")?,
                created_at: r.try_get("created_at")?,
                quota: Quota {
                    cpu: opt_u64(r, "quota_cpu")?,
                    mem: opt_u64(r, "quota_mem")?,
                    gpus: opt_u64(r, "quota_gpus")?,
                    servers: opt_u64(r, "quota_servers")?,
                    storage: opt_u64(r, "quota_storage")?,
                },
            })
        }

        impl $Store {
            pub async fn account(&self, name: &str) -> Result<Option<Account>, StoreError> {
                let row = q(
                    "SELECT name, uuid, backfill, created_at, quota_cpu, quota_mem, quota_gpus,
                            quota_servers, quota_storage FROM accounts WHERE name = ?",
                )
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
                row.as_ref().map(account_from_row).transpose()
            }

            pub async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
                let rows = q(
                    "SELECT name, uuid, backfill, created_at, quota_cpu, quota_mem, quota_gpus,
                            quota_servers, quota_storage FROM accounts ORDER BY name",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(account_from_row).collect()
            }

            /// Creates an account; `None` when one of that name exists already.
            pub async fn create_account(
                &self,
                name: &str,
                backfill: bool,
                quota: Quota,
                now: i64,
            ) -> Result<Option<Account>, StoreError> {
                let done = q(
                    "INSERT INTO accounts (name, uuid, backfill, created_at, quota_cpu, quota_mem,
                         quota_gpus, quota_servers, quota_storage)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO NOTHING",
                )
                .bind(name)
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(backfill)
                .bind(now)
                .bind(opt_i64(quota.cpu))
                .bind(opt_i64(quota.mem))
                .bind(opt_i64(quota.gpus))
                .bind(opt_i64(quota.servers))
                .bind(opt_i64(quota.storage))
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 0 {
                    return Ok(None);
                }
                self.account(name).await
            }

            /// Applies `change`; `None` when there is no such account.
            pub async fn update_account(
                &self,
                name: &str,
                change: AccountChange,
            ) -> Result<Option<Account>, StoreError> {
                let Some(mut a) = self.account(name).await? else {
                    return Ok(None);
                };
                if let Some(b) = change.backfill {
                    a.backfill = b;
                }
                a.quota.cpu = change.quota.cpu.unwrap_or(a.quota.cpu);
                a.quota.mem = change.quota.mem.unwrap_or(a.quota.mem);
                a.quota.gpus = change.quota.gpus.unwrap_or(a.quota.gpus);
                a.quota.servers = change.quota.servers.unwrap_or(a.quota.servers);
                a.quota.storage = change.quota.storage.unwrap_or(a.quota.storage);
                q(
                    "UPDATE accounts SET backfill = ?, quota_cpu = ?, quota_mem = ?, quota_gpus = ?,
                         quota_servers = ?, quota_storage = ? WHERE name = ?",
                )
                .bind(a.backfill)
                .bind(opt_i64(a.quota.cpu))
                .bind(opt_i64(a.quota.mem))
                .bind(opt_i64(a.quota.gpus))
                .bind(opt_i64(a.quota.servers))
                .bind(opt_i64(a.quota.storage))
                .bind(name)
                .execute(&self.pool)
                .await?;
                Ok(Some(a))
            }

            /// Deletes an account that owns no servers; false when there was none.
            pub async fn delete_account(&self, name: &str) -> Result<bool, StoreError> {
                let done = q("DELETE FROM accounts WHERE name = ?")
                    .bind(name)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            /// Makes sure the configured accounts exist: `backfill` ones with the backfill permission
            /// (granted if an operator had not), `plain` ones as they are or without it. Accounts the
            /// configuration does not name are left alone: the API manages them.
            pub async fn seed_accounts(
                &self,
                backfill: &[String],
                plain: &[String],
                now: i64,
            ) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                for (names, flag) in [(backfill, true), (plain, false)] {
                    for name in names {
                        q(
                            "INSERT INTO accounts (name, uuid, backfill, created_at) VALUES (?, ?, ?, ?)
                             ON CONFLICT(name) DO UPDATE SET backfill = accounts.backfill OR excluded.backfill",
                        )
                        .bind(name)
                        .bind(uuid::Uuid::new_v4().to_string())
                        .bind(flag)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                tx.commit().await?;
                Ok(())
            }
        }
        }
    };
}

backend!(sqlite, SqliteStore, sqlx::Sqlite);
backend!(postgres, PgStore, sqlx::Postgres);
