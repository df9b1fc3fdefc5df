//! The adapter as the controller of what it owns. Every object it applies carries its labels
//! ([`ADAPTER_LABEL`], [`RESOURCE_LABEL`]), and one watch per kind of the task turns changes to
//! those objects into work for the resource they belong to:
//!
//! - an object of a live resource that is deleted, or changed so that it no longer holds what was
//!   applied, is restored within seconds and the restore is reported (`Applied` reason
//!   `ResourcesRestored`, `hyperfleet_adapter_drift_repairs_total`) — no API write needed;
//! - an object whose `ready:` rule changes its answer (a Job completes, a Deployment loses its
//!   replicas) has the resource's `Available` reported again (`hyperfleet_adapter_readiness_changes_total`);
//! - when the last object of a resource being deleted goes, `Finalized=True` is reported, so a
//!   delete never holds an event's slot while the controller-manager empties a Namespace. An object
//!   someone else deleted counts as cleaned up.
//!
//! Only resources this process has worked on ([`Known`]) are acted on: objects of other
//! installations that share the adapter's name, or of resources not seen since a restart, are left
//! alone. The sentinel announces every resource at least every `max_age_ready`, so after a restart
//! every resource is known again within that time. Work is queued at most once per resource id, so
//! the queue is bounded by the number of known resources; it takes the resource's turn
//! ([`crate::PerResource`]) like an event does, and reads the resource afresh.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{StreamExt, TryStreamExt};
use kube::{
    Api, Client, ResourceExt,
    api::DynamicObject,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    Worker,
    report::Report,
    task::{self, ADAPTER_LABEL, RESOURCE_LABEL, ResourceView},
};

struct Entry {
    view: ResourceView,
    deleting_since: Option<Instant>,
    /// Whether the objects were last reported ready (`None`: the task has no `ready:` rules, or
    /// nothing was applied yet).
    ready: Option<bool>,
    /// Repairs in the current window ([`REPAIR_WINDOW`]) and when the window started.
    repairs: (u32, Option<Instant>),
}

/// At most [`REPAIRS_PER_WINDOW`] repairs of one resource per window: objects someone keeps
/// changing (another controller, a value the apiserver normalizes) are not fought over.
const REPAIR_WINDOW: Duration = Duration::from_secs(30);
const REPAIRS_PER_WINDOW: u32 = 3;

#[derive(Default)]
struct Resources {
    by_id: HashMap<String, Entry>,
    deleting: usize,
}

/// The resources this process has applied or is deleting, with what it last rendered them from.
#[derive(Default)]
pub(crate) struct Known(Mutex<Resources>);

impl Known {
    fn lock(&self) -> std::sync::MutexGuard<'_, Resources> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The resource is live and its objects are (being) applied from `view`.
    pub(crate) fn live(&self, view: &ResourceView) {
        let mut r = self.lock();
        let (repairs, ready) = r.by_id.get(&view.id).map(|e| (e.repairs, e.ready)).unwrap_or_default();
        let old = r.by_id.insert(view.id.clone(), Entry { view: view.clone(), deleting_since: None, repairs, ready });
        if old.is_some_and(|e| e.deleting_since.is_some()) {
            r.deleting -= 1;
            Self::gauge(&r);
        }
    }

    /// The resource's objects are being deleted (since the first time this was said).
    pub(crate) fn deleting(&self, view: &ResourceView) {
        let mut r = self.lock();
        let since = match r.by_id.get(&view.id) {
            Some(Entry { deleting_since: Some(since), .. }) => *since,
            _ => {
                r.deleting += 1;
                Instant::now()
            }
        };
        let entry = Entry { view: view.clone(), deleting_since: Some(since), repairs: (0, None), ready: None };
        r.by_id.insert(view.id.clone(), entry);
        Self::gauge(&r);
    }

    /// Forgets a resource (gone, or its objects are); returns since when it was being deleted.
    pub(crate) fn forget(&self, id: &str) -> Option<Instant> {
        let mut r = self.lock();
        let since = r.by_id.remove(id).and_then(|e| e.deleting_since);
        if since.is_some() {
            r.deleting -= 1;
            Self::gauge(&r);
        }
        since
    }

    /// Says whether the live resource's objects were reported ready (see `Entry::ready`).
    pub(crate) fn set_ready(&self, id: &str, ready: Option<bool>) {
        if let Some(entry) = self.lock().by_id.get_mut(id) {
            entry.ready = ready;
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.lock().by_id.contains_key(id)
    }

    /// What was last rendered for `id`, whether it is being deleted, and its readiness.
    fn get(&self, id: &str) -> Option<(ResourceView, bool, Option<bool>)> {
        self.lock().by_id.get(id).map(|e| (e.view.clone(), e.deleting_since.is_some(), e.ready))
    }

    /// Counts a repair of `id`; false once the resource had its share in the current window.
    fn may_repair(&self, id: &str) -> bool {
        let mut r = self.lock();
        let Some(entry) = r.by_id.get_mut(id) else { return false };
        let (count, since) = &mut entry.repairs;
        if since.is_none_or(|t| t.elapsed() > REPAIR_WINDOW) {
            (*count, *since) = (0, Some(Instant::now()));
        }
        *count += 1;
        *count <= REPAIRS_PER_WINDOW
    }

    fn ids(&self) -> Vec<String> {
        self.lock().by_id.keys().cloned().collect()
    }

    fn gauge(r: &Resources) {
        metrics::gauge!("hyperfleet_adapter_resource_deletions_in_progress").set(r.deleting as f64);
    }
}

/// Resource ids waiting for a worker, each at most once (the worker looks at the objects afresh,
/// whatever the watch saw).
pub(crate) struct Queue {
    pending: Mutex<HashSet<String>>,
    tx: mpsc::UnboundedSender<String>,
}

impl Queue {
    fn new() -> (Self, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Queue { pending: Mutex::new(HashSet::new()), tx }, rx)
    }

    fn push(&self, id: &str) {
        if self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string()) {
            let _ = self.tx.send(id.to_string());
        }
    }

    /// Whether `id` was waiting; it may be queued again from now on.
    fn take(&self, id: &str) -> bool {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(id)
    }
}

/// Watches every kind of the task and works the queue `prefetch` resources at a time, until
/// `shutdown`.
pub(crate) async fn run(worker: Arc<Worker>, client: Client, shutdown: CancellationToken) {
    let (queue, rx) = Queue::new();
    let queue = Arc::new(queue);
    let mut kinds = Vec::new();
    for gvk in worker.task.objects.iter().map(task::gvk) {
        if !kinds.contains(&gvk) {
            kinds.push(gvk);
        }
    }
    for kind in &kinds {
        for change in ["changed", "deleted"] {
            metrics::counter!("hyperfleet_adapter_drift_repairs_total", "kind" => kind.kind.clone(), "change" => change)
                .increment(0);
        }
        metrics::counter!("hyperfleet_adapter_watch_errors_total", "kind" => kind.kind.clone()).increment(0);
        metrics::gauge!("hyperfleet_adapter_watching", "kind" => kind.kind.clone()).set(0.0);
    }
    let watches = kinds.into_iter().map(|gvk| watch_kind(&worker, client.clone(), gvk, &queue, &shutdown));
    let work = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|id| (id, rx)) })
        .take_until(shutdown.cancelled())
        .for_each_concurrent(usize::from(worker.cfg.prefetch), |id| {
            let (worker, queue) = (worker.clone(), queue.clone());
            async move {
                if queue.take(&id) {
                    // Its own trace (a change the adapter saw, not an event it was sent).
                    let span = hyperfleet_common::trace_span!("settle", hyperfleet.resource.id = id.as_str());
                    tracing::Instrument::instrument(settle(&worker, &id), span).await;
                }
            }
        });
    tokio::join!(futures_util::future::join_all(watches), work);
}

/// How long one watch call lasts (the server ends it; the watcher makes the next).
pub(crate) const WATCH_SECONDS: u32 = 60;

/// One kind's watch, restarted with backoff (by the watcher) while the apiserver fails.
async fn watch_kind(
    worker: &Worker,
    client: Client,
    gvk: kube::api::GroupVersionKind,
    queue: &Queue,
    shutdown: &CancellationToken,
) {
    let mut delay = Duration::from_millis(500);
    let resource = loop {
        match worker.objects.resource(&gvk).await {
            Ok((resource, _)) => break resource,
            Err(e) => {
                metrics::counter!("hyperfleet_adapter_watch_errors_total", "kind" => gvk.kind.clone()).increment(1);
                tracing::warn!(kind = %gvk.kind, error = %e, retry_in = ?delay, "cannot resolve a kind to watch");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(hyperfleet_common::process::jitter(delay)) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let selector = format!("{ADAPTER_LABEL}={}", worker.cfg.name);
    // Each watch call ends after a minute and is made again: the watch client's read timeout
    // ([`crate::kube_clients`]) then also catches a hung list or watch.
    let config = watcher::Config::default().labels(&selector).timeout(WATCH_SECONDS);
    let types = kube::api::TypeMeta { api_version: resource.api_version.clone(), kind: resource.kind.clone() };
    let mut events = watcher(api, config)
        .default_backoff()
        // Objects in a list carry no apiVersion and kind; the comparison with the task needs them.
        .map_ok(move |event| {
            event.modify(|obj| {
                obj.types.get_or_insert_with(|| types.clone());
            })
        })
        .boxed();
    // Resource ids listed since the last `Init`: a known resource missing from a fresh list lost
    // its object while the watch was down.
    let mut listed: Option<HashSet<String>> = None;
    let mut failing = false;
    let watching = metrics::gauge!("hyperfleet_adapter_watching", "kind" => gvk.kind.clone());
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        let event = match event {
            None => return,
            Some(Ok(event)) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(kind = %gvk.kind, "watching owned objects again");
                    watching.set(1.0);
                }
                event
            }
            Some(Err(e)) => {
                metrics::counter!("hyperfleet_adapter_watch_errors_total", "kind" => gvk.kind.clone()).increment(1);
                watching.set(0.0);
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(kind = %gvk.kind, error = %e, "the watch of owned objects failed; retrying with backoff (not logged again until it works)");
                }
                continue;
            }
        };
        match event {
            watcher::Event::Init => listed = Some(HashSet::new()),
            watcher::Event::InitApply(obj) => {
                if let (Some(seen), Some(id)) = (listed.as_mut(), obj.labels().get(RESOURCE_LABEL)) {
                    seen.insert(id.clone());
                }
                changed(worker, queue, &obj);
            }
            watcher::Event::InitDone => {
                watching.set(1.0);
                let seen = listed.take().unwrap_or_default();
                for id in worker.known.ids().into_iter().filter(|id| !seen.contains(id)) {
                    queue.push(&id);
                }
            }
            watcher::Event::Apply(obj) => changed(worker, queue, &obj),
            watcher::Event::Delete(obj) => {
                if let Some(id) = obj.labels().get(RESOURCE_LABEL).filter(|id| worker.known.contains(id)) {
                    queue.push(id);
                }
            }
        }
    }
}

/// Queues a known, live resource whose object no longer holds what was rendered for it, or whose
/// object has a `ready:` rule (its answer may have changed). An object being deleted is left to its
/// `Delete` event.
fn changed(worker: &Worker, queue: &Queue, obj: &DynamicObject) {
    let Some(id) = obj.labels().get(RESOURCE_LABEL) else { return };
    let Some((view, false, _)) = worker.known.get(id) else { return };
    if obj.metadata.deletion_timestamp.is_some() {
        return;
    }
    let live = serde_json::to_value(obj).unwrap_or_default();
    let rendered = worker.render(&view).unwrap_or_default();
    // Every change to an object with a `ready:` rule is looked at: `settle` reads the objects afresh
    // in the resource's turn and reports only when the answer differs from the last report, so a
    // change made while a report was on its way is not lost.
    let settle = rendered
        .iter()
        .zip(&worker.task.ready)
        .any(|(want, rule)| task::same_object(&live, want) && (rule.is_some() || !task::holds(&live, want)));
    if settle {
        queue.push(id);
    }
}

/// Brings a known resource's objects in line after a watch saw one change: finalizes a deletion
/// whose objects are gone, restores the objects of a live resource that no longer hold what was
/// applied, forgets a resource the API no longer has.
async fn settle(worker: &Worker, id: &str) {
    let _turn = worker.turns.turn(id).await;
    // Forgotten while it waited? (Whoever forgets holds the resource's turn, so not after this.)
    let Some((known, _, ready)) = worker.known.get(id) else { return };
    let resource = match crate::with_retry(worker, "fetch", || crate::fetch(worker, id)).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            worker.known.forget(id);
            return;
        }
        Err(e) => {
            tracing::warn!(resource_id = id, error = %e, "cannot read the resource after a change to its objects; the sentinel will announce it again");
            return;
        }
    };
    if resource.deleted_time.is_none() && resource.generation != known.generation {
        // Another generation is being applied (here or by another replica): the change is its
        // apply, and the event for that generation does the rest.
        worker.known.live(&worker.task.trim(&resource));
        return;
    }
    let Ok(rendered) = worker.render(&resource) else {
        // A value went missing since: the next event for the resource reports it.
        return;
    };
    let objects = &worker.objects;
    if resource.deleted_time.is_some() {
        match crate::with_retry(worker, "delete", || async {
            objects.gone(&rendered).await.map_err(crate::kube_err("delete"))
        })
        .await
        {
            Ok(true) => {
                let _ = crate::finalize(worker, &resource, rendered.len()).await;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(resource_id = id, error = %e, "cannot check the deleted objects"),
        }
        return;
    }
    let observed = match crate::with_retry(worker, "apply", || async {
        objects.observe(&rendered).await.map_err(crate::kube_err("observe"))
    })
    .await
    {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(resource_id = id, error = %e, "cannot read the objects after a change");
            return;
        }
    };
    // An object on its way out is restored once its `Delete` event comes (a Namespace that is
    // terminating takes no new content).
    if observed.iter().flatten().any(|o| o.pointer("/metadata/deletionTimestamp").is_some()) {
        tracing::debug!(resource_id = id, "an object is terminating; restoring it once it is gone");
        return;
    }
    let drift: Vec<(String, String, &'static str)> = rendered
        .iter()
        .zip(&observed)
        .filter_map(|(want, live)| {
            let kind = want["kind"].as_str().unwrap_or_default().to_string();
            match live {
                None => Some((kind, task::describe(want), "deleted")),
                Some(live) if !task::holds(live, want) => Some((kind, task::describe(want), "changed")),
                Some(_) => None,
            }
        })
        .collect();
    if drift.is_empty() {
        tracing::debug!(resource_id = id, "the objects hold what was applied; nothing to restore");
        let live: Vec<serde_json::Value> = observed.into_iter().flatten().collect();
        let waiting = worker.task.waiting(&rendered, &live);
        if ready.is_some_and(|was| was != waiting.is_none()) {
            report_readiness(worker, &resource, waiting).await;
        }
        return;
    }
    if !worker.known.may_repair(id) {
        tracing::warn!(
            resource_id = id,
            "objects keep changing out of band ({} repairs within {:?}); not restoring them again until the next event for the resource",
            REPAIRS_PER_WINDOW,
            REPAIR_WINDOW
        );
        return;
    }
    worker.known.live(&worker.task.trim(&resource));
    let applied = crate::with_retry(worker, "apply", || async {
        objects.apply(&rendered).await.map_err(crate::kube_err("apply"))
    })
    .await;
    let what = drift.iter().map(|(_, obj, change)| format!("{obj} was {change}")).collect::<Vec<_>>().join(", ");
    let report = match applied {
        Ok(live) => {
            for (kind, _, change) in &drift {
                metrics::counter!("hyperfleet_adapter_drift_repairs_total", "kind" => kind.clone(), "change" => *change)
                    .increment(1);
            }
            tracing::info!(resource_id = id, restored = %what, "restored objects changed out of band");
            let waiting = worker.task.waiting(&rendered, &live);
            worker.remember_readiness(id, Some(waiting.as_deref()));
            Report::restored(&what, waiting)
        }
        Err(e) => {
            tracing::warn!(resource_id = id, error = %e, drift = %what, "cannot restore objects changed out of band");
            Report::failed(&e, false)
        }
    };
    match crate::send_report(worker, &resource, &report).await {
        // Deleted meanwhile (and finalized by another replica): undo the restore.
        Ok(404) => crate::remove_orphans(worker, &resource, &rendered).await,
        Ok(_) => {}
        Err(e) => tracing::warn!(resource_id = id, error = %e, "cannot report the restore"),
    }
}

/// Reports that the objects of a live resource became ready, or stopped being ready.
async fn report_readiness(worker: &Worker, resource: &ResourceView, waiting: Option<String>) {
    let report = crate::applied_report(worker, resource, waiting);
    match crate::send_report(worker, resource, &report).await {
        Ok(_) => {
            worker.known.set_ready(&resource.id, Some(report.available()));
            metrics::counter!("hyperfleet_adapter_readiness_changes_total", "available" => if report.available() { "true" } else { "false" })
                .increment(1);
            tracing::info!(resource_id = %resource.id, available = report.available(), "the objects' readiness changed; reported");
        }
        Err(e) => {
            tracing::warn!(resource_id = %resource.id, error = %e, "cannot report the objects' readiness; the sentinel will announce it again")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_is_queued_once_until_it_is_taken() {
        let (queue, mut rx) = Queue::new();
        queue.push("a");
        queue.push("a");
        queue.push("a");
        queue.push("b");
        assert_eq!(rx.try_recv().ok().as_deref(), Some("a"));
        assert_eq!(rx.try_recv().ok().as_deref(), Some("b"));
        assert!(rx.try_recv().is_err(), "each id is sent once");
        assert!(queue.take("a"));
        assert!(!queue.take("a"));
        queue.push("a");
        assert_eq!(rx.try_recv().ok().as_deref(), Some("a"), "taken ids can be queued again");
    }

    #[test]
    fn repairs_of_one_resource_are_limited_per_window() {
        let known = Known::default();
        let view = ResourceView {
            id: "a".into(),
            kind: "Cluster".into(),
            name: "n".into(),
            generation: 1,
            deleted_time: None,
            fields: Default::default(),
        };
        assert!(!known.may_repair("a"), "unknown resources are not repaired");
        known.live(&view);
        for _ in 0..REPAIRS_PER_WINDOW {
            assert!(known.may_repair("a"));
        }
        assert!(!known.may_repair("a"), "one more within the window is refused");
        known.live(&view);
        assert!(!known.may_repair("a"), "applying again does not reset the window");
    }

    #[test]
    fn deletions_in_progress_are_counted_once_per_resource() {
        let known = Known::default();
        let view = |id: &str| ResourceView {
            id: id.into(),
            kind: "Cluster".into(),
            name: "n".into(),
            generation: 1,
            deleted_time: None,
            fields: Default::default(),
        };
        known.live(&view("a"));
        known.deleting(&view("a"));
        let since = known.get("a").map(|(_, deleting, _)| deleting);
        known.deleting(&view("a"));
        known.deleting(&view("b"));
        assert_eq!((since, known.lock().deleting), (Some(true), 2));
        known.live(&view("b"));
        assert_eq!(known.lock().deleting, 1);
        assert!(known.forget("a").is_some());
        assert!(known.forget("a").is_none());
        assert_eq!(known.lock().deleting, 0);
    }
}
