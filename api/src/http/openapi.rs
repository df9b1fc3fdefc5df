//! The OpenAPI 3.1 document, built from the same route table as the router
//! ([`crate::http::routes`]) and from the response types themselves (`utoipa::ToSchema`).
//!
//! Served at `/api/hyperfleet/v1/openapi` (JSON) and browsable at `/api/hyperfleet/v1/openapi.html`;
//! both are public. A test checks that every documented operation is served and every other
//! method on a documented path answers 405, and that the document validates as OpenAPI 3.1.

use std::sync::OnceLock;

use axum::{
    Router,
    http::header,
    response::{Html, IntoResponse},
    routing::get,
};
use utoipa::{
    ToSchema,
    openapi::{
        ComponentsBuilder, Content, ContentBuilder, HttpMethod, InfoBuilder, OpenApi, OpenApiBuilder, PathItem,
        PathsBuilder, Ref, RefOr, Required, ResponseBuilder, ResponsesBuilder, Schema,
        header::HeaderBuilder,
        path::{OperationBuilder, ParameterBuilder, ParameterIn},
        request_body::RequestBodyBuilder,
        schema::{ObjectBuilder, Type},
    },
};

use crate::{
    API_PREFIX,
    domain::{
        model::{AdapterStatus, Kind, Resource},
        validation::{ForceDelete, ResourceCreate, ResourcePatch, StatusReport},
    },
    error::{PROBLEM_JSON, Problem},
};

/// What `fields` does (lists and single GETs).
const FIELDS_DOC: &str = "Comma-separated members to keep (plus `id`); `traceparent`, the W3C trace context of the \
     request that made the current generation when the API traces, appears only when named here";

/// A page of resources.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct ResourceList {
    page: i64,
    /// Items in this page.
    size: i64,
    /// Items matching the query across all pages; absent with `total=false`.
    total: Option<i64>,
    /// With `fields`, each item is reduced to those members (and `id`).
    items: Vec<Resource>,
}

/// A page of adapter reports.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct AdapterStatusList {
    page: i64,
    size: i64,
    total: i64,
    items: Vec<AdapterStatus>,
}

/// One line of a change feed (`?watch=true`, `application/x-ndjson`).
#[allow(dead_code)]
#[derive(serde::Serialize, ToSchema)]
pub struct WatchEvent {
    /// `ADDED`, `MODIFIED`, `DELETED`, or `BOOKMARK` (a heartbeat; no `object`).
    #[serde(rename = "type")]
    kind: String,
    /// The resource after the change (before it, for `DELETED`).
    object: Option<Resource>,
    /// Resume after this change with `resource_version=<this>`.
    resource_version: String,
}

/// The document, built once.
pub fn document() -> &'static OpenApi {
    static DOC: OnceLock<OpenApi> = OnceLock::new();
    DOC.get_or_init(build)
}

/// `GET /openapi` and `GET /openapi.html`, relative to the API prefix.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/openapi",
            get(|| async {
                let json = document().to_pretty_json().unwrap_or_default();
                ([(header::CONTENT_TYPE, "application/json")], json).into_response()
            }),
        )
        .route("/openapi.html", get(|| async { Html(PAGE) }))
}

const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>HyperFleet API</title>
  <link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5/swagger-ui.css">
</head>
<body>
  <div id="ui"></div>
  <script src="https://unpkg.com/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
  <script>SwaggerUIBundle({ url: "openapi", dom_id: "#ui" });</script>
</body>
</html>
"##;

fn schema_ref(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

fn json(name: &str) -> Content {
    ContentBuilder::new().schema(Some(schema_ref(name))).build()
}

fn problem() -> Content {
    json("Problem")
}

fn param(name: &str, location: ParameterIn, required: bool, schema: RefOr<Schema>, doc: &str) -> ParameterBuilder {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(location)
        .required(if required { Required::True } else { Required::False })
        .schema(Some(schema))
        .description(Some(doc))
}

fn string() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::String).into()
}

fn uuid() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Uuid)))
        .into()
}

fn integer(min: i64, max: i64) -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(min)).maximum(Some(max)).into()
}

/// The errors an operation may answer with, as `problem+json`.
fn responses(ok: Vec<(&str, ResponseBuilder)>, errors: &[(&str, &str)]) -> utoipa::openapi::Responses {
    let mut b = ResponsesBuilder::new();
    for (code, resp) in ok {
        b = b.response(code, resp);
    }
    for (code, why) in errors {
        b = b.response(*code, ResponseBuilder::new().description(*why).content(PROBLEM_JSON, problem()));
    }
    if !errors.is_empty() {
        b = b.response(
            "401",
            ResponseBuilder::new()
                .description(
                    "With JWT authentication on: no bearer token (`HYPERFLEET-AUT-001`) or one that does not verify \
                     (`HYPERFLEET-AUT-002`)",
                )
                .content(PROBLEM_JSON, problem()),
        );
    }
    b.response(
        "default",
        ResponseBuilder::new()
            .description(
                "Server-side failure (`HYPERFLEET-INT-*`), no database connection (503 `HYPERFLEET-SVC-001`), or a \
                 lock wait past its timeout (503 `HYPERFLEET-SVC-002`, Retry-After), or a statement past its timeout \
                 (503 `HYPERFLEET-SVC-004`)",
            )
            .content(PROBLEM_JSON, problem()),
    )
    .build()
}

fn ok_json(description: &str, schema: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content("application/json", json(schema))
}

/// A single-resource response: the body and its `ETag`.
fn ok_resource(description: &str) -> ResponseBuilder {
    ok_json(description, "Resource").header(
        "ETag",
        HeaderBuilder::new()
            .schema(Some(string()))
            .description(Some("Changes whenever the resource changes (also its status); use with If-Match"))
            .build(),
    )
}

fn version_header() -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(Some(string()))
        .description(Some("The change-feed position of this response: watch from here with resource_version"))
        .build()
}

fn if_match() -> ParameterBuilder {
    param("If-Match", ParameterIn::Header, false, string(), "An ETag: proceed only if the resource is still at it")
}

struct Ops {
    paths: PathsBuilder,
}

impl Ops {
    fn add(&mut self, path: &str, method: HttpMethod, op: OperationBuilder) {
        let full = format!("{API_PREFIX}{path}");
        let paths = std::mem::take(&mut self.paths);
        self.paths = paths.path(full, PathItem::new(method, op));
    }
}

fn kind_ops(ops: &mut Ops, kind: Kind, base: &str, nested: bool) {
    let tag = kind.plural();
    let name = kind.name();
    let suffix = if nested { "Nested" } else { "" };
    let parent = |b: OperationBuilder| {
        if nested {
            b.parameter(param("cluster_id", ParameterIn::Path, true, uuid(), "The owning cluster's id"))
        } else {
            b
        }
    };
    let id = |b: OperationBuilder| parent(b).parameter(param("id", ParameterIn::Path, true, uuid(), "The resource id"));
    let item = format!("{base}/{{id}}");

    let list = OperationBuilder::new()
        .operation_id(Some(format!("list{name}s{suffix}")))
        .tag(tag)
        .summary(Some(format!("List {tag}")))
        .parameter(param("page", ParameterIn::Query, false, integer(1, 100_000), "Page number, from 1 (default 1)"))
        .parameter(param("size", ParameterIn::Query, false, integer(1, 100), "Items per page (default 20)"))
        .parameter(param(
            "order",
            ParameterIn::Query,
            false,
            string(),
            "Comma-separated `<column> [asc|desc]` (default `created_time desc`)",
        ))
        .parameter(param("fields", ParameterIn::Query, false, string(), FIELDS_DOC))
        .parameter(param(
            "search",
            ParameterIn::Query,
            false,
            string(),
            "Filter, e.g. `labels.env='prod' and status.conditions.Reconciled='True'` (see the README)",
        ))
        .parameter(param(
            "watch",
            ParameterIn::Query,
            false,
            ObjectBuilder::new().schema_type(Type::Boolean).into(),
            "Stream changes (application/x-ndjson, one WatchEvent per line) instead of a page; `search` applies",
        ))
        .parameter(param(
            "resource_version",
            ParameterIn::Query,
            false,
            string(),
            "With watch: resume after this change (from a list's X-HyperFleet-Resource-Version or a WatchEvent)",
        ))
        .parameter(param(
            "total",
            ParameterIn::Query,
            false,
            ObjectBuilder::new().schema_type(Type::Boolean).into(),
            "`false` skips counting the matches across all pages (`total` is then absent): for keyset paging",
        ));
    ops.add(
        base,
        HttpMethod::Get,
        parent(list).responses(responses(
            vec![(
                "200",
                ok_json("A page (or, with watch=true, a stream of WatchEvent lines)", "ResourceList")
                    .content("application/x-ndjson", json("WatchEvent"))
                    .header("X-HyperFleet-Resource-Version", version_header()),
            )],
            &[
                ("400", "Bad paging, order, fields, search or resource_version"),
                ("404", "The cluster does not exist"),
                ("410", "resource_version is older than the retained history (`HYPERFLEET-CNF-004`): list again"),
                ("429", "watch=true beyond watch.max_streams or watch.max_streams_per_client (`HYPERFLEET-SVC-003`, Retry-After)"),
            ],
        )),
    );

    let create = OperationBuilder::new().operation_id(Some(format!("create{name}{suffix}"))).tag(tag);
    let create = if kind == Kind::NodePool && !nested {
        create
            .summary(Some("Not supported: create nodepools under their cluster"))
            .responses(responses(vec![], &[("422", "Always: use POST /clusters/{cluster_id}/nodepools")]))
    } else {
        parent(create)
            .summary(Some(format!("Create a {name}")))
            .request_body(Some(
                RequestBodyBuilder::new().required(Some(Required::True)).content("application/json", json("ResourceCreate")).build(),
            ))
            .responses(responses(
                vec![(
                    "201",
                    ok_resource("Created")
                        .header("Location", HeaderBuilder::new().schema(Some(string())).description(Some("The new resource's path")).build()),
                )],
                &[
                    ("400", "Invalid body (`HYPERFLEET-VAL-000`, also a spec or labels over limits.*) or not JSON (`HYPERFLEET-VAL-006`)"),
                    ("404", "The cluster does not exist"),
                    ("413", "The body is larger than limits.max_body_bytes (`HYPERFLEET-VAL-007`)"),
                    ("409", "The name is taken (`HYPERFLEET-CNF-001`) or the cluster is being deleted (`HYPERFLEET-CNF-003`)"),
                ],
            ))
    };
    ops.add(base, HttpMethod::Post, create);

    ops.add(
        &item,
        HttpMethod::Get,
        id(OperationBuilder::new()
            .operation_id(Some(format!("get{name}{suffix}")))
            .tag(tag)
            .summary(Some(format!("Get a {name}"))))
        .parameter(param("fields", ParameterIn::Query, false, string(), FIELDS_DOC))
        .parameter(param("If-None-Match", ParameterIn::Header, false, string(), "An ETag: 304 while it is current"))
        .responses(responses(
            vec![
                ("200", ok_resource("The resource")),
                ("304", ResponseBuilder::new().description("Not modified since the If-None-Match ETag")),
            ],
            &[("400", "Bad fields"), ("404", "Not found")],
        )),
    );
    ops.add(
        &item,
        HttpMethod::Patch,
        id(OperationBuilder::new()
            .operation_id(Some(format!("patch{name}{suffix}")))
            .tag(tag)
            .summary(Some(format!("Replace a {name}'s spec and/or labels"))))
        .parameter(if_match())
        .request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content("application/json", json("ResourcePatch"))
                .build(),
        ))
        .responses(responses(
            vec![("200", ok_resource("The resource; generation +1 when spec or labels changed"))],
            &[
                ("400", "Invalid body (also a spec or labels over limits.*)"),
                ("404", "Not found"),
                ("409", "Being deleted (`HYPERFLEET-CNF-003`)"),
                ("413", "The body is larger than limits.max_body_bytes (`HYPERFLEET-VAL-007`)"),
                ("412", "If-Match names an older version (`HYPERFLEET-CNF-002`); nothing changed"),
            ],
        )),
    );
    ops.add(
        &item,
        HttpMethod::Delete,
        id(OperationBuilder::new()
            .operation_id(Some(format!("delete{name}{suffix}")))
            .tag(tag)
            .summary(Some(format!("Delete a {name} (and its children)"))))
        .parameter(if_match())
        .responses(responses(
            vec![("202", ok_resource("Marked for deletion; removed once its adapters report Finalized=True"))],
            &[("404", "Not found"), ("412", "If-Match names an older version (`HYPERFLEET-CNF-002`)")],
        )),
    );
    ops.add(
        &format!("{item}/force-delete"),
        HttpMethod::Post,
        id(OperationBuilder::new()
            .operation_id(Some(format!("forceDelete{name}{suffix}")))
            .tag(tag)
            .summary(Some(format!("Remove a {name} that is being deleted without waiting for its adapters"))))
        .request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content("application/json", json("ForceDelete"))
                .build(),
        ))
        .responses(responses(
            vec![("204", ResponseBuilder::new().description("Removed, with its children and reports"))],
            &[("400", "Invalid reason"), ("404", "Not found"), ("409", "Not being deleted (`HYPERFLEET-CNF-003`)")],
        )),
    );
    ops.add(
        &format!("{item}/statuses"),
        HttpMethod::Get,
        id(OperationBuilder::new()
            .operation_id(Some(format!("list{name}Statuses{suffix}")))
            .tag(tag)
            .summary(Some("List adapter reports")))
        .parameter(param("page", ParameterIn::Query, false, integer(1, 100_000), "Page number, from 1"))
        .parameter(param("size", ParameterIn::Query, false, integer(1, 100), "Items per page (default 20)"))
        .responses(responses(
            vec![("200", ok_json("A page", "AdapterStatusList"))],
            &[("400", "Bad paging"), ("404", "Not found")],
        )),
    );
    ops.add(
        &format!("{item}/statuses"),
        HttpMethod::Put,
        id(OperationBuilder::new()
            .operation_id(Some(format!("put{name}Status{suffix}")))
            .tag(tag)
            .summary(Some("Report an adapter's status")))
        .request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content("application/json", json("StatusReport"))
                .build(),
        ))
        .responses(responses(
            vec![
                ("201", ok_json("Stored (or identical to the stored report)", "AdapterStatus")),
                (
                    "204",
                    ResponseBuilder::new().description("Discarded: stale, from the future or for another generation"),
                ),
            ],
            &[
                ("400", "Invalid report (also data or metadata over limits.max_status_bytes)"),
                ("404", "Not found"),
                ("413", "The body is larger than limits.max_body_bytes (`HYPERFLEET-VAL-007`)"),
            ],
        )),
    );
}

/// Registers `T` and every schema it refers to.
fn component<T: ToSchema>(b: ComponentsBuilder) -> ComponentsBuilder {
    let mut nested = Vec::new();
    T::schemas(&mut nested);
    b.schema_from::<T>().schemas_from_iter(nested)
}

fn build() -> OpenApi {
    let mut ops = Ops { paths: PathsBuilder::new() };
    kind_ops(&mut ops, Kind::Cluster, "/clusters", false);
    kind_ops(&mut ops, Kind::NodePool, "/nodepools", false);
    kind_ops(&mut ops, Kind::NodePool, "/clusters/{cluster_id}/nodepools", true);
    ops.add(
        "/openapi",
        HttpMethod::Get,
        OperationBuilder::new()
            .operation_id(Some("openapi"))
            .tag("meta")
            .summary(Some("This document"))
            .responses(responses(vec![("200", ResponseBuilder::new().description("OpenAPI 3.1 JSON"))], &[])),
    );
    ops.add(
        "/openapi.html",
        HttpMethod::Get,
        OperationBuilder::new()
            .operation_id(Some("openapiPage"))
            .tag("meta")
            .summary(Some("This document, browsable"))
            .responses(responses(vec![("200", ResponseBuilder::new().description("HTML"))], &[])),
    );
    let paths = ops.paths.path(
        "/api/hyperfleet",
        PathItem::new(
            HttpMethod::Get,
            OperationBuilder::new()
                .operation_id(Some("apiRoot"))
                .tag("meta")
                .summary(Some("API identity and version"))
                .responses(responses(
                    vec![("200", ResponseBuilder::new().description("`{id, kind, href, version}`"))],
                    &[],
                )),
        ),
    );
    let mut components = ComponentsBuilder::new();
    components = component::<Resource>(components);
    components = component::<AdapterStatus>(components);
    components = component::<Problem>(components);
    components = component::<ResourceCreate>(components);
    components = component::<ResourcePatch>(components);
    components = component::<ForceDelete>(components);
    components = component::<StatusReport>(components);
    components = component::<ResourceList>(components);
    components = component::<AdapterStatusList>(components);
    components = component::<WatchEvent>(components);
    let components = components.build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("HyperFleet API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Clusters and nodepools of a HyperFleet fleet, their adapters' reports and the aggregated \
                     Reconciled status. Errors are RFC 9457 application/problem+json with a HYPERFLEET-* code.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .build()
}
