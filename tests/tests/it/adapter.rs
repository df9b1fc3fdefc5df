//! The adapter against the real API, RabbitMQ over AMQPS and the real kube-apiserver +
//! controller-manager: re-apply on PATCH, duplicate deliveries, SIGKILL mid-work, Kubernetes
//! outages (through a TCP proxy the test can cut), the queue topology it declares, task files
//! that read the resource's fields and hold objects back with `when:`, a second adapter whose Job
//! runs on the local node and is available once it completes (`ready:`), and the built-in nodepool
//! task.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use hyperfleet_tests::{
    KubeProxy, LocalEnv, Service, Stack, StackOptions, condition, eventually, metric_sum, report_condition,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
};
use serde_json::json;

const LAND: Duration = Duration::from_secs(60);

async fn namespaces_of(env: &LocalEnv, id: &str) -> Result<Vec<Namespace>> {
    let api: Api<Namespace> = Api::all(env.kube().await?);
    Ok(api.list(&ListParams::default().labels(&format!("hyperfleet.io/cluster-id={id}"))).await?.items)
}

#[tokio::test]
async fn a_patch_is_reapplied_and_reported_at_the_new_generation() -> Result<()> {
    let stack = Stack::start().await?;
    let id = stack.create_cluster("patched").await?;
    stack.wait_reconciled(&id, 1, LAND).await?;
    let uri = format!("{}/api/hyperfleet/v1/clusters/{id}", stack.api_url);
    let resp = stack.client().patch(&uri).json(&json!({"labels": {"tier": "gold"}})).send().await?;
    assert_eq!(resp.status(), 200);
    let c = stack.wait_reconciled(&id, 2, LAND).await?;
    assert_eq!(condition(&c, "LandingZoneSuccessful")["observed_generation"], 2);
    let ns = namespaces_of(&stack.env, &id).await?;
    assert_eq!(ns.len(), 1);
    let annotations = ns[0].metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get("hyperfleet.io/generation").map(String::as_str), Some("2"), "re-applied");
    let (_, statuses) = stack.get(&format!("clusters/{id}/statuses")).await?;
    assert_eq!(statuses["items"][0]["observed_generation"], 2);
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn duplicate_and_concurrent_deliveries_are_harmless() -> Result<()> {
    let stack = Stack::start().await?;
    let id = stack.create_cluster("duplicated").await?;
    let c = stack.wait_reconciled(&id, 1, LAND).await?;
    let before = metric_sum(&stack.adapter.metrics().await?, "hyperfleet_adapter_events_processed_total");

    // 21 copies of the same event at once: one more than twice the default prefetch of 10.
    let event = hyperfleet_common::cloudevent::reconcile_event(&hyperfleet_common::cloudevent::ReconcileData {
        id: id.clone(),
        kind: "Cluster".into(),
        href: c["href"].as_str().unwrap_or_default().into(),
        generation: 1,
        owner_references: None,
    })?;
    let (body, props) = hyperfleet_common::cloudevent::encode(&event)?;
    let conn = stack.broker()?.connect("hyperfleet-test-duplicates").await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut confirms = Vec::new();
    for _ in 0..21 {
        let opts = BasicPublishOptions::default();
        confirms.push(
            ch.basic_publish(stack.exchange.as_str().into(), "cluster.reconcile".into(), opts, &body, props.clone())
                .await?,
        );
    }
    for c in confirms {
        c.await?;
    }
    let processed = "hyperfleet_adapter_events_processed_total{status=\"success\"}";
    eventually(LAND, || async {
        let m = stack.adapter.metrics().await?;
        Ok((metric_sum(&m, "hyperfleet_adapter_events_processed_total") >= before + 21.0).then_some(()))
    })
    .await
    .with_context(|| stack.logs())?;
    let metrics = stack.adapter.metrics().await?;
    assert_eq!(metric_sum(&metrics, "hyperfleet_adapter_events_processed_total{status=\"failed\"}"), 0.0, "{metrics}");
    assert!(metric_sum(&metrics, processed) >= 22.0, "{metrics}");
    assert_eq!(namespaces_of(&stack.env, &id).await?.len(), 1, "one Namespace");
    let (_, statuses) = stack.get(&format!("clusters/{id}/statuses")).await?;
    assert_eq!(statuses["total"], 1, "one status: {statuses}");
    let (_, c) = stack.get(&format!("clusters/{id}")).await?;
    assert_eq!((c["generation"].as_i64(), condition(&c, "Reconciled")["status"].as_str()), (Some(1), Some("True")));
    let _ = conn.close(200, "done".into()).await;
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_adapter_killed_mid_work_converges_after_restart() -> Result<()> {
    // Fault scenario 10: a batch of 50, the adapter SIGKILLed three times while it works on it.
    let mut stack = Stack::start().await?;
    let ids = stack.create_clusters("killed", 50).await?;
    for _ in 0..3 {
        eventually(LAND, || async {
            let m = stack.adapter.metrics().await.unwrap_or_default();
            Ok((metric_sum(&m, "hyperfleet_adapter_event_processing_duration_seconds_count") >= 1.0
                || !namespaces_of(&stack.env, &ids[0]).await?.is_empty())
            .then_some(()))
        })
        .await?;
        stack.kill_adapter().await?;
        stack.restart_adapter().await?;
    }
    for id in &ids {
        stack.wait_reconciled(id, 1, LAND).await?;
        assert_eq!(namespaces_of(&stack.env, id).await?.len(), 1, "exactly one Namespace for {id}");
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_queue_and_binding_are_exactly_as_configured() -> Result<()> {
    let stack = Stack::start().await?;
    let conn = stack.broker()?.connect("hyperfleet-test-topology").await?;
    let ch = conn.create_channel().await?;
    let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
    ch.queue_declare(stack.queue.as_str().into(), passive, Default::default()).await.context("the queue exists")?;
    ch.queue_declare(format!("{}.dead-letter", stack.queue).as_str().into(), passive, Default::default())
        .await
        .context("the dead-letter queue exists")?;
    // The binding key `#` takes any routing key: a poison message on an unrelated key reaches the
    // adapter, which dead-letters it.
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.basic_publish(
        stack.exchange.as_str().into(),
        "unrelated.key.entirely".into(),
        BasicPublishOptions::default(),
        b"not an event",
        BasicProperties::default(),
    )
    .await?
    .await?;
    eventually(LAND, || async {
        let m = stack.adapter.metrics().await?;
        Ok((metric_sum(&m, "hyperfleet_adapter_dead_letters_total") >= 1.0).then_some(()))
    })
    .await?;
    // The original doubled the queue name (reference §10): make sure no such queue appears.
    let doubled = format!("{}-landing-zone", stack.queue);
    let ch2 = conn.create_channel().await?;
    assert!(ch2.queue_declare(doubled.as_str().into(), passive, Default::default()).await.is_err());
    let _ = conn.close(200, "done".into()).await;
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn kubernetes_unreachable_is_reported_as_health_false_and_recovers() -> Result<()> {
    let env = LocalEnv::load()?;
    let mut proxy = KubeProxy::start(&env).await?;
    let stack = Stack::start_with(StackOptions {
        sentinel: vec![("HYPERFLEET_MAX_AGE_NOT_READY", "1s".into())],
        adapter: vec![
            ("HYPERFLEET_KUBERNETES_KUBECONFIG", proxy.kubeconfig.display().to_string()),
            ("HYPERFLEET_RETRY_ATTEMPTS", "2".into()),
            ("HYPERFLEET_RETRY_BASE_DELAY", "100ms".into()),
        ],
        ..Default::default()
    })
    .await?;

    proxy.down().await;
    let readyz = format!("http://127.0.0.1:{}/readyz", stack.adapter.health_port);
    eventually(LAND, || async { Ok((reqwest::get(&readyz).await?.status() == 503).then_some(())) }).await?;
    let id = stack.create_cluster("kube-down").await?;
    let report = eventually(LAND, || async {
        let (_, s) = stack.get(&format!("clusters/{id}/statuses")).await?;
        let items = s["items"].as_array().cloned().unwrap_or_default();
        Ok(items.into_iter().next())
    })
    .await
    .with_context(|| stack.logs())?;
    let health = report["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Health")).cloned();
    let health = health.context("Health condition")?;
    assert_eq!((health["status"].as_str(), health["reason"].as_str()), (Some("False"), Some("KubernetesUnavailable")));
    assert!(!health["message"].as_str().unwrap_or("").is_empty());
    let (_, c) = stack.get(&format!("clusters/{id}")).await?;
    assert_eq!(condition(&c, "Reconciled")["status"], "False");
    assert!(metric_sum(&stack.adapter.metrics().await?, "hyperfleet_adapter_retries_total") >= 1.0);

    proxy.up().await?;
    stack.wait_reconciled(&id, 1, LAND).await?;
    eventually(LAND, || async { Ok((reqwest::get(&readyz).await?.status() == 200).then_some(())) }).await?;
    assert_eq!(namespaces_of(&env, &id).await?.len(), 1);
    stack.stop().await;
    proxy.stop().await;
    Ok(())
}

/// The task `text` written to a directory of its own: the directory (for removal) and the file.
fn task_file(text: &str) -> Result<(PathBuf, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("hf-task-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let task = dir.join("task.yaml");
    std::fs::write(&task, text)?;
    Ok((dir, task))
}

/// A stack (`opts`) whose adapter runs the task `text`; the task's directory, for removal.
async fn stack_with_task(text: &str, mut opts: StackOptions) -> Result<(Stack, PathBuf)> {
    let (dir, task) = task_file(text)?;
    opts.adapter.push(("HYPERFLEET_TASK_FILE", task.display().to_string()));
    Ok((Stack::start_with(opts).await?, dir))
}

/// A second adapter on the stack's exchange: named `name`, on a queue of its own, running `task`.
async fn named_adapter(stack: &Stack, name: &str, task: &Path) -> Result<Service> {
    let queue = format!("hf-test-{}-{name}", stack.tag);
    let vars = [
        ("HYPERFLEET_NAME", name.to_string()),
        ("HYPERFLEET_QUEUE", queue),
        ("HYPERFLEET_TASK_FILE", task.display().to_string()),
    ];
    stack.another_adapter(name, &vars).await
}

/// The status report of `adapter` (the first report when `None`) about cluster `id`, if there is one.
async fn report_of(stack: &Stack, id: &str, adapter: Option<&str>) -> Result<Option<serde_json::Value>> {
    let (_, s) = stack.get(&format!("clusters/{id}/statuses")).await?;
    let items = s["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    Ok(items.iter().find(|r| adapter.is_none_or(|a| r["adapter"] == a)).cloned())
}

/// The condition `kind` of the adapter's first status report about cluster `id`, once there is one.
async fn reported_condition(stack: &Stack, id: &str, kind: &str) -> Result<serde_json::Value> {
    let report = eventually(LAND, || report_of(stack, id, None)).await.with_context(|| stack.logs())?;
    let found = report_condition(&report, kind).clone();
    (!found.is_null()).then_some(found).with_context(|| format!("no {kind} condition in {report}"))
}

/// A task reading the spec and a label: the Namespace carries the cluster's region and tier.
const REGION_TASK: &str = r#"
resource: clusters
objects:
  - apiVersion: v1
    kind: Namespace
    metadata:
      name: "{{resource.id}}"
      labels:
        hyperfleet.io/cluster-id: "{{resource.id}}"
        hyperfleet.io/region: "{{resource.spec.placement.region}}"
        hyperfleet.io/tier: "{{resource.labels.tier}}"
report:
  applied_message: "Namespace {{resource.id}} in {{resource.spec.placement.region}}"
  available_message: "Namespace {{resource.id}} exists"
"#;

#[tokio::test]
async fn templates_read_the_spec_and_labels_and_a_missing_value_is_reported_not_applied() -> Result<()> {
    let (stack, dir) = stack_with_task(REGION_TASK, StackOptions::default()).await?;
    let post = |name: &str, spec: serde_json::Value| {
        stack.post_cluster(json!({"kind": "Cluster", "name": format!("{name}-{}", stack.tag), "spec": spec,
                                  "labels": {"tier": "gold"}}))
    };
    let placed = post("placed", json!({"placement": {"region": "eu-west-1"}})).await?;
    let placed = placed["id"].as_str().context("id")?.to_string();
    let unplaced = post("unplaced", json!({"size": 3})).await?;
    let unplaced = unplaced["id"].as_str().context("id")?.to_string();

    let c = stack.wait_reconciled(&placed, 1, LAND).await?;
    let ns = namespaces_of(&stack.env, &placed).await?;
    let labels = ns.first().and_then(|n| n.metadata.labels.clone()).unwrap_or_default();
    assert_eq!(labels.get("hyperfleet.io/region").map(String::as_str), Some("eu-west-1"), "{labels:?}");
    assert_eq!(labels.get("hyperfleet.io/tier").map(String::as_str), Some("gold"));
    assert_eq!(condition(&c, "Reconciled")["status"], "True");

    let health = reported_condition(&stack, &unplaced, "Health").await?;
    assert_eq!((health["status"].as_str(), health["reason"].as_str()), (Some("False"), Some("TemplateValueMissing")));
    assert!(health["message"].as_str().unwrap_or("").contains("resource.spec.placement.region"), "{health}");
    assert!(namespaces_of(&stack.env, &unplaced).await?.is_empty(), "nothing applied without the value");
    stack.stop().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// A task held back until the cluster is labelled `tier=gold`.
const GOLD_TASK: &str = r#"
resource: clusters
when:
  - field: resource.labels.tier
    equals: gold
objects:
  - apiVersion: v1
    kind: Namespace
    metadata:
      name: "{{resource.id}}"
      labels:
        hyperfleet.io/cluster-id: "{{resource.id}}"
report:
  applied_message: "Namespace {{resource.id}} applied"
  available_message: "Namespace {{resource.id}} exists"
"#;

#[tokio::test]
async fn a_when_precondition_holds_the_objects_back_until_it_holds() -> Result<()> {
    let (stack, dir) = stack_with_task(GOLD_TASK, StackOptions::default()).await?;
    let id = stack.create_cluster("silver").await?;
    let applied = reported_condition(&stack, &id, "Applied").await?;
    assert_eq!((applied["status"].as_str(), applied["reason"].as_str()), (Some("False"), Some("PreconditionNotMet")));
    assert!(applied["message"].as_str().unwrap_or("").contains("resource.labels.tier"), "{applied}");
    assert!(namespaces_of(&stack.env, &id).await?.is_empty(), "held back");

    let uri = format!("{}/api/hyperfleet/v1/clusters/{id}", stack.api_url);
    let resp = stack.client().patch(&uri).json(&json!({"labels": {"tier": "gold"}})).send().await?;
    assert_eq!(resp.status(), 200);
    stack.wait_reconciled(&id, 2, LAND).await?;
    assert_eq!(namespaces_of(&stack.env, &id).await?.len(), 1, "applied once the precondition holds");
    stack.stop().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// A second adapter whose task runs a Job in the landing zone once the landing-zone adapter has
/// reported (`when:`), available once the Job is `Complete` (`ready:`).
fn job_task(image: &str) -> String {
    format!(
        r#"
resource: clusters
when:
  - condition: LandingZoneSuccessful
objects:
  - apiVersion: batch/v1
    kind: Job
    metadata:
      name: bootstrap
      namespace: "{{{{resource.id}}}}"
    spec:
      backoffLimit: 0
      template:
        spec:
          restartPolicy: Never
          automountServiceAccountToken: false
          containers:
            - name: bootstrap
              image: "{image}"
              imagePullPolicy: Never
              args: ["--version"]
    ready:
      condition: Complete
report:
  applied_message: "Job {{{{resource.id}}}}/bootstrap created"
  available_message: "Job {{{{resource.id}}}}/bootstrap completed"
"#
    )
}

/// Two adapters for one cluster: the second (a Job on the local node) waits for the first's
/// condition, its `Available` follows the Job's completion, and the cluster is Reconciled only once
/// both have reported; a delete waits for both to finalize.
#[tokio::test]
async fn a_second_adapter_waits_for_the_first_and_is_available_once_its_job_completes() -> Result<()> {
    let env = LocalEnv::load()?;
    hyperfleet_tests::node::require_node(&env).await?;
    let image = format!("{}/hyperfleet-adapter:dev", env.get("HF_IMAGE_REPO")?);
    let mut stack = Stack::start_with(StackOptions {
        jwt_off: true,
        api: vec![("HYPERFLEET_REQUIRED_ADAPTERS_CLUSTERS", "landing-zone,job-runner".into())],
        sentinel: vec![("HYPERFLEET_MAX_AGE_NOT_READY", "1s".into())],
        ..Default::default()
    })
    .await?;
    let (dir, task) = task_file(&job_task(&image))?;
    let runner = named_adapter(&stack, "job-runner", &task).await?;

    // Without the landing zone, the job runner holds its Job back and says why.
    stack.kill_adapter().await?;
    let id = stack.create_cluster("jobs").await?;
    let held = eventually(LAND, || report_of(&stack, &id, Some("job-runner"))).await.with_context(|| stack.logs())?;
    let applied = report_condition(&held, "Applied");
    assert_eq!(applied["reason"], "PreconditionNotMet", "{held}");
    assert!(applied["message"].as_str().unwrap_or("").contains("LandingZoneSuccessful"), "{applied}");
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(env.kube().await?, &id);
    assert!(jobs.get_opt("bootstrap").await.ok().flatten().is_none(), "no Job while held back");

    stack.start_adapter().await?;
    // The Job is applied once the landing zone is reported; until it completes the runner reports
    // Available=False and the cluster waits for it.
    let c = stack.wait_reconciled(&id, 1, Duration::from_secs(120)).await.with_context(|| stack.logs())?;
    assert_eq!(condition(&c, "JobRunnerSuccessful")["status"], "True", "{c}");
    assert_eq!(condition(&c, "LandingZoneSuccessful")["status"], "True", "{c}");
    let job = jobs.get("bootstrap").await?;
    let complete = job.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        complete.iter().any(|c| c.type_ == "Complete" && c.status == "True"),
        "Reconciled only once the Job completed: {complete:?}"
    );
    let runner_report = report_of(&stack, &id, Some("job-runner")).await?.context("job-runner's report")?;
    assert_eq!(report_condition(&runner_report, "Available")["message"], format!("Job {id}/bootstrap completed"));

    // A delete needs both adapters' Finalized=True.
    let uri = format!("{}/api/hyperfleet/v1/clusters/{id}", stack.api_url);
    assert_eq!(stack.client().delete(&uri).send().await?.status(), 202);
    stack.wait_gone(&id, Duration::from_secs(120)).await.with_context(|| stack.logs())?;
    runner.stop().await;
    stack.stop().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// A ConfigMap that is ready once someone approves it (`data.approved: "yes"`).
const APPROVAL_TASK: &str = r#"
resource: clusters
objects:
  - apiVersion: v1
    kind: ConfigMap
    metadata:
      name: "approval-{{resource.id}}"
      namespace: default
    data:
      cluster: "{{resource.name}}"
    ready:
      field: data.approved
      equals: "yes"
report:
  applied_message: "ConfigMap default/approval-{{resource.id}} applied"
  available_message: "ConfigMap default/approval-{{resource.id}} approved"
"#;

/// `Available` follows an object's `ready:` rule through the watch alone: the sentinel does not
/// announce the cluster again (max ages of an hour), yet approving the ConfigMap out of band makes
/// the cluster Reconciled, and withdrawing the approval makes it un-Reconciled again.
#[tokio::test]
async fn available_follows_the_ready_rule_through_the_watch() -> Result<()> {
    let (stack, dir) = stack_with_task(
        APPROVAL_TASK,
        StackOptions {
            sentinel: vec![("HYPERFLEET_MAX_AGE_NOT_READY", "1h".into()), ("HYPERFLEET_MAX_AGE_READY", "1h".into())],
            ..Default::default()
        },
    )
    .await?;
    let id = stack.create_cluster("approved").await?;
    let available = reported_condition(&stack, &id, "Available").await?;
    assert_eq!(
        (available["status"].as_str(), available["reason"].as_str()),
        (Some("False"), Some("ResourcesNotReady"))
    );
    assert_eq!(
        available["message"],
        format!("waiting for ConfigMap default/approval-{id}: data.approved is not set"),
        "{available}"
    );

    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(stack.env.kube().await?, "default");
    let approve = |answer: &str| {
        let patch = json!({"data": {"approved": answer}});
        let (maps, name) = (maps.clone(), format!("approval-{id}"));
        async move { maps.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await }
    };
    approve("yes").await?;
    let c = stack.wait_reconciled(&id, 1, LAND).await.with_context(|| stack.logs())?;
    assert_eq!(condition(&c, "LandingZoneSuccessful")["message"], format!("ConfigMap default/approval-{id} approved"));
    let changes = |available: &str| {
        let adapter = &stack.adapter;
        let available = available.to_string();
        async move {
            let text = adapter.metrics().await?;
            let line = format!("hyperfleet_adapter_readiness_changes_total{{available=\"{available}\"}}");
            anyhow::Ok(text.lines().find_map(|l| l.strip_prefix(&line)).and_then(|v| v.trim().parse::<f64>().ok()))
        }
    };
    assert_eq!(changes("true").await?, Some(1.0), "reported by the watch");

    approve("no").await?;
    eventually(LAND, || async {
        let (_, c) = stack.get(&format!("clusters/{id}")).await?;
        Ok((condition(&c, "Reconciled")["status"] == "False").then_some(()))
    })
    .await
    .with_context(|| stack.logs())?;
    let available = reported_condition(&stack, &id, "Available").await?;
    assert_eq!(
        available["message"],
        format!("waiting for ConfigMap default/approval-{id}: data.approved is \"no\", not \"yes\"")
    );
    assert_eq!(changes("false").await?, Some(1.0));
    stack.stop().await;
    let _ = maps.delete(&format!("approval-{id}"), &Default::default()).await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// The built-in nodepool task (the chart's files/nodepool-configmap.yaml) with a nodepool
/// sentinel: a nodepool lands as a ConfigMap carrying its spec in its cluster's Namespace and is
/// Reconciled.
#[tokio::test]
async fn a_nodepool_lands_as_a_config_map_in_its_cluster_namespace() -> Result<()> {
    let stack = Stack::start_with(StackOptions {
        jwt_off: true,
        api: vec![("HYPERFLEET_REQUIRED_ADAPTERS_NODEPOOLS", "nodepool-config".into())],
        ..Default::default()
    })
    .await?;
    let task = hyperfleet_tests::workspace_root().join("charts/hyperfleet-system/files/nodepool-configmap.yaml");
    let pools = named_adapter(&stack, "nodepool-config", &task).await?;
    let sentinel = stack.sentinel("nodepools", &[("HYPERFLEET_RESOURCE_TYPE", "nodepools".into())]).await?;
    let id = stack.create_cluster("pooled").await?;
    stack.wait_reconciled(&id, 1, LAND).await?;
    let spec = json!({"replicas": 3, "instance_type": "m5.large", "labels": {"role": "worker"}});
    let url = format!("{}/api/hyperfleet/v1/clusters/{id}/nodepools", stack.api_url);
    let resp =
        stack.client().post(&url).json(&json!({"kind": "NodePool", "name": "workers", "spec": spec})).send().await?;
    assert_eq!(resp.status(), 201);
    let np: serde_json::Value = resp.json().await?;
    let np_id = np["id"].as_str().context("id")?.to_string();

    let landed = eventually(LAND, || async {
        let (_, np) = stack.get(&format!("nodepools/{np_id}")).await?;
        Ok((condition(&np, "Reconciled")["status"] == "True").then_some(np))
    })
    .await
    .with_context(|| stack.logs())?;
    assert_eq!(condition(&landed, "NodepoolConfigSuccessful")["status"], "True", "{landed}");
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(stack.env.kube().await?, &id);
    let map = maps.get(&format!("nodepool-{np_id}")).await?;
    let data = map.data.unwrap_or_default();
    let carried: serde_json::Value = serde_json::from_str(data.get("spec.json").context("spec.json")?)?;
    assert_eq!(carried, spec, "the ConfigMap carries the nodepool's spec");
    let labels = map.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("hyperfleet.io/cluster-id"), Some(&id));
    assert_eq!(labels.get("hyperfleet.io/adapter").map(String::as_str), Some("nodepool-config"));
    sentinel.stop().await;
    pools.stop().await;
    stack.stop().await;
    Ok(())
}

#[test]
fn the_defaults_match_the_seed_chart() {
    let cfg = hyperfleet_adapter::AdapterConfig::default();
    assert_eq!((cfg.queue.as_str(), cfg.binding_key.as_str()), ("hyperfleet-clusters-landing-zone", "#"));
    assert_eq!((cfg.broker.exchange.as_str(), cfg.broker.exchange_type.as_str()), ("hyperfleet-clusters", "topic"));
}
