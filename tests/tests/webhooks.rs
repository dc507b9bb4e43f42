//! Webhooks end to end with real HTTP receivers on loopback: a scheduled termination reaches
//! the tenant's receiver signed, a receiver that fails first still gets it (one request per
//! attempt, the same event id) until it acknowledges, another tenant's receiver gets nothing,
//! and an event committed before a SIGKILL is delivered after the restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_tests::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    /// The signature checks out against `secret` (independently of the coordinator's code).
    fn signed_by(&self, secret: &str) -> bool {
        let ts = &self.headers["x-backfill-timestamp"];
        let sig = self.headers["x-backfill-signature"]
            .strip_prefix("sha256=")
            .unwrap();
        let tag: Vec<u8> = (0..sig.len() / 2)
            .map(|i| u8::from_str_radix(&sig[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let mut msg = format!("{ts}.").into_bytes();
        msg.extend_from_slice(&self.body);
        ring::hmac::verify(&key, &msg, &tag).is_ok()
    }
}

/// A plain HTTP/1.1 receiver that answers 500 to its first `fail_first` requests, then 200.
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

async fn read_request(s: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let headers: BTreeMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(Received {
        headers,
        body: buf[head_end..].to_vec(),
    })
}

impl Receiver {
    async fn serve(listener: TcpListener, fail_first: usize) -> Receiver {
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let seen = got.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Some(r) = read_request(&mut s).await else {
                        return;
                    };
                    let n = {
                        let mut g = seen.lock().unwrap();
                        g.push(r);
                        g.len()
                    };
                    let status = if n <= fail_first {
                        "500 Oops"
                    } else {
                        "200 OK"
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        Receiver { url, got }
    }

    async fn start(fail_first: usize) -> Receiver {
        Receiver::serve(TcpListener::bind("127.0.0.1:0").await.unwrap(), fail_first).await
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

/// Registers a webhook subscribed to `events`; returns (uuid, secret).
async fn webhook(
    c: &reqwest::Client,
    coord: &Coordinator,
    url: &str,
    events: &[&str],
) -> (String, String) {
    let (code, v) = post(
        c,
        &coord.url("webhooks/"),
        json!({"objects": [{"url": url, "description": "test"}]}),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    let w = &v["objects"][0];
    let (uuid, secret) = (
        w["uuid"].as_str().unwrap().to_owned(),
        w["secret"].as_str().unwrap().to_owned(),
    );
    let (code, v) = post(
        c,
        &coord.url(&format!("webhooks/{uuid}/subscriptions/")),
        json!({"objects": [{"events": events}]}),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    (uuid, secret)
}

const FAST_RETRIES: &str = "\n[webhooks]\nallow_http = true\nallow_private = true\nbackoff_base_s = 1\nbackoff_max_s = 1\ntimeout_s = 5\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminations_reach_the_tenants_receiver_signed_at_least_once_and_survive_a_crash() {
    let pki = Pki::new();
    let mut coord = Coordinator::start_with(&pki, &["alice", "bob"], FAST_RETRIES);
    let setup = AgentSetup::new(&pki, &coord, "wh-host");
    let _agent = setup.start(true, "1");
    let alice = client(&pki.ca(), Some(&pki.issue(Role::Account, "alice")));
    let bob = client(&pki.ca(), Some(&pki.issue(Role::Account, "bob")));

    // Alice's receiver fails twice, then acknowledges; Bob subscribes to everything.
    let a = Receiver::start(2).await;
    let b = Receiver::start(0).await;
    let (a_hook, a_secret) = webhook(&alice, &coord, &a.url, &["cloud_termination"]).await;
    webhook(
        &bob,
        &coord,
        &b.url,
        &[
            "cloud_termination",
            "server_downsized",
            "server_state_changed",
            "perf_factor_restored",
        ],
    )
    .await;
    // Bad receivers are refused with the field named.
    let (code, v) = post(
        &alice,
        &coord.url("webhooks/"),
        json!({"objects": [{"url": "ftp://x/"}]}),
    )
    .await;
    assert_eq!((code, v[0]["error_point"].as_str()), (400, Some("url")));
    let (code, _) = post(
        &alice,
        &coord.url(&format!("webhooks/{a_hook}/subscriptions/")),
        json!({"objects": [{"events": ["server_exploded"]}]}),
    )
    .await;
    assert_eq!(code, 400);
    // Another account's webhook does not exist for Bob.
    assert_eq!(
        get(&bob, &coord.url(&format!("webhooks/{a_hook}/")))
            .await
            .0,
        404
    );

    // Alice's backfill server takes most of the host; her normal server needs all of it: the
    // backfill server's termination is scheduled.
    let caps = eventually("the host's capacity", || async {
        let (_, caps) = get(&alice, &coord.url("capabilities/")).await;
        (caps["free_resources"]["total"]["cpu"].as_u64() > Some(0)).then_some(caps)
    })
    .await;
    let host_cpu = caps["free_resources"]["total"]["cpu"].as_u64().unwrap();
    let bf = create(&alice, &coord.url("bservers/"), json!({"name": "bf", "cpu": host_cpu - 500, "mem": 64u64 << 20, "workload": {"command": ["sleep", "300"]}})).await;
    post(
        &alice,
        &coord.url(&format!("bservers/{bf}/action/?do=start")),
        json!({}),
    )
    .await;
    eventually("the backfill server running", || async {
        let (_, s) = get(&alice, &coord.url(&format!("bservers/{bf}/"))).await;
        (s["status"] == "running").then_some(())
    })
    .await;
    let big = create(&alice, &coord.url("servers/"), json!({"name": "big", "cpu": host_cpu, "mem": 64u64 << 20, "workload": {"command": ["sleep", "300"]}})).await;
    post(
        &alice,
        &coord.url(&format!("servers/{big}/action/?do=start")),
        json!({}),
    )
    .await;

    // Three requests: two refused, the third acknowledged; the same event each time, signed.
    let got = eventually("the termination delivered after two failures", || async {
        let got = a.got();
        (got.len() >= 3).then_some(got)
    })
    .await;
    let ids: Vec<&String> = got
        .iter()
        .map(|r| &r.headers["x-backfill-event-id"])
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "the event id changed between attempts: {ids:?}"
    );
    let e = got[2].json();
    assert_eq!(e["id"], ids[0].as_str());
    assert_eq!(e["type"], "cloud_termination");
    assert_eq!(e["account"], "alice");
    assert_eq!(e["server"]["uuid"], bf.as_str());
    assert!(
        e["cloud_termination_time"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .is_ok()
    );
    assert!(e["cloud_termination_scheduled_event_time"].is_string());
    for r in &got {
        assert!(r.signed_by(&a_secret), "bad signature");
        assert_eq!(r.headers["x-backfill-event"], "cloud_termination");
    }
    assert!(!got[0].signed_by("some-other-secret"));
    let deliveries = eventually("the delivery marked delivered", || async {
        let (_, v) = get(
            &alice,
            &coord.url(&format!("webhooks/{a_hook}/deliveries/")),
        )
        .await;
        (v["objects"][0]["status"] == "delivered").then_some(v)
    })
    .await;
    assert_eq!(deliveries["objects"][0]["attempts"], 3);
    assert_eq!(deliveries["objects"][0]["last_status_code"], 200);
    // Acknowledged: nothing more, even after more retry periods than it took.
    assert_eq!(a.got().len(), 3);
    // Bob heard nothing of Alice's servers.
    assert_eq!(b.got().len(), 0, "Bob got Alice's events: {:?}", b.got());

    // A redelivery on request: one more request, the same event id.
    let d = deliveries["objects"][0]["uuid"].as_str().unwrap();
    let (code, _) = post(
        &alice,
        &coord.url(&format!(
            "webhooks/{a_hook}/deliveries/{d}/action/?do=redeliver"
        )),
        json!({}),
    )
    .await;
    assert_eq!(code, 202);
    let again = eventually("the redelivery", || async {
        (a.got().len() == 4).then(|| a.got())
    })
    .await;
    assert_eq!(again[3].headers["x-backfill-event-id"], *ids[0]);

    // An event committed while its receiver is down, then a crash: delivered after restart.
    let spare = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = spare.local_addr().unwrap();
    drop(spare);
    let (c_hook, c_secret) = webhook(
        &alice,
        &coord,
        &format!("http://{port}/hook"),
        &["server_state_changed"],
    )
    .await;
    post(
        &alice,
        &coord.url(&format!("servers/{big}/action/?do=stop")),
        json!({}),
    )
    .await;
    let pending = eventually("a failed attempt at the closed port", || async {
        let (_, v) = get(
            &alice,
            &coord.url(&format!("webhooks/{c_hook}/deliveries/")),
        )
        .await;
        v["objects"]
            .as_array()
            .filter(|l| {
                !l.is_empty()
                    && l.iter()
                        .all(|d| d["status"] == "pending" && d["attempts"].as_u64() >= Some(1))
            })
            .cloned()
    })
    .await;
    let want: Vec<String> = pending
        .iter()
        .map(|d| d["event_id"].as_str().unwrap().to_owned())
        .collect();
    coord.kill();
    let c = Receiver::serve(TcpListener::bind(port).await.unwrap(), 0).await;
    coord.restart();
    let got = eventually(
        "every pending event delivered after the restart",
        || async {
            let got = c.got();
            let ids: Vec<String> = got
                .iter()
                .map(|r| r.headers["x-backfill-event-id"].clone())
                .collect();
            want.iter().all(|w| ids.contains(w)).then_some(got)
        },
    )
    .await;
    assert!(got.iter().all(|r| r.signed_by(&c_secret)));
    assert!(
        got.iter()
            .all(|r| r.json()["type"] == "server_state_changed")
    );
}
