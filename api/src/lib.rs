//! HyperFleet API: the REST front of the fleet, over PostgreSQL.
//!
//! Clusters and their nodepools are declared here (`/api/hyperfleet/v1/clusters`,
//! `…/clusters/{id}/nodepools`); the sentinel reads them, the adapters report back through
//! `…/statuses`, and [`aggregation`] turns the reports into `Reconciled` and friends. The binary (`hyperfleet-api`) has three subcommands: `serve`, `migrate`
//! (embedded migrations under PostgreSQL's advisory lock, safe with many replicas) and `version`.
//! [`serve`] runs three listeners: the API (8000), health (8080) and metrics (9090).
#![forbid(unsafe_code)]

pub mod aggregation;
pub mod config;
pub mod error;
pub mod listing;
pub mod model;
pub mod resources;
pub mod search;
pub mod statuses;
pub mod validation;

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
}

/// A lazily connecting pool: the API starts (and reports not-ready) while the database is down,
/// and recovers on its own when it returns.
pub fn pool(cfg: &ApiConfig) -> Result<PgPool, StartError> {
    let opts = cfg.database.connect_options().map_err(StartError::DatabaseConfig)?;
    Ok(PgPoolOptions::new()
        .max_connections(cfg.database.max_connections)
        .acquire_timeout(cfg.database.acquire_timeout)
        .connect_lazy_with(opts))
}

fn db_endpoint(cfg: &ApiConfig) -> String {
    format!("{}:{}/{}", cfg.database.host, cfg.database.port, cfg.database.name)
}

/// Applies pending migrations. Many replicas may run this at once: sqlx serialises them with a
/// PostgreSQL advisory lock.
pub async fn migrate(cfg: &ApiConfig) -> Result<(), StartError> {
    let pool = pool(cfg)?;
    // Fail with a connection error (not a migration error) when the database is unreachable.
    pool.acquire().await.map_err(|source| StartError::Connect { endpoint: db_endpoint(cfg), source })?;
    MIGRATOR.run(&pool).await?;
    tracing::info!(database = %db_endpoint(cfg), "migrations applied");
    pool.close().await;
    Ok(())
}

/// The API router (without listeners), for the server and for tests.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let api = resources::router().with_state(state);
    Router::new()
        .nest(API_PREFIX, api)
        .fallback(|req: Request| async move { error::ApiError::NoRoute(req.uri().path().to_string()) })
        .layer(middleware::from_fn(error::problem_context))
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, Duration::from_secs(30)))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// Runs the API until `shutdown` is cancelled, then drains in-flight requests.
pub async fn serve(cfg: ApiConfig, shutdown: CancellationToken) -> Result<(), StartError> {
    let db = pool(&cfg)?;
    let prometheus = ops::install_metrics_recorder().map_err(StartError::Metrics)?;
    let ping_pool = db.clone();
    let check: ops::ReadinessCheck = Arc::new(move || {
        let pool = ping_pool.clone();
        Box::pin(async move {
            let ping = sqlx::query_scalar::<_, i32>("select 1").fetch_one(&pool);
            match tokio::time::timeout(Duration::from_secs(2), ping).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("database unavailable: {e}")),
                Err(_) => Err("database ping timeout".into()),
            }
        })
    });
    ops::serve(&cfg.health, &cfg.metrics, check, prometheus, shutdown.clone()).await?;

    let listener = tokio::net::TcpListener::bind(cfg.server.addr()).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen for the API on {}: {e}", cfg.server.addr()))
    })?;
    tracing::info!(addr = %listener.local_addr()?, database = %db_endpoint(&cfg), "API listening");
    let drain = cfg.shutdown_timeout;
    let stop = shutdown.clone();
    let state = AppState::new(db.clone(), cfg.required_adapters.clone());
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(stop.cancelled_owned());
    tokio::select! {
        res = server => res?,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(drain).await } => {
            tracing::warn!(?drain, "in-flight requests did not finish in time");
        }
    }
    db.close().await;
    tracing::info!("API stopped");
    Ok(())
}

#[cfg(test)]
mod docs_tests {
    /// The README's configuration section lists every environment variable this service reads.
    #[test]
    fn readme_documents_every_env_var() {
        let missing =
            hyperfleet_common::process::undocumented_env_vars::<crate::ApiConfig>(include_str!("../../README.md"));
        assert!(missing.is_empty(), "README.md does not document: {missing:?}");
    }
}
