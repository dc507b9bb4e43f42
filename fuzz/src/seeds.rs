//! Writes the seed corpora under `fuzz/seeds/<target>/`: real link frames as the agent and the
//! coordinator send them, real metadata requests as guests' tools send them, and the create
//! and edit bodies of the end-to-end tests and CloudSigma's documentation. Run it again after
//! a protocol change, in `fuzz/`: `cargo fuzz run -s none seeds` (a libFuzzer binary like the
//! targets, so that it links with the same build; it writes the seeds and exits at start-up).
#![no_main]

use backfill_agent::metadata::TokenSealer;
use backfill_shared::protocol::{
    self, Ack, AgentMessage, AppliedLimits, CoordinatorMessage, DesiredServer, DesiredState, Hello,
    HostUsage, ObservedServer, PROTOCOL_VERSION, Report, ServerUsage, WorkloadState,
};
use backfill_shared::{
    GpuDevice, GpuUsage, GuestNetwork, GuestProfile, HostInventory, PerfFactor, Resources,
    ServerClass, ServerId, Termination, Workload,
};
use std::net::IpAddr;
use std::path::Path;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir).expect("seed directory");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed file");
}

/// Length-delimited frames, as `protocol::codec()` writes them.
fn frames(step: u8, msgs: &[bytes::Bytes]) -> Vec<u8> {
    let mut out = vec![step];
    for m in msgs {
        out.extend_from_slice(&u32::try_from(m.len()).expect("small").to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

fn link() {
    let hello = AgentMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        host_id: "host-a".parse().expect("host id"),
        agent_version: "0.1.0".into(),
        inventory: HostInventory {
            hostname: "host-a".into(),
            cpus: 16,
            cpu_mhz_per_cpu: 2400,
            mem_bytes: 128 << 30,
            gpus: vec![GpuDevice::whole(
                0,
                "GPU-5d3a",
                "NVIDIA H200",
                141 << 30,
                "0000:1a:00.0",
            )],
            drivers: backfill_shared::Drivers::exec_only(),
            mechanisms: Vec::new(),
        },
        enforcing: true,
    });
    let server = ServerId::from_u128(0x1234);
    let report = AgentMessage::Report(Report {
        applied_generation: 42,
        servers: vec![
            ObservedServer {
                server,
                state: WorkloadState::Running,
                pid: Some(4242),
                started_at: Some(1_700_000_000),
                perf_factor: PerfFactor {
                    cpu: 0.5,
                    mem: 0.75,
                },
                limits: AppliedLimits {
                    cpu_quota_us: Some(100_000),
                    cpu_period_us: 100_000,
                    mem_limit_bytes: Some(1 << 30),
                },
                usage: ServerUsage {
                    cpu_usage_usec: 12_345_678,
                    mem_usage_bytes: 300 << 20,
                    cpu_throttled_usec: 1_000,
                },
                incarnation: 7,
                network: Some(GuestNetwork {
                    address: IpAddr::from([10, 213, 240, 2]),
                    netns: "bf-00001234".into(),
                }),
                acknowledged: false,
            },
            ObservedServer {
                server: ServerId::from_u128(0x5678),
                state: WorkloadState::Failed {
                    reason: "exec: no such file".into(),
                },
                pid: None,
                started_at: None,
                perf_factor: PerfFactor::FULL,
                limits: AppliedLimits::default(),
                usage: ServerUsage::default(),
                incarnation: 1,
                network: None,
                acknowledged: true,
            },
        ],
        usage: HostUsage {
            mem_used_bytes: 3 << 30,
            load_avg_milli: 1500,
            cpu_pressure_x100: 250,
            memory_pressure_x100: 0,
            squeezing: true,
        },
        gpus: vec![GpuDevice::whole(
            0,
            "GPU-5d3a",
            "NVIDIA H200",
            141 << 30,
            "0000:1a:00.0",
        )],
        gpu_usage: vec![GpuUsage {
            uuid: "GPU-5d3a".into(),
            utilization_percent: 80,
            memory_used_bytes: 10 << 30,
        }],
    });
    let ack = AgentMessage::Ack(Ack { generation: 42 });
    let welcome = CoordinatorMessage::Welcome {
        protocol_version: PROTOCOL_VERSION,
    };
    let desired = CoordinatorMessage::DesiredState(DesiredState {
        generation: 43,
        servers: vec![DesiredServer {
            server,
            resources: Resources {
                cpu_mhz: 2000,
                vcpus: 2,
                mem_bytes: 1 << 30,
            },
            perf_factor: PerfFactor { cpu: 0.5, mem: 1.0 },
            workload: Some(Workload {
                command: vec!["sleep".into(), "120".into()],
                env: [("A".to_string(), "1".to_string())].into(),
                ..Workload::default()
            }),
            incarnation: 7,
            termination: Some(Termination {
                scheduled_at: 1_700_000_000,
                terminate_at: 1_700_000_900,
            }),
            guest: GuestProfile {
                name: "batch-1".into(),
                hostname: "batch-1".into(),
                account: "tenant".into(),
                class: ServerClass::Spot,
                instance_type: "c2m4-preemptible".into(),
                meta: [("role".to_string(), "batch".to_string())].into(),
                user_data: Some("#!/bin/sh\n".into()),
            },
            shutdown: Some(1_700_000_300),
            gpus: vec!["GPU-5d3a".into()],
        }],
        keep: Vec::new(),
    });
    let refused = CoordinatorMessage::Refused {
        reason: "certificate is for h1, Hello says h2".into(),
    };
    let enc = |m: &AgentMessage| protocol::encode(m).expect("encode");
    let enc_c = |m: &CoordinatorMessage| protocol::encode(m).expect("encode");
    write(
        "link_frames",
        "agent-session",
        &frames(255, &[enc(&hello), enc(&report), enc(&ack)]),
    );
    write(
        "link_frames",
        "agent-session-trickled",
        &frames(2, &[enc(&hello), enc(&ack)]),
    );
    write("link_frames", "hello", &frames(255, &[enc(&hello)]));
    write("link_frames", "report", &frames(63, &[enc(&report)]));
    write(
        "link_frames",
        "coordinator-session",
        &frames(255, &[enc_c(&welcome), enc_c(&desired)]),
    );
    write("link_frames", "desired", &frames(16, &[enc_c(&desired)]));
    write("link_frames", "refused", &frames(255, &[enc_c(&refused)]));
    let redirect = CoordinatorMessage::Redirect {
        link: "10.0.0.2:8444".into(),
    };
    write("link_frames", "redirect", &frames(255, &[enc_c(&redirect)]));
    let mut oversize = vec![255];
    oversize.extend_from_slice(&u32::MAX.to_be_bytes());
    oversize.extend_from_slice(b"\x00\x03");
    write("link_frames", "oversize", &oversize);
}

fn metadata() {
    let token = TokenSealer::with_key(b"fuzz")
        .issue(&IpAddr::from([10, 77, 0, 2]), 21_600, 1_700_000_000)
        .expect("token");
    let get = |path: &str, extra: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n{extra}\r\n"
        )
    };
    let reqs: Vec<(&str, u8, String)> = vec![
        ("openstack", 0, get("/openstack/latest/meta_data.json", "")),
        ("openstack-index", 1, get("/openstack/", "") + &get("/openstack/2018-08-27/", "")),
        ("openstack-network", 0, get("/openstack/latest/network_data.json", "")),
        ("openstack-user-data", 1, get("/openstack/latest/user_data", "")),
        ("ec2-v1", 0, get("/latest/meta-data/instance-id", "") + &get("/latest/meta-data/spot/instance-action", "")),
        ("ec2-index", 1, get("/latest/meta-data/", "") + &get("/latest/dynamic/instance-identity/document", "")),
        (
            "ec2-v2",
            4,
            "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\n\r\n".to_string()
                + &get("/latest/meta-data/spot/termination-time", &format!("X-aws-ec2-metadata-token: {token}\r\n"))
                + &get("/latest/meta-data/events/recommendations/rebalance", &format!("X-aws-ec2-metadata-token: {token}\r\n")),
        ),
        ("gce", 0, get("/computeMetadata/v1/instance/preempted", "Metadata-Flavor: Google\r\n")),
        ("gce-wait", 0, get("/computeMetadata/v1/instance/preempted?wait_for_change=true&timeout_sec=5&last_etag=0011223344556677", "Metadata-Flavor: Google\r\n")),
        ("azure", 0, get("/metadata/scheduledevents?api-version=2020-07-01", "Metadata: true\r\n")),
        (
            "azure-start",
            0,
            "POST /metadata/scheduledevents?api-version=2020-07-01 HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nContent-Type: application/json\r\nContent-Length: 68\r\n\r\n{\"StartRequests\": [{\"EventId\": \"00000000-0000-0000-0000-000000000001\"}]}".to_string(),
        ),
        ("ours", 1, get("/backfill/v1/?wait=true&etag=abc", "")),
        ("acknowledge", 0, "POST /backfill/v1/acknowledge HTTP/1.1\r\nHost: 169.254.169.254\r\nContent-Length: 0\r\n\r\n".to_string()),
        ("stranger", 2, get("/openstack/latest/meta_data.json", "")),
        (
            "proxy",
            8,
            get("/openstack/latest/meta_data.json", "X-Instance-ID: 00000000-0000-0000-0000-000000000002\r\nX-Instance-ID-Signature: 00ff\r\nX-Forwarded-For: 10.0.0.5\r\n"),
        ),
        ("http10", 1, "GET /latest/meta-data/local-ipv4 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".to_string()),
    ];
    for (name, knobs, raw) in reqs {
        let mut bytes = vec![knobs];
        bytes.extend_from_slice(raw.as_bytes());
        write("metadata_request", name, &bytes);
    }
}

fn api() {
    let bodies: Vec<(&str, u8, &str)> = vec![
        (
            "create-e2e",
            0,
            r#"{"objects": [{"name": "e2e", "cpu": 1000, "mem": 268435456, "smp": 2, "vnc_password": "x", "workload": {"command": ["sleep", "120"], "env": {"A": "1"}}}]}"#,
        ),
        (
            "create-isolated",
            0,
            r#"{"objects": [{"name": "guest-a", "cpu": 1200, "mem": 134217728, "meta": {"role": "batch"}, "workload": {"command": ["sleep", "300"], "network": "isolated"}}]}"#,
        ),
        (
            "create-many",
            0,
            r#"{"objects": [{"name": "a", "cpu": 500, "mem": 134217728, "tags": ["x", "y"], "priority": 10}, {"name": "b", "flavor": "c2m4"}, {"name": "c", "flavor": "c2m4-preemptible", "cpu": 1000, "device_profile": "gpu-1"}]}"#,
        ),
        (
            "create-cloudsigma",
            0,
            r#"{"objects": [{"name": "test_server_0", "cpu": 2000, "mem": 536870912, "vnc_password": "testserver", "meta": {"description": "a server", "ssh_public_key": "ssh-rsa AAAA"}, "tags": []}]}"#,
        ),
        (
            "create-bad",
            0,
            r#"{"objects": [{"name": "x", "cpu": 1000, "mem": 268435456, "disks": []}]}"#,
        ),
        (
            "edit-resize",
            1,
            r#"{"name": "renamed", "cpu": 4000, "mem": 2147483648, "smp": 4, "meta": {"k": "v"}}"#,
        ),
        (
            "edit-get-put",
            1,
            r#"{"uuid": "00000000-0000-0000-0000-000000000007", "name": "current", "cpu": 2000, "mem": 1073741824, "smp": 2, "status": "stopped", "runtime": null, "flavor": "c2m4", "device_profile": null, "meta": {"role": "batch"}, "tags": ["t1"], "owner": {"uuid": "tenant"}}"#,
        ),
        (
            "edit-workload",
            1,
            r#"{"workload": {"command": ["/bin/true"], "env": {"PATH": "/bin"}, "network": "host"}, "priority": -5}"#,
        ),
    ];
    for (name, mode, body) in bodies {
        let mut bytes = vec![mode];
        bytes.extend_from_slice(body.as_bytes());
        write("api_server_json", name, &bytes);
    }
}

fn write_all_and_exit() {
    link();
    metadata();
    api();
    eprintln!("seeds written under fuzz/seeds/");
    std::process::exit(0)
}

libfuzzer_sys::fuzz_target!(init: write_all_and_exit(), |_data: &[u8]| {});
