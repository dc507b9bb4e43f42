//! Drives end to end (issue 19): the CloudSigma contract of `/drives/` and `/libdrives/`
//! against a real agent that makes the drives with qemu-img, tenants' isolation, and (as root)
//! a VM that boots with a clone of a library drive, writes a file to it, finds it after a stop
//! and start, and whose drive outlives the server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_tests::guest::{self, VIRTIO};
use backfill_tests::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(180);

/// A library image: an ext4 file system holding `library.txt`, made with `mkfs.ext4 -d`.
fn library_image(images: &Path, name: &str) -> bool {
    let root = images.parent().unwrap().join("libroot");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("library.txt"), "from-the-library\n").unwrap();
    let ok = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(images.join(name))
        .arg("32M")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIP (part): no mkfs.ext4 (install e2fsprogs)");
    }
    ok
}

fn qemu_there() -> bool {
    let ok = Path::new("/usr/bin/qemu-img").is_file()
        && Path::new("/usr/bin/qemu-system-x86_64").is_file();
    if !ok {
        eprintln!(
            "SKIP: the drives tests need qemu-img and qemu-system-x86_64 (install qemu-system-x86, qemu-utils)"
        );
    }
    ok
}

/// The tenant's drive `id`, once its status is `want` (polling).
async fn drive_when(c: &reqwest::Client, coord: &Coordinator, id: &str, want: &str) -> Value {
    within(&format!("drive {id} {want}"), DEADLINE, || async {
        let (status, d) = get(c, &coord.url(&format!("drives/{id}/"))).await;
        assert_eq!(status, 200, "{d}");
        assert_ne!(d["status"], "failed", "{d}");
        (d["status"] == want).then_some(d)
    })
    .await
}

fn error_type(body: &Value) -> &str {
    body[0]["error_type"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drives_follow_cloudsigmas_contract_and_stay_with_their_tenant() {
    if !qemu_there() {
        return;
    }
    let pki = Pki::new();
    let coord = Coordinator::start_with(
        &pki,
        &["tenant", "other"],
        "[drives]\nstorage_quota_bytes = 2147483648\n[[drives.library]]\nimage = \"lib.raw\"\nname = \"Library Linux\"\ndistribution = \"Test\"\nversion = \"1\"\n",
    );
    let mut setup = AgentSetup::new(&pki, &coord, "host-drives");
    let images = setup.dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::File::create(images.join("lib.raw"))
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    std::fs::write(images.join("vmlinuz"), b"not a disk").unwrap();
    setup
        .extra_toml
        .push_str(&format!("[vm]\nimages_dir = {images:?}\naccel = \"tcg\"\n"));
    let _agent = setup.start(true, "1");
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));
    let other = client(&pki.ca(), Some(&pki.issue(Role::Account, "other")));
    let drives = setup.state_dir().join("drives");

    // Library drives: the host's disk images (not its kernels), with CloudSigma's fields.
    let (status, libs) = get(&tenant, &coord.url("libdrives/")).await;
    assert_eq!(status, 200, "{libs}");
    assert_eq!(libs["meta"]["total_count"], 1, "{libs}");
    let lib = &libs["objects"][0];
    for key in [
        "uuid",
        "name",
        "os",
        "arch",
        "size",
        "media",
        "image_type",
        "description",
        "paid",
        "favourite",
        "licenses",
        "resource_uri",
        "status",
    ] {
        assert!(lib.get(key).is_some(), "{key} in {lib}");
    }
    assert_eq!(lib["name"], "Library Linux");
    assert_eq!(lib["size"], 8 * MIB);
    let lib_id = lib["uuid"].as_str().unwrap().to_owned();
    let (status, one) = get(&tenant, &coord.url(&format!("libdrives/{lib_id}/"))).await;
    assert_eq!((status, &one["uuid"]), (200, &lib["uuid"]));
    let (_, f) = get(&tenant, &coord.url("libdrives/?os=windows")).await;
    assert_eq!(f["meta"]["total_count"], 0);
    let (status, _) = get(
        &tenant,
        &coord.url("libdrives/00000000-0000-0000-0000-000000000001/"),
    )
    .await;
    assert_eq!(status, 404);

    // Create blank: name, size and media are required; the answer is the objects envelope.
    let (status, body) = post(
        &tenant,
        &coord.url("drives/"),
        json!({"objects": [{"name": "x", "size": 10 * MIB}]}),
    )
    .await;
    assert_eq!((status, error_type(&body)), (400, "validation"), "{body}");
    assert_eq!(body[0]["error_point"], "objects[0].media");
    let (status, body) = post(
        &tenant,
        &coord.url("drives/"),
        json!({"objects": [{"name": "x", "size": 1, "media": "disk"}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(
        &tenant,
        &coord.url("drives/"),
        json!({"objects": [{"name": "x", "size": 10 * MIB, "media": "tape"}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let started = Instant::now();
    let (status, made) = post(
        &tenant,
        &coord.url("drives/"),
        json!({"objects": [{"name": "data", "size": 16 * MIB, "media": "disk", "tags": ["t1"], "meta": {"k": "v"}},
                           {"name": "iso", "size": 2 * MIB, "media": "cdrom"}]}),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let data = made["objects"][0]["uuid"].as_str().unwrap().to_owned();
    let iso = made["objects"][1]["uuid"].as_str().unwrap().to_owned();
    for key in [
        "uuid",
        "name",
        "size",
        "media",
        "status",
        "storage_type",
        "allow_multimount",
        "mounted_on",
        "owner",
        "meta",
        "tags",
        "licenses",
        "snapshots",
        "remote_snapshots",
        "resource_uri",
        "runtime",
    ] {
        assert!(made["objects"][0].get(key).is_some(), "{key} in {made}");
    }
    assert_eq!(made["objects"][0]["status"], "creating");
    let d = drive_when(&tenant, &coord, &data, "unmounted").await;
    eprintln!("blank drive made in {:?}", started.elapsed());
    assert_eq!(d["size"], 16 * MIB);
    assert_eq!(d["resource_uri"], format!("/api/2.0/drives/{data}/"));
    assert!(drives.join(format!("{data}.qcow2")).is_file());
    drive_when(&tenant, &coord, &iso, "unmounted").await;

    // Lists: the envelope, limit/offset, filters, detail.
    let (_, page) = get(&tenant, &coord.url("drives/?limit=1&offset=1")).await;
    assert_eq!(
        page["meta"],
        json!({"limit": 1, "offset": 1, "total_count": 2})
    );
    assert_eq!(page["objects"].as_array().unwrap().len(), 1);
    let (_, f) = get(&tenant, &coord.url("drives/detail/?tag=t1")).await;
    assert_eq!(f["meta"]["total_count"], 1);
    assert_eq!(f["objects"][0]["meta"]["k"], "v");
    let (_, f) = get(&tenant, &coord.url("drives/?media=cdrom,disk&name=iso")).await;
    assert_eq!(f["meta"]["total_count"], 1);
    let (status, _) = get(&tenant, &coord.url("drives/?colour=red")).await;
    assert_eq!(status, 400);

    // Clone of a library drive: 202 with the new drive, a copy-on-write clone on the host.
    let started = Instant::now();
    let (status, cloned) = post(
        &tenant,
        &coord.url(&format!("libdrives/{lib_id}/action/?do=clone")),
        json!({"name": "mine"}),
    )
    .await;
    assert_eq!(status, 202, "{cloned}");
    let mine = cloned["objects"][0]["uuid"].as_str().unwrap().to_owned();
    assert_eq!(cloned["objects"][0]["name"], "mine");
    drive_when(&tenant, &coord, &mine, "unmounted").await;
    eprintln!("library clone ready in {:?}", started.elapsed());
    // Clone of one's own drive, never smaller; a library drive is not a tenant's drive.
    let (status, c2) = post(
        &tenant,
        &coord.url(&format!("drives/{data}/action/?do=clone")),
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{c2}");
    let copy = c2["objects"][0]["uuid"].as_str().unwrap().to_owned();
    drive_when(&tenant, &coord, &copy, "unmounted").await;
    let (status, _) = post(
        &tenant,
        &coord.url(&format!("drives/{lib_id}/action/?do=clone")),
        json!({}),
    )
    .await;
    assert_eq!(status, 404);

    // Edit: name, meta, tags; size grows, never shrinks; resize action.
    let (status, e) = put(
        &tenant,
        &coord.url(&format!("drives/{data}/")),
        json!({"name": "renamed", "tags": []}),
    )
    .await;
    assert_eq!(
        (status, &e["name"], &e["tags"]),
        (200, &json!("renamed"), &json!([])),
        "{e}"
    );
    let (status, e) = put(
        &tenant,
        &coord.url(&format!("drives/{data}/")),
        json!({"size": 8 * MIB}),
    )
    .await;
    assert_eq!((status, error_type(&e)), (400, "validation"), "{e}");
    let (status, e) = post(
        &tenant,
        &coord.url(&format!("drives/{data}/action/?do=resize")),
        json!({"name": "renamed", "size": 32 * MIB, "media": "disk"}),
    )
    .await;
    assert_eq!(status, 202, "{e}");
    assert_eq!(e["objects"][0]["size"], 32 * MIB);
    within("the host grew the drive", DEADLINE, || async {
        let out = Command::new("qemu-img")
            .args(["info", "-U", "--output=json"])
            .arg(drives.join(format!("{data}.qcow2")))
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["virtual-size"] == 32 * MIB).then_some(())
    })
    .await;
    // The storage quota (2 GiB here) counts every drive of the account.
    let (status, e) = post(
        &tenant,
        &coord.url("drives/"),
        json!({"objects": [{"name": "big", "size": 2u64 << 30, "media": "disk"}]}),
    )
    .await;
    assert_eq!((status, error_type(&e)), (403, "permission"), "{e}");

    // Attaching: a server's drives, validated; the drive is then mounted on it.
    let (status, e) = post(
        &tenant,
        &coord.url("servers/"),
        json!({"objects": [{"name": "s", "cpu": 500, "mem": 256 * MIB,
                            "drives": [{"boot_order": 1, "dev_channel": "0:0", "device": "virtio", "drive": data},
                                       {"boot_order": 1, "dev_channel": "0:1", "device": "virtio", "drive": mine}]}]}),
    )
    .await;
    assert_eq!(status, 400, "two drives with boot order 1: {e}");
    let server = create(
        &tenant,
        &coord.url("servers/"),
        json!({"name": "s", "cpu": 500, "mem": 256 * MIB,
               "drives": [{"boot_order": 1, "dev_channel": "0:0", "device": "virtio", "drive": data},
                          {"boot_order": 2, "dev_channel": "0:1", "device": "ide", "drive": {"uuid": iso}}]}),
    )
    .await;
    let (_, s) = get(&tenant, &coord.url(&format!("servers/{server}/"))).await;
    assert_eq!(
        s["drives"][0]["drive"],
        json!({"resource_uri": format!("/api/2.0/drives/{data}/"), "uuid": data})
    );
    assert_eq!(s["drives"][1]["device"], "ide");
    let d = drive_when(&tenant, &coord, &data, "mounted").await;
    assert_eq!(d["mounted_on"][0]["uuid"], server.as_str());
    // Not attached twice.
    let (status, e) = post(&tenant, &coord.url("servers/"), json!({"objects": [{"name": "t", "cpu": 500, "mem": 256 * MIB, "drives": [{"boot_order": 1, "drive": data}]}]})).await;
    assert_eq!(status, 409, "{e}");
    // A GET sent back as a PUT changes nothing; detaching works while stopped.
    let (status, back) = put(
        &tenant,
        &coord.url(&format!("servers/{server}/")),
        s.clone(),
    )
    .await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(back["drives"], s["drives"]);

    // Isolation: another tenant's drive is 404 on every path and cannot be attached.
    for (status, what) in [
        get(&other, &coord.url(&format!("drives/{data}/"))).await,
        put(
            &other,
            &coord.url(&format!("drives/{data}/")),
            json!({"name": "x"}),
        )
        .await,
        post(
            &other,
            &coord.url(&format!("drives/{data}/action/?do=clone")),
            json!({}),
        )
        .await,
        post(
            &other,
            &coord.url(&format!("drives/{data}/action/?do=resize")),
            json!({"size": 64 * MIB}),
        )
        .await,
    ] {
        assert_eq!(status, 404, "{what}");
    }
    assert_eq!(
        delete(&other, &coord.url(&format!("drives/{data}/")))
            .await
            .0,
        404
    );
    let (_, theirs) = get(&other, &coord.url("drives/")).await;
    assert_eq!(theirs["meta"]["total_count"], 0, "{theirs}");
    let (status, e) = post(&other, &coord.url("servers/"), json!({"objects": [{"name": "steal", "cpu": 500, "mem": 256 * MIB, "drives": [{"boot_order": 1, "drive": copy}]}]})).await;
    assert_eq!(status, 404, "{e}");

    // Delete: a stopped server's drive is detached; DELETE ?recurse=cdroms takes its cdroms.
    let (status, _) = delete(&tenant, &coord.url(&format!("drives/{data}/"))).await;
    assert_eq!(status, 204);
    let (_, s) = get(&tenant, &coord.url(&format!("servers/{server}/"))).await;
    assert_eq!(s["drives"].as_array().unwrap().len(), 1, "{s}");
    within("the host deleted the drive", DEADLINE, || async {
        (!drives.join(format!("{data}.qcow2")).exists()).then_some(())
    })
    .await;
    assert_eq!(
        get(&tenant, &coord.url(&format!("drives/{data}/"))).await.0,
        404
    );
    let (status, _) = delete(
        &tenant,
        &coord.url(&format!("servers/{server}/?recurse=all_of_them")),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = delete(
        &tenant,
        &coord.url(&format!("servers/{server}/?recurse=cdroms")),
    )
    .await;
    assert_eq!(status, 204);
    within("the cdrom went with its server", DEADLINE, || async {
        (get(&tenant, &coord.url(&format!("drives/{iso}/"))).await.0 == 404).then_some(())
    })
    .await;
    let (_, left) = get(&tenant, &coord.url("drives/")).await;
    assert_eq!(left["meta"]["total_count"], 2, "the clones stay: {left}");
    let (status, body) = get(&tenant, &coord.url("drives/not-a-uuid/")).await;
    assert_eq!((status, error_type(&body)), (400, "validation"));
}

/// The guest: mounts its first disk, shows the library's file, writes its own file on the
/// first boot and finds it on the next.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /mnt
/bin/busybox mount -t devtmpfs dev /dev
exec 0</dev/console 1>/dev/console 2>&1
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
    insmod /modules/$m.ko || echo "GUEST-INSMOD-FAILED $m"
done
for i in $(seq 1 100); do [ -b /dev/vda ] && break; sleep 0.1; done
mount -t ext4 /dev/vda /mnt || echo "GUEST-MOUNT-FAILED"
echo "GUEST-LIB $(cat /mnt/library.txt)"
if [ -f /mnt/persist.txt ]; then
    echo "GUEST-FOUND $(cat /mnt/persist.txt)"
else
    echo "written-by-the-guest" > /mnt/persist.txt
    sync
    echo "GUEST-WROTE"
fi
umount /mnt
sync
echo "GUEST-DONE"
while true; do sleep 60; done
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_boots_with_a_cloned_library_drive_and_its_data_outlives_the_server() {
    let mut modules: Vec<&str> = VIRTIO.to_vec();
    modules.push("drivers/block/virtio_blk");
    let (kernel, modules_dir) = match guest::usable(&modules) {
        Ok(k) => k,
        Err(why) => {
            eprintln!(
                "SKIP: the drives vm test needs root, QEMU, a cloud kernel and busybox: {why}"
            );
            return;
        }
    };
    let begun = Instant::now();
    let pki = Pki::new();
    let coord = Coordinator::start_with(&pki, &["tenant"], "");
    let mut setup = AgentSetup::new(&pki, &coord, "host-vm-drives");
    let images: PathBuf =
        guest::make_images(setup.dir.path(), &kernel, &modules_dir, &modules, INIT, &[]);
    if !library_image(&images, "library.raw") {
        return;
    }
    setup.extra_toml = format!(
        "[metadata]\nbind = \"127.0.0.1:0\"\n[network]\npool = \"10.213.242.0/24\"\n[vm]\nimages_dir = {images:?}\naccel = \"tcg\"\n"
    );
    let agent = setup.start(true, "1");
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));

    let (_, libs) = get(&tenant, &coord.url("libdrives/?name=library.raw")).await;
    assert_eq!(libs["meta"]["total_count"], 1, "{libs}");
    let lib = libs["objects"][0]["uuid"].as_str().unwrap().to_owned();
    let cloning = Instant::now();
    let (status, cloned) = post(
        &tenant,
        &coord.url(&format!("libdrives/{lib}/action/?do=clone")),
        json!({"name": "root"}),
    )
    .await;
    assert_eq!(status, 202, "{cloned}");
    let drive = cloned["objects"][0]["uuid"].as_str().unwrap().to_owned();
    drive_when(&tenant, &coord, &drive, "unmounted").await;
    eprintln!("library drive cloned in {:?}", cloning.elapsed());
    let file = setup
        .state_dir()
        .join("drives")
        .join(format!("{drive}.qcow2"));

    let vm = create(
        &tenant,
        &coord.url("bservers/"),
        json!({"name": "with-drive", "cpu": 1000, "mem": 256 * MIB,
               "workload": {"vm": {"kernel": "vmlinuz", "initrd": "initrd.cpio", "cmdline": "console=ttyS0 panic=-1 loglevel=4"}},
               "drives": [{"boot_order": 1, "dev_channel": "0:0", "device": "virtio", "drive": drive}]}),
    )
    .await;
    let log = setup.state_dir().join("logs").join(format!("{vm}.log"));
    let start = |n: usize| {
        let (tenant, coord, vm) = (&tenant, &coord, &vm);
        async move {
            let (status, body) = post(
                tenant,
                &coord.url(&format!("bservers/{vm}/action/?do=start")),
                json!({}),
            )
            .await;
            assert_eq!(status, 202, "start {n}: {body}");
        }
    };
    let stop = || async {
        let (status, body) = post(
            &tenant,
            &coord.url(&format!("bservers/{vm}/action/?do=stop")),
            json!({}),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        within("the vm stopped", BOOT, || async {
            let (_, b) = get(&tenant, &coord.url(&format!("bservers/{vm}/"))).await;
            (b["status"] == "stopped").then_some(())
        })
        .await;
    };

    let booting = Instant::now();
    start(1).await;
    let lib_line = guest::console_line(&log, &agent, "GUEST-LIB", 1, BOOT).await;
    assert!(lib_line.contains("from-the-library"), "{lib_line}");
    guest::console_line(&log, &agent, "GUEST-WROTE", 1, BOOT).await;
    guest::console_line(&log, &agent, "GUEST-DONE", 1, BOOT).await;
    eprintln!("first boot wrote its file after {:?}", booting.elapsed());
    // While it runs the drive is mounted and cannot be deleted or resized.
    let d = drive_when(&tenant, &coord, &drive, "mounted").await;
    assert_eq!(d["mounted_on"][0]["uuid"], vm.as_str());
    let (status, body) = delete(&tenant, &coord.url(&format!("drives/{drive}/"))).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = put(
        &tenant,
        &coord.url(&format!("drives/{drive}/")),
        json!({"size": 64 * MIB}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = put(
        &tenant,
        &coord.url(&format!("bservers/{vm}/")),
        json!({"drives": []}),
    )
    .await;
    assert_eq!(status, 403, "drives change only while stopped: {body}");
    stop().await;

    start(2).await;
    let found = guest::console_line(&log, &agent, "GUEST-FOUND", 1, BOOT).await;
    assert!(found.contains("written-by-the-guest"), "{found}");
    stop().await;

    // The server goes; its drive stays, unmounted, with the guest's data in it.
    let (status, _) = delete(&tenant, &coord.url(&format!("bservers/{vm}/"))).await;
    assert_eq!(status, 204);
    let d = drive_when(&tenant, &coord, &drive, "unmounted").await;
    assert_eq!(d["mounted_on"], json!([]));
    assert!(file.is_file());
    let (status, _) = delete(&tenant, &coord.url(&format!("drives/{drive}/"))).await;
    assert_eq!(status, 204);
    within("the drive's file removed", DEADLINE, || async {
        (!file.exists()).then_some(())
    })
    .await;
    eprintln!("drives vm test took {:?}", begun.elapsed());
}
