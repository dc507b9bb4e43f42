//! backfill-shared: the domain types, ids, the agent <-> coordinator wire protocol, PKI and TLS
//! helpers, and the injected clock. Both daemons depend on this crate; it depends on neither.

pub mod clock;
pub mod config;
pub mod daemon;
pub mod domain;
pub mod drive;
pub mod drive_move;
pub mod ids;
pub mod listener;
pub mod notify;
pub mod pki;
pub mod protocol;
pub mod tls;
pub mod workload;

pub use clock::{Clock, SystemClock};
pub use domain::*;
pub use drive::{DriveAttachment, DriveId, Media};
pub use ids::{HostId, IdError, ServerId};
pub use workload::{
    ContainerDriver, ContainerWorkload, DriverKind, Drivers, NetworkMode, VmDriver, VmImage,
    VmWorkload, Workload, WorkloadError,
};
