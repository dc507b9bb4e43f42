//! The reclaim loop: a downsized server whose hard memory limit the kernel could not bring to
//! its target yet (it still used more) gets its limits again every round, so the hard limit
//! follows its usage down while `memory.high` (or v1's soft limit) reclaims.

use super::{Run, Supervisor};

impl Supervisor {
    /// One round. Only servers squeezed below their memory size can be above their target.
    pub(super) fn reclaim_memory(&self) {
        for (id, e) in &self.entries {
            if !matches!(e.run, Run::Running { .. }) || super::pressure::effective(e).mem >= 1.0 {
                continue;
            }
            let want = self.entry_limits(e);
            let Some(target) = want.mem_limit_bytes else {
                continue;
            };
            let Ok(now) = self.cgroups.read_limits(id) else {
                continue;
            };
            if now.mem_limit_bytes.is_some_and(|hard| hard <= target) {
                continue;
            }
            match self.cgroups.set_limits(id, &want) {
                Ok(()) => {
                    let hard = self
                        .cgroups
                        .read_limits(id)
                        .ok()
                        .and_then(|l| l.mem_limit_bytes);
                    if hard.is_some_and(|h| h <= target) {
                        tracing::info!(server = %id, target, "memory squeeze reached its target");
                    } else {
                        tracing::debug!(server = %id, target, ?hard, "memory squeeze: reclaiming");
                    }
                }
                Err(err) => {
                    self.cgroup_errors.inc();
                    tracing::warn!(server = %id, error = %err, "memory squeeze: cannot rewrite the limits");
                }
            }
        }
    }
}
