//! CloudSigma's API (`/api/2.0/`): servers and their schema, drives and library drives,
//! accounts, usage, webhooks, capabilities, and the views they answer with.

pub(in crate::api) mod accounts;
pub(in crate::api) mod capabilities;
pub(in crate::api) mod drive_move;
pub(in crate::api) mod drive_views;
pub(in crate::api) mod drives;
#[cfg(test)]
mod input_tests;
pub(in crate::api) mod listing;
pub(in crate::api) mod schema;
pub(in crate::api) mod server_json;
pub(in crate::api) mod servers;
pub(in crate::api) mod usage;
pub mod views;
pub(in crate::api) mod webhooks;
#[cfg(test)]
mod workload_tests;
