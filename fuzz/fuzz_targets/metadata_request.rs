//! The metadata service's request path, as its listener drives it, minus the socket: raw bytes
//! from a guest (several pipelined requests), `request_len` to cut them, `parse_request`, the
//! pure `handle` (a long-poll answered at once, as when its wait ends), and the response on
//! the wire. Nothing may panic, and:
//! - an address that is no guest learns nothing (404; 403 for an unsigned proxy header);
//! - a guest never sees another guest's identity, nor acknowledges for another server;
//! - statuses are ones the service means to send; no header carries CR or LF;
//! - the response on the wire is one well-formed HTTP/1.1 response whose Content-Length is
//!   its body's length.
#![no_main]

use backfill_agent::metadata::{
    GuestInfo, HttpResponse, MetadataConfig, MetadataStore, Reply, TokenSealer, handle,
    parse_request, request_len,
};
use backfill_shared::{PerfFactor, ServerClass, ServerId, Termination};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use std::sync::LazyLock;

const A: [u8; 4] = [10, 77, 0, 2];
const B: [u8; 4] = [10, 77, 0, 3];
const STRANGER: [u8; 4] = [10, 77, 0, 9];
/// The clock the fuzzer's requests see (tokens in the seeds are issued at this time).
const NOW: i64 = 1_700_000_000;

fn guest(n: u128, ip: [u8; 4], terminating: bool) -> GuestInfo {
    GuestInfo {
        server: ServerId::from_u128(n),
        name: format!("guest-name-{n}"),
        hostname: format!("guest-host-{n}"),
        availability_zone: "zone-a".into(),
        project_id: format!("project-{n}"),
        class: ServerClass::Spot,
        instance_type: "backfill-c2m4".into(),
        local_ipv4: Some(IpAddr::from(ip)),
        gateway: Some(IpAddr::from([10, 77, 0, 1])),
        meta: [("role".to_string(), format!("meta-value-{n}"))].into(),
        perf_factor: if terminating {
            PerfFactor { cpu: 0.5, mem: 1.0 }
        } else {
            PerfFactor::FULL
        },
        cpu_quota_us: Some(200_000),
        cpu_period_us: 100_000,
        mem_limit_bytes: Some(1 << 30),
        termination: terminating.then_some(Termination {
            scheduled_at: NOW - 60,
            terminate_at: NOW + 600,
        }),
        acknowledged: false,
        user_data: Some(format!("#!/bin/sh\necho user-data-{n}\n")),
    }
}

struct World {
    store: MetadataStore,
    tokens: TokenSealer,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let store = MetadataStore::default();
    store.put(guest(1, A, true));
    store.put(guest(2, B, false));
    World {
        store,
        tokens: TokenSealer::with_key(b"fuzz"),
    }
});

/// What only guest `n` may be told.
fn secrets(n: u128) -> [String; 5] {
    [
        ServerId::from_u128(n).to_string(),
        format!("guest-name-{n}"),
        format!("project-{n}"),
        format!("meta-value-{n}"),
        format!("user-data-{n}"),
    ]
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Who the service should take the caller for: guest `n`, a stranger, or (a signing proxy's
/// `X-Instance-ID` in proxy mode) whoever the header names if its signature holds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Caller {
    Guest(u128),
    Stranger,
    ProxyClaim,
}

fn check_response(r: &HttpResponse, who: Caller) {
    assert!(
        [200, 202, 400, 401, 403, 404, 405, 409].contains(&r.status),
        "unexpected status {}",
        r.status
    );
    for (n, v) in &r.headers {
        assert!(
            !n.contains(['\r', '\n']) && !v.contains(['\r', '\n']),
            "a header carries CR/LF: {n:?}: {v:?}"
        );
    }
    match who {
        Caller::Stranger => assert_eq!(r.status, 404, "a stranger got an answer"),
        Caller::ProxyClaim => {}
        Caller::Guest(me) => {
            let other = 3 - me;
            for s in secrets(other) {
                assert!(
                    !contains(&r.body, &s),
                    "guest {me} was told guest {other}'s {s:?}"
                );
            }
        }
    }
    for keep_alive in [false, true] {
        let wire = r.to_bytes(keep_alive);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(&wire) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("the response on the wire does not parse: {other:?}"),
        };
        assert_eq!(resp.code, Some(r.status));
        let len = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok());
        assert_eq!(
            len,
            Some(wire.len() - head),
            "Content-Length is not the body's length"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // First byte: who asks (bits 0-1) and how the service is configured (bits 2-3).
    let Some((&knobs, mut raw)) = data.split_first() else {
        return;
    };
    let (peer, by_address) = match knobs & 3 {
        0 => (A, Caller::Guest(1)),
        1 => (B, Caller::Guest(2)),
        _ => (STRANGER, Caller::Stranger),
    };
    let peer = IpAddr::from(peer);
    let mut cfg = MetadataConfig {
        imdsv1: knobs & 4 == 0,
        ..MetadataConfig::default()
    };
    let proxy = knobs & 8 != 0;
    if proxy {
        cfg = cfg.with_proxy_secret(b"fuzz-proxy");
    }
    let w = &*WORLD;
    // Pipelined requests, as the listener reads them from one connection.
    loop {
        let len = match request_len(raw) {
            Ok(Some(n)) => n,
            Ok(None) | Err(_) => return,
        };
        assert!(len > 0 && len <= raw.len());
        let (one, rest) = raw.split_at(len);
        raw = rest;
        let Some(req) = parse_request(one) else {
            return;
        };
        let who = if proxy && req.header("X-Instance-ID").is_some() {
            Caller::ProxyClaim
        } else {
            by_address
        };
        let _ = req.keep_alive();
        let _ = backfill_agent::admin::metadata_format(&req.path);
        let r = match handle(&w.store, &w.tokens, &cfg, &req, peer, NOW, true) {
            Reply::Now(r) => r,
            Reply::Ack { server, then } => {
                if let Caller::Guest(me) = who {
                    assert_eq!(
                        server,
                        ServerId::from_u128(me),
                        "an acknowledgement for another server"
                    );
                } else {
                    assert_eq!(who, Caller::ProxyClaim, "a stranger acknowledged");
                }
                then
            }
            Reply::Wait { .. } => match handle(&w.store, &w.tokens, &cfg, &req, peer, NOW, false) {
                Reply::Now(r) => r,
                other => panic!("a re-asked long-poll did not answer at once: {other:?}"),
            },
        };
        check_response(&r, who);
    }
});
