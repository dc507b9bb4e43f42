//! The calling tenant, from its certificate.

use crate::api::{ApiError, AppState};
use crate::domain::account::Account;
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
                "this endpoint needs an account certificate; {:?} presented one of role {}",
                id.name, id.role
            )));
        }
        Ok(Tenant(state.coordinator.account(&id.name).await?))
    }
}

/// An admin certificate's holder (the operator).
pub struct Admin(pub String);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        match parts.extensions.get::<PeerIdentity>() {
            Some(id) if id.role == Role::Admin => Ok(Admin(id.name.clone())),
            Some(id) => Err(ApiError::permission(format!(
                "this endpoint is for operators (admin certificates); {:?} presented one of role {}",
                id.name, id.role
            ))),
            None => Err(ApiError::permission("no client certificate")),
        }
    }
}

/// Either: a tenant (sees its own account) or the operator (sees every account).
pub enum Caller {
    Tenant(Account),
    Admin,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let admin = parts
            .extensions
            .get::<PeerIdentity>()
            .is_some_and(|id| id.role == Role::Admin);
        if admin {
            return Ok(Caller::Admin);
        }
        let Tenant(account) = Tenant::from_request_parts(parts, state).await?;
        Ok(Caller::Tenant(account))
    }
}
