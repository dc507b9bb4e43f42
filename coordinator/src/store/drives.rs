//! Drives: a tenant's disks, each on the host whose agent made it.

use super::StoreError;
use backfill_shared::HostId;
use backfill_shared::drive::{DriveId, DriveSource, Media};
use std::collections::BTreeMap;

/// Where a drive is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveStatus {
    /// Asked of its host, not reported made yet.
    Creating,
    Ready,
    /// Its host could not make it (`error` says why).
    Failed,
    /// Deleted by its owner; gone from the API, kept until its host reports the file gone.
    Deleting,
}

impl DriveStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DriveStatus::Creating => "creating",
            DriveStatus::Ready => "ready",
            DriveStatus::Failed => "failed",
            DriveStatus::Deleting => "deleting",
        }
    }
    pub fn parse(s: &str) -> Option<DriveStatus> {
        Some(match s {
            "creating" => DriveStatus::Creating,
            "ready" => DriveStatus::Ready,
            "failed" => DriveStatus::Failed,
            "deleting" => DriveStatus::Deleting,
            _ => return None,
        })
    }
}

/// A drive as stored and as the live model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveRecord {
    pub uuid: DriveId,
    pub owner: String,
    pub name: String,
    /// Bytes.
    pub size: u64,
    pub media: Media,
    /// The host that holds it.
    pub host: HostId,
    pub source: DriveSource,
    pub status: DriveStatus,
    pub error: Option<String>,
    pub meta: BTreeMap<String, String>,
    pub tags: Vec<String>,
    pub created_at: i64,
    /// Its storage is metered up to here (usage rows of class `drive`).
    pub metered_until: Option<i64>,
}

/// A stretch of a drive's storage to record as usage: `size` bytes over `[start, end)` at
/// `price` micro-currency per GiB-hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveUsage {
    pub drive: DriveId,
    pub account: String,
    pub name: String,
    pub start: i64,
    pub end: i64,
    pub size: u64,
    pub price: i64,
}

/// This file's queries for one backend: `backend!(module, Store, Database)` expands them with
/// that backend's types (the SQL is shared; see `super::Backend` for placeholders).
macro_rules! backend {
    ($m:ident, $Store:ident, $DB:ty) => {
        pub(in crate::store) mod $m {
            #[allow(unused_imports)]
            use super::*;
            use crate::store::$Store;
            use sqlx::Row;
            type DbRow = <$DB as sqlx::Database>::Row;
            fn q<'a>(
                sql: impl Into<std::borrow::Cow<'static, str>>,
            ) -> sqlx::query::Query<'a, $DB, <$DB as sqlx::Database>::Arguments> {
                crate::store::query::<$DB>(sql)
            }

            pub(in crate::store) async fn put_drive_in(
                tx: &mut sqlx::Transaction<'static, $DB>,
                d: &DriveRecord,
            ) -> Result<(), StoreError> {
                let json = |v: serde_json::Result<String>| {
                    v.map_err(|e| StoreError::Corrupt {
                        table: "drives",
                        key: d.uuid.to_string(),
                        reason: e.to_string(),
                    })
                };
                q(
                    "INSERT INTO drives (uuid, owner, name, size, media, host, source, status,
                       error, meta, tags, created_at, metered_until)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(uuid) DO UPDATE SET name = excluded.name,
                       size = excluded.size, media = excluded.media, host = excluded.host,
                       status = excluded.status, error = excluded.error,
                       meta = excluded.meta, tags = excluded.tags,
                       metered_until = excluded.metered_until",
                )
                .bind(d.uuid.to_string())
                .bind(&d.owner)
                .bind(&d.name)
                .bind(i64::try_from(d.size).unwrap_or(i64::MAX))
                .bind(d.media.as_str())
                .bind(d.host.as_str())
                .bind(json(serde_json::to_string(&d.source))?)
                .bind(d.status.as_str())
                .bind(d.error.as_deref())
                .bind(json(serde_json::to_string(&d.meta))?)
                .bind(json(serde_json::to_string(&d.tags))?)
                .bind(d.created_at)
                .bind(d.metered_until)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// Records stretches of drives' storage as usage and moves each drive's
            /// `metered_until` to its stretch's end, in one transaction.
            pub(in crate::store) async fn meter_drives_in(
                tx: &mut sqlx::Transaction<'static, $DB>,
                usage: &[DriveUsage],
            ) -> Result<(), StoreError> {
                for u in usage.iter().filter(|u| u.end > u.start) {
                    q(
                        "INSERT INTO usage (server, account, name, class, start, \"end\", cpu, mem,
                           perf_cpu, perf_mem, price_cpu, price_mem)
                       VALUES (?, ?, ?, 'drive', ?, ?, 0, ?, 1.0, 1.0, 0, ?)",
                    )
                    .bind(u.drive.to_string())
                    .bind(&u.account)
                    .bind(&u.name)
                    .bind(u.start)
                    .bind(u.end)
                    .bind(i64::try_from(u.size).unwrap_or(i64::MAX))
                    .bind(u.price)
                    .execute(&mut **tx)
                    .await?;
                    q("UPDATE drives SET metered_until = ? WHERE uuid = ?")
                        .bind(u.end)
                        .bind(u.drive.to_string())
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(())
            }

            pub(in crate::store) async fn delete_drive_in(
                tx: &mut sqlx::Transaction<'static, $DB>,
                id: &DriveId,
            ) -> Result<(), StoreError> {
                q("DELETE FROM drives WHERE uuid = ?")
                    .bind(id.to_string())
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            impl $Store {
                /// Writes a drive (new or changed) durably (fenced like every scheduling write:
                /// the leader's epoch; migration 0012).
                pub async fn put_drive(&self, d: &DriveRecord) -> Result<(), StoreError> {
                    let mut tx = self.begin_write().await?;
                    put_drive_in(&mut tx, d).await?;
                    tx.commit().await?;
                    Ok(())
                }

                /// Records stretches of drives' storage as usage and moves each drive's
                /// `metered_until` to its stretch's end, in one transaction.
                pub async fn meter_drives(&self, usage: &[DriveUsage]) -> Result<(), StoreError> {
                    let mut tx = self.begin_write().await?;
                    meter_drives_in(&mut tx, usage).await?;
                    tx.commit().await?;
                    Ok(())
                }

                pub async fn delete_drive(&self, id: &DriveId) -> Result<(), StoreError> {
                    let mut tx = self.begin_write().await?;
                    delete_drive_in(&mut tx, id).await?;
                    tx.commit().await?;
                    Ok(())
                }

                pub async fn drives(&self) -> Result<Vec<DriveRecord>, StoreError> {
                    let rows = q(
                        "SELECT uuid, owner, name, size, media, host, source, status, error,
                                         meta, tags, created_at, metered_until
                                  FROM drives ORDER BY created_at, uuid",
                    )
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter().map(drive_from_row).collect()
                }
            }

            fn drive_from_row(r: &DbRow) -> Result<DriveRecord, StoreError> {
                let key: String = r.try_get("uuid")?;
                let c = |e: &dyn std::fmt::Display| StoreError::Corrupt {
                    table: "drives",
                    key: key.clone(),
                    reason: e.to_string(),
                };
                let size: i64 = r.try_get("size")?;
                let media: String = r.try_get("media")?;
                let host: String = r.try_get("host")?;
                let status: String = r.try_get("status")?;
                Ok(DriveRecord {
                    uuid: key.parse().map_err(|e| c(&e))?,
                    owner: r.try_get("owner")?,
                    name: r.try_get("name")?,
                    size: u64::try_from(size).map_err(|e| c(&e))?,
                    media: Media::parse(&media).ok_or_else(|| c(&format!("media {media:?}")))?,
                    host: host.parse().map_err(|e| c(&e))?,
                    source: serde_json::from_str(&r.try_get::<String, _>("source")?)
                        .map_err(|e| c(&e))?,
                    status: DriveStatus::parse(&status)
                        .ok_or_else(|| c(&format!("status {status:?}")))?,
                    error: r.try_get("error")?,
                    meta: serde_json::from_str(&r.try_get::<String, _>("meta")?)
                        .map_err(|e| c(&e))?,
                    tags: serde_json::from_str(&r.try_get::<String, _>("tags")?)
                        .map_err(|e| c(&e))?,
                    created_at: r.try_get("created_at")?,
                    metered_until: r.try_get("metered_until")?,
                })
            }
        }
    };
}

backend!(sqlite, SqliteStore, sqlx::Sqlite);
backend!(postgres, PgStore, sqlx::Postgres);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::testing;

    fn drive(n: u128, source: DriveSource) -> DriveRecord {
        DriveRecord {
            uuid: DriveId::from_u128(n),
            owner: "acme".into(),
            name: format!("d{n}"),
            size: 1 << 30,
            media: Media::Disk,
            host: "h1".parse().unwrap(),
            source,
            status: DriveStatus::Creating,
            error: None,
            meta: [("k".to_string(), "v".to_string())].into(),
            tags: vec!["t".into()],
            created_at: n as i64,
            metered_until: Some(n as i64),
        }
    }

    #[tokio::test]
    async fn drives_and_attachments_round_trip() {
        for db in testing::backends().await {
            drives_on(db.open().await).await;
        }
    }

    /// On PostgreSQL a drive write is fenced like a server's: under a stale epoch (a deposed
    /// leader) put and delete fail at COMMIT and change nothing.
    #[tokio::test]
    async fn a_deposed_leader_cannot_write_drives() {
        let claim =
            |name: &str| crate::store::testing::claim(name, std::time::Duration::from_secs(60));
        let Some(db) = testing::postgres().await else {
            return;
        };
        let store = db.open().await;
        let pg = store.shared().unwrap().clone();
        let a = drive(1, DriveSource::Blank);
        // Before anyone leads nothing is fenced.
        store.put_drive(&a).await.unwrap();
        let mut sa = pg.lease_session().await.unwrap();
        assert_eq!(sa.try_take(&claim("a")).await.unwrap(), Some(1));
        pg.set_epoch(1);
        let mut moved = a.clone();
        moved.host = "h2".parse().unwrap();
        store.put_drive(&moved).await.unwrap();
        // a's session ends; b takes over (epoch 2) while this store still writes under 1.
        sa.close().await;
        let mut sb = pg.lease_session().await.unwrap();
        crate::store::testing::take_soon(&mut sb, &claim("b")).await;
        let mut stale = moved.clone();
        stale.host = "h3".parse().unwrap();
        let err = store.put_drive(&stale).await.unwrap_err();
        assert!(err.is_fenced(), "put under epoch 1: {err}");
        let err = store.delete_drive(&a.uuid).await.unwrap_err();
        assert!(err.is_fenced(), "delete under epoch 1: {err}");
        assert_eq!(store.drives().await.unwrap(), vec![moved.clone()]);
        // Under the new epoch it writes again.
        pg.set_epoch(2);
        store.delete_drive(&a.uuid).await.unwrap();
        assert!(store.drives().await.unwrap().is_empty());
    }

    async fn drives_on(store: Store) {
        let a = drive(1, DriveSource::Blank);
        let b = drive(
            2,
            DriveSource::Library {
                image: "debian.qcow2".into(),
                sha256: Some("ab".repeat(32)),
            },
        );
        let c = drive(3, DriveSource::Clone { drive: a.uuid });
        for d in [&a, &b, &c] {
            store.put_drive(d).await.unwrap();
        }
        assert_eq!(
            store.drives().await.unwrap(),
            vec![a.clone(), b.clone(), c.clone()]
        );
        // A change rewrites what may change; the owner and source stay.
        let mut a2 = a.clone();
        a2.status = DriveStatus::Failed;
        a2.error = Some("no space".into());
        a2.size = 2 << 30;
        a2.name = "renamed".into();
        store.put_drive(&a2).await.unwrap();
        store.delete_drive(&b.uuid).await.unwrap();
        assert_eq!(store.drives().await.unwrap(), vec![a2, c.clone()]);
        // A server's drives are stored with it.
        store.seed_accounts(&["acme".into()], &[], 0).await.unwrap();
        let mut s = crate::store::testing::sample_server("acme");
        s.drives = vec![backfill_shared::DriveAttachment {
            drive: c.uuid,
            boot_order: Some(1),
            dev_channel: "0:0".into(),
            device: backfill_shared::drive::DriveDevice::Ide,
            media: Media::Cdrom,
        }];
        store
            .insert_servers(std::slice::from_ref(&s))
            .await
            .unwrap();
        let back = store.servers().await.unwrap();
        assert_eq!(back[0].drives, s.drives);
        s.drives.clear();
        testing::commit(&store, &[s.clone()], &[], &[], &[])
            .await
            .unwrap();
        assert!(store.servers().await.unwrap()[0].drives.is_empty());
        // Storage usage: rows of class drive, and the drive's metered_until moves with them.
        let u = DriveUsage {
            drive: c.uuid,
            account: "acme".into(),
            name: "d3".into(),
            start: 0,
            end: 3_600,
            size: 2 << 30,
            price: 100,
        };
        store.meter_drives(&[u]).await.unwrap();
        let d = store.drives().await.unwrap();
        assert_eq!(
            d.iter().find(|d| d.uuid == c.uuid).unwrap().metered_until,
            Some(3_600)
        );
        let rows = store
            .usage(&crate::domain::usage::UsageFilter {
                account: Some("acme".into()),
                start: 0,
                end: 3_600,
            })
            .await
            .unwrap();
        let row = rows
            .iter()
            .find(|r| r.server == c.uuid.to_string())
            .unwrap();
        assert_eq!(
            (row.class.as_str(), row.mem_byte_seconds),
            ("drive", (2u64 << 30) * 3_600)
        );
        assert_eq!(
            row.amount_micro, 200,
            "2 GiB for an hour at 100 per GiB-hour"
        );
    }
}
