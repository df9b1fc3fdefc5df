//! The adapter: clusters landed per second with N events already queued, beside a raw kube-rs loop
//! that server-side applies the same Namespace + ServiceAccount pairs (same labels, annotations and
//! field manager) against the same apiserver at the same concurrency. The adapter also reads each
//! cluster from the API and PUTs its status report; the raw loop does only the Kubernetes part.
//!
//! Both rates are (N − 1) / (last completion − first completion): for the adapter, the first and
//! last status report as the API stored them; for the loop, its own clock. Start-up is excluded
//! on both sides. The loop runs before and after the adapter; the baseline is their mean. The
//! adapter's mean time per event, the API's own time for the GET and the status PUT, and the whole
//! machine's CPU per cluster by program (and per raw pair) are printed beside it.
//!
//! Deletes: N landed clusters DELETEd at once until the API has hard-deleted them all (the adapter
//! asks for the deletion, its watch reports `Finalized=True` once the controller-manager has
//! emptied the Namespace), beside the controller-manager deleting N Namespace + ServiceAccount
//! pairs created directly, until they are gone. Drift repair: a landed cluster's Namespace deleted
//! out of band, one at a time, until a new one exists (beside the time until the old one is gone,
//! which the repair must wait for); polled every 50 ms.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use futures_util::{StreamExt, stream};
use hyperfleet_tests::{LocalEnv, Stack, StackOptions, eventually, metric_sum, metric_sum_where};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::{CpuMark, rss_mib, split_line};

/// Where the machine's CPU went per item, by program (see [`CpuMark::per_item`]).
type Split = Vec<(String, f64)>;

/// The adapter's default field manager (`kubernetes.field_manager`).
const FIELD_MANAGER: &str = "hyperfleet-adapter";

/// Mean in ms of histogram `name` over the series whose labels contain every one of `labels`.
fn mean_ms(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    let total = |suffix: &str| metric_sum_where(metrics, &format!("{name}_{suffix}"), labels);
    1000.0 * total("sum") / total("count").max(1.0)
}

/// Where an event's time goes: the adapter's mean processing time, and the API's own time for the
/// cluster GET and the status PUT (server side), in ms.
#[derive(Debug, Clone, serde::Serialize)]
struct PerEvent {
    /// The whole machine's CPU per landed cluster, from the first report to the last.
    machine_cpu_ms: f64,
    /// The same by program.
    machine_split: Split,
    adapter_ms: f64,
    /// The adapter's own phases, as its client saw them: the API read, the apply, the status PUT.
    fetch_ms: f64,
    apply_ms: f64,
    report_ms: f64,
    api_get_ms: f64,
    api_put_status_ms: f64,
}

/// The adapter's rate at `prefetch`, its RSS after the run, and where an event's time goes.
async fn adapter_rate(bin_dir: &Path, n: usize, prefetch: u16) -> Result<(f64, f64, PerEvent)> {
    // No re-publishing while the events wait for an adapter.
    let mut opts = quiet(bin_dir);
    opts.adapter.push(("HYPERFLEET_PREFETCH", prefetch.to_string()));
    let mut stack = Stack::start_with(opts).await?;
    let result = async {
        stack.kill_adapter().await?;
        stack.create_clusters("thr", n).await?;
        eventually(Duration::from_secs(300), || async {
            let m = stack.sentinel.metrics().await?;
            Ok((metric_sum(&m, "hyperfleet_sentinel_events_published_total") >= n as f64).then_some(()))
        })
        .await?;
        stack.start_adapter().await?;
        let db = tokio::sync::Mutex::new(stack.db_connection().await?);
        // The machine's CPU from the first report on (the adapter's start-up is not landing), and
        // how many clusters had reported by then.
        let mark = std::cell::RefCell::new(None);
        let span: f64 = eventually(Duration::from_secs(600), || async {
            let (count, span): (i64, f64) = sqlx::query_as(
                "select count(*), coalesce(extract(epoch from max(last_report_time) - min(last_report_time)), 0)::float8 \
                 from adapter_statuses",
            )
            .fetch_one(&mut *db.lock().await)
            .await?;
            if count > 0 && mark.borrow().is_none() {
                *mark.borrow_mut() = Some((CpuMark::now(), count));
            }
            Ok((count as usize >= n).then_some(span))
        })
        .await
        .with_context(|| format!("adapter did not report every cluster\n{}", stack.logs()))?;
        let (since, early) = mark.take().unwrap_or_default();
        let (machine_cpu_ms, machine_split) = since.per_item((n as i64 - early) as f64);
        let (adapter, api) = (stack.adapter.metrics().await?, stack.api.metrics().await?);
        let per_event = PerEvent {
            machine_cpu_ms,
            machine_split,
            adapter_ms: mean_ms(&adapter, "hyperfleet_adapter_event_processing_duration_seconds", &[]),
            fetch_ms: mean_ms(&adapter, "hyperfleet_adapter_phase_duration_seconds", &["phase=\"fetch\""]),
            apply_ms: mean_ms(&adapter, "hyperfleet_adapter_phase_duration_seconds", &["phase=\"apply\""]),
            report_ms: mean_ms(&adapter, "hyperfleet_adapter_phase_duration_seconds", &["phase=\"report\""]),
            api_get_ms: mean_ms(
                &api,
                "hyperfleet_api_request_duration_seconds",
                &["method=\"GET\"", "path=\"/api/hyperfleet/v1/clusters/-\""],
            ),
            api_put_status_ms: mean_ms(
                &api,
                "hyperfleet_api_request_duration_seconds",
                &["method=\"PUT\"", "path=\"/api/hyperfleet/v1/clusters/-/statuses\""],
            ),
        };
        Ok(((n - 1) as f64 / span.max(1e-6), rss_mib(stack.adapter.pid()), per_event))
    }
    .await;
    stack.stop().await;
    result
}

/// The same objects the built-in landing-zone task applies for cluster `id`.
fn objects(id: &str) -> Result<(Namespace, ServiceAccount)> {
    let meta = |namespace: Option<&str>, name: &str| {
        json!({"name": name, "namespace": namespace, "labels": {
                   "hyperfleet.io/cluster-id": id, "hyperfleet.io/cluster-name": format!("raw-{id}"),
                   "app.kubernetes.io/managed-by": "hyperfleet-bench-raw"},
               "annotations": {"hyperfleet.io/generation": "1"}})
    };
    let ns = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(None, id)}))?;
    let sa = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(Some(id), "landing-zone")}),
    )?;
    Ok((ns, sa))
}

/// Server-side applies the pair of [`objects`] for `id`, as the adapter would.
async fn apply_pair(client: &kube::Client, id: &str) -> Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let (ns, sa) = objects(id)?;
    kube::Api::<Namespace>::all(client.clone()).patch(id, &params, &Patch::Apply(&ns)).await?;
    kube::Api::<ServiceAccount>::namespaced(client.clone(), id)
        .patch("landing-zone", &params, &Patch::Apply(&sa))
        .await?;
    Ok(())
}

/// The raw loop's rate at `concurrency` and the machine's CPU per pair in ms (in all, by program);
/// removes its Namespaces afterwards.
async fn raw_rate(env: &LocalEnv, n: usize, concurrency: usize) -> Result<(f64, f64, Split)> {
    let client = env.kube().await?;
    let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let client = &client;
    let since = CpuMark::now();
    let done: Vec<Result<Instant>> = stream::iter(ids.iter())
        .map(|id| async move {
            apply_pair(client, id).await?;
            Ok(Instant::now())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let (machine_cpu_ms, split) = since.per_item(n as f64);
    let cleanup = hyperfleet_tests::remove_namespaces(env, &ids).await;
    let mut times = done.into_iter().collect::<Result<Vec<_>>>()?;
    cleanup?;
    times.sort();
    let span = match (times.first(), times.last()) {
        (Some(a), Some(b)) => b.duration_since(*a).as_secs_f64(),
        _ => 0.0,
    };
    Ok(((n - 1) as f64 / span.max(1e-6), machine_cpu_ms, split))
}

/// Seconds until N landed clusters, all DELETEd at once, are hard-deleted.
async fn adapter_delete(bin_dir: &Path, n: usize) -> Result<f64> {
    let stack = Stack::start_with(quiet(bin_dir)).await?;
    let result = async {
        let ids = stack.create_clusters("del", n).await?;
        stack.wait_all_reconciled(&ids, Duration::from_secs(600)).await?;
        let started = Instant::now();
        let stack = &stack;
        let deletes: Vec<Result<u16>> = stream::iter(ids.iter())
            .map(|id| async move {
                let url = format!("{}/api/hyperfleet/v1/clusters/{id}", stack.api_url);
                Ok(stack.client().delete(url).send().await?.status().as_u16())
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for status in deletes {
            anyhow::ensure!(status? == 202, "DELETE not accepted");
        }
        eventually(Duration::from_secs(600), || async {
            let (_, page) = stack.get("clusters?size=1").await?;
            Ok((page["total"].as_u64() == Some(0)).then_some(()))
        })
        .await
        .with_context(|| format!("clusters not all deleted\n{}", stack.logs()))?;
        Ok(started.elapsed().as_secs_f64())
    }
    .await;
    stack.stop().await;
    result
}

/// Seconds until the controller-manager has deleted N Namespace + ServiceAccount pairs.
async fn raw_delete(env: &LocalEnv, n: usize) -> Result<f64> {
    let client = env.kube().await?;
    let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for id in &ids {
        apply_pair(&client, id).await?;
    }
    let started = Instant::now();
    hyperfleet_tests::remove_namespaces(env, &ids).await?;
    Ok(started.elapsed().as_secs_f64())
}

/// For `n` clusters one after the other: seconds from an out-of-band Namespace delete until the
/// old one is gone, and until a new one exists.
async fn drift_repair(bin_dir: &Path, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let stack = Stack::start_with(quiet(bin_dir)).await?;
    let result = async {
        let namespaces = kube::Api::<Namespace>::all(stack.env.kube().await?);
        let ids = stack.create_clusters("drift", n).await?;
        stack.wait_all_reconciled(&ids, Duration::from_secs(600)).await?;
        let (mut gone, mut restored) = (Vec::new(), Vec::new());
        for id in &ids {
            let old = namespaces.get(id).await?.metadata.uid;
            let started = Instant::now();
            namespaces.delete(id, &Default::default()).await?;
            let gone_after = std::sync::Mutex::new(None);
            eventually(Duration::from_secs(120), || async {
                let now = namespaces.get_opt(id).await?;
                Ok(match now {
                    Some(ns) if ns.metadata.uid == old => None,
                    Some(_) => Some(()),
                    None => {
                        let mut at = gone_after.lock().unwrap_or_else(|e| e.into_inner());
                        at.get_or_insert(started.elapsed().as_secs_f64());
                        None
                    }
                })
            })
            .await
            .with_context(|| format!("Namespace {id} was not restored\n{}", stack.logs()))?;
            let took = started.elapsed().as_secs_f64();
            restored.push(took);
            gone.push(gone_after.into_inner().unwrap_or_default().unwrap_or(took));
        }
        Ok((gone, restored))
    }
    .await;
    stack.stop().await;
    result
}

/// A stack that re-announces nothing during the run, logging warnings only.
fn quiet(bin_dir: &Path) -> StackOptions {
    StackOptions {
        bin_dir: Some(bin_dir.to_path_buf()),
        sentinel: vec![
            ("HYPERFLEET_MAX_AGE_NOT_READY", "1h".into()),
            ("HYPERFLEET_MAX_AGE_READY", "1h".into()),
            ("HYPERFLEET_LOG_LEVEL", "warn".into()),
        ],
        adapter: vec![("HYPERFLEET_LOG_LEVEL", "warn".into())],
        ..Default::default()
    }
}

/// The operations of this part (`--ops`): landing rate, deletes, drift repair.
pub const OPS: [&str; 3] = ["landing", "delete", "drift"];

/// Adapter vs raw loop at prefetch 1 and the default (10); deletes; drift repair (those of `ops`).
pub async fn run(env: &LocalEnv, bin_dir: &Path, n: usize, ops: &[&str]) -> Result<Value> {
    let mut report = serde_json::Map::new();
    if ops.contains(&"landing") {
        report.insert("landing".into(), landing(env, bin_dir, n).await?);
    }
    if ops.contains(&"delete") {
        report.insert("delete".into(), deletes(env, bin_dir, n).await?);
    }
    if ops.contains(&"drift") {
        report.insert("drift_repair".into(), drift(bin_dir, n).await?);
    }
    Ok(Value::Object(report))
}

/// Landing rate against the raw loop at prefetch 1 and 10.
async fn landing(env: &LocalEnv, bin_dir: &Path, n: usize) -> Result<Value> {
    let mut out = Vec::new();
    for prefetch in [1u16, 10] {
        // The raw loop runs before and after the adapter (the box drifts over a run); their mean is
        // the baseline.
        let (before, before_cpu, _) = raw_rate(env, n, usize::from(prefetch)).await?;
        let (adapter, rss, per_event) = adapter_rate(bin_dir, n, prefetch).await?;
        let (after, after_cpu, raw_split) = raw_rate(env, n, usize::from(prefetch)).await?;
        let (raw, raw_cpu_ms) = ((before + after) / 2.0, (before_cpu + after_cpu) / 2.0);
        println!(
            "prefetch {prefetch:>2}: adapter {adapter:>6.1} clusters/s | raw kube-rs {raw:>6.1} pairs/s ({before:.1} before, {after:.1} after) | {:.2}x | adapter RSS {rss:.1} MiB",
            adapter / raw
        );
        let p = &per_event;
        println!(
            "            per event {:.1} ms in the adapter (fetch {:.1}, apply {:.1}, report {:.1}, the rest {:.1}); \
             the API's own time: GET {:.1} ms, status PUT {:.1} ms; a raw pair {:.1} ms",
            p.adapter_ms,
            p.fetch_ms,
            p.apply_ms,
            p.report_ms,
            p.adapter_ms - p.fetch_ms - p.apply_ms - p.report_ms,
            p.api_get_ms,
            p.api_put_status_ms,
            1000.0 * f64::from(prefetch) / raw
        );
        println!(
            "            machine CPU per cluster {:.1} ms, per raw pair {raw_cpu_ms:.1} ms ({:.2}x)",
            p.machine_cpu_ms,
            raw_cpu_ms / p.machine_cpu_ms.max(1e-9)
        );
        println!("            by program per cluster: {}", split_line(&p.machine_split));
        println!("            by program per raw pair (after): {}", split_line(&raw_split));
        out.push(json!({"prefetch": prefetch, "clusters": n, "adapter_per_s": adapter, "raw_kube_per_s": raw,
                        "raw_kube_per_s_before_after": [before, after], "ratio": adapter / raw,
                        "adapter_rss_mib": rss, "per_event": per_event, "raw_machine_cpu_ms": raw_cpu_ms,
                        "raw_machine_split": raw_split}));
    }
    Ok(Value::Array(out))
}

/// N landed clusters deleted at once, against the controller-manager deleting N pairs.
async fn deletes(env: &LocalEnv, bin_dir: &Path, n: usize) -> Result<Value> {
    let adapter = adapter_delete(bin_dir, n).await?;
    let raw = raw_delete(env, n).await?;
    println!(
        "delete {n}: adapter until hard-deleted {adapter:>6.1} s ({:.1}/s) | controller-manager alone {raw:>6.1} s ({:.1}/s) | {:.2}x",
        n as f64 / adapter,
        n as f64 / raw,
        raw / adapter
    );
    Ok(json!({"clusters": n, "adapter_s": adapter, "raw_kcm_s": raw, "ratio": raw / adapter}))
}

/// Namespaces deleted out of band one at a time until the adapter has restored each.
async fn drift(bin_dir: &Path, n: usize) -> Result<Value> {
    let k = 20.min(n);
    let (mut gone, mut restored) = drift_repair(bin_dir, k).await?;
    gone.sort_by(f64::total_cmp);
    restored.sort_by(f64::total_cmp);
    let ms = |v: &[f64], p: f64| crate::percentile(v, p) * 1000.0;
    println!(
        "drift repair, {k} Namespaces deleted out of band: restored after median {:.0} ms, p99 {:.0} ms (old one gone after median {:.0} ms, p99 {:.0} ms)",
        ms(&restored, 0.5),
        ms(&restored, 0.99),
        ms(&gone, 0.5),
        ms(&gone, 0.99)
    );
    Ok(json!({"namespaces": k, "restored_ms": {"p50": ms(&restored, 0.5), "p99": ms(&restored, 0.99)},
              "old_gone_ms": {"p50": ms(&gone, 0.5), "p99": ms(&gone, 0.99)}}))
}
