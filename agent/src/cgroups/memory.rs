//! Memory limits that squeeze gently. A downsized backfill server is first asked to give memory
//! back (v2 `memory.high`, which throttles and reclaims; v1 `memory.soft_limit_in_bytes`, which
//! the kernel reclaims from first under pressure), and its hard limit only follows as far as
//! its usage allows: a hard limit is never written below what the server uses, so downsizing
//! reclaims instead of OOM-killing. The supervisor calls again every second until the hard
//! limit reaches its target (the reclaim loop). Normal servers get `memory.min` on v2: the
//! kernel never reclaims their memory to make room for others.

use super::files::{parse_err, parse_u64, read_optional, read_string};
use super::{CgroupError, CgroupLimits};
use std::io;
use std::path::Path;

/// v1 shows "unlimited" as the largest page multiple below i64::MAX (9223372036854771712 with
/// 4 KiB pages): anything from 4 EiB up is taken as unlimited.
pub(super) const V1_UNLIMITED_FROM: u64 = 1 << 62;
/// Room left above a server's usage when its hard limit cannot reach its target yet.
pub const RECLAIM_SLACK_BYTES: u64 = 1 << 20;
const PAGE: u64 = 4096;

/// The memory limits in force: (hard, where reclaim starts, protected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MemoryRead {
    pub limit: Option<u64>,
    pub high: Option<u64>,
    pub min: Option<u64>,
}

/// The hard limit to write now: the target, or (while the server still uses more) its usage
/// plus some slack, page-aligned, so the write reclaims instead of killing.
pub fn hard_limit_now(target: Option<u64>, usage: u64) -> Option<u64> {
    target.map(|t| {
        if usage <= t {
            t
        } else {
            usage
                .saturating_add(RECLAIM_SLACK_BYTES)
                .div_ceil(PAGE)
                .saturating_mul(PAGE)
        }
    })
}

/// Writes a server's memory limits into `dir` (its memory controller directory).
pub(super) fn write_memory(dir: &Path, v2: bool, limits: &CgroupLimits) -> Result<(), CgroupError> {
    let bytes = |v: Option<u64>, none: &str| v.map_or(none.to_owned(), |b| b.to_string());
    if v2 {
        let usage = read_u64(&dir.join("memory.current"))?;
        if dir.join("memory.min").is_file() {
            write(&dir.join("memory.min"), &bytes(limits.mem_min_bytes, "0"))?;
        }
        write(
            &dir.join("memory.high"),
            &bytes(limits.mem_high_bytes, "max"),
        )?;
        let hard = hard_limit_now(limits.mem_limit_bytes, usage);
        return write(&dir.join("memory.max"), &bytes(hard, "max"));
    }
    write(
        &dir.join("memory.soft_limit_in_bytes"),
        &bytes(limits.mem_high_bytes, "-1"),
    )?;
    let path = dir.join("memory.limit_in_bytes");
    match write(&path, &bytes(limits.mem_limit_bytes, "-1")) {
        // v1 reclaims on the write and says EBUSY when it cannot get under the limit: hold the
        // limit just above the usage and try again at the next round.
        Err(CgroupError::Write { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {
            let usage = read_u64(&dir.join("memory.usage_in_bytes"))?;
            let hard = hard_limit_now(limits.mem_limit_bytes, usage);
            write(&path, &bytes(hard, "-1"))
        }
        other => other,
    }
}

/// Reads the limits [`write_memory`] writes.
pub(super) fn read_memory(dir: &Path, v2: bool) -> Result<MemoryRead, CgroupError> {
    if v2 {
        let max_or = |file: &str| -> Result<Option<u64>, CgroupError> {
            let path = dir.join(file);
            let content = read_string(&path)?;
            match content.trim() {
                "max" => Ok(None),
                b => parse_u64(&path, b).map(Some),
            }
        };
        let min_path = dir.join("memory.min");
        let min = match read_optional(&min_path)? {
            Some(c) => Some(parse_u64(&min_path, &c)?).filter(|m| *m > 0),
            None => None,
        };
        return Ok(MemoryRead {
            limit: max_or("memory.max")?,
            high: max_or("memory.high")?,
            min,
        });
    }
    let v1 = |file: &str| -> Result<Option<u64>, CgroupError> {
        let path = dir.join(file);
        let content = read_string(&path)?;
        let v: i128 = content
            .trim()
            .parse()
            .map_err(|_| parse_err(&path, &content, "expected an integer"))?;
        Ok(u64::try_from(v).ok().filter(|v| *v < V1_UNLIMITED_FROM))
    };
    Ok(MemoryRead {
        limit: v1("memory.limit_in_bytes")?,
        high: v1("memory.soft_limit_in_bytes")?,
        // v1 has no protection; normal servers are kept by backfill's soft limits instead.
        min: None,
    })
}

/// How many processes of the cgroup the kernel's OOM killer has killed: `oom_kill` in v2's
/// `memory.events` or v1's `memory.oom_control` (kernels from 4.13); 0 where neither says.
pub(super) fn read_oom_kills(dir: &Path, v2: bool) -> Result<u64, CgroupError> {
    let path = dir.join(if v2 {
        "memory.events"
    } else {
        "memory.oom_control"
    });
    let Some(content) = read_optional(&path)? else {
        return Ok(0);
    };
    match content.lines().find_map(|l| l.strip_prefix("oom_kill ")) {
        Some(n) => parse_u64(&path, n),
        None => Ok(0),
    }
}

fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    match read_optional(path)? {
        Some(c) => parse_u64(path, &c),
        None => Ok(0),
    }
}

/// Writes a control file that must exist (a misspelled name fails as on the kernel).
pub(super) fn write(path: &Path, data: &str) -> Result<(), CgroupError> {
    use std::io::Write;
    let fail = |source: io::Error| CgroupError::Write {
        path: path.to_path_buf(),
        data: data.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(false)
        .open(path)
        .map_err(fail)?;
    f.write_all(data.as_bytes()).map_err(fail)
}
