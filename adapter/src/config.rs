//! Adapter configuration (defaults → YAML → `HYPERFLEET_*` → flags).

use std::{path::PathBuf, time::Duration};

use hyperfleet_common::{
    broker::BrokerConfig, config::duration, ops::Listen, process::ServiceConfig, telemetry::LogConfig,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdapterConfig {
    /// Adapter name: the `adapter` of its status reports, the consumer-tag prefix, and the value of
    /// the `hyperfleet.io/adapter` label on every object it applies (its watches select on it), so
    /// it must be a valid label value.
    pub name: String,
    pub hyperfleet_api: ApiClientConfig,
    pub broker: BrokerConfig,
    /// Durable queue this adapter consumes; declared and bound to `broker.exchange` if missing.
    /// Poison messages go to `<queue>.dead-letter`.
    pub queue: String,
    /// Binding key between the exchange and the queue (`#` = every event on a topic exchange).
    pub binding_key: String,
    /// Unacknowledged deliveries at a time; that many events are processed concurrently.
    pub prefetch: u16,
    /// The task file (objects to apply, what to report); unset means the built-in landing-zone task.
    pub task_file: Option<PathBuf>,
    /// In-process retries of transient failures (API 5xx/408/429/timeouts, Kubernetes 5xx/429/
    /// conflicts/unreachable) before the failure is reported as `Health=False`.
    pub retry: RetryConfig,
    pub kubernetes: KubernetesConfig,
    pub health: Listen,
    pub metrics: Listen,
    pub log: LogConfig,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        AdapterConfig {
            name: "landing-zone".into(),
            hyperfleet_api: ApiClientConfig::default(),
            broker: BrokerConfig::default(),
            queue: "hyperfleet-clusters-landing-zone".into(),
            binding_key: "#".into(),
            prefetch: 10,
            task_file: None,
            retry: RetryConfig::default(),
            kubernetes: KubernetesConfig::default(),
            health: Listen::new("0.0.0.0", 8080),
            metrics: Listen::new("0.0.0.0", 9090),
            log: LogConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiClientConfig {
    /// Base URL of the HyperFleet API, without the `/api/hyperfleet/v1` path.
    pub base_url: String,
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// File holding the bearer token sent on every API request (e.g. a projected ServiceAccount
    /// token); read again when it changes and after a 401/403. Unset: no `Authorization` header.
    pub token_file: Option<PathBuf>,
}

impl Default for ApiClientConfig {
    fn default() -> Self {
        ApiClientConfig { base_url: "http://localhost:8000".into(), timeout: Duration::from_secs(10), token_file: None }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesConfig {
    /// kubeconfig file; unset means `KUBECONFIG`, then `~/.kube/config`, then in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// Field manager of the server-side applies.
    pub field_manager: String,
    /// Connect, read and write timeout of every Kubernetes API call; the watches' calls last a
    /// minute, so their reads may wait this plus 60 s.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            kubeconfig: None,
            field_manager: "hyperfleet-adapter".into(),
            request_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Tries per step in all (1 = no retry).
    pub attempts: u32,
    /// Wait before the second try; doubles each time (±10 %), at most 8 s.
    #[serde(with = "duration")]
    pub base_delay: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig { attempts: 3, base_delay: Duration::from_millis(500) }
    }
}

impl ApiClientConfig {
    /// The credentials for the API client: the token file (read now: a missing or empty one is a
    /// clear start error) or none.
    pub fn credentials(&self) -> Result<hyperfleet_common::token::ApiCredentials, String> {
        hyperfleet_common::token::ApiCredentials::from_config(self.token_file.as_deref())
    }
}

impl ServiceConfig for AdapterConfig {
    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn compat_layers(
        env: &std::collections::HashMap<String, String>,
    ) -> Result<Vec<hyperfleet_common::config::Layer>, String> {
        hyperfleet_common::broker::seed_chart_layers(env, hyperfleet_common::broker::Role::Consumer)
    }

    fn validate(&self) -> Result<(), String> {
        let label_ok = |s: &str| {
            s.len() <= 63
                && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        };
        if !label_ok(&self.name) {
            return Err(format!(
                "name {:?} must be a Kubernetes label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
                self.name
            ));
        }
        if self.queue.is_empty() {
            return Err("queue must not be empty".into());
        }
        if self.prefetch == 0 {
            return Err("prefetch must be at least 1".into());
        }
        if self.retry.attempts == 0 {
            return Err("retry.attempts must be at least 1".into());
        }
        let url = &self.hyperfleet_api.base_url;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("hyperfleet_api.base_url {url:?} must be an http(s) URL"));
        }
        self.hyperfleet_api.credentials()?;
        self.broker.validate().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_comes_from_the_environment_and_must_hold_a_token() {
        let dir = std::env::temp_dir().join(format!("hf-adapter-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let token = dir.join("token");
        std::fs::write(&token, "abc\n").expect("write");
        let env = [
            ("HYPERFLEET_HYPERFLEET_API_TOKEN_FILE".to_string(), token.display().to_string()),
            ("HYPERFLEET_BROKER_URL".to_string(), "amqps://u:p@broker:5671".to_string()),
        ];
        let cfg: AdapterConfig = hyperfleet_common::config::load_with_env(None, &[], env).expect("loads");
        assert_eq!(cfg.hyperfleet_api.token_file.as_deref(), Some(token.as_path()));
        cfg.validate().expect("a token in the file");
        std::fs::write(&token, "").expect("empty it");
        let err = cfg.validate().expect_err("empty");
        assert!(
            err.starts_with("hyperfleet_api.token_file: token file ") && err.ends_with("the file is empty"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
