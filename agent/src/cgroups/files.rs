//! Control-file I/O for [`super::FsCgroups`]: reads and parses that name the file in their
//! errors, the kernel's behaviour on simulated trees, and signals.

use super::hierarchy::Ctl;
use super::memory::{read_memory, write};
use super::{CgroupError, CgroupLimits, CpuWeight, MIN_CPU_WEIGHT};
use backfill_shared::protocol::ServerUsage;
use std::io;
use std::path::{Path, PathBuf};

/// v2: `cpu.max` ("max 100000" or "50000 100000") and `memory.max` ("max" or bytes).
pub(super) fn read_v2_limits(cpu: &Path, mem: &Path) -> Result<CgroupLimits, CgroupError> {
    let path = cpu.join("cpu.max");
    let content = read_string(&path)?;
    let (quota, period) = match content.split_whitespace().collect::<Vec<_>>()[..] {
        [q, p] => (q.to_owned(), p.to_owned()),
        _ => {
            return Err(parse_err(
                &path,
                &content,
                "expected \"<quota|max> <period>\"",
            ));
        }
    };
    let cpu_quota_us = match quota.as_str() {
        "max" => None,
        q => Some(parse_u64(&path, q)?),
    };
    let cpu_period_us = parse_u64(&path, &period)?;
    let m = read_memory(mem, true)?;
    Ok(CgroupLimits {
        cpu_quota_us,
        cpu_period_us,
        mem_limit_bytes: m.limit,
        cpu_weight: read_cpu_weight(cpu, true)?,
        mem_high_bytes: m.high,
        mem_min_bytes: m.min,
    })
}

/// A server's CPU weight as the kernel has it: `cpu.idle` 1 (v2, and v1 on kernels from 5.15)
/// is the idle class; otherwise v2 `cpu.weight` or v1 `cpu.shares`. Without `cpu.idle`, the
/// smallest weight (v2 1, v1 shares 2) stands for the idle class.
pub(super) fn read_cpu_weight(cpu: &Path, v2: bool) -> Result<CpuWeight, CgroupError> {
    let idle_path = cpu.join("cpu.idle");
    let idle = read_optional(&idle_path)?;
    if let Some(i) = &idle
        && parse_u64(&idle_path, i)? == 1
    {
        return Ok(CpuWeight::Idle);
    }
    let path = cpu.join(if v2 { "cpu.weight" } else { "cpu.shares" });
    let w = parse_u64(&path, &read_string(&path)?)?;
    Ok(match (v2, idle, w) {
        (false, _, shares) => CpuWeight::from_v1_shares(shares),
        (true, None, 1) => CpuWeight::Idle,
        (true, _, w) => CpuWeight::Weight(w),
    })
}

/// Writes a server's CPU weight: the idle class through `cpu.idle` where the kernel has it (v2,
/// and v1 from 5.15), else the smallest weight; others v2 `cpu.weight` or v1 `cpu.shares`. The
/// kernel refuses a weight for an idle group, so leaving the idle class clears `cpu.idle`
/// first.
pub(super) fn write_cpu_weight(cpu: &Path, v2: bool, weight: CpuWeight) -> Result<(), CgroupError> {
    let idle = cpu.join("cpu.idle");
    let has_idle = idle.is_file();
    let weight_file = cpu.join(if v2 { "cpu.weight" } else { "cpu.shares" });
    let value = |w: CpuWeight| match (v2, w) {
        (true, CpuWeight::Idle) => MIN_CPU_WEIGHT.to_string(),
        (true, CpuWeight::Weight(w)) => w.to_string(),
        (false, w) => w.v1_shares().to_string(),
    };
    match weight {
        CpuWeight::Idle if has_idle => write(&idle, "1"),
        CpuWeight::Idle => write(&weight_file, &value(weight)),
        CpuWeight::Weight(_) => {
            if has_idle {
                write(&idle, "0")?;
            }
            write(&weight_file, &value(weight))
        }
    }
}

/// v1: `cpu.cfs_quota_us` (-1 = unlimited), `cpu.cfs_period_us`, `memory.limit_in_bytes` (-1 as
/// written, or a huge value as the kernel shows it = unlimited).
pub(super) fn read_v1_limits(cpu: &Path, mem: &Path) -> Result<CgroupLimits, CgroupError> {
    let read_int = |path: &Path| -> Result<i128, CgroupError> {
        let content = read_string(path)?;
        content
            .trim()
            .parse::<i128>()
            .map_err(|_| parse_err(path, &content, "expected an integer"))
    };
    let quota = read_int(&cpu.join("cpu.cfs_quota_us"))?;
    let period_path = cpu.join("cpu.cfs_period_us");
    let period = read_int(&period_path)?;
    let m = read_memory(mem, false)?;
    Ok(CgroupLimits {
        cpu_weight: read_cpu_weight(cpu, false)?,
        cpu_quota_us: u64::try_from(quota).ok(),
        cpu_period_us: u64::try_from(period)
            .map_err(|_| parse_err(&period_path, &period.to_string(), "negative period"))?,
        mem_limit_bytes: m.limit,
        mem_high_bytes: m.high,
        mem_min_bytes: m.min,
    })
}

/// v2: `usage_usec` of `cpu.stat` and `memory.current`; 0 for a missing file.
pub(super) fn read_v2_usage(dir: &Path) -> Result<ServerUsage, CgroupError> {
    let mut usage = ServerUsage::default();
    let path = dir.join("cpu.stat");
    if let Some(stat) = read_optional(&path)? {
        let line = stat.lines().find_map(|l| l.strip_prefix("usage_usec "));
        if let Some(v) = line {
            usage.cpu_usage_usec = parse_u64(&path, v)?;
        }
        let line = stat.lines().find_map(|l| l.strip_prefix("throttled_usec "));
        if let Some(v) = line {
            usage.cpu_throttled_usec = parse_u64(&path, v)?;
        }
    }
    let path = dir.join("memory.current");
    if let Some(v) = read_optional(&path)? {
        usage.mem_usage_bytes = parse_u64(&path, &v)?;
    }
    Ok(usage)
}

/// v1: `cpuacct.usage` (ns) and `memory.usage_in_bytes`; 0 for a missing file or hierarchy.
pub(super) fn read_v1_usage(
    cpu: Option<PathBuf>,
    cpuacct: Option<PathBuf>,
    mem: Option<PathBuf>,
) -> Result<ServerUsage, CgroupError> {
    let mut usage = ServerUsage::default();
    if let Some(dir) = cpu {
        let path = dir.join("cpu.stat");
        if let Some(stat) = read_optional(&path)? {
            let line = stat.lines().find_map(|l| l.strip_prefix("throttled_time "));
            if let Some(v) = line {
                usage.cpu_throttled_usec = parse_u64(&path, v)? / 1000;
            }
        }
    }
    if let Some(dir) = cpuacct {
        let path = dir.join("cpuacct.usage");
        if let Some(v) = read_optional(&path)? {
            usage.cpu_usage_usec = parse_u64(&path, &v)? / 1000;
        }
    }
    if let Some(dir) = mem {
        let path = dir.join("memory.usage_in_bytes");
        if let Some(v) = read_optional(&path)? {
            usage.mem_usage_bytes = parse_u64(&path, &v)?;
        }
    }
    Ok(usage)
}

/// v2: makes sure `dir`'s children get the cpu and memory controllers.
pub(super) fn enable_controllers(dir: &Path, simulated: bool) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    let enabled = |content: &str| -> Vec<String> {
        content
            .split_whitespace()
            .map(|w| w.trim_start_matches('+').to_owned())
            .collect()
    };
    let have = enabled(&read_string(&path)?);
    let missing: Vec<&str> = ["cpu", "memory"]
        .into_iter()
        .filter(|c| !have.iter().any(|h| h == c))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let data = if simulated {
        // What the kernel would show afterwards.
        let mut all = have.clone();
        all.extend(missing.iter().map(|m| (*m).to_owned()));
        all.join(" ")
    } else {
        missing
            .iter()
            .map(|m| format!("+{m}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    write_file(&path, &data)?;
    let after = read_string(&path)?;
    let now = enabled(&after);
    if ["cpu", "memory"].iter().all(|c| now.iter().any(|h| h == c)) {
        Ok(())
    } else {
        Err(CgroupError::Parse {
            path,
            content: after,
            why: "cpu and memory are still not enabled after writing them",
        })
    }
}

/// SIGKILL, ignoring a process that is already gone. Never signals 0 (our process group) or us.
pub(super) fn sigkill(pid: u32, dir: &Path) -> Result<(), CgroupError> {
    let Ok(raw) = i32::try_from(pid) else {
        return Ok(());
    };
    if raw <= 0 || pid == std::process::id() {
        return Ok(());
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(raw, libc::SIGKILL) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        return Ok(());
    }
    Err(CgroupError::Signal {
        pid,
        path: dir.to_path_buf(),
        source: e,
    })
}

/// The control files the kernel shows in a new cgroup (for simulated trees).
pub(super) fn simulate_mkdir(dir: &Path, ctls: Option<&[Ctl]>) -> Result<(), CgroupError> {
    let mut files: Vec<(&str, &str)> = vec![("cgroup.procs", "")];
    match ctls {
        None => files.extend([
            ("cgroup.controllers", "cpu memory\n"),
            ("cgroup.subtree_control", "\n"),
            ("cgroup.type", "domain\n"),
            ("cpu.max", "max 100000\n"),
            ("cpu.weight", "100\n"),
            ("cpu.idle", "0\n"),
            ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
            ("memory.max", "max\n"),
            ("memory.high", "max\n"),
            ("memory.min", "0\n"),
            ("memory.current", "0\n"),
        ]),
        Some(ctls) => {
            files.extend([("tasks", ""), ("notify_on_release", "0\n")]);
            for ctl in ctls {
                files.extend(match ctl {
                    Ctl::Cpu => &[
                        ("cpu.cfs_quota_us", "-1\n"),
                        ("cpu.cfs_period_us", "100000\n"),
                        ("cpu.shares", "1024\n"),
                    ][..],
                    Ctl::CpuAcct => &[("cpuacct.usage", "0\n")][..],
                    Ctl::Memory => &[
                        ("memory.limit_in_bytes", "9223372036854771712\n"),
                        ("memory.soft_limit_in_bytes", "9223372036854771712\n"),
                        ("memory.usage_in_bytes", "0\n"),
                    ][..],
                    Ctl::Pids => &[("pids.max", "max\n"), ("pids.current", "0\n")][..],
                    Ctl::Devices => &[
                        ("devices.allow", ""),
                        ("devices.deny", ""),
                        ("devices.list", "a *:* rwm\n"),
                    ][..],
                });
            }
        }
    }
    for (name, content) in files {
        write_file(&dir.join(name), content)?;
    }
    Ok(())
}

/// Deletes the regular files of a simulated cgroup directory (the kernel's rmdir does that).
pub(super) fn remove_files(dir: &Path) -> Result<(), CgroupError> {
    let entries = std::fs::read_dir(dir).map_err(|e| read_err(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| read_err(dir, e))?.path();
        if path.is_file() {
            std::fs::remove_file(&path).map_err(|source| CgroupError::Remove { path, source })?;
        }
    }
    Ok(())
}

pub(super) fn read_procs(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let path = dir.join("cgroup.procs");
    let Some(content) = read_optional(&path)? else {
        return Ok(Vec::new());
    };
    content
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse::<u32>()
                .map_err(|_| parse_err(&path, l, "expected one PID per line"))
        })
        .collect()
}

pub(super) fn read_string(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|e| read_err(path, e))
}

/// The file's contents, or None if it does not exist.
pub(super) fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(read_err(path, e)),
    }
}

pub(super) fn write_file(path: &Path, data: &str) -> Result<(), CgroupError> {
    std::fs::write(path, data).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        data: data.to_owned(),
        source,
    })
}

pub(super) fn parse_u64(path: &Path, s: &str) -> Result<u64, CgroupError> {
    s.trim()
        .parse()
        .map_err(|_| parse_err(path, s, "expected a non-negative integer"))
}

pub(super) fn read_err(path: &Path, source: io::Error) -> CgroupError {
    CgroupError::Read {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn parse_err(path: &Path, content: &str, why: &'static str) -> CgroupError {
    CgroupError::Parse {
        path: path.to_path_buf(),
        content: content.chars().take(200).collect(),
        why,
    }
}
