//! HyperFleet adapter: turns reconcile events into Kubernetes objects.
//!
//! It consumes CloudEvents from a durable queue bound to the sentinel's exchange, reads the resource
//! from the API, server-side applies the objects of its task ([`task`]; the landing-zone task — a
//! Namespace named after the cluster id and a ServiceAccount in it — is built in), and reports
//! `Applied`/`Available`/`Health`/`Finalized` back to the API at the resource's generation before
//! acknowledging the event. `Available` is True once every object's `ready:` rule holds (a Job's
//! `Complete`, a Deployment's `Available`, a field); until then it is False with what is awaited,
//! and the watch reports the change when it happens. For a resource being deleted it asks for the objects to be deleted; the
//! watch of what it owns ([`watch`]) reports `Finalized=True` once they are gone, so the API can
//! delete the resource, and restores objects deleted or changed out of band.
//!
//! Events for one resource are worked on one at a time (`PerResource`), each reading the resource
//! afresh, so an older event cannot undo what a newer one applied; an apply whose resource was
//! deleted meanwhile (the report gets 404) is undone. Transient failures are retried
//! in process with backoff; a failure that outlasts the retries is
//! reported as `Health=False` and acknowledged — the sentinel re-announces resources that are not
//! reconciled, which drives the next try. Messages that are not reconcile CloudEvents go to
//! `<queue>.dead-letter` with the reason in a header.
//!
//! API requests carry the bearer token of `hyperfleet_api.token_file` when one is configured. An
//! API that refuses it (401/403) is warned about once per streak and counted, and the event is put
//! back on the queue (after the retries and a pause) rather than acknowledged or dead-lettered, so
//! it is worked on as soon as the token is accepted. Every step is idempotent, so a redelivery
//! after a crash is harmless.
#![forbid(unsafe_code)]

pub mod config;
pub mod consumer;
pub mod observe;
pub mod report;
pub mod task;
mod watch;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use hyperfleet_common::{
    api_client::{self, ApiClient, CallError},
    broker::BrokerError,
    cloudevent::{self, EventError},
    ops, telemetry,
};
use kube::Client;
use lapin::{message::Delivery, types::AMQPValue};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::AdapterConfig;
use consumer::consume;
use report::{Report, put_status};
use task::{Objects, ResourceView, Task, Vars};

/// Everything that goes wrong in the adapter, from start-up to one event's step;
/// [`Error::metric_label`] names it in metrics (`error_type`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A start-up step that failed; the message names what to fix.
    #[error("{0}")]
    Start(String),
    #[error("kubernetes client: {0}")]
    KubeConfig(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A Kubernetes call of a step (`apply`, `delete`).
    #[error("{step}: {source}")]
    Kube {
        step: &'static str,
        #[source]
        source: kube::Error,
    },
    /// A publish the broker returned or did not confirm (a dead-letter copy).
    #[error("{0}")]
    Unroutable(String),
    /// An API call (a refusal is counted and warned about once per streak where it is made, see
    /// [`api_error`]).
    #[error(transparent)]
    Api(#[from] CallError),
}

impl From<lapin::Error> for Error {
    fn from(e: lapin::Error) -> Self {
        Error::Broker(BrokerError::from(e))
    }
}

impl Error {
    /// A short, stable name for the `error_type` label of `hyperfleet_adapter_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Start(_) => "start_error",
            Error::KubeConfig(_) => "kube_config_error",
            Error::Broker(_) => "broker_error",
            Error::Kube { .. } => "kubernetes_error",
            Error::Unroutable(_) => "unroutable",
            Error::Api(e) if e.is_refused() => "auth_error",
            Error::Api(CallError { failure: api_client::Failure::Token, .. }) => "token_error",
            Error::Api(_) => "api_error",
        }
    }

    /// Worth retrying in process: Kubernetes 5xx, 429, conflicts and connection errors; API network
    /// errors, 5xx, 408 and 429; and whatever [`Error::requeues`] the event.
    fn is_transient(&self) -> bool {
        match self {
            Error::Kube { source: kube::Error::Api(s), .. } => s.code >= 500 || s.code == 429 || s.code == 409,
            Error::Kube { .. } => true,
            Error::Api(e) => e.is_retryable() || self.requeues(),
            _ => false,
        }
    }

    /// Not the event's fault — the API refused the adapter's credentials (401/403) or the token
    /// file cannot be read: put the event back after the retries and a pause, to be worked on once
    /// they work, rather than acknowledging it.
    fn requeues(&self) -> bool {
        matches!(self, Error::Api(e) if e.is_refused() || e.failure == api_client::Failure::Token)
    }
}

/// What happened to one delivery.
#[derive(Debug)]
enum Outcome {
    /// Handled — done, nothing to do, or a failure reported to the API: acknowledge. The label is
    /// the `status` of `hyperfleet_adapter_events_processed_total`.
    Done(&'static str),
    /// Not a reconcile event: dead-letter, never retry.
    Poison(EventError),
    /// See [`Error::requeues`].
    Requeue,
}

struct Worker {
    cfg: AdapterConfig,
    task: Task,
    objects: Objects,
    /// The API with the bearer token (if configured).
    api: ApiClient,
    /// One event per resource at a time.
    turns: PerResource,
    /// The resources worked on, for the watch of their objects.
    known: watch::Known,
}

impl Worker {
    /// The task's objects for `resource`, marked as this adapter's; `Err` names a template
    /// variable the resource has no value for.
    /// Remembers what the report about to be sent says of readiness, for the watch (`None`: the
    /// task has no `ready:` rules, or the report is not about applied objects).
    fn remember_readiness(&self, id: &str, waiting: Option<Option<&str>>) {
        let ready = waiting.filter(|_| self.task.has_ready_rules()).map(|w| w.is_none());
        self.known.set_ready(id, ready);
    }

    fn render(&self, resource: &ResourceView) -> Result<Vec<serde_json::Value>, String> {
        let vars = Vars { resource, adapter: &self.cfg.name };
        let mut objects: Vec<serde_json::Value> =
            self.task.objects.iter().map(|o| task::try_render(o, &vars)).collect::<Result<_, _>>()?;
        for obj in &mut objects {
            task::own(obj, &self.cfg.name, &resource.id);
        }
        Ok(objects)
    }
}

/// Serialises the work on one resource: events for the same id wait for each other (each then
/// reads the resource afresh, so a slow, older event cannot overwrite what a newer one applied);
/// events for different ids run side by side. An id's entry goes once nobody holds or waits for it.
#[derive(Default)]
struct PerResource(std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl PerResource {
    async fn turn(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut ids = self.0.lock().unwrap_or_else(|e| e.into_inner());
            ids.retain(|_, l| Arc::strong_count(l) > 1);
            ids.entry(id.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().map(|ids| ids.len()).unwrap_or_default()
    }
}

/// Runs the adapter until `shutdown` is cancelled; in-flight events finish first.
/// `cfg` is validated already ([`hyperfleet_common::process::start`]).
pub async fn run(cfg: AdapterConfig, shutdown: CancellationToken) -> Result<(), Error> {
    let task = Task::load(cfg.task_file.as_deref()).map_err(Error::Start)?;
    let creds = cfg.hyperfleet_api.credentials().map_err(Error::Start)?;
    let prometheus = ops::install_metrics_recorder().map_err(Error::Start)?;
    observe::describe_metrics();
    let (kube, watch_client) = kube_clients(&cfg).await?;
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
    let api = ApiClient::new("adapter", &cfg.hyperfleet_api.base_url, cfg.hyperfleet_api.timeout, creds)
        .map_err(Error::Start)?;
    let objects = Objects::new(kube, &cfg.kubernetes.field_manager);
    metrics::gauge!("hyperfleet_adapter_build_info", "component" => "adapter", "version" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
    let worker = Arc::new(Worker { cfg, task, objects, api, turns: PerResource::default(), known: Default::default() });
    tracing::info!(
        adapter = %worker.cfg.name,
        api = %worker.cfg.hyperfleet_api.base_url,
        api_token_file = ?worker.api.credentials().token_path(),
        task = %worker.task.resource,
        objects = worker.task.objects.len(),
        broker = %worker.cfg.broker.endpoint(),
        queue = %worker.cfg.queue,
        exchange = %worker.cfg.broker.exchange,
        "adapter started"
    );

    let watching = tokio::spawn(watch::run(worker.clone(), watch_client, shutdown.clone()));
    let mut backoff = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        let started = std::time::Instant::now();
        match consume(&worker, &consuming, &shutdown).await {
            // A connection that lasted starts the backoff afresh; one dropped at once does not.
            Ok(()) if started.elapsed() > Duration::from_secs(30) => backoff = Duration::from_millis(500),
            Ok(()) => {}
            Err(e) => {
                metrics::counter!("hyperfleet_adapter_broker_errors_total").increment(1);
                tracing::warn!(error = %e, retry_in = ?backoff, "broker connection lost or refused");
            }
        }
        consuming.store(false, Ordering::Relaxed);
        metrics::gauge!("hyperfleet_adapter_up").set(0.0);
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(hyperfleet_common::process::jitter(backoff)) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    let _ = watching.await;
    tracing::info!("adapter stopped");
    Ok(())
}

/// The Kubernetes clients: one for requests (every call bounded by `kubernetes.request_timeout`)
/// and one for watches, whose calls last up to [`watch::WATCH_SECONDS`]: its reads may wait that
/// long plus the request timeout, so a hung list or watch fails rather than blocking the watch.
async fn kube_clients(cfg: &AdapterConfig) -> Result<(Client, Client), Error> {
    let mut config = match &cfg.kubernetes.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::KubeConfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| Error::KubeConfig(e.to_string()))?
        }
        None => kube::Config::infer().await.map_err(|e| Error::KubeConfig(e.to_string()))?,
    };
    let within = cfg.kubernetes.request_timeout;
    (config.connect_timeout, config.write_timeout) = (Some(within), Some(within));
    // Read timeouts count from when a request is sent, not from when its pooled connection went idle.
    config.reset_reader_on_write = true;
    let mut watching = config.clone();
    watching.read_timeout = Some(within + Duration::from_secs(u64::from(watch::WATCH_SECONDS)));
    let watches = Client::try_from(watching).map_err(|e| Error::KubeConfig(e.to_string()))?;
    config.read_timeout = Some(within);
    let requests = Client::try_from(config).map_err(|e| Error::KubeConfig(e.to_string()))?;
    Ok((requests, watches))
}

/// Runs `step` up to `retry.attempts` times while it fails transiently; the time it took, retries
/// included, goes to `hyperfleet_adapter_phase_duration_seconds{phase}`.
async fn with_retry<T, F, Fut>(worker: &Worker, phase: &'static str, mut step: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let retry = &worker.cfg.retry;
    let mut delay = retry.base_delay;
    let mut attempt = 1;
    let started = std::time::Instant::now();
    let took = || {
        metrics::histogram!("hyperfleet_adapter_phase_duration_seconds", "phase" => phase)
            .record(started.elapsed().as_secs_f64())
    };
    loop {
        match step().await {
            Ok(v) => {
                took();
                return Ok(v);
            }
            Err(e) if e.is_transient() && attempt < retry.attempts => {
                metrics::counter!("hyperfleet_adapter_retries_total", "phase" => phase).increment(1);
                tracing::debug!(phase, attempt, error = %e, "transient failure; retrying");
                tokio::time::sleep(hyperfleet_common::process::jitter(delay)).await;
                delay = (delay * 2).min(Duration::from_secs(8));
                attempt += 1;
            }
            Err(e) => {
                took();
                metrics::counter!("hyperfleet_adapter_errors_total", "phase" => phase, "error_type" => e.metric_label())
                    .increment(1);
                return Err(e);
            }
        }
    }
}

async fn process(worker: &Worker, delivery: &Delivery) -> Outcome {
    let content_type = delivery.properties.content_type().as_ref().map(|s| s.as_str());
    let decoded = cloudevent::decode(content_type, &delivery.data)
        .and_then(|e| cloudevent::reconcile_data(&e).map(|data| (trace_context(&e, delivery), data)));
    let ((traceparent, tracestate), data) = match decoded {
        Ok(d) => d,
        Err(e) => return Outcome::Poison(e),
    };
    let wanted = if worker.task.resource == "nodepools" { "NodePool" } else { "Cluster" };
    if data.kind != wanted {
        return Outcome::Done("skipped");
    }
    let span = hyperfleet_common::trace_span!(
        "reconcile",
        otel.name = %format!("reconcile {}", data.kind),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = delivery.exchange.as_str(),
        hyperfleet.adapter = worker.cfg.name.as_str(),
        hyperfleet.resource.id = data.id.as_str(),
        hyperfleet.resource.generation = data.generation,
    );
    telemetry::continue_from(&span, traceparent.as_deref(), tracestate.as_deref());
    reconcile(worker, data).instrument(span).await
}

/// The event's trace context: its CloudEvents `traceparent`/`tracestate` attributes, else the
/// AMQP headers of the same names.
fn trace_context(event: &cloudevent::Event, delivery: &Delivery) -> (Option<String>, Option<String>) {
    let header = |name: &str| match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        _ => None,
    };
    let (parent, state) = match cloudevent::trace_context(event) {
        (Some(parent), state) => (Some(parent), state),
        (None, _) => (header(cloudevent::TRACEPARENT), header(cloudevent::TRACESTATE)),
    };
    // A traceparent is 55 characters; a tracestate at most 32 members of 256: longer is not one.
    (parent.filter(|p| p.len() <= 128), state.filter(|s| s.len() <= 8192))
}

/// The work of one event for one resource: its turn, a fresh read, apply or delete, the report.
async fn reconcile(worker: &Worker, data: cloudevent::ReconcileData) -> Outcome {
    // The resource is read only once the events before this one for it are done.
    let _turn = worker.turns.turn(&data.id).await;
    let resource = match with_retry(worker, "fetch", || fetch(worker, &data.id)).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            tracing::info!(resource_id = %data.id, "resource is gone; nothing to do");
            worker.known.forget(&data.id);
            return Outcome::Done("skipped");
        }
        Err(e) if e.requeues() => return requeue(&data.id, &e),
        Err(e) => {
            tracing::warn!(resource_id = %data.id, error = %e, "cannot read the resource; the sentinel will announce it again");
            return Outcome::Done("failed");
        }
    };
    // A precondition that does not hold holds back the objects (never a deletion); the sentinel
    // announces the resource again while it is not Reconciled, and the check is made afresh.
    if resource.deleted_time.is_none()
        && let Some(why) = worker.task.when.iter().find_map(|p| p.unmet(&resource))
    {
        tracing::info!(resource_id = %resource.id, reason = %why, "precondition not met; nothing applied");
        // The watch does not report readiness over this report (objects of an earlier apply stay).
        worker.remember_readiness(&resource.id, None);
        return match send_report(worker, &resource, &Report::precondition_unmet(&why)).await {
            Ok(_) => Outcome::Done("skipped"),
            Err(e) => report_failed(&resource.id, &e),
        };
    }
    let rendered = match worker.render(&resource) {
        Ok(r) => r,
        Err(variable) => {
            // Nothing can be applied (or found to delete) without the value: say which is missing.
            tracing::warn!(resource_id = %resource.id, %variable, "the resource has no value for a template variable; nothing applied");
            metrics::counter!("hyperfleet_adapter_errors_total", "phase" => "render", "error_type" => "missing_value")
                .increment(1);
            worker.remember_readiness(&resource.id, None);
            return match send_report(worker, &resource, &Report::missing_value(&variable)).await {
                Ok(_) => Outcome::Done("failed"),
                Err(e) => report_failed(&resource.id, &e),
            };
        }
    };
    let objects = &worker.objects;
    let (report, status) = if resource.deleted_time.is_some() {
        // Ask for the deletion and report; the watch of the objects reports Finalized=True
        // once they are gone (watch.rs), so the event does not wait for the controller-manager.
        worker.known.deleting(&worker.task.trim(&resource));
        let deleted = with_retry(worker, "delete", || async {
            objects.delete(&rendered).await.map_err(kube_err("delete"))?;
            objects.gone(&rendered).await.map_err(kube_err("delete"))
        })
        .await;
        match deleted {
            Ok(true) => {
                return match finalize(worker, &resource, rendered.len()).await {
                    Ok(()) => Outcome::Done("success"),
                    Err(e) => report_failed(&resource.id, &e),
                };
            }
            Ok(false) => (Report::cleanup_in_progress(&resource), "success"),
            Err(e) => {
                tracing::warn!(resource_id = %resource.id, error = %e, "removal failed; reporting Health=False");
                (Report::failed(&e, true), "failed")
            }
        }
    } else {
        worker.known.live(&worker.task.trim(&resource));
        match with_retry(worker, "apply", || async { objects.apply(&rendered).await.map_err(kube_err("apply")) }).await
        {
            Ok(live) => {
                // Readiness as the apply returned the objects; the watch reports when it changes.
                let waiting = worker.task.waiting(&rendered, &live);
                worker.remember_readiness(&resource.id, Some(waiting.as_deref()));
                tracing::info!(resource_id = %resource.id, generation = resource.generation, waiting = waiting.as_deref().unwrap_or("nothing"), "objects applied");
                (applied_report(worker, &resource, waiting), "success")
            }
            Err(e) => {
                worker.remember_readiness(&resource.id, None);
                tracing::warn!(resource_id = %resource.id, error = %e, "apply failed; reporting Health=False");
                (Report::failed(&e, false), "failed")
            }
        }
    };
    match send_report(worker, &resource, &report).await {
        Ok(404) if resource.deleted_time.is_none() => {
            remove_orphans(worker, &resource, &rendered).await;
            Outcome::Done(status)
        }
        Ok(_) => Outcome::Done(status),
        Err(e) => report_failed(&resource.id, &e),
    }
}

/// The report of objects applied for `resource` (the task's messages); `waiting` names what is
/// not ready yet.
fn applied_report(worker: &Worker, resource: &ResourceView, waiting: Option<String>) -> Report {
    let vars = Vars { resource, adapter: &worker.cfg.name };
    let spec = &worker.task.report;
    let applied = task::render_str(&spec.applied_message, &vars);
    Report::applied(applied, task::render_str(&spec.available_message, &vars), waiting)
}

/// A report that could not be sent: put back for the credentials, else left to the sentinel.
fn report_failed(resource_id: &str, e: &Error) -> Outcome {
    if e.requeues() {
        return requeue(resource_id, e);
    }
    tracing::warn!(resource_id, error = %e, "cannot report; the sentinel will announce it again");
    Outcome::Done("failed")
}

/// The objects were applied for a resource that was deleted meanwhile (the API answered the report
/// with 404) — by another replica, or before this event's turn: remove them, or nothing would.
async fn remove_orphans(worker: &Worker, resource: &ResourceView, rendered: &[serde_json::Value]) {
    worker.known.forget(&resource.id);
    match with_retry(worker, "delete", || async { worker.objects.delete(rendered).await.map_err(kube_err("delete")) })
        .await
    {
        Ok(()) => {
            metrics::counter!("hyperfleet_adapter_orphans_removed_total").increment(rendered.len() as u64);
            tracing::info!(resource_id = %resource.id, "the resource was deleted while its objects were applied; removed them");
        }
        Err(e) => {
            tracing::warn!(resource_id = %resource.id, error = %e, "cannot remove the objects of a deleted resource")
        }
    }
}

/// Reports `Finalized=True` for a resource whose objects are gone and forgets it.
async fn finalize(worker: &Worker, resource: &ResourceView, objects: usize) -> Result<(), Error> {
    send_report(worker, resource, &Report::finalized(resource)).await?;
    metrics::counter!("hyperfleet_adapter_resources_deleted_total").increment(objects as u64);
    if let Some(since) = worker.known.forget(&resource.id) {
        metrics::histogram!("hyperfleet_adapter_resource_deletion_duration_seconds")
            .record(since.elapsed().as_secs_f64());
    }
    tracing::info!(resource_id = %resource.id, "objects removed");
    Ok(())
}

/// PUTs `report` for `resource` (with the task's `data`), retrying transient failures; the API's
/// answer (201 stored, 204 stale, 404 the resource is gone).
async fn send_report(worker: &Worker, resource: &ResourceView, report: &Report) -> Result<u16, Error> {
    let vars = Vars { resource, adapter: &worker.cfg.name };
    let data = task::render(&serde_json::Value::Object(worker.task.report.data.clone()), &vars);
    let span = hyperfleet_common::trace_span!("report", hyperfleet.reason = report.reason());
    with_retry(worker, "report", || put_status(worker, resource, report, &data)).instrument(span).await
}

/// A Kubernetes failure of `step` as the adapter's error.
fn kube_err(step: &'static str) -> impl Fn(kube::Error) -> Error {
    move |source| Error::Kube { step, source }
}

/// An event put back because of the credentials: a refusal was already warned about once per
/// streak, so only an unreadable token file is warned about here.
fn requeue(resource_id: &str, e: &Error) -> Outcome {
    if matches!(e, Error::Api(c) if c.is_refused()) {
        tracing::debug!(resource_id, error = %e, "requeueing the event: the API still refuses the adapter's credentials");
    } else {
        tracing::warn!(resource_id, error = %e, "cannot send the API token; requeueing the event");
    }
    Outcome::Requeue
}

/// A failed API call as a step's error. A refusal (401/403) is counted and warned about once per
/// streak here (with the problem's `detail`); [`Error::requeues`] and [`Error::is_transient`] say
/// what becomes of the event.
fn api_error(api: &ApiClient, e: CallError) -> Error {
    if let api_client::Failure::Refused { status, first, detail } = &e.failure {
        metrics::counter!("hyperfleet_adapter_api_auth_failures_total").increment(1);
        if *first {
            tracing::warn!(
                request = %e.message.split(": ").next().unwrap_or_default(),
                status,
                reason = %detail,
                token_file = ?api.credentials().token_path(),
                "the API refuses the adapter's credentials; events are retried and requeued (not logged again until a request succeeds)"
            );
        }
    }
    Error::Api(e)
}

/// The resource, or `None` when the API no longer has it.
async fn fetch(worker: &Worker, id: &str) -> Result<Option<ResourceView>, Error> {
    worker.api.get(&worker.task.resource, id).await.map_err(|e| api_error(&worker.api, e))
}

hyperfleet_common::readme_documents_every_env_var!(crate::AdapterConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_for_one_resource_take_turns_and_others_do_not_wait() {
        let turns = PerResource::default();
        let first = turns.turn("a").await;
        let other = tokio::time::timeout(Duration::from_secs(1), turns.turn("b")).await;
        assert!(other.is_ok(), "another resource does not wait");
        drop(other);
        let waiting = tokio::time::timeout(Duration::from_millis(100), turns.turn("a")).await;
        assert!(waiting.is_err(), "the same resource waits for its turn");
        drop(first);
        let next = tokio::time::timeout(Duration::from_secs(1), turns.turn("a")).await;
        assert!(next.is_ok(), "and gets it once the first is done");
        drop(next);
        let _c = turns.turn("c").await;
        assert_eq!(turns.len(), 1, "ids nobody holds are forgotten");
    }
}
