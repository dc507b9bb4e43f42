//! Shapes every collection shares: list pages, create answers, action answers, errors.

use serde::{Deserialize, Serialize};

/// `{"resource_uri", "uuid"}` of the owning account.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Owner {
    pub resource_uri: String,
    pub uuid: String,
}

/// A list page's `meta`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ListMeta {
    /// 0 = all.
    pub limit: usize,
    pub offset: usize,
    pub total_count: usize,
}

/// A page of a list, `{"meta": {...}, "objects": [...]}`, and a create's answer
/// (`{"objects": [...]}`), for each object type.
macro_rules! lists {
    ($($(#[$doc:meta])* $list:ident: $t:ty;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        #[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
        #[serde(default)]
        pub struct $list {
            pub meta: $crate::common::ListMeta,
            pub objects: Vec<$t>,
        }
    )*};
}

/// `{"objects": [...]}`: what a create answers, or what it sends.
macro_rules! objects {
    ($($(#[$doc:meta])* $name:ident: $t:ty;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        #[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
        #[serde(default)]
        pub struct $name {
            pub objects: Vec<$t>,
        }
    )*};
}

pub(crate) use {lists, objects};

/// The answer to `POST …/action/?do=X` (202) where no object comes back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ActionResult {
    pub action: String,
    pub result: String,
    pub uuid: String,
}

/// One item of an error list (errors are a JSON list of these).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ErrorItem {
    /// validation, notexist, backend, permission, database, ...
    pub error_type: String,
    /// The field or parameter at fault, or null.
    pub error_point: Option<String>,
    pub error_message: String,
}

/// Errors come as a list; a few proxies answer a single object.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ErrorBody {
    List(Vec<ErrorItem>),
    One(ErrorItem),
}

impl ErrorBody {
    /// The first error, if any.
    pub fn first(&self) -> Option<&ErrorItem> {
        match self {
            ErrorBody::List(l) => l.first(),
            ErrorBody::One(e) => Some(e),
        }
    }
}
