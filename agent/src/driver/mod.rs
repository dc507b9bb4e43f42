//! How workloads run. `exec`: a process in its server's cgroup, as an unprivileged user, in its
//! own session, with stdout/stderr in a per-server log file.

mod exec;
mod proc;

pub use exec::{ExecSpec, RunAs, Yielding, spawn};
pub use proc::{
    ProcessIdentity, alive, kill_group, others_can_execute, running_as_root, terminate_group,
};

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("user {0:?} does not exist")]
    NoSuchUser(String),
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("workload command is empty")]
    EmptyCommand,
}
