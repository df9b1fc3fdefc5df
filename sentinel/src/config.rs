//! Sentinel configuration (defaults → YAML → `HYPERFLEET_*` → flags).

use std::time::Duration;

use hyperfleet_common::{
    broker::BrokerConfig, config::duration, ops::Listen, process::ServiceConfig, telemetry::LogConfig,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SentinelConfig {
    /// Which resources to watch: `clusters` (or `nodepools`).
    pub resource_type: String,
    /// Time between two passes over the API (the first pass starts at once).
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    /// A resource that is not `Reconciled` is announced again once its adapters' last report is
    /// older than this (and a new or changed one is not announced twice within it).
    #[serde(with = "duration")]
    pub max_age_not_ready: Duration,
    /// A `Reconciled` resource is announced again once its adapters' last report is older than this.
    #[serde(with = "duration")]
    pub max_age_ready: Duration,
    /// Follow the API's change feed to react within milliseconds (the poll stays the safety net).
    pub watch: bool,
    /// Only resources carrying all these labels (sharding across sentinels); empty means all.
    pub resource_selector: Vec<LabelSelector>,
    pub hyperfleet_api: ApiClientConfig,
    pub broker: BrokerConfig,
    /// Routing key of published events; empty means `<kind>.reconcile` (e.g. `cluster.reconcile`).
    pub routing_key: String,
    pub health: Listen,
    pub metrics: Listen,
    pub log: LogConfig,
}

impl Default for SentinelConfig {
    fn default() -> Self {
        SentinelConfig {
            resource_type: "clusters".into(),
            poll_interval: Duration::from_secs(5),
            max_age_not_ready: Duration::from_secs(10),
            max_age_ready: Duration::from_secs(30 * 60),
            resource_selector: Vec::new(),
            watch: true,
            hyperfleet_api: ApiClientConfig::default(),
            broker: BrokerConfig::default(),
            routing_key: String::new(),
            health: Listen::new("0.0.0.0", 8080),
            metrics: Listen::new("0.0.0.0", 9090),
            log: LogConfig::default(),
        }
    }
}

/// One label equality of `resource_selector`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LabelSelector {
    pub label: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiClientConfig {
    /// Base URL of the HyperFleet API, without the `/api/hyperfleet/v1` path.
    pub base_url: String,
    /// Per-request timeout.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Items per list request (1–100).
    pub page_size: u32,
}

impl Default for ApiClientConfig {
    fn default() -> Self {
        ApiClientConfig { base_url: "http://localhost:8000".into(), timeout: Duration::from_secs(10), page_size: 100 }
    }
}

impl ServiceConfig for SentinelConfig {
    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn validate(&self) -> Result<(), String> {
        if !matches!(self.resource_type.as_str(), "clusters" | "nodepools") {
            return Err(format!("resource_type {:?} is not clusters or nodepools", self.resource_type));
        }
        if self.poll_interval < Duration::from_millis(100) {
            return Err("poll_interval must be at least 100ms".into());
        }
        if !(1..=100).contains(&self.hyperfleet_api.page_size) {
            return Err("hyperfleet_api.page_size must be between 1 and 100".into());
        }
        for s in &self.resource_selector {
            let key_ok = !s.label.is_empty()
                && s.label.len() <= 317
                && s.label.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
            if !key_ok {
                return Err(format!("resource_selector: {:?} is not a label key", s.label));
            }
        }
        let url = &self.hyperfleet_api.base_url;
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.contains('?') {
            return Err(format!("hyperfleet_api.base_url {url:?} must be an http(s) URL without a query"));
        }
        self.broker.validate().map_err(|e| e.to_string())
    }
}

impl SentinelConfig {
    /// The kind of the watched resources (`Cluster` for `clusters`).
    pub fn kind(&self) -> &'static str {
        if self.resource_type == "nodepools" { "NodePool" } else { "Cluster" }
    }

    /// The API `search` expression for `resource_selector` (`None` when it is empty).
    pub fn search(&self) -> Option<String> {
        let terms: Vec<String> = self
            .resource_selector
            .iter()
            .map(|s| format!("labels.{} = '{}'", s.label, s.value.replace('\'', "''")))
            .collect();
        (!terms.is_empty()).then(|| terms.join(" and "))
    }

    /// `label=value,…` for metric labels; empty when every resource is watched.
    pub fn selector_label(&self) -> String {
        self.resource_selector.iter().map(|s| format!("{}={}", s.label, s.value)).collect::<Vec<_>>().join(",")
    }

    pub fn routing_key(&self) -> String {
        if self.routing_key.is_empty() {
            format!("{}.reconcile", self.kind().to_ascii_lowercase())
        } else {
            self.routing_key.clone()
        }
    }
}
