//! [`FsCgroups`]: the kernel's cgroup filesystem, v1 or v2, through cgroups-rs.
//!
//! cgroups-rs's own hierarchies find v1 mounts through `/proc/self/mountinfo` and hardcode
//! `/sys/fs/cgroup` for v2, so hierarchy.rs implements its [`Hierarchy`] trait for a configurable
//! root, and this module uses its controllers (`CpuController`, `MemController`) for the limit
//! writes, `Cgroup::kill` for `cgroup.kill` and `Controller::delete` (rmdir with retries) for
//! removal. Reads (limits, usage, procs) parse the control files directly so that every error
//! names its file. Directories are created directly too: cgroups-rs's v2 `Cgroup::create` reads
//! `/sys/fs/cgroup/cgroup.controllers` whatever the root and enables every controller it lists.
//!
//! A tree that is not a cgroup filesystem (a unit test's tempdir) is *simulated*: after a mkdir
//! the module writes the control files the kernel would show, before an rmdir it deletes them,
//! and `kill_all` empties `cgroup.procs` instead of signalling the PIDs listed there.

use super::CgroupClass;
use super::files::{
    read_err, read_procs, read_string, read_v1_limits, read_v1_usage, read_v2_limits,
    read_v2_usage, remove_files, sigkill, write_file,
};
use super::hierarchy::{
    CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, Ctl, Layout, RootedHierarchy, V1Mount, fs_magic,
    v1_mounts,
};
use super::memory::read_oom_kills;
use super::{CgroupError, CgroupLimits, CgroupManager, DeviceControl, DeviceRule, validate_parent};
use backfill_shared::ServerId;
use backfill_shared::protocol::ServerUsage;
use cgroups_rs::fs::hierarchies;
use cgroups_rs::fs::{Cgroup, Hierarchy};
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const KILL_ROUNDS: u32 = 10;
const KILL_WAIT: Duration = Duration::from_millis(500);
const POLL: Duration = Duration::from_millis(10);

/// Real cgroups (v1 or v2) under `<hierarchy>/<parent>/<server id>`.
///
/// On a simulated tree (not a cgroup filesystem) [`CgroupManager::enforcing`] is false but
/// [`CgroupManager::join_files`] still returns the paths, so tests can check them.
#[derive(Debug)]
pub struct FsCgroups {
    pub(super) hier: RootedHierarchy,
    pub(super) parent: String,
    pub(super) simulated: bool,
    /// This agent's claim on the parent (real hierarchies found by [`FsCgroups::detect`]).
    _claim: Option<super::ParentClaim>,
}

impl FsCgroups {
    /// v2 if `/sys/fs/cgroup` is a cgroup2 mount with the cpu and memory controllers, else v1 if
    /// the v1 cpu and memory hierarchies are mounted (`/proc/self/mountinfo`), else an error
    /// saying why neither is usable. Claims the parent for this agent (see [`super::claim`]).
    pub fn detect(parent: &str) -> Result<FsCgroups, CgroupError> {
        validate_parent(parent)?;
        let claim = super::claim::claim(parent)?;
        let mut found = Self::detect_unclaimed(parent)?;
        found._claim = Some(claim);
        Ok(found)
    }

    fn detect_unclaimed(parent: &str) -> Result<FsCgroups, CgroupError> {
        let unified = Path::new(hierarchies::UNIFIED_MOUNTPOINT);
        let v2_why = if hierarchies::is_cgroup2_unified_mode() {
            match Self::v2_at(unified, parent) {
                Ok(c) => return Ok(c),
                Err(e) => format!("cgroup v2: {}", reason(e)),
            }
        } else {
            format!("cgroup v2: {} is not a cgroup2 mount", unified.display())
        };
        let mounts = v1_mounts(&hierarchies::mountinfo_self());
        let root = mounts
            .first()
            .and_then(|m| m.dir.parent())
            .unwrap_or(unified)
            .to_path_buf();
        Self::from_v1(root, mounts, parent)
            .map_err(|e| CgroupError::Unavailable(format!("{v2_why}; cgroup v1: {}", reason(e))))
    }

    /// A v1 tree laid out like `/sys/fs/cgroup` on v1: one directory (or symlink to a co-mounted
    /// one, like `cpu -> cpu,cpuacct`) per controller. `cpu` and `memory` are required, `cpuacct`
    /// and `pids` used when present.
    pub fn v1_at(root: &Path, parent: &str) -> Result<FsCgroups, CgroupError> {
        validate_parent(parent)?;
        let mut mounts: Vec<V1Mount> = Vec::new();
        for ctl in Ctl::ALL {
            let p = root.join(ctl.name());
            if !p.is_dir() {
                continue;
            }
            let dir = std::fs::canonicalize(&p).map_err(|e| read_err(&p, e))?;
            match mounts.iter_mut().find(|m| m.dir == dir) {
                Some(m) => m.ctls.push(ctl),
                None => mounts.push(V1Mount {
                    dir,
                    ctls: vec![ctl],
                }),
            }
        }
        Self::from_v1(root.to_path_buf(), mounts, parent)
    }

    /// A unified (v2) tree at `root`, whose `cgroup.controllers` must list cpu and memory.
    pub fn v2_at(root: &Path, parent: &str) -> Result<FsCgroups, CgroupError> {
        validate_parent(parent)?;
        let path = root.join("cgroup.controllers");
        let content = read_string(&path)?;
        let words: Vec<&str> = content.split_whitespace().collect();
        if !(words.contains(&"cpu") && words.contains(&"memory")) {
            return Err(CgroupError::Unavailable(format!(
                "{} lists {:?}: the cpu and memory controllers are needed",
                path.display(),
                content.trim()
            )));
        }
        let simulated = match fs_magic(root)? {
            CGROUP2_SUPER_MAGIC => false,
            CGROUP_SUPER_MAGIC => {
                return Err(CgroupError::Unavailable(format!(
                    "{} is a cgroup v1 hierarchy, not a unified one",
                    root.display()
                )));
            }
            _ => true,
        };
        Ok(FsCgroups {
            hier: RootedHierarchy(Layout::V2 {
                root: root.to_path_buf(),
            }),
            parent: parent.to_owned(),
            simulated,
            _claim: None,
        })
    }

    fn from_v1(
        root: PathBuf,
        mounts: Vec<V1Mount>,
        parent: &str,
    ) -> Result<FsCgroups, CgroupError> {
        validate_parent(parent)?;
        for (ctl, file) in [
            (Ctl::Cpu, "cpu.cfs_quota_us"),
            (Ctl::Memory, "memory.limit_in_bytes"),
        ] {
            let Some(m) = mounts.iter().find(|m| m.ctls.contains(&ctl)) else {
                return Err(CgroupError::Unavailable(format!(
                    "the v1 {} controller is not mounted",
                    ctl.name()
                )));
            };
            if !m.dir.join(file).is_file() {
                return Err(CgroupError::Unavailable(format!(
                    "{} has no {file}",
                    m.dir.display()
                )));
            }
        }
        let mut real = 0;
        for m in &mounts {
            if fs_magic(&m.dir)? == CGROUP_SUPER_MAGIC {
                real += 1;
            }
        }
        if real != 0 && real != mounts.len() {
            return Err(CgroupError::Unavailable(format!(
                "only some of {:?} are cgroup v1 mounts",
                mounts.iter().map(|m| &m.dir).collect::<Vec<_>>()
            )));
        }
        Ok(FsCgroups {
            hier: RootedHierarchy(Layout::V1 { root, mounts }),
            parent: parent.to_owned(),
            simulated: real == 0,
            _claim: None,
        })
    }

    pub fn is_v2(&self) -> bool {
        self.hier.v2()
    }

    /// Whether the tree is not a cgroup filesystem and the kernel's behaviour is emulated.
    pub fn is_simulated(&self) -> bool {
        self.simulated
    }

    pub fn parent(&self) -> &str {
        &self.parent
    }

    /// The hierarchy directories: one per v1 mount in use, or the v2 root.
    pub(super) fn bases(&self) -> Vec<&Path> {
        match &self.hier.0 {
            Layout::V1 { mounts, .. } => mounts.iter().map(|m| m.dir.as_path()).collect(),
            Layout::V2 { root } => vec![root.as_path()],
        }
    }

    /// The parent's directories, one per hierarchy.
    pub fn parent_dirs(&self) -> Vec<PathBuf> {
        self.bases()
            .into_iter()
            .map(|b| b.join(&self.parent))
            .collect()
    }

    /// A server's cgroup directories, one per hierarchy (they may not exist): in its class
    /// parent (see [`super::classes`]).
    pub fn cgroup_dirs(&self, id: &ServerId) -> Vec<PathBuf> {
        let rel = self.place(id);
        self.parent_dirs()
            .into_iter()
            .map(|p| p.join(&rel))
            .collect()
    }

    /// The server's directory in the hierarchy carrying `ctl` (v2: the only one).
    pub(super) fn ctl_dir(&self, id: &ServerId, ctl: Ctl) -> Option<PathBuf> {
        Some(self.hier_dir(ctl)?.join(&self.parent).join(self.place(id)))
    }

    fn existing_dir(&self, id: &ServerId) -> Result<PathBuf, CgroupError> {
        let dirs = self.cgroup_dirs(id);
        match dirs.iter().find(|d| !d.is_dir()).or(dirs.first()) {
            Some(d) if d.is_dir() => Ok(d.clone()),
            Some(d) => Err(CgroupError::NotFound {
                id: *id,
                path: d.clone(),
            }),
            None => Err(CgroupError::Unavailable("no hierarchy".into())),
        }
    }

    /// The cgroup at `rel` below the parent (`normal/<uuid>` ...).
    pub(super) fn cgroup_at(&self, rel: &str) -> Cgroup {
        Cgroup::load(
            Box::new(self.hier.clone()),
            format!("{}/{rel}", self.parent),
        )
    }

    fn wait_empty(&self, id: &ServerId, timeout: Duration) -> Result<bool, CgroupError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.procs(id)?.is_empty() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(POLL);
        }
    }
}

impl CgroupManager for FsCgroups {
    fn mechanisms(&self) -> Vec<String> {
        self.offered()
    }

    fn stall_sources(&self) -> Vec<String> {
        self.stall_sources_here()
    }

    fn memory_limit_hits(&self, id: &ServerId) -> Result<u64, CgroupError> {
        self.limit_hits_of(id)
    }

    fn relative_path(&self, id: &ServerId) -> Option<String> {
        Some(format!(
            "/{}/{}",
            self.parent.trim_matches('/'),
            self.place(id)
        ))
    }

    fn remove_parent(&self) -> Result<(), CgroupError> {
        FsCgroups::remove_parent(self)
    }

    fn describe(&self) -> String {
        let v = if self.is_v2() {
            "cgroup v2"
        } else {
            "cgroup v1"
        };
        if self.simulated {
            format!("{v} (simulated at {})", self.hier.root().display())
        } else {
            v.to_owned()
        }
    }

    fn enforcing(&self) -> bool {
        !self.simulated
    }

    /// Makes `<parent>/<class>/<uuid>` in each hierarchy, or keeps the server's cgroup where it
    /// already is (also `<parent>/<uuid>`, from an agent before class parents).
    fn create(&self, id: &ServerId, limits: &CgroupLimits) -> Result<(), CgroupError> {
        limits.validate()?;
        let class = CgroupClass::of(limits);
        let rel = self
            .locate(id)
            .unwrap_or_else(|| format!("{}/{id}", class.dir_name()));
        self.make(&rel, class)?;
        self.write_limits_at(&rel, limits)?;
        self.refresh_after(id)
    }

    fn set_limits(&self, id: &ServerId, limits: &CgroupLimits) -> Result<(), CgroupError> {
        limits.validate()?;
        self.existing_dir(id)?;
        let rel = self.place(id);
        let to = CgroupClass::of(limits);
        let moved = match rel.split_once('/') {
            Some((from, _)) if from != to.dir_name() => {
                self.move_class(id, &rel, to, limits)?;
                true
            }
            _ => false,
        };
        if moved {
            // Into or out of normal/: its sums change either way.
            return self.refresh_normal();
        }
        self.write_limits_at(&rel, limits)?;
        self.refresh_after(id)
    }

    fn read_limits(&self, id: &ServerId) -> Result<CgroupLimits, CgroupError> {
        self.existing_dir(id)?;
        let dir = |ctl| {
            self.ctl_dir(id, ctl)
                .ok_or_else(|| CgroupError::Unavailable(format!("no {} hierarchy", ctl.name())))
        };
        let (cpu, mem) = (dir(Ctl::Cpu)?, dir(Ctl::Memory)?);
        if self.is_v2() {
            read_v2_limits(&cpu, &mem)
        } else {
            read_v1_limits(&cpu, &mem)
        }
    }

    fn join_files(&self, id: &ServerId) -> Result<Vec<PathBuf>, CgroupError> {
        self.existing_dir(id)?;
        Ok(self
            .cgroup_dirs(id)
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect())
    }

    fn procs(&self, id: &ServerId) -> Result<Vec<u32>, CgroupError> {
        let mut all = BTreeSet::new();
        for dir in self.cgroup_dirs(id) {
            all.extend(read_procs(&dir)?);
        }
        Ok(all.into_iter().collect())
    }

    fn usage(&self, id: &ServerId) -> Result<ServerUsage, CgroupError> {
        if self.is_v2() {
            match self.ctl_dir(id, Ctl::Cpu) {
                Some(dir) => read_v2_usage(&dir),
                None => Ok(ServerUsage::default()),
            }
        } else {
            read_v1_usage(
                self.ctl_dir(id, Ctl::Cpu),
                self.ctl_dir(id, Ctl::CpuAcct),
                self.ctl_dir(id, Ctl::Memory),
            )
        }
    }

    fn stall_usec(
        &self,
        id: &ServerId,
        r: crate::pressure::Resource,
    ) -> Result<Option<u64>, CgroupError> {
        self.stall_of(id, r)
    }

    fn class_stats(&self, class: CgroupClass) -> Result<Option<super::ClassStats>, CgroupError> {
        self.class_stats_of(class)
    }

    fn oom_kills(&self, id: &ServerId) -> Result<u64, CgroupError> {
        let dir = self.ctl_dir(id, Ctl::Memory);
        dir.map_or(Ok(0), |d| read_oom_kills(&d, self.is_v2()))
    }

    fn kill_all(&self, id: &ServerId) -> Result<(), CgroupError> {
        let dirs = self.cgroup_dirs(id);
        let Some(main) = dirs.first().cloned() else {
            return Ok(());
        };
        if self.simulated {
            // The kernel would kill them and they would leave: empty the lists.
            for dir in dirs.iter().filter(|d| d.join("cgroup.procs").is_file()) {
                write_file(&dir.join("cgroup.procs"), "")?;
            }
            return Ok(());
        }
        if self.procs(id)?.is_empty() {
            return Ok(());
        }
        let kill_file = main.join("cgroup.kill");
        if self.is_v2() && kill_file.is_file() {
            self.cgroup_at(&self.place(id))
                .kill()
                .map_err(|source| CgroupError::Control {
                    path: kill_file,
                    data: "1".into(),
                    source,
                })?;
            if self.wait_empty(id, KILL_WAIT)? {
                return Ok(());
            }
        }
        for _ in 0..KILL_ROUNDS {
            let pids = self.procs(id)?;
            if pids.is_empty() {
                return Ok(());
            }
            for pid in pids {
                sigkill(pid, &main)?;
            }
            if self.wait_empty(id, KILL_WAIT)? {
                return Ok(());
            }
        }
        let pids = self.procs(id)?;
        if pids.is_empty() {
            return Ok(());
        }
        Err(CgroupError::KillTimeout {
            path: main,
            pids,
            rounds: KILL_ROUNDS,
        })
    }

    fn remove(&self, id: &ServerId) -> Result<(), CgroupError> {
        for dir in self.cgroup_dirs(id) {
            let pids = read_procs(&dir)?;
            if !pids.is_empty() {
                return Err(CgroupError::Busy { path: dir, pids });
            }
        }
        if self.simulated {
            for dir in self.cgroup_dirs(id).iter().filter(|d| d.is_dir()) {
                remove_files(dir)?;
            }
        }
        let normal = self
            .locate(id)
            .is_some_and(|rel| rel.starts_with(CgroupClass::Normal.dir_name()));
        let cg = self.cgroup_at(&self.place(id));
        for sub in cg.subsystems() {
            let c = sub.to_controller();
            c.delete().map_err(|source| CgroupError::RemoveCgroup {
                path: c.path().to_path_buf(),
                source,
            })?;
        }
        if normal {
            self.refresh_normal()?;
        }
        Ok(())
    }

    /// v1 with the devices controller mounted: the rules go to the server's `devices.deny` and
    /// `devices.allow`. v2 has no such files (device access there is an eBPF program).
    fn restrict_devices(
        &self,
        id: &ServerId,
        rules: &[DeviceRule],
    ) -> Result<DeviceControl, CgroupError> {
        if self.is_v2() {
            return Ok(DeviceControl::NotEnforced(
                "cgroup v2 has no devices controller files (it needs an eBPF device program)",
            ));
        }
        let Some(dir) = self.ctl_dir(id, Ctl::Devices) else {
            return Ok(DeviceControl::NotEnforced(
                "the cgroup v1 devices controller is not mounted",
            ));
        };
        if !dir.is_dir() {
            return Err(CgroupError::NotFound { id: *id, path: dir });
        }
        super::devices::write_rules(&dir, rules, self.simulated)?;
        Ok(DeviceControl::Enforced)
    }

    fn list(&self) -> Result<Vec<ServerId>, CgroupError> {
        let mut ids = BTreeSet::new();
        let parents = self.parent_dirs();
        let classes = CgroupClass::ALL.iter().flat_map(|c| self.class_dirs(*c));
        for dir in parents.iter().cloned().chain(classes) {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(read_err(&dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| read_err(&dir, e))?;
                let is_dir = entry.file_type().map_err(|e| read_err(&entry.path(), e))?;
                if !is_dir.is_dir() {
                    continue;
                }
                if let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                    ids.insert(id);
                }
            }
        }
        Ok(ids.into_iter().collect())
    }
}

/// `CgroupError::Unavailable`'s message without its prefix, others as they print.
fn reason(e: CgroupError) -> String {
    match e {
        CgroupError::Unavailable(why) => why,
        other => other.to_string(),
    }
}

#[cfg(test)]
#[path = "fs_tests.rs"]
mod tests;
