//! Durable state. Every change the API answers for is committed here first.
//!
//! [`Store`] is one of two backends with the same tables, meaning and queries: SQLite in WAL
//! mode with `synchronous = FULL` (the embedded default; schema in `migrations/`) and
//! PostgreSQL (several coordinators; schema in `migrations/postgres/`). Both histories are
//! embedded in the binary and run at open.
//!
//! The store is an enum dispatching by `match`, not a `dyn` trait: the backends are known, the
//! methods are `async fn` (no boxing, no `async_trait`), and each backend's methods are one
//! `macro_rules!` expansion of the same code over its sqlx types, so the two cannot drift. The
//! SQL is written once with `?` placeholders; PostgreSQL gets them numbered (`$1`, `$2`, ...).
//! Every change that must be atomic is one transaction begun by the backend's `begin_write`.

mod accel;
mod accounts;
mod admin;
#[cfg(test)]
mod batch_tests;
mod drives;
pub mod leader;
mod postgres;
mod servers;
mod sqlite;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
mod usage;
mod webhooks;

pub use admin::{AuditEntry, LaunchRecord};
pub use drives::{DriveRecord, DriveStatus, DriveUsage};
pub use postgres::{PgStore, redact_url};
pub use sqlite::SqliteStore;
pub use webhooks::{Attempt, Delivery, Outgoing, Webhook};

use crate::domain::accel::{Arq, DeviceProfile};
use crate::domain::account::{Account, AccountChange, Quota};
use crate::domain::event::{Event, Subscription};
use crate::domain::server::{HostRecord, ServerRecord};
use crate::domain::usage::{UsageFilter, UsageRow, UsageSegment};
use backfill_shared::{HostId, ServerId};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open { path: PathBuf, source: sqlx::Error },
    #[error(
        "PostgreSQL at {url}: {source} (is the server running and reachable, and do the user, \
         password and database in `database` exist?)"
    )]
    Connect { url: String, source: sqlx::Error },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// The write was queued on state an earlier failed write had changed; nothing of it was
    /// written, and the coordinator reloads its state from the store.
    #[error(
        "an earlier write failed, so this one was not made; the coordinator reloads its state from the store; retry"
    )]
    Stale,
    #[error("the coordinator is shutting down; the write was not made")]
    Closed,
    /// A group commit failed: every write of the group gets the same cause.
    #[error("{0}")]
    Group(std::sync::Arc<StoreError>),
    #[error("corrupt row in {table} ({key}): {reason}")]
    Corrupt {
        table: &'static str,
        key: String,
        reason: String,
    },
}

/// One change the coordinator answers for, as the store writes it: new servers, changed
/// servers, usage, events, ARQs, host generations and deleted servers; host records, launches,
/// pool limits, settings, drives and drive metering; and the audit entries of operators'
/// actions, all or nothing (an audit entry lands with the change it records). Batches that
/// arrive together share one transaction ([`Store::write_batches`]).
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub inserts: Vec<ServerRecord>,
    pub servers: Vec<ServerRecord>,
    pub usage: Vec<UsageSegment>,
    pub events: Vec<Event>,
    pub arqs_new: Vec<Arq>,
    pub arqs_changed: Vec<Arq>,
    pub arqs_deleted: Vec<String>,
    pub hosts: Vec<(HostId, u64)>,
    pub deletes: Vec<ServerId>,
    /// Hosts written whole (a registration, an operator's setting, re-read GPUs); before
    /// anything else of the batch, so its servers may name them.
    pub host_records: Vec<HostRecord>,
    /// Hosts forgotten (with any launch of them); after the batch's servers.
    pub hosts_deleted: Vec<String>,
    pub launches_new: Vec<LaunchRecord>,
    /// Launches given up or registered, by host.
    pub launches_deleted: Vec<String>,
    /// Pool limits set (`Some`) or cleared (`None`), by pool.
    pub pool_limits: Vec<(String, Option<(u32, u32)>)>,
    pub settings: Vec<(String, String)>,
    /// Device profiles created (their names are unique: the model checked).
    pub profiles_new: Vec<DeviceProfile>,
    /// Device profiles deleted, by uuid.
    pub profiles_deleted: Vec<String>,
    /// Drives written whole (new or changed).
    pub drives: Vec<DriveRecord>,
    pub drives_deleted: Vec<backfill_shared::DriveId>,
    /// Drives' storage as usage, with their `metered_until`.
    pub drive_usage: Vec<DriveUsage>,
    /// Operators' actions, written with the change each records.
    pub audit: Vec<AuditEntry>,
}

impl WriteBatch {
    /// It writes new servers and nothing else (a create).
    pub(crate) fn only_inserts(&self) -> bool {
        // Named field by field, so a new kind cannot be forgotten here.
        let WriteBatch {
            inserts: _,
            servers,
            usage,
            events,
            arqs_new,
            arqs_changed,
            arqs_deleted,
            hosts,
            deletes,
            host_records,
            hosts_deleted,
            launches_new,
            launches_deleted,
            pool_limits,
            settings,
            profiles_new,
            profiles_deleted,
            drives,
            drives_deleted,
            drive_usage,
            audit,
        } = self;
        servers.is_empty()
            && usage.is_empty()
            && events.is_empty()
            && arqs_new.is_empty()
            && arqs_changed.is_empty()
            && arqs_deleted.is_empty()
            && hosts.is_empty()
            && deletes.is_empty()
            && host_records.is_empty()
            && hosts_deleted.is_empty()
            && launches_new.is_empty()
            && launches_deleted.is_empty()
            && pool_limits.is_empty()
            && settings.is_empty()
            && profiles_new.is_empty()
            && profiles_deleted.is_empty()
            && drives.is_empty()
            && drives_deleted.is_empty()
            && drive_usage.is_empty()
            && audit.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty() && self.only_inserts()
    }
}

/// Where the store lives: `database` in the coordinator's configuration, a SQLite file (an
/// absolute path) or a `postgres://` (or `postgresql://`) URL.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Database {
    /// The location without secrets (for logs and the configuration view).
    pub fn redacted(&self) -> String {
        match self {
            Database::Sqlite(p) => p.display().to_string(),
            Database::Postgres(url) => redact_url(url),
        }
    }
}

impl std::str::FromStr for Database {
    type Err = String;
    fn from_str(s: &str) -> Result<Database, String> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            sqlx::postgres::PgConnectOptions::from_str(s)
                .map_err(|e| format!("{}: {e}", redact_url(s)))?;
            return Ok(Database::Postgres(s.to_owned()));
        }
        if s.contains("://") {
            return Err(format!(
                "{}: not a database this coordinator knows (a SQLite file path or a \
                 postgres:// URL)",
                redact_url(s)
            ));
        }
        if s.is_empty() {
            return Err("empty: a SQLite file path or a postgres:// URL".into());
        }
        Ok(Database::Sqlite(PathBuf::from(s)))
    }
}

impl TryFrom<String> for Database {
    type Error = String;
    fn try_from(s: String) -> Result<Database, String> {
        s.parse()
    }
}

impl From<Database> for String {
    fn from(d: Database) -> String {
        match d {
            Database::Sqlite(p) => p.display().to_string(),
            Database::Postgres(url) => url,
        }
    }
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The row counts of the multi-row server INSERTs, largest first: `n` new servers go in as
/// chunks of these sizes (64 rows of 28 values is 1,792 bind parameters, well under both
/// backends' limits).
const INSERT_CHUNKS: [usize; 4] = [64, 16, 4, 1];

/// How many of `n` (> 0) new servers the next INSERT takes.
pub(crate) fn insert_chunk(n: usize) -> usize {
    INSERT_CHUNKS.into_iter().find(|&c| c <= n).unwrap_or(1)
}

/// The columns a new server is written with, in `bind_server`'s order.
const SERVER_COLUMNS: &str = "uuid, owner, name, class, cpu, smp, mem, meta, tags, vnc_password, \
     workload, status, host, perf_cpu, perf_mem, active_since, incarnation, created_at, \
     term_scheduled_at, term_at, queued_reason, priority, flavor, gpu_request, gpus, last_host, \
     stop_reason, drives";

/// `INSERT INTO servers` of `rows` rows, with `?` placeholders.
pub(crate) fn insert_servers_sql(rows: usize) -> String {
    let columns = SERVER_COLUMNS.split(',').count();
    let row = format!("({})", vec!["?"; columns].join(", "));
    format!(
        "INSERT INTO servers ({SERVER_COLUMNS}) VALUES {}",
        vec![row; rows].join(", ")
    )
}

/// How a backend spells a query: the SQL is shared, placeholders differ.
pub(crate) trait Backend: sqlx::Database {
    fn sql(sql: Cow<'static, str>) -> Cow<'static, str>;
}

impl Backend for sqlx::Sqlite {
    fn sql(sql: Cow<'static, str>) -> Cow<'static, str> {
        sql
    }
}

impl Backend for sqlx::Postgres {
    fn sql(sql: Cow<'static, str>) -> Cow<'static, str> {
        Cow::Owned(numbered(&sql))
    }
}

/// A query for backend `DB` from shared SQL.
pub(crate) fn query<'a, DB: Backend>(
    sql: impl Into<Cow<'static, str>>,
) -> sqlx::query::Query<'a, DB, <DB as sqlx::Database>::Arguments> {
    sqlx::query(sqlx::AssertSqlSafe(DB::sql(sql.into())))
}

/// `?` placeholders numbered `$1`, `$2`, ... as PostgreSQL wants them; a `?` inside quotes
/// (a string literal or a quoted identifier) is left alone.
pub(crate) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0u32;
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '?' => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
                continue;
            }
            None => {}
        }
        out.push(c);
    }
    out
}

/// A migration history embedded in the binary.
#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl<'s> sqlx::migrate::MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> std::pin::Pin<
        Box<
            dyn Future<Output = Result<Vec<sqlx::migrate::Migration>, sqlx::error::BoxDynError>>
                + Send
                + 's,
        >,
    > {
        use sqlx::SqlSafeStr;
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(version, desc, sql)| {
                    sqlx::migrate::Migration::new(
                        *version,
                        (*desc).into(),
                        sqlx::migrate::MigrationType::Simple,
                        sql.into_sql_str(),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// The coordinator's store: one of the backends.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl From<SqliteStore> for Store {
    fn from(s: SqliteStore) -> Store {
        Store::Sqlite(s)
    }
}

impl From<PgStore> for Store {
    fn from(s: PgStore) -> Store {
        Store::Postgres(s)
    }
}

impl Store {
    /// Opens (creating or migrating) the store `database` names. A PostgreSQL server gets
    /// `connect_timeout` to answer.
    pub async fn open(
        database: &Database,
        connect_timeout: std::time::Duration,
    ) -> Result<Store, StoreError> {
        Ok(match database {
            Database::Sqlite(path) => Store::Sqlite(SqliteStore::open(path).await?),
            Database::Postgres(url) => Store::Postgres(PgStore::open(url, connect_timeout).await?),
        })
    }

    /// The PostgreSQL backend, where several coordinators may share the database (and one
    /// leads); `None` on SQLite, where the one coordinator always leads.
    pub fn shared(&self) -> Option<&PgStore> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(s) => Some(s),
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }
}

/// `Store`'s methods, each forwarded to the backend.
macro_rules! dispatch {
    ($( $(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        impl Store {
            $(
                $(#[$doc])*
                pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        Store::Sqlite(s) => s.$name($($arg),*).await,
                        Store::Postgres(s) => s.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

dispatch! {
    /// The store answers (readiness).
    fn ping(&self) -> Result<(), StoreError>;
    fn close(&self) -> ();
    fn upsert_host(&self, h: &HostRecord) -> Result<(), StoreError>;
    fn hosts(&self) -> Result<Vec<HostRecord>, StoreError>;
    fn insert_servers(&self, servers: &[ServerRecord]) -> Result<(), StoreError>;
    /// Batches in order, in one transaction (group commit).
    fn write_batches(&self, batches: &[&WriteBatch]) -> Result<(), StoreError>;
    fn delete_server(&self, id: &ServerId) -> Result<(), StoreError>;
    fn servers(&self) -> Result<Vec<ServerRecord>, StoreError>;
    fn account(&self, name: &str) -> Result<Option<Account>, StoreError>;
    fn accounts(&self) -> Result<Vec<Account>, StoreError>;
    fn create_account(
        &self,
        name: &str,
        backfill: bool,
        quota: Quota,
        now: i64
    ) -> Result<Option<Account>, StoreError>;
    fn update_account(&self, name: &str, change: AccountChange) -> Result<Option<Account>, StoreError>;
    fn delete_account(&self, name: &str) -> Result<bool, StoreError>;
    fn seed_accounts(&self, backfill: &[String], plain: &[String], now: i64) -> Result<(), StoreError>;
    fn actions(
        &self,
        target_kind: &'static str,
        target: &str,
        limit: u32
    ) -> Result<Vec<AuditEntry>, StoreError>;
    fn settings(&self) -> Result<BTreeMap<String, String>, StoreError>;
    fn set_setting(&self, key: &str, value: &str, a: &AuditEntry) -> Result<(), StoreError>;
    fn pool_limits(&self) -> Result<BTreeMap<String, (u32, u32)>, StoreError>;
    fn set_pool_limits(
        &self,
        name: &str,
        limits: Option<(u32, u32)>,
        a: &AuditEntry
    ) -> Result<(), StoreError>;
    fn launches(&self) -> Result<Vec<LaunchRecord>, StoreError>;
    fn insert_launches(&self, launches: &[LaunchRecord], a: &AuditEntry) -> Result<(), StoreError>;
    fn delete_launch(&self, host: &str) -> Result<(), StoreError>;
    fn insert_profile(&self, p: &DeviceProfile) -> Result<bool, StoreError>;
    fn profiles(&self) -> Result<Vec<DeviceProfile>, StoreError>;
    fn delete_profiles(&self, profiles: &[DeviceProfile]) -> Result<Option<String>, StoreError>;
    fn put_arqs(&self, new: &[Arq], changed: &[Arq]) -> Result<(), StoreError>;
    fn delete_arqs(&self, uuids: &[String]) -> Result<(), StoreError>;
    fn arqs(&self) -> Result<Vec<Arq>, StoreError>;
    fn arqs_of_server(&self, server: &str) -> Result<Vec<Arq>, StoreError>;
    fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRow>, StoreError>;
    fn insert_webhook(&self, w: &Webhook) -> Result<(), StoreError>;
    fn webhooks_of(&self, owner: &str) -> Result<Vec<Webhook>, StoreError>;
    fn delete_webhook(&self, uuid: &str) -> Result<(), StoreError>;
    fn insert_subscription(&self, s: &Subscription) -> Result<(), StoreError>;
    fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError>;
    fn delete_subscription(&self, uuid: &str) -> Result<(), StoreError>;
    fn unfanned_events(&self, limit: u32) -> Result<Vec<Event>, StoreError>;
    fn fan_out(&self, event: &str, webhooks: &[String], now: i64) -> Result<(), StoreError>;
    fn due_deliveries(&self, now: i64, limit: u32) -> Result<Vec<Outgoing>, StoreError>;
    fn record_attempt(&self, delivery: &str, a: &Attempt) -> Result<(), StoreError>;
    fn deliveries_of(&self, webhook: &str, limit: u32) -> Result<Vec<Delivery>, StoreError>;
    fn prune_outbox(&self, before: i64) -> Result<u64, StoreError>;
    fn redeliver(&self, delivery: &str, now: i64) -> Result<(), StoreError>;
    fn put_drive(&self, d: &DriveRecord) -> Result<(), StoreError>;
    fn delete_drive(&self, id: &backfill_shared::DriveId) -> Result<(), StoreError>;
    fn drives(&self) -> Result<Vec<DriveRecord>, StoreError>;
    /// Drives' storage as usage, with their `metered_until`, in one transaction.
    fn meter_drives(&self, usage: &[DriveUsage]) -> Result<(), StoreError>;
}
