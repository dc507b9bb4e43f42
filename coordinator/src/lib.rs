//! backfill-coordinator: the API over mutual TLS, placement, the store and agent sessions.
//!
//! Layers, one way: `cmd` -> {`api`, `link`} -> `ops` -> `state` -> {`policy`, `store`} ->
//! `domain`; `telemetry` (the metrics registry) and `tls_accept` sit below whoever uses them.
//! `scripts/module-cycles.py` (run by `.ci/run`) checks there is no cycle between these
//! modules and that every `crate::` reference points down this order.

pub mod api;
pub mod cmd;
pub mod domain;
pub mod link;
pub mod ops;
pub mod policy;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls_accept;
