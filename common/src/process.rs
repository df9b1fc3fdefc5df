//! Process bootstrap shared by the service binaries: load the layered configuration, install
//! logging, and turn the service's result into an exit code (2 for bad configuration, 1 for a
//! failure while running), so every binary starts and fails the same way.

use std::{fmt::Display, path::Path, process::ExitCode};

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{config, telemetry};

/// A service's configuration type.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default {
    fn log(&self) -> &telemetry::LogConfig;
    /// Semantic checks `serde` cannot express; the message names the key.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
    /// Settings from other sources (the seed chart's files and variables), merged after the YAML
    /// file and before `HYPERFLEET_*`.
    fn compat_layers(_env: &std::collections::HashMap<String, String>) -> Result<Vec<config::Layer>, String> {
        Ok(Vec::new())
    }
}

/// Keeps the flags that were given, as `(key.path, value)` overrides.
pub fn overrides<'a>(flags: impl IntoIterator<Item = (&'a str, Option<Value>)>) -> Vec<(&'a str, Value)> {
    flags.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect()
}

/// Loads, validates and installs logging (and the trace exporter, see [`telemetry::init`]). On
/// failure prints `bin: reason` to stderr and returns exit code 2.
pub fn start<T: ServiceConfig>(bin: &str, file: Option<&Path>, overrides: &[(&str, Value)]) -> Result<T, ExitCode> {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let layers = T::compat_layers(&env).map_err(|e| usage_error(bin, e))?;
    let cfg: T = config::load_layered(file, &layers, overrides, env).map_err(|e| usage_error(bin, e))?;
    cfg.validate().map_err(|e| usage_error(bin, e))?;
    telemetry::init(cfg.log(), bin).map_err(|e| usage_error(bin, e))?;
    Ok(cfg)
}

fn usage_error(bin: &str, e: impl Display) -> ExitCode {
    eprintln!("{bin}: {e}");
    ExitCode::from(2)
}

/// Logs a failure, sends the traces still buffered, and maps the service's result to the process
/// exit code.
pub fn exit<E: Display>(bin: &str, result: Result<(), E>) -> ExitCode {
    if let Err(e) = &result {
        tracing::error!(error = %e, "{bin} failed");
    }
    telemetry::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// `d` ± 10 %, so that retrying clients spread out.
pub fn jitter(d: std::time::Duration) -> std::time::Duration {
    let r = (uuid::Uuid::new_v4().as_u128() % 2001) as f64 / 10_000.0 - 0.1;
    d.mul_f64(1.0 + r)
}

/// A test that fails when the workspace README does not document every `HYPERFLEET_*` variable
/// of the configuration type given (use once per service crate).
#[macro_export]
macro_rules! readme_documents_every_env_var {
    ($config:ty) => {
        #[cfg(test)]
        mod readme_documents_every_env_var {
            #[test]
            fn readme_documents_every_env_var() {
                let missing = $crate::process::undocumented_env_vars::<$config>(include_str!("../../README.md"));
                assert!(missing.is_empty(), "README.md does not document: {missing:?}");
            }
        }
    };
}

/// The `HYPERFLEET_*` variables of `T` that `readme` does not mention as `` `VAR` ``.
pub fn undocumented_env_vars<T: Serialize + Default>(readme: &str) -> Vec<String> {
    config::env_vars::<T>()
        .into_iter()
        .map(|(var, _)| var)
        .filter(|var| !readme.contains(&format!("`{var}`")))
        .collect()
}

/// The flags every service binary accepts; `#[command(flatten)]` them into the binary's `Cli`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonFlags {
    /// YAML configuration file.
    #[arg(long, short, global = true, env = "HYPERFLEET_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Log level or tracing filter (log.level).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Log format: json or text (log.format).
    #[arg(long, global = true)]
    pub log_format: Option<String>,
    /// Health listen port (health.port).
    #[arg(long, global = true)]
    pub health_port: Option<u16>,
    /// Metrics listen port (metrics.port).
    #[arg(long, global = true)]
    pub metrics_port: Option<u16>,
}

impl CommonFlags {
    /// The given flags as `(key.path, value)` pairs, followed by `more`.
    pub fn overrides<'a>(&self, more: impl IntoIterator<Item = (&'a str, Option<Value>)>) -> Vec<(&'a str, Value)> {
        overrides(
            [
                ("log.level", self.log_level.clone().map(Value::from)),
                ("log.format", self.log_format.clone().map(Value::from)),
                ("health.port", self.health_port.map(Value::from)),
                ("metrics.port", self.metrics_port.map(Value::from)),
            ]
            .into_iter()
            .chain(more),
        )
    }
}

#[cfg(test)]
mod jitter_tests {
    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let d = super::jitter(std::time::Duration::from_secs(1));
            assert!(d >= std::time::Duration::from_millis(900) && d <= std::time::Duration::from_millis(1100), "{d:?}");
        }
    }
}
