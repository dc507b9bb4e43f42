//! Applying the scheduler's plans: `start`, `stop`, and the tick that carries out due
//! terminations, retries queued servers and grows downsized ones back. Each plan is made and
//! applied under the model's lock, so it is made against the latest state by construction
//! (placement decisions are serial and deterministic; there is nothing to fence). A plan is
//! applied to the model's cluster by the scheduler's own `scheduler::apply` (the function the
//! property tests and `simulate` check); the servers' records are read back from the cluster
//! it changed and queued for the store, and agents hear of them only once they are durable.

use crate::domain::account::Account;
use crate::domain::server::ServerRecord;
use crate::domain::server::is_queued;
use crate::policy::scheduler::{self, Plan, Policy, plan_grow};
use crate::state::committer::Durable;
use crate::state::coordinator::{Coordinator, OpError, Scope, visible};
use crate::state::history::PreemptionEvent;
use crate::state::model::Model;
use backfill_shared::{HostId, PerfFactor, ServerId, ServerStatus, Termination};
use tokio::sync::RwLockWriteGuard;

impl Coordinator {
    fn policy(&self) -> Policy {
        Policy {
            strategy: self.settings.strategy,
        }
    }

    fn make_plan(&self, model: &Model, id: ServerId, now: i64) -> Plan {
        let start = std::time::Instant::now();
        let plan = scheduler::plan(&model.cluster, id, &self.policy(), now);
        crate::telemetry::observe(&self.metrics.plan_seconds, start, ());
        plan
    }

    /// Counts a committed plan: placements by kind, preemption actions by kind.
    fn count(&self, plan: &Plan) {
        let kind = |k: &str| crate::telemetry::Kind { kind: k.into() };
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        match plan {
            Plan::Place { downsize, .. } => {
                let how = if downsize.is_empty() {
                    "free"
                } else {
                    "downsized"
                };
                self.metrics.placements.get_or_create(&kind(how)).inc();
                self.metrics
                    .preemptions
                    .get_or_create(&kind("downsize"))
                    .inc_by(n(downsize.len()));
            }
            Plan::Preempt {
                downsize,
                terminate,
                ..
            } => {
                self.metrics
                    .preemptions
                    .get_or_create(&kind("downsize"))
                    .inc_by(n(downsize.len()));
                self.metrics
                    .preemptions
                    .get_or_create(&kind("terminate"))
                    .inc_by(n(terminate.len()));
            }
            Plan::Queue { .. } | Plan::Never { .. } => {}
        }
    }

    /// `start`: the scheduler places the server (downsizing backfill for a normal server if
    /// needed), or starts making room for it, or queues it. Only a server no host could ever
    /// hold is refused.
    pub async fn start(
        &self,
        owner: &Account,
        scope: Scope,
        id: ServerId,
    ) -> Result<ServerRecord, OpError> {
        let mut model = self.lock_model().await;
        let current = visible(&model, owner, scope, id)?.clone();
        if is_queued(&current) {
            return Ok(current); // already waiting: starting again changes nothing
        }
        if current.status != ServerStatus::Stopped {
            return Err(OpError::InvalidState {
                id,
                status: current.status.as_str(),
                what: "only a stopped server can be started",
            });
        }
        crate::state::quota::check_start(&model, owner, &current)?;
        crate::state::drive_rules::check_startable(&model, &current)?;
        let mut plan = self.make_plan(&model, id, self.clock.now());
        if let Plan::Never { reason } = &plan {
            // No host has room for it, but auto mode may launch one that has.
            if !self.could_launch_for(&model, &current) {
                return Err(OpError::NeverFits(reason.clone()));
            }
            plan = Plan::Queue {
                reason: format!("{reason}; waiting for auto mode to launch a host"),
            };
        }
        let (server, durable) = self.apply_plan(&mut model, current, plan).await?;
        drop(model);
        durable.wait().await?;
        Ok(server)
    }

    /// Commits a plan for `server` (stopped or queued) and returns the server as committed.
    /// The scheduler's own [`scheduler::apply`] changes the model's cluster; the records of
    /// the servers it touched are then read back from the cluster and committed, so the
    /// model's later reconciliation of those records (`Model::put_server`) finds nothing left
    /// to change. If the plan cannot be applied or the commit cannot be queued, the touched
    /// servers are put back as they were, and the cluster with them.
    async fn apply_plan(
        &self,
        model: &mut RwLockWriteGuard<'_, Model>,
        mut server: ServerRecord,
        plan: Plan,
    ) -> Result<(ServerRecord, Durable), OpError> {
        let now = self.clock.now();
        let no_terminations: &[(ServerId, Termination)] = &[];
        let (downsize, terminate) = match &plan {
            Plan::Place { downsize, .. } => (downsize.as_slice(), no_terminations),
            Plan::Preempt {
                downsize,
                terminate,
                ..
            } => (downsize.as_slice(), terminate.as_slice()),
            Plan::Queue { .. } | Plan::Never { .. } => (&[][..], no_terminations),
        };
        let mut victims: Vec<ServerId> = Vec::new();
        for id in downsize
            .iter()
            .map(|d| d.0)
            .chain(terminate.iter().map(|t| t.0))
        {
            if !victims.contains(&id) {
                victims.push(id);
            }
        }
        let before: Vec<ServerRecord> = victims
            .iter()
            .chain(std::iter::once(&server.uuid))
            .filter_map(|id| model.servers.get(id).cloned())
            .collect();
        if let Err(e) = scheduler::apply(&mut model.cluster, server.uuid, &plan, now) {
            restore(model, before, now);
            tracing::error!(server = %server.uuid, error = %e, "a plan made under the lock did not apply");
            return Err(OpError::Conflict(format!(
                "the scheduler's view of server {} is out of step ({e}); try again",
                server.uuid
            )));
        }
        let mut changed: Vec<ServerRecord> = victims
            .iter()
            .filter_map(|id| {
                let mut v = model.servers.get(id)?.clone();
                let placed = model.cluster.placed(*id)?;
                v.perf_factor = placed.perf_factor;
                v.termination = placed.termination;
                Some(v)
            })
            .collect();
        for (victim, t) in terminate {
            tracing::info!(server = %victim, terminate_at = t.terminate_at, "termination scheduled");
        }
        let hosts: Vec<HostId> = match &plan {
            Plan::Place { host, downsize, .. } => {
                let Some(placed) = model.cluster.placed(server.uuid) else {
                    restore(model, before, now);
                    return Err(OpError::Conflict(format!(
                        "server {} was not placed by its plan; try again",
                        server.uuid
                    )));
                };
                server.status = ServerStatus::Starting;
                server.host = Some(placed.host.clone());
                server.gpus.clone_from(&placed.gpus);
                server.perf_factor = placed.perf_factor;
                server.termination = placed.termination;
                server.active_since = None;
                server.queued_reason = None;
                server.stop_reason = None;
                server.incarnation = model.generation(host).saturating_add(1);
                tracing::info!(server = %server.uuid, host = %host, downsized = downsize.len(), "placed");
                vec![host.clone()]
            }
            Plan::Preempt {
                host,
                downsize,
                terminate,
                ready_at,
            } => {
                server.status = ServerStatus::Starting;
                server.host = None;
                server.gpus = Vec::new();
                server.queued_reason = Some(format!(
                    "making room on host {host}: {} server(s) downsized, {} terminating; ready at {}",
                    downsize.len(),
                    terminate.len(),
                    backfill_shared::clock::rfc3339(*ready_at)
                ));
                vec![host.clone()]
            }
            Plan::Queue { reason } | Plan::Never { reason } => {
                server.status = ServerStatus::Starting;
                server.host = None;
                server.gpus = Vec::new();
                server.queued_reason = Some(reason.clone());
                Vec::new()
            }
        };
        changed.push(server.clone());
        let durable = match self.commit(model, changed, &hosts).await {
            Ok(d) => d,
            Err(e) => {
                restore(model, before, now);
                return Err(e.into());
            }
        };
        record_preemptions(model, &plan, self.clock.now());
        if let (Plan::Place { host, .. }, Some(entry)) = (&plan, server.host.as_ref()) {
            if let Some(h) = model.hosts.get_mut(entry) {
                h.last_server = Some(server.uuid);
            }
            debug_assert_eq!(host, entry);
        }
        self.count(&plan);
        Ok((server, durable))
    }

    /// `stop`: hard stop. The server leaves its host's desired state; it is `stopped` once the
    /// agent reports it gone, or at once when it has no host or its host has no agent (a
    /// returning agent stops whatever its desired state no longer holds).
    pub async fn stop(
        &self,
        owner: &Account,
        scope: Scope,
        id: ServerId,
    ) -> Result<ServerRecord, OpError> {
        let mut model = self.lock_model().await;
        let current = visible(&model, owner, scope, id)?.clone();
        let graceful = current.shutdown_until.is_some();
        if current.status == ServerStatus::Stopped
            || (current.status == ServerStatus::Stopping && !graceful)
        {
            return Ok(current);
        }
        // A graceful shutdown in progress becomes a hard stop.
        let mut next = self.stopping(&model, current);
        next.shutdown_until = None;
        let hosts: Vec<HostId> = next.host.iter().cloned().collect();
        let durable = self.commit(&mut model, vec![next.clone()], &hosts).await?;
        drop(model);
        durable.wait().await?;
        Ok(next)
    }

    /// What stopping a server looks like: `stopping` while an agent has it, else `stopped`.
    pub(crate) fn stopping(&self, model: &Model, mut s: ServerRecord) -> ServerRecord {
        let connected = s
            .host
            .as_ref()
            .and_then(|h| model.hosts.get(h))
            .is_some_and(|h| h.session.is_some());
        s.queued_reason = None;
        if connected {
            s.status = ServerStatus::Stopping;
        } else {
            s.status = ServerStatus::Stopped;
            s.stop_reason = Some("stopped".into());
            s.host = None;
            s.gpus = Vec::new();
            s.active_since = None;
            s.termination = None;
            s.perf_factor = PerfFactor::FULL;
        }
        s
    }

    /// The scheduler's periodic work at `now`: terminations that are due, queued servers by
    /// age, then growing downsized servers back.
    pub async fn tick(&self, now: i64) -> Result<(), OpError> {
        let mut writes = Vec::new();
        let ticked = self.tick_in(now, &mut writes).await;
        for w in writes {
            w.wait().await?;
        }
        ticked
    }

    /// The tick's work; its writes are waited on by `tick` once the model's lock is released.
    async fn tick_in(&self, now: i64, writes: &mut Vec<Durable>) -> Result<(), OpError> {
        let mut model = self.lock_model().await;
        // 1. Terminations that are due (the agent enforces them too).
        let due: Vec<ServerRecord> = model
            .servers
            .values()
            .filter(|s| {
                s.host.is_some()
                    && matches!(s.status, ServerStatus::Running | ServerStatus::Starting)
                    && s.termination.is_some_and(|t| t.terminate_at <= now)
            })
            .cloned()
            .collect();
        for s in due {
            tracing::info!(server = %s.uuid, "terminating (preempted)");
            model.history.record(PreemptionEvent {
                at: now,
                kind: "stopped",
                server: s.uuid,
                host: s.host.clone(),
                detail: "terminated at the end of its notice".into(),
            });
            let next = self.stopping(&model, s);
            let hosts: Vec<HostId> = next.host.iter().cloned().collect();
            writes.push(self.commit(&mut model, vec![next], &hosts).await?);
        }
        // Graceful shutdowns the workload ignored: back to running.
        self.expire_shutdowns(&mut model, now, writes).await?;
        // GPU bindings an operator asked for.
        drop(model);
        self.resolve_bindings().await?;
        let mut model = self.lock_model().await;
        // 2. Queued servers by priority, then age; only plans that change something are
        //    committed.
        let mut queued: Vec<ServerRecord> = model
            .servers
            .values()
            .filter(|s| is_queued(s))
            .cloned()
            .collect();
        queued.sort_by_key(|s| (std::cmp::Reverse(s.priority), s.created_at, s.uuid));
        for s in queued {
            let plan = self.make_plan(&model, s.uuid, now);
            let changes = match &plan {
                Plan::Place { .. } => true,
                Plan::Preempt {
                    downsize,
                    terminate,
                    ..
                } => !downsize.is_empty() || !terminate.is_empty(),
                Plan::Queue { reason } | Plan::Never { reason } => {
                    s.queued_reason.as_deref() != Some(reason.as_str())
                }
            };
            if changes {
                writes.push(self.apply_plan(&mut model, s, plan).await?.1);
            }
        }
        // 3. Growing back, host by host.
        let hosts: Vec<HostId> = model.hosts.keys().cloned().collect();
        for host in hosts {
            let grow = plan_grow(&model.cluster, &host, &self.settings.grow, now);
            if grow.is_empty() {
                continue;
            }
            let changed: Vec<ServerRecord> = grow
                .iter()
                .filter_map(|(id, pf)| {
                    let mut s = model.servers.get(id)?.clone();
                    s.perf_factor = *pf;
                    Some(s)
                })
                .collect();
            tracing::info!(host = %host, servers = changed.len(), "growing back");
            writes.push(
                self.commit(&mut model, changed, std::slice::from_ref(&host))
                    .await?,
            );
        }
        // 4. A capacity sample for the dashboard.
        if model.history.due(now) {
            let sample = crate::state::history::take_sample(&model, now);
            model.history.push(sample);
        }
        // 5. Draining hosts that have become idle shut down.
        drop(model);
        self.finish_drains(now).await;
        self.auto_round(now).await;
        let mut model = self.lock_model().await;
        // 6. Usage of running servers, flushed to the store every `interval_s`.
        let stale = now - self.billing.interval_s;
        let flush: Vec<ServerRecord> = model
            .servers
            .values()
            .filter(|s| s.metered_until.is_some_and(|t| t <= stale))
            .map(|s| {
                let mut n = s.clone();
                n.metered_until = Some(now);
                n
            })
            .collect();
        if !flush.is_empty() {
            writes.push(self.commit(&mut model, flush, &[]).await?);
        }
        // 7. Drives' storage, likewise.
        let drive_usage = self.meter_drives(&mut model, None, now);
        if !drive_usage.is_empty() {
            let batch = crate::store::WriteBatch {
                drive_usage,
                ..Default::default()
            };
            writes.push(self.commit_batch(&mut model, batch, &[]).await?);
        }
        Ok(())
    }
}

/// Puts a committed plan's downsizes and termination notices on the dashboard's timeline.
/// Puts servers back as they were before a plan that could not be committed (the cluster
/// follows their records).
fn restore(model: &mut Model, before: Vec<ServerRecord>, now: i64) {
    for s in before {
        model.put_server(s, now);
    }
}

fn record_preemptions(model: &mut Model, plan: &Plan, now: i64) {
    let (host, downsize, terminate) = match plan {
        Plan::Place { host, downsize, .. } => (host, downsize.as_slice(), &[][..]),
        Plan::Preempt {
            host,
            downsize,
            terminate,
            ..
        } => (host, downsize.as_slice(), terminate.as_slice()),
        Plan::Queue { .. } | Plan::Never { .. } => return,
    };
    for (id, pf) in downsize {
        model.history.record(PreemptionEvent {
            at: now,
            kind: "downsized",
            server: *id,
            host: Some(host.clone()),
            detail: format!("perf_factor cpu {:.2}, mem {:.2}", pf.cpu, pf.mem),
        });
    }
    for (id, t) in terminate {
        model.history.record(PreemptionEvent {
            at: now,
            kind: "noticed",
            server: *id,
            host: Some(host.clone()),
            detail: format!(
                "terminates at {}",
                backfill_shared::clock::rfc3339(t.terminate_at)
            ),
        });
    }
}
