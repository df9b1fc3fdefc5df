//! The workers authenticate (issue 16, item 1): the real API with JWT on verifies Kubernetes
//! ServiceAccount tokens issued by the local kube-apiserver (its JWKS fetched from
//! `/openid/v1/jwks`), and the real sentinel and adapter send such tokens from their
//! `hyperfleet_api.token_file`. Tokens come from the TokenRequest API for ServiceAccounts in a
//! namespace of the test's own; nothing is faked.

use std::{
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use futures_util::FutureExt;
use hyperfleet_tests::{LocalEnv, Service, Stack, StackOptions, condition, eventually, metric_sum};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use serde_json::{Value, json};

const LAND: Duration = Duration::from_secs(60);
/// The audience the API is configured to require.
const AUDIENCE: &str = hyperfleet_tests::API_AUDIENCE;
/// What the adapter warns once per streak of refusals (adapter/src/lib.rs).
const ADAPTER_REFUSED: &str = "the API refuses the adapter's credentials";
const SENTINEL_REFUSED: &str = "the API refuses the sentinel's credentials";

/// ServiceAccounts in a fresh namespace, tokens for them from the TokenRequest API, and a
/// directory for the token files the workers read.
struct Accounts {
    namespace: String,
    kube: kube::Client,
    env: LocalEnv,
    dir: PathBuf,
}

impl Accounts {
    async fn create(env: &LocalEnv, names: &[&str]) -> Result<Self> {
        let kube = env.kube().await?;
        let namespace = format!("hf-auth-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let meta = |name: &str| ObjectMeta { name: Some(name.into()), ..Default::default() };
        Api::<Namespace>::all(kube.clone())
            .create(&PostParams::default(), &Namespace { metadata: meta(&namespace), ..Default::default() })
            .await
            .context("create the test namespace")?;
        let accounts: Api<ServiceAccount> = Api::namespaced(kube.clone(), &namespace);
        for name in names {
            accounts
                .create(&PostParams::default(), &ServiceAccount { metadata: meta(name), ..Default::default() })
                .await?;
        }
        let dir = std::env::temp_dir().join(format!("{namespace}-tokens"));
        std::fs::create_dir_all(&dir)?;
        Ok(Accounts { namespace, kube, env: env.clone(), dir })
    }

    /// A token for ServiceAccount `name` with `audience`, valid for an hour.
    async fn token(&self, name: &str, audience: &str) -> Result<String> {
        hyperfleet_tests::node::service_account_token(&self.env, &self.namespace, name, audience).await
    }

    /// The identity the API sees for ServiceAccount `name` (the `sub` claim).
    fn subject(&self, name: &str) -> String {
        format!("system:serviceaccount:{}:{name}", self.namespace)
    }

    /// Writes `token` to the file `name` the way the kubelet does: a new file renamed over the old.
    fn write(&self, name: &str, token: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        let fresh = self.dir.join(format!(".{name}.{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&fresh, format!("{token}\n"))?;
        std::fs::rename(&fresh, &path)?;
        Ok(path)
    }

    /// Deletes the namespace (and with it the ServiceAccounts) and waits until it is gone.
    async fn remove(self) -> Result<()> {
        let _ = std::fs::remove_dir_all(&self.dir);
        let namespaces: Api<Namespace> = Api::all(self.kube.clone());
        let _ = namespaces.delete(&self.namespace, &Default::default()).await;
        eventually(Duration::from_secs(120), || async {
            Ok(namespaces.get_opt(&self.namespace).await?.is_none().then_some(()))
        })
        .await
        .with_context(|| format!("namespace {} left behind", self.namespace))
    }
}

fn token_file_var(path: &Path) -> (&'static str, String) {
    ("HYPERFLEET_HYPERFLEET_API_TOKEN_FILE", path.display().to_string())
}

/// The lines of a service's log that contain `text`.
fn log_lines(service: &Service, text: &str) -> Vec<String> {
    std::fs::read_to_string(&service.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(text))
        .map(String::from)
        .collect()
}

/// The warnings of a service's log that contain `text`.
fn warnings(service: &Service, text: &str) -> Vec<String> {
    log_lines(service, text).into_iter().filter(|l| l.contains(" WARN ")).collect()
}

/// GET the clusters with `token` (none: no header); the status and the problem's `code`/`detail`.
async fn list_with(api_url: &str, token: Option<&str>) -> Result<(u16, Value, bool)> {
    let mut request = reqwest::Client::new().get(format!("{api_url}/api/hyperfleet/v1/clusters"));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let resp = request.send().await?;
    let status = resp.status().as_u16();
    let challenge = resp.headers().get("www-authenticate").is_some_and(|v| v.as_bytes().starts_with(b"Bearer"));
    Ok((status, resp.json().await.unwrap_or(Value::Null), challenge))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_with_service_account_tokens_land_a_cluster_and_other_tokens_get_401() -> Result<()> {
    let env = LocalEnv::load()?;
    let accounts = Accounts::create(&env, &["sentinel", "adapter", "user"]).await?;
    let sentinel_token = accounts.write("sentinel", &accounts.token("sentinel", AUDIENCE).await?)?;
    let adapter_token = accounts.write("adapter", &accounts.token("adapter", AUDIENCE).await?)?;
    let user = accounts.token("user", AUDIENCE).await?;
    let stack = Stack::start_with(StackOptions {
        // Its own ServiceAccounts, so no rules: every authenticated caller may do everything.
        api: [hyperfleet_tests::jwt_api_vars(&env)?, vec![("HYPERFLEET_AUTHZ_RULES", "[]".into())]].concat(),
        sentinel: vec![token_file_var(&sentinel_token)],
        adapter: vec![token_file_var(&adapter_token)],
        api_token: Some(user.clone()),
        ..Default::default()
    })
    .await;
    let stack = match stack {
        Ok(s) => s,
        Err(e) => return accounts.remove().await.and(Err(e)),
    };
    // Cleaned up also when an assertion fails.
    let outcome = AssertUnwindSafe(lands_and_refuses(&stack, &accounts, &user)).catch_unwind().await;
    stack.stop().await;
    accounts.remove().await?;
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

async fn lands_and_refuses(stack: &Stack, accounts: &Accounts, user: &str) -> Result<()> {
    // The user's token creates the cluster; the sentinel and the adapter, each with its own
    // token, carry it to Reconciled.
    let id = stack.create_cluster(&format!("auth-{}", stack.tag)).await?;
    let (status, created) = stack.get(&format!("clusters/{id}")).await?;
    assert_eq!(status, 200);
    assert_eq!(created["created_by"], accounts.subject("user").as_str(), "audit fields carry the subject");
    let reconciled = stack.wait_reconciled(&id, 1, LAND).await?;
    assert_eq!(condition(&reconciled, "LandingZoneSuccessful")["status"], "True");
    // Nothing was refused on the way; the sentinel followed the change feed with its token.
    for service in [&stack.sentinel, &stack.adapter] {
        let refusals =
            metric_sum(&service.metrics().await?, &format!("hyperfleet_{}_api_auth_failures_total", service.name));
        assert_eq!(refusals, 0.0, "{} was refused\n{}", service.name, stack.logs());
    }
    assert!(!log_lines(&stack.sentinel, "following the change feed").is_empty(), "{}", stack.logs());

    // No token: 401 AUT-001 with a Bearer challenge.
    let (status, problem, challenge) = list_with(&stack.api_url, None).await?;
    assert_eq!((status, problem["code"].as_str()), (401, Some("HYPERFLEET-AUT-001")), "{problem}");
    assert!(challenge, "WWW-Authenticate: Bearer");
    // A real token from the same issuer, for another audience: 401 AUT-002 naming the audience.
    let elsewhere = accounts.token("user", "some-other-service").await?;
    let (status, problem, _) = list_with(&stack.api_url, Some(&elsewhere)).await?;
    assert_eq!((status, problem["code"].as_str()), (401, Some("HYPERFLEET-AUT-002")), "{problem}");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("audience")), "{problem}");
    let resp = reqwest::Client::new()
        .post(format!("{}/api/hyperfleet/v1/clusters", stack.api_url))
        .bearer_auth(&elsewhere)
        .json(&json!({"kind": "Cluster", "name": "not-created", "spec": {}}))
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    // The right token still reads, and the refused POST created nothing.
    let (status, list, _) = list_with(&stack.api_url, Some(user)).await?;
    assert_eq!((status, list["total"].as_i64()), (200, Some(1)), "{list}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_warned_about_once_counted_and_its_rotation_picked_up_without_restart() -> Result<()> {
    let env = LocalEnv::load()?;
    let accounts = Accounts::create(&env, &["sentinel", "adapter", "user"]).await?;
    let sentinel_token = accounts.write("sentinel", &accounts.token("sentinel", AUDIENCE).await?)?;
    // Well signed by the right issuer, but for another audience: the API refuses it.
    let wrong = accounts.token("adapter", "not-hyperfleet").await?;
    let adapter_token = accounts.write("adapter", &wrong)?;
    let user = accounts.token("user", AUDIENCE).await?;
    let stack = Stack::start_with(StackOptions {
        // Its own ServiceAccounts, so no rules: every authenticated caller may do everything.
        api: [hyperfleet_tests::jwt_api_vars(&env)?, vec![("HYPERFLEET_AUTHZ_RULES", "[]".into())]].concat(),
        sentinel: vec![token_file_var(&sentinel_token)],
        // One event at a time: no request with the old token can still be in flight after the
        // first accepted one, so the one warning stays one.
        adapter: vec![
            token_file_var(&adapter_token),
            ("HYPERFLEET_RETRY_BASE_DELAY", "100ms".into()),
            ("HYPERFLEET_PREFETCH", "1".into()),
        ],
        api_token: Some(user),
        ..Default::default()
    })
    .await;
    let stack = match stack {
        Ok(s) => s,
        Err(e) => return accounts.remove().await.and(Err(e)),
    };
    let outcome = AssertUnwindSafe(rotation(&env, &stack, &accounts, &wrong)).catch_unwind().await;
    stack.stop().await;
    accounts.remove().await?;
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

async fn rotation(env: &LocalEnv, stack: &Stack, accounts: &Accounts, wrong: &str) -> Result<()> {
    let id = stack.create_cluster(&format!("rotated-{}", stack.tag)).await?;
    // The adapter's requests fail, in-process retries and requeued deliveries alike …
    let failures = eventually(LAND, || async {
        let n = metric_sum(&stack.adapter.metrics().await?, "hyperfleet_adapter_api_auth_failures_total");
        Ok((n >= 6.0).then_some(n))
    })
    .await
    .with_context(|| format!("the adapter's refusals are not counted\n{}", stack.logs()))?;
    // … and it said so once, with the API's reason, never the token.
    let warned = warnings(&stack.adapter, ADAPTER_REFUSED);
    assert_eq!(warned.len(), 1, "one warning for {failures} refused requests: {warned:#?}");
    assert!(warned[0].contains("wrong audience"), "{}", warned[0]);
    assert!(!warned[0].contains(wrong), "the token is never logged");
    // Not acknowledged as done, not dead-lettered, nothing applied; the process keeps running.
    let metrics = stack.adapter.metrics().await?;
    assert_eq!(metric_sum(&metrics, "hyperfleet_adapter_events_processed_total"), 0.0, "{metrics}");
    assert_eq!(metric_sum(&metrics, "hyperfleet_adapter_dead_letters_total"), 0.0);
    let namespaces: Api<Namespace> = Api::all(env.kube().await?);
    assert!(namespaces.get_opt(&id).await?.is_none(), "nothing applied without reading the cluster");
    let (_, cluster) = stack.get(&format!("clusters/{id}")).await?;
    assert_ne!(condition(&cluster, "Reconciled")["status"], "True");

    // A sentinel with a refused token: also one warning for many refused polls and watch requests.
    let refused_sentinel_file = accounts.write("sentinel-refused", wrong)?;
    let vars = vec![
        ("HYPERFLEET_BROKER_URL", env.get("HF_AMQPS_URL")?.to_string()),
        ("HYPERFLEET_BROKER_CA_FILE", env.get("HF_AMQPS_CA_FILE")?.to_string()),
        ("HYPERFLEET_BROKER_EXCHANGE", stack.exchange.clone()),
        ("HYPERFLEET_HYPERFLEET_API_BASE_URL", stack.api_url.clone()),
        ("HYPERFLEET_POLL_INTERVAL", "200ms".into()),
        token_file_var(&refused_sentinel_file),
    ];
    let mut sentinel = Service::start(env, &format!("{}-refused", stack.tag), "sentinel", &[], &vars)?;
    let outcome = refused_sentinel(stack, accounts, &mut sentinel, wrong).await;
    sentinel.stop().await;
    outcome?;

    // The kubelet rotates the adapter's token: the next request reads it, and the cluster lands
    // without a restart.
    accounts.write("adapter", &accounts.token("adapter", AUDIENCE).await?)?;
    stack.wait_reconciled(&id, 1, LAND).await?;
    assert_eq!(log_lines(&stack.adapter, "adapter started").len(), 1, "the same process all along");
    assert_eq!(warnings(&stack.adapter, ADAPTER_REFUSED).len(), 1, "still the one warning");
    let back = log_lines(&stack.adapter, "the API accepts the adapter's credentials again");
    assert_eq!(back.len(), 1, "{back:#?}\n{}", stack.logs());
    Ok(())
}

async fn refused_sentinel(stack: &Stack, accounts: &Accounts, sentinel: &mut Service, wrong: &str) -> Result<()> {
    let refusals = eventually(LAND, || async {
        let Ok(text) = sentinel.metrics().await else { return Ok(None) };
        let n = metric_sum(&text, "hyperfleet_sentinel_api_auth_failures_total");
        Ok((n >= 5.0).then_some(n))
    })
    .await
    .with_context(|| format!("the sentinel's refusals are not counted\n{}", sentinel.log_tail()))?;
    let warned = warnings(sentinel, SENTINEL_REFUSED);
    assert_eq!(warned.len(), 1, "one warning for {refusals} refused requests: {warned:#?}");
    assert!(warned[0].contains("wrong audience") && !warned[0].contains(wrong), "{}", warned[0]);
    // Its token file rotated: its next poll succeeds (ready needs a successful poll).
    accounts.write("sentinel-refused", &accounts.token("sentinel", AUDIENCE).await?)?;
    sentinel.wait_ready(LAND).await.with_context(|| stack.logs())?;
    assert_eq!(warnings(sentinel, SENTINEL_REFUSED).len(), 1);
    assert_eq!(log_lines(sentinel, "the API accepts the sentinel's credentials again").len(), 1);

    // Refused again after successful polls, for longer than the 3 × poll_interval after which a
    // stale poll fails liveness: a refused token does not (a restart cannot fix it), so the kubelet
    // never restart-loops the sentinel over it.
    let failures = "hyperfleet_sentinel_api_auth_failures_total";
    let before = metric_sum(&sentinel.metrics().await?, failures);
    accounts.write("sentinel-refused", wrong)?;
    eventually(LAND, || async {
        let Ok(text) = sentinel.metrics().await else { return Ok(None) };
        Ok((metric_sum(&text, failures) >= before + 5.0).then_some(()))
    })
    .await
    .with_context(|| sentinel.log_tail())?;
    let healthz = format!("http://127.0.0.1:{}/healthz", sentinel.health_port);
    assert_eq!(reqwest::get(&healthz).await?.status(), 200, "alive while refused\n{}", sentinel.log_tail());
    Ok(())
}

/// With the chart's rules on real tokens: the adapter's token creating a cluster is 403, and
/// reporting under another adapter's name is 403 and changes nothing; under its own name it lands.
#[tokio::test]
async fn the_adapters_token_may_only_read_and_report_as_itself() -> Result<()> {
    let stack = Stack::start().await?;
    let outcome = adapter_rights(&stack).await;
    stack.stop().await;
    outcome
}

async fn adapter_rights(stack: &Stack) -> Result<()> {
    let adapter = stack.worker_token("adapter").context("the adapter's token")?;
    let api = format!("{}/api/hyperfleet/v1", stack.api_url);
    let http = reqwest::Client::new();
    let refused = http
        .post(format!("{api}/clusters"))
        .bearer_auth(&adapter)
        .json(&json!({"kind": "Cluster", "name": "by-the-adapter", "spec": {}}))
        .send()
        .await?;
    assert_eq!(refused.status(), 403);
    let problem: Value = refused.json().await?;
    assert_eq!(problem["code"], "HYPERFLEET-AUT-003", "{problem}");

    let id = stack.create_cluster("reported").await?;
    stack.wait_reconciled(&id, 1, LAND).await?;
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let report = json!({
        "adapter": "dns", "observed_generation": 1, "observed_time": at,
        "conditions": [
            {"type": "Available", "status": "False", "reason": "Forged"},
            {"type": "Applied", "status": "False", "reason": "Forged"},
            {"type": "Health", "status": "False", "reason": "Forged"},
        ],
    });
    let statuses = format!("{api}/clusters/{id}/statuses");
    let refused = http.put(&statuses).bearer_auth(&adapter).json(&report).send().await?;
    assert_eq!(refused.status(), 403);
    let problem: Value = refused.json().await?;
    assert!(problem["detail"].as_str().unwrap_or("").contains("only as adapter landing-zone"), "{problem}");
    let (_, list) = stack.get(&format!("clusters/{id}/statuses")).await?;
    let adapters: Vec<&str> =
        list["items"].as_array().into_iter().flatten().filter_map(|s| s["adapter"].as_str()).collect();
    assert_eq!(adapters, ["landing-zone"], "nothing reported as dns: {list}");
    Ok(())
}

/// A kube-apiserver of the test's own — the environment's binary, etcd (under a key prefix of its
/// own), serving certificate and static admin token — so its ServiceAccount signing key can be
/// rotated by restarting it, as an operator rotates a cluster's, without touching the shared one.
struct OwnApiserver {
    env: LocalEnv,
    port: u16,
    prefix: String,
    dir: PathBuf,
    log: PathBuf,
    child: Option<tokio::process::Child>,
}

const ROTATION_ISSUER: &str = "https://rotation.hyperfleet.test";

impl OwnApiserver {
    fn new(env: &LocalEnv) -> Result<Self> {
        let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let dir = std::env::temp_dir().join(format!("hf-rotation-{tag}"));
        std::fs::create_dir_all(&dir)?;
        let logs = hyperfleet_tests::workspace_root().join("target/e2e");
        std::fs::create_dir_all(&logs)?;
        Ok(OwnApiserver {
            env: env.clone(),
            port: hyperfleet_tests::free_port(),
            prefix: format!("/hf-rotation-{tag}"),
            dir,
            log: logs.join(format!("rotation-{tag}-kube-apiserver.log")),
            child: None,
        })
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A fresh RSA key pair `name.key` / `name.pub` (what `--service-account-*-key-file` take).
    fn key(&self, name: &str) -> Result<PathBuf> {
        let key = self.dir.join(format!("{name}.key"));
        for args in [
            vec!["genrsa".into(), "-out".into(), key.display().to_string(), "2048".into()],
            vec![
                "rsa".into(),
                "-in".into(),
                key.display().to_string(),
                "-pubout".into(),
                "-out".into(),
                self.dir.join(format!("{name}.pub")).display().to_string(),
            ],
        ] {
            let out = std::process::Command::new("openssl").args(&args).output()?;
            anyhow::ensure!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(self.dir.join(format!("{name}.pub")))
    }

    /// (Re)starts it signing with `signing` and accepting `verifying`; waits for `/readyz`.
    async fn start(&mut self, signing: &str, verifying: &[&str]) -> Result<()> {
        self.stop().await;
        let kube_dir = Path::new(self.env.get("HF_KUBE_DIR")?).to_path_buf();
        let file = |name: &str| kube_dir.join(name).display().to_string();
        let mut args = vec![
            format!("--etcd-servers={}", self.env.get("HF_ETCD_URL")?),
            format!("--etcd-prefix={}", self.prefix),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={}", self.port),
            "--insecure-port=0".into(),
            format!("--tls-cert-file={}", file("apiserver.crt")),
            format!("--tls-private-key-file={}", file("apiserver.key")),
            format!("--client-ca-file={}", file("ca.crt")),
            format!("--token-auth-file={}", file("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-issuer={ROTATION_ISSUER}"),
            format!("--service-account-signing-key-file={}", self.dir.join(format!("{signing}.key")).display()),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            format!("--cert-dir={}", self.dir.join("certs").display()),
        ];
        for v in verifying {
            args.push(format!("--service-account-key-file={}", self.dir.join(format!("{v}.pub")).display()));
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = tokio::process::Command::new(self.env.get("HF_KUBE_APISERVER_BIN")?)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("start a kube-apiserver")?;
        self.child = Some(child);
        let http = self.admin_http()?;
        let ready = format!("{}/readyz", self.url());
        eventually(Duration::from_secs(120), || async {
            Ok(http.get(&ready).send().await.ok().filter(|r| r.status().is_success()).map(|_| ()))
        })
        .await
        .with_context(|| format!("kube-apiserver not ready (log: {})", self.log.display()))
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// An HTTP client trusting the environment's CA and sending its admin token.
    fn admin_http(&self) -> Result<reqwest::Client> {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.env.get("HF_KUBE_CA_FILE")?)?)?;
        let token = std::fs::read_to_string(self.env.get("HF_KUBE_TOKEN_FILE")?)?;
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))?;
        auth.set_sensitive(true);
        Ok(reqwest::Client::builder()
            .add_root_certificate(ca)
            .default_headers([(reqwest::header::AUTHORIZATION, auth)].into_iter().collect())
            .timeout(Duration::from_secs(10))
            .build()?)
    }

    /// A token for ServiceAccount `default/rotor` (created when missing) from the TokenRequest API,
    /// signed with the key the apiserver signs with now.
    async fn token(&self) -> Result<String> {
        let http = self.admin_http()?;
        let accounts = format!("{}/api/v1/namespaces/default/serviceaccounts", self.url());
        // The `default` namespace appears shortly after the first start.
        eventually(Duration::from_secs(60), || async {
            let resp = http.post(&accounts).json(&json!({"metadata": {"name": "rotor"}})).send().await?;
            Ok(matches!(resp.status().as_u16(), 201 | 409).then_some(()))
        })
        .await?;
        let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [AUDIENCE], "expirationSeconds": 3600}});
        let resp = http.post(format!("{accounts}/rotor/token")).json(&request).send().await?;
        anyhow::ensure!(resp.status().is_success(), "TokenRequest: {}", resp.text().await?);
        let issued: Value = resp.json().await?;
        issued["status"]["token"].as_str().map(String::from).context("no token in the TokenRequest")
    }

    /// Stops it and removes what it stored in etcd and on disk.
    async fn remove(mut self) {
        self.stop().await;
        if let Ok(url) = self.env.get("HF_ETCD_URL") {
            // etcd's JSON gateway: delete the key range [prefix, prefix + 1).
            let end = format!("{}0", self.prefix.trim_end_matches('/'));
            let range = json!({"key": b64(&format!("{}/", self.prefix)), "range_end": b64(&end)});
            let _ = reqwest::Client::new().post(format!("{url}/v3/kv/deleterange")).json(&range).send().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The `kid` of a compact JWS (the kube-apiserver derives it from the signing key).
fn kid(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap_or_default();
    serde_json::from_slice::<Value>(&bytes).ok().and_then(|h| h["kid"].as_str().map(String::from)).unwrap_or_default()
}

/// The kube-apiserver's own signing key is rotated the way it is done on a real cluster — first a
/// restart that signs with the new key and still accepts the old one, later one that drops the old
/// key — and the running API follows each step without a restart: a token signed with the new key
/// is accepted at its first request, and once the old key is gone from the JWKS its tokens are 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kube_apiservers_signing_key_rotation_is_followed_without_a_restart() -> Result<()> {
    let env = LocalEnv::load()?;
    let mut apiserver = OwnApiserver::new(&env)?;
    let outcome = AssertUnwindSafe(signing_key_rotation(&env, &mut apiserver)).catch_unwind().await;
    apiserver.remove().await;
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

async fn signing_key_rotation(env: &LocalEnv, apiserver: &mut OwnApiserver) -> Result<()> {
    apiserver.key("old")?;
    apiserver.key("new")?;
    apiserver.start("old", &["old"]).await?;
    let old = apiserver.token().await?;

    let db = hyperfleet_tests::TestDb::create(env).await?;
    hyperfleet_tests::migrate(env, &db).await?;
    let port = hyperfleet_tests::free_port();
    let mut vars = hyperfleet_tests::api_db_vars(env, &db)?;
    vars.extend([
        ("HYPERFLEET_SERVER_HOST", "127.0.0.1".to_string()),
        ("HYPERFLEET_SERVER_PORT", port.to_string()),
        ("HYPERFLEET_JWT_ENABLED", "true".into()),
        ("HYPERFLEET_JWT_JWKS_URL", format!("{}/openid/v1/jwks", apiserver.url())),
        ("HYPERFLEET_JWT_JWKS_CA_FILE", env.get("HF_KUBE_CA_FILE")?.into()),
        ("HYPERFLEET_JWT_JWKS_TOKEN_FILE", env.get("HF_KUBE_TOKEN_FILE")?.into()),
        ("HYPERFLEET_JWT_ISSUER", ROTATION_ISSUER.into()),
        ("HYPERFLEET_JWT_AUDIENCE", AUDIENCE.into()),
        ("HYPERFLEET_JWT_IDENTITY_CLAIM", "sub".into()),
        ("HYPERFLEET_JWT_KUBERNETES", "true".into()),
        // An unknown kid reloads at once; the keys are also reloaded every 2 s (removed keys).
        ("HYPERFLEET_JWT_JWKS_REFRESH_INTERVAL", "0s".into()),
        ("HYPERFLEET_JWT_JWKS_RELOAD_INTERVAL", "2s".into()),
    ]);
    let mut api = Service::start(env, "rotation", "api", &["serve"], &vars)?;
    let checked = async {
        api.wait_ready(Duration::from_secs(60)).await?;
        let url = format!("http://127.0.0.1:{port}");
        let pid = api.pid();
        let (status, body, _) = list_with(&url, Some(&old)).await?;
        assert_eq!(status, 200, "the old key's token before the rotation: {body}");

        // Step 1: sign with the new key, keep accepting the old one.
        apiserver.start("new", &["old", "new"]).await?;
        let new = apiserver.token().await?;
        assert_ne!(kid(&new), kid(&old), "the apiserver signs with another key now");
        let (status, body, _) = list_with(&url, Some(&new)).await?;
        assert_eq!(status, 200, "the new key's token, at its first request: {body}\n{}", api.log_tail());
        let (status, body, _) = list_with(&url, Some(&old)).await?;
        assert_eq!(status, 200, "the old key is still published: {body}");

        // Step 2: the old key is retired; its tokens stop verifying once the keys are reloaded.
        apiserver.start("new", &["new"]).await?;
        let gone = eventually(Duration::from_secs(30), || async {
            let (status, body, _) = list_with(&url, Some(&old)).await?;
            Ok((status == 401).then_some(body))
        })
        .await
        .with_context(|| format!("the retired key's token is still accepted\n{}", api.log_tail()))?;
        assert_eq!(gone["code"], "HYPERFLEET-AUT-002", "{gone}");
        assert!(gone["detail"].as_str().is_some_and(|d| d.contains("no signing key")), "{gone}");
        let (status, body, _) = list_with(&url, Some(&new)).await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(api.pid(), pid, "the API was not restarted");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    api.stop().await;
    db.drop_db().await;
    checked
}
