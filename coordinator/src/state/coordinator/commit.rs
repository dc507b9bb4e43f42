//! How the coordinator changes state: under the model's lock, in memory first, then queued
//! for the store (group commit, `crate::state::committer`); and how the model goes back to the store
//! after a write failed.

use super::Coordinator;
use crate::domain::billing::settle;
use crate::domain::server::ServerRecord;
use crate::state::model::{HostEntry, Model, Session};
use crate::store::StoreError;
use backfill_shared::{HostId, ServerId, WorkerState};
use std::sync::Arc;
use tokio::sync::RwLockWriteGuard;

impl Coordinator {
    /// Applies changed servers and a new generation for each host in `hosts` to the model
    /// and queues their write (one transaction: servers, usage, events, ARQs, generations).
    /// The caller releases the model's lock, then waits on the answer before it answers
    /// anyone; each host's session gets its new desired state once it is durable. Callers
    /// that answer no one may drop it: a failed write reloads the model from the store.
    pub(crate) async fn commit(
        &self,
        model: &mut Model,
        servers: Vec<ServerRecord>,
        hosts: &[HostId],
    ) -> Result<crate::state::committer::Durable, StoreError> {
        let batch = crate::store::WriteBatch {
            servers,
            ..Default::default()
        };
        self.commit_batch(model, batch, hosts).await
    }

    /// [`Coordinator::commit`] with anything else a [`crate::store::WriteBatch`] writes.
    /// Awaits nothing: the ARQs of changed servers with GPUs are the model's.
    pub(crate) async fn commit_batch(
        &self,
        model: &mut Model,
        mut batch: crate::store::WriteBatch,
        hosts: &[HostId],
    ) -> Result<crate::state::committer::Durable, StoreError> {
        batch.hosts = hosts
            .iter()
            .filter(|h| model.hosts.contains_key(*h))
            .map(|h| (h.clone(), model.generation(h).saturating_add(1)))
            .collect();
        let now = self.clock.now();
        for s in &mut batch.servers {
            if s.host.is_some() {
                s.last_host.clone_from(&s.host);
            }
            let old = model.servers.get(&s.uuid);
            batch
                .events
                .extend(crate::domain::event::derive(old, s, now));
            let perf_now = model
                .in_force
                .get(&s.uuid)
                .copied()
                .unwrap_or(s.perf_factor);
            batch
                .usage
                .extend(settle(old, s, perf_now, now, &self.billing));
        }
        let with_gpus: Vec<ServerRecord> = batch
            .servers
            .iter()
            .filter(|s| s.gpu_request.is_some())
            .cloned()
            .collect();
        if !with_gpus.is_empty() {
            let changes = self.arq_changes(model, &with_gpus);
            batch.arqs_changed.extend(changes);
        }
        model.accel.apply(&batch);
        for s in batch.inserts.iter().chain(&batch.servers) {
            model.put_server(s.clone(), now);
        }
        for id in &batch.deletes {
            model.remove_server(*id);
        }
        let mut pushes = Vec::new();
        for (host, generation) in &batch.hosts {
            if let Some(entry) = model.hosts.get_mut(host) {
                entry.record.generation = *generation;
            }
            let desired = Arc::new(model.desired_state(host));
            if let Some(Session { desired: tx, .. }) =
                model.hosts.get(host).and_then(|h| h.session.as_ref())
            {
                pushes.push((tx.clone(), desired));
            }
        }
        Ok(self.committer.submit(batch, model.epoch, pushes))
    }

    /// The model, locked; reloaded from the store first if a write failed since it was made
    /// (it may hold changes that never reached the disk).
    pub(crate) async fn lock_model(&self) -> RwLockWriteGuard<'_, Model> {
        let mut model = self.model.write().await;
        let epoch = self.committer.epoch();
        if model.epoch != epoch {
            match self.reload(&mut model).await {
                Ok(()) => model.epoch = epoch,
                Err(e) => {
                    tracing::error!(error = %e, "the model could not be reloaded from the store; writes are refused until it is");
                }
            }
        }
        model
    }

    /// Puts the model's durable state back to what the store holds (servers, host records,
    /// launches, pool limits, auto mode, drives, device profiles and ARQs), and hands every
    /// connected agent its desired state again. Everything is read before anything changes,
    /// so a failed read leaves the model as it was (the next holder of the lock retries).
    async fn reload(&self, model: &mut Model) -> Result<(), StoreError> {
        let now = self.clock.now();
        let stored = self.store.servers().await?;
        let hosts = self.store.hosts().await?;
        let launches = self.store.launches().await?;
        let pool_limits = self.store.pool_limits().await?;
        let auto_mode = self.store.settings().await?.get("auto_mode").cloned();
        let drives = self.store.drives().await?;
        let accel = crate::state::accel::Accel::load(&self.store).await?;
        // Hosts: a registration that failed is forgotten, a deletion that failed comes back
        // (down, until its agent registers again); records are the stored ones, sessions stay.
        let keep: std::collections::BTreeSet<HostId> = hosts.iter().map(|h| h.id.clone()).collect();
        let gone: Vec<HostId> = model
            .hosts
            .keys()
            .filter(|id| !keep.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            model.hosts.remove(&id);
            let _ = model.cluster.remove_host(&id);
        }
        for h in hosts {
            let id = h.id.clone();
            match model.hosts.get_mut(&id) {
                Some(e) => {
                    e.reservation = self.pools.reservation(h.pool.as_deref());
                    e.record = h;
                }
                None => {
                    let mut e = HostEntry::new(h, WorkerState::Down, now);
                    e.reservation = self.pools.reservation(e.record.pool.as_deref());
                    model.hosts.insert(id.clone(), e);
                }
            }
            model.sync_host(&id);
        }
        model.launches = launches.into_iter().map(|l| (l.host.clone(), l)).collect();
        model.pool_limits = pool_limits;
        // As at start: the stored setting, or else the configured one.
        model.auto_mode = match auto_mode {
            Some(v) => v == "on",
            None => self.operator.auto_mode,
        };
        model.drives = drives.into_iter().map(|d| (d.uuid, d)).collect();
        model.accel = accel;
        let keep: std::collections::BTreeSet<ServerId> = stored.iter().map(|s| s.uuid).collect();
        let gone: Vec<ServerId> = model
            .servers
            .keys()
            .filter(|id| !keep.contains(id))
            .copied()
            .collect();
        for id in gone {
            model.remove_server(id);
        }
        for s in stored {
            model.put_server(s, now);
        }
        let ids: Vec<HostId> = model.hosts.keys().cloned().collect();
        for id in ids {
            let desired = Arc::new(model.desired_state(&id));
            if let Some(session) = model.hosts.get(&id).and_then(|h| h.session.as_ref()) {
                session.desired.send_replace(desired);
            }
        }
        tracing::warn!("the model was reloaded from the store after a failed write");
        Ok(())
    }
}
