//! The hyperfleet-system chart with the real helm: lint, render, the values schema, an install into
//! the real kube-apiserver (every object accepted) with the validation script run against it, and
//! an uninstall that removes it all.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use hyperfleet_tests::{LocalEnv, eventually, workspace_root};
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Namespace, rbac::v1::ClusterRole},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::Api;
use serde::Deserialize;
use serde_json::Value;

fn chart() -> PathBuf {
    workspace_root().join("charts/hyperfleet-system")
}

fn helm(env: &LocalEnv, args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new(env.get("HF_HELM")?)
        .args(args)
        .env("KUBECONFIG", env.get("KUBECONFIG")?)
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("hf-helm-cache"))
        .env("HELM_CONFIG_HOME", std::env::temp_dir().join("hf-helm-config"))
        .env("HELM_DATA_HOME", std::env::temp_dir().join("hf-helm-data"))
        .output()
        .context("run helm")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// The rendered objects, as JSON.
fn render(env: &LocalEnv, extra: &[&str]) -> Result<Vec<Value>> {
    let chart = chart().display().to_string();
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

#[test]
fn lint_render_and_schema() -> Result<()> {
    let env = LocalEnv::load()?;
    let dev = chart().join("ci/in-cluster-values.yaml").display().to_string();
    let chart = chart().display().to_string();
    for values in [None, Some(dev.as_str())] {
        let mut args = vec!["lint", "--strict", chart.as_str()];
        if let Some(v) = values {
            args.extend(["-f", v]);
        }
        let (ok, text) = helm(&env, &args)?;
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
    ] {
        let (ok, text) = helm(&env, &["template", "rel", &chart, "--set", set])?;
        assert!(!ok && text.contains(complaint), "--set {set}: {text}");
    }
    Ok(())
}

#[tokio::test]
async fn installs_into_the_apiserver_validates_and_uninstalls() -> Result<()> {
    let env = LocalEnv::load()?;
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
    let chart = chart().display().to_string();
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
    let (ok, text) = helm(&env, &install)?;
    assert!(ok, "helm install:\n{text}");
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), &ns);
    assert_eq!(deployments.list(&Default::default()).await?.items.len(), 3);
    let (ok, manifest) = helm(&env, &["get", "manifest", &release, "--namespace", "default"])?;
    assert!(ok);
    for kind in ["PodDisruptionBudget", "ServiceMonitor", "SecretProviderClass", "NetworkPolicy", "Role", "ClusterRole"]
    {
        assert!(manifest.contains(&format!("kind: {kind}")), "{kind} installed");
    }

    // The validation script runs against it and says why pods cannot be checked here.
    let script = workspace_root().join("charts/hyperfleet-system/scripts/validate-hyperfleet-k8s.sh");
    let out = Command::new("bash").arg(&script).arg(&ns).env("KUBECONFIG", env.get("KUBECONFIG")?).output()?;
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{report}");
    assert!(out.status.success(), "validation failed:\n{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("PASS  configmap hyperfleet-sentinel-broker-config: exchange_type topic"), "{report}");
    assert!(report.contains("no nodes, so no pod can run"), "{report}");
    assert!(
        report.contains("PASS  serviceaccount hyperfleet-adapter-sa: role arn:aws:iam::1:role/adapter"),
        "{report}"
    );

    let (ok, text) = helm(&env, &["uninstall", &release, "--namespace", "default"])?;
    assert!(ok, "helm uninstall:\n{text}");
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    eventually(Duration::from_secs(120), || async { Ok(namespaces.get_opt(&ns).await?.is_none().then_some(())) })
        .await
        .context("the release's namespace is removed")?;
    let roles: Api<ClusterRole> = Api::all(kube);
    assert!(roles.get_opt("hyperfleet-adapter").await?.is_none(), "cluster-scoped objects are removed too");
    Ok(())
}
