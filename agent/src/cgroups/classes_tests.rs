//! Class parents on fake v1 and v2 trees, and on the real kernel as root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::cgroups::{CgroupManager, CpuPolicy, limits_for};
use backfill_shared::{PerfFactor, Resources, ServerClass};
use std::fs;

const MIB: u64 = 1 << 20;
const HOST: CpuPolicy = CpuPolicy {
    mhz_per_core: 2000,
    period_us: 100_000,
    normal_quota: true,
};

fn read(p: &Path) -> String {
    fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_owned()
}

fn limits(class: ServerClass, cpu_mhz: u64, mem: u64) -> CgroupLimits {
    let r = Resources {
        cpu_mhz,
        vcpus: 4,
        mem_bytes: mem,
    };
    limits_for(&r, PerfFactor::FULL, class, &HOST)
}

/// A v1 root with separate cpu, cpuacct and memory hierarchies.
fn v1_tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for (name, files) in [
        (
            "cpu",
            &[
                ("cpu.cfs_quota_us", "-1\n"),
                ("cpu.cfs_period_us", "100000\n"),
                ("cpu.shares", "1024\n"),
            ][..],
        ),
        ("cpuacct", &[("cpuacct.usage", "0\n")][..]),
        (
            "memory",
            &[
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.usage_in_bytes", "0\n"),
            ][..],
        ),
    ] {
        let d = t.path().join(name);
        fs::create_dir(&d).unwrap();
        fs::write(d.join("cgroup.procs"), "1\n").unwrap();
        for (f, c) in files {
            fs::write(d.join(f), c).unwrap();
        }
    }
    t
}

fn v2_tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    fs::write(t.path().join("cgroup.subtree_control"), "\n").unwrap();
    fs::write(t.path().join("cgroup.procs"), "1\n").unwrap();
    t
}

/// Spawns `sh -c script` that joins the cgroup between fork and exec (so every process it
/// forks is inside, and `kill_all` reaches them all).
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
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

#[test]
fn the_class_follows_the_weight() {
    assert_eq!(
        CgroupClass::of(&limits(ServerClass::Normal, 2000, 0)),
        CgroupClass::Normal
    );
    for class in [ServerClass::Backfill, ServerClass::Spot] {
        assert_eq!(
            CgroupClass::of(&limits(class, 2000, 0)),
            CgroupClass::Idle,
            "{class:?}"
        );
    }
}

/// Twenty backfill servers and one normal server on v1: the normal class parent weighs its
/// server's shares, the idle class parent the least there is, whatever the number of servers.
#[test]
fn v1_many_backfill_servers_cannot_outweigh_a_normal_one() {
    let t = v1_tree();
    let root = fs::canonicalize(t.path()).unwrap();
    let cg = FsCgroups::v1_at(t.path(), "backfill").unwrap();
    let normal = ServerId::from_u128(1);
    cg.create(&normal, &limits(ServerClass::Normal, 3000, 256 * MIB))
        .unwrap();
    let backfill: Vec<ServerId> = (100..120).map(ServerId::from_u128).collect();
    for id in &backfill {
        cg.create(id, &limits(ServerClass::Backfill, 2000, 256 * MIB))
            .unwrap();
    }
    let class = |c: &str| root.join("cpu/backfill").join(c);
    // 3,000 MHz on 2,000 MHz cores: weight 150, 1536 shares; the class parent the same.
    assert_eq!(
        read(&class("normal").join(normal.to_string()).join("cpu.shares")),
        "1536"
    );
    assert_eq!(read(&class("normal").join("cpu.shares")), "1536");
    // The idle class as a whole: 2 shares (20 x 2 = 40 would have been the sum).
    assert_eq!(read(&class("idle").join("cpu.shares")), "2");
    for id in &backfill {
        let dir = class("idle").join(id.to_string());
        assert_eq!(read(&dir.join("cpu.shares")), "2");
        assert!(
            root.join("memory/backfill/idle")
                .join(id.to_string())
                .is_dir()
        );
        assert!(
            root.join("cpuacct/backfill/idle")
                .join(id.to_string())
                .is_dir()
        );
    }
    // Join files and the OCI path name the class parent.
    let join = cg.join_files(&normal).unwrap();
    assert_eq!(join.len(), 3);
    for f in join {
        let tail = format!("backfill/normal/{normal}/cgroup.procs");
        assert!(f.ends_with(&tail), "{}", f.display());
    }
    assert_eq!(
        cg.relative_path(&backfill[0]).unwrap(),
        format!("/backfill/idle/{}", backfill[0])
    );
    let mut all = backfill.clone();
    all.push(normal);
    all.sort();
    assert_eq!(cg.list().unwrap(), all);

    // A second normal server adds its shares; removing one takes them away again.
    let second = ServerId::from_u128(2);
    cg.create(&second, &limits(ServerClass::Normal, 1000, MIB))
        .unwrap();
    assert_eq!(read(&class("normal").join("cpu.shares")), "2048");
    // A perf_factor change of a normal server is a new sum too (weights follow MHz only).
    cg.set_limits(&second, &limits(ServerClass::Normal, 2000, MIB))
        .unwrap();
    assert_eq!(read(&class("normal").join("cpu.shares")), "2560");
    cg.remove(&normal).unwrap();
    assert_eq!(read(&class("normal").join("cpu.shares")), "1024");
    cg.remove(&second).unwrap();
    // An empty class parent weighs the kernel's default.
    assert_eq!(read(&class("normal").join("cpu.shares")), "1024");

    // The class parents go with the parent, once empty.
    assert!(cg.remove_parent().is_err(), "backfill servers are inside");
    for id in &backfill {
        cg.remove(id).unwrap();
    }
    cg.remove_parent().unwrap();
    for d in cg.parent_dirs() {
        assert!(!d.exists(), "{}", d.display());
    }
}

#[test]
fn v1_the_normal_class_weight_is_capped_at_the_kernels_maximum() {
    let t = v1_tree();
    let root = fs::canonicalize(t.path()).unwrap();
    let cg = FsCgroups::v1_at(t.path(), "backfill").unwrap();
    // Weight 10000 each (102400 shares): three of them sum past 262144.
    for n in 1..=3 {
        cg.create(
            &ServerId::from_u128(n),
            &limits(ServerClass::Normal, 400_000, 0),
        )
        .unwrap();
    }
    let shares = root.join("cpu/backfill/normal/cpu.shares");
    assert_eq!(read(&shares), V1_MAX_SHARES.to_string());
    cg.remove(&ServerId::from_u128(3)).unwrap();
    assert_eq!(read(&shares), "204800");
}

/// v2: `idle/` is cpu.idle, `normal/` the sum of weights and of memory.min, and the agent's
/// parent protects that sum too (the kernel protects no more than the ancestors allow).
#[test]
fn v2_class_parents_carry_idle_weights_and_memory_protection() {
    let t = v2_tree();
    let root = t.path();
    let cg = FsCgroups::v2_at(root, "backfill").unwrap();
    let (a, b, c) = (
        ServerId::from_u128(1),
        ServerId::from_u128(2),
        ServerId::from_u128(3),
    );
    cg.create(&a, &limits(ServerClass::Normal, 3000, 256 * MIB))
        .unwrap();
    cg.create(&b, &limits(ServerClass::Normal, 2000, 128 * MIB))
        .unwrap();
    cg.create(&c, &limits(ServerClass::Spot, 8000, 512 * MIB))
        .unwrap();
    let parent = root.join("backfill");
    let normal = parent.join("normal");
    let idle = parent.join("idle");
    for dir in [
        root.to_path_buf(),
        parent.clone(),
        normal.clone(),
        idle.clone(),
    ] {
        assert_eq!(
            read(&dir.join("cgroup.subtree_control")),
            "cpu memory",
            "{}",
            dir.display()
        );
    }
    assert_eq!(read(&normal.join("cpu.weight")), "250");
    assert_eq!(read(&normal.join("cpu.idle")), "0");
    assert_eq!(read(&idle.join("cpu.idle")), "1");
    assert_eq!(read(&idle.join(c.to_string()).join("cpu.idle")), "1");
    let protected = (384 * MIB).to_string();
    assert_eq!(read(&normal.join("memory.min")), protected);
    assert_eq!(read(&parent.join("memory.min")), protected);
    assert_eq!(read(&idle.join("memory.min")), "0");
    // The spot server is squeezed gently, at its own memory.high; the class is not limited.
    assert_eq!(
        read(&idle.join(c.to_string()).join("memory.high")),
        (512 * MIB).to_string()
    );
    assert_eq!(read(&idle.join("memory.high")), "max");
    assert_eq!(read(&idle.join("cpu.max")), "max 100000");
    assert_eq!(
        cg.relative_path(&a).unwrap(),
        format!("/backfill/normal/{a}")
    );

    cg.remove(&a).unwrap();
    assert_eq!(read(&normal.join("cpu.weight")), "100");
    assert_eq!(read(&normal.join("memory.min")), (128 * MIB).to_string());
    assert_eq!(read(&parent.join("memory.min")), (128 * MIB).to_string());
    cg.remove(&b).unwrap();
    assert_eq!(read(&normal.join("cpu.weight")), "100");
    assert_eq!(read(&parent.join("memory.min")), "0");
    cg.remove(&c).unwrap();
    cg.remove_parent().unwrap();
    assert!(!parent.exists());
}

/// A server cgroup an agent made before class parents (`<parent>/<uuid>`) is adopted, limited
/// and removed where it is, next to new ones in their class parents.
#[test]
fn cgroups_from_before_class_parents_are_kept_where_they_are() {
    for v2 in [false, true] {
        let t = if v2 { v2_tree() } else { v1_tree() };
        let cg = if v2 {
            FsCgroups::v2_at(t.path(), "backfill").unwrap()
        } else {
            FsCgroups::v1_at(t.path(), "backfill").unwrap()
        };
        let (old, new) = (ServerId::from_u128(7), ServerId::from_u128(8));
        let bf = limits(ServerClass::Backfill, 2000, 64 * MIB);
        cg.create(&old, &bf).unwrap();
        // Where the agent before class parents made it.
        for p in cg.parent_dirs() {
            fs::rename(
                p.join("idle").join(old.to_string()),
                p.join(old.to_string()),
            )
            .unwrap();
        }
        cg.create(&new, &bf).unwrap();
        assert_eq!(cg.list().unwrap(), vec![old, new], "v2 {v2}");
        assert_eq!(cg.read_limits(&old).unwrap(), bf);
        assert_eq!(cg.relative_path(&old).unwrap(), format!("/backfill/{old}"));
        let squeezed = limits_for(
            &Resources {
                cpu_mhz: 2000,
                vcpus: 4,
                mem_bytes: 64 * MIB,
            },
            PerfFactor { cpu: 0.5, mem: 0.5 },
            ServerClass::Backfill,
            &HOST,
        );
        cg.set_limits(&old, &squeezed).unwrap();
        cg.create(&old, &squeezed).unwrap();
        for d in cg.cgroup_dirs(&old) {
            assert!(d.ends_with(format!("backfill/{old}")), "{}", d.display());
        }
        assert_eq!(cg.read_limits(&old).unwrap(), squeezed);
        for f in cg.join_files(&old).unwrap() {
            assert!(
                f.ends_with(format!("backfill/{old}/cgroup.procs")),
                "{}",
                f.display()
            );
        }
        cg.remove(&old).unwrap();
        cg.remove(&new).unwrap();
        assert!(cg.list().unwrap().is_empty());
        cg.remove_parent().unwrap();
    }
}

/// Two agents' parents side by side: each has its own class parents, and one agent's servers
/// and removal leave the other's sums and directories alone.
#[test]
fn two_agents_class_parents_are_their_own() {
    for v2 in [false, true] {
        let t = if v2 { v2_tree() } else { v1_tree() };
        let at = |parent: &str| {
            if v2 {
                FsCgroups::v2_at(t.path(), parent).unwrap()
            } else {
                FsCgroups::v1_at(t.path(), parent).unwrap()
            }
        };
        let (a, b) = (at("backfill-a"), at("backfill-b"));
        let weight = if v2 { "cpu.weight" } else { "cpu.shares" };
        a.create(
            &ServerId::from_u128(1),
            &limits(ServerClass::Normal, 3000, MIB),
        )
        .unwrap();
        b.create(
            &ServerId::from_u128(2),
            &limits(ServerClass::Normal, 1000, MIB),
        )
        .unwrap();
        let cpu_root = if v2 {
            t.path().to_path_buf()
        } else {
            fs::canonicalize(t.path().join("cpu")).unwrap()
        };
        let sum = |p: &str| read(&cpu_root.join(p).join("normal").join(weight));
        let (wa, wb) = if v2 { ("150", "50") } else { ("1536", "512") };
        assert_eq!(
            (sum("backfill-a").as_str(), sum("backfill-b").as_str()),
            (wa, wb)
        );
        a.remove(&ServerId::from_u128(1)).unwrap();
        a.remove_parent().unwrap();
        assert!(!cpu_root.join("backfill-a").exists());
        assert_eq!(sum("backfill-b"), wb);
        assert_eq!(b.list().unwrap(), vec![ServerId::from_u128(2)]);
        b.remove(&ServerId::from_u128(2)).unwrap();
        b.remove_parent().unwrap();
    }
}

/// The real kernel (cgroup v1 or v2 with controllers), as root: the class parents read back
/// what was written, and a process joined to a backfill server is in `<parent>/idle/<uuid>`.
#[test]
fn real_kernel_class_parents() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: not running as root");
        return;
    }
    let parent = format!("backfill-classtest-{}", std::process::id());
    let cg = match FsCgroups::detect(&parent) {
        Ok(c) if !c.is_simulated() => c,
        Ok(c) => {
            eprintln!("skipping: {} is not a cgroup filesystem", c.describe());
            return;
        }
        Err(e) => {
            eprintln!("skipping: {e}");
            return;
        }
    };
    struct Cleanup<'a>(&'a FsCgroups, Vec<ServerId>, Option<std::process::Child>);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            if let Some(c) = &mut self.2 {
                let _ = c.kill();
                let _ = c.wait();
            }
            for id in &self.1 {
                let _ = self.0.kill_all(id);
                let _ = self.0.remove(id);
            }
            let _ = self.0.remove_parent();
        }
    }
    let (n1, n2) = (ServerId::new_random(), ServerId::new_random());
    let backfill: Vec<ServerId> = (0..5).map(|_| ServerId::new_random()).collect();
    let mut guard = Cleanup(
        &cg,
        [n1, n2].into_iter().chain(backfill.clone()).collect(),
        None,
    );
    cg.create(&n1, &limits(ServerClass::Normal, 3000, 64 * MIB))
        .unwrap();
    cg.create(&n2, &limits(ServerClass::Normal, 1000, 64 * MIB))
        .unwrap();
    for id in &backfill {
        cg.create(id, &limits(ServerClass::Backfill, 2000, 64 * MIB))
            .unwrap();
    }
    let v2 = cg.is_v2();
    let cpu = cg.hier_dir(Ctl::Cpu).unwrap().join(&parent);
    let (weight, sum) = if v2 {
        ("cpu.weight", "200")
    } else {
        ("cpu.shares", "2048")
    };
    assert_eq!(read(&cpu.join("normal").join(weight)), sum);
    let idle = cpu.join("idle");
    let idle_kind = if idle.join("cpu.idle").is_file() {
        assert_eq!(read(&idle.join("cpu.idle")), "1");
        "cpu.idle = 1"
    } else {
        let least = if v2 { "1" } else { "2" };
        assert_eq!(read(&idle.join(weight)), least);
        "the least weight"
    };
    if v2 {
        let mem = cg.hier_dir(Ctl::Memory).unwrap().join(&parent);
        let protected = (128 * MIB).to_string();
        assert_eq!(read(&mem.join("normal/memory.min")), protected);
        assert_eq!(read(&mem.join("memory.min")), protected);
    }
    // A process joined to a backfill server is in its class parent in every hierarchy.
    let join = cg.join_files(&backfill[0]).unwrap();
    let child = spawn_joined(&join, "exec sleep 30");
    let pid = child.id();
    guard.2 = Some(child);
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = format!("/{parent}/idle/{}", backfill[0]);
    assert_eq!(
        own.lines().filter(|l| l.ends_with(&rel)).count(),
        join.len(),
        "{own}"
    );
    assert_eq!(cg.procs(&backfill[0]).unwrap(), vec![pid]);
    if let Some(mut c) = guard.2.take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    cg.remove(&n1).unwrap();
    assert_eq!(
        read(&cpu.join("normal").join(weight)),
        if v2 { "50" } else { "512" }
    );
    eprintln!(
        "real class parents ran on {}: normal/ weighed the sum of its servers, idle/ had {idle_kind}",
        cg.describe()
    );
}

/// The real kernel, as root: a server with more busy threads than the host has CPUs stalls,
/// and its own stall (v2 cpu.pressure, v1 its threads' run-queue wait) says so.
#[test]
fn real_kernel_stall_of_a_crowded_server() {
    use crate::pressure::Resource;
    use std::time::{Duration, Instant};
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: not running as root");
        return;
    }
    let parent = format!("backfill-stalltest-{}", std::process::id());
    let cg = match FsCgroups::detect(&parent) {
        Ok(c) if !c.is_simulated() => c,
        Ok(c) => {
            eprintln!("skipping: {} is not a cgroup filesystem", c.describe());
            return;
        }
        Err(e) => {
            eprintln!("skipping: {e}");
            return;
        }
    };
    let id = ServerId::new_random();
    struct Cleanup<'a>(&'a FsCgroups, ServerId, Option<std::process::Child>);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            if let Some(c) = &mut self.2 {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = self.0.kill_all(&self.1);
            let _ = self.0.remove(&self.1);
            let _ = self.0.remove_parent();
        }
    }
    let mut guard = Cleanup(&cg, id, None);
    cg.create(&id, &limits(ServerClass::Normal, 2000, 0))
        .unwrap();
    let Some(before) = cg.stall_usec(&id, Resource::Cpu).unwrap() else {
        eprintln!("skipping: this kernel shows no stall for {}", cg.describe());
        return;
    };
    // A quota-free normal server with 3 busy threads per CPU.
    cg.set_limits(
        &id,
        &CgroupLimits {
            cpu_quota_us: None,
            ..limits(ServerClass::Normal, 2000, 0)
        },
    )
    .unwrap();
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let script = format!(
        "for i in $(seq {}); do (while :; do :; done) & done; wait",
        cpus * 3
    );
    guard.2 = Some(spawn_joined(&cg.join_files(&id).unwrap(), &script));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    loop {
        let now = cg.stall_usec(&id, Resource::Cpu).unwrap().unwrap_or(0);
        if now >= before + 50_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no stall seen: {before} -> {now}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "real stall on {}: 50 ms of the server's own stall seen after {:?}",
        cg.describe(),
        started.elapsed()
    );
}

/// A running server whose class changes moves to the other class parent with its processes,
/// on fake v1 and v2 trees; the class parents' weights follow.
#[test]
fn a_class_change_moves_the_cgroup_with_its_processes() {
    for v2 in [false, true] {
        let t = if v2 { v2_tree() } else { v1_tree() };
        let root = fs::canonicalize(t.path()).unwrap();
        let cg = if v2 {
            FsCgroups::v2_at(&root, "backfill").unwrap()
        } else {
            FsCgroups::v1_at(&root, "backfill").unwrap()
        };
        let id = ServerId::from_u128(7);
        cg.create(&id, &limits(ServerClass::Spot, 2000, 64 * MIB))
            .unwrap();
        for procs in cg.join_files(&id).unwrap() {
            fs::write(procs, "4242\n").unwrap();
        }
        let cpu = cg.hier_dir(Ctl::Cpu).unwrap().join("backfill");
        let weight = if v2 { "cpu.weight" } else { "cpu.shares" };
        assert!(cpu.join("idle").join(id.to_string()).is_dir());

        cg.set_limits(&id, &limits(ServerClass::Normal, 3000, 64 * MIB))
            .unwrap();
        let here = cpu.join("normal").join(id.to_string());
        assert!(here.is_dir(), "v2 {v2}");
        assert!(!cpu.join("idle").join(id.to_string()).exists(), "v2 {v2}");
        assert_eq!(cg.procs(&id).unwrap(), vec![4242], "v2 {v2}");
        if v2 {
            assert_eq!(read(&here.join("cpu.idle")), "0");
        }
        let (server_w, class_w) = if v2 { ("150", "150") } else { ("1536", "1536") };
        assert_eq!(read(&here.join(weight)), server_w, "v2 {v2}");
        assert_eq!(read(&cpu.join("normal").join(weight)), class_w, "v2 {v2}");
        assert_eq!(
            cg.read_limits(&id).unwrap().cpu_weight,
            CpuWeight::Weight(150)
        );

        // And back: the normal class parent is left empty, at the kernel's default.
        cg.set_limits(&id, &limits(ServerClass::Backfill, 2000, 64 * MIB))
            .unwrap();
        assert!(cpu.join("idle").join(id.to_string()).is_dir());
        assert!(!here.exists());
        assert_eq!(cg.procs(&id).unwrap(), vec![4242]);
        assert_eq!(cg.read_limits(&id).unwrap().cpu_weight, CpuWeight::Idle);
        let default = if v2 { "100" } else { "1024" };
        assert_eq!(read(&cpu.join("normal").join(weight)), default, "v2 {v2}");
    }
}

/// The real kernel, as root: a running backfill workload made normal moves to `normal/` and
/// keeps running (the same process), and back.
#[test]
fn real_kernel_class_change_keeps_the_workload_running() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: not running as root");
        return;
    }
    let parent = format!("backfill-movetest-{}", std::process::id());
    let cg = match FsCgroups::detect(&parent) {
        Ok(c) if !c.is_simulated() => c,
        Ok(c) => {
            eprintln!("skipping: {} is not a cgroup filesystem", c.describe());
            return;
        }
        Err(e) => {
            eprintln!("skipping: {e}");
            return;
        }
    };
    struct Cleanup<'a>(&'a FsCgroups, ServerId, Option<std::process::Child>);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            if let Some(c) = &mut self.2 {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = self.0.kill_all(&self.1);
            let _ = self.0.remove(&self.1);
            let _ = self.0.remove_parent();
        }
    }
    let id = ServerId::new_random();
    let mut guard = Cleanup(&cg, id, None);
    cg.create(&id, &limits(ServerClass::Backfill, 2000, 64 * MIB))
        .unwrap();
    let join = cg.join_files(&id).unwrap();
    let child = spawn_joined(&join, "sleep 30 & sleep 30; wait");
    let pid = child.id();
    guard.2 = Some(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while cg.procs(&id).unwrap().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let before = cg.procs(&id).unwrap();
    assert!(before.contains(&pid), "{before:?}");
    for (class, to) in [
        (ServerClass::Normal, "normal"),
        (ServerClass::Backfill, "idle"),
    ] {
        cg.set_limits(&id, &limits(class, 2000, 64 * MIB)).unwrap();
        let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let rel = format!("/{parent}/{to}/{id}");
        assert_eq!(
            own.lines().filter(|l| l.ends_with(&rel)).count(),
            join.len(),
            "{own}"
        );
        assert_eq!(cg.procs(&id).unwrap(), before, "every process moved");
        assert_eq!(
            cg.relative_path(&id).unwrap(),
            format!("/{parent}/{to}/{id}")
        );
    }
    // Still the same, running workload.
    assert!(guard.2.as_mut().unwrap().try_wait().unwrap().is_none());
    eprintln!("real class change ran on {}", cg.describe());
}
