//! Making a server's cgroup (every component of its path, in each hierarchy, with the class
//! parent's policy when that class parent is new) and writing its limits, for [`FsCgroups`].

use super::classes::CgroupClass;
use super::files::{enable_controllers, simulate_mkdir, write_cpu_weight};
use super::fs::FsCgroups;
use super::hierarchy::{Ctl, Layout};
use super::memory::write_memory;
use super::{CgroupError, CgroupLimits};
use cgroups_rs::fs::{Controller, Subsystem};
use std::io;
use std::path::Path;

impl FsCgroups {
    /// mkdir, keeping an existing directory; on a simulated tree, adds the control files.
    pub(super) fn mkdir(&self, dir: &Path, ctls: Option<&[Ctl]>) -> Result<(), CgroupError> {
        match std::fs::create_dir(dir) {
            Ok(()) if self.simulated => simulate_mkdir(dir, ctls),
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
            Err(e) => Err(CgroupError::CreateDir {
                path: dir.to_path_buf(),
                source: e,
            }),
        }
    }

    /// Writes `limits` into the cgroup at `rel` below the parent.
    pub(super) fn write_limits_at(
        &self,
        rel: &str,
        limits: &CgroupLimits,
    ) -> Result<(), CgroupError> {
        limits.validate()?;
        let to_i64 = |v: Option<u64>| match v {
            None => Ok(-1),
            Some(v) => i64::try_from(v).map_err(|_| CgroupError::BadLimits {
                limits: *limits,
                why: "a value does not fit the kernel's 64-bit signed range",
            }),
        };
        let quota = to_i64(limits.cpu_quota_us)?;
        let period = limits.cpu_period_us;
        let v2 = self.is_v2();
        let control = |dir: &Path, file: &str, data: String| {
            let path = dir.join(file);
            move |source| CgroupError::Control { path, data, source }
        };
        let cg = self.cgroup_at(rel);
        for sub in cg.subsystems() {
            match sub {
                Subsystem::Cpu(c) if v2 => {
                    let q = limits.cpu_quota_us.map_or("max".into(), |q| q.to_string());
                    c.set_cfs_quota_and_period(Some(quota), Some(period))
                        .map_err(control(c.path(), "cpu.max", format!("{q} {period}")))?;
                    write_cpu_weight(c.path(), true, limits.cpu_weight)?;
                }
                Subsystem::Cpu(c) => {
                    c.set_cfs_period(period).map_err(control(
                        c.path(),
                        "cpu.cfs_period_us",
                        period.to_string(),
                    ))?;
                    c.set_cfs_quota(quota).map_err(control(
                        c.path(),
                        "cpu.cfs_quota_us",
                        quota.to_string(),
                    ))?;
                    write_cpu_weight(c.path(), false, limits.cpu_weight)?;
                }
                Subsystem::Mem(m) => write_memory(m.path(), v2, limits)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Makes the cgroup at `rel` below the parent in each hierarchy (keeping what exists), and
    /// its class parent's policy when that class parent is new.
    pub(super) fn make(&self, rel: &str, class: CgroupClass) -> Result<(), CgroupError> {
        let class_dir = self.parent_dirs().first().map(|p| p.join(class.dir_name()));
        let new_class = class_dir.is_some_and(|d| !d.is_dir());
        let comps: Vec<&str> = self.parent.split('/').chain(rel.split('/')).collect();
        match &self.hier.0 {
            Layout::V1 { mounts, .. } => {
                for m in mounts {
                    let mut dir = m.dir.clone();
                    for comp in &comps {
                        dir.push(comp);
                        self.mkdir(&dir, Some(&m.ctls))?;
                    }
                }
            }
            Layout::V2 { root } => {
                enable_controllers(root, self.simulated)?;
                let mut dir = root.clone();
                let (leaf, above) = comps.split_last().unwrap_or((&"", &[]));
                for comp in above {
                    dir.push(comp);
                    self.mkdir(&dir, None)?;
                    enable_controllers(&dir, self.simulated)?;
                }
                dir.push(leaf);
                self.mkdir(&dir, None)?;
            }
        }
        if new_class {
            self.init_class(class)?;
        }
        Ok(())
    }
}
