//! The walking skeleton, end to end: a cluster POSTed to the real API lands as a Namespace and a
//! ServiceAccount in the real kube-apiserver, carried by a CloudEvent from the real sentinel to the
//! real adapter over AMQPS. Each run has its own database, exchange and queue.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hyperfleet_tests::{LocalEnv, Service, TestDb, api_db_vars, eventually, free_port, migrate};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Api;
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(60);
const LAND: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lands_as_namespace_and_service_account() -> Result<()> {
    let env = LocalEnv::load()?;
    let db = TestDb::create(&env).await?;
    migrate(&env, &db).await?;
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let exchange = format!("hf-e2e-{suffix}");
    let queue = format!("hf-e2e-{suffix}-landing-zone");
    let api_port = free_port();
    let api_url = format!("http://127.0.0.1:{api_port}");
    let broker = vec![
        ("HYPERFLEET_BROKER_URL", env.get("HF_AMQPS_URL")?.to_string()),
        ("HYPERFLEET_BROKER_CA_FILE", env.get("HF_AMQPS_CA_FILE")?.to_string()),
        ("HYPERFLEET_BROKER_EXCHANGE", exchange.clone()),
        ("HYPERFLEET_HYPERFLEET_API_BASE_URL", api_url.clone()),
    ];

    let mut api_vars = api_db_vars(&env, &db)?;
    api_vars.push(("HYPERFLEET_SERVER_HOST", "127.0.0.1".into()));
    api_vars.push(("HYPERFLEET_SERVER_PORT", api_port.to_string()));
    let mut api = Service::start(&env, suffix, "api", &["serve"], &api_vars)?;

    let mut sentinel_vars = broker.clone();
    sentinel_vars.push(("HYPERFLEET_POLL_INTERVAL", "500ms".into()));
    let mut sentinel = Service::start(&env, suffix, "sentinel", &[], &sentinel_vars)?;

    let mut adapter_vars = broker.clone();
    adapter_vars.push(("HYPERFLEET_QUEUE", queue.clone()));
    adapter_vars.push(("HYPERFLEET_KUBERNETES_KUBECONFIG", env.get("KUBECONFIG")?.to_string()));
    let mut adapter = Service::start(&env, suffix, "adapter", &[], &adapter_vars)?;

    api.wait_ready(READY).await?;
    sentinel.wait_ready(READY).await?;
    adapter.wait_ready(READY).await?;

    // Create the cluster.
    let http = reqwest::Client::new();
    let name = format!("e2e-{suffix}");
    let posted = Instant::now();
    let resp = http
        .post(format!("{api_url}/api/hyperfleet/v1/clusters"))
        .json(&json!({"kind": "Cluster", "name": name, "spec": {"region": "local"}, "labels": {"team": "e2e"}}))
        .send()
        .await?;
    assert_eq!(resp.status(), 201, "create: {}", resp.text().await?);
    let created: Value = resp.json().await?;
    let id = created["id"].as_str().context("id in create response")?.to_string();
    assert_eq!(created["generation"], 1);
    assert_eq!(created["href"], format!("/api/hyperfleet/v1/clusters/{id}"));

    // It is readable and listed.
    let got: Value = http.get(format!("{api_url}/api/hyperfleet/v1/clusters/{id}")).send().await?.json().await?;
    assert_eq!(got["name"], name.as_str());
    let list: Value = http.get(format!("{api_url}/api/hyperfleet/v1/clusters?size=5")).send().await?.json().await?;
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["id"], id.as_str());

    // Wait for the landing zone.
    let kube = env.kube().await?;
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    let accounts: Api<ServiceAccount> = Api::namespaced(kube.clone(), &id);
    let landed = eventually(LAND, || async {
        let ns = namespaces.get_opt(&id).await?;
        let sa = accounts.get_opt("landing-zone").await?;
        Ok(ns.zip(sa))
    })
    .await
    .with_context(|| {
        format!("cluster {id} did not land\n{}\n{}\n{}", api.log_tail(), sentinel.log_tail(), adapter.log_tail())
    })?;
    let elapsed = posted.elapsed();
    println!("create→Namespace+ServiceAccount: {} ms (cluster {id})", elapsed.as_millis());

    let (ns, sa) = landed;
    let labels = ns.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("hyperfleet.io/cluster-id"), Some(&id));
    assert_eq!(labels.get("hyperfleet.io/cluster-name"), Some(&name));
    assert_eq!(labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("hyperfleet-adapter"));
    let annotations = ns.metadata.annotations.unwrap_or_default();
    assert_eq!(annotations.get("hyperfleet.io/generation").map(String::as_str), Some("1"));
    assert_eq!(sa.metadata.namespace.as_deref(), Some(id.as_str()));
    let managers: Vec<_> =
        ns.metadata.managed_fields.unwrap_or_default().into_iter().filter_map(|m| m.manager).collect();
    assert!(managers.iter().any(|m| m == "hyperfleet-adapter"), "server-side applied by the adapter: {managers:?}");

    // Clean up what this test made outside its own processes.
    let _ = namespaces.delete(&id, &Default::default()).await;
    adapter.stop().await;
    sentinel.stop().await;
    api.stop().await;
    drop_topology(&env, &exchange, &queue).await;
    db.drop_db().await;
    Ok(())
}

async fn drop_topology(env: &LocalEnv, exchange: &str, queue: &str) {
    let cfg = hyperfleet_common::broker::BrokerConfig {
        url: hyperfleet_common::config::Secret::new(env.get("HF_AMQPS_URL").unwrap_or_default()),
        ca_file: env.get("HF_AMQPS_CA_FILE").ok().map(Into::into),
        ..Default::default()
    };
    if let Ok(conn) = cfg.connect("hyperfleet-e2e-cleanup").await
        && let Ok(ch) = conn.create_channel().await
    {
        for q in [queue.to_string(), format!("{queue}.dead-letter")] {
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        }
        let _ = ch.exchange_delete(exchange.into(), Default::default()).await;
        let _ = conn.close(200, "done".into()).await;
    }
}
