//! The OpenAPI document: valid OpenAPI 3.1 (checked by openapi-spec-validator), describing exactly
//! the routes the server serves — every documented operation answers, every other method on a
//! documented path is 405.

use std::collections::BTreeSet;

use crate::support::{app, header};
use anyhow::{Context, Result, bail};
use axum::http::{Method, StatusCode};
use hyperfleet_api::{API_PREFIX, http};
use hyperfleet_tests::LocalEnv;
use serde_json::Value;

#[tokio::test]
async fn the_document_is_valid_openapi_3_1_and_matches_the_router() -> Result<()> {
    let app = app().await?;
    let (status, headers, doc) = app.call(Method::GET, &format!("{API_PREFIX}/openapi"), None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3.1"), "{}", doc["openapi"]);

    // Valid according to an independent validator.
    let env = LocalEnv::load()?;
    let file = std::env::temp_dir().join(format!("hyperfleet-openapi-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, serde_json::to_vec_pretty(&doc)?)?;
    let out = std::process::Command::new(env.get("HF_OPENAPI_VALIDATOR")?)
        .args(["--schema", "3.1"])
        .arg(&file)
        .output()
        .context("run openapi-spec-validator (installed by tests/env/run infra)")?;
    let _ = std::fs::remove_file(&file);
    if !out.status.success() {
        bail!("invalid OpenAPI: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }

    // The documented paths are exactly the routed ones.
    let paths = doc["paths"].as_object().context("paths")?;
    let documented: BTreeSet<String> = paths.keys().cloned().collect();
    let mut routed: BTreeSet<String> = http::routes().iter().map(|(p, _)| format!("{API_PREFIX}{p}")).collect();
    routed.extend([format!("{API_PREFIX}/openapi"), format!("{API_PREFIX}/openapi.html"), "/api/hyperfleet".into()]);
    assert_eq!(documented, routed);

    // Every documented operation is served; every other method is 405 with an Allow header.
    let id = uuid::Uuid::now_v7().to_string();
    for (path, item) in paths {
        let uri = path.replace("{cluster_id}", &id).replace("{id}", &id);
        for method in [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            let documented = item.get(method.as_str().to_lowercase()).is_some();
            let body = matches!(method, Method::POST | Method::PUT | Method::PATCH).then_some("{}");
            let (status, headers, v) = app.call(method.clone(), &uri, body).await?;
            if documented {
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is documented but not served");
                assert_ne!(v["code"], "HYPERFLEET-NTF-000", "{method} {path} is documented but not routed");
                let code = status.as_u16().to_string();
                let responses = &item[method.as_str().to_lowercase()]["responses"];
                assert!(
                    responses.get(&code).is_some() || responses.get("default").is_some(),
                    "{method} {path} answered {code}, which is not documented"
                );
            } else {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is served but not documented");
                assert!(header(&headers, "allow").is_some(), "405 names the allowed methods");
            }
        }
    }

    // Every schema reference resolves.
    let text = doc.to_string();
    for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap_or_default();
        assert!(doc["components"]["schemas"].get(name).is_some(), "dangling $ref {name}");
    }

    let (status, headers, _) = app.call(Method::GET, &format!("{API_PREFIX}/openapi.html"), None).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(header(&headers, "content-type").unwrap_or("").starts_with("text/html"));
    let (status, _, root) = app.call(Method::GET, "/api/hyperfleet", None).await?;
    assert_eq!((status, &root["id"], &root["kind"]), (StatusCode::OK, &Value::from("hyperfleet"), &Value::from("API")));
    assert_eq!(root["version"], env!("CARGO_PKG_VERSION"));
    app.done().await;
    Ok(())
}

/// A property-based run of the served document against the server (schemathesis, installed by
/// `tests/env/run infra`): requests generated from every documented operation — valid and invalid
/// bodies, queries and paths, boundary values — and every answer checked against the document: no
/// 5xx, only documented status codes and content types, bodies that match their schemas. Paths
/// address a real cluster and nodepool (except DELETE, whose generated ids miss), and `watch` stays
/// false (a change feed never ends; `feed.rs` tests it). Bounded: a fixed number of cases per
/// operation, a fixed seed and a time budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_get_answers_the_document_describes() -> Result<()> {
    let env = LocalEnv::load()?;
    let app = app().await?;
    let (status, _, c) =
        app.call(Method::POST, crate::support::CLUSTERS, Some(&crate::support::cluster("fuzzed"))).await?;
    assert_eq!(status, StatusCode::CREATED, "{c}");
    let cluster = c["id"].as_str().context("cluster id")?.to_string();
    let nodepool = serde_json::json!({"kind": "NodePool", "name": "fuzzed", "spec": {}}).to_string();
    let (status, _, n) =
        app.call(Method::POST, &format!("{}/{cluster}/nodepools", crate::support::CLUSTERS), Some(&nodepool)).await?;
    assert_eq!(status, StatusCode::CREATED, "{n}");
    let nodepool = n["id"].as_str().context("nodepool id")?.to_string();
    let mut app = app;
    let served = app.serve()?;
    let scratch = std::env::temp_dir().join(format!("hyperfleet-schemathesis-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&scratch)?;
    let config = scratch.join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            r#"[parameters]
watch = false

[[operations]]
include-path-regex = '^{API_PREFIX}/clusters/\{{id\}}'
exclude-method = "DELETE"
parameters = {{ id = "{cluster}" }}

[[operations]]
include-path-regex = 'nodepools/\{{id\}}'
exclude-method = "DELETE"
parameters = {{ id = "{nodepool}", cluster_id = "{cluster}" }}

[[operations]]
include-path-regex = '\{{cluster_id\}}/nodepools$'
parameters = {{ cluster_id = "{cluster}" }}
"#
        ),
    )?;
    // One worker: two make CPython 3.11's parser race in hypothesis ("AST constructor recursion
    // depth mismatch").
    let out = tokio::process::Command::new(env.get("HF_SCHEMATHESIS")?)
        .current_dir(&scratch)
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{}{API_PREFIX}/openapi", served.url)])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing", "--max-examples", "30", "--max-time", "60"])
        .args(["--seed", "20261202", "--generation-database", "none", "--request-timeout", "10"])
        .args(["--workers", "1", "--no-color", "--wait-for-schema", "10"])
        .kill_on_drop(true)
        .output()
        .await
        .context("run schemathesis (installed by tests/env/run infra)")?;
    let _ = std::fs::remove_dir_all(&scratch);
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    drop(served);
    app.done().await;
    assert!(out.status.success(), "schemathesis found answers the document does not describe:\n{report}");
    let cases = report.lines().skip_while(|l| !l.starts_with("Test cases:")).nth(1).unwrap_or_default().trim();
    println!("schemathesis: {cases}");
    Ok(())
}
