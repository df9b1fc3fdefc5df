use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use hyperfleet_api::{ApiConfig, config::SslMode};
use hyperfleet_common::{
    config,
    process::{self, CommonFlags},
    shutdown, telemetry,
};
use serde_json::Value;

/// HyperFleet API server.
///
/// Configuration: defaults, then the YAML file (--config / HYPERFLEET_CONFIG), then HYPERFLEET_*
/// environment variables (e.g. HYPERFLEET_DATABASE_HOST), then these flags.
#[derive(Debug, Parser)]
#[command(name = "hyperfleet-api", version)]
struct Cli {
    #[command(flatten)]
    common: CommonFlags,
    /// API listen host (server.host).
    #[arg(long, global = true)]
    server_host: Option<String>,
    /// API listen port (server.port).
    #[arg(long, global = true)]
    server_port: Option<u16>,
    /// File holding the database host (database.host), as mounted from a Secret.
    #[arg(long, global = true)]
    db_host_file: Option<PathBuf>,
    /// File holding the database port (database.port).
    #[arg(long, global = true)]
    db_port_file: Option<PathBuf>,
    /// File holding the database user (database.username).
    #[arg(long, global = true)]
    db_user_file: Option<PathBuf>,
    /// File holding the database password (database.password).
    #[arg(long, global = true)]
    db_password_file: Option<PathBuf>,
    /// File holding the database name (database.name).
    #[arg(long, global = true)]
    db_name_file: Option<PathBuf>,
    /// CA bundle for verify-ca / verify-full (database.ssl.root_cert_file).
    #[arg(long, global = true)]
    db_rootcert_file: Option<PathBuf>,
    /// disable | require | verify-ca | verify-full (database.ssl.mode).
    #[arg(long, global = true, value_parser = |s: &str| s.parse::<SslMode>().map(|_| s.to_string()))]
    db_sslmode: Option<String>,
    /// Require JWTs on the API (jwt.enabled); the seed chart's ENABLE_JWT.
    #[arg(long, global = true, env = "ENABLE_JWT", value_parser = clap::builder::BoolishValueParser::new())]
    enable_jwt: Option<bool>,
    /// JWKS URL of the token issuer (jwt.jwks_url); the seed chart's JWKS_URL.
    #[arg(long, global = true, env = "JWKS_URL")]
    jwks_url: Option<String>,
    /// JWKS file (jwt.jwks_file).
    #[arg(long, global = true)]
    jwks_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (migrations are not applied; run `migrate` first).
    Serve,
    /// Apply the embedded database migrations and exit.
    Migrate,
    /// Print the version and exit.
    Version,
}

impl Cli {
    fn overrides(&self) -> Result<Vec<(&'static str, Value)>, String> {
        let mut o = self.common.overrides([
            ("server.host", self.server_host.clone().map(Value::from)),
            ("server.port", self.server_port.map(Value::from)),
            ("database.ssl.mode", self.db_sslmode.clone().map(Value::from)),
            ("database.ssl.root_cert_file", self.db_rootcert_file.as_ref().map(|p| p.display().to_string().into())),
            ("jwt.enabled", self.enable_jwt.map(Value::from)),
            ("jwt.jwks_url", self.jwks_url.clone().filter(|u| !u.is_empty()).map(Value::from)),
            ("jwt.jwks_file", self.jwks_file.as_ref().map(|p| p.display().to_string().into())),
        ]);
        for (key, file) in [
            ("database.host", &self.db_host_file),
            ("database.username", &self.db_user_file),
            ("database.password", &self.db_password_file),
            ("database.name", &self.db_name_file),
        ] {
            if let Some(path) = file {
                let v = config::read_value_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
                o.push((key, v.into()));
            }
        }
        if let Some(path) = &self.db_port_file {
            let v = config::read_value_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let port: u16 = v.trim().parse().map_err(|_| format!("{}: {v:?} is not a port number", path.display()))?;
            o.push(("database.port", port.into()));
        }
        Ok(o)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::install_crypto_provider();
    let cli = Cli::parse();
    if let Command::Version = cli.command {
        println!("hyperfleet-api {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let overrides = match cli.overrides() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("hyperfleet-api: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg: ApiConfig = match process::start("hyperfleet-api", cli.common.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Migrate => hyperfleet_api::migrate(&cfg).await,
        Command::Serve => hyperfleet_api::serve(cfg, shutdown::on_signal()).await,
        Command::Version => Ok(()),
    };
    process::exit("hyperfleet-api", result)
}
