//! Optimistic concurrency (ETag, If-Match, If-None-Match) and the change feed (`?watch=true`)
//! against a real PostgreSQL.

use std::time::Duration;

use crate::support::{App, CLUSTERS, app, app_configured, cluster};
use anyhow::{Context, Result, bail};
use axum::{
    body::Bytes,
    http::{Method, StatusCode},
};
use futures_util::{Stream, StreamExt};
use hyperfleet_api::config::{RequiredAdapters, WatchConfig};
use serde_json::{Value, json};

fn etag(resp: &axum::response::Response) -> String {
    resp.headers().get("etag").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

async fn json_of(resp: axum::response::Response) -> Result<Value> {
    Ok(serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 1 << 20).await?)?)
}

#[tokio::test]
async fn etags_guard_writes_and_save_reads() -> Result<()> {
    let app = app().await?;
    let created = app.send(Method::POST, CLUSTERS, &[], Some(&cluster("tagged"))).await?;
    assert_eq!(created.status(), StatusCode::CREATED);
    let v1 = etag(&created);
    assert!(v1.starts_with('"') && v1.ends_with('"'), "a strong ETag: {v1}");
    let uri = format!("{CLUSTERS}/{}", json_of(created).await?["id"].as_str().context("id")?);

    let got = app.send(Method::GET, &uri, &[], None).await?;
    assert_eq!((got.status(), etag(&got)), (StatusCode::OK, v1.clone()));
    let unchanged = app.send(Method::GET, &uri, &[("if-none-match", &v1)], None).await?;
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(etag(&unchanged), v1);
    assert!(axum::body::to_bytes(unchanged.into_body(), 1024).await?.is_empty());

    let patch = json!({"labels": {"a": "b"}}).to_string();
    let ok = app.send(Method::PATCH, &uri, &[("if-match", &v1)], Some(&patch)).await?;
    assert_eq!(ok.status(), StatusCode::OK);
    let v2 = etag(&ok);
    assert_ne!(v2, v1, "the ETag changes with the resource");
    let stale = app.send(Method::PATCH, &uri, &[("if-match", &v1)], Some(&json!({"labels": {}}).to_string())).await?;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.headers()["content-type"], "application/problem+json");
    let problem = json_of(stale).await?;
    assert_eq!(
        (problem["code"].as_str(), problem["title"].as_str()),
        (Some("HYPERFLEET-CNF-002"), Some("Version Conflict"))
    );
    let now = json_of(app.send(Method::GET, &uri, &[], None).await?).await?;
    assert_eq!(now["labels"], json!({"a": "b"}), "the stale PATCH changed nothing");
    assert_eq!(app.send(Method::GET, &uri, &[("if-none-match", &v1)], None).await?.status(), StatusCode::OK);

    // A status report changes the conditions, hence the ETag.
    let at = chrono::Utc::now().to_rfc3339();
    let report = json!({"adapter": "landing-zone", "observed_generation": 2, "observed_time": at,
        "conditions": [{"type": "Available", "status": "True"}, {"type": "Applied", "status": "True"},
                       {"type": "Health", "status": "True"}]});
    let put = app.send(Method::PUT, &format!("{uri}/statuses"), &[], Some(&report.to_string())).await?;
    assert_eq!(put.status(), StatusCode::CREATED);
    let v3 = etag(&app.send(Method::GET, &uri, &[], None).await?);
    assert_ne!(v3, v2);

    let stale_delete = app.send(Method::DELETE, &uri, &[("if-match", &v2)], None).await?;
    assert_eq!(stale_delete.status(), StatusCode::PRECONDITION_FAILED);
    let deleted = app.send(Method::DELETE, &uri, &[("if-match", &v3)], None).await?;
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    assert_ne!(etag(&deleted), v3);
    app.done().await;
    Ok(())
}

/// The lines of a watch response, one JSON value each.
struct Lines {
    stream: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, axum::Error>> + Send>>,
    buffer: String,
}

impl Lines {
    async fn open(app: &App, query: &str) -> Result<(Self, axum::response::Response)> {
        let resp = app.send(Method::GET, &format!("{CLUSTERS}?watch=true{query}"), &[], None).await?;
        if resp.status() != StatusCode::OK {
            bail!("watch answered {}: {}", resp.status(), json_of(resp).await?);
        }
        assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
        let head = axum::response::Response::builder().status(resp.status()).body(axum::body::Body::empty())?;
        let (mut parts, body) = resp.into_parts();
        let (mut head_parts, _) = head.into_parts();
        head_parts.headers = std::mem::take(&mut parts.headers);
        let head = axum::response::Response::from_parts(head_parts, axum::body::Body::empty());
        Ok((Lines { stream: Box::pin(body.into_data_stream()), buffer: String::new() }, head))
    }

    async fn next(&mut self) -> Result<Value> {
        loop {
            if let Some(i) = self.buffer.find('\n') {
                let line: String = self.buffer.drain(..=i).collect();
                return Ok(serde_json::from_str(line.trim())?);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.stream.next())
                .await
                .context("no change within 20s")?
                .context("stream ended")??;
            self.buffer.push_str(std::str::from_utf8(&chunk)?);
        }
    }

    /// The next line that is not a heartbeat.
    async fn change(&mut self) -> Result<Value> {
        loop {
            let v = self.next().await?;
            if v["type"] != "BOOKMARK" {
                return Ok(v);
            }
        }
    }
}

#[tokio::test]
async fn the_feed_streams_every_change_in_order_and_resumes_without_gaps_or_repeats() -> Result<()> {
    let app = app().await?;
    let (list, _) = (app.send(Method::GET, CLUSTERS, &[], None).await?, ());
    let start = list.headers()["x-hyperfleet-resource-version"].to_str()?.to_string();
    let (mut feed, head) = Lines::open(&app, &format!("&resource_version={start}")).await?;
    assert_eq!(head.headers()["x-hyperfleet-resource-version"].to_str()?, start);

    // A change that rolls back (duplicate name) is never announced.
    assert_eq!(app.call(Method::POST, CLUSTERS, Some(&cluster("first"))).await?.0, StatusCode::CREATED);
    assert_eq!(app.call(Method::POST, CLUSTERS, Some(&cluster("first"))).await?.0, StatusCode::CONFLICT);
    let (_, _, c) = app.call(Method::POST, CLUSTERS, Some(&cluster("second"))).await?;
    let id = c["id"].as_str().context("id")?.to_string();
    let uri = format!("{CLUSTERS}/{id}");
    app.call(Method::PATCH, &uri, Some(&json!({"labels": {"x": "1"}}).to_string())).await?;
    let report = json!({"adapter": "landing-zone", "observed_generation": 2, "observed_time": chrono::Utc::now().to_rfc3339(),
        "conditions": [{"type": "Available", "status": "True"}, {"type": "Applied", "status": "True"},
                       {"type": "Health", "status": "True"}]});
    assert_eq!(
        app.call(Method::PUT, &format!("{uri}/statuses"), Some(&report.to_string())).await?.0,
        StatusCode::CREATED
    );
    app.call(Method::DELETE, &uri, None).await?;
    app.call(Method::POST, &format!("{uri}/force-delete"), Some(r#"{"reason": "test"}"#)).await?;

    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(feed.change().await?);
    }
    let summary: Vec<(String, String)> = seen
        .iter()
        .map(|e| (e["type"].as_str().unwrap_or("").into(), e["object"]["name"].as_str().unwrap_or("").into()))
        .collect();
    let expect = [
        ("ADDED", "first"),
        ("ADDED", "second"),
        ("MODIFIED", "second"),
        ("MODIFIED", "second"),
        ("MODIFIED", "second"),
        ("DELETED", "second"),
    ];
    assert_eq!(summary, expect.map(|(a, b)| (a.to_string(), b.to_string())));
    assert_eq!(seen[2]["object"]["generation"], 2);
    let reconciled = seen[3]["object"]["status"]["conditions"].as_array().cloned().unwrap_or_default();
    assert!(
        reconciled.iter().any(|c| c["type"] == "Reconciled" && c["status"] == "True"),
        "the status report is a MODIFIED with the new conditions"
    );
    assert!(seen[4]["object"]["deleted_time"].is_string(), "the DELETE is a MODIFIED with deleted_time");
    let versions: Vec<i64> = seen.iter().filter_map(|e| e["resource_version"].as_str()?.parse().ok()).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "strictly increasing: {versions:?}");

    // Resuming after the second change yields exactly the rest, in order.
    let (mut resumed, _) = Lines::open(&app, &format!("&resource_version={}", versions[1])).await?;
    for expected in &versions[2..] {
        let e = resumed.change().await?;
        assert_eq!(e["resource_version"].as_str().and_then(|v| v.parse::<i64>().ok()), Some(*expected));
    }
    // And nothing more: the next line is a heartbeat or a later change, never a repeat.
    app.call(Method::POST, CLUSTERS, Some(&cluster("third"))).await?;
    let next = resumed.change().await?;
    assert_eq!((next["type"].as_str(), next["object"]["name"].as_str()), (Some("ADDED"), Some("third")));
    app.done().await;
    Ok(())
}

#[tokio::test]
async fn watches_filter_send_heartbeats_and_refuse_versions_too_old() -> Result<()> {
    let watch = WatchConfig { heartbeat: Duration::from_millis(200), ..Default::default() };
    let app = app_configured(RequiredAdapters::default(), watch).await?;
    let search = serde_urlencoded::to_string([("search", "labels.env = 'prod'")])?;
    let (mut feed, _) = Lines::open(&app, &format!("&{search}")).await?;
    let first = feed.next().await?;
    assert_eq!(first["type"], "BOOKMARK", "an idle watch sends heartbeats: {first}");
    let body = |name: &str, env: &str| {
        json!({"kind": "Cluster", "name": name, "spec": {}, "labels": {"env": env}}).to_string()
    };
    app.call(Method::POST, CLUSTERS, Some(&body("dev-one", "dev"))).await?;
    app.call(Method::POST, CLUSTERS, Some(&body("prod-one", "prod"))).await?;
    let e = feed.change().await?;
    assert_eq!(e["object"]["name"], "prod-one", "only matching resources: {e}");

    sqlx::query("update resource_changes_horizon set pruned_through = 1000").execute(app.pool()).await?;
    let resp = app.send(Method::GET, &format!("{CLUSTERS}?watch=true&resource_version=5"), &[], None).await?;
    assert_eq!(resp.status(), StatusCode::GONE);
    let problem = json_of(resp).await?;
    assert_eq!(problem["code"], "HYPERFLEET-CNF-004");
    assert!(problem["detail"].as_str().unwrap_or("").contains("list again"), "{problem}");
    let bad = app.send(Method::GET, &format!("{CLUSTERS}?watch=true&resource_version=abc"), &[], None).await?;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    app.done().await;
    Ok(())
}

#[tokio::test]
async fn twenty_concurrent_read_modify_write_clients_lose_no_update() -> Result<()> {
    let app = std::sync::Arc::new(app().await?);
    let (_, _, c) = app.call(Method::POST, CLUSTERS, Some(&cluster("contended"))).await?;
    let uri = format!("{CLUSTERS}/{}", c["id"].as_str().context("id")?);
    let mut clients = tokio::task::JoinSet::new();
    for n in 0..20 {
        let (app, uri) = (app.clone(), uri.clone());
        clients.spawn(async move {
            let mut conflicts = 0;
            loop {
                let got = app.send(Method::GET, &uri, &[], None).await?;
                let tag = etag(&got);
                let mut labels = json_of(got).await?["labels"].as_object().cloned().unwrap_or_default();
                labels.insert(format!("client-{n}"), Value::from("done"));
                let body = json!({"labels": labels}).to_string();
                let resp = app.send(Method::PATCH, &uri, &[("if-match", &tag)], Some(&body)).await?;
                match resp.status() {
                    StatusCode::OK => return Ok::<_, anyhow::Error>(conflicts),
                    StatusCode::PRECONDITION_FAILED => conflicts += 1,
                    other => bail!("client {n}: {other}"),
                }
            }
        });
    }
    let mut conflicts = 0;
    while let Some(done) = clients.join_next().await {
        conflicts += done??;
    }
    let (_, _, end) = app.call(Method::GET, &uri, None).await?;
    let labels = end["labels"].as_object().context("labels")?;
    for n in 0..20 {
        assert!(labels.contains_key(&format!("client-{n}")), "client {n}'s update was lost ({conflicts} retried)");
    }
    assert_eq!(end["generation"], 21, "one generation per successful update");
    if let Ok(app) = std::sync::Arc::try_unwrap(app) {
        app.done().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_reconnecting_watcher_gets_exactly_the_changes_it_missed_and_stalled_ones_hold_nobody_up() -> Result<()> {
    let watch = WatchConfig { heartbeat: Duration::from_millis(300), ..Default::default() };
    let app = app_configured(RequiredAdapters::default(), watch).await?;
    let (_, _, c) = app.call(Method::POST, CLUSTERS, Some(&cluster("busy"))).await?;
    let uri = format!("{CLUSTERS}/{}", c["id"].as_str().context("id")?);
    let list = app.send(Method::GET, CLUSTERS, &[], None).await?;
    let from = list.headers()["x-hyperfleet-resource-version"].to_str()?.to_string();

    // A watcher that never reads, open while 100 changes are written: the writes are not held up.
    let (_stalled, _) = Lines::open(&app, "").await?;
    let writes = async {
        for i in 0..100 {
            let body = json!({"labels": {"n": i.to_string()}}).to_string();
            let (status, _, _) = app.call(Method::PATCH, &uri, Some(&body)).await?;
            assert_eq!(status, StatusCode::OK);
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(120), writes).await.context("writes blocked by a stalled watcher")??;

    // Resuming from before them yields those 100, in order, then only heartbeats.
    let (mut feed, _) = Lines::open(&app, &format!("&resource_version={from}")).await?;
    let mut last = from.parse::<i64>()?;
    for i in 0..100 {
        let e = feed.change().await?;
        assert_eq!(e["type"], "MODIFIED");
        assert_eq!(e["object"]["labels"]["n"], i.to_string(), "change {i} in order");
        let v: i64 = e["resource_version"].as_str().context("version")?.parse()?;
        assert!(v > last);
        last = v;
    }
    let after = feed.next().await?;
    assert_eq!(after["type"], "BOOKMARK", "nothing twice, nothing extra: {after}");
    assert_eq!(after["resource_version"], last.to_string());
    app.done().await;
    Ok(())
}

#[tokio::test]
async fn commit_to_watcher_latency() -> Result<()> {
    let app = app().await?;
    let (mut feed, _) = Lines::open(&app, "").await?;
    let mut latencies = Vec::new();
    for i in 0..50 {
        let (status, _, _) = app.call(Method::POST, CLUSTERS, Some(&cluster(&format!("lat-{i}")))).await?;
        let committed = std::time::Instant::now();
        assert_eq!(status, StatusCode::CREATED);
        let e = feed.change().await?;
        latencies.push(committed.elapsed());
        assert_eq!(e["object"]["name"], format!("lat-{i}"));
    }
    latencies.sort();
    println!(
        "commit→watcher (after the 201, N=50): median {:?}, p90 {:?}, max {:?}",
        latencies[25], latencies[45], latencies[49]
    );
    app.done().await;
    Ok(())
}
