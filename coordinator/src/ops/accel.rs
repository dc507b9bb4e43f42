//! The coordinator's accelerator operations: device profiles, ARQs made by tenants and bound by
//! operators (Cyborg's API), and ARQs made for servers, bound and unbound by the coordinator
//! as their servers are placed and stopped. Profiles and ARQs live in the model
//! (`crate::state::accel`): changed under its lock, written through the group commit.

use crate::domain::accel::{Arq, ArqState, DeviceProfile, InvalidAccel, group_devices, pci_handle};
use crate::domain::account::Account;
use crate::domain::server::ServerRecord;
use crate::domain::server::holds_resources;
use crate::state::coordinator::Coordinator;
use crate::state::model::Model;
use crate::store::StoreError;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    /// `?bind_state=resolved` while some ARQ of the instance is not.
    #[error("accelerator requests of instance {0} are not resolved yet")]
    Locked(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl From<InvalidAccel> for AccelError {
    fn from(e: InvalidAccel) -> AccelError {
        AccelError::Invalid(e.0)
    }
}

/// `GET /accelerator_requests` filters.
#[derive(Debug, Clone, Default)]
pub struct ArqFilter {
    pub instance: Option<String>,
    /// `?bind_state=resolved`: with `instance`, 423 while any of its ARQs is unresolved.
    pub resolved: bool,
}

/// One ARQ's JSON-patch, validated: bind with these fields, or unbind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindPatch {
    Bind {
        hostname: String,
        device_rp_uuid: String,
        instance_uuid: String,
        project_id: Option<String>,
    },
    Unbind,
}

fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Coordinator {
    pub async fn device_profiles(&self) -> Result<Vec<DeviceProfile>, AccelError> {
        Ok(self.read_model().await.accel.profiles.clone())
    }

    /// A profile by uuid or (when `by_name`) by name.
    pub async fn device_profile(
        &self,
        key: &str,
        by_name: bool,
    ) -> Result<DeviceProfile, AccelError> {
        self.lock_model()
            .await
            .accel
            .profiles
            .iter()
            .find(|p| p.uuid == key || (by_name && p.name == key))
            .cloned()
            .ok_or_else(|| AccelError::NotFound(format!("device profile {key} could not be found")))
    }

    /// Applies `batch` (profile and ARQ changes) to the model and queues its write; answers
    /// once it is durable, the model's lock released before that.
    async fn commit_accel(
        &self,
        mut model: tokio::sync::RwLockWriteGuard<'_, Model>,
        batch: crate::store::WriteBatch,
    ) -> Result<(), AccelError> {
        let durable = self.commit_batch(&mut model, batch, &[]).await?;
        drop(model);
        durable.wait().await?;
        Ok(())
    }

    pub async fn create_profile(
        &self,
        name: &str,
        description: &str,
        groups: Vec<BTreeMap<String, String>>,
    ) -> Result<DeviceProfile, AccelError> {
        crate::domain::accel::validate_profile(name, description, &groups)?;
        let p = DeviceProfile {
            uuid: new_uuid(),
            name: name.to_owned(),
            description: description.to_owned(),
            groups,
            created_at: self.clock.now(),
            updated_at: None,
        };
        let model = self.lock_model().await;
        if model.accel.profile(name).is_some() {
            return Err(AccelError::Conflict(format!(
                "device profile with name {name} already exists"
            )));
        }
        let batch = crate::store::WriteBatch {
            profiles_new: vec![p.clone()],
            ..Default::default()
        };
        self.commit_accel(model, batch).await?;
        tracing::info!(profile = %p.name, uuid = %p.uuid, "device profile created");
        Ok(p)
    }

    /// Deletes the named (or uuid'd) profiles, all or none; a profile in use (by an ARQ or a
    /// server's GPU request) is refused.
    pub async fn delete_profiles(&self, keys: &[String]) -> Result<(), AccelError> {
        let model = self.lock_model().await;
        let mut chosen: Vec<&DeviceProfile> = Vec::new();
        for k in keys {
            let p = model
                .accel
                .profiles
                .iter()
                .find(|p| p.uuid == *k || p.name == *k)
                .ok_or_else(|| {
                    AccelError::NotFound(format!("device profile {k} could not be found"))
                })?;
            chosen.push(p);
        }
        for p in &chosen {
            let by_arq = model
                .accel
                .arqs
                .values()
                .any(|a| a.device_profile_name == p.name);
            let by_server = model.servers.values().any(|s| {
                s.gpu_request
                    .as_ref()
                    .is_some_and(|g| g.device_profile == p.name)
            });
            if by_arq || by_server {
                return Err(AccelError::Conflict(format!(
                    "device profile {} is in use by accelerator requests or servers",
                    p.name
                )));
            }
        }
        let mut profiles_deleted: Vec<String> = chosen.iter().map(|p| p.uuid.clone()).collect();
        profiles_deleted.dedup();
        let batch = crate::store::WriteBatch {
            profiles_deleted,
            ..Default::default()
        };
        self.commit_accel(model, batch).await
    }

    /// Cyborg's create: N groups x M devices give N*M ARQs, all `Initial`.
    pub async fn create_arqs(
        &self,
        owner: &Account,
        profile_name: &str,
        server: Option<&str>,
    ) -> Result<Vec<Arq>, AccelError> {
        let model = self.lock_model().await;
        let arqs = self.new_arqs(&model, owner, profile_name, server)?;
        let batch = crate::store::WriteBatch {
            arqs_new: arqs.clone(),
            ..Default::default()
        };
        self.commit_accel(model, batch).await?;
        Ok(arqs)
    }

    fn new_arqs(
        &self,
        model: &Model,
        owner: &Account,
        profile_name: &str,
        server: Option<&str>,
    ) -> Result<Vec<Arq>, AccelError> {
        let profile = model.accel.profile(profile_name).ok_or_else(|| {
            AccelError::NotFound(format!("device profile {profile_name} could not be found"))
        })?;
        let now = self.clock.now();
        let mut out = Vec::new();
        for (i, g) in profile.groups.iter().enumerate() {
            for _ in 0..group_devices(g) {
                out.push(Arq {
                    uuid: new_uuid(),
                    owner: owner.name.clone(),
                    state: ArqState::Initial,
                    device_profile_name: profile.name.clone(),
                    device_profile_group_id: u32::try_from(i).unwrap_or(u32::MAX),
                    hostname: None,
                    device_rp_uuid: None,
                    instance_uuid: None,
                    project_id: Some(owner.uuid.clone()),
                    attach_handle_type: String::new(),
                    attach_handle_uuid: None,
                    attach_handle_info: BTreeMap::new(),
                    server: server.map(str::to_owned),
                    created_at: now,
                    updated_at: None,
                });
            }
        }
        Ok(out)
    }

    /// The ARQs `owner` may see (`None`: every one, for operators), filtered.
    pub async fn list_arqs(
        &self,
        owner: Option<&str>,
        filter: &ArqFilter,
    ) -> Result<Vec<Arq>, AccelError> {
        let model = self.read_model().await;
        let all: Vec<Arq> = model
            .accel
            .arqs()
            .into_iter()
            .filter(|a| owner.is_none_or(|o| a.owner == o))
            .filter(|a| {
                filter
                    .instance
                    .as_ref()
                    .is_none_or(|i| a.instance_uuid.as_ref() == Some(i))
            })
            .cloned()
            .collect();
        drop(model);
        if filter.resolved
            && let Some(i) = &filter.instance
            && all.iter().any(|a| !a.state.resolved())
        {
            return Err(AccelError::Locked(i.clone()));
        }
        Ok(all)
    }

    pub async fn get_arq(&self, owner: Option<&str>, uuid: &str) -> Result<Arq, AccelError> {
        self.lock_model()
            .await
            .accel
            .arqs
            .get(uuid)
            .filter(|a| owner.is_none_or(|o| a.owner == o))
            .cloned()
            .ok_or_else(|| {
                AccelError::NotFound(format!("accelerator request {uuid} could not be found"))
            })
    }

    /// Bind or unbind (operators): all patches checked before any is applied. Binding is
    /// asynchronous: ARQs go `BindStarted` now and are resolved by the next tick.
    pub async fn patch_arqs(
        &self,
        patches: &BTreeMap<String, BindPatch>,
    ) -> Result<(), AccelError> {
        let now = self.clock.now();
        let model = self.lock_model().await;
        let all = &model.accel.arqs;
        let mut changed = Vec::new();
        for (uuid, patch) in patches {
            let mut a = all.get(uuid).cloned().ok_or_else(|| {
                AccelError::NotFound(format!("accelerator request {uuid} could not be found"))
            })?;
            if let Some(s) = &a.server {
                return Err(AccelError::Invalid(format!(
                    "accelerator request {uuid} belongs to server {s}: it is bound and unbound with it"
                )));
            }
            match patch {
                BindPatch::Bind {
                    hostname,
                    device_rp_uuid,
                    instance_uuid,
                    project_id,
                } => {
                    let taken = all.values().any(|o| {
                        o.instance_uuid.as_deref() == Some(instance_uuid.as_str())
                            && !patches.contains_key(&o.uuid)
                    });
                    if taken {
                        return Err(AccelError::Invalid(format!(
                            "Instance {instance_uuid} already has accelerator requests. Cannot bind additional ARQs."
                        )));
                    }
                    a.to(ArqState::BindStarted, now)?;
                    a.hostname = Some(hostname.clone());
                    a.device_rp_uuid = Some(device_rp_uuid.clone());
                    a.instance_uuid = Some(instance_uuid.clone());
                    if project_id.is_some() {
                        a.project_id.clone_from(project_id);
                    }
                }
                BindPatch::Unbind => {
                    a.to(ArqState::Unbound, now)?;
                    unbind_fields(&mut a);
                }
            }
            changed.push(a);
        }
        let batch = crate::store::WriteBatch {
            arqs_changed: changed,
            ..Default::default()
        };
        self.commit_accel(model, batch).await
    }

    /// Resolves `BindStarted` ARQs (the tick): `Bound` when the host exists and has that
    /// healthy GPU, not already bound elsewhere; `BindFailed` otherwise. The write is queued
    /// and not waited for (a failure reloads the model).
    pub(crate) async fn resolve_bindings(&self) -> Result<(), StoreError> {
        let now = self.clock.now();
        let mut model = self.lock_model().await;
        let all = &model.accel.arqs;
        let mut changed = Vec::new();
        for a in all.values().filter(|a| a.state == ArqState::BindStarted) {
            let mut a = a.clone();
            let device = a.hostname.as_deref().and_then(|h| {
                let host = h.parse().ok()?;
                let entry = model.hosts.get(&host)?;
                entry
                    .record
                    .inventory
                    .gpus
                    .iter()
                    .find(|g| Some(&g.uuid) == a.device_rp_uuid.as_ref() && g.healthy)
                    .cloned()
            });
            let taken = all.values().any(|o| {
                o.uuid != a.uuid
                    && o.state == ArqState::Bound
                    && o.device_rp_uuid == a.device_rp_uuid
            });
            match device.filter(|_| !taken) {
                Some(g) => {
                    set_handle(&mut a, &g);
                    let _ = a.to(ArqState::Bound, now);
                }
                None => {
                    tracing::warn!(arq = %a.uuid, host = ?a.hostname, device = ?a.device_rp_uuid, "binding failed: no such free, healthy device on that host");
                    let _ = a.to(ArqState::BindFailed, now);
                }
            }
            changed.push(a);
        }
        if !changed.is_empty() {
            let batch = crate::store::WriteBatch {
                arqs_changed: changed,
                ..Default::default()
            };
            self.commit_batch(&mut model, batch, &[]).await?.detach();
        }
        Ok(())
    }

    /// Deletes ARQs by uuid (strict: an unknown one fails them all). A tenant may delete its
    /// own unbound ones; a bound one needs an operator.
    pub async fn delete_arqs(
        &self,
        owner: Option<&str>,
        uuids: &[String],
    ) -> Result<(), AccelError> {
        let model = self.lock_model().await;
        for u in uuids {
            let a = model
                .accel
                .arqs
                .get(u)
                .filter(|a| owner.is_none_or(|o| a.owner == o))
                .ok_or_else(|| {
                    AccelError::NotFound(format!("accelerator request {u} could not be found"))
                })?;
            if owner.is_some() && (a.state == ArqState::Bound || a.server.is_some()) {
                return Err(AccelError::Forbidden(
                    "This operation requires a service token. Use the Compute API to manage instance accelerators."
                        .into(),
                ));
            }
        }
        let batch = crate::store::WriteBatch {
            arqs_deleted: uuids.to_vec(),
            ..Default::default()
        };
        self.commit_accel(model, batch).await
    }

    /// Deletes every ARQ bound to `instance` (idempotent).
    pub async fn delete_arqs_of_instance(&self, instance: &str) -> Result<(), AccelError> {
        let model = self.lock_model().await;
        let uuids: Vec<String> = model
            .accel
            .arqs
            .values()
            .filter(|a| a.instance_uuid.as_deref() == Some(instance))
            .map(|a| a.uuid.clone())
            .collect();
        if uuids.is_empty() {
            return Ok(());
        }
        let batch = crate::store::WriteBatch {
            arqs_deleted: uuids,
            ..Default::default()
        };
        self.commit_accel(model, batch).await
    }

    /// The ARQs made for a new server with a device profile (under the model's lock).
    pub(crate) fn arqs_for_server(
        &self,
        model: &Model,
        owner: &Account,
        s: &ServerRecord,
    ) -> Result<Vec<Arq>, AccelError> {
        match &s.gpu_request {
            Some(g) => self.new_arqs(model, owner, &g.device_profile, Some(&s.uuid.to_string())),
            None => Ok(Vec::new()),
        }
    }

    /// The ARQ changes that bring those of servers with GPUs in line with them: bound to their
    /// devices while placed, unbound otherwise. Made with every commit that changes a server
    /// with GPUs (under the model's lock) and written in the same transaction.
    pub(crate) fn arq_changes(&self, model: &Model, servers: &[ServerRecord]) -> Vec<Arq> {
        let now = self.clock.now();
        let mut changed = Vec::new();
        for s in servers.iter().filter(|s| s.gpu_request.is_some()) {
            let host = s.host.as_ref().filter(|_| holds_resources(s.status));
            let arqs = model.accel.of_server(&s.uuid.to_string());
            for (i, a) in arqs.into_iter().cloned().enumerate() {
                let want = host.zip(s.gpus.get(i));
                let mut next = a.clone();
                match want {
                    Some((h, dev))
                        if a.state != ArqState::Bound || a.device_rp_uuid.as_ref() != Some(dev) =>
                    {
                        if a.state == ArqState::Bound {
                            let _ = next.to(ArqState::Unbound, now);
                        }
                        let _ = next.to(ArqState::BindStarted, now);
                        next.hostname = Some(h.to_string());
                        next.device_rp_uuid = Some(dev.clone());
                        next.instance_uuid = Some(s.uuid.to_string());
                        let g = model.hosts.get(h).and_then(|e| {
                            e.record
                                .inventory
                                .gpus
                                .iter()
                                .find(|g| g.uuid == *dev)
                                .cloned()
                        });
                        if let Some(g) = g {
                            set_handle(&mut next, &g);
                        }
                        let _ = next.to(ArqState::Bound, now);
                    }
                    None if a.state == ArqState::Bound => {
                        let _ = next.to(ArqState::Unbound, now);
                        unbind_fields(&mut next);
                    }
                    _ => {}
                }
                if next != a {
                    changed.push(next);
                }
            }
        }
        changed
    }
}

fn unbind_fields(a: &mut Arq) {
    a.hostname = None;
    a.device_rp_uuid = None;
    a.instance_uuid = None;
    a.attach_handle_type = String::new();
    a.attach_handle_uuid = None;
    a.attach_handle_info = BTreeMap::new();
}

/// How the device is attached: by PCI address for a whole GPU, as a MIG device otherwise.
fn set_handle(a: &mut Arq, g: &backfill_shared::GpuDevice) {
    a.attach_handle_type = if g.mig.is_some() { "MDEV" } else { "PCI" }.into();
    a.attach_handle_uuid = Some(g.uuid.clone());
    a.attach_handle_info = pci_handle(&g.pci_bus_id);
}
