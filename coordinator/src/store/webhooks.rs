//! Webhooks, subscriptions, the event outbox and deliveries.

use super::StoreError;
use crate::domain::event::{Event, Filters, Subscription};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub uuid: String,
    pub owner: String,
    pub url: String,
    pub description: String,
    pub secret: String,
    pub created_at: i64,
}

/// One event for one receiver, and how its delivery goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub uuid: String,
    pub event_id: String,
    pub event_type: String,
    pub webhook: String,
    /// `pending`, `delivered` or `failed` (given up).
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: i64,
    pub last_attempt_at: Option<i64>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

/// A due delivery with what sending it needs.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub delivery: Delivery,
    pub url: String,
    pub secret: String,
    pub payload: String,
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub at: i64,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub delivered: bool,
    /// When to try again; `None` with `delivered == false` gives up.
    pub next_at: Option<i64>,
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

        pub(in crate::store) async fn insert_events(
            tx: &mut sqlx::Transaction<'_, $DB>,
            events: &[Event],
        ) -> Result<(), StoreError> {
            for e in events {
                q(
                    "INSERT INTO events (id, seq, account, type, server, payload, created_at)
                     VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM events), ?, ?, ?, ?, ?)",
                )
                .bind(&e.id)
                .bind(&e.account)
                .bind(e.kind)
                .bind(&e.server)
                .bind(e.payload.to_string())
                .bind(e.created_at)
                .execute(&mut **tx)
                .await?;
            }
            Ok(())
        }

        fn corrupt(table: &'static str, key: &str, reason: impl ToString) -> StoreError {
            StoreError::Corrupt {
                table,
                key: key.to_owned(),
                reason: reason.to_string(),
            }
        }

        fn webhook_from_row(r: &DbRow) -> Result<Webhook, StoreError> {
            Ok(Webhook {
                uuid: r.try_get("uuid")?,
                owner: r.try_get("owner")?,
                url: r.try_get("url")?,
                description: r.try_get("description")?,
                secret: r.try_get("secret")?,
                created_at: r.try_get("created_at")?,
            })
        }

        fn subscription_from_row(r: &DbRow) -> Result<Subscription, StoreError> {
            let uuid: String = r.try_get("uuid")?;
            let events: String = r.try_get("events")?;
            let filters: String = r.try_get("filters")?;
            Ok(Subscription {
                webhook: r.try_get("webhook")?,
                owner: r.try_get("owner")?,
                events: serde_json::from_str(&events).map_err(|e| corrupt("subscriptions", &uuid, e))?,
                filters: serde_json::from_str::<Filters>(&filters)
                    .map_err(|e| corrupt("subscriptions", &uuid, e))?,
                created_at: r.try_get("created_at")?,
                uuid,
            })
        }

        fn delivery_from_row(r: &DbRow) -> Result<Delivery, StoreError> {
            let attempts: i64 = r.try_get("attempts")?;
            let last_status: Option<i64> = r.try_get("last_status")?;
            Ok(Delivery {
                uuid: r.try_get("uuid")?,
                event_id: r.try_get("event_id")?,
                event_type: r.try_get("type")?,
                webhook: r.try_get("webhook")?,
                status: r.try_get("status")?,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                next_attempt_at: r.try_get("next_attempt_at")?,
                last_attempt_at: r.try_get("last_attempt_at")?,
                last_status: last_status.and_then(|s| u16::try_from(s).ok()),
                last_error: r.try_get("last_error")?,
                created_at: r.try_get("created_at")?,
                delivered_at: r.try_get("delivered_at")?,
            })
        }

        const DELIVERY_SELECT: &str = "SELECT d.uuid, d.event_id, e.type, d.webhook, d.status, d.attempts,
            d.next_attempt_at, d.last_attempt_at, d.last_status, d.last_error, d.created_at,
            d.delivered_at, w.url, w.secret, e.payload
            FROM deliveries d JOIN events e ON e.id = d.event_id JOIN webhooks w ON w.uuid = d.webhook";

        impl $Store {
            pub async fn insert_webhook(&self, w: &Webhook) -> Result<(), StoreError> {
                q(
                    "INSERT INTO webhooks (uuid, owner, url, description, secret, created_at)
                     VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(&w.uuid)
                .bind(&w.owner)
                .bind(&w.url)
                .bind(&w.description)
                .bind(&w.secret)
                .bind(w.created_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            pub async fn webhooks_of(&self, owner: &str) -> Result<Vec<Webhook>, StoreError> {
                let rows = q(
                    "SELECT uuid, owner, url, description, secret, created_at FROM webhooks
                     WHERE owner = ? ORDER BY created_at, uuid",
                )
                .bind(owner)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(webhook_from_row).collect()
            }

            /// Deletes a webhook with its subscriptions and deliveries.
            pub async fn delete_webhook(&self, uuid: &str) -> Result<(), StoreError> {
                q("DELETE FROM webhooks WHERE uuid = ?")
                    .bind(uuid)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            pub async fn insert_subscription(&self, s: &Subscription) -> Result<(), StoreError> {
                q(
                    "INSERT INTO subscriptions (uuid, webhook, events, filters, created_at)
                     VALUES (?, ?, ?, ?, ?)",
                )
                .bind(&s.uuid)
                .bind(&s.webhook)
                .bind(serde_json::to_string(&s.events).map_err(|e| corrupt("subscriptions", &s.uuid, e))?)
                .bind(serde_json::to_string(&s.filters).map_err(|e| corrupt("subscriptions", &s.uuid, e))?)
                .bind(s.created_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            /// Every subscription with its webhook's owner.
            pub async fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
                let rows = q(
                    "SELECT s.uuid, s.webhook, w.owner, s.events, s.filters, s.created_at
                     FROM subscriptions s JOIN webhooks w ON w.uuid = s.webhook
                     ORDER BY s.created_at, s.uuid",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(subscription_from_row).collect()
            }

            pub async fn delete_subscription(&self, uuid: &str) -> Result<(), StoreError> {
                q("DELETE FROM subscriptions WHERE uuid = ?")
                    .bind(uuid)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            /// Events not yet fanned out to deliveries, oldest first.
            pub async fn unfanned_events(&self, limit: u32) -> Result<Vec<Event>, StoreError> {
                let rows = q(
                    "SELECT id, account, type, server, payload, created_at FROM events
                     WHERE fanned = FALSE ORDER BY seq LIMIT ?",
                )
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let id: String = r.try_get("id")?;
                        let kind: String = r.try_get("type")?;
                        let payload: String = r.try_get("payload")?;
                        Ok(Event {
                            kind: crate::domain::event::TYPES
                                .iter()
                                .find(|t| **t == kind)
                                .copied()
                                .ok_or_else(|| corrupt("events", &id, format!("type {kind:?}")))?,
                            account: r.try_get("account")?,
                            server: r.try_get("server")?,
                            payload: serde_json::from_str(&payload)
                                .map_err(|e| corrupt("events", &id, e))?,
                            created_at: r.try_get("created_at")?,
                            id,
                        })
                    })
                    .collect()
            }

            /// One delivery per (event, webhook), and the event marked fanned out, in one transaction:
            /// run twice, it makes no second delivery.
            pub async fn fan_out(
                &self,
                event: &str,
                webhooks: &[String],
                now: i64,
            ) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                for w in webhooks {
                    q(
                        "INSERT INTO deliveries (uuid, event_id, webhook, status, next_attempt_at, created_at)
                         VALUES (?, ?, ?, 'pending', ?, ?) ON CONFLICT(event_id, webhook) DO NOTHING",
                    )
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(event)
                    .bind(w)
                    .bind(now)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                q("UPDATE events SET fanned = TRUE WHERE id = ?")
                    .bind(event)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            /// Pending deliveries due at `now`, oldest first.
            pub async fn due_deliveries(&self, now: i64, limit: u32) -> Result<Vec<Outgoing>, StoreError> {
                let rows = q(format!(
                    "{DELIVERY_SELECT} WHERE d.status = 'pending' AND d.next_attempt_at <= ?
                     ORDER BY d.next_attempt_at, d.created_at LIMIT ?"
                ))
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(Outgoing {
                            delivery: delivery_from_row(r)?,
                            url: r.try_get("url")?,
                            secret: r.try_get("secret")?,
                            payload: r.try_get("payload")?,
                        })
                    })
                    .collect()
            }

            pub async fn record_attempt(&self, delivery: &str, a: &Attempt) -> Result<(), StoreError> {
                let status = if a.delivered {
                    "delivered"
                } else if a.next_at.is_some() {
                    "pending"
                } else {
                    "failed"
                };
                q(
                    "UPDATE deliveries SET status = ?, attempts = attempts + 1, last_attempt_at = ?,
                         last_status = ?, last_error = ?, next_attempt_at = COALESCE(?, next_attempt_at),
                         delivered_at = CASE WHEN ? THEN ? ELSE delivered_at END
                     WHERE uuid = ?",
                )
                .bind(status)
                .bind(a.at)
                .bind(a.status.map(i64::from))
                .bind(a.error.as_deref())
                .bind(a.next_at)
                .bind(a.delivered)
                .bind(a.at)
                .bind(delivery)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            /// A webhook's deliveries, newest first.
            pub async fn deliveries_of(
                &self,
                webhook: &str,
                limit: u32,
            ) -> Result<Vec<Delivery>, StoreError> {
                let rows = q(format!(
                    "{DELIVERY_SELECT} WHERE d.webhook = ? ORDER BY d.created_at DESC, d.uuid LIMIT ?"
                ))
                .bind(webhook)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(delivery_from_row).collect()
            }

            /// Forgets finished deliveries created before `before`, and events older than that which
            /// no delivery needs any more. Returns how many rows went.
            pub async fn prune_outbox(&self, before: i64) -> Result<u64, StoreError> {
                let mut tx = self.begin_write().await?;
                let d = q("DELETE FROM deliveries WHERE status != 'pending' AND created_at < ?")
                    .bind(before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let e = q(
                    "DELETE FROM events WHERE fanned = TRUE AND created_at < ?
                     AND NOT EXISTS (SELECT 1 FROM deliveries WHERE deliveries.event_id = events.id)",
                )
                .bind(before)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                Ok(d + e)
            }

            /// Sends a delivery again: pending, due now (its attempts are kept).
            pub async fn redeliver(&self, delivery: &str, now: i64) -> Result<(), StoreError> {
                q("UPDATE deliveries SET status = 'pending', next_attempt_at = ? WHERE uuid = ?")
                    .bind(now)
                    .bind(delivery)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }
        }
    };
}

backend!(sqlite, SqliteStore, sqlx::Sqlite);
backend!(postgres, PgStore, sqlx::Postgres);
