//! HyperFleet Sentinel: watches the API and announces which resources need work.
//!
//! Every `poll_interval` it lists the configured resource type page by page, decides per resource
//! whether adapters should look at it ([`decide`]), and publishes one CloudEvent per decision to the
//! broker's exchange over AMQPS with publisher confirms: an event counts as published only once the
//! broker has confirmed it. Broker and API outages are retried without restarting the process.
#![forbid(unsafe_code)]

pub mod config;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use hyperfleet_common::{
    broker::BrokerError,
    cloudevent::{self, ObjectRef, ReconcileData},
    ops,
    process::ServiceConfig,
};
use lapin::{
    Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use config::SentinelConfig;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API request failed: {0}")]
    Api(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("broker did not confirm event {0}")]
    NotConfirmed(String),
    #[error("cannot build event: {0}")]
    Event(#[from] cloudevent::EventError),
    #[error("{0}")]
    Start(String),
}

impl From<lapin::Error> for Error {
    fn from(e: lapin::Error) -> Self {
        Error::Broker(BrokerError::from(e))
    }
}

/// What the sentinel reads of each resource in the API's list.
#[derive(Debug, Clone, Deserialize)]
pub struct Resource {
    pub id: String,
    pub kind: String,
    pub href: String,
    pub generation: i64,
    #[serde(default)]
    pub owner_references: Option<ObjectRef>,
}

#[derive(Debug, Deserialize)]
struct Page {
    total: i64,
    items: Vec<Resource>,
}

/// Why a resource is announced; a metric label and a log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    New,
    GenerationChanged,
    MaxAgeExceeded,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::GenerationChanged => "generation_changed",
            Reason::MaxAgeExceeded => "max_age_exceeded",
        }
    }
}

/// The last confirmed announcement of a resource.
#[derive(Debug, Clone, Copy)]
pub struct Announced {
    pub generation: i64,
    pub at: Instant,
}

/// Decides whether to announce a resource now. Pure: the clock is a parameter.
pub fn decide(resource: &Resource, last: Option<&Announced>, now: Instant, max_age: Duration) -> Option<Reason> {
    match last {
        None => Some(Reason::New),
        Some(a) if resource.generation != a.generation => Some(Reason::GenerationChanged),
        Some(a) if now.saturating_duration_since(a.at) >= max_age => Some(Reason::MaxAgeExceeded),
        Some(_) => None,
    }
}

/// Runs the sentinel until `shutdown` is cancelled.
pub async fn run(cfg: SentinelConfig, shutdown: CancellationToken) -> Result<(), Error> {
    cfg.validate().map_err(Error::Start)?;
    let prometheus = ops::install_metrics_recorder().map_err(Error::Start)?;
    let broker_up = Arc::new(AtomicBool::new(false));
    let polled = Arc::new(AtomicBool::new(false));
    let (b, p) = (broker_up.clone(), polled.clone());
    let check: ops::ReadinessCheck = Arc::new(move || {
        let (b, p) = (b.load(Ordering::Relaxed), p.load(Ordering::Relaxed));
        Box::pin(async move {
            match (b, p) {
                (true, true) => Ok(()),
                (false, _) => Err("broker not connected".into()),
                (_, false) => Err("no successful poll yet".into()),
            }
        })
    });
    ops::serve(&cfg.health, &cfg.metrics, check, prometheus, shutdown.clone())
        .await
        .map_err(|e| Error::Start(e.to_string()))?;

    let http = reqwest::Client::builder()
        .timeout(cfg.hyperfleet_api.timeout)
        .user_agent(concat!("hyperfleet-sentinel/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Start(format!("HTTP client: {e}")))?;
    let mut publisher: Option<Publisher> = None;
    let mut announced: HashMap<String, Announced> = HashMap::new();
    let labels = [("resource_type", cfg.resource_type.clone())];
    tracing::info!(
        resource_type = %cfg.resource_type,
        api = %cfg.hyperfleet_api.base_url,
        broker = %cfg.broker.endpoint(),
        exchange = %cfg.broker.exchange,
        poll_interval = ?cfg.poll_interval,
        "sentinel started"
    );

    let mut tick = tokio::time::interval(cfg.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if publisher.as_ref().is_none_or(|p| !p.is_open()) {
            broker_up.store(false, Ordering::Relaxed);
            match Publisher::open(&cfg).await {
                Ok(p) => {
                    tracing::info!(broker = %cfg.broker.endpoint(), "broker connected");
                    broker_up.store(true, Ordering::Relaxed);
                    publisher = Some(p);
                }
                Err(e) => {
                    metrics::counter!("hyperfleet_sentinel_broker_errors_total", &labels).increment(1);
                    tracing::warn!(error = %e, "broker unavailable, retrying next poll");
                    continue;
                }
            }
        }
        let started = Instant::now();
        let resources = match fetch_all(&http, &cfg).await {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!("hyperfleet_sentinel_api_errors_total", &labels).increment(1);
                tracing::warn!(error = %e, "poll failed");
                continue;
            }
        };
        polled.store(true, Ordering::Relaxed);
        let Some(pubr) = publisher.as_ref() else { continue };
        let now = Instant::now();
        // Forget resources that are gone, so the map stays the size of the fleet.
        let live: HashSet<&str> = resources.iter().map(|r| r.id.as_str()).collect();
        announced.retain(|id, _| live.contains(id.as_str()));
        for r in &resources {
            let Some(reason) = decide(r, announced.get(&r.id), now, cfg.max_age_not_ready) else {
                continue;
            };
            match pubr.publish(r, &cfg).await {
                Ok(event_id) => {
                    announced.insert(r.id.clone(), Announced { generation: r.generation, at: now });
                    metrics::counter!("hyperfleet_sentinel_events_published_total",
                        "resource_type" => cfg.resource_type.clone(), "reason" => reason.as_str())
                    .increment(1);
                    tracing::info!(resource_id = %r.id, generation = r.generation, reason = reason.as_str(), %event_id, "event published");
                }
                Err(e) => {
                    metrics::counter!("hyperfleet_sentinel_broker_errors_total", &labels).increment(1);
                    tracing::warn!(resource_id = %r.id, error = %e, "publish failed; retrying next poll");
                    broker_up.store(false, Ordering::Relaxed);
                    publisher = None;
                    break;
                }
            }
        }
        metrics::histogram!("hyperfleet_sentinel_poll_duration_seconds", &labels)
            .record(started.elapsed().as_secs_f64());
    }
    if let Some(p) = publisher {
        p.close().await;
    }
    tracing::info!("sentinel stopped");
    Ok(())
}

/// Lists every resource, page by page.
async fn fetch_all(http: &reqwest::Client, cfg: &SentinelConfig) -> Result<Vec<Resource>, Error> {
    let base = cfg.hyperfleet_api.base_url.trim_end_matches('/');
    let url = format!("{base}/api/hyperfleet/v1/{}", cfg.resource_type);
    let size = cfg.hyperfleet_api.page_size;
    let mut all = Vec::new();
    for page in 1.. {
        let resp = http
            .get(&url)
            .query(&[("page", page.to_string()), ("size", size.to_string())])
            .send()
            .await
            .map_err(|e| Error::Api(format!("GET {url}: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Error::Api(format!("GET {url}: HTTP {status}")));
        }
        let body: Page = resp.json().await.map_err(|e| Error::Api(format!("GET {url}: bad body: {e}")))?;
        let got = body.items.len();
        all.extend(body.items.into_iter().filter(|r| !r.id.is_empty()));
        if got == 0 || all.len() as i64 >= body.total || got < size as usize {
            break;
        }
    }
    Ok(all)
}

/// A confirm-mode channel on its own connection.
struct Publisher {
    conn: Connection,
    channel: Channel,
    exchange: String,
}

impl Publisher {
    async fn open(cfg: &SentinelConfig) -> Result<Self, Error> {
        let conn = cfg.broker.connect("hyperfleet-sentinel").await?;
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        cfg.broker.declare_exchange(&channel).await?;
        Ok(Publisher { conn, channel, exchange: cfg.broker.exchange.clone() })
    }

    fn is_open(&self) -> bool {
        self.conn.status().connected() && self.channel.status().connected()
    }

    /// Publishes the reconcile event and waits for the broker's confirm.
    async fn publish(&self, r: &Resource, cfg: &SentinelConfig) -> Result<String, Error> {
        let event = cloudevent::reconcile_event(&ReconcileData {
            id: r.id.clone(),
            kind: r.kind.clone(),
            href: r.href.clone(),
            generation: r.generation,
            owner_references: r.owner_references.clone(),
        })?;
        let (body, props) = cloudevent::encode(&event)?;
        let id = cloudevents::AttributesReader::id(&event).to_string();
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                cfg.routing_key().as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(_) => Ok(id),
            _ => Err(Error::NotConfirmed(id)),
        }
    }

    async fn close(self) {
        let _ = self.channel.close(200, "sentinel stopping".into()).await;
        let _ = self.conn.close(200, "sentinel stopping".into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(generation: i64) -> Resource {
        Resource { id: "a".into(), kind: "Cluster".into(), href: "/x".into(), generation, owner_references: None }
    }

    #[test]
    fn decision() {
        let t0 = Instant::now();
        let max = Duration::from_secs(10);
        assert_eq!(decide(&res(1), None, t0, max), Some(Reason::New));
        let last = Announced { generation: 1, at: t0 };
        assert_eq!(decide(&res(1), Some(&last), t0 + Duration::from_secs(9), max), None);
        assert_eq!(decide(&res(2), Some(&last), t0 + Duration::from_secs(1), max), Some(Reason::GenerationChanged));
        assert_eq!(decide(&res(1), Some(&last), t0 + max, max), Some(Reason::MaxAgeExceeded));
    }
}

#[cfg(test)]
mod docs_tests {
    /// The README's configuration section lists every environment variable this service reads.
    #[test]
    fn readme_documents_every_env_var() {
        let missing =
            hyperfleet_common::process::undocumented_env_vars::<crate::SentinelConfig>(include_str!("../../README.md"));
        assert!(missing.is_empty(), "README.md does not document: {missing:?}");
    }
}
