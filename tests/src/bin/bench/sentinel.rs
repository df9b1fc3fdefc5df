//! The sentinel: one pass over N clusters seeded straight into the database — wall and CPU time,
//! confirmed events per second — beside a raw lapin publisher with confirms (same message size,
//! same exchange, same pipelining) in the same run; and the pass's listing as the sentinel asks
//! for it now (`total=false`, the decision's fields) beside how it asked before.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use hyperfleet_tests::{LocalEnv, Service};
use serde_json::{Value, json};

use crate::{box_cpu_seconds, cpu_seconds, ms_per, on_the_box, rss_mib, seeded_api};

/// Publishes `n` messages of `body` to `exchange` with confirms, `PIPELINE` in flight: the
/// sentinel's publishing without the API, the decision or the CloudEvent building. Returns events
/// per second and the CPU seconds this process spent (it does nothing else meanwhile).
async fn raw_publish(cfg: &hyperfleet_common::broker::BrokerConfig, n: usize, body: &[u8]) -> Result<(f64, f64)> {
    const PIPELINE: usize = 512;
    let conn = cfg.connect("hyperfleet-bench-raw").await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(Default::default()).await?;
    cfg.declare_exchange(&ch).await?;
    let props = lapin::BasicProperties::default()
        .with_content_type("application/cloudevents+json".into())
        .with_delivery_mode(2);
    let started = Instant::now();
    let cpu_before = cpu_seconds(Some(std::process::id()));
    let mut left = n;
    while left > 0 {
        let batch = left.min(PIPELINE);
        let mut confirms = Vec::with_capacity(batch);
        for _ in 0..batch {
            let opts = lapin::options::BasicPublishOptions::default();
            confirms.push(
                ch.basic_publish(cfg.exchange.as_str().into(), "cluster.reconcile".into(), opts, body, props.clone())
                    .await?,
            );
        }
        for c in confirms {
            if !c.await?.is_ack() {
                bail!("raw publish not confirmed");
            }
        }
        left -= batch;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(Some(std::process::id())) - cpu_before;
    let _ = conn.close(200, "done".into()).await;
    Ok((n as f64 / secs, cpu))
}

/// Walks every cluster the way the sentinel's pass lists them (100 a page in id order, each page
/// after the last id of the one before) and returns the wall seconds and the API's CPU seconds.
/// `lean` asks as the sentinel does now (`total=false`, only the fields it decides on); otherwise as
/// it did before (every field and a `total` per page).
async fn list_walk(api: &Service, port: u16, lean: bool) -> Result<(f64, f64)> {
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/api/hyperfleet/v1/clusters");
    let (started, cpu_before) = (Instant::now(), cpu_seconds(api.pid()));
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![("size", "100".to_string()), ("order", "id asc".to_string())];
        if lean {
            query.push(("fields", "id,kind,href,generation,owner_references,created_time,status".into()));
            query.push(("total", "false".into()));
        }
        if let Some(id) = &after {
            query.push(("search", format!("id > '{id}'")));
        }
        let page: Value = http.get(&url).query(&query).send().await?.error_for_status()?.json().await?;
        let items = page["items"].as_array().map(Vec::as_slice).unwrap_or_default();
        match items.last().and_then(|i| i["id"].as_str()) {
            Some(last) if items.len() == 100 => after = Some(last.to_string()),
            _ => break,
        }
    }
    Ok((started.elapsed().as_secs_f64(), cpu_seconds(api.pid()) - cpu_before))
}

/// A queue bound to the exchange with `#`, as an adapter's would be: the sentinel publishes
/// `mandatory` and counts only what a queue took; the raw publisher's messages go to it too. Held
/// by the returned connection (exclusive, removed with it).
async fn sink(cfg: &hyperfleet_common::broker::BrokerConfig) -> Result<(lapin::Connection, lapin::Channel, String)> {
    let conn = cfg.connect("hyperfleet-bench-sink").await?;
    let ch = conn.create_channel().await?;
    cfg.declare_exchange(&ch).await?;
    let queue = format!("{}-sink", cfg.exchange);
    let opts = lapin::options::QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    ch.queue_declare(queue.as_str().into(), opts, Default::default()).await?;
    ch.queue_bind(
        queue.as_str().into(),
        cfg.exchange.as_str().into(),
        "#".into(),
        Default::default(),
        Default::default(),
    )
    .await?;
    Ok((conn, ch, queue))
}

/// One sentinel pass over `n` new clusters: wall and CPU seconds, confirmed events per second, and
/// the raw publisher's rate in the same run.
pub async fn pass(env: &LocalEnv, bin_dir: &Path, n: i64) -> Result<Value> {
    let (db, _conn, api, port) = seeded_api(env, bin_dir, "bench-pass", n).await?;
    let exchange = format!("hf-bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let broker = env.broker(&exchange)?;
    let (sink_conn, sink_ch, sink_queue) = sink(&broker).await?;
    let sentinel_vars = vec![
        ("HYPERFLEET_BROKER_URL", env.get("HF_AMQPS_URL")?.to_string()),
        ("HYPERFLEET_BROKER_CA_FILE", env.get("HF_AMQPS_CA_FILE")?.to_string()),
        ("HYPERFLEET_BROKER_EXCHANGE", exchange.clone()),
        ("HYPERFLEET_HYPERFLEET_API_BASE_URL", format!("http://127.0.0.1:{port}")),
        ("HYPERFLEET_POLL_INTERVAL", "1h".to_string()),
        ("HYPERFLEET_MAX_AGE_NOT_READY", "1h".to_string()),
        ("HYPERFLEET_WATCH", "false".to_string()),
        ("HYPERFLEET_LOG_LEVEL", "warn".to_string()),
    ];
    let sentinel =
        Service::start_binary("bench-pass", "sentinel", &bin_dir.join("hyperfleet-sentinel"), &[], &sentinel_vars)?;
    let count = "hyperfleet_sentinel_poll_duration_seconds_count";
    let confirmed = "hyperfleet_sentinel_events_published_total";
    // The whole machine's CPU (the sentinel, the API, PostgreSQL, RabbitMQ, this bench) from the
    // pass's first confirmed event to its end, and the events confirmed in that window.
    let (box_before, early) = hyperfleet_tests::eventually(Duration::from_secs(900), || async {
        let m = sentinel.metrics().await.unwrap_or_default();
        let published = hyperfleet_tests::metric_sum(&m, confirmed);
        Ok((published > 0.0).then(|| (box_cpu_seconds(), published)))
    })
    .await?;
    hyperfleet_tests::eventually(Duration::from_secs(900), || async {
        Ok((hyperfleet_tests::metric_sum(&sentinel.metrics().await.unwrap_or_default(), count) >= 1.0).then_some(()))
    })
    .await?;
    let pass_box = box_cpu_seconds() - box_before;
    let m = sentinel.metrics().await?;
    let wall = hyperfleet_tests::metric_sum(&m, "hyperfleet_sentinel_poll_duration_seconds_sum");
    let published = hyperfleet_tests::metric_sum(&m, confirmed);
    let measured = published - early;
    let cpu = cpu_seconds(sentinel.pid());
    let rss = rss_mib(sentinel.pid());
    // The same event size for the raw publisher.
    let sample = hyperfleet_common::cloudevent::reconcile_event(&hyperfleet_common::cloudevent::ReconcileData {
        id: uuid::Uuid::now_v7().to_string(),
        kind: "Cluster".into(),
        href: format!("/api/hyperfleet/v1/clusters/{}", uuid::Uuid::now_v7()),
        generation: 1,
        owner_references: None,
    })?;
    let (body, _) = hyperfleet_common::cloudevent::encode(&sample)?;
    sentinel.stop().await;
    sink_ch.queue_purge(sink_queue.as_str().into(), Default::default()).await?;
    let ((raw, raw_cpu), raw_box, raw_wall) = on_the_box(raw_publish(&broker, n as usize, &body)).await?;
    let _ = sink_conn.close(200, "done".into()).await;
    // The pass's listing as it was before `total=false` and `fields` (the bounds issue), and as now.
    let (full_s, full_cpu) = list_walk(&api, port, false).await?;
    let (lean_s, lean_cpu) = list_walk(&api, port, true).await?;
    println!(
        "{n:>7} clusters: the pass's listing with total and every field {full_s:>6.2} s ({full_cpu:.2} s API CPU), \
         total=false with the decision's fields {lean_s:>6.2} s ({lean_cpu:.2} s) | {:.2}x faster",
        full_s / lean_s.max(0.001)
    );
    api.stop().await;
    if let Ok(c) = broker.connect("hyperfleet-bench-cleanup").await {
        if let Ok(ch) = c.create_channel().await {
            let _ = ch.exchange_delete(exchange.as_str().into(), Default::default()).await;
        }
        let _ = c.close(200, "done".into()).await;
    }
    db.drop_db().await;
    let rate = published / wall;
    println!(
        "{n:>7} clusters: pass {wall:>6.2} s wall, {cpu:>5.2} s CPU, {published:>6.0} confirmed = {rate:>6.0}/s | \
         raw lapin {raw:>6.0}/s, {raw_cpu:>5.2} s CPU | rate {:.2}x, CPU {:.1}x | sentinel RSS {rss:.1} MiB",
        rate / raw,
        cpu / raw_cpu.max(0.01)
    );
    // Where the ratio's ceiling is: machine CPU per 1 000 events, and how busy the raw run kept it.
    let cores = std::thread::available_parallelism().map(|c| c.get() as f64).unwrap_or(1.0);
    let (pass_per_k, raw_per_k) = (ms_per(pass_box, measured), ms_per(raw_box, n as f64));
    println!(
        "         machine CPU per 1 000 events: pass {:.2} s, raw {:.2} s ({:.2}x); the raw run kept the {cores} \
         cores {:.0} % busy",
        pass_per_k,
        raw_per_k,
        raw_per_k / pass_per_k.max(1e-9),
        100.0 * raw_box / (raw_wall * cores).max(1e-9)
    );
    Ok(json!({"clusters": n, "wall_s": wall, "cpu_s": cpu, "confirmed": published, "events_per_s": rate,
              "raw_lapin_per_s": raw, "raw_lapin_cpu_s": raw_cpu, "ratio": rate / raw,
              "cpu_ratio": cpu / raw_cpu.max(0.01), "sentinel_rss_mib": rss,
              "list_full_s": full_s, "list_full_api_cpu_s": full_cpu, "list_lean_s": lean_s,
              "list_lean_api_cpu_s": lean_cpu, "machine_cpu_s": {"pass": pass_box, "raw": raw_box},
              "raw_wall_s": raw_wall}))
}
