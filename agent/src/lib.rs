//! backfill-agent: discovers this host, runs and limits its workloads in cgroups, and keeps them
//! in line with the coordinator's desired state.

pub mod admin;
pub mod cgroups;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod drive_move;
pub mod driver;
pub mod drives;
pub mod http;
pub mod http_conn;
pub mod images;
pub mod kernel_metrics;
pub mod link;
pub mod metadata;
pub mod network;
pub mod pressure;
pub mod state;
pub mod supervisor;
