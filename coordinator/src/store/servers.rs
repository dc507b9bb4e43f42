//! Hosts and servers: the rows the live model is loaded from, and `write_batches`, the one
//! transaction every scheduling change goes through (servers, usage, events, ARQs, host
//! generations), a group of batches at a time.

use super::{HostRecord, ServerRecord, StoreError};
use backfill_shared::Termination;
use backfill_shared::{HostId, PerfFactor, ServerClass, ServerId, ServerStatus};

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

        impl $Store {
            /// The store answers (readiness).
            pub async fn ping(&self) -> Result<(), StoreError> {
                q("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            pub async fn close(&self) {
                self.pool.close().await;
            }

            // ----- hosts -----

            pub async fn upsert_host(&self, h: &HostRecord) -> Result<(), StoreError> {
                // A transaction of its own, begun by begin_write: the leader's epoch fences it.
                let mut tx = self.begin_write().await?;
                upsert_host_in(&mut tx, h).await?;
                tx.commit().await?;
                Ok(())
            }

            pub async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
                let rows = q(
                    "SELECT id, inventory, enforcing, generation, first_seen, last_seen, idle_behavior, pool
                     FROM hosts ORDER BY id",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(host_from_row).collect()
            }

            // ----- servers -----

            pub async fn insert_servers(&self, servers: &[ServerRecord]) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                let all: Vec<&ServerRecord> = servers.iter().collect();
                insert_servers_in(&mut tx, &all).await?;
                tx.commit().await?;
                Ok(())
            }

            /// Writes `batches` in order in one transaction (group commit): each batch's host
            /// records, new servers, launches, pool limits, settings and new device profiles,
            /// changed servers, usage, events, ARQs, host generations, deleted servers (with
            /// their ARQs), drives, drive metering, deleted profiles and hosts, and audit
            /// entries, in that order. All land, or none.
            pub async fn write_batches(
                &self,
                batches: &[&crate::store::WriteBatch],
            ) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                // New servers of consecutive batches that write nothing else (creates) go in
                // together, a few multi-row INSERTs for the lot; anything else a batch writes
                // comes after its own and every earlier batch's new servers, as in order.
                let mut new: Vec<&ServerRecord> = Vec::new();
                for b in batches {
                    new.extend(&b.inserts);
                    if b.only_inserts() {
                        continue;
                    }
                    // Hosts first: this batch's servers may name them (and earlier batches'
                    // new servers name none that are not yet written).
                    for h in &b.host_records {
                        upsert_host_in(&mut tx, h).await?;
                    }
                    insert_servers_in(&mut tx, &new).await?;
                    new.clear();
                    write_operator_state_in(&mut tx, b).await?;
                    update_servers_in(&mut tx, &b.servers).await?;
                    crate::store::usage::$m::insert_segments(&mut tx, &b.usage).await?;
                    crate::store::webhooks::$m::insert_events(&mut tx, &b.events).await?;
                    crate::store::accel::$m::put_arqs_in(&mut tx, &b.arqs_new, &b.arqs_changed)
                        .await?;
                    crate::store::accel::$m::delete_arqs_in(&mut tx, &b.arqs_deleted).await?;
                    set_generations_in(&mut tx, &b.hosts).await?;
                    for id in &b.deletes {
                        // A deleted server's ARQs (from its device profile) go with it.
                        q("DELETE FROM arqs WHERE server = ?")
                            .bind(id.to_string())
                            .execute(&mut *tx)
                            .await?;
                        q("DELETE FROM servers WHERE uuid = ?")
                            .bind(id.to_string())
                            .execute(&mut *tx)
                            .await?;
                    }
                    write_after_servers_in(&mut tx, b).await?;
                }
                insert_servers_in(&mut tx, &new).await?;
                tx.commit().await?;
                Ok(())
            }

            pub async fn delete_server(&self, id: &ServerId) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                q("DELETE FROM servers WHERE uuid = ?")
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            pub async fn servers(&self) -> Result<Vec<ServerRecord>, StoreError> {
                let rows = q(
                    "SELECT uuid, owner, name, class, cpu, smp, mem, meta, tags, vnc_password, workload,
                            status, host, perf_cpu, perf_mem, active_since, incarnation, created_at,
                            term_scheduled_at, term_at, queued_reason, priority, metered_until,
                            metered_perf_cpu, metered_perf_mem, shutdown_until, flavor, gpu_request, gpus,
                            last_host, stop_reason, drives
                     FROM servers ORDER BY created_at, uuid",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(server_from_row).collect()
            }
        }

        /// Writes a host's record whole (new or changed).
        async fn upsert_host_in(
            tx: &mut sqlx::Transaction<'static, $DB>,
            h: &HostRecord,
        ) -> Result<(), StoreError> {
            let inventory = serde_json::to_string(&h.inventory).map_err(|e| StoreError::Corrupt {
                table: "hosts",
                key: h.id.to_string(),
                reason: e.to_string(),
            })?;
            q(
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
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        /// A batch's launches, pool limits, settings and device profiles created.
        async fn write_operator_state_in(
            tx: &mut sqlx::Transaction<'static, $DB>,
            b: &crate::store::WriteBatch,
        ) -> Result<(), StoreError> {
            use crate::store::admin::$m as admin;
            for host in &b.launches_deleted {
                admin::delete_launch_in(tx, host).await?;
            }
            admin::insert_launches_in(tx, &b.launches_new).await?;
            for (pool, limits) in &b.pool_limits {
                admin::set_pool_limits_in(tx, pool, *limits).await?;
            }
            for (key, value) in &b.settings {
                admin::set_setting_in(tx, key, value).await?;
            }
            for p in &b.profiles_new {
                crate::store::accel::$m::insert_profile_in(tx, p).await?;
            }
            Ok(())
        }

        /// What a batch writes once its servers are written: drives, drive metering, device
        /// profiles and hosts deleted (nothing may name them any more), and the audit entries.
        async fn write_after_servers_in(
            tx: &mut sqlx::Transaction<'static, $DB>,
            b: &crate::store::WriteBatch,
        ) -> Result<(), StoreError> {
            use crate::store::drives::$m as drives;
            for d in &b.drives {
                drives::put_drive_in(tx, d).await?;
            }
            drives::meter_drives_in(tx, &b.drive_usage).await?;
            for id in &b.drives_deleted {
                drives::delete_drive_in(tx, id).await?;
            }
            for uuid in &b.profiles_deleted {
                crate::store::accel::$m::delete_profile_in(tx, uuid).await?;
            }
            for id in &b.hosts_deleted {
                crate::store::admin::$m::delete_host_in(tx, id).await?;
            }
            for a in &b.audit {
                crate::store::admin::$m::insert_action(tx, a).await?;
            }
            Ok(())
        }

        /// Inserts `servers` with a few multi-row statements (`INSERT_CHUNKS` rows at most each,
        /// of a handful of fixed sizes so each backend prepares few distinct statements): one
        /// round trip per chunk, not per server.
        async fn insert_servers_in(
            tx: &mut sqlx::Transaction<'static, $DB>,
            servers: &[&ServerRecord],
        ) -> Result<(), StoreError> {
            let mut rest = servers;
            while !rest.is_empty() {
                let n = crate::store::insert_chunk(rest.len());
                let (chunk, tail) = rest.split_at(n);
                let mut query = q(crate::store::insert_servers_sql(n));
                for s in chunk.iter().copied() {
                    query = bind_server(query, s)?;
                }
                query.execute(&mut **tx).await?;
                rest = tail;
            }
            Ok(())
        }

        /// Writes the mutable fields of `servers`.
        async fn update_servers_in(
            tx: &mut sqlx::Transaction<'static, $DB>,
            servers: &[ServerRecord],
        ) -> Result<(), StoreError> {
            for s in servers {
                let workload = match &s.workload {
                    Some(w) => Some(to_json("servers", s, w)?),
                    None => None,
                };
                q(
                    "UPDATE servers SET name = ?, meta = ?, tags = ?, status = ?, host = ?,
                         perf_cpu = ?, perf_mem = ?, active_since = ?, incarnation = ?,
                         term_scheduled_at = ?, term_at = ?, queued_reason = ?, cpu = ?, smp = ?,
                         mem = ?, vnc_password = ?, workload = ?, priority = ?, metered_until = ?,
                         metered_perf_cpu = ?, metered_perf_mem = ?, shutdown_until = ?, flavor = ?,
                         gpus = ?, last_host = ?, stop_reason = ?, drives = ?
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
                .bind(drives_json(s)?)
                .bind(s.uuid.to_string())
                .execute(&mut **tx)
                .await?;
            }
            Ok(())
        }

        async fn set_generations_in(
            tx: &mut sqlx::Transaction<'static, $DB>,
            hosts: &[(HostId, u64)],
        ) -> Result<(), StoreError> {
            for (id, generation) in hosts {
                q("UPDATE hosts SET generation = ? WHERE id = ?")
                    .bind(i64::try_from(*generation).unwrap_or(i64::MAX))
                    .bind(id.as_str())
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(())
        }

        type Query<'q> = sqlx::query::Query<'q, $DB, <$DB as sqlx::Database>::Arguments>;

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
                .bind(s.stop_reason.as_deref())
                .bind(drives_json(s)?))
        }

        /// A server's drives: NULL when it has none.
        fn drives_json(s: &ServerRecord) -> Result<Option<String>, StoreError> {
            if s.drives.is_empty() {
                Ok(None)
            } else {
                to_json("servers", s, &s.drives).map(Some)
            }
        }

        fn corrupt(table: &'static str, key: &str, reason: impl ToString) -> StoreError {
            StoreError::Corrupt {
                table,
                key: key.to_owned(),
                reason: reason.to_string(),
            }
        }

        fn host_from_row(r: &DbRow) -> Result<HostRecord, StoreError> {
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

        fn server_from_row(r: &DbRow) -> Result<ServerRecord, StoreError> {
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
                drives: match r.try_get::<Option<String>, _>("drives")? {
                    Some(d) => serde_json::from_str(&d).map_err(|e| c(&e))?,
                    None => Vec::new(),
                },
                instance_type: String::new(),
            })
        }
        }
    };
}

backend!(sqlite, SqliteStore, sqlx::Sqlite);
backend!(postgres, PgStore, sqlx::Postgres);
