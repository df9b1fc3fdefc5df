//! Stacks: the API alone on its own database ([`ApiStack`]), and the three services with the
//! chart's authentication ([`Stack`]: an [`ApiStack`] plus the sentinel, the adapter and their
//! identities).

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use sqlx::{Connection, PgConnection};

use crate::*;

/// The three services wired together for one test: an [`ApiStack`] (own database and exchange;
/// its fields and methods are the stack's through `Deref`) plus the sentinel and the adapter with
/// a queue of their own.
pub struct Stack {
    base: ApiStack,
    pub queue: String,
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
}

impl std::ops::Deref for Stack {
    type Target = ApiStack;
    fn deref(&self) -> &ApiStack {
        &self.base
    }
}

impl std::ops::DerefMut for Stack {
    fn deref_mut(&mut self) -> &mut ApiStack {
        &mut self.base
    }
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

/// The workers [`Stack::launch_workers`] started, and the test's client.
struct Workers {
    queue: String,
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

/// A tag unique per test: names the database, exchange, queue and log files.
fn new_tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

impl Stack {
    pub async fn start() -> Result<Self> {
        Stack::start_with(StackOptions::default()).await
    }

    pub async fn start_with(mut opts: StackOptions) -> Result<Self> {
        let mut env = LocalEnv::load()?;
        env.bin_dir = opts.bin_dir.clone();
        let tag = new_tag();
        let identities = if opts.jwt_off { None } else { Some(Identities::create(&env, &tag).await?) };
        let mut api_vars = Vec::new();
        if let Some(ids) = &identities {
            api_vars.extend(jwt_api_vars(&env)?);
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
        api_vars.extend(std::mem::take(&mut opts.api));
        let base = match ApiStack::launch(env.clone(), tag, api_vars).await {
            Ok(base) => base,
            Err(e) => {
                // What a failed start created goes again (the API stack removed its database).
                if let Some(ids) = &identities {
                    ids.remove(&env).await;
                }
                return Err(e);
            }
        };
        match Stack::launch_workers(&base, identities.as_ref(), opts).await {
            Ok(Workers { queue, sentinel, adapter, adapter_vars, http, api_token }) => Ok(Stack {
                base,
                queue,
                sentinel,
                adapter,
                adapter_vars,
                adapter_runs: 1,
                http,
                api_token,
                identities,
                created: Default::default(),
            }),
            Err(e) => {
                if let Some(ids) = &identities {
                    ids.remove(&env).await;
                }
                base.stop().await;
                Err(e)
            }
        }
    }

    /// Starts the sentinel and the adapter against `base` (with the identities' tokens) and waits
    /// until they are ready.
    async fn launch_workers(base: &ApiStack, identities: Option<&Identities>, opts: StackOptions) -> Result<Workers> {
        let queue = format!("hf-test-{}-landing-zone", base.tag);
        let broker = base.worker_vars()?;
        let mut sentinel_vars = broker.clone();
        if !opts.default_poll_interval {
            sentinel_vars.push(("HYPERFLEET_POLL_INTERVAL", "500ms".into()));
        }
        let mut adapter_vars = broker;
        if let Some(ids) = identities {
            let file = |p: &PathBuf| ("HYPERFLEET_HYPERFLEET_API_TOKEN_FILE", p.display().to_string());
            sentinel_vars.push(file(&ids.sentinel));
            adapter_vars.push(file(&ids.adapter));
        }
        adapter_vars.push(("HYPERFLEET_QUEUE", queue.clone()));
        adapter_vars.push(("HYPERFLEET_KUBERNETES_KUBECONFIG", base.env.get("KUBECONFIG")?.to_string()));
        sentinel_vars.extend(opts.sentinel);
        adapter_vars.extend(opts.adapter);

        let mut sentinel = Service::start(&base.env, &base.tag, "sentinel", &[], &sentinel_vars)?;
        let mut adapter = Service::start(&base.env, &base.tag, "adapter", &[], &adapter_vars)?;
        let mut headers = reqwest::header::HeaderMap::new();
        let api_token = opts.api_token.clone().or_else(|| identities.map(|i| i.tester.clone()));
        if let Some(token) = &api_token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder().default_headers(headers).build()?;
        let ready = Duration::from_secs(60);
        sentinel.wait_ready(ready).await?;
        adapter.wait_ready(ready).await?;
        Ok(Workers { queue, sentinel, adapter, adapter_vars, http, api_token })
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

    /// Kills the adapter with SIGKILL (no chance to finish or ack anything).
    pub async fn kill_adapter(&mut self) -> Result<()> {
        self.adapter.kill().await
    }

    /// Starts a new adapter process with the same settings (its log gets a run number).
    pub async fn restart_adapter(&mut self) -> Result<()> {
        self.adapter_runs += 1;
        let adapter = self.another_adapter(&format!("run{}", self.adapter_runs), &[]).await?;
        let old = std::mem::replace(&mut self.adapter, adapter);
        old.stop().await;
        Ok(())
    }

    /// The test's HTTP client (with the [`StackOptions::api_token`], if any).
    pub fn client(&self) -> &reqwest::Client {
        &self.http
    }

    /// POSTs a cluster with an empty spec and no labels; returns its id.
    pub async fn create_cluster(&self, name: &str) -> Result<String> {
        let created = self.post_cluster(serde_json::json!({"kind": "Cluster", "name": name, "spec": {}, "labels": {}}));
        Ok(created.await?["id"].as_str().context("id in the create response")?.to_string())
    }

    /// POSTs the cluster `body` describes; returns the created resource.
    pub async fn post_cluster(&self, body: serde_json::Value) -> Result<serde_json::Value> {
        let created = post_cluster(&self.http, &self.api_url, &body).await?;
        self.track_created(created["id"].as_str().context("id in the create response")?);
        Ok(created)
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

    /// Starts another adapter on the stack's queue, with `extra` settings over the stack's; the
    /// caller stops it.
    pub async fn another_adapter(&self, suffix: &str, extra: &[(&'static str, String)]) -> Result<Service> {
        let mut vars = self.adapter_vars.clone();
        vars.extend(extra.iter().cloned());
        let mut adapter = Service::start(&self.env, &format!("{}-{suffix}", self.tag), "adapter", &[], &vars)?;
        adapter.wait_ready(Duration::from_secs(60)).await?;
        Ok(adapter)
    }

    /// Starts the adapter again after [`Stack::kill_adapter`] (or a stop).
    pub async fn start_adapter(&mut self) -> Result<()> {
        self.restart_adapter().await
    }

    /// Waits until cluster `id` is gone from the API (hard-deleted).
    pub async fn wait_gone(&self, id: &str, within: Duration) -> Result<()> {
        eventually(within, || async { Ok((self.get(&format!("clusters/{id}")).await?.0 == 404).then_some(())) })
            .await
            .with_context(|| format!("cluster {id} never went away\n{}", self.logs()))
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

    /// Stops the services, removes the database, exchange, queues and the Namespaces of the
    /// clusters it created, and checks that none of them is left behind.
    pub async fn stop(self) {
        let broker = self.broker();
        self.adapter.stop().await;
        self.sentinel.stop().await;
        if let Some(ids) = &self.identities {
            ids.remove(&self.base.env).await;
        }
        let created = self.created.lock().map(|c| c.clone()).unwrap_or_default();
        if !created.is_empty()
            && let Err(e) = remove_namespaces(&self.base.env, &created).await
        {
            panic!("test left Namespaces behind: {e}");
        }
        if let Ok(cfg) = broker
            && let Ok(conn) = cfg.connect("hyperfleet-test-cleanup").await
        {
            for q in [self.queue.clone(), format!("{}.dead-letter", self.queue)] {
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
                }
                // A passive declare of a deleted queue fails (and closes its channel).
                if let Ok(probe) = conn.create_channel().await {
                    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
                    if probe.queue_declare(q.as_str().into(), passive, Default::default()).await.is_ok() {
                        panic!("test left queue {q} behind");
                    }
                }
            }
            let _ = conn.close(200, "done".into()).await;
        }
        self.base.stop().await;
    }
}

/// The API alone on its own database, with an exchange name of its own; sentinels are started per
/// test with [`ApiStack::sentinel`] and observed through [`Tap`]s.
pub struct ApiStack {
    pub env: LocalEnv,
    /// Unique per test; names the database, exchange, queue and log files.
    pub tag: String,
    pub api_url: String,
    pub exchange: String,
    pub api: Service,
    api_vars: Vec<(&'static str, String)>,
    db: TestDb,
}

impl ApiStack {
    pub async fn start() -> Result<Self> {
        ApiStack::launch(LocalEnv::load()?, new_tag(), Vec::new()).await
    }

    /// A database of its own, migrated, and the API binary on a free loopback port with `extra`
    /// settings (they win over the defaults), ready; on failure the database is removed again.
    async fn launch(env: LocalEnv, tag: String, extra: Vec<(&'static str, String)>) -> Result<Self> {
        let db = TestDb::create(&env).await?;
        let started = async {
            migrate(&env, &db).await?;
            let port = free_port();
            let mut vars = api_db_vars(&env, &db)?;
            vars.push(("HYPERFLEET_SERVER_HOST", "127.0.0.1".into()));
            vars.push(("HYPERFLEET_SERVER_PORT", port.to_string()));
            vars.extend(extra);
            let mut api = Service::start(&env, &tag, "api", &["serve"], &vars)?;
            api.wait_ready(Duration::from_secs(60)).await?;
            Ok::<_, anyhow::Error>((api, format!("http://127.0.0.1:{port}"), vars))
        }
        .await;
        match started {
            Ok((api, api_url, api_vars)) => {
                Ok(ApiStack { exchange: format!("hf-test-{tag}"), env, tag, api_url, api, api_vars, db })
            }
            Err(e) => {
                db.drop_db().await;
                Err(e)
            }
        }
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
        Tap::new(self.env.broker(exchange)?, binding, durable).await
    }

    /// POSTs a cluster with `labels`; returns its id.
    pub async fn create_cluster(&self, name: &str, labels: serde_json::Value) -> Result<String> {
        post_cluster_with(&reqwest::Client::new(), &self.api_url, name, labels).await
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
