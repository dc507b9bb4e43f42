//! Processes seen through /proc: identity (pid + start time, so a reused pid is not mistaken for
//! our workload), liveness, signals.

use std::path::Path;

/// A pid and the kernel's start time of that process (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    pub start_ticks: u64,
}

impl ProcessIdentity {
    pub fn of(pid: u32) -> Option<ProcessIdentity> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (state, start_ticks) = parse_stat(&stat)?;
        if state == 'Z' || state == 'X' {
            return None;
        }
        Some(ProcessIdentity { pid, start_ticks })
    }
}

/// `(state, starttime)` from /proc/<pid>/stat. The command name may contain spaces and ')'.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // starttime is field 22; `state` was field 3.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Whether the process still exists (and is not a zombie) with the same start time.
pub fn alive(id: &ProcessIdentity) -> bool {
    ProcessIdentity::of(id.pid).is_some_and(|now| now.start_ticks == id.start_ticks)
}

/// SIGKILLs the process group led by `pid` (workloads lead their own session), then the pid.
/// Sends SIGTERM to a workload's process group (a graceful shutdown's request to stop).
pub fn terminate_group(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; pid > 1 so this never signals init or
    // every process.
    unsafe {
        libc::kill(-pid, libc::SIGTERM);
    }
}

pub fn kill_group(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; pid > 1 so this never signals init or
    // every process.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
}

pub fn running_as_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a user other than the owner could execute `path` (o+x on it and every ancestor).
pub fn others_can_execute(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode())
            .unwrap_or(0)
    };
    if mode(path) & 0o001 == 0 {
        return false;
    }
    path.ancestors()
        .skip(1)
        .all(|dir| dir.as_os_str().is_empty() || mode(dir) & 0o001 != 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_names() {
        let stat =
            "1234 (a) b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_stat(stat), Some(('S', 98765)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = ProcessIdentity::of(std::process::id()).unwrap();
        assert!(alive(&me));
        assert!(!alive(&ProcessIdentity {
            start_ticks: me.start_ticks + 1,
            ..me
        }));
    }
}
