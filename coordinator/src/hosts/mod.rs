//! Agent sessions: the link listener, registration, applying reports, liveness.

mod listener;
mod session;

pub use listener::{LinkError, serve_link};
