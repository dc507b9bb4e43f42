//! Which servers each drive is attached to, kept up to date as the model's servers change, so a
//! drive's view or an attachment check costs what the drive's mounts hold rather than a walk
//! over every server of the fleet.

use crate::domain::server::ServerRecord;
use backfill_shared::ServerId;
use backfill_shared::drive::DriveId;
use std::collections::BTreeMap;

/// Drive -> the servers that list it, in server id order (what a walk over the model's servers
/// in id order finds).
#[derive(Debug, Default)]
pub struct DriveMounts {
    by_drive: BTreeMap<DriveId, Vec<ServerId>>,
}

impl DriveMounts {
    /// Call with a server as it enters the model (after [`DriveMounts::remove`] of its old
    /// record, if it had one).
    pub fn add(&mut self, s: &ServerRecord) {
        for a in &s.drives {
            let on = self.by_drive.entry(a.drive).or_default();
            let at = on.partition_point(|x| *x <= s.uuid);
            on.insert(at, s.uuid);
        }
    }

    /// Call with a server's record as it was in the model, as it leaves or changes.
    pub fn remove(&mut self, s: &ServerRecord) {
        for a in &s.drives {
            if let Some(on) = self.by_drive.get_mut(&a.drive) {
                if let Some(at) = on.iter().position(|x| *x == s.uuid) {
                    on.remove(at);
                }
                if on.is_empty() {
                    self.by_drive.remove(&a.drive);
                }
            }
        }
    }

    /// Every attached drive and its servers.
    pub fn all(&self) -> &BTreeMap<DriveId, Vec<ServerId>> {
        &self.by_drive
    }

    /// The servers `drive` is attached to.
    pub fn of(&self, drive: DriveId) -> &[ServerId] {
        self.by_drive.get(&drive).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use crate::state::model::Model;
    use crate::store::testing::sample_server;
    use backfill_shared::drive::{DriveAttachment, DriveDevice, DriveId};
    use backfill_shared::{Media, ServerId};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// What the index replaces: a walk over every server.
    fn walk(model: &Model) -> BTreeMap<DriveId, Vec<ServerId>> {
        let mut out: BTreeMap<DriveId, Vec<ServerId>> = BTreeMap::new();
        for s in model.servers.values() {
            for a in &s.drives {
                out.entry(a.drive).or_default().push(s.uuid);
            }
        }
        out
    }

    fn attach(drive: u8) -> DriveAttachment {
        DriveAttachment {
            drive: DriveId::from_u128(u128::from(drive) + 1),
            boot_order: None,
            dev_channel: format!("0:{drive}"),
            device: DriveDevice::Virtio,
            media: Media::Disk,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Puts server `n` (new or replacing its record) with these drives.
        Put(u8, Vec<u8>),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..8, proptest::collection::vec(0u8..5, 0..4)).prop_map(|(n, d)| Op::Put(n, d)),
            1 => (0u8..8).prop_map(Op::Remove),
        ]
    }

    proptest! {
        #[test]
        fn the_index_is_what_a_walk_over_every_server_finds(
            ops in proptest::collection::vec(op(), 1..60)
        ) {
            let mut model = Model::default();
            let ids: Vec<ServerId> = (0..8).map(|_| ServerId::new_random()).collect();
            for op in ops {
                match op {
                    Op::Put(n, drives) => {
                        let mut s = sample_server(if n % 2 == 0 { "a" } else { "b" });
                        s.uuid = ids[usize::from(n)];
                        s.drives = drives.into_iter().map(attach).collect();
                        model.put_server(s, 0);
                    }
                    Op::Remove(n) => model.remove_server(ids[usize::from(n)]),
                }
                let want = walk(&model);
                prop_assert_eq!(model.mounts().all(), &want);
                for d in 0..6u8 {
                    let id = DriveId::from_u128(u128::from(d) + 1);
                    prop_assert_eq!(
                        model.mounts().of(id),
                        want.get(&id).map_or(&[][..], Vec::as_slice)
                    );
                }
            }
        }
    }
}
