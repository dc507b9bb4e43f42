//! The agent link in front of the roles: the leader runs the usual session (ended, and the
//! link closed, when its term ends); a follower reads the agent's `Hello` and answers
//! `Redirect` to the leader's link, or `Refused` while no coordinator leads (the agent then
//! redials its list; its workloads keep running and its terminations keep being enforced).

use super::serve::Ha;
use crate::link::LinkConfig;
use crate::tls_accept;
use backfill_shared::pki::{PeerIdentity, Role};
use backfill_shared::protocol::{self, AgentMessage, CoordinatorMessage};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// How long a follower waits for an agent's `Hello`.
const HELLO_WAIT: Duration = Duration::from_secs(10);

pub async fn serve(
    listener: TcpListener,
    acceptor: tls_accept::Acceptors,
    ha: Arc<Ha>,
    timing: LinkConfig,
    shutdown: CancellationToken,
) {
    let conn_shutdown = shutdown.clone();
    let handle = move |tls, id: PeerIdentity, peer: SocketAddr| {
        let (ha, shutdown) = (ha.clone(), conn_shutdown.clone());
        async move {
            let mut link = Framed::new(tls, protocol::codec());
            if let Some((views, term)) = ha.leading_term() {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = term.cancelled() => {
                        tracing::info!(%peer, host = %id.name, "agent link closed: no longer the leader");
                    }
                    r = crate::link::session(&mut link, &id.name, peer, &views.coordinator, timing) => {
                        if let Err(e) = r {
                            tracing::warn!(%peer, host = %id.name, error = %e, "agent link closed");
                        }
                    }
                }
                return;
            }
            redirect(&mut link, &ha, &id.name, peer).await;
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

async fn redirect<L>(link: &mut L, ha: &Ha, host: &str, peer: SocketAddr)
where
    L: futures_util::Stream<Item = std::io::Result<bytes::BytesMut>>
        + futures_util::Sink<bytes::Bytes, Error = std::io::Error>
        + Unpin,
{
    match tokio::time::timeout(HELLO_WAIT, link.next()).await {
        Ok(Some(Ok(frame))) => match protocol::decode::<AgentMessage>(&frame) {
            Ok(AgentMessage::Hello(_)) => {}
            _ => return,
        },
        _ => return,
    }
    let leader = ha.role.borrow().leader().cloned();
    let msg = match leader {
        Some(l) => {
            tracing::info!(%peer, host, leader = %l.holder, link = %l.link_addr, "agent redirected to the leader");
            CoordinatorMessage::Redirect { link: l.link_addr }
        }
        None => CoordinatorMessage::Refused {
            reason: "no coordinator leads at the moment (failover in progress); try again".into(),
        },
    };
    if let Ok(bytes) = protocol::encode(&msg) {
        let _ = link.send(bytes).await;
    }
}
