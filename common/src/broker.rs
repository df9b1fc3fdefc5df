//! AMQP 0-9-1 (RabbitMQ) connection and topology helpers.
//!
//! The services reach the broker with an `amqp://` or `amqps://` URL. For `amqps://` the server
//! certificate is always verified — against the system roots plus the CA bundle in `ca_file` when
//! given (a private CA, as Amazon MQ or the local environment use). A client certificate
//! (`cert_file` + `key_file`, PEM) is presented when configured. There is no switch to skip
//! verification.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind,
    options::ExchangeDeclareOptions,
    tcp::{OwnedIdentity, OwnedTLSConfig},
    types::FieldTable,
    uri::AMQPUri,
};
use serde::{Deserialize, Serialize};

use crate::config::{Layer, Secret};

/// The largest AMQP frame asked for unless the URL says otherwise (`?frame_max=`). lapin keeps
/// two buffers of 32 frames per connection, zero-filled: at RabbitMQ's default of 128 KiB that is
/// 8 MiB resident for messages of a few hundred bytes; at 16 KiB it is 1 MiB, and larger
/// messages are simply split into more frames.
pub const FRAME_MAX: u32 = 16 * 1024;

/// The `broker:` configuration section shared by the sentinel and the adapters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `amqps://user:password@host:5671/vhost` (or `amqp://` for plain AMQP). Never logged.
    pub url: Secret,
    /// PEM bundle of CA certificates trusted for the broker's server certificate, in addition to
    /// the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate presented to the broker (needs `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM (PKCS#8) private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Exchange the reconcile events go through; declared durable if missing.
    pub exchange: String,
    /// Exchange type: `topic` (default), `direct`, `fanout` or `headers`.
    pub exchange_type: String,
    /// How long a connection attempt (TCP, TLS and the AMQP handshake) may take.
    #[serde(with = "crate::config::duration")]
    pub connect_timeout: std::time::Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: Secret::default(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            exchange: "hyperfleet-clusters".into(),
            exchange_type: "topic".into(),
            connect_timeout: std::time::Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker.url is not set (HYPERFLEET_BROKER_URL)")]
    MissingUrl,
    #[error("broker.url is not a valid amqp:// or amqps:// URL: {0}")]
    InvalidUrl(String),
    #[error("{what} is set but the broker URL is plain amqp://; use amqps:// so TLS is used")]
    TlsSettingsWithoutTls { what: &'static str },
    #[error("broker.cert_file and broker.key_file must be set together")]
    HalfClientIdentity,
    #[error("cannot read {path}: {source}")]
    ReadFile { path: String, source: std::io::Error },
    #[error("unknown broker.exchange_type {0:?} (use topic, direct, fanout or headers)")]
    ExchangeType(String),
    #[error("cannot connect to the broker at {endpoint}: {source}")]
    Connect { endpoint: String, source: Box<lapin::Error> },
    #[error("cannot connect to the broker at {endpoint}: no connection within {within:?} (broker.connect_timeout)")]
    ConnectTimeout { endpoint: String, within: std::time::Duration },
    #[error("cannot declare exchange {exchange:?} as {kind}: {source}")]
    Declare { exchange: String, kind: String, source: Box<lapin::Error> },
    #[error("broker error: {0}")]
    Amqp(Box<lapin::Error>),
}

/// Which side of the broker a service is, for [`seed_chart_layers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publisher,
    Consumer,
}

fn layer(key: &str, value: impl Into<serde_json::Value>, origin: String) -> Layer {
    Layer { key: key.into(), value: value.into(), origin }
}

/// The broker settings the seed `hyperfleet-system` chart gives its services, mapped onto ours:
/// the `broker.yaml` named by `BROKER_CONFIG_FILE` (`broker.rabbitmq.{url, exchange, exchange_type,
/// queue, routing_key|routingKey, prefetch_count}`) and the variables `BROKER_RABBITMQ_URL`,
/// `BROKER_TOPIC`, `BROKER_RABBITMQ_EXCHANGE`, `BROKER_RABBITMQ_EXCHANGE_TYPE`, `BROKER_RABBITMQ_QUEUE`
/// (variables win over the file). A consumer's queue is used as written (the original appended the
/// subscription id, doubling the name).
pub fn seed_chart_layers(env: &HashMap<String, String>, role: Role) -> Result<Vec<Layer>, String> {
    let mut out = Vec::new();
    let var = |name: &str| env.get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    if let Some(path) = var("BROKER_CONFIG_FILE") {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("BROKER_CONFIG_FILE {path}: {e}"))?;
        let doc: serde_json::Value = serde_yaml::from_str::<serde_yaml::Value>(&text)
            .map_err(|e| format!("BROKER_CONFIG_FILE {path}: {e}"))
            .and_then(|v| serde_json::to_value(v).map_err(|e| format!("BROKER_CONFIG_FILE {path}: {e}")))?;
        let broker = &doc["broker"];
        if let Some(kind) = broker["type"].as_str()
            && kind != "rabbitmq"
        {
            return Err(format!("BROKER_CONFIG_FILE {path}: broker.type {kind:?} is not supported (rabbitmq)"));
        }
        let rabbit = &broker["rabbitmq"];
        let origin = || format!("from {path}");
        let text_of = |key: &str| rabbit[key].as_str().map(str::trim).filter(|v| !v.is_empty()).map(String::from);
        if let Some(url) = text_of("url") {
            out.push(layer("broker.url", url, origin()));
        }
        if let Some(ex) = text_of("exchange") {
            out.push(layer("broker.exchange", ex, origin()));
        }
        if let Some(t) = text_of("exchange_type") {
            out.push(layer("broker.exchange_type", t, origin()));
        }
        let routing = text_of("routing_key").or_else(|| text_of("routingKey"));
        match role {
            Role::Publisher => {
                if let Some(k) = routing {
                    out.push(layer("routing_key", k, origin()));
                }
            }
            Role::Consumer => {
                if let Some(q) = text_of("queue") {
                    out.push(layer("queue", q, origin()));
                }
                if let Some(k) = routing {
                    out.push(layer("binding_key", k, origin()));
                }
                if let Some(n) = rabbit["prefetch_count"].as_u64().filter(|n| *n > 0) {
                    out.push(layer("prefetch", n, origin()));
                }
            }
        }
    }
    for (name, key) in [
        ("BROKER_RABBITMQ_URL", "broker.url"),
        ("BROKER_TOPIC", "broker.exchange"),
        ("BROKER_RABBITMQ_EXCHANGE", "broker.exchange"),
        ("BROKER_RABBITMQ_EXCHANGE_TYPE", "broker.exchange_type"),
    ] {
        if let Some(v) = var(name) {
            out.push(layer(key, v, format!("from {name}")));
        }
    }
    if role == Role::Consumer
        && let Some(q) = var("BROKER_RABBITMQ_QUEUE")
    {
        out.push(layer("queue", q, "from BROKER_RABBITMQ_QUEUE".into()));
    }
    Ok(out)
}

impl BrokerError {
    /// Errors that retrying cannot fix: configuration, or an exchange that exists with another type
    /// (`PRECONDITION_FAILED - inequivalent arg 'type' … received 'topic' but current is 'fanout'`).
    pub fn is_permanent(&self) -> bool {
        match self {
            BrokerError::Connect { .. } | BrokerError::ConnectTimeout { .. } | BrokerError::Amqp(_) => false,
            BrokerError::Declare { source, .. } => source.to_string().contains("PRECONDITION_FAILED"),
            _ => true,
        }
    }
}

impl From<lapin::Error> for BrokerError {
    fn from(e: lapin::Error) -> Self {
        BrokerError::Amqp(Box::new(e))
    }
}

impl BrokerConfig {
    /// `scheme://host:port/vhost` — the URL without credentials, safe to log.
    pub fn endpoint(&self) -> String {
        match self.url.expose().parse::<AMQPUri>() {
            Ok(u) => format!(
                "{}://{}:{}/{}",
                if matches!(u.scheme, lapin::uri::AMQPScheme::AMQPS) { "amqps" } else { "amqp" },
                u.authority.host,
                u.authority.port,
                u.vhost.replace('/', "%2f")
            ),
            Err(_) => "<invalid url>".into(),
        }
    }

    pub fn exchange_kind(&self) -> Result<ExchangeKind, BrokerError> {
        exchange_kind(&self.exchange_type)
    }

    /// Checks everything that can be checked without a network connection.
    pub fn validate(&self) -> Result<(), BrokerError> {
        self.tls_config().map(|_| ())?;
        self.exchange_kind().map(|_| ())
    }

    fn tls_config(&self) -> Result<(AMQPUri, OwnedTLSConfig), BrokerError> {
        if self.url.is_empty() {
            return Err(BrokerError::MissingUrl);
        }
        // lapin's parse errors never echo the URL, so the password cannot leak through them.
        let mut uri: AMQPUri = self.url.expose().parse().map_err(BrokerError::InvalidUrl)?;
        uri.query.frame_max.get_or_insert(FRAME_MAX);
        let tls = matches!(uri.scheme, lapin::uri::AMQPScheme::AMQPS);
        let mut config = OwnedTLSConfig::default();
        if let Some(ca) = &self.ca_file {
            if !tls {
                return Err(BrokerError::TlsSettingsWithoutTls { what: "broker.ca_file" });
            }
            config.cert_chain = Some(read_text(ca)?);
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                if !tls {
                    return Err(BrokerError::TlsSettingsWithoutTls { what: "broker.cert_file" });
                }
                config.identity = Some(OwnedIdentity::PKCS8 {
                    pem: read_text(cert)?.into_bytes(),
                    key: read_text(key)?.into_bytes(),
                });
            }
            (None, None) => {}
            _ => return Err(BrokerError::HalfClientIdentity),
        }
        Ok((uri, config))
    }

    /// Opens a connection named `name` (shown in the broker's management UI).
    pub async fn connect(&self, name: &str) -> Result<Connection, BrokerError> {
        let (uri, tls) = self.tls_config()?;
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let runtime = lapin::runtime::default_runtime()?;
        let connecting = Connection::connect_uri_with_config(uri, props, tls, runtime);
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(connected) => {
                connected.map_err(|source| BrokerError::Connect { endpoint: self.endpoint(), source: Box::new(source) })
            }
            Err(_) => Err(BrokerError::ConnectTimeout { endpoint: self.endpoint(), within: self.connect_timeout }),
        }
    }

    /// Declares the configured exchange, durable. If it exists with another type the broker's
    /// refusal names both types; it is returned as [`BrokerError::Declare`].
    pub async fn declare_exchange(&self, channel: &Channel) -> Result<(), BrokerError> {
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                self.exchange_kind()?,
                ExchangeDeclareOptions { durable: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(|source| BrokerError::Declare {
                exchange: self.exchange.clone(),
                kind: self.exchange_type.clone(),
                source: Box::new(source),
            })
    }
}

/// Parses an exchange type name.
pub fn exchange_kind(name: &str) -> Result<ExchangeKind, BrokerError> {
    match name {
        "topic" => Ok(ExchangeKind::Topic),
        "direct" => Ok(ExchangeKind::Direct),
        "fanout" => Ok(ExchangeKind::Fanout),
        "headers" => Ok(ExchangeKind::Headers),
        other => Err(BrokerError::ExchangeType(other.into())),
    }
}

fn read_text(path: &Path) -> Result<String, BrokerError> {
    std::fs::read_to_string(path).map_err(|source| BrokerError::ReadFile { path: path.display().to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> BrokerConfig {
        BrokerConfig { url: Secret::new(url), ..Default::default() }
    }

    /// A broker that accepts the TCP connection and then says nothing (a hung peer) is given up
    /// on after `connect_timeout`, as a transient error naming the setting.
    #[tokio::test]
    async fn a_silent_broker_times_out_the_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let broker = BrokerConfig {
            connect_timeout: std::time::Duration::from_millis(300),
            ..cfg(&format!("amqp://guest:guest@127.0.0.1:{port}/"))
        };
        let Err(err) = broker.connect("timeout-test").await else { panic!("no broker answers, yet it connected") };
        assert!(matches!(err, BrokerError::ConnectTimeout { .. }), "{err}");
        assert!(!err.is_permanent());
        assert!(err.to_string().contains("broker.connect_timeout"), "{err}");
        held.abort();
    }

    #[test]
    fn small_frames_unless_the_url_asks_for_others() {
        let (uri, _) = cfg("amqps://u:p@mq:5671/v").tls_config().expect("default");
        assert_eq!(uri.query.frame_max, Some(FRAME_MAX));
        let (uri, _) = cfg("amqps://u:p@mq:5671/v?frame_max=131072").tls_config().expect("explicit");
        assert_eq!(uri.query.frame_max, Some(131072));
    }

    #[test]
    fn endpoint_hides_credentials() {
        let c = cfg("amqps://admin:s3cret@mq.example.com:5671/prod");
        let e = c.endpoint();
        assert!(!e.contains("s3cret") && !e.contains("admin"), "{e}");
        assert!(e.contains("mq.example.com:5671"), "{e}");
    }

    #[test]
    fn invalid_settings_are_clear_errors() {
        assert!(matches!(cfg("").validate(), Err(BrokerError::MissingUrl)));
        assert!(matches!(cfg("http://x").validate(), Err(BrokerError::InvalidUrl(_))));
        let plain_with_ca = BrokerConfig { ca_file: Some("/ca.pem".into()), ..cfg("amqp://localhost") };
        assert!(matches!(plain_with_ca.validate(), Err(BrokerError::TlsSettingsWithoutTls { .. })));
        let half = BrokerConfig { cert_file: Some("/c.pem".into()), ..cfg("amqps://localhost") };
        assert!(matches!(half.validate(), Err(BrokerError::HalfClientIdentity)));
        let missing_ca = BrokerConfig { ca_file: Some("/nonexistent/ca.pem".into()), ..cfg("amqps://localhost") };
        assert!(matches!(missing_ca.validate(), Err(BrokerError::ReadFile { .. })));
        let bad_kind = BrokerConfig { exchange_type: "fan-out".into(), ..cfg("amqps://localhost") };
        assert!(matches!(bad_kind.validate(), Err(BrokerError::ExchangeType(_))));
        assert!(cfg("amqps://u:p@localhost:5671/%2f").validate().is_ok());
    }
}
