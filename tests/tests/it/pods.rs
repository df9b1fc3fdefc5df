//! The chart as pods on the local node: real images, a real kubelet probing `/healthz` and `/readyz`,
//! the `db-migrate` init container, the adapter with its own ServiceAccount and the chart's
//! ClusterRole only, restricted security enforced by the runtime, helm upgrade and uninstall, the
//! chart's own scripts, a helm upgrade adding a required adapter (existing clusters wait for its
//! report), and a rolling restart of the API during a stream of creates through its Service. Every install is
//! `helm install` with values only: `tests/env/chart-values.yaml` (the local images) on top of the
//! chart's `ci/in-cluster-values.yaml` or an external-mode values file.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hyperfleet_tests::{
    LocalEnv, TestDb, condition, eventually,
    node::{PortForward, Release, ReleaseSpec, chart_dir, container_pid, service_account_token},
    post_cluster_with, report_condition, workspace_root,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use kube::{Api, api::PostParams};
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(120);

/// Values adding a second, required adapter for clusters: a ConfigMap `cluster-info` in each
/// cluster's Namespace (the landing zone), with RBAC for ConfigMaps only.
const CLUSTER_INFO_ADAPTER: &str = r#"
hyperfleetAdapters:
  - name: cluster-info
    task:
      inline: |
        resource: clusters
        when:
          - condition: LandingZoneSuccessful
        objects:
          - apiVersion: v1
            kind: ConfigMap
            metadata: {name: cluster-info, namespace: "{{resource.id}}"}
            data: {name: "{{resource.name}}"}
        report:
          applied_message: "ConfigMap {{resource.id}}/cluster-info applied"
          available_message: "ConfigMap {{resource.id}}/cluster-info exists"
    rbac:
      rules:
        - apiGroups: [""]
          resources: [configmaps]
"#;

fn dev_values() -> Vec<String> {
    vec!["-f".into(), chart_dir().join("ci/in-cluster-values.yaml").display().to_string()]
}

fn set(kv: &str) -> [String; 2] {
    ["--set".into(), kv.into()]
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<(u16, Value)> {
    let r = http.get(url).timeout(Duration::from_secs(10)).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

/// Waits until the cluster `id` is Reconciled=True and its Namespace and ServiceAccount exist.
async fn wait_landed(release: &Release, pf: &PortForward, id: &str) -> Result<()> {
    let url = format!("{}/api/hyperfleet/v1/clusters/{id}", pf.url);
    let sas: Api<ServiceAccount> = Api::namespaced(release.kube.clone(), id);
    let landed = eventually(READY, || async {
        let (_, c) = get_json(&pf.http, &url).await?;
        let reconciled = condition(&c, "Reconciled")["status"] == "True";
        Ok((reconciled && sas.get_opt("landing-zone").await?.is_some()).then_some(()))
    })
    .await;
    if landed.is_err() {
        let (_, c) = get_json(&pf.http, &url).await.unwrap_or_default();
        bail!("cluster {id} did not land: {c}\n{}", release.diagnostics().await);
    }
    Ok(())
}

/// DELETE, then the cluster and its Namespace are gone.
async fn delete_and_wait_gone(release: &Release, pf: &PortForward, id: &str) -> Result<()> {
    let url = format!("{}/api/hyperfleet/v1/clusters/{id}", pf.url);
    let r = pf.http.delete(&url).timeout(Duration::from_secs(10)).send().await?;
    ensure!(r.status() == 202, "DELETE {id}: {}", r.status());
    let namespaces: Api<Namespace> = Api::all(release.kube.clone());
    let gone = eventually(READY, || async {
        let (status, _) = get_json(&pf.http, &url).await?;
        Ok((status == 404 && namespaces.get_opt(id).await?.is_none()).then_some(()))
    })
    .await;
    if gone.is_err() {
        bail!("cluster {id} not removed after DELETE\n{}", release.diagnostics().await);
    }
    Ok(())
}

/// The runtime really applies the restricted profile: checked on the container's process from the
/// host (the images have no shell to ask from inside).
async fn assert_restricted(env: &LocalEnv, pod: &Pod) -> Result<()> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    for c in pod.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default() {
        let id = c.container_id.clone().with_context(|| format!("{name}/{}: no container id", c.name))?;
        let pid = container_pid(env, &id).await?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |k: &str| {
            status.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        };
        let what = format!("{name}/{}", c.name);
        assert_eq!(field("Uid:").as_deref(), Some("65532 65532 65532 65532"), "{what} runs as 65532");
        assert_eq!(field("Gid:").as_deref(), Some("65532 65532 65532 65532"), "{what} group 65532");
        assert_eq!(field("CapEff:").as_deref(), Some("0000000000000000"), "{what} has no capabilities");
        assert_eq!(field("CapPrm:").as_deref(), Some("0000000000000000"), "{what} has no capabilities");
        assert_eq!(field("NoNewPrivs:").as_deref(), Some("1"), "{what}: no privilege escalation");
        assert_eq!(field("Seccomp:").as_deref(), Some("2"), "{what}: seccomp filter (RuntimeDefault)");
        // The Dockerfile's ENTRYPOINT is what runs.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
        let argv0 = cmdline.split(|b| *b == 0).next().map(String::from_utf8_lossy).unwrap_or_default().to_string();
        assert_eq!(argv0, format!("/usr/local/bin/{}", c.name), "{what}: the image's entrypoint");
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
        let root = mounts
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .rfind(|f| f.len() > 5 && f[4] == "/")
            .with_context(|| format!("{what}: no root mount"))?;
        assert!(root[5].split(',').any(|o| o == "ro"), "{what}: root filesystem read-only ({})", root[5]);
    }
    Ok(())
}

/// Development mode end to end: install → every pod Ready by the kubelet's probes, `db-migrate`
/// ran, restricted security holds; a cluster POSTed through a port-forward lands and is removed;
/// the chart's scripts pass; an upgrade rolls the sentinel only while the API keeps serving; and the
/// uninstall leaves nothing.
#[tokio::test]
async fn development_mode_runs_as_pods_lands_a_cluster_and_uninstalls_cleanly() -> Result<()> {
    let env = LocalEnv::load()?;
    let release = Release::install(
        &env,
        ReleaseSpec { prefix: "dev", args: dev_values(), chart_creates_namespace: true, ..Default::default() },
    )
    .await?;
    println!("helm install → all pods Ready: {:?}", release.install_to_ready);

    // db-migrate ran to completion before the API started.
    let api_pod = release.pod("api").await?;
    let init = api_pod.status.as_ref().and_then(|s| s.init_container_statuses.clone()).unwrap_or_default();
    let migrate = init.iter().find(|c| c.name == "db-migrate").context("db-migrate init container")?;
    let done = migrate.state.as_ref().and_then(|s| s.terminated.as_ref()).context("db-migrate terminated")?;
    assert_eq!((done.exit_code, done.reason.as_deref()), (0, Some("Completed")), "db-migrate");
    // It waited for the database starting beside it instead of failing into the kubelet's back-off.
    assert_eq!(migrate.restart_count, 0, "db-migrate restarts\n{}", release.diagnostics().await);
    for component in ["api", "sentinel", "adapter"] {
        let pod = release.pod(component).await?;
        assert_restricted(&env, &pod).await?;
        // The kubelet's probes, not a test's, made it Ready; no restarts on the way.
        let status = pod.status.clone().unwrap_or_default();
        for c in status.container_statuses.unwrap_or_default() {
            assert!(c.ready && c.restart_count == 0, "{component}: {c:?}\n{}", release.diagnostics().await);
        }
    }
    // The adapter talks to Kubernetes with its own ServiceAccount's token only.
    let adapter = release.pod("adapter").await?;
    assert_eq!(adapter.spec.as_ref().and_then(|s| s.service_account_name.as_deref()), Some("hyperfleet-adapter-sa"));

    let pf = release.port_forward("service/hyperfleet-api", 8000).await?;
    // JWT is on by default: a caller without a token is refused; the workers' projected
    // ServiceAccount tokens (verified with the kube-apiserver's keys) land the cluster below.
    let anonymous = reqwest::Client::new().get(format!("{}/api/hyperfleet/v1/clusters", pf.url)).send().await?;
    assert_eq!(anonymous.status(), 401, "no token, no API");
    // The adapter's own token is valid but may only read and report: creating is 403.
    let adapter_token =
        service_account_token(&env, &release.namespace, "hyperfleet-adapter-sa", hyperfleet_tests::API_AUDIENCE)
            .await?;
    let refused = reqwest::Client::new()
        .post(format!("{}/api/hyperfleet/v1/clusters", pf.url))
        .bearer_auth(adapter_token)
        .json(&json!({"kind": "Cluster", "name": "by-the-adapter", "spec": {}}))
        .send()
        .await?;
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.json::<Value>().await?["code"], "HYPERFLEET-AUT-003");
    let id = post_cluster_with(&pf.http, &pf.url, &release.name, json!({"env": "pods"})).await?;
    wait_landed(&release, &pf, &id).await?;
    delete_and_wait_gone(&release, &pf, &id).await?;

    // The chart's scripts against this install.
    let scripts = chart_dir().join("scripts");
    let out = tokio::process::Command::new("bash")
        .arg(scripts.join("validate-hyperfleet-k8s.sh"))
        .arg(&release.namespace)
        .env("KUBECONFIG", env.get("KUBECONFIG")?)
        .env("KUBECTL", env.get("HF_KUBECTL")?)
        .output()
        .await?;
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "validate-hyperfleet-k8s.sh:\n{report}\n{}", release.diagnostics().await);
    for line in [
        "PASS  deployment hyperfleet-api: 1/1 ready",
        "PASS  API /readyz through a port-forward",
        "PASS  secret hyperfleet-postgresql present",
        "SKIP  no SecretProviderClass referenced",
    ] {
        assert!(report.contains(line), "{line}:\n{report}");
    }
    let out = tokio::process::Command::new("bash")
        .arg(scripts.join("test-create-cluster.sh"))
        .arg("scripted")
        .env("HYPERFLEET_NAMESPACE", &release.namespace)
        .env("KUBECONFIG", env.get("KUBECONFIG")?)
        .env("KUBECTL", env.get("HF_KUBECTL")?)
        .env("TIMEOUT", "120")
        .env("HYPERFLEET_TOKEN", release.operator_token().await?)
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "test-create-cluster.sh:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("is Reconciled"), "{text}");
    if let Some(id) = text.lines().find_map(|l| l.strip_prefix("created cluster scripted (")?.strip_suffix(')')) {
        delete_and_wait_gone(&release, &pf, id).await?;
    }

    // helm upgrade with a new poll interval: the sentinel is replaced, the API pod is not, and the
    // API answers throughout.
    let sentinel_before = release.pod("sentinel").await?.metadata.uid;
    let api_before = release.pod("api").await?.metadata.uid;
    let probe_url = format!("{}/api/hyperfleet/v1/clusters", pf.url);
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let http = pf.http.clone();
    let prober = tokio::spawn(async move {
        let mut failures = Vec::new();
        let mut probes = 0u32;
        loop {
            probes += 1;
            match http.get(&probe_url).timeout(Duration::from_secs(5)).send().await {
                Ok(r) if r.status() == 200 => {}
                Ok(r) => failures.push(format!("{}", r.status())),
                Err(e) => failures.push(e.to_string()),
            }
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        (probes, failures)
    });
    release.upgrade(&set("hyperfleetSentinel.config.pollInterval=2s")).await?;
    let _ = stop.send(());
    let (probes, failures) = prober.await?;
    assert!(probes > 1, "the API was probed during the upgrade");
    assert!(failures.is_empty(), "the API failed during the upgrade: {failures:?}");
    let sentinel_after = release.pod("sentinel").await?;
    assert_ne!(sentinel_after.metadata.uid, sentinel_before, "the sentinel pod was rolled");
    assert_eq!(release.pod("api").await?.metadata.uid, api_before, "the API pod was left alone");
    let cm: Api<ConfigMap> = Api::namespaced(release.kube.clone(), &release.namespace);
    let config = cm.get("hyperfleet-sentinel-config").await?;
    assert!(config.data.unwrap_or_default()["config.yaml"].contains("poll_interval: \"2s\""));

    // helm upgrade adding a required adapter (its own Deployment, ServiceAccount, RBAC and queue),
    // first with no replica: the cluster that had landed is no longer Reconciled, waiting for it;
    // then with one: it reports and the cluster is Reconciled again.
    let kept = post_cluster_with(&pf.http, &pf.url, &release.name, json!({"env": "kept"})).await?;
    wait_landed(&release, &pf, &kept).await?;
    drop(pf);
    let values = std::env::temp_dir().join(format!("hf-adapters-{}.yaml", release.name));
    let with_replicas = |n: u32| -> Result<Vec<String>> {
        std::fs::write(&values, format!("{CLUSTER_INFO_ADAPTER}    replicaCount: {n}\n"))?;
        Ok(vec!["-f".into(), values.display().to_string()])
    };
    release.upgrade(&with_replicas(0)?).await?;
    let pf = release.port_forward("service/hyperfleet-api", 8000).await?;
    let url = format!("{}/api/hyperfleet/v1/clusters/{kept}", pf.url);
    let waiting = eventually(READY, || async {
        let (_, c) = get_json(&pf.http, &url).await?;
        Ok((condition(&c, "Reconciled")["status"] == "False").then_some(c))
    })
    .await;
    let Ok(c) = waiting else {
        bail!("{kept} stayed Reconciled once cluster-info was required\n{}", release.diagnostics().await);
    };
    let message = condition(&c, "Reconciled")["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("cluster-info"), "it waits for the new adapter: {message}");
    drop(pf);
    release.upgrade(&with_replicas(1)?).await?;
    let _ = std::fs::remove_file(&values);
    let pf = release.port_forward("service/hyperfleet-api", 8000).await?;
    let url = format!("{}/api/hyperfleet/v1/clusters/{kept}", pf.url);
    let both = eventually(READY, || async {
        let (_, c) = get_json(&pf.http, &url).await?;
        let done = condition(&c, "ClusterInfoSuccessful")["status"] == "True"
            && condition(&c, "Reconciled")["status"] == "True";
        Ok(done.then_some(c))
    })
    .await;
    let Ok(c) = both else {
        let (_, c) = get_json(&pf.http, &url).await.unwrap_or_default();
        bail!("the new adapter did not report for {kept}: {c}\n{}", release.diagnostics().await);
    };
    let info = Api::<ConfigMap>::namespaced(release.kube.clone(), &kept).get("cluster-info").await?;
    assert_eq!(info.data.unwrap_or_default().get("name"), c["name"].as_str().map(str::to_string).as_ref());
    let pod = release.pod("adapter-cluster-info").await?;
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.service_account_name.as_deref()),
        Some("hyperfleet-adapter-cluster-info-sa")
    );
    delete_and_wait_gone(&release, &pf, &kept).await?;
    drop(pf);

    release.uninstall().await
}

/// A pod that cannot start is explained: the install fails with the pod's state, the kubelet's
/// events and the other containers' logs in the message (here an API image that does not exist).
#[tokio::test]
async fn a_broken_install_fails_with_the_pods_events_and_logs() -> Result<()> {
    let env = LocalEnv::load()?;
    let mut args = dev_values();
    args.extend(set("hyperfleetApi.image.tag=no-such-tag"));
    let wait = Some(Duration::from_secs(45));
    let spec = ReleaseSpec { prefix: "broken", args, chart_creates_namespace: true, wait };
    let Err(e) = Release::install(&env, spec).await else { bail!("an install with a missing image succeeded") };
    let text = format!("{e:#}");
    assert!(text.contains("ErrImageNeverPull"), "the waiting reason:\n{text}");
    assert!(text.contains("localhost/hyperfleet-local/hyperfleet-api:no-such-tag"), "the image named:\n{text}");
    assert!(text.contains("--- events ---") && text.contains("Pod/hyperfleet-api-"), "the pod's events:\n{text}");
    assert!(text.contains("ready to accept connections"), "the other pods' logs (PostgreSQL's):\n{text}");
    Ok(())
}

/// The adapter with only the chart's ClusterRole: without `serviceaccounts` it cannot create the
/// ServiceAccount, reports Health=False with the API server's reason, and keeps running.
#[tokio::test]
async fn an_adapter_without_rbac_for_serviceaccounts_reports_health_false_and_keeps_running() -> Result<()> {
    let env = LocalEnv::load()?;
    let mut args = dev_values();
    args.extend(set("hyperfleetAdapter.rbac.resources={namespaces}"));
    let release = Release::install(
        &env,
        ReleaseSpec { prefix: "rbac", args, chart_creates_namespace: true, ..Default::default() },
    )
    .await?;
    let pf = release.port_forward("service/hyperfleet-api", 8000).await?;
    let id = post_cluster_with(&pf.http, &pf.url, "rbac-less", json!({})).await?;
    let url = format!("{}/api/hyperfleet/v1/clusters/{id}/statuses", pf.url);
    let report = eventually(READY, || async {
        let (_, v) = get_json(&pf.http, &url).await?;
        let items = v["items"].as_array().cloned().unwrap_or_default();
        Ok(items.into_iter().find(|s| report_condition(s, "Health")["status"] == "False"))
    })
    .await
    .with_context(|| format!("no Health=False report for {id}"));
    let report = match report {
        Ok(r) => r,
        Err(e) => bail!("{e}\n{}", release.diagnostics().await),
    };
    let health = report_condition(&report, "Health");
    assert_eq!(health["reason"], "KubernetesError", "{report}");
    let message = health["message"].as_str().unwrap_or_default();
    assert!(message.contains("forbidden") && message.contains("serviceaccounts"), "{message}");
    let (_, cluster) = get_json(&pf.http, &format!("{}/api/hyperfleet/v1/clusters/{id}", pf.url)).await?;
    assert_eq!(condition(&cluster, "Reconciled")["status"], "False", "{cluster}");
    // Still the same, ready adapter: a permission problem is a report, not a crash loop.
    let adapter = release.pod("adapter").await?;
    for c in adapter.status.and_then(|s| s.container_statuses).unwrap_or_default() {
        assert!(c.ready && c.restart_count == 0, "adapter after the forbidden apply: {c:?}");
    }
    // The Namespace (allowed) was created; removed once no adapter can apply it again.
    let namespaces: Api<Namespace> = Api::all(release.kube.clone());
    drop(pf);
    release.uninstall().await?;
    namespaces.delete(&id, &Default::default()).await?;
    Ok(())
}

/// A rolling restart of the API Deployment (what `kubectl rollout restart` does) under a stream of
/// creates sent through the API's Service (its ClusterIP, kube-proxy choosing the pod): the new pod
/// comes up, the old one gets SIGTERM from the kubelet, turns NotReady while it keeps serving for the
/// drain period and closes kept-alive connections — and every request of the stream is answered 201,
/// none fails and every acknowledged create is there afterwards.
#[tokio::test]
async fn a_rolling_restart_of_the_api_under_creates_answers_every_request() -> Result<()> {
    use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
    use kube::api::{Patch, PatchParams};
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    let env = LocalEnv::load()?;
    let mut args = dev_values();
    // Only the API matters here; the workers would land every cluster meanwhile.
    args.extend(set("hyperfleetAdapter.replicaCount=0"));
    let release = Release::install(
        &env,
        ReleaseSpec { prefix: "roll", args, chart_creates_namespace: true, ..Default::default() },
    )
    .await?;
    let old_name = release.pod("api").await?.metadata.name.clone().unwrap_or_default();
    let services: Api<Service> = Api::namespaced(release.kube.clone(), &release.namespace);
    let ip = services.get("hyperfleet-api").await?.spec.and_then(|s| s.cluster_ip).context("ClusterIP")?;
    let url = format!("http://{ip}:8000");
    let mut token = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", release.operator_token().await?))?;
    token.set_sensitive(true);
    let http = reqwest::Client::builder()
        .default_headers([(reqwest::header::AUTHORIZATION, token)].into_iter().collect())
        .build()?;
    eventually(Duration::from_secs(60), || async {
        Ok(matches!(get_json(&http, &format!("{url}/api/hyperfleet")).await, Ok((200, _))).then_some(()))
    })
    .await
    .context("the API's Service answers through kube-proxy")?;

    // One writer, one request at a time, no retries: what a careful client sees.
    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let writer = {
        let (stop, sent, failures, http, url) =
            (stop.clone(), sent.clone(), failures.clone(), http.clone(), url.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(300);
            for i in 0..20_000 {
                if stop.load(Ordering::Relaxed) || std::time::Instant::now() > deadline {
                    break;
                }
                match post_cluster_with(&http, &url, &format!("roll-{i}"), json!({})).await {
                    Ok(id) => acked.push(id),
                    Err(e) => failures.lock().map(|mut f| f.push(format!("request {i}: {e:#}"))).unwrap_or_default(),
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            acked
        })
    };
    let sent_at_least = |n: usize| {
        let sent = sent.clone();
        async move {
            eventually(Duration::from_secs(60), || async { Ok((sent.load(Ordering::Relaxed) >= n).then_some(())) })
                .await
        }
    };
    sent_at_least(20).await?;

    // `kubectl rollout restart deployment/hyperfleet-api`.
    let deployments: Api<Deployment> = Api::namespaced(release.kube.clone(), &release.namespace);
    let restarted = json!({"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": chrono::Utc::now().to_rfc3339()}}}}});
    deployments.patch("hyperfleet-api", &PatchParams::default(), &Patch::Merge(&restarted)).await?;
    eventually(Duration::from_secs(180), || async {
        let pods = release.pods("api").await?;
        let old_gone = pods.iter().all(|p| p.metadata.name.as_deref() != Some(old_name.as_str()));
        let new_ready = pods.iter().any(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        Ok((old_gone && new_ready).then_some(()))
    })
    .await
    .with_context(|| format!("the rollout replaced {old_name}"))?;
    // A few more through the new pod, then stop.
    sent_at_least(sent.load(Ordering::Relaxed) + 20).await?;
    stop.store(true, Ordering::Relaxed);
    let acked = tokio::time::timeout(Duration::from_secs(60), writer).await??;
    let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the rolling restart: {:?}",
        failures.len(),
        acked.len() + failures.len(),
        &failures[..failures.len().min(5)]
    );
    let mut missing = Vec::new();
    for id in &acked {
        if get_json(&http, &format!("{url}/api/hyperfleet/v1/clusters/{id}")).await?.0 != 200 {
            missing.push(id.clone());
        }
    }
    assert!(missing.is_empty(), "{} of {} acknowledged creates lost: {missing:?}", missing.len(), acked.len());
    println!(
        "{} creates through the Service during a rolling restart of the API: every one 201 and present",
        acked.len()
    );
    release.uninstall().await
}

/// External mode the way K3s without Pod Identity runs it: the local environment's PostgreSQL
/// (`verify-full`) and RabbitMQ (AMQPS) reached from the pods, both verified with a CA from a
/// ConfigMap; credentials from Secrets the chart makes from values and from an existing Secret.
#[tokio::test]
async fn external_mode_uses_the_local_database_and_broker_over_verified_tls() -> Result<()> {
    let env = LocalEnv::load()?;
    let db = TestDb::create(&env).await?;
    let (name, ns) = Release::new_namespace("ext");
    let exchange = format!("hf-{ns}");
    let outcome = external_mode(&env, &db, name, ns.clone(), &exchange).await;

    // Whatever happened: the namespace, the database and what the install declared on the shared broker.
    let namespaces: Api<Namespace> = Api::all(env.kube().await?);
    let _ = namespaces.delete(&ns, &Default::default()).await;
    if let Ok(conn) = env.broker(&exchange)?.connect("hyperfleet-test-cleanup").await {
        let ch = conn.create_channel().await?;
        let queue = format!("{exchange}-landing-zone");
        for q in [queue.clone(), format!("{queue}.dead-letter")] {
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        }
        let _ = ch.exchange_delete(exchange.as_str().into(), Default::default()).await;
        let _ = conn.close(200, "done".into()).await;
    }
    db.drop_db().await;
    outcome
}

async fn external_mode(env: &LocalEnv, db: &TestDb, name: String, ns: String, exchange: &str) -> Result<()> {
    let kube = env.kube().await?;
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    namespaces.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}}))?).await?;
    let node_ip = env.get("HF_NODE_IP")?;
    // The adapter's broker URL in a Secret the platform made (existingSecret); the database
    // credentials and the sentinel's URL in Secrets the chart makes from values (K3s without Pod
    // Identity); one CA ConfigMap (a trust-manager bundle's shape) for the database and the broker.
    let url = env.get("HF_AMQPS_URL")?.replace("@127.0.0.1:", &format!("@{node_ip}:"));
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), &ns);
    let s = json!({"metadata": {"name": "platform-mq"}, "stringData": {"BROKER_RABBITMQ_URL": url}});
    secrets.create(&PostParams::default(), &serde_json::from_value(s)?).await?;
    let cms: Api<ConfigMap> = Api::namespaced(kube.clone(), &ns);
    let ca = std::fs::read_to_string(env.get("HF_AMQPS_CA_FILE")?)?;
    assert_eq!(ca, std::fs::read_to_string(env.get("HF_DB_CA_FILE")?)?, "one local CA signs both servers");
    let ca_cm = json!({"metadata": {"name": "local-ca"}, "data": {"ca.crt": ca}});
    cms.create(&PostParams::default(), &serde_json::from_value(ca_cm)?).await?;
    // Secret values go through a private values file, never a command line.
    let private = std::env::temp_dir().join(format!("hf-values-{}.yaml", uuid::Uuid::new_v4().simple()));
    let secret_values = json!({
        "hyperfleetApi": {"database": {"external": {
            "credentials": {
                "host": node_ip, "port": env.get("HF_PG_NODE_PORT")?, "user": env.get("HF_DB_USER")?,
                "password": env.get("HF_DB_PASSWORD")?, "name": db.name,
            },
        }}},
        "hyperfleetSentinel": {"broker": {"external": {"url": url}}},
        "hyperfleetAdapter": {"broker": {"external": {"existingSecret": "platform-mq"}}},
    });
    {
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&private)?;
        f.write_all(serde_json::to_string(&secret_values)?.as_bytes())?;
    }

    let values = workspace_root().join("tests/fixtures/values/external-local.yaml");
    let mut args = vec!["-f".into(), values.display().to_string(), "-f".into(), private.display().to_string()];
    for kv in [
        format!("hyperfleetSentinel.broker.external.exchange={exchange}"),
        format!("hyperfleetAdapter.broker.external.exchange={exchange}"),
        format!("hyperfleetAdapter.broker.external.queue={exchange}-landing-zone"),
    ] {
        args.extend(["--set".into(), kv]);
    }
    let spec = ReleaseSpec { prefix: "ext", args, chart_creates_namespace: false, ..Default::default() };
    let release = Release::install_as(env, spec, name, ns).await;
    let _ = std::fs::remove_file(&private);
    let release = release?;
    let made = secrets.get("hyperfleet-sentinel-mq-secret").await?;
    assert!(made.data.is_some_and(|d| d.contains_key("BROKER_RABBITMQ_URL")), "the chart made the sentinel's Secret");
    let pf = release.port_forward("service/hyperfleet-api", 8000).await?;
    let id = post_cluster_with(&pf.http, &pf.url, "external", json!({})).await?;
    wait_landed(&release, &pf, &id).await?;
    delete_and_wait_gone(&release, &pf, &id).await?;
    drop(pf);
    release.uninstall().await
}
