//! The walking skeleton, end to end: clusters POSTed to the real API land as a Namespace and a
//! ServiceAccount in the real kube-apiserver, carried by CloudEvents from the real sentinel to the
//! real adapter over AMQPS. Each test has its own database, exchange and queue.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hyperfleet_tests::{Stack, StackOptions, condition, eventually};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Api;
use lapin::{
    BasicProperties,
    options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::AMQPValue,
};
use serde_json::{Value, json};

const LAND: Duration = Duration::from_secs(60);

/// Waits until the cluster's Namespace and ServiceAccount exist.
async fn wait_landed(stack: &Stack, id: &str) -> Result<(Namespace, ServiceAccount)> {
    let kube = stack.env.kube().await?;
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    let accounts: Api<ServiceAccount> = Api::namespaced(kube, id);
    eventually(LAND, || async {
        let ns = namespaces.get_opt(id).await?;
        let sa = accounts.get_opt("landing-zone").await?;
        Ok(ns.zip(sa))
    })
    .await
    .with_context(|| format!("cluster {id} did not land\n{}", stack.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lands_reconciles_and_is_cleaned_up_on_delete() -> Result<()> {
    let stack = Stack::start().await?;
    let name = format!("e2e-{}", stack.tag);
    let posted = Instant::now();
    let created = stack
        .post_cluster(json!({"kind": "Cluster", "name": name, "spec": {"region": "local"}, "labels": {"team": "e2e"}}))
        .await?;
    assert_eq!(created["generation"], 1);
    let id = created["id"].as_str().context("id in create response")?.to_string();

    // It is readable and listed.
    let http = stack.client().clone();
    let got: Value =
        http.get(format!("{}/api/hyperfleet/v1/clusters/{id}", stack.api_url)).send().await?.json().await?;
    assert_eq!(got["name"], name.as_str());
    assert_eq!(got["href"], format!("/api/hyperfleet/v1/clusters/{id}"));
    let list: Value =
        http.get(format!("{}/api/hyperfleet/v1/clusters?size=5", stack.api_url)).send().await?.json().await?;
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["id"], id.as_str());

    let (ns, sa) = wait_landed(&stack, &id).await?;
    println!("create→Namespace+ServiceAccount: {} ms (cluster {id})", posted.elapsed().as_millis());

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

    // The adapter reports back and the API aggregates: Reconciled at generation 1.
    let cluster_url = format!("{}/api/hyperfleet/v1/clusters/{id}", stack.api_url);
    let reconciled = eventually(LAND, || async {
        let c: Value = http.get(&cluster_url).send().await?.json().await?;
        Ok((condition(&c, "Reconciled")["status"] == "True").then_some(c))
    })
    .await
    .with_context(|| format!("cluster {id} never became Reconciled\n{}", stack.logs()))?;
    println!("create→Reconciled: {} ms", posted.elapsed().as_millis());
    assert_eq!(condition(&reconciled, "Reconciled")["observed_generation"], 1);
    assert_eq!(condition(&reconciled, "LastKnownReconciled")["status"], "True");
    let lz = condition(&reconciled, "LandingZoneSuccessful");
    assert_eq!((lz["status"].as_str(), lz["reason"].as_str()), (Some("True"), Some("ResourcesAvailable")));
    assert!(lz["message"].as_str().is_some_and(|m| m.contains(&id)), "{lz}");
    // The adapter's own report: Applied, Available, Health True at generation 1, each explained.
    let statuses: Value = http.get(format!("{cluster_url}/statuses")).send().await?.json().await?;
    let report = &statuses["items"][0];
    assert_eq!((report["adapter"].as_str(), report["observed_generation"].as_i64()), (Some("landing-zone"), Some(1)));
    for kind in ["Applied", "Available", "Health"] {
        let c = report["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == kind)).cloned();
        let c = c.with_context(|| format!("{kind} in {report}"))?;
        assert_eq!(c["status"], "True", "{kind}");
        assert!(
            !c["reason"].as_str().unwrap_or("").is_empty() && !c["message"].as_str().unwrap_or("").is_empty(),
            "{c}"
        );
    }

    // Deleting it removes the landing zone, then the adapter's Finalized=True removes the cluster.
    let resp = http.delete(&cluster_url).send().await?;
    assert_eq!(resp.status(), 202);
    let deleted: Value = resp.json().await?;
    assert_eq!(deleted["generation"], 2);
    assert_eq!(http.get(&cluster_url).send().await?.status(), 200, "finalizing clusters stay readable");
    let deleting = Instant::now();
    let kube = stack.env.kube().await?;
    let namespaces: Api<Namespace> = Api::all(kube);
    eventually(LAND, || async {
        let gone = http.get(&cluster_url).send().await?.status() == 404;
        Ok(gone.then_some(()))
    })
    .await
    .with_context(|| format!("cluster {id} was never finalized\n{}", stack.logs()))?;
    println!("DELETE→cluster gone: {} ms", deleting.elapsed().as_millis());
    assert!(namespaces.get_opt(&id).await?.is_none(), "the Namespace is gone before the cluster is");

    stack.stop().await;
    Ok(())
}

/// Messages that are not reconcile CloudEvents are moved to `<queue>.dead-letter` with the reason,
/// counted, and do not stop the adapter: a cluster created after them still lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_the_adapter_carries_on() -> Result<()> {
    // The one full stack without authentication (every other one runs JWT on, as deployed).
    let stack = Stack::start_with(StackOptions { jwt_off: true, ..Default::default() }).await?;
    let cfg = stack.broker()?;
    let conn = cfg.connect("hyperfleet-e2e-poison").await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let ce = "application/cloudevents+json";
    let unknown_type = br#"{"specversion":"1.0","id":"x1","source":"elsewhere","type":"com.example.other","data":{}}"#;
    let no_id = br#"{"specversion":"1.0","id":"x2","source":"s","type":"com.redhat.hyperfleet.cluster.reconcile","datacontenttype":"application/json","data":{"kind":"Cluster","href":"/x","generation":1}}"#;
    let poison: [(&[u8], Option<&str>); 5] = [
        (b"definitely not json", None),
        (br#"{"hello": "world"}"#, Some(ce)),
        (b"<xml/>", Some("application/xml")),
        (unknown_type, Some(ce)),
        (no_id, Some(ce)),
    ];
    // Fault scenario 11: the poison sits in the middle of a batch.
    let mut batch = stack.create_clusters("before-poison", 5).await?;
    for (body, content_type) in poison {
        let mut props = BasicProperties::default().with_delivery_mode(2);
        if let Some(ct) = content_type {
            props = props.with_content_type(ct.into());
        }
        let confirm = ch
            .basic_publish(
                cfg.exchange.as_str().into(),
                "cluster.reconcile".into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await?
            .await?;
        assert!(confirm.is_ack(), "broker confirmed the poison message");
    }

    batch.extend(stack.create_clusters("after-poison", 5).await?);
    let name = format!("poison-{}", stack.tag);
    let created = stack
        .post_cluster(json!({"kind": "Cluster", "name": name, "spec": {"region": "local"}, "labels": {"team": "e2e"}}))
        .await?;
    assert_eq!(created["generation"], 1);
    let id = created["id"].as_str().context("id in create response")?.to_string();
    wait_landed(&stack, &id).await?;
    stack.wait_all_reconciled(&batch, LAND).await?;

    let dlq = format!("{}.dead-letter", stack.queue);
    let mut reasons = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while reasons.len() < 5 {
        match ch.basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true }).await? {
            Some(msg) => {
                let headers = msg.delivery.properties.headers().clone().unwrap_or_default();
                assert!(headers.inner().contains_key("x-hyperfleet-dead-letter-reason"), "{headers:?}");
                reasons.push(match headers.inner().get("x-hyperfleet-dead-letter-code") {
                    Some(AMQPValue::LongString(s)) => s.to_string(),
                    other => format!("{other:?}"),
                });
            }
            None if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            None => anyhow::bail!("only {reasons:?} dead-lettered within 30s\n{}", stack.logs()),
        }
    }
    reasons.sort();
    assert_eq!(reasons, ["content_type", "invalid_data", "not_cloudevent", "not_cloudevent", "unknown_type"]);

    let metrics = stack.adapter.metrics().await?;
    assert!(
        metrics.lines().any(|l| l.starts_with("hyperfleet_adapter_dead_letters_total{reason=\"not_cloudevent\"} 2")),
        "dead letters are counted:\n{metrics}"
    );

    conn.close(200, "done".into()).await?;
    stack.stop().await;
    Ok(())
}
