//! Serving routers: the public API and the management listener (hyper-util's HTTP/1 and
//! HTTP/2 over tokio-rustls), and the admin listener (the same over plain TCP). Every listener
//! caps its connections (in all and per client address, before any handshake), sets
//! `TCP_NODELAY`, and holds each connection to the deadlines of [`crate::api::conn`].

use crate::api::conn::{Activity, OnTimeout, Phase, RequestBody, ResponseBody, Watched};
use crate::telemetry::{ListenerReason, Metrics};
use crate::tls_accept;
use axum::Router;
use backfill_shared::listener::{ConnectionGate, HttpLimits};
use backfill_shared::pki::{PeerIdentity, Role};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// One listener's name, limits and counters.
#[derive(Debug, Clone)]
pub struct Listening {
    pub name: &'static str,
    pub limits: HttpLimits,
    /// Connections refused at accept, by listener and cap.
    refused: Family<ListenerReason, Counter>,
    /// Connections and requests that ran out of time, by listener and phase.
    timeouts: Family<ListenerReason, Counter>,
}

impl Listening {
    pub fn new(name: &'static str, limits: HttpLimits, metrics: &Metrics) -> Listening {
        Listening {
            name,
            limits,
            refused: metrics.http_refused.clone(),
            timeouts: metrics.http_timeouts.clone(),
        }
    }

    fn gate(&self) -> Arc<ConnectionGate> {
        let (refused, name) = (self.refused.clone(), self.name);
        Arc::new(ConnectionGate::new(&self.limits).on_refused(move |r| {
            refused.get_or_create(&label(name, r.as_str())).inc();
        }))
    }

    fn on_timeout(&self) -> OnTimeout {
        let (timeouts, name) = (self.timeouts.clone(), self.name);
        Arc::new(move |phase: Phase| {
            timeouts.get_or_create(&label(name, phase.as_str())).inc();
        })
    }
}

fn label(listener: &str, reason: &str) -> ListenerReason {
    ListenerReason {
        listener: listener.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Serves `router` on `listener`: TLS with a client certificate of role account or admin. On
/// `shutdown` it stops accepting, lets requests in flight finish (connections close after
/// their current request) and returns once they have, or after `drain`.
pub async fn serve_api(
    listener: TcpListener,
    acceptor: tls_accept::Acceptors,
    router: Router,
    (shutdown, drain): (CancellationToken, Duration),
    listening: Listening,
) {
    let allowed: &'static [Role] = &[Role::Account, Role::Admin];
    let auth = tls_accept::ClientAuth::Required(allowed);
    serve_tls(
        listener,
        acceptor,
        router,
        (shutdown, drain),
        auth,
        listening,
    )
    .await;
}

/// As [`serve_api`], for one of several coordinators (`cmd::ha`): the other coordinators'
/// certificates are admitted too, to forward their clients' writes.
pub async fn serve_api_among_coordinators(
    listener: TcpListener,
    acceptor: tls_accept::Acceptors,
    router: Router,
    (shutdown, drain): (CancellationToken, Duration),
    listening: Listening,
) {
    let allowed: &'static [Role] = &[Role::Account, Role::Admin, Role::Coordinator];
    let auth = tls_accept::ClientAuth::Required(allowed);
    serve_tls(
        listener,
        acceptor,
        router,
        (shutdown, drain),
        auth,
        listening,
    )
    .await;
}

/// The management listener: TLS whose client certificate is optional (the management token
/// authenticates instead); the operator APIs only.
pub async fn serve_management(
    listener: TcpListener,
    acceptor: tls_accept::Acceptors,
    router: Router,
    (shutdown, drain): (CancellationToken, Duration),
    listening: Listening,
) {
    let auth = tls_accept::ClientAuth::Optional;
    serve_tls(
        listener,
        acceptor,
        router,
        (shutdown, drain),
        auth,
        listening,
    )
    .await;
}

async fn serve_tls(
    listener: TcpListener,
    acceptor: tls_accept::Acceptors,
    router: Router,
    (shutdown, drain): (CancellationToken, Duration),
    auth: tls_accept::ClientAuth,
    listening: Listening,
) {
    let tracker = tokio_util::task::TaskTracker::new();
    let admit = tls_accept::Admit {
        name: listening.name,
        auth,
        gate: listening.gate(),
        handshake_timeout: listening.limits.header_timeout,
    };
    let handle = {
        let (tracker, shutdown, listening) = (tracker.clone(), shutdown.clone(), listening.clone());
        move |tls, identity: Option<PeerIdentity>, peer| {
            let token = tracker.token();
            let (router, shutdown, listening) =
                (router.clone(), shutdown.clone(), listening.clone());
            async move {
                let _in_flight = token;
                connection(tls, peer, identity, router, &listening, shutdown).await;
            }
        }
    };
    tls_accept::serve_auth(listener, acceptor, admit, shutdown, handle).await;
    drained(&tracker, drain, listening.name).await;
}

/// Serves `router` in plain HTTP (the admin listener: `/metrics`, `/healthz`, `/ready`).
pub async fn serve_plain(
    listener: TcpListener,
    router: Router,
    (shutdown, drain): (CancellationToken, Duration),
    listening: Listening,
) {
    let tracker = tokio_util::task::TaskTracker::new();
    let gate = listening.gate();
    loop {
        let (tcp, peer, admission) = tokio::select! {
            () = shutdown.cancelled() => break,
            a = backfill_shared::listener::accept(&listener, &gate, listening.name) => a,
        };
        let (router, shutdown, listening) = (router.clone(), shutdown.clone(), listening.clone());
        tracker.spawn(async move {
            let _admission = admission;
            connection(tcp, peer, None, router, &listening, shutdown).await;
        });
    }
    drained(&tracker, drain, listening.name).await;
}

async fn drained(tracker: &tokio_util::task::TaskTracker, drain: Duration, name: &'static str) {
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(
            listener = name,
            connections = tracker.len(),
            "requests still in flight after the drain timeout; closing them"
        );
    } else {
        tracing::info!(listener = name, "drained");
    }
}

/// The longest an idle connection gets to close politely (HTTP/2: GOAWAY) before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves one connection until it ends, its deadline passes, or `shutdown`.
async fn connection<I>(
    io: I,
    peer: SocketAddr,
    identity: Option<PeerIdentity>,
    router: Router,
    listening: &Listening,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new(listening.limits, Some(listening.on_timeout()));
    let watched = Watched::new(io, activity.clone());
    let requests = activity.clone();
    let svc = tower::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let h2 = req.version() == hyper::Version::HTTP_2;
        let in_flight = requests.begin(h2);
        let (mut parts, body) = req.into_parts();
        if let Some(id) = &identity {
            parts.extensions.insert(id.clone());
        }
        let body = RequestBody::new(body, &in_flight, h2);
        let answer = router
            .clone()
            .oneshot(hyper::Request::from_parts(parts, body));
        async move {
            let resp = answer.await?;
            Ok::<_, std::convert::Infallible>(resp.map(|b| ResponseBody::new(b, in_flight)))
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(watched), TowerToHyperService::new(svc));
    tokio::pin!(conn);
    let phase = tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(listener = listening.name, %peer, error = %e, "connection ended");
            }
            return;
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
            return;
        }
        phase = activity.expired() => phase,
    };
    activity.timed_out(phase);
    tracing::debug!(listener = listening.name, %peer, phase = phase.as_str(), "connection timed out; closing it");
    if phase == Phase::Idle {
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(IDLE_CLOSE_GRACE, conn).await;
    }
}

#[cfg(test)]
#[path = "serve_tests.rs"]
mod tests;
