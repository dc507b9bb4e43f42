use super::*;
use backfill_shared::Media;
use proptest::prelude::*;

fn record(n: u8, owner: u8, status: u8, source: u8, size: u64) -> DriveRecord {
    DriveRecord {
        uuid: DriveId::from_u128(u128::from(n) + 1),
        owner: format!("owner{owner}"),
        name: format!("d{n}"),
        size,
        media: Media::Disk,
        host: "h1".parse().unwrap(),
        source: match source {
            0 => DriveSource::Blank,
            s => DriveSource::Clone {
                drive: DriveId::from_u128(u128::from(s)),
            },
        },
        status: match status {
            0 => DriveStatus::Creating,
            1 => DriveStatus::Ready,
            2 => DriveStatus::Failed,
            _ => DriveStatus::Deleting,
        },
        error: None,
        meta: BTreeMap::new(),
        tags: Vec::new(),
        created_at: 0,
        metered_until: None,
    }
}

/// What the list did before the index: a walk over every drive.
fn walk_page(
    all: &BTreeMap<DriveId, DriveRecord>,
    owner: &str,
    offset: usize,
    limit: usize,
) -> (usize, Vec<DriveRecord>) {
    let listed: Vec<&DriveRecord> = all
        .values()
        .filter(|d| d.owner == owner && d.status != DriveStatus::Deleting)
        .collect();
    let take = if limit == 0 { usize::MAX } else { limit };
    (
        listed.len(),
        listed
            .into_iter()
            .skip(offset)
            .take(take)
            .cloned()
            .collect(),
    )
}

/// What a view's `cloning_from` did before the index.
fn walk_cloned(all: &BTreeMap<DriveId, DriveRecord>, src: DriveId) -> bool {
    all.values()
        .any(|o| o.status == DriveStatus::Creating && o.source == DriveSource::Clone { drive: src })
}

#[derive(Debug, Clone)]
enum Op {
    /// Puts drive `n` (new or replacing its record): owner, status, clone source (0: blank), size.
    Put(u8, u8, u8, u8, u64),
    Remove(u8),
    /// Changes drive `n`'s status (as a host's report does) through `update`.
    Status(u8, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..12, 0u8..3, 0u8..4, 0u8..5, 0u64..1 << 40)
            .prop_map(|(n, o, st, src, size)| Op::Put(n, o, st, src, size)),
        1 => (0u8..12).prop_map(Op::Remove),
        2 => (0u8..12, 0u8..4).prop_map(|(n, st)| Op::Status(n, st)),
    ]
}

/// The indexes built from scratch, to compare with the ones kept in step.
fn rebuilt(all: &BTreeMap<DriveId, DriveRecord>) -> Drives {
    all.iter().map(|(id, d)| (*id, d.clone())).collect()
}

proptest! {
    #[test]
    fn the_indexes_are_what_a_walk_over_every_drive_finds(
        ops in proptest::collection::vec(op(), 1..80),
        pages in proptest::collection::vec((0usize..14, 0usize..6), 1..6),
    ) {
        let mut drives = Drives::default();
        let mut plain: BTreeMap<DriveId, DriveRecord> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Put(n, o, st, src, size) => {
                    let d = record(n, o, st, src, size);
                    prop_assert_eq!(drives.insert(d.uuid, d.clone()), plain.insert(d.uuid, d));
                }
                Op::Remove(n) => {
                    let id = DriveId::from_u128(u128::from(n) + 1);
                    prop_assert_eq!(drives.remove(&id), plain.remove(&id));
                }
                Op::Status(n, st) => {
                    let id = DriveId::from_u128(u128::from(n) + 1);
                    let status = record(n, 0, st, 0, 0).status;
                    let had = drives.update(id, |d| d.status = status);
                    prop_assert_eq!(had, plain.contains_key(&id));
                    if let Some(d) = plain.get_mut(&id) {
                        d.status = status;
                    }
                }
            }
            prop_assert_eq!(&*drives, &plain);
            prop_assert_eq!(&drives, &rebuilt(&plain));
            for o in 0..4u8 {
                let owner = format!("owner{o}");
                let bytes: u64 = plain.values().filter(|d| d.owner == owner).map(|d| d.size).sum();
                prop_assert_eq!(drives.of_owner(&owner).map_or(0, OwnerDrives::bytes), bytes);
                for (offset, limit) in &pages {
                    let (total, page) = drives.page(&owner, *offset, *limit);
                    let page: Vec<DriveRecord> = page.into_iter().cloned().collect();
                    prop_assert_eq!((total, page), walk_page(&plain, &owner, *offset, *limit));
                }
            }
            for s in 0..6u8 {
                let src = DriveId::from_u128(u128::from(s));
                prop_assert_eq!(drives.is_cloned(src), walk_cloned(&plain, src));
            }
        }
    }
}
