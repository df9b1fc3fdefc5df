use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use hyperfleet_common::{
    process::{self, CommonFlags},
    shutdown, telemetry,
};
use hyperfleet_sentinel::SentinelConfig;
use serde_json::Value;

/// HyperFleet Sentinel: publishes a reconcile CloudEvent for each resource that needs work.
///
/// Configuration: defaults, then the YAML file (--config / HYPERFLEET_CONFIG), then HYPERFLEET_*
/// environment variables (e.g. HYPERFLEET_BROKER_URL), then these flags.
#[derive(Debug, Parser)]
#[command(name = "hyperfleet-sentinel", version)]
struct Cli {
    #[command(flatten)]
    common: CommonFlags,
    /// HyperFleet API base URL (hyperfleet_api.base_url).
    #[arg(long)]
    hyperfleet_api_base_url: Option<String>,
    /// File holding the bearer token for the API (hyperfleet_api.token_file).
    #[arg(long)]
    hyperfleet_api_token_file: Option<PathBuf>,
    /// clusters or nodepools (resource_type).
    #[arg(long)]
    resource_type: Option<String>,
    /// e.g. 5s (poll_interval).
    #[arg(long)]
    poll_interval: Option<String>,
    /// Exchange name (broker.exchange).
    #[arg(long)]
    broker_exchange: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::install_crypto_provider();
    let cli = Cli::parse();
    let overrides = cli.common.overrides([
        ("hyperfleet_api.base_url", cli.hyperfleet_api_base_url.map(Value::from)),
        ("hyperfleet_api.token_file", cli.hyperfleet_api_token_file.map(|p| Value::from(p.display().to_string()))),
        ("resource_type", cli.resource_type.map(Value::from)),
        ("poll_interval", cli.poll_interval.map(Value::from)),
        ("broker.exchange", cli.broker_exchange.map(Value::from)),
    ]);
    let cfg: SentinelConfig = match process::start("hyperfleet-sentinel", cli.common.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(code) => return code,
    };
    process::exit("hyperfleet-sentinel", hyperfleet_sentinel::run(cfg, shutdown::on_signal()).await)
}
