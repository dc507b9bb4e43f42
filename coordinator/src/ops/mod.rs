//! Use cases over the state, as `impl Coordinator` blocks and functions: accounts,
//! accelerators, drives, webhooks, operator actions, provisioning, lifecycle, and the
//! scheduling tick.

pub mod accel;
pub mod accounts;
pub mod auto_mode;
pub mod drives;
#[cfg(test)]
mod drives_tests;
pub mod lifecycle;
pub mod operator;
pub mod provision;
pub mod tick;
pub mod webhooks;
