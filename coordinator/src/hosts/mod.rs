//! Agent sessions: the link listener, registration, applying reports, liveness.

mod listener;
mod session;
#[cfg(test)]
pub(crate) mod session_tests;

pub use listener::{LinkError, serve_link};
