//! Moving a drive between two real agents (issue 19): the operator's move of a tenant's
//! library clone (a copy-on-write qcow2 on a backing image) from one host to another, relayed
//! by the coordinator over the agent links; the target's file holds the same guest bytes, the
//! source's file is gone, and the refusals are clear 4xx.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_tests::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;

fn qemu_img_there() -> bool {
    let ok = Path::new("/usr/bin/qemu-img").is_file();
    if !ok {
        eprintln!("SKIP: moving drives needs qemu-img (install qemu-utils)");
    }
    ok
}

/// The guest's view of a qcow2 drive: its bytes as raw.
fn guest_bytes(qcow2: &Path) -> Vec<u8> {
    let raw = qcow2.with_extension("raw-check");
    let ok = Command::new("/usr/bin/qemu-img")
        .args(["convert", "-U", "-O", "raw"])
        .arg(qcow2)
        .arg(&raw)
        .status()
        .unwrap()
        .success();
    assert!(ok, "qemu-img convert {}", qcow2.display());
    let bytes = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    bytes
}

/// A host that runs VMs, with the library image `lib.raw` (the same bytes on both).
fn vm_host(pki: &Pki, coord: &Coordinator, name: &str, image: &[u8]) -> (AgentSetup, Daemon) {
    let mut setup = AgentSetup::new(pki, coord, name);
    let images = setup.dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(images.join("lib.raw"), image).unwrap();
    setup
        .extra_toml
        .push_str(&format!("[vm]\nimages_dir = {images:?}\naccel = \"tcg\"\n"));
    let agent = setup.start(true, "1");
    (setup, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_moves_a_drive_to_another_host_with_its_bytes() {
    if !qemu_img_there() {
        return;
    }
    let pki = Pki::new();
    let coord = Coordinator::start(&pki, &["tenant"]);
    // 3.5 MiB of a known pattern: the copy goes in several 1 MiB chunks and a short one.
    let image: Vec<u8> = (0..(7 * MIB / 2))
        .map(|i| u8::try_from((i * 7 + i / 4096) % 251).unwrap())
        .collect();
    let (a, _agent_a) = vm_host(&pki, &coord, "host-a", &image);
    let (b, _agent_b) = vm_host(&pki, &coord, "host-b", &image);
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));
    let admin = client(&pki.ca(), Some(&pki.issue(Role::Admin, "ops")));

    // Both hosts offer the image; the clone lands on one of them.
    let lib = within("the library drive on both hosts", DEADLINE, || async {
        let (_, libs) = get(&tenant, &coord.url("libdrives/")).await;
        (libs["meta"]["total_count"] == 1).then(|| libs["objects"][0]["uuid"].clone())
    })
    .await;
    let (status, body) = post(
        &tenant,
        &coord.url(&format!(
            "libdrives/{}/action/?do=clone",
            lib.as_str().unwrap()
        )),
        json!({"name": "root"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["objects"][0]["uuid"].as_str().unwrap().to_owned();
    let file = format!("{id}.qcow2");
    let (src, dst) = within("the clone made", DEADLINE, || async {
        let (_, d) = get(&tenant, &coord.url(&format!("drives/{id}/"))).await;
        if d["status"] != "unmounted" {
            return None;
        }
        for (x, y) in [(&a, &b), (&b, &a)] {
            if x.state_dir().join("drives").join(&file).is_file() {
                return Some((x.state_dir(), y.state_dir()));
            }
        }
        None
    })
    .await;
    let (src_name, dst_name) = if src == a.state_dir() {
        ("host-a", "host-b")
    } else {
        ("host-b", "host-a")
    };
    let before = guest_bytes(&src.join("drives").join(&file));
    assert_eq!(
        &before[..image.len()],
        &image[..],
        "the clone shows the image"
    );

    // Refusals: a tenant may not; an unknown host, the drive's own host, a bad body.
    let url = coord.url(&format!("operator/drives/{id}/move/"));
    let (status, _) = post(&tenant, &url, json!({"host": dst_name})).await;
    assert_eq!(status, 403, "a tenant certificate");
    for (body, want) in [
        (json!({"host": "nowhere"}), "no host nowhere"),
        (json!({"host": src_name}), "already on host"),
        (json!({"hots": dst_name}), "unknown field"),
    ] {
        let (status, v) = post(&admin, &url, body).await;
        assert_eq!(status, 400, "{v}");
        assert!(
            v[0]["error_message"].as_str().unwrap().contains(want),
            "{v}"
        );
    }

    // The move: 202 with the drive copying; then it is on the target, byte for byte, and gone
    // from the source.
    let (status, v) = post(&admin, &url, json!({"host": dst_name})).await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["objects"][0]["uuid"], id.as_str(), "{v}");
    assert_eq!(v["objects"][0]["status"], "cloning_src", "{v}");
    let moved = dst.join("drives").join(&file);
    within(
        "the drive on the target, gone from the source",
        DEADLINE,
        || async {
            let (_, d) = get(&tenant, &coord.url(&format!("drives/{id}/"))).await;
            (d["status"] == "unmounted"
                && moved.is_file()
                && !src.join("drives").join(&file).exists())
            .then_some(())
        },
    )
    .await;
    let after = guest_bytes(&moved);
    assert_eq!(after.len(), before.len());
    assert!(after == before, "the moved drive holds the same bytes");
    // Standalone: no backing file on the target.
    let info = Command::new("/usr/bin/qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&moved)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(info.get("backing-filename").is_none(), "{info}");
    // Nothing of the move is left behind.
    for dir in [&src, &dst] {
        let left: Vec<String> = std::fs::read_dir(dir.join("drives"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".export") || n.ends_with(".move"))
            .collect();
        assert!(left.is_empty(), "{left:?} in {}", dir.display());
    }
    // Now on the target: moving it there again is refused; the tenant's view is whole.
    let (status, v) = post(&admin, &url, json!({"host": dst_name})).await;
    assert_eq!(status, 400, "{v}");
    let (_, d) = get(&tenant, &coord.url(&format!("drives/{id}/"))).await;
    assert_eq!(
        (d["name"].as_str(), d["error"].as_str()),
        (Some("root"), None),
        "{d}"
    );
}
