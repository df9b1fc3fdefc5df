//! HyperFleet benchmarks against the local environment (`tests/env/run infra` first):
//!
//!   cargo build --release --workspace --bins && cargo run --release -p hyperfleet-tests --bin bench [-- --quick]
//!
//! Every figure is printed beside a raw baseline measured in the same run on the same machine:
//! 1. create→landed latency (`landing.rs`), with the change feed and with polling only;
//! 2. the API against `pgbench` running the handlers' SQL (`api.rs`), and its bounds (`bounds.rs`):
//!    create/get with 1 000 idle change feeds beside none, RSS after pages of 64 KiB specs; and the
//!    cost of tracing (`tracing.rs`): create/get and idle RSS off, on (100 %) and off again
//!    (`HF_BEFORE_BIN_DIR` adds an earlier build's binaries);
//! 3. one sentinel pass against a raw lapin publisher (`sentinel.rs`);
//! 4. the adapter against a raw kube-rs loop (`adapter.rs`);
//! 5. memory (RSS) of every service idle and after its runs, binary sizes;
//! 6. the chart as pods on the local node (`pods.rs`): helm install → Ready, create→Reconciled beside
//!    the loopback processes (needs `tests/env/run node-up`; the images hold the binaries it built).
//!
//! Writes `target/bench/bench.json`. Options: `--quick` (shorter cells, fewer clusters),
//! `--only landing,api,bounds,tracing,sentinel,adapter,pods` (a subset), `--ops` (operations of the
//! API part, `create,get,list100,status_put`, e.g. one to profile, and of the adapter part,
//! `landing,delete,drift`), `HF_BIN_DIR` (binaries other than `target/release`).

mod adapter;
mod api;
mod bounds;
mod landing;
mod pods;
mod sentinel;
mod tracing;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use hyperfleet_tests::{LocalEnv, Service, TestDb, api_db_vars, free_port, migrate, workspace_root};
use serde_json::{Map, Value, json};
use sqlx::{Connection, PgConnection};

/// The `p` quantile (0–1) of ascending `sorted`, nearest rank.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// CPU seconds the whole machine has been busy so far, all cores together (`/proc/stat`: user,
/// nice, system, irq, softirq; not steal, the hypervisor's). Beside a run's wall time it says how
/// much of the machine the run took: two cores busy throughout a 10 s run is 20 s. It is the host's
/// (or VM's) count, not a container's.
fn box_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).map(|v| v.parse::<f64>().unwrap_or(0.0)).collect();
    let at = |i: usize| fields.get(i).copied().unwrap_or(0.0);
    (at(0) + at(1) + at(2) + at(5) + at(6)) / 100.0 // USER_HZ is 100 on Linux
}

/// The CPU each process on the machine has used so far, in seconds, with its command name (the
/// kernel's 15-character `comm`: PostgreSQL's backends are all `postgres`, RabbitMQ `beam.smp`,
/// the kernel's workers — writeback, among others — `kworker`).
fn cpu_by_command() -> std::collections::BTreeMap<u32, (String, f64)> {
    let mut by = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        let command = head.split_once('(').map_or("", |(_, c)| c);
        // The kernel's workers rename themselves after the queue they serve: one name for all.
        let command = if command.starts_with("kworker/") { "kworker" } else { command };
        by.insert(pid, (command.to_string(), stat_cpu_seconds(rest)));
    }
    by
}

/// The machine's busy CPU and each process's at one moment, to say later where the CPU went.
#[derive(Default)]
struct CpuMark {
    machine: f64,
    processes: std::collections::BTreeMap<u32, (String, f64)>,
}

impl CpuMark {
    fn now() -> Self {
        CpuMark { machine: box_cpu_seconds(), processes: cpu_by_command() }
    }

    /// The machine's CPU since the mark in ms per item of `count`, and the same by command: what
    /// each process used since (all of it for one started since), added up per command — a process
    /// that exited meanwhile is not counted —, the commands with at least 1 % of the whole, largest
    /// first, as `("kube-apiserver", 4.1)`.
    fn per_item(&self, count: f64) -> (f64, Vec<(String, f64)>) {
        let total = box_cpu_seconds() - self.machine;
        let mut used = std::collections::BTreeMap::<String, f64>::new();
        for (pid, (command, now)) in cpu_by_command() {
            let earlier = self.processes.get(&pid).filter(|(c, _)| *c == command).map_or(0.0, |(_, s)| *s);
            *used.entry(command).or_insert(0.0) += now - earlier;
        }
        let mut split: Vec<(String, f64)> = used
            .into_iter()
            .filter(|(_, seconds)| *seconds > 0.0 && *seconds >= 0.01 * total)
            .map(|(command, seconds)| (command, ms_per(seconds, count)))
            .collect();
        split.sort_by(|a, b| b.1.total_cmp(&a.1));
        (ms_per(total, count), split)
    }
}

/// A split of [`CpuMark::per_item`] as one line: `kube-apiserver 4.1, etcd 2.0, …`.
fn split_line(split: &[(String, f64)]) -> String {
    split.iter().map(|(c, ms)| format!("{c} {ms:.1}")).collect::<Vec<_>>().join(", ")
}

/// Machine CPU used while `run` ran, as (result, busy CPU seconds, wall seconds).
async fn on_the_box<T>(run: impl std::future::Future<Output = Result<T>>) -> Result<(T, f64, f64)> {
    let (cpu, wall) = (box_cpu_seconds(), Instant::now());
    let out = run.await?;
    Ok((out, box_cpu_seconds() - cpu, wall.elapsed().as_secs_f64()))
}

/// User + system CPU seconds a process has used so far.
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat_cpu_seconds(stat.rsplit(')').next().unwrap_or(""))
}

/// User + system CPU seconds from the fields of `/proc/<pid>/stat` after the command name (which
/// ends with ')'): utime is the 12th of them, stime the 13th.
fn stat_cpu_seconds(fields: &str) -> f64 {
    let fields: Vec<&str> = fields.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // USER_HZ is 100 on Linux
}

/// A `/proc/<pid>/status` memory field (`VmRSS:`, `RssAnon:`, …) in MiB (0 when the process is
/// gone).
fn status_mib(pid: Option<u32>, key: &str) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix(key)).map(String::from))
        .and_then(|v| v.split_whitespace().next().and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A process's resident memory in MiB split into anonymous (its heap, stacks) and file-backed
/// (its binary and libraries, mapped from the page cache).
fn rss_split_mib(pid: Option<u32>) -> (f64, f64) {
    (status_mib(pid, "RssAnon:"), status_mib(pid, "RssFile:"))
}

/// Resident memory of a process in MiB (0 when it is gone).
fn rss_mib(pid: Option<u32>) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// Milliseconds per item of `seconds` spread over `count` items (at least one).
fn ms_per(seconds: f64, count: f64) -> f64 {
    1000.0 * seconds / count.max(1.0)
}

/// A fresh migrated database with `clusters` seeded straight into it, and the API serving it on a
/// port of its own; returns the database, an admin connection to it, the API and its port.
async fn seeded_api(
    env: &LocalEnv,
    bin_dir: &std::path::Path,
    tag: &str,
    clusters: i64,
) -> Result<(TestDb, PgConnection, Service, u16)> {
    seeded_api_with(env, bin_dir, tag, clusters, &[]).await
}

/// [`seeded_api`] with `extra` settings for the API.
async fn seeded_api_with(
    env: &LocalEnv,
    bin_dir: &std::path::Path,
    tag: &str,
    clusters: i64,
    extra: &[(&'static str, &str)],
) -> Result<(TestDb, PgConnection, Service, u16)> {
    let db = TestDb::create(env).await?;
    migrate(env, &db).await?;
    let mut conn = PgConnection::connect_with(&env.pg_options(&db.name)?).await?;
    hyperfleet_tests::seed_clusters(&mut conn, clusters).await?;
    // Statistics as a table that has lived a while has them: without them PostgreSQL plans the
    // first pages of a freshly loaded table as scans, and the figures would measure when
    // autovacuum happened to analyze it.
    sqlx::query("analyze resources").execute(&mut conn).await?;
    let port = free_port();
    let mut vars = api_db_vars(env, &db)?;
    vars.extend([
        ("HYPERFLEET_SERVER_HOST", "127.0.0.1".to_string()),
        ("HYPERFLEET_SERVER_PORT", port.to_string()),
        ("HYPERFLEET_LOG_LEVEL", "warn".to_string()),
    ]);
    vars.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let mut api = Service::start_binary(tag, "api", &bin_dir.join("hyperfleet-api"), &["serve"], &vars)?;
    api.wait_ready(Duration::from_secs(60)).await?;
    Ok((db, conn, api, port))
}

/// The operations of one part that `--ops` names; all of the part's when it names none of them.
fn selected<'a>(ops: &[String], part: &[&'a str]) -> Vec<&'a str> {
    let named: Vec<&str> = part.iter().copied().filter(|p| ops.iter().any(|o| o == p)).collect();
    if named.is_empty() { part.to_vec() } else { named }
}

const PARTS: [&str; 7] = ["landing", "api", "bounds", "tracing", "sentinel", "adapter", "pods"];

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let list = |flag: &str| -> Option<Vec<String>> {
        let i = args.iter().position(|a| a == flag)?;
        Some(args.get(i + 1).map(|v| v.split(',').map(String::from).collect()).unwrap_or_default())
    };
    let only = list("--only").unwrap_or_else(|| PARTS.iter().map(|p| p.to_string()).collect());
    let ops = list("--ops").unwrap_or_default();
    if let Some(bad) = only.iter().find(|p| !PARTS.contains(&p.as_str())) {
        bail!("--only: unknown part {bad:?} (parts: {})", PARTS.join(","));
    }
    if let Some(bad) =
        args.iter().find(|a| a.starts_with("--") && !["--quick", "--only", "--ops"].contains(&a.as_str()))
    {
        bail!(
            "unknown option {bad} (options: --quick, --only {}, --ops {},{})",
            PARTS.join(","),
            api::OPS.join(","),
            adapter::OPS.join(",")
        );
    }
    if let Some(bad) = ops.iter().find(|o| !api::OPS.contains(&o.as_str()) && !adapter::OPS.contains(&o.as_str())) {
        bail!("--ops: unknown operation {bad:?} (api: {}; adapter: {})", api::OPS.join(","), adapter::OPS.join(","));
    }
    let duration = Duration::from_secs(if quick { 3 } else { 10 });
    let client_counts: &[usize] = if quick { &[1, 8] } else { &[1, 8, 32] };
    let landing_n = if quick { 50 } else { 200 };
    let adapter_n = if quick { 50 } else { 200 };
    let pass_sizes: &[i64] = if quick { &[10_000] } else { &[10_000, 100_000] };

    let release = workspace_root().join("target/release");
    let bin_dir: PathBuf = std::env::var("HF_BIN_DIR").map(PathBuf::from).unwrap_or_else(|_| {
        if release.join("hyperfleet-api").is_file() { release.clone() } else { workspace_root().join("target/debug") }
    });
    let env = LocalEnv::load()?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("HyperFleet benchmarks — {cores} cores, binaries from {}", bin_dir.display());
    let started = Instant::now();
    let mut report = Map::new();
    let wants = |p: &str| only.iter().any(|o| o == p);

    if wants("landing") {
        let interval = Duration::from_millis(5);
        println!(
            "\n1. create→landed: {landing_n} clusters, one POST every {} ms, default settings",
            interval.as_millis()
        );
        let with = landing::run(&bin_dir, landing_n, interval, true).await?;
        let without = landing::run(&bin_dir, landing_n, interval, false).await?;
        report.insert("create_to_landed".into(), json!({"change_feed": with, "poll_only": without}));
    }
    if wants("api") {
        println!("\n2. API vs pgbench running the same SQL ({} s per cell)", duration.as_secs());
        let ops = selected(&ops, &api::OPS);
        report.insert("api_vs_pgbench".into(), api::run(&env, &bin_dir, duration, client_counts, &ops).await?);
    }
    if wants("bounds") {
        let watchers = if quick { 200 } else { 1000 };
        println!("\n2b. API bounds: create/get with {watchers} idle change feeds vs none; pages of 64 KiB specs");
        report.insert("bounds".into(), bounds::run(&env, &bin_dir, duration, watchers).await?);
    }
    if wants("tracing") {
        println!("\n2c. tracing: the API off, traced (100 %, OTLP/HTTP to a receiver here), off again");
        report.insert("tracing".into(), tracing::run(&env, &bin_dir, duration).await?);
    }
    if wants("sentinel") {
        println!("\n3. sentinel: one pass over new clusters (list page by page, decide, publish with confirms)");
        let mut passes = Vec::new();
        for &n in pass_sizes {
            passes.push(sentinel::pass(&env, &bin_dir, n).await?);
        }
        report.insert("sentinel_pass".into(), Value::Array(passes));
    }
    if wants("adapter") {
        println!("\n4. adapter: {adapter_n} queued clusters vs a raw kube-rs loop applying the same objects");
        let ops = selected(&ops, &adapter::OPS);
        report.insert("adapter".into(), adapter::run(&env, &bin_dir, adapter_n, &ops).await?);
    }

    println!("\n5. footprint");
    if let Some(l) = report.get("create_to_landed") {
        for svc in ["api", "sentinel", "adapter"] {
            let at = |when: &str| l["change_feed"]["rss_mib"][when][svc].as_f64().unwrap_or(0.0);
            let split = |part: &str| l["change_feed"]["rss_mib"]["idle_split"][svc][part].as_f64().unwrap_or(0.0);
            println!(
                "{svc:<9} RSS idle {:>5.1} MiB (anonymous {:.1}, file-backed {:.1}), after the create→landed run {:>5.1} MiB",
                at("idle"),
                split("anon"),
                split("file"),
                at("after")
            );
        }
    }
    let mut sizes = Map::new();
    for b in ["hyperfleet-api", "hyperfleet-sentinel", "hyperfleet-adapter"] {
        let size = std::fs::metadata(bin_dir.join(b)).map(|m| m.len() as f64 / 1_048_576.0).unwrap_or(0.0);
        println!("binary {b}: {size:.1} MiB");
        sizes.insert(b.to_string(), json!(size));
    }
    report.insert("binary_mib".into(), Value::Object(sizes));
    if wants("pods") {
        let n = if quick { 10 } else { 30 };
        println!("\n6. the chart as pods on the local node vs the same binaries on loopback");
        report.insert("pods".into(), pods::run(&env, &bin_dir, n).await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    report.insert("cores".into(), json!(cores));
    report.insert("binaries".into(), json!(bin_dir.display().to_string()));
    report.insert("quick".into(), json!(quick));
    report.insert("elapsed_s".into(), json!(elapsed));

    let out = workspace_root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("bench.json"), serde_json::to_vec_pretty(&Value::Object(report))?)?;
    println!("\nfinished in {elapsed:.0} s; written to {}", out.join("bench.json").display());
    Ok(())
}
