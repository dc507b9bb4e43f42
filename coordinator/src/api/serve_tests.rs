//! The listeners over real sockets (TLS with a CA made per test, and plain TCP): slow heads,
//! bodies that never come, idle keep-alive and connection caps are cut off; HTTP/2 clients
//! refused early get their status and a NO_ERROR reset, not a stream error.

use super::*;
use crate::api::operator::tests::fx_with;
use backfill_shared::pki::{Ca, IssueRequest};
use backfill_shared::tls::TlsFiles;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Timeouts short enough for a test, long enough for a TLS handshake on a loaded machine.
const SHORT: HttpLimits = HttpLimits {
    header_timeout: Duration::from_secs(1),
    body_timeout: Duration::from_secs(1),
    idle_timeout: Duration::from_secs(1),
    max_connections: 100,
    max_connections_per_client: 100,
};
/// How long a test waits for what should happen well before.
const PATIENCE: Duration = Duration::from_secs(30);

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Api,
    Management,
    Admin,
}

struct Served {
    addr: SocketAddr,
    kind: Kind,
    metrics: Arc<Metrics>,
    client: Option<Arc<rustls::ClientConfig>>,
    _stop: tokio_util::sync::DropGuard,
    _dir: tempfile::TempDir,
    _fx: crate::api::operator::tests::Fx,
}

fn issue(ca: &Ca, dir: &Path, stem: &str, role: Role, name: &str) -> TlsFiles {
    let sans = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let (cert, key) = ca
        .issue_to_dir(dir, stem, &IssueRequest::new(role, name, &sans, 1))
        .unwrap();
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert,
        key,
    }
}

async fn serve(kind: Kind, limits: HttpLimits) -> Served {
    backfill_shared::tls::install_default_provider();
    let fx = fx_with(Some("0123456789abcdef-token"), Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test CA").unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    let server = issue(&ca, dir.path(), "server", Role::Coordinator, "coordinator");
    let tenant = issue(&ca, dir.path(), "tenant", Role::Account, "t");
    let admin = issue(&ca, dir.path(), "admin", Role::Admin, "ops");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let metrics = fx.c.metrics.clone();
    let listening = Listening::new("test", limits, &metrics);
    let running = (stop.clone(), Duration::from_secs(1));
    let mut client = None;
    match kind {
        Kind::Api | Kind::Management => {
            let config = if kind == Kind::Api {
                backfill_shared::tls::server_config(&server).unwrap()
            } else {
                backfill_shared::tls::server_config_optional_client(&server).unwrap()
            };
            let acceptor = tls_accept::Acceptors::new(tokio_rustls::TlsAcceptor::from(config));
            if kind == Kind::Api {
                client = Some(backfill_shared::tls::client_config(&tenant).unwrap());
                let router = crate::api::router(fx.c.clone());
                tokio::spawn(serve_api(listener, acceptor, router, running, listening));
            } else {
                client = Some(backfill_shared::tls::client_config(&admin).unwrap());
                let router = crate::api::management_router(fx.c.clone());
                tokio::spawn(serve_management(
                    listener, acceptor, router, running, listening,
                ));
            }
        }
        Kind::Admin => {
            let router = crate::api::metrics::metrics_router(fx.c.clone());
            tokio::spawn(serve_plain(listener, router, running, listening));
        }
    }
    Served {
        addr,
        kind,
        metrics,
        client,
        _stop: stop.drop_guard(),
        _dir: dir,
        _fx: fx,
    }
}

impl Served {
    /// A connection, TLS where the listener speaks it, offering `alpn`.
    async fn connect_alpn(&self, alpn: &[u8]) -> Box<dyn Io> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        match &self.client {
            None => Box::new(tcp),
            Some(cfg) => {
                let mut cfg = (**cfg).clone();
                cfg.alpn_protocols = vec![alpn.to_vec()];
                let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
                let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
                Box::new(connector.connect(name, tcp).await.unwrap())
            }
        }
    }

    async fn connect(&self) -> Box<dyn Io> {
        self.connect_alpn(b"http/1.1").await
    }

    fn timeouts(&self, phase: &str) -> u64 {
        self.metrics
            .http_timeouts
            .get_or_create(&label("test", phase))
            .get()
    }

    fn refused(&self, reason: &str) -> u64 {
        self.metrics
            .http_refused
            .get_or_create(&label("test", reason))
            .get()
    }

    /// A path this listener serves without a body.
    fn get_path(&self) -> &'static str {
        match self.kind {
            Kind::Api => "/api/2.0/capabilities/",
            Kind::Management => "/dynamiccluster/server/status",
            Kind::Admin => "/healthz",
        }
    }
}

/// Reads until the server closes; what it sent. Fails if it does not close in time.
async fn until_closed(io: &mut Box<dyn Io>) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, io.read(&mut buf)).await {
            Err(_) => panic!(
                "the server kept the connection open; got {:?}",
                String::from_utf8_lossy(&out)
            ),
            Ok(Ok(0) | Err(_)) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one HTTP/1.1 response (head and `Content-Length` body): its status.
async fn one_response(io: &mut Box<dyn Io>) -> u16 {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(PATIENCE, io.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before a response: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                return head[9..12].parse().unwrap();
            }
        }
    }
}

const ALL: [Kind; 3] = [Kind::Api, Kind::Management, Kind::Admin];

#[tokio::test]
async fn a_connection_that_sends_nothing_or_half_a_head_is_closed() {
    for kind in ALL {
        let s = serve(kind, SHORT).await;
        let mut silent = s.connect().await;
        let mut partial = s.connect().await;
        let head = format!("GET {} HTTP/1.1\r\nHost: x\r\n", s.get_path());
        partial.write_all(head.as_bytes()).await.unwrap();
        assert_eq!(until_closed(&mut silent).await, "", "{kind:?}");
        assert_eq!(until_closed(&mut partial).await, "", "{kind:?}");
        assert!(s.timeouts("header") >= 2, "{kind:?}");

        // After a first request, a second head that stops halfway is cut off too.
        let mut c = s.connect().await;
        let full = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", s.get_path());
        c.write_all(full.as_bytes()).await.unwrap();
        assert_eq!(one_response(&mut c).await, 200, "{kind:?}");
        c.write_all(head.as_bytes()).await.unwrap();
        until_closed(&mut c).await;
        assert!(s.timeouts("header") >= 3, "{kind:?}");
    }
}

#[tokio::test]
async fn a_declared_body_that_does_not_come_is_cut_off() {
    // The API reads bodies (the admin listener has no route that does).
    for kind in [Kind::Api, Kind::Management] {
        let s = serve(kind, SHORT).await;
        let (path, ctype) = match kind {
            Kind::Api => ("/api/2.0/bservers/", "application/json"),
            _ => (
                "/arvados/v1/dispatch/instances/hold",
                "application/x-www-form-urlencoded",
            ),
        };
        let mut c = s.connect().await;
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n\
             Content-Length: 100000\r\n\r\n{{\"objects\": ["
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let answer = until_closed(&mut c).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{answer}"
        );
        assert_eq!(s.timeouts("body"), 1, "{kind:?}: {answer}");
    }
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    for kind in ALL {
        let s = serve(kind, SHORT).await;
        let mut c = s.connect().await;
        let full = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", s.get_path());
        c.write_all(full.as_bytes()).await.unwrap();
        assert_eq!(one_response(&mut c).await, 200, "{kind:?}");
        assert_eq!(until_closed(&mut c).await, "", "{kind:?}");
        assert_eq!(s.timeouts("idle"), 1, "{kind:?}");
    }
}

#[tokio::test]
async fn connections_over_the_caps_are_closed_at_once() {
    for kind in ALL {
        for (limits, reason) in [
            (
                HttpLimits {
                    max_connections_per_client: 1,
                    ..HttpLimits::API
                },
                "max_connections_per_client",
            ),
            (
                HttpLimits {
                    max_connections: 1,
                    ..HttpLimits::API
                },
                "max_connections",
            ),
        ] {
            let s = serve(kind, limits).await;
            let mut first = s.connect().await;
            let full = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", s.get_path());
            first.write_all(full.as_bytes()).await.unwrap();
            assert_eq!(one_response(&mut first).await, 200);
            // The second is closed before any handshake: read end of file (plain) or a failed
            // handshake (TLS).
            let mut tcp = TcpStream::connect(s.addr).await.unwrap();
            let mut buf = [0u8; 16];
            let n = tokio::time::timeout(PATIENCE, tcp.read(&mut buf))
                .await
                .expect("the refused connection stayed open");
            assert!(matches!(n, Ok(0) | Err(_)), "{kind:?}: {n:?}");
            assert_eq!(s.refused(reason), 1, "{kind:?}");
            // The first still works, and once it is gone a new one is let in.
            first.write_all(full.as_bytes()).await.unwrap();
            assert_eq!(one_response(&mut first).await, 200);
            drop(first);
            let deadline = tokio::time::Instant::now() + PATIENCE;
            loop {
                if let Some(mut c) = s.connect_plain_or_tls().await {
                    c.write_all(full.as_bytes()).await.unwrap();
                    if tokio::time::timeout(PATIENCE, one_response_or_closed(&mut c))
                        .await
                        .unwrap()
                        == Some(200)
                    {
                        break;
                    }
                }
                assert!(tokio::time::Instant::now() < deadline, "never let in again");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

impl Served {
    /// A connection, or `None` when the TLS handshake fails (refused).
    async fn connect_plain_or_tls(&self) -> Option<Box<dyn Io>> {
        let tcp = TcpStream::connect(self.addr).await.ok()?;
        match &self.client {
            None => Some(Box::new(tcp)),
            Some(cfg) => {
                let connector = tokio_rustls::TlsConnector::from(cfg.clone());
                let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
                Some(Box::new(connector.connect(name, tcp).await.ok()?))
            }
        }
    }
}

async fn one_response_or_closed(io: &mut Box<dyn Io>) -> Option<u16> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = io.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if text.contains("\r\n\r\n") {
            return text.get(9..12)?.parse().ok();
        }
    }
}

/// An HTTP/2 request with a body of `size` bytes sent as flow control allows: the response's
/// status and body, and the stream reset the server sent, if any.
async fn h2_post(
    s: &Served,
    path: &str,
    headers: &[(&str, &str)],
    size: usize,
) -> (u16, String, Option<h2::Reason>) {
    let io = s.connect_alpn(b"h2").await;
    let (client, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let mut req = axum::http::Request::post(format!("https://127.0.0.1{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (resp, mut stream) = client.send_request(req.body(()).unwrap(), false).unwrap();
    let sender = tokio::spawn(async move {
        let mut left = size;
        let mut reset = false;
        while left > 0 {
            stream.reserve_capacity(left.min(64 * 1024));
            match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(n)) if n > 0 => {
                    let n = n.min(left);
                    left -= n;
                    if stream.send_data(vec![b' '; n].into(), left == 0).is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    reset = true;
                    break;
                }
            }
        }
        // All sent: there is nothing to reset (the wait would not end).
        if left == 0 && !reset {
            return None;
        }
        std::future::poll_fn(|cx| stream.poll_reset(cx)).await.ok()
    });
    let resp = tokio::time::timeout(PATIENCE, resp)
        .await
        .expect("no response")
        .expect("the stream failed instead of answering");
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = tokio::time::timeout(PATIENCE, body.data()).await.unwrap() {
        let chunk = chunk.expect("the response body failed");
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    let reset = tokio::time::timeout(PATIENCE, sender)
        .await
        .unwrap()
        .unwrap();
    (status, String::from_utf8_lossy(&text).into_owned(), reset)
}

#[tokio::test]
async fn http2_clients_refused_early_get_the_status() {
    let s = serve(Kind::Api, HttpLimits::API).await;
    // Larger than the body limit: 413 after the first megabyte; the rest is read and
    // discarded so that the stream ends cleanly (curl 7 takes even a NO_ERROR reset for a
    // failure and drops the response).
    let json = [("content-type", "application/json")];
    let (status, body, reset) = h2_post(&s, "/api/2.0/bservers/", &json, 10 << 20).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("error_type"), "{body}");
    assert_eq!(reset, None);
    // With the length declared, as curl sends it.
    let declared = [
        ("content-type", "application/json"),
        ("content-length", "10485760"),
    ];
    let (status, _, reset) = h2_post(&s, "/api/2.0/bservers/", &declared, 10 << 20).await;
    assert_eq!((status, reset), (413, None));
    // Beyond what is drained, the stream is reset, with NO_ERROR: the response stands.
    let size = usize::try_from(crate::api::conn::DRAIN_BYTES).unwrap() + (4 << 20);
    let (status, _, reset) = h2_post(&s, "/api/2.0/bservers/", &json, size).await;
    assert_eq!((status, reset), (413, Some(h2::Reason::NO_ERROR)));
    // A tenant on an operator path: 403 without reading the body.
    for _ in 0..5 {
        let path = "/arvados/v1/dispatch/containers/kill?container_uuid=x";
        let (status, body, reset) = h2_post(&s, path, &json, 256 << 10).await;
        assert_eq!((status, reset), (403, None), "{body}");
    }
    // A small body within the limit is read whole and answered as usual.
    let (status, body, reset) = h2_post(&s, "/api/2.0/bservers/", &json, 10).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(reset, None);
}

#[tokio::test]
async fn an_idle_http2_connection_is_sent_away() {
    let s = serve(Kind::Api, SHORT).await;
    let io = s.connect_alpn(b"h2").await;
    let (client, conn) = h2::client::handshake(io).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = axum::http::Request::get("https://127.0.0.1/api/2.0/capabilities/")
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    // The connection task ends (GOAWAY, then close) without the client doing anything.
    let _ = tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("the idle HTTP/2 connection stayed open");
    assert_eq!(s.timeouts("idle"), 1);
}

#[tokio::test]
async fn an_http2_client_that_opens_no_window_is_cut_off() {
    let s = serve(Kind::Api, SHORT).await;
    let io = s.connect_alpn(b"h2").await;
    // A stream window of 0: the server may send headers but no byte of a body.
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(io)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = axum::http::Request::get("https://127.0.0.1/api/2.0/capabilities/")
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(PATIENCE, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    // The body never moves; the server gives up on it and on the connection.
    let _ = tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("a connection whose response cannot move stayed open");
    assert_eq!(s.timeouts("send"), 1);
}
