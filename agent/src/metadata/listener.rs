//! The thin listener: accepts guests' connections, reads bounded HTTP/1.1 requests (keep-alive),
//! rate-limits per guest, and runs the pure handler. Acknowledgements go to the agent over a
//! channel and are answered only once they are durable; long-polls wait on the store.

use super::handler::{MetadataConfig, Reply, handle};
use super::limit::{LogGate, RateLimiter};
use super::store::MetadataStore;
use super::token::TokenSealer;
use crate::http::{HttpRequest, HttpResponse};
use crate::http_conn::{Conn, End, ListenerReason};
use backfill_shared::listener::{ConnectionGate, HttpLimits};
use backfill_shared::{Clock, ServerId};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The metadata request counter's label: the format a path speaks, and the answer's code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormatCode {
    pub format: String,
    pub code: u16,
}

/// Which format a metadata path speaks, for the request counter.
pub fn metadata_format(path: &str) -> &'static str {
    if path.starts_with("/openstack") {
        "openstack"
    } else if path.starts_with("/latest") {
        "ec2"
    } else if path.starts_with("/computeMetadata") {
        "gce"
    } else if path.starts_with("/metadata") {
        "azure"
    } else if path.starts_with("/backfill") {
        "backfill"
    } else {
        "other"
    }
}

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
    limits: HttpLimits,
    refused: Family<ListenerReason, Counter>,
    timeouts: Family<ListenerReason, Counter>,
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
            limits: HttpLimits::METADATA,
            refused: Family::default(),
            timeouts: Family::default(),
        }
    }

    /// Timeouts and connection caps (the default: [`HttpLimits::METADATA`]).
    pub fn with_limits(mut self, limits: HttpLimits) -> MetadataService {
        self.limits = limits;
        self
    }

    /// Counts connections refused at accept and closed for time into these families.
    pub fn with_connection_counters(
        mut self,
        refused: Family<ListenerReason, Counter>,
        timeouts: Family<ListenerReason, Counter>,
    ) -> MetadataService {
        self.refused = refused;
        self.timeouts = timeouts;
        self
    }

    fn timed_out(&self, phase: crate::http_conn::Phase) {
        self.timeouts
            .get_or_create(&ListenerReason::new("metadata", phase.as_str()))
            .inc();
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

/// Serves until `shutdown`. Connections over the caps (in all, per guest address) are closed
/// as they arrive.
pub async fn serve(listener: TcpListener, svc: Arc<MetadataService>, shutdown: CancellationToken) {
    let refused = svc.refused.clone();
    let gate = Arc::new(ConnectionGate::new(&svc.limits).on_refused(move |r| {
        refused
            .get_or_create(&ListenerReason::new("metadata", r.as_str()))
            .inc();
    }));
    loop {
        let (stream, peer, admission) = tokio::select! {
            () = shutdown.cancelled() => return,
            a = backfill_shared::listener::accept(&listener, &gate, "metadata") => a,
        };
        let svc = svc.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = connection(stream, peer.ip(), &svc) => {}
            }
            drop(admission);
        });
    }
}

async fn connection(stream: TcpStream, peer: IpAddr, svc: &MetadataService) {
    let mut conn = Conn::new(stream, svc.limits);
    loop {
        let req = match conn.next_request().await {
            Ok(req) => req,
            Err(End::Bad) => {
                svc.warn(peer, "malformed or oversized request");
                let r = HttpResponse::text(400, "Bad Request").to_bytes(false);
                if conn.respond(&r).await.is_ok() {
                    conn.close().await;
                }
                return;
            }
            Err(End::TimedOut(phase)) => {
                svc.timed_out(phase);
                return;
            }
            Err(End::Closed) => return,
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
                format: metadata_format(&req.path).into(),
                code: resp.status,
            })
            .inc();
        match conn.respond(&resp.to_bytes(keep_alive)).await {
            Err(End::TimedOut(phase)) => {
                svc.timed_out(phase);
                return;
            }
            Err(_) => return,
            Ok(()) if !keep_alive => {
                conn.close().await;
                return;
            }
            Ok(()) => {}
        }
    }
}

#[cfg(test)]
#[path = "listener_tests.rs"]
mod tests;
