//! What every HTTP listener of both daemons shares: the limits a connection lives under (header,
//! body and idle timeouts, connection caps), their configuration keys, and the accept step
//! (`TCP_NODELAY`, global and per-client connection caps, refusals closed at once).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// The limits one listener enforces, resolved from its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// From a connection's start, or from the first byte of a request, until the request's
    /// head (line and headers) is complete. Also the time a new connection has to send its
    /// first request (an idle TLS connection, a bare preface).
    pub header_timeout: Duration,
    /// From the request's head until its body is complete; a response being written may
    /// stall (the client reads nothing) no longer than this either.
    pub body_timeout: Duration,
    /// Between requests on a kept-alive connection.
    pub idle_timeout: Duration,
    /// Connections open at once on this listener; more are closed as they arrive.
    pub max_connections: usize,
    /// Connections open at once from one client address.
    pub max_connections_per_client: usize,
}

impl HttpLimits {
    /// The public API and the management listener: clients on the network, TLS.
    pub const API: HttpLimits = HttpLimits {
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
        max_connections: 1024,
        max_connections_per_client: 128,
    };
    /// `/metrics`, `/healthz`: a few scrapers and probes.
    pub const ADMIN: HttpLimits = HttpLimits {
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 64,
        max_connections_per_client: 16,
    };
    /// The guests' metadata service: many guests, each one address.
    pub const METADATA: HttpLimits = HttpLimits {
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
        max_connections: 4096,
        max_connections_per_client: 32,
    };
}

/// `[...http]` keys: each one absent takes the listener's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpLimitsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_timeout_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_timeout_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_client: Option<usize>,
}

/// The longest any of the timeouts may be set to.
const MAX_TIMEOUT_S: u64 = 3600;

impl HttpLimitsConfig {
    /// The configured limits over `defaults`.
    pub fn resolve(&self, defaults: HttpLimits) -> HttpLimits {
        let secs = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_secs);
        HttpLimits {
            header_timeout: secs(self.header_timeout_s, defaults.header_timeout),
            body_timeout: secs(self.body_timeout_s, defaults.body_timeout),
            idle_timeout: secs(self.idle_timeout_s, defaults.idle_timeout),
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            max_connections_per_client: self
                .max_connections_per_client
                .unwrap_or(defaults.max_connections_per_client),
        }
    }

    /// `Err((key, reason))` for a value out of range; `key` is relative to this table.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, v) in [
            ("header_timeout_s", self.header_timeout_s),
            ("body_timeout_s", self.body_timeout_s),
            ("idle_timeout_s", self.idle_timeout_s),
        ] {
            if v.is_some_and(|v| !(1..=MAX_TIMEOUT_S).contains(&v)) {
                return Err((key, format!("must be 1 to {MAX_TIMEOUT_S}")));
            }
        }
        for (key, v) in [
            ("max_connections", self.max_connections),
            (
                "max_connections_per_client",
                self.max_connections_per_client,
            ),
        ] {
            if v.is_some_and(|v| !(1..=1_000_000).contains(&v)) {
                return Err((key, "must be 1 to 1000000".into()));
            }
        }
        Ok(())
    }
}

/// Why a connection was refused at accept.
/// Which of a connection's deadlines passed (a label of the timeout metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A request's head (or a new connection's first request) took too long.
    Header,
    /// A request's body took too long.
    Body,
    /// No request for the idle timeout.
    Idle,
    /// A response could not be written (the client reads nothing) for the body timeout.
    Send,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Header => "header",
            Phase::Body => "body",
            Phase::Idle => "idle",
            Phase::Send => "send",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener has `max_connections` open.
    Global,
    /// This client address has `max_connections_per_client` open.
    PerClient,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Global => "max_connections",
            Refused::PerClient => "max_connections_per_client",
        }
    }
}

type OnRefused = Arc<dyn Fn(Refused) + Send + Sync>;

/// Counts a listener's open connections, in all and per client address.
pub struct ConnectionGate {
    max: usize,
    per_client: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    on_refused: Option<OnRefused>,
    /// When a refusal was last logged: at most one line a second.
    last_warning: Mutex<Option<tokio::time::Instant>>,
}

impl std::fmt::Debug for ConnectionGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionGate")
            .field("max", &self.max)
            .field("per_client", &self.per_client)
            .field("open", &self.open_now())
            .finish()
    }
}

impl ConnectionGate {
    pub fn new(limits: &HttpLimits) -> ConnectionGate {
        ConnectionGate {
            max: limits.max_connections.max(1),
            per_client: limits.max_connections_per_client.max(1),
            open: Mutex::new((0, HashMap::new())),
            on_refused: None,
            last_warning: Mutex::new(None),
        }
    }

    /// Calls `f` for every refusal (a metrics counter).
    pub fn on_refused(mut self, f: impl Fn(Refused) + Send + Sync + 'static) -> ConnectionGate {
        self.on_refused = Some(Arc::new(f));
        self
    }

    /// Connections open now.
    pub fn open_now(&self) -> usize {
        self.lock().0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<IpAddr, usize>)> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a refusal may be logged now (one line a second at most).
    fn may_warn(&self) -> bool {
        let now = tokio::time::Instant::now();
        let mut last = self
            .last_warning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let pass = last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if pass {
            *last = Some(now);
        }
        pass
    }

    /// A place for one more connection from `client`, held until the [`Admission`] drops.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Admission, Refused> {
        let refused = {
            let mut open = self.lock();
            let (total, by_client) = &mut *open;
            let mine = by_client.get(&client).copied().unwrap_or(0);
            if *total >= self.max {
                Some(Refused::Global)
            } else if mine >= self.per_client {
                Some(Refused::PerClient)
            } else {
                *total += 1;
                by_client.insert(client, mine + 1);
                None
            }
        };
        match refused {
            None => Ok(Admission {
                gate: self.clone(),
                client,
            }),
            Some(r) => {
                if let Some(f) = &self.on_refused {
                    f(r);
                }
                Err(r)
            }
        }
    }
}

/// One admitted connection; gives its place back when dropped.
#[derive(Debug)]
pub struct Admission {
    gate: Arc<ConnectionGate>,
    client: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut open = self.gate.lock();
        let (total, by_client) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = by_client.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_client.remove(&self.client);
            }
        }
    }
}

/// After a failed `accept` (out of descriptors, say), wait this long before the next one
/// rather than spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The next connection the gate admits, with `TCP_NODELAY` set (responses are written whole;
/// Nagle would hold a small one back for the client's delayed ACK). A refused connection is
/// closed at once and logged at most once a second. Cancel-safe.
pub async fn accept(
    listener: &TcpListener,
    gate: &Arc<ConnectionGate>,
    name: &'static str,
) -> (TcpStream, SocketAddr, Admission) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        match gate.admit(peer.ip()) {
            Ok(admission) => {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(listener = name, %peer, error = %e, "cannot set TCP_NODELAY");
                }
                return (tcp, peer, admission);
            }
            Err(reason) => {
                drop(tcp);
                if gate.may_warn() {
                    tracing::warn!(listener = name, %peer, reason = reason.as_str(), "connection refused: too many open");
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn limits(max: usize, per_client: usize) -> HttpLimits {
        HttpLimits {
            max_connections: max,
            max_connections_per_client: per_client,
            ..HttpLimits::API
        }
    }

    #[test]
    fn the_gate_caps_in_all_and_per_client() {
        let refusals = Arc::new(AtomicUsize::new(0));
        let counted = refusals.clone();
        let gate = Arc::new(ConnectionGate::new(&limits(3, 2)).on_refused(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
        }));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let a1 = gate.admit(a).unwrap();
        let _a2 = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).unwrap_err(), Refused::PerClient);
        let _b1 = gate.admit(b).unwrap();
        assert_eq!(gate.admit(c).unwrap_err(), Refused::Global);
        assert_eq!(gate.open_now(), 3);
        drop(a1);
        assert_eq!(gate.open_now(), 2);
        let _c1 = gate.admit(c).expect("a place was given back");
        assert_eq!(refusals.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn configuration_overrides_the_defaults_and_is_checked() {
        let cfg: HttpLimitsConfig =
            toml::from_str("idle_timeout_s = 5\nmax_connections = 7").unwrap();
        let l = cfg.resolve(HttpLimits::API);
        assert_eq!(l.idle_timeout, Duration::from_secs(5));
        assert_eq!(l.max_connections, 7);
        assert_eq!(l.header_timeout, HttpLimits::API.header_timeout);
        assert!(cfg.validate().is_ok());
        assert!(toml::from_str::<HttpLimitsConfig>("idle_timeout = 5").is_err());
        let zero: HttpLimitsConfig = toml::from_str("body_timeout_s = 0").unwrap();
        assert_eq!(zero.validate().unwrap_err().0, "body_timeout_s");
    }

    #[tokio::test]
    async fn accept_sets_nodelay_and_closes_refused_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = Arc::new(ConnectionGate::new(&limits(10, 1)));
        let first = TcpStream::connect(addr).await.unwrap();
        let (tcp, _, held) = accept(&listener, &gate, "test").await;
        assert!(tcp.nodelay().unwrap());
        let mut second = TcpStream::connect(addr).await.unwrap();
        // The loop refuses the second (its client reads end of file) and goes on accepting.
        let accepting = tokio::spawn({
            let gate = gate.clone();
            async move { accept(&listener, &gate, "test").await }
        });
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut second, &mut byte),
        )
        .await
        .unwrap();
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "refused connection stayed open"
        );
        drop((tcp, held, first));
        let third = TcpStream::connect(addr).await.unwrap();
        let (_, peer, _) = tokio::time::timeout(Duration::from_secs(10), accepting)
            .await
            .unwrap()
            .unwrap();
        assert!(peer.ip().is_loopback());
        drop(third);
    }
}
