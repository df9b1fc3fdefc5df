//! The API's bounds under load: create and get with 1 000 change feeds open beside none (the feeds
//! share one reader of the change table) — idle feeds (on nodepools: no create matches them) and
//! feeds that receive every create — and the API's memory after listing pages of clusters whose
//! specs are at the 64 KiB limit, beside the chart's memory limit.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use hyperfleet_tests::LocalEnv;
use serde_json::{Value, json};

use crate::{api::api_cell, rss_mib, seeded_api_with};

/// The chart's memory limit for the API (values.yaml `hyperfleetApi.resources.limits.memory`).
const CHART_LIMIT_MIB: f64 = 256.0;

pub async fn run(env: &LocalEnv, bin_dir: &Path, duration: Duration, watchers: usize) -> Result<Value> {
    let limit = watchers.to_string();
    let extra = [("HYPERFLEET_WATCH_MAX_STREAMS_PER_CLIENT", limit.as_str())];
    let (db, mut conn, api, port) = seeded_api_with(env, bin_dir, "bench-bounds", 1000, &extra).await?;
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("select id from resources").fetch_all(&mut conn).await?;
    let ids = Arc::new(ids.into_iter().map(|u| u.to_string()).collect::<Vec<_>>());
    let base = format!("http://127.0.0.1:{port}/api/hyperfleet/v1");

    println!(
        "{:<7} {:>9} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}  (8 clients; idle feeds are on nodepools)",
        "op", "feeds", "none req/s", "none p99", "feeds req/s", "feeds p99", "rate", "p99"
    );
    let mut cells = serde_json::Map::new();
    let mut baseline = Vec::new();
    for op in ["create", "get"] {
        let c = api_cell(&base, &ids, op, 8, duration).await?;
        baseline.push((c.rps, c.p99_ms));
    }
    let rss_before_feeds = rss_mib(api.pid());
    let http = reqwest::Client::new();
    let mut rss_with_feeds = 0.0;
    for (feeds_on, label) in [("nodepools", "idle"), ("clusters", "receiving")] {
        let mut feeds = Vec::with_capacity(watchers);
        for _ in 0..watchers {
            let resp = http.get(format!("{base}/{feeds_on}?watch=true")).send().await?;
            if !resp.status().is_success() {
                bail!("opening a change feed: HTTP {}", resp.status());
            }
            feeds.push(resp);
        }
        rss_with_feeds = rss_mib(api.pid());
        for (op, &(none_rps, none_p99)) in ["create", "get"].into_iter().zip(&baseline) {
            let c = api_cell(&base, &ids, op, 8, duration).await?;
            let (rps, p99) = (c.rps, c.p99_ms);
            let (rate, slower) = (rps / none_rps.max(f64::MIN_POSITIVE), p99 / none_p99.max(f64::MIN_POSITIVE));
            println!(
                "{op:<7} {label:>9} {none_rps:>10.0} {none_p99:>8.2}ms {rps:>10.0} {p99:>8.2}ms {rate:>7.2}x {slower:>7.2}x"
            );
            cells.insert(
                format!("{op}/{label}"),
                json!({"clients": 8, "feeds": label, "none_rps": none_rps, "none_p99_ms": none_p99, "feeds_rps": rps,
                       "feeds_p99_ms": p99, "rate_ratio": rate, "p99_ratio": slower}),
            );
        }
    }
    println!("API RSS {rss_before_feeds:.1} MiB before the {watchers} feeds, {rss_with_feeds:.1} MiB with them");

    // 100 clusters whose specs are just under the 64 KiB limit (5 000 small keys), listed a
    // hundred times as pages of 100.
    sqlx::query(
        "insert into resources (id, kind, name, spec, labels, conditions, created_by, updated_by) \
         select gen_random_uuid(), 'Cluster', 'wide-' || g, \
                (select jsonb_object_agg('k' || i, i) from generate_series(1, 5000) i), '{}', '[]', 'bench', 'bench' \
         from generate_series(1, 100) g",
    )
    .execute(&mut conn)
    .await?;
    let spec_bytes: i64 =
        sqlx::query_scalar("select max(length(spec::text))::bigint from resources where name like 'wide-%'")
            .fetch_one(&mut conn)
            .await?;
    let idle = rss_mib(api.pid());
    let mut peak = idle;
    let started = Instant::now();
    for _ in 0..100 {
        let page = http.get(format!("{base}/clusters?size=100&search=name%20%3E%3D%20'wide-'")).send().await?;
        if !page.status().is_success() {
            bail!("listing wide clusters: HTTP {}", page.status());
        }
        let _ = page.bytes().await?;
        peak = peak.max(rss_mib(api.pid()));
    }
    let listed = started.elapsed().as_secs_f64();
    println!(
        "100 pages of 100 clusters with {spec_bytes}-byte specs in {listed:.1} s: API RSS {idle:.1} MiB before, \
         {peak:.1} MiB at most ({:.0} % of the chart's {CHART_LIMIT_MIB} MiB limit)",
        peak / CHART_LIMIT_MIB * 100.0
    );
    api.stop().await;
    db.drop_db().await;
    Ok(
        json!({"watchers": watchers, "cells": cells, "rss_mib": {"before_feeds": rss_before_feeds, "with_feeds": rss_with_feeds},
              "wide_pages": {"spec_bytes": spec_bytes, "pages": 100, "seconds": listed, "rss_idle_mib": idle,
                             "rss_peak_mib": peak, "chart_limit_mib": CHART_LIMIT_MIB}}),
    )
}
