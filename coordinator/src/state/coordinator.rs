//! The coordinator's core: the live model behind one lock, the store behind it, and the
//! operations the API and the agent link call. Every change is made in the model under its
//! lock and queued for the store (group commit, `crate::state::committer`); the lock is released
//! before the disk is touched, and no one is answered before the change is durable.

use crate::domain::account::Account;
use crate::domain::billing::Billing;
use crate::domain::server::ServerRecord;
use crate::policy::scheduler::{Cluster, FreeResources};
use crate::state::model::{HostEntry, Model};
use crate::state::settings::SchedulerSettings;
use crate::store::{Store, StoreError};
use backfill_shared::protocol::DesiredState;

mod commit;
mod read;
use backfill_shared::{
    Clock, HostId, PerfFactor, ServerClass, ServerId, ServerStatus, WorkerState, Workload,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Mutex, RwLock, watch};

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("server {0} does not exist")]
    NotFound(ServerId),
    #[error("drive {0} does not exist")]
    DriveNotFound(backfill_shared::DriveId),
    /// A drive a running server uses cannot be deleted, resized or cloned.
    #[error("{0}")]
    DriveInUse(String),
    #[error("server {id} is {status}; {what}")]
    InvalidState {
        id: ServerId,
        status: &'static str,
        what: &'static str,
    },
    #[error("out of capacity: {0}")]
    NeverFits(String),
    #[error(
        "account {0:?} does not exist; an operator creates it with `backfillctl account create {0}`"
    )]
    NoAccount(String),
    #[error("quota exceeded: {0}")]
    Quota(String),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    Exists(String),
    /// The caller may not do this here (a driver or network mode the configuration keeps
    /// from it), saying which setting.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub use crate::state::server_index::Scope;

/// A validated create request.
#[derive(Debug, Clone)]
pub struct NewServer {
    pub name: String,
    pub cpu: u64,
    pub smp: u32,
    pub mem: u64,
    pub meta: BTreeMap<String, String>,
    pub tags: Vec<String>,
    pub vnc_password: Option<String>,
    pub workload: Option<Workload>,
    pub priority: i32,
    /// The flavor it was created as (its size comes from it).
    pub flavor: Option<String>,
    /// The flavor is preemptible: a create in `/servers/` makes a spot server.
    pub preemptible: bool,
    /// The device profile it names (its GPUs), resolved by the coordinator at create.
    pub device_profile: Option<String>,
    pub gpu_request: Option<crate::domain::server::GpuRequest>,
    /// Its drives (CloudSigma's `drives`), checked against the owner's drives at create and
    /// edit.
    pub drives: Vec<backfill_shared::DriveAttachment>,
}

#[derive(Debug)]
pub struct Coordinator {
    pub(crate) store: Store,
    /// The live model. Writes take it exclusively (`lock_model`) to change it, never across
    /// store IO; reads share it (`read_model`), so readers do not wait for one another.
    pub(crate) model: RwLock<Model>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) settings: SchedulerSettings,
    pub(crate) billing: Billing,
    pub(crate) metrics: Arc<crate::telemetry::Metrics>,
    pub(crate) pools: crate::policy::pools::Pools,
    pub(crate) operator: crate::state::settings::OperatorConfig,
    pub(crate) provision_log: crate::state::settings::SharedProvisionLog,
    /// The running configuration as operators may see it (secrets redacted).
    config_view: serde_json::Value,
    /// The agent link's address as agents reach it (`{link}` in provisioner commands).
    pub(crate) link_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// Woken when events are committed, so the webhook worker delivers at once.
    pub(crate) events_ready: Arc<tokio::sync::Notify>,
    pub(crate) webhooks: crate::state::settings::WebhookConfig,
    /// Who may run which driver (`[drivers]`).
    pub(crate) access: crate::state::access::DriverAccess,
    /// Writes the model's changes to the store, grouped (see `crate::state::committer`).
    pub(crate) committer: crate::state::committer::Committer,
    /// `[drives]`: storage quota and library drives.
    pub(crate) drive_config: crate::domain::library::DrivesConfig,
    /// The accounts API requests look up (see `crate::state::account_cache`).
    pub(crate) accounts: crate::state::account_cache::AccountCache,
    /// Serializes webhook registrations (a per-account count, then an insert); webhooks are
    /// not model state, so the model's lock is not held across their store calls.
    pub(crate) webhook_writes: Mutex<()>,
    next_conn: AtomicU64,
}

impl Coordinator {
    /// Loads the model from the store. Hosts start `down` until their agent reconnects; servers
    /// keep the state they had (a lost coordinator stops nothing).
    pub async fn load(
        store: impl Into<Store>,
        clock: Arc<dyn Clock>,
        backfill_accounts: &[String],
        settings: SchedulerSettings,
    ) -> Result<Coordinator, StoreError> {
        let store: Store = store.into();
        let now = clock.now();
        store.seed_accounts(backfill_accounts, &[], now).await?;
        let mut model = Model::with_cluster(Cluster::with_classes(settings.classes));
        for record in store.hosts().await? {
            let id = record.id.clone();
            model
                .hosts
                .insert(id.clone(), HostEntry::new(record, WorkerState::Down, now));
            model.sync_host(&id);
        }
        // Drives before servers: a server's drives say where it may run.
        for d in store.drives().await? {
            model.drives.insert(d.uuid, d);
        }
        model.accel = crate::state::accel::Accel::load(&store).await?;
        for s in store.servers().await? {
            model.put_server(s, now);
        }
        for l in store.launches().await? {
            model.launches.insert(l.host.clone(), l);
        }
        model.pool_limits = store.pool_limits().await?;
        model.auto_mode =
            store.settings().await?.get("auto_mode").map(String::as_str) == Some("on");
        let metrics: Arc<crate::telemetry::Metrics> = Arc::default();
        let events_ready: Arc<tokio::sync::Notify> = Arc::default();
        let committer = crate::state::committer::Committer::start(
            store.clone(),
            metrics.clone(),
            events_ready.clone(),
        );
        model.epoch = committer.epoch();
        Ok(Coordinator {
            committer,
            store,
            model: RwLock::new(model),
            clock,
            settings,
            billing: Billing::default(),
            metrics,
            pools: crate::policy::pools::Pools::default(),
            operator: crate::state::settings::OperatorConfig::default(),
            provision_log: Arc::default(),
            config_view: serde_json::Value::Null,
            link_addr: std::sync::OnceLock::new(),
            events_ready,
            webhooks: crate::state::settings::WebhookConfig::default(),
            access: crate::state::access::DriverAccess::default(),
            drive_config: crate::domain::library::DrivesConfig::default(),
            accounts: Default::default(),
            webhook_writes: Mutex::new(()),
            next_conn: AtomicU64::new(1),
        })
    }

    /// Pools and the operator settings. Auto mode starts as configured unless an operator has
    /// set it since (the stored setting wins).
    pub async fn with_operator(
        mut self,
        pools: crate::policy::pools::Pools,
        operator: crate::state::settings::OperatorConfig,
    ) -> Result<Coordinator, StoreError> {
        if !self.store.settings().await?.contains_key("auto_mode") {
            self.model.get_mut().auto_mode = operator.auto_mode;
        }
        let model = self.model.get_mut();
        let ids: Vec<HostId> = model.hosts.keys().cloned().collect();
        for id in ids {
            if let Some(h) = model.hosts.get_mut(&id) {
                h.reservation = pools.reservation(h.record.pool.as_deref());
            }
            model.sync_host(&id);
        }
        self.pools = pools;
        self.operator = operator;
        Ok(self)
    }

    /// `[webhooks]`: receiver URL rules, retries and limits.
    pub fn with_webhooks(mut self, cfg: crate::state::settings::WebhookConfig) -> Coordinator {
        self.webhooks = cfg;
        self
    }

    /// The configuration shown at `/dynamiccluster/server/config`; the caller redacts secrets.
    /// Who may run which driver.
    pub fn with_driver_access(mut self, access: crate::state::access::DriverAccess) -> Coordinator {
        self.access = access;
        self
    }

    /// `[drives]`: storage quota and library drives.
    pub fn with_drives(mut self, cfg: crate::domain::library::DrivesConfig) -> Coordinator {
        self.drive_config = cfg;
        self
    }

    pub fn with_config_view(mut self, view: serde_json::Value) -> Coordinator {
        self.config_view = view;
        self
    }

    pub fn config_view(&self) -> serde_json::Value {
        self.config_view.clone()
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// The configured flavors.
    pub fn with_flavors(mut self, flavors: crate::domain::flavors::Flavors) -> Coordinator {
        self.model.get_mut().flavors = Arc::new(flavors);
        self
    }

    pub async fn flavors(&self) -> Arc<crate::domain::flavors::Flavors> {
        self.read_model().await.flavors.clone()
    }

    /// Prices and the metering interval (the defaults otherwise).
    pub fn with_billing(mut self, billing: Billing) -> Coordinator {
        self.billing = billing;
        self
    }

    pub(crate) fn new_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub async fn free_resources(&self) -> FreeResources {
        self.read_model().await.free_resources()
    }

    pub async fn host_connected(&self, host: &HostId) -> bool {
        self.read_model()
            .await
            .hosts
            .get(host)
            .is_some_and(|h| h.session.is_some())
    }

    pub async fn create_servers(
        &self,
        owner: &Account,
        class: ServerClass,
        new: Vec<NewServer>,
    ) -> Result<Vec<ServerRecord>, OpError> {
        let now = self.clock.now();
        // Device profiles are read before the model is locked (nothing here needs it).
        let mut new = new;
        for n in &mut new {
            if let Some(name) = &n.device_profile {
                let profile =
                    self.device_profile(name, true)
                        .await
                        .map_err(|e| OpError::Invalid {
                            field: "device_profile",
                            message: e.to_string(),
                        })?;
                n.gpu_request = Some(crate::domain::accel::gpu_request(&profile).map_err(|e| {
                    OpError::Invalid {
                        field: "device_profile",
                        message: e.to_string(),
                    }
                })?);
            }
        }
        let mut model = self.lock_model().await;
        crate::state::quota::check_create(&model, owner, &new)?;
        for n in &mut new {
            n.drives = crate::state::drive_rules::check_attachments(
                &model,
                owner,
                None,
                std::mem::take(&mut n.drives),
            )?;
        }
        for n in &new {
            let w = crate::state::drive_rules::runs_with_drives(n.workload.as_ref(), &n.drives)?;
            self.access.check(owner, w.as_ref())?;
            check_runnable(&model, w.as_ref())?;
        }
        let records: Vec<ServerRecord> = new
            .into_iter()
            .map(|n| ServerRecord {
                uuid: ServerId::new_random(),
                owner: owner.name.clone(),
                name: n.name,
                class: if n.preemptible && class == ServerClass::Normal {
                    ServerClass::Spot
                } else {
                    class
                },
                cpu: n.cpu,
                smp: n.smp,
                mem: n.mem,
                meta: n.meta,
                tags: n.tags,
                vnc_password: n.vnc_password,
                workload: n.workload,
                status: ServerStatus::Stopped,
                host: None,
                perf_factor: PerfFactor::FULL,
                active_since: None,
                incarnation: 0,
                termination: None,
                queued_reason: None,
                priority: n.priority,
                created_at: now,
                network: None,
                limits: None,
                metered_until: None,
                metered_perf: PerfFactor::FULL,
                shutdown_until: None,
                flavor: n.flavor,
                gpu_request: n.gpu_request,
                gpus: Vec::new(),
                instance_type: String::new(),
                last_host: None,
                stop_reason: None,
                drives: n.drives,
            })
            .collect();
        let mut arqs = Vec::new();
        for r in &records {
            arqs.extend(
                self.arqs_for_server(&model, owner, r)
                    .map_err(|e| OpError::Invalid {
                        field: "device_profile",
                        message: e.to_string(),
                    })?,
            );
        }
        let ids: Vec<ServerId> = records.iter().map(|r| r.uuid).collect();
        let batch = crate::store::WriteBatch {
            inserts: records,
            arqs_new: arqs,
            ..Default::default()
        };
        let durable = self.commit_batch(&mut model, batch, &[]).await?;
        let created = ids
            .iter()
            .filter_map(|id| model.servers.get(id))
            .map(|r| model.as_seen(r))
            .collect();
        drop(model);
        durable.wait().await?;
        Ok(created)
    }

    /// One page of `owner`'s servers (every account's for the operator's view, `None`) in
    /// `scope` that match `query`, as the API shows them, and how many match in all. Copies
    /// only the page.
    pub async fn page_servers(
        &self,
        owner: Option<&Account>,
        scope: Scope,
        query: &crate::state::server_index::ServerQuery,
    ) -> (usize, Vec<ServerRecord>) {
        let model = self.read_model().await;
        let (total, ids) =
            model
                .index()
                .page(&model.servers, owner.map(|a| a.name.as_str()), scope, query);
        let page = ids
            .iter()
            .filter_map(|id| model.servers.get(id))
            .map(|s| model.as_seen(s))
            .collect();
        (total, page)
    }

    /// The operator's view of one server, whoever owns it.
    pub async fn get_any_server(
        &self,
        scope: Scope,
        id: ServerId,
    ) -> Result<ServerRecord, OpError> {
        let model = self.read_model().await;
        model
            .servers
            .get(&id)
            .filter(|s| scope.sees(s.class))
            .map(|s| model.as_seen(s))
            .ok_or(OpError::NotFound(id))
    }

    pub async fn get_server(
        &self,
        owner: &Account,
        scope: Scope,
        id: ServerId,
    ) -> Result<ServerRecord, OpError> {
        let model = self.read_model().await;
        visible(&model, owner, scope, id).map(|s| model.as_seen(s))
    }

    /// CloudSigma's `PUT`: a running server takes only `name`, `meta` and `tags` (the rest is
    /// ignored, as documented); a stopped one takes everything. A running server's agent gets
    /// the new name and meta for its guest's metadata.
    pub async fn edit(
        &self,
        owner: &Account,
        scope: Scope,
        id: ServerId,
        edit: NewServer,
    ) -> Result<ServerRecord, OpError> {
        let mut model = self.lock_model().await;
        let current = visible(&model, owner, scope, id)?.clone();
        let mut next = current.clone();
        next.name = edit.name;
        next.meta = edit.meta;
        next.tags = edit.tags;
        let idle = current.status == ServerStatus::Stopped;
        if idle {
            crate::state::quota::check_size(owner, edit.cpu, edit.mem)?;
            if edit.workload != current.workload
                || !crate::state::drive_rules::same_attachments(&edit.drives, &current.drives)
            {
                let w = crate::state::drive_rules::runs_with_drives(
                    edit.workload.as_ref(),
                    &edit.drives,
                )?;
                self.access.check(owner, w.as_ref())?;
                check_runnable(&model, w.as_ref())?;
            }
            next.cpu = edit.cpu;
            next.smp = edit.smp;
            next.mem = edit.mem;
            next.vnc_password = edit.vnc_password;
            next.workload = edit.workload;
            next.priority = edit.priority;
            next.flavor = edit.flavor;
            if !crate::state::drive_rules::same_attachments(&edit.drives, &current.drives) {
                next.drives = crate::state::drive_rules::check_attachments(
                    &model,
                    owner,
                    Some(id),
                    edit.drives,
                )?;
            }
        } else if !crate::state::drive_rules::same_attachments(&edit.drives, &current.drives) {
            return Err(OpError::InvalidState {
                id,
                status: current.status.as_str(),
                what: "drives are attached and detached only while the server is stopped",
            });
        }
        if next != current {
            let guest_changed = next.name != current.name || next.meta != current.meta;
            let hosts: Vec<HostId> = match &current.host {
                Some(h) if guest_changed => vec![h.clone()],
                _ => Vec::new(),
            };
            let durable = self.commit(&mut model, vec![next], &hosts).await?;
            let seen = visible(&model, owner, scope, id).map(|s| model.as_seen(s));
            drop(model);
            durable.wait().await?;
            return seen;
        }
        visible(&model, owner, scope, id).map(|s| model.as_seen(s))
    }

    pub async fn delete(&self, owner: &Account, scope: Scope, id: ServerId) -> Result<(), OpError> {
        let mut model = self.lock_model().await;
        let current = visible(&model, owner, scope, id)?;
        if current.status != ServerStatus::Stopped {
            return Err(OpError::InvalidState {
                id,
                status: current.status.as_str(),
                what: "stop it before deleting it",
            });
        }
        // The host that kept its disk hears that it may go, through a new generation written
        // with the delete. The server's ARQs go with it.
        let kept_on: Vec<HostId> = current
            .last_host
            .clone()
            .filter(|h| model.kept.get(h).is_some_and(|k| k.contains(&id)))
            .into_iter()
            .collect();
        let batch = crate::store::WriteBatch {
            deletes: vec![id],
            ..Default::default()
        };
        let durable = self.commit_batch(&mut model, batch, &kept_on).await?;
        drop(model);
        Ok(durable.wait().await?)
    }

    /// A fresh watch channel holding the host's current desired state.
    pub(crate) fn desired_channel(
        model: &Model,
        host: &HostId,
    ) -> (
        watch::Sender<Arc<DesiredState>>,
        watch::Receiver<Arc<DesiredState>>,
    ) {
        watch::channel(Arc::new(model.desired_state(host)))
    }
}

/// The server if it exists, belongs to `owner` and is in `scope`; otherwise "not found", so a
/// tenant cannot probe for other tenants' ids.
pub(crate) fn visible<'m>(
    model: &'m Model,
    owner: &Account,
    scope: Scope,
    id: ServerId,
) -> Result<&'m ServerRecord, OpError> {
    model
        .servers
        .get(&id)
        .filter(|s| s.owner == owner.name && scope.sees(s.class))
        .ok_or(OpError::NotFound(id))
}

/// A workload of a kind (or VM image) that no host of the fleet has is refused up front,
/// naming what the fleet runs. Before any host has connected, nothing is refused here.
fn check_runnable(model: &Model, workload: Option<&Workload>) -> Result<(), OpError> {
    let needs = backfill_shared::workload::Needs::of(workload);
    match model.cluster.some_host_provides(&needs) {
        Some(false) => Err(OpError::Invalid {
            field: "workload",
            message: format!(
                "no host of this fleet can run a {needs} workload; it runs: {}",
                model.cluster.driver_kinds()
            ),
        }),
        _ => Ok(()),
    }
}
