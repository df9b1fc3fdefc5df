//! The operational listeners every service runs next to its main work:
//!
//! * health (default port 8080): `GET /healthz` → 200 while the process lives; `GET /readyz` → 200
//!   `{"status":"ok"}` when the service's readiness check passes, else 503 with the reason, and 503
//!   `shutting_down` once shutdown has begun (so load balancers stop sending work first);
//! * metrics (default port 9090): `GET /metrics` in the Prometheus text format.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A listener address: `host` + `port`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    pub host: String,
    pub port: u16,
}

impl Listen {
    pub fn new(host: &str, port: u16) -> Self {
        Listen { host: host.into(), port }
    }
    /// `host:port`, bracketing IPv6 literals.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Listen::new("0.0.0.0", 0)
    }
}

/// Why the service is not ready; shown in the `/readyz` body.
pub type ReadyResult = Result<(), String>;
/// The service's readiness check, called for every `/readyz` request.
pub type ReadinessCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ReadyResult> + Send>> + Send + Sync>;

/// Work done before each `/metrics` render, e.g. refreshing gauges that a database answers.
pub type ScrapeHook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

#[derive(Clone)]
struct HealthState {
    check: ReadinessCheck,
    live: Option<ReadinessCheck>,
    shutdown: CancellationToken,
}

/// Histogram buckets (seconds) of every `*_duration_seconds` metric: 5 ms to 10 s.
pub const DURATION_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Installs the global Prometheus recorder (once per process) and returns its handle; a second
/// call (a test starting a second service in the process) gets the same handle.
pub fn install_metrics_recorder() -> Result<PrometheusHandle, String> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), DURATION_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// What the health and metrics listeners ask the service.
#[derive(Clone)]
pub struct Probes {
    /// `/readyz`: 200 when it answers `Ok`.
    pub ready: ReadinessCheck,
    /// `/healthz`: 200 unless this answers `Err` (absent: always 200).
    pub live: Option<ReadinessCheck>,
    /// Run before each `/metrics` render (bounded to 5 s).
    pub scrape: Option<ScrapeHook>,
}

impl Probes {
    pub fn ready(ready: ReadinessCheck) -> Self {
        Probes { ready, live: None, scrape: None }
    }
    pub fn live(mut self, live: ReadinessCheck) -> Self {
        self.live = Some(live);
        self
    }
    pub fn scrape(mut self, scrape: ScrapeHook) -> Self {
        self.scrape = Some(scrape);
        self
    }
}

/// Binds both listeners (failing fast when a port is taken) and serves them until `shutdown` is
/// cancelled and `drain` has passed. Returns the bound addresses (useful with port 0).
pub async fn serve(
    health: &Listen,
    metrics: &Listen,
    probes: Probes,
    prometheus: PrometheusHandle,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, SocketAddr)> {
    let health_listener = bind(health, "health").await?;
    let metrics_listener = bind(metrics, "metrics").await?;
    let addrs = (health_listener.local_addr()?, metrics_listener.local_addr()?);

    let health_app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(HealthState { check: probes.ready, live: probes.live, shutdown: shutdown.clone() });
    let scrape = probes.scrape;
    let metrics_app = Router::new().route(
        "/metrics",
        get(move || {
            let (prometheus, scrape) = (prometheus.clone(), scrape.clone());
            async move {
                if let Some(hook) = scrape {
                    let _ = tokio::time::timeout(Duration::from_secs(5), hook()).await;
                }
                prometheus.render()
            }
        }),
    );

    // The health listener keeps answering (503 shutting_down) until the process exits, so it is not
    // tied to the shutdown token; the tasks end with the runtime.
    tokio::spawn(async move {
        if let Err(e) = axum::serve(health_listener, health_app).await {
            tracing::error!(error = %e, "health listener failed");
        }
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(metrics_listener, metrics_app).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    tracing::info!(health = %addrs.0, metrics = %addrs.1, "ops listeners up");
    Ok(addrs)
}

async fn bind(listen: &Listen, what: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen.addr())
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen for {what} on {}: {e}", listen.addr())))
}

async fn healthz(State(state): State<HealthState>) -> impl IntoResponse {
    let verdict = match &state.live {
        None => Ok(()),
        Some(live) => tokio::time::timeout(Duration::from_secs(3), live()).await.unwrap_or(Ok(())),
    };
    match verdict {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ok"}))),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unhealthy", "reason": reason}))),
    }
}

async fn readyz(State(state): State<HealthState>) -> impl IntoResponse {
    if state.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down", "reason": "the service is shutting down"})),
        );
    }
    match tokio::time::timeout(Duration::from_secs(3), (state.check)()).await {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({"status": "ok"}))),
        Ok(Err(reason)) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not_ready", "reason": reason}))),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": "readiness check timed out"})),
        ),
    }
}
