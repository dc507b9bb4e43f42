#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::cgroups::{CpuPolicy, CpuWeight, limits_for, nvidia_rules};
use backfill_shared::{PerfFactor, Resources, ServerClass};
use cgroups_rs::fs::hierarchies::Mountinfo;
use std::fs;
use std::os::unix::fs::symlink;

const MIB: u64 = 1 << 20;

fn write(p: &Path, s: &str) {
    fs::write(p, s).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

fn read(p: &Path) -> String {
    fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_owned()
}

fn res(vcpus: u32, mem_bytes: u64) -> Resources {
    Resources {
        cpu_mhz: u64::from(vcpus) * 2000,
        vcpus,
        mem_bytes,
    }
}

fn pf(cpu: f64, mem: f64) -> PerfFactor {
    PerfFactor { cpu, mem }
}

/// A v1 root like /sys/fs/cgroup, with the root control files as the kernel shows them.
fn v1_tree(co_mounted: bool, pids: bool) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    let mk = |name: &str, files: &[(&str, &str)]| {
        let d = r.join(name);
        fs::create_dir(&d).unwrap();
        write(&d.join("cgroup.procs"), "1\n");
        for (f, c) in files {
            write(&d.join(f), c);
        }
    };
    let cpu = [
        ("cpu.cfs_quota_us", "-1\n"),
        ("cpu.cfs_period_us", "100000\n"),
    ];
    let acct = [("cpuacct.usage", "123456789\n")];
    if co_mounted {
        mk("cpu,cpuacct", &[cpu[0], cpu[1], acct[0]]);
        symlink("cpu,cpuacct", r.join("cpu")).unwrap();
        symlink("cpu,cpuacct", r.join("cpuacct")).unwrap();
    } else {
        mk("cpu", &cpu);
        mk("cpuacct", &acct);
    }
    mk(
        "memory",
        &[
            ("memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory.usage_in_bytes", "1000\n"),
        ],
    );
    if pids {
        mk("pids", &[("pids.max", "max\n")]);
    }
    t
}

fn v2_tree(controllers: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join("cgroup.controllers"), controllers);
    write(&t.path().join("cgroup.subtree_control"), "\n");
    write(&t.path().join("cgroup.procs"), "1\n");
    t
}

#[test]
fn v1_lifecycle_on_a_fake_tree() {
    let t = v1_tree(false, true);
    let root = fs::canonicalize(t.path()).unwrap();
    let cg = FsCgroups::v1_at(t.path(), "backfill").unwrap();
    assert!(cg.is_simulated() && !cg.enforcing() && !cg.is_v2());
    assert!(cg.describe().starts_with("cgroup v1 (simulated at "));
    let id = ServerId::from_u128(0xabc);
    let leaf = |ctl: &str| root.join(ctl).join("backfill/idle").join(id.to_string());

    // 2 vCPUs at 0.5 of a 100 ms period = 100 ms; 512 MiB at 0.25 = 128 MiB.
    let half = limits_for(
        &res(2, 512 * MIB),
        pf(0.5, 0.25),
        ServerClass::Backfill,
        &CpuPolicy::default(),
    );
    cg.create(&id, &half).unwrap();
    assert_eq!(read(&leaf("cpu").join("cpu.cfs_quota_us")), "100000");
    assert_eq!(read(&leaf("cpu").join("cpu.cfs_period_us")), "100000");
    assert_eq!(
        read(&leaf("memory").join("memory.limit_in_bytes")),
        "134217728"
    );
    assert!(root.join("pids/backfill/cgroup.procs").is_file());
    // Backfill is the idle class: the smallest cpu.shares.
    assert_eq!(read(&leaf("cpu").join("cpu.shares")), "2");
    assert_eq!(cg.read_limits(&id).unwrap(), half);

    let full = limits_for(
        &res(2, 512 * MIB),
        PerfFactor::FULL,
        ServerClass::Backfill,
        &CpuPolicy::default(),
    );
    cg.set_limits(&id, &full).unwrap();
    assert_eq!(read(&leaf("cpu").join("cpu.cfs_quota_us")), "200000");
    assert_eq!(
        read(&leaf("memory").join("memory.limit_in_bytes")),
        "536870912"
    );
    assert_eq!(cg.read_limits(&id).unwrap(), full);
    // create is idempotent and applies the limits it is given.
    cg.create(&id, &half).unwrap();
    assert_eq!(cg.read_limits(&id).unwrap(), half);

    // Names that are not server ids, and files, are not listed.
    fs::create_dir(root.join("cpu/backfill/not-a-server")).unwrap();
    write(
        &root
            .join("cpu/backfill")
            .join(ServerId::from_u128(9).to_string()),
        "",
    );
    assert_eq!(cg.list().unwrap(), vec![id]);

    assert_eq!(
        cg.join_files(&id).unwrap(),
        ["memory", "pids", "cpuacct", "cpu"].map(|c| leaf(c).join("cgroup.procs"))
    );

    write(&leaf("cpuacct").join("cpuacct.usage"), "5000000\n");
    write(&leaf("memory").join("memory.usage_in_bytes"), "4096\n");
    let u = cg.usage(&id).unwrap();
    assert_eq!((u.cpu_usage_usec, u.mem_usage_bytes), (5000, 4096));

    write(&leaf("cpu").join("cgroup.procs"), "42\n7\n");
    write(&leaf("memory").join("cgroup.procs"), "7\n");
    assert_eq!(cg.procs(&id).unwrap(), vec![7, 42]);
    let e = cg.remove(&id).unwrap_err();
    assert!(
        matches!(&e, CgroupError::Busy { pids, .. } if pids == &vec![7]),
        "{e}"
    );
    cg.kill_all(&id).unwrap();
    assert!(cg.procs(&id).unwrap().is_empty());

    cg.remove(&id).unwrap();
    for c in ["memory", "pids", "cpuacct", "cpu"] {
        assert!(!leaf(c).exists(), "{c}");
    }
    assert!(cg.list().unwrap().is_empty());
    cg.remove(&id).unwrap();
    assert!(matches!(
        cg.read_limits(&id),
        Err(CgroupError::NotFound { .. })
    ));
    assert!(matches!(
        cg.set_limits(&id, &full),
        Err(CgroupError::NotFound { .. })
    ));
    assert!(matches!(
        cg.join_files(&id),
        Err(CgroupError::NotFound { .. })
    ));
    assert_eq!(cg.usage(&id).unwrap(), ServerUsage::default());

    // The leftovers in cpu/backfill keep the parent; once gone, it can be removed.
    assert!(cg.remove_parent().is_err());
    // (On a simulated tree the stray file went with the "control files".)
    fs::remove_dir(root.join("cpu/backfill/not-a-server")).unwrap();
    cg.remove_parent().unwrap();
    for d in cg.parent_dirs() {
        assert!(!d.exists(), "{}", d.display());
    }
    assert!(root.join("cpu/cpu.cfs_quota_us").is_file());
}

#[test]
fn v1_co_mounted_cpu_and_cpuacct_share_one_directory() {
    let t = v1_tree(true, false);
    let root = fs::canonicalize(t.path()).unwrap();
    let cg = FsCgroups::v1_at(t.path(), "a/b").unwrap();
    let id = ServerId::from_u128(1);
    cg.create(&id, &CgroupLimits::UNLIMITED).unwrap();
    let leaf = |h: &str| root.join(h).join("a/b/normal").join(id.to_string());
    assert_eq!(
        cg.join_files(&id).unwrap(),
        vec![
            leaf("memory").join("cgroup.procs"),
            leaf("cpu,cpuacct").join("cgroup.procs")
        ]
    );
    // Unlimited as cgroups-rs writes it (-1) and as the kernel shows it afterwards.
    assert_eq!(read(&leaf("cpu,cpuacct").join("cpu.cfs_quota_us")), "-1");
    assert_eq!(read(&leaf("memory").join("memory.limit_in_bytes")), "-1");
    assert_eq!(cg.read_limits(&id).unwrap(), CgroupLimits::UNLIMITED);
    write(
        &leaf("memory").join("memory.limit_in_bytes"),
        "9223372036854771712\n",
    );
    assert_eq!(cg.read_limits(&id).unwrap(), CgroupLimits::UNLIMITED);
    write(&leaf("cpu,cpuacct").join("cpuacct.usage"), "2500\n");
    assert_eq!(cg.usage(&id).unwrap().cpu_usage_usec, 2);
    cg.remove(&id).unwrap();
    cg.remove_parent().unwrap();
    assert!(!root.join("memory/a").exists());
    assert!(!root.join("cpu,cpuacct/a").exists());
}

#[test]
fn removing_the_parent_keeps_an_ancestor_another_agents_parent_shares() {
    for v2 in [false, true] {
        let t = if v2 {
            v2_tree("cpu memory pids\n")
        } else {
            v1_tree(false, true)
        };
        let at = |parent: &str| {
            if v2 {
                FsCgroups::v2_at(t.path(), parent).unwrap()
            } else {
                FsCgroups::v1_at(t.path(), parent).unwrap()
            }
        };
        let (a, b) = (at("shared/a"), at("shared/b"));
        a.create(&ServerId::from_u128(1), &CgroupLimits::UNLIMITED)
            .unwrap();
        b.create(&ServerId::from_u128(2), &CgroupLimits::UNLIMITED)
            .unwrap();
        a.remove(&ServerId::from_u128(1)).unwrap();
        a.remove_parent().unwrap();
        for d in a.parent_dirs() {
            assert!(!d.exists(), "{}", d.display());
        }
        // b's parent and its server, in every hierarchy, are untouched.
        assert_eq!(b.list().unwrap(), vec![ServerId::from_u128(2)]);
        for d in b.parent_dirs() {
            assert!(
                d.join("normal")
                    .join(ServerId::from_u128(2).to_string())
                    .is_dir(),
                "{}",
                d.display()
            );
        }
        b.remove(&ServerId::from_u128(2)).unwrap();
        b.remove_parent().unwrap();
        for d in b.parent_dirs() {
            assert!(!d.parent().unwrap().exists(), "{}", d.display());
        }
    }
}

#[test]
fn v2_lifecycle_on_a_fake_tree() {
    let t = v2_tree("cpuset cpu io memory hugetlb pids rdma misc\n");
    let root = t.path();
    let cg = FsCgroups::v2_at(root, "backfill").unwrap();
    assert!(cg.is_simulated() && cg.is_v2());
    assert!(cg.describe().starts_with("cgroup v2"));
    let id = ServerId::from_u128(0xdef);
    let leaf = root.join("backfill/idle").join(id.to_string());

    let half = limits_for(
        &res(2, 512 * MIB),
        pf(0.5, 0.25),
        ServerClass::Backfill,
        &CpuPolicy::default(),
    );
    cg.create(&id, &half).unwrap();
    for dir in [root.to_path_buf(), root.join("backfill")] {
        let enabled = read(&dir.join("cgroup.subtree_control"));
        assert_eq!(enabled, "cpu memory", "{}", dir.display());
    }
    assert_eq!(read(&leaf.join("cgroup.subtree_control")), "");
    assert_eq!(read(&leaf.join("cpu.max")), "100000 100000");
    assert_eq!(
        read(&leaf.join("cpu.idle")),
        "1",
        "backfill is the idle class"
    );
    assert_eq!(read(&leaf.join("memory.max")), "134217728");
    assert_eq!(cg.read_limits(&id).unwrap(), half);

    // A kernel without cpu.idle (before 5.15) keeps the idle class at weight 1.
    fs::remove_file(leaf.join("cpu.idle")).unwrap();
    cg.set_limits(&id, &half).unwrap();
    assert_eq!(read(&leaf.join("cpu.weight")), "1");
    assert_eq!(cg.read_limits(&id).unwrap().cpu_weight, CpuWeight::Idle);

    // Out of the idle class: the cgroup moves to normal/ (see classes_tests for the move).
    cg.set_limits(&id, &CgroupLimits::UNLIMITED).unwrap();
    assert!(!leaf.exists());
    let leaf = root.join("backfill/normal").join(id.to_string());
    assert_eq!(read(&leaf.join("cpu.max")), "max 100000");
    assert_eq!(read(&leaf.join("memory.max")), "max");
    assert_eq!(read(&leaf.join("cpu.idle")), "0");
    assert_eq!(read(&leaf.join("cpu.weight")), "100");
    assert_eq!(cg.read_limits(&id).unwrap(), CgroupLimits::UNLIMITED);
    let other_period = CgroupLimits {
        cpu_quota_us: Some(5000),
        cpu_period_us: 10_000,
        mem_limit_bytes: Some(MIB),
        cpu_weight: CpuWeight::Weight(250),
        mem_high_bytes: None,
        mem_min_bytes: Some(MIB),
    };
    cg.create(&id, &other_period).unwrap();
    assert_eq!(read(&leaf.join("cpu.max")), "5000 10000");
    assert_eq!(read(&leaf.join("cpu.weight")), "250");
    assert_eq!(cg.read_limits(&id).unwrap(), other_period);
    // Leaving the idle class in place (a cgroup from before class parents, written to where
    // it is) clears cpu.idle before the weight (the kernel refuses a weight for an idle group).
    write(&leaf.join("cpu.idle"), "1\n");
    cg.set_limits(&id, &other_period).unwrap();
    assert_eq!(read(&leaf.join("cpu.idle")), "0");
    assert_eq!(read(&leaf.join("cpu.weight")), "250");

    assert_eq!(cg.join_files(&id).unwrap(), vec![leaf.join("cgroup.procs")]);
    assert_eq!(cg.list().unwrap(), vec![id]);
    write(
        &leaf.join("cpu.stat"),
        "usage_usec 777\nuser_usec 700\nsystem_usec 77\n",
    );
    write(&leaf.join("memory.current"), "8192\n");
    let u = cg.usage(&id).unwrap();
    assert_eq!((u.cpu_usage_usec, u.mem_usage_bytes), (777, 8192));

    write(&leaf.join("cgroup.procs"), "12\n");
    assert_eq!(cg.procs(&id).unwrap(), vec![12]);
    assert!(matches!(cg.remove(&id), Err(CgroupError::Busy { .. })));
    cg.kill_all(&id).unwrap();
    cg.remove(&id).unwrap();
    assert!(!leaf.exists());
    cg.remove_parent().unwrap();
    assert!(!root.join("backfill").exists());
    assert_eq!(read(&root.join("cgroup.subtree_control")), "cpu memory");
}

#[test]
fn v2_nested_parent_enables_controllers_all_the_way_down() {
    let t = v2_tree("cpu memory pids\n");
    write(&t.path().join("cgroup.subtree_control"), "pids\n");
    let cg = FsCgroups::v2_at(t.path(), "a/b").unwrap();
    let id = ServerId::from_u128(3);
    cg.create(&id, &CgroupLimits::UNLIMITED).unwrap();
    let root = t.path();
    assert_eq!(
        read(&root.join("cgroup.subtree_control")),
        "pids cpu memory"
    );
    assert_eq!(read(&root.join("a/cgroup.subtree_control")), "cpu memory");
    assert_eq!(read(&root.join("a/b/cgroup.subtree_control")), "cpu memory");
    assert!(
        root.join("a/b/normal")
            .join(id.to_string())
            .join("cpu.max")
            .is_file()
    );
}

#[test]
fn unusable_trees_say_why() {
    let t = v2_tree("cpu io pids\n");
    let e = FsCgroups::v2_at(t.path(), "backfill").unwrap_err();
    assert!(
        matches!(&e, CgroupError::Unavailable(m) if m.contains("memory")),
        "{e}"
    );

    let empty = tempfile::tempdir().unwrap();
    let e = FsCgroups::v2_at(empty.path(), "backfill").unwrap_err();
    assert!(e.to_string().contains("cgroup.controllers"), "{e}");
    let e = FsCgroups::v1_at(empty.path(), "backfill").unwrap_err();
    assert!(
        e.to_string().contains("cpu controller is not mounted"),
        "{e}"
    );

    let t = v1_tree(false, false);
    fs::remove_dir_all(t.path().join("memory")).unwrap();
    let e = FsCgroups::v1_at(t.path(), "backfill").unwrap_err();
    assert!(
        e.to_string().contains("memory controller is not mounted"),
        "{e}"
    );

    let t = v1_tree(false, false);
    fs::remove_file(t.path().join("cpu/cpu.cfs_quota_us")).unwrap();
    let e = FsCgroups::v1_at(t.path(), "backfill").unwrap_err();
    assert!(e.to_string().contains("cpu.cfs_quota_us"), "{e}");

    for bad in ["", "../x", "/abs", "a b"] {
        let e = FsCgroups::v1_at(t.path(), bad).unwrap_err();
        assert!(matches!(e, CgroupError::BadParent { .. }), "{bad:?}");
        assert!(matches!(
            FsCgroups::detect(bad),
            Err(CgroupError::BadParent { .. })
        ));
    }
}

#[test]
fn bad_limits_and_bad_files_are_errors_with_paths() {
    let t = v1_tree(false, false);
    let cg = FsCgroups::v1_at(t.path(), "backfill").unwrap();
    let id = ServerId::from_u128(5);
    let bad = CgroupLimits {
        cpu_quota_us: Some(10),
        ..CgroupLimits::UNLIMITED
    };
    assert!(matches!(
        cg.create(&id, &bad),
        Err(CgroupError::BadLimits { .. })
    ));
    assert!(cg.list().unwrap().is_empty());

    cg.create(&id, &CgroupLimits::UNLIMITED).unwrap();
    let leaf = fs::canonicalize(t.path())
        .unwrap()
        .join("cpu/backfill/normal")
        .join(id.to_string());
    write(&leaf.join("cgroup.procs"), "12\nnot-a-pid\n");
    let e = cg.procs(&id).unwrap_err();
    assert!(
        e.to_string()
            .contains(&leaf.join("cgroup.procs").display().to_string()),
        "{e}"
    );
    assert!(e.to_string().contains("not-a-pid"), "{e}");
    write(&leaf.join("cgroup.procs"), "");
    write(&leaf.join("cpu.cfs_period_us"), "lots\n");
    let e = cg.read_limits(&id).unwrap_err();
    assert!(
        matches!(&e, CgroupError::Parse { path, .. } if path.ends_with("cpu.cfs_period_us")),
        "{e}"
    );
    fs::remove_file(leaf.join("cpu.cfs_quota_us")).unwrap();
    let e = cg.read_limits(&id).unwrap_err();
    assert!(
        matches!(&e, CgroupError::Read { path, .. } if path.ends_with("cpu.cfs_quota_us")),
        "{e}"
    );
    cg.remove(&id).unwrap();
}

#[test]
fn v1_mounts_come_from_mountinfo() {
    let mi = |point: &str, fs: &str, opts: &[&str]| Mountinfo {
        mount_root: PathBuf::from("/"),
        mount_point: PathBuf::from(point),
        fs_type: (fs.to_owned(), None),
        super_opts: opts.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mounts = v1_mounts(&[
        mi(
            "/sys/fs/cgroup/cpu,cpuacct",
            "cgroup",
            &["rw", "cpu", "cpuacct"],
        ),
        mi("/sys/fs/cgroup/memory", "cgroup", &["rw", "memory"]),
        mi("/sys/fs/cgroup/systemd", "cgroup", &["rw", "name=systemd"]),
        mi("/sys/fs/cgroup/unified", "cgroup2", &["rw"]),
        mi("/elsewhere/memory", "cgroup", &["rw", "memory"]),
        mi("/sys/fs/cgroup/pids", "cgroup", &["rw", "pids"]),
    ]);
    assert_eq!(
        mounts,
        vec![
            V1Mount {
                dir: PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
                ctls: vec![Ctl::CpuAcct, Ctl::Cpu],
            },
            V1Mount {
                dir: PathBuf::from("/sys/fs/cgroup/memory"),
                ctls: vec![Ctl::Memory],
            },
            V1Mount {
                dir: PathBuf::from("/sys/fs/cgroup/pids"),
                ctls: vec![Ctl::Pids],
            },
        ]
    );
}

// ---- the real kernel ----

fn real_or_skip(parent: &str) -> Option<FsCgroups> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: not running as root");
        return None;
    }
    match FsCgroups::detect(parent) {
        Ok(c) if c.is_simulated() => {
            eprintln!("skipping: {} is not a cgroup filesystem", c.describe());
            None
        }
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

/// Kills and removes whatever a failed test left behind.
struct Cleanup<'a> {
    cg: &'a FsCgroups,
    id: ServerId,
    children: Vec<std::process::Child>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.cg.kill_all(&self.id);
        let _ = self.cg.remove(&self.id);
        let _ = self.cg.remove_parent();
    }
}

/// Spawns `sh -c script` that joins the cgroup itself between fork and exec, the way the driver
/// does: with open/write/close only (async-signal-safe), on paths prepared before the fork.
fn spawn_joined(join: &[PathBuf], script: &str) -> std::process::Child {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let paths: Vec<std::ffi::CString> = join
        .iter()
        .map(|p| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap())
        .collect();
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", script]);
    // SAFETY: the hook only calls open, write and close on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for p in &paths {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

#[test]
fn real_kernel_lifecycle() {
    use std::os::unix::process::ExitStatusExt;
    let parent = format!("backfill-test-{}", std::process::id());
    let Some(cg) = real_or_skip(&parent) else {
        return;
    };
    let id = ServerId::new_random();
    let mut guard = Cleanup {
        cg: &cg,
        id,
        children: Vec::new(),
    };
    let r = res(2, 256 * MIB);
    let full = limits_for(
        &r,
        PerfFactor::FULL,
        ServerClass::Backfill,
        &CpuPolicy::default(),
    );
    cg.create(&id, &full).unwrap();
    cg.create(&id, &full).unwrap();
    assert_eq!(cg.list().unwrap(), vec![id]);

    // One process moved in from outside by PID, one that joins itself before exec.
    let outside = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let outside_pid = outside.id();
    guard.children.push(outside);
    let join = cg.join_files(&id).unwrap();
    for f in &join {
        fs::write(f, outside_pid.to_string()).unwrap();
    }
    let joined = spawn_joined(&join, "exec sleep 30");
    let joined_pid = joined.id();
    guard.children.push(joined);
    let procs = cg.procs(&id).unwrap();
    assert!(
        procs.contains(&outside_pid) && procs.contains(&joined_pid),
        "{procs:?}"
    );
    let own = fs::read_to_string(format!("/proc/{joined_pid}/cgroup")).unwrap();
    let rel = format!("/{parent}/idle/{id}");
    let joined_hierarchies = own.lines().filter(|l| l.ends_with(&rel)).count();
    assert_eq!(joined_hierarchies, join.len(), "{own}");

    // The control files show the limits.
    let cpu = cg.ctl_dir(&id, Ctl::Cpu).unwrap();
    let mem = cg.ctl_dir(&id, Ctl::Memory).unwrap();
    let shown = |limits: &CgroupLimits| {
        let (q, m) = (
            limits.cpu_quota_us.unwrap(),
            limits.mem_limit_bytes.unwrap(),
        );
        if cg.is_v2() {
            assert_eq!(read(&cpu.join("cpu.max")), format!("{q} 100000"));
            assert_eq!(read(&mem.join("memory.max")), m.to_string());
        } else {
            assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), q.to_string());
            assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
            assert_eq!(read(&mem.join("memory.limit_in_bytes")), m.to_string());
        }
    };
    shown(&full);
    assert_eq!(cg.read_limits(&id).unwrap(), full);

    // perf_factor changes.
    let half = limits_for(
        &r,
        pf(0.5, 0.5),
        ServerClass::Backfill,
        &CpuPolicy::default(),
    );
    assert_eq!(
        (half.cpu_quota_us, half.mem_limit_bytes),
        (Some(100_000), Some(128 * MIB))
    );
    cg.set_limits(&id, &half).unwrap();
    shown(&half);
    assert_eq!(cg.read_limits(&id).unwrap(), half);
    let tenth = limits_for(
        &r,
        pf(0.05, 0.5),
        ServerClass::Backfill,
        &CpuPolicy::default(),
    );
    assert_eq!(tenth.cpu_quota_us, Some(10_000));
    cg.set_limits(&id, &tenth).unwrap();
    shown(&tenth);
    assert_eq!(cg.read_limits(&id).unwrap(), tenth);

    // Weights: the idle class for backfill; a normal server weighs the MHz it was sold (3,000
    // MHz on 2,000 MHz cores: 150, cpu.shares 1536 on v1), with its quota by MHz.
    let weight_file = if cg.is_v2() {
        "cpu.weight"
    } else {
        "cpu.shares"
    };
    if cpu.join("cpu.idle").is_file() {
        assert_eq!(read(&cpu.join("cpu.idle")), "1");
    } else {
        assert_eq!(
            read(&cpu.join(weight_file)),
            if cg.is_v2() { "1" } else { "2" }
        );
    }
    let host = CpuPolicy {
        mhz_per_core: 2000,
        ..CpuPolicy::default()
    };
    let sold = Resources { cpu_mhz: 3000, ..r };
    let normal = limits_for(&sold, PerfFactor::FULL, ServerClass::Normal, &host);
    assert_eq!(normal.cpu_quota_us, Some(150_000));
    cg.set_limits(&id, &normal).unwrap();
    // Made normal, the server moved to normal/ (and moves back below).
    let moved = cpu
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("normal")
        .join(id.to_string());
    let expected = if cg.is_v2() { "150" } else { "1536" };
    assert_eq!(read(&moved.join(weight_file)), expected);
    assert!(!cpu.exists());
    // v2 protects all of a normal server's memory (memory.min); v1 has no such file.
    let shown_normal = if cg.is_v2() {
        normal
    } else {
        CgroupLimits {
            mem_min_bytes: None,
            ..normal
        }
    };
    assert_eq!(cg.read_limits(&id).unwrap(), shown_normal);
    cg.set_limits(&id, &tenth).unwrap();
    assert_eq!(cg.read_limits(&id).unwrap(), tenth);

    // The kernel enforces the quota: a busy loop at 0.1 CPU gets throttled.
    let busy = spawn_joined(&join, "while :; do :; done");
    guard.children.push(busy);
    let stat_path = cpu.join("cpu.stat");
    let throttled = || {
        read(&stat_path)
            .lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while throttled() == 0 {
        assert!(
            Instant::now() < deadline,
            "never throttled: {}",
            read(&stat_path)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let nr_throttled = throttled();
    let usage = cg.usage(&id).unwrap();
    assert!(usage.cpu_usage_usec > 0, "{usage:?}");

    let e = cg.remove(&id).unwrap_err();
    assert!(matches!(e, CgroupError::Busy { .. }), "{e}");
    let started = Instant::now();
    cg.kill_all(&id).unwrap();
    let kill_took = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cg.procs(&id).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "{:?}", cg.procs(&id));
        std::thread::sleep(Duration::from_millis(10));
    }
    for c in &mut guard.children {
        assert_eq!(c.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
    guard.children.clear();

    cg.remove(&id).unwrap();
    for d in cg.cgroup_dirs(&id) {
        assert!(!d.exists(), "{}", d.display());
    }
    assert!(cg.list().unwrap().is_empty());
    cg.remove(&id).unwrap();
    cg.remove_parent().unwrap();
    for d in cg.parent_dirs() {
        assert!(!d.exists(), "{}", d.display());
    }
    eprintln!(
        "real cgroup test ran on {} ({} join files, usage {usage:?}, throttled {nr_throttled} \
         times, kill_all took {kill_took:?})",
        cg.describe(),
        join.len(),
    );
}

// ---- GPU device rules ----

/// Adds a v1 devices hierarchy, with its root files as the kernel shows them, to a fake tree.
fn add_devices(root: &Path) {
    let d = root.join("devices");
    fs::create_dir(&d).unwrap();
    write(&d.join("cgroup.procs"), "1\n");
    write(&d.join("devices.allow"), "");
    write(&d.join("devices.deny"), "");
    write(&d.join("devices.list"), "a *:* rwm\n");
}

fn lines(p: &Path) -> Vec<String> {
    read(p).lines().map(str::to_owned).collect()
}

#[test]
fn v1_device_rules_on_a_fake_tree() {
    let t = v1_tree(false, true);
    add_devices(t.path());
    let root = fs::canonicalize(t.path()).unwrap();
    let cg = FsCgroups::v1_at(t.path(), "backfill").unwrap();
    let id = ServerId::from_u128(0xd1);
    let leaf = root.join("devices/backfill/idle").join(id.to_string());
    let limits = limits_for(
        &res(1, 64 * MIB),
        PerfFactor::FULL,
        ServerClass::Backfill,
        &CpuPolicy::default(),
    );
    // Not created yet: the rules have nowhere to go.
    let e = cg.restrict_devices(&id, &[]).unwrap_err();
    assert!(matches!(e, CgroupError::NotFound { .. }), "{e}");
    cg.create(&id, &limits).unwrap();
    assert_eq!(read(&leaf.join("devices.list")), "a *:* rwm");
    // The workload joins the devices cgroup too.
    let join = cg.join_files(&id).unwrap();
    assert!(join.contains(&leaf.join("cgroup.procs")), "{join:?}");

    // GPUs 0 and 2 given: every other GPU minor denied, one by one; then the allow-list.
    let rules = nvidia_rules(&[0, 2].into(), &[236, 237]);
    assert_eq!(
        cg.restrict_devices(&id, &rules).unwrap(),
        DeviceControl::Enforced
    );
    let denied = lines(&leaf.join("devices.deny"));
    assert_eq!(denied.len(), 252, "{denied:?}");
    assert_eq!(denied[0], "c 195:1 rwm");
    assert_eq!(denied[251], "c 195:253 rwm");
    for given in [
        "c 195:0 rwm",
        "c 195:2 rwm",
        "c 195:254 rwm",
        "c 195:255 rwm",
    ] {
        assert!(!denied.iter().any(|d| d == given), "{given} denied");
    }
    assert_eq!(
        lines(&leaf.join("devices.allow")),
        [
            "c 195:0 rwm",
            "c 195:2 rwm",
            "c 195:254 rwm",
            "c 195:255 rwm",
            "c 236:* rwm",
            "c 237:* rwm"
        ]
    );
    cg.kill_all(&id).unwrap();
    cg.remove(&id).unwrap();
    assert!(!leaf.exists());

    // No devices hierarchy, or v2: nothing written, and the reason given.
    let t = v1_tree(false, false);
    let cg = FsCgroups::v1_at(t.path(), "backfill").unwrap();
    cg.create(&id, &limits).unwrap();
    match cg.restrict_devices(&id, &rules).unwrap() {
        DeviceControl::NotEnforced(why) => assert!(why.contains("devices controller"), "{why}"),
        other => panic!("{other:?}"),
    }
    let t = v2_tree("cpu memory\n");
    let cg = FsCgroups::v2_at(t.path(), "backfill").unwrap();
    cg.create(&id, &limits).unwrap();
    match cg.restrict_devices(&id, &rules).unwrap() {
        DeviceControl::NotEnforced(why) => assert!(why.contains("cgroup v2"), "{why}"),
        other => panic!("{other:?}"),
    }
}

/// A character device node in `dir` (root only).
fn mknod(dir: &Path, name: &str, major: u32, minor: u32) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let path = dir.join(name);
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path; mknod(2) has no other preconditions.
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(major, minor),
        )
    };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        io::Error::last_os_error()
    );
    path
}

/// The kernel enforces the rules: in the server's cgroup, opening a GPU it was not given fails
/// with EPERM; its own GPU and nvidiactl get as far as the (absent) driver, ENXIO.
#[test]
fn real_kernel_device_rules() {
    let parent = format!("backfill-devtest-{}", std::process::id());
    let Some(cg) = real_or_skip(&parent) else {
        return;
    };
    let id = ServerId::new_random();
    let rules = nvidia_rules(&[1].into(), &[]);
    if cg.is_v2() || cg.ctl_dir(&id, Ctl::Devices).is_none() {
        eprintln!(
            "skipping: no cgroup v1 devices controller here ({})",
            cg.describe()
        );
        return;
    }
    let mut guard = Cleanup {
        cg: &cg,
        id,
        children: Vec::new(),
    };
    let limits = limits_for(
        &res(1, 64 * MIB),
        PerfFactor::FULL,
        ServerClass::Backfill,
        &CpuPolicy::default(),
    );
    cg.create(&id, &limits).unwrap();
    let started = Instant::now();
    assert_eq!(
        cg.restrict_devices(&id, &rules).unwrap(),
        DeviceControl::Enforced
    );
    let took = started.elapsed();
    let nodes = tempfile::tempdir().unwrap();
    let dir = nodes.path();
    mknod(dir, "nvidia0", 195, 0);
    mknod(dir, "nvidia1", 195, 1);
    mknod(dir, "nvidia7", 195, 7);
    mknod(dir, "nvidiactl", 195, 255);
    let script = format!(
        "cd {}; for f in nvidia0 nvidia1 nvidia7 nvidiactl; do \
         if cat $f >/dev/null 2>$f.err; then echo opened >$f.err; fi; done",
        dir.display()
    );
    let join = cg.join_files(&id).unwrap();
    let mut child = spawn_joined(&join, &script);
    assert!(child.wait().unwrap().success());
    let outcome = |f: &str| read(&dir.join(format!("{f}.err")));
    for denied in ["nvidia0", "nvidia7"] {
        let o = outcome(denied);
        assert!(o.contains("Operation not permitted"), "{denied}: {o}");
    }
    for allowed in ["nvidia1", "nvidiactl"] {
        let o = outcome(allowed);
        assert!(!o.contains("Operation not permitted"), "{allowed}: {o}");
    }
    // Outside the cgroup nothing is denied.
    let o = std::process::Command::new("cat")
        .arg(dir.join("nvidia0"))
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("Operation not permitted"),
        "{o:?}"
    );
    guard.children.clear();
    cg.remove(&id).unwrap();
    cg.remove_parent().unwrap();
    eprintln!(
        "real device rules ran on {}: {} rules written in {took:?}",
        cg.describe(),
        rules.len()
    );
}

#[test]
fn a_squeeze_on_v2_starts_at_memory_high_and_the_hard_limit_follows_usage_down() {
    let t = v2_tree("cpu memory\n");
    let root = t.path();
    let cg = FsCgroups::v2_at(root, "backfill").unwrap();
    let id = ServerId::from_u128(0x5e);
    let leaf = root.join("backfill/idle").join(id.to_string());
    let class = ServerClass::Backfill;
    let full = limits_for(
        &res(1, 512 * MIB),
        PerfFactor::FULL,
        class,
        &CpuPolicy::default(),
    );
    cg.create(&id, &full).unwrap();
    assert_eq!(read(&leaf.join("memory.high")), (512 * MIB).to_string());
    assert_eq!(read(&leaf.join("memory.min")), "0");

    // Squeezed to 128 MiB while it uses 300 MiB: reclaim starts at 128 MiB, and the hard limit
    // stays just above what it uses, so the kernel reclaims instead of killing it.
    write(&leaf.join("memory.current"), &(300 * MIB).to_string());
    let quarter = limits_for(
        &res(1, 512 * MIB),
        pf(1.0, 0.25),
        class,
        &CpuPolicy::default(),
    );
    cg.set_limits(&id, &quarter).unwrap();
    assert_eq!(read(&leaf.join("memory.high")), (128 * MIB).to_string());
    assert_eq!(read(&leaf.join("memory.max")), (301 * MIB).to_string());
    let shown = cg.read_limits(&id).unwrap();
    assert_eq!(shown.mem_limit_bytes, Some(301 * MIB));
    assert_eq!(shown.mem_high_bytes, Some(128 * MIB));
    // The next round of the reclaim loop, once it gave memory back: the target.
    write(&leaf.join("memory.current"), &(100 * MIB).to_string());
    cg.set_limits(&id, &quarter).unwrap();
    assert_eq!(cg.read_limits(&id).unwrap(), quarter);

    // A normal server's memory is protected, and it has no reclaim threshold.
    let normal = limits_for(
        &res(1, 512 * MIB),
        PerfFactor::FULL,
        ServerClass::Normal,
        &CpuPolicy::default(),
    );
    cg.set_limits(&id, &normal).unwrap();
    let leaf = root.join("backfill/normal").join(id.to_string());
    assert_eq!(read(&leaf.join("memory.min")), (512 * MIB).to_string());
    assert_eq!(read(&leaf.join("memory.high")), "max");
    assert_eq!(cg.read_limits(&id).unwrap(), normal);
}

#[test]
fn real_kernel_squeeze_reclaims_instead_of_killing() {
    let parent = format!("backfill-test-squeeze-{}", std::process::id());
    let Some(cg) = real_or_skip(&parent) else {
        return;
    };
    let id = ServerId::new_random();
    let mut guard = Cleanup {
        cg: &cg,
        id,
        children: Vec::new(),
    };
    let r = res(1, 256 * MIB);
    let class = ServerClass::Backfill;
    cg.create(
        &id,
        &limits_for(&r, PerfFactor::FULL, class, &CpuPolicy::default()),
    )
    .unwrap();
    // A workload that holds about 60 MB of anonymous memory (there is no swap to push it to).
    let join = cg.join_files(&id).unwrap();
    let holder = spawn_joined(
        &join,
        "x=$(head -c 60000000 /dev/zero | tr '\\0' a); sleep 60",
    );
    guard.children.push(holder);
    let deadline = Instant::now() + Duration::from_secs(20);
    while cg.usage(&id).unwrap().mem_usage_bytes < 60_000_000 {
        assert!(Instant::now() < deadline, "{:?}", cg.usage(&id));
        std::thread::sleep(Duration::from_millis(20));
    }

    // Squeezed to 16 MiB: it keeps running; reclaim starts at 16 MiB, and the hard limit holds
    // above what it cannot give back.
    let squeezed = limits_for(&r, pf(1.0, 0.0625), class, &CpuPolicy::default());
    cg.set_limits(&id, &squeezed).unwrap();
    let shown = cg.read_limits(&id).unwrap();
    assert_eq!(shown.mem_high_bytes, Some(16 * MIB));
    let hard = shown.mem_limit_bytes.unwrap();
    let used = cg.usage(&id).unwrap().mem_usage_bytes;
    assert!(hard > 16 * MIB && hard >= used, "hard {hard}, used {used}");
    assert!(
        guard.children[0].try_wait().unwrap().is_none(),
        "the squeeze killed the workload"
    );
    eprintln!(
        "real squeeze on {}: used {used}, hard limit held at {hard}",
        cg.describe()
    );

    // Once the memory is gone, the next round reaches the target.
    cg.kill_all(&id).unwrap();
    for c in &mut guard.children {
        let _ = c.wait();
    }
    guard.children.clear();
    cg.set_limits(&id, &squeezed).unwrap();
    assert_eq!(cg.read_limits(&id).unwrap().mem_limit_bytes, Some(16 * MIB));

    // Past its hard limit now, a workload meets the OOM killer, and the cgroup counts it.
    assert_eq!(cg.oom_kills(&id).unwrap(), 0);
    let mut greedy = spawn_joined(
        &join,
        "x=$(head -c 60000000 /dev/zero | tr '\\0' a); sleep 60",
    );
    let status = greedy.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert!(status.signal().is_some() || !status.success(), "{status:?}");
    assert!(
        cg.oom_kills(&id).unwrap() >= 1,
        "the OOM kill was not counted"
    );
}

#[test]
fn mechanisms_are_what_the_parent_cgroups_offer() {
    let t = v2_tree("cpu memory\n");
    let cg = FsCgroups::v2_at(t.path(), "backfill").unwrap();
    let parent = t.path().join("backfill");
    fs::create_dir_all(&parent).unwrap();
    assert_eq!(cg.mechanisms(), vec!["cgroup-v2".to_string()]);
    for f in ["memory.min", "memory.high", "cpu.idle"] {
        write(&parent.join(f), "0\n");
    }
    assert_eq!(
        cg.mechanisms(),
        ["cgroup-v2", "memory.min", "memory.high", "cpu.idle"].map(String::from)
    );

    let t = v1_tree(false, false);
    let cg = FsCgroups::v1_at(t.path(), "backfill").unwrap();
    let mem = t.path().join("memory").join("backfill");
    fs::create_dir_all(&mem).unwrap();
    write(&mem.join("memory.soft_limit_in_bytes"), "0\n");
    assert_eq!(
        cg.mechanisms(),
        ["cgroup-v1", "memory.soft_limit_in_bytes"].map(String::from)
    );
}
