//! Cyborg's accelerator requests: `/accelerator/v2/accelerator_requests` (see `cyborg/mod.rs` for
//! versions, errors and who gets in).

use crate::api::AppState;
use crate::api::cyborg::{
    Caller, CyborgError, Version, Who, base, body_json, link, list, owner, query, version,
};
use crate::domain::accel::Arq;
use crate::ops::accel::{ArqFilter, BindPatch};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use backfill_api::cyborg::{Arq as ArqView, ArqList};
use backfill_shared::clock::rfc3339;
use serde_json::Value;
use std::collections::BTreeMap;

pub(in crate::api) fn arq_view(a: &Arq, base: &str) -> ArqView {
    ArqView {
        uuid: a.uuid.clone(),
        state: a.state.as_str().into(),
        device_profile_name: a.device_profile_name.clone(),
        device_profile_group_id: a.device_profile_group_id,
        hostname: a.hostname.clone(),
        device_rp_uuid: a.device_rp_uuid.clone(),
        instance_uuid: a.instance_uuid.clone(),
        project_id: a.project_id.clone(),
        attach_handle_type: a.attach_handle_type.clone(),
        attach_handle_uuid: a.attach_handle_uuid.clone(),
        attach_handle_info: a.attach_handle_info.clone(),
        links: vec![link(format!("{base}/v2/accelerator_requests/{}", a.uuid))],
        created_at: rfc3339(a.created_at),
        updated_at: a.updated_at.map(rfc3339),
    }
}

pub(in crate::api) async fn list_arqs(
    State(state): State<AppState>,
    Who(caller): Who,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, CyborgError> {
    let q = query(q.as_deref())?;
    let resolved = match q.get("bind_state").map(String::as_str) {
        None => false,
        Some("resolved") => true,
        Some(other) => {
            return Err(CyborgError::bad(format!(
                "bind_state {other:?} is not supported: only \"resolved\""
            )));
        }
    };
    let filter = ArqFilter {
        instance: q.get("instance").cloned(),
        resolved,
    };
    let b = base(&headers);
    let arqs = state.coordinator.list_arqs(owner(&caller), &filter).await?;
    let arqs = arqs.iter().map(|a| arq_view(a, &b)).collect();
    Ok(axum::Json(ArqList { arqs }).into_response())
}

pub(in crate::api) async fn get_arq(
    State(state): State<AppState>,
    Who(caller): Who,
    Path(uuid): Path<String>,
    headers: HeaderMap,
) -> Result<Response, CyborgError> {
    let a = state.coordinator.get_arq(owner(&caller), &uuid).await?;
    Ok(axum::Json(arq_view(&a, &base(&headers))).into_response())
}

pub(in crate::api) async fn create_arqs(
    State(state): State<AppState>,
    Who(caller): Who,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, CyborgError> {
    let Caller::Tenant(account) = &caller else {
        return Err(CyborgError::new(
            StatusCode::FORBIDDEN,
            "accelerator requests belong to accounts: create them with an account certificate",
        ));
    };
    let v = body_json(&body)?;
    let name = v
        .get("device_profile_name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| CyborgError::bad("device_profile_name is required"))?;
    let arqs = state.coordinator.create_arqs(account, name, None).await?;
    let b = base(&headers);
    let arqs = arqs.iter().map(|a| arq_view(a, &b)).collect();
    Ok((StatusCode::CREATED, axum::Json(ArqList { arqs })).into_response())
}

const SERVICE_ONLY: &str =
    "This operation requires a service token. Use the Compute API to manage instance accelerators.";

/// One ARQ's JSON-patch list: all `add` (with hostname, device_rp_uuid and instance_uuid) or
/// all `remove`.
fn parse_patch(uuid: &str, ops: &Value, minor: u32) -> Result<BindPatch, CyborgError> {
    let Some(ops) = ops.as_array().filter(|o| !o.is_empty()) else {
        return Err(CyborgError::bad(format!(
            "the patch for {uuid} must be a non-empty list"
        )));
    };
    let mut adds: BTreeMap<String, String> = BTreeMap::new();
    let mut kinds = Vec::new();
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op.get("path").and_then(Value::as_str).unwrap_or("");
        if !["add", "remove"].contains(&kind) {
            return Err(CyborgError::bad(format!(
                "op {kind:?} is not supported: add or remove"
            )));
        }
        match path {
            "/hostname" | "/device_rp_uuid" | "/instance_uuid" => {}
            "/project_id" if minor >= 1 => {}
            "/project_id" => {
                return Err(CyborgError::new(
                    StatusCode::NOT_ACCEPTABLE,
                    "/project_id in a patch needs microversion 2.1 or later",
                ));
            }
            other => {
                return Err(CyborgError::bad(format!(
                    "path {other:?} cannot be patched"
                )));
            }
        }
        kinds.push(kind);
        if kind == "add" {
            let value = op
                .get("value")
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| CyborgError::bad(format!("{path} needs a value")))?;
            crate::api::text::check_name(value)
                .map_err(|e| CyborgError::bad(format!("{path} {e}")))?;
            adds.insert(path.trim_start_matches('/').to_owned(), value.to_owned());
        }
    }
    kinds.dedup();
    match kinds.as_slice() {
        ["remove"] => Ok(BindPatch::Unbind),
        ["add"] => {
            let field = |k: &str| adds.get(k).cloned();
            match (
                field("hostname"),
                field("device_rp_uuid"),
                field("instance_uuid"),
            ) {
                (Some(hostname), Some(device_rp_uuid), Some(instance_uuid)) => {
                    Ok(BindPatch::Bind {
                        hostname,
                        device_rp_uuid,
                        instance_uuid,
                        project_id: field("project_id"),
                    })
                }
                _ => Err(CyborgError::bad(
                    "Fields absent in patch: hostname, device_rp_uuid and instance_uuid are required",
                )),
            }
        }
        _ => Err(CyborgError::bad(format!(
            "the patch for {uuid} mixes add and remove"
        ))),
    }
}

pub(in crate::api) async fn patch_arqs(
    State(state): State<AppState>,
    Who(caller): Who,
    ext: axum::http::Extensions,
    body: Bytes,
) -> Result<StatusCode, CyborgError> {
    if !matches!(caller, Caller::Admin) {
        return Err(CyborgError::new(StatusCode::FORBIDDEN, SERVICE_ONLY));
    }
    let minor = version(ext.get::<Version>());
    let v = body_json(&body)?;
    let Some(map) = v.as_object().filter(|m| !m.is_empty()) else {
        return Err(CyborgError::bad(
            "the body must map accelerator request uuids to JSON-patch lists",
        ));
    };
    let mut patches = BTreeMap::new();
    for (uuid, ops) in map {
        patches.insert(uuid.clone(), parse_patch(uuid, ops, minor)?);
    }
    state.coordinator.patch_arqs(&patches).await?;
    Ok(StatusCode::ACCEPTED)
}

pub(in crate::api) async fn delete_arqs(
    State(state): State<AppState>,
    Who(caller): Who,
    RawQuery(q): RawQuery,
) -> Result<StatusCode, CyborgError> {
    let q = query(q.as_deref())?;
    match (q.get("arqs"), q.get("instance")) {
        (Some(arqs), None) => {
            state
                .coordinator
                .delete_arqs(owner(&caller), &list(arqs))
                .await?;
        }
        (None, Some(instance)) => {
            if !matches!(caller, Caller::Admin) {
                return Err(CyborgError::new(StatusCode::FORBIDDEN, SERVICE_ONLY));
            }
            state.coordinator.delete_arqs_of_instance(instance).await?;
        }
        _ => {
            return Err(CyborgError::bad(
                "Provide either an ARQ uuid list or an instance UUID",
            ));
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

pub(in crate::api) async fn delete_arq(
    State(state): State<AppState>,
    Who(caller): Who,
    Path(uuid): Path<String>,
) -> Result<StatusCode, CyborgError> {
    state
        .coordinator
        .delete_arqs(owner(&caller), &[uuid])
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
