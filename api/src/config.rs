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
    /// Adapters that may report status without being required (stored and listed, never
    /// aggregated); `*` lets any name report. Any other name is refused (400), so reports cannot
    /// grow the status table under names nobody configured.
    pub optional_adapters: Vec<String>,
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
    /// Bounds on what a request may carry.
    pub limits: LimitsConfig,
    /// After SIGTERM, `/readyz` answers 503 at once while requests are still served this long, so
    /// load balancers and Service endpoints stop sending new ones before the listener closes.
    #[serde(with = "duration")]
    pub shutdown_drain: Duration,
    /// How long in-flight requests may take to finish after the drain.
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
            optional_adapters: Vec::new(),
            log: LogConfig::default(),
            reconciliation_stuck_threshold: Duration::from_secs(600),
            watch: WatchConfig::default(),
            jwt: crate::auth::JwtConfig::default(),
            authz: crate::authz::AuthzConfig::default(),
            limits: LimitsConfig::default(),
            shutdown_drain: Duration::from_secs(5),
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
        self.limits.validate()?;
        self.database.validate()?;
        if self.watch.max_streams == 0 || self.watch.max_streams_per_client == 0 {
            return Err("watch.max_streams and watch.max_streams_per_client must be at least 1".into());
        }
        for (kind, names) in
            [("clusters", &self.required_adapters.clusters), ("nodepools", &self.required_adapters.nodepools)]
        {
            let mut seen = std::collections::HashSet::new();
            for name in names {
                if !adapter_name_ok(name) {
                    return Err(format!(
                        "required_adapters.{kind}: {name:?} is not a valid adapter name (a DNS label: up to 63 lowercase letters, digits and '-', starting and ending with a letter or digit)"
                    ));
                }
                if !seen.insert(name) {
                    return Err(format!("required_adapters.{kind}: {name:?} is listed twice"));
                }
            }
        }
        if let Some(bad) = self.optional_adapters.iter().find(|n| n.as_str() != "*" && !adapter_name_ok(n)) {
            return Err(format!("optional_adapters: {bad:?} is not a valid adapter name (a DNS label, or *)"));
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
    /// Open change feeds per process; one more is 429 with `Retry-After`.
    pub max_streams: usize,
    /// Open change feeds per caller (its identity with authentication on, else its address).
    pub max_streams_per_client: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            heartbeat: Duration::from_secs(15),
            retention: Duration::from_secs(3600),
            stall_timeout: Duration::from_secs(30),
            max_streams: 1000,
            max_streams_per_client: 100,
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
    /// PostgreSQL cancels any statement of the API running longer (`statement_timeout`), so a
    /// request that timed out (30 s) leaves nothing running; below the request timeout.
    #[serde(with = "duration")]
    pub statement_timeout: Duration,
    /// A write waiting this long for a lock (the write lock held by a slow writer) fails with 503
    /// `HYPERFLEET-SVC-002` and `Retry-After` (PostgreSQL's `lock_timeout`).
    #[serde(with = "duration")]
    pub lock_timeout: Duration,
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
            statement_timeout: Duration::from_secs(25),
            lock_timeout: Duration::from_secs(5),
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

/// An adapter name: a DNS label (1–63 lowercase letters, digits and `-`, starting and ending with
/// a letter or digit), as required adapters, authorization rules and status reports use it.
pub fn adapter_name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&b.len()) && edge(b[0]) && edge(b[b.len() - 1]) && b.iter().all(|&c| edge(c) || c == b'-')
}

/// The time a request may take before it is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds on request content; each refusal is a 400 naming the field and the limit (413 for the body).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body in bytes; a larger one is 413 `HYPERFLEET-VAL-007`, unread.
    pub max_body_bytes: usize,
    /// Largest `spec` of a cluster or nodepool (its JSON) in bytes.
    pub max_spec_bytes: usize,
    /// Largest `data`, and largest `metadata`, of a status report (their JSON) in bytes.
    pub max_status_bytes: usize,
    /// Most labels on one resource.
    pub max_labels: usize,
    /// Most conditions in one status report.
    pub max_conditions: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 1024 * 1024,
            max_spec_bytes: 64 * 1024,
            max_status_bytes: 64 * 1024,
            max_labels: 64,
            max_conditions: 32,
        }
    }
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if [self.max_body_bytes, self.max_spec_bytes, self.max_status_bytes, self.max_labels, self.max_conditions]
            .contains(&0)
        {
            return Err("limits.*: every limit must be at least 1".into());
        }
        if self.max_spec_bytes >= self.max_body_bytes || self.max_status_bytes >= self.max_body_bytes {
            return Err(format!(
                "limits.max_spec_bytes and limits.max_status_bytes must be below limits.max_body_bytes ({})",
                self.max_body_bytes
            ));
        }
        Ok(())
    }
}

impl DatabaseConfig {
    fn validate(&self) -> Result<(), String> {
        if self.statement_timeout < Duration::from_millis(100) || self.statement_timeout >= REQUEST_TIMEOUT {
            return Err(format!(
                "database.statement_timeout must be at least 100ms and below the request timeout ({REQUEST_TIMEOUT:?})"
            ));
        }
        if self.lock_timeout < Duration::from_millis(100) || self.lock_timeout > self.statement_timeout {
            return Err("database.lock_timeout must be at least 100ms and at most database.statement_timeout".into());
        }
        Ok(())
    }

    /// What every serving connection runs once connected: the statement and lock timeouts (as
    /// `SET`, not startup options, so PgBouncer and RDS Proxy pass them too). Migrations run
    /// without them.
    pub fn session_setup(&self) -> String {
        format!(
            "set statement_timeout = {}; set lock_timeout = {}",
            self.statement_timeout.as_millis(),
            self.lock_timeout.as_millis()
        )
    }

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
