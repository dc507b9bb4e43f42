//! `/webhooks/`: a tenant's receivers, their subscriptions and deliveries (account
//! certificates only, own account only), in CloudSigma's conventions: lists with `meta`,
//! creates with `{"objects": [...]}` (201), actions 202, deletes 204. The signing secret is
//! shown once, in the create's answer.

use crate::api::cloudsigma::listing::page_of;
use crate::api::cloudsigma::views::to_json;
use crate::api::json_body::JsonBody;
use crate::api::params::Params;
use crate::api::tenant::Tenant;
use crate::api::text::{check_name, check_text};
use crate::api::{ApiError, AppState};
use crate::domain::event::{Filters, Subscription};
use crate::ops::webhooks::WebhookError;
use crate::store::{Delivery, Webhook};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use backfill_api::ActionResult;
use backfill_api::webhooks::{
    CreatedSubscriptions, CreatedWebhooks, DeliveryList, DeliveryView, Filters as FiltersView,
    SubscriptionList, SubscriptionView, WebhookList, WebhookView,
};
use backfill_shared::clock::rfc3339;
use serde::Deserialize;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/webhooks/", get(list).post(create))
        .route("/webhooks/receiver-openapi.json", get(receiver_doc))
        .route("/webhooks/{uuid}/", get(show).delete(remove))
        .route(
            "/webhooks/{uuid}/subscriptions/",
            get(subscriptions).post(subscribe),
        )
        .route("/webhooks/{uuid}/subscriptions/{sub}/", delete(unsubscribe))
        .route("/webhooks/{uuid}/deliveries/", get(deliveries))
        .route("/webhooks/{uuid}/deliveries/{id}/action/", post(redeliver))
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> ApiError {
        match e {
            WebhookError::Invalid { field, message } => ApiError::validation(field, message),
            WebhookError::NotFound(what) => ApiError::not_found(format!("{what} does not exist")),
            WebhookError::Store(s) => crate::state::coordinator::OpError::Store(s).into(),
        }
    }
}

/// A webhook as a create parses it: `backfill_api::webhooks::WebhookFields` (the document's
/// schema), but a null `description` is refused, not taken as empty.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookFields {
    url: String,
    #[serde(default)]
    description: String,
}

/// A subscription as a subscribe parses it: `backfill_api::webhooks::SubscriptionFields` (the
/// document's schema), with the coordinator's `Filters`, which refuse unknown fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionFields {
    events: Vec<String>,
    #[serde(default)]
    filters: Option<Filters>,
}

fn uri(w: &str) -> String {
    format!("/api/2.0/webhooks/{w}/")
}

fn sub_view(s: &Subscription) -> SubscriptionView {
    SubscriptionView {
        uuid: s.uuid.clone(),
        events: s.events.clone(),
        filters: filters_view(&s.filters),
        created_at: rfc3339(s.created_at),
        resource_uri: format!("{}subscriptions/{}/", uri(&s.webhook), s.uuid),
    }
}

fn filters_view(f: &Filters) -> FiltersView {
    FiltersView {
        servers: f.servers.clone(),
        tags: f.tags.clone(),
        classes: f.classes.clone(),
    }
}

fn view(w: &Webhook, subs: &[Subscription], secret: bool) -> WebhookView {
    WebhookView {
        uuid: w.uuid.clone(),
        url: w.url.clone(),
        description: w.description.clone(),
        created_at: rfc3339(w.created_at),
        resource_uri: uri(&w.uuid),
        subscriptions: subs
            .iter()
            .filter(|s| s.webhook == w.uuid)
            .map(sub_view)
            .collect(),
        secret: secret.then(|| w.secret.clone()),
    }
}

fn delivery_view(d: &Delivery) -> DeliveryView {
    DeliveryView {
        uuid: d.uuid.clone(),
        event_id: d.event_id.clone(),
        event_type: d.event_type.clone(),
        status: d.status.clone(),
        attempts: d.attempts,
        next_attempt_at: (d.status == "pending").then(|| rfc3339(d.next_attempt_at)),
        last_attempt_at: d.last_attempt_at.map(rfc3339),
        last_status_code: d.last_status,
        last_error: d.last_error.clone(),
        created_at: rfc3339(d.created_at),
        delivered_at: d.delivered_at.map(rfc3339),
    }
}

fn objects<T: for<'de> Deserialize<'de>>(
    body: Result<JsonBody, ApiError>,
) -> Result<Vec<T>, ApiError> {
    let JsonBody(v) = body?;
    #[derive(Deserialize)]
    struct Objects<T> {
        objects: Vec<T>,
    }
    let o: Objects<T> = serde_json::from_value(v).map_err(|e| {
        ApiError::validation("objects", format!("expected {{\"objects\": [...]}}: {e}"))
    })?;
    if o.objects.is_empty() || o.objects.len() > 20 {
        return Err(ApiError::validation(
            "objects",
            "objects must hold 1 to 20 items",
        ));
    }
    Ok(o.objects)
}

async fn list(
    State(state): State<AppState>,
    Tenant(account): Tenant,
    params: Params,
) -> Result<Response, ApiError> {
    let c = &state.coordinator;
    let hooks = c.webhooks_of(&account).await?;
    let mut subs = Vec::new();
    for w in &hooks {
        subs.extend(c.subscriptions_of(&account, &w.uuid).await?);
    }
    let (meta, objects) = page_of(
        hooks.iter().map(|w| view(w, &subs, false)).collect(),
        &params.0,
    )?;
    Ok(Json(to_json(&WebhookList { meta, objects })).into_response())
}

async fn create(
    State(state): State<AppState>,
    Tenant(account): Tenant,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    let fields: Vec<WebhookFields> = objects(body)?;
    for (i, f) in fields.iter().enumerate() {
        check_name(&f.url)
            .map_err(|e| ApiError::validation(format!("objects[{i}].url"), format!("url {e}")))?;
        check_text(&f.description).map_err(|e| {
            ApiError::validation(
                format!("objects[{i}].description"),
                format!("description {e}"),
            )
        })?;
    }
    let mut out = Vec::new();
    for f in fields {
        let w = state
            .coordinator
            .create_webhook(&account, &f.url, &f.description)
            .await?;
        out.push(view(&w, &[], true));
    }
    let body = to_json(&CreatedWebhooks { objects: out });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn show(
    State(state): State<AppState>,
    Tenant(account): Tenant,
    Path(uuid): Path<String>,
) -> Result<Response, ApiError> {
    let w = state.coordinator.webhook(&account, &uuid).await?;
    let subs = state.coordinator.subscriptions_of(&account, &uuid).await?;
    Ok(Json(to_json(&view(&w, &subs, false))).into_response())
}

async fn remove(
    State(state): State<AppState>,
    Tenant(account): Tenant,
    Path(uuid): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.coordinator.delete_webhook(&account, &uuid).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn subscriptions(
    State(state): State<AppState>,
    Tenant(account): Tenant,
    Path(uuid): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let subs = state.coordinator.subscriptions_of(&account, &uuid).await?;
    let (meta, objects) = page_of(subs.iter().map(sub_view).collect(), &params.0)?;
    Ok(Json(to_json(&SubscriptionList { meta, objects })).into_response())
}

async fn subscribe(
    State(state): State<AppState>,
    Tenant(account): Tenant,
    Path(uuid): Path<String>,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    let fields: Vec<SubscriptionFields> = objects(body)?;
    // Events, classes and servers are checked against what exists; tags are free-form.
    for (i, f) in fields.iter().enumerate() {
        for tag in f.filters.iter().flat_map(|f| &f.tags) {
            check_name(tag).map_err(|e| {
                ApiError::validation(format!("objects[{i}].filters.tags"), format!("tag {e}"))
            })?;
        }
    }
    let mut out = Vec::new();
    for f in fields {
        let filters = f.filters.unwrap_or_default();
        let s = state
            .coordinator
            .subscribe(&account, &uuid, f.events, filters)
            .await?;
        out.push(sub_view(&s));
    }
    let body = to_json(&CreatedSubscriptions { objects: out });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn unsubscribe(
    State(state): State<AppState>,
    Tenant(account): Tenant,
    Path((uuid, sub)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.coordinator.unsubscribe(&account, &uuid, &sub).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn deliveries(
    State(state): State<AppState>,
    Tenant(account): Tenant,
    Path(uuid): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let list = state.coordinator.deliveries(&account, &uuid, 1000).await?;
    let (meta, objects) = page_of(list.iter().map(delivery_view).collect(), &params.0)?;
    Ok(Json(to_json(&DeliveryList { meta, objects })).into_response())
}

async fn redeliver(
    State(state): State<AppState>,
    Tenant(account): Tenant,
    Path((uuid, id)): Path<(String, String)>,
    Params(q): Params,
) -> Result<Response, ApiError> {
    if q.get("do").map(String::as_str) != Some("redeliver") {
        return Err(ApiError::validation(
            "do",
            "the only action is ?do=redeliver",
        ));
    }
    state.coordinator.redeliver(&account, &uuid, &id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(to_json(&ActionResult {
            action: "redeliver".into(),
            result: "success".into(),
            uuid: id,
        })),
    )
        .into_response())
}

/// The API a tenant's receiver implements (public: it describes, it grants nothing).
async fn receiver_doc() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::api::openapi::receiver::document_json(),
    )
        .into_response()
}
