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
