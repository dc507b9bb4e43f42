//! Metered usage: segments of one server at one perf_factor and price, written in the same
//! transaction as the change that ends them, so a restart neither loses nor repeats any.

use super::StoreError;
use backfill_shared::PerfFactor;
use std::collections::BTreeMap;

/// Longest segment kept as one row; longer runs continue in a new row.
const MAX_SEGMENT_S: i64 = 3_600;

use crate::domain::usage::{Prices, UsageFilter, UsageRow, UsageSegment, charge};

/// Writes segments inside the caller's transaction, extending the server's last row when the
/// new segment continues it unchanged.
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

        pub(in crate::store) async fn insert_segments(
            conn: &mut <$DB as sqlx::Database>::Connection,
            segments: &[UsageSegment],
        ) -> Result<(), StoreError> {
            for s in segments.iter().filter(|s| s.end > s.start) {
                let id = s.server.to_string();
                let cpu = i64::try_from(s.cpu).unwrap_or(i64::MAX);
                let mem = i64::try_from(s.mem).unwrap_or(i64::MAX);
                let extended = q(
                    "UPDATE usage SET \"end\" = ? WHERE id = (
                         SELECT id FROM usage WHERE server = ? ORDER BY \"end\" DESC LIMIT 1)
                       AND \"end\" = ? AND cpu = ? AND mem = ? AND perf_cpu = ? AND perf_mem = ?
                       AND price_cpu = ? AND price_mem = ? AND ? - start <= ?",
                )
                .bind(s.end)
                .bind(&id)
                .bind(s.start)
                .bind(cpu)
                .bind(mem)
                .bind(s.perf.cpu)
                .bind(s.perf.mem)
                .bind(s.prices.cpu)
                .bind(s.prices.mem)
                .bind(s.end)
                .bind(MAX_SEGMENT_S)
                .execute(&mut *conn)
                .await?;
                if extended.rows_affected() > 0 {
                    continue;
                }
                q(
                    "INSERT INTO usage (server, account, name, class, start, \"end\", cpu, mem, perf_cpu,
                         perf_mem, price_cpu, price_mem) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&id)
                .bind(&s.account)
                .bind(&s.name)
                .bind(s.class.as_str())
                .bind(s.start)
                .bind(s.end)
                .bind(cpu)
                .bind(mem)
                .bind(s.perf.cpu)
                .bind(s.perf.mem)
                .bind(s.prices.cpu)
                .bind(s.prices.mem)
                .execute(&mut *conn)
                .await?;
            }
            Ok(())
        }

        impl $Store {
            /// Usage per server within `[filter.start, filter.end)`; segments that straddle an edge
            /// count for the part inside (their rate is constant).
            pub async fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRow>, StoreError> {
                let rows = q(
                    "SELECT server, account, name, class, start, \"end\", cpu, mem, perf_cpu, perf_mem,
                            price_cpu, price_mem
                     FROM usage WHERE \"end\" > ? AND start < ? AND (? IS NULL OR account = ?)
                     ORDER BY start, id",
                )
                .bind(filter.start)
                .bind(filter.end)
                .bind(filter.account.as_deref())
                .bind(filter.account.as_deref())
                .fetch_all(&self.pool)
                .await?;
                let mut by_server: BTreeMap<String, UsageRow> = BTreeMap::new();
                for r in &rows {
                    let start: i64 = r.try_get("start")?;
                    let end: i64 = r.try_get("end")?;
                    let overlap = end.min(filter.end) - start.max(filter.start);
                    let cpu: i64 = r.try_get("cpu")?;
                    let mem: i64 = r.try_get("mem")?;
                    let c = charge(
                        u64::try_from(cpu).unwrap_or(0),
                        u64::try_from(mem).unwrap_or(0),
                        PerfFactor {
                            cpu: r.try_get("perf_cpu")?,
                            mem: r.try_get("perf_mem")?,
                        },
                        Prices {
                            cpu: r.try_get("price_cpu")?,
                            mem: r.try_get("price_mem")?,
                        },
                        overlap,
                    );
                    let server: String = r.try_get("server")?;
                    let e = by_server.entry(server.clone()).or_insert_with(|| UsageRow {
                        server,
                        ..UsageRow::default()
                    });
                    e.account = r.try_get("account")?;
                    e.name = r.try_get("name")?;
                    e.class = r.try_get("class")?;
                    e.add(&c);
                }
                Ok(by_server.into_values().collect())
            }
        }
        }
    };
}

backend!(sqlite, SqliteStore, sqlx::Sqlite);
backend!(postgres, PgStore, sqlx::Postgres);
