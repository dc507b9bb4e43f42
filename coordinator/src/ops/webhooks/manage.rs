//! Tenants' webhooks and subscriptions, always scoped to the caller's account: another
//! account's webhook is "not found".

use super::delivery::check_url;
use crate::domain::account::Account;
use crate::domain::event::{Filters, Subscription, TYPES, new_secret};
use crate::state::coordinator::Coordinator;
use crate::store::{Delivery, StoreError, Webhook};

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{0} does not exist")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: &'static str, message: impl Into<String>) -> WebhookError {
    WebhookError::Invalid {
        field,
        message: message.into(),
    }
}

impl Coordinator {
    /// Registers a receiver; the returned webhook holds its signing secret (shown once).
    pub async fn create_webhook(
        &self,
        owner: &Account,
        url: &str,
        description: &str,
    ) -> Result<Webhook, WebhookError> {
        check_url(url, &self.webhooks).map_err(|m| invalid("url", m))?;
        if description.chars().count() > 255 {
            return Err(invalid("description", "at most 255 characters"));
        }
        // The per-account count and the insert are serialized by a lock of their own:
        // webhooks are not model state, and nothing that reads takes this lock.
        let _serial = self.webhook_writes.lock().await;
        let have = self.store.webhooks_of(&owner.name).await?.len();
        if have >= usize::try_from(self.webhooks.max_per_account).unwrap_or(usize::MAX) {
            return Err(invalid(
                "url",
                format!("the account has {have} webhooks, the most it may have; delete one first"),
            ));
        }
        let w = Webhook {
            uuid: uuid::Uuid::new_v4().to_string(),
            owner: owner.name.clone(),
            url: url.to_owned(),
            description: description.to_owned(),
            secret: new_secret(),
            created_at: self.clock.now(),
        };
        self.store.insert_webhook(&w).await?;
        tracing::info!(webhook = %w.uuid, account = %owner.name, url = %w.url, "webhook registered");
        Ok(w)
    }

    pub async fn webhooks_of(&self, owner: &Account) -> Result<Vec<Webhook>, WebhookError> {
        Ok(self.store.webhooks_of(&owner.name).await?)
    }

    pub async fn webhook(&self, owner: &Account, uuid: &str) -> Result<Webhook, WebhookError> {
        self.store
            .webhooks_of(&owner.name)
            .await?
            .into_iter()
            .find(|w| w.uuid == uuid)
            .ok_or_else(|| WebhookError::NotFound(format!("webhook {uuid}")))
    }

    pub async fn delete_webhook(&self, owner: &Account, uuid: &str) -> Result<(), WebhookError> {
        let w = self.webhook(owner, uuid).await?;
        self.store.delete_webhook(&w.uuid).await?;
        Ok(())
    }

    pub async fn subscriptions_of(
        &self,
        owner: &Account,
        webhook: &str,
    ) -> Result<Vec<Subscription>, WebhookError> {
        let w = self.webhook(owner, webhook).await?;
        Ok(self
            .store
            .subscriptions()
            .await?
            .into_iter()
            .filter(|s| s.webhook == w.uuid)
            .collect())
    }

    pub async fn subscribe(
        &self,
        owner: &Account,
        webhook: &str,
        events: Vec<String>,
        filters: Filters,
    ) -> Result<Subscription, WebhookError> {
        let w = self.webhook(owner, webhook).await?;
        if events.is_empty() {
            return Err(invalid("events", "name at least one event type"));
        }
        if let Some(e) = events.iter().find(|e| !TYPES.contains(&e.as_str())) {
            return Err(invalid(
                "events",
                format!("unknown event type {e:?}; types: {}", TYPES.join(", ")),
            ));
        }
        filters.validate().map_err(|m| invalid("filters", m))?;
        let s = Subscription {
            uuid: uuid::Uuid::new_v4().to_string(),
            webhook: w.uuid,
            owner: owner.name.clone(),
            events,
            filters,
            created_at: self.clock.now(),
        };
        self.store.insert_subscription(&s).await?;
        Ok(s)
    }

    pub async fn unsubscribe(
        &self,
        owner: &Account,
        webhook: &str,
        subscription: &str,
    ) -> Result<(), WebhookError> {
        let found = self
            .subscriptions_of(owner, webhook)
            .await?
            .into_iter()
            .any(|s| s.uuid == subscription);
        if !found {
            return Err(WebhookError::NotFound(format!(
                "subscription {subscription}"
            )));
        }
        self.store.delete_subscription(subscription).await?;
        Ok(())
    }

    /// A webhook's recent deliveries, newest first.
    pub async fn deliveries(
        &self,
        owner: &Account,
        webhook: &str,
        limit: u32,
    ) -> Result<Vec<Delivery>, WebhookError> {
        let w = self.webhook(owner, webhook).await?;
        Ok(self.store.deliveries_of(&w.uuid, limit).await?)
    }

    /// Sends a delivery again now (whatever its status).
    pub async fn redeliver(
        &self,
        owner: &Account,
        webhook: &str,
        delivery: &str,
    ) -> Result<(), WebhookError> {
        let found = self
            .deliveries(owner, webhook, 10_000)
            .await?
            .into_iter()
            .any(|d| d.uuid == delivery);
        if !found {
            return Err(WebhookError::NotFound(format!("delivery {delivery}")));
        }
        self.store.redeliver(delivery, self.clock.now()).await?;
        self.events_ready.notify_one();
        Ok(())
    }
}
