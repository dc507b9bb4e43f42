//! A server whose class changes while it runs (backfill made normal, or the reverse) moves to
//! the other class parent without a restart: the agent makes `<parent>/<class>/<uuid>` in
//! every hierarchy, writes the new limits there, moves the workload's processes into it
//! (`cgroup.procs`, as many rounds as it takes processes that fork meanwhile) and removes the
//! old cgroup. The kernel cannot rename a cgroup to another parent; moving processes is how.
//! A cgroup made before class parents (`<parent>/<uuid>`) stays where it is.

use super::classes::CgroupClass;
use super::files::{read_procs, remove_files, write_file};
use super::fs::FsCgroups;
use super::{CgroupError, CgroupLimits};
use backfill_shared::ServerId;
use std::path::Path;
use std::time::Duration;

/// Rounds of moving the processes left behind (a process may fork while it is moved).
const MOVE_ROUNDS: u32 = 20;
/// Rounds of rmdir while the kernel still counts a moved process in the old cgroup.
const RMDIR_ROUNDS: u32 = 100;
const RMDIR_WAIT: Duration = Duration::from_millis(10);

impl FsCgroups {
    /// Moves server `id` from `from` (its place below the parent, as `normal/<uuid>`) to its
    /// place in class parent `to`, with `limits`, processes and all.
    pub(super) fn move_class(
        &self,
        id: &ServerId,
        from: &str,
        to: CgroupClass,
        limits: &CgroupLimits,
    ) -> Result<(), CgroupError> {
        let rel = format!("{}/{id}", to.dir_name());
        self.make(&rel, to)?;
        self.write_limits_at(&rel, limits)?;
        let bases: Vec<_> = self
            .bases()
            .into_iter()
            .map(|b| b.join(&self.parent))
            .collect();
        for base in &bases {
            move_procs(&base.join(from), &base.join(&rel), self.simulated)?;
        }
        for base in &bases {
            self.remove_moved(&base.join(from))?;
        }
        tracing::info!(server = %id, from, to = to.dir_name(), "cgroup moved to its new class parent");
        Ok(())
    }

    /// Removes a cgroup whose processes were all moved out (the kernel may take a moment to
    /// stop counting them).
    fn remove_moved(&self, dir: &Path) -> Result<(), CgroupError> {
        if !dir.is_dir() {
            return Ok(());
        }
        if self.simulated {
            remove_files(dir)?;
        }
        let mut round = 0;
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if round < RMDIR_ROUNDS && e.raw_os_error() == Some(libc::EBUSY) => {
                    round += 1;
                    std::thread::sleep(RMDIR_WAIT);
                }
                Err(source) => {
                    return Err(CgroupError::Remove {
                        path: dir.to_path_buf(),
                        source,
                    });
                }
            }
        }
    }
}

/// Moves every process of `old` into `new` (one hierarchy). On a simulated tree the pids are
/// appended to the new `cgroup.procs` and the old one emptied, as the kernel would show them.
fn move_procs(old: &Path, new: &Path, simulated: bool) -> Result<(), CgroupError> {
    if !old.is_dir() {
        return Ok(());
    }
    let target = new.join("cgroup.procs");
    if simulated {
        let mut all = read_procs(new)?;
        all.extend(read_procs(old)?);
        let text: String = all.iter().map(|p| format!("{p}\n")).collect();
        write_file(&target, &text)?;
        return write_file(&old.join("cgroup.procs"), "");
    }
    for _ in 0..MOVE_ROUNDS {
        let pids = read_procs(old)?;
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            match std::fs::write(&target, pid.to_string()) {
                Ok(()) => {}
                // Gone since the list was read.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(source) => {
                    return Err(CgroupError::Write {
                        path: target.clone(),
                        data: pid.to_string(),
                        source,
                    });
                }
            }
        }
    }
    let pids = read_procs(old)?;
    if pids.is_empty() {
        Ok(())
    } else {
        Err(CgroupError::Busy {
            path: old.to_path_buf(),
            pids,
        })
    }
}
