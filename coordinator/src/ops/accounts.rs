//! Accounts (the operator's), quotas and usage: the operations over them.

use crate::domain::account::{Account, AccountChange, Quota};
use crate::domain::usage::{UsageFilter, UsageRow, usage_charge};
use crate::state::coordinator::{Coordinator, OpError};
use crate::state::quota::{InUse, in_use};

impl Coordinator {
    /// The caller's account. Accounts are created by the operator; an unknown name is refused.
    /// Served from memory once read (`crate::state::account_cache`): a request does not wait
    /// for a store connection.
    pub async fn account(&self, name: &str) -> Result<Account, OpError> {
        if let Some(a) = self.accounts.get(name) {
            return Ok(a);
        }
        let generation = self.accounts.generation();
        let a = self
            .store
            .account(name)
            .await?
            .ok_or_else(|| OpError::NoAccount(name.to_owned()))?;
        self.accounts.fill(&a, generation);
        Ok(a)
    }

    pub async fn accounts(&self) -> Result<Vec<(Account, InUse)>, OpError> {
        let list = self.store.accounts().await?;
        let model = self.read_model().await;
        Ok(list
            .into_iter()
            .map(|a| {
                let u = in_use(&model, &a.name);
                (a, u)
            })
            .collect())
    }

    pub async fn account_in_use(&self, name: &str) -> Result<(Account, InUse), OpError> {
        let a = self.account(name).await?;
        let u = in_use(&*self.read_model().await, name);
        Ok((a, u))
    }

    pub async fn create_account(
        &self,
        name: &str,
        backfill: bool,
        quota: Quota,
    ) -> Result<Account, OpError> {
        let created = self
            .store
            .create_account(name, backfill, quota, self.clock.now())
            .await;
        self.accounts.invalidate(name);
        created?.ok_or_else(|| OpError::Exists(format!("account {name:?} exists already")))
    }

    pub async fn update_account(
        &self,
        name: &str,
        change: AccountChange,
    ) -> Result<Account, OpError> {
        let updated = self.store.update_account(name, change).await;
        self.accounts.invalidate(name);
        updated?.ok_or_else(|| OpError::NoAccount(name.to_owned()))
    }

    /// Deletes an account that owns no servers.
    pub async fn delete_account(&self, name: &str) -> Result<(), OpError> {
        let model = self.lock_model().await;
        let owned = in_use(&model, name).servers;
        if owned > 0 {
            return Err(OpError::Conflict(format!(
                "account {name:?} still owns {owned} servers; delete them first"
            )));
        }
        let deleted = self.store.delete_account(name).await;
        self.accounts.invalidate(name);
        if !deleted? {
            return Err(OpError::NoAccount(name.to_owned()));
        }
        Ok(())
    }

    /// Usage per server in `[start, end)`: what is stored, plus the running servers' open
    /// stretches since their last flush.
    pub async fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRow>, OpError> {
        let mut rows = self.store.usage(filter).await?;
        let now = self.clock.now();
        let model = self.read_model().await;
        let open = model.servers.values().filter(|s| {
            filter.account.as_ref().is_none_or(|a| *a == s.owner) && s.metered_until.is_some()
        });
        for s in open {
            let from = s.metered_until.unwrap_or(now).max(filter.start);
            let to = now.min(filter.end);
            if to <= from {
                continue;
            }
            let c = usage_charge(
                s.cpu,
                s.mem,
                s.metered_perf,
                self.billing.prices(s.class),
                to - from,
            );
            let id = s.uuid.to_string();
            match rows.iter_mut().find(|r| r.server == id) {
                Some(r) => r.add(&c),
                None => {
                    let mut r = UsageRow {
                        server: id,
                        account: s.owner.clone(),
                        name: s.name.clone(),
                        class: s.class.as_str().to_owned(),
                        ..UsageRow::default()
                    };
                    r.add(&c);
                    rows.push(r);
                }
            }
        }
        Ok(rows)
    }
}
