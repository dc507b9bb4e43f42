//! CloudSigma-style errors: a JSON list of `{error_type, error_point, error_message}`.

use crate::state::coordinator::OpError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub error_type: &'static str,
    pub point: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn validation(point: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error_type: "validation",
            point: Some(point.into()),
            message: message.into(),
        }
    }
    pub fn permission(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            error_type: "permission",
            point: None,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            error_type: "notexist",
            point: None,
            message: message.into(),
        }
    }
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            error_type: "validation",
            point: None,
            message: message.into(),
        }
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> ApiError {
        let message = e.to_string();
        match e {
            OpError::NotFound(_) | OpError::DriveNotFound(_) => ApiError::not_found(message),
            OpError::DriveInUse(_) => ApiError::permission(message),
            OpError::NoAccount(_) | OpError::Quota(_) | OpError::Forbidden(_) => {
                ApiError::permission(message)
            }
            OpError::Exists(_) => ApiError::validation("name", message),
            OpError::Invalid { field, .. } => ApiError::validation(field, message),
            OpError::Conflict(_) => ApiError {
                status: StatusCode::CONFLICT,
                error_type: "permission",
                point: None,
                message,
            },
            OpError::InvalidState { .. } => ApiError::permission(message),
            OpError::NeverFits(_) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                error_type: "backend",
                point: None,
                message,
            },
            OpError::Store(crate::store::StoreError::Stale | crate::store::StoreError::Closed) => {
                ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    error_type: "backend",
                    point: None,
                    message,
                }
            }
            OpError::Store(err) if err.is_fenced() => {
                tracing::error!(error = %err, "commit fenced: another coordinator leads now");
                ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    error_type: "backend",
                    point: None,
                    message: "this coordinator no longer leads; nothing was changed (retry)".into(),
                }
            }
            OpError::Store(err) if err.is_unavailable() => {
                tracing::error!(error = %err, "store unreachable");
                ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    error_type: "database",
                    point: None,
                    message: "the database is unreachable at the moment (restarting or \
                              failing over); the change was not confirmed: read, then retry"
                        .into(),
                }
            }
            OpError::Store(err) => {
                tracing::error!(error = %err, "store failed");
                ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    error_type: "database",
                    point: None,
                    message: "the change could not be stored; nothing was changed".into(),
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = vec![backfill_api::ErrorItem {
            error_type: self.error_type.to_owned(),
            error_point: self.point,
            error_message: self.message,
        }];
        (self.status, axum::Json(body)).into_response()
    }
}
