//! The hyperfleet-system chart with the real helm: lint, render, the values schema, an install into
//! the real kube-apiserver (every object accepted) with the validation script run against it, and
//! an uninstall that removes it all.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use hyperfleet_tests::{
    LocalEnv, eventually,
    node::{chart_dir, helm},
    workspace_root,
};
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Namespace, rbac::v1::ClusterRole},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::Api;
use serde::Deserialize;
use serde_json::Value;

/// The rendered objects, as JSON.
fn render(env: &LocalEnv, extra: &[&str]) -> Result<Vec<Value>> {
    let chart = chart_dir().display().to_string();
    let mut args = vec!["template", "rel", chart.as_str()];
    args.extend_from_slice(extra);
    let out = Command::new(env.get("HF_HELM")?).args(&args).output()?;
    if !out.status.success() {
        bail!("helm template: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde_json::to_value(serde_yaml::Value::deserialize(doc)?)?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

#[tokio::test]
async fn lint_render_and_schema() -> Result<()> {
    let env = LocalEnv::load()?;
    let dev = chart_dir().join("ci/in-cluster-values.yaml").display().to_string();
    let chart = chart_dir().display().to_string();
    for values in [None, Some(dev.as_str())] {
        let mut args = vec!["lint", "--strict", chart.as_str()];
        if let Some(v) = values {
            args.extend(["-f", v]);
        }
        let (ok, text) = helm(&env, &args).await?;
        assert!(ok && text.contains("0 chart(s) failed"), "helm lint {values:?}:\n{text}");
    }

    // External (AWS) mode: the chart's secrets, the db file flags, the broker ConfigMaps.
    let docs = render(&env, &["--set", "hyperfleetApi.aws.podIdentity.roleArn=arn:aws:iam::1:role/api"])?;
    for spc in ["hyperfleet-api-db-secrets", "hyperfleet-sentinel-mq-secrets", "hyperfleet-adapter-mq-secrets"] {
        let o = find(&docs, "SecretProviderClass", spc).with_context(|| format!("{spc} rendered"))?;
        assert_eq!(o["spec"]["parameters"]["usePodIdentity"], "true");
    }
    let sync = &find(&docs, "SecretProviderClass", "hyperfleet-sentinel-mq-secrets").context("spc")?["spec"]["secretObjects"]
        [0];
    assert_eq!(
        (sync["secretName"].as_str(), sync["data"][0]["key"].as_str()),
        (Some("hyperfleet-sentinel-mq-secret"), Some("BROKER_RABBITMQ_URL"))
    );
    let sa = find(&docs, "ServiceAccount", "hyperfleet-api-sa").context("sa")?;
    assert_eq!(sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"], "arn:aws:iam::1:role/api");
    let api = find(&docs, "Deployment", "hyperfleet-api").context("api")?;
    let args: Vec<String> = serde_json::from_value(api["spec"]["template"]["spec"]["containers"][0]["args"].clone())?;
    for flag in
        ["--db-host-file", "--db-port-file", "--db-user-file", "--db-password-file", "--db-name-file", "--db-sslmode"]
    {
        assert!(args.iter().any(|a| a == flag), "{flag} in {args:?}");
    }
    assert_eq!(api["spec"]["template"]["spec"]["initContainers"][0]["args"][0], "migrate");
    for cm in ["hyperfleet-sentinel-broker-config", "hyperfleet-adapter-broker-config"] {
        let text =
            find(&docs, "ConfigMap", cm).context("cm")?["data"]["broker.yaml"].as_str().unwrap_or("").to_string();
        assert!(text.contains("exchange_type: \"topic\""), "{cm}: {text}");
    }
    let task = find(&docs, "ConfigMap", "hyperfleet-adapter-task-config").context("task")?;
    let shipped = std::fs::read_to_string(workspace_root().join("adapter/tasks/landing-zone.yaml"))?;
    assert_eq!(
        task["data"]["landing-zone.yaml"].as_str().map(str::trim_end),
        Some(shipped.trim_end()),
        "the chart ships the adapter's task"
    );
    for d in ["hyperfleet-api", "hyperfleet-sentinel", "hyperfleet-adapter"] {
        let pod = &find(&docs, "Deployment", d).context("deployment")?["spec"]["template"];
        assert!(pod["metadata"]["annotations"]["checksum/config"].is_string(), "{d} rolls on config changes");
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    }

    // In-cluster mode: development PostgreSQL and RabbitMQ, no AWS objects.
    let docs = render(&env, &["-f", &dev])?;
    assert!(
        find(&docs, "Deployment", "hyperfleet-postgresql").is_some()
            && find(&docs, "Deployment", "hyperfleet-rabbitmq").is_some()
    );
    assert!(!docs.iter().any(|d| d["kind"] == "SecretProviderClass"), "no AWS in development mode");

    // The values schema refuses wrong types, unknown keys and invalid choices.
    for (set, complaint) in [
        ("hyperfleetApi.replicaCount=two", "want integer"),
        ("hyperfleetApi.colour=red", "additional properties 'colour' not allowed"),
        ("hyperfleetSentinel.broker.external.exchangeType=fanciful", "value must be one of"),
        ("hyperfleetAdapter.broker.external.useTLS=false", "useTLS: false is not supported"),
    ] {
        let (ok, text) = helm(&env, &["template", "rel", &chart, "--set", set]).await?;
        assert!(!ok && text.contains(complaint), "--set {set}: {text}");
    }
    Ok(())
}

#[tokio::test]
async fn installs_into_the_apiserver_validates_and_uninstalls() -> Result<()> {
    let env = LocalEnv::load()?;
    // The validation below reports what the node's kubelet says about these pods.
    hyperfleet_tests::node::require_node(&env).await?;
    let kube = env.kube().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(kube.clone());
    for file in ["secretproviderclass.yaml", "servicemonitor.yaml"] {
        let text = std::fs::read_to_string(workspace_root().join("tests/fixtures/crds").join(file))?;
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text)?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        if crds.get_opt(&name).await?.is_none() {
            crds.create(&Default::default(), &crd).await?;
        }
        eventually(Duration::from_secs(30), || async {
            let established = crds.get(&name).await?.status.and_then(|s| s.conditions).unwrap_or_default();
            Ok(established.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(()))
        })
        .await?;
    }
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let (release, ns) = (format!("hf-{tag}"), format!("hf-chart-{tag}"));
    let chart = chart_dir().display().to_string();
    let install = [
        "install",
        &release,
        &chart,
        "--namespace",
        "default",
        "--set",
        &format!("namespace={ns}"),
        "--set",
        "createNamespace=true",
        "--set",
        "hyperfleetApi.replicaCount=2",
        "--set",
        "hyperfleetSentinel.replicaCount=2",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "hyperfleetAdapter.aws.podIdentity.roleArn=arn:aws:iam::1:role/adapter",
    ];
    let (ok, text) = helm(&env, &install).await?;
    assert!(ok, "helm install:\n{text}");
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), &ns);
    assert_eq!(deployments.list(&Default::default()).await?.items.len(), 3);
    let (ok, manifest) = helm(&env, &["get", "manifest", &release, "--namespace", "default"]).await?;
    assert!(ok);
    for kind in ["PodDisruptionBudget", "ServiceMonitor", "SecretProviderClass", "NetworkPolicy", "Role", "ClusterRole"]
    {
        assert!(manifest.contains(&format!("kind: {kind}")), "{kind} installed");
    }

    // The validation script runs against it. This install's pods cannot start on the local node (the
    // Secrets Store CSI driver is not there; the quay.io images could not be pulled either): the
    // script fails and says so, pod by pod, with the kubelet's reason.
    let script = workspace_root().join("charts/hyperfleet-system/scripts/validate-hyperfleet-k8s.sh");
    let validate = || async {
        let out = tokio::process::Command::new("bash")
            .arg(&script)
            .arg(&ns)
            .env("KUBECONFIG", env.get("KUBECONFIG")?)
            .env("KUBECTL", env.get("HF_KUBECTL")?)
            .output()
            .await?;
        Ok::<_, anyhow::Error>((out.status.success(), String::from_utf8_lossy(&out.stdout).to_string()))
    };
    let (ok, report) = eventually(Duration::from_secs(90), || async {
        let (ok, report) = validate().await?;
        Ok(report.contains("last warning: FailedMount").then_some((ok, report)))
    })
    .await
    .with_context(|| "the validation names the pods' mount failure")?;
    println!("{report}");
    assert!(!ok, "validation passed with pods that cannot start:\n{report}");
    assert!(report.contains("FAIL  deployment hyperfleet-api: 0/2 ready"), "{report}");
    assert!(report.contains("secrets-store.csi.k8s.io"), "the missing CSI driver is named:\n{report}");
    assert!(report.contains("PASS  configmap hyperfleet-sentinel-broker-config: exchange_type topic"), "{report}");
    assert!(
        report.contains("PASS  serviceaccount hyperfleet-adapter-sa: role arn:aws:iam::1:role/adapter"),
        "{report}"
    );

    let (ok, text) = helm(&env, &["uninstall", &release, "--namespace", "default"]).await?;
    assert!(ok, "helm uninstall:\n{text}");
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    eventually(Duration::from_secs(120), || async { Ok(namespaces.get_opt(&ns).await?.is_none().then_some(())) })
        .await
        .context("the release's namespace is removed")?;
    let roles: Api<ClusterRole> = Api::all(kube);
    assert!(
        roles.get_opt(&format!("{ns}-hyperfleet-adapter")).await?.is_none(),
        "cluster-scoped objects are removed too"
    );
    Ok(())
}

/// Files and variables of one rendered container, made runnable here: ConfigMap volumes become
/// files in a scratch directory (paths in args and values rewritten), Secret references take
/// the local environment's values.
struct Runnable {
    args: Vec<String>,
    vars: Vec<(String, String)>,
}

fn runnable(docs: &[Value], deployment: &str, init: bool, secrets: &[(&str, String)]) -> Result<Runnable> {
    let pod = &find(docs, "Deployment", deployment).with_context(|| format!("{deployment} rendered"))?["spec"]["template"]
        ["spec"];
    let container = if init { &pod["initContainers"][0] } else { &pod["containers"][0] };
    let scratch = std::env::temp_dir().join(format!("hf-contract-{}", uuid::Uuid::new_v4().simple()));
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for m in container["volumeMounts"].as_array().cloned().unwrap_or_default() {
        let volume = pod["volumes"].as_array().and_then(|vs| vs.iter().find(|v| v["name"] == m["name"])).cloned();
        let Some(cm) = volume.as_ref().and_then(|v| v["configMap"]["name"].as_str()) else { continue };
        let dir = scratch.join(m["name"].as_str().unwrap_or("x"));
        std::fs::create_dir_all(&dir)?;
        let data = find(docs, "ConfigMap", cm).with_context(|| format!("ConfigMap {cm}"))?["data"].clone();
        for (file, text) in data.as_object().cloned().unwrap_or_default() {
            files.push((dir.join(file), text.as_str().unwrap_or("").to_string()));
        }
        mounts.push((m["mountPath"].as_str().unwrap_or("").to_string(), dir));
    }
    // Longest mount path first, so /etc/hyperfleet/broker wins over /etc/hyperfleet.
    mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    // Paths inside the files (config.yaml naming the task file) point into the scratch copies too.
    for (path, mut text) in files {
        for (mount, dir) in &mounts {
            text = text.replace(&format!("{mount}/"), &format!("{}/", dir.display()));
        }
        std::fs::write(path, text)?;
    }
    let local = |s: &str| {
        for (mount, dir) in &mounts {
            if let Some(rest) = s.strip_prefix(mount.as_str()) {
                return format!("{}{rest}", dir.display());
            }
        }
        s.to_string()
    };
    let args = container["args"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| local(a.as_str().unwrap_or("")))
        .collect();
    let mut vars = Vec::new();
    for e in container["env"].as_array().cloned().unwrap_or_default() {
        let name = e["name"].as_str().unwrap_or("").to_string();
        if let Some(v) = e["value"].as_str() {
            vars.push((name, local(v)));
        } else if e["valueFrom"]["secretKeyRef"].is_object() {
            let value = secrets.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
            vars.push((name.clone(), value.with_context(|| format!("no local value for secret variable {name}"))?));
        }
    }
    Ok(Runnable { args, vars })
}

/// The chart↔binary contract: each component started with exactly the rendered ConfigMaps, args
/// and variables (only endpoints and secrets replaced by the local environment's) starts and is
/// ready — so the chart passes nothing the binaries do not understand, and misses nothing they need.
#[tokio::test]
async fn the_rendered_configuration_runs_the_real_binaries() -> Result<()> {
    use hyperfleet_tests::{Service, TestDb, api_db_vars, free_port};
    let env = LocalEnv::load()?;
    let dev = chart_dir().join("ci/in-cluster-values.yaml").display().to_string();
    let docs = render(&env, &["-f", &dev, "--set", "global.logFormat=text"])?;
    let db = TestDb::create(&env).await?;
    let local_db: Vec<(&'static str, String)> = api_db_vars(&env, &db)?;
    let api_port = free_port();
    let api_url = format!("http://127.0.0.1:{api_port}");
    fn to_vars<'a>(r: &'a Runnable, extra: &[(&'a str, String)]) -> Vec<(&'a str, String)> {
        let mut v: Vec<(&str, String)> = r.vars.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        v.extend(extra.iter().cloned());
        v
    }

    // The API: the init container's migrate, then serve.
    let secrets = [("HYPERFLEET_DATABASE_PASSWORD", env.get("HF_DB_PASSWORD")?.to_string())];
    let migrate = runnable(&docs, "hyperfleet-api", true, &secrets)?;
    let out = tokio::process::Command::new(env.bin("hyperfleet-api")?)
        .args(&migrate.args)
        .env_clear()
        .envs(to_vars(&migrate, &local_db))
        .output()
        .await?;
    assert!(out.status.success(), "migrate with the chart's settings: {}", String::from_utf8_lossy(&out.stderr));
    let serve = runnable(&docs, "hyperfleet-api", false, &secrets)?;
    let mut extra = local_db.clone();
    extra.extend([("HYPERFLEET_SERVER_HOST", "127.0.0.1".into()), ("HYPERFLEET_SERVER_PORT", api_port.to_string())]);
    let args: Vec<&str> = serve.args.iter().map(String::as_str).collect();
    let mut api = Service::start(&env, "contract", "api", &args, &to_vars(&serve, &extra))?;
    api.wait_ready(Duration::from_secs(60)).await?;

    // The workers, pointed at the local API, broker and kube-apiserver.
    let exchange = format!("hf-contract-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let secrets = [("BROKER_RABBITMQ_URL", env.get("HF_AMQPS_URL")?.to_string())];
    let local = vec![
        ("HYPERFLEET_HYPERFLEET_API_BASE_URL", api_url.clone()),
        ("HYPERFLEET_BROKER_CA_FILE", env.get("HF_AMQPS_CA_FILE")?.to_string()),
        ("HYPERFLEET_BROKER_EXCHANGE", exchange.clone()),
        ("HYPERFLEET_QUEUE", format!("{exchange}-landing-zone")),
        ("HYPERFLEET_KUBERNETES_KUBECONFIG", env.get("KUBECONFIG")?.to_string()),
    ];
    let mut workers = Vec::new();
    for name in ["sentinel", "adapter"] {
        let r = runnable(&docs, &format!("hyperfleet-{name}"), false, &secrets)?;
        let args: Vec<&str> = r.args.iter().map(String::as_str).collect();
        let mut s = Service::start(&env, "contract", name, &args, &to_vars(&r, &local))?;
        s.wait_ready(Duration::from_secs(60))
            .await
            .with_context(|| format!("{name} with the chart's configuration"))?;
        workers.push(s);
    }
    for s in workers {
        s.stop().await;
    }
    api.stop().await;
    let cleanup = env.broker(&exchange)?;
    if let Ok(conn) = cleanup.connect("hyperfleet-test-cleanup").await {
        let ch = conn.create_channel().await?;
        for q in [format!("{exchange}-landing-zone"), format!("{exchange}-landing-zone.dead-letter")] {
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        }
        let _ = ch.exchange_delete(exchange.as_str().into(), Default::default()).await;
        let _ = conn.close(200, "done".into()).await;
    }
    db.drop_db().await;
    Ok(())
}

#[test]
fn the_dockerfile_and_the_argocd_application_lint_clean() -> Result<()> {
    let env = LocalEnv::load()?;
    let dockerfile = workspace_root().join("docker/Dockerfile");
    let out = Command::new(env.get("HF_HADOLINT")?).arg(&dockerfile).output()?;
    assert!(out.status.success(), "hadolint:\n{}", String::from_utf8_lossy(&out.stdout));
    let text = std::fs::read_to_string(&dockerfile)?;
    assert!(text.contains("ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot"), "distroless non-root by default");
    assert!(
        text.contains("ARG BINARIES=build") && text.contains("FROM scratch AS prebuilt"),
        "binaries built or prebuilt"
    );
    for target in ["api", "sentinel", "adapter"] {
        let from =
            text.lines().find(|l| l.starts_with("FROM ") && l.ends_with(&format!(" AS {target}"))).context("stage")?;
        let stage = text.split(from).nth(1).context("stage")?.split("FROM ").next().unwrap_or("");
        assert!(from.starts_with("FROM ${RUNTIME_BASE} "), "{target} on the runtime base");
        assert!(stage.contains("USER 65532:65532"), "{target} runs as non-root");
        // The entrypoint tests/env/images.sh gives the local images (tests/tests/pods.rs sees it run).
        let entrypoint = format!("ENTRYPOINT [\"/usr/local/bin/hyperfleet-{target}\"]");
        assert!(stage.contains(&entrypoint), "{target}: {entrypoint}");
    }

    let app = workspace_root().join("charts/argocd/application.yaml");
    let rules = "{extends: default, rules: {line-length: {max: 120}, document-start: disable}}";
    let out = Command::new(env.get("HF_YAMLLINT")?).args(["-d", rules]).arg(&app).output()?;
    assert!(out.status.success(), "yamllint:\n{}", String::from_utf8_lossy(&out.stdout));
    let doc: Value = serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&std::fs::read_to_string(&app)?)?)?;
    assert_eq!((doc["apiVersion"].as_str(), doc["kind"].as_str()), (Some("argoproj.io/v1alpha1"), Some("Application")));
    let path = doc["spec"]["source"]["path"].as_str().context("spec.source.path")?;
    assert!(workspace_root().join(path).join("Chart.yaml").is_file(), "the Application points at this chart: {path}");
    for value_file in doc["spec"]["source"]["helm"]["valueFiles"].as_array().cloned().unwrap_or_default() {
        assert!(workspace_root().join(path).join(value_file.as_str().unwrap_or("?")).is_file());
    }
    assert_eq!(doc["spec"]["destination"]["namespace"], "hyperfleet-system");
    assert!(doc["spec"]["source"]["repoURL"].is_string() && doc["spec"]["source"]["targetRevision"].is_string());
    let sync = doc["spec"]["syncPolicy"]["syncOptions"].as_array().cloned().unwrap_or_default();
    assert!(sync.iter().any(|o| o == "CreateNamespace=true"));
    Ok(())
}

#[tokio::test]
async fn the_test_create_cluster_script_follows_a_cluster_to_reconciled() -> Result<()> {
    let stack = hyperfleet_tests::Stack::start().await?;
    let script = workspace_root().join("charts/hyperfleet-system/scripts/test-create-cluster.sh");
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .arg("scripted")
        .env("HYPERFLEET_API_URL", &stack.api_url)
        .env("KUBECONFIG", stack.env.get("KUBECONFIG")?)
        .env("TIMEOUT", "90")
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let id =
        text.lines().find_map(|l| l.strip_prefix("created cluster scripted (")?.strip_suffix(')')).map(String::from);
    if let Some(id) = &id {
        hyperfleet_tests::remove_namespaces(&stack.env, std::slice::from_ref(id)).await?;
    }
    assert!(out.status.success(), "{text}{}\n{}", String::from_utf8_lossy(&out.stderr), stack.logs());
    assert!(text.contains("Namespace") && text.contains("is Reconciled"), "{text}");
    assert!(id.is_some(), "{text}");
    stack.stop().await;
    Ok(())
}
