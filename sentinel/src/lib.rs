//! HyperFleet Sentinel: watches the API and announces which resources need work.
//!
//! Every `poll_interval` it lists the configured resource type page by page, decides per resource
//! whether adapters should look at it ([`decide`]), and publishes one CloudEvent per decision to the
//! broker's exchange over AMQPS with publisher confirms: an event counts as published only once the
//! broker has confirmed it. Broker and API outages are retried without restarting the process.
#![forbid(unsafe_code)]

pub mod config;
pub mod decision;
pub mod leader;
pub mod observe;
pub mod poll;
pub mod publisher;
pub mod watch;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use decision::{MaxAge, Published, Reason};
use hyperfleet_common::{
    api_client::{ApiClient, CallError, Failure},
    broker::BrokerError,
    cloudevent::{self, ObjectRef},
    ops,
};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use config::SentinelConfig;
use poll::Pages;
use publisher::Publisher;

/// Everything that goes wrong in the sentinel; [`Error::metric_label`] names it in metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A list request failed after its retries; `auth` when the API refused the credentials.
    #[error("API request failed: {message}")]
    Api { message: String, auth: bool },
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("broker did not confirm event {0}")]
    NotConfirmed(String),
    /// The broker returned a mandatory event: no queue is bound for its routing key.
    #[error("event {event_id} is unroutable: no queue is bound to exchange {exchange} for routing key {routing_key}")]
    Unroutable { event_id: String, exchange: String, routing_key: String },
    #[error("cannot build event: {0}")]
    Event(#[from] cloudevent::EventError),
    #[error("{0}")]
    Start(String),
}

impl Error {
    /// The `error_type` label of the error metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Api { auth: true, .. } => "auth_error",
            Error::Api { .. } => "fetch_error",
            Error::Broker(_) => "broker_error",
            Error::NotConfirmed(_) => "not_confirmed",
            Error::Unroutable { .. } => "unroutable",
            Error::Event(_) => "event_error",
            Error::Start(_) => "start_error",
        }
    }
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
    #[serde(default)]
    pub created_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub status: StatusView,
    /// The trace context of the request that made this generation (when the API traces).
    #[serde(default)]
    pub traceparent: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StatusView {
    #[serde(default)]
    pub conditions: Vec<decision::Condition>,
}

impl Resource {
    pub fn state(&self) -> decision::State {
        decision::State {
            generation: self.generation,
            created_time: self.created_time,
            conditions: self.status.conditions.clone(),
        }
    }
}

/// Liveness and readiness inputs shared with the health listener.
struct Health {
    broker_up: AtomicBool,
    /// The last publish came back unroutable (no queue bound); cleared by the next routed one.
    unroutable: AtomicBool,
    /// Milliseconds since `started` of the last successful poll; -1 before the first.
    last_poll_ms: AtomicI64,
    /// Milliseconds since `started` of the last poll the API refused (401/403); -1 if none since
    /// the last success. Stale polls do not fail liveness while refusals are recent — a restart
    /// cannot fix a refused token (the kubelet's rotation can, and the file is re-read) — but a
    /// loop that stops polling at all still does.
    refused_ms: AtomicI64,
    started: Instant,
}

impl Health {
    fn now_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
    fn polled(&self) {
        self.last_poll_ms.store(self.now_ms(), Ordering::Relaxed);
    }
    fn since(&self, at: &AtomicI64) -> Option<Duration> {
        let ms = at.load(Ordering::Relaxed);
        (ms >= 0).then(|| self.started.elapsed().saturating_sub(Duration::from_millis(ms as u64)))
    }
    fn since_last_poll(&self) -> Option<Duration> {
        self.since(&self.last_poll_ms)
    }
}

/// Runs the sentinel until `shutdown` is cancelled. `cfg` is validated already
/// ([`hyperfleet_common::process::start`]).
pub async fn run(mut cfg: SentinelConfig, shutdown: CancellationToken) -> Result<(), Error> {
    cfg.apply_seed_keys();
    let prometheus = ops::install_metrics_recorder().map_err(Error::Start)?;
    observe::describe_metrics();
    let health = Arc::new(Health {
        broker_up: AtomicBool::new(false),
        unroutable: AtomicBool::new(false),
        last_poll_ms: AtomicI64::new(-1),
        refused_ms: AtomicI64::new(-1),
        started: Instant::now(),
    });
    let h = health.clone();
    let unroutable = format!(
        "events are unroutable: no queue is bound to exchange {} for routing key {}",
        cfg.broker.exchange,
        cfg.routing_key()
    );
    let ready: ops::ReadinessCheck = Arc::new(move || {
        let (broker, polled) = (h.broker_up.load(Ordering::Relaxed), h.since_last_poll().is_some());
        let unroutable = h.unroutable.load(Ordering::Relaxed).then(|| unroutable.clone());
        Box::pin(async move {
            match (broker, polled, unroutable) {
                (true, true, None) => Ok(()),
                (false, _, _) => Err("broker not connected".into()),
                (_, false, _) => Err("no successful poll yet".into()),
                (_, _, Some(why)) => Err(why),
            }
        })
    });
    let h = health.clone();
    let stale_after = cfg.poll_interval * 3;
    let live: ops::ReadinessCheck = Arc::new(move || {
        let since = h.since_last_poll();
        let refused = h.since(&h.refused_ms).is_some_and(|d| d <= stale_after);
        Box::pin(async move {
            match since {
                Some(d) if d > stale_after && !refused => {
                    Err(format!("poll stale: last successful poll {}s ago", d.as_secs()))
                }
                _ => Ok(()),
            }
        })
    });
    ops::serve(&cfg.health, &cfg.metrics, ops::Probes::ready(ready).live(live), prometheus, shutdown.clone())
        .await
        .map_err(|e| Error::Start(e.to_string()))?;

    let creds = cfg.hyperfleet_api.credentials().map_err(Error::Start)?;
    let api = Arc::new(
        ApiClient::new("sentinel", &cfg.hyperfleet_api.base_url, cfg.hyperfleet_api.timeout, creds)
            .map_err(Error::Start)?,
    );
    metrics::counter!("hyperfleet_sentinel_api_auth_failures_total", &metric_labels(&cfg)).increment(0);
    metrics::counter!("hyperfleet_sentinel_unroutable_total", &metric_labels(&cfg)).increment(0);
    let campaign = shutdown.child_token();
    let leadership = leader::start(&cfg.leader_election, campaign.clone()).await.map_err(Error::Start)?;
    let mut sentinel = Sentinel {
        cfg,
        api: api.clone(),
        feed_start: None,
        publisher: None,
        published: Announced::default(),
        health,
        leadership,
    };
    tracing::info!(
        resource_type = %sentinel.cfg.resource_type,
        selector = %sentinel.cfg.selector_label(),
        api = %sentinel.cfg.hyperfleet_api.base_url,
        api_token_file = ?sentinel.api.credentials().token_path(),
        broker = %sentinel.cfg.broker.endpoint(),
        exchange = %sentinel.cfg.broker.exchange,
        poll_interval = ?sentinel.cfg.poll_interval,
        "sentinel started"
    );
    let (changes_tx, mut changes) = tokio::sync::mpsc::channel(1024);
    if sentinel.cfg.watch {
        let (start_tx, start_rx) = tokio::sync::oneshot::channel();
        sentinel.feed_start = Some(start_tx);
        watch::spawn(&sentinel.cfg, api, start_rx, changes_tx, shutdown.clone());
    }
    let mut tick = tokio::time::interval(sentinel.cfg.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = tick.tick() => {
                tokio::select! {
                    _ = shutdown.cancelled() => break Ok(()),
                    res = sentinel.pass() => if let Err(e) = res { break Err(e) },
                }
            }
            Some(change) = changes.recv() => {
                tokio::select! {
                    _ = shutdown.cancelled() => break Ok(()),
                    res = sentinel.react(change) => if let Err(e) = res { break Err(e) },
                }
            }
        }
    };
    if let Some(p) = sentinel.publisher.take() {
        p.close().await;
    }
    // Also after a fatal error: the lease goes at once rather than after lease_duration.
    campaign.cancel();
    sentinel.leadership.stopped(Duration::from_secs(5)).await;
    tracing::info!("sentinel stopped");
    result
}

/// The last confirmed event per resource id, pruned to the resources seen in the last pass; keyed
/// by the id's 16 bytes (40 bytes an entry, so 100 000 resources take about 5 MiB). An id that is
/// not a UUID (the API makes UUIDs) is not remembered: it is announced at every pass.
#[derive(Default)]
struct Announced(HashMap<uuid::Uuid, Published>);

impl Announced {
    /// `id`'s key, when `id` is remembered.
    fn key(&self, id: &str) -> Option<uuid::Uuid> {
        id.parse().ok().filter(|k| self.0.contains_key(k))
    }
    fn get(&self, id: &str) -> Option<Published> {
        self.0.get(&id.parse().ok()?).copied()
    }
    fn insert(&mut self, id: &str, published: Published) {
        if let Ok(key) = id.parse() {
            self.0.insert(key, published);
        }
    }
    fn remove(&mut self, id: &str) {
        if let Ok(key) = id.parse::<uuid::Uuid>() {
            self.0.remove(&key);
        }
    }
    /// Forgets every resource not in `seen` (the keys a whole pass saw).
    fn keep_only(&mut self, seen: &HashSet<uuid::Uuid>) {
        self.0.retain(|id, _| seen.contains(id));
    }
}

struct Sentinel {
    cfg: SentinelConfig,
    /// The API with the bearer token (if configured); shared with the feed.
    api: Arc<ApiClient>,
    /// Hands the first successful list's change-feed position to the feed, which waits for it.
    feed_start: Option<tokio::sync::oneshot::Sender<Option<String>>>,
    publisher: Option<Publisher>,
    /// The last confirmed event per resource id; pruned to the resources seen in the last pass.
    published: Announced,
    health: Arc<Health>,
    leadership: leader::Leadership,
}

/// Attempts to publish one pass's events before leaving the rest to the next pass.
const PUBLISH_ATTEMPTS: u32 = 4;

impl Sentinel {
    fn labels(&self) -> [(&'static str, String); 2] {
        metric_labels(&self.cfg)
    }

    /// One pass: list, decide, publish — page by page, the next page fetched while this one's
    /// events are published, so the pass holds two pages at most whatever the fleet's size. Only a
    /// permanent broker error (an exchange of another type) ends the sentinel; everything else is
    /// retried here or at the next pass.
    async fn pass(&mut self) -> Result<(), Error> {
        let labels = self.labels();
        let started = Instant::now();
        // Connect (or reconnect) up front, so readiness reflects the broker even on idle passes.
        self.connected_publisher().await?;
        let now = Utc::now();
        let api = self.api.clone();
        let cfg = self.cfg.clone();
        let mut pages = Pages::new(&cfg);
        // Ids of `published` seen in this pass: the others were deleted.
        let mut seen: HashSet<uuid::Uuid> = HashSet::new();
        let (mut pending, mut leading) = (0usize, false);
        // Set once a page's events could not all be published (after the retries): the rest of the
        // pass is listed but not published, and the next pass decides again.
        let mut held = false;
        let mut next = pages.next(&api, &cfg).await;
        loop {
            let page = match next {
                Ok(Some(page)) => page,
                Ok(None) => break,
                Err(e) => {
                    metrics::counter!("hyperfleet_sentinel_api_errors_total", &labels).increment(1);
                    metrics::counter!("hyperfleet_sentinel_api_errors_by_type_total", "error_type" => e.metric_label())
                        .increment(1);
                    if matches!(e, Error::Api { auth: true, .. }) {
                        self.health.refused_ms.store(self.health.now_ms(), Ordering::Relaxed);
                        // Warned about once per streak by `note_refusal`; the next poll tries again.
                        tracing::debug!(error = %e, "poll refused");
                    } else {
                        tracing::warn!(error = %e, "poll failed");
                    }
                    return Ok(());
                }
            };
            // The first successful page starts the change feed from its position.
            if let Some(start) = self.feed_start.take() {
                let _ = start.send(pages.version.clone());
            }
            leading = self.leadership.is_leader();
            if !leading {
                // A follower keeps polling (and stays ready) but leaves publishing to the leader.
                next = pages.next(&api, &cfg).await;
                continue;
            }
            let due = self.due(&page, now);
            pending += due.len();
            if held || due.is_empty() {
                next = pages.next(&api, &cfg).await;
            } else {
                let (fetched, delivered) = tokio::join!(pages.next(&api, &cfg), self.deliver(due, now));
                held = delivered? > 0;
                next = fetched;
            }
            // After the delivery: what it published is remembered too.
            seen.extend(page.iter().filter_map(|r| self.published.key(&r.id)));
        }
        self.health.polled();
        self.health.refused_ms.store(-1, Ordering::Relaxed);
        metrics::gauge!("hyperfleet_sentinel_last_successful_poll_timestamp_seconds", &labels)
            .set(now.timestamp_millis() as f64 / 1000.0);
        if leading {
            self.published.keep_only(&seen);
            metrics::gauge!("hyperfleet_sentinel_pending_resources", &labels).set(pending as f64);
            if pending == 0 {
                // Nothing left to publish (what was unroutable was deleted, say): nothing is unroutable.
                self.health.unroutable.store(false, Ordering::Relaxed);
            }
        } else {
            self.published = Announced::default();
            self.health.unroutable.store(false, Ordering::Relaxed);
        }
        metrics::histogram!("hyperfleet_sentinel_poll_duration_seconds", &labels)
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// The resources that need an event now, with the reason; the others are counted as skipped.
    fn due<'r>(&self, resources: &'r [Resource], now: DateTime<Utc>) -> Vec<(&'r Resource, Reason)> {
        let labels = self.labels();
        let max = MaxAge { not_ready: self.cfg.max_age_not_ready, ready: self.cfg.max_age_ready };
        let mut due = Vec::new();
        for r in resources {
            match decision::decide(&r.state(), self.published.get(&r.id), now, max) {
                Ok(reason) => due.push((r, reason)),
                Err(skip) => {
                    metrics::counter!("hyperfleet_sentinel_resources_skipped_total",
                        "resource_type" => labels[0].1.clone(), "resource_selector" => labels[1].1.clone(),
                        "reason" => skip.as_str())
                    .increment(1);
                }
            }
        }
        due
    }

    /// Publishes `due`, retrying failures (reconnecting, with backoff) a few times; what still
    /// fails is left for the next pass, which decides again. Returns how many were left.
    async fn deliver(&mut self, mut due: Vec<(&Resource, Reason)>, now: DateTime<Utc>) -> Result<usize, Error> {
        let labels = self.labels();
        let mut backoff = Duration::from_millis(500);
        for attempt in 1..=PUBLISH_ATTEMPTS {
            if due.is_empty() {
                break;
            }
            if attempt > 1 {
                metrics::counter!("hyperfleet_sentinel_publish_retries_total", &labels).increment(due.len() as u64);
                tokio::time::sleep(hyperfleet_common::process::jitter(backoff)).await;
                backoff *= 2;
            }
            let routing_key = self.cfg.routing_key();
            let leadership = self.leadership.clone();
            // Generations announced before: their re-announcements start traces of their own.
            let announced: std::collections::HashSet<String> = due
                .iter()
                .filter(|(r, _)| self.published.get(&r.id).is_some_and(|p| p.generation == r.generation))
                .map(|(r, _)| r.id.clone())
                .collect();
            let Some(publisher) = self.connected_publisher().await? else { continue };
            let results = publisher.publish_all(&due, &routing_key, &leadership, &announced).await;
            let mut failed = Vec::new();
            let mut broken = false;
            for ((r, reason), result) in due.into_iter().zip(results) {
                match result {
                    Ok(event_id) => {
                        if self.health.unroutable.swap(false, Ordering::Relaxed) {
                            tracing::info!(exchange = %self.cfg.broker.exchange, %routing_key, "events are routed again");
                        }
                        self.published.insert(&r.id, Published { generation: r.generation, at: now });
                        metrics::counter!("hyperfleet_sentinel_events_published_total",
                            "resource_type" => labels[0].1.clone(), "resource_selector" => labels[1].1.clone(),
                            "reason" => reason.as_str())
                        .increment(1);
                        tracing::info!(resource_id = %r.id, generation = r.generation, reason = reason.as_str(), %event_id, "event published");
                    }
                    Err(e @ Error::Unroutable { .. }) => {
                        // Not published: left due, retried like a failure, but the connection is fine.
                        metrics::counter!("hyperfleet_sentinel_unroutable_total", &labels).increment(1);
                        if !self.health.unroutable.swap(true, Ordering::Relaxed) {
                            tracing::warn!(exchange = %self.cfg.broker.exchange, %routing_key, error = %e,
                                "events are unroutable: no queue is bound for them; retrying (not logged again until one is routed)");
                        }
                        failed.push((r, reason));
                    }
                    Err(e) => {
                        metrics::counter!("hyperfleet_sentinel_broker_errors_total", &labels).increment(1);
                        tracing::warn!(resource_id = %r.id, attempt, error = %e, "publish failed; will retry");
                        failed.push((r, reason));
                        broken = true;
                    }
                }
            }
            if broken {
                self.drop_publisher().await;
            }
            due = failed;
        }
        if !due.is_empty() {
            if self.health.unroutable.load(Ordering::Relaxed) {
                tracing::debug!(unpublished = due.len(), "unroutable events left for the next pass");
            } else {
                tracing::warn!(unpublished = due.len(), "events left for the next pass");
            }
        }
        Ok(due.len())
    }

    /// A change from the API's feed: decide about that one resource at once.
    async fn react(&mut self, change: watch::Change) -> Result<(), Error> {
        if !self.leadership.is_leader() {
            return Ok(());
        }
        match change {
            watch::Change::Gone(id) => {
                self.published.remove(&id);
                Ok(())
            }
            watch::Change::Changed(r) => {
                let now = Utc::now();
                let one = [*r];
                let due = self.due(&one, now);
                self.deliver(due, now).await.map(|_| ())
            }
        }
    }

    /// The open publisher, connecting when needed; `None` when the broker is unreachable.
    async fn connected_publisher(&mut self) -> Result<Option<&Publisher>, Error> {
        if self.publisher.as_ref().is_none_or(|p| !p.is_open()) {
            self.health.broker_up.store(false, Ordering::Relaxed);
            match Publisher::open(&self.cfg).await {
                Ok(p) => {
                    tracing::info!(broker = %self.cfg.broker.endpoint(), "broker connected");
                    self.health.broker_up.store(true, Ordering::Relaxed);
                    self.publisher = Some(p);
                }
                Err(Error::Broker(e)) if e.is_permanent() => return Err(Error::Broker(e)),
                Err(e) => {
                    metrics::counter!("hyperfleet_sentinel_broker_errors_total", &self.labels()).increment(1);
                    tracing::warn!(error = %e, "broker unavailable");
                    return Ok(None);
                }
            }
        }
        Ok(self.publisher.as_ref())
    }

    async fn drop_publisher(&mut self) {
        self.health.broker_up.store(false, Ordering::Relaxed);
        if let Some(p) = self.publisher.take() {
            p.close().await;
        }
    }
}

/// The labels of the sentinel's metrics.
fn metric_labels(cfg: &SentinelConfig) -> [(&'static str, String); 2] {
    [("resource_type", cfg.resource_type.clone()), ("resource_selector", cfg.selector_label())]
}

/// A 401 or 403 from the API (a list page or the change feed): counted each time, warned about
/// once until a request is accepted again (the client reads the token file again at the next
/// request). Other failures are not refusals: nothing to do.
fn note_refusal(api: &ApiClient, cfg: &SentinelConfig, request: &str, e: &CallError) {
    let Failure::Refused { status, first, detail } = &e.failure else { return };
    metrics::counter!("hyperfleet_sentinel_api_auth_failures_total", &metric_labels(cfg)).increment(1);
    if *first {
        tracing::warn!(
            request,
            status,
            reason = %detail,
            token_file = ?api.credentials().token_path(),
            "the API refuses the sentinel's credentials; retrying (not logged again until a request succeeds)"
        );
    } else {
        tracing::debug!(request, status, reason = %detail, "the API still refuses the sentinel's credentials");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_are_remembered_by_uuid_and_others_are_not() {
        let mut a = Announced::default();
        let id = "01a24efc-7b6c-767f-ab17-2dd846530c19";
        let p = Published { generation: 2, at: Utc::now() };
        a.insert(id, p);
        assert_eq!(a.get(id).map(|p| p.generation), Some(2));
        assert_eq!(a.key(id), id.parse().ok());
        a.insert("not-a-uuid", p);
        assert!(a.get("not-a-uuid").is_none() && a.key("not-a-uuid").is_none(), "announced every pass instead");
        a.remove(id);
        assert!(a.get(id).is_none() && a.0.is_empty());
        assert_eq!(std::mem::size_of::<(uuid::Uuid, Published)>(), 40, "the 40 bytes the docs promise");
    }

    #[test]
    fn list_items_carry_what_the_decision_needs() {
        let item = serde_json::json!({
            "id": "a", "kind": "Cluster", "href": "/api/hyperfleet/v1/clusters/a", "generation": 2,
            "name": "x", "spec": {}, "created_time": "2026-11-23T10:00:00.000001Z",
            "status": {"conditions": [{"type": "Reconciled", "status": "False", "observed_generation": 2,
                "reason": "R", "created_time": "2026-11-23T10:00:00Z", "last_updated_time": "2026-11-23T10:00:05Z",
                "last_transition_time": "2026-11-23T10:00:05Z"}]}
        });
        let r: Resource = serde_json::from_value(item).expect("a list item");
        let state = r.state();
        assert_eq!((state.generation, state.conditions.len()), (2, 1));
        assert_eq!(state.conditions[0].last_updated_time.map(|t| t.timestamp()), Some(1_795_428_005));
    }

    #[test]
    fn events_carry_the_resource_and_a_nodepools_owner() {
        let item = serde_json::json!({
            "id": "np-1", "kind": "NodePool", "href": "/api/hyperfleet/v1/clusters/c-1/nodepools/np-1", "generation": 3,
            "owner_references": {"id": "c-1", "kind": "Cluster", "href": "/api/hyperfleet/v1/clusters/c-1"}
        });
        let r: Resource = serde_json::from_value(item).expect("item");
        let event = serde_json::to_value(publisher::event_for(&r).expect("event")).expect("json");
        assert_eq!(event["type"], "com.redhat.hyperfleet.nodepool.reconcile");
        assert_eq!(event["source"], "hyperfleet-sentinel");
        assert_eq!(event["specversion"], "1.0");
        assert!(event["time"].is_string());
        let id = event["id"].as_str().and_then(|s| uuid::Uuid::parse_str(s).ok()).expect("uuid id");
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(event["data"]["generation"], 3);
        assert_eq!(event["data"]["owner_references"]["id"], "c-1");
        assert_eq!(event["data"]["href"], "/api/hyperfleet/v1/clusters/c-1/nodepools/np-1");
    }
}

hyperfleet_common::readme_documents_every_env_var!(crate::SentinelConfig);
