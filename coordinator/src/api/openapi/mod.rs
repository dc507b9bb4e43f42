//! The OpenAPI document: component schemas derived (utoipa) from the types the handlers
//! serialize, and the paths from one table that mirrors the router. Served at
//! `/api/2.0/openapi.json`; `docs/openapi.json` is the committed copy (a test compares them).

mod drives;
mod exact;
mod params;
pub mod receiver;

use crate::api::openapi::drives::{DRIVE_OPS, Op};
use crate::api::openapi::params::{path_params, query_params};
use backfill_api::accounts::{
    AccountCreate, AccountEdit, AccountFields, AccountList, AccountView, CreatedAccounts,
    InUseView, LedgerEntry, LedgerList, QuotaFields, QuotaView, StorageQuota, Unlimited, UsageLine,
    UsageReport, UsageTotals,
};
use backfill_api::drives::{
    CloneFields, CreatedDrives, Drive, DriveCreate, DriveFields, DriveList, DriveMove,
    DriveRuntime, DriveSummary, DriveSummaryList, LibraryDrive, LibraryDriveList, MountedOn,
};
use backfill_api::servers::{
    CreatedServers, IpRef, NicIo, NicRuntime, PerfFactorView, Runtime, Server, ServerCreate,
    ServerFields, ServerList, ServerSummary, ServerSummaryList, TerminationView,
};
use backfill_api::status::{Capabilities, CpuMemView, FreeResourcesView};
use backfill_api::webhooks::{
    CreatedSubscriptions, CreatedWebhooks, DeliveryList, DeliveryView, Filters, SubscriptionCreate,
    SubscriptionFields, SubscriptionList, SubscriptionView, WebhookCreate, WebhookFields,
    WebhookList, WebhookView,
};
use backfill_api::{ActionResult, ErrorItem, ListMeta, Owner};
use utoipa::OpenApi;
use utoipa::openapi::RefOr;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, Paths};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{
    AnyOfBuilder, ArrayBuilder, ObjectBuilder, OneOfBuilder, Ref, Schema, Type,
};
use utoipa::openapi::{ContentBuilder, Required, ResponseBuilder};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "backfill API",
        description = "CloudSigma API 2.0 compatible servers and backfilling servers (bservers), accounts, usage. Mutual TLS: the client certificate's CN names the account (OU=account) or the operator (OU=admin)."
    ),
    servers((url = "/api/2.0")),
    components(schemas(
        Server, ServerSummary, Runtime, NicRuntime, NicIo, IpRef, PerfFactorView,
        TerminationView, Owner, ListMeta, ServerList, ServerSummaryList, CreatedServers,
        ActionResult, ErrorItem, AccountView, QuotaView, StorageQuota, Unlimited, InUseView, AccountList,
        CreatedAccounts, UsageReport, UsageLine, UsageTotals, LedgerEntry, LedgerList,
        ServerFields, ServerCreate, AccountFields, QuotaFields, AccountCreate, AccountEdit, Capabilities,
        FreeResourcesView, CpuMemView, WebhookView, SubscriptionView, DeliveryView,
        WebhookList, SubscriptionList, DeliveryList, CreatedWebhooks, CreatedSubscriptions,
        WebhookFields, WebhookCreate, SubscriptionFields, SubscriptionCreate, Filters,
        Drive, DriveRuntime, MountedOn, DriveSummary, DriveSummaryList, DriveList, CreatedDrives,
        DriveFields, DriveCreate, CloneFields, DriveMove, LibraryDrive, LibraryDriveList
    ))
)]
struct ApiDoc;

fn collection_ops(c: &'static str, what: &'static str) -> Vec<FullOp> {
    let p = |s: &str| format!("/{c}/{s}");
    vec![
        (
            p(""),
            HttpMethod::Get,
            format!(
                "List {what} (summary); limit, offset, filters name, name__contains, tag, uuid, status; order_by"
            ),
            None,
            "200",
            Some("ServerSummaryList"),
        ),
        (
            p(""),
            HttpMethod::Post,
            format!("Create one or many {what}"),
            Some("ServerCreate"),
            "201",
            Some("CreatedServers"),
        ),
        (
            p("detail/"),
            HttpMethod::Get,
            format!("List {what} (full objects)"),
            None,
            "200",
            Some("ServerList"),
        ),
        (
            p("schema/"),
            HttpMethod::Get,
            format!("The schema of {what}"),
            None,
            "200",
            None,
        ),
        (
            p("{uuid}/"),
            HttpMethod::Get,
            "Get one server".into(),
            None,
            "200",
            Some("Server"),
        ),
        (
            p("{uuid}/"),
            HttpMethod::Put,
            "Edit: a running server takes only name, meta and tags".into(),
            Some("ServerFields"),
            "200",
            Some("Server"),
        ),
        (
            p("{uuid}/"),
            HttpMethod::Delete,
            "Delete a stopped server; its drives stay (detached) unless ?recurse names them".into(),
            None,
            "204",
            None,
        ),
        (
            p("{uuid}/runtime/"),
            HttpMethod::Get,
            "The runtime of a running server (null otherwise)".into(),
            None,
            "200",
            Some("Runtime?"),
        ),
        (
            p("{uuid}/action/"),
            HttpMethod::Post,
            "?do=start|stop|shutdown|restart".into(),
            None,
            "202",
            Some("ActionResult"),
        ),
    ]
}

const OTHER_OPS: &[Op] = &[
    (
        "/capabilities/",
        HttpMethod::Get,
        "backfilling, and free_resources for a backfilling account",
        None,
        "200",
        Some("Capabilities"),
    ),
    (
        "/accounts/",
        HttpMethod::Get,
        "List accounts (operator)",
        None,
        "200",
        Some("AccountList"),
    ),
    (
        "/accounts/",
        HttpMethod::Post,
        "Create accounts (operator)",
        Some("AccountCreate"),
        "201",
        Some("CreatedAccounts"),
    ),
    (
        "/accounts/{name}/",
        HttpMethod::Get,
        "Get an account (operator)",
        None,
        "200",
        Some("AccountView"),
    ),
    (
        "/accounts/{name}/",
        HttpMethod::Put,
        "Change the backfill permission or quotas (operator)",
        Some("AccountEdit"),
        "200",
        Some("AccountView"),
    ),
    (
        "/accounts/{name}/",
        HttpMethod::Delete,
        "Delete an account that owns no servers (operator)",
        None,
        "204",
        None,
    ),
    (
        "/usage/",
        HttpMethod::Get,
        "Usage per server in [start, end) (RFC 3339 or Unix seconds; default the last 30 days); the operator may pass account",
        None,
        "200",
        Some("UsageReport"),
    ),
    (
        "/ledger/",
        HttpMethod::Get,
        "Ledger debits per server for [start, end)",
        None,
        "200",
        Some("LedgerList"),
    ),
    (
        "/subscriptions/",
        HttpMethod::Get,
        "Subscriptions (none are sold)",
        None,
        "200",
        None,
    ),
    (
        "/subscriptions/",
        HttpMethod::Post,
        "Refused: no subscription may cover backfill capacity",
        None,
        "403",
        None,
    ),
    (
        "/openapi.json",
        HttpMethod::Get,
        "This document",
        None,
        "200",
        None,
    ),
    (
        "/webhooks/",
        HttpMethod::Get,
        "The account's webhooks with their subscriptions (the secret is never shown again)",
        None,
        "200",
        Some("WebhookList"),
    ),
    (
        "/webhooks/",
        HttpMethod::Post,
        "Register webhooks: {\"objects\": [{url, description}]}; the answer holds each signing secret, once",
        Some("WebhookCreate"),
        "201",
        Some("CreatedWebhooks"),
    ),
    (
        "/webhooks/receiver-openapi.json",
        HttpMethod::Get,
        "The API a webhook receiver implements",
        None,
        "200",
        None,
    ),
    (
        "/webhooks/{uuid}/",
        HttpMethod::Get,
        "One webhook",
        None,
        "200",
        Some("WebhookView"),
    ),
    (
        "/webhooks/{uuid}/",
        HttpMethod::Delete,
        "Delete a webhook, its subscriptions and deliveries",
        None,
        "204",
        None,
    ),
    (
        "/webhooks/{uuid}/subscriptions/",
        HttpMethod::Get,
        "A webhook's subscriptions",
        None,
        "200",
        Some("SubscriptionList"),
    ),
    (
        "/webhooks/{uuid}/subscriptions/",
        HttpMethod::Post,
        "Subscribe: {\"objects\": [{events, filters: {servers, tags, classes}}]}",
        Some("SubscriptionCreate"),
        "201",
        Some("CreatedSubscriptions"),
    ),
    (
        "/webhooks/{uuid}/subscriptions/{sub}/",
        HttpMethod::Delete,
        "Unsubscribe",
        None,
        "204",
        None,
    ),
    (
        "/webhooks/{uuid}/deliveries/",
        HttpMethod::Get,
        "Recent deliveries, newest first, with their status",
        None,
        "200",
        Some("DeliveryList"),
    ),
    (
        "/webhooks/{uuid}/deliveries/{id}/action/",
        HttpMethod::Post,
        "?do=redeliver: send a delivery again now",
        None,
        "202",
        Some("ActionResult"),
    ),
];

fn error_list() -> ArrayBuilder {
    ArrayBuilder::new().items(Ref::from_schema_name("ErrorItem"))
}

/// Every path the API serves, as `(path, method)`, for tests.
pub fn operations() -> Vec<(String, HttpMethod)> {
    all_ops().into_iter().map(|o| (o.0, o.1)).collect()
}

type FullOp = (
    String,
    HttpMethod,
    String,
    Option<&'static str>,
    &'static str,
    Option<&'static str>,
);

fn all_ops() -> Vec<FullOp> {
    let mut ops = collection_ops("servers", "servers");
    ops.extend(collection_ops("bservers", "backfilling servers"));
    ops.extend(
        OTHER_OPS
            .iter()
            .chain(DRIVE_OPS)
            .map(|(p, m, s, rq, code, rs)| {
                ((*p).to_owned(), m.clone(), (*s).to_owned(), *rq, *code, *rs)
            }),
    );
    ops
}

/// A response schema by name; `Name?` is that or `null` (a runtime while stopped).
fn response_schema(name: &str) -> RefOr<Schema> {
    match name.strip_suffix('?') {
        None => Ref::from_schema_name(name).into(),
        Some(name) => OneOfBuilder::new()
            .item(Ref::from_schema_name(name))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .into(),
    }
}

/// A request schema by name; `A|B` is any of them (an action whose body depends on `do`; a
/// body may fit both, so not oneOf).
fn request_schema(name: &str) -> RefOr<Schema> {
    if !name.contains('|') {
        return Ref::from_schema_name(name).into();
    }
    name.split('|')
        .fold(AnyOfBuilder::new(), |b, n| b.item(Ref::from_schema_name(n)))
        .into()
}

/// The whole document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    let mut paths = Paths::new();
    for (path, method, summary, request, code, response) in all_ops() {
        let mut op = OperationBuilder::new()
            .summary(Some(summary))
            .parameters(Some(
                path_params(&path)
                    .into_iter()
                    .chain(query_params(&path, &method)),
            ));
        if let Some(rq) = request {
            let (rq, required) = match rq.strip_suffix('?') {
                Some(rq) => (rq, Required::False),
                None => (rq, Required::True),
            };
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(required))
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(request_schema(rq)))
                            .build(),
                    )
                    .build(),
            ));
        }
        let ok = match response {
            Some(rs) => ResponseBuilder::new().description("Success").content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(response_schema(rs)))
                    .build(),
            ),
            None => ResponseBuilder::new().description("Success"),
        };
        let err = ResponseBuilder::new()
            .description("A CloudSigma error list: 400 validation, 403 permission, 404 notexist, 409, 503 backend")
            .content("application/json", ContentBuilder::new().schema(Some(error_list())).build());
        op = op
            .response(code, ok.build())
            .response("default", err.build());
        paths.add_path_operation(&path, vec![method], op.build());
    }
    doc.paths = paths;
    exact::answers_exact(doc)
}

/// The document as served and committed: pretty JSON with a final newline.
pub fn document_json() -> String {
    let mut text = document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()));
    text.push('\n');
    text
}

#[cfg(test)]
mod tests;
