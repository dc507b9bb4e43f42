//! Pools at work: launching hosts through a pool's provisioner, deleting them, and the pool
//! actions (freeze, restore, drain). A launch is recorded before its command runs; the host
//! shows as booting (Dynamic Cluster's Starting) until its agent registers, and as an error if
//! the command fails.

use crate::ops::operator::{HostView, OperatorError, action};
use crate::policy::pools::{PoolConfig, ProvisionerConfig, flag};
use crate::state::coordinator::Coordinator;
use crate::state::model::Model;
use crate::store::{LaunchRecord, WriteBatch};
use backfill_shared::{HostId, IdleBehavior, Resources, WorkerState};
use std::time::Duration;

/// A pool as the admin APIs show it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolView {
    pub config: PoolConfig,
    /// The limits in force (the configured ones unless frozen or drained).
    pub min: u32,
    pub max: u32,
    pub current: u32,
    /// 0 Normal, 1 Frozen, 2 Draining, 3 Drained.
    pub flag: u8,
    pub failures: u64,
    pub hosts: Vec<HostView>,
}

/// Runs one provisioner command with `{host}`, `{pool}` and `{link}` (the coordinator's agent
/// link address) filled in. Its output goes to the log; a non-zero exit, a failure to start or
/// a timeout is an error.
pub async fn run_command(
    argv: &[String],
    host: &str,
    pool: &str,
    link: &str,
    timeout: Duration,
) -> Result<(), String> {
    let fill = |a: &String| {
        a.replace("{host}", host)
            .replace("{pool}", pool)
            .replace("{link}", link)
    };
    let argv: Vec<String> = argv.iter().map(fill).collect();
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => return Err(format!("{program} did not finish within {timeout:?}")),
        Ok(Err(e)) => return Err(format!("{program}: {e}")),
        Ok(Ok(out)) => out,
    };
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        tracing::info!(%host, %pool, "provisioner: {line}");
    }
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{program} exited with {}", out.status))
    }
}

fn host_id_for(pool: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{pool}-{}", &suffix[..8])
}

impl Coordinator {
    /// Runs the provisioner command `which` for `host` in the background, recording a failure.
    fn provision(&self, which: &'static str, host: String, pool: String, p: &ProvisionerConfig) {
        let argv = if which == "launch" {
            p.launch.clone()
        } else {
            p.delete.clone()
        };
        let timeout = Duration::from_secs(p.timeout_s);
        let log = self.provision_log.clone();
        let failures = self.metrics.clone();
        let link = self
            .link_addr
            .get()
            .map(ToString::to_string)
            .unwrap_or_default();
        tokio::spawn(async move {
            tracing::info!(%host, %pool, "provisioner: {which}");
            if let Err(e) = run_command(&argv, &host, &pool, &link, timeout).await {
                tracing::error!(%host, %pool, error = %e, "provisioner {which} failed");
                failures
                    .provision_failures
                    .get_or_create(&crate::telemetry::Kind { kind: which.into() })
                    .inc();
                if let Ok(mut l) = log.lock() {
                    l.errors.insert(host, format!("{which} failed: {e}"));
                    *l.failures.entry(pool).or_default() += 1;
                }
            }
        });
    }

    /// Asks the pool's provisioner, if any, to delete `host`.
    pub(crate) fn deprovision(&self, host: &HostId, pool: Option<&str>) {
        let Some(pool) = pool.and_then(|p| self.pools.get(p)) else {
            return;
        };
        if let Some(p) = &pool.provisioner {
            self.provision("delete", host.to_string(), pool.name.clone(), p);
        }
    }

    pub(crate) fn launch_views(&self, model: &Model) -> Vec<HostView> {
        let errors = self
            .provision_log
            .lock()
            .map(|l| l.errors.clone())
            .unwrap_or_default();
        model
            .launches
            .values()
            .map(|l| {
                let error = errors.get(&l.host).cloned();
                HostView {
                    id: l.host.clone(),
                    address: None,
                    pool: Some(l.pool.clone()),
                    capacity: Resources::default(),
                    free: Resources::default(),
                    gpus: 0,
                    worker_state: if error.is_some() {
                        WorkerState::Down
                    } else {
                        WorkerState::Booting
                    },
                    idle_behavior: IdleBehavior::Run,
                    state_since: l.launched_at,
                    work: Vec::new(),
                    last_server: None,
                    last_busy: None,
                    first_seen: l.launched_at,
                    last_seen: l.launched_at,
                    instance_type: self
                        .pools
                        .get(&l.pool)
                        .and_then(|p| p.flavor.clone())
                        .unwrap_or_default(),
                    price: self
                        .pools
                        .get(&l.pool)
                        .and_then(|p| p.flavor.as_deref())
                        .and_then(|f| model.flavors.get(f))
                        .map_or(0.0, |f| f.price),
                    launching: true,
                    error,
                }
            })
            .collect()
    }

    /// Drops a launch that never registered from the model and adds its deletion (with its
    /// audit entry) to `batch`; `None` when `id` is no such launch. Once the batch is durable,
    /// [`Coordinator::launch_forgotten`] deletes its host through the provisioner.
    pub(crate) fn forget_launch(
        &self,
        model: &mut Model,
        id: &str,
        actor: &str,
        reason: Option<&str>,
        batch: &mut WriteBatch,
    ) -> Option<LaunchRecord> {
        let l = model.launches.remove(id)?;
        batch.hosts_deleted.push(id.to_owned());
        batch.audit.push(action(
            self.clock.now(),
            actor,
            "host",
            id,
            "delete",
            reason,
        ));
        Some(l)
    }

    /// A forgotten launch is durable: its host is deleted through its pool's provisioner.
    pub(crate) fn launch_forgotten(&self, l: &LaunchRecord) {
        if let Ok(mut log) = self.provision_log.lock() {
            log.errors.remove(&l.host);
        }
        if let (Ok(host), Some(pool)) = (l.host.parse::<HostId>(), self.pools.get(&l.pool))
            && let Some(p) = &pool.provisioner
        {
            tracing::info!(host = %host, pool = %l.pool, "launch given up");
            self.provision("delete", l.host.clone(), l.pool.clone(), p);
        }
    }

    /// Hosts of a pool: registered ones that are not shut down, plus launches.
    fn pool_current(model: &Model, pool: &str) -> u32 {
        let hosts = model
            .hosts
            .values()
            .filter(|h| {
                h.record.pool.as_deref() == Some(pool) && h.worker_state != WorkerState::Shutdown
            })
            .count();
        let launches = model.launches.values().filter(|l| l.pool == pool).count();
        u32::try_from(hosts + launches).unwrap_or(u32::MAX)
    }

    pub(crate) fn limits(model: &Model, p: &PoolConfig) -> (u32, u32) {
        model
            .pool_limits
            .get(&p.name)
            .copied()
            .unwrap_or((p.min, p.max))
    }

    pub async fn pools_view(&self) -> Vec<PoolView> {
        let hosts = self.hosts().await;
        let model = self.read_model().await;
        let failures = self
            .provision_log
            .lock()
            .map(|l| l.failures.clone())
            .unwrap_or_default();
        self.pools
            .all()
            .iter()
            .map(|p| {
                let (min, max) = Self::limits(&model, p);
                let current = Self::pool_current(&model, &p.name);
                PoolView {
                    config: p.clone(),
                    min,
                    max,
                    current,
                    flag: flag((p.min, p.max), (min, max), current),
                    failures: failures.get(&p.name).copied().unwrap_or(0),
                    hosts: hosts
                        .iter()
                        .filter(|h| h.pool.as_deref() == Some(p.name.as_str()))
                        .cloned()
                        .collect(),
                }
            })
            .collect()
    }

    pub async fn pool_view(&self, name: &str) -> Result<PoolView, OperatorError> {
        self.pools_view()
            .await
            .into_iter()
            .find(|p| p.config.name == name)
            .ok_or_else(|| OperatorError::UnknownPool(name.to_owned()))
    }

    /// Launches `n` hosts into a pool through its provisioner; refused beyond the pool's max.
    pub async fn launch(
        &self,
        actor: &str,
        pool: &str,
        n: u32,
        reason: Option<&str>,
    ) -> Result<Vec<String>, OperatorError> {
        let now = self.clock.now();
        let p = self
            .pools
            .get(pool)
            .ok_or_else(|| OperatorError::UnknownPool(pool.to_owned()))?;
        let Some(prov) = &p.provisioner else {
            return Err(OperatorError::NotAllowed(format!(
                "pool {pool} has no provisioner; its hosts join by starting their agents"
            )));
        };
        let mut model = self.lock_model().await;
        let (_, max) = Self::limits(&model, p);
        let current = Self::pool_current(&model, pool);
        if n == 0 || current.saturating_add(n) > max {
            return Err(OperatorError::NotAllowed(format!(
                "launching {n} host(s) into {pool} has exceeded the resource limit ({current} of at most {max})"
            )));
        }
        let launches: Vec<LaunchRecord> = (0..n)
            .map(|_| LaunchRecord {
                host: host_id_for(pool),
                pool: pool.to_owned(),
                launched_at: now,
            })
            .collect();
        let a = action(now, actor, "pool", pool, &format!("launch {n}"), reason);
        let ids: Vec<String> = launches.iter().map(|l| l.host.clone()).collect();
        for l in &launches {
            model.launches.insert(l.host.clone(), l.clone());
        }
        // Recorded before the provisioner runs, so a crash in between is seen.
        let batch = WriteBatch {
            launches_new: launches,
            audit: vec![a.clone()],
            ..Default::default()
        };
        let durable = self.commit_batch(&mut model, batch, &[]).await?;
        drop(model);
        durable.wait().await?;
        self.counted(&a);
        tracing::info!(%pool, %actor, hosts = ?ids, "launching");
        for id in &ids {
            self.provision("launch", id.clone(), pool.to_owned(), prov);
        }
        Ok(ids)
    }

    /// Dynamic Cluster's `freeze` (min = max = current), `restore` (the configured limits) and
    /// `drain` (min = max = 0: its hosts drain, launches not yet registered are deleted).
    pub async fn pool_action(
        &self,
        actor: &str,
        pool: &str,
        what: &str,
        reason: Option<&str>,
    ) -> Result<(), OperatorError> {
        let now = self.clock.now();
        let p = self
            .pools
            .get(pool)
            .ok_or_else(|| OperatorError::UnknownPool(pool.to_owned()))?;
        let mut model = self.lock_model().await;
        let current = Self::pool_current(&model, pool);
        let limits = match what {
            "freeze" => Some((current, current)),
            "restore" => None,
            "drain" => Some((0, 0)),
            other => {
                return Err(OperatorError::NotAllowed(format!(
                    "unknown pool action {other:?}"
                )));
            }
        };
        let a = action(now, actor, "pool", pool, what, reason);
        let mut batch = WriteBatch {
            pool_limits: vec![(p.name.clone(), limits)],
            audit: vec![a],
            ..Default::default()
        };
        match limits {
            Some(l) => model.pool_limits.insert(p.name.clone(), l),
            None => model.pool_limits.remove(&p.name),
        };
        let drain = what == "drain";
        let members: Vec<HostId> = model
            .hosts
            .iter()
            .filter(|(_, h)| drain && h.record.pool.as_deref() == Some(pool))
            .map(|(id, _)| id.clone())
            .collect();
        let pending: Vec<String> = model
            .launches
            .values()
            .filter(|l| drain && l.pool == pool)
            .map(|l| l.host.clone())
            .collect();
        let forgotten: Vec<LaunchRecord> = pending
            .iter()
            .filter_map(|id| {
                self.forget_launch(&mut model, id, actor, Some("pool drained"), &mut batch)
            })
            .collect();
        let audit = batch.audit.clone();
        let durable = self.commit_batch(&mut model, batch, &[]).await?;
        drop(model);
        durable.wait().await?;
        for a in &audit {
            self.counted(a);
        }
        tracing::info!(%pool, %actor, action = what, "admin action on pool");
        for l in &forgotten {
            self.launch_forgotten(l);
        }
        for id in members {
            self.set_idle_behavior(
                actor,
                id.as_str(),
                IdleBehavior::Drain,
                Some("pool drained"),
            )
            .await?;
        }
        Ok(())
    }
}
