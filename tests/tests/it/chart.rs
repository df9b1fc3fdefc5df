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
    hyperfleet_tests::node::yaml_objects(&String::from_utf8(out.stdout)?)
}

/// JWT on with an external IdP besides the cluster's issuer (one `--set`).
const EXTERNAL_IDP: &str = "hyperfleetApi.auth.enableJwt=true,hyperfleetApi.auth.jwksUrl=https://idp.example.com/jwks,\
                            hyperfleetApi.auth.issuer=https://idp.example.com/,hyperfleetApi.auth.audience=hyperfleet";

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
    let docs = render(&env, &["--set", "hyperfleetApi.aws.podIdentity.roleArn=arn:aws:iam::111122223333:role/api"])?;
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
    assert_eq!(sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"], "arn:aws:iam::111122223333:role/api");
    let api = find(&docs, "Deployment", "hyperfleet-api").context("api")?;
    let args: Vec<String> = serde_json::from_value(api["spec"]["template"]["spec"]["containers"][0]["args"].clone())?;
    for flag in
        ["--db-host-file", "--db-port-file", "--db-user-file", "--db-password-file", "--db-name-file", "--db-sslmode"]
    {
        assert!(args.iter().any(|a| a == flag), "{flag} in {args:?}");
    }
    assert_eq!(api["spec"]["template"]["spec"]["initContainers"][0]["args"][0], "migrate");
    // SIGTERM: the drain (5 s) and the in-flight timeout (20 s) fit the grace period.
    assert_eq!(api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], 30);
    let config = find(&docs, "ConfigMap", "hyperfleet-api-config").context("api config")?["data"]["config.yaml"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let config = hyperfleet_tests::node::yaml_objects(&config)?.into_iter().next().context("config")?;
    assert_eq!((config["shutdown_drain"].as_str(), config["shutdown_timeout"].as_str()), (Some("5s"), Some("20s")));
    assert_eq!(config["limits"]["max_spec_bytes"], 65536, "{config}");
    assert_eq!(config["watch"]["max_streams"], 1000, "{config}");
    // Only the cluster's own issuer may name callers system:serviceaccount:… (the chart's rules).
    let issuer = &config["jwt"]["issuers"][0];
    assert_eq!((issuer["identity_claim"].as_str(), &issuer["kubernetes"]), (Some("sub"), &Value::Bool(true)));
    for cm in ["hyperfleet-sentinel-broker-config", "hyperfleet-adapter-broker-config"] {
        let text =
            find(&docs, "ConfigMap", cm).context("cm")?["data"]["broker.yaml"].as_str().unwrap_or("").to_string();
        assert!(text.contains("exchange_type: \"topic\""), "{cm}: {text}");
    }
    let task = find(&docs, "ConfigMap", "hyperfleet-adapter-task-config").context("task")?;
    let shipped = std::fs::read_to_string(chart_dir().join("files/landing-zone.yaml"))?;
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

/// The YAML a rendered ConfigMap holds under `key`, as JSON.
fn config_of(docs: &[Value], cm: &str, key: &str) -> Result<Value> {
    let text = find(docs, "ConfigMap", cm).with_context(|| format!("ConfigMap {cm}"))?["data"][key]
        .as_str()
        .unwrap_or("")
        .to_string();
    hyperfleet_tests::node::yaml_objects(&text)?.into_iter().next().with_context(|| format!("{cm}: {key}"))
}

/// `hyperfleetAdapters`: a second clusters adapter with an inline task and the built-in nodepool adapter,
/// each with its own objects, selector, queue and API identity, and the nodepool sentinel they need.
#[tokio::test]
async fn more_adapters_get_their_own_objects_and_a_nodepool_sentinel() -> Result<()> {
    let env = LocalEnv::load()?;
    let chart = chart_dir().display().to_string();
    let dev = chart_dir().join("ci/in-cluster-values.yaml").display().to_string();
    let task = concat!(
        "resource: clusters\n",
        "objects:\n",
        "  - apiVersion: v1\n",
        "    kind: ConfigMap\n",
        "    metadata: {name: cluster-info, namespace: \"{{resource.id}}\"}\n",
        "    data: {name: \"{{resource.name}}\"}\n",
    );
    let values = serde_json::json!({"hyperfleetAdapters": [
        {
            "name": "cluster-info",
            "task": {"inline": task},
            "required": true,
            "rbac": {"rules": [{"apiGroups": [""], "resources": ["configmaps"]}]},
            "replicaCount": 2,
        },
        {"name": "nodepool-cm", "resource": "nodepools", "task": {"builtin": "nodepool-configmap"}},
    ]});
    let file = std::env::temp_dir().join(format!("hf-adapters-{}.yaml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, serde_yaml::to_string(&values)?)?;
    let file = file.display().to_string();
    for extra in [None, Some(dev.as_str())] {
        let mut args = vec!["lint", "--strict", chart.as_str(), "-f", file.as_str()];
        if let Some(v) = extra {
            args.extend(["-f", v]);
        }
        let (ok, text) = helm(&env, &args).await?;
        assert!(ok && text.contains("0 chart(s) failed"), "helm lint {extra:?}:\n{text}");
    }

    let docs = render(&env, &["-f", &file])?;
    let ns = "hyperfleet-system";
    let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    let selects =
        |selector: &Value, labels: &Value| selector.as_object().is_some_and(|s| s.iter().all(|(k, v)| &labels[k] == v));
    for (name, d, replicas) in [
        ("landing-zone", "hyperfleet-adapter", 1),
        ("cluster-info", "hyperfleet-adapter-cluster-info", 2),
        ("nodepool-cm", "hyperfleet-adapter-nodepool-cm", 1),
    ] {
        let first = name == "landing-zone";
        let deploy = find(&docs, "Deployment", d).with_context(|| format!("{d} rendered"))?;
        let pod = &deploy["spec"]["template"];
        let sa = if first { "hyperfleet-adapter-sa".to_string() } else { format!("{d}-sa") };
        assert_eq!(pod["spec"]["serviceAccountName"], sa.as_str(), "{d}");
        assert!(find(&docs, "ServiceAccount", &sa).is_some(), "{sa} rendered");
        assert_eq!(deploy["spec"]["replicas"], replicas, "{d}");
        // Every adapter's pods carry their name; no selector does (selectors are immutable).
        assert_eq!(pod["metadata"]["labels"]["hyperfleet.io/adapter"], name, "{d}");
        let selector = &deploy["spec"]["selector"]["matchLabels"];
        assert!(selector["hyperfleet.io/adapter"].is_null(), "{d}: {selector}");
        assert_eq!(selector["app.kubernetes.io/name"], d);
        // Its selector picks its own pods and no other Deployment's; its Service the same pods.
        for other in &deployments {
            let mine = other["metadata"]["name"] == d;
            let labels = &other["spec"]["template"]["metadata"]["labels"];
            assert_eq!(selects(selector, labels), mine, "{d} selects {}", other["metadata"]["name"]);
        }
        let svc = find(&docs, "Service", d).with_context(|| format!("Service {d}"))?;
        assert!(selects(&svc["spec"]["selector"], &pod["metadata"]["labels"]), "Service {d}");
        for kind in ["NetworkPolicy", "ConfigMap"] {
            let n = if kind == "ConfigMap" { format!("{d}-broker-config") } else { d.to_string() };
            assert!(find(&docs, kind, &n).is_some(), "{kind} {n} rendered");
        }
        let role = if first { format!("{ns}-hyperfleet-adapter") } else { format!("{ns}-{d}") };
        let rules = &find(&docs, "ClusterRole", &role).with_context(|| format!("ClusterRole {role}"))?["rules"];
        let resources = if first { vec!["namespaces", "serviceaccounts"] } else { vec!["configmaps"] };
        assert_eq!(rules[0]["apiGroups"], serde_json::json!([""]), "{role}");
        assert_eq!(rules[0]["resources"], serde_json::json!(resources), "{role}");
        assert_eq!(
            rules[0]["verbs"],
            serde_json::json!(["get", "list", "watch", "create", "update", "patch", "delete"]),
            "{role}: the default verbs"
        );
        let binding = find(&docs, "ClusterRoleBinding", &role).with_context(|| format!("binding {role}"))?;
        assert_eq!(binding["subjects"][0]["name"], sa.as_str());
        let config = config_of(&docs, &format!("{d}-config"), "config.yaml")?;
        assert_eq!(config["name"], name);
        assert_eq!(config["task_file"], format!("/etc/hyperfleet/task/{name}.yaml").as_str());
        // All adapters use the one broker account: the first adapter's Secret.
        let c = &pod["spec"]["containers"][0];
        assert_eq!(
            env_of(c, "BROKER_RABBITMQ_URL").context("url")?["valueFrom"]["secretKeyRef"]["name"],
            "hyperfleet-adapter-mq-secret"
        );
    }
    let broker = |d: &str| config_of(&docs, &format!("{d}-broker-config"), "broker.yaml");
    let info = broker("hyperfleet-adapter-cluster-info")?;
    assert_eq!(info["broker"]["rabbitmq"]["exchange"], "hyperfleet-clusters");
    assert_eq!(info["broker"]["rabbitmq"]["queue"], "hyperfleet-clusters-cluster-info");
    let pools = broker("hyperfleet-adapter-nodepool-cm")?;
    assert_eq!(pools["broker"]["rabbitmq"]["exchange"], "hyperfleet-nodepools");
    assert_eq!(pools["broker"]["rabbitmq"]["queue"], "hyperfleet-nodepools-nodepool-cm");
    let inline = find(&docs, "ConfigMap", "hyperfleet-adapter-cluster-info-task-config").context("task")?;
    assert_eq!(inline["data"]["cluster-info.yaml"].as_str().map(str::trim_end), Some(task.trim_end()));
    let builtin = find(&docs, "ConfigMap", "hyperfleet-adapter-nodepool-cm-task-config").context("task")?;
    let shipped = std::fs::read_to_string(chart_dir().join("files/nodepool-configmap.yaml"))?;
    assert_eq!(builtin["data"]["nodepool-cm.yaml"].as_str().map(str::trim_end), Some(shipped.trim_end()));
    // The broker Secret and the sentinel's account are rendered once, not per workload.
    assert_eq!(docs.iter().filter(|d| d["kind"] == "SecretProviderClass").count(), 3);
    let sentinel_accounts =
        docs.iter().filter(|d| d["kind"] == "ServiceAccount" && d["metadata"]["name"] == "sentinel-sa").count();
    assert_eq!(sentinel_accounts, 1);

    // The API waits for the required ones and lets each ServiceAccount report as its adapter only.
    let api = config_of(&docs, "hyperfleet-api-config", "config.yaml")?;
    assert_eq!(api["required_adapters"]["clusters"], serde_json::json!(["landing-zone", "cluster-info"]));
    assert_eq!(api["required_adapters"]["nodepools"], serde_json::json!(["nodepool-cm"]));
    assert_eq!(api["optional_adapters"], serde_json::json!([]));
    let rules = api["authz"]["rules"].as_array().cloned().unwrap_or_default();
    for (sa, name) in [
        ("hyperfleet-adapter-sa", "landing-zone"),
        ("hyperfleet-adapter-cluster-info-sa", "cluster-info"),
        ("hyperfleet-adapter-nodepool-cm-sa", "nodepool-cm"),
    ] {
        let subject = format!("system:serviceaccount:{ns}:{sa}");
        let rule = rules.iter().find(|r| r["subjects"][0] == subject.as_str()).with_context(|| subject.clone())?;
        assert_eq!(rule["allow"], serde_json::json!(["read", format!("report:{name}")]), "{sa}");
    }

    // The nodepool sentinel: hyperfleetSentinel's account and settings, nodepools on their own exchange.
    let sentinel = pod_of(&docs, "hyperfleet-sentinel-nodepools")?;
    assert_eq!(sentinel["spec"]["serviceAccountName"], "sentinel-sa");
    assert_eq!(sentinel["metadata"]["labels"]["app.kubernetes.io/component"], "sentinel-nodepools");
    let config = config_of(&docs, "hyperfleet-sentinel-nodepools-config", "config.yaml")?;
    assert_eq!(config["resource_type"], "nodepools");
    assert_eq!(config["leader_election"]["lease_name"], "hyperfleet-sentinel-nodepools");
    let b = config_of(&docs, "hyperfleet-sentinel-nodepools-broker-config", "broker.yaml")?;
    assert_eq!(b["broker"]["rabbitmq"]["exchange"], "hyperfleet-nodepools");
    assert_eq!(config_of(&docs, "hyperfleet-sentinel-config", "config.yaml")?["resource_type"], "clusters");
    let first = find(&docs, "Deployment", "hyperfleet-sentinel").context("sentinel")?;
    let selector = &first["spec"]["selector"]["matchLabels"];
    assert!(!selects(selector, &sentinel["metadata"]["labels"]), "the sentinels' selectors are distinct");
    assert!(find(&docs, "Service", "hyperfleet-sentinel-nodepools").is_some());
    assert!(find(&render(&env, &[])?, "Deployment", "hyperfleet-sentinel-nodepools").is_none(), "only for nodepools");

    // The development RabbitMQ admits every worker.
    let dev_docs = render(&env, &["-f", &dev, "-f", &file])?;
    let np = find(&dev_docs, "NetworkPolicy", "hyperfleet-rabbitmq").context("rabbitmq policy")?;
    let admitted = &np["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["values"];
    for d in [
        "hyperfleet-sentinel",
        "hyperfleet-adapter",
        "hyperfleet-sentinel-nodepools",
        "hyperfleet-adapter-cluster-info",
        "hyperfleet-adapter-nodepool-cm",
    ] {
        assert!(admitted.as_array().into_iter().flatten().any(|v| v == d), "{d} in {admitted}");
    }

    // An adapter that is not required is accepted as optional, never waited for.
    let docs = render(
        &env,
        &[
            "--set",
            "hyperfleetAdapters[0].name=audit",
            "--set",
            "hyperfleetAdapters[0].task.builtin=landing-zone",
            "--set",
            "hyperfleetAdapters[0].required=false",
        ],
    )?;
    let api = config_of(&docs, "hyperfleet-api-config", "config.yaml")?;
    assert_eq!(api["required_adapters"]["clusters"], serde_json::json!(["landing-zone"]));
    assert_eq!(api["optional_adapters"], serde_json::json!(["audit"]));

    // Broken lists fail at template time with one sentence.
    let cases: &[(&[&str], &str)] = &[
        (&["name=landing-zone", "task.builtin=landing-zone"], "is taken by another adapter"),
        (&["name=x", "task.builtin=landing-zone", "task.inline=resource: clusters"], "set builtin or inline, not both"),
        (&["name=x"], "task: set builtin"),
        (&["name=x", "task.inline=resource: clusters"], "rbac.rules: list what its task's objects need"),
        (&["name=x", "resource=nodepools", "task.builtin=landing-zone"], "the task reads \"clusters\""),
        (&["name=x", "task.builtin=landing-zone", "exchange=other"], "binds to exchange \"other\""),
        (&["name=Not_A_Label", "task.builtin=landing-zone"], "/hyperfleetAdapters/0/name"),
        (&["name=x", "task.builtin=unknown"], "/hyperfleetAdapters/0/task/builtin"),
        (&["name=x-broker", "task.builtin=landing-zone"], "does not end in broker or task"),
    ];
    for (sets, complaint) in cases {
        let mut args = vec!["template".to_string(), "rel".to_string(), chart.clone()];
        for s in *sets {
            args.extend(["--set".to_string(), format!("hyperfleetAdapters[0].{s}")]);
        }
        let (ok, text) = helm(&env, &args).await?;
        assert!(!ok && text.contains(complaint), "{sets:?} should fail naming {complaint:?}:\n{text}");
        assert!(text.lines().filter(|l| l.starts_with("Error:")).count() == 1, "one error: {text}");
    }
    std::fs::remove_file(&file)?;
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
        "hyperfleetAdapter.aws.podIdentity.roleArn=arn:aws:iam::111122223333:role/adapter",
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
        // The kubelet may also warn that its ConfigMap cache is not synced yet (under load): the
        // report keeps the last distinct warnings, so the missing CSI driver's is among them.
        Ok((report.contains("last warnings: FailedMount") && report.contains("secrets-store.csi.k8s.io"))
            .then_some((ok, report)))
    })
    .await
    .with_context(|| "the validation names the pods' mount failure")?;
    println!("{report}");
    assert!(!ok, "validation passed with pods that cannot start:\n{report}");
    assert!(report.contains("FAIL  deployment hyperfleet-api: 0/2 ready"), "{report}");
    assert!(report.contains("secrets-store.csi.k8s.io"), "the missing CSI driver is named:\n{report}");
    assert!(report.contains("PASS  configmap hyperfleet-sentinel-broker-config: exchange_type topic"), "{report}");
    // The synced Secret the sentinel's env needs does not exist: the script says who makes it.
    assert!(
        report.contains("FAIL  secret hyperfleet-sentinel-mq-secret missing: in AWS mode the CSI driver creates it"),
        "{report}"
    );
    assert!(
        report.contains("PASS  serviceaccount hyperfleet-adapter-sa: role arn:aws:iam::111122223333:role/adapter"),
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

fn runnable(
    docs: &[Value],
    deployment: &str,
    init: bool,
    secrets: &[(&str, String)],
    projected: &[(&str, String)],
) -> Result<Runnable> {
    let pod = &find(docs, "Deployment", deployment).with_context(|| format!("{deployment} rendered"))?["spec"]["template"]
        ["spec"];
    let container = if init { &pod["initContainers"][0] } else { &pod["containers"][0] };
    let scratch = std::env::temp_dir().join(format!("hf-contract-{}", uuid::Uuid::new_v4().simple()));
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for m in container["volumeMounts"].as_array().cloned().unwrap_or_default() {
        let volume = pod["volumes"].as_array().and_then(|vs| vs.iter().find(|v| v["name"] == m["name"])).cloned();
        // Projected volumes (ServiceAccount tokens, the cluster CA): the files the test supplies.
        if let Some(sources) = volume.as_ref().and_then(|v| v["projected"]["sources"].as_array()) {
            let dir = scratch.join(m["name"].as_str().unwrap_or("x"));
            std::fs::create_dir_all(&dir)?;
            for source in sources {
                let paths: Vec<String> = match source["serviceAccountToken"]["path"].as_str() {
                    Some(p) => vec![p.to_string()],
                    None => source["configMap"]["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i["path"].as_str().map(String::from))
                        .collect(),
                };
                for path in paths {
                    let content = projected.iter().find(|(p, _)| *p == path).map(|(_, c)| c.clone());
                    files.push((dir.join(&path), content.with_context(|| format!("no local file for {path}"))?));
                }
            }
            mounts.push((m["mountPath"].as_str().unwrap_or("").to_string(), dir));
            continue;
        }
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
    let env = LocalEnv::load()?;
    let dev = chart_dir().join("ci/in-cluster-values.yaml").display().to_string();
    // JWT is on by default: the rendered issuer (the kube-apiserver's JWKS, replaced by the local
    // apiserver's address like every other endpoint) verifies the workers' ServiceAccount tokens,
    // issued here by the local kube-apiserver for the chart's own ServiceAccounts.
    let ns = format!("hf-contract-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let jwks = format!("hyperfleetApi.auth.kubernetes.jwksUrl={}/openid/v1/jwks", env.get("HF_KUBE_URL")?);
    let docs = render(
        &env,
        &["-f", &dev, "--set", "global.logFormat=text", "--set", &format!("namespace={ns}"), "--set", &jwks],
    )?;
    let kube = env.kube().await?;
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    namespaces
        .create(&Default::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?)
        .await?;
    let outcome = contract(&env, &docs, &ns).await;
    let _ = namespaces.delete(&ns, &Default::default()).await;
    outcome
}

async fn contract(env: &LocalEnv, docs: &[Value], ns: &str) -> Result<()> {
    use hyperfleet_tests::{Service, TestDb, api_db_vars, free_port, node::service_account_token};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let accounts: Api<ServiceAccount> = Api::namespaced(env.kube().await?, ns);
    for sa in ["sentinel-sa", "hyperfleet-adapter-sa"] {
        accounts
            .create(&Default::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": sa}}))?)
            .await?;
    }
    let kube_ca = std::fs::read_to_string(env.get("HF_KUBE_CA_FILE")?)?;
    let kube_token = std::fs::read_to_string(env.get("HF_KUBE_TOKEN_FILE")?)?;
    let api_files = [("token", kube_token), ("ca.crt", kube_ca)];
    let env = env.clone();
    let docs = docs.to_vec();
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
    let migrate = runnable(&docs, "hyperfleet-api", true, &secrets, &api_files)?;
    let out = tokio::process::Command::new(env.bin("hyperfleet-api")?)
        .args(&migrate.args)
        .env_clear()
        .envs(to_vars(&migrate, &local_db))
        .output()
        .await?;
    assert!(out.status.success(), "migrate with the chart's settings: {}", String::from_utf8_lossy(&out.stderr));
    let serve = runnable(&docs, "hyperfleet-api", false, &secrets, &api_files)?;
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
        let account = if name == "sentinel" { "sentinel-sa" } else { "hyperfleet-adapter-sa" };
        let token = service_account_token(&env, ns, account, "hyperfleet").await?;
        let r = runnable(&docs, &format!("hyperfleet-{name}"), false, &secrets, &[("token", token)])?;
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
        // The entrypoint tests/env/images.sh gives the local images (tests/tests/it/pods.rs sees it run).
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
    // The namespace ArgoCD makes carries Pod Security and Istio labels; the generated dev passwords
    // survive ArgoCD's cluster-less renders.
    let labels = &doc["spec"]["syncPolicy"]["managedNamespaceMetadata"]["labels"];
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
    assert_eq!(labels["istio-injection"], "enabled");
    assert!(sync.iter().any(|o| o == "RespectIgnoreDifferences=true"));
    for secret in ["hyperfleet-postgresql", "hyperfleet-rabbitmq"] {
        let ignored = doc["spec"]["ignoreDifferences"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["kind"] == "Secret" && i["name"] == secret && i["jsonPointers"][0] == "/data");
        assert!(ignored, "{secret} kept across ArgoCD renders");
    }
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
        .env("HYPERFLEET_TOKEN", stack.api_token().unwrap_or_default())
        .env("KUBECONFIG", stack.env.get("KUBECONFIG")?)
        .env("TIMEOUT", "90")
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let id =
        text.lines().find_map(|l| l.strip_prefix("created cluster scripted (")?.strip_suffix(')')).map(String::from);
    if let Some(id) = &id {
        // Removed by `stop`, once the adapter (which would restore it) is stopped.
        stack.track_created(id);
    }
    assert!(out.status.success(), "{text}{}\n{}", String::from_utf8_lossy(&out.stderr), stack.logs());
    assert!(text.contains("Namespace") && text.contains("is Reconciled"), "{text}");
    assert!(id.is_some(), "{text}");
    stack.stop().await;
    Ok(())
}

fn pod_of<'a>(docs: &'a [Value], deployment: &str) -> Result<&'a Value> {
    Ok(&find(docs, "Deployment", deployment).with_context(|| format!("{deployment} rendered"))?["spec"]["template"])
}

fn env_of(container: &Value, name: &str) -> Option<Value> {
    container["env"].as_array()?.iter().find(|e| e["name"] == name).cloned()
}

/// Ports of a NetworkPolicy's egress rules, rule by rule.
fn egress_ports(policy: &Value) -> Vec<Vec<i64>> {
    policy["spec"]["egress"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| r["ports"].as_array().cloned().unwrap_or_default().iter().filter_map(|p| p["port"].as_i64()).collect())
        .collect()
}

/// Istio (STRICT mTLS), Cilium and cert-manager of the seed-002 platform, as rendered objects: Istio
/// itself cannot run here, so what it reads is asserted.
#[tokio::test]
async fn fits_the_istio_cilium_cert_manager_platform() -> Result<()> {
    let env = LocalEnv::load()?;
    let dev = chart_dir().join("ci/in-cluster-values.yaml").display().to_string();

    // Istio: istiod reachable, database/broker ports bypass the sidecar (db-migrate runs before it),
    // the app waits for its proxy, the dev servers are not injected, metrics scrapeable from outside.
    let docs = render(
        &env,
        &[
            "-f",
            &dev,
            "--set",
            "mesh.enabled=true",
            "--set",
            "mesh.istio.cni=true",
            "--set",
            "createNamespace=true",
            "--set",
            EXTERNAL_IDP,
            "--set",
            "hyperfleetApi.virtualService.enabled=true",
            "--set",
            "hyperfleetApi.virtualService.gateways={istio-system/development-gateway}",
            "--set",
            "hyperfleetApi.virtualService.hosts={hyperfleet.dev.example.com}",
            "--set",
            "devRabbitmq.podAnnotations.team=fleet",
            "--set",
            "hyperfleetApi.podAnnotations.team=fleet",
            "--set",
            "hyperfleetApi.podLabels.cost-centre=42",
        ],
    )?;
    for (d, bypass) in
        [("hyperfleet-api", "5432"), ("hyperfleet-sentinel", "5671,5672"), ("hyperfleet-adapter", "5671,5672")]
    {
        let pod = pod_of(&docs, d)?;
        let ann = &pod["metadata"]["annotations"];
        assert_eq!(ann["traffic.sidecar.istio.io/excludeOutboundPorts"], bypass, "{d}");
        assert_eq!(ann["proxy.istio.io/config"], "{\"holdApplicationUntilProxyStarts\": true}", "{d}");
        let np = find(&docs, "NetworkPolicy", d).context("policy")?;
        let istiod = np["spec"]["egress"]
            .as_array()
            .and_then(|rules| {
                rules.iter().find(|r| {
                    r["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "istio-system"
                })
            })
            .with_context(|| format!("{d}: egress to istiod"))?;
        assert_eq!(istiod["ports"][0]["port"], 15012);
        assert_eq!(pod["metadata"]["labels"]["sidecar.istio.io/inject"], "true", "{d}");
        // The kubelet's probes, rewritten by Istio to the sidecar, are let in like the health port.
        let probe_ports: Vec<i64> = np["spec"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["from"].is_null())
            .flat_map(|r| r["ports"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["port"].as_i64())
            .collect();
        assert!(probe_ports.contains(&15020) && probe_ports.contains(&15021), "{d}: {probe_ports:?}");
        let pa = find(&docs, "PeerAuthentication", &format!("{d}-metrics")).context("PeerAuthentication")?;
        assert_eq!(pa["spec"]["portLevelMtls"]["9090"]["mode"], "PERMISSIVE", "only the metrics port");
        assert!(pa["spec"]["mtls"].is_null(), "the workload keeps the mesh's mode on its other ports");
        assert_eq!(pa["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"], d);
    }
    let api = pod_of(&docs, "hyperfleet-api")?;
    assert_eq!(api["metadata"]["annotations"]["team"], "fleet");
    assert_eq!(api["metadata"]["labels"]["cost-centre"], "42");
    for d in ["hyperfleet-postgresql", "hyperfleet-rabbitmq"] {
        assert_eq!(pod_of(&docs, d)?["metadata"]["annotations"]["sidecar.istio.io/inject"], "false", "{d}");
    }
    assert_eq!(pod_of(&docs, "hyperfleet-rabbitmq")?["metadata"]["annotations"]["team"], "fleet");
    let ns = find(&docs, "Namespace", "hyperfleet-system").context("namespace")?;
    assert_eq!(ns["metadata"]["labels"]["istio-injection"], "enabled");
    let vs = find(&docs, "VirtualService", "hyperfleet-api").context("VirtualService")?;
    assert_eq!(vs["spec"]["gateways"][0], "istio-system/development-gateway");
    assert_eq!(
        vs["spec"]["http"][0]["route"][0]["destination"]["host"],
        "hyperfleet-api.hyperfleet-system.svc.cluster.local"
    );
    // Without a mesh, none of it.
    let plain = render(&env, &["-f", &dev])?;
    assert!(!plain.iter().any(|d| d["kind"] == "PeerAuthentication" || d["kind"] == "VirtualService"));
    assert!(
        pod_of(&plain, "hyperfleet-api")?["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeOutboundPorts"]
            .is_null()
    );

    // Cilium / egress: ports from values, JWKS only with JWT, extra rules for everything else; the
    // dev servers get their own policies.
    let docs = render(
        &env,
        &[
            "--set",
            "networkPolicy.egress.database={6432}",
            "--set",
            EXTERNAL_IDP,
            "--set",
            "networkPolicy.extraEgress[0].ports[0].port=4317",
        ],
    )?;
    let api_np = find(&docs, "NetworkPolicy", "hyperfleet-api").context("api policy")?;
    let ports = egress_ports(api_np);
    assert!(ports.contains(&vec![6432]) && !ports.iter().flatten().any(|p| *p == 5432), "{ports:?}");
    assert!(ports.contains(&vec![443]), "JWKS egress: {ports:?}");
    assert!(ports.contains(&vec![4317]), "extraEgress: {ports:?}");
    assert!(api_np["spec"]["egress"].as_array().into_iter().flatten().all(|r| r["to"].is_null()), "port-only rules");
    let default = render(&env, &[])?;
    let ports = egress_ports(find(&default, "NetworkPolicy", "hyperfleet-api").context("policy")?);
    assert!(!ports.contains(&vec![443]), "no 443 without JWT: {ports:?}");
    let dev_docs = render(&env, &["-f", &dev])?;
    let pg = find(&dev_docs, "NetworkPolicy", "hyperfleet-postgresql").context("dev postgresql policy")?;
    assert_eq!(
        pg["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "hyperfleet-api"
    );
    assert!(find(&dev_docs, "NetworkPolicy", "hyperfleet-rabbitmq").is_some());

    // cert-manager / private CAs: a client certificate for the broker, a CA bundle for the database,
    // and the RDS bundle mapped into the SecretProviderClass in Pod Identity mode.
    let docs = render(
        &env,
        &[
            "-f",
            &workspace_root().join("tests/fixtures/values/external-local.yaml").display().to_string(),
            "--set",
            "hyperfleetApi.database.external.caBundle.configMap=trust-bundle",
            "--set",
            "hyperfleetAdapter.broker.external.clientCertificate.secret=adapter-mq-client",
        ],
    )?;
    let adapter = &pod_of(&docs, "hyperfleet-adapter")?["spec"];
    let c = &adapter["containers"][0];
    assert_eq!(
        env_of(c, "HYPERFLEET_BROKER_CERT_FILE").context("cert")?["value"],
        "/etc/hyperfleet/broker-cert/tls.crt"
    );
    assert_eq!(env_of(c, "HYPERFLEET_BROKER_KEY_FILE").context("key")?["value"], "/etc/hyperfleet/broker-cert/tls.key");
    let vol =
        adapter["volumes"].as_array().and_then(|v| v.iter().find(|v| v["name"] == "broker-cert")).context("volume")?;
    assert_eq!(vol["secret"]["secretName"], "adapter-mq-client");
    let api = &pod_of(&docs, "hyperfleet-api")?["spec"];
    let args: Vec<String> = serde_json::from_value(api["containers"][0]["args"].clone())?;
    assert!(
        args.windows(2).any(|w| w[0] == "--db-rootcert-file" && w[1] == "/etc/hyperfleet/db-ca/ca.crt"),
        "{args:?}"
    );
    let vol = api["volumes"].as_array().and_then(|v| v.iter().find(|v| v["name"] == "db-ca")).context("db-ca")?;
    assert_eq!(vol["configMap"]["name"], "trust-bundle");
    let docs = render(
        &env,
        &[
            "--set",
            "hyperfleetApi.database.external.rootCertFile=rds-ca.pem",
            "--set",
            "hyperfleetApi.database.external.rootCertSecretName=hyperfleet/rds-ca",
        ],
    )?;
    let objects = find(&docs, "SecretProviderClass", "hyperfleet-api-db-secrets").context("spc")?["spec"]["parameters"]
        ["objects"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let objects: Vec<Value> = serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&objects)?)?
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        objects.iter().any(|o| o["objectName"] == "hyperfleet/rds-ca" && o["objectAlias"] == "rds-ca.pem"),
        "the file --db-rootcert-file names is mounted: {objects:?}"
    );

    // Secrets without AWS (K3s on EC2): created from values, or existing ones by name.
    let docs = render(
        &env,
        &[
            "--set",
            "hyperfleetApi.database.external.usePodIdentity=false",
            "--set",
            "hyperfleetApi.database.external.credentials.host=db.internal",
            "--set",
            "hyperfleetApi.database.external.credentials.user=hyperfleet",
            "--set",
            "hyperfleetApi.database.external.credentials.password=s3cret",
            "--set",
            "hyperfleetSentinel.broker.external.usePodIdentity=false",
            "--set",
            "hyperfleetSentinel.broker.external.url=amqps://u:p@mq.internal:5671",
            "--set",
            "hyperfleetAdapter.broker.external.usePodIdentity=false",
            "--set",
            "hyperfleetAdapter.broker.external.existingSecret=platform-mq",
        ],
    )?;
    assert!(!docs.iter().any(|d| d["kind"] == "SecretProviderClass"));
    let db = find(&docs, "Secret", "hyperfleet-api-db-secret").context("db secret")?;
    assert_eq!(db["stringData"]["db.host"], "db.internal");
    assert_eq!(db["stringData"]["db.port"], "5432", "a string, like the AWS shape");
    let mq = find(&docs, "Secret", "hyperfleet-sentinel-mq-secret").context("mq secret")?;
    assert_eq!(mq["stringData"]["BROKER_RABBITMQ_URL"], "amqps://u:p@mq.internal:5671");
    let c = &pod_of(&docs, "hyperfleet-adapter")?["spec"]["containers"][0];
    assert_eq!(env_of(c, "BROKER_RABBITMQ_URL").context("url")?["valueFrom"]["secretKeyRef"]["name"], "platform-mq");
    assert!(find(&docs, "Secret", "hyperfleet-adapter-mq-secret").is_none());
    Ok(())
}

/// Every broken combination fails at template time with one sentence naming the value.
#[tokio::test]
async fn broken_values_fail_at_template_time_with_one_sentence() -> Result<()> {
    let env = LocalEnv::load()?;
    let chart = chart_dir().display().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["hyperfleetApi.database.external.enabled=false"], "both are off, so the API has no database"),
        (&["hyperfleetApi.database.postgresql.enabled=true"], "postgresql and external are both enabled"),
        (
            &["hyperfleetSentinel.broker.external.enabled=false", "hyperfleetAdapter.broker.external.enabled=false"],
            "broker: enable rabbitmq (development) or external",
        ),
        (
            &["hyperfleetSentinel.broker.rabbitmq.enabled=true", "hyperfleetSentinel.broker.external.enabled=false"],
            "use different brokers",
        ),
        (&["hyperfleetAdapter.broker.external.exchange=other"], "binds to \"other\""),
        (&["hyperfleetAdapter.broker.external.useTLS=false"], "useTLS: false is not supported"),
        (&["hyperfleetApi.database.external.rootCertFile=rds.pem"], "rootCertSecretName"),
        (
            &["hyperfleetApi.replicaCount=2", "hyperfleetApi.podDisruptionBudget.minAvailable=2"],
            "must be lower than replicaCount",
        ),
        (
            &["hyperfleetApi.virtualService.enabled=true", "hyperfleetApi.virtualService.allowUnauthenticated=true"],
            "hyperfleetApi.virtualService: set gateways",
        ),
        (
            &[
                "hyperfleetApi.virtualService.enabled=true",
                "hyperfleetApi.virtualService.gateways={istio-system/development-gateway}",
                "hyperfleetApi.virtualService.hosts={h.example.com}",
                "hyperfleetApi.auth.enableJwt=false",
            ],
            "while hyperfleetApi.auth.enableJwt is false",
        ),
        (&["mesh.enabled=true", "createNamespace=true"], "run Istio with istio-cni and set mesh.istio.cni=true"),
        (&["hyperfleetApi.auth.jwksUrl=https://idp.example.com/jwks"], "needs issuer and audience too"),
        (&["hyperfleetApi.auth.kubernetes.enabled=false"], "would be refused"),
        (&["networkPolicy.egress.database=null"], "networkPolicy.egress.database is empty"),
        (&["hyperfleetApi.limits.maxSpecBytes=2097152"], "must be below hyperfleetApi.limits.maxBodyBytes"),
        (
            &["hyperfleetSentinel.broker.external.url=amqps://u:p@h:5671"],
            "url and existingSecret are used only with usePodIdentity=false",
        ),
        (
            &["hyperfleetApi.database.external.credentials.host=db"],
            "credentials and existingSecret are used only with usePodIdentity=false",
        ),
        // The schema, where a value alone is wrong.
        (&["hyperfleetApi.image.registry="], "/hyperfleetApi/image/registry"),
        (&["hyperfleetApi.aws.podIdentity.roleArn=ACCOUNT_ID"], "/hyperfleetApi/aws/podIdentity/roleArn"),
        (&["global.logLevel=loud"], "/global/logLevel"),
        (&["hyperfleetSentinel.broker.external.secretName="], "/hyperfleetSentinel/broker/external/secretName"),
        (&["hyperfleetSentinel.config.pollInterval=soon"], "/hyperfleetSentinel/config/pollInterval"),
        (&["hyperfleetApi.image.digest=latest"], "/hyperfleetApi/image/digest"),
    ];
    // A broker URL that is wrong is refused without echoing it (it carries the password).
    let (ok, text) = helm(
        &env,
        &[
            "template",
            "rel",
            chart.as_str(),
            "--set",
            "hyperfleetSentinel.broker.external.usePodIdentity=false",
            "--set",
            "hyperfleetSentinel.broker.external.url=amqp://hyperfleet:NotThisPassword@mq:5672",
        ],
    )
    .await?;
    assert!(!ok && text.contains("must start with amqps://") && !text.contains("NotThisPassword"), "{text}");
    for (sets, complaint) in cases {
        let mut args = vec!["template", "rel", chart.as_str()];
        for s in *sets {
            args.extend(["--set", s]);
        }
        let (ok, text) = helm(&env, &args).await?;
        assert!(!ok && text.contains(complaint), "{sets:?} should fail naming {complaint:?}:\n{text}");
        assert!(text.lines().filter(|l| l.starts_with("Error:")).count() == 1, "one error: {text}");
    }
    Ok(())
}

/// The escape hatches an umbrella chart or a platform needs are accepted and land where they belong.
#[tokio::test]
async fn escape_hatches_are_accepted_and_rendered() -> Result<()> {
    let env = LocalEnv::load()?;
    let mut args: Vec<String> = vec![
        "global.umbrellaThing=yes".into(),
        "hyperfleetSentinel.config.pollInterval=1m30s".into(),
        "metrics.serviceMonitor.enabled=true".into(),
        "metrics.serviceMonitor.labels.release=kube-prometheus-stack".into(),
        "metrics.serviceMonitor.labels.tier=1".into(),
        "hyperfleetApi.replicaCount=2".into(),
        "hyperfleetApi.image.digest=sha256:".to_string() + &"a".repeat(64),
    ];
    for c in ["hyperfleetApi", "hyperfleetSentinel", "hyperfleetAdapter"] {
        args.extend([
            format!("{c}.extraEnv[0].name=EXTRA"),
            format!("{c}.extraEnv[0].value=one"),
            format!("{c}.extraVolumes[0].name=extra"),
            format!("{c}.extraVolumes[0].emptyDir.medium=Memory"),
            format!("{c}.extraVolumeMounts[0].name=extra"),
            format!("{c}.extraVolumeMounts[0].mountPath=/extra"),
            format!("{c}.podLabels.team=fleet"),
            format!("{c}.serviceAccount.annotations.owner=fleet"),
            format!("{c}.service.annotations.owner=fleet"),
            format!("{c}.priorityClassName=platform-critical"),
            format!("{c}.topologySpreadConstraints[0].maxSkew=1"),
            format!("{c}.topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone"),
            format!("{c}.topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway"),
            format!("{c}.nodeSelector.pool=system"),
        ]);
    }
    let mut flags: Vec<&str> = vec!["--api-versions", "monitoring.coreos.com/v1"];
    for a in &args {
        flags.extend(["--set", a.as_str()]);
    }
    let docs = render(&env, &flags)?;
    for (d, sa) in [
        ("hyperfleet-api", "hyperfleet-api-sa"),
        ("hyperfleet-sentinel", "sentinel-sa"),
        ("hyperfleet-adapter", "hyperfleet-adapter-sa"),
    ] {
        let pod = pod_of(&docs, d)?;
        let spec = &pod["spec"];
        let c = &spec["containers"][0];
        assert_eq!(env_of(c, "EXTRA").context("extraEnv")?["value"], "one", "{d}");
        assert!(c["volumeMounts"].as_array().into_iter().flatten().any(|m| m["mountPath"] == "/extra"), "{d}");
        assert!(spec["volumes"].as_array().into_iter().flatten().any(|v| v["name"] == "extra"), "{d}");
        assert_eq!(pod["metadata"]["labels"]["team"], "fleet", "{d}");
        assert_eq!(spec["priorityClassName"], "platform-critical", "{d}");
        assert_eq!(spec["topologySpreadConstraints"][0]["maxSkew"], 1, "{d}");
        assert_eq!(spec["nodeSelector"]["pool"], "system", "{d}");
        assert_eq!(find(&docs, "ServiceAccount", sa).context("sa")?["metadata"]["annotations"]["owner"], "fleet");
        assert_eq!(find(&docs, "Service", d).context("svc")?["metadata"]["annotations"]["owner"], "fleet");
        let sm = find(&docs, "ServiceMonitor", d).context("ServiceMonitor")?;
        assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack", "{d}");
        assert_eq!(sm["metadata"]["labels"]["tier"], "1", "a --set number becomes a string label");
    }
    let api = &pod_of(&docs, "hyperfleet-api")?["spec"];
    let digest = format!("quay.io/hyperfleet/hyperfleet-api@sha256:{}", "a".repeat(64));
    assert_eq!(api["containers"][0]["image"], digest.as_str());
    assert_eq!(api["initContainers"][0]["image"], digest.as_str());
    assert!(api["initContainers"][0]["resources"]["limits"]["memory"].is_string(), "db-migrate has resources");
    let sentinel_cfg = find(&docs, "ConfigMap", "hyperfleet-sentinel-config").context("cm")?["data"]["config.yaml"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(sentinel_cfg.contains("poll_interval: \"1m30s\""), "{sentinel_cfg}");
    assert!(common_duration_ok("1m30s"), "the sentinel reads what the schema lets through");

    // PodDisruptionBudget: policy/v1 offline (helm template | kubectl apply on ≥ 1.25); v1beta1 only
    // where the cluster has nothing newer.
    let pdb = find(&docs, "PodDisruptionBudget", "hyperfleet-api").context("pdb")?;
    assert_eq!(pdb["apiVersion"], "policy/v1");
    let old = render(
        &env,
        &["--set", "hyperfleetApi.replicaCount=2", "--api-versions", "policy/v1beta1/PodDisruptionBudget"],
    )?;
    assert_eq!(find(&old, "PodDisruptionBudget", "hyperfleet-api").context("pdb")?["apiVersion"], "policy/v1beta1");

    // Cluster-scoped names follow the namespace, so two releases never collide.
    let other = render(&env, &["--set", "namespace=hyperfleet-staging"])?;
    let name = |docs: &[Value]| {
        docs.iter()
            .find(|d| d["kind"] == "ClusterRole")
            .map(|d| d["metadata"]["name"].as_str().unwrap_or("").to_string())
    };
    assert_ne!(name(&docs), name(&other));

    // Fixed dev passwords render identically every time (ArgoCD renders without cluster access).
    let dev = chart_dir().join("ci/in-cluster-values.yaml").display().to_string();
    let fixed = [
        "-f",
        dev.as_str(),
        "--set",
        "hyperfleetApi.database.postgresql.password=pw1",
        "--set",
        "devRabbitmq.password=pw2",
    ];
    let (a, b) = (render(&env, &fixed)?, render(&env, &fixed)?);
    for s in ["hyperfleet-postgresql", "hyperfleet-rabbitmq"] {
        assert_eq!(find(&a, "Secret", s).context("secret")?, find(&b, "Secret", s).context("secret")?);
    }
    // `data`, not `stringData`: ArgoCD's ignoreDifferences on /data can then keep the first password.
    let pg = find(&a, "Secret", "hyperfleet-postgresql").context("pg")?;
    assert!(pg["stringData"].is_null());
    assert_eq!(pg["data"]["password"], base64_of("pw1"));
    for d in ["hyperfleet-postgresql", "hyperfleet-rabbitmq"] {
        let c = &pod_of(&a, d)?["spec"]["containers"][0];
        assert!(c["livenessProbe"].is_object() && c["resources"]["limits"]["memory"].is_string(), "{d}");
    }
    Ok(())
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn common_duration_ok(s: &str) -> bool {
    hyperfleet_common::config::parse_duration(s).is_ok_and(|d| d == Duration::from_secs(90))
}

/// The packaged chart carries its dev values and scripts, and a copied chart directory (seed 000's
/// GitOps flow) renders: no symlink points out of it.
#[tokio::test]
async fn the_chart_is_self_contained() -> Result<()> {
    let env = LocalEnv::load()?;
    let out = std::env::temp_dir().join(format!("hf-package-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&out)?;
    let chart = chart_dir().display().to_string();
    let (ok, text) = helm(&env, &["package", chart.as_str(), "--destination", &out.display().to_string()]).await?;
    assert!(ok, "helm package: {text}");
    let tgz =
        std::fs::read_dir(&out)?.filter_map(|e| e.ok()).find(|e| e.file_name().to_string_lossy().ends_with(".tgz"));
    let tgz = tgz.context("a .tgz")?.path();
    let list = Command::new("tar").arg("tzf").arg(&tgz).output()?;
    let list = String::from_utf8_lossy(&list.stdout);
    for f in [
        "hyperfleet-system/ci/in-cluster-values.yaml",
        "hyperfleet-system/scripts/validate-hyperfleet-k8s.sh",
        "hyperfleet-system/scripts/validate-hyperfleet.sh",
        "hyperfleet-system/scripts/test-create-cluster.sh",
        "hyperfleet-system/files/landing-zone.yaml",
    ] {
        assert!(list.lines().any(|l| l == f), "{f} packaged:\n{list}");
    }
    for entry in walk(&chart_dir())? {
        assert!(!entry.is_symlink(), "{} is a symlink", entry.display());
    }
    let copy = out.join("copied");
    let status = Command::new("cp").arg("-r").arg(chart_dir()).arg(&copy).status()?;
    assert!(status.success());
    let (ok, text) = helm(&env, &["template", "rel", &copy.display().to_string()]).await?;
    assert!(ok && text.contains("kind: Deployment"), "a copied chart renders: {text}");
    std::fs::remove_dir_all(&out)?;
    Ok(())
}

fn walk(dir: &std::path::Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p)?);
        }
        out.push(p);
    }
    Ok(out)
}

/// validate-hyperfleet.sh's AWS part, with a stand-in `aws` CLI that returns fixed secrets (the
/// shapes are what is checked) and the local PostgreSQL and RabbitMQ as the reachable endpoints.
#[tokio::test]
async fn the_aws_validation_checks_secret_shapes_and_reachability() -> Result<()> {
    let env = LocalEnv::load()?;
    let bin = std::env::temp_dir().join(format!("hf-fake-aws-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&bin)?;
    let run = |db: String, mq: String| {
        let bin = bin.clone();
        let env = &env;
        async move {
            let script = format!(
                "#!/bin/sh\ncase \"$*\" in\n  *get-secret-value*db-credentials*) printf '%s' '{db}' ;;\n  *get-secret-value*mq-credentials*) printf '%s' '{mq}' ;;\n  *) exit 0 ;;\nesac\n"
            );
            let aws = bin.join("aws");
            std::fs::write(&aws, script)?;
            std::fs::set_permissions(&aws, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
            let out = tokio::process::Command::new("bash")
                .arg(chart_dir().join("scripts/validate-hyperfleet.sh"))
                .arg(format!("hf-absent-{}", uuid::Uuid::new_v4().simple()))
                .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
                .env("KUBECONFIG", env.get("KUBECONFIG")?)
                .env("KUBECTL", env.get("HF_KUBECTL")?)
                .output()
                .await?;
            Ok::<_, anyhow::Error>(String::from_utf8_lossy(&out.stdout).to_string())
        }
    };
    let (pg, mq) = (env.get("HF_DB_PORT")?.to_string(), env.get("HF_MQ_NODE_PORT")?.to_string());
    // A password starting with a digit is not a repeated port; both endpoints answer.
    let good = run(
        format!(r#"{{"host":"127.0.0.1","port":"{pg}","username":"u","password":"p","database":"d"}}"#),
        format!(r#"{{"url":"amqps://hyperfleet:7xK%3F@127.0.0.1:{mq}/%2f"}}"#),
    )
    .await?;
    assert!(good.contains(&format!("PASS  DB secret: port is a string ({pg})")), "{good}");
    assert!(good.contains(&format!("PASS  MQ url is amqps:// (host 127.0.0.1, port {mq})")), "{good}");
    assert!(good.contains(&format!("PASS  RDS 127.0.0.1:{pg} accepts TCP connections")), "{good}");
    assert!(good.contains(&format!("PASS  Amazon MQ 127.0.0.1:{mq} accepts TCP connections")), "{good}");
    // A numeric port, a repeated port, and an endpoint nobody listens on.
    let closed = hyperfleet_tests::free_port();
    let bad = run(
        format!(r#"{{"host":"127.0.0.1","port":{closed},"username":"u","password":"p","database":"d"}}"#),
        r#"{"url":"amqps://hyperfleet:pw@127.0.0.1:5671:5671"}"#.to_string(),
    )
    .await?;
    assert!(bad.contains("FAIL  DB secret: port must be a JSON string"), "{bad}");
    assert!(bad.contains("FAIL  MQ url repeats the port"), "{bad}");
    assert!(bad.contains(&format!("FAIL  RDS 127.0.0.1:{closed} does not accept TCP connections")), "{bad}");
    assert!(!bad.contains("pw@"), "the URL (and its password) is never printed: {bad}");
    // Unencoded characters in the password move where the host starts: each is named.
    for (url, reason) in [
        ("amqps://u:p?ss@h:5671", "needs exactly one @"),
        ("amqps://u:p@ss@h:5671", "needs exactly one @"),
        ("amqps://h:5671/u@x", "needs exactly one @"),
        ("amqps://u:p@h:56x1", "has a port that is not a number"),
        ("amqp://u:p@h:5672", "is not amqps://"),
    ] {
        let out = run(String::new(), format!(r#"{{"url":"{url}"}}"#)).await?;
        assert!(out.contains(&format!("FAIL  MQ url {reason}")), "{url}: {out}");
    }
    let ok = run(String::new(), r#"{"url":"amqps://u:p@[::1]:5671/%2f?heartbeat=30"}"#.to_string()).await?;
    assert!(ok.contains("PASS  MQ url is amqps:// (host ::1, port 5671)"), "{ok}");
    std::fs::remove_dir_all(&bin)?;
    Ok(())
}
