//! Device profiles and accelerator requests (ARQs) as the live model holds them: loaded at
//! start, changed under the model's lock and written through the group commit, so neither the
//! API nor a commit reads them from the store.

use crate::domain::accel::{Arq, DeviceProfile};
use crate::store::{Store, StoreError};
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub struct Accel {
    /// Every device profile, oldest first (as the store lists them).
    pub profiles: Vec<DeviceProfile>,
    /// Every ARQ, by uuid.
    pub arqs: BTreeMap<String, Arq>,
}

impl Accel {
    pub async fn load(store: &Store) -> Result<Accel, StoreError> {
        Ok(Accel {
            profiles: store.profiles().await?,
            arqs: store
                .arqs()
                .await?
                .into_iter()
                .map(|a| (a.uuid.clone(), a))
                .collect(),
        })
    }

    pub fn profile(&self, name: &str) -> Option<&DeviceProfile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// Every ARQ, oldest first (the store's order: created, then uuid).
    pub fn arqs(&self) -> Vec<&Arq> {
        let mut all: Vec<&Arq> = self.arqs.values().collect();
        all.sort_by(|a, b| (a.created_at, &a.uuid).cmp(&(b.created_at, &b.uuid)));
        all
    }

    /// A server's ARQs in group order (the store's `arqs_of_server` order).
    pub fn of_server(&self, server: &str) -> Vec<&Arq> {
        let mut mine: Vec<&Arq> = self
            .arqs
            .values()
            .filter(|a| a.server.as_deref() == Some(server))
            .collect();
        mine.sort_by(|a, b| {
            (a.device_profile_group_id, &a.uuid).cmp(&(b.device_profile_group_id, &b.uuid))
        });
        mine
    }

    /// Applies a batch's ARQ and profile changes (the model's side of what the store writes).
    pub fn apply(&mut self, batch: &crate::store::WriteBatch) {
        for a in batch.arqs_new.iter().chain(&batch.arqs_changed) {
            self.arqs.insert(a.uuid.clone(), a.clone());
        }
        for u in &batch.arqs_deleted {
            self.arqs.remove(u);
        }
        for id in &batch.deletes {
            let id = id.to_string();
            self.arqs
                .retain(|_, a| a.server.as_deref() != Some(id.as_str()));
        }
        self.profiles.extend(batch.profiles_new.iter().cloned());
        self.profiles
            .retain(|p| !batch.profiles_deleted.contains(&p.uuid));
    }
}
