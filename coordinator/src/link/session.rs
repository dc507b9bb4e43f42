//! What the coordinator does with what agents say.

use crate::domain::server::holds_resources;
use crate::domain::server::{HostRecord, ServerRecord};
use crate::state::coordinator::{Coordinator, OpError};
use crate::state::model::{HostEntry, Session};
use backfill_shared::protocol::{DesiredState, Hello, Report, WorkloadState};
use backfill_shared::{HostId, PerfFactor, ServerStatus, WorkerState};
use std::sync::Arc;
use tokio::sync::watch;

impl Coordinator {
    /// Registers (or re-registers) a host. Returns the session's id and the channel its desired
    /// state arrives on; a previous session of the same host is superseded. The host gets a new
    /// generation, so the agent's acknowledgements are for this session's state.
    #[cfg(test)]
    pub(crate) async fn register_agent(
        &self,
        hello: &Hello,
    ) -> Result<(u64, watch::Receiver<Arc<DesiredState>>), OpError> {
        self.register_agent_from(hello, None).await
    }

    /// As `register_agent`, noting the address the agent connects from.
    pub(crate) async fn register_agent_from(
        &self,
        hello: &Hello,
        address: Option<std::net::IpAddr>,
    ) -> Result<(u64, watch::Receiver<Arc<DesiredState>>), OpError> {
        let now = self.clock.now();
        let conn = self.new_conn_id();
        let mut model = self.lock_model().await;
        let host = hello.host_id.clone();
        let record = match model.hosts.get(&host) {
            Some(h) => HostRecord {
                inventory: hello.inventory.clone(),
                enforcing: hello.enforcing,
                generation: h.record.generation.saturating_add(1),
                last_seen: now,
                ..h.record.clone()
            },
            None => HostRecord {
                id: host.clone(),
                inventory: hello.inventory.clone(),
                enforcing: hello.enforcing,
                generation: 1,
                first_seen: now,
                last_seen: now,
                idle_behavior: backfill_shared::IdleBehavior::Run,
                pool: model
                    .launches
                    .get(host.as_str())
                    .map(|l| l.pool.clone())
                    .or_else(|| self.pools.pool_of(&host).map(str::to_owned)),
            },
        };
        let mut batch = crate::store::WriteBatch {
            host_records: vec![record.clone()],
            ..Default::default()
        };
        if model.launches.remove(host.as_str()).is_some() {
            batch.launches_deleted.push(host.to_string());
            tracing::info!(host = %host, "launched host registered");
        }
        let entry = model
            .hosts
            .entry(host.clone())
            .or_insert_with(|| HostEntry::new(record.clone(), WorkerState::Booting, now));
        entry.reservation = self.pools.reservation(record.pool.as_deref());
        entry.record = record;
        entry.set_state(WorkerState::Booting, now);
        entry.address = address;
        let (tx, rx) = Coordinator::desired_channel(&model, &host);
        if let Some(h) = model.hosts.get_mut(&host) {
            h.session = Some(Session {
                conn,
                desired: Arc::new(tx),
            });
        }
        model.sync_host(&host);
        // The record is durable before the agent hears anything: the lock is released first,
        // so reads go on while it is written.
        let durable = self.commit_batch(&mut model, batch, &[]).await?;
        drop(model);
        if let Err(e) = durable.wait().await {
            // The model is reloaded from the store (the host as it was, if at all); the
            // session never starts.
            self.agent_gone(&host, conn).await;
            return Err(e.into());
        }
        tracing::info!(
            host = %host,
            cpus = hello.inventory.cpus,
            mhz = hello.inventory.cpu_mhz_per_cpu,
            mem = hello.inventory.mem_bytes,
            gpus = hello.inventory.gpus.len(),
            enforcing = hello.enforcing,
            "agent registered"
        );
        Ok((conn, rx))
    }

    /// Reconciles the servers placed on `host` with what its agent sees. An observation counts
    /// only for the run (incarnation) the server is on now: a late report about an earlier run
    /// cannot stop a server that was started again.
    /// Answers once what it changed is durable (the model's lock is released before that).
    pub(crate) async fn apply_report(
        &self,
        host: &HostId,
        conn: u64,
        report: Report,
    ) -> Result<(), OpError> {
        let mut writes = Vec::new();
        let applied = self.apply_report_in(host, conn, report, &mut writes).await;
        for w in writes {
            w.wait().await?;
        }
        applied
    }

    async fn apply_report_in(
        &self,
        host: &HostId,
        conn: u64,
        report: Report,
        writes: &mut Vec<crate::state::committer::Durable>,
    ) -> Result<(), OpError> {
        let now = self.clock.now();
        let mut model = self.lock_model().await;
        let Some(entry) = model.hosts.get(host) else {
            return Ok(());
        };
        if entry.session.as_ref().map(|s| s.conn) != Some(conn) {
            return Ok(()); // a superseded session
        }
        // Absence only means something once the agent has seen the current desired state.
        let current = report.applied_generation >= entry.record.generation;
        let mut changed = Vec::new();
        let mut leaves_desired = false;
        for s in model.servers_on(host).filter(|s| holds_resources(s.status)) {
            let seen = report
                .servers
                .iter()
                .find(|o| o.server == s.uuid && o.incarnation == s.incarnation);
            let mut next = s.clone();
            match (s.status, seen.map(|o| &o.state)) {
                // The guest gave its capacity back before its scheduled termination.
                (ServerStatus::Running | ServerStatus::Starting, Some(WorkloadState::Running))
                    if s.termination.is_some() && seen.is_some_and(|o| o.acknowledged) =>
                {
                    tracing::info!(server = %s.uuid, host = %host, "guest acknowledged its termination; ending it now");
                    next.status = ServerStatus::Stopped;
                    next.stop_reason =
                        Some("the guest acknowledged its scheduled termination".into());
                }
                (ServerStatus::Starting, Some(WorkloadState::Running)) => {
                    next.status = ServerStatus::Running;
                    next.active_since = seen.and_then(|o| o.started_at).or(Some(now));
                }
                (_, Some(WorkloadState::Exited { code })) => {
                    tracing::info!(server = %s.uuid, host = %host, ?code, "workload exited");
                    next.status = ServerStatus::Stopped;
                    next.stop_reason = Some(match (s.status, code) {
                        (ServerStatus::Stopping, _) => "stopped".to_owned(),
                        _ if s.termination.is_some_and(|t| t.terminate_at <= now) => {
                            "terminated at its scheduled time (its capacity was needed)".to_owned()
                        }
                        (_, Some(c)) => format!("the workload exited with code {c}"),
                        (_, None) => "the workload ended (killed by a signal, or at its scheduled termination)".to_owned(),
                    });
                }
                (_, Some(WorkloadState::Failed { reason })) => {
                    tracing::warn!(server = %s.uuid, host = %host, %reason, "workload failed");
                    next.status = ServerStatus::Stopped;
                    next.stop_reason = Some(failure_reason(host, reason));
                }
                (ServerStatus::Stopping, None) if current => {
                    next.status = ServerStatus::Stopped;
                    next.stop_reason = Some("stopped".into());
                }
                (ServerStatus::Running | ServerStatus::Starting, None) if current => {
                    tracing::warn!(server = %s.uuid, host = %host, "workload vanished from its host");
                    next.status = ServerStatus::Stopped;
                    next.stop_reason = Some(format!("the workload vanished from its host {host}"));
                }
                _ => {}
            }
            if next.status == ServerStatus::Stopped {
                next.host = None;
                next.gpus = Vec::new();
                next.active_since = None;
                next.perf_factor = PerfFactor::FULL;
                next.termination = None;
                next.shutdown_until = None;
                leaves_desired |= s.status != ServerStatus::Stopping;
            }
            if next != *s {
                changed.push(next);
            }
        }
        let hosts = if leaves_desired {
            vec![host.clone()]
        } else {
            Vec::new()
        };
        if !changed.is_empty() || !hosts.is_empty() {
            writes.push(self.commit(&mut model, changed, &hosts).await?);
        }
        // What the agent has in force, for the servers' current runs.
        let in_force: Vec<_> = report
            .servers
            .iter()
            .filter(|o| o.state == WorkloadState::Running)
            .filter(|o| {
                model.servers.get(&o.server).is_some_and(|s| {
                    s.incarnation == o.incarnation && s.host.as_ref() == Some(host)
                })
            })
            .map(|o| (o.server, o.perf_factor, o.network.clone()))
            .collect();
        // A new perf_factor in force ends a metered stretch at the old one.
        let flush: Vec<ServerRecord> = in_force
            .iter()
            .filter_map(|(id, pf, _)| {
                let s = model.servers.get(id)?;
                (s.metered_until.is_some() && s.metered_perf != *pf).then(|| {
                    let mut n = s.clone();
                    n.metered_until = Some(now);
                    n
                })
            })
            .collect();
        for (id, pf, _) in &in_force {
            model.in_force.insert(*id, *pf);
        }
        if !flush.is_empty() {
            writes.push(self.commit(&mut model, flush, &[]).await?);
        }
        for (id, pf, network) in in_force {
            model.in_force.insert(id, pf);
            match network {
                Some(n) => model.networks.insert(id, n),
                None => model.networks.remove(&id),
            };
        }
        self.refresh_gpus(&mut model, host, &report, writes).await?;
        let busy = model.servers_on(host).any(|s| holds_resources(s.status));
        if let Some(entry) = model.hosts.get_mut(host) {
            if busy {
                entry.last_busy = Some(now);
            }
            if entry.worker_state != WorkerState::Shutdown {
                let state = if busy {
                    WorkerState::Running
                } else {
                    WorkerState::Idle
                };
                entry.set_state(state, now);
            }
            let was = entry
                .last_report
                .as_ref()
                .is_some_and(|r| r.usage.squeezing);
            match (was, report.usage.squeezing) {
                (false, true) => {
                    tracing::warn!(host = %host, cpu_psi = report.usage.cpu_pressure_x100, memory_psi = report.usage.memory_pressure_x100, "the host's agent squeezes backfill under pressure beside normal servers")
                }
                (true, false) => {
                    tracing::info!(host = %host, "the host's agent lifted its squeeze")
                }
                _ => {}
            }
            entry.last_report = Some(report);
        }
        Ok(())
    }

    /// The GPUs the agent re-read: a device that is gone or unhealthy is no longer
    /// allocatable; servers holding one are named in the log (their agent decides what the
    /// workload does; the coordinator does not stop them for it).
    async fn refresh_gpus(
        &self,
        model: &mut tokio::sync::RwLockWriteGuard<'_, crate::state::model::Model>,
        host: &HostId,
        report: &Report,
        writes: &mut Vec<crate::state::committer::Durable>,
    ) -> Result<(), OpError> {
        let Some(entry) = model.hosts.get(host) else {
            return Ok(());
        };
        if entry.record.inventory.gpus == report.gpus {
            return Ok(());
        }
        let mut record = entry.record.clone();
        let before = std::mem::replace(&mut record.inventory.gpus, report.gpus.clone());
        let batch = crate::store::WriteBatch {
            host_records: vec![record.clone()],
            ..Default::default()
        };
        for g in &before {
            let now = report.gpus.iter().find(|n| n.uuid == g.uuid);
            let lost = match now {
                None => Some("is gone".to_owned()),
                Some(n) if !n.healthy => Some(format!(
                    "is unhealthy ({})",
                    n.health.as_deref().unwrap_or("no reason given")
                )),
                Some(_) => None,
            };
            if let Some(why) = lost {
                let holders: Vec<String> = model
                    .servers_on(host)
                    .filter(|s| holds_resources(s.status) && s.gpus.contains(&g.uuid))
                    .map(|s| s.uuid.to_string())
                    .collect();
                tracing::warn!(host = %host, gpu = %g.uuid, servers = ?holders, "GPU {why}: no longer allocatable");
            }
        }
        tracing::info!(host = %host, gpus = report.gpus.len(), healthy = report.gpus.iter().filter(|g| g.healthy).count(), "GPUs re-read");
        if let Some(e) = model.hosts.get_mut(host) {
            e.record = record;
        }
        model.sync_host(host);
        writes.push(self.commit_batch(model, batch, &[]).await?);
        Ok(())
    }

    /// The session ended (closed, failed, or silent past the deadline). The host is `down`
    /// until its agent comes back: not schedulable, its capacity out of `free_resources`. Its
    /// running servers keep running there (the agent keeps them under the last limits it was
    /// given); servers placed there that the agent never confirmed go back to the queue, so
    /// they start elsewhere instead of waiting on a host that may not return.
    pub(crate) async fn agent_gone(&self, host: &HostId, conn: u64) {
        let mut model = self.lock_model().await;
        let current = model
            .hosts
            .get_mut(host)
            .filter(|e| e.session.as_ref().map(|s| s.conn) == Some(conn));
        let Some(entry) = current else {
            return;
        };
        entry.session = None;
        entry.set_state(WorkerState::Down, self.clock.now());
        tracing::warn!(host = %host, "agent link lost; host is down");
        model.sync_host(host);
        let requeued: Vec<ServerRecord> = model
            .servers_on(host)
            .filter(|s| s.status == ServerStatus::Starting)
            .map(|s| {
                let mut next = s.clone();
                next.host = None;
                next.gpus = Vec::new();
                next.active_since = None;
                next.perf_factor = PerfFactor::FULL;
                next.queued_reason = Some(format!("its host {host} was lost before it started"));
                next
            })
            .collect();
        if requeued.is_empty() {
            return;
        }
        let ids: Vec<String> = requeued.iter().map(|s| s.uuid.to_string()).collect();
        match self
            .commit(&mut model, requeued, std::slice::from_ref(host))
            .await
        {
            Ok(durable) => {
                durable.detach();
                tracing::warn!(host = %host, servers = ?ids, "unconfirmed servers back in the queue")
            }
            Err(e) => {
                tracing::error!(host = %host, servers = ?ids, error = %e, "could not queue the lost host's unconfirmed servers again; they wait for it")
            }
        }
    }
}

/// What a server whose workload failed is shown (`stop_reason`): the agent's reason, bounded.
fn failure_reason(host: &HostId, reason: &str) -> String {
    const MAX: usize = 1024;
    let mut r = reason.trim();
    if r.len() > MAX {
        let mut end = MAX;
        while !r.is_char_boundary(end) {
            end -= 1;
        }
        r = &r[..end];
    }
    format!("its last start on {host} failed: {r}")
}
