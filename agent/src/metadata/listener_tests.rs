//! The listener over real TCP on loopback: keep-alive, rate limits, long-polls, and
//! acknowledgements answered only after the agent recorded them.

use super::*;
use crate::http_conn::ListenerReason;
use crate::metadata::GuestInfo;
use backfill_shared::clock::ManualClock;
use backfill_shared::{PerfFactor, ServerClass, Termination};
use std::net::Ipv4Addr;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

fn guest(ip: IpAddr) -> GuestInfo {
    GuestInfo {
        server: ServerId::from_u128(9),
        name: "g".into(),
        hostname: "g".into(),
        availability_zone: "z".into(),
        project_id: "p".into(),
        class: ServerClass::Backfill,
        instance_type: "backfill-c1m1".into(),
        local_ipv4: Some(ip),
        gateway: None,
        meta: Default::default(),
        perf_factor: PerfFactor::FULL,
        cpu_quota_us: None,
        cpu_period_us: 100_000,
        mem_limit_bytes: None,
        termination: None,
        acknowledged: false,
        user_data: None,
    }
}

struct World {
    addr: SocketAddr,
    store: Arc<MetadataStore>,
    acks: mpsc::Receiver<AckRequest>,
    refused: Family<ListenerReason, Counter>,
    timeouts: Family<ListenerReason, Counter>,
    _stop: tokio_util::sync::DropGuard,
}

async fn world(rate: u32, burst: u32) -> World {
    world_with(rate, burst, HttpLimits::METADATA).await
}

async fn world_with(rate: u32, burst: u32, limits: HttpLimits) -> World {
    let store = Arc::new(MetadataStore::default());
    store.put(guest(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let (tx, acks) = mpsc::channel(4);
    let (refused, timeouts) = (Family::default(), Family::default());
    let svc = Arc::new(
        MetadataService::new(
            store.clone(),
            MetadataConfig::default(),
            TokenSealer::with_key(b"k"),
            RateLimiter::new(f64::from(rate), burst),
            tx,
            Arc::new(ManualClock::new(1_000)),
        )
        .with_limits(limits)
        .with_connection_counters(refused.clone(), timeouts.clone()),
    );
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, svc, stop.clone()));
    World {
        addr,
        store,
        acks,
        refused,
        timeouts,
        _stop: stop.drop_guard(),
    }
}

/// Sends `raw` and reads one response: (status, headers, body).
async fn exchange(
    stream: &mut tokio::io::BufReader<TcpStream>,
    raw: &str,
) -> (u16, Vec<String>, String) {
    stream.get_mut().write_all(raw.as_bytes()).await.unwrap();
    let mut status = String::new();
    stream.read_line(&mut status).await.unwrap();
    let code = status
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    let mut len = 0;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("Content-Length: ") {
            len = v.parse().unwrap();
        }
        headers.push(line);
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.unwrap();
    (code, headers, String::from_utf8(body).unwrap())
}

async fn connect(w: &World) -> tokio::io::BufReader<TcpStream> {
    tokio::io::BufReader::new(TcpStream::connect(w.addr).await.unwrap())
}

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let w = world(1_000, 1_000).await;
    let mut c = connect(&w).await;
    for _ in 0..3 {
        let (status, _, body) = exchange(
            &mut c,
            "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
        assert_eq!((status, body), (200, ServerId::from_u128(9).to_string()));
    }
    // Two requests in one write (pipelining) are answered in order.
    c.get_mut()
        .write_all(b"GET /latest/meta-data/hostname HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let (_, _, host) = exchange(
        &mut c,
        "GET /latest/meta-data/instance-type HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(host, "g");
    let (status, headers, body) = exchange(&mut c, "").await;
    assert_eq!((status, body.as_str()), (200, "backfill-c1m1"));
    assert!(headers.iter().any(|h| h == "Connection: close"));
}

#[tokio::test]
async fn bad_requests_get_400_and_floods_get_429() {
    let w = world(1, 3).await;
    let mut c = connect(&w).await;
    for _ in 0..3 {
        assert_eq!(
            exchange(&mut c, "GET /openstack HTTP/1.1\r\n\r\n").await.0,
            200
        );
    }
    let (status, headers, _) = exchange(&mut c, "GET /openstack HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 429);
    assert!(headers.iter().any(|h| h == "Retry-After: 1"));

    let mut bad = connect(&w).await;
    let (status, _, _) = exchange(&mut bad, "\x01\x02 garbage\r\n\r\n").await;
    assert_eq!(status, 400);
    let mut big = connect(&w).await;
    let huge = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20_000));
    assert_eq!(exchange(&mut big, &huge).await.0, 400);
}

#[tokio::test]
async fn a_long_poll_returns_when_the_value_changes() {
    let w = world(1_000, 1_000).await;
    let mut c = connect(&w).await;
    let (_, headers, body) = exchange(
        &mut c,
        "GET /computeMetadata/v1/instance/preempted HTTP/1.1\r\nMetadata-Flavor: Google\r\n\r\n",
    )
    .await;
    assert_eq!(body, "FALSE");
    let etag = headers
        .iter()
        .find_map(|h| h.strip_prefix("ETag: "))
        .unwrap()
        .to_owned();
    // Waiting on the ETag of FALSE: whether the change lands before or after the listener
    // starts waiting, the answer is TRUE as soon as there is one.
    let ask = format!(
        "GET /computeMetadata/v1/instance/preempted?wait_for_change=true&last_etag={etag}&timeout_sec=60 HTTP/1.1\r\nMetadata-Flavor: Google\r\n\r\n"
    );
    let waiting = tokio::spawn(async move { exchange(&mut c, &ask).await });
    // An unrelated change does not end the wait; the termination does.
    let mut g = guest(IpAddr::V4(Ipv4Addr::LOCALHOST));
    g.name = "renamed".into();
    w.store.put(g.clone());
    g.termination = Some(Termination {
        scheduled_at: 1_000,
        terminate_at: 1_300,
    });
    w.store.put(g);
    let (status, headers, body) = waiting.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "TRUE"));
    assert!(
        headers
            .iter()
            .any(|h| h.starts_with("ETag: ") && !h.ends_with(&etag))
    );
}

#[tokio::test]
async fn a_long_poll_times_out_with_the_current_value() {
    let w = world(1_000, 1_000).await;
    let mut c = connect(&w).await;
    let (status, _, body) = exchange(
        &mut c,
        "GET /backfill/v1/?wait=true&timeout_sec=1 HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("\"acknowledged\":false"), "{body}");
}

#[tokio::test]
async fn an_acknowledgement_is_answered_after_the_agent_recorded_it() {
    let mut w = world(1_000, 1_000).await;
    let mut g = guest(IpAddr::V4(Ipv4Addr::LOCALHOST));
    g.termination = Some(Termination {
        scheduled_at: 1_000,
        terminate_at: 1_300,
    });
    w.store.put(g);
    let mut c = connect(&w).await;
    let answer = tokio::spawn(async move {
        let first = exchange(&mut c, "POST /backfill/v1/acknowledge HTTP/1.1\r\n\r\n").await;
        let second = exchange(&mut c, "POST /backfill/v1/acknowledge HTTP/1.1\r\n\r\n").await;
        (first, second)
    });
    let (server, reply) = w.acks.recv().await.unwrap();
    assert_eq!(server, ServerId::from_u128(9));
    assert!(
        !answer.is_finished(),
        "no answer before the record is durable"
    );
    reply.send(Ok(())).unwrap();
    // The second time the agent cannot record it: the guest is told to retry.
    let (_, reply) = w.acks.recv().await.unwrap();
    reply.send(Err("disk full".into())).unwrap();
    let ((s1, _, b1), (s2, _, _)) = answer.await.unwrap();
    assert_eq!(s1, 202, "{b1}");
    assert_eq!(s2, 503);
}

#[tokio::test]
async fn strangers_get_a_bare_404() {
    let w = world(1_000, 1_000).await;
    w.store.replace_all(Vec::new());
    let mut c = connect(&w).await;
    let (status, _, body) = exchange(
        &mut c,
        "GET /openstack/latest/meta_data.json HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!((status, body.as_str()), (404, "Not Found"));
}

/// Timeouts short enough for a test.
const SHORT: HttpLimits = HttpLimits {
    header_timeout: Duration::from_millis(500),
    body_timeout: Duration::from_millis(500),
    idle_timeout: Duration::from_millis(500),
    max_connections: 100,
    max_connections_per_client: 100,
};
const PATIENCE: Duration = Duration::from_secs(30);

impl World {
    fn timeouts(&self, phase: &str) -> u64 {
        self.timeouts
            .get_or_create(&ListenerReason::new("metadata", phase))
            .get()
    }
}

/// Reads until the listener closes; what it sent. Fails if it keeps the connection open.
async fn until_closed(c: &mut tokio::io::BufReader<TcpStream>) -> String {
    let mut out = Vec::new();
    match tokio::time::timeout(PATIENCE, c.read_to_end(&mut out)).await {
        Err(_) => panic!(
            "the connection stayed open: {:?}",
            String::from_utf8_lossy(&out)
        ),
        Ok(_) => String::from_utf8_lossy(&out).into_owned(),
    }
}

#[tokio::test]
async fn silent_and_slow_heads_are_cut_off() {
    let w = world_with(1_000, 1_000, SHORT).await;
    let mut silent = connect(&w).await;
    let mut partial = connect(&w).await;
    partial
        .get_mut()
        .write_all(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert_eq!(until_closed(&mut silent).await, "");
    assert_eq!(until_closed(&mut partial).await, "");
    assert_eq!(w.timeouts("header"), 2);
    // A request, then half of the next one's head.
    let mut c = connect(&w).await;
    let (status, _, _) = exchange(&mut c, "GET /latest/meta-data/hostname HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 200);
    c.get_mut()
        .write_all(b"GET /latest/meta-data/ HTTP/1.1\r\n")
        .await
        .unwrap();
    assert_eq!(until_closed(&mut c).await, "");
    assert_eq!(w.timeouts("header"), 3);
}

#[tokio::test]
async fn a_declared_body_that_does_not_come_is_cut_off() {
    let w = world_with(1_000, 1_000, SHORT).await;
    let mut c = connect(&w).await;
    c.get_mut()
        .write_all(b"PUT /latest/api/token HTTP/1.1\r\nContent-Length: 1000\r\n\r\n14 bytes here.")
        .await
        .unwrap();
    assert_eq!(until_closed(&mut c).await, "");
    assert_eq!(w.timeouts("body"), 1);
    // A body larger than allowed is refused at once, and the refusal is read (not reset).
    let mut c = connect(&w).await;
    c.get_mut()
        .write_all(
            b"PUT /latest/api/token HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n14 bytes here.",
        )
        .await
        .unwrap();
    assert!(until_closed(&mut c).await.starts_with("HTTP/1.1 400 "));
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let w = world_with(1_000, 1_000, SHORT).await;
    let mut c = connect(&w).await;
    let (status, headers, _) =
        exchange(&mut c, "GET /latest/meta-data/hostname HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 200);
    assert!(
        headers.iter().any(|h| h == "Connection: keep-alive"),
        "{headers:?}"
    );
    assert_eq!(until_closed(&mut c).await, "");
    assert_eq!(w.timeouts("idle"), 1);
}

#[tokio::test]
async fn connections_over_the_caps_are_closed_at_once() {
    for (limits, reason) in [
        (
            HttpLimits {
                max_connections_per_client: 2,
                ..HttpLimits::METADATA
            },
            "max_connections_per_client",
        ),
        (
            HttpLimits {
                max_connections: 2,
                ..HttpLimits::METADATA
            },
            "max_connections",
        ),
    ] {
        let w = world_with(1_000, 1_000, limits).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut c = connect(&w).await;
            let (status, _, _) =
                exchange(&mut c, "GET /latest/meta-data/hostname HTTP/1.1\r\n\r\n").await;
            assert_eq!(status, 200);
            held.push(c);
        }
        let mut extra = connect(&w).await;
        assert_eq!(until_closed(&mut extra).await, "", "{reason}");
        let refused = w
            .refused
            .get_or_create(&ListenerReason::new("metadata", reason));
        assert_eq!(refused.get(), 1, "{reason}");
        // The ones let in still work; once one goes, a new one gets its place.
        let (status, _, _) = exchange(
            &mut held[0],
            "GET /latest/meta-data/hostname HTTP/1.1\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200);
        drop(held.pop());
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let mut c = connect(&w).await;
            c.get_mut()
                .write_all(b"GET /latest/meta-data/hostname HTTP/1.1\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            if until_closed(&mut c).await.starts_with("HTTP/1.1 200 ") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never let in again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
