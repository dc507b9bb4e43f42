//! The request and response types of backfill's tenant API (CloudSigma 2.0 compatible) and
//! operator API: the coordinator's handlers build their answers as these types, and a client
//! reads and sends them.
//!
//! Answers are tolerant: every response type takes `#[serde(default)]` and no
//! `deny_unknown_fields`, so a client built against these types keeps working when the
//! coordinator adds a field. Requests serialize only the fields given (`None` is left out),
//! which for the API's edits means "unchanged". `tests/tests/api_types.rs` holds the
//! coordinator's real answers to these types strictly (every field the coordinator sends is
//! a field here, and the reverse), so they cannot drift apart silently.
//!
//! With the `utoipa` feature each type also derives `utoipa::ToSchema`: the coordinator's
//! OpenAPI document is made from them, with the constraints the coordinator checks
//! (`#[cfg_attr(feature = "utoipa", schema(...))]`). A request type that says
//! `deny_unknown_fields` does so because the coordinator refuses unknown fields there; it
//! changes nothing for a client, which only serializes requests.

pub mod accounts;
pub mod common;
pub mod drives;
pub mod servers;
pub mod status;
pub mod webhooks;

pub use common::{ActionResult, ErrorItem, ListMeta, Owner};
