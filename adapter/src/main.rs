use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use hyperfleet_adapter::AdapterConfig;
use hyperfleet_common::{
    process::{self, CommonFlags},
    shutdown, telemetry,
};
use serde_json::Value;

/// HyperFleet adapter: applies a task's Kubernetes objects per resource (by default the landing
/// zone: a Namespace and a ServiceAccount per cluster) and reports their status to the API.
///
/// Configuration: defaults, then the YAML file (--config / HYPERFLEET_CONFIG), then HYPERFLEET_*
/// environment variables (e.g. HYPERFLEET_BROKER_URL), then these flags.
#[derive(Debug, Parser)]
#[command(name = "hyperfleet-adapter", version)]
struct Cli {
    #[command(flatten)]
    common: CommonFlags,
    /// HyperFleet API base URL (hyperfleet_api.base_url).
    #[arg(long)]
    hyperfleet_api_base_url: Option<String>,
    /// File holding the bearer token for the API (hyperfleet_api.token_file).
    #[arg(long)]
    hyperfleet_api_token_file: Option<PathBuf>,
    /// Queue to consume (queue).
    #[arg(long)]
    queue: Option<String>,
    /// Exchange name (broker.exchange).
    #[arg(long)]
    broker_exchange: Option<String>,
    /// kubeconfig file (kubernetes.kubeconfig).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Task file (task_file); without it the built-in landing-zone task runs.
    #[arg(long, short = 't', visible_alias = "task-config")]
    task_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::install_crypto_provider();
    let cli = Cli::parse();
    let overrides = cli.common.overrides([
        ("hyperfleet_api.base_url", cli.hyperfleet_api_base_url.map(Value::from)),
        ("hyperfleet_api.token_file", cli.hyperfleet_api_token_file.map(|p| Value::from(p.display().to_string()))),
        ("queue", cli.queue.map(Value::from)),
        ("broker.exchange", cli.broker_exchange.map(Value::from)),
        ("kubernetes.kubeconfig", cli.kubeconfig.map(|p| Value::from(p.display().to_string()))),
        ("task_file", cli.task_file.map(|p| Value::from(p.display().to_string()))),
    ]);
    let cfg: AdapterConfig = match process::start("hyperfleet-adapter", cli.common.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(code) => return code,
    };
    process::exit("hyperfleet-adapter", hyperfleet_adapter::run(cfg, shutdown::on_signal()).await)
}
