//! The image's configuration (what to run, its environment) and the OCI runtime bundle's
//! `config.json` the agent writes for each run: who and what runs, its namespaces, mounts,
//! capabilities, seccomp filter and cgroup.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

/// The parts of an OCI image configuration the driver uses.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` strings.
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

impl ImageConfig {
    /// From the image's config blob (`{"config": {"Entrypoint": ..., "Cmd": ...}}`).
    pub fn parse(blob: &[u8]) -> Result<ImageConfig, String> {
        let v: Value =
            serde_json::from_slice(blob).map_err(|e| format!("image config is not JSON: {e}"))?;
        let c = v.get("config").cloned().unwrap_or(Value::Null);
        let strings = |key: &str| -> Vec<String> {
            c.get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let string = |key: &str| {
            c.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Ok(ImageConfig {
            entrypoint: strings("Entrypoint"),
            cmd: strings("Cmd"),
            env: strings("Env"),
            working_dir: string("WorkingDir"),
            user: string("User"),
        })
    }
}

/// Everything that goes into one run's `config.json`.
#[derive(Debug, Clone)]
pub struct RunSpec<'a> {
    pub image: &'a ImageConfig,
    /// The workload's command: overrides the image's Entrypoint and Cmd when not empty.
    pub command: &'a [String],
    /// The workload's variables, then the agent's (GPU variables): later ones win.
    pub env: &'a [&'a BTreeMap<String, String>],
    pub workdir: Option<&'a str>,
    /// The mounted root filesystem.
    pub rootfs: &'a Path,
    pub readonly: bool,
    pub hostname: &'a str,
    /// A network namespace to join; `None`: the host's network.
    pub netns: Option<&'a Path>,
    pub cgroups_path: Option<&'a str>,
    /// The unprivileged user the image's root becomes.
    pub uid: u32,
    pub gid: u32,
    pub oom_score_adj: Option<i16>,
    /// Files bind-mounted read-only over `/etc/...`: (path in the container, host file).
    pub etc_files: &'a [(&'a str, &'a Path)],
    pub server: &'a str,
    /// A user namespace: container ids 0..[`USERNS_SIZE`] are host ids from this one.
    pub userns_base: Option<u32>,
}

/// How many ids a container's user namespace maps.
pub const USERNS_SIZE: u32 = 65536;

const SAFE_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set without NET_RAW: the most the container's processes may
/// ever gain (bounding set). They run as a non-root user, so they hold none of them.
pub const BOUNDING_CAPS: [&str; 13] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// System calls refused with EPERM: those Docker's default profile leaves out that a
/// container could use against the host (kernel modules and keyrings, mounts, clocks,
/// tracing, BPF, new user namespaces, reboot...). Everything else is allowed.
const DENIED_SYSCALLS: [&str; 41] = [
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "umount2",
];

/// Paths of /proc and /sys hidden from the container, and those it may only read (Docker's).
const MASKED: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn seccomp() -> Value {
    let arches: &[&str] = match std::env::consts::ARCH {
        "x86_64" => &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64" => &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        _ => &[],
    };
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": arches,
        "syscalls": [
            {"names": DENIED_SYSCALLS.as_slice(), "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            // unshare(2) and clone(2) asking for a new user namespace (CLONE_NEWUSER).
            {"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "args": [{"index": 0, "value": 0x1000_0000u64, "valueTwo": 0x1000_0000u64, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "args": [{"index": 0, "value": 0x1000_0000u64, "valueTwo": 0x1000_0000u64, "op": "SCMP_CMP_MASKED_EQ"}]},
            // clone3 passes its flags in memory a filter cannot read: make libc fall back to clone.
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        ],
    })
}

/// What the container runs: the workload's command, else the image's Entrypoint + Cmd.
pub fn args(image: &ImageConfig, command: &[String]) -> Vec<String> {
    if command.is_empty() {
        image.entrypoint.iter().chain(&image.cmd).cloned().collect()
    } else {
        command.to_vec()
    }
}

/// The image's variables, overridden by each map in turn; PATH defaults to the usual one.
pub fn env(
    image: &ImageConfig,
    overrides: &[&BTreeMap<String, String>],
    server: &str,
) -> Vec<String> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match vars.iter_mut().find(|(n, _)| n == k) {
        Some(slot) => slot.1 = v.to_owned(),
        None => vars.push((k.to_owned(), v.to_owned())),
    };
    set("PATH", SAFE_PATH.trim_start_matches("PATH="));
    for kv in &image.env {
        if let Some((k, v)) = kv.split_once('=') {
            set(k, v);
        }
    }
    set("BACKFILL_SERVER_UUID", server);
    for m in overrides {
        for (k, v) in m.iter() {
            set(k, v);
        }
    }
    vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The user the container runs as: the image's numeric non-root user, else the agent's
/// unprivileged workload user (an image's `root`, named users, empty: never root here).
pub fn user(image_user: &str, uid: u32, gid: u32) -> (u32, u32) {
    let (u, g) = image_user.split_once(':').unwrap_or((image_user, ""));
    match (u.parse::<u32>(), g.parse::<u32>()) {
        (Ok(u), Ok(g)) if u != 0 && g != 0 => (u, g),
        (Ok(u), Err(_)) if u != 0 && g.is_empty() => (u, u),
        _ => (uid, gid),
    }
}

/// The image's user inside its own user namespace: numeric `uid[:gid]`; root for names
/// (no lookup in the image's /etc/passwd) and for an empty user.
pub fn image_user_in_userns(image_user: &str) -> (u32, u32) {
    let (u, g) = image_user.split_once(':').unwrap_or((image_user, ""));
    let uid = u
        .parse::<u32>()
        .ok()
        .filter(|u| *u < USERNS_SIZE)
        .unwrap_or(0);
    let gid = g
        .parse::<u32>()
        .ok()
        .filter(|g| *g < USERNS_SIZE)
        .unwrap_or(uid);
    (uid, gid)
}

/// The bundle's `config.json`.
pub fn config_json(s: &RunSpec<'_>) -> Value {
    // In its own user namespace the image's user is itself (its root is an unprivileged
    // host id); without one, never root.
    let (uid, gid) = match s.userns_base {
        Some(_) => image_user_in_userns(&s.image.user),
        None => user(&s.image.user, s.uid, s.gid),
    };
    let cwd = s
        .workdir
        .or(Some(s.image.working_dir.as_str()).filter(|w| w.starts_with('/')))
        .unwrap_or("/");
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if let Some(ns) = s.netns {
        namespaces.push(json!({"type": "network", "path": ns}));
    }
    if s.userns_base.is_some() {
        namespaces.push(json!({"type": "user"}));
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=755"]}),
    ];
    if s.userns_base.is_some() {
        // sysfs cannot be mounted from a user namespace that does not own the network
        // namespace (the agent's): no /sys then, rather than the host's.
        mounts.retain(|m| m["destination"] != "/sys");
    }
    for (dst, src) in s.etc_files {
        mounts.push(json!({"destination": dst, "type": "bind", "source": src, "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}));
    }
    let mut linux = json!({
        "namespaces": namespaces,
        // Only the device cgroup is set (the usual nodes, nothing else): CPU and memory limits
        // are the agent's, already on the cgroup, and runc leaves what it is not given.
        "resources": {"devices": [{"allow": false, "access": "rwm"}]},
        "maskedPaths": MASKED.as_slice(),
        "readonlyPaths": READONLY.as_slice(),
        "seccomp": seccomp(),
    });
    if let (Some(p), Some(obj)) = (s.cgroups_path, linux.as_object_mut()) {
        obj.insert("cgroupsPath".into(), json!(p));
    }
    if let (Some(base), Some(obj)) = (s.userns_base, linux.as_object_mut()) {
        let map = json!([{"containerID": 0, "hostID": base, "size": USERNS_SIZE}]);
        obj.insert("uidMappings".into(), map.clone());
        obj.insert("gidMappings".into(), map);
    }
    // A root inside a user namespace holds the bounding set (over its own namespace only);
    // anyone else holds nothing.
    let held: &[&str] = if s.userns_base.is_some() && uid == 0 {
        BOUNDING_CAPS.as_slice()
    } else {
        &[]
    };
    let mut process = json!({
        "terminal": false,
        "user": {"uid": uid, "gid": gid, "additionalGids": [gid]},
        "args": args(s.image, s.command),
        "env": env(s.image, s.env, s.server),
        "cwd": cwd,
        "capabilities": {
            "bounding": BOUNDING_CAPS.as_slice(),
            "effective": held,
            "inheritable": [],
            "permitted": held,
            "ambient": [],
        },
        "noNewPrivileges": true,
    });
    if let (Some(adj), Some(obj)) = (s.oom_score_adj, process.as_object_mut()) {
        obj.insert("oomScoreAdj".into(), json!(adj));
    }
    json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": s.rootfs, "readonly": s.readonly},
        "hostname": s.hostname,
        "mounts": mounts,
        "linux": linux,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig::parse(
            br#"{"architecture":"amd64","config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],
                "Env":["PATH=/bin","A=image","B=image"],"WorkingDir":"/srv","User":"root"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn config_json_has_what_matters() {
        let img = image();
        let wl: BTreeMap<String, String> = [("B".into(), "workload".into())].into();
        let gpu: BTreeMap<String, String> =
            [("NVIDIA_VISIBLE_DEVICES".into(), "void".into())].into();
        let hosts = Path::new("/state/containers/x/hosts");
        let v = config_json(&RunSpec {
            image: &img,
            command: &[],
            env: &[&wl, &gpu],
            workdir: None,
            rootfs: Path::new("/state/containers/x/rootfs"),
            readonly: true,
            hostname: "guest-1",
            netns: Some(Path::new("/run/netns/bf-1")),
            cgroups_path: Some("/backfill/x"),
            uid: 65534,
            gid: 65534,
            oom_score_adj: Some(1000),
            etc_files: &[("/etc/hosts", hosts)],
            server: "x",
            userns_base: None,
        });
        let p = &v["process"];
        assert_eq!(p["args"], json!(["/bin/sh", "-c", "echo hi"]));
        assert_eq!(
            p["env"],
            json!([
                "PATH=/bin",
                "A=image",
                "B=workload",
                "BACKFILL_SERVER_UUID=x",
                "NVIDIA_VISIBLE_DEVICES=void"
            ])
        );
        assert_eq!(p["cwd"], "/srv");
        assert_eq!(
            p["user"]["uid"], 65534,
            "the image's root is never root here"
        );
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["oomScoreAdj"], 1000);
        assert_eq!(p["capabilities"]["effective"], json!([]));
        let bounding = p["capabilities"]["bounding"].as_array().unwrap();
        assert!(!bounding.contains(&json!("CAP_NET_RAW")));
        assert!(!bounding.contains(&json!("CAP_SYS_ADMIN")));
        assert_eq!(
            v["root"],
            json!({"path": "/state/containers/x/rootfs", "readonly": true})
        );
        assert_eq!(v["hostname"], "guest-1");
        let l = &v["linux"];
        assert_eq!(l["cgroupsPath"], "/backfill/x");
        assert_eq!(
            l["resources"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            vec!["devices"],
            "no CPU or memory limits that would overwrite the agent's"
        );
        let ns = l["namespaces"].as_array().unwrap();
        assert!(ns.contains(&json!({"type": "network", "path": "/run/netns/bf-1"})));
        assert!(ns.contains(&json!({"type": "pid"})));
        assert!(!ns.iter().any(|n| n["type"] == "user"));
        let mounts = v["mounts"].as_array().unwrap();
        let dests: Vec<&str> = mounts
            .iter()
            .filter_map(|m| m["destination"].as_str())
            .collect();
        for d in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/sys",
            "/tmp",
            "/etc/hosts",
        ] {
            assert!(dests.contains(&d), "{d}");
        }
        let sys = mounts.iter().find(|m| m["destination"] == "/sys").unwrap();
        assert!(sys["options"].as_array().unwrap().contains(&json!("ro")));
        assert!(
            mounts
                .iter()
                .all(|m| m["type"] != "bind" || m["source"] == json!(hosts)),
            "no host mounts but the generated files"
        );
        assert_eq!(l["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        assert!(
            l["maskedPaths"]
                .as_array()
                .unwrap()
                .contains(&json!("/proc/kcore"))
        );
    }

    #[test]
    fn host_network_overrides_and_users() {
        let img = image();
        let cmd = vec!["/bin/busybox".to_string(), "true".into()];
        let v = config_json(&RunSpec {
            image: &img,
            command: &cmd,
            env: &[],
            workdir: Some("/w"),
            rootfs: Path::new("/r"),
            readonly: false,
            hostname: "h",
            netns: None,
            cgroups_path: None,
            uid: 65534,
            gid: 65534,
            oom_score_adj: None,
            etc_files: &[],
            server: "x",
            userns_base: None,
        });
        assert_eq!(v["process"]["args"], json!(cmd));
        assert_eq!(v["process"]["cwd"], "/w");
        assert!(v["linux"].get("cgroupsPath").is_none());
        assert!(
            !v["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"] == "network"),
            "host networking: the host's namespace"
        );
        assert!(v["process"].get("oomScoreAdj").is_none());
        assert_eq!(user("1000", 65534, 65534), (1000, 1000));
        assert_eq!(user("1000:1001", 65534, 65534), (1000, 1001));
        assert_eq!(user("0", 65534, 65534), (65534, 65534));
        assert_eq!(user("root", 65534, 65534), (65534, 65534));
        assert_eq!(user("", 65534, 65534), (65534, 65534));
        assert_eq!(user("app", 65534, 65534), (65534, 65534));
        let v = config_json(&RunSpec {
            image: &img,
            command: &cmd,
            env: &[],
            workdir: None,
            rootfs: Path::new("/r"),
            readonly: true,
            hostname: "h",
            netns: None,
            cgroups_path: None,
            uid: 65534,
            gid: 65534,
            oom_score_adj: None,
            etc_files: &[],
            server: "x",
            userns_base: Some(200_000),
        });
        assert_eq!(v["process"]["user"]["uid"], 0, "root, of its own namespace");
        assert_eq!(
            v["linux"]["uidMappings"],
            json!([{"containerID": 0, "hostID": 200_000, "size": 65536}])
        );
        assert!(
            v["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .contains(&json!({"type": "user"}))
        );
        assert_eq!(
            v["process"]["capabilities"]["effective"],
            v["process"]["capabilities"]["bounding"]
        );
        assert!(
            !v["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["destination"] == "/sys")
        );
        assert_eq!(image_user_in_userns("1000:1001"), (1000, 1001));
        assert_eq!(image_user_in_userns("app"), (0, 0));
        assert_eq!(image_user_in_userns("70000"), (0, 0), "outside the map");
        assert!(ImageConfig::parse(b"nope").is_err());
        assert_eq!(ImageConfig::parse(b"{}").unwrap(), ImageConfig::default());
    }
}
