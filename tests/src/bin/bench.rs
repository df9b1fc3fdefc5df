//! HyperFleet benchmarks against the local environment (`tests/env/run infra` first).
//!
//!   cargo build --release --workspace --bins && cargo run --release -p hyperfleet-tests --bin bench [-- --quick]
//!
//! Every figure is printed beside a raw baseline measured in the same run on the same machine:
//! here, the API's requests per second against `pgbench` running the SQL the handler runs, with
//! the same indexes, transaction shape and concurrency. Also the services' memory (RSS) and binary
//! sizes. Then the sentinel: one pass over 10 000 and 100 000 clusters seeded straight into the
//! database — wall and CPU time, and confirmed events per second beside a raw lapin publisher
//! with confirms (same message size, same exchange, same pipelining). Writes
//! `target/bench/bench.json`. Default: 10 s per API cell; `--quick`: 3 s, fewer client counts and
//! only 10 000 clusters. (Create→landed latency and adapter rates: not yet here.)

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use hyperfleet_tests::{LocalEnv, Service, TestDb, api_db_vars, free_port, migrate, workspace_root};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

const SEEDED: i64 = 1000;
const COLUMNS: &str = "id, kind, name, owner_id, spec, labels, conditions, generation, created_time, updated_time, \
                       created_by, updated_by, deleted_time, deleted_by, version";

/// The SQL each API operation runs, as pgbench scripts (`:n` picks one of the seeded clusters).
fn pgbench_scripts() -> Vec<(&'static str, String)> {
    let conditions = r#"[{"type":"Reconciled","status":"False","observed_generation":1,"created_time":"2026-01-01T00:00:00Z","last_updated_time":"2026-01-01T00:00:00Z","last_transition_time":"2026-01-01T00:00:00Z"}]"#;
    let report = r#"[{"type":"Available","status":"True","last_transition_time":"2026-01-01T00:00:00Z"},{"type":"Applied","status":"True","last_transition_time":"2026-01-01T00:00:00Z"},{"type":"Health","status":"True","last_transition_time":"2026-01-01T00:00:00Z"}]"#;
    vec![
        // POST /clusters: write transaction (version lock), insert returning the row.
        (
            "create",
            format!(
                "BEGIN;\nSELECT pg_advisory_xact_lock(7306195426);\n\
                 INSERT INTO resources (id, kind, name, owner_id, spec, labels, conditions, created_time, updated_time, created_by, updated_by) \
                 VALUES (gen_random_uuid(), 'Cluster', 'p' || replace(gen_random_uuid()::text, '-', ''), NULL, '{{\"region\":\"eu\"}}', '{{}}', '{conditions}', now(), now(), 'system@hyperfleet.local', 'system@hyperfleet.local') \
                 RETURNING {COLUMNS};\nCOMMIT;\n"
            ),
        ),
        // GET /clusters/{id}: one row by primary key and kind.
        (
            "get",
            format!(
                "\\set n random(1, {SEEDED})\nSELECT {COLUMNS} FROM resources WHERE id = (SELECT id FROM bench_ids WHERE n = :n) AND kind = 'Cluster';\n"
            ),
        ),
        // GET /clusters?size=100: one snapshot for the feed position, the total and the page.
        (
            "list100",
            format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\n\
                 SELECT greatest((SELECT coalesce(max(seq), 0) FROM resource_changes), (SELECT pruned_through FROM resource_changes_horizon));\n\
                 SELECT count(*) FROM resources WHERE kind = 'Cluster' AND (NULL::uuid IS NULL OR owner_id = NULL);\n\
                 SELECT {COLUMNS} FROM resources WHERE kind = 'Cluster' AND (NULL::uuid IS NULL OR owner_id = NULL) ORDER BY created_time DESC, id DESC LIMIT 100 OFFSET 0;\n\
                 COMMIT;\n"
            ),
        ),
        // PUT /clusters/{id}/statuses: lock, read the stored report, upsert, read all reports,
        // check children, write the recomputed conditions.
        (
            "status_put",
            format!(
                "\\set n random(1, {SEEDED})\nBEGIN;\nSELECT pg_advisory_xact_lock(7306195426);\n\
                 SELECT {COLUMNS} FROM resources WHERE id = (SELECT id FROM bench_ids WHERE n = :n) AND kind = 'Cluster' FOR UPDATE;\n\
                 SELECT * FROM adapter_statuses WHERE resource_id = (SELECT id FROM bench_ids WHERE n = :n) AND adapter = 'landing-zone' FOR UPDATE;\n\
                 INSERT INTO adapter_statuses (resource_id, adapter, observed_generation, conditions, data, created_time, last_report_time) \
                 VALUES ((SELECT id FROM bench_ids WHERE n = :n), 'landing-zone', 1, '{report}', '{{}}', now(), now()) \
                 ON CONFLICT (resource_id, adapter) DO UPDATE SET conditions = excluded.conditions, last_report_time = excluded.last_report_time;\n\
                 SELECT * FROM adapter_statuses WHERE resource_id = (SELECT id FROM bench_ids WHERE n = :n);\n\
                 SELECT exists(SELECT 1 FROM resources WHERE owner_id = (SELECT id FROM bench_ids WHERE n = :n) AND deleted_time IS NULL);\n\
                 UPDATE resources SET conditions = '{conditions}' WHERE id = (SELECT id FROM bench_ids WHERE n = :n);\nCOMMIT;\n"
            ),
        ),
    ]
}

#[derive(Debug, Clone, Copy)]
struct Cell {
    rps: f64,
    p99_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Drives `op` against the API with `clients` concurrent clients for `duration`.
async fn api_cell(base: &str, ids: &Arc<Vec<String>>, op: &str, clients: usize, duration: Duration) -> Result<Cell> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build()?;
    let deadline = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (http, ids, base, op) = (http.clone(), ids.clone(), base.to_string(), op.to_string());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut i = c;
            while Instant::now() < deadline {
                i = i.wrapping_mul(31).wrapping_add(7);
                let id = &ids[i % ids.len()];
                let started = Instant::now();
                let resp = match op.as_str() {
                    "create" => {
                        let name = format!("b{}", uuid::Uuid::new_v4().simple());
                        let body = json!({"kind": "Cluster", "name": name, "spec": {"region": "eu"}});
                        http.post(format!("{base}/clusters")).json(&body).send().await?
                    }
                    "get" => http.get(format!("{base}/clusters/{id}")).send().await?,
                    "list100" => http.get(format!("{base}/clusters?size=100")).send().await?,
                    _ => {
                        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                        let body = json!({"adapter": "landing-zone", "observed_generation": 1, "observed_time": at,
                            "conditions": [{"type": "Available", "status": "True"}, {"type": "Applied", "status": "True"},
                                           {"type": "Health", "status": "True"}]});
                        http.put(format!("{base}/clusters/{id}/statuses")).json(&body).send().await?
                    }
                };
                let status = resp.status();
                let _ = resp.bytes().await?;
                if !(status.is_success()) {
                    bail!("{op}: HTTP {status}");
                }
                latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    all.sort_by(f64::total_cmp);
    Ok(Cell { rps: all.len() as f64 / duration.as_secs_f64(), p99_ms: percentile(&all, 0.99) })
}

/// Runs one pgbench script with `clients` clients for `duration`.
fn pgbench_cell(env: &LocalEnv, db: &str, script: &Path, clients: usize, duration: Duration) -> Result<Cell> {
    let pgbench = std::fs::read_dir("/usr/lib/postgresql")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin/pgbench")))
        .find(|p| p.is_file())
        .context("pgbench not found (Debian package postgresql)")?;
    let logs = std::env::temp_dir().join(format!("hf-pgbench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&logs)?;
    let out = std::process::Command::new(pgbench)
        .current_dir(&logs)
        .args(["-n", "-M", "prepared", "-l", "--log-prefix", "tx"])
        .args(["-c", &clients.to_string(), "-j", &clients.min(2).to_string(), "-T", &duration.as_secs().to_string()])
        .arg("-f")
        .arg(script)
        .arg(db)
        .env("PGHOST", env.get("HF_DB_HOST")?)
        .env("PGPORT", env.get("HF_DB_PORT")?)
        .env("PGUSER", env.get("HF_DB_USER")?)
        .env("PGPASSWORD", env.get("HF_DB_PASSWORD")?)
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", env.get("HF_DB_CA_FILE")?)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!("pgbench: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .context("tps in pgbench output")?;
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(&logs)? {
        for line in std::fs::read_to_string(entry?.path())?.lines() {
            if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse::<f64>().ok()) {
                latencies.push(us / 1000.0);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&logs);
    latencies.sort_by(f64::total_cmp);
    Ok(Cell { rps: tps, p99_ms: percentile(&latencies, 0.99) })
}

/// User + system CPU seconds a process has used so far.
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // USER_HZ is 100 on Linux
}

/// Publishes `n` messages of `body` to `exchange` with confirms, `PIPELINE` in flight: the
/// sentinel's publishing without the API, the decision or the CloudEvent building.
async fn raw_publish(cfg: &hyperfleet_common::broker::BrokerConfig, n: usize, body: &[u8]) -> Result<f64> {
    const PIPELINE: usize = 512;
    let conn = cfg.connect("hyperfleet-bench-raw").await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(Default::default()).await?;
    cfg.declare_exchange(&ch).await?;
    let props = lapin::BasicProperties::default()
        .with_content_type("application/cloudevents+json".into())
        .with_delivery_mode(2);
    let started = Instant::now();
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
    let _ = conn.close(200, "done".into()).await;
    Ok(n as f64 / secs)
}

/// One sentinel pass over `n` new clusters: wall and CPU seconds, confirmed events per second, and
/// the raw publisher's rate in the same run.
async fn sentinel_pass(env: &LocalEnv, bin_dir: &Path, n: i64) -> Result<Value> {
    let db = TestDb::create(env).await?;
    migrate(env, &db).await?;
    let mut conn = PgConnection::connect_with(&env.pg_options(&db.name)?).await?;
    hyperfleet_tests::seed_clusters(&mut conn, n).await?;
    let port = free_port();
    let mut vars = api_db_vars(env, &db)?;
    vars.extend([
        ("HYPERFLEET_SERVER_HOST", "127.0.0.1".to_string()),
        ("HYPERFLEET_SERVER_PORT", port.to_string()),
        ("HYPERFLEET_LOG_LEVEL", "warn".to_string()),
    ]);
    let mut api = Service::start_binary("bench-pass", "api", &bin_dir.join("hyperfleet-api"), &["serve"], &vars)?;
    api.wait_ready(Duration::from_secs(60)).await?;
    let exchange = format!("hf-bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let broker = env.broker(&exchange)?;
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
    hyperfleet_tests::eventually(Duration::from_secs(900), || async {
        Ok((hyperfleet_tests::metric_sum(&sentinel.metrics().await.unwrap_or_default(), count) >= 1.0).then_some(()))
    })
    .await?;
    let m = sentinel.metrics().await?;
    let wall = hyperfleet_tests::metric_sum(&m, "hyperfleet_sentinel_poll_duration_seconds_sum");
    let published = hyperfleet_tests::metric_sum(&m, "hyperfleet_sentinel_events_published_total");
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
    let raw = raw_publish(&broker, n as usize, &body).await?;
    sentinel.stop().await;
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
        "{n:>7} clusters: pass {wall:>6.2} s wall, {cpu:>6.2} s CPU, {published:>7.0} confirmed = {rate:>6.0}/s; raw lapin {raw:>6.0}/s; ratio {:.2}x; sentinel RSS {rss:.1} MiB",
        rate / raw
    );
    Ok(json!({"clusters": n, "wall_s": wall, "cpu_s": cpu, "confirmed": published, "events_per_s": rate,
              "raw_lapin_per_s": raw, "ratio": rate / raw, "sentinel_rss_mib": rss}))
}

fn rss_mib(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(String::from))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let duration = if quick { Duration::from_secs(3) } else { Duration::from_secs(10) };
    let client_counts: &[usize] = if quick { &[1, 8] } else { &[1, 8, 32] };
    let release = workspace_root().join("target/release");
    let bin_dir: PathBuf = std::env::var("HF_BIN_DIR").map(PathBuf::from).unwrap_or_else(|_| {
        if release.join("hyperfleet-api").is_file() { release.clone() } else { workspace_root().join("target/debug") }
    });
    let env = LocalEnv::load()?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("HyperFleet benchmarks — {cores} cores, binaries from {}", bin_dir.display());

    let db = TestDb::create(&env).await?;
    migrate(&env, &db).await?;
    let mut conn = PgConnection::connect_with(&env.pg_options(&db.name)?).await?;
    hyperfleet_tests::seed_clusters(&mut conn, SEEDED).await?;
    sqlx::query("create table bench_ids as select row_number() over (order by id)::int as n, id from resources")
        .execute(&mut conn)
        .await?;
    sqlx::query("alter table bench_ids add primary key (n)").execute(&mut conn).await?;
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("select id from bench_ids order by n").fetch_all(&mut conn).await?;
    let ids = Arc::new(ids.into_iter().map(|u| u.to_string()).collect::<Vec<_>>());

    let port = free_port();
    let mut vars = api_db_vars(&env, &db)?;
    vars.extend([
        ("HYPERFLEET_SERVER_HOST", "127.0.0.1".to_string()),
        ("HYPERFLEET_SERVER_PORT", port.to_string()),
        ("HYPERFLEET_LOG_LEVEL", "warn".to_string()),
        ("HF_BIN_DIR", bin_dir.display().to_string()),
    ]);
    let api_bin = bin_dir.join("hyperfleet-api");
    let mut api = Service::start_binary("bench", "api", &api_bin, &["serve"], &vars)?;
    api.wait_ready(Duration::from_secs(60)).await?;
    let idle_rss = rss_mib(api.pid());
    let base = format!("http://127.0.0.1:{port}/api/hyperfleet/v1");

    let scripts_dir = std::env::temp_dir().join(format!("hf-bench-sql-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scripts_dir)?;
    let mut results: BTreeMap<String, Value> = BTreeMap::new();
    println!(
        "\n{:<11} {:>7} {:>12} {:>10} {:>12} {:>10} {:>9}",
        "operation", "clients", "API req/s", "API p99", "pgbench tps", "pg p99", "API/pg"
    );
    for (op, sql) in pgbench_scripts() {
        let script = scripts_dir.join(format!("{op}.sql"));
        std::fs::write(&script, sql)?;
        for &clients in client_counts {
            let a = api_cell(&base, &ids, op, clients, duration).await?;
            let p = pgbench_cell(&env, &db.name, &script, clients, duration)?;
            let ratio = if p.rps > 0.0 { a.rps / p.rps } else { 0.0 };
            println!(
                "{op:<11} {clients:>7} {:>12.0} {:>8.2}ms {:>12.0} {:>8.2}ms {:>8.2}x",
                a.rps, a.p99_ms, p.rps, p.p99_ms, ratio
            );
            results.insert(
                format!("{op}/{clients}"),
                json!({"api_rps": a.rps, "api_p99_ms": a.p99_ms, "pgbench_tps": p.rps, "pgbench_p99_ms": p.p99_ms, "ratio": ratio}),
            );
        }
    }
    let busy_rss = rss_mib(api.pid());
    api.stop().await;
    db.drop_db().await;

    println!("\nsentinel: one pass over new clusters (list page by page, decide, publish with confirms)");
    let mut passes = Vec::new();
    for n in if quick { vec![10_000] } else { vec![10_000, 100_000] } {
        passes.push(sentinel_pass(&env, &bin_dir, n).await?);
    }

    println!("\nfootprint: API RSS idle {idle_rss:.1} MiB, after the runs {busy_rss:.1} MiB");
    let mut sizes = BTreeMap::new();
    for b in ["hyperfleet-api", "hyperfleet-sentinel", "hyperfleet-adapter"] {
        let size = std::fs::metadata(bin_dir.join(b)).map(|m| m.len() as f64 / 1_048_576.0).unwrap_or(0.0);
        println!("binary {b}: {size:.1} MiB");
        sizes.insert(b.to_string(), size);
    }
    let out = workspace_root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let report = json!({
        "cores": cores, "binaries": bin_dir.display().to_string(), "duration_s": duration.as_secs(),
        "api_vs_pgbench": results, "api_rss_mib": {"idle": idle_rss, "after": busy_rss}, "binary_mib": sizes,
        "sentinel_pass": passes,
        "sql": pgbench_scripts().into_iter().map(|(op, sql)| (op.to_string(), sql)).collect::<BTreeMap<_, _>>(),
    });
    std::fs::write(out.join("bench.json"), serde_json::to_vec_pretty(&report)?)?;
    println!("\nwritten to {}", out.join("bench.json").display());
    Ok(())
}
