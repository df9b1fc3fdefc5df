//! Helpers for HyperFleet's end-to-end tests: find the local environment started by
//! `tests/env/run`, give each test its own database, exchange and queue, and run the three real
//! service binaries as child processes (killed when the test ends, logs kept under
//! `target/e2e/`). Tests poll with deadlines; nothing here sleeps for synchronisation.
#![forbid(unsafe_code)]

use std::{
    collections::HashMap,
    future::Future,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

pub mod node;

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

/// A database of its own for one test, dropped (best effort) by [`TestDb::drop_db`].
pub struct TestDb {
    pub name: String,
    env: LocalEnv,
}

impl TestDb {
    pub async fn create(env: &LocalEnv) -> Result<Self> {
        let name = format!("hf_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn =
            PgConnection::connect_with(&env.pg_options("postgres")?).await.context("connect to PostgreSQL")?;
        conn.execute(sqlx::AssertSqlSafe(format!("create database {name}"))).await?;
        conn.close().await?;
        Ok(TestDb { name, env: env.clone() })
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

/// The three services wired together for one test: own database, exchange and queue.
pub struct Stack {
    pub env: LocalEnv,
    /// Unique per test; names the database, exchange, queue and log files.
    pub tag: String,
    pub api_url: String,
    pub exchange: String,
    pub queue: String,
    pub api: Service,
    pub sentinel: Service,
    pub adapter: Service,
    adapter_vars: Vec<(&'static str, String)>,
    adapter_runs: u32,
    /// The test's own HTTP client: sends [`Stack::api_token`] when there is one.
    http: reqwest::Client,
    api_token: Option<String>,
    identities: Option<Identities>,
    /// Clusters created through [`Stack::create_cluster`]; their Namespaces are removed at stop.
    created: std::sync::Mutex<Vec<String>>,
    db: TestDb,
}

/// Extra settings for a [`Stack`]'s workers (they win over the defaults).
#[derive(Default)]
pub struct StackOptions {
    pub sentinel: Vec<(&'static str, String)>,
    pub adapter: Vec<(&'static str, String)>,
    /// The binaries to run (default: [`LocalEnv::bin`]'s choice).
    pub bin_dir: Option<PathBuf>,
    /// Keep the sentinel's default poll interval instead of the tests' 500 ms.
    pub default_poll_interval: bool,
    /// Extra settings for the API (e.g. `HYPERFLEET_JWT_*`); they win over the defaults.
    pub api: Vec<(&'static str, String)>,
    /// Bearer token the test's own requests ([`Stack::get`], [`Stack::create_cluster`], …) send
    /// (default: the stack's own test identity's, see [`StackOptions::jwt_off`]).
    pub api_token: Option<String>,
    /// Run the API without authentication. By default a stack runs as a deployment does: JWT on,
    /// the API verifying Kubernetes ServiceAccount tokens with the local kube-apiserver's keys, the
    /// sentinel and the adapter sending their own ServiceAccounts' tokens (TokenRequest API, in
    /// files), and the test's requests a third one's.
    pub jwt_off: bool,
}

/// The audience the stacks' API accepts (as the chart's does).
pub const API_AUDIENCE: &str = "hyperfleet";

/// The API's settings for verifying Kubernetes ServiceAccount tokens (audience [`API_AUDIENCE`])
/// with the local kube-apiserver's JWKS, which it serves to authenticated callers only.
pub fn jwt_api_vars(env: &LocalEnv) -> Result<Vec<(&'static str, String)>> {
    Ok(vec![
        ("HYPERFLEET_JWT_ENABLED", "true".into()),
        ("HYPERFLEET_JWT_JWKS_URL", format!("{}/openid/v1/jwks", env.get("HF_KUBE_URL")?)),
        ("HYPERFLEET_JWT_JWKS_CA_FILE", env.get("HF_KUBE_CA_FILE")?.into()),
        ("HYPERFLEET_JWT_JWKS_TOKEN_FILE", env.get("HF_KUBE_TOKEN_FILE")?.into()),
        ("HYPERFLEET_JWT_ISSUER", "https://kubernetes.default.svc".into()),
        ("HYPERFLEET_JWT_AUDIENCE", API_AUDIENCE.into()),
        ("HYPERFLEET_JWT_IDENTITY_CLAIM", "sub".into()),
        ("HYPERFLEET_JWT_KUBERNETES", "true".into()),
    ])
}

/// What [`Stack::launch`] started.
struct Launched {
    api_url: String,
    exchange: String,
    queue: String,
    api: Service,
    sentinel: Service,
    adapter: Service,
    adapter_vars: Vec<(&'static str, String)>,
    http: reqwest::Client,
    api_token: Option<String>,
}

/// A stack's ServiceAccounts (namespace `hf-stack-<tag>`) and their token files.
struct Identities {
    namespace: String,
    dir: PathBuf,
    sentinel: PathBuf,
    adapter: PathBuf,
    tester: String,
}

impl Identities {
    async fn create(env: &LocalEnv, tag: &str) -> Result<Identities> {
        use k8s_openapi::api::core::v1::Namespace;
        let kube = env.kube().await?;
        let namespace = format!("hf-stack-{tag}");
        let namespaces: kube::Api<Namespace> = kube::Api::all(kube.clone());
        namespaces
            .create(&Default::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}}))?)
            .await?;
        let dir = std::env::temp_dir().join(format!("hf-tokens-{tag}"));
        let ids =
            Identities { namespace, dir, sentinel: PathBuf::new(), adapter: PathBuf::new(), tester: String::new() };
        match ids.fill(env, kube).await {
            Ok(ids) => Ok(ids),
            Err((ids, e)) => {
                ids.remove(env).await;
                Err(e)
            }
        }
    }

    /// The ServiceAccounts in the (new) namespace and their tokens; on failure, `self` back for removal.
    async fn fill(mut self, env: &LocalEnv, kube: kube::Client) -> std::result::Result<Self, (Self, anyhow::Error)> {
        use k8s_openapi::api::core::v1::ServiceAccount;
        let accounts: kube::Api<ServiceAccount> = kube::Api::namespaced(kube, &self.namespace);
        let made: Result<Vec<PathBuf>> = async {
            std::fs::create_dir_all(&self.dir)?;
            let mut files = Vec::new();
            for name in ["sentinel", "adapter", "tester"] {
                let account = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
                accounts.create(&Default::default(), &account).await?;
                let token = node::service_account_token(env, &self.namespace, name, API_AUDIENCE).await?;
                let path = self.dir.join(name);
                {
                    use std::{io::Write, os::unix::fs::OpenOptionsExt};
                    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
                    f.write_all(token.as_bytes())?;
                }
                files.push(path);
            }
            Ok(files)
        }
        .await;
        match made.and_then(|files| Ok((std::fs::read_to_string(&files[2])?, files))) {
            Ok((tester, files)) => {
                self.tester = tester;
                self.sentinel = files[0].clone();
                self.adapter = files[1].clone();
                Ok(self)
            }
            Err(e) => Err((self, e)),
        }
    }

    async fn remove(&self, env: &LocalEnv) {
        use k8s_openapi::api::core::v1::Namespace;
        if let Ok(kube) = env.kube().await {
            let _ = kube::Api::<Namespace>::all(kube).delete(&self.namespace, &Default::default()).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Stack {
    pub async fn start() -> Result<Self> {
        Stack::start_with(StackOptions::default()).await
    }

    pub async fn start_with(opts: StackOptions) -> Result<Self> {
        let mut env = LocalEnv::load()?;
        env.bin_dir = opts.bin_dir.clone();
        let db = TestDb::create(&env).await?;
        let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let mut identities = None;
        let launched = Stack::launch(&env, &db, &tag, &mut identities, opts).await;
        let Launched { api_url, exchange, queue, api, sentinel, adapter, adapter_vars, http, api_token } =
            match launched {
                Ok(l) => l,
                Err(e) => {
                    // What a failed start created goes again: the identities' namespace, the database.
                    if let Some(ids) = &identities {
                        ids.remove(&env).await;
                    }
                    db.drop_db().await;
                    return Err(e);
                }
            };
        Ok(Stack {
            env,
            tag,
            api_url,
            exchange,
            queue,
            api,
            sentinel,
            adapter,
            adapter_vars,
            adapter_runs: 1,
            http,
            api_token,
            identities,
            created: Default::default(),
            db,
        })
    }

    /// Migrates `db`, creates the identities (into `identities`, so a failure after it can remove
    /// them) and starts the three services.
    async fn launch(
        env: &LocalEnv,
        db: &TestDb,
        tag: &str,
        identities: &mut Option<Identities>,
        opts: StackOptions,
    ) -> Result<Launched> {
        migrate(env, db).await?;
        let exchange = format!("hf-test-{tag}");
        let queue = format!("hf-test-{tag}-landing-zone");
        let api_port = free_port();
        let api_url = format!("http://127.0.0.1:{api_port}");
        let broker = vec![
            ("HYPERFLEET_BROKER_URL", env.get("HF_AMQPS_URL")?.to_string()),
            ("HYPERFLEET_BROKER_CA_FILE", env.get("HF_AMQPS_CA_FILE")?.to_string()),
            ("HYPERFLEET_BROKER_EXCHANGE", exchange.clone()),
            ("HYPERFLEET_HYPERFLEET_API_BASE_URL", api_url.clone()),
        ];
        if !opts.jwt_off {
            *identities = Some(Identities::create(env, tag).await?);
        }
        let mut api_vars = api_db_vars(env, db)?;
        api_vars.push(("HYPERFLEET_SERVER_HOST", "127.0.0.1".into()));
        api_vars.push(("HYPERFLEET_SERVER_PORT", api_port.to_string()));
        if let Some(ids) = &*identities {
            api_vars.extend(jwt_api_vars(env)?);
            // The chart's rules: the sentinel reads, the adapter reads and reports as landing-zone
            // only, the test (as the chart's operator) may do everything.
            let who = |name: &str| format!("system:serviceaccount:{}:{name}", ids.namespace);
            let rules = serde_json::json!([
                {"subjects": [who("sentinel")], "allow": ["read"]},
                {"subjects": [who("adapter")], "allow": ["read", "report:landing-zone"]},
                {"subjects": [who("tester")], "allow": ["*"]},
            ]);
            api_vars.push(("HYPERFLEET_AUTHZ_RULES", rules.to_string()));
        }
        api_vars.extend(opts.api);
        let mut sentinel_vars = broker.clone();
        if !opts.default_poll_interval {
            sentinel_vars.push(("HYPERFLEET_POLL_INTERVAL", "500ms".into()));
        }
        let mut adapter_vars = broker;
        if let Some(ids) = &*identities {
            let file = |p: &PathBuf| ("HYPERFLEET_HYPERFLEET_API_TOKEN_FILE", p.display().to_string());
            sentinel_vars.push(file(&ids.sentinel));
            adapter_vars.push(file(&ids.adapter));
        }
        adapter_vars.push(("HYPERFLEET_QUEUE", queue.clone()));
        adapter_vars.push(("HYPERFLEET_KUBERNETES_KUBECONFIG", env.get("KUBECONFIG")?.to_string()));
        sentinel_vars.extend(opts.sentinel);
        adapter_vars.extend(opts.adapter);

        let mut api = Service::start(env, tag, "api", &["serve"], &api_vars)?;
        let mut sentinel = Service::start(env, tag, "sentinel", &[], &sentinel_vars)?;
        let mut adapter = Service::start(env, tag, "adapter", &[], &adapter_vars)?;
        let mut headers = reqwest::header::HeaderMap::new();
        let api_token = opts.api_token.clone().or_else(|| identities.as_ref().map(|i| i.tester.clone()));
        if let Some(token) = &api_token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder().default_headers(headers).build()?;
        let ready = Duration::from_secs(60);
        api.wait_ready(ready).await?;
        sentinel.wait_ready(ready).await?;
        adapter.wait_ready(ready).await?;
        Ok(Launched { api_url, exchange, queue, api, sentinel, adapter, adapter_vars, http, api_token })
    }

    /// The bearer token the test's own requests send (none with [`StackOptions::jwt_off`]).
    pub fn api_token(&self) -> Option<&str> {
        self.api_token.as_deref()
    }

    /// The current token of the stack's `sentinel` or `adapter` ServiceAccount (JWT on only).
    pub fn worker_token(&self, worker: &str) -> Option<String> {
        let ids = self.identities.as_ref()?;
        let path = match worker {
            "sentinel" => &ids.sentinel,
            "adapter" => &ids.adapter,
            _ => return None,
        };
        std::fs::read_to_string(path).ok()
    }

    /// A connection to the stack's own database.
    pub async fn db_connection(&self) -> Result<PgConnection> {
        Ok(PgConnection::connect_with(&self.env.pg_options(&self.db.name)?).await?)
    }

    /// Kills the adapter with SIGKILL (no chance to finish or ack anything).
    pub async fn kill_adapter(&mut self) -> Result<()> {
        self.adapter.kill().await
    }

    /// Starts a new adapter process with the same settings (its log gets a run number).
    pub async fn restart_adapter(&mut self) -> Result<()> {
        self.adapter_runs += 1;
        let tag = format!("{}-run{}", self.tag, self.adapter_runs);
        let mut adapter = Service::start(&self.env, &tag, "adapter", &[], &self.adapter_vars)?;
        adapter.wait_ready(Duration::from_secs(60)).await?;
        let old = std::mem::replace(&mut self.adapter, adapter);
        old.stop().await;
        Ok(())
    }

    /// The test's HTTP client (with the [`StackOptions::api_token`], if any).
    pub fn client(&self) -> &reqwest::Client {
        &self.http
    }

    /// POSTs a cluster; returns its id.
    pub async fn create_cluster(&self, name: &str) -> Result<String> {
        let id = post_cluster_with(&self.http, &self.api_url, name, serde_json::json!({})).await?;
        self.track_created(&id);
        Ok(id)
    }

    /// Records a cluster created by other means, so that [`Stack::stop`] removes its Namespace.
    pub fn track_created(&self, id: &str) {
        if let Ok(mut created) = self.created.lock() {
            created.push(id.to_string());
        }
    }

    /// POSTs `n` clusters named `<prefix>-<i>`; returns their ids.
    pub async fn create_clusters(&self, prefix: &str, n: usize) -> Result<Vec<String>> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            ids.push(self.create_cluster(&format!("{prefix}-{i}")).await?);
        }
        Ok(ids)
    }

    /// Waits until every cluster in `ids` is `Reconciled=True` at generation 1.
    pub async fn wait_all_reconciled(&self, ids: &[String], within: Duration) -> Result<()> {
        for id in ids {
            self.wait_reconciled(id, 1, within).await?;
        }
        Ok(())
    }

    /// Starts the adapter again after [`Stack::kill_adapter`] (or a stop).
    pub async fn start_adapter(&mut self) -> Result<()> {
        self.restart_adapter().await
    }

    /// Waits until cluster `id` is `Reconciled=True` at `generation`; returns it.
    pub async fn wait_reconciled(&self, id: &str, generation: i64, within: Duration) -> Result<serde_json::Value> {
        eventually(within, || async {
            let (_, c) = self.get(&format!("clusters/{id}")).await?;
            let r = condition(&c, "Reconciled");
            Ok((r["status"] == "True" && r["observed_generation"] == generation).then_some(c))
        })
        .await
        .with_context(|| format!("cluster {id} not Reconciled at generation {generation}\n{}", self.logs()))
    }

    /// GETs a resource path under the API prefix, e.g. `clusters/<id>`.
    pub async fn get(&self, path: &str) -> Result<(u16, serde_json::Value)> {
        let resp = self.http.get(format!("{}/api/hyperfleet/v1/{path}", self.api_url)).send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(serde_json::Value::Null)))
    }

    /// The last log lines of all three services, for failure messages.
    pub fn logs(&self) -> String {
        format!("{}\n{}\n{}", self.api.log_tail(), self.sentinel.log_tail(), self.adapter.log_tail())
    }

    /// A broker configuration for the test's own connections (AMQPS, local CA, this exchange).
    pub fn broker(&self) -> Result<hyperfleet_common::broker::BrokerConfig> {
        self.env.broker(&self.exchange)
    }

    /// Stops the services, removes the database, exchange, queues and the Namespaces of the
    /// clusters it created, and checks that none of them is left behind.
    pub async fn stop(self) {
        let broker = self.broker();
        self.adapter.stop().await;
        self.sentinel.stop().await;
        self.api.stop().await;
        if let Some(ids) = &self.identities {
            ids.remove(&self.env).await;
        }
        let created = self.created.lock().map(|c| c.clone()).unwrap_or_default();
        if !created.is_empty()
            && let Err(e) = remove_namespaces(&self.env, &created).await
        {
            panic!("test left Namespaces behind: {e}");
        }
        if let Ok(cfg) = broker
            && let Ok(conn) = cfg.connect("hyperfleet-test-cleanup").await
            && let Ok(ch) = conn.create_channel().await
        {
            for q in [self.queue.clone(), format!("{}.dead-letter", self.queue)] {
                let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
                // A passive declare of a deleted queue fails (and closes its channel).
                if let Ok(probe) = conn.create_channel().await {
                    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
                    if probe.queue_declare(q.as_str().into(), passive, Default::default()).await.is_ok() {
                        panic!("test left queue {q} behind");
                    }
                }
            }
            let _ = ch.exchange_delete(self.exchange.as_str().into(), Default::default()).await;
            let _ = conn.close(200, "done".into()).await;
        }
        self.db.drop_db().await;
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

/// POSTs a cluster named `name` with `labels` to the API at `api_url`; returns its id.
pub async fn post_cluster(api_url: &str, name: &str, labels: serde_json::Value) -> Result<String> {
    post_cluster_with(&reqwest::Client::new(), api_url, name, labels).await
}

/// [`post_cluster`] with the given client (e.g. one that sends a bearer token).
pub async fn post_cluster_with(
    http: &reqwest::Client,
    api_url: &str,
    name: &str,
    labels: serde_json::Value,
) -> Result<String> {
    let body = serde_json::json!({"kind": "Cluster", "name": name, "spec": {}, "labels": labels});
    let resp = http
        .post(format!("{api_url}/api/hyperfleet/v1/clusters"))
        .timeout(Duration::from_secs(10))
        .json(&body)
        .send()
        .await?;
    if resp.status() != 201 {
        bail!("POST cluster {name}: {} {}", resp.status(), resp.text().await.unwrap_or_default());
    }
    let v: serde_json::Value = resp.json().await?;
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

/// The API alone on its own database, with an exchange name of its own; sentinels are started per
/// test with [`ApiStack::sentinel`] and observed through [`Tap`]s.
pub struct ApiStack {
    pub env: LocalEnv,
    pub tag: String,
    pub api_url: String,
    pub exchange: String,
    pub api: Service,
    api_vars: Vec<(&'static str, String)>,
    db: TestDb,
}

impl ApiStack {
    pub async fn start() -> Result<Self> {
        let env = LocalEnv::load()?;
        let db = TestDb::create(&env).await?;
        migrate(&env, &db).await?;
        let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let port = free_port();
        let mut vars = api_db_vars(&env, &db)?;
        vars.push(("HYPERFLEET_SERVER_HOST", "127.0.0.1".into()));
        vars.push(("HYPERFLEET_SERVER_PORT", port.to_string()));
        let mut api = Service::start(&env, &tag, "api", &["serve"], &vars)?;
        api.wait_ready(Duration::from_secs(60)).await?;
        Ok(ApiStack {
            env,
            exchange: format!("hf-test-{tag}"),
            tag,
            api_url: format!("http://127.0.0.1:{port}"),
            api,
            api_vars: vars,
            db,
        })
    }

    /// A direct connection to the stack's database (for seeding).
    pub async fn db_connection(&self) -> Result<PgConnection> {
        Ok(PgConnection::connect_with(&self.env.pg_options(&self.db.name)?).await?)
    }

    /// Stops the API (if running) and starts it again on the same port.
    pub async fn restart_api(&mut self) -> Result<()> {
        let _ = self.api.kill().await;
        let mut api = Service::start(&self.env, &format!("{}-again", self.tag), "api", &["serve"], &self.api_vars)?;
        api.wait_ready(Duration::from_secs(60)).await?;
        self.api = api;
        Ok(())
    }

    /// The broker and API settings a sentinel or adapter of this stack needs.
    pub fn worker_vars(&self) -> Result<Vec<(&'static str, String)>> {
        Ok(vec![
            ("HYPERFLEET_BROKER_URL", self.env.get("HF_AMQPS_URL")?.to_string()),
            ("HYPERFLEET_BROKER_CA_FILE", self.env.get("HF_AMQPS_CA_FILE")?.to_string()),
            ("HYPERFLEET_BROKER_EXCHANGE", self.exchange.clone()),
            ("HYPERFLEET_HYPERFLEET_API_BASE_URL", self.api_url.clone()),
        ])
    }

    /// Starts a sentinel (log `target/e2e/<tag>-<suffix>-sentinel.log`) and waits until it is ready.
    pub async fn sentinel(&self, suffix: &str, extra: &[(&'static str, String)]) -> Result<Service> {
        let mut vars = self.worker_vars()?;
        vars.push(("HYPERFLEET_POLL_INTERVAL", "300ms".into()));
        vars.extend(extra.iter().cloned());
        let mut s = Service::start(&self.env, &format!("{}-{suffix}", self.tag), "sentinel", &[], &vars)?;
        s.wait_ready(Duration::from_secs(60)).await?;
        Ok(s)
    }

    pub fn broker(&self) -> Result<hyperfleet_common::broker::BrokerConfig> {
        self.env.broker(&self.exchange)
    }

    /// A queue of the test's own bound to the stack's exchange with `binding`.
    pub async fn tap(&self, binding: &str) -> Result<Tap> {
        self.tap_on(&self.exchange, binding).await
    }

    /// A queue of the test's own bound to `exchange` (a topic exchange) with `binding`.
    pub async fn tap_on(&self, exchange: &str, binding: &str) -> Result<Tap> {
        self.open_tap(exchange, binding, false).await
    }

    /// A durable tap that keeps its messages across a broker restart ([`Tap::reconnect`]); deleted
    /// by [`Tap::close`].
    pub async fn durable_tap(&self, binding: &str) -> Result<Tap> {
        self.open_tap(&self.exchange, binding, true).await
    }

    async fn open_tap(&self, exchange: &str, binding: &str, durable: bool) -> Result<Tap> {
        let cfg = self.env.broker(exchange)?;
        let queue = format!("{exchange}-tap-{}", uuid::Uuid::new_v4().simple());
        let (conn, channel) = Tap::open(&cfg, &queue, binding, durable).await?;
        Ok(Tap { conn, channel, queue, durable, cfg, seen: std::sync::Mutex::new(Vec::new()) })
    }

    /// POSTs a cluster with `labels`; returns its id.
    pub async fn create_cluster(&self, name: &str, labels: serde_json::Value) -> Result<String> {
        post_cluster(&self.api_url, name, labels).await
    }

    pub async fn stop(self) {
        if let Ok(cfg) = self.broker()
            && let Ok(conn) = cfg.connect("hyperfleet-test-cleanup").await
            && let Ok(ch) = conn.create_channel().await
        {
            let _ = ch.exchange_delete(self.exchange.as_str().into(), Default::default()).await;
            let _ = conn.close(200, "done".into()).await;
        }
        self.api.stop().await;
        self.db.drop_db().await;
    }
}

/// The condition `kind` of a resource's `status.conditions` (`Null` when absent).
pub fn condition<'a>(resource: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    resource["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .unwrap_or(&serde_json::Value::Null)
}

/// The sum of every series of a Prometheus metric whose line starts with `prefix` (a name, optionally
/// followed by the start of its labels, e.g. `foo_total{reason="new"`).
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with([' ', '{', ',']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A test-owned queue on the exchange, read with `basic_get`.
pub struct Tap {
    conn: lapin::Connection,
    channel: lapin::Channel,
    queue: String,
    durable: bool,
    cfg: hyperfleet_common::broker::BrokerConfig,
    seen: std::sync::Mutex<Vec<serde_json::Value>>,
}

impl Tap {
    async fn open(
        cfg: &hyperfleet_common::broker::BrokerConfig,
        queue: &str,
        binding: &str,
        durable: bool,
    ) -> Result<(lapin::Connection, lapin::Channel)> {
        let conn = cfg.connect("hyperfleet-test-tap").await?;
        let channel = conn.create_channel().await?;
        cfg.declare_exchange(&channel).await?;
        let opts = lapin::options::QueueDeclareOptions {
            durable,
            exclusive: !durable,
            auto_delete: !durable,
            ..Default::default()
        };
        channel.queue_declare(queue.into(), opts, Default::default()).await?;
        channel
            .queue_bind(
                queue.into(),
                cfg.exchange.as_str().into(),
                binding.into(),
                Default::default(),
                Default::default(),
            )
            .await?;
        Ok((conn, channel))
    }

    /// Connects again (after a broker restart) to the same durable queue.
    pub async fn reconnect(&mut self, binding: &str) -> Result<()> {
        let (conn, channel) = Tap::open(&self.cfg, &self.queue, binding, self.durable).await?;
        self.conn = conn;
        self.channel = channel;
        Ok(())
    }

    /// Everything received so far (CloudEvents as JSON), after fetching what is waiting.
    pub async fn events(&self) -> Result<Vec<serde_json::Value>> {
        let opts = lapin::options::BasicGetOptions { no_ack: true };
        let mut fresh = Vec::new();
        while let Some(msg) = self.channel.basic_get(self.queue.as_str().into(), opts).await? {
            fresh.push(serde_json::from_slice(&msg.delivery.data)?);
        }
        let mut seen = self.seen.lock().map_err(|_| anyhow::anyhow!("tap poisoned"))?;
        seen.extend(fresh);
        Ok(seen.clone())
    }

    /// How many events so far announce resource `id`.
    pub async fn count(&self, id: &str) -> Result<usize> {
        Ok(self.events().await?.iter().filter(|e| e["data"]["id"] == id).count())
    }

    pub async fn close(self) {
        if self.durable {
            let _ = self.channel.queue_delete(self.queue.as_str().into(), Default::default()).await;
        }
        let _ = self.conn.close(200, "done".into()).await;
    }
}
