//! Fixtures: the local environment's settings, a claim on its PostgreSQL and RabbitMQ, a database
//! per test, service binaries as child processes, polling with a deadline, and small request and
//! metric helpers.

use std::{
    collections::HashMap,
    future::Future,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use sqlx::{Connection, Executor, PgConnection, postgres::PgConnectOptions};
use tokio::process::{Child, Command};

/// Connection settings of the local environment (`.local/env`, written by `tests/env/run`).
#[derive(Debug, Clone)]
pub struct LocalEnv {
    vars: HashMap<String, String>,
    /// Where the service binaries are; `HF_BIN_DIR` or `target/debug` when unset.
    pub bin_dir: Option<PathBuf>,
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

impl LocalEnv {
    /// Reads `HF_LOCAL_ENV_FILE` or `<workspace>/.local/env`.
    pub fn load() -> Result<Self> {
        hyperfleet_common::telemetry::install_crypto_provider();
        let path = std::env::var("HF_LOCAL_ENV_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join(".local/env"));
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("{} not found: start the local environment with `tests/env/run infra` first", path.display())
        })?;
        let vars = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Ok(LocalEnv { vars, bin_dir: None })
    }

    pub fn get(&self, key: &str) -> Result<&str> {
        self.vars.get(key).map(String::as_str).with_context(|| format!("{key} missing from the local env file"))
    }

    /// Admin connection options for the local PostgreSQL, TLS `verify-full` against the local CA.
    pub fn pg_options(&self, database: &str) -> Result<PgConnectOptions> {
        Ok(PgConnectOptions::new()
            .host(self.get("HF_DB_HOST")?)
            .port(self.get("HF_DB_PORT")?.parse()?)
            .username(self.get("HF_DB_USER")?)
            .password(self.get("HF_DB_PASSWORD")?)
            .database(database)
            .ssl_mode(sqlx::postgres::PgSslMode::VerifyFull)
            .ssl_root_cert(self.get("HF_DB_CA_FILE")?))
    }

    /// Broker settings for the local RabbitMQ: AMQPS with the local CA, on `exchange`.
    pub fn broker(&self, exchange: &str) -> Result<hyperfleet_common::broker::BrokerConfig> {
        Ok(hyperfleet_common::broker::BrokerConfig {
            url: hyperfleet_common::config::Secret::new(self.get("HF_AMQPS_URL")?),
            ca_file: Some(self.get("HF_AMQPS_CA_FILE")?.into()),
            exchange: exchange.into(),
            ..Default::default()
        })
    }

    pub fn bin(&self, name: &str) -> Result<PathBuf> {
        let dir = self.bin_dir.clone().unwrap_or_else(|| {
            std::env::var("HF_BIN_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace_root().join("target/debug"))
        });
        let path = dir.join(name);
        if !path.is_file() {
            bail!("{} not found: build it with `cargo build --workspace --bins`", path.display());
        }
        Ok(path)
    }

    pub async fn kube(&self) -> Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(self.get("KUBECONFIG")?)?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(kube::Client::try_from(cfg)?)
    }
}

/// The local PostgreSQL and RabbitMQ are shared by every test of a test binary; the outage tests
/// stop them. A test that uses them holds a shared [`InfraClaim`] ([`TestDb::create`] takes one, so
/// every stack holds one); an outage test takes them alone ([`take_infra_alone`]),
/// which waits until the tests using them are done and holds new ones back until it ends (the
/// lock is fair: a waiting outage test is not starved).
static INFRA: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

thread_local! {
    /// The shared claim this thread's test holds, so a test's second claim does not queue behind
    /// a waiting outage test (which waits for the first: a deadlock).
    static SHARED: std::cell::RefCell<std::sync::Weak<tokio::sync::RwLockReadGuard<'static, ()>>> =
        const { std::cell::RefCell::new(std::sync::Weak::new()) };
    /// Whether this thread's test holds the infrastructure alone (its own claims are then free).
    static ALONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A test's shared claim on the local PostgreSQL and RabbitMQ; released when the last copy drops.
#[derive(Clone)]
pub struct InfraClaim(#[allow(dead_code)] Option<std::sync::Arc<tokio::sync::RwLockReadGuard<'static, ()>>>);

/// A shared claim on the local infrastructure for the calling test (see [`INFRA`]). Tests run on
/// a thread each (`#[tokio::test]`'s current-thread runtime); a second claim of the same test is a
/// copy of the first.
pub async fn share_infra() -> InfraClaim {
    if ALONE.with(|a| a.get()) {
        return InfraClaim(None);
    }
    if let Some(held) = SHARED.with(|s| s.borrow().upgrade()) {
        return InfraClaim(Some(held));
    }
    let held = std::sync::Arc::new(INFRA.read().await);
    SHARED.with(|s| *s.borrow_mut() = std::sync::Arc::downgrade(&held));
    InfraClaim(Some(held))
}

/// The local infrastructure for the calling test alone, until the returned guard drops: for a test
/// that stops PostgreSQL or RabbitMQ. Take it first, before any other claim.
pub async fn take_infra_alone() -> Result<InfraAlone> {
    if SHARED.with(|s| s.borrow().strong_count() > 0) {
        bail!("take_infra_alone: this test already holds a shared claim (take the exclusive one first)");
    }
    let guard = INFRA.write().await;
    ALONE.with(|a| a.set(true));
    Ok(InfraAlone(guard))
}

/// See [`take_infra_alone`].
pub struct InfraAlone(#[allow(dead_code)] tokio::sync::RwLockWriteGuard<'static, ()>);

impl Drop for InfraAlone {
    fn drop(&mut self) {
        ALONE.with(|a| a.set(false));
    }
}

/// Runs `tests/env/run <action>` on the environment `env` belongs to (`pg-stop`, `mq-start`, …).
pub fn env_run(env: &LocalEnv, action: &str) -> Result<()> {
    let out = std::process::Command::new(workspace_root().join("tests/env/run"))
        .arg(action)
        .env("HYPERFLEET_LOCAL_DIR", env.get("HF_LOCAL_DIR")?)
        .output()?;
    if !out.status.success() {
        bail!(
            "tests/env/run {action}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs `tests/env/run <action>` when dropped: an outage test starts what it stopped whatever
/// happens, a failing assertion included.
pub struct RunOnDrop(pub LocalEnv, pub &'static str);

impl Drop for RunOnDrop {
    fn drop(&mut self) {
        let _ = env_run(&self.0, self.1);
    }
}

/// A database of its own for one test, dropped (best effort) by [`TestDb::drop_db`]; it holds the
/// test's claim on the local infrastructure ([`share_infra`]).
pub struct TestDb {
    pub name: String,
    env: LocalEnv,
    _infra: InfraClaim,
}

impl TestDb {
    pub async fn create(env: &LocalEnv) -> Result<Self> {
        let infra = share_infra().await;
        let name = format!("hf_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn =
            PgConnection::connect_with(&env.pg_options("postgres")?).await.context("connect to PostgreSQL")?;
        conn.execute(sqlx::AssertSqlSafe(format!("create database {name}"))).await?;
        conn.close().await?;
        Ok(TestDb { name, env: env.clone(), _infra: infra })
    }

    pub async fn drop_db(self) {
        if let Ok(opts) = self.env.pg_options("postgres")
            && let Ok(mut conn) = PgConnection::connect_with(&opts).await
        {
            let _ =
                conn.execute(sqlx::AssertSqlSafe(format!("drop database if exists {} with (force)", self.name))).await;
        }
    }
}

/// A free TCP port on 127.0.0.1 for a service a test starts. Chosen below the kernel's ephemeral
/// range (so no outgoing connection takes it meanwhile) and never handed out twice per process (so
/// parallel tests do not collide); checked free by binding it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % 12_000) as u16;
        if given.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.push(port);
        return port;
    }
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// A service binary running for the duration of a test.
pub struct Service {
    pub name: String,
    pub log: PathBuf,
    pub health_port: u16,
    pub metrics_port: u16,
    child: Child,
}

impl Service {
    /// Starts `hyperfleet-<name> args…` with `env`, logging to `target/e2e/<tag>-<name>.log`.
    pub fn start(env: &LocalEnv, tag: &str, name: &str, args: &[&str], vars: &[(&str, String)]) -> Result<Self> {
        Service::start_binary(tag, name, &env.bin(&format!("hyperfleet-{name}"))?, args, vars)
    }

    /// [`Service::start`] with an explicit binary (e.g. a release build).
    pub fn start_binary(tag: &str, name: &str, binary: &Path, args: &[&str], vars: &[(&str, String)]) -> Result<Self> {
        let dir = workspace_root().join("target/e2e");
        std::fs::create_dir_all(&dir)?;
        let log = dir.join(format!("{tag}-{name}.log"));
        let file = std::fs::File::create(&log)?;
        let health_port = free_port();
        let metrics_port = free_port();
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HYPERFLEET_LOG_FORMAT", "text")
            .env("HYPERFLEET_LOG_LEVEL", "info,hyperfleet=debug")
            .env("HYPERFLEET_HEALTH_HOST", "127.0.0.1")
            .env("HYPERFLEET_HEALTH_PORT", health_port.to_string())
            .env("HYPERFLEET_METRICS_HOST", "127.0.0.1")
            .env("HYPERFLEET_METRICS_PORT", metrics_port.to_string())
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("spawn hyperfleet-{name}"))?;
        Ok(Service { name: name.into(), log, health_port, metrics_port, child })
    }

    /// Waits until `/readyz` answers 200, failing early if the process exits.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.health_port);
        let http = reqwest::Client::new();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("hyperfleet-{} exited with {status}\n{}", self.name, self.log_tail());
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("hyperfleet-{} not ready within {within:?}\n{}", self.name, self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the service's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        format!("--- {} (last lines) ---\n{tail}", self.log.display())
    }

    /// The service's Prometheus text.
    pub async fn metrics(&self) -> Result<String> {
        Ok(reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port)).await?.text().await?)
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILLs the process and reaps it.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// Sends SIGTERM, as the kubelet does (with `kill(1)`: the tests use no `unsafe`).
    pub fn terminate(&self) -> Result<()> {
        let pid = self.pid().context("the process has exited")?;
        let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        Ok(())
    }

    /// Waits until the process exits (polling), at most `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("hyperfleet-{} still running after {within:?}\n{}", self.name, self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs `hyperfleet-api migrate` against `db` and waits for it to finish.
pub async fn migrate(env: &LocalEnv, db: &TestDb) -> Result<()> {
    let out = Command::new(env.bin("hyperfleet-api")?)
        .arg("migrate")
        .env_clear()
        .envs(api_db_vars(env, db)?)
        .output()
        .await?;
    if !out.status.success() {
        bail!("migrate failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The `HYPERFLEET_DATABASE_*` settings pointing the API at `db` with `verify-full` TLS.
pub fn api_db_vars(env: &LocalEnv, db: &TestDb) -> Result<Vec<(&'static str, String)>> {
    Ok(vec![
        ("HYPERFLEET_DATABASE_HOST", env.get("HF_DB_HOST")?.into()),
        ("HYPERFLEET_DATABASE_PORT", env.get("HF_DB_PORT")?.into()),
        ("HYPERFLEET_DATABASE_USERNAME", env.get("HF_DB_USER")?.into()),
        ("HYPERFLEET_DATABASE_PASSWORD", env.get("HF_DB_PASSWORD")?.into()),
        ("HYPERFLEET_DATABASE_NAME", db.name.clone()),
        ("HYPERFLEET_DATABASE_SSL_MODE", "verify-full".into()),
        ("HYPERFLEET_DATABASE_SSL_ROOT_CERT_FILE", env.get("HF_DB_CA_FILE")?.into()),
    ])
}

/// Polls `probe` every 50 ms until it yields `Some`, fails, or `within` passes.
pub async fn eventually<T, F, Fut>(within: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("condition not met within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Inserts `n` clusters straight into the database (no adapter reports), for load.
pub async fn seed_clusters(conn: &mut PgConnection, n: i64) -> Result<()> {
    sqlx::query(
        "insert into resources (id, kind, name, spec, labels, conditions, created_by, updated_by) \
         select gen_random_uuid(), 'Cluster', 'seeded-' || g, '{\"region\":\"eu\"}', '{}', '[]', 'bench', 'bench' \
         from generate_series(1, $1) g",
    )
    .bind(n)
    .execute(conn)
    .await?;
    Ok(())
}

/// POSTs the cluster `body` describes to the API at `api_url` with `http` (e.g. a client that
/// sends a bearer token); fails unless it is created; returns the created resource.
pub async fn post_cluster(
    http: &reqwest::Client,
    api_url: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value> {
    let resp = http
        .post(format!("{api_url}/api/hyperfleet/v1/clusters"))
        .timeout(Duration::from_secs(10))
        .json(body)
        .send()
        .await?;
    if resp.status() != 201 {
        bail!("POST cluster {}: {} {}", body["name"], resp.status(), resp.text().await.unwrap_or_default());
    }
    Ok(resp.json().await?)
}

/// [`post_cluster`] of a cluster named `name` with `labels` and an empty spec; returns its id.
pub async fn post_cluster_with(
    http: &reqwest::Client,
    api_url: &str,
    name: &str,
    labels: serde_json::Value,
) -> Result<String> {
    let body = serde_json::json!({"kind": "Cluster", "name": name, "spec": {}, "labels": labels});
    let v = post_cluster(http, api_url, &body).await?;
    Ok(v["id"].as_str().context("id")?.to_string())
}

/// Deletes the Namespaces of `clusters` and waits until the controller-manager has removed them.
pub async fn remove_namespaces(env: &LocalEnv, clusters: &[String]) -> Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    let api: kube::Api<Namespace> = kube::Api::all(env.kube().await?);
    for id in clusters {
        let _ = api.delete(id, &Default::default()).await;
    }
    let selector = format!("hyperfleet.io/cluster-id in ({})", clusters.join(","));
    let params = kube::api::ListParams::default().labels(&selector);
    eventually(Duration::from_secs(120), || async { Ok(api.list(&params).await?.items.is_empty().then_some(())) })
        .await
        .with_context(|| format!("Namespaces of {} clusters still present", clusters.len()))
}

/// The condition `kind` of a resource's `status.conditions` (`Null` when absent).
pub fn condition<'a>(resource: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    resource["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .unwrap_or(&serde_json::Value::Null)
}

/// A condition of an adapter's status report (its `conditions` list); null when absent.
pub fn report_condition<'a>(report: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    report["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .unwrap_or(&serde_json::Value::Null)
}

/// The sum of every series of a Prometheus metric whose line starts with `prefix` (a name, optionally
/// followed by the start of its labels, e.g. `foo_total{reason="new"`).
/// The sum of metric `name`'s series (Prometheus text) whose labels include every one of
/// `labels` (`kind="Namespace"`, …), in any order.
pub fn metric_sum_where(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with([' ', '{', ',']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
