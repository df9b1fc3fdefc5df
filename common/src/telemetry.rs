//! Logging and process-wide TLS setup.

use serde::{Deserialize, Serialize};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// `log:` section shared by every service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `trace`, `debug`, `info`, `warn`, `error`, or a full `tracing` filter such as
    /// `info,hyperfleet_api=debug`. `RUST_LOG`, when set, wins.
    pub level: String,
    /// `json` (one object per line, for log pipelines) or `text` (for people).
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Json }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// Installs the global `tracing` subscriber. Call once, early in `main`.
pub fn init(cfg: &LogConfig) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(&v).map_err(|e| format!("RUST_LOG={v:?}: {e}"))?,
        _ => EnvFilter::try_new(&cfg.level).map_err(|e| format!("log.level={:?}: {e}", cfg.level))?,
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = match cfg.format {
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(false).with_span_list(false))
            .try_init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_target(true).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())))
            .try_init(),
    };
    result.map_err(|e| e.to_string())
}

/// Makes `ring` the process-wide rustls crypto provider.
///
/// All TLS in HyperFleet (PostgreSQL, AMQPS, the Kubernetes API, HTTP clients) goes through rustls with
/// `ring`. Some clients (reqwest with `rustls-no-provider`) refuse to build without a process default,
/// and which library would install one first depends on start-up order, so every binary calls this
/// first thing in `main`. Calling it twice is harmless.
pub fn install_crypto_provider() {
    // Err only means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
