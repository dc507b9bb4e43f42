//! Class parents. A server's cgroup sits in one of two class parents under the agent's parent:
//! `<parent>/normal/<uuid>` for normal servers, `<parent>/idle/<uuid>` for backfill and spot
//! servers (the idle class: [`CpuWeight::Idle`]). Each class parent carries its class's policy
//! as a whole, so that many servers of one class cannot add up to outweigh the other:
//!
//! - `idle/` is itself the idle class: `cpu.idle = 1` where the kernel has it (v2, and v1 from
//!   5.15), else the smallest weight (v1 `cpu.shares` 2, v2 `cpu.weight` 1). Twenty backfill
//!   servers weigh, together, what one idle group weighs, not twenty times 2 shares.
//! - `normal/` weighs the sum of its servers' weights (v1 `cpu.shares`, at most the kernel's
//!   262144; v2 `cpu.weight`, at most 10000; the kernel's default when it has none), and on v2
//!   protects the sum of their `memory.min`, as does the agent's parent above it: the kernel
//!   protects a cgroup's memory only as far as every ancestor's `memory.min` allows. (Ancestors
//!   above the agent's parent, as in `cgroup_parent = "a/b"`, are the operator's: the agent
//!   writes none of them, since another agent's parent may share them.)
//!
//! A server keeps the place its cgroup was made in: one made by an agent from before class
//! parents (`<parent>/<uuid>`) is still found, adopted, limited and removed there.

use super::files::{parse_u64, read_err, read_optional, remove_files, write_cpu_weight};
use super::fs::FsCgroups;
use super::hierarchy::{Ctl, Layout};
use super::memory::write;
use super::{CgroupError, CgroupLimits, CpuWeight, DEFAULT_CPU_WEIGHT, MAX_CPU_WEIGHT};
use backfill_shared::ServerId;
use std::path::{Path, PathBuf};

/// v1's largest `cpu.shares` (the kernel's MAX_SHARES).
pub const V1_MAX_SHARES: u64 = 1 << 18;
/// v1's default `cpu.shares`.
const V1_DEFAULT_SHARES: u64 = 1024;

/// Which class parent a server's cgroup belongs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CgroupClass {
    /// `normal/`: weighted by MHz, memory protected.
    Normal,
    /// `idle/`: backfill and spot servers.
    Idle,
}

impl CgroupClass {
    pub const ALL: [CgroupClass; 2] = [CgroupClass::Normal, CgroupClass::Idle];

    /// The class whose policy `limits` carry: the idle class's weight means `idle/`.
    pub fn of(limits: &CgroupLimits) -> CgroupClass {
        match limits.cpu_weight {
            CpuWeight::Idle => CgroupClass::Idle,
            CpuWeight::Weight(_) => CgroupClass::Normal,
        }
    }

    /// The class parent's directory name below the agent's parent.
    pub fn dir_name(self) -> &'static str {
        match self {
            CgroupClass::Normal => "normal",
            CgroupClass::Idle => "idle",
        }
    }
}

/// The subdirectories of `dir` named by server ids (the servers of a class parent).
fn server_dirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| read_err(dir, e))?;
        let kind = entry.file_type().map_err(|e| read_err(&entry.path(), e))?;
        let named = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.parse::<ServerId>().is_ok());
        if kind.is_dir() && named {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The sum of `file` (an integer) over `dirs`, skipping those without it.
fn sum_of(dirs: &[PathBuf], file: &str) -> Result<u64, CgroupError> {
    let mut sum = 0u64;
    for d in dirs {
        let path = d.join(file);
        if let Some(c) = read_optional(&path)? {
            sum = sum.saturating_add(parse_u64(&path, &c)?);
        }
    }
    Ok(sum)
}

/// Writes the idle class's policy into a class parent's cpu directory.
pub(super) fn write_idle(cpu_dir: &Path, v2: bool) -> Result<(), CgroupError> {
    write_cpu_weight(cpu_dir, v2, CpuWeight::Idle)
}

/// Writes the normal class's policy from its servers: the sum of their weights (clamped to
/// the kernel's range) and, on v2, of their `memory.min`, which is returned.
pub(super) fn write_normal(cpu_dir: &Path, mem_dir: &Path, v2: bool) -> Result<u64, CgroupError> {
    let servers = server_dirs(cpu_dir)?;
    if v2 {
        let sum = sum_of(&servers, "cpu.weight")?;
        let w = if servers.is_empty() {
            DEFAULT_CPU_WEIGHT
        } else {
            sum.clamp(1, MAX_CPU_WEIGHT)
        };
        write_cpu_weight(cpu_dir, true, CpuWeight::Weight(w))?;
        let min = sum_of(&server_dirs(mem_dir)?, "memory.min")?;
        if mem_dir.join("memory.min").is_file() {
            write(&mem_dir.join("memory.min"), &min.to_string())?;
        }
        return Ok(min);
    }
    let shares = if servers.is_empty() {
        V1_DEFAULT_SHARES
    } else {
        sum_of(&servers, "cpu.shares")?.clamp(super::V1_MIN_SHARES + 1, V1_MAX_SHARES)
    };
    let idle = cpu_dir.join("cpu.idle");
    if idle.is_file() {
        write(&idle, "0")?;
    }
    write(&cpu_dir.join("cpu.shares"), &shares.to_string())?;
    Ok(0)
}

impl FsCgroups {
    /// The directory of the hierarchy carrying `ctl` (v2: the only one).
    pub(super) fn hier_dir(&self, ctl: Ctl) -> Option<&Path> {
        match &self.hier.0 {
            Layout::V1 { mounts, .. } => mounts
                .iter()
                .find(|m| m.ctls.contains(&ctl))
                .map(|m| m.dir.as_path()),
            Layout::V2 { root } => Some(root.as_path()),
        }
    }

    /// What the parent cgroups offer to protect normal servers: [`super::CgroupManager::mechanisms`].
    pub(super) fn offered(&self) -> Vec<String> {
        let mut m = Vec::new();
        let has = |ctl, file: &str| {
            self.hier_dir(ctl)
                .is_some_and(|d| d.join(&self.parent).join(file).exists())
        };
        if self.is_v2() {
            m.push("cgroup-v2".into());
            for f in ["memory.min", "memory.high"] {
                if has(Ctl::Memory, f) {
                    m.push(f.into());
                }
            }
        } else {
            m.push("cgroup-v1".into());
            if has(Ctl::Memory, "memory.soft_limit_in_bytes") {
                m.push("memory.soft_limit_in_bytes".into());
            }
        }
        if has(Ctl::Cpu, "cpu.idle") {
            m.push("cpu.idle".into());
        }
        m
    }

    /// Where a server's cgroup is below the parent (`normal/<uuid>`, `idle/<uuid>` or, made
    /// before class parents, `<uuid>`), if it exists.
    pub(super) fn locate(&self, id: &ServerId) -> Option<String> {
        let base = self.hier_dir(Ctl::Memory)?.join(&self.parent);
        let name = id.to_string();
        CgroupClass::ALL
            .iter()
            .map(|c| format!("{}/{name}", c.dir_name()))
            .chain([name.clone()])
            .find(|rel| base.join(rel).is_dir())
    }

    /// Where a server's cgroup is below the parent, or (when it does not exist) where a normal
    /// server's would be.
    pub(super) fn place(&self, id: &ServerId) -> String {
        self.locate(id)
            .unwrap_or_else(|| format!("{}/{id}", CgroupClass::Normal.dir_name()))
    }

    /// A class parent's directories, one per hierarchy.
    pub fn class_dirs(&self, class: CgroupClass) -> Vec<PathBuf> {
        self.parent_dirs()
            .into_iter()
            .map(|p| p.join(class.dir_name()))
            .collect()
    }

    /// Rewrites the normal class parent's policy from its servers (and, on v2, the parent's
    /// `memory.min`), where that class parent exists.
    pub(super) fn refresh_normal(&self) -> Result<(), CgroupError> {
        let (Some(cpu), Some(mem)) = (self.hier_dir(Ctl::Cpu), self.hier_dir(Ctl::Memory)) else {
            return Ok(());
        };
        let name = CgroupClass::Normal.dir_name();
        let (cpu, mem) = (cpu.join(&self.parent), mem.join(&self.parent));
        if !cpu.join(name).is_dir() {
            return Ok(());
        }
        let v2 = self.is_v2();
        let min = write_normal(&cpu.join(name), &mem.join(name), v2)?;
        if v2 && mem.join("memory.min").is_file() {
            write(&mem.join("memory.min"), &min.to_string())?;
        }
        Ok(())
    }

    /// After a server's limits changed: its class parent's sums, if it is a normal server.
    pub(super) fn refresh_after(&self, id: &ServerId) -> Result<(), CgroupError> {
        let normal = CgroupClass::Normal.dir_name();
        match self.locate(id) {
            Some(rel) if rel.split('/').next() == Some(normal) => self.refresh_normal(),
            _ => Ok(()),
        }
    }

    /// Writes a freshly made class parent's policy.
    pub(super) fn init_class(&self, class: CgroupClass) -> Result<(), CgroupError> {
        match class {
            CgroupClass::Normal => self.refresh_normal(),
            CgroupClass::Idle => match self.hier_dir(Ctl::Cpu) {
                Some(cpu) => {
                    write_idle(&cpu.join(&self.parent).join(class.dir_name()), self.is_v2())
                }
                None => Ok(()),
            },
        }
    }

    /// Removes the parent cgroup directories: the class parents, then every component of the
    /// parent's path, deepest first. Fails if server cgroups are still inside; Ok if they do
    /// not exist.
    pub fn remove_parent(&self) -> Result<(), CgroupError> {
        let comps: Vec<&str> = self.parent.split('/').collect();
        for base in self.bases() {
            let parent = base.join(&self.parent);
            let classes = CgroupClass::ALL.map(|c| parent.join(c.dir_name()));
            let dirs = classes.into_iter().chain(
                (1..=comps.len())
                    .rev()
                    .map(|n| comps[..n].iter().fold(base.to_path_buf(), |d, c| d.join(c))),
            );
            for (i, dir) in dirs.enumerate() {
                if !dir.is_dir() {
                    continue;
                }
                // An ancestor that holds other cgroups (another agent's parent, `a/c` beside
                // this agent's `a/b`) is not this agent's to remove.
                let ancestor = i > CgroupClass::ALL.len();
                if ancestor && has_subdirs(&dir)? {
                    break;
                }
                if self.simulated {
                    remove_files(&dir)?;
                }
                std::fs::remove_dir(&dir).map_err(|source| CgroupError::Remove {
                    path: dir.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }
}

fn has_subdirs(dir: &Path) -> Result<bool, CgroupError> {
    let entries = std::fs::read_dir(dir).map_err(|e| read_err(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| read_err(dir, e))?;
        if entry
            .file_type()
            .map_err(|e| read_err(&entry.path(), e))?
            .is_dir()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
#[path = "classes_tests.rs"]
mod tests;
