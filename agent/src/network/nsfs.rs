//! A workload's network namespace, reached through its process, and given its name back.
//!
//! `/proc/<pid>/ns/net` is guarded by the ptrace access rules: a root agent without
//! `CAP_SYS_PTRACE` (the systemd unit does not grant it) may open another user's only with that
//! user's file-system ids. So a refused open is retried with the workload's uid and gid as this
//! thread's fsuid and fsgid (per-thread ids, put back at once). The name is a bind mount of the
//! open namespace onto `/run/netns/<name>`, as `ip netns attach` makes it, but from the file
//! descriptor, which needs no further access to the process.

use super::NetworkError;
use std::ffi::CString;
use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The network namespace of process `pid`; `None` when the process is gone.
pub(super) fn open_process_ns(pid: u32) -> Result<Option<File>, NetworkError> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let io = |source| NetworkError::Io {
        path: path.clone(),
        source,
    };
    match File::open(&path) {
        Ok(f) => return Ok(Some(f)),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() != ErrorKind::PermissionDenied => return Err(io(e)),
        Err(_) => {}
    }
    let Some((uid, gid)) = ids_of(pid) else {
        return Ok(None);
    };
    match as_fs_ids(uid, gid, || File::open(&path)) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(e)),
    }
}

/// The real uid and gid of process `pid`, from `/proc/<pid>/status`.
fn ids_of(pid: u32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let first = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok())
    };
    Some((first("Uid:")?, first("Gid:")?))
}

/// Runs `f` with this thread's file-system ids set to `uid` and `gid`.
fn as_fs_ids<T>(uid: u32, gid: u32, f: impl FnOnce() -> T) -> T {
    // SAFETY: setfsgid(2) and setfsuid(2) change only the calling thread's file-system ids
    // (the raw system calls; glibc does not spread them to other threads) and cannot fail in
    // a way that leaves memory unsafe; the previous ids are put back before returning.
    let (old_gid, old_uid) = unsafe { (libc::setfsgid(gid), libc::setfsuid(uid)) };
    let result = f();
    // SAFETY: as above; the values are the ids this thread had.
    unsafe {
        libc::setfsuid(old_uid as libc::uid_t);
        libc::setfsgid(old_gid as libc::gid_t);
    }
    result
}

/// Names the open namespace `ns` at `path` (under `/run/netns`).
pub(super) fn attach(ns: &File, path: &Path) -> Result<(), NetworkError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| NetworkError::Io { path, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io(path))?;
    let source = format!("/proc/self/fd/{}", ns.as_raw_fd());
    let nul = |_| NetworkError::Unavailable("a path with a NUL byte");
    let source = CString::new(source).map_err(nul)?;
    let target = CString::new(path.as_os_str().as_bytes()).map_err(nul)?;
    // SAFETY: both pointers are NUL-terminated strings that outlive the call; a null fstype
    // and data are what a bind mount takes.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(io(path)(e));
    }
    Ok(())
}
