//! The 169.254.169.254 metadata service, Firecracker-style: a store of what each guest may
//! know, sealed IMDSv2 tokens, and a pure handler from request to response (the listener that
//! feeds it comes separately). OpenStack, EC2, GCE and Azure formats, and our own.

mod handler;
mod http;
mod store;
#[cfg(test)]
mod tests;
mod token;

pub use handler::{MetadataConfig, handle};
pub use http::{HttpRequest, HttpResponse, parse_request};
pub use store::{GuestInfo, MetadataStore};
pub use token::{TokenError, TokenSealer};
