//! A page of a tenant's drives (issue 16): what the whole list holds, sliced by `offset` and
//! `limit`, with other tenants' drives, deleted drives and clones being made in the model.

use crate::link::session_tests::{fixture, hello};
use crate::ops::drives::{CloneOpts, NewDrive};
use backfill_shared::drive::{DriveReport, ObservedDrive, ObservedDriveState};
use backfill_shared::{HostId, Media};

fn blank(name: &str) -> NewDrive {
    NewDrive {
        name: name.into(),
        size: 1 << 30,
        media: Media::Disk,
        meta: Default::default(),
        tags: Vec::new(),
    }
}

#[tokio::test]
async fn a_page_is_the_slice_of_the_owners_list() {
    let f = fixture().await;
    let h1: HostId = "h1".parse().unwrap();
    let mut h = hello("h1");
    h.inventory.drivers.vm = Some(backfill_shared::VmDriver {
        accel: "tcg".into(),
        images: Vec::new(),
    });
    f.c.register_agent(&h).await.unwrap();
    f.c.create_account("other", true, Default::default())
        .await
        .unwrap();
    let other = f.c.account("other").await.unwrap();
    // Both tenants' drives, interleaved in id order.
    let mine =
        f.c.create_drives(&f.tenant, (0..7).map(|i| blank(&format!("m{i}"))).collect())
            .await
            .unwrap();
    f.c.create_drives(&other, (0..5).map(|i| blank(&format!("o{i}"))).collect())
        .await
        .unwrap();
    let report = DriveReport {
        drives: mine
            .iter()
            .map(|d| ObservedDrive {
                id: d.record.uuid,
                size: 1 << 30,
                state: ObservedDriveState::Ready,
            })
            .collect(),
    };
    f.c.apply_drive_report(&h1, report).await.unwrap();
    // One deleted (gone from the list, kept until its host reports it gone), one being cloned.
    f.c.delete_drive(&f.tenant, mine[1].record.uuid)
        .await
        .unwrap();
    let src = mine[2].record.uuid;
    let copy =
        f.c.clone_drive(&f.tenant, src, CloneOpts::default())
            .await
            .unwrap();
    assert_eq!(copy.status, "cloning_dst");
    assert_eq!(
        f.c.get_drive(&f.tenant, src).await.unwrap().status,
        "cloning_src"
    );

    let all = f.c.list_drives(&f.tenant).await;
    assert_eq!(all.len(), 7);
    assert!(all.iter().all(|d| d.record.owner == f.tenant.name));
    assert!(all.windows(2).all(|w| w[0].record.uuid < w[1].record.uuid));
    assert!(all.iter().all(|d| d.record.uuid != mine[1].record.uuid));
    for offset in 0..9 {
        for limit in 0..9 {
            let (total, page) = f.c.drive_page(&f.tenant, offset, limit).await;
            let take = if limit == 0 { usize::MAX } else { limit };
            let want: Vec<_> = all.iter().skip(offset).take(take).cloned().collect();
            assert_eq!(
                (total, page),
                (all.len(), want),
                "offset {offset} limit {limit}"
            );
        }
    }
    assert_eq!(f.c.drive_page(&other, 0, 0).await.0, 5);
}
