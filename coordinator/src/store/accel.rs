//! Device profiles and accelerator requests (ARQs).

use super::StoreError;
use crate::domain::accel::{Arq, ArqState, DeviceProfile};

fn corrupt(table: &'static str, key: &str, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        key: key.to_owned(),
        reason: reason.to_string(),
    }
}

fn json<T: serde::Serialize>(table: &'static str, key: &str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| corrupt(table, key, e))
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

        fn profile_from_row(r: &DbRow) -> Result<DeviceProfile, StoreError> {
            let uuid: String = r.try_get("uuid")?;
            let groups: String = r.try_get("groups")?;
            Ok(DeviceProfile {
                name: r.try_get("name")?,
                description: r.try_get("description")?,
                groups: serde_json::from_str(&groups).map_err(|e| corrupt("device_profiles", &uuid, e))?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
                uuid,
            })
        }

        fn arq_from_row(r: &DbRow) -> Result<Arq, StoreError> {
            let uuid: String = r.try_get("uuid")?;
            let state: String = r.try_get("state")?;
            let group: i64 = r.try_get("device_profile_group_id")?;
            let info: String = r.try_get("attach_handle_info")?;
            Ok(Arq {
                owner: r.try_get("owner")?,
                state: ArqState::parse(&state)
                    .ok_or_else(|| corrupt("arqs", &uuid, format!("state {state:?}")))?,
                device_profile_name: r.try_get("device_profile_name")?,
                device_profile_group_id: u32::try_from(group).map_err(|e| corrupt("arqs", &uuid, e))?,
                hostname: r.try_get("hostname")?,
                device_rp_uuid: r.try_get("device_rp_uuid")?,
                instance_uuid: r.try_get("instance_uuid")?,
                project_id: r.try_get("project_id")?,
                attach_handle_type: r.try_get("attach_handle_type")?,
                attach_handle_uuid: r.try_get("attach_handle_uuid")?,
                attach_handle_info: serde_json::from_str(&info).map_err(|e| corrupt("arqs", &uuid, e))?,
                server: r.try_get("server")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
                uuid,
            })
        }

        /// The ARQ columns, for static SQL strings.
        macro_rules! arq_columns {
            () => {
                "uuid, owner, state, device_profile_name, device_profile_group_id, hostname, \
                 device_rp_uuid, instance_uuid, project_id, attach_handle_type, attach_handle_uuid, \
                 attach_handle_info, server, created_at, updated_at"
            };
        }

        /// ARQ inserts and changes inside a transaction another write owns.
        pub(in crate::store) async fn put_arqs_in(
            tx: &mut sqlx::Transaction<'static, $DB>,
            new: &[Arq],
            changed: &[Arq],
        ) -> Result<(), StoreError> {
            for a in new {
                q(concat!(
                    "INSERT INTO arqs (",
                    arq_columns!(),
                    ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ))
                .bind(&a.uuid)
                .bind(&a.owner)
                .bind(a.state.as_str())
                .bind(&a.device_profile_name)
                .bind(i64::from(a.device_profile_group_id))
                .bind(a.hostname.as_deref())
                .bind(a.device_rp_uuid.as_deref())
                .bind(a.instance_uuid.as_deref())
                .bind(a.project_id.as_deref())
                .bind(&a.attach_handle_type)
                .bind(a.attach_handle_uuid.as_deref())
                .bind(json("arqs", &a.uuid, &a.attach_handle_info)?)
                .bind(a.server.as_deref())
                .bind(a.created_at)
                .bind(a.updated_at)
                .execute(&mut **tx)
                .await?;
            }
            for a in changed {
                q(
                    "UPDATE arqs SET state = ?, hostname = ?, device_rp_uuid = ?, instance_uuid = ?,
                         project_id = ?, attach_handle_type = ?, attach_handle_uuid = ?,
                         attach_handle_info = ?, updated_at = ?
                     WHERE uuid = ?",
                )
                .bind(a.state.as_str())
                .bind(a.hostname.as_deref())
                .bind(a.device_rp_uuid.as_deref())
                .bind(a.instance_uuid.as_deref())
                .bind(a.project_id.as_deref())
                .bind(&a.attach_handle_type)
                .bind(a.attach_handle_uuid.as_deref())
                .bind(json("arqs", &a.uuid, &a.attach_handle_info)?)
                .bind(a.updated_at)
                .bind(&a.uuid)
                .execute(&mut **tx)
                .await?;
            }
            Ok(())
        }

        pub(in crate::store) async fn delete_arqs_in(
            tx: &mut sqlx::Transaction<'static, $DB>,
            uuids: &[String],
        ) -> Result<(), StoreError> {
            for u in uuids {
                q("DELETE FROM arqs WHERE uuid = ?")
                    .bind(u)
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(())
        }

        /// A new device profile inside a transaction another write owns (its name is
        /// known free: the model checked).
        pub(in crate::store) async fn insert_profile_in(
            tx: &mut sqlx::Transaction<'static, $DB>,
            p: &DeviceProfile,
        ) -> Result<(), StoreError> {
            q(
                "INSERT INTO device_profiles (uuid, name, description, groups, created_at, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&p.uuid)
            .bind(&p.name)
            .bind(&p.description)
            .bind(json("device_profiles", &p.uuid, &p.groups)?)
            .bind(p.created_at)
            .bind(p.updated_at)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        pub(in crate::store) async fn delete_profile_in(
            tx: &mut sqlx::Transaction<'static, $DB>,
            uuid: &str,
        ) -> Result<(), StoreError> {
            q("DELETE FROM device_profiles WHERE uuid = ?")
                .bind(uuid)
                .execute(&mut **tx)
                .await?;
            Ok(())
        }

        impl $Store {
            /// Inserts a profile; `false` when its name is taken.
            pub async fn insert_profile(&self, p: &DeviceProfile) -> Result<bool, StoreError> {
                let done = q(
                    "INSERT INTO device_profiles (uuid, name, description, groups, created_at, updated_at)
                     VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO NOTHING",
                )
                .bind(&p.uuid)
                .bind(&p.name)
                .bind(&p.description)
                .bind(json("device_profiles", &p.uuid, &p.groups)?)
                .bind(p.created_at)
                .bind(p.updated_at)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            pub async fn profiles(&self) -> Result<Vec<DeviceProfile>, StoreError> {
                let rows = q(
                    "SELECT uuid, name, description, groups, created_at, updated_at
                     FROM device_profiles ORDER BY created_at, name",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(profile_from_row).collect()
            }

            /// Deletes profiles by uuid, in one transaction, refusing (nothing deleted) when one is
            /// used by an ARQ or a server: returns the name of the first such profile.
            pub async fn delete_profiles(
                &self,
                profiles: &[DeviceProfile],
            ) -> Result<Option<String>, StoreError> {
                let mut tx = self.begin_write().await?;
                for p in profiles {
                    let arqs: i64 =
                        q("SELECT COUNT(*) AS n FROM arqs WHERE device_profile_name = ?")
                            .bind(&p.name)
                            .fetch_one(&mut *tx)
                            .await?
                            .try_get("n")?;
                    let quoted = json("device_profiles", &p.uuid, &p.name)?
                        .replace('\\', "\\\\")
                        .replace('%', "\\%")
                        .replace('_', "\\_");
                    let pattern = format!("%\"device_profile\":{quoted}%");
                    let servers: i64 = q(
                        "SELECT COUNT(*) AS n FROM servers WHERE gpu_request LIKE ? ESCAPE '\\'",
                    )
                    .bind(pattern)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
                    if arqs > 0 || servers > 0 {
                        return Ok(Some(p.name.clone()));
                    }
                    q("DELETE FROM device_profiles WHERE uuid = ?")
                        .bind(&p.uuid)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(None)
            }

            /// Inserts new ARQs and writes changed ones, in one transaction.
            pub async fn put_arqs(&self, new: &[Arq], changed: &[Arq]) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                put_arqs_in(&mut tx, new, changed).await?;
                tx.commit().await?;
                Ok(())
            }


            pub async fn delete_arqs(&self, uuids: &[String]) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                delete_arqs_in(&mut tx, uuids).await?;
                tx.commit().await?;
                Ok(())
            }

            /// Every ARQ, oldest first (the API filters; the table stays small: one row per device
            /// asked for).
            pub async fn arqs(&self) -> Result<Vec<Arq>, StoreError> {
                let rows = q(concat!(
                    "SELECT ",
                    arq_columns!(),
                    " FROM arqs ORDER BY created_at, uuid"
                ))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(arq_from_row).collect()
            }

            pub async fn arqs_of_server(&self, server: &str) -> Result<Vec<Arq>, StoreError> {
                let rows = q(concat!(
                    "SELECT ",
                    arq_columns!(),
                    " FROM arqs WHERE server = ? ORDER BY device_profile_group_id, uuid"
                ))
                .bind(server)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(arq_from_row).collect()
            }
        }
        }
    };
}

backend!(sqlite, SqliteStore, sqlx::Sqlite);
backend!(postgres, PgStore, sqlx::Postgres);
