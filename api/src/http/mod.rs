//! The HTTP room: the route table, the state every handler shares, the extractors and thin
//! handlers (validate with [`crate::domain`], read and write with [`crate::store`], answer), the
//! middleware stack, problem+json errors ([`crate::error`]) and the OpenAPI document.

pub mod extract;
pub mod openapi;
pub mod resources;
pub mod statuses;

use std::sync::Arc;

use axum::{
    Router,
    extract::Request,
    http::HeaderName,
    middleware,
    routing::{MethodRouter, get, post},
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};

use crate::{
    API_PREFIX, ApiConfig, auth,
    config::{LimitsConfig, RequiredAdapters},
    domain::model::Kind,
    error, observe,
    watch::Watches,
};

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub adapters: Arc<RequiredAdapters>,
    /// Adapters that may report without being required (`*`: any).
    pub optional_adapters: Arc<Vec<String>>,
    /// Bounds on request content.
    pub limits: Arc<LimitsConfig>,
    /// JWT verification; `None` when authentication is off.
    pub auth: Option<Arc<auth::Authenticator>>,
    /// The change feeds (`?watch=true`).
    pub watches: Watches,
}

impl AppState {
    /// The state `cfg` describes over `db`; starts the change feed's reader, whose feeds end when
    /// `stop` is cancelled (needs a Tokio runtime).
    pub fn new(db: PgPool, cfg: &ApiConfig, auth: Option<Arc<auth::Authenticator>>, stop: CancellationToken) -> Self {
        AppState {
            watches: Watches::start(db.clone(), cfg.watch.clone(), stop),
            db,
            adapters: Arc::new(cfg.required_adapters.clone()),
            optional_adapters: Arc::new(cfg.optional_adapters.clone()),
            limits: Arc::new(cfg.limits.clone()),
            auth,
        }
    }

    /// Whether `adapter` may report on a `kind`: a required adapter of it, or an optional one.
    pub fn may_report(&self, kind: Kind, adapter: &str) -> bool {
        self.required(kind).iter().chain(self.optional_adapters.iter()).any(|n| n == adapter || n == "*")
    }

    pub fn required(&self, kind: Kind) -> &[String] {
        match kind {
            Kind::Cluster => &self.adapters.clusters,
            Kind::NodePool => &self.adapters.nodepools,
        }
    }
}

/// A route's kind, as a type so one handler serves both kinds.
pub trait KindRoute: Send + Sync + 'static {
    const KIND: Kind;
}
pub struct Clusters;
pub struct NodePools;
impl KindRoute for Clusters {
    const KIND: Kind = Kind::Cluster;
}
impl KindRoute for NodePools {
    const KIND: Kind = Kind::NodePool;
}

/// Every resource route (relative to the API prefix) with its handlers. The OpenAPI document
/// ([`openapi`]) describes exactly these paths; a test holds the two together.
pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    use resources::{child_create_on_flat_route, create, delete, fetch, force_delete, list, patch};
    vec![
        ("/clusters", get(list::<Clusters>).post(create::<Clusters>)),
        ("/clusters/{id}", get(fetch::<Clusters>).patch(patch::<Clusters>).delete(delete::<Clusters>)),
        ("/clusters/{id}/force-delete", post(force_delete::<Clusters>)),
        ("/clusters/{id}/statuses", get(statuses::list::<Clusters>).put(statuses::put::<Clusters>)),
        ("/nodepools", get(list::<NodePools>).post(child_create_on_flat_route)),
        ("/nodepools/{id}", get(fetch::<NodePools>).patch(patch::<NodePools>).delete(delete::<NodePools>)),
        ("/nodepools/{id}/force-delete", post(force_delete::<NodePools>)),
        ("/nodepools/{id}/statuses", get(statuses::list::<NodePools>).put(statuses::put::<NodePools>)),
        ("/clusters/{cluster_id}/nodepools", get(list::<NodePools>).post(create::<NodePools>)),
        (
            "/clusters/{cluster_id}/nodepools/{id}",
            get(fetch::<NodePools>).patch(patch::<NodePools>).delete(delete::<NodePools>),
        ),
        ("/clusters/{cluster_id}/nodepools/{id}/force-delete", post(force_delete::<NodePools>)),
        (
            "/clusters/{cluster_id}/nodepools/{id}/statuses",
            get(statuses::list::<NodePools>).put(statuses::put::<NodePools>),
        ),
    ]
}

/// The API router with its middleware (without listeners).
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let body_limit = state.limits.max_body_bytes;
    let mut resources = routes().into_iter().fold(Router::new(), |router, (path, methods)| router.route(path, methods));
    if let Some(auth) = state.auth.clone() {
        resources = resources.layer(middleware::from_fn_with_state(auth, auth::authenticate));
    }
    let api = resources.with_state(state).merge(openapi::router());
    Router::new()
        .route("/api/hyperfleet", get(root))
        .nest(API_PREFIX, api)
        .fallback(|req: Request| async move { error::ApiError::NoRoute(req.uri().path().to_string()) })
        .layer(middleware::from_fn(error::problem_context))
        .layer(middleware::from_fn(observe::track))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, crate::config::REQUEST_TIMEOUT))
        .layer(TraceLayer::new_for_http().make_span_with(server_span).on_response(
            |resp: &axum::response::Response, latency: std::time::Duration, span: &tracing::Span| {
                use tower_http::trace::OnResponse;
                tower_http::trace::DefaultOnResponse::default().on_response(resp, latency, span);
                span.record("http.response.status_code", resp.status().as_u16());
                if resp.status().is_server_error() {
                    hyperfleet_common::telemetry::fail(span, resp.status());
                }
            },
        ))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// The request's span in the trace: `METHOD /route/{param}`, a child of the caller's `traceparent`
/// when it sent one. With tracing off, tower-http's own (a DEBUG span for the logs).
fn server_span(req: &Request) -> tracing::Span {
    if !hyperfleet_common::telemetry::enabled() {
        use tower_http::trace::MakeSpan;
        return tower_http::trace::DefaultMakeSpan::new().make_span(req);
    }
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |m| m.as_str());
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{} {route}", req.method()),
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = route,
        url.path = req.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    hyperfleet_common::telemetry::continue_from_headers(&span, req.headers());
    span
}

/// `GET /api/hyperfleet`: what this server is.
async fn root() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "id": "hyperfleet",
        "kind": "API",
        "href": "/api/hyperfleet",
        "version": observe::VERSION,
        "commit": observe::COMMIT,
        "versions": [{"id": "v1", "href": API_PREFIX}],
    }))
}

/// During the drain every response carries `Connection: close`, so a client's kept-alive
/// connection (through a Service proxy or a load balancer, it is pinned to this pod) is not reused
/// for the request that would meet the closing listener: the client's next request opens a new
/// connection, which the endpoints that already dropped this pod send elsewhere.
pub async fn close_while_draining(
    axum::extract::State(draining): axum::extract::State<CancellationToken>,
    req: Request,
    next: middleware::Next,
) -> axum::response::Response {
    let mut resp = next.run(req).await;
    if draining.is_cancelled() {
        resp.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    resp
}
