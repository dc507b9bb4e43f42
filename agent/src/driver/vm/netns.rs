//! The VM's side of its network namespace: a bridge that joins the namespace's end of the
//! veth pair (`eth0`, whose address moves to the guest) and the tap QEMU attaches to, and the
//! packet socket the DHCP responder listens on. Everything here lives inside the server's own
//! namespace, so its names (`br0`, `tap0`) cannot meet another agent's; it goes when the
//! namespace goes.

use super::VmError;
use super::argv::{BRIDGE, TAP};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;

fn ip(args: &[&str]) -> Result<(), VmError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| VmError::Setup(format!("cannot run `ip`: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(VmError::Setup(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn exists(netns: &str, dev: &str) -> bool {
    Command::new("ip")
        .args(["-n", netns, "link", "show", "dev", dev])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Makes (or makes whole again) the bridge and the tap in `netns`, and moves the guest's
/// address off `eth0` (the guest has it now; the namespace itself keeps no address, so it
/// never answers for the guest). Idempotent: a re-adopted VM's namespace, whose `eth0`
/// the network restore may have rebuilt or readdressed, goes through it again.
pub fn plumb(netns: &str) -> Result<(), VmError> {
    if !exists(netns, BRIDGE) {
        ip(&[
            "-n",
            netns,
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "forward_delay",
            "0",
        ])?;
    }
    if !exists(netns, TAP) {
        // Persistent and owned by root: QEMU opens it before it drops to `run_as`.
        ip(&["-n", netns, "tuntap", "add", "dev", TAP, "mode", "tap"])?;
    }
    ip(&["-n", netns, "addr", "flush", "dev", "eth0"])?;
    for dev in ["eth0", TAP] {
        ip(&["-n", netns, "link", "set", dev, "master", BRIDGE])?;
    }
    for dev in [BRIDGE, TAP, "eth0"] {
        ip(&["-n", netns, "link", "set", dev, "up"])?;
    }
    Ok(())
}

/// Runs `f` on a thread that has entered the namespace at `path` (the caller's threads stay
/// where they are). Sockets `f` makes belong to that namespace for good.
fn in_netns<T: Send>(
    path: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> Result<T, VmError> {
    let ns = std::fs::File::open(path).map_err(|source| VmError::Io {
        path: path.to_owned(),
        source,
    })?;
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns(2) on a valid namespace fd changes only this (short-lived) thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            f()
        })
        .join()
    });
    match r {
        Ok(r) => r.map_err(|source| VmError::Io {
            path: path.to_owned(),
            source,
        }),
        Err(_) => Err(VmError::Setup("the namespace thread panicked".into())),
    }
}

/// A packet socket on the namespace's bridge (IPv4 frames), and the bridge's MAC.
pub fn dhcp_socket(netns_path: &Path) -> Result<(OwnedFd, [u8; 6]), VmError> {
    in_netns(netns_path, || {
        let proto = (0x0800u16).to_be();
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(BRIDGE).map_err(std::io::Error::other)?;
        // SAFETY: name is NUL-terminated.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: sll is a live sockaddr_ll of the length given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: ifreq is plain data; the name fits (IFNAMSIZ) and the ioctl fills the rest.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(BRIDGE.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: SIOCGIFHWADDR writes into req, which lives across the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the ioctl filled the hardware-address member of the union.
        let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        let mut mac = [0u8; 6];
        for (m, d) in mac.iter_mut().zip(data.iter()) {
            *m = *d as u8;
        }
        Ok((fd, mac))
    })
}
