//! The guest's DHCP server: a pure codec (Ethernet/IPv4/UDP/BOOTP frames in and out) and a
//! responder that answers the one client this VM is (its MAC) with the one address it must
//! have, the host end of its veth as router, on a /30. It listens on a packet socket bound to
//! the bridge inside the server's network namespace, where nothing but this VM and the host
//! end of its veth pair can reach it.

use std::net::Ipv4Addr;

const ETH_HDR: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const BOOTP_LEN: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
pub const DISCOVER: u8 = 1;
pub const OFFER: u8 = 2;
pub const REQUEST: u8 = 3;
pub const ACK: u8 = 5;
pub const NAK: u8 = 6;
/// Lease time told to the guest (seconds). Renewals go to the router's address, which
/// answers nothing; the client then rebinds by broadcast, which this responder answers.
pub const LEASE_SECS: u32 = 86_400;

/// What the guest gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    pub router: Ipv4Addr,
    pub prefix: u8,
}

/// A client's message, from a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: u8,
    pub xid: [u8; 4],
    pub flags: [u8; 2],
    pub chaddr: [u8; 6],
    pub ciaddr: Ipv4Addr,
    pub requested: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
}

fn ip_at(b: &[u8], i: usize) -> Option<Ipv4Addr> {
    let s: [u8; 4] = b.get(i..i + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(s))
}

/// The DHCP request in an Ethernet frame, if it is one (UDP to port 67, BOOTREQUEST).
pub fn parse(frame: &[u8]) -> Option<Request> {
    if frame.get(12..14)? != ETH_P_IP.to_be_bytes() {
        return None;
    }
    let ip = frame.get(ETH_HDR..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ip.first()? >> 4 != 4 || ihl < 20 || *ip.get(9)? != 17 {
        return None;
    }
    let udp = ip.get(ihl..)?;
    if udp.get(2..4)? != 67u16.to_be_bytes() {
        return None;
    }
    let b = udp.get(8..)?;
    if b.len() < BOOTP_LEN + 4 || b[0] != 1 || b[1] != 1 || b[2] != 6 {
        return None;
    }
    if b.get(BOOTP_LEN..BOOTP_LEN + 4)? != MAGIC {
        return None;
    }
    let mut kind = None;
    let mut requested = None;
    let mut server_id = None;
    let mut i = BOOTP_LEN + 4;
    while let Some(&code) = b.get(i) {
        match code {
            0 => i += 1,
            255 => break,
            _ => {
                let len = usize::from(*b.get(i + 1)?);
                let val = b.get(i + 2..i + 2 + len)?;
                match (code, len) {
                    (53, 1) => kind = Some(val[0]),
                    (50, 4) => requested = ip_at(val, 0),
                    (54, 4) => server_id = ip_at(val, 0),
                    _ => {}
                }
                i += 2 + len;
            }
        }
    }
    Some(Request {
        kind: kind?,
        xid: b.get(4..8)?.try_into().ok()?,
        flags: b.get(10..12)?.try_into().ok()?,
        ciaddr: ip_at(b, 12)?,
        chaddr: b.get(28..34)?.try_into().ok()?,
        requested,
        server_id,
    })
}

/// The answer to `req` (`OFFER`, `ACK` or `NAK`), or `None` when it is not ours to answer.
pub fn answer(req: &Request, lease: &Lease) -> Option<u8> {
    if req.chaddr != lease.mac {
        return None;
    }
    match req.kind {
        DISCOVER => Some(OFFER),
        REQUEST => {
            if req.server_id.is_some_and(|s| s != lease.router) {
                return None; // the client chose another server
            }
            let wanted = req.requested.unwrap_or(req.ciaddr);
            Some(if wanted == lease.address { ACK } else { NAK })
        }
        _ => None,
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The reply frame: broadcast from `src_mac` (the bridge) and the router's address.
pub fn build(req: &Request, kind: u8, lease: &Lease, src_mac: [u8; 6]) -> Vec<u8> {
    let mut b = vec![0u8; BOOTP_LEN];
    b[0] = 2;
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&req.xid);
    b[10..12].copy_from_slice(&req.flags);
    if kind != NAK {
        b[16..20].copy_from_slice(&lease.address.octets());
    }
    b[28..34].copy_from_slice(&req.chaddr);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&[53, 1, kind]);
    b.extend_from_slice(&[54, 4]);
    b.extend_from_slice(&lease.router.octets());
    if kind != NAK {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(lease.prefix.min(32)))
            .unwrap_or(0);
        let bcast = u32::from(lease.address) | !mask;
        b.extend_from_slice(&[51, 4]);
        b.extend_from_slice(&LEASE_SECS.to_be_bytes());
        b.extend_from_slice(&[1, 4]);
        b.extend_from_slice(&mask.to_be_bytes());
        b.extend_from_slice(&[3, 4]);
        b.extend_from_slice(&lease.router.octets());
        b.extend_from_slice(&[28, 4]);
        b.extend_from_slice(&bcast.to_be_bytes());
    }
    b.push(255);
    b.resize(b.len().max(300), 0);

    let udp_len = 8 + b.len();
    let mut frame = Vec::with_capacity(ETH_HDR + 20 + udp_len);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
    let total = (20 + udp_len) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&lease.router.octets());
    ip[16..20].copy_from_slice(&Ipv4Addr::BROADCAST.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&67u16.to_be_bytes());
    frame.extend_from_slice(&68u16.to_be_bytes());
    frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]); // no UDP checksum (optional over IPv4)
    frame.extend_from_slice(&b);
    frame
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) mod tests {
    use super::*;

    pub fn lease() -> Lease {
        Lease {
            mac: [0x52, 0x54, 0, 1, 2, 3],
            address: Ipv4Addr::new(10, 213, 0, 2),
            router: Ipv4Addr::new(10, 213, 0, 1),
            prefix: 30,
        }
    }

    /// A client's broadcast, as udhcpc sends it.
    pub fn client_frame(kind: u8, mac: [u8; 6], requested: Option<Ipv4Addr>) -> Vec<u8> {
        let mut b = vec![0u8; BOOTP_LEN];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&[1, 2, 3, 4]);
        b[28..34].copy_from_slice(&mac);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&[53, 1, kind, 0, 61, 7, 1]);
        b.extend_from_slice(&mac);
        if let Some(r) = requested {
            b.extend_from_slice(&[50, 4]);
            b.extend_from_slice(&r.octets());
            b.extend_from_slice(&[54, 4, 10, 213, 0, 1]);
        }
        b.push(255);
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&mac);
        f.extend_from_slice(&[8, 0]);
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255,
        ];
        let total = (20 + 8 + b.len()) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&68u16.to_be_bytes());
        f.extend_from_slice(&67u16.to_be_bytes());
        f.extend_from_slice(&((8 + b.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&b);
        f
    }

    #[test]
    fn discover_offer_request_ack() {
        let l = lease();
        let d = parse(&client_frame(DISCOVER, l.mac, None)).unwrap();
        assert_eq!(d.kind, DISCOVER);
        assert_eq!(d.chaddr, l.mac);
        assert_eq!(answer(&d, &l), Some(OFFER));
        let offer = build(&d, OFFER, &l, [2, 0, 0, 0, 0, 1]);
        // The IPv4 header checksums to zero; the offer carries the address and options.
        assert_eq!(checksum(&offer[14..34]), 0);
        let bootp = &offer[42..];
        assert_eq!(bootp[0], 2);
        assert_eq!(&bootp[16..20], &[10, 213, 0, 2]);
        assert_eq!(&bootp[4..8], &[1, 2, 3, 4]);
        let opts = &bootp[240..];
        assert_eq!(&opts[..3], &[53, 1, OFFER]);
        let find = |code: u8| {
            let mut i = 0;
            while opts[i] != 255 {
                if opts[i] == code {
                    return opts[i + 2..i + 2 + usize::from(opts[i + 1])].to_vec();
                }
                i += 2 + usize::from(opts[i + 1]);
            }
            panic!("no option {code}")
        };
        assert_eq!(find(1), vec![255, 255, 255, 252]);
        assert_eq!(find(3), vec![10, 213, 0, 1]);
        assert_eq!(find(54), vec![10, 213, 0, 1]);
        assert_eq!(find(28), vec![10, 213, 0, 3]);

        let r = parse(&client_frame(REQUEST, l.mac, Some(l.address))).unwrap();
        assert_eq!(r.requested, Some(l.address));
        assert_eq!(answer(&r, &l), Some(ACK));
        let wrong = parse(&client_frame(
            REQUEST,
            l.mac,
            Some(Ipv4Addr::new(10, 0, 0, 9)),
        ))
        .unwrap();
        assert_eq!(answer(&wrong, &l), Some(NAK));
    }

    #[test]
    fn other_clients_and_other_packets_are_ignored() {
        let l = lease();
        let other = parse(&client_frame(DISCOVER, [2, 2, 2, 2, 2, 2], None)).unwrap();
        assert_eq!(answer(&other, &l), None);
        let mut not_dhcp = client_frame(DISCOVER, l.mac, None);
        not_dhcp[14 + 20 + 3] = 53; // to port 53
        assert_eq!(parse(&not_dhcp), None);
        assert_eq!(parse(&[0u8; 10]), None);
        let truncated = client_frame(DISCOVER, l.mac, None);
        assert_eq!(parse(&truncated[..200]), None);
    }
}
