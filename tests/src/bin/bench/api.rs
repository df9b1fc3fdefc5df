//! API vs pgbench: the API's requests per second for create, get, list 100 and status PUT beside
//! `pgbench` running the SQL the handler runs (same indexes, transaction shape and concurrency).

use std::{
    collections::BTreeMap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use hyperfleet_tests::LocalEnv;
use serde_json::{Value, json};

use crate::{percentile, rss_mib, seeded_api};

const SEEDED: i64 = 1000;
/// The operations measured, in order.
pub const OPS: [&str; 4] = ["create", "get", "list100", "status_put"];
use hyperfleet_api::store::{VERSION_LOCK, resources::COLUMNS};

/// The SQL each API operation runs, as pgbench scripts (`:n` picks one of the seeded clusters).
pub fn pgbench_scripts() -> Vec<(&'static str, String)> {
    let conditions = r#"[{"type":"Reconciled","status":"False","observed_generation":1,"created_time":"2026-01-01T00:00:00Z","last_updated_time":"2026-01-01T00:00:00Z","last_transition_time":"2026-01-01T00:00:00Z"}]"#;
    let report = r#"[{"type":"Available","status":"True","last_transition_time":"2026-01-01T00:00:00Z"},{"type":"Applied","status":"True","last_transition_time":"2026-01-01T00:00:00Z"},{"type":"Health","status":"True","last_transition_time":"2026-01-01T00:00:00Z"}]"#;
    vec![
        // POST /clusters: write transaction (version lock), insert returning the row.
        (
            "create",
            format!(
                "BEGIN;\nSELECT pg_advisory_xact_lock({VERSION_LOCK});\n\
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
                "\\set n random(1, {SEEDED})\nBEGIN;\nSELECT pg_advisory_xact_lock({VERSION_LOCK});\n\
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
pub struct Cell {
    pub rps: f64,
    pub p99_ms: f64,
}

/// Drives `op` against the API with `clients` concurrent clients for `duration`.
pub async fn api_cell(
    base: &str,
    ids: &Arc<Vec<String>>,
    op: &str,
    clients: usize,
    duration: Duration,
) -> Result<Cell> {
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

/// Runs every operation at every client count, API then pgbench; returns the cells and the API's
/// RSS idle and after the runs.
pub async fn run(
    env: &LocalEnv,
    bin_dir: &Path,
    duration: Duration,
    client_counts: &[usize],
    ops: &[String],
) -> Result<Value> {
    let (db, mut conn, api, port) = seeded_api(env, bin_dir, "bench", SEEDED).await?;
    sqlx::query("create table bench_ids as select row_number() over (order by id)::int as n, id from resources")
        .execute(&mut conn)
        .await?;
    sqlx::query("alter table bench_ids add primary key (n)").execute(&mut conn).await?;
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("select id from bench_ids order by n").fetch_all(&mut conn).await?;
    let ids = Arc::new(ids.into_iter().map(|u| u.to_string()).collect::<Vec<_>>());

    let idle_rss = rss_mib(api.pid());
    let base = format!("http://127.0.0.1:{port}/api/hyperfleet/v1");

    let scripts_dir = std::env::temp_dir().join(format!("hf-bench-sql-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scripts_dir)?;
    let mut results: BTreeMap<String, Value> = BTreeMap::new();
    println!(
        "{:<11} {:>7} {:>12} {:>10} {:>12} {:>10} {:>9}",
        "operation", "clients", "API req/s", "API p99", "pgbench tps", "pg p99", "API/pg"
    );
    for (op, sql) in pgbench_scripts() {
        if !ops.is_empty() && !ops.iter().any(|o| o == op) {
            continue;
        }
        let script = scripts_dir.join(format!("{op}.sql"));
        std::fs::write(&script, sql)?;
        for &clients in client_counts {
            let a = api_cell(&base, &ids, op, clients, duration).await?;
            let p = pgbench_cell(env, &db.name, &script, clients, duration)?;
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
    let _ = std::fs::remove_dir_all(&scripts_dir);
    let busy_rss = rss_mib(api.pid());
    api.stop().await;
    db.drop_db().await;
    Ok(json!({"cells": results, "api_rss_mib": {"idle": idle_rss, "after": busy_rss}, "duration_s": duration.as_secs(),
              "sql": pgbench_scripts().into_iter().map(|(op, sql)| (op.to_string(), sql)).collect::<BTreeMap<_, _>>()}))
}
