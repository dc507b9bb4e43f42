//! The agent link from a hand-driven client: what the coordinator refuses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_shared::protocol::{self, AgentMessage, CoordinatorMessage, Hello, PROTOCOL_VERSION};
use backfill_shared::{HostInventory, tls::TlsFiles};
use backfill_tests::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

type Link = Framed<tokio_rustls::client::TlsStream<TcpStream>, LengthDelimitedCodec>;

async fn dial(coord: &Coordinator, files: &TlsFiles) -> Link {
    let cfg = backfill_shared::tls::client_config(files).unwrap();
    let tcp = TcpStream::connect(&coord.link).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    Framed::new(tls, protocol::codec())
}

fn hello(version: u32, host: &str) -> AgentMessage {
    AgentMessage::Hello(Hello {
        protocol_version: version,
        host_id: host.parse().unwrap(),
        agent_version: "test".into(),
        inventory: HostInventory {
            hostname: host.into(),
            cpus: 1,
            cpu_mhz_per_cpu: 1000,
            mem_bytes: 1 << 30,
            gpus: vec![],
            drivers: backfill_shared::Drivers::exec_only(),
            mechanisms: Vec::new(),
        },
        enforcing: false,
    })
}

async fn exchange(link: &mut Link, msg: &AgentMessage) -> Option<CoordinatorMessage> {
    link.send(protocol::encode(msg).unwrap()).await.unwrap();
    match link.next().await {
        Some(Ok(frame)) => Some(protocol::decode(&frame).unwrap()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_speaks_only_for_its_own_host() {
    let pki = Pki::new();
    let coord = Coordinator::start(&pki, &[]);
    let h1 = pki.issue(Role::Agent, "h1");

    let mut link = dial(&coord, &h1).await;
    match exchange(&mut link, &hello(PROTOCOL_VERSION, "h2")).await {
        Some(CoordinatorMessage::Refused { reason }) => {
            assert!(reason.contains("h1") && reason.contains("h2"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        link.next().await.is_none_or(|r| r.is_err()),
        "the link must close"
    );

    let mut link = dial(&coord, &h1).await;
    match exchange(&mut link, &hello(PROTOCOL_VERSION + 1, "h1")).await {
        Some(CoordinatorMessage::Refused { reason }) => {
            assert!(reason.contains("version"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Garbage closes that link only; a proper agent still registers.
    let mut link = dial(&coord, &h1).await;
    link.send(bytes_of(&[0xff, 0xff, 0xff])).await.unwrap();
    assert!(link.next().await.is_none_or(|r| r.is_err()));

    let mut link = dial(&coord, &h1).await;
    match exchange(&mut link, &hello(PROTOCOL_VERSION, "h1")).await {
        Some(CoordinatorMessage::Welcome { protocol_version }) => {
            assert_eq!(protocol_version, PROTOCOL_VERSION)
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
    match link.next().await {
        Some(Ok(frame)) => match protocol::decode(&frame).unwrap() {
            CoordinatorMessage::DesiredState(d) => assert!(d.servers.is_empty()),
            other => panic!("expected a desired state, got {other:?}"),
        },
        other => panic!("link closed: {other:?}"),
    }
    let log = coord.daemon.log_text();
    assert!(log.contains("Hello says"), "{log}");
}

fn bytes_of(b: &[u8]) -> tokio_util::bytes::Bytes {
    tokio_util::bytes::Bytes::copy_from_slice(b)
}
