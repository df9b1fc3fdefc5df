use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use hyperfleet_common::{config, shutdown, telemetry};
use hyperfleet_sentinel::SentinelConfig;
use serde_json::Value;

/// HyperFleet Sentinel: publishes a reconcile CloudEvent for each resource that needs work.
///
/// Configuration: defaults, then the YAML file (--config / HYPERFLEET_CONFIG), then HYPERFLEET_*
/// environment variables (e.g. HYPERFLEET_BROKER_URL), then these flags.
#[derive(Debug, Parser)]
#[command(name = "hyperfleet-sentinel", version)]
struct Cli {
    /// YAML configuration file.
    #[arg(long, short, env = "HYPERFLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Log level or tracing filter (log.level).
    #[arg(long)]
    log_level: Option<String>,
    /// Log format: json or text (log.format).
    #[arg(long)]
    log_format: Option<String>,
    /// HyperFleet API base URL (hyperfleet_api.base_url).
    #[arg(long)]
    hyperfleet_api_base_url: Option<String>,
    /// clusters or nodepools (resource_type).
    #[arg(long)]
    resource_type: Option<String>,
    /// e.g. 5s (poll_interval).
    #[arg(long)]
    poll_interval: Option<String>,
    /// Exchange name (broker.exchange).
    #[arg(long)]
    broker_exchange: Option<String>,
    /// Health listen port (health.port).
    #[arg(long)]
    health_port: Option<u16>,
    /// Metrics listen port (metrics.port).
    #[arg(long)]
    metrics_port: Option<u16>,
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::install_crypto_provider();
    let cli = Cli::parse();
    let overrides: Vec<(&str, Value)> = [
        ("log.level", cli.log_level.map(Value::from)),
        ("log.format", cli.log_format.map(Value::from)),
        ("hyperfleet_api.base_url", cli.hyperfleet_api_base_url.map(Value::from)),
        ("resource_type", cli.resource_type.map(Value::from)),
        ("poll_interval", cli.poll_interval.map(Value::from)),
        ("broker.exchange", cli.broker_exchange.map(Value::from)),
        ("health.port", cli.health_port.map(Value::from)),
        ("metrics.port", cli.metrics_port.map(Value::from)),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    let cfg: SentinelConfig = match config::load(cli.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hyperfleet-sentinel: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = telemetry::init(&cfg.log).and_then(|_| cfg.validate()) {
        eprintln!("hyperfleet-sentinel: {e}");
        return ExitCode::from(2);
    }
    match hyperfleet_sentinel::run(cfg, shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "hyperfleet-sentinel failed");
            ExitCode::FAILURE
        }
    }
}
