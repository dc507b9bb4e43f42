//! One thread per running VM, beside QEMU: it answers the guest's DHCP on the bridge of its
//! namespace, reads the balloon's actual size once a second (so that reports cost nothing)
//! and keeps the console log bounded (copy to `<log>.1`, then truncate: QEMU appends, so it
//! carries on at the start of the emptied file). It stops within half a second of
//! [`Companion::stop`].

use super::dhcp::{self, Lease};
use super::qmp;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_secs(1);
const QMP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Companion {
    stop: Arc<AtomicBool>,
    /// The balloon's actual size (bytes; 0 until known).
    pub actual: Arc<AtomicU64>,
}

pub struct Setup {
    pub server: backfill_shared::ServerId,
    pub socket: OwnedFd,
    pub bridge_mac: [u8; 6],
    pub lease: Lease,
    pub qmp: PathBuf,
    pub log_file: PathBuf,
    pub log_max_bytes: u64,
}

impl Companion {
    pub fn start(s: Setup) -> std::io::Result<Companion> {
        let stop = Arc::new(AtomicBool::new(false));
        let actual = Arc::new(AtomicU64::new(0));
        let (stop2, actual2) = (stop.clone(), actual.clone());
        std::thread::Builder::new()
            .name(format!("vm-{}", s.server))
            .spawn(move || run(s, &stop2, &actual2))?;
        Ok(Companion { stop, actual })
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Companion {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(s: Setup, stop: &AtomicBool, actual: &AtomicU64) {
    let fd = s.socket.as_raw_fd();
    let mut buf = vec![0u8; 2048];
    let mut last = Instant::now()
        .checked_sub(TICK)
        .unwrap_or_else(Instant::now);
    let mut leased = false;
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, 500) };
        if ready > 0 {
            loop {
                // SAFETY: buf is live and as long as given.
                let n = unsafe {
                    libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
                };
                let Ok(n) = usize::try_from(n) else { break };
                let Some(req) = buf.get(..n).and_then(dhcp::parse) else {
                    continue;
                };
                let Some(kind) = dhcp::answer(&req, &s.lease) else {
                    continue;
                };
                let frame = dhcp::build(&req, kind, &s.lease, s.bridge_mac);
                // SAFETY: frame is live and as long as given; the socket is bound to the bridge.
                let sent = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) };
                if sent < 0 {
                    tracing::debug!(server = %s.server, error = %std::io::Error::last_os_error(), "cannot answer the guest's DHCP");
                } else if kind == dhcp::ACK && !leased {
                    leased = true;
                    tracing::info!(server = %s.server, address = %s.lease.address, "the guest took its address by DHCP");
                }
            }
        }
        if last.elapsed() >= TICK {
            last = Instant::now();
            if let Ok(bytes) = qmp::balloon_actual(&s.qmp, QMP_TIMEOUT) {
                actual.store(bytes, Ordering::Relaxed);
            }
            rotate(&s.log_file, s.log_max_bytes);
        }
    }
}

/// Copies the log to `<log>.1` and empties it when it is over `max` bytes.
pub fn rotate(log: &std::path::Path, max: u64) {
    if std::fs::metadata(log).map_or(true, |m| m.len() <= max) {
        return;
    }
    let old = log.with_extension("log.1");
    if let Err(e) = std::fs::copy(log, &old)
        .and_then(|_| std::fs::OpenOptions::new().write(true).open(log))
        .and_then(|f| f.set_len(0))
    {
        tracing::warn!(log = %log.display(), error = %e, "cannot rotate a VM's console log");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_console_log_is_bounded_and_appending_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("s.log");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        f.write_all(&[b'a'; 100]).unwrap();
        rotate(&log, 1000);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 100);
        f.write_all(&[b'b'; 1000]).unwrap();
        rotate(&log, 1000);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        assert_eq!(
            std::fs::metadata(dir.path().join("s.log.1")).unwrap().len(),
            1100
        );
        f.write_all(b"next").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"next");
    }
}
