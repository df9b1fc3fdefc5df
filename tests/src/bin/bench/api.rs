//! API vs pgbench: the API's requests per second for create, get, list 100 and status PUT beside
//! `pgbench` running the SQL the handler runs (same indexes, transaction shape and concurrency).
//! The API is driven by `wrk` (C, like pgbench), and both load generators' CPU is printed per
//! request beside the API process's own: on two shared cores the client's CPU is taken from the
//! server, so the cheaper the client, the fairer the comparison.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use hyperfleet_tests::LocalEnv;
use serde_json::{Value, json};

use crate::{cpu_seconds, ms_per, on_the_box, percentile, rss_mib, seeded_api};

const SEEDED: i64 = 1000;
/// The operations measured, in order.
pub const OPS: [&str; 4] = ["create", "get", "list100", "status_put"];
use hyperfleet_api::store::{VERSION_LOCK, resources::COLUMNS};

/// The SQL each API operation runs, as pgbench scripts (`:n` picks one of the seeded clusters).
pub fn pgbench_scripts() -> Vec<(&'static str, String)> {
    let conditions = r#"[{"type":"Reconciled","status":"False","observed_generation":1,"created_time":"2026-01-01T00:00:00Z","last_updated_time":"2026-01-01T00:00:00Z","last_transition_time":"2026-01-01T00:00:00Z"}]"#;
    let report = r#"[{"type":"Available","status":"True","last_transition_time":"2026-01-01T00:00:00Z"},{"type":"Applied","status":"True","last_transition_time":"2026-01-01T00:00:00Z"},{"type":"Health","status":"True","last_transition_time":"2026-01-01T00:00:00Z"}]"#;
    vec![
        // POST /clusters: write transaction (BEGIN and the version lock in one round trip, as the
        // API's one two-statement query; here a pipeline), insert returning the row.
        (
            "create",
            format!(
                "\\startpipeline\nBEGIN;\nSELECT pg_advisory_xact_lock({VERSION_LOCK});\n\\endpipeline\n\
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
        // PUT /clusters/{id}/statuses: begin with the lock, lock the resource, read its reports,
        // upsert, check children, write the recomputed conditions.
        (
            "status_put",
            format!(
                "\\set n random(1, {SEEDED})\n\\startpipeline\nBEGIN;\nSELECT pg_advisory_xact_lock({VERSION_LOCK});\n\\endpipeline\n\
                 SELECT {COLUMNS} FROM resources WHERE id = (SELECT id FROM bench_ids WHERE n = :n) AND kind = 'Cluster' FOR UPDATE;\n\
                 SELECT * FROM adapter_statuses WHERE resource_id = (SELECT id FROM bench_ids WHERE n = :n);\n\
                 INSERT INTO adapter_statuses (resource_id, adapter, observed_generation, conditions, data, created_time, last_report_time) \
                 VALUES ((SELECT id FROM bench_ids WHERE n = :n), 'landing-zone', 1, '{report}', '{{}}', now(), now()) \
                 ON CONFLICT (resource_id, adapter) DO UPDATE SET conditions = excluded.conditions, last_report_time = excluded.last_report_time;\n\
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
    /// CPU milliseconds the load generator (wrk or pgbench) used per request (0: not measured).
    pub client_cpu_ms_per_req: f64,
}

/// The wrk script of the API cells. `init` builds every request the thread will send before the
/// clock starts (requests built per call leave LuaJIT garbage whose collection shows up as
/// tens-of-ms latency outliers): its arguments are the file of cluster ids (one per line), the
/// operation, a nonce for unique names, how many requests to build per thread and the number of
/// threads. Each thread works on its own share of the ids; a thread's status reports carry
/// strictly increasing observed times from the next whole second on — later than any report stored
/// before the cell — so, as from a live adapter, none is discarded as older than the stored one
/// (the bench checks the API's discard counter).
const WRK_SCRIPT: &str = r#"
local threads = 0
function setup(thread)
  thread:set("index", threads)
  threads = threads + 1
end
function init(args)
  local op, nonce, count, nthreads = args[2], args[3], tonumber(args[4]), tonumber(args[5])
  local ids = {}
  local n = 0
  for line in io.lines(args[1]) do
    if n % nthreads == index then ids[#ids + 1] = line end
    n = n + 1
  end
  local json = {["Content-Type"] = "application/json"}
  local base = os.time() + 1
  reqs = {}
  if op == "list100" then count = 1 end
  if op == "get" then count = #ids end
  for k = 1, count do
    local id = ids[((k * 7919) % #ids) + 1]
    if op == "create" then
      local body = string.format('{"kind":"Cluster","name":"b%s%dx%d","spec":{"region":"eu"}}', nonce, index, k)
      reqs[k] = wrk.format("POST", wrk.path .. "/clusters", json, body)
    elseif op == "get" then
      reqs[k] = wrk.format("GET", wrk.path .. "/clusters/" .. ids[k])
    elseif op == "list100" then
      reqs[k] = wrk.format("GET", wrk.path .. "/clusters?size=100")
    else
      local at = os.date("!%Y-%m-%dT%H:%M:%S", base + math.floor(k / 1000000)) .. string.format(".%06dZ", k % 1000000)
      local body = '{"adapter":"landing-zone","observed_generation":1,"observed_time":"' .. at ..
        '","conditions":[{"type":"Available","status":"True"},{"type":"Applied","status":"True"},' ..
        '{"type":"Health","status":"True"}]}'
      reqs[k] = wrk.format("PUT", wrk.path .. "/clusters/" .. id .. "/statuses", json, body)
    end
  end
  i = 0
end
function request()
  i = i + 1
  return reqs[((i - 1) % #reqs) + 1]
end
"#;

/// Runs `command` under bash and returns its output and the user + system CPU seconds it used
/// (bash's `times` for its children).
fn run_timed(command: &mut std::process::Command) -> Result<(std::process::Output, f64)> {
    let program = command.get_program().to_owned();
    let mut timed = std::process::Command::new("bash");
    timed.args(["-c", "\"$@\"; status=$?; times; exit $status", "bash"]).arg(program).args(command.get_args());
    for (k, v) in command.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        timed.current_dir(dir);
    }
    let out = timed.output()?;
    // `times` prints the shell's own times, then its children's: "0m1.234s 0m0.567s".
    let text = String::from_utf8_lossy(&out.stdout);
    let seconds = |t: &str| -> Option<f64> {
        let (m, s) = t.trim_end_matches('s').split_once('m')?;
        Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
    };
    let cpu = text
        .lines()
        .last()
        .and_then(|l| l.split_once(' '))
        .and_then(|(user, sys)| Some(seconds(user)? + seconds(sys)?))
        .unwrap_or(0.0);
    Ok((out, cpu))
}

/// A wrk latency ("812.00us", "1.53ms", "2.01s") in ms.
fn wrk_ms(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = value.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// Requests built per wrk thread and second of a cell for create and status PUT (above what the API
/// does on a small machine; a create cell that used them all up would fail on a name conflict, a
/// status cell on the discard check). Building them is in wrk's CPU figure (~0.01 ms a request).
const PREBUILT_PER_SECOND: u64 = 3000;

/// Drives `op` against the API with `wrk` (a C load generator, as pgbench is one) running `script`
/// ([`WRK_SCRIPT`]) over the ids in `ids_file`, with `clients` connections for `duration`; every
/// response must be a success.
fn wrk_cell(base: &str, script: &Path, ids_file: &Path, op: &str, clients: usize, duration: Duration) -> Result<Cell> {
    let nonce = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let threads = clients.min(2);
    let (out, cpu) = run_timed(
        std::process::Command::new("wrk")
            .args(["--latency", "--timeout", "10s", "-c", &clients.to_string(), "-t", &threads.to_string()])
            .args(["-d", &format!("{}s", duration.as_secs()), "-s"])
            .arg(script)
            .arg(base)
            .arg("--")
            .arg(ids_file)
            .args([op, nonce, &(PREBUILT_PER_SECOND * duration.as_secs().max(1)).to_string(), &threads.to_string()]),
    )
    .context("cannot run wrk under bash")?;
    if out.status.code() == Some(127) {
        bail!("wrk not found (Debian package wrk; tests/env/run installs it)");
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() || text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk {op} with {clients} clients failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let field = |prefix: &str| text.lines().map(str::trim).find_map(|l| l.strip_prefix(prefix).map(str::trim));
    let rps = field("Requests/sec:").and_then(|v| v.parse::<f64>().ok()).context("Requests/sec in wrk's output")?;
    let p99_ms = field("99%").and_then(wrk_ms).context("99% latency in wrk's output")?;
    Ok(Cell { rps, p99_ms, client_cpu_ms_per_req: ms_per(cpu, rps * duration.as_secs_f64()) })
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
    Ok(Cell {
        rps: all.len() as f64 / duration.as_secs_f64(),
        p99_ms: percentile(&all, 0.99),
        client_cpu_ms_per_req: 0.0,
    })
}

/// Runs one pgbench script with `clients` clients for `duration`.
fn pgbench_cell(env: &LocalEnv, db: &str, script: &Path, clients: usize, duration: Duration) -> Result<Cell> {
    let pgbench = std::fs::read_dir("/usr/lib/postgresql")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin/pgbench")))
        .find(|p| p.is_file())
        .context("pgbench not found (Debian package postgresql)")?;
    let logs = std::env::temp_dir().join(format!("hf-pgbench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&logs)?;
    let (out, cpu) = run_timed(
        std::process::Command::new(pgbench)
            .current_dir(&logs)
            .args(["-n", "-M", "prepared", "-l", "--log-prefix", "tx"])
            .args([
                "-c",
                &clients.to_string(),
                "-j",
                &clients.min(2).to_string(),
                "-T",
                &duration.as_secs().to_string(),
            ])
            .arg("-f")
            .arg(script)
            .arg(db)
            .env("PGHOST", env.get("HF_DB_HOST")?)
            .env("PGPORT", env.get("HF_DB_PORT")?)
            .env("PGUSER", env.get("HF_DB_USER")?)
            .env("PGPASSWORD", env.get("HF_DB_PASSWORD")?)
            .env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", env.get("HF_DB_CA_FILE")?),
    )?;
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
    Ok(Cell {
        rps: tps,
        p99_ms: percentile(&latencies, 0.99),
        client_cpu_ms_per_req: ms_per(cpu, latencies.len() as f64),
    })
}

/// Runs every operation at every client count, API then pgbench; returns the cells and the API's
/// RSS idle and after the runs.
pub async fn run(
    env: &LocalEnv,
    bin_dir: &Path,
    duration: Duration,
    client_counts: &[usize],
    ops: &[&str],
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
    let ids_file = scripts_dir.join("ids");
    std::fs::write(&ids_file, ids.join("\n") + "\n")?;
    let wrk_script = scripts_dir.join("api.lua");
    std::fs::write(&wrk_script, WRK_SCRIPT)?;
    let mut results: BTreeMap<String, Value> = BTreeMap::new();
    println!("API driven by wrk, the database by pgbench (both C); CPU in ms per request: the load");
    println!("generator's own, the API process's, and the whole machine's (\"box\": server, database, client)");
    println!(
        "{:<11} {:>7} {:>10} {:>9} {:>8} {:>8} {:>8} {:>11} {:>9} {:>8} {:>8} {:>8}",
        "operation",
        "clients",
        "API req/s",
        "API p99",
        "wrk CPU",
        "API CPU",
        "box CPU",
        "pgbench tps",
        "pg p99",
        "pgb CPU",
        "box CPU",
        "API/pg"
    );
    for (op, sql) in pgbench_scripts() {
        if !ops.contains(&op) {
            continue;
        }
        let script = scripts_dir.join(format!("{op}.sql"));
        std::fs::write(&script, sql)?;
        // The tables as a live system keeps them (vacuumed, analyzed): the creates of the cells
        // before would otherwise have autovacuum working through them during these.
        sqlx::raw_sql("vacuum analyze").execute(&mut conn).await?;
        for &clients in client_counts {
            let api_cpu = cpu_seconds(api.pid());
            let discarded = || async {
                let m = api.metrics().await.unwrap_or_default();
                hyperfleet_tests::metric_sum(&m, "hyperfleet_api_status_reports_discarded_total")
            };
            let discarded_before = discarded().await;
            let (a, a_box, _) =
                on_the_box(async { wrk_cell(&base, &wrk_script, &ids_file, op, clients, duration) }).await?;
            // A discarded report (204) skips the write pgbench makes: the cell would flatter the API.
            let dropped = discarded().await - discarded_before;
            if dropped > 0.0 {
                bail!("{op} with {clients} clients: the API discarded {dropped} reports as stale");
            }
            let api_requests = a.rps * duration.as_secs_f64();
            let api_cpu_ms = ms_per(cpu_seconds(api.pid()) - api_cpu, api_requests);
            let (p, p_box, _) = on_the_box(async { pgbench_cell(env, &db.name, &script, clients, duration) }).await?;
            let ratio = if p.rps > 0.0 { a.rps / p.rps } else { 0.0 };
            // The machine's CPU per request on each side (everything: server, database, client).
            let a_box_ms = ms_per(a_box, api_requests);
            let p_box_ms = ms_per(p_box, p.rps * duration.as_secs_f64());
            println!(
                "{op:<11} {clients:>7} {:>10.0} {:>7.2}ms {:>8.3} {:>8.3} {:>8.3} {:>11.0} {:>7.2}ms {:>8.3} {:>8.3} {:>7.2}x",
                a.rps,
                a.p99_ms,
                a.client_cpu_ms_per_req,
                api_cpu_ms,
                a_box_ms,
                p.rps,
                p.p99_ms,
                p.client_cpu_ms_per_req,
                p_box_ms,
                ratio
            );
            results.insert(
                format!("{op}/{clients}"),
                json!({"api_rps": a.rps, "api_p99_ms": a.p99_ms, "wrk_cpu_ms_per_req": a.client_cpu_ms_per_req,
                       "api_cpu_ms_per_req": api_cpu_ms, "machine_cpu_ms_per_api_req": a_box_ms,
                       "pgbench_tps": p.rps, "pgbench_p99_ms": p.p99_ms,
                       "pgbench_cpu_ms_per_req": p.client_cpu_ms_per_req, "machine_cpu_ms_per_pg_tx": p_box_ms,
                       "ratio": ratio}),
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
