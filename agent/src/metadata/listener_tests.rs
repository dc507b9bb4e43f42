//! The listener over real TCP on loopback: keep-alive, rate limits, long-polls, and
//! acknowledgements answered only after the agent recorded them.

use super::*;
use crate::metadata::GuestInfo;
use backfill_shared::clock::ManualClock;
use backfill_shared::{PerfFactor, ServerClass, Termination};
use std::net::Ipv4Addr;
use tokio::io::AsyncBufReadExt;

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
    _stop: tokio_util::sync::DropGuard,
}

async fn world(rate: u32, burst: u32) -> World {
    let store = Arc::new(MetadataStore::default());
    store.put(guest(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let (tx, acks) = mpsc::channel(4);
    let svc = Arc::new(MetadataService::new(
        store.clone(),
        MetadataConfig::default(),
        TokenSealer::with_key(b"k"),
        RateLimiter::new(f64::from(rate), burst),
        tx,
        Arc::new(ManualClock::new(1_000)),
    ));
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, svc, stop.clone()));
    World {
        addr,
        store,
        acks,
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
