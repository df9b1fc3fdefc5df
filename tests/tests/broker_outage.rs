//! RabbitMQ stopped and restarted under the running services: the sentinel and the adapter keep
//! running and reconnect, the sentinel reports not-ready meanwhile, and every cluster created
//! before, during and after the outage is announced, confirmed and lands.
//!
//! This stops the shared local RabbitMQ, so these tests are alone in their binary (cargo runs test
//! binaries one at a time) and starts RabbitMQ again whatever happens.

use std::{process::Command, time::Duration};

use anyhow::{Result, bail};
use hyperfleet_tests::{ApiStack, LocalEnv, Stack, StackOptions, eventually, workspace_root};
use serde_json::json;

fn local_mq(env: &LocalEnv, action: &str) -> Result<()> {
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

struct Restart(LocalEnv);
impl Drop for Restart {
    fn drop(&mut self) {
        let _ = local_mq(&self.0, "mq-start");
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
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(stack.create_cluster(&format!("before-{i}")).await?);
    }
    let guard = Restart(stack.env.clone());
    local_mq(&stack.env, "mq-stop")?;
    for i in 0..5 {
        ids.push(stack.create_cluster(&format!("during-{i}")).await?);
    }
    local_mq(&stack.env, "mq-start")?;
    drop(guard);
    for i in 0..5 {
        ids.push(stack.create_cluster(&format!("after-{i}")).await?);
    }
    for id in &ids {
        stack.wait_reconciled(id, 1, Duration::from_secs(90)).await?;
    }
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

    let guard = Restart(stack.env.clone());
    local_mq(&stack.env, "mq-stop")?;
    let readyz = format!("http://127.0.0.1:{}/readyz", sentinel.health_port);
    eventually(Duration::from_secs(30), || async { Ok((reqwest::get(&readyz).await?.status() == 503).then_some(())) })
        .await?;
    for i in 0..5 {
        ids.push(stack.create_cluster(&format!("during-{i}"), json!({})).await?);
    }
    local_mq(&stack.env, "mq-start")?;
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
