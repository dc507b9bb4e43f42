//! Moving a drive through the coordinator, the agents played by the test: refusals, the relay
//! of every step, the record's host changed only once the target verified the copy, and a
//! failed move leaving the drive where it was.

#![allow(clippy::unwrap_used, clippy::panic)]

use crate::link::session_tests::{fixture, hello, new_server, report};
use crate::state::coordinator::{Coordinator, OpError, Scope};
use backfill_shared::drive::{DriveReport, ObservedDrive, ObservedDriveState};
use backfill_shared::drive_move::{Exported, MoveOrder, MoveReport};
use backfill_shared::{DriveAttachment, DriveId, HostId, Media};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

fn vm_hello(host: &str) -> backfill_shared::protocol::Hello {
    let mut h = hello(host);
    h.inventory.drivers.vm = Some(backfill_shared::VmDriver {
        accel: "tcg".into(),
        images: Vec::new(),
    });
    h
}

fn held(ids: &[DriveId]) -> DriveReport {
    DriveReport {
        drives: ids
            .iter()
            .map(|id| ObservedDrive {
                id: *id,
                size: 1 << 30,
                state: ObservedDriveState::Ready,
            })
            .collect(),
    }
}

async fn next(rx: &mut UnboundedReceiver<MoveOrder>) -> MoveOrder {
    tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap()
}

fn h(s: &str) -> HostId {
    s.parse().unwrap()
}

/// Starts a move of `id` to `to` and answers the target's `Prepare` with `prepared`.
async fn begin(
    c: &Arc<Coordinator>,
    id: DriveId,
    to: &str,
    target: &mut UnboundedReceiver<MoveOrder>,
    prepared: Result<(), String>,
) -> Result<crate::ops::drives::DriveView, OpError> {
    let task = tokio::spawn({
        let c = c.clone();
        let to = to.to_owned();
        async move { c.move_drive(id, &to).await }
    });
    assert!(
        matches!(next(target).await, MoveOrder::Prepare { drive, size } if drive == id && size == 1 << 30)
    );
    c.apply_move_report(
        &h(to),
        MoveReport::Prepared {
            drive: id,
            result: prepared,
        },
    )
    .await
    .unwrap();
    task.await.unwrap()
}

#[tokio::test]
async fn a_drive_moves_only_when_verified_and_a_failure_leaves_it_where_it_was() {
    let f = fixture().await;
    let tenant = f.tenant.clone();
    let c = Arc::new(f.c);
    let (c1, _r1) = c.register_agent(&vm_hello("h1")).await.unwrap();
    let mut m1 = c.move_channel(&h("h1"), c1).await;
    let (c2, _r2) = c.register_agent(&vm_hello("h2")).await.unwrap();
    let mut m2 = c.move_channel(&h("h2"), c2).await;
    let _ = c.register_agent(&hello("h3")).await.unwrap();
    let d = c
        .create_drives(
            &tenant,
            vec![crate::ops::drives::NewDrive {
                name: "root".into(),
                size: 1 << 30,
                media: Media::Disk,
                meta: Default::default(),
                tags: Vec::new(),
            }],
        )
        .await
        .unwrap()
        .remove(0);
    let id = d.record.uuid;
    assert_eq!(d.record.host, h("h1"));
    // Not made yet: it does not move.
    let e = c.move_drive(id, "h2").await.unwrap_err();
    assert!(
        matches!(e, OpError::Conflict(ref m) if m.contains("only a made drive")),
        "{e}"
    );
    c.apply_drive_report(&h("h1"), held(&[id])).await.unwrap();

    // Refusals: same host, unknown host, a host without VMs, a bad id, a running server.
    let invalid = |e: OpError, what: &str| {
        assert!(
            matches!(e, OpError::Invalid { field: "host", ref message } if message.contains(what)),
            "{e}"
        );
    };
    invalid(
        c.move_drive(id, "h1").await.unwrap_err(),
        "already on host h1",
    );
    invalid(c.move_drive(id, "nope").await.unwrap_err(), "no host nope");
    invalid(
        c.move_drive(id, "h3").await.unwrap_err(),
        "does not run VMs",
    );
    invalid(c.move_drive(id, "../x").await.unwrap_err(), "");
    assert!(matches!(
        c.move_drive(DriveId::from_u128(9), "h2").await,
        Err(OpError::DriveNotFound(_))
    ));
    let mut n = new_server();
    n.drives = vec![DriveAttachment {
        drive: id,
        boot_order: Some(1),
        dev_channel: "0:0".into(),
        device: backfill_shared::drive::DriveDevice::Virtio,
        media: Media::Disk,
    }];
    n.workload = None;
    let s = c
        .create_servers(&tenant, backfill_shared::ServerClass::Backfill, vec![n])
        .await
        .unwrap()
        .remove(0);
    c.start(&tenant, Scope::BServers, s.uuid).await.unwrap();
    let e = c.move_drive(id, "h2").await.unwrap_err();
    assert!(
        matches!(e, OpError::DriveInUse(ref m) if m.contains("stop it")),
        "{e}"
    );
    c.stop(&tenant, Scope::BServers, s.uuid).await.unwrap();
    c.apply_report(&h("h1"), c1, report(u64::MAX >> 1, &[]))
        .await
        .unwrap();

    // The target lacks the space: refused, nothing changes, no error left on the drive.
    let e = begin(&c, id, "h2", &mut m2, Err("not enough space".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(e, OpError::Invalid { field: "host", ref message } if message.contains("not enough space")),
        "{e}"
    );
    assert!(matches!(next(&mut m1).await, MoveOrder::Abort { .. }));
    assert!(matches!(next(&mut m2).await, MoveOrder::Abort { .. }));
    let now = c.get_drive(&tenant, id).await.unwrap();
    assert_eq!((now.status, now.record.error.as_deref()), ("mounted", None));

    // The move: answered once the target has room; the drive shows cloning_src meanwhile.
    let v = begin(&c, id, "h2", &mut m2, Ok(())).await.unwrap();
    assert_eq!((v.status, &v.record.host), ("cloning_src", &h("h1")));
    let e = c.move_drive(id, "h2").await.unwrap_err();
    assert!(
        matches!(e, OpError::Conflict(ref m) if m.contains("is moving")),
        "{e}"
    );
    let e = c.start(&tenant, Scope::BServers, s.uuid).await.unwrap_err();
    assert!(
        matches!(e, OpError::Conflict(ref m) if m.contains("is moving")),
        "{e}"
    );
    assert!(matches!(
        c.delete_drive(&tenant, id).await,
        Err(OpError::Conflict(_))
    ));
    assert_eq!(next(&mut m1).await, MoveOrder::Export { drive: id });
    let bytes = b"0123456789".to_vec();
    c.apply_move_report(
        &h("h1"),
        MoveReport::Exported {
            drive: id,
            result: Ok(Exported {
                size: 10,
                sha256: "ab".into(),
            }),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        next(&mut m1).await,
        MoveOrder::Read {
            drive: id,
            offset: 0,
            len: 10
        }
    );
    c.apply_move_report(
        &h("h1"),
        MoveReport::Chunk {
            drive: id,
            offset: 0,
            result: Ok(bytes.clone()),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        next(&mut m2).await,
        MoveOrder::Write {
            drive: id,
            offset: 0,
            data: bytes
        }
    );
    c.apply_move_report(
        &h("h2"),
        MoveReport::Written {
            drive: id,
            offset: 0,
            result: Ok(()),
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        next(&mut m2).await,
        MoveOrder::Finish { size: 10, .. }
    ));
    // Not yet verified: still on h1.
    assert_eq!(c.get_drive(&tenant, id).await.unwrap().record.host, h("h1"));
    c.apply_move_report(
        &h("h2"),
        MoveReport::Finished {
            drive: id,
            result: Ok(()),
        },
    )
    .await
    .unwrap();
    let moved = c.get_drive(&tenant, id).await.unwrap();
    assert_eq!((moved.status, &moved.record.host), ("mounted", &h("h2")));
    let stored = c.store.drives().await.unwrap();
    assert_eq!(stored[0].host, h("h2"), "stored before it counts");
    {
        let model = c.model.read().await;
        assert!(model.drive_orders(&h("h1")).delete.contains(&id));
        assert!(
            model
                .drive_orders(&h("h2"))
                .drives
                .iter()
                .any(|d| d.id == id)
        );
    }
    // Once h1 no longer holds it, h1 is not asked again.
    c.apply_drive_report(&h("h1"), held(&[])).await.unwrap();
    assert!(
        c.model
            .read()
            .await
            .drive_orders(&h("h1"))
            .delete
            .is_empty()
    );
    assert!(matches!(next(&mut m1).await, MoveOrder::Abort { .. }));
    assert!(matches!(next(&mut m2).await, MoveOrder::Abort { .. }));

    // Back to h1, and h1's link is lost mid-copy: the drive stays on h2, with the reason.
    c.apply_drive_report(&h("h2"), held(&[id])).await.unwrap();
    begin(&c, id, "h1", &mut m1, Ok(())).await.unwrap();
    assert_eq!(next(&mut m2).await, MoveOrder::Export { drive: id });
    c.move_channel_gone(&h("h1"), c1).await;
    let after = c.get_drive(&tenant, id).await.unwrap();
    assert_eq!((after.status, &after.record.host), ("mounted", &h("h2")));
    assert!(
        after
            .record
            .error
            .as_deref()
            .unwrap()
            .contains("host h1's link was lost"),
        "{:?}",
        after.record.error
    );
    // h1 is not asked to delete a drive that now lives on h2 only.
    assert!(
        !c.model
            .read()
            .await
            .drive_orders(&h("h1"))
            .delete
            .contains(&id)
    );

    // A host that reconnects loses the steps in flight: its moves fail, the drive stays.
    let mut m1 = c.move_channel(&h("h1"), 99).await;
    begin(&c, id, "h1", &mut m1, Ok(())).await.unwrap();
    let _m2 = c.move_channel(&h("h2"), 100).await;
    let after = c.get_drive(&tenant, id).await.unwrap();
    assert_eq!(after.record.host, h("h2"));
    assert!(
        after
            .record
            .error
            .as_deref()
            .unwrap()
            .contains("h2's link was reconnected"),
        "{:?}",
        after.record.error
    );
    // The old session's end changes nothing more.
    c.move_channel_gone(&h("h2"), c2).await;
    assert!(c.model.read().await.moves.get(&id).is_none());
}
