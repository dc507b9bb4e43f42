//! The thin listener: accepts guests' connections, reads bounded HTTP/1.1 requests (keep-alive),
//! rate-limits per guest, and runs the pure handler. Acknowledgements go to the agent over a
//! channel and are answered only once they are durable; long-polls wait on the store.

use super::handler::{MetadataConfig, Reply, handle};
use super::http::{HttpRequest, HttpResponse, MAX_REQUEST_BYTES, parse_request, request_len};
use super::limit::{LogGate, RateLimiter};
use super::store::MetadataStore;
use super::token::TokenSealer;
use crate::admin::FormatCode;
use backfill_shared::{Clock, ServerId};
use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A connection idle this long between requests is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many guest connections at once.
const MAX_CONNECTIONS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata listener {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// An acknowledgement for the agent to record; it answers once the record is durable.
pub type AckRequest = (ServerId, oneshot::Sender<Result<(), String>>);

#[derive(Debug)]
pub struct MetadataService {
    pub store: Arc<MetadataStore>,
    pub tokens: TokenSealer,
    pub cfg: MetadataConfig,
    pub limiter: RateLimiter,
    pub acks: mpsc::Sender<AckRequest>,
    pub clock: Arc<dyn Clock>,
    logs: LogGate,
    requests: Family<FormatCode, Counter>,
}

impl MetadataService {
    pub fn new(
        store: Arc<MetadataStore>,
        cfg: MetadataConfig,
        tokens: TokenSealer,
        limiter: RateLimiter,
        acks: mpsc::Sender<AckRequest>,
        clock: Arc<dyn Clock>,
    ) -> MetadataService {
        MetadataService {
            store,
            tokens,
            cfg,
            limiter,
            acks,
            clock,
            logs: LogGate::new(Duration::from_secs(10)),
            requests: Family::default(),
        }
    }

    /// Counts requests by format and status code into `family`.
    pub fn with_request_counter(mut self, family: Family<FormatCode, Counter>) -> MetadataService {
        self.requests = family;
        self
    }

    fn now_reply(&self, req: &HttpRequest, peer: IpAddr) -> HttpResponse {
        match handle(
            &self.store,
            &self.tokens,
            &self.cfg,
            req,
            peer,
            self.clock.now(),
            false,
        ) {
            Reply::Now(r) | Reply::Ack { then: r, .. } => r,
            Reply::Wait { .. } => HttpResponse::text(500, "Internal Server Error"),
        }
    }

    /// The answer to one request (after a wait or an acknowledgement where it asks for one).
    pub async fn respond(&self, req: &HttpRequest, peer: IpAddr) -> HttpResponse {
        let now = self.clock.now();
        match handle(&self.store, &self.tokens, &self.cfg, req, peer, now, true) {
            Reply::Now(r) => r,
            Reply::Ack { server, then } => {
                let (tx, rx) = oneshot::channel();
                let recorded = match self.acks.send((server, tx)).await {
                    Ok(()) => rx
                        .await
                        .unwrap_or_else(|_| Err("agent shutting down".into())),
                    Err(_) => Err("agent shutting down".into()),
                };
                match recorded {
                    Ok(()) => {
                        tracing::info!(server = %server, "guest acknowledged its termination");
                        then
                    }
                    Err(e) => {
                        tracing::warn!(server = %server, error = %e, "cannot record an acknowledgement");
                        HttpResponse::text(503, "the acknowledgement could not be recorded; retry")
                    }
                }
            }
            Reply::Wait { etag, timeout } => {
                let mut changes = self.store.subscribe();
                let first = self.now_reply(req, peer);
                let current = first.header("ETag").map(str::to_owned);
                if first.status != 200 || (etag.is_some() && etag != current) {
                    return first;
                }
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    match tokio::time::timeout_at(deadline, changes.changed()).await {
                        Ok(Ok(())) => {
                            let r = self.now_reply(req, peer);
                            if r.header("ETag").map(str::to_owned) != current {
                                return r;
                            }
                        }
                        Ok(Err(_)) | Err(_) => return self.now_reply(req, peer),
                    }
                }
            }
        }
    }

    fn warn(&self, peer: IpAddr, what: &str) {
        if let Some(held) = self.logs.pass(Instant::now()) {
            tracing::warn!(%peer, held_back = held, "metadata: {what}");
        }
    }
}

/// Binds the listener. The metadata address need not be configured on any interface: with
/// `IP_FREEBIND` and `IP_TRANSPARENT` the socket takes what the guests-only local route
/// delivers to it and answers from that address.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, MetadataError> {
    let err = |source| MetadataError::Bind { addr, source };
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    if addr.is_ipv4() {
        set_ip_option(&socket, libc::IP_FREEBIND).map_err(err)?;
        // Answers from an address no interface has need IP_TRANSPARENT (CAP_NET_ADMIN); without
        // it the listener still serves an address that is configured locally.
        if let Err(e) = set_ip_option(&socket, libc::IP_TRANSPARENT) {
            tracing::debug!(error = %e, "IP_TRANSPARENT not permitted");
        }
    }
    socket.bind(addr).map_err(err)?;
    socket.listen(1024).map_err(err)
}

fn set_ip_option(socket: &TcpSocket, option: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a pointer to a live c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            option,
            std::ptr::from_ref(&one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, svc: Arc<MetadataService>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metadata accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            svc.warn(peer.ip(), "too many connections; refusing one");
            continue;
        };
        let svc = svc.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = connection(stream, peer.ip(), &svc) => {}
            }
            drop(permit);
        });
    }
}

async fn connection(mut stream: TcpStream, peer: IpAddr, svc: &MetadataService) {
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let len = loop {
            match request_len(&buf) {
                Ok(Some(n)) => break n,
                Ok(None) => {}
                Err(super::http::BadRequest) => {
                    svc.warn(peer, "malformed or oversized request");
                    let r = HttpResponse::text(400, "Bad Request").to_bytes(false);
                    let _ = stream.write_all(&r).await;
                    return;
                }
            }
            if buf.capacity() - buf.len() < 512 {
                buf.reserve(MAX_REQUEST_BYTES.min(buf.len().max(1024)));
            }
            match tokio::time::timeout(IDLE_TIMEOUT, stream.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        };
        let raw = buf.split_to(len);
        let Some(req) = parse_request(&raw) else {
            let _ = stream
                .write_all(&HttpResponse::text(400, "Bad Request").to_bytes(false))
                .await;
            return;
        };
        let keep_alive = req.keep_alive();
        let resp = if svc.limiter.allow(peer, Instant::now()) {
            svc.respond(&req, peer).await
        } else {
            svc.warn(peer, "rate limit exceeded");
            HttpResponse::text(429, "Too Many Requests").with_header("Retry-After", "1")
        };
        svc.requests
            .get_or_create(&FormatCode {
                format: crate::admin::metadata_format(&req.path).into(),
                code: resp.status,
            })
            .inc();
        if stream.write_all(&resp.to_bytes(keep_alive)).await.is_err() || !keep_alive {
            return;
        }
    }
}

#[cfg(test)]
#[path = "listener_tests.rs"]
mod tests;
