//! The model's drives with the indexes a drive list needs, kept in step with every change (issue
//! 16): each owner's drives, and each drive's clones being made. A page of an owner's drives
//! then costs what the owner holds up to the page, and a drive's `cloning_src` status one
//! lookup, rather than walks over every drive of the fleet.
//!
//! [`Drives`] reads as the map it derefs to; it changes only through [`Drives::insert`],
//! [`Drives::remove`] and [`Drives::update`], which keep the indexes in step.

use crate::store::{DriveRecord, DriveStatus};
use backfill_shared::drive::{DriveId, DriveSource};
use std::collections::{BTreeMap, BTreeSet};

/// Every drive by id, deleted ones until their host reports them gone, with its indexes.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Drives {
    all: BTreeMap<DriveId, DriveRecord>,
    by_owner: BTreeMap<String, OwnerDrives>,
    /// Source drive -> its clones being made (status `creating`, source `clone`).
    clones: BTreeMap<DriveId, BTreeSet<DriveId>>,
}

/// An owner's drives: all of them in id order, how many are being deleted, and their bytes.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct OwnerDrives {
    ids: BTreeSet<DriveId>,
    deleting: usize,
    bytes: u128,
}

impl OwnerDrives {
    /// Every drive of the owner's, deleted ones included, in id order.
    pub fn ids(&self) -> &BTreeSet<DriveId> {
        &self.ids
    }

    /// The bytes of all the owner's drives (deleted ones included, as the quota counts them).
    pub fn bytes(&self) -> u64 {
        u64::try_from(self.bytes).unwrap_or(u64::MAX)
    }

    /// How many of the owner's drives a list shows (all but those being deleted).
    pub fn listed(&self) -> usize {
        self.ids.len().saturating_sub(self.deleting)
    }
}

/// The drive `d` is a clone of, while that clone is being made.
fn cloning(d: &DriveRecord) -> Option<DriveId> {
    match (&d.status, &d.source) {
        (DriveStatus::Creating, DriveSource::Clone { drive }) => Some(*drive),
        _ => None,
    }
}

impl Drives {
    /// Puts `d` under `id` (its uuid), replacing and unindexing what was there.
    pub fn insert(&mut self, id: DriveId, d: DriveRecord) -> Option<DriveRecord> {
        self.index(id, &d);
        let old = self.all.insert(id, d);
        if let Some(o) = &old {
            self.unindex(id, o);
        }
        old
    }

    /// Takes drive `id` out.
    pub fn remove(&mut self, id: &DriveId) -> Option<DriveRecord> {
        let old = self.all.remove(id)?;
        self.unindex(*id, &old);
        Some(old)
    }

    /// Changes drive `id` in place (false when there is none), keeping the indexes in step.
    pub fn update(&mut self, id: DriveId, f: impl FnOnce(&mut DriveRecord)) -> bool {
        let Some(mut d) = self.all.get(&id).cloned() else {
            return false;
        };
        f(&mut d);
        self.insert(id, d);
        true
    }

    /// `owner`'s drives, if it has any.
    pub fn of_owner(&self, owner: &str) -> Option<&OwnerDrives> {
        self.by_owner.get(owner)
    }

    /// `owner`'s drives a list shows (all but those being deleted), in id order.
    pub fn listed<'a>(&'a self, owner: &str) -> impl Iterator<Item = &'a DriveRecord> + 'a {
        self.by_owner
            .get(owner)
            .into_iter()
            .flat_map(|o| o.ids.iter())
            .filter_map(|id| self.all.get(id))
            .filter(|d| d.status != DriveStatus::Deleting)
    }

    /// A page of [`Drives::listed`]: `limit` drives (0: all) from `offset`, and how many the
    /// whole list holds.
    pub fn page(&self, owner: &str, offset: usize, limit: usize) -> (usize, Vec<&DriveRecord>) {
        let Some(o) = self.by_owner.get(owner) else {
            return (0, Vec::new());
        };
        let take = if limit == 0 { usize::MAX } else { limit };
        let page = if o.deleting == 0 {
            // Nothing to leave out: skip ids without looking their drives up.
            let ids = o.ids.iter().skip(offset).take(take);
            ids.filter_map(|id| self.all.get(id)).collect()
        } else {
            self.listed(owner).skip(offset).take(take).collect()
        };
        (o.listed(), page)
    }

    /// Whether a clone of drive `src` is being made.
    pub fn is_cloned(&self, src: DriveId) -> bool {
        self.clones.get(&src).is_some_and(|c| !c.is_empty())
    }

    fn index(&mut self, id: DriveId, d: &DriveRecord) {
        let o = self.by_owner.entry(d.owner.clone()).or_default();
        o.ids.insert(id);
        o.deleting += usize::from(d.status == DriveStatus::Deleting);
        o.bytes += u128::from(d.size);
        if let Some(src) = cloning(d) {
            self.clones.entry(src).or_default().insert(id);
        }
    }

    fn unindex(&mut self, id: DriveId, d: &DriveRecord) {
        if let Some(o) = self.by_owner.get_mut(&d.owner) {
            // The same id may be indexed again already (a record replaced under one owner).
            if self.all.get(&id).is_none_or(|now| now.owner != d.owner) {
                o.ids.remove(&id);
            }
            o.deleting = o
                .deleting
                .saturating_sub(usize::from(d.status == DriveStatus::Deleting));
            o.bytes = o.bytes.saturating_sub(u128::from(d.size));
            if o.ids.is_empty() {
                self.by_owner.remove(&d.owner);
            }
        }
        if let Some(src) = cloning(d)
            && let Some(c) = self.clones.get_mut(&src)
        {
            if self.all.get(&id).and_then(cloning) != Some(src) {
                c.remove(&id);
            }
            if c.is_empty() {
                self.clones.remove(&src);
            }
        }
    }
}

impl std::ops::Deref for Drives {
    type Target = BTreeMap<DriveId, DriveRecord>;

    fn deref(&self) -> &Self::Target {
        &self.all
    }
}

impl<'a> IntoIterator for &'a Drives {
    type Item = (&'a DriveId, &'a DriveRecord);
    type IntoIter = std::collections::btree_map::Iter<'a, DriveId, DriveRecord>;

    fn into_iter(self) -> Self::IntoIter {
        self.all.iter()
    }
}

impl FromIterator<(DriveId, DriveRecord)> for Drives {
    fn from_iter<I: IntoIterator<Item = (DriveId, DriveRecord)>>(iter: I) -> Self {
        let mut out = Drives::default();
        for (id, d) in iter {
            out.insert(id, d);
        }
        out
    }
}

#[cfg(test)]
#[path = "drive_index_tests.rs"]
mod tests;
