//! A running server whose class changed (backfill made normal, or the reverse): its cgroup
//! moves class parents ([`crate::cgroups::CgroupManager::set_limits`]) and its threads take the
//! new class's [`Yielding`] (scheduling policy and OOM standing) in place, without a restart.

use super::Supervisor;
use crate::driver::Yielding;
use backfill_shared::{ServerClass, ServerId};

impl Supervisor {
    /// Gives every thread of server `id` the scheduling policy and OOM standing of `class`.
    pub(super) fn reyield(&self, id: &ServerId, class: ServerClass) {
        let pids = self.cgroups.procs(id).unwrap_or_default();
        let y = Yielding::for_class(class);
        for pid in &pids {
            if let Err(e) = apply_yielding(*pid, y) {
                tracing::warn!(server = %id, pid, error = %e, "cannot give the workload its new class's scheduling");
            }
        }
        tracing::info!(server = %id, class = ?class, processes = pids.len(), "class changed in place");
    }
}

/// `SCHED_IDLE` or `SCHED_OTHER` for each thread of `pid`, and its `oom_score_adj` (0 for a
/// normal server: the kernel's default).
pub(crate) fn apply_yielding(pid: u32, y: Yielding) -> std::io::Result<()> {
    let task_dir = std::path::PathBuf::from(format!("/proc/{pid}/task"));
    let policy = if y.sched_idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    for entry in std::fs::read_dir(&task_dir)?.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: sched_setscheduler reads `param`, a live local; a tid that ended meanwhile
        // only makes it fail with ESRCH.
        let rc = unsafe { libc::sched_setscheduler(tid, policy, &param) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
    }
    let adj = y.oom_score_adj.unwrap_or(0).clamp(-1000, 1000);
    std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string())
}
