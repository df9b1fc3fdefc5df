//! The `hyperfleet-api` binary against the local TLS PostgreSQL: the chart's `--db-*-file` flags with
//! `verify-full`, a clear start error for a CA that does not match, concurrent `migrate` runs, the
//! root document and the metrics of reference §2.12.

use std::time::Duration;

use anyhow::{Context, Result};
use hyperfleet_tests::{LocalEnv, Service, TestDb, free_port, migrate};
use serde_json::{Value, json};

/// Writes the chart's secret files (`db.host`, …) into a fresh directory.
fn secret_files(env: &LocalEnv, db: &TestDb) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("hyperfleet-db-secrets-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    for (file, value) in [
        ("db.host", env.get("HF_DB_HOST")?),
        ("db.port", env.get("HF_DB_PORT")?),
        ("db.user", env.get("HF_DB_USER")?),
        ("db.password", env.get("HF_DB_PASSWORD")?),
        ("db.name", &db.name),
    ] {
        std::fs::write(dir.join(file), format!("{value}\n"))?;
    }
    Ok(dir)
}

fn file_args(dir: &std::path::Path, ca: &str) -> Vec<String> {
    let mut args = vec!["serve".to_string()];
    for (flag, file) in [
        ("--db-host-file", "db.host"),
        ("--db-port-file", "db.port"),
        ("--db-user-file", "db.user"),
        ("--db-password-file", "db.password"),
        ("--db-name-file", "db.name"),
    ] {
        args.push(flag.into());
        args.push(dir.join(file).display().to_string());
    }
    args.extend(["--db-sslmode".into(), "verify-full".into(), "--db-rootcert-file".into(), ca.into()]);
    args
}

#[tokio::test]
async fn serves_with_the_charts_db_files_over_verify_full_and_exports_metrics() -> Result<()> {
    let env = LocalEnv::load()?;
    let db = TestDb::create(&env).await?;
    migrate(&env, &db).await?;
    let dir = secret_files(&env, &db)?;
    let port = free_port();
    let args = file_args(&dir, env.get("HF_DB_CA_FILE")?);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let vars = [("HYPERFLEET_SERVER_HOST", "127.0.0.1".to_string()), ("HYPERFLEET_SERVER_PORT", port.to_string())];
    let mut api = Service::start(&env, "server-files", "api", &args, &vars)?;
    api.wait_ready(Duration::from_secs(30)).await?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    let body = json!({"kind": "Cluster", "name": "from-files", "spec": {}});
    let created = http.post(format!("{base}/api/hyperfleet/v1/clusters")).json(&body).send().await?;
    assert_eq!(created.status(), 201, "{}", api.log_tail());
    let id = created.json::<Value>().await?["id"].as_str().context("id")?.to_string();
    let got = http.get(format!("{base}/api/hyperfleet/v1/clusters/{id}")).send().await?;
    assert_eq!(got.status(), 200);
    let root: Value = http.get(format!("{base}/api/hyperfleet")).send().await?.json().await?;
    assert_eq!(root["id"], "hyperfleet");

    let metrics = api.metrics().await?;
    for expected in [
        "hyperfleet_api_build_info{component=\"api\"",
        "hyperfleet_api_requests_total{component=\"api\"",
        "path=\"/api/hyperfleet/v1/clusters/-\"",
        "code=\"201\"",
        "hyperfleet_api_request_duration_seconds_bucket{",
        "le=\"0.005\"",
        "hyperfleet_api_resource_pending_reconciliation{resource_type=\"clusters\"} 1",
        "hyperfleet_api_resource_pending_reconciliation{resource_type=\"nodepools\"} 0",
        "hyperfleet_api_resource_pending_reconciliation_stuck{resource_type=\"clusters\"} 0",
        "hyperfleet_api_resource_pending_reconciliation_stuck_duration_seconds{resource_type=\"clusters\"}",
        "hyperfleet_db_connections_open ",
        "hyperfleet_db_connections_in_use ",
        "hyperfleet_db_query_duration_seconds_bucket{query=\"reconciliation_stats\"",
    ] {
        assert!(metrics.contains(expected), "metrics lack {expected}:\n{metrics}");
    }
    let log = std::fs::read_to_string(&api.log)?;
    assert!(!log.contains(env.get("HF_DB_PASSWORD")?), "the database password must never be logged");
    api.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    db.drop_db().await;
    Ok(())
}

#[tokio::test]
async fn a_database_ca_that_does_not_match_stops_the_start_with_a_clear_error() -> Result<()> {
    let env = LocalEnv::load()?;
    let db = TestDb::create(&env).await?;
    let dir = secret_files(&env, &db)?;
    let args = file_args(&dir, env.get("HF_WRONG_CA_FILE")?);
    let out = tokio::process::Command::new(env.bin("hyperfleet-api")?)
        .args(&args)
        .env_clear()
        .env("HYPERFLEET_SERVER_PORT", free_port().to_string())
        .env("HYPERFLEET_HEALTH_PORT", free_port().to_string())
        .env("HYPERFLEET_METRICS_PORT", free_port().to_string())
        .env("HYPERFLEET_LOG_FORMAT", "text")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out).await.context("the API should exit, not wait")??;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("cannot connect to PostgreSQL at 127.0.0.1:"), "{text}");
    assert!(text.to_lowercase().contains("certificate") || text.contains("UnknownIssuer"), "{text}");
    assert!(!text.contains(env.get("HF_DB_PASSWORD")?), "no password in the error");
    let _ = std::fs::remove_dir_all(&dir);
    db.drop_db().await;
    Ok(())
}

#[tokio::test]
async fn concurrent_migrations_both_succeed() -> Result<()> {
    let env = LocalEnv::load()?;
    let db = TestDb::create(&env).await?;
    let (a, b, c) = tokio::join!(migrate(&env, &db), migrate(&env, &db), migrate(&env, &db));
    a?;
    b?;
    c?;
    migrate(&env, &db).await.context("a re-run is a no-op")?;
    db.drop_db().await;
    Ok(())
}

#[tokio::test]
async fn the_charts_enable_jwt_is_honoured_and_health_and_metrics_stay_open() -> Result<()> {
    let env = LocalEnv::load()?;
    let db = TestDb::create(&env).await?;
    migrate(&env, &db).await?;
    let jwks = std::env::temp_dir().join(format!("hyperfleet-jwks-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&jwks, r#"{"keys": []}"#)?;
    let port = free_port();
    let mut vars = hyperfleet_tests::api_db_vars(&env, &db)?;
    vars.extend([
        ("HYPERFLEET_SERVER_HOST", "127.0.0.1".to_string()),
        ("HYPERFLEET_SERVER_PORT", port.to_string()),
        ("ENABLE_JWT", "true".to_string()),
        ("HYPERFLEET_JWT_ISSUER", "https://idp.example.test/".to_string()),
        ("HYPERFLEET_JWT_AUDIENCE", "hyperfleet".to_string()),
    ]);
    let jwks_arg = jwks.display().to_string();
    let mut api = Service::start(&env, "server-jwt", "api", &["serve", "--jwks-file", &jwks_arg], &vars)?;
    api.wait_ready(Duration::from_secs(30)).await?;
    let base = format!("http://127.0.0.1:{port}/api/hyperfleet/v1");
    let resp = reqwest::get(format!("{base}/clusters")).await?;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.json::<Value>().await?["code"], "HYPERFLEET-AUT-001");
    assert_eq!(reqwest::get(format!("{base}/openapi")).await?.status(), 200, "the document is public");
    assert_eq!(reqwest::get(format!("http://127.0.0.1:{}/readyz", api.health_port)).await?.status(), 200);
    assert!(api.metrics().await?.contains("hyperfleet_api_requests_total"), "metrics need no token");
    api.stop().await;

    // Switched on without keys, or without an issuer or audience to check: a clear refusal to start.
    for (extra, why) in [
        (vec![], "jwt.enabled needs an issuer"),
        (vec![("JWKS_URL", "https://idp.example.test/jwks")], "has no issuer"),
        (
            vec![("JWKS_URL", "https://idp.example.test/jwks"), ("HYPERFLEET_JWT_ISSUER", "https://idp.example.test/")],
            "has no audience",
        ),
    ] {
        let out = tokio::process::Command::new(env.bin("hyperfleet-api")?)
            .arg("serve")
            .env_clear()
            .env("ENABLE_JWT", "true")
            .envs(extra)
            .output()
            .await?;
        let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(text.contains(why), "{why}: {text}");
    }
    let _ = std::fs::remove_file(&jwks);
    db.drop_db().await;
    Ok(())
}
