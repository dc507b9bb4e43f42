//! The real thing, through iproute2's `ip`.

use super::{AddressPool, GuestNet, GuestNetworks, Link, NetworkError, names_for};
use backfill_shared::ServerId;
use std::net::Ipv4Addr;
use std::process::Command;

const NETNS_DIR: &str = "/run/netns";
/// Policy rules for guest interfaces sit well before the main table (32766).
const RULE_PREF: &str = "1000";

#[derive(Debug)]
pub struct IpNetworks {
    pool: AddressPool,
    /// The metadata listener's address, routed locally for guests only.
    metadata: Option<Ipv4Addr>,
    table: u32,
}

fn ip(args: &[&str]) -> Result<(), NetworkError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(NetworkError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Command {
            command: format!("ip {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

impl IpNetworks {
    /// Installs the guests-only local route for the metadata address.
    pub fn new(
        pool: AddressPool,
        metadata: Option<Ipv4Addr>,
        table: u32,
    ) -> Result<IpNetworks, NetworkError> {
        let t = table.to_string();
        if let Some(md) = metadata {
            let dst = format!("{md}/32");
            ip(&["route", "replace", "local", &dst, "dev", "lo", "table", &t])?;
        }
        Ok(IpNetworks {
            pool,
            metadata,
            table,
        })
    }

    fn try_create(&self, netns: &str, host_if: &str, link: Link) -> Result<(), NetworkError> {
        let t = self.table.to_string();
        let host_cidr = format!("{}/{}", link.host, super::pool::LINK_PREFIX);
        let guest_cidr = format!("{}/{}", link.guest, super::pool::LINK_PREFIX);
        let host = link.host.to_string();
        ip(&["netns", "add", netns])?;
        ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", netns,
        ])?;
        ip(&["addr", "add", &host_cidr, "dev", host_if])?;
        ip(&["link", "set", host_if, "up"])?;
        ip(&["-n", netns, "link", "set", "lo", "up"])?;
        ip(&["-n", netns, "addr", "add", &guest_cidr, "dev", "eth0"])?;
        ip(&["-n", netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", netns, "route", "add", "default", "via", &host])?;
        ip(&[
            "rule", "add", "iif", host_if, "lookup", &t, "pref", RULE_PREF,
        ])?;
        Ok(())
    }
}

impl GuestNetworks for IpNetworks {
    fn create(&self, server: &ServerId, link: Link) -> Result<GuestNet, NetworkError> {
        let (netns, host_if) = names_for(server);
        // Leftovers of an earlier run of the same server would make `add` fail.
        self.destroy(server);
        if let Err(e) = self.try_create(&netns, &host_if, link) {
            self.destroy(server);
            return Err(e);
        }
        tracing::info!(server = %server, %netns, address = %link.guest, metadata = ?self.metadata, "guest network up");
        Ok(GuestNet {
            slot: link.slot,
            address: link.guest,
            host_address: link.host,
            netns,
            host_if,
        })
    }

    fn destroy(&self, server: &ServerId) {
        let (netns, host_if) = names_for(server);
        let t = self.table.to_string();
        // Every rule for the interface (a crash may have left more than one).
        while ip(&["rule", "del", "iif", &host_if, "lookup", &t]).is_ok() {}
        if std::path::Path::new(NETNS_DIR).join(&netns).exists()
            && let Err(e) = ip(&["netns", "del", &netns])
        {
            tracing::warn!(server = %server, error = %e, "cannot remove the network namespace");
        }
        // Gone with the namespace normally; only a half-made pair is left over.
        let _ = ip(&["link", "del", &host_if]);
    }

    fn list(&self) -> Vec<ServerId> {
        let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("bf-"))
                    .and_then(|id| id.parse().ok())
            })
            .collect()
    }

    fn pool(&self) -> Option<AddressPool> {
        Some(self.pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usable() -> bool {
        let root = crate::driver::running_as_root();
        let has_ip = Command::new("ip").arg("-V").output().is_ok();
        if !root || !has_ip {
            eprintln!("SKIP: isolated networks need root and iproute2 (root={root}, ip={has_ip})");
        }
        root && has_ip
    }

    fn in_ns(netns: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", netns])
            .args(args)
            .output()
            .unwrap()
    }

    #[test]
    fn a_guest_namespace_is_made_reachable_and_removed_without_trace() {
        if !usable() {
            return;
        }
        let pool: AddressPool = "10.250.77.0/29".parse().unwrap();
        let nets = IpNetworks::new(pool, Some("169.254.169.254".parse().unwrap()), 25_077).unwrap();
        let id = ServerId::new_random();
        let net = nets.create(&id, pool.link(1).unwrap()).unwrap();
        assert_eq!(net.address, "10.250.77.6".parse::<Ipv4Addr>().unwrap());
        assert!(nets.list().contains(&id));
        let addr = in_ns(&net.netns, &["ip", "-4", "addr", "show", "eth0"]);
        assert!(String::from_utf8_lossy(&addr.stdout).contains("10.250.77.6/30"));
        let route = in_ns(&net.netns, &["ip", "route", "get", "169.254.169.254"]);
        assert!(String::from_utf8_lossy(&route.stdout).contains("via 10.250.77.5"));
        let ping = in_ns(&net.netns, &["ping", "-c1", "-W2", "10.250.77.5"]);
        if Command::new("ping").arg("-V").output().is_ok() {
            assert!(ping.status.success(), "{ping:?}");
        }
        // Creating it again (a new run of the same server) replaces the old one.
        let again = nets.create(&id, pool.link(1).unwrap()).unwrap();
        assert_eq!(again, net);
        nets.destroy(&id);
        assert!(!nets.list().contains(&id));
        assert!(
            !std::path::Path::new("/sys/class/net")
                .join(&net.host_if)
                .exists()
        );
        let rules = Command::new("ip").args(["rule", "show"]).output().unwrap();
        assert!(!String::from_utf8_lossy(&rules.stdout).contains(&net.host_if));
        // Destroying twice is harmless.
        nets.destroy(&id);
        let _ = ip(&[
            "route",
            "del",
            "local",
            "169.254.169.254/32",
            "table",
            "25077",
        ]);
    }
}
