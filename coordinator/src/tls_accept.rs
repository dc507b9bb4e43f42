//! Accepting mutual-TLS connections: handshake with a deadline, then the peer's role and name
//! from its verified certificate. Every refusal is logged with the reason, once per connection.

use backfill_shared::pki::{PeerIdentity, Role};
use backfill_shared::tls::peer_identity;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Completes the handshake and checks the role. `None` (after a log line) when refused.
pub async fn accept(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    listener: &'static str,
    allowed: &[Role],
) -> Option<(TlsStream<TcpStream>, PeerIdentity)> {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
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
    let identity = match peer_identity(tls.get_ref().1.peer_certificates()) {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(%peer, listener, error = %e, "client certificate refused");
            return None;
        }
    };
    if !allowed.contains(&identity.role) {
        tracing::warn!(
            %peer,
            listener,
            role = %identity.role,
            name = %identity.name,
            "client certificate refused: wrong role for this listener"
        );
        return None;
    }
    Some((tls, identity))
}
