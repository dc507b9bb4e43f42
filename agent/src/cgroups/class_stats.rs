//! What the kernel says of a class parent (`normal/`, `idle/`) as a whole, for the metrics:
//! the CPU quota and weight in force, the CPU time used and throttled, and the class's stall
//! (cgroup v2: the class parent's own `cpu.pressure`/`memory.pressure`; v1, CPU: the run-queue
//! wait of the threads of its servers).

use super::classes::CgroupClass;
use super::files::{read_v1_limits, read_v1_usage, read_v2_limits, read_v2_usage};
use super::fs::FsCgroups;
use super::hierarchy::Ctl;
use super::stall::{read_v1_cpu, read_v2};
use super::{CgroupError, CgroupLimits};
use crate::pressure::Resource;
use backfill_shared::ServerId;
use backfill_shared::protocol::ServerUsage;
use std::path::{Path, PathBuf};

/// A class parent's figures. Only the CPU part of `limits` is meaningful (class parents carry
/// no memory limit of their own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassStats {
    pub limits: CgroupLimits,
    pub usage: ServerUsage,
    /// The class's stall so far (us), by resource, where the kernel tells.
    pub stall_usec: Vec<(Resource, u64)>,
}

impl FsCgroups {
    /// The class parent's directory in the hierarchy carrying `ctl`.
    fn class_dir(&self, class: CgroupClass, ctl: Ctl) -> Option<PathBuf> {
        Some(
            self.hier_dir(ctl)?
                .join(&self.parent)
                .join(class.dir_name()),
        )
    }

    /// [`super::CgroupManager::class_stats`] for the kernel's cgroups: None while the class
    /// parent does not exist.
    pub(super) fn class_stats_of(
        &self,
        class: CgroupClass,
    ) -> Result<Option<ClassStats>, CgroupError> {
        let (Some(cpu), Some(mem)) = (
            self.class_dir(class, Ctl::Cpu),
            self.class_dir(class, Ctl::Memory),
        ) else {
            return Ok(None);
        };
        if !cpu.is_dir() || !mem.is_dir() {
            return Ok(None);
        }
        let v2 = self.is_v2();
        let (limits, usage) = if v2 {
            (read_v2_limits(&cpu, &mem)?, read_v2_usage(&cpu)?)
        } else {
            let acct = self.class_dir(class, Ctl::CpuAcct).filter(|d| d.is_dir());
            (
                read_v1_limits(&cpu, &mem)?,
                read_v1_usage(Some(cpu.clone()), acct, Some(mem.clone()))?,
            )
        };
        let mut stall_usec = Vec::new();
        for r in Resource::ALL {
            let total = match (v2, r) {
                (true, Resource::Cpu) => read_v2(&cpu, r)?,
                (true, Resource::Memory) => read_v2(&mem, r)?,
                (false, Resource::Cpu) if !self.simulated => sum_v1_cpu(&cpu, Path::new("/proc"))?,
                (false, _) => None,
            };
            if let Some(t) = total {
                stall_usec.push((r, t));
            }
        }
        Ok(Some(ClassStats {
            limits,
            usage,
            stall_usec,
        }))
    }
}

/// v1, CPU: the run-queue wait (us) of the threads of every server in a class parent; None
/// where the kernel keeps no schedstats.
pub(super) fn sum_v1_cpu(class_dir: &Path, proc: &Path) -> Result<Option<u64>, CgroupError> {
    let mut total = read_v1_cpu(class_dir, proc)?;
    let entries = match std::fs::read_dir(class_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(super::files::read_err(class_dir, e)),
    };
    for entry in entries.flatten() {
        let named = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.parse::<ServerId>().is_ok());
        if !named || !entry.path().is_dir() {
            continue;
        }
        if let Some(us) = read_v1_cpu(&entry.path(), proc)? {
            total = Some(total.unwrap_or(0).saturating_add(us));
        }
    }
    Ok(total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cgroups::CgroupManager;
    use std::fs;

    #[test]
    fn v1_sums_the_wait_of_the_servers_in_the_class() {
        let t = tempfile::tempdir().unwrap();
        let (class, proc) = (t.path().join("idle"), t.path().join("proc"));
        fs::create_dir_all(proc.join("self")).unwrap();
        fs::write(proc.join("self/schedstat"), "1 2 3\n").unwrap();
        fs::create_dir_all(&class).unwrap();
        fs::write(class.join("tasks"), "").unwrap();
        for (i, tid) in ["10", "11"].iter().enumerate() {
            let id = ServerId::from_u128(i as u128 + 1);
            let dir = class.join(id.to_string());
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("tasks"), format!("{tid}\n")).unwrap();
            fs::create_dir(proc.join(tid)).unwrap();
            let wait_ns = (i as u64 + 1) * 1_000_000;
            fs::write(proc.join(tid).join("schedstat"), format!("0 {wait_ns} 1\n")).unwrap();
        }
        assert_eq!(sum_v1_cpu(&class, &proc).unwrap(), Some(3_000));
    }

    #[test]
    fn no_class_parent_no_stats() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        fs::write(t.path().join("cgroup.subtree_control"), "\n").unwrap();
        fs::write(t.path().join("cgroup.procs"), "1\n").unwrap();
        let cg = FsCgroups::v2_at(t.path(), "agent").unwrap();
        assert_eq!(cg.class_stats(CgroupClass::Idle).unwrap(), None);
    }
}
