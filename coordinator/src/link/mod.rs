//! Agent sessions: the link listener, registration, applying reports, liveness.

mod listener;
#[cfg(test)]
mod liveness_tests;
mod session;
#[cfg(test)]
pub(crate) mod session_tests;

pub(crate) use listener::session;
pub use listener::{LinkConfig, LinkError, serve_link};
