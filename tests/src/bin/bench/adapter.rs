//! The adapter: clusters landed per second with N events already queued, beside a raw kube-rs loop
//! that server-side applies the same Namespace + ServiceAccount pairs (same labels, annotations and
//! field manager) against the same apiserver at the same concurrency. The adapter also reads each
//! cluster from the API and PUTs its status report; the raw loop does only the Kubernetes part.
//!
//! Both rates are (N − 1) / (last completion − first completion): for the adapter, the first and
//! last status report as the API stored them; for the loop, its own clock. Start-up is excluded
//! on both sides.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use futures_util::{StreamExt, stream};
use hyperfleet_tests::{LocalEnv, Stack, StackOptions, eventually, metric_sum};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::rss_mib;

/// The adapter's default field manager (`kubernetes.field_manager`).
const FIELD_MANAGER: &str = "hyperfleet-adapter";

/// The adapter's rate at `prefetch` and its RSS after the run.
async fn adapter_rate(bin_dir: &Path, n: usize, prefetch: u16) -> Result<(f64, f64)> {
    let mut stack = Stack::start_with(StackOptions {
        bin_dir: Some(bin_dir.to_path_buf()),
        // No re-publishing while the events wait for an adapter.
        sentinel: vec![("HYPERFLEET_MAX_AGE_NOT_READY", "1h".into()), ("HYPERFLEET_LOG_LEVEL", "warn".into())],
        adapter: vec![("HYPERFLEET_PREFETCH", prefetch.to_string()), ("HYPERFLEET_LOG_LEVEL", "warn".into())],
        ..Default::default()
    })
    .await?;
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
        let span: f64 = eventually(Duration::from_secs(600), || async {
            let (count, span): (i64, f64) = sqlx::query_as(
                "select count(*), coalesce(extract(epoch from max(last_report_time) - min(last_report_time)), 0)::float8 \
                 from adapter_statuses",
            )
            .fetch_one(&mut *db.lock().await)
            .await?;
            Ok((count as usize >= n).then_some(span))
        })
        .await
        .with_context(|| format!("adapter did not report every cluster\n{}", stack.logs()))?;
        Ok(((n - 1) as f64 / span.max(1e-6), rss_mib(stack.adapter.pid())))
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

/// The raw loop's rate at `concurrency`; removes its Namespaces afterwards.
async fn raw_rate(env: &LocalEnv, n: usize, concurrency: usize) -> Result<f64> {
    let client = env.kube().await?;
    let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let done: Vec<Result<Instant>> = stream::iter(ids.iter())
        .map(|id| {
            let (client, params) = (client.clone(), params.clone());
            async move {
                let (ns, sa) = objects(id)?;
                kube::Api::<Namespace>::all(client.clone()).patch(id, &params, &Patch::Apply(&ns)).await?;
                kube::Api::<ServiceAccount>::namespaced(client, id)
                    .patch("landing-zone", &params, &Patch::Apply(&sa))
                    .await?;
                Ok(Instant::now())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let cleanup = hyperfleet_tests::remove_namespaces(env, &ids).await;
    let mut times = done.into_iter().collect::<Result<Vec<_>>>()?;
    cleanup?;
    times.sort();
    let span = match (times.first(), times.last()) {
        (Some(a), Some(b)) => b.duration_since(*a).as_secs_f64(),
        _ => 0.0,
    };
    Ok((n - 1) as f64 / span.max(1e-6))
}

/// Adapter vs raw loop at prefetch 1 and the default (10).
pub async fn run(env: &LocalEnv, bin_dir: &Path, n: usize) -> Result<Value> {
    let mut out = Vec::new();
    for prefetch in [1u16, 10] {
        let (adapter, rss) = adapter_rate(bin_dir, n, prefetch).await?;
        let raw = raw_rate(env, n, usize::from(prefetch)).await?;
        println!(
            "prefetch {prefetch:>2}: adapter {adapter:>6.1} clusters/s | raw kube-rs {raw:>6.1} pairs/s | {:.2}x | adapter RSS {rss:.1} MiB",
            adapter / raw
        );
        out.push(json!({"prefetch": prefetch, "clusters": n, "adapter_per_s": adapter, "raw_kube_per_s": raw,
                        "ratio": adapter / raw, "adapter_rss_mib": rss}));
    }
    Ok(Value::Array(out))
}
