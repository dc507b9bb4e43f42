//! Tenants' webhooks: registering them (`manage`) and the delivery worker (`delivery`). The
//! events themselves, their filters and signatures are in `crate::domain::event`.

pub mod delivery;
mod manage;

pub use manage::WebhookError;
