//! Accounts (the operator's), quotas (checked at create and start) and usage.

use crate::coordinator::{Coordinator, NewServer, OpError};
use crate::model::Model;
use crate::store::{Account, AccountChange, Quota, UsageFilter, UsageRow, usage_charge};

pub use crate::server_index::InUse;

/// What `account` holds now: its servers (kept by the model's index as they change) and the
/// bytes of its drives.
pub fn in_use(model: &Model, account: &str) -> InUse {
    let mut u = model.index().in_use(account);
    u.storage = model
        .drives
        .values()
        .filter(|d| d.owner == account)
        .fold(0, |n: u64, d| n.saturating_add(d.size));
    u
}

/// The GPUs a server asks for.
pub fn gpus_of(r: Option<&crate::store::GpuRequest>) -> u64 {
    r.map_or(0, |g| u64::from(g.count))
}

fn over(what: &str, want: u64, limit: Option<u64>, unit: &str) -> Result<(), OpError> {
    match limit {
        Some(l) if want > l => Err(OpError::Quota(format!(
            "{what} would be {want}{unit}, over the account's quota of {l}{unit}"
        ))),
        _ => Ok(()),
    }
}

/// Creating `new` servers: the number of servers, and each server's own size.
pub fn check_create(model: &Model, account: &Account, new: &[NewServer]) -> Result<(), OpError> {
    let u = in_use(model, &account.name);
    let q = account.quota;
    over(
        "the number of servers",
        u.servers.saturating_add(new.len() as u64),
        q.servers,
        "",
    )?;
    for n in new {
        check_size(account, n.cpu, n.mem)?;
        over(
            "this server's GPUs",
            gpus_of(n.gpu_request.as_ref()),
            account.quota.gpus,
            "",
        )?;
    }
    Ok(())
}

/// One server's own size against the quota (it could never start otherwise).
pub fn check_size(account: &Account, cpu: u64, mem: u64) -> Result<(), OpError> {
    over("this server's CPU", cpu, account.quota.cpu, " MHz")?;
    over("this server's memory", mem, account.quota.mem, " bytes")
}

/// Starting `s` on top of what the account holds: CPU, memory and GPUs.
pub fn check_start(
    model: &Model,
    account: &Account,
    s: &crate::store::ServerRecord,
) -> Result<(), OpError> {
    let u = in_use(model, &account.name);
    let q = account.quota;
    over("CPU in use", u.cpu.saturating_add(s.cpu), q.cpu, " MHz")?;
    over(
        "memory in use",
        u.mem.saturating_add(s.mem),
        q.mem,
        " bytes",
    )?;
    over(
        "GPUs in use",
        u.gpus.saturating_add(gpus_of(s.gpu_request.as_ref())),
        q.gpus,
        "",
    )
}

impl Coordinator {
    /// The caller's account. Accounts are created by the operator; an unknown name is refused.
    pub async fn account(&self, name: &str) -> Result<Account, OpError> {
        self.store
            .account(name)
            .await?
            .ok_or_else(|| OpError::NoAccount(name.to_owned()))
    }

    pub async fn accounts(&self) -> Result<Vec<(Account, InUse)>, OpError> {
        let list = self.store.accounts().await?;
        let model = self.lock_model().await;
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
        let u = in_use(&*self.lock_model().await, name);
        Ok((a, u))
    }

    pub async fn create_account(
        &self,
        name: &str,
        backfill: bool,
        quota: Quota,
    ) -> Result<Account, OpError> {
        self.store
            .create_account(name, backfill, quota, self.clock.now())
            .await?
            .ok_or_else(|| OpError::Exists(format!("account {name:?} exists already")))
    }

    pub async fn update_account(
        &self,
        name: &str,
        change: AccountChange,
    ) -> Result<Account, OpError> {
        self.store
            .update_account(name, change)
            .await?
            .ok_or_else(|| OpError::NoAccount(name.to_owned()))
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
        if !self.store.delete_account(name).await? {
            return Err(OpError::NoAccount(name.to_owned()));
        }
        Ok(())
    }

    /// Usage per server in `[start, end)`: what is stored, plus the running servers' open
    /// stretches since their last flush.
    pub async fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRow>, OpError> {
        let mut rows = self.store.usage(filter).await?;
        let now = self.clock.now();
        let model = self.lock_model().await;
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
