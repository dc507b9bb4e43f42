//! Starting a workload. The child joins its cgroup, leaves the agent's session and drops to the
//! workload user between fork and exec: it never runs unlimited or as root.

use super::DriverError;
use backfill_shared::ServerId;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The user a workload runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// Looks a user up by name.
    pub fn lookup(name: &str) -> Result<RunAs, DriverError> {
        let c = CString::new(name).map_err(|_| DriverError::Nul { what: "user name" })?;
        let mut pwd: libc::passwd = unsafe_zeroed_passwd();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: all pointers point to live, correctly sized buffers owned by this frame.
        let rc = unsafe {
            libc::getpwnam_r(
                c.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 || result.is_null() {
            return Err(DriverError::NoSuchUser(name.to_owned()));
        }
        Ok(RunAs {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }
}

fn unsafe_zeroed_passwd() -> libc::passwd {
    // SAFETY: passwd is a plain C struct of integers and pointers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Everything needed to start one workload.
#[derive(Debug, Clone)]
pub struct ExecSpec<'a> {
    pub server: ServerId,
    pub command: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    /// `cgroup.procs` files to write "0" into, in the child, before exec.
    pub join_files: &'a [PathBuf],
    pub run_as: Option<RunAs>,
    pub log_file: &'a Path,
    /// A network namespace (`/run/netns/NAME`) to join before exec.
    pub netns: Option<&'a Path>,
}

/// Starts the workload; returns the child (its pid leads its own session and process group).
pub fn spawn(spec: &ExecSpec<'_>) -> Result<Child, DriverError> {
    let program = spec.command.first().ok_or(DriverError::EmptyCommand)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.log_file)
        .map_err(|source| DriverError::Io {
            path: spec.log_file.to_owned(),
            source,
        })?;
    let log2 = log.try_clone().map_err(|source| DriverError::Io {
        path: spec.log_file.to_owned(),
        source,
    })?;
    let join: Vec<CString> = spec
        .join_files
        .iter()
        .map(|p| CString::new(p.as_os_str().as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| DriverError::Nul {
            what: "cgroup path",
        })?;
    let run_as = spec.run_as;
    // Opened before the fork; the child only calls setns on it.
    let netns = spec
        .netns
        .map(|p| {
            std::fs::File::open(p).map_err(|source| DriverError::Io {
                path: p.to_owned(),
                source,
            })
        })
        .transpose()?;
    let netns_fd = netns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);

    let mut cmd = Command::new(program);
    cmd.args(&spec.command[1..])
        .env_clear()
        .env("PATH", SAFE_PATH)
        .env("HOME", "/")
        .env("BACKFILL_SERVER_UUID", spec.server.to_string())
        .envs(spec.env)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system
    // calls (open, write, close, setns, setsid, setgroups, setgid, setuid) on memory prepared
    // before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for path in &join {
                join_cgroup(path)?;
            }
            if let Some(fd) = netns_fd
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(u) = run_as {
                let groups = [u.gid];
                if libc::setgroups(1, groups.as_ptr()) != 0
                    || libc::setgid(u.gid) != 0
                    || libc::setuid(u.uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| DriverError::Spawn {
        program: program.clone(),
        source,
    });
    drop(netns);
    child
}

/// Writes "0" (= the calling process) into a `cgroup.procs` file. Runs in the forked child.
unsafe fn join_cgroup(path: &CString) -> std::io::Result<()> {
    // SAFETY: path is a valid NUL-terminated string; the buffer is a static byte string.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n != 1 {
            return Err(err);
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn runs_with_a_clean_environment_and_logs() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let cmd = vec![
            "sh".to_string(),
            "-c".into(),
            "echo $FOO $BACKFILL_SERVER_UUID; echo err >&2".into(),
        ];
        let env = [("FOO".to_string(), "bar".to_string())].into();
        let id = ServerId::from_u128(7);
        let mut child = spawn(&ExecSpec {
            server: id,
            command: &cmd,
            env: &env,
            join_files: &[],
            run_as: None,
            log_file: &log,
            netns: None,
        })
        .unwrap();
        assert!(child.wait().unwrap().success());
        let out = std::fs::read_to_string(&log).unwrap();
        assert_eq!(out, format!("bar {id}\nerr\n"));
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = vec!["/nonexistent/prog".to_string()];
        let r = spawn(&ExecSpec {
            server: ServerId::from_u128(1),
            command: &cmd,
            env: &BTreeMap::new(),
            join_files: &[],
            run_as: None,
            log_file: &dir.path().join("l"),
            netns: None,
        });
        assert!(matches!(r, Err(DriverError::Spawn { .. })));
    }

    #[test]
    fn a_cgroup_that_cannot_be_joined_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = vec!["true".to_string()];
        let missing = vec![dir.path().join("no/such/cgroup.procs")];
        let r = spawn(&ExecSpec {
            server: ServerId::from_u128(1),
            command: &cmd,
            env: &BTreeMap::new(),
            join_files: &missing,
            run_as: None,
            log_file: &dir.path().join("l"),
            netns: None,
        });
        assert!(r.is_err(), "the workload must not run outside its cgroup");
    }

    #[test]
    fn nobody_exists_here() {
        assert!(RunAs::lookup("nobody").is_ok());
        assert!(RunAs::lookup("no-such-user-xyz").is_err());
    }
}
