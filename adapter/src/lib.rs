//! HyperFleet landing-zone adapter: turns reconcile events into Kubernetes objects.
//!
//! It consumes CloudEvents from a durable queue bound to the sentinel's exchange, reads the cluster
//! from the API, server-side applies a Namespace named after the cluster id and a ServiceAccount in
//! it, reports `Applied`/`Available`/`Health`/`Finalized` back to the API at the cluster's
//! generation, and acknowledges the event only after that succeeded. For a cluster being deleted it
//! removes the Namespace and reports `Finalized=True` once it is gone, so the API can delete the
//! cluster. Messages that are not reconcile
//! CloudEvents are moved to `<queue>.dead-letter` with the reason in a header (never redelivered in
//! a loop); transient failures are requeued after a short pause. Every step is idempotent, so a
//! redelivery after a crash is harmless.
#![forbid(unsafe_code)]

pub mod config;
pub mod landing_zone;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use hyperfleet_common::{
    broker::BrokerError,
    cloudevent::{self, EventError},
    ops,
    process::ServiceConfig,
};
use kube::Client;
use lapin::{
    BasicProperties, Channel, Connection,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use tokio_util::sync::CancellationToken;

pub use config::AdapterConfig;
use landing_zone::ClusterView;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("kubernetes client: {0}")]
    KubeConfig(String),
    #[error("{0}")]
    Start(String),
}

impl From<lapin::Error> for Error {
    fn from(e: lapin::Error) -> Self {
        Error::Broker(BrokerError::from(e))
    }
}

/// What happened to one delivery.
#[derive(Debug)]
enum Outcome {
    /// Work done (or nothing to do): acknowledge.
    Done(&'static str),
    /// Not a reconcile event: dead-letter, never retry.
    Poison(EventError),
    /// Could not finish now: requeue.
    Retry(String),
}

struct Worker {
    cfg: AdapterConfig,
    kube: Client,
    http: reqwest::Client,
}

/// Runs the adapter until `shutdown` is cancelled; in-flight events finish first.
pub async fn run(cfg: AdapterConfig, shutdown: CancellationToken) -> Result<(), Error> {
    cfg.validate().map_err(Error::Start)?;
    let prometheus = ops::install_metrics_recorder().map_err(Error::Start)?;
    let kube = kube_client(&cfg).await?;
    let consuming = Arc::new(AtomicBool::new(false));
    let (flag, probe) = (consuming.clone(), kube.clone());
    let check: ops::ReadinessCheck = Arc::new(move || {
        let (up, client) = (flag.load(Ordering::Relaxed), probe.clone());
        Box::pin(async move {
            if !up {
                return Err("not consuming from the broker".into());
            }
            client.apiserver_version().await.map(|_| ()).map_err(|e| format!("kubernetes unreachable: {e}"))
        })
    });
    ops::serve(&cfg.health, &cfg.metrics, ops::Probes::ready(check), prometheus, shutdown.clone())
        .await
        .map_err(|e| Error::Start(e.to_string()))?;
    let http = reqwest::Client::builder()
        .timeout(cfg.hyperfleet_api.timeout)
        .user_agent(concat!("hyperfleet-adapter/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Start(format!("HTTP client: {e}")))?;
    let worker = Arc::new(Worker { cfg, kube, http });
    tracing::info!(
        adapter = %worker.cfg.name,
        broker = %worker.cfg.broker.endpoint(),
        queue = %worker.cfg.queue,
        exchange = %worker.cfg.broker.exchange,
        "adapter started"
    );

    let mut backoff = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        match consume(&worker, &consuming, &shutdown).await {
            Ok(()) => backoff = Duration::from_millis(500),
            Err(e) => {
                metrics::counter!("hyperfleet_adapter_broker_errors_total").increment(1);
                tracing::warn!(error = %e, retry_in = ?backoff, "broker connection lost or refused");
            }
        }
        consuming.store(false, Ordering::Relaxed);
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    tracing::info!("adapter stopped");
    Ok(())
}

async fn kube_client(cfg: &AdapterConfig) -> Result<Client, Error> {
    let config = match &cfg.kubernetes.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::KubeConfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| Error::KubeConfig(e.to_string()))?
        }
        None => kube::Config::infer().await.map_err(|e| Error::KubeConfig(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| Error::KubeConfig(e.to_string()))
}

/// Declares the topology and consumes until the connection drops or shutdown.
async fn consume(worker: &Arc<Worker>, consuming: &AtomicBool, shutdown: &CancellationToken) -> Result<(), Error> {
    let cfg = &worker.cfg;
    let conn = cfg.broker.connect(&format!("hyperfleet-adapter-{}", cfg.name)).await?;
    let channel = conn.create_channel().await?;
    cfg.broker.declare_exchange(&channel).await?;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(dead_letter_queue(cfg).as_str().into(), durable, FieldTable::default()).await?;
    channel.queue_declare(cfg.queue.as_str().into(), durable, FieldTable::default()).await?;
    channel
        .queue_bind(
            cfg.queue.as_str().into(),
            cfg.broker.exchange.as_str().into(),
            cfg.binding_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Dead letters go out on their own confirm-mode channel: a poison message is acknowledged only
    // after the broker has confirmed its dead-letter copy.
    let dlq = conn.create_channel().await?;
    dlq.confirm_select(ConfirmSelectOptions::default()).await?;
    channel.basic_qos(cfg.prefetch, BasicQosOptions::default()).await?;
    let tag = format!("{}-{}", cfg.queue, uuid::Uuid::new_v4());
    let consumer = channel
        .basic_consume(
            cfg.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    consuming.store(true, Ordering::Relaxed);
    tracing::info!(queue = %cfg.queue, consumer_tag = %tag, prefetch = cfg.prefetch, "consuming");

    let dlq = &dlq;
    consumer
        .take_until(shutdown.cancelled())
        .for_each_concurrent(usize::from(cfg.prefetch), |delivery| async move {
            match delivery {
                Ok(d) => handle(worker, dlq, d).await,
                Err(e) => tracing::warn!(error = %e, "delivery error"),
            }
        })
        .await;
    close(conn, channel).await;
    Ok(())
}

async fn close(conn: Connection, channel: Channel) {
    let _ = channel.close(200, "adapter stopping".into()).await;
    let _ = conn.close(200, "adapter stopping".into()).await;
}

fn dead_letter_queue(cfg: &AdapterConfig) -> String {
    format!("{}.dead-letter", cfg.queue)
}

async fn handle(worker: &Worker, dlq: &Channel, delivery: Delivery) {
    let started = std::time::Instant::now();
    let outcome = process(worker, &delivery).await;
    let label = match &outcome {
        Outcome::Done(what) => {
            if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                tracing::warn!(error = %e, "ack failed; the event will be redelivered");
            }
            *what
        }
        Outcome::Poison(reason) => {
            tracing::warn!(reason = reason.label(), error = %reason, "dead-lettering a message that is not a reconcile event");
            metrics::counter!("hyperfleet_adapter_dead_letters_total", "reason" => reason.label()).increment(1);
            match dead_letter(dlq, &worker.cfg, &delivery, reason).await {
                Ok(()) => {
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot dead-letter; requeueing");
                    pause().await;
                    let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                }
            }
            "dead_lettered"
        }
        Outcome::Retry(why) => {
            tracing::warn!(error = %why, "event failed; requeueing");
            pause().await;
            let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
            "retried"
        }
    };
    metrics::counter!("hyperfleet_adapter_events_processed_total", "status" => label).increment(1);
    metrics::histogram!("hyperfleet_adapter_event_processing_duration_seconds").record(started.elapsed().as_secs_f64());
}

/// A pause before a requeue so a persistent failure does not spin.
async fn pause() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn process(worker: &Worker, delivery: &Delivery) -> Outcome {
    let content_type = delivery.properties.content_type().as_ref().map(|s| s.as_str());
    let data = match cloudevent::decode(content_type, &delivery.data).and_then(|e| cloudevent::reconcile_data(&e)) {
        Ok(d) => d,
        Err(e) => return Outcome::Poison(e),
    };
    if data.kind != "Cluster" {
        return Outcome::Done("skipped");
    }
    let base = worker.cfg.hyperfleet_api.base_url.trim_end_matches('/');
    let url = format!("{base}/api/hyperfleet/v1/clusters/{}", data.id);
    let resp = match worker.http.get(&url).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Retry(format!("GET {url}: {e}")),
    };
    match resp.status() {
        s if s == reqwest::StatusCode::NOT_FOUND => {
            tracing::info!(cluster_id = %data.id, "cluster is gone; nothing to do");
            return Outcome::Done("skipped");
        }
        s if !s.is_success() => return Outcome::Retry(format!("GET {url}: HTTP {s}")),
        _ => {}
    }
    let cluster: ClusterView = match resp.json().await {
        Ok(c) => c,
        Err(e) => return Outcome::Retry(format!("GET {url}: bad body: {e}")),
    };
    let k = &worker.cfg.kubernetes;
    let report = if cluster.deleted_time.is_some() {
        match landing_zone::remove(&worker.kube, &cluster, worker.cfg.kubernetes.deletion_timeout).await {
            Ok(true) => {
                tracing::info!(cluster_id = %cluster.id, "landing zone removed");
                Report::finalized(&cluster)
            }
            Ok(false) => Report::cleanup_in_progress(&cluster),
            Err(e) => return Outcome::Retry(format!("remove landing zone for {}: {e}", cluster.id)),
        }
    } else {
        match landing_zone::apply(&worker.kube, &cluster, &k.field_manager, &k.service_account).await {
            Ok(()) => {
                tracing::info!(cluster_id = %cluster.id, generation = cluster.generation, "landing zone applied");
                Report::applied(&cluster, &k.service_account)
            }
            Err(e) => return Outcome::Retry(format!("apply landing zone for {}: {e}", cluster.id)),
        }
    };
    match put_status(worker, &cluster, &report).await {
        Ok(()) => Outcome::Done("success"),
        Err(e) => Outcome::Retry(e),
    }
}

/// The adapter's status report (reference §5.5): Applied, Available, Health, Finalized.
struct Report {
    conditions: [(&'static str, &'static str, &'static str, String); 4],
}

impl Report {
    fn applied(cluster: &ClusterView, sa: &str) -> Self {
        let objects = format!("Namespace {} and ServiceAccount {sa}", cluster.id);
        Report {
            conditions: [
                ("Applied", "True", "ResourcesApplied", format!("{objects} applied")),
                ("Available", "True", "LandingZoneReady", format!("{objects} exist")),
                ("Health", "True", "Healthy", "landing zone reconciled without errors".into()),
                ("Finalized", "False", "NotDeleting", "the cluster is not being deleted".into()),
            ],
        }
    }
    fn finalized(cluster: &ClusterView) -> Self {
        Report {
            conditions: [
                ("Applied", "False", "ResourcesDeleted", format!("Namespace {} deleted", cluster.id)),
                ("Available", "False", "Deleted", "the landing zone has been removed".into()),
                ("Health", "True", "Healthy", "landing zone removed without errors".into()),
                ("Finalized", "True", "CleanupConfirmed", format!("Namespace {} is gone", cluster.id)),
            ],
        }
    }
    fn cleanup_in_progress(cluster: &ClusterView) -> Self {
        Report {
            conditions: [
                ("Applied", "True", "DeletionRequested", format!("Namespace {} is terminating", cluster.id)),
                ("Available", "False", "Deleting", "the landing zone is being removed".into()),
                ("Health", "True", "Healthy", "waiting for the namespace to terminate".into()),
                ("Finalized", "False", "CleanupInProgress", format!("Namespace {} still exists", cluster.id)),
            ],
        }
    }
}

/// PUTs the report at the cluster's generation. 201 (stored), 204 (discarded as stale) and 404
/// (the cluster is gone) all end the work; anything else is retried.
async fn put_status(worker: &Worker, cluster: &ClusterView, report: &Report) -> Result<(), String> {
    let base = worker.cfg.hyperfleet_api.base_url.trim_end_matches('/');
    let url = format!("{base}/api/hyperfleet/v1/clusters/{}/statuses", cluster.id);
    let conditions: Vec<serde_json::Value> = report
        .conditions
        .iter()
        .map(|(kind, status, reason, message)| {
            serde_json::json!({"type": kind, "status": status, "reason": reason, "message": message})
        })
        .collect();
    let body = serde_json::json!({
        "adapter": worker.cfg.name,
        "observed_generation": cluster.generation,
        "observed_time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "conditions": conditions,
        "data": {"namespace": cluster.id, "service_account": worker.cfg.kubernetes.service_account},
    });
    let resp = worker.http.put(&url).json(&body).send().await.map_err(|e| format!("PUT {url}: {e}"))?;
    match resp.status().as_u16() {
        201 | 204 | 404 => Ok(()),
        code => Err(format!("PUT {url}: HTTP {code}: {}", resp.text().await.unwrap_or_default())),
    }
}

async fn dead_letter(
    dlq: &Channel,
    cfg: &AdapterConfig,
    delivery: &Delivery,
    reason: &EventError,
) -> Result<(), lapin::Error> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert("x-hyperfleet-dead-letter-reason".into(), AMQPValue::LongString(reason.to_string().into()));
    headers.insert("x-hyperfleet-dead-letter-code".into(), AMQPValue::LongString(reason.label().into()));
    headers.insert("x-hyperfleet-original-exchange".into(), AMQPValue::LongString(delivery.exchange.as_str().into()));
    headers.insert(
        "x-hyperfleet-original-routing-key".into(),
        AMQPValue::LongString(delivery.routing_key.as_str().into()),
    );
    let mut props = BasicProperties::default().with_headers(headers).with_delivery_mode(2);
    if let Some(ct) = delivery.properties.content_type() {
        props = props.with_content_type(ct.clone());
    }
    dlq.basic_publish(
        "".into(),
        dead_letter_queue(cfg).as_str().into(),
        BasicPublishOptions::default(),
        &delivery.data,
        props,
    )
    .await?
    .await?;
    Ok(())
}

#[cfg(test)]
mod docs_tests {
    /// The README's configuration section lists every environment variable this service reads.
    #[test]
    fn readme_documents_every_env_var() {
        let missing =
            hyperfleet_common::process::undocumented_env_vars::<crate::AdapterConfig>(include_str!("../../README.md"));
        assert!(missing.is_empty(), "README.md does not document: {missing:?}");
    }
}
