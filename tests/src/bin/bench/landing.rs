//! Create→landed latency: N clusters POSTed one every `interval` to the three services running
//! with their default settings; for each, the time from the POST's 201 to
//! (a) its CloudEvent reaching a queue bound to the exchange (the broker has routed it, which is
//!     when it confirms the publish),
//! (b) its ServiceAccount (applied after its Namespace) appearing in a Kubernetes watch,
//! (c) `Reconciled=True` appearing in the API's change feed.
//! Every observer is a push stream (consumer, watch, feed), so no polling interval is measured.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use hyperfleet_tests::{Stack, StackOptions, eventually};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{ListParams, WatchEvent, WatchParams};
use serde_json::{Value, json};

use crate::{percentile, rss_mib};

/// First time each cluster id was seen by one observer.
type Seen = Arc<Mutex<HashMap<String, Instant>>>;

fn mark(seen: &Seen, id: &str) {
    if let Ok(mut s) = seen.lock() {
        s.entry(id.to_string()).or_insert_with(Instant::now);
    }
}

/// (a): a consumer on an exclusive queue bound with `#`.
async fn watch_events(stack: &Stack, seen: Seen) -> Result<tokio::task::JoinHandle<()>> {
    let cfg = stack.broker()?;
    let conn = cfg.connect("hyperfleet-bench-tap").await?;
    let ch = conn.create_channel().await?;
    cfg.declare_exchange(&ch).await?;
    let opts = lapin::options::QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let q = ch.queue_declare("".into(), opts, Default::default()).await?;
    ch.queue_bind(q.name().clone(), cfg.exchange.as_str().into(), "#".into(), Default::default(), Default::default())
        .await?;
    let no_ack = lapin::options::BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut consumer = ch.basic_consume(q.name().clone(), "bench".into(), no_ack, Default::default()).await?;
    Ok(tokio::spawn(async move {
        let _conn = conn;
        while let Some(Ok(d)) = consumer.next().await {
            if let Ok(e) = serde_json::from_slice::<Value>(&d.data)
                && let Some(id) = e["data"]["id"].as_str()
            {
                mark(&seen, id);
            }
        }
    }))
}

/// (b): a watch on the adapter's ServiceAccounts in every namespace.
async fn watch_objects(stack: &Stack, seen: Seen) -> Result<tokio::task::JoinHandle<()>> {
    let api: kube::Api<ServiceAccount> = kube::Api::all(stack.env.kube().await?);
    let selector = "app.kubernetes.io/managed-by=hyperfleet-adapter";
    let list = api.list_metadata(&ListParams::default().labels(selector).limit(1)).await?;
    let mut rv = list.metadata.resource_version.unwrap_or_else(|| "0".into());
    Ok(tokio::spawn(async move {
        loop {
            let Ok(stream) = api.watch(&WatchParams::default().labels(selector).timeout(290), &rv).await else {
                return;
            };
            let mut stream = stream.boxed();
            while let Some(Ok(event)) = stream.next().await {
                match event {
                    WatchEvent::Added(sa) | WatchEvent::Modified(sa) => {
                        if let Some(ns) = &sa.metadata.namespace {
                            mark(&seen, ns);
                        }
                        rv = sa.metadata.resource_version.unwrap_or(rv);
                    }
                    WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                    WatchEvent::Deleted(_) => {}
                    WatchEvent::Error(_) => return,
                }
            }
        }
    }))
}

/// (c): the API's change feed, for the first `Reconciled=True` of each cluster.
async fn watch_reconciled(stack: &Stack, seen: Seen) -> Result<tokio::task::JoinHandle<()>> {
    let url = format!("{}/api/hyperfleet/v1/clusters?watch=true", stack.api_url);
    let mut resp = stack.client().get(&url).send().await?;
    if !resp.status().is_success() {
        bail!("GET {url}: {}", resp.status());
    }
    Ok(tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let Ok(e) = serde_json::from_slice::<Value>(&line) else { continue };
                let reconciled = hyperfleet_tests::condition(&e["object"], "Reconciled")["status"] == "True";
                if reconciled && let Some(id) = e["object"]["id"].as_str() {
                    mark(&seen, id);
                }
            }
        }
    }))
}

/// Milliseconds from each 201 to the observer's first sighting; median, p90, p99, max.
fn stage(created: &[(String, Instant)], seen: &Seen) -> Result<Value> {
    let seen = seen.lock().map_err(|_| anyhow::anyhow!("observer poisoned"))?;
    let mut ms: Vec<f64> = created
        .iter()
        .filter_map(|(id, at)| seen.get(id).map(|s| s.saturating_duration_since(*at).as_secs_f64() * 1000.0))
        .collect();
    if ms.len() != created.len() {
        bail!("{} of {} clusters observed", ms.len(), created.len());
    }
    ms.sort_by(f64::total_cmp);
    Ok(json!({"median_ms": percentile(&ms, 0.5), "p90_ms": percentile(&ms, 0.9), "p99_ms": percentile(&ms, 0.99),
              "max_ms": ms.last().copied().unwrap_or(0.0)}))
}

/// One run: a fresh stack (change feed on or off), N creates, the three stages, RSS idle and after.
pub async fn run(bin_dir: &Path, n: usize, interval: Duration, change_feed: bool) -> Result<Value> {
    let stack = Stack::start_with(StackOptions {
        bin_dir: Some(bin_dir.to_path_buf()),
        default_poll_interval: true,
        sentinel: vec![("HYPERFLEET_WATCH", change_feed.to_string()), ("HYPERFLEET_LOG_LEVEL", "warn".into())],
        adapter: vec![("HYPERFLEET_LOG_LEVEL", "warn".into())],
        ..Default::default()
    })
    .await?;
    let result = measure(&stack, n, interval, change_feed).await;
    stack.stop().await;
    result
}

async fn measure(stack: &Stack, n: usize, interval: Duration, change_feed: bool) -> Result<Value> {
    let rss = |s: &Stack| json!({"api": rss_mib(s.api.pid()), "sentinel": rss_mib(s.sentinel.pid()), "adapter": rss_mib(s.adapter.pid())});
    let idle = rss(stack);
    // What idle RSS is made of: the process's own memory (anonymous) and pages of its binary and
    // libraries mapped from the page cache (file: clean, shared, reclaimable).
    let split = |pid: Option<u32>| {
        let (anon, file) = crate::rss_split_mib(pid);
        json!({"anon": anon, "file": file})
    };
    let idle_split = json!({"api": split(stack.api.pid()), "sentinel": split(stack.sentinel.pid()),
                            "adapter": split(stack.adapter.pid())});
    let (events, objects, reconciled): (Seen, Seen, Seen) = Default::default();
    let observers = [
        watch_events(stack, events.clone()).await?,
        watch_objects(stack, objects.clone()).await?,
        watch_reconciled(stack, reconciled.clone()).await?,
    ];
    let http = stack.client().clone();
    let url = format!("{}/api/hyperfleet/v1/clusters", stack.api_url);
    let mut ticks = tokio::time::interval(interval);
    let mut created = Vec::with_capacity(n);
    let tag = &stack.tag[..6];
    for i in 0..n {
        ticks.tick().await;
        let body = json!({"kind": "Cluster", "name": format!("lat-{tag}-{i}"), "spec": {"region": "eu"}});
        let resp = http.post(&url).json(&body).send().await?;
        let at = Instant::now();
        if resp.status() != 201 {
            bail!("POST: {}", resp.status());
        }
        let v: Value = resp.json().await?;
        let id = v["id"].as_str().context("id in the 201")?.to_string();
        stack.track_created(&id);
        created.push((id, at));
    }
    let all_in = |seen: &Seen| seen.lock().map(|s| created.iter().all(|(id, _)| s.contains_key(id))).unwrap_or(false);
    eventually(Duration::from_secs(600), || async {
        Ok((all_in(&events) && all_in(&objects) && all_in(&reconciled)).then_some(()))
    })
    .await
    .with_context(|| format!("not every cluster landed\n{}", stack.logs()))?;
    let after = rss(stack);
    for o in observers {
        o.abort();
    }
    let out = json!({
        "clusters": n, "interval_ms": interval.as_millis() as u64, "change_feed": change_feed,
        "event_routed": stage(&created, &events)?, "namespace_and_service_account": stage(&created, &objects)?,
        "reconciled": stage(&created, &reconciled)?, "rss_mib": {"idle": idle, "after": after, "idle_split": idle_split},
    });
    let row = |name: &str, v: &Value| {
        println!(
            "  {name:<26} median {:>8.1} ms  p90 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms",
            v["median_ms"].as_f64().unwrap_or(0.0),
            v["p90_ms"].as_f64().unwrap_or(0.0),
            v["p99_ms"].as_f64().unwrap_or(0.0),
            v["max_ms"].as_f64().unwrap_or(0.0)
        );
    };
    println!("change feed {}:", if change_feed { "on (default)" } else { "off (poll only)" });
    row("201 → event routed", &out["event_routed"]);
    row("201 → Namespace + SA", &out["namespace_and_service_account"]);
    row("201 → Reconciled=True", &out["reconciled"]);
    Ok(out)
}
