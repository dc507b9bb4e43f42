//! How long a server's own tasks have stalled so far, for attributing pressure to the servers
//! that feel it: cgroup v2's per-cgroup PSI (the "some" total of `cpu.pressure` and
//! `memory.pressure`, in microseconds); on v1, for the CPU, the run-queue wait of the cgroup's
//! threads (the second field of `/proc/<tid>/schedstat`, in nanoseconds). v1 has no
//! per-cgroup memory stall time: its major faults stand in ([`read_v1_memory`]).
//!
//! What a server did to itself is told apart by [`own_limit_hits`]: the times its memory
//! reached its own limit (v1 `memory.failcnt`, v2 `memory.events` `max`).

use super::CgroupError;
use super::files::{read_err, read_optional};
use super::fs::FsCgroups;
use super::hierarchy::Ctl;
use crate::pressure::{Resource, some_total_us};
use backfill_shared::ServerId;
use std::path::Path;

/// v2: the "some" total of `<dir>/<resource>.pressure`; None where the kernel has no such file.
pub(super) fn read_v2(dir: &Path, r: Resource) -> Result<Option<u64>, CgroupError> {
    let path = dir.join(format!("{}.pressure", r.as_str()));
    match read_optional(&path)? {
        Some(text) => some_total_us(&text).map(Some).ok_or_else(|| {
            super::files::parse_err(&path, &text, "expected a \"some ... total=<us>\" line")
        }),
        None => Ok(None),
    }
}

/// What one major fault (a page read back from disk or swap: reclaimed memory the server
/// wanted again) is counted as on v1, where the kernel keeps no stall time per cgroup. A
/// fault served from disk takes from about 0.1 to 10 ms; 1 ms makes the default
/// `server_stall_ms` (100 ms within 1,000 ms) a hundred major faults.
pub const V1_MAJFAULT_STALL_US: u64 = 1_000;

/// v1, memory: the server's major faults (`memory.stat` `total_pgmajfault`, else
/// `pgmajfault`) times [`V1_MAJFAULT_STALL_US`]; None without a `memory.stat`.
pub(super) fn read_v1_memory(dir: &Path) -> Result<Option<u64>, CgroupError> {
    let path = dir.join("memory.stat");
    let Some(text) = read_optional(&path)? else {
        return Ok(None);
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
    };
    match field("total_pgmajfault").or_else(|| field("pgmajfault")) {
        Some(v) => Ok(Some(
            super::files::parse_u64(&path, v)?.saturating_mul(V1_MAJFAULT_STALL_US),
        )),
        None => Ok(None),
    }
}

/// How often a server's memory reached its own hard limit so far (v1 `memory.failcnt`, v2
/// `memory.events` `max`): reclaim it caused itself, not backfill. 0 where unknown.
pub(super) fn own_limit_hits(dir: &Path, v2: bool) -> Result<u64, CgroupError> {
    if v2 {
        let path = dir.join("memory.events");
        let Some(text) = read_optional(&path)? else {
            return Ok(0);
        };
        return match text.lines().find_map(|l| l.strip_prefix("max ")) {
            Some(v) => super::files::parse_u64(&path, v),
            None => Ok(0),
        };
    }
    let path = dir.join("memory.failcnt");
    match read_optional(&path)? {
        Some(v) => super::files::parse_u64(&path, &v),
        None => Ok(0),
    }
}

/// v1, CPU: the summed run-queue wait (microseconds) of the threads listed in `<dir>/tasks`,
/// from `<proc>/<tid>/schedstat`. None without a tasks file or schedstats (a kernel without
/// CONFIG_SCHED_INFO). A thread that ends takes its wait with it: callers take a decrease as
/// no stall.
pub(super) fn read_v1_cpu(dir: &Path, proc: &Path) -> Result<Option<u64>, CgroupError> {
    let Some(tasks) = read_optional(&dir.join("tasks"))? else {
        return Ok(None);
    };
    let mut total_ns = 0u64;
    let mut seen = 0usize;
    let mut listed = 0usize;
    for tid in tasks.lines().map(str::trim).filter(|l| !l.is_empty()) {
        listed += 1;
        let path = proc.join(tid).join("schedstat");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            // Gone since the list was read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
            Err(e) => return Err(read_err(&path, e)),
        };
        let wait = text
            .split_whitespace()
            .nth(1)
            .and_then(|w| w.parse::<u64>().ok());
        if let Some(w) = wait {
            total_ns = total_ns.saturating_add(w);
            seen += 1;
        }
    }
    if listed > 0 && seen == 0 && !proc.join("self/schedstat").is_file() {
        return Ok(None);
    }
    Ok(Some(total_ns / 1000))
}

impl FsCgroups {
    /// [`super::CgroupManager::stall_sources`] for the kernel's cgroups.
    pub(super) fn stall_sources_here(&self) -> Vec<String> {
        let mut out = Vec::new();
        let parent = |ctl| self.hier_dir(ctl).map(|d| d.join(&self.parent));
        if self.is_v2() {
            for (ctl, r) in [(Ctl::Cpu, "cpu"), (Ctl::Memory, "memory")] {
                if parent(ctl).is_some_and(|d| d.join(format!("{r}.pressure")).is_file()) {
                    out.push(format!("stall:cgroup-psi-{r}"));
                }
            }
        } else {
            if !self.simulated && Path::new("/proc/self/schedstat").is_file() {
                out.push("stall:v1-schedstat-cpu".into());
            }
            if parent(Ctl::Memory).is_some_and(|d| d.join("memory.stat").is_file()) {
                out.push("stall:v1-memory".into());
            }
        }
        out
    }

    /// [`super::CgroupManager::memory_limit_hits`] for the kernel's cgroups.
    pub(super) fn limit_hits_of(&self, id: &ServerId) -> Result<u64, CgroupError> {
        match self.ctl_dir(id, Ctl::Memory).filter(|d| d.is_dir()) {
            Some(dir) => own_limit_hits(&dir, self.is_v2()),
            None => Ok(0),
        }
    }

    /// [`super::CgroupManager::stall_usec`] for the kernel's cgroups.
    pub(super) fn stall_of(
        &self,
        id: &ServerId,
        r: crate::pressure::Resource,
    ) -> Result<Option<u64>, CgroupError> {
        use crate::pressure::Resource;
        let ctl = match r {
            Resource::Cpu => Ctl::Cpu,
            Resource::Memory => Ctl::Memory,
        };
        let Some(dir) = self.ctl_dir(id, ctl).filter(|d| d.is_dir()) else {
            return Ok(None);
        };
        match (self.is_v2(), r) {
            (true, _) => read_v2(&dir, r),
            (false, Resource::Cpu) if !self.simulated => read_v1_cpu(&dir, Path::new("/proc")),
            (false, Resource::Cpu) => Ok(None),
            (false, Resource::Memory) => read_v1_memory(&dir),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn v2_reads_the_some_total_of_each_resource() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(read_v2(t.path(), Resource::Cpu).unwrap(), None);
        fs::write(
            t.path().join("cpu.pressure"),
            "some avg10=1.00 avg60=0.50 avg300=0.10 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=42\n",
        )
        .unwrap();
        fs::write(
            t.path().join("memory.pressure"),
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        )
        .unwrap();
        assert_eq!(read_v2(t.path(), Resource::Cpu).unwrap(), Some(123_456));
        assert_eq!(read_v2(t.path(), Resource::Memory).unwrap(), Some(7));
        fs::write(t.path().join("cpu.pressure"), "garbage\n").unwrap();
        let e = read_v2(t.path(), Resource::Cpu).unwrap_err();
        assert!(e.to_string().contains("cpu.pressure"), "{e}");
    }

    #[test]
    fn v1_sums_the_run_queue_wait_of_the_threads() {
        let t = tempfile::tempdir().unwrap();
        let (cg, proc) = (t.path().join("cg"), t.path().join("proc"));
        fs::create_dir_all(proc.join("self")).unwrap();
        fs::write(proc.join("self/schedstat"), "1 2 3\n").unwrap();
        fs::create_dir(&cg).unwrap();
        assert_eq!(read_v1_cpu(&cg, &proc).unwrap(), None, "no tasks file");
        fs::write(cg.join("tasks"), "").unwrap();
        assert_eq!(read_v1_cpu(&cg, &proc).unwrap(), Some(0));
        for (tid, stat) in [("10", "5000 3000000 7\n"), ("11", "1 2500000 1\n")] {
            fs::create_dir(proc.join(tid)).unwrap();
            fs::write(proc.join(tid).join("schedstat"), stat).unwrap();
        }
        // 12 has ended since the list was read.
        fs::write(cg.join("tasks"), "10\n11\n12\n").unwrap();
        assert_eq!(read_v1_cpu(&cg, &proc).unwrap(), Some(5_500));
    }

    #[test]
    fn stall_sources_name_what_the_tree_offers() {
        use crate::cgroups::{CgroupLimits, CgroupManager};
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        fs::write(t.path().join("cgroup.subtree_control"), "\n").unwrap();
        fs::write(t.path().join("cgroup.procs"), "1\n").unwrap();
        let cg = FsCgroups::v2_at(t.path(), "agent").unwrap();
        cg.create(&ServerId::from_u128(1), &CgroupLimits::UNLIMITED)
            .unwrap();
        assert!(cg.stall_sources().is_empty(), "no pressure files");
        fs::write(t.path().join("agent/cpu.pressure"), "").unwrap();
        assert_eq!(cg.stall_sources(), ["stall:cgroup-psi-cpu"]);
        fs::write(t.path().join("agent/memory.pressure"), "").unwrap();
        assert_eq!(
            cg.stall_sources(),
            ["stall:cgroup-psi-cpu", "stall:cgroup-psi-memory"]
        );
    }

    #[test]
    fn v1_memory_stall_is_counted_in_major_faults() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(read_v1_memory(t.path()).unwrap(), None);
        fs::write(
            t.path().join("memory.stat"),
            "cache 0\npgmajfault 3\ntotal_pgmajfault_x 9\ntotal_pgmajfault 12\n",
        )
        .unwrap();
        assert_eq!(read_v1_memory(t.path()).unwrap(), Some(12_000));
        fs::write(t.path().join("memory.stat"), "pgmajfault 3\n").unwrap();
        assert_eq!(read_v1_memory(t.path()).unwrap(), Some(3_000));
        assert_eq!(own_limit_hits(t.path(), false).unwrap(), 0);
        fs::write(t.path().join("memory.failcnt"), "5\n").unwrap();
        assert_eq!(own_limit_hits(t.path(), false).unwrap(), 5);
        fs::write(
            t.path().join("memory.events"),
            "low 0\nhigh 4\nmax 7\noom 0\noom_kill 0\n",
        )
        .unwrap();
        assert_eq!(own_limit_hits(t.path(), true).unwrap(), 7);
    }

    /// The real kernel: this thread's own schedstat is there (CONFIG_SCHED_INFO).
    #[test]
    fn this_kernel_has_schedstats_or_says_none() {
        let t = tempfile::tempdir().unwrap();
        let tid = std::process::id();
        fs::write(t.path().join("tasks"), format!("{tid}\n")).unwrap();
        let got = read_v1_cpu(t.path(), Path::new("/proc")).unwrap();
        if Path::new("/proc/self/schedstat").is_file() {
            assert!(got.is_some());
        } else {
            assert_eq!(got, None);
        }
    }
}
