//! What one request may cost: bodies, specs, labels and status reports are capped (413, or 400
//! naming the field, and nothing stored); change feeds are capped in all and per caller (429 with
//! `Retry-After`); a write stuck behind the write lock gives up after `database.lock_timeout`
//! (503 `HYPERFLEET-SVC-002`) while readiness, on its own connection, stays 200; a search running
//! past `database.statement_timeout` is cancelled inside PostgreSQL; SIGTERM drains (not ready at
//! once, still serving for `shutdown_drain`, then gone).

use std::time::Duration;

use crate::support::{CLUSTERS, app_bounded, cluster, header};
use anyhow::{Context, Result};
use axum::http::{Method, StatusCode};
use hyperfleet_api::config::{LimitsConfig, WatchConfig};
use hyperfleet_tests::{LocalEnv, Service, TestDb, api_db_vars, eventually, free_port, migrate};
use serde_json::{Map, Value, json};
use sqlx::{Connection, PgConnection};

/// A spec of `n` small keys — the shape that costs the most memory per byte.
fn wide_spec(n: usize) -> Value {
    Value::Object((0..n).map(|i| (format!("k{i}"), json!(i))).collect::<Map<_, _>>())
}

fn report(data: Value) -> String {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    json!({
        "adapter": "landing-zone", "observed_generation": 1, "observed_time": now,
        "conditions": [
            {"type": "Available", "status": "True"}, {"type": "Applied", "status": "True"},
            {"type": "Health", "status": "True"},
        ],
        "data": data,
    })
    .to_string()
}

#[tokio::test]
async fn bodies_specs_labels_and_reports_are_bounded_and_refusals_change_nothing() -> Result<()> {
    let app = app_bounded(LimitsConfig::default(), WatchConfig::default()).await?;

    // 3 MB of body: 413 problem+json, never parsed.
    let huge = json!({"kind": "Cluster", "name": "huge", "spec": {"blob": "x".repeat(3 << 20)}}).to_string();
    let (status, headers, v) = app.call(Method::POST, CLUSTERS, Some(&huge)).await?;
    assert_eq!((status, v["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("HYPERFLEET-VAL-007")), "{v}");
    assert_eq!(header(&headers, "content-type"), Some("application/problem+json"));

    // A 100 kB spec (under the body limit, over the 64 KiB spec limit): 400 naming spec.
    let wide = json!({"kind": "Cluster", "name": "wide", "spec": wide_spec(12_000)}).to_string();
    assert!((100_000..1 << 20).contains(&wide.len()), "{}", wide.len());
    let (status, _, v) = app.call(Method::POST, CLUSTERS, Some(&wide)).await?;
    assert_eq!((status, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("HYPERFLEET-VAL-000")), "{v}");
    assert_eq!(v["errors"][0]["field"], "spec", "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| d.contains("65536") && d.contains("limits.max_spec_bytes")), "{v}");
    assert!(v["errors"][0].get("value").is_none(), "the oversized value is not echoed back");

    let labels: Map<String, Value> = (0..65).map(|i| (format!("l{i}"), json!("v"))).collect();
    let many = json!({"kind": "Cluster", "name": "labelled", "spec": {}, "labels": labels}).to_string();
    let (status, _, v) = app.call(Method::POST, CLUSTERS, Some(&many)).await?;
    assert_eq!((status, v["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("labels")), "{v}");

    // A resource that exists: an oversized patch and an oversized report change nothing.
    let (status, _, created) = app.call(Method::POST, CLUSTERS, Some(&cluster("bounded"))).await?;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let one = format!("{CLUSTERS}/{}", created["id"].as_str().context("id")?);
    let patch = json!({"spec": wide_spec(12_000)}).to_string();
    let (status, _, v) = app.call(Method::PATCH, &one, Some(&patch)).await?;
    assert_eq!((status, v["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("spec")), "{v}");
    let statuses = format!("{one}/statuses");
    let (status, _, v) = app.call(Method::PUT, &statuses, Some(&report(json!({"blob": "x".repeat(70_000)})))).await?;
    assert_eq!((status, v["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("data")), "{v}");
    let (_, _, stored) = app.call(Method::GET, &one, None).await?;
    assert_eq!((stored["generation"].as_i64(), &stored["spec"]), (Some(1), &json!({"region": "eu"})), "{stored}");
    let (_, _, reports) = app.call(Method::GET, &statuses, None).await?;
    assert_eq!(reports["total"], 0, "{reports}");
    let (_, _, all) = app.call(Method::GET, CLUSTERS, None).await?;
    assert_eq!(all["total"], 1, "only the bounded cluster: {all}");
    app.done().await;

    // The limits are settings: raised, the same spec is taken.
    let roomy =
        app_bounded(LimitsConfig { max_spec_bytes: 256 * 1024, ..Default::default() }, Default::default()).await?;
    let (status, _, v) = roomy.call(Method::POST, CLUSTERS, Some(&wide)).await?;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    roomy.done().await;
    Ok(())
}

#[tokio::test]
async fn change_feeds_are_capped_in_all_and_per_caller() -> Result<()> {
    let defaults = WatchConfig::default();
    assert_eq!((defaults.max_streams, defaults.max_streams_per_client), (1000, 100));
    let watch = WatchConfig { max_streams: 3, max_streams_per_client: 2, ..Default::default() };
    let app = app_bounded(LimitsConfig::default(), watch).await?;
    let feed = format!("{CLUSTERS}?watch=true");
    let (a, b) = ("10.0.0.7:40000".parse()?, "10.0.0.8:40000".parse()?);

    let a1 = app.send_from(a, Method::GET, &feed, &[], None).await?;
    let a2 = app.send_from(a, Method::GET, &feed, &[], None).await?;
    assert_eq!((a1.status(), a2.status()), (StatusCode::OK, StatusCode::OK));
    let refused = |resp: axum::response::Response, why: &'static str| async move {
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "1");
        let v: Value = serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 1 << 16).await?)?;
        assert_eq!(v["code"], "HYPERFLEET-SVC-003", "{v}");
        assert!(v["detail"].as_str().is_some_and(|d| d.contains(why)), "{v}");
        Ok::<_, anyhow::Error>(())
    };
    refused(app.send_from(a, Method::GET, &feed, &[], None).await?, "watch.max_streams_per_client").await?;
    let b1 = app.send_from(b, Method::GET, &feed, &[], None).await?;
    assert_eq!(b1.status(), StatusCode::OK, "another caller still gets one");
    refused(app.send_from(b, Method::GET, &feed, &[], None).await?, "open on this server").await?;
    // Plain reads are not streams: unaffected.
    assert_eq!(app.send_from(a, Method::GET, CLUSTERS, &[], None).await?.status(), StatusCode::OK);

    // A client that goes away gives its place back.
    drop(a1);
    let again = eventually(Duration::from_secs(10), || async {
        let resp = app.send_from(b, Method::GET, &feed, &[], None).await?;
        Ok((resp.status() == StatusCode::OK).then_some(resp))
    })
    .await?;
    drop((a2, b1, again));
    app.done().await;
    Ok(())
}

/// The API binary on a fresh database with `extra` settings; the database and the service.
async fn api_with(env: &LocalEnv, tag: &str, extra: &[(&'static str, &str)]) -> Result<(TestDb, Service, String)> {
    let db = TestDb::create(env).await?;
    migrate(env, &db).await?;
    let port = free_port();
    let mut vars = api_db_vars(env, &db)?;
    vars.push(("HYPERFLEET_SERVER_HOST", "127.0.0.1".into()));
    vars.push(("HYPERFLEET_SERVER_PORT", port.to_string()));
    vars.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let mut api = Service::start(env, tag, "api", &["serve"], &vars)?;
    api.wait_ready(Duration::from_secs(30)).await?;
    Ok((db, api, format!("http://127.0.0.1:{port}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_write_lock_times_writes_out_while_readiness_stays_up() -> Result<()> {
    let env = LocalEnv::load()?;
    // Five connections (the change listener holds one), eight writers: they queue for connections
    // too, well within the acquire timeout.
    let settings = [
        ("HYPERFLEET_DATABASE_LOCK_TIMEOUT", "1s"),
        ("HYPERFLEET_DATABASE_MAX_CONNECTIONS", "5"),
        ("HYPERFLEET_DATABASE_ACQUIRE_TIMEOUT", "15s"),
    ];
    let (db, api, url) = api_with(&env, "lock-timeout", &settings).await?;
    let ready = format!("http://127.0.0.1:{}/readyz", api.health_port);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build()?;

    // A slow writer elsewhere holds the write lock.
    let mut holder = PgConnection::connect_with(&env.pg_options(&db.name)?).await?;
    sqlx::query("begin").execute(&mut holder).await?;
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(hyperfleet_api::store::VERSION_LOCK)
        .execute(&mut holder)
        .await?;

    // Twice as many writers as pooled connections: every one gives up, none waits forever.
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                let body = json!({"kind": "Cluster", "name": format!("stuck-{i}"), "spec": {}});
                let resp = http.post(format!("{url}/api/hyperfleet/v1/clusters")).json(&body).send().await?;
                let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap_or("").to_string());
                Ok::<_, anyhow::Error>((resp.status().as_u16(), retry, resp.json::<Value>().await?))
            })
        })
        .collect();
    // Meanwhile the replica stays Ready: its probe does not queue behind the writers.
    let mut probes = Vec::new();
    while !writers.iter().all(|w| w.is_finished()) {
        probes.push(http.get(&ready).send().await?.status().as_u16());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in writers {
        let (status, retry, v) = w.await??;
        assert_eq!((status, v["code"].as_str()), (503, Some("HYPERFLEET-SVC-002")), "{v}\n{}", api.log_tail());
        assert_eq!(retry.as_deref(), Some("1"), "{v}");
    }
    assert!(probes.len() >= 3, "readiness was probed while writes waited: {probes:?}");
    assert!(probes.iter().all(|s| *s == 200), "readiness during the lock wait: {probes:?}");

    // The lock released: writes go through, and none of the refused ones happened.
    sqlx::query("rollback").execute(&mut holder).await?;
    let body = json!({"kind": "Cluster", "name": "after", "spec": {}});
    let resp = http.post(format!("{url}/api/hyperfleet/v1/clusters")).json(&body).send().await?;
    assert_eq!(resp.status(), 201);
    let all: Value = http.get(format!("{url}/api/hyperfleet/v1/clusters")).send().await?.json().await?;
    assert_eq!(all["total"], 1, "{all}");
    holder.close().await?;
    api.stop().await;
    db.drop_db().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_past_the_statement_timeout_is_cancelled_inside_postgres() -> Result<()> {
    let env = LocalEnv::load()?;
    let settings = [("HYPERFLEET_DATABASE_STATEMENT_TIMEOUT", "200ms"), ("HYPERFLEET_DATABASE_LOCK_TIMEOUT", "100ms")];
    let (db, api, url) = api_with(&env, "statement-timeout", &settings).await?;
    let mut conn = PgConnection::connect_with(&env.pg_options(&db.name)?).await?;
    hyperfleet_tests::seed_clusters(&mut conn, 200_000).await?;
    // 150 alternatives on an unindexed spec field over 200 000 rows: seconds of work.
    let search: Vec<String> = (0..150).map(|i| format!("spec.region = 'r{i}'")).collect();
    let resp = reqwest::Client::new()
        .get(format!("{url}/api/hyperfleet/v1/clusters"))
        .query(&[("search", search.join(" or "))])
        .timeout(Duration::from_secs(20))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let retry = resp.headers().get("retry-after").cloned();
    let v: Value = resp.json().await?;
    assert_eq!((status, v["code"].as_str()), (503, Some("HYPERFLEET-SVC-004")), "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| d.contains("statement timeout")), "{v}");
    assert!(retry.is_none(), "the same query would time out again: no Retry-After");
    // Nothing of it is left running in PostgreSQL.
    eventually(Duration::from_secs(10), || async {
        let mut c = PgConnection::connect_with(&env.pg_options(&db.name)?).await?;
        let running: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = current_database() \
             and application_name = 'hyperfleet-api' and state = 'active'",
        )
        .fetch_one(&mut c)
        .await?;
        c.close().await?;
        Ok((running == 0).then_some(()))
    })
    .await
    .context("the API's query is still running in PostgreSQL")?;
    conn.close().await?;
    api.stop().await;
    db.drop_db().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_off_first_and_keeps_serving_through_the_drain() -> Result<()> {
    let env = LocalEnv::load()?;
    let (db, mut api, url) = api_with(&env, "drain", &[("HYPERFLEET_SHUTDOWN_DRAIN", "8s")]).await?;
    let ready = format!("http://127.0.0.1:{}/readyz", api.health_port);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    assert_eq!(http.get(&ready).send().await?.status(), 200);

    api.terminate()?;
    eventually(Duration::from_secs(2), || async { Ok((http.get(&ready).send().await?.status() == 503).then_some(())) })
        .await
        .context("/readyz still 200 after SIGTERM")?;
    // Not ready, yet still serving: what the endpoints still route here is answered.
    let body = json!({"kind": "Cluster", "name": "during-drain", "spec": {}});
    let resp = http.post(format!("{url}/api/hyperfleet/v1/clusters")).json(&body).send().await?;
    assert_eq!(resp.status(), 201, "a create during the drain\n{}", api.log_tail());
    let exit = api.wait_exit(Duration::from_secs(30)).await?;
    assert!(exit.success(), "{exit}\n{}", api.log_tail());
    assert!(http.get(format!("{url}/api/hyperfleet")).send().await.is_err(), "the listener is closed");
    let mut conn = PgConnection::connect_with(&env.pg_options(&db.name)?).await?;
    let stored: i64 =
        sqlx::query_scalar("select count(*) from resources where name = 'during-drain'").fetch_one(&mut conn).await?;
    assert_eq!(stored, 1);
    conn.close().await?;
    db.drop_db().await;
    Ok(())
}

/// `hyperfleet_api_watch_queries_total{by=…}` in the API's metrics.
async fn watch_queries(api: &Service, by: &str) -> Result<f64> {
    let text = api.metrics().await?;
    let series = format!("hyperfleet_api_watch_queries_total{{by=\"{by}\"}} ");
    Ok(text.lines().filter_map(|l| l.strip_prefix(&series)?.trim().parse::<f64>().ok()).sum())
}

/// A thousand open change feeds — the default `watch.max_streams` — cost the database nothing of
/// their own: one reader reads each change once and every watcher is served from it (the
/// watchers' own query count stays zero while each of them receives the change); the 1 001st
/// feed is refused with 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_share_one_reader_of_the_change_table() -> Result<()> {
    let env = LocalEnv::load()?;
    // One caller opens them all: its own cap is raised to the server's.
    let (db, api, url) = api_with(&env, "fan-out", &[("HYPERFLEET_WATCH_MAX_STREAMS_PER_CLIENT", "1000")]).await?;
    let http = reqwest::Client::new();
    let feed = format!("{url}/api/hyperfleet/v1/clusters?watch=true");
    let mut streams = Vec::new();
    for _ in 0..WatchConfig::default().max_streams {
        let resp = http.get(&feed).send().await?;
        assert_eq!(resp.status(), 200);
        streams.push(resp);
    }
    let refused = http.get(&feed).send().await?;
    assert_eq!(refused.status(), 429, "the 1 001st feed");
    assert_eq!(refused.headers()["retry-after"], "1");
    let problem: Value = refused.json().await?;
    assert_eq!(problem["code"], "HYPERFLEET-SVC-003", "{problem}");
    let (watchers_before, reader_before) =
        (watch_queries(&api, "watcher").await?, watch_queries(&api, "reader").await?);
    let body = json!({"kind": "Cluster", "name": "watched", "spec": {}});
    let created: Value = http
        .post(format!("{url}/api/hyperfleet/v1/clusters"))
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["id"].as_str().context("id")?.to_string();
    for (i, s) in streams.iter_mut().enumerate() {
        let mut seen = String::new();
        tokio::time::timeout(Duration::from_secs(30), async {
            while !seen.contains(&id) {
                let chunk = s.chunk().await?.context("stream ended")?;
                seen.push_str(&String::from_utf8_lossy(&chunk));
            }
            Ok::<_, anyhow::Error>(())
        })
        .await
        .with_context(|| format!("watcher {i} did not get the change"))??;
    }
    let watchers = watch_queries(&api, "watcher").await? - watchers_before;
    let reader = watch_queries(&api, "reader").await? - reader_before;
    assert_eq!(watchers, 0.0, "1 000 watchers got the change without a query of their own");
    assert!(reader >= 1.0, "the shared reader read it ({reader} queries)");
    println!("1 000 watchers served by {reader} reader queries, {watchers} of their own");
    drop(streams);
    api.stop().await;
    db.drop_db().await;
    Ok(())
}
