use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use hyperfleet_adapter::AdapterConfig;
use hyperfleet_common::{config, shutdown, telemetry};
use serde_json::Value;

/// HyperFleet landing-zone adapter: a Namespace and a ServiceAccount per cluster.
///
/// Configuration: defaults, then the YAML file (--config / HYPERFLEET_CONFIG), then HYPERFLEET_*
/// environment variables (e.g. HYPERFLEET_BROKER_URL), then these flags.
#[derive(Debug, Parser)]
#[command(name = "hyperfleet-adapter", version)]
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
    /// Queue to consume (queue).
    #[arg(long)]
    queue: Option<String>,
    /// Exchange name (broker.exchange).
    #[arg(long)]
    broker_exchange: Option<String>,
    /// kubeconfig file (kubernetes.kubeconfig).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
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
        ("queue", cli.queue.map(Value::from)),
        ("broker.exchange", cli.broker_exchange.map(Value::from)),
        ("kubernetes.kubeconfig", cli.kubeconfig.map(|p| Value::from(p.display().to_string()))),
        ("health.port", cli.health_port.map(Value::from)),
        ("metrics.port", cli.metrics_port.map(Value::from)),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    let cfg: AdapterConfig = match config::load(cli.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hyperfleet-adapter: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = telemetry::init(&cfg.log).and_then(|_| cfg.validate()) {
        eprintln!("hyperfleet-adapter: {e}");
        return ExitCode::from(2);
    }
    match hyperfleet_adapter::run(cfg, shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "hyperfleet-adapter failed");
            ExitCode::FAILURE
        }
    }
}
