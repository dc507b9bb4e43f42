//! Drives in the coordinator, without sockets: orders to the host, reports back, placement on
//! the drives' host, a clear error when it is gone, and tenants kept apart.

use crate::link::session_tests::{fixture, hello, new_server};
use crate::ops::drives::{CloneOpts, NewDrive};
use crate::state::coordinator::{OpError, Scope};
use backfill_shared::drive::{DriveReport, DriveSource, ObservedDrive, ObservedDriveState};
use backfill_shared::{DriveAttachment, DriveId, HostId, Media, ServerStatus};

fn vm_hello(host: &str) -> backfill_shared::protocol::Hello {
    let mut h = hello(host);
    h.inventory.drivers.vm = Some(backfill_shared::VmDriver {
        accel: "tcg".into(),
        images: vec![backfill_shared::VmImage {
            name: "lib.qcow2".into(),
            format: "qcow2".into(),
            virtual_size: 1 << 30,
        }],
    });
    h
}

fn blank(name: &str) -> NewDrive {
    NewDrive {
        name: name.into(),
        size: 1 << 30,
        media: Media::Disk,
        meta: Default::default(),
        tags: Vec::new(),
    }
}

fn ready(ids: &[DriveId]) -> DriveReport {
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

fn attach(id: DriveId) -> DriveAttachment {
    DriveAttachment {
        drive: id,
        boot_order: Some(1),
        dev_channel: "0:0".into(),
        device: backfill_shared::drive::DriveDevice::Virtio,
        media: Media::Disk,
    }
}

#[tokio::test]
async fn drives_are_ordered_reported_pinned_and_kept_apart() {
    let f = fixture().await;
    let h1: HostId = "h1".parse().unwrap();
    let (conn, _rx) = f.c.register_agent(&vm_hello("h1")).await.unwrap();
    let mut orders = f.c.drive_channel(&h1, conn).await;
    // A library clone lands on the host that holds the image, and the host is told.
    let libs = f.c.libdrives().await;
    assert_eq!(libs.len(), 1);
    let d =
        f.c.clone_libdrive(&f.tenant, libs[0].uuid, CloneOpts::default())
            .await
            .unwrap();
    assert_eq!((d.status, &d.record.host), ("creating", &h1));
    assert!(orders.has_changed().unwrap());
    let o = orders.borrow_and_update().clone();
    assert_eq!(o.drives.len(), 1);
    assert!(
        matches!(&o.drives[0].source, DriveSource::Library { image, .. } if image == "lib.qcow2")
    );
    let id = d.record.uuid;
    // Not attachable to a start until made; made when the host says so.
    let mut n = new_server();
    n.drives = vec![attach(id)];
    n.workload = None;
    let s =
        f.c.create_servers(&f.tenant, backfill_shared::ServerClass::Backfill, vec![n])
            .await
            .unwrap()
            .remove(0);
    let e =
        f.c.start(&f.tenant, Scope::BServers, s.uuid)
            .await
            .unwrap_err();
    assert!(
        matches!(e, OpError::Conflict(ref m) if m.contains("still being made")),
        "{e}"
    );
    f.c.apply_drive_report(&h1, ready(&[id])).await.unwrap();
    assert_eq!(
        f.c.get_drive(&f.tenant, id).await.unwrap().status,
        "mounted"
    );

    // Another tenant sees nothing of it and cannot attach it.
    f.c.create_account("other", true, Default::default())
        .await
        .unwrap();
    let other = f.c.account("other").await.unwrap();
    assert!(matches!(
        f.c.get_drive(&other, id).await,
        Err(OpError::DriveNotFound(_))
    ));
    assert!(matches!(
        f.c.delete_drive(&other, id).await,
        Err(OpError::DriveNotFound(_))
    ));
    let mut steal = new_server();
    steal.drives = vec![attach(id)];
    steal.workload = None;
    let e =
        f.c.create_servers(&other, backfill_shared::ServerClass::Backfill, vec![steal])
            .await
            .unwrap_err();
    assert!(matches!(e, OpError::DriveNotFound(_)), "{e}");

    // The server is a VM with its drive, placed only on h1 even when h2 has more room.
    let mut big = vm_hello("h2");
    big.inventory.cpus = 64;
    let _h2 = f.c.register_agent(&big).await.unwrap();
    let started = f.c.start(&f.tenant, Scope::BServers, s.uuid).await.unwrap();
    assert_eq!(started.host, Some(h1.clone()));
    let desired = f.c.model.read().await.desired_state(&h1);
    let w = desired.servers[0].workload.clone().unwrap();
    assert_eq!(w.vm.unwrap().drives, vec![attach(id)]);
    // Running: the drive is neither deleted nor grown nor cloned.
    assert!(matches!(
        f.c.delete_drive(&f.tenant, id).await,
        Err(OpError::DriveInUse(_))
    ));
    let mut grown = blank("x");
    grown.size = 2 << 30;
    grown.name = d.record.name.clone();
    assert!(matches!(
        f.c.edit_drive(&f.tenant, id, grown).await,
        Err(OpError::DriveInUse(_))
    ));
    assert!(matches!(
        f.c.clone_drive(&f.tenant, id, CloneOpts::default()).await,
        Err(OpError::DriveInUse(_))
    ));
    f.c.stop(&f.tenant, Scope::BServers, s.uuid).await.unwrap();
    f.c.apply_report(
        &h1,
        conn,
        crate::link::session_tests::report(u64::MAX >> 1, &[]),
    )
    .await
    .unwrap();
    assert_eq!(
        f.c.get_server(&f.tenant, Scope::BServers, s.uuid)
            .await
            .unwrap()
            .status,
        ServerStatus::Stopped
    );

    // Its host gone: the start fails at once, naming the drive and the host.
    f.c.agent_gone(&h1, conn).await;
    let e =
        f.c.start(&f.tenant, Scope::BServers, s.uuid)
            .await
            .unwrap_err();
    match e {
        OpError::NeverFits(m) => assert!(m.contains(&id.to_string()) && m.contains("h1"), "{m}"),
        other => panic!("{other}"),
    }

    // Deleted: hidden at once, ordered deleted, forgotten when the host no longer has it.
    let (conn, _rx) = f.c.register_agent(&vm_hello("h1")).await.unwrap();
    let mut orders = f.c.drive_channel(&h1, conn).await;
    f.c.delete_drive(&f.tenant, id).await.unwrap();
    assert!(matches!(
        f.c.get_drive(&f.tenant, id).await,
        Err(OpError::DriveNotFound(_))
    ));
    let s =
        f.c.get_server(&f.tenant, Scope::BServers, s.uuid)
            .await
            .unwrap();
    assert!(s.drives.is_empty(), "detached from the stopped server");
    let o = orders.borrow_and_update().clone();
    assert_eq!(o.delete, vec![id]);
    f.c.apply_drive_report(&h1, ready(&[id])).await.unwrap();
    assert!(
        f.c.model.read().await.drives.contains_key(&id),
        "still on the host"
    );
    f.c.apply_drive_report(&h1, DriveReport::default())
        .await
        .unwrap();
    assert!(!f.c.model.read().await.drives.contains_key(&id));
    assert!(f.c.store.drives().await.unwrap().is_empty());

    // A host that cannot make a drive fails it, with the reason.
    let d =
        f.c.create_drives(&f.tenant, vec![blank("b")])
            .await
            .unwrap()
            .remove(0);
    let failed = DriveReport {
        drives: vec![ObservedDrive {
            id: d.record.uuid,
            size: 0,
            state: ObservedDriveState::Failed {
                reason: "no space".into(),
            },
        }],
    };
    f.c.apply_drive_report(&d.record.host, failed)
        .await
        .unwrap();
    let v = f.c.get_drive(&f.tenant, d.record.uuid).await.unwrap();
    assert_eq!(
        (v.status, v.record.error.as_deref()),
        ("failed", Some("no space"))
    );
}

#[tokio::test]
async fn storage_is_metered_per_gib_hour_until_the_drive_is_deleted() {
    let f = fixture().await;
    let (_conn, _rx) = f.c.register_agent(&vm_hello("h1")).await.unwrap();
    let d =
        f.c.create_drives(&f.tenant, vec![blank("b")])
            .await
            .unwrap()
            .remove(0);
    let id = d.record.uuid;
    f.c.apply_drive_report(&d.record.host, ready(&[id]))
        .await
        .unwrap();
    // The fixture's clock says 1000; a tick an hour later records the hour.
    f.c.tick(1_000 + 3_600).await.unwrap();
    let usage = |end: i64| {
        let c = &f.c;
        async move {
            c.store
                .usage(&crate::domain::usage::UsageFilter {
                    account: None,
                    start: 0,
                    end,
                })
                .await
                .unwrap()
                .into_iter()
                .find(|r| r.server == id.to_string())
                .unwrap()
        }
    };
    let row = usage(10_000).await;
    assert_eq!(row.class, "drive");
    assert_eq!(row.mem_byte_seconds, (1u64 << 30) * 3_600);
    // 1 GiB for an hour at the default 0.0001 per GiB-hour.
    assert_eq!(row.amount_micro, 100);
    // Deleting stops the meter (after the part up to the delete, here none).
    f.c.delete_drive(&f.tenant, id).await.unwrap();
    f.c.tick(1_000 + 4 * 3_600).await.unwrap();
    assert_eq!(usage(100_000).await.seconds, 3_600);
}

/// An account's own storage quota applies; one without uses `[drives] storage_quota_bytes`;
/// setting it back to null returns to that default.
#[tokio::test]
async fn storage_quota_is_the_accounts_or_the_configured_default() {
    let f = fixture().await;
    let c = f.c.with_drives(crate::domain::library::DrivesConfig {
        storage_quota_bytes: Some(2 << 30),
        ..Default::default()
    });
    let (_conn, _rx) = c.register_agent(&vm_hello("h1")).await.unwrap();
    let quota = |e: OpError| matches!(e, OpError::Quota(ref m) if m.contains("storage quota"));

    // The default: two 1 GiB drives fit, a third does not, nor does a library clone.
    assert_eq!(f.tenant.quota.storage, None);
    let made = c
        .create_drives(&f.tenant, vec![blank("a"), blank("b")])
        .await
        .unwrap();
    let h1: HostId = "h1".parse().unwrap();
    let ids: Vec<DriveId> = made.iter().map(|d| d.record.uuid).collect();
    c.apply_drive_report(&h1, ready(&ids)).await.unwrap();
    let e = c
        .create_drives(&f.tenant, vec![blank("c")])
        .await
        .unwrap_err();
    assert!(quota(e));
    let lib = c.libdrives().await[0].uuid;
    let e = c
        .clone_libdrive(&f.tenant, lib, CloneOpts::default())
        .await
        .unwrap_err();
    assert!(quota(e));

    // The account's own quota replaces the default, larger or smaller.
    let t = c
        .update_account(
            "t",
            crate::domain::account::AccountChange {
                backfill: None,
                quota: crate::domain::account::QuotaChange {
                    storage: Some(Some(4 << 30)),
                    ..Default::default()
                },
            },
        )
        .await
        .unwrap();
    assert_eq!(t.quota.storage, Some(4 << 30));
    let t = c.account("t").await.unwrap();
    assert_eq!(t.quota.storage, Some(4 << 30));
    c.create_drives(&t, vec![blank("c")]).await.unwrap();
    c.clone_libdrive(&t, lib, CloneOpts::default())
        .await
        .unwrap();
    let e = c.create_drives(&t, vec![blank("e")]).await.unwrap_err();
    assert!(quota(e));
    // Growing a drive counts too.
    let grow = NewDrive {
        size: 2 << 30,
        ..blank("a")
    };
    let e = c.edit_drive(&t, ids[0], grow).await.unwrap_err();
    assert!(quota(e));
    // The account's use shows the bytes of its drives.
    let (_, used) = c.account_in_use("t").await.unwrap();
    assert_eq!(used.storage, 4 << 30);

    // Another account without a quota of its own still has the default; one with a smaller
    // quota is held to it.
    let other = c
        .create_account(
            "other",
            true,
            crate::domain::account::Quota {
                storage: Some(1 << 30),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    c.create_drives(&other, vec![blank("o1")]).await.unwrap();
    let e = c
        .create_drives(&other, vec![blank("o2")])
        .await
        .unwrap_err();
    assert!(quota(e));
    c.create_account("third", true, Default::default())
        .await
        .unwrap();
    let third = c.account("third").await.unwrap();
    let e = c
        .create_drives(&third, vec![blank("x"), blank("y"), blank("z")])
        .await
        .unwrap_err();
    assert!(quota(e));

    // Back to the default (null): the tenant's 4 GiB are over it, so nothing more fits.
    let t = c
        .update_account(
            "t",
            crate::domain::account::AccountChange {
                backfill: None,
                quota: crate::domain::account::QuotaChange {
                    storage: Some(None),
                    ..Default::default()
                },
            },
        )
        .await
        .unwrap();
    assert_eq!(t.quota.storage, None);
    let e = c.create_drives(&t, vec![blank("f")]).await.unwrap_err();
    assert!(quota(e));

    // Unlimited explicitly: the default no longer holds the account; and back to the default.
    let set = |storage| crate::domain::account::AccountChange {
        backfill: None,
        quota: crate::domain::account::QuotaChange {
            storage: Some(storage),
            ..Default::default()
        },
    };
    let t = c
        .update_account("t", set(Some(crate::domain::account::UNLIMITED_STORAGE)))
        .await
        .unwrap();
    assert_eq!(
        c.account("t").await.unwrap().quota.storage,
        Some(crate::domain::account::UNLIMITED_STORAGE)
    );
    c.create_drives(&t, vec![blank("f"), blank("g")])
        .await
        .unwrap();
    let t = c.update_account("t", set(None)).await.unwrap();
    let e = c.create_drives(&t, vec![blank("h")]).await.unwrap_err();
    assert!(quota(e));
}

#[tokio::test]
async fn a_fleet_without_vm_hosts_refuses_drives_and_one_whose_vm_hosts_are_away_asks_to_retry() {
    let f = fixture().await;
    // Before any host has connected: nothing can hold it yet (retry).
    let err = f.c.create_drives(&f.tenant, vec![blank("a")]).await;
    assert!(matches!(err, Err(OpError::NeverFits(_))), "{err:?}");
    // A fleet whose hosts run no VMs never will: a clear 400 naming what it runs.
    let (_conn, _rx) = f.c.register_agent(&hello("h1")).await.unwrap();
    match f.c.create_drives(&f.tenant, vec![blank("a")]).await {
        Err(OpError::Invalid { message, .. }) => {
            assert!(message.contains("no host of this fleet"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // With a VM host it lands there.
    let (_conn, _rx2) = f.c.register_agent(&vm_hello("h2")).await.unwrap();
    let d =
        f.c.create_drives(&f.tenant, vec![blank("a")])
            .await
            .unwrap();
    assert_eq!(d[0].record.host.as_str(), "h2");
}
