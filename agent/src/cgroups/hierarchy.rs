//! A cgroups-rs [`Hierarchy`] at a configurable root (cgroups-rs's own `V1` reads
//! `/proc/self/mountinfo` and its `V2` hardcodes `/sys/fs/cgroup`), the controllers the agent
//! uses, and where they are mounted.

use super::CgroupError;
use super::files::read_err;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::devices::DevicesController;
use cgroups_rs::fs::hierarchies::Mountinfo;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Cgroup, Hierarchy, Subsystem};
use std::io;
use std::path::{Path, PathBuf};

pub(super) const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
pub(super) const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The controllers the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ctl {
    Memory,
    Pids,
    CpuAcct,
    Cpu,
    /// v1 only: which device files the workload may open (GPU isolation).
    Devices,
}

impl Ctl {
    pub(super) const ALL: [Ctl; 5] = [Ctl::Memory, Ctl::Pids, Ctl::CpuAcct, Ctl::Cpu, Ctl::Devices];

    pub(super) fn name(self) -> &'static str {
        match self {
            Ctl::Memory => "memory",
            Ctl::Pids => "pids",
            Ctl::CpuAcct => "cpuacct",
            Ctl::Cpu => "cpu",
            Ctl::Devices => "devices",
        }
    }
}

/// One v1 hierarchy: where it is mounted and which of our controllers it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct V1Mount {
    pub(super) dir: PathBuf,
    pub(super) ctls: Vec<Ctl>,
}

#[derive(Debug, Clone)]
pub(super) enum Layout {
    V1 { root: PathBuf, mounts: Vec<V1Mount> },
    V2 { root: PathBuf },
}

/// A cgroups-rs [`Hierarchy`] at a configurable root, limited to the agent's controllers.
#[derive(Debug, Clone)]
pub(super) struct RootedHierarchy(pub(super) Layout);

impl Hierarchy for RootedHierarchy {
    fn subsystems(&self) -> Vec<Subsystem> {
        match &self.0 {
            Layout::V1 { mounts, .. } => mounts
                .iter()
                .flat_map(|m| {
                    m.ctls.iter().map(|c| {
                        let (d, b) = (m.dir.clone(), m.dir.clone());
                        match c {
                            Ctl::Cpu => Subsystem::Cpu(CpuController::new(d, b, false)),
                            Ctl::CpuAcct => Subsystem::CpuAcct(CpuAcctController::new(d, b)),
                            Ctl::Memory => Subsystem::Mem(MemController::new(d, b, false)),
                            Ctl::Pids => Subsystem::Pid(PidController::new(d, b, false)),
                            Ctl::Devices => Subsystem::Devices(DevicesController::new(d, b)),
                        }
                    })
                })
                .collect(),
            Layout::V2 { root } => vec![
                Subsystem::Cpu(CpuController::new(root.clone(), root.clone(), true)),
                Subsystem::Mem(MemController::new(root.clone(), root.clone(), true)),
            ],
        }
    }

    fn root(&self) -> PathBuf {
        match &self.0 {
            Layout::V1 { root, .. } | Layout::V2 { root } => root.clone(),
        }
    }

    fn root_control_group(&self) -> Cgroup {
        Cgroup::load(Box::new(self.clone()), "")
    }

    fn parent_control_group(&self, path: &str) -> Cgroup {
        let parent = Path::new(path).parent().unwrap_or(Path::new(""));
        Cgroup::load(Box::new(self.clone()), parent)
    }

    fn v2(&self) -> bool {
        matches!(self.0, Layout::V2 { .. })
    }
}

/// Our controllers' v1 mounts, from `/proc/self/mountinfo` (cgroups-rs keeps the v1 ones).
pub(super) fn v1_mounts(mountinfo: &[Mountinfo]) -> Vec<V1Mount> {
    let mut mounts: Vec<V1Mount> = Vec::new();
    for m in mountinfo.iter().filter(|m| m.fs_type.0 == "cgroup") {
        let ctls: Vec<Ctl> = Ctl::ALL
            .into_iter()
            .filter(|c| m.super_opts.iter().any(|o| o == c.name()))
            .filter(|c| !mounts.iter().any(|seen| seen.ctls.contains(c)))
            .collect();
        if !ctls.is_empty() {
            mounts.push(V1Mount {
                dir: m.mount_point.clone(),
                ctls,
            });
        }
    }
    mounts
}

/// The file-system type of `path` (statfs(2) f_type).
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
pub(super) fn fs_magic(path: &Path) -> Result<i64, CgroupError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| read_err(path, io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated string and `st` a writable buffer of the right type.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(read_err(path, io::Error::last_os_error()));
    }
    // SAFETY: statfs returned 0, so it filled `st` (which was zeroed anyway).
    let st = unsafe { st.assume_init() };
    Ok(st.f_type as i64)
}
