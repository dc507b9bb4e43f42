//! The supervisor's side of the metadata service: guest documents from the running servers,
//! guests' acknowledgements of their terminations, and their network namespaces.

use super::{Run, Supervisor, stop_process};
use crate::metadata::GuestInfo;
use crate::network::{GuestNet, NetworkError};
use backfill_shared::ServerId;

/// Slots [`Supervisor::make_network`] tries before it gives up.
const CLAIM_ATTEMPTS: usize = 8;

impl Supervisor {
    /// A network namespace for an isolated server, on the lowest slot of the pool that neither
    /// this agent nor anything else on the host uses.
    pub(super) fn make_network(&self, id: &ServerId) -> Result<GuestNet, NetworkError> {
        let pool = self.networks.pool().ok_or(NetworkError::Unavailable(
            "the agent is not root or has no [network] pool",
        ))?;
        let mut skip = self.networks.taken();
        // Another agent sharing the pool may claim a slot between the look and the claim.
        for _ in 0..CLAIM_ATTEMPTS {
            let used = self
                .entries
                .values()
                .filter_map(|e| e.network.as_ref().map(|n| n.slot))
                .chain(skip.iter().copied());
            let link = pool
                .first_free(used)
                .ok_or(NetworkError::Exhausted(pool.capacity()))?;
            match self.networks.create(id, link) {
                Err(NetworkError::InUse { slot, .. }) => skip.push(slot),
                other => return other,
            }
        }
        Err(NetworkError::Unavailable(
            "every pool slot tried was claimed by another agent first",
        ))
    }

    /// Tears down an ended workload's network namespace, if it had one.
    pub(super) fn release_network(&mut self, id: &ServerId) {
        if let Some(n) = self.entries.get_mut(id).and_then(|e| e.network.take()) {
            self.networks.destroy(&n);
        }
    }

    /// Running guests whose namespace name or host interface went away while the agent runs
    /// (another program removed them) get them back, or are stopped and failed, saying why.
    /// Two `stat`s per isolated guest when nothing is missing. Returns whether a guest failed.
    pub(super) fn heal_networks(&mut self) -> bool {
        let broken: Vec<ServerId> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.run, Run::Running { .. }))
            .filter(|(_, e)| {
                e.network
                    .as_ref()
                    .is_some_and(|n| !self.networks.looks_whole(n))
            })
            .map(|(id, _)| *id)
            .collect();
        let mut failed = false;
        for id in broken {
            let Some(e) = self.entries.get_mut(&id) else {
                continue;
            };
            let (Run::Running { process, child, .. }, Some(net)) = (&mut e.run, &e.network) else {
                continue;
            };
            match self.networks.restore(net, process.pid) {
                Ok(state) => {
                    tracing::warn!(server = %id, netns = %net.netns, ?state, "a guest's network had been removed; rebuilt");
                    if let Some(d) = self.drivers.get(e.driver) {
                        d.adopt(&id, Some(net));
                    }
                }
                Err(err) => {
                    tracing::error!(server = %id, error = %err, "a guest's network was removed and cannot be rebuilt; stopping it");
                    stop_process(process, child.as_mut());
                    e.run = Run::Failed {
                        reason: format!("its network was removed: {err}"),
                    };
                    if let Some(n) = e.network.take() {
                        self.networks.destroy(&n);
                    }
                    self.cleanup(&id);
                    failed = true;
                }
            }
        }
        let running: Vec<&GuestNet> = self
            .entries
            .values()
            .filter(|e| matches!(e.run, Run::Running { .. }))
            .filter_map(|e| e.network.as_ref())
            .collect();
        self.networks.enforce(&running);
        failed
    }

    /// Rewrites the metadata store from the running servers.
    pub(super) fn publish(&self) {
        let Some(store) = &self.metadata else {
            return;
        };
        let guests = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.run, Run::Running { .. }))
            .filter_map(|(id, e)| {
                let g = e.guest.as_ref()?;
                let limits = self.entry_limits(e);
                Some(GuestInfo {
                    server: *id,
                    name: g.name.clone(),
                    hostname: g.hostname.clone(),
                    availability_zone: self.zone.clone(),
                    project_id: g.account.clone(),
                    class: g.class,
                    instance_type: g.instance_type.clone(),
                    local_ipv4: e.network.as_ref().map(|n| n.address.into()),
                    gateway: e.network.as_ref().map(|n| n.host_address.into()),
                    meta: g.meta.clone(),
                    perf_factor: e.perf_factor,
                    cpu_quota_us: limits.cpu_quota_us,
                    cpu_period_us: limits.cpu_period_us,
                    mem_limit_bytes: limits.mem_limit_bytes,
                    termination: e.termination,
                    acknowledged: e.acknowledged,
                    user_data: g.user_data.clone(),
                })
            })
            .collect();
        store.replace_all(guests);
    }

    /// Records that `server`'s guest acknowledged its termination. `Ok` once it is durable (the
    /// next report carries it to the coordinator, which ends the server); repeating it is
    /// harmless.
    pub fn acknowledge(&mut self, server: &ServerId) -> Result<(), String> {
        let Some(e) = self.entries.get_mut(server) else {
            return Err("the server does not run here".into());
        };
        if !matches!(e.run, Run::Running { .. }) || e.acknowledged {
            return Ok(()); // ended already, or recorded already
        }
        if e.termination.is_none() {
            return Err("no termination is scheduled".into());
        }
        e.acknowledged = true;
        if let Err(err) = self.save() {
            if let Some(e) = self.entries.get_mut(server) {
                e.acknowledged = false;
            }
            return Err(err.to_string());
        }
        self.publish();
        Ok(())
    }
}
