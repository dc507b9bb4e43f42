//! The agent link listener: TLS with an agent certificate whose CN is the host id, then
//! postcard frames (see `backfill_shared::protocol`). Liveness is a deadline that only a frame
//! received from the agent extends: the coordinator's own heartbeats do not, so a frozen or
//! cut-off agent is noticed and its host marked down.

use crate::state::coordinator::Coordinator;
use crate::tls_accept;
use backfill_shared::HostId;
use backfill_shared::pki::{PeerIdentity, Role};
use backfill_shared::protocol::{
    self, AgentMessage, CoordinatorMessage, PROTOCOL_VERSION, ProtocolError,
};
use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// `[link]`: how the coordinator tells a live agent from a lost one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// An agent that sends nothing for this long (it reports every 1 to 10 s) is taken for
    /// lost: its host is `down`, its capacity leaves `free_resources`, and servers placed
    /// there that it never confirmed go back to the queue. 5 to 600.
    #[serde(default = "default_silence")]
    pub silence_s: u64,
    /// The desired state is re-sent this often, so an agent notices a vanished coordinator.
    /// 1 to 60, and less than `silence_s`.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_s: u64,
}

fn default_silence() -> u64 {
    30
}

fn default_heartbeat() -> u64 {
    10
}

impl Default for LinkConfig {
    fn default() -> LinkConfig {
        LinkConfig {
            silence_s: default_silence(),
            heartbeat_s: default_heartbeat(),
        }
    }
}

impl LinkConfig {
    /// `(key, reason)` for the first bad setting.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if !(5..=600).contains(&self.silence_s) {
            return Err(("link.silence_s", "must be 5 to 600"));
        }
        if !(1..=60).contains(&self.heartbeat_s) || self.heartbeat_s >= self.silence_s {
            return Err((
                "link.heartbeat_s",
                "must be 1 to 60 and less than silence_s",
            ));
        }
        Ok(())
    }

    pub fn silence(&self) -> Duration {
        Duration::from_secs(self.silence_s)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("agent certificate is for {cert:?} but Hello says {hello:?}")]
    WrongHost { cert: String, hello: String },
    #[error("agent said nothing for {0:?}")]
    Silent(Duration),
    #[error(transparent)]
    Op(#[from] crate::state::coordinator::OpError),
}

pub async fn serve_link(
    listener: TcpListener,
    acceptor: crate::tls_accept::Acceptors,
    coordinator: Arc<Coordinator>,
    timing: LinkConfig,
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
                r = session(&mut link, &id.name, peer, &coordinator, timing) => {
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

async fn send<L>(link: &mut L, msg: &CoordinatorMessage) -> Result<(), ProtocolError>
where
    L: Sink<Bytes, Error = std::io::Error> + Unpin,
{
    link.send(protocol::encode(msg)?).await?;
    Ok(())
}

/// The next message, or `Silent` once `deadline` passes with nothing received.
async fn next_until<L>(
    link: &mut L,
    deadline: Instant,
    silence: Duration,
) -> Result<AgentMessage, LinkError>
where
    L: Stream<Item = std::io::Result<BytesMut>> + Unpin,
{
    match tokio::time::timeout_at(deadline, link.next()).await {
        Err(_) => Err(LinkError::Silent(silence)),
        Ok(None) => Err(ProtocolError::Closed.into()),
        Ok(Some(Err(e))) => Err(ProtocolError::Io(e).into()),
        Ok(Some(Ok(frame))) => Ok(protocol::decode(&frame)?),
    }
}

pub(crate) async fn session<L>(
    link: &mut L,
    cn: &str,
    peer: SocketAddr,
    coordinator: &Coordinator,
    timing: LinkConfig,
) -> Result<(), LinkError>
where
    L: Stream<Item = std::io::Result<BytesMut>> + Sink<Bytes, Error = std::io::Error> + Unpin,
{
    let silence = timing.silence();
    let hello = match next_until(link, Instant::now() + silence, silence).await? {
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
    let result = run(link, &host, conn, &mut desired, coordinator, timing).await;
    coordinator.agent_gone(&host, conn).await;
    result
}

pub(crate) async fn run<L>(
    link: &mut L,
    host: &HostId,
    conn: u64,
    desired: &mut tokio::sync::watch::Receiver<Arc<protocol::DesiredState>>,
    coordinator: &Coordinator,
    timing: LinkConfig,
) -> Result<(), LinkError>
where
    L: Stream<Item = std::io::Result<BytesMut>> + Sink<Bytes, Error = std::io::Error> + Unpin,
{
    send(
        link,
        &CoordinatorMessage::Welcome {
            protocol_version: PROTOCOL_VERSION,
        },
    )
    .await?;
    let first = desired.borrow_and_update().clone();
    send(link, &CoordinatorMessage::DesiredState((*first).clone())).await?;
    let mut drives = DriveLinks {
        orders: coordinator.drive_channel(host, conn).await,
        moves: coordinator.move_channel(host, conn).await,
    };
    let result = run_drives(link, host, conn, desired, &mut drives, coordinator, timing).await;
    coordinator.drive_channel_gone(host, conn).await;
    coordinator.move_channel_gone(host, conn).await;
    result
}

/// A session's drive channels: its host's drive orders, and the steps of drive moves.
struct DriveLinks {
    orders: tokio::sync::watch::Receiver<Arc<backfill_shared::drive::DriveOrders>>,
    moves: tokio::sync::mpsc::UnboundedReceiver<backfill_shared::drive_move::MoveOrder>,
}

/// The exchange after the first desired state: desired states and drive orders out (each on
/// change and with every heartbeat), reports in.
async fn run_drives<L>(
    link: &mut L,
    host: &HostId,
    conn: u64,
    desired: &mut tokio::sync::watch::Receiver<Arc<protocol::DesiredState>>,
    links: &mut DriveLinks,
    coordinator: &Coordinator,
    timing: LinkConfig,
) -> Result<(), LinkError>
where
    L: Stream<Item = std::io::Result<BytesMut>> + Sink<Bytes, Error = std::io::Error> + Unpin,
{
    let DriveLinks {
        orders: drives,
        moves,
    } = links;
    let orders = drives.borrow_and_update().clone();
    send(link, &CoordinatorMessage::Drives((*orders).clone())).await?;
    let (silence, beat) = (timing.silence(), timing.heartbeat());
    let mut deadline = Instant::now() + silence;
    let mut heartbeat = tokio::time::interval_at(Instant::now() + beat, beat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(host = %host, ?silence, "agent silent; taking its host for lost");
                return Err(LinkError::Silent(silence));
            }
            _ = heartbeat.tick() => {
                // Idempotent by design: the same state again is the heartbeat.
                let state = desired.borrow().clone();
                send(link, &CoordinatorMessage::DesiredState((*state).clone())).await?;
                let orders = drives.borrow().clone();
                send(link, &CoordinatorMessage::Drives((*orders).clone())).await?;
            }
            changed = drives.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let orders = drives.borrow_and_update().clone();
                send(link, &CoordinatorMessage::Drives((*orders).clone())).await?;
            }
            Some(order) = moves.recv() => {
                send(link, &CoordinatorMessage::DriveMove(order)).await?;
            }
            changed = desired.changed() => {
                if changed.is_err() {
                    return Ok(()); // superseded by a newer session of the same host
                }
                let state = desired.borrow_and_update().clone();
                send(link, &CoordinatorMessage::DesiredState((*state).clone())).await?;
            }
            frame = link.next() => {
                let msg: AgentMessage = match frame {
                    None => return Err(ProtocolError::Closed.into()),
                    Some(Err(e)) => return Err(ProtocolError::Io(e).into()),
                    Some(Ok(frame)) => protocol::decode(&frame)?,
                };
                deadline = Instant::now() + silence;
                match msg {
                    AgentMessage::Report(r) => coordinator.apply_report(host, conn, r).await?,
                    AgentMessage::Ack(a) => tracing::debug!(host = %host, generation = a.generation, "ack"),
                    AgentMessage::Drives(r) => coordinator.apply_drive_report(host, r).await?,
                    AgentMessage::DriveMove(r) => coordinator.apply_move_report(host, r).await?,
                    AgentMessage::Hello(_) => {
                        return Err(ProtocolError::Unexpected("Hello after registration").into());
                    }
                }
            }
        }
    }
}
