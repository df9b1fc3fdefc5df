//! Part 6: the chart as pods on the local node (`tests/env/run node-up` first). `helm install --wait`
//! to every pod Ready, and create→Reconciled one cluster at a time through a `kubectl port-forward`
//! to the API Service; beside it, the same sequential create→Reconciled against the loopback stack
//! (the three binaries of the node's images' build as processes, same database and broker kinds).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hyperfleet_tests::{
    LocalEnv, Stack, StackOptions, condition,
    node::{Release, ReleaseSpec, chart_dir},
    post_cluster_with,
};
use serde_json::{Value, json};

use crate::percentile;

/// Milliseconds from each 201 to a GET that shows Reconciled=True (polled every 20 ms), one cluster
/// at a time.
async fn sequential(
    http: &reqwest::Client,
    api: &str,
    n: usize,
    prefix: &str,
    ids: &mut Vec<String>,
) -> Result<Vec<f64>> {
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let id = post_cluster_with(http, api, &format!("{prefix}-{i}"), json!({})).await?;
        ids.push(id.clone());
        let url = format!("{api}/api/hyperfleet/v1/clusters/{id}");
        loop {
            let c: Value = http.get(&url).timeout(Duration::from_secs(10)).send().await?.json().await?;
            if condition(&c, "Reconciled")["status"] == "True" {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("cluster {id} not Reconciled within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

fn summary(ms: &[f64]) -> Value {
    json!({"median_ms": percentile(ms, 0.5), "p90_ms": percentile(ms, 0.9), "max_ms": percentile(ms, 1.0), "n": ms.len()})
}

pub async fn run(env: &LocalEnv, bin_dir: &std::path::Path, n: usize) -> Result<Value> {
    // Loopback: the same binaries as processes.
    let stack = Stack::start_with(StackOptions { bin_dir: Some(bin_dir.to_path_buf()), ..Default::default() }).await?;
    let mut ids = Vec::new();
    let loopback = sequential(stack.client(), &stack.api_url, n, "bench-loop", &mut ids).await;
    stack.stop().await;
    let loopback = loopback?;

    let args = vec!["-f".into(), chart_dir().join("ci/in-cluster-values.yaml").display().to_string()];
    let release = Release::install(
        env,
        ReleaseSpec { prefix: "bench", args, chart_creates_namespace: true, ..Default::default() },
    )
    .await
    .context("helm install on the node")?;
    let pf = release.port_forward("service/hyperfleet-api", 8000).await?;
    let pods = sequential(&pf.http, &pf.url, n, "bench-pod", &mut ids).await;
    drop(pf);
    let install = release.install_to_ready.as_secs_f64();
    release.uninstall().await?;
    // The landed Namespaces are the adapter's, not the release's.
    hyperfleet_tests::remove_namespaces(env, &ids).await?;
    let pods = pods?;

    let (l, p) = (summary(&loopback), summary(&pods));
    println!("helm install → all 5 pods Ready       {install:>8.1} s");
    for (name, v) in [("loopback processes", &l), ("pods, via port-forward", &p)] {
        println!(
            "create→Reconciled, {name:<22} median {:>7.1} ms  p90 {:>7.1} ms  max {:>7.1} ms  (n = {n}, one at a time)",
            v["median_ms"].as_f64().unwrap_or(0.0),
            v["p90_ms"].as_f64().unwrap_or(0.0),
            v["max_ms"].as_f64().unwrap_or(0.0)
        );
    }
    let ratio = p["median_ms"].as_f64().unwrap_or(0.0) / l["median_ms"].as_f64().unwrap_or(1.0).max(0.001);
    println!("in-cluster / loopback median: {ratio:.2}×");
    Ok(json!({"helm_install_to_ready_s": install, "loopback": l, "pods": p, "pods_over_loopback": ratio}))
}
