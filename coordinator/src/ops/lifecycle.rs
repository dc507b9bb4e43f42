//! CloudSigma's `shutdown` (ACPI-like: the workload is asked to stop, repeatedly, for a grace
//! period, and the server returns to `running` if it did not) and `restart` (a fresh run on the
//! same host).

use crate::domain::account::Account;
use crate::domain::server::ServerRecord;
use crate::state::coordinator::{Coordinator, OpError, Scope, visible};
use crate::state::model::Model;
use backfill_shared::{HostId, ServerId, ServerStatus};
use tokio::sync::RwLockWriteGuard;

fn connected(model: &Model, s: &ServerRecord) -> bool {
    s.host
        .as_ref()
        .and_then(|h| model.hosts.get(h))
        .is_some_and(|h| h.session.is_some())
}

impl Coordinator {
    /// `shutdown`: a running server is `stopping` while its agent sends the workload SIGTERM
    /// (once a second) until the grace period ends; it is `stopped` if the workload exits, and
    /// `running` again if it does not. Anything not running stops as with `stop`.
    pub async fn shutdown(
        &self,
        owner: &Account,
        scope: Scope,
        id: ServerId,
    ) -> Result<ServerRecord, OpError> {
        let mut model = self.lock_model().await;
        let current = visible(&model, owner, scope, id)?.clone();
        match current.status {
            ServerStatus::Stopped | ServerStatus::Stopping => return Ok(current),
            ServerStatus::Running if connected(&model, &current) => {}
            _ => {
                drop(model);
                return self.stop(owner, scope, id).await;
            }
        }
        let mut next = current;
        next.status = ServerStatus::Stopping;
        next.shutdown_until = Some(self.clock.now() + self.settings.shutdown_grace_s);
        let hosts: Vec<HostId> = next.host.iter().cloned().collect();
        tracing::info!(server = %id, until = next.shutdown_until, "graceful shutdown");
        let durable = self.commit(&mut model, vec![next.clone()], &hosts).await?;
        drop(model);
        durable.wait().await?;
        Ok(next)
    }

    /// `restart`: the workload is stopped and started afresh on the same host, with the same
    /// resources (a new run: the agent sees a new incarnation).
    pub async fn restart(
        &self,
        owner: &Account,
        scope: Scope,
        id: ServerId,
    ) -> Result<ServerRecord, OpError> {
        let mut model = self.lock_model().await;
        let current = visible(&model, owner, scope, id)?.clone();
        let Some(host) = current.host.clone().filter(|_| {
            current.status == ServerStatus::Running && current.shutdown_until.is_none()
        }) else {
            return Err(OpError::InvalidState {
                id,
                status: current.status.as_str(),
                what: "only a running server can be restarted",
            });
        };
        let mut next = current;
        next.incarnation = model.generation(&host).saturating_add(1);
        next.status = ServerStatus::Starting;
        next.active_since = None;
        tracing::info!(server = %id, host = %host, "restart");
        let durable = self.commit(&mut model, vec![next.clone()], &[host]).await?;
        drop(model);
        durable.wait().await?;
        Ok(next)
    }

    /// Graceful shutdowns whose grace period ended with the workload still there.
    pub(crate) async fn expire_shutdowns(
        &self,
        model: &mut RwLockWriteGuard<'_, Model>,
        now: i64,
        writes: &mut Vec<crate::state::committer::Durable>,
    ) -> Result<(), OpError> {
        let expired: Vec<ServerRecord> = model
            .servers
            .values()
            .filter(|s| s.shutdown_until.is_some_and(|t| t <= now))
            .cloned()
            .collect();
        for mut s in expired {
            tracing::info!(server = %s.uuid, "the workload did not stop within the grace period; running again");
            s.shutdown_until = None;
            if s.status == ServerStatus::Stopping {
                s.status = ServerStatus::Running;
            }
            let hosts: Vec<HostId> = s.host.iter().cloned().collect();
            writes.push(self.commit(model, vec![s], &hosts).await?);
        }
        Ok(())
    }
}

impl Coordinator {
    /// Every server placed on `hosts` is stopped now, saying `reason`: dev mode's exit, which
    /// stops those hosts' workloads. Their metering ends now, so nothing is billed while they
    /// are down, and the store agrees with what runs. Returns how many were stopped.
    /// `host` and the hosts of pool `pool` (dev mode's own agents).
    pub async fn hosts_in_pool_or(&self, host: &HostId, pool: &str) -> Vec<HostId> {
        let model = self.lock_model().await;
        model
            .hosts
            .iter()
            .filter(|(id, h)| *id == host || h.record.pool.as_deref() == Some(pool))
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub async fn stop_for_exit(&self, hosts: &[HostId], reason: &str) -> Result<usize, OpError> {
        let mut model = self.lock_model().await;
        let stopped: Vec<ServerRecord> = model
            .servers
            .values()
            .filter(|s| s.host.as_ref().is_some_and(|h| hosts.contains(h)))
            .filter(|s| s.status != ServerStatus::Stopped)
            .map(|s| {
                let mut n = s.clone();
                n.status = ServerStatus::Stopped;
                n.stop_reason = Some(reason.to_owned());
                n.host = None;
                n.gpus = Vec::new();
                n.active_since = None;
                n.termination = None;
                n.shutdown_until = None;
                n.perf_factor = backfill_shared::PerfFactor::FULL;
                n
            })
            .collect();
        let count = stopped.len();
        if count > 0 {
            tracing::info!(servers = count, %reason, "servers stopped");
            let durable = self.commit(&mut model, stopped, hosts).await?;
            drop(model);
            durable.wait().await?;
        }
        Ok(count)
    }
}
