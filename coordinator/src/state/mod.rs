//! The coordinator's state: the live model, the store behind it and the one commit path, with
//! the rules checked against the model (quotas, drive attachments, driver access) and the
//! settings the state holds.

pub mod accel;
pub mod access;
pub mod account_cache;
pub mod committer;
#[cfg(test)]
mod committer_tests;
pub mod coordinator;
pub mod drive_index;
pub mod drive_mounts;
pub mod drive_move;
pub mod drive_moves;
pub mod drive_rules;
pub mod history;
pub mod model;
pub mod quota;
pub mod server_index;
pub mod settings;
#[cfg(test)]
mod write_lock_tests;
