//! The agent link: postcard-encoded messages in `LengthDelimitedCodec` frames over mutual TLS.
//!
//! Rules that keep mixed agent versions working during a rolling upgrade:
//! - `AgentMessage::Hello` is variant 0 forever and its first field is `protocol_version`, so a
//!   peer can always read the version even when the rest of the message changed.
//! - Variants and fields are only ever appended; the golden-bytes tests below pin the encoding.
//! - The coordinator sends a host's *whole* desired state with a generation number; any message
//!   may be lost or repeated, and applying the same state twice changes nothing.

use crate::domain::{
    GuestNetwork, GuestProfile, HostInventory, PerfFactor, Resources, Termination,
};
use crate::ids::{HostId, ServerId};
use crate::workload::Workload;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio_util::codec::LengthDelimitedCodec;

/// 4: workload kinds (`vm`, `container`) and the drivers an agent has, in its inventory.
/// 5: `CoordinatorMessage::Redirect` (several coordinators: a follower sends agents to the
/// leader); drives: `CoordinatorMessage::Drives`, `AgentMessage::Drives`, and a VM's attached
/// drives at the end of `VmWorkload`; later in 5, appended: `CoordinatorMessage::DriveMove` and
/// `AgentMessage::DriveMove` (moving a drive between hosts; sent only to hosts a move involves).
pub const PROTOCOL_VERSION: u32 = 5;

/// Largest frame either side accepts. A desired state for a few thousand servers fits easily.
pub const MAX_FRAME_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("could not encode a link message: {0}")]
    Encode(postcard::Error),
    #[error("could not decode a link message ({len} bytes): {source}")]
    Decode { len: usize, source: postcard::Error },
    #[error("peer speaks protocol version {peer}, this side speaks {ours}")]
    Version { peer: u32, ours: u32 },
    #[error("link IO failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer closed the link")]
    Closed,
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
}

/// The framing both sides use: 4-byte big-endian length, at most `MAX_FRAME_BYTES`.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec()
}

pub fn encode<T: Serialize>(msg: &T) -> Result<Bytes, ProtocolError> {
    postcard::to_stdvec(msg)
        .map(Bytes::from)
        .map_err(ProtocolError::Encode)
}

pub fn decode<T: DeserializeOwned>(frame: &BytesMut) -> Result<T, ProtocolError> {
    postcard::from_bytes(frame).map_err(|source| ProtocolError::Decode {
        len: frame.len(),
        source,
    })
}

/// Agent -> coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    Hello(Hello),
    Report(Report),
    Ack(Ack),
    /// The drives this host holds (after every `Drives` order, and when one changes).
    Drives(crate::drive::DriveReport),
    /// The answer to a step of moving a drive between hosts.
    DriveMove(crate::drive_move::MoveReport),
}

/// Coordinator -> agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CoordinatorMessage {
    /// Answer to `Hello`: the coordinator's protocol version. A `DesiredState` follows.
    Welcome {
        protocol_version: u32,
    },
    DesiredState(DesiredState),
    /// The coordinator refuses this agent; the link closes after this message.
    Refused {
        reason: String,
    },
    /// Answer to `Hello` from a coordinator that does not lead: connect to the leader's agent
    /// link at `link` (`ip:port`) instead. The link closes after this message.
    Redirect {
        link: String,
    },
    /// Every drive this host should hold, and those to delete (sent after `Welcome`, on each
    /// change and with the heartbeat).
    Drives(crate::drive::DriveOrders),
    /// A step of moving a drive between hosts (the coordinator relays the copy).
    DriveMove(crate::drive_move::MoveOrder),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// First field, always: see the module docs.
    pub protocol_version: u32,
    pub host_id: HostId,
    pub agent_version: String,
    pub inventory: HostInventory,
    /// Whether this agent enforces limits (false when it runs without cgroups, e.g. not root).
    pub enforcing: bool,
}

/// What the agent sees on its host. Sent after `Hello`, after every change, and periodically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The last desired-state generation the agent applied.
    pub applied_generation: u64,
    pub servers: Vec<ObservedServer>,
    pub usage: HostUsage,
    /// The host's GPUs as re-read now (a GPU gone or unhealthy is no longer allocatable).
    pub gpus: Vec<crate::GpuDevice>,
    /// Per-GPU use, where NVML reports it.
    pub gpu_usage: Vec<crate::GpuUsage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedServer {
    pub server: ServerId,
    pub state: WorkloadState,
    pub pid: Option<u32>,
    /// Unix seconds when the workload started.
    pub started_at: Option<i64>,
    pub perf_factor: PerfFactor,
    pub limits: AppliedLimits,
    pub usage: ServerUsage,
    /// The run this observation is about (see `DesiredServer::incarnation`).
    pub incarnation: u64,
    /// Its own network namespace, in isolated network mode.
    pub network: Option<GuestNetwork>,
    /// The guest acknowledged its scheduled termination: end it now. Repeated in every report
    /// until the server leaves the desired state, so a lost message loses nothing.
    pub acknowledged: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadState {
    Starting,
    Running,
    /// The workload ended by itself.
    Exited {
        code: Option<i32>,
    },
    /// The agent could not start it.
    Failed {
        reason: String,
    },
}

/// Limits in force on a server's cgroup, as read back from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AppliedLimits {
    /// `None` = unlimited.
    pub cpu_quota_us: Option<u64>,
    pub cpu_period_us: u64,
    /// `None` = unlimited.
    pub mem_limit_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServerUsage {
    pub cpu_usage_usec: u64,
    pub mem_usage_bytes: u64,
    /// Time its tasks were throttled by its CPU quota (v2 `throttled_usec`, v1
    /// `throttled_time`).
    pub cpu_throttled_usec: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostUsage {
    pub mem_used_bytes: u64,
    pub load_avg_milli: u64,
    /// PSI: the share of the last 10 s some task stalled for CPU, in hundredths of a percent.
    pub cpu_pressure_x100: u32,
    /// The same for memory.
    pub memory_pressure_x100: u32,
    /// The agent squeezes backfill servers below what the coordinator asked, under pressure
    /// (their perf_factor in force says how far).
    pub squeezing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub generation: u64,
}

/// A host's whole desired state: exactly these servers should run, with these limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    pub generation: u64,
    pub servers: Vec<DesiredServer>,
    /// Servers not running here whose disks this host keeps (stopped, not deleted, last ran
    /// here): a VM's disk overlay survives stop and start. Whatever a driver keeps for a
    /// server neither in `servers` nor here may be removed.
    pub keep: Vec<ServerId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredServer {
    pub server: ServerId,
    pub resources: Resources,
    pub perf_factor: PerfFactor,
    /// `None`: the host's configured default command.
    pub workload: Option<Workload>,
    /// Which run of the server this is: a new value means "start it afresh" even if the agent
    /// still holds an ended run of the same server.
    pub incarnation: u64,
    /// When the server will be terminated, if that is scheduled: the agent stops it then even
    /// without a coordinator, and tells the guest beforehand.
    pub termination: Option<Termination>,
    /// What the metadata service tells the guest about itself.
    pub guest: GuestProfile,
    /// A graceful shutdown: ask the workload to stop (SIGTERM, repeated) until then (Unix
    /// seconds); it stays if it does not.
    pub shutdown: Option<i64>,
    /// The GPU devices (UUIDs) given to this server: the only ones its workload may see.
    pub gpus: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::GpuDevice;
    use futures_like::*;
    use std::collections::BTreeMap;

    /// Minimal helpers so the test reads like the link code without pulling in tokio here.
    mod futures_like {
        pub use tokio_util::codec::{Decoder, Encoder};
    }

    fn hello() -> AgentMessage {
        AgentMessage::Hello(Hello {
            protocol_version: 5,
            host_id: "h1".parse().unwrap(),
            agent_version: "0.1.0".into(),
            inventory: HostInventory {
                hostname: "h1".into(),
                cpus: 2,
                cpu_mhz_per_cpu: 2000,
                mem_bytes: 1 << 30,
                gpus: vec![GpuDevice::whole(0, "GPU-1", "T4", 16, "0:1")],
                drivers: crate::Drivers::exec_only(),
                mechanisms: Vec::new(),
            },
            enforcing: true,
        })
    }

    #[test]
    fn golden_hello() {
        let bytes = encode(&hello()).unwrap();
        let golden: &[u8] = &[
            0x00, // AgentMessage::Hello
            0x05, // protocol_version
            0x02, b'h', b'1', // host_id
            0x05, b'0', b'.', b'1', b'.', b'0', // agent_version
            0x02, b'h', b'1', // hostname
            0x02, // cpus
            0xd0, 0x0f, // 2000 MHz, varint
            0x80, 0x80, 0x80, 0x80, 0x04, // 1 GiB, varint
            0x01, // one GPU
            0x00, 0x05, b'G', b'P', b'U', b'-', b'1', 0x02, b'T', b'4', 0x10, 0x03, b'0', b':',
            b'1', // index, uuid, name, memory, PCI bus id
            0x00, 0x00, 0x01, 0x00, // not MIG, no compute capability, healthy, no reason
            0x01, 0x00, 0x00, // drivers: exec, no vm, no container
            0x00, // no mechanisms named
            0x01, // enforcing
        ];
        assert_eq!(&bytes[..], golden);
    }

    #[test]
    fn golden_desired_state_and_ack() {
        let ds = CoordinatorMessage::DesiredState(DesiredState {
            generation: 300,
            servers: vec![DesiredServer {
                server: ServerId::from_u128(1),
                resources: Resources {
                    cpu_mhz: 1000,
                    vcpus: 1,
                    mem_bytes: 512,
                },
                perf_factor: PerfFactor { cpu: 0.5, mem: 1.0 },
                workload: None,
                incarnation: 299,
                termination: Some(Termination {
                    scheduled_at: 5,
                    terminate_at: 6,
                }),
                guest: GuestProfile {
                    name: "n".into(),
                    hostname: "n".into(),
                    account: "a".into(),
                    class: crate::domain::ServerClass::Spot,
                    instance_type: "t".into(),
                    meta: BTreeMap::new(),
                    user_data: None,
                },
                shutdown: None,
                gpus: vec!["GPU-1".into()],
            }],
            keep: vec![ServerId::from_u128(2)],
        });
        let bytes = encode(&ds).unwrap();
        let mut golden = vec![0x01, 0xac, 0x02, 0x01, 36];
        golden.extend_from_slice(b"00000000-0000-0000-0000-000000000001");
        golden.extend_from_slice(&[0xe8, 0x07, 0x01, 0x80, 0x04]);
        golden.extend_from_slice(&0.5f64.to_le_bytes());
        golden.extend_from_slice(&1.0f64.to_le_bytes());
        golden.extend_from_slice(&[0x00, 0xab, 0x02]); // no workload; incarnation 299
        golden.extend_from_slice(&[0x01, 0x0a, 0x0c]); // termination at 5 and 6 (zigzag)
        // guest: name, hostname, account, Spot, instance type, no meta, no user data
        golden.extend_from_slice(&[0x01, b'n', 0x01, b'n', 0x01, b'a', 0x02, 0x01, b't']);
        golden.extend_from_slice(&[0x00, 0x00]);
        golden.push(0x00); // no shutdown
        golden.extend_from_slice(&[0x01, 0x05, b'G', b'P', b'U', b'-', b'1']); // its GPU
        golden.extend_from_slice(&[0x01, 36]); // one kept disk
        golden.extend_from_slice(b"00000000-0000-0000-0000-000000000002");
        assert_eq!(&bytes[..], &golden[..]);

        let ack = encode(&AgentMessage::Ack(Ack { generation: 7 })).unwrap();
        assert_eq!(&ack[..], &[0x02, 0x07]);

        // Variant 3, appended in protocol 5.
        let redirect = encode(&CoordinatorMessage::Redirect {
            link: "10.0.0.2:7443".into(),
        })
        .unwrap();
        let mut golden = vec![0x03, 12];
        golden.extend_from_slice(b"10.0.0.2:7443");
        golden[1] = 13;
        assert_eq!(&redirect[..], &golden[..]);
    }

    #[test]
    fn golden_drives() {
        use crate::drive::*;
        let orders = CoordinatorMessage::Drives(DriveOrders {
            drives: vec![DesiredDrive {
                id: DriveId::from_u128(3),
                size: 300,
                source: DriveSource::Library {
                    image: "d".into(),
                    sha256: None,
                },
            }],
            delete: vec![DriveId::from_u128(4)],
        });
        // Variant 4: Redirect (several coordinators) is 3.
        let mut golden = vec![0x04, 0x01, 36];
        golden.extend_from_slice(b"00000000-0000-0000-0000-000000000003");
        golden.extend_from_slice(&[0xac, 0x02, 0x01, 0x01, b'd', 0x00, 0x01, 36]);
        golden.extend_from_slice(b"00000000-0000-0000-0000-000000000004");
        assert_eq!(&encode(&orders).unwrap()[..], &golden[..]);
        let report = AgentMessage::Drives(DriveReport {
            drives: vec![ObservedDrive {
                id: DriveId::from_u128(3),
                size: 1,
                state: ObservedDriveState::Failed { reason: "x".into() },
            }],
        });
        let mut golden = vec![0x03, 0x01, 36];
        golden.extend_from_slice(b"00000000-0000-0000-0000-000000000003");
        golden.extend_from_slice(&[0x01, 0x01, 0x01, b'x']);
        assert_eq!(&encode(&report).unwrap()[..], &golden[..]);
        // Moving a drive: variant 5 each way, appended.
        use crate::drive_move::{MoveOrder, MoveReport};
        let order = CoordinatorMessage::DriveMove(MoveOrder::Write {
            drive: DriveId::from_u128(3),
            offset: 2,
            data: vec![7, 8],
        });
        let mut golden = vec![0x05, 0x03, 36];
        golden.extend_from_slice(b"00000000-0000-0000-0000-000000000003");
        golden.extend_from_slice(&[0x02, 0x02, 7, 8]);
        assert_eq!(&encode(&order).unwrap()[..], &golden[..]);
        let answer = AgentMessage::DriveMove(MoveReport::Finished {
            drive: DriveId::from_u128(3),
            result: Err("x".into()),
        });
        let mut golden = vec![0x04, 0x04, 36];
        golden.extend_from_slice(b"00000000-0000-0000-0000-000000000003");
        golden.extend_from_slice(&[0x01, 0x01, b'x']);
        assert_eq!(&encode(&answer).unwrap()[..], &golden[..]);
        // A VM's drives ride at the end of its workload.
        let w = Workload {
            vm: Some(crate::VmWorkload {
                drives: vec![DriveAttachment {
                    drive: DriveId::from_u128(3),
                    boot_order: Some(1),
                    dev_channel: "0:0".into(),
                    device: DriveDevice::Virtio,
                    media: Media::Cdrom,
                }],
                ..crate::VmWorkload::default()
            }),
            ..Workload::default()
        };
        let bytes = encode(&w).unwrap();
        let mut tail = vec![0x01, 36];
        tail.extend_from_slice(b"00000000-0000-0000-0000-000000000003");
        tail.extend_from_slice(&[0x01, 0x01, 0x03, b'0', b':', b'0', 0x00, 0x01, 0x00]);
        assert!(bytes.ends_with(&tail), "{bytes:x?}");
    }

    #[test]
    fn version_is_readable_from_any_hello() {
        // A future Hello with more fields still starts with variant 0 and the version.
        let bytes = encode(&hello()).unwrap();
        assert_eq!(bytes[0], 0);
        let (v, _) = postcard::take_from_bytes::<u32>(&bytes[1..]).unwrap();
        assert_eq!(v, PROTOCOL_VERSION);
    }

    #[test]
    fn frames_round_trip_and_oversize_is_refused() {
        let mut c = codec();
        let mut buf = BytesMut::new();
        c.encode(encode(&hello()).unwrap(), &mut buf).unwrap();
        let frame = c.decode(&mut buf).unwrap().unwrap();
        let back: AgentMessage = decode(&frame).unwrap();
        assert_eq!(back, hello());

        let mut big = BytesMut::new();
        big.extend_from_slice(&u32::try_from(MAX_FRAME_BYTES + 1).unwrap().to_be_bytes());
        big.extend_from_slice(&[0u8; 16]);
        assert!(codec().decode(&mut big).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let frame = BytesMut::from(&[0xff, 0xff, 0xff][..]);
        assert!(decode::<AgentMessage>(&frame).is_err());
        let bad_id = BytesMut::from(&[0x00, 0x01, 0x02, b'.', b'.'][..]);
        assert!(decode::<AgentMessage>(&bad_id).is_err());
    }
}
