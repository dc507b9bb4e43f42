//! Entities and the rules over them, with no IO: servers and hosts, accounts and usage,
//! billing, accelerators and GPUs, flavors, library images, events.

pub mod accel;
pub mod account;
pub mod billing;
pub mod event;
pub mod flavors;
pub mod gpu;
pub mod library;
pub mod server;
pub mod usage;
