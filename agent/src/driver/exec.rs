//! Starting a workload. The child joins its cgroup, leaves the agent's session and drops to the
//! workload user between fork and exec: it never runs unlimited or as root.

use super::DriverError;
use backfill_shared::{ServerClass, ServerId};
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
    /// What the workload yields to its neighbours ([`Yielding::for_class`]).
    pub yielding: Yielding,
}

/// How a workload gives way to normal servers, from the kernel's side: its threads' scheduling
/// class and its standing with the OOM killer. Inherited by everything it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Yielding {
    /// `SCHED_IDLE`: runs only when no normal-class thread wants the CPU (cgroup v1 has no
    /// `cpu.idle`; this is its per-thread equivalent).
    pub sched_idle: bool,
    /// Written to `/proc/self/oom_score_adj` (-1000..=1000): higher dies first.
    pub oom_score_adj: Option<i16>,
}

impl Yielding {
    pub const NONE: Yielding = Yielding {
        sched_idle: false,
        oom_score_adj: None,
    };

    /// Backfill yields the CPU and dies first on OOM; spot yields the CPU and dies after
    /// backfill; normal servers are left as the kernel has them.
    pub fn for_class(class: ServerClass) -> Yielding {
        match class {
            ServerClass::Normal => Yielding::NONE,
            ServerClass::Spot => Yielding {
                sched_idle: true,
                oom_score_adj: Some(500),
            },
            ServerClass::Backfill => Yielding {
                sched_idle: true,
                oom_score_adj: Some(1000),
            },
        }
    }
}

/// The `exec` driver: the workload's command as a process on the host, as `run_as`, with
/// its class's [`Yielding`].
#[derive(Debug, Default)]
pub struct ExecDriver;

impl super::Driver for ExecDriver {
    fn kind(&self) -> backfill_shared::DriverKind {
        backfill_shared::DriverKind::Exec
    }

    fn launch(&self, l: &super::Launch<'_>) -> Result<super::Launched, DriverError> {
        let netns = l.network.map(crate::network::GuestNet::netns_path);
        let mut child = spawn(&ExecSpec {
            server: l.server,
            command: &l.workload.command,
            env: l.env,
            join_files: l.join_files,
            run_as: l.run_as,
            log_file: l.log_file,
            netns: netns.as_deref(),
            yielding: Yielding::for_class(l.class),
        })?;
        match super::ProcessIdentity::of(child.id()) {
            Some(process) => Ok(super::Launched {
                process,
                child: Some(child),
            }),
            None => {
                // It exited at once; reap it and say how.
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                Err(DriverError::Failed(format!(
                    "exited immediately ({status}); see {}",
                    l.log_file.display()
                )))
            }
        }
    }

    fn request_shutdown(&self, _server: &ServerId, process: &super::ProcessIdentity) {
        if super::alive(process) {
            super::terminate_group(process.pid);
        }
    }

    fn report(&self, into: &mut backfill_shared::Drivers) {
        into.exec = true;
    }
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
    // Formatted before the fork: the child must not allocate.
    let oom_adj: Option<Vec<u8>> = spec
        .yielding
        .oom_score_adj
        .map(|a| a.clamp(-1000, 1000).to_string().into_bytes());
    let sched_idle = spec.yielding.sched_idle;

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
    // calls (open, write, close, setns, setsid, sched_setscheduler, setgroups, setgid, setuid)
    // on memory prepared before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for path in &join {
                join_cgroup(path)?;
            }
            if let Some(adj) = &oom_adj {
                write_self(c"/proc/self/oom_score_adj", adj)?;
            }
            if sched_idle {
                let param = libc::sched_param { sched_priority: 0 };
                if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
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
    // SAFETY: as write_self.
    unsafe { write_self(path, b"0") }
}

/// Writes `data` to `path` with raw system calls only (for the child between fork and exec).
unsafe fn write_self(path: &std::ffi::CStr, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: path is a valid NUL-terminated string; data is a live buffer of its length.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if usize::try_from(n).ok() != Some(data.len()) {
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
            yielding: Yielding::NONE,
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
            yielding: Yielding::NONE,
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
            yielding: Yielding::NONE,
        });
        assert!(r.is_err(), "the workload must not run outside its cgroup");
    }

    #[test]
    fn nobody_exists_here() {
        assert!(RunAs::lookup("nobody").is_ok());
        assert!(RunAs::lookup("no-such-user-xyz").is_err());
    }

    /// The scheduling policy (field 41 of /proc/PID/stat) and oom_score_adj a class's workload
    /// runs with, as the workload itself reads them.
    fn yielding_seen(yielding: Yielding) -> (u32, i32) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let cmd: Vec<String> = ["cat", "/proc/self/oom_score_adj", "/proc/self/stat"]
            .map(String::from)
            .to_vec();
        let mut child = spawn(&ExecSpec {
            server: ServerId::from_u128(7),
            command: &cmd,
            env: &BTreeMap::new(),
            join_files: &[],
            run_as: None,
            log_file: &log,
            netns: None,
            yielding,
        })
        .unwrap();
        assert!(child.wait().unwrap().success());
        let out = std::fs::read_to_string(&log).unwrap();
        let (adj, stat) = out.split_once('\n').unwrap();
        let after_comm = stat.rsplit_once(')').unwrap().1;
        let policy = after_comm.split_whitespace().nth(38).unwrap();
        (policy.parse().unwrap(), adj.trim().parse().unwrap())
    }

    #[test]
    fn backfill_and_spot_yield_the_cpu_and_die_first() {
        let (normal_policy, normal_adj) = yielding_seen(Yielding::for_class(ServerClass::Normal));
        assert_eq!(normal_policy, libc::SCHED_OTHER as u32);
        let (policy, adj) = yielding_seen(Yielding::for_class(ServerClass::Backfill));
        assert_eq!((policy, adj), (libc::SCHED_IDLE as u32, 1000));
        let (policy, adj) = yielding_seen(Yielding::for_class(ServerClass::Spot));
        assert_eq!((policy, adj), (libc::SCHED_IDLE as u32, 500));
        assert!(normal_adj < 500, "normal servers keep the agent's standing");
    }
}
