//! The pure handler, from raw HTTP requests.

use super::*;
use backfill_shared::{PerfFactor, ServerClass, ServerId, Termination};
use std::net::IpAddr;

const A: &str = "10.77.0.2";
const B: &str = "10.77.0.3";

fn guest(n: u128, ip: &str) -> GuestInfo {
    GuestInfo {
        server: ServerId::from_u128(n),
        name: format!("guest-{n}"),
        hostname: format!("guest-{n}"),
        availability_zone: "zone-a".into(),
        project_id: "tenant".into(),
        class: ServerClass::Spot,
        instance_type: "backfill-c2m4".into(),
        local_ipv4: Some(ip.parse().unwrap()),
        gateway: None,
        meta: [("role".to_string(), "batch".to_string())].into(),
        perf_factor: PerfFactor::FULL,
        cpu_quota_us: Some(200_000),
        cpu_period_us: 100_000,
        mem_limit_bytes: Some(1 << 30),
        termination: None,
        acknowledged: false,
        user_data: None,
    }
}

struct World {
    store: MetadataStore,
    tokens: TokenSealer,
    cfg: MetadataConfig,
}

fn world() -> World {
    let store = MetadataStore::default();
    store.put(guest(1, A));
    store.put(guest(2, B));
    World {
        store,
        tokens: TokenSealer::with_key(b"test"),
        cfg: MetadataConfig::default(),
    }
}

fn reply(w: &World, from: &str, raw: &str, now: i64) -> Reply {
    let req = parse_request(raw.as_bytes()).expect("a valid request");
    let peer: IpAddr = from.parse().unwrap();
    handle(&w.store, &w.tokens, &w.cfg, &req, peer, now, true)
}

fn ask(w: &World, from: &str, raw: &str, now: i64) -> HttpResponse {
    match reply(w, from, raw, now) {
        Reply::Now(r) => r,
        other => panic!("expected an immediate answer, got {other:?}"),
    }
}

fn get(w: &World, from: &str, path: &str) -> HttpResponse {
    ask(
        w,
        from,
        &format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"),
        1_000,
    )
}

fn body(r: &HttpResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn json(r: &HttpResponse) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap()
}

fn schedule(w: &World, n: u128, ip: &str) {
    let mut g = guest(n, ip);
    g.termination = Some(Termination {
        scheduled_at: 1_000,
        terminate_at: 1_900,
    });
    w.store.put(g);
}

#[test]
fn a_guest_sees_only_itself_and_strangers_see_nothing() {
    let w = world();
    let a = json(&get(&w, A, "/openstack/latest/meta_data.json"));
    assert_eq!(a["uuid"], ServerId::from_u128(1).to_string());
    let b = json(&get(&w, B, "/openstack/latest/meta_data.json"));
    assert_eq!(b["uuid"], ServerId::from_u128(2).to_string());
    let stranger = get(&w, "10.77.0.99", "/openstack/latest/meta_data.json");
    assert_eq!(
        (stranger.status, body(&stranger)),
        (404, "Not Found".to_string())
    );
    assert_eq!(get(&w, A, "/openstack/../../etc/passwd").status, 404);
}

#[test]
fn openstack_shapes_and_termination_keys_as_strings() {
    let w = world();
    assert!(body(&get(&w, A, "/openstack")).contains("latest"));
    assert!(body(&get(&w, A, "/openstack/2013-04-04/")).contains("meta_data.json"));
    assert_eq!(
        get(&w, A, "/openstack/1999-01-01/meta_data.json").status,
        404
    );
    let m = json(&get(&w, A, "/openstack/latest/meta_data.json"));
    for k in [
        "uuid",
        "name",
        "hostname",
        "availability_zone",
        "project_id",
        "launch_index",
        "meta",
        "public_keys",
        "devices",
    ] {
        assert!(m.get(k).is_some(), "{k}");
    }
    assert!(m["meta"].get("cloud_termination_time").is_none());
    schedule(&w, 1, A);
    let m = json(&get(&w, A, "/openstack/latest/meta_data.json"));
    assert_eq!(m["meta"]["cloud_termination_scheduled_event_time"], "1000");
    assert_eq!(m["meta"]["cloud_termination_time"], "1900");
    assert_eq!(m["meta"]["role"], "batch");
    assert_eq!(
        json(&get(&w, A, "/openstack/latest/vendor_data.json")),
        serde_json::json!({})
    );
    assert_eq!(
        json(&get(&w, A, "/openstack/latest/network_data.json"))["networks"],
        serde_json::json!([])
    );
    let mut g = guest(1, A);
    g.gateway = Some("10.77.0.1".parse().unwrap());
    w.store.put(g);
    let n = json(&get(&w, A, "/openstack/latest/network_data.json"));
    assert_eq!(n["networks"][0]["ip_address"], A);
    assert_eq!(n["networks"][0]["routes"][0]["gateway"], "10.77.0.1");
    // A link type among cloud-init's physical ones, named as the guest sees it.
    assert_eq!(n["links"][0]["type"], "vif");
    assert_eq!(n["links"][0]["name"], "eth0");
    assert_eq!(get(&w, A, "/openstack/latest/user_data").status, 404);
}

#[test]
fn ec2_leaves_spot_action_and_rebalance() {
    let w = world();
    assert_eq!(
        body(&get(&w, A, "/latest/meta-data/instance-id")),
        ServerId::from_u128(1).to_string()
    );
    assert_eq!(body(&get(&w, A, "/latest/meta-data/local-ipv4")), A);
    assert_eq!(
        body(&get(&w, A, "/latest/meta-data/placement/availability-zone")),
        "zone-a"
    );
    assert_eq!(
        get(&w, A, "/latest/meta-data/spot/instance-action").status,
        404
    );
    assert_eq!(
        get(&w, A, "/latest/meta-data/events/recommendations/rebalance").status,
        404
    );
    schedule(&w, 1, A);
    let action = json(&get(&w, A, "/latest/meta-data/spot/instance-action"));
    assert_eq!(
        action,
        serde_json::json!({"action": "terminate", "time": "1970-01-01T00:31:40Z"})
    );
    assert_eq!(
        body(&get(&w, A, "/latest/meta-data/spot/termination-time")),
        "1970-01-01T00:31:40Z"
    );
    assert!(
        json(&get(
            &w,
            A,
            "/latest/meta-data/events/recommendations/rebalance"
        ))["noticeTime"]
            .is_string()
    );
    assert!(body(&get(&w, A, "/latest/meta-data/")).contains("spot/"));
    // The other guest is not affected.
    assert_eq!(
        get(&w, B, "/latest/meta-data/spot/instance-action").status,
        404
    );
}

#[test]
fn imdsv2_tokens() {
    let mut w = world();
    let put = |w: &World, ttl: Option<&str>, extra: &str, now| {
        let ttl = ttl
            .map(|t| format!("X-aws-ec2-metadata-token-ttl-seconds: {t}\r\n"))
            .unwrap_or_default();
        ask(
            w,
            A,
            &format!("PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n{ttl}{extra}\r\n"),
            now,
        )
    };
    let r = put(&w, Some("60"), "", 1_000);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-aws-ec2-metadata-token-ttl-seconds"), Some("60"));
    let token = body(&r);
    for bad in [None, Some("0"), Some("21601"), Some("abc")] {
        assert_eq!(put(&w, bad, "", 1_000).status, 400, "{bad:?}");
    }
    assert_eq!(
        put(&w, Some("60"), "X-Forwarded-For: 1.2.3.4\r\n", 1_000).status,
        403
    );
    let with = |w: &World, t: &str, from: &str, now| {
        ask(
            w,
            from,
            &format!(
                "GET /latest/meta-data/instance-id HTTP/1.1\r\nX-aws-ec2-metadata-token: {t}\r\n\r\n"
            ),
            now,
        )
    };
    assert_eq!(with(&w, &token, A, 1_059).status, 200);
    assert_eq!(with(&w, &token, A, 1_060).status, 401, "expired");
    assert_eq!(
        with(&w, &token, B, 1_000).status,
        401,
        "another guest's token"
    );
    assert_eq!(with(&w, "garbage", A, 1_000).status, 401);
    // IMDSv1 refused by configuration.
    w.cfg.imdsv1 = false;
    assert_eq!(get(&w, A, "/latest/meta-data/instance-id").status, 401);
    assert_eq!(with(&w, &token, A, 1_000).status, 200);
}

#[test]
fn gce_needs_its_header_and_says_preempted() {
    let w = world();
    assert_eq!(
        get(&w, A, "/computeMetadata/v1/instance/preempted").status,
        403
    );
    let g = |w: &World| {
        ask(
            w,
            A,
            "GET /computeMetadata/v1/instance/preempted HTTP/1.1\r\nMetadata-Flavor: Google\r\n\r\n",
            1_000,
        )
    };
    let r = g(&w);
    assert_eq!((r.status, body(&r)), (200, "FALSE".to_string()));
    assert_eq!(r.header("Metadata-Flavor"), Some("Google"));
    schedule(&w, 1, A);
    assert_eq!(body(&g(&w)), "TRUE");
}

#[test]
fn azure_scheduled_events() {
    let w = world();
    assert_eq!(
        get(&w, A, "/metadata/scheduledevents?api-version=2020-07-01").status,
        400
    );
    let az = |w: &World| {
        json(&ask(
            w,
            A,
            "GET /metadata/scheduledevents?api-version=2020-07-01 HTTP/1.1\r\nMetadata: true\r\n\r\n",
            1_000,
        ))
    };
    assert_eq!(az(&w)["Events"], serde_json::json!([]));
    schedule(&w, 1, A);
    let e = az(&w);
    assert_eq!(e["Events"][0]["EventType"], "Preempt");
    assert_eq!(e["Events"][0]["NotBefore"], "Thu, 01 Jan 1970 00:31:40 GMT");
    assert_eq!(e["DocumentIncarnation"], 1_000);
}

#[test]
fn our_own_document_and_garbage() {
    let w = world();
    let d = json(&get(&w, A, "/backfill/v1/"));
    assert_eq!(d["class"], "spot");
    assert_eq!(d["perf_factor"]["cpu"], 1.0);
    assert!(parse_request(b"\x00\x01garbage").is_none());
    assert!(parse_request(&vec![b'a'; 20_000]).is_none());
    assert_eq!(
        ask(&w, A, "DELETE /backfill/v1/ HTTP/1.1\r\n\r\n", 1_000).status,
        405
    );
}

#[test]
fn acknowledgements_ours_and_azure() {
    let w = world();
    let post = |w: &World, raw: &str| reply(w, A, raw, 1_000);
    // Nothing scheduled: nothing to acknowledge.
    let Reply::Now(r) = post(&w, "POST /backfill/v1/acknowledge HTTP/1.1\r\n\r\n") else {
        panic!("expected 409");
    };
    assert_eq!(r.status, 409);
    schedule(&w, 1, A);
    match post(&w, "POST /backfill/v1/acknowledge HTTP/1.1\r\n\r\n") {
        Reply::Ack { server, then } => {
            assert_eq!(server, ServerId::from_u128(1));
            assert_eq!(then.status, 202);
        }
        other => panic!("{other:?}"),
    }
    let id = ServerId::from_u128(1);
    let body = format!("{{\"StartRequests\": [{{\"EventId\": \"{id}\"}}]}}");
    let raw = |hdr: &str, body: &str| {
        format!(
            "POST /metadata/scheduledevents?api-version=2020-07-01 HTTP/1.1\r\n{hdr}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    assert!(matches!(post(&w, &raw("", &body)), Reply::Now(r) if r.status == 400));
    assert!(matches!(
        post(&w, &raw("Metadata: true\r\n", &body)),
        Reply::Ack { server, .. } if server == id
    ));
    let other = format!(
        "{{\"StartRequests\": [{{\"EventId\": \"{}\"}}]}}",
        ServerId::from_u128(2)
    );
    assert!(
        matches!(post(&w, &raw("Metadata: true\r\n", &other)), Reply::Now(r) if r.status == 400)
    );
    assert!(
        matches!(post(&w, &raw("Metadata: true\r\n", "nonsense")), Reply::Now(r) if r.status == 400)
    );
    // Once recorded, Azure shows the event as started.
    let mut g = guest(1, A);
    g.termination = Some(Termination {
        scheduled_at: 1_000,
        terminate_at: 1_900,
    });
    g.acknowledged = true;
    w.store.put(g);
    let e = json(&get_with(
        &w,
        A,
        "/metadata/scheduledevents?api-version=2020-07-01",
        "Metadata: true\r\n",
    ));
    assert_eq!(e["Events"][0]["EventStatus"], "Started");
    assert_eq!(json(&get(&w, A, "/backfill/v1/"))["acknowledged"], true);
}

fn get_with(w: &World, from: &str, path: &str, headers: &str) -> HttpResponse {
    ask(
        w,
        from,
        &format!("GET {path} HTTP/1.1\r\n{headers}\r\n"),
        1_000,
    )
}

#[test]
fn long_polls_ask_the_listener_to_wait() {
    let w = world();
    let gce = "/computeMetadata/v1/instance/preempted?wait_for_change=true&timeout_sec=5";
    match reply(
        &w,
        A,
        &format!("GET {gce} HTTP/1.1\r\nMetadata-Flavor: Google\r\n\r\n"),
        1_000,
    ) {
        Reply::Wait { etag, timeout } => {
            assert_eq!(etag, None);
            assert_eq!(timeout, std::time::Duration::from_secs(5));
        }
        other => panic!("{other:?}"),
    }
    // Without the header the wait is refused first.
    assert!(
        matches!(reply(&w, A, &format!("GET {gce} HTTP/1.1\r\n\r\n"), 1_000), Reply::Now(r) if r.status == 403)
    );
    match reply(
        &w,
        A,
        "GET /backfill/v1/?wait=true&etag=abc&timeout_sec=99999 HTTP/1.1\r\n\r\n",
        1_000,
    ) {
        Reply::Wait { etag, timeout } => {
            assert_eq!(etag.as_deref(), Some("abc"));
            assert_eq!(timeout, w.cfg.max_wait, "capped");
        }
        other => panic!("{other:?}"),
    }
    // The plain answers carry the ETag a client sends back.
    let r = get(&w, A, "/backfill/v1/");
    assert_eq!(r.header("ETag"), Some(etag(&r.body).as_str()));
    // A stranger's long-poll gets the same 404 as anything else.
    assert!(
        matches!(reply(&w, "10.9.9.9", "GET /backfill/v1/?wait=true HTTP/1.1\r\n\r\n", 1_000), Reply::Now(r) if r.status == 404)
    );
}

#[test]
fn proxy_mode_believes_only_signed_instance_ids() {
    let mut w = world();
    let id = ServerId::from_u128(2);
    let secret = b"a-long-shared-proxy-secret";
    let sig = {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        ring::hmac::sign(&key, id.to_string().as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let via_proxy = |w: &World, sig: &str| {
        ask(
            w,
            "192.0.2.50",
            &format!(
                "GET /openstack/latest/meta_data.json HTTP/1.1\r\nX-Instance-ID: {id}\r\nX-Instance-ID-Signature: {sig}\r\n\r\n"
            ),
            1_000,
        )
    };
    // Proxy mode off: the header means nothing and the proxy's address is nobody.
    assert_eq!(via_proxy(&w, &sig).status, 404);
    w.cfg = MetadataConfig::default().with_proxy_secret(secret);
    let r = via_proxy(&w, &sig);
    assert_eq!(r.status, 200);
    assert_eq!(json(&r)["uuid"], id.to_string());
    assert_eq!(via_proxy(&w, "00ff").status, 403);
    assert_eq!(via_proxy(&w, "").status, 403);
    // Guest A cannot claim to be B without the secret.
    let r = ask(
        &w,
        A,
        &format!("GET /openstack/latest/meta_data.json HTTP/1.1\r\nX-Instance-ID: {id}\r\n\r\n"),
        1_000,
    );
    assert_eq!(r.status, 403);
}

#[test]
fn request_framing_is_bounded() {
    assert_eq!(request_len(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
    let full = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next";
    assert_eq!(request_len(full), Ok(Some(27)));
    let post = b"POST /x HTTP/1.1\r\nContent-Length: 4\r\n\r\nab";
    assert_eq!(request_len(post), Ok(None));
    assert_eq!(
        request_len(b"POST /x HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd"),
        Ok(Some(43))
    );
    assert!(request_len(b"POST /x HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n").is_err());
    assert!(request_len(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
    assert!(request_len(b"\x00\x01\x02 nonsense\r\n\r\n").is_err());
    assert!(request_len(&vec![b'a'; 20_000]).is_err());
    let r = parse_request(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(!r.keep_alive());
    let r = parse_request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    assert!(!r.keep_alive());
    assert!(
        parse_request(b"GET / HTTP/1.1\r\n\r\n")
            .unwrap()
            .keep_alive()
    );
    let wire = HttpResponse::text(429, "slow down").to_bytes(true);
    let text = String::from_utf8(wire).unwrap();
    assert!(text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
    assert!(text.contains("Content-Length: 9\r\n"));
    assert!(text.ends_with("\r\n\r\nslow down"));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

    /// No input a guest can send makes the parser or the handler panic.
    #[test]
    fn any_bytes_are_answered_without_panic(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        let _ = request_len(&raw);
        if let Some(req) = parse_request(&raw) {
            let w = world();
            let _ = handle(&w.store, &w.tokens, &w.cfg, &req, A.parse().unwrap(), 1_000, true);
        }
    }

    /// Nor does any path or header value on a well-formed request.
    #[test]
    fn any_path_and_headers_are_answered_without_panic(
        method in "(GET|PUT|POST|DELETE)",
        path in "/[a-zA-Z0-9_./?&=%-]{0,80}",
        header in "(X-Instance-ID|Metadata|Metadata-Flavor|X-aws-ec2-metadata-token|X-aws-ec2-metadata-token-ttl-seconds)",
        value in "[ -~]{0,40}",
    ) {
        let mut w = world();
        w.cfg = MetadataConfig::default().with_proxy_secret(b"a-long-shared-proxy-secret");
        let raw = format!("{method} {path} HTTP/1.1\r\n{header}: {value}\r\nContent-Length: 0\r\n\r\n");
        if let Some(req) = parse_request(raw.as_bytes()) {
            let _ = handle(&w.store, &w.tokens, &w.cfg, &req, A.parse().unwrap(), 1_000, true);
        }
    }
}
