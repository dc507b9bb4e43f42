//! The pure handler: a parsed request, the caller's address and `now` in, a response out.
//! The caller is identified by its source address alone; an address that is no guest of this
//! host gets a bare 404 that reveals nothing.

use super::store::{GuestInfo, MetadataStore};
use super::token::{TokenError, TokenSealer};
use crate::http::{HttpRequest, HttpResponse};
use backfill_shared::ServerId;
use ring::hmac;
use serde_json::json;
use std::net::IpAddr;
use std::time::Duration;

const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
const OPENSTACK_VERSIONS: &[&str] = &[
    "2012-08-10",
    "2013-04-04",
    "2013-10-17",
    "2015-10-15",
    "2016-06-30",
    "2016-10-06",
    "2017-02-22",
    "2018-08-27",
    "latest",
];

#[derive(Debug, Clone)]
pub struct MetadataConfig {
    /// Serve EC2 paths without a session token (IMDSv1). Off: 401 without a token.
    pub imdsv1: bool,
    /// Proxy mode: `X-Instance-ID` is believed only with a valid `X-Instance-ID-Signature`
    /// (hex HMAC-SHA256 of the id under this shared secret), as Neutron's metadata proxy sends.
    pub proxy_key: Option<hmac::Key>,
    /// The longest a long-poll waits.
    pub max_wait: Duration,
}

impl Default for MetadataConfig {
    fn default() -> MetadataConfig {
        MetadataConfig {
            imdsv1: true,
            proxy_key: None,
            max_wait: Duration::from_secs(300),
        }
    }
}

impl MetadataConfig {
    pub fn with_proxy_secret(mut self, secret: &[u8]) -> MetadataConfig {
        self.proxy_key = Some(hmac::Key::new(hmac::HMAC_SHA256, secret));
        self
    }
}

/// What the listener does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Now(HttpResponse),
    /// Record that `server`'s guest acknowledged its termination, then answer `then`
    /// (503 instead if it cannot be recorded).
    Ack {
        server: ServerId,
        then: HttpResponse,
    },
    /// A long-poll: answer the same request (without waiting) once its `ETag` differs from
    /// `etag` (the current one when the client sent none), or after `timeout`.
    Wait {
        etag: Option<String>,
        timeout: Duration,
    },
}

fn not_found() -> HttpResponse {
    HttpResponse::text(404, "Not Found")
}

fn lines(items: &[&str]) -> HttpResponse {
    HttpResponse::text(200, items.join("\n"))
}

fn iso(t: i64) -> String {
    let dt =
        time::OffsetDateTime::from_unix_timestamp(t).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    dt.format(&fmt).unwrap_or_default()
}

fn rfc1123(t: i64) -> String {
    let dt =
        time::OffsetDateTime::from_unix_timestamp(t).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    dt.format(&fmt).unwrap_or_default()
}

/// A short tag of a response body, for long-polls (`ETag`).
pub fn etag(body: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, body);
    d.as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn tagged(r: HttpResponse) -> HttpResponse {
    let tag = etag(&r.body);
    r.with_header("ETag", tag)
}

/// Who is asking: a signing proxy's `X-Instance-ID`, else the source address.
fn identify(
    store: &MetadataStore,
    cfg: &MetadataConfig,
    req: &HttpRequest,
    peer: IpAddr,
) -> Result<std::sync::Arc<GuestInfo>, HttpResponse> {
    if let (Some(key), Some(id)) = (&cfg.proxy_key, req.header("X-Instance-ID")) {
        let sig = req
            .header("X-Instance-ID-Signature")
            .and_then(super::token::unhex)
            .unwrap_or_default();
        if hmac::verify(key, id.as_bytes(), &sig).is_err() {
            return Err(HttpResponse::text(403, "Forbidden"));
        }
        let id: ServerId = id.parse().map_err(|_| not_found())?;
        return store.by_id(&id).map(|(g, _)| g).ok_or_else(not_found);
    }
    store
        .by_address(&peer)
        .map(|(g, _)| g)
        .ok_or_else(not_found)
}

/// `may_wait`: false when the listener re-asks after (or instead of) a long-poll wait.
pub fn handle(
    store: &MetadataStore,
    tokens: &TokenSealer,
    cfg: &MetadataConfig,
    req: &HttpRequest,
    peer: IpAddr,
    now: i64,
    may_wait: bool,
) -> Reply {
    if req.path.split('/').any(|c| c == "..") {
        return Reply::Now(not_found());
    }
    let guest = match identify(store, cfg, req, peer) {
        Ok(g) => g,
        Err(r) => return Reply::Now(r),
    };
    let path = req.path.as_str();
    let wait = |flag: &str, tag: &str| {
        (may_wait && req.query.get(flag).is_some_and(|v| v == "true")).then(|| Reply::Wait {
            etag: req.query.get(tag).cloned(),
            timeout: req
                .query
                .get("timeout_sec")
                .and_then(|t| t.parse::<u64>().ok())
                .map(Duration::from_secs)
                .map_or(cfg.max_wait, |t| t.min(cfg.max_wait)),
        })
    };
    if req.method == "PUT" && path == "/latest/api/token" {
        return Reply::Now(token(tokens, req, peer, now));
    }
    if req.method == "POST" && path == "/backfill/v1/acknowledge" {
        return acknowledge(&guest);
    }
    if req.method == "POST" && path == "/metadata/scheduledevents" {
        return azure_start(&guest, req);
    }
    if req.method != "GET" {
        return Reply::Now(HttpResponse::text(405, "Method Not Allowed"));
    }
    if let Some(rest) = path.strip_prefix("/openstack") {
        return Reply::Now(openstack(&guest, rest));
    }
    if let Some(rest) = path.strip_prefix("/latest/") {
        if let Err(r) = ec2_auth(tokens, cfg, req, peer, now) {
            return Reply::Now(r);
        }
        return Reply::Now(ec2(&guest, rest, now));
    }
    if let Some(rest) = path.strip_prefix("/computeMetadata/v1/") {
        if req.header("Metadata-Flavor") != Some("Google") {
            return Reply::Now(HttpResponse::text(
                403,
                "Missing Metadata-Flavor:Google header.",
            ));
        }
        if let Some(w) = wait("wait_for_change", "last_etag") {
            return w;
        }
        return Reply::Now(tagged(gce(&guest, rest)).with_header("Metadata-Flavor", "Google"));
    }
    if path == "/metadata/scheduledevents" {
        return Reply::Now(azure(&guest, req));
    }
    if path == "/backfill/v1/" || path == "/backfill/v1" {
        if let Some(w) = wait("wait", "etag") {
            return w;
        }
        return Reply::Now(tagged(ours(&guest)));
    }
    Reply::Now(not_found())
}

/// Our acknowledgement: the guest is done and gives its capacity back before the deadline.
fn acknowledge(g: &GuestInfo) -> Reply {
    if g.termination.is_none() {
        return Reply::Now(HttpResponse::json(
            409,
            &json!({"error": "no termination is scheduled for this server; nothing to acknowledge"}),
        ));
    }
    Reply::Ack {
        server: g.server,
        then: HttpResponse::json(
            202,
            &json!({"acknowledged": true, "uuid": g.server.to_string()}),
        ),
    }
}

/// Azure: `POST /metadata/scheduledevents` with `{"StartRequests": [{"EventId": ...}]}`.
fn azure_start(g: &GuestInfo, req: &HttpRequest) -> Reply {
    if req.header("Metadata") != Some("true") {
        return Reply::Now(azure_missing_header());
    }
    let bad = |m: &str| Reply::Now(HttpResponse::json(400, &json!({"error": m})));
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&req.body) else {
        return bad("the body must be {\"StartRequests\": [{\"EventId\": \"...\"}]}");
    };
    let Some(requests) = body.get("StartRequests").and_then(|v| v.as_array()) else {
        return bad("the body must be {\"StartRequests\": [{\"EventId\": \"...\"}]}");
    };
    let ours = g.server.to_string();
    let mut acked = false;
    for r in requests {
        match r.get("EventId").and_then(|e| e.as_str()) {
            Some(id) if id == ours && g.termination.is_some() => acked = true,
            _ => return bad("unknown EventId"),
        }
    }
    if !acked {
        return Reply::Now(HttpResponse::new(200, "application/json", ""));
    }
    Reply::Ack {
        server: g.server,
        then: HttpResponse::new(200, "application/json", ""),
    }
}

fn azure_missing_header() -> HttpResponse {
    HttpResponse::json(
        400,
        &json!({"error": "Bad request. Required metadata header not specified"}),
    )
}

/// IMDSv2: `PUT /latest/api/token`. Refused behind a forwarding proxy (SSRF defence).
fn token(tokens: &TokenSealer, req: &HttpRequest, peer: IpAddr, now: i64) -> HttpResponse {
    if req.header("X-Forwarded-For").is_some() {
        return HttpResponse::text(403, "Forbidden");
    }
    let ttl = req
        .header(TTL_HEADER)
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or(TokenError::BadTtl)
        .and_then(|ttl| tokens.issue(&peer, ttl, now).map(|t| (t, ttl)));
    match ttl {
        Ok((t, ttl)) => HttpResponse::text(200, t).with_header(TTL_HEADER, ttl.to_string()),
        Err(e) => HttpResponse::text(400, e.to_string()),
    }
}

fn ec2_auth(
    tokens: &TokenSealer,
    cfg: &MetadataConfig,
    req: &HttpRequest,
    peer: IpAddr,
    now: i64,
) -> Result<(), HttpResponse> {
    match req.header(TOKEN_HEADER) {
        Some(t) => tokens
            .verify(t, &peer, now)
            .map_err(|_| HttpResponse::text(401, "Unauthorized")),
        None if cfg.imdsv1 => Ok(()),
        None => Err(HttpResponse::text(401, "Unauthorized")),
    }
}

fn openstack(g: &GuestInfo, rest: &str) -> HttpResponse {
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() {
        return lines(OPENSTACK_VERSIONS);
    }
    let (version, leaf) = rest.split_once('/').unwrap_or((rest, ""));
    if !OPENSTACK_VERSIONS.contains(&version) {
        return not_found();
    }
    match leaf {
        "" => {
            let mut items = vec!["meta_data.json", "network_data.json", "vendor_data.json"];
            if g.user_data.is_some() {
                items.push("user_data");
            }
            lines(&items)
        }
        "meta_data.json" => {
            // Like every Nova meta value, the termination times are strings.
            let mut meta = g.meta.clone();
            if let Some(t) = g.termination {
                meta.insert(
                    "cloud_termination_scheduled_event_time".into(),
                    t.scheduled_at.to_string(),
                );
                meta.insert("cloud_termination_time".into(), t.terminate_at.to_string());
            }
            HttpResponse::json(
                200,
                &json!({
                    "uuid": g.server.to_string(),
                    "name": g.name,
                    "hostname": g.hostname,
                    "availability_zone": g.availability_zone,
                    "project_id": g.project_id,
                    "launch_index": 0,
                    "meta": meta,
                    "public_keys": {},
                    "devices": [],
                }),
            )
        }
        "network_data.json" => HttpResponse::json(200, &network_data(g)),
        "vendor_data.json" => HttpResponse::json(200, &json!({})),
        "user_data" => match &g.user_data {
            Some(u) => HttpResponse::new(200, "application/octet-stream", u.clone()),
            None => not_found(),
        },
        _ => not_found(),
    }
}

/// OpenStack's `network_data.json`: the guest's one link, as cloud-init reads it.
fn network_data(g: &GuestInfo) -> serde_json::Value {
    let (Some(ip), Some(gw)) = (g.local_ipv4, g.gateway) else {
        return json!({"links": [], "networks": [], "services": []});
    };
    json!({
        // "vif": a link type cloud-init knows (it warns about others, such as "veth").
        "links": [{"id": "eth0", "name": "eth0", "type": "vif", "mtu": 1500,
                   "ethernet_mac_address": null}],
        "networks": [{
            "id": "network0",
            "link": "eth0",
            "type": "ipv4",
            "ip_address": ip.to_string(),
            "netmask": "255.255.255.252",
            "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": gw.to_string()}],
            "network_id": format!("backfill-{}", g.server),
        }],
        "services": [],
    })
}

fn ec2(g: &GuestInfo, rest: &str, now: i64) -> HttpResponse {
    let leaf = rest
        .strip_prefix("meta-data")
        .map(|l| l.trim_start_matches('/'));
    let Some(leaf) = leaf else {
        return not_found();
    };
    let instance_action = g
        .termination
        .map(|t| json!({"action": "terminate", "time": iso(t.terminate_at)}));
    match leaf.trim_end_matches('/') {
        "" => {
            let mut items = vec![
                "hostname",
                "instance-id",
                "instance-type",
                "local-hostname",
                "local-ipv4",
                "placement/",
            ];
            if g.termination.is_some() {
                items.push("spot/");
            }
            if g.at_risk() {
                items.push("events/");
            }
            lines(&items)
        }
        "instance-id" => HttpResponse::text(200, g.server.to_string()),
        "instance-type" => HttpResponse::text(200, g.instance_type.clone()),
        "hostname" | "local-hostname" => HttpResponse::text(200, g.hostname.clone()),
        "local-ipv4" => match g.local_ipv4 {
            Some(ip) => HttpResponse::text(200, ip.to_string()),
            None => not_found(),
        },
        "placement" => lines(&["availability-zone"]),
        "placement/availability-zone" => HttpResponse::text(200, g.availability_zone.clone()),
        "spot" if g.termination.is_some() => lines(&["instance-action", "termination-time"]),
        "spot/instance-action" => match instance_action {
            Some(a) => HttpResponse::json(200, &a),
            None => not_found(),
        },
        "spot/termination-time" => match g.termination {
            Some(t) => HttpResponse::text(200, iso(t.terminate_at)),
            None => not_found(),
        },
        "events" if g.at_risk() => lines(&["recommendations/"]),
        "events/recommendations" if g.at_risk() => lines(&["rebalance"]),
        "events/recommendations/rebalance" if g.at_risk() => {
            let at = g.termination.map(|t| t.scheduled_at).unwrap_or(now);
            HttpResponse::json(200, &json!({"noticeTime": iso(at)}))
        }
        _ => not_found(),
    }
}

fn gce(g: &GuestInfo, rest: &str) -> HttpResponse {
    match rest.trim_end_matches('/') {
        "instance/preempted" => HttpResponse::text(
            200,
            if g.termination.is_some() {
                "TRUE"
            } else {
                "FALSE"
            },
        ),
        "instance/id" => HttpResponse::text(200, g.server.to_string()),
        "instance/name" => HttpResponse::text(200, g.name.clone()),
        "instance/hostname" => HttpResponse::text(200, g.hostname.clone()),
        "instance/maintenance-event" => HttpResponse::text(
            200,
            if g.termination.is_some() {
                "TERMINATE_ON_HOST_MAINTENANCE"
            } else {
                "NONE"
            },
        ),
        _ => not_found(),
    }
}

fn azure(g: &GuestInfo, req: &HttpRequest) -> HttpResponse {
    if req.header("Metadata") != Some("true") {
        return azure_missing_header();
    }
    let events = match g.termination {
        Some(t) => json!([{
            "EventId": g.server.to_string(),
            "EventStatus": if g.acknowledged { "Started" } else { "Scheduled" },
            "EventType": "Preempt",
            "ResourceType": "VirtualMachine",
            "Resources": [g.name],
            "NotBefore": rfc1123(t.terminate_at),
            "Description": "The server is being preempted to make room for guaranteed work.",
            "EventSource": "Platform",
            "DurationInSeconds": -1,
        }]),
        None => json!([]),
    };
    let incarnation = g
        .termination
        .map(|t| t.scheduled_at + i64::from(g.acknowledged))
        .unwrap_or(0);
    HttpResponse::json(
        200,
        &json!({"DocumentIncarnation": incarnation, "Events": events}),
    )
}

fn ours(g: &GuestInfo) -> HttpResponse {
    HttpResponse::json(
        200,
        &json!({
            "uuid": g.server.to_string(),
            "name": g.name,
            "hostname": g.hostname,
            "class": g.class.as_str(),
            "instance_type": g.instance_type,
            "perf_factor": {"cpu": g.perf_factor.cpu, "mem": g.perf_factor.mem},
            "limits": {
                "cpu_quota_us": g.cpu_quota_us,
                "cpu_period_us": g.cpu_period_us,
                "mem_limit_bytes": g.mem_limit_bytes,
            },
            "termination": g.termination.map(|t| json!({
                "scheduled_at": t.scheduled_at,
                "terminate_at": t.terminate_at,
                "scheduled_at_iso": iso(t.scheduled_at),
                "terminate_at_iso": iso(t.terminate_at),
            })),
            "acknowledged": g.acknowledged,
        }),
    )
}
