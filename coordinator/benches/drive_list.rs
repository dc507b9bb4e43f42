//! A tenant's drive list (issue 16): 10,000 drives of one owner among 100,000, listed by the
//! walk the coordinator made before the drive index (every drive filtered by owner, and for each
//! listed drive a walk over every drive for a clone being made of it) and through the index
//! (the owner's drives only; one lookup per drive), whole and as a page of 20.
//!
//! `cargo bench -p backfill-coordinator --bench drive_list`
#![allow(clippy::expect_used, clippy::panic)]

use backfill_coordinator::state::drive_index::Drives;
use backfill_coordinator::store::{DriveRecord, DriveStatus};
use backfill_shared::Media;
use backfill_shared::drive::{DriveId, DriveSource};
use criterion::{Criterion, criterion_group, criterion_main};
use std::collections::BTreeMap;
use std::hint::black_box;

const DRIVES: u128 = 100_000;
/// Every tenth drive is the big owner's.
const EVERY: u128 = 10;

fn record(n: u128) -> DriveRecord {
    let big = n.is_multiple_of(EVERY);
    DriveRecord {
        uuid: DriveId::from_u128(n + 1),
        owner: if big {
            "big".into()
        } else {
            format!("t{}", n % 997)
        },
        name: format!("d{n}"),
        size: 1 << 30,
        media: Media::Disk,
        host: "h1".parse().expect("host id"),
        // A few clones being made, of the big owner's drives.
        source: if n % 1_000 == 7 {
            DriveSource::Clone {
                drive: DriveId::from_u128(n - 6),
            }
        } else {
            DriveSource::Blank
        },
        status: if n % 1_000 == 7 {
            DriveStatus::Creating
        } else {
            DriveStatus::Ready
        },
        error: None,
        meta: BTreeMap::new(),
        tags: Vec::new(),
        created_at: 0,
        metered_until: None,
    }
}

fn status_walk(all: &BTreeMap<DriveId, DriveRecord>, d: &DriveRecord) -> &'static str {
    let cloning_from = |src: DriveId| {
        all.values().any(|o| {
            o.status == DriveStatus::Creating && o.source == DriveSource::Clone { drive: src }
        })
    };
    match d.status {
        DriveStatus::Ready if cloning_from(d.uuid) => "cloning_src",
        _ => "other",
    }
}

fn status_indexed(drives: &Drives, d: &DriveRecord) -> &'static str {
    match d.status {
        DriveStatus::Ready if drives.is_cloned(d.uuid) => "cloning_src",
        _ => "other",
    }
}

fn bench(c: &mut Criterion) {
    let plain: BTreeMap<DriveId, DriveRecord> = (0..DRIVES)
        .map(|n| (DriveId::from_u128(n + 1), record(n)))
        .collect();
    let drives: Drives = plain.iter().map(|(id, d)| (*id, d.clone())).collect();
    let mut g = c.benchmark_group("drive_list_10k_of_100k");
    g.sample_size(10);
    g.bench_function("walk_whole_list", |b| {
        b.iter(|| {
            let out: Vec<&'static str> = plain
                .values()
                .filter(|d| d.owner == "big" && d.status != DriveStatus::Deleting)
                .map(|d| status_walk(&plain, d))
                .collect();
            black_box(out)
        })
    });
    g.bench_function("index_whole_list", |b| {
        b.iter(|| {
            let out: Vec<&'static str> = drives
                .listed("big")
                .map(|d| status_indexed(&drives, d))
                .collect();
            black_box(out)
        })
    });
    g.bench_function("index_page_20_at_5000", |b| {
        b.iter(|| {
            let (total, page) = drives.page("big", 5_000, 20);
            let out: Vec<&'static str> = page
                .into_iter()
                .map(|d| status_indexed(&drives, d))
                .collect();
            black_box((total, out))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
