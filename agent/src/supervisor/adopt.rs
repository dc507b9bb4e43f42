//! A restarted agent takes over what the previous agent process left running, and cleans up
//! only what it made itself.

use super::{Entry, Run, Supervisor, stop_process};
use crate::driver::{self, ProcessIdentity};
use crate::network::GuestNet;
use crate::state::StateError;
use backfill_shared::ServerId;

impl Supervisor {
    /// Re-adopts the workloads a previous agent process started, makes whole the networks of
    /// isolated ones, and cleans up what this agent left behind (cgroups under its parent,
    /// namespaces, interfaces and rules with its tag). Call once, before the first desired
    /// state.
    pub fn adopt(&mut self) -> Result<(), StateError> {
        for p in self.state.load()? {
            let mut network = p.network;
            let run = if driver::alive(&p.process) {
                let run = self.readopt(&p.server, &p.process, &mut network, p.started_at);
                if matches!(run, Run::Running { .. })
                    && let Some(d) = self.drivers.get(p.driver)
                {
                    d.adopt(&p.server, network.as_ref());
                }
                run
            } else {
                tracing::warn!(server = %p.server, pid = p.process.pid, "workload ended while the agent was away");
                self.cleanup(&p.server);
                if let Some(n) = network.take() {
                    self.networks.destroy(&n);
                }
                Run::Exited { code: None }
            };
            self.entries.insert(
                p.server,
                Entry {
                    resources: p.resources,
                    perf_factor: p.perf_factor,
                    incarnation: p.incarnation,
                    termination: p.termination,
                    run,
                    guest: p.guest,
                    network,
                    acknowledged: p.acknowledged,
                    shutdown: None,
                    driver: p.driver,
                    squeezed: None,
                },
            );
        }
        let keep: Vec<&GuestNet> = self
            .entries
            .values()
            .filter_map(|e| e.network.as_ref())
            .collect();
        self.networks.sweep(&keep);
        match self.cgroups.list() {
            Ok(ids) => {
                for id in ids.iter().filter(|id| !self.entries.contains_key(id)) {
                    tracing::warn!(server = %id, "removing a server cgroup no workload owns");
                    self.cleanup(id);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list server cgroups"),
        }
        self.persist();
        self.publish();
        Ok(())
    }

    /// A live workload of a previous agent process: running again, once its network (if it
    /// has one) is whole; stopped and failed, saying why, when that network cannot be rebuilt,
    /// so that it is never reported healthy without one.
    fn readopt(
        &self,
        id: &ServerId,
        process: &ProcessIdentity,
        network: &mut Option<GuestNet>,
        started_at: i64,
    ) -> Run {
        let restored = network
            .as_ref()
            .map(|n| self.networks.restore(n, process.pid));
        match restored {
            Some(Err(e)) => {
                tracing::error!(server = %id, pid = process.pid, error = %e, "a re-adopted workload's network cannot be rebuilt; stopping it");
                stop_process(process, None);
                self.cleanup(id);
                if let Some(n) = network.take() {
                    self.networks.destroy(&n);
                }
                Run::Failed {
                    reason: format!("its network was lost while the agent was away: {e}"),
                }
            }
            restored => {
                let network = restored.and_then(Result::ok);
                tracing::info!(server = %id, pid = process.pid, ?network, "re-adopted running workload");
                Run::Running {
                    process: *process,
                    child: None,
                    started_at,
                }
            }
        }
    }
}
