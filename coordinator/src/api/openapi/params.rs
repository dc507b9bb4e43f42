//! The OpenAPI document's parameters: path ids with their formats, and the query parameters
//! each operation takes (paging, filters, ordering, periods, actions), with the limits the
//! handlers enforce.

use crate::api::cloudsigma::listing;
use utoipa::openapi::Required;
use utoipa::openapi::path::{HttpMethod, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, SchemaFormat, Type};

/// An account's name: a certificate CN, as a host id.
const ACCOUNT_NAME: &str = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,62}$";

pub(in crate::api) fn path_params(path: &str) -> Vec<Parameter> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            let schema = match name {
                "name" => text().pattern(Some(ACCOUNT_NAME)),
                _ => text().format(Some(SchemaFormat::Custom("uuid".into()))),
            };
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(schema))
                .build()
        })
        .collect()
}

/// One query parameter: name, schema, required, description.
fn query(name: &str, schema: ObjectBuilder, required: bool, what: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(if required {
            Required::True
        } else {
            Required::False
        })
        .description(Some(what))
        .schema(Some(schema))
        .build()
}

fn text() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn integer(min: u64, max: u64) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(min))
        .maximum(Some(max))
}

/// Unix seconds, or an RFC 3339 date-time.
const TIME: &str = "^([0-9]{1,12}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2}))$";

fn paging() -> Vec<Parameter> {
    vec![
        query(
            "limit",
            integer(0, listing::MAX_LIMIT as u64),
            false,
            "Page size (0: all)",
        ),
        query(
            "offset",
            integer(0, listing::MAX_OFFSET as u64),
            false,
            "Objects to skip",
        ),
    ]
}

fn period() -> Vec<Parameter> {
    let time = "RFC 3339 (2026-01-31T00:00:00Z) or Unix seconds, from 1970 to 9999";
    let t = || text().pattern(Some(TIME));
    vec![
        query("start", t(), false, time),
        query("end", t(), false, time),
        query("account", text(), false, "One account (operator only)"),
    ]
}

/// Paging and exact-match filters (comma-separated alternatives).
fn filtered(filters: &[(&str, &str)]) -> Vec<Parameter> {
    let mut out = paging();
    for (f, what) in filters {
        out.push(query(f, text(), false, what));
    }
    out
}

/// The query parameters an operation takes. Each may be given once.
pub(in crate::api) fn query_params(path: &str, method: &HttpMethod) -> Vec<Parameter> {
    let action = |actions: &[&str]| {
        vec![query(
            "do",
            text().enum_values(Some(actions.iter().copied())),
            true,
            "The action",
        )]
    };
    match (method, path) {
        (HttpMethod::Post, p) if p.ends_with("/deliveries/{id}/action/") => action(&["redeliver"]),
        (HttpMethod::Post, "/drives/{uuid}/action/") => action(&["clone", "resize"]),
        (HttpMethod::Post, "/libdrives/{uuid}/action/") => action(&["clone"]),
        (HttpMethod::Post, p) if p.ends_with("/action/") => {
            action(&["start", "stop", "shutdown", "restart"])
        }
        (
            HttpMethod::Get,
            "/servers/" | "/servers/detail/" | "/bservers/" | "/bservers/detail/",
        ) => {
            let mut out = paging();
            for (f, what) in [
                (
                    "name",
                    "Exact names (comma-separated alternatives, \\, escapes a comma)",
                ),
                ("name__contains", "A part of the name"),
                ("tag", "Tags"),
                ("uuid", "Server uuids"),
                ("status", "Statuses"),
            ] {
                out.push(query(f, text(), false, what));
            }
            let order = listing::SERVER_ORDERING
                .iter()
                .flat_map(|o| [(*o).to_owned(), format!("-{o}")]);
            out.push(query(
                "order_by",
                text().enum_values(Some(order)),
                false,
                "Sort key (- reverses)",
            ));
            out
        }
        (HttpMethod::Get, "/drives/" | "/drives/detail/") => filtered(&[
            ("name", "Exact names (comma-separated alternatives)"),
            ("tag", "Tags (any of them)"),
            ("uuid", "Drive uuids"),
            ("status", "Statuses"),
            ("media", "disk or cdrom"),
        ]),
        (HttpMethod::Get, "/libdrives/" | "/libdrives/detail/") => filtered(&[
            ("name", "Exact names (comma-separated alternatives)"),
            ("os", "Operating systems"),
            ("uuid", "Library drive uuids"),
            ("version", "Versions"),
            ("arch", "Architectures"),
            ("image_type", "preinst or install"),
        ]),
        (HttpMethod::Delete, "/servers/{uuid}/" | "/bservers/{uuid}/") => vec![query(
            "recurse",
            text().enum_values(Some(["all_drives", "disks", "cdroms"])),
            false,
            "Also delete the server's drives of that media (default: keep them)",
        )],
        (HttpMethod::Get, "/usage/" | "/ledger/") => {
            let mut out = period();
            out.extend(paging());
            out
        }
        (HttpMethod::Get, p)
            if p == "/accounts/"
                || p == "/subscriptions/"
                || p.starts_with("/webhooks/") && p.ends_with("s/") =>
        {
            paging()
        }
        _ => Vec::new(),
    }
}
