//! The link to the coordinator: mutual TLS, `Hello`, then desired states in and reports out.
//! Liveness is a deadline that only a frame received from the coordinator extends (it re-sends
//! the desired state every 10 s), so a frozen or cut-off coordinator is noticed. Reconnects
//! with capped, jittered backoff that resets on every successful handshake; workloads keep
//! running meanwhile.

use crate::supervisor::Supervisor;
use backfill_shared::protocol::{
    self, Ack, AgentMessage, CoordinatorMessage, Hello, PROTOCOL_VERSION, ProtocolError,
};
use backfill_shared::{HostId, HostInventory};
use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(100);
/// A coordinator that is back is redialled within this long (plus nothing: the jitter is taken
/// off, not added), so a restart costs the fleet about a second of link.
const BACKOFF_CAP: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot reach the coordinator at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to the coordinator at {0} timed out")]
    Timeout(SocketAddr),
    #[error("{0:?} is not a valid coordinator name")]
    BadName(String),
    #[error("the coordinator refused this agent: {0}")]
    Refused(String),
    #[error("this coordinator does not lead; the leader's agent link is {0}")]
    Redirect(SocketAddr),
    #[error("the coordinator redirected to {0:?}, which is not an ip:port")]
    BadRedirect(String),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("the coordinator said nothing for {0:?}")]
    Silent(Duration),
    #[error("the supervisor panicked or was cancelled")]
    Supervisor,
}

type Link = Framed<TlsStream<TcpStream>, LengthDelimitedCodec>;

pub struct LinkParams {
    /// The coordinators to try, in turn (one, or several sharing a PostgreSQL: any of them
    /// redirects to the leader).
    pub addrs: Vec<SocketAddr>,
    pub server_name: ServerName<'static>,
    /// Replaced by a certificate reload (SIGHUP); each new connection uses the current one.
    pub connector: Arc<std::sync::RwLock<TlsConnector>>,
    pub host_id: HostId,
    pub inventory: HostInventory,
    pub report_interval: Duration,
    /// Silence from the coordinator this long drops the link (it is then redialled).
    pub silence_limit: Duration,
    pub metrics: Arc<crate::admin::AgentMetrics>,
    /// The drives of this host, when it runs VMs.
    pub drives: Option<Arc<crate::drives::DriveStore>>,
}

impl LinkParams {
    pub fn server_name(name: &str) -> Result<ServerName<'static>, LinkError> {
        ServerName::try_from(name.to_owned()).map_err(|_| LinkError::BadName(name.to_owned()))
    }
}

/// Runs until `shutdown`; never gives up on the coordinator.
pub async fn run(
    p: LinkParams,
    supervisor: Arc<Mutex<Supervisor>>,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut attempt: u32 = 0;
    // Which of `addrs` to dial next, unless a coordinator redirected us to the leader.
    let mut next = 0usize;
    let mut redirected: Option<SocketAddr> = None;
    loop {
        let mut welcomed = false;
        let addr = match redirected.take() {
            Some(a) => a,
            None => {
                let a = p.addrs.get(next % p.addrs.len().max(1)).copied();
                next = next.wrapping_add(1);
                match a {
                    Some(a) => a,
                    None => return,
                }
            }
        };
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = session(&p, addr, &supervisor, &changed, &mut welcomed) => r,
        };
        p.metrics.link_connected.set(0);
        match result {
            Ok(()) => tracing::warn!(coordinator = %addr, "coordinator closed the link"),
            Err(LinkError::Redirect(leader)) => {
                tracing::info!(coordinator = %addr, %leader, "redirected to the leading coordinator");
                // Once: if the leader is gone by the time we dial, the list is tried again.
                if leader != addr {
                    redirected = Some(leader);
                    continue;
                }
            }
            Err(e) => {
                tracing::warn!(coordinator = %addr, error = %e, "coordinator link down; workloads keep running")
            }
        }
        // A coordinator that took us in is worth redialling at once: it was restarted, or
        // the link broke (with several, the leader moved: the next one redirects); only
        // failed dials back off.
        if welcomed {
            attempt = 0;
            // Dial the same coordinator first again.
            next = next.wrapping_sub(1);
        }
        let delay = backoff(attempt);
        attempt = attempt.saturating_add(1);
        tracing::info!(retry_in = ?delay, "reconnecting to the coordinator");
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Exponential from 100 ms, capped at 1 s, less up to 50% random jitter (so a fleet that lost
/// its coordinator does not redial in lockstep, and never waits more than the cap).
pub fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_START
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(BACKOFF_CAP);
    let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u32; // 0..1000 per-mille
    base.saturating_sub(base.mul_f64(f64::from(jitter) / 2000.0))
}

/// `fut` within the connect deadline; a timeout or an IO error both name the coordinator.
async fn within<T>(
    addr: SocketAddr,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, LinkError> {
    tokio::time::timeout(CONNECT_TIMEOUT, fut)
        .await
        .map_err(|_| LinkError::Timeout(addr))?
        .map_err(|source| LinkError::Connect { addr, source })
}

async fn connect(p: &LinkParams, addr: SocketAddr) -> Result<Link, LinkError> {
    let tcp = within(addr, TcpStream::connect(addr)).await?;
    let _ = tcp.set_nodelay(true);
    let connector = p
        .connector
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let tls = within(addr, connector.connect(p.server_name.clone(), tcp)).await?;
    Ok(Framed::new(tls, protocol::codec()))
}

async fn send<L>(link: &mut L, msg: &AgentMessage) -> Result<(), LinkError>
where
    L: Sink<Bytes, Error = std::io::Error> + Unpin,
{
    link.send(protocol::encode(msg)?)
        .await
        .map_err(ProtocolError::Io)?;
    Ok(())
}

/// The next message, or `Silent` once `deadline` passes with nothing received.
async fn recv_until<L>(
    link: &mut L,
    deadline: Instant,
    silence: Duration,
) -> Result<CoordinatorMessage, LinkError>
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

/// Runs blocking supervisor work off the async threads.
async fn with_supervisor<T: Send + 'static>(
    supervisor: &Arc<Mutex<Supervisor>>,
    f: impl FnOnce(&mut Supervisor) -> T + Send + 'static,
) -> Result<T, LinkError> {
    let s = supervisor.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    })
    .await
    .map_err(|_| LinkError::Supervisor)
}

async fn report<L>(link: &mut L, supervisor: &Arc<Mutex<Supervisor>>) -> Result<(), LinkError>
where
    L: Sink<Bytes, Error = std::io::Error> + Unpin,
{
    let r = with_supervisor(supervisor, |s| s.report()).await?;
    send(link, &AgentMessage::Report(r)).await
}

/// One connection: dial, handshake (setting `welcomed` once the coordinator took us in), then
/// exchange until an error or silence.
async fn session(
    p: &LinkParams,
    addr: SocketAddr,
    supervisor: &Arc<Mutex<Supervisor>>,
    changed: &Notify,
    welcomed: &mut bool,
) -> Result<(), LinkError> {
    let mut link: Link = connect(p, addr).await?;
    let (enforcing, gpus, drivers) = with_supervisor(supervisor, |s| {
        (
            s.enforcing(),
            s.gpu_scan().devices.clone(),
            s.driver_inventory(),
        )
    })
    .await?;
    // The GPUs as last read and the drivers as they are now (a VM image added to the image
    // directory counts from the next connection), not as they were when the agent started.
    let mut inventory = p.inventory.clone();
    inventory.gpus = gpus;
    inventory.drivers = drivers;
    send(
        &mut link,
        &AgentMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            host_id: p.host_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            inventory,
            enforcing,
        }),
    )
    .await?;
    let deadline = Instant::now() + p.silence_limit.min(CONNECT_TIMEOUT);
    match recv_until(&mut link, deadline, p.silence_limit).await? {
        CoordinatorMessage::Welcome { protocol_version } => {
            tracing::info!(coordinator = %addr, protocol_version, "connected to the coordinator");
            *welcomed = true;
            p.metrics.link_connected.set(1);
            p.metrics.link_sessions.inc();
        }
        CoordinatorMessage::Refused { reason } => return Err(LinkError::Refused(reason)),
        CoordinatorMessage::Redirect { link } => {
            return Err(match link.parse() {
                Ok(leader) => LinkError::Redirect(leader),
                Err(_) => LinkError::BadRedirect(link.chars().take(100).collect()),
            });
        }
        CoordinatorMessage::DesiredState(_)
        | CoordinatorMessage::Drives(_)
        | CoordinatorMessage::DriveMove(_) => {
            return Err(ProtocolError::Unexpected("desired state before Welcome").into());
        }
    }
    exchange_with(
        &mut link,
        supervisor,
        changed,
        p.report_interval,
        p.silence_limit,
        p.drives.as_ref(),
    )
    .await
}

/// After the handshake: applies desired states and reports, until the link fails or the
/// coordinator has said nothing for `silence`. Only a received frame moves the deadline; the
/// agent's own reports do not.
#[cfg(test)]
async fn exchange<L>(
    link: &mut L,
    supervisor: &Arc<Mutex<Supervisor>>,
    changed: &Notify,
    report_interval: Duration,
    silence: Duration,
) -> Result<(), LinkError>
where
    L: Stream<Item = std::io::Result<BytesMut>> + Sink<Bytes, Error = std::io::Error> + Unpin,
{
    exchange_with(link, supervisor, changed, report_interval, silence, None).await
}

/// [`exchange`], with this host's drives: drive orders are carried out off the async threads
/// (a copy may take a while), one at a time, and each answers with a drive report.
async fn exchange_with<L>(
    link: &mut L,
    supervisor: &Arc<Mutex<Supervisor>>,
    changed: &Notify,
    report_interval: Duration,
    silence: Duration,
    drives: Option<&Arc<crate::drives::DriveStore>>,
) -> Result<(), LinkError>
where
    L: Stream<Item = std::io::Result<BytesMut>> + Sink<Bytes, Error = std::io::Error> + Unpin,
{
    let (drive_tx, mut drive_rx) =
        tokio::sync::mpsc::channel::<backfill_shared::drive::DriveReport>(4);
    // The latest orders not yet taken up: a newer order replaces an older one that waits.
    let pending: Arc<Mutex<Option<backfill_shared::drive::DriveOrders>>> = Arc::default();
    // Steps of drive moves, in order, off the async threads (ends with this session).
    let (move_tx, mut move_rx) = crate::drive_move::worker(drives.cloned());
    report(link, supervisor).await?;
    let mut deadline = Instant::now() + silence;
    let mut ticker = tokio::time::interval(report_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return Err(LinkError::Silent(silence)),
            frame = link.next() => {
                let msg: CoordinatorMessage = match frame {
                    None => return Err(ProtocolError::Closed.into()),
                    Some(Err(e)) => return Err(ProtocolError::Io(e).into()),
                    Some(Ok(frame)) => protocol::decode(&frame)?,
                };
                deadline = Instant::now() + silence;
                match msg {
                    CoordinatorMessage::DesiredState(d) => {
                        let generation = d.generation;
                        with_supervisor(supervisor, move |s| s.apply(&d)).await?;
                        send(link, &AgentMessage::Ack(Ack { generation })).await?;
                        report(link, supervisor).await?;
                    }
                    CoordinatorMessage::Refused { reason } => return Err(LinkError::Refused(reason)),
                    CoordinatorMessage::Welcome { .. } => {
                        return Err(ProtocolError::Unexpected("second Welcome").into());
                    }
                    CoordinatorMessage::Redirect { .. } => {
                        return Err(ProtocolError::Unexpected("Redirect after Welcome").into());
                    }
                    CoordinatorMessage::Drives(orders) => match drives {
                        Some(store) => apply_drives(store, &pending, orders, &drive_tx),
                        None => {
                            let failed = no_drives_here(&orders);
                            send(link, &AgentMessage::Drives(failed)).await?;
                        }
                    },
                    CoordinatorMessage::DriveMove(order) => {
                        let _ = move_tx.send(order);
                    }
                }
            }
            Some(r) = drive_rx.recv() => send(link, &AgentMessage::Drives(r)).await?,
            Some(r) = move_rx.recv() => send(link, &AgentMessage::DriveMove(r)).await?,
            () = changed.notified() => report(link, supervisor).await?,
            _ = ticker.tick() => report(link, supervisor).await?,
        }
    }
}

/// Hands `orders` to a blocking task unless one is already waiting (it then takes these
/// instead): a burst of orders costs one pass, and passes never overlap.
fn apply_drives(
    store: &Arc<crate::drives::DriveStore>,
    pending: &Arc<Mutex<Option<backfill_shared::drive::DriveOrders>>>,
    orders: backfill_shared::drive::DriveOrders,
    tx: &tokio::sync::mpsc::Sender<backfill_shared::drive::DriveReport>,
) {
    let waiting = {
        let mut p = pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        p.replace(orders).is_some()
    };
    if waiting {
        return;
    }
    let (store, pending, tx) = (store.clone(), pending.clone(), tx.clone());
    tokio::task::spawn_blocking(move || {
        let next = pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(orders) = next {
            let _ = tx.blocking_send(store.apply(&orders));
        }
    });
}

/// The answer of a host without the vm driver: every drive it is asked to hold fails.
fn no_drives_here(
    orders: &backfill_shared::drive::DriveOrders,
) -> backfill_shared::drive::DriveReport {
    use backfill_shared::drive::{ObservedDrive, ObservedDriveState};
    backfill_shared::drive::DriveReport {
        drives: orders
            .drives
            .iter()
            .map(|d| ObservedDrive {
                id: d.id,
                size: 0,
                state: ObservedDriveState::Failed {
                    reason: "this host does not run VMs (no vm driver), so it holds no drives"
                        .into(),
                },
            })
            .collect(),
    }
}

#[cfg(test)]
#[path = "link_tests.rs"]
mod tests;
