//! Dynamic Cluster's admin API, mounted under `/dynamiccluster/`: worker nodes (our hosts),
//! jobs (our queue), resources (our pools), the server's configuration, status and auto mode.
//! Status codes as its documentation gives them (404 unknown name or action, 400 not allowed
//! in this state, 500 only for real faults), every body `application/json`, actions answer
//! `{"success": true}`.

use crate::api::AppState;
use crate::api::operator::auth::{Refused, authorize};
use crate::ops::operator::{HostView, OperatorError, QueueEntry};
use crate::ops::provision::PoolView;
use axum::Router;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use backfill_shared::{IdleBehavior, ServerStatus, WorkerState};
use serde_json::{Value, json};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/workernode", get(workernodes))
        .route("/workernode/{host}", get(workernode).delete(delete_node))
        .route("/workernode/{host}/{action}", put(node_action))
        .route("/job", get(jobs))
        .route("/job/{id}", get(job))
        .route("/server/config", get(config))
        .route("/server/status", get(status))
        .route("/server/auto", put(auto_on).delete(auto_off))
        .route("/resource", get(resources))
        .route("/resource/{name}", get(resource).put(launch))
        .route("/resource/{name}/{action}", put(resource_action))
        .fallback(|| async { DcError::new(StatusCode::NOT_FOUND, "not found") })
}

/// `{"success": false, "error": "..."}` with a status.
#[derive(Debug)]
pub struct DcError {
    status: StatusCode,
    message: String,
}

impl DcError {
    fn new(status: StatusCode, message: impl Into<String>) -> DcError {
        DcError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for DcError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"success": false, "error": self.message})),
        )
            .into_response()
    }
}

impl From<OperatorError> for DcError {
    fn from(e: OperatorError) -> DcError {
        match e {
            OperatorError::UnknownHost(h) => {
                DcError::new(StatusCode::NOT_FOUND, format!("worker node {h} not found"))
            }
            OperatorError::UnknownServer(_) | OperatorError::NotOnHost(_) => {
                DcError::new(StatusCode::NOT_FOUND, "job not found")
            }
            OperatorError::UnknownPool(p) => {
                DcError::new(StatusCode::NOT_FOUND, format!("resource {p} not found"))
            }
            OperatorError::NotAllowed(m) => DcError::new(StatusCode::BAD_REQUEST, m),
            OperatorError::Store(err) => {
                tracing::error!(error = %err, "store failed");
                DcError::new(StatusCode::INTERNAL_SERVER_ERROR, "server error")
            }
        }
    }
}

/// An operator (admin certificate or management token).
pub struct Operator(String);

impl FromRequestParts<AppState> for Operator {
    type Rejection = DcError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, DcError> {
        authorize(parts, state)
            .map(Operator)
            .map_err(|Refused { status, message }| DcError::new(status, message))
    }
}

/// The query string; a repeated parameter is refused (see `params`).
fn query(q: Option<&str>) -> Result<std::collections::BTreeMap<String, String>, DcError> {
    crate::api::params::parse(q).map_err(|e| DcError::new(StatusCode::BAD_REQUEST, e.to_string()))
}

fn success() -> Response {
    axum::Json(json!({"success": true})).into_response()
}

/// WorkerNode.state: 0 Inexistent, 1 Starting, 2 Idle, 3 Busy, 4 Error, 5 Deleting,
/// 6 Holding (held, but work placed before the hold is still being set up), 7 Held.
pub fn node_state(h: &HostView) -> u8 {
    if h.launching {
        return if h.error.is_some() { 4 } else { 1 };
    }
    match h.worker_state {
        WorkerState::Unknown | WorkerState::Booting => 1,
        WorkerState::Down => 4,
        WorkerState::Shutdown => 5,
        WorkerState::Idle | WorkerState::Running if h.idle_behavior != IdleBehavior::Run => {
            if h.work.iter().any(|w| w.status == ServerStatus::Starting) {
                6
            } else {
                7
            }
        }
        WorkerState::Running => 3,
        WorkerState::Idle => 2,
    }
}

/// Instance.state (the cloud side): 1 Pending, 3 Active, 4 Ready, 5 Deleting, 6 Error,
/// 7 Unknown.
fn instance_state(h: &HostView) -> u8 {
    if h.launching {
        return if h.error.is_some() { 6 } else { 1 };
    }
    match h.worker_state {
        WorkerState::Unknown | WorkerState::Booting => 3,
        WorkerState::Idle | WorkerState::Running => 4,
        WorkerState::Shutdown => 5,
        WorkerState::Down => 7,
    }
}

fn node_json(h: &HostView, now: i64) -> Value {
    let jobs: Vec<String> = h.work.iter().map(|w| w.uuid.to_string()).collect();
    let address = h.address.map(|a| a.to_string());
    json!({
        "hostname": h.id,
        "type": "backfill",
        "state": node_state(h),
        "num_proc": h.capacity.vcpus,
        "jobs": if jobs.is_empty() { Value::Null } else { json!(jobs.join(",")) },
        "state_start_time": h.state_since,
        "time_in_current_state": now.saturating_sub(h.state_since).max(0),
        "extra_attributes": {
            "worker_state": h.worker_state.as_str(),
            "idle_behavior": h.idle_behavior.as_str(),
            "cpu_mhz": h.capacity.cpu_mhz,
            "mem": h.capacity.mem_bytes,
            "gpus": h.gpus,
            "error": h.error,
        },
        "instance": {
            "uuid": h.id,
            "instance_name": h.id,
            "state": instance_state(h),
            "ip": address,
            "dns_name": h.id,
            "vcpu_number": h.capacity.vcpus,
            "flavor": h.instance_type,
            "key_name": null,
            "security_groups": [],
            "availability_zone": null,
            "image_uuid": null,
            "subnet_id": null,
            "creation_time": h.first_seen,
            "cloud_resource": h.pool,
            "last_update_time": h.last_seen,
            "tasked": false,
            "last_task_result": if h.error.is_some() { 1 } else { -1 },
            "spot_id": null,
            "spot_state": null,
            "spot_price": h.price,
        },
    })
}

async fn workernodes(
    State(state): State<AppState>,
    _: Operator,
    RawQuery(q): RawQuery,
) -> Result<Response, DcError> {
    let filter = match query(q.as_deref())?.remove("state") {
        None => None,
        Some(v) => Some(
            v.parse::<u8>()
                .ok()
                .filter(|n| *n <= 7)
                .ok_or_else(|| DcError::new(StatusCode::BAD_REQUEST, "state must be 0 to 7"))?,
        ),
    };
    let now = state.coordinator.now();
    let nodes: Vec<Value> = state
        .coordinator
        .hosts()
        .await
        .iter()
        .filter(|h| filter.is_none_or(|f| node_state(h) == f))
        .map(|h| node_json(h, now))
        .collect();
    Ok(axum::Json(nodes).into_response())
}

async fn workernode(
    State(state): State<AppState>,
    _: Operator,
    Path(host): Path<String>,
) -> Result<Response, DcError> {
    let h = state.coordinator.host(&host).await?;
    let mut v = node_json(&h, state.coordinator.now());
    let actions = state.coordinator.audit_entries("host", &host).await?;
    v["admin_actions"] = actions
        .iter()
        .map(|a| json!({"at": a.at, "actor": a.actor, "action": a.action, "reason": a.reason}))
        .collect();
    Ok(axum::Json(v).into_response())
}

async fn node_action(
    State(state): State<AppState>,
    Operator(actor): Operator,
    Path((host, action)): Path<(String, String)>,
) -> Result<Response, DcError> {
    if !matches!(action.as_str(), "hold" | "unhold" | "vacate") {
        return Err(DcError::new(StatusCode::NOT_FOUND, "action not supported"));
    }
    let h = state.coordinator.host(&host).await?;
    let s = node_state(&h);
    let allowed = match action.as_str() {
        "hold" => matches!(s, 2 | 3),
        "unhold" => s == 7,
        _ => !h.launching,
    };
    if !allowed {
        return Err(DcError::new(
            StatusCode::BAD_REQUEST,
            format!("You are not allowed to {action} worker node {host} in current state."),
        ));
    }
    let c = &state.coordinator;
    match action.as_str() {
        "hold" => {
            c.set_idle_behavior(&actor, &host, IdleBehavior::Hold, None)
                .await?
        }
        "unhold" => {
            c.set_idle_behavior(&actor, &host, IdleBehavior::Run, None)
                .await?
        }
        _ => {
            c.vacate_host(&actor, &host, None).await?;
        }
    }
    Ok(success())
}

async fn delete_node(
    State(state): State<AppState>,
    Operator(actor): Operator,
    Path(host): Path<String>,
) -> Result<Response, DcError> {
    match state.coordinator.delete_host(&actor, &host, None).await {
        Ok(()) => Ok(success()),
        Err(OperatorError::NotAllowed(_)) => Err(DcError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "worker node {host} cannot be deleted in current state, please put it on hold first."
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

fn job_json(e: &QueueEntry) -> Value {
    let s = &e.server;
    let state = if e.position.is_some() { 0 } else { 1 };
    json!({
        "jobid": s.uuid.to_string(),
        "name": s.name,
        "owner": s.owner,
        "queue": s.class.as_str(),
        "account": s.owner,
        "property": null,
        "priority": s.priority,
        "state": state,
        "requested_cores": s.smp,
        "cores_per_node": s.smp,
        "requested_mem": s.mem,
        "requested_walltime": null,
        "creation_time": s.created_at.to_string(),
        "extra_attributes": {
            "cpu_mhz": s.cpu,
            "flavor": s.instance_type,
            "pending_reason": s.queued_reason,
            "host": s.host.as_ref().map(ToString::to_string),
        },
    })
}

async fn jobs(State(state): State<AppState>, _: Operator) -> Response {
    let list: Vec<Value> = state
        .coordinator
        .queue()
        .await
        .iter()
        .filter(|e| e.position.is_some())
        .map(job_json)
        .collect();
    axum::Json(list).into_response()
}

async fn job(
    State(state): State<AppState>,
    _: Operator,
    Path(id): Path<String>,
) -> Result<Response, DcError> {
    let entry = state
        .coordinator
        .queue()
        .await
        .into_iter()
        .find(|e| e.server.uuid.to_string() == id)
        .ok_or_else(|| DcError::new(StatusCode::NOT_FOUND, "job not found"))?;
    Ok(axum::Json(job_json(&entry)).into_response())
}

async fn config(State(state): State<AppState>, _: Operator) -> Response {
    axum::Json(state.coordinator.config_view()).into_response()
}

async fn status(State(state): State<AppState>, _: Operator) -> Response {
    let c = &state.coordinator;
    axum::Json(json!({
        "auto_mode": c.auto_mode().await,
        "cluster": {"coordinator": true, "agents": c.connected_hosts().await},
    }))
    .into_response()
}

async fn auto_on(
    State(state): State<AppState>,
    Operator(actor): Operator,
) -> Result<Response, DcError> {
    state.coordinator.set_auto_mode(&actor, true).await?;
    Ok(success())
}

async fn auto_off(
    State(state): State<AppState>,
    Operator(actor): Operator,
) -> Result<Response, DcError> {
    state.coordinator.set_auto_mode(&actor, false).await?;
    Ok(success())
}

fn resource_json(p: &PoolView, now: i64) -> Value {
    let c = &p.config;
    let kind = if c.provisioner.is_some() {
        "provisioned"
    } else {
        "static"
    };
    json!({
        "name": c.name,
        "type": kind,
        "priority": c.priority,
        "min_num": p.min,
        "max_num": p.max,
        "current_num": p.current,
        "cores_per_node": p.hosts.iter().map(|h| h.capacity.vcpus).max().unwrap_or(0),
        "flag": p.flag,
        "proposed_allocation": null,
        "reservation_queue": c.reservation_queue,
        "reservation_account": c.reservation_account,
        "reservation_property": null,
        "provisioner_failures": p.failures,
        "config": {
            "type": kind,
            "priority": c.priority,
            "quantity": {"min": c.min, "max": c.max},
            "reservation": {"queue": c.reservation_queue, "account": c.reservation_account, "property": null},
            "config": {"flavor": c.flavor, "hosts": c.hosts},
        },
        "worker_nodes": p.hosts.iter().map(|h| node_json(h, now)).collect::<Vec<_>>(),
    })
}

async fn resources(State(state): State<AppState>, _: Operator) -> Response {
    let now = state.coordinator.now();
    let list: Vec<Value> = state
        .coordinator
        .pools_view()
        .await
        .iter()
        .map(|p| resource_json(p, now))
        .collect();
    axum::Json(list).into_response()
}

async fn resource(
    State(state): State<AppState>,
    _: Operator,
    Path(name): Path<String>,
) -> Result<Response, DcError> {
    let p = state.coordinator.pool_view(&name).await?;
    Ok(axum::Json(resource_json(&p, state.coordinator.now())).into_response())
}

async fn launch(
    State(state): State<AppState>,
    Operator(actor): Operator,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, DcError> {
    let n = match query(q.as_deref())?.remove("num") {
        None => 1,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| DcError::new(StatusCode::BAD_REQUEST, "num must be 1 to 1000"))?,
    };
    match state.coordinator.launch(&actor, &name, n, None).await {
        Ok(_) => Ok(success()),
        Err(OperatorError::NotAllowed(m)) if m.contains("exceeded") => Err(DcError::new(
            StatusCode::BAD_REQUEST,
            format!("resource {name} has exceeded the resource limit."),
        )),
        Err(e) => Err(e.into()),
    }
}

async fn resource_action(
    State(state): State<AppState>,
    Operator(actor): Operator,
    Path((name, action)): Path<(String, String)>,
) -> Result<Response, DcError> {
    if !matches!(action.as_str(), "freeze" | "restore" | "drain") {
        return Err(DcError::new(StatusCode::NOT_FOUND, "action not supported"));
    }
    state
        .coordinator
        .pool_action(&actor, &name, &action, None)
        .await?;
    Ok(success())
}
