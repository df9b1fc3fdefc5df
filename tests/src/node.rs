//! The hyperfleet-system chart as real pods on the local environment's node (`tests/env/node.sh`):
//! a [`Release`] installs the chart with helm and the images `tests/env/images.sh` imported, explains
//! a failure with every pod's state, the namespace's events and the containers' last log lines, opens
//! `kubectl port-forward`s, and uninstalls (also when a test panics).

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use kube::{Api, api::ListParams};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::{Mutex, MutexGuard},
};

use crate::{LocalEnv, eventually, free_port, workspace_root};

/// One release at a time: the node has two cores, and RabbitMQ alone takes one for a while to start.
static ONE_RELEASE: Mutex<()> = Mutex::const_new(());

/// Where helm keeps its release records: the chart's own objects go to the `namespace` value.
const RELEASE_NAMESPACE: &str = "default";

pub fn chart_dir() -> PathBuf {
    workspace_root().join("charts/hyperfleet-system")
}

/// The values every install on the node starts from: the images built for it, never pulled.
pub fn node_values() -> PathBuf {
    workspace_root().join("tests/env/chart-values.yaml")
}

/// The objects of a multi-document YAML text (`helm template` output), as JSON; empty documents dropped.
pub fn yaml_objects(text: &str) -> Result<Vec<serde_json::Value>> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = serde_json::to_value(serde_yaml::Value::deserialize(doc)?)?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Runs helm against the local apiserver; returns whether it succeeded and what it printed.
pub async fn helm<S: AsRef<std::ffi::OsStr>>(env: &LocalEnv, args: &[S]) -> Result<(bool, String)> {
    let tmp = std::env::temp_dir();
    let out = Command::new(env.get("HF_HELM")?)
        .args(args)
        .env("KUBECONFIG", env.get("KUBECONFIG")?)
        .env("HELM_CACHE_HOME", tmp.join("hf-helm-cache"))
        .env("HELM_CONFIG_HOME", tmp.join("hf-helm-config"))
        .env("HELM_DATA_HOME", tmp.join("hf-helm-data"))
        .output()
        .await
        .context("run helm")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// How a release is installed: extra helm arguments (`-f FILE`, `--set K=V`) after the node's values.
#[derive(Default)]
pub struct ReleaseSpec<'a> {
    /// Names the release (`<prefix>-<tag>`) and its namespace (`hf-<prefix>-<tag>`).
    pub prefix: &'a str,
    pub args: Vec<String>,
    /// Whether the chart renders the Namespace (so that uninstalling removes it); when false the test
    /// has created it (for Secrets that must exist first) and it is deleted after the uninstall.
    pub chart_creates_namespace: bool,
    /// How long `helm install --wait` waits for the pods (default 5 minutes).
    pub wait: Option<Duration>,
}

pub struct Release {
    pub env: LocalEnv,
    pub kube: kube::Client,
    pub name: String,
    pub namespace: String,
    /// helm's wall time from `install` to every pod Ready (`--wait`).
    pub install_to_ready: Duration,
    args: Vec<String>,
    chart_creates_namespace: bool,
    uninstalled: bool,
    _one: MutexGuard<'static, ()>,
}

impl Release {
    /// A namespace name for a release that is about to be installed (to create Secrets in first).
    pub fn new_namespace(prefix: &str) -> (String, String) {
        let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        (format!("{prefix}-{tag}"), format!("hf-{prefix}-{tag}"))
    }

    /// `helm install --wait`: every Deployment's pods Ready through the kubelet's probes, or an
    /// error that carries the pods' states, events and logs.
    pub async fn install(env: &LocalEnv, spec: ReleaseSpec<'_>) -> Result<Self> {
        let (name, namespace) = Self::new_namespace(spec.prefix);
        Self::install_as(env, spec, name, namespace).await
    }

    pub async fn install_as(env: &LocalEnv, spec: ReleaseSpec<'_>, name: String, namespace: String) -> Result<Self> {
        require_node(env).await?;
        let one = ONE_RELEASE.lock().await;
        let kube = env.kube().await?;
        let mut args = vec![
            "--namespace".into(),
            RELEASE_NAMESPACE.into(),
            "-f".into(),
            node_values().display().to_string(),
            "--set".into(),
            format!("namespace={namespace}"),
            "--set".into(),
            format!("createNamespace={}", spec.chart_creates_namespace),
        ];
        let wait = spec.wait;
        args.extend(spec.args);
        let release = Release {
            env: env.clone(),
            kube,
            name,
            namespace,
            install_to_ready: Duration::ZERO,
            args,
            chart_creates_namespace: spec.chart_creates_namespace,
            uninstalled: false,
            _one: one,
        };
        let started = Instant::now();
        let mut cmd: Vec<String> = vec!["install".into(), release.name.clone(), chart_dir().display().to_string()];
        cmd.extend(release.args.iter().cloned());
        let wait = wait.unwrap_or(Duration::from_secs(300));
        cmd.extend(["--wait".into(), "--timeout".into(), format!("{}s", wait.as_secs())]);
        let (ok, text) = helm(env, &cmd).await?;
        if !ok {
            bail!("helm install {}:\n{text}\n{}", release.name, release.diagnostics().await);
        }
        let mut release = release;
        release.install_to_ready = started.elapsed();
        Ok(release)
    }

    /// `helm upgrade --wait` with the install's arguments plus `extra`.
    pub async fn upgrade(&self, extra: &[String]) -> Result<()> {
        let mut cmd: Vec<String> = vec!["upgrade".into(), self.name.clone(), chart_dir().display().to_string()];
        cmd.extend(self.args.iter().cloned());
        cmd.extend(extra.iter().cloned());
        cmd.extend(["--wait".into(), "--timeout".into(), "5m".into()]);
        let (ok, text) = helm(&self.env, &cmd).await?;
        if !ok {
            bail!("helm upgrade {}:\n{text}\n{}", self.name, self.diagnostics().await);
        }
        Ok(())
    }

    /// A token of the chart's operator ServiceAccount (`hyperfleet-operator`, allowed everything on
    /// the API), as a person gets one with `kubectl create token`.
    pub async fn operator_token(&self) -> Result<String> {
        service_account_token(&self.env, &self.namespace, "hyperfleet-operator", "hyperfleet").await
    }

    pub fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.kube.clone(), &self.namespace)
    }

    /// The pods of one component (`api`, `sentinel`, `adapter`, `postgresql`, `rabbitmq`).
    pub async fn pods(&self, component: &str) -> Result<Vec<Pod>> {
        let lp = ListParams::default().labels(&format!("app.kubernetes.io/component={component}"));
        Ok(self.pods_api().list(&lp).await?.items)
    }

    /// The one running pod of a component (fails when there is not exactly one that is not terminating).
    pub async fn pod(&self, component: &str) -> Result<Pod> {
        let mut live: Vec<Pod> =
            self.pods(component).await?.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        if live.len() != 1 {
            bail!("{} live {component} pods, expected 1\n{}", live.len(), self.diagnostics().await);
        }
        Ok(live.remove(0))
    }

    /// What a person would look at when a pod does not come up: each pod's phase, conditions and
    /// container states, the namespace's events, and the last log lines of every container.
    pub async fn diagnostics(&self) -> String {
        use std::fmt::Write;
        let mut out = format!("--- pods of {} in {} ---\n", self.name, self.namespace);
        let pods = self.pods_api().list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
        for p in &pods {
            let name = p.metadata.name.clone().unwrap_or_default();
            let status = p.status.clone().unwrap_or_default();
            let _ = writeln!(out, "pod {name}: phase {}", status.phase.unwrap_or_default());
            for c in status.conditions.unwrap_or_default() {
                let _ = writeln!(
                    out,
                    "  condition {}={} {} {}",
                    c.type_,
                    c.status,
                    c.reason.unwrap_or_default(),
                    c.message.unwrap_or_default()
                );
            }
            let all = status
                .init_container_statuses
                .unwrap_or_default()
                .into_iter()
                .chain(status.container_statuses.unwrap_or_default());
            for c in all {
                let _ = writeln!(out, "  container {}: ready={} restarts={}", c.name, c.ready, c.restart_count);
                if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
                    let _ = writeln!(
                        out,
                        "    waiting: {} {}",
                        w.reason.clone().unwrap_or_default(),
                        w.message.clone().unwrap_or_default()
                    );
                }
                for (what, t) in [
                    ("terminated", c.state.as_ref().and_then(|s| s.terminated.as_ref())),
                    ("last terminated", c.last_state.as_ref().and_then(|s| s.terminated.as_ref())),
                ] {
                    if let Some(t) = t {
                        let _ = writeln!(
                            out,
                            "    {what}: exit {} {} {}",
                            t.exit_code,
                            t.reason.clone().unwrap_or_default(),
                            t.message.clone().unwrap_or_default()
                        );
                    }
                }
                let lp = kube::api::LogParams {
                    container: Some(c.name.clone()),
                    tail_lines: Some(15),
                    ..Default::default()
                };
                if let Ok(logs) = self.pods_api().logs(&name, &lp).await {
                    for line in logs.lines() {
                        let _ = writeln!(out, "    | {}", line.chars().take(300).collect::<String>());
                    }
                }
            }
        }
        let events: Api<Event> = Api::namespaced(self.kube.clone(), &self.namespace);
        let mut evs = events.list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
        evs.sort_by_key(|e| e.last_timestamp.clone().map(|t| t.0));
        let _ = writeln!(out, "--- events ---");
        for e in evs.iter().rev().take(40).rev() {
            let _ = writeln!(
                out,
                "{} {} {}/{}: {}",
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                e.involved_object.kind.clone().unwrap_or_default(),
                e.involved_object.name.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default()
            );
        }
        out
    }

    /// `kubectl port-forward` to `target` (`service/hyperfleet-api`, `pod/…`) port `port`, on a free
    /// loopback port; ready once kubectl says it is forwarding.
    pub async fn port_forward(&self, target: &str, port: u16) -> Result<PortForward> {
        let local = free_port();
        let mut child = Command::new(self.env.get("HF_KUBECTL")?)
            .args(["--kubeconfig", self.env.get("KUBECONFIG")?, "-n", &self.namespace, "port-forward"])
            .args(["--address", "127.0.0.1", target, &format!("{local}:{port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("run kubectl port-forward")?;
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = stdout.next_line().await? {
                if line.starts_with("Forwarding from") {
                    return Ok::<_, anyhow::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        if !matches!(ready, Ok(Ok(true))) {
            let _ = child.start_kill();
            let out = child.wait_with_output().await?;
            bail!(
                "kubectl port-forward {target} {port} did not start: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.diagnostics().await
            );
        }
        // Keep draining its output ("Handling connection for …", errors) so kubectl never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        if let Some(stderr) = child.stderr.take() {
            let mut stderr = BufReader::new(stderr).lines();
            tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
        }
        // Requests through it carry the operator's token when the release has the operator's
        // ServiceAccount (JWT is on by default); a TokenRequest that fails then is an error.
        let mut http = reqwest::Client::builder();
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.kube.clone(), &self.namespace);
        if accounts.get_opt("hyperfleet-operator").await?.is_some() {
            let token = self.operator_token().await?;
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?;
            value.set_sensitive(true);
            http = http.default_headers([(reqwest::header::AUTHORIZATION, value)].into_iter().collect());
        }
        Ok(PortForward { url: format!("http://127.0.0.1:{local}"), http: http.build()?, _child: child })
    }

    /// `helm uninstall`, then checks that nothing of the release is left: its Namespace (with every
    /// pod and Service in it), ClusterRole and ClusterRoleBinding.
    pub async fn uninstall(mut self) -> Result<()> {
        self.uninstalled = true;
        let cmd: Vec<String> = vec![
            "uninstall".into(),
            self.name.clone(),
            "--namespace".into(),
            RELEASE_NAMESPACE.into(),
            "--wait".into(),
        ];
        let (ok, text) = helm(&self.env, &cmd).await?;
        if !ok {
            bail!("helm uninstall {}: {text}", self.name);
        }
        let namespaces: Api<Namespace> = Api::all(self.kube.clone());
        if !self.chart_creates_namespace {
            let _ = namespaces.delete(&self.namespace, &Default::default()).await;
        }
        eventually(Duration::from_secs(180), || async {
            Ok(namespaces.get_opt(&self.namespace).await?.is_none().then_some(()))
        })
        .await
        .with_context(|| format!("namespace {} still there after helm uninstall", self.namespace))?;
        use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
        let roles: Api<ClusterRole> = Api::all(self.kube.clone());
        let bindings: Api<ClusterRoleBinding> = Api::all(self.kube.clone());
        let cluster_scoped = format!("{}-hyperfleet-adapter", self.namespace);
        if roles.get_opt(&cluster_scoped).await?.is_some() || bindings.get_opt(&cluster_scoped).await?.is_some() {
            bail!("the adapter's ClusterRole or ClusterRoleBinding is left after helm uninstall");
        }
        Ok(())
    }
}

impl Drop for Release {
    /// A test that failed half-way still removes its release, so the next one can install.
    fn drop(&mut self) {
        if self.uninstalled {
            return;
        }
        let (Ok(helm), Ok(kubeconfig)) = (self.env.get("HF_HELM"), self.env.get("KUBECONFIG")) else { return };
        let _ = std::process::Command::new(helm)
            .args(["uninstall", &self.name, "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout", "2m"])
            .env("KUBECONFIG", kubeconfig)
            .output();
        if let Ok(kubectl) = self.env.get("HF_KUBECTL") {
            let _ = std::process::Command::new(kubectl)
                .args(["--kubeconfig", kubeconfig, "delete", "namespace", &self.namespace, "--wait=false"])
                .output();
        }
    }
}

/// Fails with how to start it unless the local node is registered and Ready.
pub async fn require_node(env: &LocalEnv) -> Result<()> {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.kube().await?);
    let ready = nodes
        .get_opt("hyperfleet-node")
        .await?
        .and_then(|n| n.status)
        .and_then(|s| s.conditions)
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if !ready {
        bail!("the local node is not running or not Ready: start it with `tests/env/run node-up`");
    }
    Ok(())
}

/// A running `kubectl port-forward`; stopped when dropped.
pub struct PortForward {
    pub url: String,
    /// An HTTP client sending the release's operator token (none when the release has no operator).
    pub http: reqwest::Client,
    _child: Child,
}

/// The host pid of a running container (from its `containerd://<id>`), through the node's containerd.
pub async fn container_pid(env: &LocalEnv, container_id: &str) -> Result<u32> {
    let id = container_id.strip_prefix("containerd://").unwrap_or(container_id);
    let out = Command::new("ctr")
        .args(["--address", env.get("HF_CONTAINERD_SOCK")?, "-n", "k8s.io", "tasks", "ls"])
        .output()
        .await
        .context("run ctr tasks ls")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == id).then(|| f.next()?.parse().ok()).flatten()
        })
        .with_context(|| format!("container {id} has no running task:\n{text}"))
}

/// A token for ServiceAccount `name` in `namespace` from the kube-apiserver's TokenRequest API,
/// for `audience` (the chart's API accepts `hyperfleet`), valid for an hour.
pub async fn service_account_token(env: &LocalEnv, namespace: &str, name: &str, audience: &str) -> Result<String> {
    use k8s_openapi::api::{
        authentication::v1::{TokenRequest, TokenRequestSpec},
        core::v1::ServiceAccount,
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(env.kube().await?, namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_string()],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let issued = accounts
        .create_token_request(name, &Default::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for {namespace}/{name}"))?;
    issued.status.map(|s| s.token).filter(|t| !t.is_empty()).with_context(|| format!("no token for {namespace}/{name}"))
}
