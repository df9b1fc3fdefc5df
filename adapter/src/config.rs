//! Adapter configuration (defaults → YAML → `HYPERFLEET_*` → flags).

use std::{path::PathBuf, time::Duration};

use hyperfleet_common::{
    broker::BrokerConfig, config::duration, ops::Listen, process::ServiceConfig, telemetry::LogConfig,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdapterConfig {
    /// Adapter name, used in logs and as the consumer-tag prefix.
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
}

impl Default for ApiClientConfig {
    fn default() -> Self {
        ApiClientConfig { base_url: "http://localhost:8000".into(), timeout: Duration::from_secs(10) }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesConfig {
    /// kubeconfig file; unset means `KUBECONFIG`, then `~/.kube/config`, then in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// Field manager of the server-side applies.
    pub field_manager: String,
    /// Name of the ServiceAccount created in each cluster's Namespace.
    pub service_account: String,
    /// How long one event waits for a deleted Namespace to disappear before reporting
    /// `Finalized=False` (CleanupInProgress) and leaving the rest to the next event.
    #[serde(with = "duration")]
    pub deletion_timeout: Duration,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            kubeconfig: None,
            field_manager: "hyperfleet-adapter".into(),
            service_account: "landing-zone".into(),
            deletion_timeout: Duration::from_secs(30),
        }
    }
}

impl ServiceConfig for AdapterConfig {
    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn validate(&self) -> Result<(), String> {
        if self.queue.is_empty() {
            return Err("queue must not be empty".into());
        }
        if self.prefetch == 0 {
            return Err("prefetch must be at least 1".into());
        }
        let url = &self.hyperfleet_api.base_url;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("hyperfleet_api.base_url {url:?} must be an http(s) URL"));
        }
        self.broker.validate().map_err(|e| e.to_string())
    }
}
