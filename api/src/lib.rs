//! HyperFleet API: the REST front of the fleet, over PostgreSQL.
//!
//! Clusters and their nodepools are declared here (`/api/hyperfleet/v1/clusters`,
//! `…/clusters/{id}/nodepools`); the sentinel reads them, the adapters report back through
//! `…/statuses`, and [`aggregation`] turns the reports into `Reconciled` and friends. The binary (`hyperfleet-api`) has three subcommands: `serve`, `migrate`
//! (embedded migrations under PostgreSQL's advisory lock, safe with many replicas) and `version`.
//! [`serve`] runs three listeners: the API (8000), health (8080) and metrics (9090).
#![forbid(unsafe_code)]

pub mod aggregation;
pub mod auth;
pub mod authz;
pub mod config;
pub mod error;
pub mod listing;
pub mod model;
pub mod observe;
pub mod openapi;
pub mod resources;
pub mod search;
pub mod statuses;
pub mod validation;
pub mod watch;

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::Request, http::HeaderName, middleware};
use hyperfleet_common::ops;
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio_util::sync::CancellationToken;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};

pub use config::ApiConfig;
pub use resources::AppState;

/// Every resource route lives under this prefix.
pub const API_PREFIX: &str = "/api/hyperfleet/v1";

/// The embedded migrations from the workspace's `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Start-up failures, each with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database settings: {0}")]
    DatabaseConfig(String),
    #[error("cannot connect to PostgreSQL at {endpoint}: {source}")]
    Connect { endpoint: String, source: sqlx::Error },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("authentication: {0}")]
    Auth(String),
}

/// A connection idle at least this long is pinged before it is handed out.
const PING_IF_IDLE: Duration = Duration::from_secs(1);
/// After the database was seen failing, every connection is pinged before use for this long.
const PING_AFTER_TROUBLE: Duration = Duration::from_secs(30);

/// When the database last failed (the readiness probe's ping, or a request's connection): for
/// [`PING_AFTER_TROUBLE`] after it, every pooled connection is pinged before it is handed out, so
/// connections a restart killed — their `terminating connection` already waiting in the socket —
/// are dropped at acquire instead of failing the first request on each of them.
mod trouble {
    use std::{
        sync::{
            OnceLock,
            atomic::{AtomicU64, Ordering},
        },
        time::{Duration, Instant},
    };

    static EPOCH: OnceLock<Instant> = OnceLock::new();
    /// Milliseconds after [`EPOCH`] of the last failure, plus one (0: none yet).
    static LAST: AtomicU64 = AtomicU64::new(0);

    fn now_ms() -> u64 {
        u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn note() {
        LAST.store(now_ms().saturating_add(1), Ordering::Relaxed);
    }

    pub fn within(window: Duration) -> bool {
        let last = LAST.load(Ordering::Relaxed);
        last != 0 && now_ms().saturating_sub(last - 1) < u64::try_from(window.as_millis()).unwrap_or(u64::MAX)
    }
}

pub(crate) use trouble::note as note_db_trouble;

/// A lazily connecting pool: the API starts (and reports not-ready) while the database is down,
/// and recovers on its own when it returns.
///
/// sqlx pings every connection it hands out by default: a second round trip (and a PostgreSQL
/// wake-up) for a GET that needs one. Here only connections idle for [`PING_IF_IDLE`] are pinged —
/// those are the ones a database restart leaves dead — and, for [`PING_AFTER_TROUBLE`] after the
/// database was seen failing, every one; a busy connection that breaks fails its query (503) and
/// is discarded when released.
///
/// Its connections carry `database.statement_timeout` and `database.lock_timeout`.
pub fn pool(cfg: &ApiConfig) -> Result<PgPool, StartError> {
    let opts = cfg.database.connect_options().map_err(StartError::DatabaseConfig)?;
    Ok(lazy_pool(opts, cfg.database.max_connections, cfg.database.acquire_timeout, Some(cfg.database.session_setup())))
}

/// The readiness probe's own connection: a pool saturated by requests (writers queued behind the
/// write lock) does not turn every replica NotReady at once — the probe asks whether the database
/// answers, not whether this replica is busy.
fn probe_pool(cfg: &ApiConfig) -> Result<PgPool, StartError> {
    let opts = cfg.database.connect_options().map_err(StartError::DatabaseConfig)?;
    Ok(lazy_pool(opts, 1, Duration::from_secs(2), Some(cfg.database.session_setup())))
}

/// `setup` (SQL) runs once on every new connection.
fn lazy_pool(opts: sqlx::postgres::PgConnectOptions, max: u32, acquire: Duration, setup: Option<String>) -> PgPool {
    let setup = Arc::new(setup);
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire)
        .after_connect(move |conn, _| {
            let setup = setup.clone();
            Box::pin(async move {
                if let Some(sql) = setup.as_deref() {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(conn).await?;
                }
                Ok(())
            })
        })
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE || trouble::within(PING_AFTER_TROUBLE) {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(opts)
}

/// Connection errors that retrying cannot fix.
fn refuses_us(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Tls(_) | sqlx::Error::Configuration(_) => true,
        // A certificate the CA bundle does not vouch for surfaces as an I/O error from rustls.
        sqlx::Error::Io(io) => io.get_ref().is_some_and(|inner| {
            matches!(
                inner.downcast_ref::<rustls::Error>(),
                Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
            )
        }),
        // invalid_authorization_specification, invalid_password, invalid_catalog_name
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("28000" | "28P01" | "3D000")),
        _ => false,
    }
}

fn db_endpoint(cfg: &ApiConfig) -> String {
    format!("{}:{}/{}", cfg.database.host, cfg.database.port, cfg.database.name)
}

/// How long `migrate` waits for a database that is not reachable yet (an init container started
/// beside a database that is still starting) before it gives up.
const MIGRATE_WAIT: Duration = Duration::from_secs(60);

/// Applies pending migrations. Many replicas may run this at once: sqlx serialises them with a
/// PostgreSQL advisory lock. A database that is not reachable yet is waited for up to
/// [`MIGRATE_WAIT`]; one that refuses us (certificate, credentials, unknown database) fails at once.
pub async fn migrate(cfg: &ApiConfig) -> Result<(), StartError> {
    // Without the serving timeouts: a migration may rightly take longer than any request.
    let opts = cfg.database.connect_options().map_err(StartError::DatabaseConfig)?;
    let pool = lazy_pool(opts, 2, cfg.database.acquire_timeout, None);
    let deadline = tokio::time::Instant::now() + MIGRATE_WAIT;
    let mut delay = Duration::from_millis(250);
    loop {
        match pool.acquire().await {
            Ok(conn) => break drop(conn),
            // Fail with a connection error (not a migration error) when the database stays away.
            Err(source) if refuses_us(&source) || tokio::time::Instant::now() + delay > deadline => {
                return Err(StartError::Connect { endpoint: db_endpoint(cfg), source });
            }
            Err(e) => {
                tracing::warn!(error = %e, database = %db_endpoint(cfg), retry_in = ?delay, "database not reachable yet; waiting");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(4));
            }
        }
    }
    MIGRATOR.run(&pool).await?;
    tracing::info!(database = %db_endpoint(cfg), "migrations applied");
    pool.close().await;
    Ok(())
}

/// The API router (without listeners), for the server and for tests.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let body_limit = state.limits.max_body_bytes;
    let mut resources = resources::router();
    if let Some(auth) = state.auth.clone() {
        resources = resources.layer(middleware::from_fn_with_state(auth, auth::authenticate));
    }
    let api = resources.with_state(state).merge(openapi::router());
    Router::new()
        .route("/api/hyperfleet", axum::routing::get(root))
        .nest(API_PREFIX, api)
        .fallback(|req: Request| async move { error::ApiError::NoRoute(req.uri().path().to_string()) })
        .layer(middleware::from_fn(error::problem_context))
        .layer(middleware::from_fn(observe::track))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, config::REQUEST_TIMEOUT))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
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

/// Runs the API until `shutdown` is cancelled, then drains in-flight requests.
pub async fn serve(cfg: ApiConfig, shutdown: CancellationToken) -> Result<(), StartError> {
    let db = pool(&cfg)?;
    // A database that is down is waited for (not ready until it is back); one that refuses us —
    // certificate, credentials, unknown database — is a configuration error and stops the start.
    match db.acquire().await {
        Ok(conn) => drop(conn),
        Err(source) if refuses_us(&source) => return Err(StartError::Connect { endpoint: db_endpoint(&cfg), source }),
        Err(e) => {
            tracing::warn!(error = %e, database = %db_endpoint(&cfg), "database not reachable yet; not ready until it is")
        }
    }
    let prometheus = ops::install_metrics_recorder().map_err(StartError::Metrics)?;
    observe::describe_metrics();
    let ping_pool = probe_pool(&cfg)?;
    let check: ops::ReadinessCheck = Arc::new(move || {
        let pool = ping_pool.clone();
        Box::pin(async move {
            let ping = sqlx::query_scalar::<_, i32>("select 1").fetch_one(&pool);
            let started = std::time::Instant::now();
            let outcome = tokio::time::timeout(Duration::from_secs(2), ping).await;
            observe::db_query("ping", started);
            match outcome {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => {
                    note_db_trouble();
                    Err(format!("database unavailable: {e}"))
                }
                // A slow answer is load, not a dead connection: no pings for it.
                Err(_) => Err("database ping timeout".into()),
            }
        })
    });
    let scrape = observe::scrape_hook(db.clone(), cfg.reconciliation_stuck_threshold);
    ops::serve(&cfg.health, &cfg.metrics, ops::Probes::ready(check).scrape(scrape), prometheus, shutdown.clone())
        .await?;
    observe::build_info();

    let listener = tokio::net::TcpListener::bind(cfg.server.addr()).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen for the API on {}: {e}", cfg.server.addr()))
    })?;
    tracing::info!(addr = %listener.local_addr()?, database = %db_endpoint(&cfg), "API listening");
    // SIGTERM (`shutdown`) makes /readyz 503 at once, but requests are served for
    // `shutdown_drain` more — the time endpoints and load balancers take to stop sending new
    // ones — before `stop` closes the listener and ends the change feeds; in-flight requests then
    // get `shutdown_timeout` to finish.
    let stop = CancellationToken::new();
    {
        let (shutdown, stop, drain) = (shutdown.clone(), stop.clone(), cfg.shutdown_drain);
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tracing::info!(?drain, "shutting down: not ready, still serving for the drain period");
            tokio::time::sleep(drain).await;
            stop.cancel();
        });
    }
    let drain = cfg.shutdown_timeout;
    let auth = if cfg.jwt.enabled {
        Some(auth::Authenticator::new(cfg.jwt.clone(), cfg.authz.clone()).await.map_err(StartError::Auth)?)
    } else {
        tracing::warn!("JWT authentication is off (jwt.enabled / ENABLE_JWT): every caller is trusted");
        None
    };
    let state = AppState::new(db.clone(), cfg.required_adapters.clone())
        .with_watch(cfg.watch.clone(), stop.clone())
        .with_limits(cfg.limits.clone())
        .with_optional_adapters(cfg.optional_adapters.clone())
        .with_auth(auth);
    watch::spawn_pruner(db.clone(), cfg.watch.retention, stop.clone());
    // The peer address: an identity header is believed only from jwt.trusted_proxies.
    let app = router(state)
        .layer(middleware::from_fn_with_state(shutdown.clone(), close_while_draining))
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
    tokio::select! {
        res = server => res?,
        _ = async { stop.cancelled().await; tokio::time::sleep(drain).await } => {
            tracing::warn!(?drain, "in-flight requests did not finish in time");
        }
    }
    db.close().await;
    tracing::info!("API stopped");
    Ok(())
}

/// During the drain every response carries `Connection: close`, so a client's kept-alive
/// connection (through a Service proxy or a load balancer, it is pinned to this pod) is not reused
/// for the request that would meet the closing listener: the client's next request opens a new
/// connection, which the endpoints that already dropped this pod send elsewhere.
async fn close_while_draining(
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

hyperfleet_common::readme_documents_every_env_var!(crate::ApiConfig);
