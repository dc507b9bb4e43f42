//! Quotas: what an account holds, checked at create, resize and start.

use crate::domain::account::Account;
use crate::state::coordinator::{NewServer, OpError};
use crate::state::model::Model;

pub use crate::state::server_index::InUse;

/// What `account` holds now: its servers (kept by the model's index as they change) and the
/// bytes of its drives.
pub fn in_use(model: &Model, account: &str) -> InUse {
    let mut u = model.index().in_use(account);
    u.storage = model.drives.of_owner(account).map_or(0, |o| o.bytes());
    u
}

/// The GPUs a server asks for.
pub fn gpus_of(r: Option<&crate::domain::server::GpuRequest>) -> u64 {
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
    s: &crate::domain::server::ServerRecord,
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
