//! The agent link listener: TLS with an agent certificate whose CN is the host id, then
//! postcard frames (see `backfill_shared::protocol`).

use crate::coordinator::Coordinator;
use crate::tls_accept;
use backfill_shared::HostId;
use backfill_shared::pki::{PeerIdentity, Role};
use backfill_shared::protocol::{
    self, AgentMessage, CoordinatorMessage, PROTOCOL_VERSION, ProtocolError,
};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// An agent that says nothing for this long is considered gone (it reports every 1 to 10 s).
const SILENCE_LIMIT: Duration = Duration::from_secs(30);
/// The desired state is re-sent this often, so an agent notices a vanished coordinator.
const HEARTBEAT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("agent certificate is for {cert:?} but Hello says {hello:?}")]
    WrongHost { cert: String, hello: String },
    #[error("agent said nothing for {0:?}")]
    Silent(Duration),
    #[error(transparent)]
    Op(#[from] crate::coordinator::OpError),
}

type Link = Framed<TlsStream<TcpStream>, tokio_util::codec::LengthDelimitedCodec>;

pub async fn serve_link(
    listener: TcpListener,
    acceptor: crate::tls_accept::Acceptors,
    coordinator: Arc<Coordinator>,
    shutdown: CancellationToken,
) {
    let conn_shutdown = shutdown.clone();
    let handle = move |tls, id: PeerIdentity, peer: SocketAddr| {
        let coordinator = coordinator.clone();
        let shutdown = conn_shutdown.clone();
        async move {
            let mut link = Framed::new(tls, protocol::codec());
            tokio::select! {
                () = shutdown.cancelled() => {}
                r = session(&mut link, &id.name, peer, &coordinator) => {
                    if let Err(e) = r {
                        tracing::warn!(%peer, host = %id.name, error = %e, "agent link closed");
                    }
                }
            }
        }
    };
    tls_accept::serve(
        listener,
        acceptor,
        "agent link",
        &[Role::Agent],
        shutdown,
        handle,
    )
    .await;
}

async fn send(link: &mut Link, msg: &CoordinatorMessage) -> Result<(), ProtocolError> {
    link.send(protocol::encode(msg)?).await?;
    Ok(())
}

async fn next(link: &mut Link) -> Result<AgentMessage, LinkError> {
    match tokio::time::timeout(SILENCE_LIMIT, link.next()).await {
        Err(_) => Err(LinkError::Silent(SILENCE_LIMIT)),
        Ok(None) => Err(ProtocolError::Closed.into()),
        Ok(Some(Err(e))) => Err(ProtocolError::Io(e).into()),
        Ok(Some(Ok(frame))) => Ok(protocol::decode(&frame)?),
    }
}

async fn session(
    link: &mut Link,
    cn: &str,
    peer: SocketAddr,
    coordinator: &Coordinator,
) -> Result<(), LinkError> {
    let hello = match next(link).await? {
        AgentMessage::Hello(h) => h,
        _ => return Err(ProtocolError::Unexpected("first message must be Hello").into()),
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        let reason = format!(
            "protocol version {} is not supported; this coordinator speaks {PROTOCOL_VERSION}",
            hello.protocol_version
        );
        send(link, &CoordinatorMessage::Refused { reason }).await?;
        return Err(ProtocolError::Version {
            peer: hello.protocol_version,
            ours: PROTOCOL_VERSION,
        }
        .into());
    }
    if hello.host_id.as_str() != cn {
        let err = LinkError::WrongHost {
            cert: cn.to_owned(),
            hello: hello.host_id.to_string(),
        };
        let reason = format!("refused: {err}");
        send(link, &CoordinatorMessage::Refused { reason }).await?;
        return Err(err);
    }
    let host: HostId = hello.host_id.clone();
    let (conn, mut desired) = coordinator
        .register_agent_from(&hello, Some(peer.ip()))
        .await?;
    let result = run(link, &host, conn, &mut desired, coordinator).await;
    coordinator.agent_gone(&host, conn).await;
    result
}

async fn run(
    link: &mut Link,
    host: &HostId,
    conn: u64,
    desired: &mut tokio::sync::watch::Receiver<Arc<protocol::DesiredState>>,
    coordinator: &Coordinator,
) -> Result<(), LinkError> {
    send(
        link,
        &CoordinatorMessage::Welcome {
            protocol_version: PROTOCOL_VERSION,
        },
    )
    .await?;
    let first = desired.borrow_and_update().clone();
    send(link, &CoordinatorMessage::DesiredState((*first).clone())).await?;
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                // Idempotent by design: the same state again is the heartbeat.
                let state = desired.borrow().clone();
                send(link, &CoordinatorMessage::DesiredState((*state).clone())).await?;
            }
            changed = desired.changed() => {
                if changed.is_err() {
                    return Ok(()); // superseded by a newer session of the same host
                }
                let state = desired.borrow_and_update().clone();
                send(link, &CoordinatorMessage::DesiredState((*state).clone())).await?;
            }
            msg = next(link) => match msg? {
                AgentMessage::Report(r) => coordinator.apply_report(host, conn, r).await?,
                AgentMessage::Ack(a) => tracing::debug!(host = %host, generation = a.generation, "ack"),
                AgentMessage::Hello(_) => {
                    return Err(ProtocolError::Unexpected("Hello after registration").into());
                }
            },
        }
    }
}
