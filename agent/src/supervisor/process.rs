//! Stopping a workload's processes, and the host's own use, from /proc.

use crate::driver::{self, ProcessIdentity};
use backfill_shared::protocol::HostUsage;
use std::process::Child;
use std::time::{Duration, Instant};

/// How long a killed child gets to be reaped before we stop waiting for it.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Kills a workload's process group: our own child (whose pid cannot be reused before we reap
/// it) directly, an adopted one only if its pid is still that workload.
pub(super) fn stop_process(process: &ProcessIdentity, child: Option<&mut Child>) {
    match child {
        Some(child) => {
            driver::kill_group(process.pid);
            reap(child);
        }
        None if driver::alive(process) => driver::kill_group(process.pid),
        None => {}
    }
}

fn reap(child: &mut Child) {
    let deadline = Instant::now() + REAP_TIMEOUT;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    tracing::warn!(pid = child.id(), "a killed workload was not reaped in time");
}

/// Host memory in use and the 1-minute load average, from /proc.
pub(super) fn host_usage() -> HostUsage {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            .saturating_mul(1024)
    };
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            l.split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let psi = crate::pressure::PsiFiles::default();
    let x100 = |r| (psi.avg10(r) * 100.0).round() as u32;
    HostUsage {
        mem_used_bytes: field("MemTotal:").saturating_sub(field("MemAvailable:")),
        load_avg_milli: (load * 1000.0) as u64,
        cpu_pressure_x100: x100(crate::pressure::Resource::Cpu),
        memory_pressure_x100: x100(crate::pressure::Resource::Memory),
        squeezing: false,
    }
}
