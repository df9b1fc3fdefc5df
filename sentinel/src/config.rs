//! Sentinel configuration (defaults → YAML → `HYPERFLEET_*` → flags).

use std::{path::PathBuf, time::Duration};

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
    /// Replicas elect one publisher through a Kubernetes Lease.
    pub leader_election: crate::leader::LeaderElectionConfig,
    /// The seed chart's `topic:` (the exchange name); sets `broker.exchange` when given.
    #[serde(default, skip_serializing)]
    pub topic: Option<String>,
    /// The seed chart's `message_data:`: accepted and ignored — events always carry
    /// `{id, kind, href, generation}` (+ `owner_references` for nodepools), as the adapters expect.
    #[serde(default, skip_serializing)]
    pub message_data: Option<serde_json::Value>,
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
            leader_election: crate::leader::LeaderElectionConfig::default(),
            topic: None,
            message_data: None,
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
    /// The seed chart's name for `base_url`; used when `base_url` is left at its default.
    #[serde(default, skip_serializing)]
    pub endpoint: Option<String>,
    /// Per-request timeout.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Items per list request (1–100).
    pub page_size: u32,
    /// File holding the bearer token sent on every API request (e.g. a projected ServiceAccount
    /// token); read again when it changes and after a 401/403. Unset: no `Authorization` header.
    pub token_file: Option<PathBuf>,
}

impl Default for ApiClientConfig {
    fn default() -> Self {
        ApiClientConfig {
            base_url: "http://localhost:8000".into(),
            endpoint: None,
            timeout: Duration::from_secs(10),
            page_size: 100,
            token_file: None,
        }
    }
}

impl ApiClientConfig {
    /// The credentials for the API client: the token file (read now: a missing or empty one is a
    /// clear start error) or none.
    pub fn credentials(&self) -> Result<hyperfleet_common::token::ApiCredentials, String> {
        hyperfleet_common::token::ApiCredentials::from_config(self.token_file.as_deref())
    }
}

impl ServiceConfig for SentinelConfig {
    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn compat_layers(
        env: &std::collections::HashMap<String, String>,
    ) -> Result<Vec<hyperfleet_common::config::Layer>, String> {
        hyperfleet_common::broker::seed_chart_layers(env, hyperfleet_common::broker::Role::Publisher)
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
        self.hyperfleet_api.credentials()?;
        self.leader_election.validate()?;
        self.broker.validate().map_err(|e| e.to_string())
    }
}

impl SentinelConfig {
    /// The kind of the watched resources (`Cluster` for `clusters`).
    pub fn kind(&self) -> &'static str {
        if self.resource_type == "nodepools" { "NodePool" } else { "Cluster" }
    }

    /// Applies the seed chart's `topic:` and `hyperfleet_api.endpoint:` (when `broker.exchange` /
    /// `hyperfleet_api.base_url` were left at their defaults) and notes an ignored `message_data:`.
    pub fn apply_seed_keys(&mut self) {
        if let Some(endpoint) = self.hyperfleet_api.endpoint.take().filter(|e| !e.is_empty())
            && self.hyperfleet_api.base_url == ApiClientConfig::default().base_url
        {
            self.hyperfleet_api.base_url = endpoint;
        }
        if let Some(topic) = self.topic.take().filter(|t| !t.is_empty())
            && self.broker.exchange == BrokerConfig::default().exchange
        {
            self.broker.exchange = topic;
        }
        if self.message_data.take().is_some() {
            tracing::info!(
                "message_data is ignored: events always carry id, kind, href and generation (and owner_references)"
            );
        }
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use hyperfleet_common::{config, process::ServiceConfig};
    use serde_json::Value;

    use super::*;

    fn scratch(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hf-sentinel-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    /// What the seed chart writes: config.yaml (pre-v0.1 keys), broker.yaml and BROKER_* variables.
    #[test]
    fn the_seed_charts_files_and_variables_configure_the_sentinel() {
        let config_yaml = scratch(
            "config.yaml",
            "resource_type: clusters\npoll_interval: 5s\nmax_age_not_ready: 10s\nmax_age_ready: 30m\n\
             resource_selector:\n  - label: shard\n    value: \"1\"\n\
             hyperfleet_api:\n  endpoint: http://hyperfleet-api:8000\n  timeout: 5s\n\
             message_data:\n  resource_id: .id\n  resource_type: .kind\n",
        );
        let broker_yaml = scratch(
            "broker.yaml",
            "broker:\n  type: rabbitmq\n  rabbitmq:\n    url: \"\"\n    exchange_type: topic\nlog_config: false\n",
        );
        let env: HashMap<String, String> = [
            ("BROKER_CONFIG_FILE", broker_yaml.display().to_string()),
            ("BROKER_TOPIC", "hyperfleet-clusters".into()),
            ("BROKER_RABBITMQ_URL", "amqps://hyperfleet:p%40ss%3Aw%2Frd@b-1.mq.eu-west-1.on.aws:5671".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let layers = SentinelConfig::compat_layers(&env).expect("layers");
        let mut cfg: SentinelConfig =
            config::load_layered(Some(&config_yaml), &layers, &[], env.clone()).expect("loads");
        cfg.apply_seed_keys();
        cfg.validate().expect("valid");
        assert_eq!(cfg.hyperfleet_api.base_url, "http://hyperfleet-api:8000");
        assert_eq!(cfg.hyperfleet_api.timeout, Duration::from_secs(5));
        assert_eq!(cfg.max_age_ready, Duration::from_secs(1800));
        assert_eq!(cfg.search().as_deref(), Some("labels.shard = '1'"));
        assert_eq!((cfg.broker.exchange.as_str(), cfg.broker.exchange_type.as_str()), ("hyperfleet-clusters", "topic"));
        // The password is URL-decoded for the connection and never shown.
        let uri: lapin::uri::AMQPUri = cfg.broker.url.expose().parse().expect("AMQP URI");
        assert_eq!(uri.authority.userinfo.password, "p@ss:w/rd");
        assert_eq!(cfg.broker.endpoint(), "amqps://b-1.mq.eu-west-1.on.aws:5671/%2f");
        assert!(!format!("{cfg:?}").contains("p%40ss"), "Debug never shows the URL");
    }

    #[test]
    fn flags_beat_environment_beat_file() {
        let file = scratch("c.yaml", "poll_interval: 5s\nresource_type: clusters\n");
        let env = |v: &[(&str, &str)]| v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let from_file: SentinelConfig = config::load_with_env(Some(&file), &[], env(&[])).expect("file");
        assert_eq!(from_file.poll_interval, Duration::from_secs(5));
        let from_env: SentinelConfig =
            config::load_with_env(Some(&file), &[], env(&[("HYPERFLEET_POLL_INTERVAL", "2s")])).expect("env");
        assert_eq!(from_env.poll_interval, Duration::from_secs(2));
        let flag = [("poll_interval", Value::from("1s"))];
        let from_flag: SentinelConfig =
            config::load_with_env(Some(&file), &flag, env(&[("HYPERFLEET_POLL_INTERVAL", "2s")])).expect("flag");
        assert_eq!(from_flag.poll_interval, Duration::from_secs(1));
        // HYPERFLEET_* wins over the seed chart's BROKER_* variables.
        let seed: HashMap<String, String> = [("BROKER_TOPIC".to_string(), "from-seed".to_string())].into();
        let layers = SentinelConfig::compat_layers(&seed).expect("layers");
        let ours: SentinelConfig =
            config::load_layered(None, &layers, &[], env(&[("HYPERFLEET_BROKER_EXCHANGE", "ours")])).expect("env");
        assert_eq!(ours.broker.exchange, "ours");
        let theirs: SentinelConfig = config::load_layered(None, &layers, &[], env(&[])).expect("seed");
        assert_eq!(theirs.broker.exchange, "from-seed");
    }

    #[test]
    fn the_token_file_comes_from_the_environment_and_must_hold_a_token() {
        let token = scratch("token", "abc\n");
        let env = [
            ("HYPERFLEET_HYPERFLEET_API_TOKEN_FILE".to_string(), token.display().to_string()),
            ("HYPERFLEET_BROKER_URL".to_string(), "amqps://u:p@broker:5671".to_string()),
        ];
        let cfg: SentinelConfig = config::load_with_env(None, &[], env).expect("loads");
        assert_eq!(cfg.hyperfleet_api.token_file.as_deref(), Some(token.as_path()));
        cfg.validate().expect("a token in the file");
        assert!(cfg.hyperfleet_api.credentials().expect("creds").has_token());
        let empty = scratch("token", " \n");
        let cfg = SentinelConfig {
            hyperfleet_api: ApiClientConfig { token_file: Some(empty.clone()), ..Default::default() },
            ..cfg.clone()
        };
        let err = cfg.validate().expect_err("empty");
        assert_eq!(err, format!("hyperfleet_api.token_file: token file {}: the file is empty", empty.display()));
        let missing = SentinelConfig {
            hyperfleet_api: ApiClientConfig { token_file: Some("/nope/token".into()), ..Default::default() },
            ..cfg.clone()
        };
        assert!(missing.validate().expect_err("missing").contains("/nope/token: cannot read it"));
        // Unset: valid, and no header.
        assert!(!SentinelConfig::default().hyperfleet_api.credentials().expect("none").has_token());
    }

    #[test]
    fn a_broker_file_of_another_type_is_refused() {
        let file = scratch("broker.yaml", "broker:\n  type: googlepubsub\n");
        let env: HashMap<String, String> = [("BROKER_CONFIG_FILE".to_string(), file.display().to_string())].into();
        let err = SentinelConfig::compat_layers(&env).expect_err("pubsub");
        assert!(err.contains("broker.type \"googlepubsub\" is not supported"), "{err}");
        let missing: HashMap<String, String> = [("BROKER_CONFIG_FILE".to_string(), "/nope.yaml".to_string())].into();
        assert!(SentinelConfig::compat_layers(&missing).expect_err("missing").contains("/nope.yaml"));
    }
}
