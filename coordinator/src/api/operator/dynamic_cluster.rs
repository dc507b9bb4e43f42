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
use backfill_api::dynamic_cluster::{
    AdminAction, CloudInstance, ClusterStatus, DcResult, DcStatus, Job, JobExtra, NodeExtra,
    PoolSettings, Quantity, Reservation, Resource, ResourceConfig, WorkerNode,
};
use backfill_shared::{IdleBehavior, ServerStatus, WorkerState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/workernode", get(workernodes))
        .route("/workernode/{host}", get(workernode).delete(delete_node))
        .route("/workernode/{host}/{action}", put(node_action))
        .route("/job", get(jobs))
        .route("/job/{id}", get(one_job))
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
            axum::Json(DcResult {
                success: false,
                error: Some(self.message),
            }),
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
    axum::Json(DcResult {
        success: true,
        error: None,
    })
    .into_response()
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

fn node(h: &HostView, now: i64) -> WorkerNode {
    let jobs: Vec<String> = h.work.iter().map(|w| w.uuid.to_string()).collect();
    WorkerNode {
        hostname: h.id.clone(),
        kind: "backfill".into(),
        state: node_state(h),
        num_proc: h.capacity.vcpus,
        jobs: (!jobs.is_empty()).then(|| jobs.join(",")),
        state_start_time: h.state_since,
        time_in_current_state: now.saturating_sub(h.state_since).max(0),
        extra_attributes: NodeExtra {
            worker_state: h.worker_state.as_str().into(),
            idle_behavior: h.idle_behavior.as_str().into(),
            cpu_mhz: h.capacity.cpu_mhz,
            mem: h.capacity.mem_bytes,
            gpus: h.gpus,
            error: h.error.clone(),
        },
        instance: CloudInstance {
            uuid: h.id.clone(),
            instance_name: h.id.clone(),
            state: instance_state(h),
            ip: h.address.map(|a| a.to_string()),
            dns_name: h.id.clone(),
            vcpu_number: h.capacity.vcpus,
            flavor: h.instance_type.clone(),
            key_name: None,
            security_groups: Vec::new(),
            availability_zone: None,
            image_uuid: None,
            subnet_id: None,
            creation_time: h.first_seen,
            cloud_resource: h.pool.clone(),
            last_update_time: h.last_seen,
            tasked: false,
            last_task_result: if h.error.is_some() { 1 } else { -1 },
            spot_id: None,
            spot_state: None,
            spot_price: h.price,
        },
        admin_actions: None,
    }
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
    let nodes: Vec<WorkerNode> = state
        .coordinator
        .hosts()
        .await
        .iter()
        .filter(|h| filter.is_none_or(|f| node_state(h) == f))
        .map(|h| node(h, now))
        .collect();
    Ok(axum::Json(nodes).into_response())
}

async fn workernode(
    State(state): State<AppState>,
    _: Operator,
    Path(host): Path<String>,
) -> Result<Response, DcError> {
    let h = state.coordinator.host(&host).await?;
    let mut v = node(&h, state.coordinator.now());
    let actions = state.coordinator.audit_entries("host", &host).await?;
    v.admin_actions = Some(
        actions
            .into_iter()
            .map(|a| AdminAction {
                at: a.at,
                actor: a.actor,
                action: a.action,
                reason: a.reason,
            })
            .collect(),
    );
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

fn job(e: &QueueEntry) -> Job {
    let s = &e.server;
    Job {
        jobid: s.uuid.to_string(),
        name: s.name.clone(),
        owner: s.owner.clone(),
        queue: s.class.as_str().into(),
        account: s.owner.clone(),
        property: None,
        priority: s.priority,
        state: if e.position.is_some() { 0 } else { 1 },
        requested_cores: s.smp,
        cores_per_node: s.smp,
        requested_mem: s.mem,
        requested_walltime: None,
        creation_time: s.created_at.to_string(),
        extra_attributes: JobExtra {
            cpu_mhz: s.cpu,
            flavor: s.instance_type.clone(),
            pending_reason: s.queued_reason.clone(),
            host: s.host.as_ref().map(ToString::to_string),
        },
    }
}

async fn jobs(State(state): State<AppState>, _: Operator) -> Response {
    let list: Vec<Job> = state
        .coordinator
        .queue()
        .await
        .iter()
        .filter(|e| e.position.is_some())
        .map(job)
        .collect();
    axum::Json(list).into_response()
}

async fn one_job(
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
    Ok(axum::Json(job(&entry)).into_response())
}

async fn config(State(state): State<AppState>, _: Operator) -> Response {
    axum::Json(state.coordinator.config_view()).into_response()
}

async fn status(State(state): State<AppState>, _: Operator) -> Response {
    let c = &state.coordinator;
    axum::Json(DcStatus {
        auto_mode: c.auto_mode().await,
        cluster: ClusterStatus {
            coordinator: true,
            agents: c.connected_hosts().await,
        },
    })
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

fn resource_view(p: &PoolView, now: i64) -> Resource {
    let c = &p.config;
    let kind = if c.provisioner.is_some() {
        "provisioned"
    } else {
        "static"
    };
    Resource {
        name: c.name.clone(),
        kind: kind.into(),
        priority: c.priority,
        min_num: p.min,
        max_num: p.max,
        current_num: p.current,
        cores_per_node: p.hosts.iter().map(|h| h.capacity.vcpus).max().unwrap_or(0),
        flag: p.flag,
        proposed_allocation: None,
        reservation_queue: c.reservation_queue.clone(),
        reservation_account: c.reservation_account.clone(),
        reservation_property: None,
        provisioner_failures: p.failures,
        config: ResourceConfig {
            kind: kind.into(),
            priority: c.priority,
            quantity: Quantity {
                min: c.min,
                max: c.max,
            },
            reservation: Reservation {
                queue: c.reservation_queue.clone(),
                account: c.reservation_account.clone(),
                property: None,
            },
            config: PoolSettings {
                flavor: c.flavor.clone(),
                hosts: c.hosts.clone(),
            },
        },
        worker_nodes: p.hosts.iter().map(|h| node(h, now)).collect(),
    }
}

async fn resources(State(state): State<AppState>, _: Operator) -> Response {
    let now = state.coordinator.now();
    let list: Vec<Resource> = state
        .coordinator
        .pools_view()
        .await
        .iter()
        .map(|p| resource_view(p, now))
        .collect();
    axum::Json(list).into_response()
}

async fn resource(
    State(state): State<AppState>,
    _: Operator,
    Path(name): Path<String>,
) -> Result<Response, DcError> {
    let p = state.coordinator.pool_view(&name).await?;
    Ok(axum::Json(resource_view(&p, state.coordinator.now())).into_response())
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
