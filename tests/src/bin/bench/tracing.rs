//! The cost of tracing: the API's create and get rates and its idle memory with tracing off, with
//! every request traced (sampling 100 %, exported to a real OTLP/HTTP receiver in this process),
//! and off again (the spread of the two "off" runs is the noise). With `HF_BEFORE_BIN_DIR` the
//! binaries of an earlier build (before tracing existed) run first, for "off is today's speed".

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Result;
use hyperfleet_tests::{LocalEnv, otlp::Collector};
use serde_json::{Value, json};

use crate::{api::api_cell, rss_mib, seeded_api_with};

pub async fn run(env: &LocalEnv, bin_dir: &Path, duration: Duration) -> Result<Value> {
    let collector = Collector::start(false).await?;
    let endpoint = collector.endpoint().to_string();
    let traced = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_TRACES_SAMPLER", "always_on")];
    let before = std::env::var("HF_BEFORE_BIN_DIR").ok().map(std::path::PathBuf::from);
    type Run<'a> = (&'a str, &'a Path, &'a [(&'static str, &'a str)]);
    let mut runs: Vec<Run<'_>> = Vec::new();
    if let Some(dir) = &before {
        runs.push(("before", dir.as_path(), &[]));
    }
    runs.extend([("off", bin_dir, &[][..]), ("on", bin_dir, &traced[..]), ("off again", bin_dir, &[][..])]);
    println!(
        "{:<10} {:>11} {:>10} {:>11} {:>10} {:>9}  (8 clients, 1 000 clusters)",
        "tracing", "create req/s", "create p99", "get req/s", "get p99", "idle RSS"
    );
    let mut cells = serde_json::Map::new();
    for (label, dir, extra) in runs {
        let (db, mut conn, api, port) = seeded_api_with(env, dir, "bench-tracing", 1000, extra).await?;
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar("select id from resources").fetch_all(&mut conn).await?;
        let ids = Arc::new(ids.into_iter().map(|u| u.to_string()).collect::<Vec<_>>());
        let base = format!("http://127.0.0.1:{port}/api/hyperfleet/v1");
        let idle = rss_mib(api.pid());
        let create = api_cell(&base, &ids, "create", 8, duration).await?;
        let get = api_cell(&base, &ids, "get", 8, duration).await?;
        println!(
            "{label:<10} {:>11.0} {:>8.2}ms {:>11.0} {:>8.2}ms {idle:>6.1} MiB",
            create.rps, create.p99_ms, get.rps, get.p99_ms
        );
        cells.insert(
            label.to_string(),
            json!({"create_rps": create.rps, "create_p99_ms": create.p99_ms, "get_rps": get.rps,
                   "get_p99_ms": get.p99_ms, "idle_rss_mib": idle}),
        );
        api.stop().await;
        db.drop_db().await;
    }
    let rate = |label: &str, op: &str| cells.get(label).and_then(|c| c[op].as_f64()).unwrap_or(0.0);
    for op in ["create_rps", "get_rps"] {
        let off = (rate("off", op) + rate("off again", op)) / 2.0;
        println!(
            "{op}: on/off {:.2}x, off spread {:.2}x{}",
            rate("on", op) / off.max(f64::MIN_POSITIVE),
            rate("off again", op) / rate("off", op).max(f64::MIN_POSITIVE),
            if before.is_some() {
                format!(", off/before {:.2}x", off / rate("before", op).max(f64::MIN_POSITIVE))
            } else {
                String::new()
            }
        );
    }
    println!("OTLP export requests received while traced: {}", collector.requests());
    Ok(json!({"clients": 8, "cells": cells, "export_requests": collector.requests()}))
}
