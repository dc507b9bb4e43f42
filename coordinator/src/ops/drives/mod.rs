//! Drives (issue 19): a tenant's disks, each on the host whose agent made it; library drives,
//! the disk images hosts offer; attaching drives to servers. Every change is made in the model
//! and queued for the store under the model's lock; the caller is answered, and the host gets
//! its drive orders, once it is durable (the lock released before that).

use crate::domain::account::Account;
use crate::domain::server::ServerRecord;
use crate::state::coordinator::{Coordinator, OpError};
use crate::state::model::Model;
use crate::store::{DriveRecord, DriveStatus, WriteBatch};
use backfill_shared::drive::{
    DriveId, DriveOrders, DriveReport, DriveSource, Media, ObservedDriveState,
};
use backfill_shared::{HostId, ServerId, ServerStatus};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::{RwLockWriteGuard, watch};

mod moving;
#[cfg(test)]
#[path = "moving_tests.rs"]
mod moving_tests;
#[cfg(test)]
#[path = "page_tests.rs"]
mod page_tests;
use crate::state::drive_moves::refuse_moving;
use crate::state::drive_rules::{mounts, owned};

/// A drive as the API shows it: the record, what it is mounted on, and its CloudSigma status.
#[derive(Debug, Clone, PartialEq)]
pub struct DriveView {
    pub record: DriveRecord,
    /// Servers it is attached to.
    pub mounted_on: Vec<ServerId>,
    /// `creating`, `unmounted`, `mounted`, `cloning_src`, `cloning_dst` or `failed`.
    pub status: &'static str,
}

/// A library drive: a disk image some host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibDrive {
    pub uuid: DriveId,
    /// Its file name in the hosts' image directories.
    pub image: String,
    pub format: String,
    pub size: u64,
    /// The connected hosts that hold it.
    pub hosts: Vec<HostId>,
}

/// A drive to create (blank) or the changes of an edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDrive {
    pub name: String,
    pub size: u64,
    pub media: Media,
    pub meta: BTreeMap<String, String>,
    pub tags: Vec<String>,
}

/// What a clone may set: its name, media and size (never smaller than the source).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloneOpts {
    pub name: Option<String>,
    pub media: Option<Media>,
    pub size: Option<u64>,
}

fn not_found(id: DriveId) -> OpError {
    OpError::DriveNotFound(id)
}

fn view(model: &Model, d: &DriveRecord, mounts: &BTreeMap<DriveId, Vec<ServerId>>) -> DriveView {
    let mounted_on = mounts.get(&d.uuid).cloned().unwrap_or_default();
    let status = match d.status {
        DriveStatus::Creating if matches!(d.source, DriveSource::Clone { .. }) => "cloning_dst",
        DriveStatus::Creating => "creating",
        DriveStatus::Failed => "failed",
        DriveStatus::Deleting => "deleting",
        DriveStatus::Ready
            if model.drives.is_cloned(d.uuid) || model.moves.get(&d.uuid).is_some() =>
        {
            "cloning_src"
        }
        DriveStatus::Ready if mounted_on.is_empty() => "unmounted",
        DriveStatus::Ready => "mounted",
    };
    DriveView {
        record: d.clone(),
        mounted_on,
        status,
    }
}

/// Whether a server holds its host's resources or is on its way there (its drives are in use).
fn active(s: &ServerRecord) -> bool {
    s.status != ServerStatus::Stopped || crate::domain::server::is_queued(s)
}

/// The library drives: the disk images (qcow2, raw) of the hosts' image directories, by
/// name, with the connected hosts that hold each.
pub fn libdrives(model: &Model, cfg: &crate::domain::library::DrivesConfig) -> Vec<LibDrive> {
    let mut by_name: BTreeMap<String, LibDrive> = BTreeMap::new();
    for (id, h) in &model.hosts {
        let Some(vm) = &h.record.inventory.drivers.vm else {
            continue;
        };
        for img in vm
            .images
            .iter()
            .filter(|i| i.format == "qcow2" || i.format == "raw")
            .filter(|i| !cfg.only_declared || cfg.declared(&i.name).is_some())
        {
            let e = by_name.entry(img.name.clone()).or_insert_with(|| LibDrive {
                uuid: DriveId::for_library(&img.name),
                image: img.name.clone(),
                format: img.format.clone(),
                size: img.virtual_size,
                hosts: Vec::new(),
            });
            if h.session.is_some() {
                e.hosts.push(id.clone());
            }
        }
    }
    by_name.into_values().collect()
}

/// The connected VM host with the fewest drives among `candidates` (all VM hosts when `None`).
fn choose_host(model: &Model, candidates: Option<&[HostId]>) -> Option<HostId> {
    let count = |h: &HostId| model.drives.values().filter(|d| d.host == *h).count();
    model
        .hosts
        .iter()
        .filter(|(id, h)| {
            h.session.is_some()
                && h.record.inventory.drivers.vm.is_some()
                && candidates.is_none_or(|c| c.contains(id))
        })
        .map(|(id, _)| id.clone())
        .min_by_key(|h| (count(h), h.clone()))
}

/// Why no host can take a new drive: a 400 when the fleet has hosts and none runs VMs (it
/// never will), a 503 while VM hosts exist but none is connected (or none has connected yet).
fn no_drive_host(model: &Model) -> OpError {
    let vm_hosts = model
        .hosts
        .values()
        .any(|h| h.record.inventory.drivers.vm.is_some());
    if !model.hosts.is_empty() && !vm_hosts {
        return OpError::Invalid {
            field: "objects",
            message: format!(
                "drives live on hosts that run VMs, and no host of this fleet does; it runs: {}",
                model.cluster.driver_kinds()
            ),
        };
    }
    OpError::NeverFits("no host that runs VMs is connected to hold a drive".into())
}

impl Coordinator {
    pub async fn list_drives(&self, owner: &Account) -> Vec<DriveView> {
        let model = self.read_model().await;
        let mounts = mounts(&model);
        model
            .drives
            .listed(&owner.name)
            .map(|d| view(&model, d, &mounts))
            .collect()
    }

    /// A page of [`Coordinator::list_drives`]: `limit` drives (0: all) from `offset`, and how
    /// many the whole list holds. It costs what the owner's drives up to the page hold.
    pub async fn drive_page(
        &self,
        owner: &Account,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<DriveView>) {
        let model = self.read_model().await;
        let mounts = mounts(&model);
        let (total, page) = model.drives.page(&owner.name, offset, limit);
        let views = page.into_iter().map(|d| view(&model, d, &mounts)).collect();
        (total, views)
    }

    pub async fn get_drive(&self, owner: &Account, id: DriveId) -> Result<DriveView, OpError> {
        let model = self.read_model().await;
        let d = owned(&model, owner, id)?;
        Ok(view(&model, d, &mounts(&model)))
    }

    pub async fn libdrives(&self) -> Vec<LibDrive> {
        libdrives(&*self.read_model().await, &self.drive_config)
    }

    /// Stores new drives, then orders their hosts to make them.
    async fn add_drives(
        &self,
        mut model: RwLockWriteGuard<'_, Model>,
        owner: &Account,
        new: Vec<DriveRecord>,
    ) -> Result<Vec<DriveView>, OpError> {
        self.check_storage(&model, owner, new.iter().map(|d| d.size).sum())?;
        let hosts: BTreeSet<HostId> = new.iter().map(|d| d.host.clone()).collect();
        for d in &new {
            model.drives.insert(d.uuid, d.clone());
        }
        let mounts = mounts(&model);
        let views = new.iter().map(|d| view(&model, d, &mounts)).collect();
        let batch = WriteBatch {
            drives: new,
            ..Default::default()
        };
        self.commit_drives(model, batch, hosts).await?;
        Ok(views)
    }

    /// Queues `batch` (drive changes the model already has), releases the model's lock, and
    /// once the batch is durable hands `hosts` their drive orders: no host makes, moves or
    /// deletes a drive the store does not hold so.
    pub(crate) async fn commit_drives(
        &self,
        mut model: RwLockWriteGuard<'_, Model>,
        batch: WriteBatch,
        hosts: BTreeSet<HostId>,
    ) -> Result<(), OpError> {
        let durable = self.commit_batch(&mut model, batch, &[]).await?;
        drop(model);
        durable.wait().await?;
        self.push_drive_orders(&hosts).await;
        Ok(())
    }

    /// Hands `hosts` their drive orders as the model has them now.
    pub(crate) async fn push_drive_orders(&self, hosts: &BTreeSet<HostId>) {
        if hosts.is_empty() {
            return;
        }
        let model = self.lock_model().await;
        for h in hosts {
            model.push_drive_orders(h);
        }
    }

    fn record(
        &self,
        owner: &Account,
        n: NewDrive,
        host: HostId,
        source: DriveSource,
    ) -> DriveRecord {
        DriveRecord {
            uuid: DriveId::new_random(),
            owner: owner.name.clone(),
            name: n.name,
            size: n.size,
            media: n.media,
            host,
            source,
            status: DriveStatus::Creating,
            error: None,
            meta: n.meta,
            tags: n.tags,
            created_at: self.clock.now(),
            metered_until: Some(self.clock.now()),
        }
    }

    /// Blank drives, each on the connected VM host that holds the fewest drives.
    pub async fn create_drives(
        &self,
        owner: &Account,
        new: Vec<NewDrive>,
    ) -> Result<Vec<DriveView>, OpError> {
        let model = self.lock_model().await;
        let mut records = Vec::with_capacity(new.len());
        for n in new {
            let host = choose_host(&model, None).ok_or_else(|| no_drive_host(&model))?;
            records.push(self.record(owner, n, host, DriveSource::Blank));
        }
        self.add_drives(model, owner, records).await
    }

    /// A tenant's own drive for library drive `lib`: a copy-on-write clone on a host that holds
    /// the image.
    pub async fn clone_libdrive(
        &self,
        owner: &Account,
        lib: DriveId,
        opts: CloneOpts,
    ) -> Result<DriveView, OpError> {
        let model = self.lock_model().await;
        let l = libdrives(&model, &self.drive_config)
            .into_iter()
            .find(|l| l.uuid == lib)
            .ok_or(not_found(lib))?;
        let host = choose_host(&model, Some(&l.hosts)).ok_or_else(|| {
            OpError::NeverFits(format!(
                "no connected host holds the library image {:?}",
                l.image
            ))
        })?;
        let n = NewDrive {
            name: opts.name.unwrap_or_else(|| l.image.clone()),
            size: opts.size.unwrap_or(l.size).max(l.size),
            media: opts.media.unwrap_or_default(),
            meta: BTreeMap::new(),
            tags: Vec::new(),
        };
        let sha256 = self.library_sha256(&l.image);
        let d = self.record(
            owner,
            n,
            host,
            DriveSource::Library {
                image: l.image,
                sha256,
            },
        );
        let mut out = self.add_drives(model, owner, vec![d]).await?;
        out.pop().ok_or(not_found(lib))
    }

    /// `extra` more bytes of drives for `owner` against its storage quota, or where it has
    /// none `[drives] storage_quota_bytes` (an explicit unlimited quota ignores the default).
    fn check_storage(&self, model: &Model, owner: &Account, extra: u64) -> Result<(), OpError> {
        let Some(quota) = owner
            .quota
            .storage
            .or(self.drive_config.storage_quota_bytes)
        else {
            return Ok(());
        };
        if quota == crate::domain::account::UNLIMITED_STORAGE {
            return Ok(());
        }
        let held = crate::state::quota::in_use(model, &owner.name).storage;
        let want = held.saturating_add(extra);
        if want > quota {
            return Err(OpError::Quota(format!(
                "drives of {want} bytes would exceed the storage quota of {quota} bytes \
                 (the account holds {held}); delete drives it no longer needs"
            )));
        }
        Ok(())
    }

    /// The operator's declared checksum of a library image, if any.
    fn library_sha256(&self, image: &str) -> Option<String> {
        self.drive_config
            .declared(image)
            .and_then(|l| l.sha256.clone())
    }

    /// A full copy of the tenant's drive `id`, on the same host. A drive a running server
    /// writes to is not cloned (its copy would be torn).
    pub async fn clone_drive(
        &self,
        owner: &Account,
        id: DriveId,
        opts: CloneOpts,
    ) -> Result<DriveView, OpError> {
        let model = self.lock_model().await;
        let src = owned(&model, owner, id)?.clone();
        if src.status != DriveStatus::Ready {
            return Err(OpError::Conflict(format!(
                "drive {id} is {}; only a made drive can be cloned",
                src.status.as_str()
            )));
        }
        if let Some(s) = self.running_user(&model, id) {
            return Err(OpError::DriveInUse(format!(
                "drive {id} is mounted on server {s}, which is running; stop it to clone the drive"
            )));
        }
        refuse_moving(&model, id, "clone it")?;
        let n = NewDrive {
            name: opts.name.unwrap_or_else(|| format!("{} (clone)", src.name)),
            size: opts.size.unwrap_or(src.size).max(src.size),
            media: opts.media.unwrap_or(src.media),
            meta: src.meta.clone(),
            tags: src.tags.clone(),
        };
        let d = self.record(owner, n, src.host.clone(), DriveSource::Clone { drive: id });
        let mut out = self.add_drives(model, owner, vec![d]).await?;
        out.pop().ok_or(not_found(id))
    }

    /// The server using drive `id` that is not stopped, if any.
    fn running_user(&self, model: &Model, id: DriveId) -> Option<ServerId> {
        model
            .servers
            .values()
            .find(|s| active(s) && s.drives.iter().any(|a| a.drive == id))
            .map(|s| s.uuid)
    }

    /// CloudSigma's `PUT` and `resize`: name, meta and tags always; the size grows (never
    /// shrinks) only while no running server uses the drive.
    pub async fn edit_drive(
        &self,
        owner: &Account,
        id: DriveId,
        edit: NewDrive,
    ) -> Result<DriveView, OpError> {
        let mut model = self.lock_model().await;
        let current = owned(&model, owner, id)?.clone();
        let mut batch = WriteBatch::default();
        let mut next = current.clone();
        next.name = edit.name;
        next.meta = edit.meta;
        next.tags = edit.tags;
        if edit.media != current.media {
            return Err(OpError::Invalid {
                field: "media",
                message: "a drive's media is chosen at create; clone it with another media".into(),
            });
        }
        if edit.size < current.size {
            return Err(OpError::Invalid {
                field: "size",
                message: format!(
                    "a drive grows, never shrinks: size must be at least {}",
                    current.size
                ),
            });
        }
        if edit.size > current.size {
            refuse_moving(&model, id, "resize it")?;
            if let Some(s) = self.running_user(&model, id) {
                return Err(OpError::DriveInUse(format!(
                    "drive {id} is mounted on server {s}, which is running; stop it to resize the drive"
                )));
            }
            self.check_storage(&model, owner, edit.size - current.size)?;
            // The old size is charged up to now, the new one from now.
            let now = self.clock.now();
            batch.drive_usage = self.meter_drives(&mut model, Some(id), now);
            next.metered_until = model.drives.get(&id).and_then(|d| d.metered_until);
            next.size = edit.size;
        }
        let shown = view(&model, &next, &mounts(&model));
        if next != current {
            model.drives.insert(id, next.clone());
            batch.drives.push(next.clone());
        }
        let mut hosts = BTreeSet::new();
        if next.size != current.size {
            hosts.insert(next.host.clone());
        }
        if !batch.is_empty() {
            self.commit_drives(model, batch, hosts).await?;
        }
        Ok(shown)
    }

    /// Deletes a drive: refused while a running server uses it; detached from stopped servers.
    /// Its host deletes the file; the record goes when the host reports it gone.
    pub async fn delete_drive(&self, owner: &Account, id: DriveId) -> Result<(), OpError> {
        let mut model = self.lock_model().await;
        let current = owned(&model, owner, id)?.clone();
        if let Some(s) = self.running_user(&model, id) {
            return Err(OpError::DriveInUse(format!(
                "drive {id} is mounted on server {s}, which is running; stop the server or detach the drive first"
            )));
        }
        refuse_moving(&model, id, "delete it")?;
        let detached: Vec<ServerRecord> = model
            .servers
            .values()
            .filter(|s| s.drives.iter().any(|a| a.drive == id))
            .map(|s| {
                let mut s = s.clone();
                s.drives.retain(|a| a.drive != id);
                s
            })
            .collect();
        let now = self.clock.now();
        let drive_usage = self.meter_drives(&mut model, Some(id), now);
        let mut gone = model.drives.get(&id).cloned().unwrap_or(current);
        gone.status = DriveStatus::Deleting;
        gone.metered_until = None;
        let host = gone.host.clone();
        model.drives.insert(id, gone.clone());
        // Detached from stopped servers, metered and marked deleted in one write.
        let batch = WriteBatch {
            servers: detached,
            drive_usage,
            drives: vec![gone],
            ..Default::default()
        };
        self.commit_drives(model, batch, BTreeSet::from([host]))
            .await
    }

    /// The storage of drives as usage up to `now`, for a [`WriteBatch`]: those in `only`
    /// (before a resize or a delete), or else every metered drive last recorded `interval_s`
    /// ago or earlier. The model's drives are metered up to `now` already.
    pub(crate) fn meter_drives(
        &self,
        model: &mut Model,
        only: Option<DriveId>,
        now: i64,
    ) -> Vec<crate::store::DriveUsage> {
        let stale = now - self.billing.interval_s;
        let price = self.drive_config.storage_price();
        let usage: Vec<crate::store::DriveUsage> = model
            .drives
            .values()
            .filter(|d| match only {
                Some(id) => d.uuid == id,
                None => d.metered_until.is_some_and(|t| t <= stale),
            })
            .filter_map(|d| {
                let start = d.metered_until?;
                (now > start).then(|| crate::store::DriveUsage {
                    drive: d.uuid,
                    account: d.owner.clone(),
                    name: d.name.clone(),
                    start,
                    end: now,
                    size: d.size,
                    price,
                })
            })
            .collect();
        for u in &usage {
            model
                .drives
                .update(u.drive, |d| d.metered_until = Some(u.end));
        }
        usage
    }

    /// A fresh channel of `host`'s drive orders for its session `conn`.
    pub(crate) async fn drive_channel(
        &self,
        host: &HostId,
        conn: u64,
    ) -> watch::Receiver<Arc<DriveOrders>> {
        let mut model = self.lock_model().await;
        let (tx, rx) = watch::channel(Arc::new(model.drive_orders(host)));
        model.drive_links.insert(host.clone(), (conn, tx));
        rx
    }

    /// Forgets session `conn`'s drive channel (a newer session's stays).
    pub(crate) async fn drive_channel_gone(&self, host: &HostId, conn: u64) {
        let mut model = self.lock_model().await;
        if model.drive_links.get(host).is_some_and(|(c, _)| *c == conn) {
            model.drive_links.remove(host);
        }
    }

    /// What a host holds: drives being made become ready (or failed, with the reason); deleted
    /// drives it no longer holds are forgotten; sizes follow what the host reports.
    pub(crate) async fn apply_drive_report(
        &self,
        host: &HostId,
        report: DriveReport,
    ) -> Result<(), OpError> {
        let mut model = self.lock_model().await;
        let mut batch = WriteBatch::default();
        let held: BTreeMap<DriveId, &backfill_shared::drive::ObservedDrive> =
            report.drives.iter().map(|d| (d.id, d)).collect();
        let mine: Vec<DriveRecord> = model
            .drives
            .values()
            .filter(|d| d.host == *host)
            .cloned()
            .collect();
        for d in mine {
            let seen = held.get(&d.uuid);
            let mut next = d.clone();
            match (d.status, seen.map(|o| &o.state)) {
                (DriveStatus::Deleting, None) => {
                    batch.drives_deleted.push(d.uuid);
                    model.drives.remove(&d.uuid);
                    tracing::info!(drive = %d.uuid, host = %host, "drive deleted");
                    continue;
                }
                (DriveStatus::Creating, Some(ObservedDriveState::Ready)) => {
                    next.status = DriveStatus::Ready;
                }
                (DriveStatus::Creating, Some(ObservedDriveState::Failed { reason })) => {
                    tracing::warn!(drive = %d.uuid, host = %host, reason, "drive could not be made");
                    next.status = DriveStatus::Failed;
                    next.error = Some(reason.clone());
                    next.metered_until = None;
                }
                _ => {}
            }
            if let Some(o) = seen
                && o.state == ObservedDriveState::Ready
                && o.size > next.size
            {
                next.size = o.size;
            }
            if next != d {
                batch.drives.push(next.clone());
                model.drives.insert(d.uuid, next);
            }
        }
        Self::forget_moved_away(&mut model, host, &held.keys().copied().collect());
        if !batch.is_empty() {
            self.commit_drives(model, batch, BTreeSet::new()).await?;
        }
        Ok(())
    }
}
