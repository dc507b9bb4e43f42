//! How long a server's own tasks have stalled so far, for attributing pressure to the servers
//! that feel it: cgroup v2's per-cgroup PSI (the "some" total of `cpu.pressure` and
//! `memory.pressure`, in microseconds); on v1, for the CPU, the run-queue wait of the cgroup's
//! threads (the second field of `/proc/<tid>/schedstat`, in nanoseconds). v1 has no
//! per-cgroup memory stall: the host's PSI stands in there.

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
        } else if !self.simulated && Path::new("/proc/self/schedstat").is_file() {
            out.push("stall:v1-schedstat-cpu".into());
        }
        out
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
            (false, _) => Ok(None),
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
