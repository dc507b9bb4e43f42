//! One agent per cgroup parent. An agent removes the server cgroups under its parent that none
//! of its workloads owns (its own leftovers), so a second agent configured with the same parent
//! would kill the first one's workloads. The parent is therefore claimed, for as long as the
//! agent runs, with an exclusive lock on `/run/lock/backfill-agent-cgroup-<hash>.lock` (the
//! hash: 16 hex digits of SHA-256 of the parent's name); a second agent is refused at startup
//! and says which process holds it. The kernel drops the lock when the process ends, however it
//! ends, so a restarted agent claims its parent again.

use super::CgroupError;
use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

const LOCK_DIR: &str = "/run/lock";

/// Held while the agent uses its cgroup parent.
#[derive(Debug)]
pub struct ParentClaim {
    _file: File,
}

/// Claims `parent` for this process.
pub(super) fn claim(parent: &str) -> Result<ParentClaim, CgroupError> {
    claim_in(Path::new(LOCK_DIR), parent)
}

pub(super) fn claim_in(dir: &Path, parent: &str) -> Result<ParentClaim, CgroupError> {
    let digest = ring::digest::digest(&ring::digest::SHA256, parent.as_bytes());
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = dir.join(format!("backfill-agent-cgroup-{hex}.lock"));
    let err = |source| CgroupError::Lock {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|source| CgroupError::Lock {
        path: dir.to_owned(),
        source,
    })?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(CgroupError::ParentInUse {
                parent: parent.to_owned(),
                lock: path,
                holder: holder.trim().to_owned(),
            });
        }
        Err(TryLockError::Error(e)) => return Err(err(e)),
    }
    // Who holds it, for the next one's error message.
    file.set_len(0).map_err(err)?;
    file.rewind().map_err(err)?;
    writeln!(
        file,
        "pid {} (cgroup parent {parent:?})",
        std::process::id()
    )
    .map_err(err)?;
    Ok(ParentClaim { _file: file })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_parent_is_claimed_by_one_agent_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = claim_in(dir.path(), "backfill").unwrap();
        match claim_in(dir.path(), "backfill") {
            Err(e @ CgroupError::ParentInUse { .. }) => {
                let text = e.to_string();
                assert!(text.contains("\"backfill\""), "{text}");
                assert!(
                    text.contains(&format!("pid {}", std::process::id())),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Another parent is another agent's business.
        let other = claim_in(dir.path(), "backfill-local-a").unwrap();
        drop(first);
        let again = claim_in(dir.path(), "backfill").unwrap();
        drop((other, again));
    }
}
