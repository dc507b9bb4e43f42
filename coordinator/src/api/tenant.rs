//! The calling tenant, from its certificate.

use super::{ApiError, AppState};
use crate::store::Account;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use backfill_shared::pki::{PeerIdentity, Role};

/// An account certificate's account.
pub struct Tenant(pub Account);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(id) = parts.extensions.get::<PeerIdentity>() else {
            return Err(ApiError::permission("no client certificate"));
        };
        if id.role != Role::Account {
            return Err(ApiError::permission(format!(
                "this endpoint needs an account certificate; {:?} presented a {} certificate",
                id.name, id.role
            )));
        }
        Ok(Tenant(state.coordinator.account(&id.name).await?))
    }
}
