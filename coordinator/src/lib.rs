//! backfill-coordinator: the API over mutual TLS, placement, the store and agent sessions.

pub mod accel;
pub mod access;
pub mod accounts;
pub mod api;
pub mod auto_mode;
pub mod autoscale;
pub mod billing;
pub mod cli;
pub mod committer;
#[cfg(test)]
mod committer_tests;
pub mod config;
pub mod coordinator;
pub mod daemon;
#[cfg(feature = "dev")]
pub mod dev;
pub mod drives;
#[cfg(test)]
mod drives_tests;
pub mod events;
pub mod flavors;
pub mod ha;
pub mod history;
pub mod hosts;
pub mod library;
pub mod lifecycle;
#[cfg(feature = "dev")]
pub mod local_provisioner;
pub mod metrics;
pub mod model;
pub mod operator;
pub mod pools;
pub mod provision;
pub mod schedule;
pub mod scheduler;
pub mod server_index;
pub mod simulate;
pub mod store;
pub mod tls_accept;
