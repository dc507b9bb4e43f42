//! Auto mode's thin executor: gathers the inputs of [`crate::policy::autoscale::decide`] from the live
//! model and carries its decisions out through the same operations operators use, recorded in
//! the audit log as the actor `auto-mode`.

use crate::domain::server::{holds_resources, is_queued};
use crate::policy::autoscale::{
    self, AutoSettings, Decision, HostState, LaunchState, Pending, PoolState,
};
use crate::state::coordinator::Coordinator;
use crate::state::model::Model;
use backfill_shared::{IdleBehavior, Resources, ServerClass, WorkerState};

pub const ACTOR: &str = "auto-mode";

impl Coordinator {
    fn auto_inputs(&self, model: &Model) -> (Vec<PoolState>, Vec<Pending>) {
        let pools = self
            .pools
            .all()
            .iter()
            .map(|p| {
                let (min, max) = Self::limits(model, p);
                let members: Vec<_> = model
                    .hosts
                    .iter()
                    .filter(|(_, h)| h.record.pool.as_deref() == Some(p.name.as_str()))
                    .collect();
                let largest = members
                    .iter()
                    .map(|(_, h)| h.record.inventory.capacity())
                    .max_by_key(|c| (c.cpu_mhz, c.mem_bytes));
                let flavor = p.flavor.as_deref().and_then(|f| model.flavors.get(f));
                let host_capacity = largest.or_else(|| {
                    flavor.map(|f| Resources {
                        cpu_mhz: f.cpu.unwrap_or(u64::MAX),
                        vcpus: f.vcpus,
                        mem_bytes: f.ram,
                    })
                });
                let hosts = members
                    .iter()
                    .map(|(id, h)| HostState {
                        id: id.to_string(),
                        idle_since: (h.session.is_some() && h.worker_state == WorkerState::Idle)
                            .then_some(h.state_since),
                        held: h.record.idle_behavior != IdleBehavior::Run,
                        shutdown: h.worker_state == WorkerState::Shutdown,
                        has_work: model.servers_on(id).any(|s| holds_resources(s.status)),
                    })
                    .collect();
                let launches = model
                    .launches
                    .values()
                    .filter(|l| l.pool == p.name)
                    .map(|l| LaunchState {
                        id: l.host.clone(),
                        launched_at: l.launched_at,
                    })
                    .collect();
                PoolState {
                    name: p.name.clone(),
                    min,
                    max,
                    priority: p.priority,
                    reservation_account: p.reservation_account.clone(),
                    reservation_queue: p.reservation_queue.as_deref().and_then(ServerClass::parse),
                    provisioner: p.provisioner.is_some(),
                    host_capacity,
                    hosts,
                    launches,
                }
            })
            .collect();
        // Waiting servers, in queue order; those for which room is already being made by
        // preemption are not demand.
        let mut queued: Vec<_> = model
            .servers
            .values()
            .filter(|s| is_queued(s))
            .filter(|s| {
                !s.queued_reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("making room"))
            })
            .collect();
        queued.sort_by_key(|s| (std::cmp::Reverse(s.priority), s.created_at, s.uuid));
        let pending = queued
            .into_iter()
            .map(|s| Pending {
                owner: s.owner.clone(),
                class: s.class,
                need: s.resources(),
            })
            .collect();
        (pools, pending)
    }

    /// Whether auto mode could launch a host for `s`: it is on, and a pool with a provisioner
    /// takes the server (reservation, host size) and may hold hosts at all (configured max).
    pub(crate) fn could_launch_for(
        &self,
        model: &Model,
        s: &crate::domain::server::ServerRecord,
    ) -> bool {
        if !model.auto_mode {
            return false;
        }
        let (pools, _) = self.auto_inputs(model);
        let job = Pending {
            owner: s.owner.clone(),
            class: s.class,
            need: s.resources(),
        };
        pools
            .iter()
            .zip(self.pools.all())
            .any(|(p, c)| c.provisioner.is_some() && c.max > 0 && autoscale::takes(p, &job))
    }

    /// One round of auto mode at `now` (nothing when it is off).
    pub async fn auto_round(&self, now: i64) {
        let (pools, pending) = {
            let model = self.lock_model().await;
            if !model.auto_mode {
                return;
            }
            self.auto_inputs(&model)
        };
        let settings = AutoSettings {
            max_idle_time_s: i64::try_from(self.operator.max_idle_time_s).unwrap_or(i64::MAX),
            max_launch_time_s: i64::try_from(self.operator.max_launch_time_s).unwrap_or(i64::MAX),
        };
        for d in autoscale::decide(&pools, &pending, now, &settings) {
            let done = match &d {
                Decision::Launch { pool, n } => self
                    .launch(ACTOR, pool, *n, Some("demand or min"))
                    .await
                    .map(|_| ()),
                Decision::GiveUp { host } => {
                    self.delete_host(ACTOR, host, Some("did not register in time"))
                        .await
                }
                Decision::Remove { host, reason } => self.retire(host, reason).await,
            };
            match done {
                Ok(()) => tracing::info!(decision = ?d, "auto mode"),
                Err(e) => tracing::warn!(decision = ?d, error = %e, "auto mode: not done"),
            }
        }
    }

    /// Removes a host auto mode no longer needs: held first (so nothing lands meanwhile), then
    /// deleted through its provisioner. A host shut down by a drain was deleted already.
    async fn retire(
        &self,
        host: &str,
        reason: &str,
    ) -> Result<(), crate::ops::operator::OperatorError> {
        let view = self.host(host).await?;
        if view.worker_state == WorkerState::Shutdown {
            return self.forget_host(ACTOR, host, Some(reason), false).await;
        }
        if view.idle_behavior == IdleBehavior::Run {
            self.set_idle_behavior(ACTOR, host, IdleBehavior::Hold, Some(reason))
                .await?;
        }
        self.delete_host(ACTOR, host, Some(reason)).await
    }
}
