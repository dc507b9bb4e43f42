//! Accepting mutual-TLS connections: handshake with a deadline, then the peer's role and name
//! from its verified certificate. Every refusal is logged with the reason, once per connection.

use backfill_shared::listener::{ConnectionGate, HttpLimits};
use backfill_shared::pki::{PeerIdentity, Role};
use backfill_shared::tls::peer_identity;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// The listeners' TLS acceptor, replaceable while they run: a certificate reload (SIGHUP)
/// applies to every connection accepted after it.
#[derive(Clone)]
pub struct Acceptors(Arc<RwLock<TlsAcceptor>>);

impl std::fmt::Debug for Acceptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Acceptors")
    }
}

impl Acceptors {
    pub fn new(acceptor: TlsAcceptor) -> Acceptors {
        Acceptors(Arc::new(RwLock::new(acceptor)))
    }

    pub fn current(&self) -> TlsAcceptor {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn replace(&self, acceptor: TlsAcceptor) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = acceptor;
    }
}

/// What a listener asks of its clients.
#[derive(Debug, Clone, Copy)]
pub enum ClientAuth {
    /// A CA-signed certificate of one of these roles.
    Required(&'static [Role]),
    /// A certificate if the client has one (the TLS config must allow none); the request is
    /// authenticated another way (the management token) otherwise.
    Optional,
}

/// How a listener admits connections before handing them over.
#[derive(Debug, Clone)]
pub struct Admit {
    /// For the logs.
    pub name: &'static str,
    pub auth: ClientAuth,
    /// Connection caps, global and per client address; checked before the handshake.
    pub gate: Arc<ConnectionGate>,
    /// The longest a TLS handshake may take.
    pub handshake_timeout: Duration,
}

/// The agent link's connection caps: room for a large fleet, and for the several agents that
/// `dev` starts on one machine, while one address cannot hold thousands of handshakes open.
const LINK_LIMITS: HttpLimits = HttpLimits {
    max_connections: 65_536,
    max_connections_per_client: 256,
    ..HttpLimits::API
};

/// Accepts connections until `shutdown`; each one that completes the handshake with an allowed
/// role is handed to `handle` on its own task.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    acceptors: Acceptors,
    name: &'static str,
    allowed: &'static [Role],
    shutdown: CancellationToken,
    handle: F,
) where
    F: Fn(TlsStream<TcpStream>, PeerIdentity, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = move |tls, id: Option<PeerIdentity>, peer| {
        let handle = handle.clone();
        async move {
            if let Some(id) = id {
                handle(tls, id, peer).await;
            }
        }
    };
    let admit = Admit {
        name,
        auth: ClientAuth::Required(allowed),
        gate: Arc::new(ConnectionGate::new(&LINK_LIMITS)),
        handshake_timeout: HANDSHAKE_TIMEOUT,
    };
    serve_auth(listener, acceptors, admit, shutdown, handle).await;
}

/// As [`serve`], with the client's certificate optional when `admit.auth` says so. Accepted
/// sockets get `TCP_NODELAY`; connections over the caps are closed before the handshake.
pub async fn serve_auth<F, Fut>(
    listener: TcpListener,
    acceptors: Acceptors,
    admit: Admit,
    shutdown: CancellationToken,
    handle: F,
) where
    F: Fn(TlsStream<TcpStream>, Option<PeerIdentity>, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (name, auth, timeout) = (admit.name, admit.auth, admit.handshake_timeout);
    loop {
        let (tcp, peer, admission) = tokio::select! {
            () = shutdown.cancelled() => return,
            a = backfill_shared::listener::accept(&listener, &admit.gate, name) => a,
        };
        let acceptor = acceptors.current();
        let handle = handle.clone();
        tokio::spawn(async move {
            let _admission = admission;
            if let Some((tls, id)) = accept(&acceptor, tcp, peer, (name, timeout), auth).await {
                handle(tls, id, peer).await;
            }
        });
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Completes the handshake (within `timeout`) and checks the role. `None` (after a log line)
/// when refused.
pub async fn accept(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    (listener, timeout): (&'static str, Duration),
    auth: ClientAuth,
) -> Option<(TlsStream<TcpStream>, Option<PeerIdentity>)> {
    let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            // rustls says why: unknown issuer (foreign CA), expired, no certificate, ...
            tracing::warn!(%peer, listener, error = %e, "TLS handshake refused");
            return None;
        }
        Err(_) => {
            tracing::warn!(%peer, listener, "TLS handshake timed out");
            return None;
        }
    };
    let certs = tls.get_ref().1.peer_certificates();
    let allowed = match auth {
        ClientAuth::Optional if certs.is_none_or(<[_]>::is_empty) => return Some((tls, None)),
        ClientAuth::Optional => None,
        ClientAuth::Required(roles) => Some(roles),
    };
    let identity = match peer_identity(certs) {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(%peer, listener, error = %e, "client certificate refused");
            return None;
        }
    };
    if allowed.is_some_and(|roles| !roles.contains(&identity.role)) {
        tracing::warn!(
            %peer,
            listener,
            role = %identity.role,
            name = %identity.name,
            "client certificate refused: wrong role for this listener"
        );
        return None;
    }
    Some((tls, Some(identity)))
}
