//! Arvados' dispatcher management API under `/arvados/v1/dispatch/`: the container queue (our
//! servers) and the instances (our hosts) with hold, drain, run and kill. Shapes and codes as
//! Arvados' `lib/dispatchcloud`: errors `{"errors": [...]}`, actions 200 with an empty body,
//! parameters from the query string or a form body.

use crate::api::AppState;
use crate::api::operator::auth::{Refused, authorize};
use crate::domain::flavors::Flavor;
use crate::ops::operator::{HostView, OperatorError, QueueEntry};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use backfill_api::arvados::{
    ArvContainer, ArvCuda, ArvErrors, ArvGpu, ArvInstance, ArvInstanceResources, ArvInstanceType,
    ArvInstances, ArvQueue, ArvQueueEntry, ArvRuntimeConstraints, ArvSchedulingParameters,
};
use backfill_shared::clock::rfc3339;
use backfill_shared::{IdleBehavior, ServerClass, ServerId, ServerStatus, WorkerState};

/// Arvados' zero time, for fields that have no value.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/containers", get(containers))
        .route("/container", get(container))
        .route("/containers/kill", post(kill_container))
        .route("/instances", get(instances))
        .route(
            "/instances/hold",
            post(|s: State<AppState>, o: Operator, f: Form| {
                set_behavior(s, o, f, IdleBehavior::Hold)
            }),
        )
        .route(
            "/instances/drain",
            post(|s: State<AppState>, o: Operator, f: Form| {
                set_behavior(s, o, f, IdleBehavior::Drain)
            }),
        )
        .route(
            "/instances/run",
            post(|s: State<AppState>, o: Operator, f: Form| {
                set_behavior(s, o, f, IdleBehavior::Run)
            }),
        )
        .route("/instances/kill", post(kill_instance))
        .fallback(|| async { ArvError::new(StatusCode::NOT_FOUND, "no such path") })
}

/// `{"errors": ["..."]}` with a status.
#[derive(Debug)]
pub struct ArvError {
    status: StatusCode,
    message: String,
}

impl ArvError {
    fn new(status: StatusCode, message: impl Into<String>) -> ArvError {
        ArvError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ArvError {
    fn into_response(self) -> Response {
        let body = ArvErrors {
            errors: vec![self.message],
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<OperatorError> for ArvError {
    fn from(e: OperatorError) -> ArvError {
        match e {
            OperatorError::UnknownServer(_) | OperatorError::NotOnHost(_) => {
                ArvError::new(StatusCode::NOT_FOUND, "container not found")
            }
            OperatorError::UnknownHost(_) => {
                ArvError::new(StatusCode::NOT_FOUND, "requested instance does not exist")
            }
            OperatorError::UnknownPool(_) | OperatorError::NotAllowed(_) => {
                ArvError::new(StatusCode::BAD_REQUEST, e.to_string())
            }
            OperatorError::Store(err) => {
                tracing::error!(error = %err, "store failed");
                ArvError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the change could not be stored; nothing was changed",
                )
            }
        }
    }
}

/// An operator (admin certificate or management token).
pub struct Operator(String);

impl FromRequestParts<AppState> for Operator {
    type Rejection = ArvError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ArvError> {
        authorize(parts, state)
            .map(Operator)
            .map_err(|Refused { status, message }| ArvError::new(status, message))
    }
}

/// Parameters as Go's `FormValue` reads them: the query string, then a form body.
struct Form(Vec<(String, String)>);

impl axum::extract::FromRequest<AppState> for Form {
    type Rejection = ArvError;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Form, ArvError> {
        let query = req.uri().query().map(str::to_owned);
        let headers = req.headers().clone();
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| ArvError::new(e.status(), e.body_text()))?;
        Form::new(query.as_deref(), &headers, &body)
    }
}

impl Form {
    /// The query string, then a form body; a parameter given twice (in either, or once in
    /// each) is refused: which one Arvados' `FormValue` would take is not what a caller of
    /// `kill` should have to know.
    fn new(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Result<Form, ArvError> {
        let mut out: Vec<(String, String)> = query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let is_form = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            out.extend(form_urlencoded::parse(body).into_owned());
        }
        let mut seen = std::collections::BTreeSet::new();
        for (k, v) in &out {
            if !seen.insert(k.as_str()) {
                return Err(ArvError::new(
                    StatusCode::BAD_REQUEST,
                    format!("parameter {k:?} is given more than once"),
                ));
            }
            if let Err(e) = crate::api::text::check_text(v) {
                return Err(ArvError::new(
                    StatusCode::BAD_REQUEST,
                    format!("parameter {k:?} {e}"),
                ));
            }
        }
        Ok(Form(out))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }
}

fn instance_type(f: &Flavor, legacy: bool) -> ArvInstanceType {
    ArvInstanceType {
        provider_type: f.name.clone(),
        vcpus: f.vcpus,
        ram: f.ram,
        included_scratch: f.scratch,
        added_scratch: 0,
        price: f.price,
        preemptible: f.is_preemptible(),
        gpu: ArvGpu {
            stack: if f.gpus > 0 { "cuda" } else { "" }.into(),
            driver_version: String::new(),
            hardware_target: String::new(),
            device_count: f.gpus,
            vram: 0,
        },
        name: legacy.then(|| f.name.clone()),
        scratch: legacy.then_some(f.scratch),
    }
}

/// A container queue entry: the HEAD shape (`instance_types`, `instance_resources`,
/// `scheduling_status`) and the seed's legacy `instance_type` object.
fn queue_entry(e: &QueueEntry, flavors: &crate::domain::flavors::Flavors) -> ArvQueueEntry {
    let s = &e.server;
    let state = match (s.status, s.host.is_some()) {
        (ServerStatus::Starting, false) => "Queued",
        (ServerStatus::Starting, true) => "Locked",
        _ => "Running",
    };
    let eligible: Vec<Flavor> = match s.flavor.as_deref().and_then(|n| flavors.get(n)) {
        Some(f) => vec![f.clone()],
        None => flavors
            .eligible(s.class, s.cpu, s.smp, s.mem)
            .into_iter()
            .cloned()
            .collect(),
    };
    // Nothing configured fits: the server's own size, as a type of its own.
    let types = if eligible.is_empty() {
        vec![Flavor {
            name: s.instance_type.clone(),
            vcpus: s.smp,
            cpu: Some(s.cpu),
            ram: s.mem,
            scratch: 0,
            gpus: 0,
            price: 0.0,
            preemptible: Some(s.class != ServerClass::Normal),
        }]
    } else {
        eligible
    };
    let names: Vec<&str> = types.iter().map(|f| f.name.as_str()).collect();
    let status = match (state, e.position) {
        ("Queued", Some(n)) => format!(
            "Waiting in queue at position {}.  Cluster is at capacity for all eligible instance types ({}) and cannot start a new instance right now.",
            n + 1,
            names.join(", ")
        ),
        ("Locked", _) => "Container is allocated to an instance and preparing to run.".into(),
        _ => String::new(),
    };
    ArvQueueEntry {
        container: ArvContainer {
            uuid: s.uuid.to_string(),
            name: s.name.clone(),
            owner_uuid: s.owner.clone(),
            priority: s.priority,
            state: state.into(),
            runtime_constraints: ArvRuntimeConstraints {
                vcpus: s.smp,
                ram: s.mem,
                keep_cache_ram: 0,
                keep_cache_disk: 0,
                api: false,
                cuda: ArvCuda::default(),
            },
            scheduling_parameters: ArvSchedulingParameters {
                preemptible: s.class != ServerClass::Normal,
                partitions: Vec::new(),
                max_run_time: 0,
            },
            created_at: rfc3339(s.created_at),
            command: Vec::new(),
            mounts: serde_json::Map::new(),
        },
        instance_resources: ArvInstanceResources {
            vcpus: s.smp,
            ram: s.mem,
            scratch: 0,
            gpus: 0,
            gpu_vram: 0,
        },
        instance_types: types.iter().map(|f| instance_type(f, false)).collect(),
        instance_type: types.first().map(|f| instance_type(f, true)),
        first_seen_at: rfc3339(s.created_at),
        scheduling_status: status,
    }
}

async fn containers(State(state): State<AppState>, _: Operator) -> Response {
    let flavors = state.coordinator.flavors().await;
    let items = state
        .coordinator
        .queue()
        .await
        .iter()
        .map(|e| queue_entry(e, &flavors))
        .collect();
    axum::Json(ArvQueue { items }).into_response()
}

fn container_id(form: &Form) -> Result<ServerId, ArvError> {
    let raw = form.get("container_uuid").ok_or_else(|| {
        ArvError::new(
            StatusCode::BAD_REQUEST,
            "container_uuid parameter not provided",
        )
    })?;
    raw.parse()
        .map_err(|_| ArvError::new(StatusCode::NOT_FOUND, "container not found"))
}

async fn container(
    State(state): State<AppState>,
    _: Operator,
    form: Form,
) -> Result<Response, ArvError> {
    let id = container_id(&form)?;
    let flavors = state.coordinator.flavors().await;
    let entry = state
        .coordinator
        .queue()
        .await
        .into_iter()
        .find(|e| e.server.uuid == id)
        .ok_or_else(|| ArvError::new(StatusCode::NOT_FOUND, "container not found"))?;
    Ok(axum::Json(queue_entry(&entry, &flavors)).into_response())
}

async fn kill_container(
    State(state): State<AppState>,
    Operator(actor): Operator,
    form: Form,
) -> Result<StatusCode, ArvError> {
    let id = container_id(&form)?;
    state
        .coordinator
        .kill_server(&actor, id, form.get("reason"))
        .await?;
    Ok(StatusCode::OK)
}

fn worker_state(h: &HostView) -> &'static str {
    match h.worker_state {
        WorkerState::Down => "unknown",
        other => other.as_str(),
    }
}

pub(crate) fn instance(h: &HostView) -> ArvInstance {
    ArvInstance {
        instance: if h.launching {
            String::new()
        } else {
            h.id.clone()
        },
        address: h.address.map(|a| a.to_string()).unwrap_or_default(),
        price: h.price,
        arvados_instance_type: h.instance_type.clone(),
        provider_instance_type: h.instance_type.clone(),
        last_container_uuid: h.last_server.map(|s| s.to_string()).unwrap_or_default(),
        last_busy: h.last_busy.map_or_else(|| ZERO_TIME.to_owned(), rfc3339),
        running_container_uuids: h.work.iter().map(|w| w.uuid.to_string()).collect(),
        worker_state: worker_state(h).into(),
        idle_behavior: h.idle_behavior.as_str().into(),
    }
}

async fn instances(State(state): State<AppState>, _: Operator) -> Response {
    let items = state
        .coordinator
        .hosts()
        .await
        .iter()
        .map(instance)
        .collect();
    axum::Json(ArvInstances { items }).into_response()
}

fn instance_id(form: &Form) -> Result<String, ArvError> {
    form.get("instance_id").map(str::to_owned).ok_or_else(|| {
        ArvError::new(
            StatusCode::BAD_REQUEST,
            "instance_id parameter not provided",
        )
    })
}

/// `instances/hold`, `instances/drain`, `instances/run`.
async fn set_behavior(
    State(state): State<AppState>,
    Operator(actor): Operator,
    form: Form,
    behavior: IdleBehavior,
) -> Result<StatusCode, ArvError> {
    let id = instance_id(&form)?;
    state
        .coordinator
        .set_idle_behavior(&actor, &id, behavior, form.get("reason"))
        .await?;
    Ok(StatusCode::OK)
}

async fn kill_instance(
    State(state): State<AppState>,
    Operator(actor): Operator,
    form: Form,
) -> Result<StatusCode, ArvError> {
    let id = instance_id(&form)?;
    match state
        .coordinator
        .kill_host(&actor, &id, form.get("reason"))
        .await
    {
        Err(OperatorError::UnknownHost(_)) => {
            Err(ArvError::new(StatusCode::NOT_FOUND, "instance not found"))
        }
        other => other.map(|()| StatusCode::OK).map_err(ArvError::from),
    }
}
