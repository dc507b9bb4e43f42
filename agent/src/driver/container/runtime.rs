//! The OCI runtime (runc) as a program, with this agent's own state root, and the overlay
//! mounts that give each container a writable layer over its shared, read-only image.

use super::ContainerError;
use super::cache::io;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long one runtime command (create, start, kill, delete) may take.
const RUNTIME_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Runtime {
    pub program: PathBuf,
    /// `runc --root`: this agent's containers only.
    pub root: PathBuf,
}

impl Runtime {
    /// `runc 1.1.5` from `runc --version`, or why the runtime cannot be used.
    pub fn version(program: &Path) -> Result<String, String> {
        let out = Command::new(program)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", program.display()))?;
        if !out.status.success() {
            return Err(format!("{} --version: {}", program.display(), out.status));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let first = text.lines().next().unwrap_or_default();
        // "runc version 1.1.5+ds1" -> "runc 1.1.5+ds1"
        let mut words = first.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(name), Some("version"), Some(v)) => Ok(format!("{name} {v}")),
            _ if !first.is_empty() => Ok(first.to_owned()),
            _ => Err(format!("{} --version said nothing", program.display())),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.program);
        c.arg("--root").arg(&self.root).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs a runtime command to completion within [`RUNTIME_TIMEOUT`], its output captured.
    fn run(&self, mut cmd: Command, what: &str) -> Result<(), ContainerError> {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        self.finish(cmd, what)
    }

    fn finish(&self, mut cmd: Command, what: &str) -> Result<(), ContainerError> {
        let failed = |reason: String| ContainerError::Runtime {
            command: format!("{} {what}", self.program.display()),
            reason,
        };
        let mut child = cmd.spawn().map_err(|e| failed(e.to_string()))?;
        let deadline = std::time::Instant::now() + RUNTIME_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(failed(format!(
                        "no answer in {} s",
                        RUNTIME_TIMEOUT.as_secs()
                    )));
                }
                Err(e) => return Err(failed(e.to_string())),
            }
        };
        if status.success() {
            return Ok(());
        }
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        Err(failed(format!("{status}: {}", last_message(&err))))
    }

    /// `runc create`: the container's init waits, in its cgroup, for [`Runtime::start`]. Its
    /// stdout and stderr (and those of everything it starts) go to `log`.
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        log: &Path,
    ) -> Result<(), ContainerError> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io(log))?;
        let out2 = out.try_clone().map_err(io(log))?;
        let mut cmd = self.command(&["create", "--bundle"]);
        cmd.arg(bundle).arg("--pid-file").arg(pid_file).arg(id);
        cmd.stdout(Stdio::from(out)).stderr(Stdio::from(out2));
        // runc's own complaints go to the log too; keep the last line for the error.
        let r = self.finish(cmd, "create");
        r.map_err(|e| match e {
            ContainerError::Runtime { command, .. } => ContainerError::Runtime {
                command,
                reason: last_message(&tail(log)),
            },
            e => e,
        })
    }

    pub fn start(&self, id: &str) -> Result<(), ContainerError> {
        self.run(self.command(&["start", id]), "start")
    }

    pub fn kill(&self, id: &str, signal: &str) -> Result<(), ContainerError> {
        self.run(self.command(&["kill", id, signal]), "kill")
    }

    pub fn delete(&self, id: &str) -> Result<(), ContainerError> {
        self.run(self.command(&["delete", "--force", id]), "delete")
    }
}

/// runc's last complaint, without its `time=... level=error msg=` wrapping.
fn last_message(text: &str) -> String {
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    match line.split_once("msg=") {
        Some((_, m)) => m.trim().trim_matches('"').replace("\\\"", "\""),
        None => line.trim().to_owned(),
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(2048);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

fn cstring(p: &Path) -> Result<CString, ContainerError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| ContainerError::Io {
        path: p.to_owned(),
        source: std::io::Error::other("path contains a NUL byte"),
    })
}

/// Mounts `lower` (read-only) under a writable `upper` at `target`.
pub fn mount_overlay(
    lower: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), ContainerError> {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let data = CString::new(opts).map_err(|_| ContainerError::Io {
        path: target.to_owned(),
        source: std::io::Error::other("NUL in overlay options"),
    })?;
    let t = cstring(target)?;
    // SAFETY: every pointer is a valid NUL-terminated string living across the call.
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            t.as_ptr(),
            c"overlay".as_ptr(),
            libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(ContainerError::Mount {
            path: target.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Whether something is mounted at `target` (from /proc/self/mountinfo).
pub fn is_mounted(target: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let t = target.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .any(|m| m == t)
}

/// Unmounts `target` (lazily, so a process still inside does not keep it busy). Ok when
/// nothing is mounted there.
pub fn unmount(target: &Path) -> Result<(), ContainerError> {
    if !is_mounted(target) {
        return Ok(());
    }
    let t = cstring(target)?;
    // SAFETY: t is a valid NUL-terminated string living across the call.
    let rc = unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        return Err(ContainerError::Mount {
            path: target.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn runc_messages_are_unwrapped() {
        let log = "hello\ntime=\"2026-01-01T00:00:00Z\" level=error msg=\"runc create failed: unable to start container process: exec: \\\"/nope\\\": stat /nope: no such file or directory\"\n";
        assert_eq!(
            last_message(log),
            "runc create failed: unable to start container process: exec: \"/nope\": stat /nope: no such file or directory"
        );
        assert_eq!(last_message("plain\n\n"), "plain");
    }

    #[test]
    fn versions_of_missing_runtimes_are_errors() {
        assert!(Runtime::version(Path::new("/nonexistent/runc")).is_err());
        if Path::new("/usr/sbin/runc").exists() {
            let v = Runtime::version(Path::new("/usr/sbin/runc")).unwrap();
            assert!(v.starts_with("runc 1."), "{v}");
        } else {
            eprintln!("skipped: /usr/sbin/runc is not installed");
        }
    }
}
