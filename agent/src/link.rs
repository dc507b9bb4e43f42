//! The link to the coordinator: mutual TLS, `Hello`, then desired states in and reports out.
//! Reconnects with capped exponential backoff and jitter; workloads keep running meanwhile.

use crate::supervisor::Supervisor;
use backfill_shared::protocol::{
    self, Ack, AgentMessage, CoordinatorMessage, Hello, PROTOCOL_VERSION, ProtocolError,
};
use backfill_shared::{HostId, HostInventory};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The coordinator re-sends the desired state every 10 s; silence this long means it is gone.
const SILENCE_LIMIT: Duration = Duration::from_secs(35);
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

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
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("the coordinator said nothing for {0:?}")]
    Silent(Duration),
    #[error("the supervisor panicked or was cancelled")]
    Supervisor,
}

type Link = Framed<TlsStream<TcpStream>, LengthDelimitedCodec>;

pub struct LinkParams {
    pub addr: SocketAddr,
    pub server_name: ServerName<'static>,
    /// Replaced by a certificate reload (SIGHUP); each new connection uses the current one.
    pub connector: Arc<std::sync::RwLock<TlsConnector>>,
    pub host_id: HostId,
    pub inventory: HostInventory,
    pub report_interval: Duration,
    pub metrics: Arc<crate::admin::AgentMetrics>,
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
    loop {
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = session(&p, &supervisor, &changed) => r,
        };
        p.metrics.link_connected.set(0);
        match result {
            Ok(()) => tracing::warn!("coordinator closed the link"),
            Err(e) => tracing::warn!(error = %e, "coordinator link down; workloads keep running"),
        }
        // A session that lasted a while resets the backoff.
        if started.elapsed() > BACKOFF_CAP {
            attempt = 0;
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

/// Exponential from 200 ms, capped at 30 s, with up to 50% random jitter on top.
pub fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_START
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(BACKOFF_CAP);
    let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u32; // 0..1000 per-mille
    base + base.mul_f64(f64::from(jitter) / 2000.0)
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

async fn connect(p: &LinkParams) -> Result<Link, LinkError> {
    let tcp = within(p.addr, TcpStream::connect(p.addr)).await?;
    let _ = tcp.set_nodelay(true);
    let connector = p
        .connector
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let tls = within(p.addr, connector.connect(p.server_name.clone(), tcp)).await?;
    Ok(Framed::new(tls, protocol::codec()))
}

async fn send(link: &mut Link, msg: &AgentMessage) -> Result<(), LinkError> {
    link.send(protocol::encode(msg)?)
        .await
        .map_err(ProtocolError::Io)?;
    Ok(())
}

async fn recv(link: &mut Link) -> Result<CoordinatorMessage, LinkError> {
    match tokio::time::timeout(SILENCE_LIMIT, link.next()).await {
        Err(_) => Err(LinkError::Silent(SILENCE_LIMIT)),
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

async fn report(link: &mut Link, supervisor: &Arc<Mutex<Supervisor>>) -> Result<(), LinkError> {
    let r = with_supervisor(supervisor, |s| s.report()).await?;
    send(link, &AgentMessage::Report(r)).await
}

async fn session(
    p: &LinkParams,
    supervisor: &Arc<Mutex<Supervisor>>,
    changed: &Notify,
) -> Result<(), LinkError> {
    let mut link = connect(p).await?;
    let (enforcing, gpus) = with_supervisor(supervisor, |s| {
        (s.enforcing(), s.gpu_scan().devices.clone())
    })
    .await?;
    // The GPUs as last read, not as they were when the agent started.
    let mut inventory = p.inventory.clone();
    inventory.gpus = gpus;
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
    match recv(&mut link).await? {
        CoordinatorMessage::Welcome { protocol_version } => {
            tracing::info!(coordinator = %p.addr, protocol_version, "connected to the coordinator");
            p.metrics.link_connected.set(1);
            p.metrics.link_sessions.inc();
        }
        CoordinatorMessage::Refused { reason } => return Err(LinkError::Refused(reason)),
        CoordinatorMessage::DesiredState(_) => {
            return Err(ProtocolError::Unexpected("desired state before Welcome").into());
        }
    }
    report(&mut link, supervisor).await?;
    let mut ticker = tokio::time::interval(p.report_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = recv(&mut link) => match msg? {
                CoordinatorMessage::DesiredState(d) => {
                    let generation = d.generation;
                    with_supervisor(supervisor, move |s| s.apply(&d)).await?;
                    send(&mut link, &AgentMessage::Ack(Ack { generation })).await?;
                    report(&mut link, supervisor).await?;
                }
                CoordinatorMessage::Refused { reason } => return Err(LinkError::Refused(reason)),
                CoordinatorMessage::Welcome { .. } => {
                    return Err(ProtocolError::Unexpected("second Welcome").into());
                }
            },
            () = changed.notified() => report(&mut link, supervisor).await?,
            _ = ticker.tick() => report(&mut link, supervisor).await?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let b0 = backoff(0);
        assert!(b0 >= BACKOFF_START && b0 <= BACKOFF_START.mul_f64(1.5));
        let b3 = backoff(3);
        assert!(b3 >= BACKOFF_START * 8 && b3 <= (BACKOFF_START * 8).mul_f64(1.5));
        for a in [10, 20, u32::MAX] {
            let b = backoff(a);
            assert!(
                b >= BACKOFF_CAP && b <= BACKOFF_CAP.mul_f64(1.5),
                "{a}: {b:?}"
            );
        }
    }
}
