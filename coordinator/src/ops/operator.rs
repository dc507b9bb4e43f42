//! What operators do to hosts and servers: hold, drain, run, kill, vacate, forget a host; kill a
//! server's run; turn auto mode on and off. Every action is written to the audit log (who, what,
//! when, why) with the change it makes, before anyone is answered.

use crate::domain::server::ServerRecord;
use crate::domain::server::holds_resources;
use crate::state::committer::Durable;
use crate::state::coordinator::Coordinator;
use crate::state::model::Model;
use crate::store::{AuditEntry, StoreError, WriteBatch};
use backfill_shared::{
    HostId, IdleBehavior, PerfFactor, Resources, ServerClass, ServerId, ServerStatus, WorkerState,
};
use std::net::IpAddr;
use tokio::sync::RwLockWriteGuard;

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("host {0:?} does not exist")]
    UnknownHost(String),
    #[error("server {0} does not exist")]
    UnknownServer(ServerId),
    #[error("pool {0:?} does not exist")]
    UnknownPool(String),
    #[error("server {0} is not on a host")]
    NotOnHost(ServerId),
    #[error("{0}")]
    NotAllowed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A server as an operator sees it on a host.
#[derive(Debug, Clone, PartialEq)]
pub struct Work {
    pub uuid: ServerId,
    pub status: ServerStatus,
    pub class: ServerClass,
    pub owner: String,
}

/// A host as the admin APIs show it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostView {
    pub id: String,
    pub address: Option<IpAddr>,
    pub pool: Option<String>,
    pub capacity: Resources,
    /// What is free for new work (capacity less what its servers hold now).
    pub free: Resources,
    pub gpus: usize,
    pub worker_state: WorkerState,
    pub idle_behavior: IdleBehavior,
    pub state_since: i64,
    /// Servers holding resources here.
    pub work: Vec<Work>,
    pub last_server: Option<ServerId>,
    pub last_busy: Option<i64>,
    pub first_seen: i64,
    pub last_seen: i64,
    /// The instance type it is (its pool's flavor, else a generated name) and its price.
    pub instance_type: String,
    pub price: f64,
    /// A provisioner launched it and its agent has not registered yet.
    pub launching: bool,
    /// The last provisioner failure for it, if any.
    pub error: Option<String>,
}

impl HostView {
    pub fn busy(&self) -> bool {
        !self.work.is_empty()
    }
}

pub fn action(
    now: i64,
    actor: &str,
    target_kind: &'static str,
    target: &str,
    what: &str,
    reason: Option<&str>,
) -> AuditEntry {
    AuditEntry {
        at: now,
        actor: actor.to_owned(),
        target_kind,
        target: target.to_owned(),
        action: what.to_owned(),
        reason: reason.map(str::to_owned),
    }
}

impl Coordinator {
    /// Counts a recorded admin action by its verb (`launch 2` counts as `launch`).
    pub(crate) fn counted(&self, a: &AuditEntry) {
        let kind = a.action.split(' ').next().unwrap_or("").to_owned();
        self.metrics
            .operator_actions
            .get_or_create(&crate::telemetry::Kind { kind })
            .inc();
    }

    pub(crate) fn host_view(&self, model: &Model, id: &HostId) -> Option<HostView> {
        let h = model.hosts.get(id)?;
        let inv = &h.record.inventory;
        let work = model
            .servers_on(id)
            .filter(|s| holds_resources(s.status))
            .map(|s| Work {
                uuid: s.uuid,
                status: s.status,
                class: s.class,
                owner: s.owner.clone(),
            })
            .collect();
        let flavor = h
            .record
            .pool
            .as_deref()
            .and_then(|p| self.pools.get(p))
            .and_then(|p| p.flavor.as_deref())
            .and_then(|f| model.flavors.get(f));
        let (instance_type, price) = match flavor {
            Some(f) => (f.name.clone(), f.price),
            None => (
                format!("host-c{}m{}", inv.cpus, inv.mem_bytes.div_ceil(1 << 30)),
                0.0,
            ),
        };
        Some(HostView {
            id: id.to_string(),
            address: h.address,
            pool: h.record.pool.clone(),
            capacity: inv.capacity(),
            free: model.cluster.free(id),
            gpus: inv.gpus.len(),
            worker_state: h.worker_state,
            idle_behavior: h.record.idle_behavior,
            state_since: h.state_since,
            work,
            last_server: h.last_server,
            last_busy: h.last_busy,
            first_seen: h.record.first_seen,
            last_seen: h.record.last_seen,
            instance_type,
            price,
            launching: false,
            error: None,
        })
    }

    /// Every host, sorted by id, with hosts being launched (not registered yet) among them.
    pub async fn hosts(&self) -> Vec<HostView> {
        let model = self.read_model().await;
        let mut out: Vec<HostView> = model
            .hosts
            .keys()
            .filter_map(|id| self.host_view(&model, id))
            .collect();
        out.extend(self.launch_views(&model));
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub async fn host(&self, id: &str) -> Result<HostView, OperatorError> {
        self.hosts()
            .await
            .into_iter()
            .find(|h| h.id == id)
            .ok_or_else(|| OperatorError::UnknownHost(id.to_owned()))
    }

    /// The newest admin actions on a target.
    pub async fn audit_entries(
        &self,
        kind: &'static str,
        target: &str,
    ) -> Result<Vec<AuditEntry>, OperatorError> {
        Ok(self.store.actions(kind, target, 50).await?)
    }

    fn host_id(model: &Model, id: &str) -> Result<HostId, OperatorError> {
        id.parse::<HostId>()
            .ok()
            .filter(|h| model.hosts.contains_key(h))
            .ok_or_else(|| OperatorError::UnknownHost(id.to_owned()))
    }

    /// `hold`, `drain` or `run`. Hold and drain take the host out of placement at once;
    /// running work continues. Run brings a host back, even one a drain had shut down.
    pub async fn set_idle_behavior(
        &self,
        actor: &str,
        id: &str,
        behavior: IdleBehavior,
        reason: Option<&str>,
    ) -> Result<(), OperatorError> {
        let now = self.clock.now();
        let mut model = self.lock_model().await;
        let host = Self::host_id(&model, id)?;
        let Some(entry) = model.hosts.get(&host) else {
            return Err(OperatorError::UnknownHost(id.to_owned()));
        };
        let mut record = entry.record.clone();
        record.idle_behavior = behavior;
        let what = behavior.as_str();
        let a = action(now, actor, "host", id, what, reason);
        let batch = WriteBatch {
            host_records: vec![record.clone()],
            audit: vec![a.clone()],
            ..Default::default()
        };
        let busy = model.servers_on(&host).any(|s| holds_resources(s.status));
        if let Some(entry) = model.hosts.get_mut(&host) {
            entry.record = record;
            if behavior == IdleBehavior::Run
                && entry.worker_state == WorkerState::Shutdown
                && entry.session.is_some()
            {
                let state = if busy {
                    WorkerState::Running
                } else {
                    WorkerState::Idle
                };
                entry.set_state(state, now);
            }
        }
        model.sync_host(&host);
        let durable = self.commit_batch(&mut model, batch, &[]).await?;
        drop(model);
        durable.wait().await?;
        self.counted(&a);
        tracing::info!(host = %host, %actor, action = what, reason = reason.unwrap_or(""), "admin action");
        Ok(())
    }

    /// Stops every server holding resources on `host` (hard stop), with `audit`, in one
    /// commit: returns how many and the write to wait on (after the model's lock is released;
    /// the model already has the change, and commits land in order).
    async fn stop_all_on(
        &self,
        model: &mut RwLockWriteGuard<'_, Model>,
        host: &HostId,
        audit: AuditEntry,
    ) -> Result<(usize, Durable), StoreError> {
        let stops: Vec<ServerRecord> = model
            .servers_on(host)
            .filter(|s| holds_resources(s.status))
            .cloned()
            .map(|s| {
                let mut next = self.stopping(model, s);
                next.shutdown_until = None;
                next
            })
            .collect();
        let n = stops.len();
        let hosts = if n > 0 {
            vec![host.clone()]
        } else {
            Vec::new()
        };
        let batch = WriteBatch {
            servers: stops,
            audit: vec![audit],
            ..Default::default()
        };
        Ok((n, self.commit_batch(model, batch, &hosts).await?))
    }

    /// `vacate` (Dynamic Cluster): every server on the host stops now; the host stays as it is.
    pub async fn vacate_host(
        &self,
        actor: &str,
        id: &str,
        reason: Option<&str>,
    ) -> Result<usize, OperatorError> {
        let now = self.clock.now();
        let mut model = self.lock_model().await;
        let host = Self::host_id(&model, id)?;
        let a = action(now, actor, "host", id, "vacate", reason);
        let (n, durable) = self.stop_all_on(&mut model, &host, a.clone()).await?;
        drop(model);
        durable.wait().await?;
        self.counted(&a);
        tracing::info!(host = %host, %actor, stopped = n, reason = reason.unwrap_or(""), "admin action: vacate");
        Ok(n)
    }

    /// `kill` (Arvados): everything on the host stops now and the host is shut down: nothing
    /// lands there until its agent registers again (a new boot) or an operator runs it. A
    /// pool's provisioner, if any, is asked to delete it.
    pub async fn kill_host(
        &self,
        actor: &str,
        id: &str,
        reason: Option<&str>,
    ) -> Result<(), OperatorError> {
        let now = self.clock.now();
        let mut model = self.lock_model().await;
        let host = Self::host_id(&model, id)?;
        let a = action(now, actor, "host", id, "kill", reason);
        let (n, durable) = self.stop_all_on(&mut model, &host, a.clone()).await?;
        if let Some(entry) = model.hosts.get_mut(&host) {
            entry.set_state(WorkerState::Shutdown, now);
        }
        model.sync_host(&host);
        let pool = model.hosts.get(&host).and_then(|h| h.record.pool.clone());
        drop(model);
        durable.wait().await?;
        self.counted(&a);
        tracing::warn!(host = %host, %actor, stopped = n, reason = reason.unwrap_or(""), "admin action: kill");
        self.deprovision(&host, pool.as_deref());
        Ok(())
    }

    /// Forgets a host: allowed when nothing holds resources on it and it is held, drained,
    /// shut down, still booting, or its agent is gone; refused while it can take work.
    pub async fn delete_host(
        &self,
        actor: &str,
        id: &str,
        reason: Option<&str>,
    ) -> Result<(), OperatorError> {
        self.forget_host(actor, id, reason, true).await
    }

    /// [`Coordinator::delete_host`], asking the pool's provisioner to delete the host only
    /// when `deprovision` (not for a host a drain already had deleted).
    pub(crate) async fn forget_host(
        &self,
        actor: &str,
        id: &str,
        reason: Option<&str>,
        deprovision: bool,
    ) -> Result<(), OperatorError> {
        let now = self.clock.now();
        let mut model = self.lock_model().await;
        let mut batch = WriteBatch::default();
        if let Some(l) = self.forget_launch(&mut model, id, actor, reason, &mut batch) {
            let audit = batch.audit.clone();
            let durable = self.commit_batch(&mut model, batch, &[]).await?;
            drop(model);
            durable.wait().await?;
            for a in &audit {
                self.counted(a);
            }
            self.launch_forgotten(&l);
            return Ok(());
        }
        let host = Self::host_id(&model, id)?;
        let view = self
            .host_view(&model, &host)
            .ok_or_else(|| OperatorError::UnknownHost(id.to_owned()))?;
        let usable = view.idle_behavior == IdleBehavior::Run
            && matches!(view.worker_state, WorkerState::Idle | WorkerState::Running);
        if view.busy() || usable {
            return Err(OperatorError::NotAllowed(format!(
                "host {id} cannot be deleted in its current state ({}, {} server(s) on it); put it on hold first",
                view.worker_state.as_str(),
                view.work.len()
            )));
        }
        let a = action(now, actor, "host", id, "delete", reason);
        let batch = WriteBatch {
            hosts_deleted: vec![id.to_owned()],
            audit: vec![a.clone()],
            ..Default::default()
        };
        let pool = view.pool.clone();
        // Dropping the entry drops its session's channel: the agent's link ends.
        model.hosts.remove(&host);
        let _ = model.cluster.remove_host(&host);
        model.launches.remove(id);
        let durable = self.commit_batch(&mut model, batch, &[]).await?;
        drop(model);
        durable.wait().await?;
        self.counted(&a);
        tracing::warn!(host = %host, %actor, reason = reason.unwrap_or(""), "admin action: host deleted");
        if deprovision {
            self.deprovision(&host, pool.as_deref());
        }
        Ok(())
    }

    /// Arvados' container kill: one attempt. A running server is stopped (its run ends
    /// `Cancelled`); one still being set up on a host goes back to the queue (`Queued`). A
    /// server that is not on a host is not found there.
    pub async fn kill_server(
        &self,
        actor: &str,
        id: ServerId,
        reason: Option<&str>,
    ) -> Result<(), OperatorError> {
        let now = self.clock.now();
        let mut model = self.lock_model().await;
        let s = model
            .servers
            .get(&id)
            .cloned()
            .ok_or(OperatorError::UnknownServer(id))?;
        let Some(host) = s.host.clone().filter(|_| holds_resources(s.status)) else {
            return Err(OperatorError::NotOnHost(id));
        };
        let a = action(now, actor, "server", &id.to_string(), "kill", reason);
        let next = if s.status == ServerStatus::Starting {
            let mut n = s;
            n.host = None;
            n.gpus = Vec::new();
            n.active_since = None;
            n.termination = None;
            n.perf_factor = PerfFactor::FULL;
            n.queued_reason = Some(format!(
                "requeued by an operator while being set up{}",
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            ));
            n
        } else {
            let mut n = self.stopping(&model, s);
            n.shutdown_until = None;
            n
        };
        tracing::warn!(server = %id, host = %host, %actor, reason = reason.unwrap_or(""), status = next.status.as_str(), "admin action: kill server");
        let batch = WriteBatch {
            servers: vec![next],
            audit: vec![a.clone()],
            ..Default::default()
        };
        let durable = self.commit_batch(&mut model, batch, &[host]).await?;
        drop(model);
        durable.wait().await?;
        self.counted(&a);
        Ok(())
    }

    /// The drain rule, run from the tick: a draining host with nothing on it shuts down (and
    /// its pool's provisioner deletes it).
    pub(crate) async fn finish_drains(&self, now: i64) {
        let mut model = self.lock_model().await;
        let done: Vec<HostId> = model
            .hosts
            .iter()
            .filter(|(_, h)| {
                h.record.idle_behavior == IdleBehavior::Drain
                    && h.session.is_some()
                    && h.worker_state != WorkerState::Shutdown
            })
            .map(|(id, _)| id.clone())
            .filter(|id| !model.servers_on(id).any(|s| holds_resources(s.status)))
            .collect();
        for id in done {
            let pool = model.hosts.get_mut(&id).and_then(|h| {
                h.set_state(WorkerState::Shutdown, now);
                h.record.pool.clone()
            });
            model.sync_host(&id);
            tracing::info!(host = %id, "drained: host is idle and shut down");
            self.deprovision(&id, pool.as_deref());
        }
    }
}

/// A server in the operators' queue view (Arvados containers, Dynamic Cluster jobs).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueEntry {
    pub server: ServerRecord,
    /// Its place among the servers waiting for a host (0-based); `None` once on a host.
    pub position: Option<usize>,
}

impl Coordinator {
    /// Servers waiting for or holding a host, in the scheduler's order: priority, then age.
    pub async fn queue(&self) -> Vec<QueueEntry> {
        let model = self.read_model().await;
        let mut list: Vec<ServerRecord> = model
            .servers
            .values()
            .filter(|s| holds_resources(s.status) || crate::domain::server::is_queued(s))
            .map(|s| model.as_seen(s))
            .collect();
        list.sort_by_key(|s| (std::cmp::Reverse(s.priority), s.created_at, s.uuid));
        let mut waiting = 0;
        list.into_iter()
            .map(|server| {
                let position = crate::domain::server::is_queued(&server).then(|| {
                    waiting += 1;
                    waiting - 1
                });
                QueueEntry { server, position }
            })
            .collect()
    }

    pub async fn auto_mode(&self) -> bool {
        self.read_model().await.auto_mode
    }

    /// Turns auto mode on or off (stored, so it survives a restart).
    pub async fn set_auto_mode(&self, actor: &str, on: bool) -> Result<(), OperatorError> {
        let now = self.clock.now();
        let mut model = self.lock_model().await;
        let what = if on { "auto on" } else { "auto off" };
        let a = action(now, actor, "coordinator", "auto_mode", what, None);
        let value = if on { "on" } else { "off" };
        let batch = WriteBatch {
            settings: vec![("auto_mode".to_owned(), value.to_owned())],
            audit: vec![a.clone()],
            ..Default::default()
        };
        model.auto_mode = on;
        let durable = self.commit_batch(&mut model, batch, &[]).await?;
        drop(model);
        durable.wait().await?;
        self.counted(&a);
        tracing::info!(%actor, auto_mode = on, "admin action: auto mode");
        Ok(())
    }

    /// The dashboard's history: capacity samples and the preemption timeline.
    pub async fn history(
        &self,
    ) -> (
        Vec<crate::state::history::Sample>,
        Vec<crate::state::history::PreemptionEvent>,
    ) {
        let model = self.read_model().await;
        (
            model.history.samples().copied().collect(),
            model.history.events().cloned().collect(),
        )
    }

    /// Hosts with a connected agent.
    pub async fn connected_hosts(&self) -> usize {
        let model = self.read_model().await;
        model.hosts.values().filter(|h| h.session.is_some()).count()
    }
}
