//! HyperFleet API: the REST front of the fleet, over PostgreSQL.
//!
//! Clusters and their nodepools are declared here (`/api/hyperfleet/v1/clusters`,
//! `…/clusters/{id}/nodepools`); the sentinel reads them, the adapters report back through
//! `…/statuses`, and [`aggregation`] turns the reports into `Reconciled` and friends. The binary (`hyperfleet-api`) has three subcommands: `serve`, `migrate`
//! (embedded migrations under PostgreSQL's advisory lock, safe with many replicas) and `version`.
//! [`Application`] wires it from an [`ApiConfig`] and runs three listeners: the API (8000), health
//! (8080) and metrics (9090). The binary and the tests start it the same way.
//!
//! Rooms (what may use what):
//! - [`http`]: routes, extractors, thin handlers, the OpenAPI document — uses the domain, the store
//!   and the change feed;
//! - [`store`]: every SQL statement, typed rows, pools and the write transaction — uses the domain;
//! - [`domain`]: kinds, representations, validation, list parameters and `search`, aggregation —
//!   pure, uses nothing above;
//! - [`watch`]: the change feed (one reader of the change table fanned out to every watcher) —
//!   uses the store;
//! - [`auth`], [`authz`]: identities from tokens and what they may do;
//! - [`config`], [`error`] (the crate's one error type, problem+json), [`observe`] (metrics).
#![forbid(unsafe_code)]

pub mod auth;
pub mod authz;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod observe;
pub mod store;
pub mod watch;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, middleware};
use hyperfleet_common::{ops, telemetry};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use config::ApiConfig;
pub use error::ApiError;
pub use http::AppState;

/// Every resource route lives under this prefix.
pub const API_PREFIX: &str = "/api/hyperfleet/v1";

/// The embedded migrations from the workspace's `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How long `migrate` waits for a database that is not reachable yet (an init container started
/// beside a database that is still starting) before it gives up.
const MIGRATE_WAIT: Duration = Duration::from_secs(60);

/// Applies pending migrations. Many replicas may run this at once: sqlx serialises them with a
/// PostgreSQL advisory lock. A database that is not reachable yet is waited for up to
/// [`MIGRATE_WAIT`]; one that refuses us (certificate, credentials, unknown database) fails at once.
pub async fn migrate(cfg: &ApiConfig) -> Result<(), ApiError> {
    let pool = store::pool::migrations(cfg)?;
    let deadline = tokio::time::Instant::now() + MIGRATE_WAIT;
    let mut delay = Duration::from_millis(250);
    loop {
        match pool.acquire().await {
            Ok(conn) => break drop(conn),
            // Fail with a connection error (not a migration error) when the database stays away.
            Err(source) if store::pool::refuses_us(&source) || tokio::time::Instant::now() + delay > deadline => {
                return Err(ApiError::Connect { endpoint: store::pool::endpoint(cfg), source });
            }
            Err(e) => {
                tracing::warn!(error = %e, database = %store::pool::endpoint(cfg), retry_in = ?delay, "database not reachable yet; waiting");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(4));
            }
        }
    }
    MIGRATOR.run(&pool).await?;
    tracing::info!(database = %store::pool::endpoint(cfg), "migrations applied");
    pool.close().await;
    Ok(())
}

/// The API wired from its configuration, its listeners bound: what `hyperfleet-api serve` runs
/// and what every test starts.
pub struct Application {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    ops: (SocketAddr, SocketAddr),
    router: Router,
    db: PgPool,
    shutdown: CancellationToken,
    /// Cancelled after the drain: closes the listener and ends the change feeds.
    stop: CancellationToken,
    drain: Duration,
    timeout: Duration,
}

/// How often the API checks that the stored conditions were aggregated with its required adapters.
const REAGGREGATION_CHECK: std::time::Duration = std::time::Duration::from_secs(60);
/// After a pass, another (forced) one this much later: replicas of the previous release, still
/// serving during a rolling update, aggregate reports with the old set meanwhile.
const REAGGREGATION_REPASS: std::time::Duration = std::time::Duration::from_secs(120);

/// Keeps the stored conditions aggregated with this process's required adapters
/// ([`store::resources::reaggregate_if_required_changed`]): at start and every minute it compares
/// them with the recorded set and re-aggregates a kind whose set differs — once more two minutes
/// after a pass, for what the previous release's replicas aggregated during the rollout. Failures
/// are retried with backoff; runs until `stop`.
fn spawn_reaggregation(db: PgPool, required: config::RequiredAdapters, stop: CancellationToken) {
    use domain::model::Kind;
    tokio::spawn(async move {
        let kinds = [(Kind::Cluster, required.clusters), (Kind::NodePool, required.nodepools)];
        let mut repass: [Option<std::time::Instant>; 2] = [None, None];
        let mut delay = std::time::Duration::from_secs(1);
        loop {
            let mut failed = false;
            for (i, (kind, names)) in kinds.iter().enumerate() {
                let force = repass[i].is_some_and(|at| at.elapsed() >= REAGGREGATION_REPASS);
                match store::resources::reaggregate_if_required_changed(&db, *kind, names, force).await {
                    Ok(None) => {}
                    Ok(Some((seen, changed))) => {
                        repass[i] = if force { None } else { Some(std::time::Instant::now()) };
                        tracing::info!(kind = kind.plural(), required_adapters = ?names, resources = seen, changed, again = !force, "re-aggregated the conditions with the required adapters");
                    }
                    Err(e) => {
                        failed = true;
                        tracing::warn!(kind = kind.plural(), error = %e, retry_in = ?delay, "cannot re-aggregate the conditions with the required adapters; retrying");
                    }
                }
            }
            let wait = if failed {
                let next = (delay * 2).min(REAGGREGATION_CHECK);
                std::mem::replace(&mut delay, next)
            } else {
                delay = std::time::Duration::from_secs(1);
                REAGGREGATION_CHECK
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
}

impl Application {
    /// Makes the pools from `cfg` (validated by the caller, as `hyperfleet_common::process::start`
    /// does; a database that is down is waited for — not ready until it is back —, one that refuses
    /// us is an error), starts the health and metrics listeners, the authenticator, the change feed
    /// and its pruner, and binds the API listener; it serves once
    /// [`Application::run_until_stopped`] runs. `shutdown` (SIGTERM in the binary) starts the drain.
    pub async fn build(cfg: ApiConfig, shutdown: CancellationToken) -> Result<Self, ApiError> {
        telemetry::install_crypto_provider();
        let db = store::pool::serving(&cfg)?;
        match db.acquire().await {
            Ok(conn) => drop(conn),
            Err(source) if store::pool::refuses_us(&source) => {
                return Err(ApiError::Connect { endpoint: store::pool::endpoint(&cfg), source });
            }
            Err(e) => {
                tracing::warn!(error = %e, database = %store::pool::endpoint(&cfg), "database not reachable yet; not ready until it is")
            }
        }
        let prometheus = ops::install_metrics_recorder().map_err(ApiError::Metrics)?;
        observe::describe_metrics();
        let probes = probes(&cfg, &db)?;
        let ops = ops::serve(&cfg.health, &cfg.metrics, probes, prometheus, shutdown.clone()).await?;
        observe::build_info();

        let listener = tokio::net::TcpListener::bind(cfg.server.addr()).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen for the API on {}: {e}", cfg.server.addr()))
        })?;
        let addr = listener.local_addr()?;
        let auth = if cfg.jwt.enabled {
            Some(auth::Authenticator::new(cfg.jwt.clone(), cfg.authz.clone()).await.map_err(ApiError::Auth)?)
        } else {
            tracing::warn!("JWT authentication is off (jwt.enabled / ENABLE_JWT): every caller is trusted");
            None
        };
        let stop = CancellationToken::new();
        let state = AppState::new(db.clone(), &cfg, auth, stop.clone());
        watch::spawn_pruner(db.clone(), cfg.watch.retention, stop.clone());
        spawn_reaggregation(db.clone(), cfg.required_adapters.clone(), stop.clone());
        let router =
            http::router(state).layer(middleware::from_fn_with_state(shutdown.clone(), http::close_while_draining));
        tracing::info!(%addr, database = %store::pool::endpoint(&cfg), "API listening");
        Ok(Application {
            listener,
            addr,
            ops,
            router,
            db,
            shutdown,
            stop,
            drain: cfg.shutdown_drain,
            timeout: cfg.shutdown_timeout,
        })
    }

    /// Stops the background work (the change feed's reader and pruner, the re-aggregation) of an
    /// application that is not served — one replaced by another on the same database, say.
    pub fn stop_background(&self) {
        self.stop.cancel();
    }

    /// The API listener's port (the configured one, or the one the system chose for port 0).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The health and the metrics listeners' addresses.
    pub fn ops_addrs(&self) -> (SocketAddr, SocketAddr) {
        self.ops
    }

    /// The router with its middleware, for calling the API without a socket.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The serving pool.
    pub fn db(&self) -> &PgPool {
        &self.db
    }

    /// Serves until `shutdown` is cancelled. Then `/readyz` answers 503 at once while requests are
    /// still served for `shutdown_drain` — the time endpoints and load balancers take to stop
    /// sending new ones — before the listener closes and the change feeds end; in-flight requests
    /// then get `shutdown_timeout` to finish.
    pub async fn run_until_stopped(self) -> Result<(), ApiError> {
        let Application { listener, router, db, shutdown, stop, drain, timeout, .. } = self;
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                tracing::info!(?drain, "shutting down: not ready, still serving for the drain period");
                tokio::time::sleep(drain).await;
                stop.cancel();
            });
        }
        // The peer address: an identity header is believed only from jwt.trusted_proxies.
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        // Responses go out at once: with Nagle's algorithm a response written in more than one
        // segment waits for the client's delayed ACK (~40 ms on Linux) — a tail on every client.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY on an API connection");
            }
        });
        let server = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        tokio::select! {
            res = server => res?,
            _ = async { stop.cancelled().await; tokio::time::sleep(timeout).await } => {
                tracing::warn!(?timeout, "in-flight requests did not finish in time");
            }
        }
        db.close().await;
        tracing::info!("API stopped");
        Ok(())
    }
}

/// `/readyz`: the database answers (on the probe's own connection, within 2 s); before each
/// `/metrics` render, the gauges read from the database.
fn probes(cfg: &ApiConfig, db: &PgPool) -> Result<ops::Probes, ApiError> {
    let ping_pool = store::pool::probe(cfg)?;
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
                    store::pool::note_db_trouble();
                    Err(format!("database unavailable: {e}"))
                }
                // A slow answer is load, not a dead connection: no pings for it.
                Err(_) => Err("database ping timeout".into()),
            }
        })
    });
    Ok(ops::Probes::ready(check).scrape(observe::scrape_hook(db.clone(), cfg.reconciliation_stuck_threshold)))
}

/// Runs the API until `shutdown` is cancelled, then drains in-flight requests.
pub async fn serve(cfg: ApiConfig, shutdown: CancellationToken) -> Result<(), ApiError> {
    Application::build(cfg, shutdown).await?.run_until_stopped().await
}

hyperfleet_common::readme_documents_every_env_var!(crate::ApiConfig);
