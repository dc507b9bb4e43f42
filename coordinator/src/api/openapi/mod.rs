//! The OpenAPI document: component schemas derived (utoipa) from the types the handlers
//! serialize, and the paths from one table that mirrors the router. Served at
//! `/api/2.0/openapi.json`; `docs/openapi.json` is the committed copy (a test compares them).

mod drives;
mod params;
pub mod receiver;

use crate::api::cloudsigma::views::*;
use crate::api::cloudsigma::webhooks::{
    DeliveryView, SubscriptionCreate, SubscriptionFields, SubscriptionView, WebhookCreate,
    WebhookFields, WebhookView,
};
use crate::api::openapi::drives::{
    CloneFields, CreatedDrives, DRIVE_OPS, Drive, DriveCreate, DriveFields, DriveList,
    DriveMoveFields, DriveRuntime, DriveSummary, DriveSummaryList, LibraryDrive, LibraryDriveList,
    MountedOn, Op,
};
use crate::api::openapi::params::{path_params, query_params};
use crate::domain::event::Filters;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::openapi::RefOr;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, Paths};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{
    AnyOfBuilder, ArrayBuilder, ObjectBuilder, OneOfBuilder, Ref, Schema, Type,
};
use utoipa::openapi::{ContentBuilder, Required, ResponseBuilder};
use utoipa::{OpenApi, ToSchema};

/// The fields a server create (`{"objects": [...]}`) or edit (`PUT`) may carry.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerFields {
    /// Required on create; 1 to 200 characters, not only spaces, without control,
    /// bidirectional or invisible formatting characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// MHz; required on create.
    #[schema(minimum = 1, maximum = 10_000_000)]
    pub cpu: u64,
    /// Bytes, at least 64 MiB; required on create.
    #[schema(minimum = 67_108_864_u64, maximum = 17_592_186_044_416_u64)]
    pub mem: u64,
    /// Cores (default 1).
    #[schema(minimum = 1, maximum = 1024)]
    pub smp: Option<u32>,
    /// Keys of 1 to 64 bytes (no control or bidirectional characters), string values of at
    /// most 4096 bytes (tabs and line breaks allowed); at most 100 keys.
    pub meta: Option<BTreeMap<String, String>>,
    /// 1 to 64 bytes each, as meta keys.
    #[schema(max_items = 100)]
    pub tags: Option<Vec<String>>,
    #[schema(max_length = 64)]
    pub vnc_password: Option<String>,
    /// What the server runs, one kind: `{"command": [prog, args...]}` (exec, a process on the
    /// host), `{"vm": {"image": "name.qcow2"}}` or `{"vm": {"kernel": ..., "initrd": ...,
    /// "cmdline": ...}}` (a QEMU virtual machine booted from a fleet image), or
    /// `{"container": {"image": "registry/name:tag", "workdir": "/..."}}` (an OCI container;
    /// `command` and `env` override the image's). Each may add `"env": {...}` (not for vm) and
    /// `"network": "host"|"isolated"` (vm and container default to isolated, exec to host). A
    /// kind or VM image no host of the fleet has is refused (400).
    #[schema(value_type = Option<Object>)]
    pub workload: Option<serde_json::Value>,
    /// -1000 to 1000 (default 0).
    #[schema(minimum = -1000, maximum = 1000)]
    pub priority: Option<i32>,
    /// A configured flavor: it gives cpu, smp and mem (those named besides must fit in it); a
    /// preemptible flavor makes a spot server in `/servers/`.
    pub flavor: Option<String>,
    /// A device profile's name (`/accelerator/v2/device_profiles`): the server gets the GPUs
    /// its groups ask for, and accelerator requests bound to them while it is placed.
    pub device_profile: Option<String>,
    /// The tenant's drives (`/drives/`), changed only while the server is stopped:
    /// `[{"boot_order": 1, "dev_channel": "0:0", "device": "virtio"|"ide", "drive": "<uuid>"}]`.
    /// The server then runs as a VM booting from its drive with boot_order 1 on the host that
    /// holds its drives; a `cdrom` drive attaches as a CD.
    #[schema(value_type = Option<Vec<Object>>, max_items = 16)]
    pub drives: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServerCreate {
    pub objects: Vec<ServerFields>,
}

/// An account to create; `quota` fields null or absent = unlimited.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountFields {
    /// The CN of the account's certificates.
    #[schema(pattern = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,62}$")]
    pub name: String,
    pub backfill: Option<bool>,
    pub quota: Option<QuotaView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountCreate {
    pub objects: Vec<AccountFields>,
}

/// A change to an account: present fields change.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountEdit {
    pub backfill: Option<bool>,
    pub quota: Option<QuotaView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CpuMemView {
    /// MHz.
    pub cpu: u64,
    /// Bytes.
    pub mem: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FreeResourcesView {
    pub total: CpuMemView,
    pub most_free_by_cpu: CpuMemView,
    pub most_free_by_memory: CpuMemView,
}

/// `free_resources` only for an account with the backfill permission.
#[derive(Debug, Serialize, ToSchema)]
pub struct Capabilities {
    pub backfilling: bool,
    pub free_resources: Option<FreeResourcesView>,
}

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
        ActionResult, ErrorItem, AccountView, QuotaView, StorageQuotaView, Unlimited, InUseView, AccountList,
        CreatedAccounts, UsageReport, UsageLine, UsageTotals, LedgerEntry, LedgerList,
        ServerFields, ServerCreate, AccountFields, AccountCreate, AccountEdit, Capabilities,
        FreeResourcesView, CpuMemView, WebhookView, SubscriptionView, DeliveryView,
        WebhookFields, WebhookCreate, SubscriptionFields, SubscriptionCreate, Filters,
        Drive, DriveRuntime, MountedOn, DriveSummary, DriveSummaryList, DriveList, CreatedDrives,
        DriveFields, DriveCreate, CloneFields, DriveMoveFields, LibraryDrive, LibraryDriveList
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
        None,
    ),
    (
        "/webhooks/",
        HttpMethod::Post,
        "Register webhooks: {\"objects\": [{url, description}]}; the answer holds each signing secret, once",
        Some("WebhookCreate"),
        "201",
        None,
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
        None,
    ),
    (
        "/webhooks/{uuid}/subscriptions/",
        HttpMethod::Post,
        "Subscribe: {\"objects\": [{events, filters: {servers, tags, classes}}]}",
        Some("SubscriptionCreate"),
        "201",
        None,
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
        None,
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
    doc
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
