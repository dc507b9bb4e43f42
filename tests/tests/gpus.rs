//! GPUs end to end with a fake two-GPU host (the agent's inventory file): servers created with
//! a device profile get different devices, each workload sees only its own, ARQs are bound to
//! them, and a normal GPU server preempts a backfill one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_tests::*;
use serde_json::{Value, json};

const INVENTORY: &str = r#"{"gpus": [
  {"index": 0, "uuid": "GPU-11111111-aaaa-bbbb-cccc-000000000000", "name": "NVIDIA H100 80GB HBM3",
   "memory_bytes": 85899345920, "pci_bus_id": "00000000:0C:00.0"},
  {"index": 1, "uuid": "GPU-22222222-aaaa-bbbb-cccc-000000000000", "name": "NVIDIA H100 80GB HBM3",
   "memory_bytes": 85899345920, "pci_bus_id": "00000000:0D:00.0"}
]}"#;

fn job(name: &str) -> Value {
    json!({"name": name, "cpu": 200, "mem": 64u64 << 20, "device_profile": "one-gpu",
           "workload": {"command": ["sh", "-c",
               "echo \"cuda=$CUDA_VISIBLE_DEVICES nvidia=$NVIDIA_VISIBLE_DEVICES\"; exec sleep 300"]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_get_two_gpus_and_see_only_their_own() {
    let pki = Pki::new();
    let coord = Coordinator::start_with(&pki, &["tenant"], "");
    let mut setup = AgentSetup::new(&pki, &coord, "gpu-host");
    let inventory = setup.dir.path().join("gpus.json");
    std::fs::write(&inventory, INVENTORY).unwrap();
    setup.top_toml = format!("inventory_file = {inventory:?}\n");
    let _agent = setup.start(true, "1");
    let admin = client(&pki.ca(), Some(&pki.issue(Role::Admin, "ops")));
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));
    let acc = |p: &str| format!("https://{}/accelerator/v2/{p}", coord.api);

    let (code, p) = post(
        &admin,
        &acc("device_profiles"),
        json!([{"name": "one-gpu", "groups": [{"resources:PGPU": "1", "trait:CUSTOM_GPU_H100": "required"}]}]),
    )
    .await;
    assert_eq!(code, 201, "{p}");

    let a = create(&tenant, &coord.url("bservers/"), job("a")).await;
    let b = create(&tenant, &coord.url("bservers/"), job("b")).await;
    for id in [&a, &b] {
        let (code, v) = post(
            &tenant,
            &coord.url(&format!("bservers/{id}/action/?do=start")),
            json!({}),
        )
        .await;
        assert_eq!(code, 202, "{v}");
    }
    let gpus_of = |id: String| {
        let tenant = tenant.clone();
        let url = coord.url(&format!("bservers/{id}/"));
        async move {
            let (_, s) = get(&tenant, &url).await;
            (s["status"] == "running").then(|| s["gpus"].clone())
        }
    };
    let ga = eventually("a running with its GPU", || gpus_of(a.clone())).await;
    let gb = eventually("b running with its GPU", || gpus_of(b.clone())).await;
    assert_eq!(ga.as_array().unwrap().len(), 1);
    assert_eq!(gb.as_array().unwrap().len(), 1);
    assert_ne!(ga, gb, "the same GPU given twice");

    // Each workload sees exactly its own device.
    for (id, g) in [(&a, &ga), (&b, &gb)] {
        let uuid = g[0].as_str().unwrap().to_owned();
        let log = setup.state_dir().join("logs").join(format!("{id}.log"));
        let line = eventually("the workload's environment in its log", || async {
            std::fs::read_to_string(&log).ok().and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("cuda="))
                    .map(str::to_owned)
            })
        })
        .await;
        assert_eq!(line, format!("cuda={uuid} nvidia={uuid}"));
    }

    // Their ARQs are bound to those devices on this host.
    for (id, g) in [(&a, &ga), (&b, &gb)] {
        let (code, v) = get(
            &tenant,
            &acc(&format!(
                "accelerator_requests?instance={id}&bind_state=resolved"
            )),
        )
        .await;
        assert_eq!(code, 200, "{v}");
        let arq = &v["arqs"][0];
        assert_eq!(arq["state"], "Bound");
        assert_eq!(arq["hostname"], "gpu-host");
        assert_eq!(arq["device_rp_uuid"], g[0]);
        assert_eq!(arq["attach_handle_type"], "PCI");
    }

    // A normal server that needs a GPU: a backfill one gets its notice and goes.
    let n = create(&tenant, &coord.url("servers/"), job("normal")).await;
    post(
        &tenant,
        &coord.url(&format!("servers/{n}/action/?do=start")),
        json!({}),
    )
    .await;
    let (_, v) = get(&tenant, &coord.url(&format!("servers/{n}/"))).await;
    assert!(
        v["pending_reason"]
            .as_str()
            .unwrap_or("")
            .contains("making room"),
        "{v}"
    );
    let normal_gpu = eventually("the normal server running on a freed GPU", || async {
        let (_, s) = get(&tenant, &coord.url(&format!("servers/{n}/"))).await;
        (s["status"] == "running").then(|| s["gpus"][0].clone())
    })
    .await;
    let (_, sa) = get(&tenant, &coord.url(&format!("bservers/{a}/"))).await;
    let (_, sb) = get(&tenant, &coord.url(&format!("bservers/{b}/"))).await;
    let stopped: Vec<&Value> = [&sa, &sb]
        .into_iter()
        .filter(|s| s["status"] == "stopped")
        .collect();
    assert_eq!(
        stopped.len(),
        1,
        "exactly one backfill server preempted: {sa} {sb}"
    );
    let survivor = if sa["status"] == "running" { &ga } else { &gb };
    assert_ne!(&normal_gpu, &survivor[0]);
}
