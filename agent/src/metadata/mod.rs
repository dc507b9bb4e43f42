//! The 169.254.169.254 metadata service, Firecracker-style: a store of what each guest may
//! know, sealed IMDSv2 tokens, a pure handler from request to response, and a thin listener
//! that feeds it. OpenStack, EC2, GCE and Azure formats, and our own.

mod handler;
mod limit;
mod listener;
mod store;
#[cfg(test)]
mod tests;
mod token;

pub use crate::http::{Framing, HttpRequest, HttpResponse, framing, parse_request, request_len};
pub use handler::{MetadataConfig, Reply, etag, handle};
pub use limit::{LogGate, RateLimiter};
pub use listener::{
    AckRequest, FormatCode, MetadataError, MetadataService, bind, metadata_format, serve,
};
pub use store::{GuestInfo, MetadataStore};
pub use token::{TokenError, TokenSealer};
