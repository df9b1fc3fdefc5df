//! Infrastructure outages under the running services (fault scenarios 8 and 9): RabbitMQ or
//! PostgreSQL stopped and restarted while clusters are being created. The services keep running and
//! reconnect, report not-ready meanwhile, and every cluster created before, during and after the
//! outage lands — nothing lost.
//!
//! These stop the shared local RabbitMQ / PostgreSQL, so they are alone in their binary (cargo runs
//! test binaries one at a time), take turns, and start what they stopped whatever happens.

use std::{process::Command, time::Duration};

use anyhow::{Result, bail};
use hyperfleet_tests::{ApiStack, LocalEnv, Stack, StackOptions, eventually, workspace_root};
use serde_json::json;

fn local_env(env: &LocalEnv, action: &str) -> Result<()> {
    let out = Command::new(workspace_root().join("tests/env/run"))
        .arg(action)
        .env("HYPERFLEET_LOCAL_DIR", env.get("HF_LOCAL_DIR")?)
        .output()?;
    if !out.status.success() {
        bail!(
            "tests/env/run {action}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The tests here take turns: each stops the one broker.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `tests/env/run <action>` when dropped (restarts what a test stopped).
struct Restart(LocalEnv, &'static str);
impl Drop for Restart {
    fn drop(&mut self) {
        let _ = local_env(&self.0, self.1);
    }
}

#[tokio::test]
async fn the_services_survive_a_broker_restart_and_every_cluster_lands() -> Result<()> {
    let _turn = TURN.lock().await;
    let stack = Stack::start_with(StackOptions {
        sentinel: vec![("HYPERFLEET_MAX_AGE_NOT_READY", "1h".into())],
        ..Default::default()
    })
    .await?;
    // Scenario 8: 50 clusters, the broker down for part of the batch.
    let mut ids = stack.create_clusters("before", 20).await?;
    let guard = Restart(stack.env.clone(), "mq-start");
    local_env(&stack.env, "mq-stop")?;
    ids.extend(stack.create_clusters("during", 20).await?);
    local_env(&stack.env, "mq-start")?;
    drop(guard);
    ids.extend(stack.create_clusters("after", 10).await?);
    stack.wait_all_reconciled(&ids, Duration::from_secs(120)).await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_services_survive_a_database_restart_and_every_cluster_lands() -> Result<()> {
    let _turn = TURN.lock().await;
    // Scenario 9, with a short re-announce age so clusters whose reports failed meanwhile are retried.
    let stack = Stack::start_with(StackOptions {
        sentinel: vec![("HYPERFLEET_MAX_AGE_NOT_READY", "2s".into())],
        ..Default::default()
    })
    .await?;
    let mut ids = stack.create_clusters("before", 10).await?;
    let readyz = format!("http://127.0.0.1:{}/readyz", stack.api.health_port);
    let guard = Restart(stack.env.clone(), "pg-start");
    local_env(&stack.env, "pg-stop")?;
    eventually(Duration::from_secs(30), || async { Ok((reqwest::get(&readyz).await?.status() == 503).then_some(())) })
        .await?;
    local_env(&stack.env, "pg-start")?;
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
    let _turn = TURN.lock().await;
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

    let guard = Restart(stack.env.clone(), "mq-start");
    local_env(&stack.env, "mq-stop")?;
    let readyz = format!("http://127.0.0.1:{}/readyz", sentinel.health_port);
    eventually(Duration::from_secs(30), || async { Ok((reqwest::get(&readyz).await?.status() == 503).then_some(())) })
        .await?;
    for i in 0..5 {
        ids.push(stack.create_cluster(&format!("during-{i}"), json!({})).await?);
    }
    local_env(&stack.env, "mq-start")?;
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
