//! Infrastructure outages under the running services (fault scenarios 8 and 9): RabbitMQ or
//! PostgreSQL stopped and restarted while clusters are being created. The services keep running and
//! reconnect, report not-ready meanwhile, and every cluster created before, during and after the
//! outage lands — nothing lost.
//!
//! These stop the shared local RabbitMQ / PostgreSQL, so each takes the local infrastructure alone
//! (waiting for the tests that use it, holding new ones back) and starts what it stopped whatever
//! happens.

use std::time::Duration;

use anyhow::Result;
use hyperfleet_tests::{ApiStack, RunOnDrop, Stack, StackOptions, env_run, eventually, take_infra_alone};
use serde_json::json;

#[tokio::test]
async fn the_services_survive_a_broker_restart_and_every_cluster_lands() -> Result<()> {
    let _alone = take_infra_alone().await?;
    let stack = Stack::start_with(StackOptions {
        sentinel: vec![("HYPERFLEET_MAX_AGE_NOT_READY", "1h".into())],
        ..Default::default()
    })
    .await?;
    // Scenario 8: 50 clusters, the broker down for part of the batch.
    let mut ids = stack.create_clusters("before", 20).await?;
    let guard = RunOnDrop(stack.env.clone(), "mq-start");
    env_run(&stack.env, "mq-stop")?;
    ids.extend(stack.create_clusters("during", 20).await?);
    env_run(&stack.env, "mq-start")?;
    drop(guard);
    ids.extend(stack.create_clusters("after", 10).await?);
    stack.wait_all_reconciled(&ids, Duration::from_secs(120)).await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_services_survive_a_database_restart_and_every_cluster_lands() -> Result<()> {
    let _alone = take_infra_alone().await?;
    // Scenario 9, with a short re-announce age so clusters whose reports failed meanwhile are retried.
    let stack = Stack::start_with(StackOptions {
        sentinel: vec![("HYPERFLEET_MAX_AGE_NOT_READY", "2s".into())],
        ..Default::default()
    })
    .await?;
    let mut ids = stack.create_clusters("before", 10).await?;
    let readyz = format!("http://127.0.0.1:{}/readyz", stack.api.health_port);
    let guard = RunOnDrop(stack.env.clone(), "pg-start");
    env_run(&stack.env, "pg-stop")?;
    eventually(Duration::from_secs(30), || async { Ok((reqwest::get(&readyz).await?.status() == 503).then_some(())) })
        .await?;
    env_run(&stack.env, "pg-start")?;
    drop(guard);
    eventually(Duration::from_secs(60), || async { Ok((reqwest::get(&readyz).await?.status() == 200).then_some(())) })
        .await?;
    ids.extend(stack.create_clusters("after", 10).await?);
    stack.wait_all_reconciled(&ids, Duration::from_secs(120)).await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_sentinel_survives_a_broker_restart_and_announces_everything() -> Result<()> {
    let _alone = take_infra_alone().await?;
    let stack = ApiStack::start().await?;
    let mut tap = stack.durable_tap("#").await?;
    let sentinel = stack.sentinel("outage", &[("HYPERFLEET_MAX_AGE_NOT_READY", "1h".into())]).await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(stack.create_cluster(&format!("before-{i}"), json!({})).await?);
    }
    for id in &ids {
        eventually(Duration::from_secs(30), || async { Ok((tap.count(id).await? > 0).then_some(())) }).await?;
    }

    let guard = RunOnDrop(stack.env.clone(), "mq-start");
    env_run(&stack.env, "mq-stop")?;
    let readyz = format!("http://127.0.0.1:{}/readyz", sentinel.health_port);
    eventually(Duration::from_secs(30), || async { Ok((reqwest::get(&readyz).await?.status() == 503).then_some(())) })
        .await?;
    for i in 0..5 {
        ids.push(stack.create_cluster(&format!("during-{i}"), json!({})).await?);
    }
    env_run(&stack.env, "mq-start")?;
    drop(guard);
    tap.reconnect("#").await?;
    for i in 0..5 {
        ids.push(stack.create_cluster(&format!("after-{i}"), json!({})).await?);
    }
    for id in &ids {
        eventually(Duration::from_secs(60), || async { Ok((tap.count(id).await? > 0).then_some(())) })
            .await
            .map_err(|e| anyhow::anyhow!("{id} never announced: {e}\n{}", sentinel.log_tail()))?;
    }
    eventually(Duration::from_secs(30), || async { Ok((reqwest::get(&readyz).await?.status() == 200).then_some(())) })
        .await?;
    let metrics = sentinel.metrics().await?;
    assert!(hyperfleet_tests::metric_sum(&metrics, "hyperfleet_sentinel_broker_errors_total") >= 1.0, "{metrics}");
    sentinel.stop().await;
    tap.close().await;
    stack.stop().await;
    Ok(())
}
