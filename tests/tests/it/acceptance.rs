//! Acceptance scenarios 2–7 (issue "End-to-end acceptance and fault suite") across the three real
//! services: each test has its own database, exchange, queue and clusters, and removes them.
//! Scenario 1 is `e2e.rs`; the faults (8–12) are `outages.rs`, `adapter.rs` and `e2e.rs`.

use std::time::Duration;

use anyhow::{Context, Result};
use hyperfleet_tests::{Stack, StackOptions, condition, eventually, metric_sum};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use serde_json::{Value, json};

const LAND: Duration = Duration::from_secs(90);

async fn send(req: reqwest::RequestBuilder) -> Result<(u16, Value)> {
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

fn cluster_url(stack: &Stack, id: &str) -> String {
    format!("{}/api/hyperfleet/v1/clusters/{id}", stack.api_url)
}

async fn namespace(stack: &Stack, id: &str) -> Result<Option<Namespace>> {
    Ok(Api::<Namespace>::all(stack.env.kube().await?).get_opt(id).await?)
}

#[tokio::test]
async fn scenario_2_three_rapid_patches_converge_at_generation_4() -> Result<()> {
    let stack = Stack::start().await?;
    let id = stack.create_cluster("patched-thrice").await?;
    stack.wait_reconciled(&id, 1, LAND).await?;
    for n in 1..=3 {
        let (status, c) =
            send(stack.client().patch(cluster_url(&stack, &id)).json(&json!({"labels": {"round": n.to_string()}})))
                .await?;
        assert_eq!((status, c["generation"].as_i64()), (200, Some(1 + n)));
    }
    let c = stack.wait_reconciled(&id, 4, LAND).await?;
    assert_eq!(condition(&c, "LandingZoneSuccessful")["observed_generation"], 4);
    let ns = namespace(&stack, &id).await?.context("namespace")?;
    let generation = ns.metadata.annotations.unwrap_or_default().get("hyperfleet.io/generation").cloned();
    assert_eq!(generation.as_deref(), Some("4"));
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn scenario_3_delete_is_finalized_by_the_adapter() -> Result<()> {
    let stack = Stack::start().await?;
    let id = stack.create_cluster("deleted").await?;
    stack.wait_reconciled(&id, 1, LAND).await?;
    let url = cluster_url(&stack, &id);
    let (status, deleted) = send(stack.client().delete(&url)).await?;
    assert_eq!(status, 202);
    assert!(deleted["deleted_time"].is_string(), "{deleted}");
    assert_eq!(deleted["generation"], 2);
    let (status, again) = send(stack.client().delete(&url)).await?;
    assert_eq!((status, &again["generation"]), (202, &json!(2)), "re-DELETE is idempotent");
    let (status, v) = send(stack.client().patch(&url).json(&json!({"labels": {"late": "yes"}}))).await?;
    assert_eq!((status, v["code"].as_str()), (409, Some("HYPERFLEET-CNF-003")));
    let pool = json!({"kind": "NodePool", "name": "too-late", "spec": {}});
    let (status, v) = send(stack.client().post(format!("{url}/nodepools")).json(&pool)).await?;
    assert_eq!((status, v["code"].as_str()), (409, Some("HYPERFLEET-CNF-003")));
    let (status, finalizing) = stack.get(&format!("clusters/{id}")).await?;
    assert!(status == 200 || status == 404, "readable while finalizing (or already gone): {status}");
    if status == 200 {
        assert!(finalizing["deleted_time"].is_string());
    }
    stack.wait_gone(&id, LAND).await?;
    assert!(namespace(&stack, &id).await?.is_none(), "the Namespace is gone before the cluster is");
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn scenario_4_a_name_is_reusable_after_hard_delete() -> Result<()> {
    let stack = Stack::start().await?;
    let first = stack.create_cluster("reused").await?;
    stack.wait_reconciled(&first, 1, LAND).await?;
    assert_eq!(send(stack.client().delete(cluster_url(&stack, &first))).await?.0, 202);
    stack.wait_gone(&first, LAND).await?;
    let second = stack.create_cluster("reused").await?;
    assert_ne!(first, second, "a new id");
    let c = stack.wait_reconciled(&second, 1, LAND).await?;
    assert_eq!((c["name"].as_str(), c["generation"].as_i64()), (Some("reused"), Some(1)));
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn scenario_5_force_delete_while_the_adapter_is_down() -> Result<()> {
    let mut stack = Stack::start().await?;
    let id = stack.create_cluster("forced").await?;
    stack.wait_reconciled(&id, 1, LAND).await?;
    let url = cluster_url(&stack, &id);
    let pool = json!({"kind": "NodePool", "name": "pool-1", "spec": {}});
    let (status, np) = send(stack.client().post(format!("{url}/nodepools")).json(&pool)).await?;
    assert_eq!(status, 201);
    let np_id = np["id"].as_str().context("nodepool id")?.to_string();
    stack.kill_adapter().await?;
    assert_eq!(send(stack.client().delete(&url)).await?.0, 202);
    // Nobody reports Finalized: the cluster stays, finalizing, across several sentinel passes.
    let passes = "hyperfleet_sentinel_poll_duration_seconds_count";
    let start = metric_sum(&stack.sentinel.metrics().await?, passes);
    eventually(LAND, || async {
        Ok((metric_sum(&stack.sentinel.metrics().await?, passes) >= start + 3.0).then_some(()))
    })
    .await?;
    let (status, c) = stack.get(&format!("clusters/{id}")).await?;
    assert_eq!(status, 200);
    assert!(c["deleted_time"].is_string());
    let (status, v) =
        send(stack.client().post(format!("{url}/force-delete")).json(&json!({"reason": "adapter decommissioned"})))
            .await?;
    assert_eq!(status, 204, "{v}");
    assert_eq!(stack.get(&format!("clusters/{id}")).await?.0, 404);
    assert_eq!(stack.get(&format!("nodepools/{np_id}")).await?.0, 404);
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn scenario_6_nodepools_list_flat_and_nested_and_cascade() -> Result<()> {
    let stack = Stack::start().await?;
    let id = stack.create_cluster("with-pools").await?;
    let url = cluster_url(&stack, &id);
    let mut pools = Vec::new();
    for name in ["workers", "gpus"] {
        let (status, np) = send(
            stack
                .client()
                .post(format!("{url}/nodepools"))
                .json(&json!({"kind": "NodePool", "name": name, "spec": {"replicas": 2}})),
        )
        .await?;
        assert_eq!(status, 201, "{np}");
        assert_eq!(np["owner_references"]["id"], id.as_str());
        pools.push(np["id"].as_str().context("id")?.to_string());
    }
    let (_, nested) = stack.get(&format!("clusters/{id}/nodepools")).await?;
    let (_, flat) = stack.get("nodepools").await?;
    assert_eq!((nested["total"].as_i64(), flat["total"].as_i64()), (Some(2), Some(2)));
    let (status, one) = stack.get(&format!("nodepools/{}", pools[0])).await?;
    assert_eq!(
        (status, one["href"].as_str()),
        (200, Some(format!("/api/hyperfleet/v1/clusters/{id}/nodepools/{}", pools[0]).as_str()))
    );
    stack.wait_reconciled(&id, 1, LAND).await?;
    assert_eq!(send(stack.client().delete(&url)).await?.0, 202);
    for np in &pools {
        assert_eq!(stack.get(&format!("nodepools/{np}")).await?.0, 404, "cascade removed nodepool {np}");
    }
    stack.wait_gone(&id, LAND).await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn scenario_7_an_adapter_down_at_creation_converges_once_it_starts() -> Result<()> {
    let mut stack = Stack::start_with(StackOptions {
        sentinel: vec![("HYPERFLEET_MAX_AGE_NOT_READY", "1s".into())],
        ..Default::default()
    })
    .await?;
    stack.kill_adapter().await?;
    let id = stack.create_cluster("waiting").await?;
    let published = "hyperfleet_sentinel_events_published_total";
    eventually(LAND, || async { Ok((metric_sum(&stack.sentinel.metrics().await?, published) >= 2.0).then_some(())) })
        .await?;
    let (_, c) = stack.get(&format!("clusters/{id}")).await?;
    assert_eq!(condition(&c, "Reconciled")["status"], "False");
    let (_, statuses) = stack.get(&format!("clusters/{id}/statuses")).await?;
    assert_eq!(statuses["total"], 0, "nobody reported");
    stack.start_adapter().await?;
    stack.wait_reconciled(&id, 1, LAND).await?;
    stack.stop().await;
    Ok(())
}
