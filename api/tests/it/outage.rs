//! PostgreSQL stopped under a running API: `/readyz` turns 503 and the API answers 503
//! problem+json; once PostgreSQL is back, both recover without restarting the API.
//!
//! This stops the shared local PostgreSQL, so it takes the local infrastructure alone (waiting for
//! the tests that use it, holding new ones back) and restarts PostgreSQL whatever happens.

use std::time::Duration;

use anyhow::Result;
use hyperfleet_tests::{
    LocalEnv, RunOnDrop, Service, TestDb, api_db_vars, env_run, eventually, free_port, migrate, take_infra_alone,
};
use serde_json::json;

#[tokio::test]
async fn readiness_follows_the_database_and_recovers_without_a_restart() -> Result<()> {
    let _alone = take_infra_alone().await?;
    let env = LocalEnv::load()?;
    let db = TestDb::create(&env).await?;
    migrate(&env, &db).await?;
    let port = free_port();
    let mut vars = api_db_vars(&env, &db)?;
    vars.extend([("HYPERFLEET_SERVER_HOST", "127.0.0.1".into()), ("HYPERFLEET_SERVER_PORT", port.to_string())]);
    vars.push(("HYPERFLEET_DATABASE_ACQUIRE_TIMEOUT", "1s".into()));
    let mut api = Service::start(&env, "outage", "api", &["serve"], &vars)?;
    api.wait_ready(Duration::from_secs(30)).await?;
    let http = reqwest::Client::new();
    let readyz = format!("http://127.0.0.1:{}/readyz", api.health_port);
    let clusters = format!("http://127.0.0.1:{port}/api/hyperfleet/v1/clusters");

    let guard = RunOnDrop(env.clone(), "pg-start");
    env_run(&env, "pg-stop")?;
    let reason = eventually(Duration::from_secs(30), || async {
        let r = http.get(&readyz).send().await?;
        Ok((r.status() == 503).then_some(r.json::<serde_json::Value>().await?))
    })
    .await?;
    assert_eq!(reason["status"], "not_ready");
    assert!(reason["reason"].as_str().unwrap_or("").contains("database"), "{reason}");
    let healthz = http.get(format!("http://127.0.0.1:{}/healthz", api.health_port)).send().await?;
    assert_eq!(healthz.status(), 200, "liveness does not depend on the database");
    let r = http.get(&clusters).send().await?;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.json::<serde_json::Value>().await?["code"], "HYPERFLEET-SVC-001");

    env_run(&env, "pg-start")?;
    drop(guard);
    eventually(Duration::from_secs(30), || async {
        Ok((http.get(&readyz).send().await?.status() == 200).then_some(()))
    })
    .await?;
    let body = json!({"kind": "Cluster", "name": "after-outage", "spec": {}});
    let created = http.post(&clusters).json(&body).send().await?;
    assert_eq!(created.status(), 201, "{}", api.log_tail());
    api.stop().await;
    db.drop_db().await;
    Ok(())
}
