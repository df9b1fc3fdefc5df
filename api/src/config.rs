//! API configuration: `serde` defaults, overridden by the YAML file, `HYPERFLEET_*` and flags
//! (see [`hyperfleet_common::config`]).

use std::{path::PathBuf, str::FromStr, time::Duration};

use hyperfleet_common::{
    config::{Secret, duration},
    ops::Listen,
    process::ServiceConfig,
    telemetry::LogConfig,
};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// The REST API listener (`/api/hyperfleet/v1/...`).
    pub server: Listen,
    /// `/healthz` and `/readyz`.
    pub health: Listen,
    /// `/metrics`.
    pub metrics: Listen,
    pub database: DatabaseConfig,
    /// Adapters that must report before a resource counts as reconciled (and finalized).
    pub required_adapters: RequiredAdapters,
    pub log: LogConfig,
    /// A resource not `Reconciled` for longer than this counts as stuck in the
    /// `hyperfleet_api_resource_pending_reconciliation_stuck` metric.
    #[serde(with = "duration")]
    pub reconciliation_stuck_threshold: Duration,
    /// JWT authentication.
    pub jwt: crate::auth::JwtConfig,
    /// Who may do what once authenticated.
    pub authz: crate::authz::AuthzConfig,
    /// The change feed (`?watch=true`).
    pub watch: WatchConfig,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            server: Listen::new("0.0.0.0", 8000),
            health: Listen::new("0.0.0.0", 8080),
            metrics: Listen::new("0.0.0.0", 9090),
            database: DatabaseConfig::default(),
            required_adapters: RequiredAdapters::default(),
            log: LogConfig::default(),
            reconciliation_stuck_threshold: Duration::from_secs(600),
            watch: WatchConfig::default(),
            jwt: crate::auth::JwtConfig::default(),
            authz: crate::authz::AuthzConfig::default(),
            shutdown_timeout: Duration::from_secs(20),
        }
    }
}

impl ServiceConfig for ApiConfig {
    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn validate(&self) -> Result<(), String> {
        self.jwt.validate()?;
        self.authz.validate()?;
        for (kind, names) in
            [("clusters", &self.required_adapters.clusters), ("nodepools", &self.required_adapters.nodepools)]
        {
            let mut seen = std::collections::HashSet::new();
            for name in names {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
                    return Err(format!(
                        "required_adapters.{kind}: {name:?} is not a valid adapter name (lowercase letters, digits, '-')"
                    ));
                }
                if !seen.insert(name) {
                    return Err(format!("required_adapters.{kind}: {name:?} is listed twice"));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// A watch with nothing to send emits a `BOOKMARK` line this often (keeps proxies from
    /// closing idle streams).
    #[serde(with = "duration")]
    pub heartbeat: Duration,
    /// How long changes are kept for resuming watches.
    #[serde(with = "duration")]
    pub retention: Duration,
    /// A watch client that reads nothing for this long (its buffer full) is disconnected.
    #[serde(with = "duration")]
    pub stall_timeout: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            heartbeat: Duration::from_secs(15),
            retention: Duration::from_secs(3600),
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// Required adapters per kind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RequiredAdapters {
    pub clusters: Vec<String>,
    pub nodepools: Vec<String>,
}

impl Default for RequiredAdapters {
    fn default() -> Self {
        RequiredAdapters { clusters: vec!["landing-zone".into()], nodepools: Vec::new() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    pub host: String,
    pub port: u16,
    pub name: String,
    pub username: String,
    /// Never logged.
    pub password: Secret,
    pub ssl: SslConfig,
    /// Upper bound of pooled connections per API process.
    pub max_connections: u32,
    /// How long a request waits for a pooled connection before failing with 503.
    #[serde(with = "duration")]
    pub acquire_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            host: "localhost".into(),
            port: 5432,
            name: "hyperfleet".into(),
            username: "hyperfleet".into(),
            password: Secret::default(),
            ssl: SslConfig::default(),
            max_connections: 20,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SslConfig {
    /// `disable`, `require`, `verify-ca` or `verify-full` (PostgreSQL's `sslmode`).
    pub mode: SslMode,
    /// PEM CA bundle for `verify-ca`/`verify-full` (e.g. the AWS RDS bundle).
    pub root_cert_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    #[default]
    Disable,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            _ => Err(format!("unknown sslmode {s:?} (use disable, require, verify-ca or verify-full)")),
        }
    }
}

impl DatabaseConfig {
    /// Connection options built from parts, so the password never passes through a URL string.
    pub fn connect_options(&self) -> Result<PgConnectOptions, String> {
        if matches!(self.ssl.mode, SslMode::VerifyCa | SslMode::VerifyFull) && self.ssl.root_cert_file.is_none() {
            // Without a bundle rustls uses the built-in web roots, which do not include private CAs;
            // allowed, but almost always a mistake, so say so at start-up.
            tracing::warn!("database.ssl.mode verifies the server but database.ssl.root_cert_file is not set");
        }
        let mut opts = PgConnectOptions::new()
            .host(&self.host)
            .port(self.port)
            .database(&self.name)
            .username(&self.username)
            .application_name("hyperfleet-api")
            .ssl_mode(match self.ssl.mode {
                SslMode::Disable => PgSslMode::Disable,
                SslMode::Require => PgSslMode::Require,
                SslMode::VerifyCa => PgSslMode::VerifyCa,
                SslMode::VerifyFull => PgSslMode::VerifyFull,
            });
        if !self.password.is_empty() {
            opts = opts.password(self.password.expose());
        }
        if let Some(ca) = &self.ssl.root_cert_file {
            if !ca.is_file() {
                return Err(format!("database.ssl.root_cert_file {} does not exist", ca.display()));
            }
            opts = opts.ssl_root_cert(ca);
        }
        Ok(opts)
    }
}
