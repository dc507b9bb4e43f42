use super::{HostRecord, ServerRecord, StoreError};
use crate::scheduler::Termination;
use backfill_shared::{HostId, PerfFactor, ServerClass, ServerId, ServerStatus};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, SqlSafeStr};
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
];

#[derive(Debug)]
struct Embedded;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = Result<Vec<Migration>, sqlx::error::BoxDynError>> + Send + 's>,
    > {
        Box::pin(async move {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, desc, sql)| {
                    Migration::new(
                        *version,
                        (*desc).into(),
                        MigrationType::Simple,
                        sql.into_sql_str(),
                        false,
                    )
                })
                .collect())
        })
    }
}

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
        Migrator::new(Embedded).await?.run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    /// The store answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ----- hosts -----

    pub async fn upsert_host(&self, h: &HostRecord) -> Result<(), StoreError> {
        let inventory = serde_json::to_string(&h.inventory).map_err(|e| StoreError::Corrupt {
            table: "hosts",
            key: h.id.to_string(),
            reason: e.to_string(),
        })?;
        sqlx::query(
            "INSERT INTO hosts (id, inventory, enforcing, generation, first_seen, last_seen,
                 idle_behavior, pool)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT(id) DO UPDATE SET inventory = excluded.inventory,
                 enforcing = excluded.enforcing, generation = excluded.generation,
                 last_seen = excluded.last_seen, idle_behavior = excluded.idle_behavior,
                 pool = excluded.pool",
        )
        .bind(h.id.as_str())
        .bind(inventory)
        .bind(h.enforcing)
        .bind(i64::try_from(h.generation).unwrap_or(i64::MAX))
        .bind(h.first_seen)
        .bind(h.last_seen)
        .bind(h.idle_behavior.as_str())
        .bind(h.pool.as_deref())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, inventory, enforcing, generation, first_seen, last_seen, idle_behavior, pool
             FROM hosts ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(host_from_row).collect()
    }

    // ----- servers -----

    pub async fn insert_servers(&self, servers: &[ServerRecord]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for s in servers {
            let q = sqlx::query(
                "INSERT INTO servers (uuid, owner, name, class, cpu, smp, mem, meta, tags,
                     vnc_password, workload, status, host, perf_cpu, perf_mem, active_since,
                     incarnation, created_at, term_scheduled_at, term_at, queued_reason,
                     priority, flavor, gpu_request, gpus, last_host, stop_reason)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
                         ?, ?)",
            );
            bind_server(q, s)?.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Writes the mutable fields of `servers` and the new generations of `hosts` in one
    /// transaction: a host's desired state and its generation never disagree on disk.
    pub async fn commit(
        &self,
        servers: &[ServerRecord],
        hosts: &[(HostId, u64)],
        usage: &[super::UsageSegment],
        events: &[crate::events::Event],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for s in servers {
            let workload = match &s.workload {
                Some(w) => Some(to_json("servers", s, w)?),
                None => None,
            };
            sqlx::query(
                "UPDATE servers SET name = ?, meta = ?, tags = ?, status = ?, host = ?,
                     perf_cpu = ?, perf_mem = ?, active_since = ?, incarnation = ?,
                     term_scheduled_at = ?, term_at = ?, queued_reason = ?, cpu = ?, smp = ?,
                     mem = ?, vnc_password = ?, workload = ?, priority = ?, metered_until = ?,
                     metered_perf_cpu = ?, metered_perf_mem = ?, shutdown_until = ?, flavor = ?,
                     gpus = ?, last_host = ?, stop_reason = ?
                 WHERE uuid = ?",
            )
            .bind(&s.name)
            .bind(to_json("servers", s, &s.meta)?)
            .bind(to_json("servers", s, &s.tags)?)
            .bind(s.status.as_str())
            .bind(s.host.as_ref().map(HostId::as_str))
            .bind(s.perf_factor.cpu)
            .bind(s.perf_factor.mem)
            .bind(s.active_since)
            .bind(i64::try_from(s.incarnation).unwrap_or(i64::MAX))
            .bind(s.termination.map(|t| t.scheduled_at))
            .bind(s.termination.map(|t| t.terminate_at))
            .bind(s.queued_reason.as_deref())
            .bind(i64::try_from(s.cpu).unwrap_or(i64::MAX))
            .bind(i64::from(s.smp))
            .bind(i64::try_from(s.mem).unwrap_or(i64::MAX))
            .bind(s.vnc_password.as_deref())
            .bind(workload)
            .bind(s.priority)
            .bind(s.metered_until)
            .bind(s.metered_perf.cpu)
            .bind(s.metered_perf.mem)
            .bind(s.shutdown_until)
            .bind(s.flavor.as_deref())
            .bind(to_json("servers", s, &s.gpus)?)
            .bind(s.last_host.as_ref().map(HostId::as_str))
            .bind(s.stop_reason.as_deref())
            .bind(s.uuid.to_string())
            .execute(&mut *tx)
            .await?;
        }
        super::usage::insert_segments(&mut tx, usage).await?;
        super::webhooks::insert_events(&mut tx, events).await?;
        for (id, generation) in hosts {
            sqlx::query("UPDATE hosts SET generation = ? WHERE id = ?")
                .bind(i64::try_from(*generation).unwrap_or(i64::MAX))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_server(&self, id: &ServerId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM servers WHERE uuid = ?")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn servers(&self) -> Result<Vec<ServerRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT uuid, owner, name, class, cpu, smp, mem, meta, tags, vnc_password, workload,
                    status, host, perf_cpu, perf_mem, active_since, incarnation, created_at,
                    term_scheduled_at, term_at, queued_reason, priority, metered_until,
                    metered_perf_cpu, metered_perf_mem, shutdown_until, flavor, gpu_request, gpus,
                    last_host, stop_reason
             FROM servers ORDER BY created_at, uuid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(server_from_row).collect()
    }
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

fn to_json<T: serde::Serialize>(
    table: &'static str,
    s: &ServerRecord,
    v: &T,
) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt {
        table,
        key: s.uuid.to_string(),
        reason: e.to_string(),
    })
}

fn bind_server<'q>(q: Query<'q>, s: &'q ServerRecord) -> Result<Query<'q>, StoreError> {
    let workload = match &s.workload {
        Some(w) => Some(to_json("servers", s, w)?),
        None => None,
    };
    Ok(q.bind(s.uuid.to_string())
        .bind(&s.owner)
        .bind(&s.name)
        .bind(s.class.as_str())
        .bind(i64::try_from(s.cpu).unwrap_or(i64::MAX))
        .bind(i64::from(s.smp))
        .bind(i64::try_from(s.mem).unwrap_or(i64::MAX))
        .bind(to_json("servers", s, &s.meta)?)
        .bind(to_json("servers", s, &s.tags)?)
        .bind(s.vnc_password.as_deref())
        .bind(workload)
        .bind(s.status.as_str())
        .bind(s.host.as_ref().map(HostId::as_str))
        .bind(s.perf_factor.cpu)
        .bind(s.perf_factor.mem)
        .bind(s.active_since)
        .bind(i64::try_from(s.incarnation).unwrap_or(i64::MAX))
        .bind(s.created_at)
        .bind(s.termination.map(|t| t.scheduled_at))
        .bind(s.termination.map(|t| t.terminate_at))
        .bind(s.queued_reason.as_deref())
        .bind(s.priority)
        .bind(s.flavor.as_deref())
        .bind(match &s.gpu_request {
            Some(g) => Some(to_json("servers", s, g)?),
            None => None,
        })
        .bind(to_json("servers", s, &s.gpus)?)
        .bind(s.last_host.as_ref().map(HostId::as_str))
        .bind(s.stop_reason.as_deref()))
}

fn corrupt(table: &'static str, key: &str, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        key: key.to_owned(),
        reason: reason.to_string(),
    }
}

fn host_from_row(r: &SqliteRow) -> Result<HostRecord, StoreError> {
    let id: String = r.try_get("id")?;
    let inventory: String = r.try_get("inventory")?;
    let generation: i64 = r.try_get("generation")?;
    let idle: String = r.try_get("idle_behavior")?;
    Ok(HostRecord {
        idle_behavior: idle.parse().map_err(|e: String| corrupt("hosts", &id, e))?,
        pool: r.try_get("pool")?,
        id: id.parse().map_err(|e| corrupt("hosts", &id, e))?,
        inventory: serde_json::from_str(&inventory).map_err(|e| corrupt("hosts", &id, e))?,
        enforcing: r.try_get("enforcing")?,
        generation: u64::try_from(generation).unwrap_or(0),
        first_seen: r.try_get("first_seen")?,
        last_seen: r.try_get("last_seen")?,
    })
}

fn server_from_row(r: &SqliteRow) -> Result<ServerRecord, StoreError> {
    let key: String = r.try_get("uuid")?;
    let c = |e: &dyn std::fmt::Display| corrupt("servers", &key, e.to_string());
    let class: String = r.try_get("class")?;
    let status: String = r.try_get("status")?;
    let meta: String = r.try_get("meta")?;
    let tags: String = r.try_get("tags")?;
    let workload: Option<String> = r.try_get("workload")?;
    let host: Option<String> = r.try_get("host")?;
    let cpu: i64 = r.try_get("cpu")?;
    let smp: i64 = r.try_get("smp")?;
    let mem: i64 = r.try_get("mem")?;
    let incarnation: i64 = r.try_get("incarnation")?;
    let term_scheduled_at: Option<i64> = r.try_get("term_scheduled_at")?;
    let term_at: Option<i64> = r.try_get("term_at")?;
    Ok(ServerRecord {
        uuid: key.parse().map_err(|e| c(&e))?,
        owner: r.try_get("owner")?,
        name: r.try_get("name")?,
        class: ServerClass::parse(&class).ok_or_else(|| c(&format!("class {class:?}")))?,
        cpu: u64::try_from(cpu).map_err(|e| c(&e))?,
        smp: u32::try_from(smp).map_err(|e| c(&e))?,
        mem: u64::try_from(mem).map_err(|e| c(&e))?,
        meta: serde_json::from_str(&meta).map_err(|e| c(&e))?,
        tags: serde_json::from_str(&tags).map_err(|e| c(&e))?,
        vnc_password: r.try_get("vnc_password")?,
        workload: match workload {
            Some(w) => Some(serde_json::from_str(&w).map_err(|e| c(&e))?),
            None => None,
        },
        status: ServerStatus::parse(&status).ok_or_else(|| c(&format!("status {status:?}")))?,
        host: match host {
            Some(h) => Some(h.parse().map_err(|e| c(&e))?),
            None => None,
        },
        perf_factor: PerfFactor {
            cpu: r.try_get("perf_cpu")?,
            mem: r.try_get("perf_mem")?,
        }
        .clamped(),
        active_since: r.try_get("active_since")?,
        incarnation: u64::try_from(incarnation).map_err(|e| c(&e))?,
        termination: match (term_scheduled_at, term_at) {
            (Some(scheduled_at), Some(terminate_at)) => Some(Termination {
                scheduled_at,
                terminate_at,
            }),
            _ => None,
        },
        queued_reason: r.try_get("queued_reason")?,
        priority: r.try_get("priority")?,
        created_at: r.try_get("created_at")?,
        network: None,
        limits: None,
        metered_until: r.try_get("metered_until")?,
        metered_perf: PerfFactor {
            cpu: r.try_get("metered_perf_cpu")?,
            mem: r.try_get("metered_perf_mem")?,
        },
        shutdown_until: r.try_get("shutdown_until")?,
        flavor: r.try_get("flavor")?,
        gpu_request: match r.try_get::<Option<String>, _>("gpu_request")? {
            Some(g) => Some(serde_json::from_str(&g).map_err(|e| c(&e))?),
            None => None,
        },
        gpus: serde_json::from_str(&r.try_get::<String, _>("gpus")?).map_err(|e| c(&e))?,
        last_host: match r.try_get::<Option<String>, _>("last_host")? {
            Some(h) => Some(h.parse().map_err(|e| c(&e))?),
            None => None,
        },
        stop_reason: r.try_get("stop_reason")?,
        instance_type: String::new(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use backfill_shared::HostInventory;

    fn server(owner: &str) -> ServerRecord {
        ServerRecord {
            uuid: ServerId::new_random(),
            owner: owner.into(),
            name: "s".into(),
            class: ServerClass::Backfill,
            cpu: 1000,
            smp: 1,
            mem: 1 << 29,
            meta: [("k".to_string(), "v".to_string())].into(),
            tags: vec!["t".into()],
            vnc_password: None,
            workload: None,
            status: ServerStatus::Stopped,
            host: None,
            perf_factor: PerfFactor::FULL,
            active_since: None,
            incarnation: 0,
            termination: None,
            queued_reason: None,
            priority: 3,
            created_at: 5,
            network: None,
            limits: None,
            metered_until: None,
            metered_perf: PerfFactor::FULL,
            shutdown_until: None,
            flavor: None,
            gpu_request: None,
            gpus: vec!["GPU-1".into()],
            instance_type: String::new(),
            last_host: None,
            stop_reason: None,
        }
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let store = SqliteStore::open(&path).await.unwrap();
        let acc = store
            .create_account("tenant", true, Default::default(), 1)
            .await
            .unwrap()
            .unwrap();
        assert!(acc.backfill);
        // A second create is refused and changes nothing.
        let again = store
            .create_account("tenant", false, Default::default(), 2)
            .await
            .unwrap();
        assert_eq!(again, None);
        assert_eq!(store.account("tenant").await.unwrap(), Some(acc.clone()));
        let host = HostRecord {
            id: "h1".parse().unwrap(),
            inventory: HostInventory {
                hostname: "h1".into(),
                cpus: 2,
                cpu_mhz_per_cpu: 2000,
                mem_bytes: 1 << 30,
                gpus: vec![],
                drivers: backfill_shared::Drivers::exec_only(),
                mechanisms: Vec::new(),
            },
            enforcing: true,
            generation: 3,
            first_seen: 1,
            idle_behavior: backfill_shared::IdleBehavior::Hold,
            pool: Some("p".into()),
            last_seen: 1,
        };
        store.upsert_host(&host).await.unwrap();
        let mut s = server("tenant");
        store.insert_servers(&[s.clone()]).await.unwrap();
        s.status = ServerStatus::Running;
        s.host = Some(host.id.clone());
        s.perf_factor = PerfFactor { cpu: 0.5, mem: 1.0 };
        s.incarnation = 4;
        s.termination = Some(Termination {
            scheduled_at: 10,
            terminate_at: 20,
        });
        s.queued_reason = Some("why".into());
        s.metered_until = Some(15);
        s.metered_perf = PerfFactor {
            cpu: 0.25,
            mem: 0.5,
        };
        s.shutdown_until = Some(77);
        s.cpu = 1500;
        s.workload = Some(backfill_shared::Workload {
            command: vec!["true".into()],
            ..Default::default()
        });
        store
            .commit(&[s.clone()], &[(host.id.clone(), 4)], &[], &[])
            .await
            .unwrap();
        store.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.servers().await.unwrap(), vec![s.clone()]);
        let mut host = host;
        host.generation = 4;
        assert_eq!(store.hosts().await.unwrap(), vec![host]);
        store.delete_server(&s.uuid).await.unwrap();
        assert!(store.servers().await.unwrap().is_empty());

        // Seeding creates what is missing and grants backfill; it revokes nothing.
        store
            .seed_accounts(&["new".into()], &["plain".into(), "tenant".into()], 3)
            .await
            .unwrap();
        assert!(store.account("tenant").await.unwrap().unwrap().backfill);
        assert!(store.account("new").await.unwrap().unwrap().backfill);
        assert!(!store.account("plain").await.unwrap().unwrap().backfill);
        // Quotas and the permission change through the API's path.
        let changed = store
            .update_account(
                "plain",
                super::super::AccountChange {
                    backfill: Some(true),
                    quota: super::super::QuotaChange {
                        cpu: Some(Some(4_000)),
                        servers: Some(Some(2)),
                        ..Default::default()
                    },
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert!(changed.backfill);
        assert_eq!(
            (changed.quota.cpu, changed.quota.servers, changed.quota.mem),
            (Some(4_000), Some(2), None)
        );
        assert!(store.delete_account("plain").await.unwrap());
        assert!(!store.delete_account("plain").await.unwrap());
    }

    #[tokio::test]
    async fn usage_segments_extend_and_prorate() {
        use super::super::{Prices, UsageFilter, UsageSegment};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        let id = ServerId::from_u128(1);
        let seg = |start, end, cpu_pf| UsageSegment {
            server: id,
            account: "a".into(),
            name: "s".into(),
            class: ServerClass::Backfill,
            start,
            end,
            cpu: 1_000,
            mem: 1 << 30,
            perf: PerfFactor {
                cpu: cpu_pf,
                mem: 1.0,
            },
            prices: Prices {
                cpu: 1_000_000,
                mem: 0,
            },
        };
        // Two continuing stretches at full size become one row; the half-size one is another.
        store
            .commit(&[], &[], &[seg(0, 100, 1.0)], &[])
            .await
            .unwrap();
        store
            .commit(&[], &[], &[seg(100, 200, 1.0), seg(200, 300, 0.5)], &[])
            .await
            .unwrap();
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(rows, 2);
        let all = |start, end| UsageFilter {
            account: None,
            start,
            end,
        };
        let u = store.usage(&all(0, 300)).await.unwrap();
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].seconds, 300);
        assert_eq!(u[0].cpu_mhz_seconds, 1_000 * 200 + 500 * 100);
        // 250 GHz-seconds at 1 per GHz-hour.
        assert_eq!(u[0].amount_micro, 69_444); // 250 / 3600, rounded once at the end
        // A range that cuts segments counts the parts inside.
        let u = store.usage(&all(150, 250)).await.unwrap();
        assert_eq!(u[0].cpu_mhz_seconds, 1_000 * 50 + 500 * 50);
        let other = UsageFilter {
            account: Some("b".into()),
            start: 0,
            end: 300,
        };
        assert!(store.usage(&other).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn unknown_owner_is_refused_by_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        assert!(store.insert_servers(&[server("nobody")]).await.is_err());
    }
}
