//! The API's HTTP contract against a real PostgreSQL (a fresh database per test, migrated with the
//! embedded migrations), driven through the router without a socket.

use crate::support::{CLUSTERS, app, cluster, header};
use anyhow::Result;
use axum::http::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn create_get_and_list() -> Result<()> {
    let app = app().await?;
    let (status, headers, created) = app.call(Method::POST, CLUSTERS, Some(&cluster("alpha"))).await?;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(uuid::Uuid::parse_str(&id)?.get_version_num(), 7);
    assert_eq!(header(&headers, "location"), Some(format!("{CLUSTERS}/{id}").as_str()));
    assert!(header(&headers, "x-request-id").is_some());
    assert_eq!(created["kind"], "Cluster");
    assert_eq!(created["generation"], 1);
    assert_eq!(created["labels"]["env"], "test");
    assert_eq!(created["spec"]["region"], "eu");
    let conditions = &created["status"]["conditions"];
    assert_eq!(conditions[0]["type"], "Reconciled");
    assert_eq!(conditions[0]["status"], "False");
    assert_eq!(conditions[0]["reason"], "ReconciledMissingAdapters");
    assert_eq!(
        conditions[0]["message"],
        "Required adapters not reporting Available=True: [landing-zone]. Currently reporting: []"
    );
    assert_eq!(conditions[0]["observed_generation"], 1);
    assert_eq!(conditions[0]["last_transition_time"], created["created_time"]);
    assert_eq!(conditions[1]["type"], "LastKnownReconciled");
    assert_eq!(conditions[1]["reason"], "AdaptersMissingReports");
    assert_eq!(conditions.as_array().map(Vec::len), Some(2));
    assert_eq!(created["created_by"], "system@hyperfleet.local");

    let (status, _, got) = app.call(Method::GET, &format!("{CLUSTERS}/{id}"), None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, created);

    app.call(Method::POST, CLUSTERS, Some(&cluster("beta"))).await?;
    app.call(Method::POST, CLUSTERS, Some(&cluster("gamma"))).await?;
    let (status, _, page) = app.call(Method::GET, &format!("{CLUSTERS}?page=1&size=2"), None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((page["page"].as_i64(), page["size"].as_i64(), page["total"].as_i64()), (Some(1), Some(2), Some(3)));
    let names: Vec<_> =
        page["items"].as_array().map(|a| a.iter().map(|i| i["name"].clone()).collect()).unwrap_or_default();
    assert_eq!(names, vec![json!("gamma"), json!("beta")], "newest first");
    let (_, _, page2) = app.call(Method::GET, &format!("{CLUSTERS}?page=2&size=2"), None).await?;
    assert_eq!(page2["items"][0]["name"], "alpha");
    assert_eq!(page2["size"], 1);
    app.done().await;
    Ok(())
}

#[tokio::test]
async fn errors_are_problem_json_and_change_nothing() -> Result<()> {
    let app = app().await?;
    app.call(Method::POST, CLUSTERS, Some(&cluster("taken"))).await?;

    let cases: Vec<(Method, String, Option<String>, StatusCode, &str)> = vec![
        (Method::POST, CLUSTERS.into(), Some(cluster("taken")), StatusCode::CONFLICT, "HYPERFLEET-CNF-001"),
        (Method::POST, CLUSTERS.into(), Some("{not json".into()), StatusCode::BAD_REQUEST, "HYPERFLEET-VAL-006"),
        (Method::POST, CLUSTERS.into(), Some(cluster("Bad_Name")), StatusCode::BAD_REQUEST, "HYPERFLEET-VAL-000"),
        (
            Method::POST,
            CLUSTERS.into(),
            Some(r#"{"kind":"Cluster","name":"nul","spec":{"a":"x\u0000y"}}"#.into()),
            StatusCode::BAD_REQUEST,
            "HYPERFLEET-VAL-006",
        ),
        (
            Method::PATCH,
            format!("{CLUSTERS}/{}", uuid::Uuid::now_v7()),
            Some(r#"{"labels":{"a\u0000":"b"}}"#.into()),
            StatusCode::BAD_REQUEST,
            "HYPERFLEET-VAL-006",
        ),
        (
            Method::POST,
            CLUSTERS.into(),
            Some(r#"{"kind":"Cluster","name":"nospec"}"#.into()),
            StatusCode::BAD_REQUEST,
            "HYPERFLEET-VAL-000",
        ),
        (
            Method::GET,
            format!("{CLUSTERS}/{}", uuid::Uuid::now_v7()),
            None,
            StatusCode::NOT_FOUND,
            "HYPERFLEET-NTF-001",
        ),
        (Method::GET, format!("{CLUSTERS}/not-a-uuid"), None, StatusCode::NOT_FOUND, "HYPERFLEET-NTF-001"),
        (Method::GET, format!("{CLUSTERS}?size=101"), None, StatusCode::BAD_REQUEST, "HYPERFLEET-VAL-000"),
        (Method::GET, format!("{CLUSTERS}?page=x"), None, StatusCode::BAD_REQUEST, "HYPERFLEET-VAL-000"),
        (Method::GET, "/api/hyperfleet/v1/nothing-here".into(), None, StatusCode::NOT_FOUND, "HYPERFLEET-NTF-000"),
    ];
    for (method, uri, body, want_status, want_code) in cases {
        let (status, headers, problem) = app.call(method.clone(), &uri, body.as_deref()).await?;
        assert_eq!(status, want_status, "{method} {uri}: {problem}");
        assert_eq!(header(&headers, "content-type"), Some("application/problem+json"), "{method} {uri}");
        assert_eq!(problem["code"], want_code, "{method} {uri}: {problem}");
        assert_eq!(problem["status"], want_status.as_u16());
        assert!(problem["type"].as_str().unwrap_or("").starts_with("https://api.hyperfleet.io/errors/"));
        assert_eq!(problem["instance"], uri.split('?').next().unwrap_or_default());
        assert_eq!(problem["trace_id"].as_str(), header(&headers, "x-request-id"), "trace_id is the request id");
        assert!(!problem["detail"].as_str().unwrap_or("").is_empty());
    }
    let (_, _, bad) = app.call(Method::POST, CLUSTERS, Some(&cluster("x"))).await?;
    assert_eq!(bad["errors"][0]["field"], "name");
    assert_eq!(bad["errors"][0]["constraint"], "min_length");

    let (status, headers, _) = app.call(Method::DELETE, CLUSTERS, None).await?;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(header(&headers, "allow").is_some_and(|a| a.contains("GET") && a.contains("POST")), "{headers:?}");

    let (_, _, list) = app.call(Method::GET, CLUSTERS, None).await?;
    assert_eq!(list["total"], 1, "failed requests created nothing");
    app.done().await;
    Ok(())
}

#[tokio::test]
async fn every_validation_rule_answers_with_its_message() -> Result<()> {
    let app = app().await?;
    let long = "a".repeat(54);
    let cases: Vec<(&str, serde_json::Value, &str, &str, &str)> = vec![
        // (uri, body, detail, field, constraint)
        (CLUSTERS, json!({"name": "abc", "spec": {}}), "kind is required", "kind", "required"),
        (CLUSTERS, json!({"kind": "NodePool", "name": "abc", "spec": {}}), "kind must be 'Cluster'", "kind", "enum"),
        (CLUSTERS, json!({"kind": "Cluster", "spec": {}}), "name is required", "name", "required"),
        (
            CLUSTERS,
            json!({"kind": "Cluster", "name": 7, "spec": {}}),
            "field 'name' must be a string",
            "name",
            "format",
        ),
        (
            CLUSTERS,
            json!({"kind": "Cluster", "name": "ab", "spec": {}}),
            "name must be at least 3 characters",
            "name",
            "min_length",
        ),
        (
            CLUSTERS,
            json!({"kind": "Cluster", "name": long, "spec": {}}),
            "name must be at most 53 characters",
            "name",
            "max_length",
        ),
        (
            CLUSTERS,
            json!({"kind": "Cluster", "name": "-abc", "spec": {}}),
            "name must start and end with lowercase letter or number, and contain only lowercase letters, numbers, and hyphens",
            "name",
            "pattern",
        ),
        (CLUSTERS, json!({"kind": "Cluster", "name": "abc"}), "spec is required", "spec", "required"),
        (
            CLUSTERS,
            json!({"kind": "Cluster", "name": "abc", "spec": []}),
            "field 'spec' must be an object",
            "spec",
            "format",
        ),
        (
            CLUSTERS,
            json!({"kind": "Cluster", "name": "abc", "spec": {}, "labels": "x"}),
            "field 'labels' must be an object",
            "labels",
            "format",
        ),
        (
            CLUSTERS,
            json!({"kind": "Cluster", "name": "abc", "spec": {}, "labels": {"bad key!": "v"}}),
            "label validation failed",
            "labels.bad key!",
            "pattern",
        ),
        (
            CLUSTERS,
            json!({"kind": "Cluster", "name": "abc", "spec": {}, "labels": {"k": "-bad-"}}),
            "label validation failed",
            "labels.k",
            "pattern",
        ),
        (
            CLUSTERS,
            json!({"kind": "Cluster", "name": "abc", "spec": {}, "labels": {"k": 1}}),
            "label validation failed",
            "labels.k",
            "format",
        ),
    ];
    for (uri, body, detail, field, constraint) in cases {
        let (status, _, v) = app.call(Method::POST, uri, Some(&body.to_string())).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!((v["code"].as_str(), v["detail"].as_str()), (Some("HYPERFLEET-VAL-000"), Some(detail)), "{body}");
        assert_eq!(
            (v["errors"][0]["field"].as_str(), v["errors"][0]["constraint"].as_str()),
            (Some(field), Some(constraint)),
            "{body}: {v}"
        );
    }
    // Nodepool names are at most 15 characters.
    let (_, _, c) = app.call(Method::POST, CLUSTERS, Some(&cluster("owner"))).await?;
    let nested = format!("{CLUSTERS}/{}/nodepools", c["id"].as_str().unwrap_or_default());
    let np = json!({"kind": "NodePool", "name": "a".repeat(16), "spec": {}}).to_string();
    let (status, _, v) = app.call(Method::POST, &nested, Some(&np)).await?;
    assert_eq!((status, v["detail"].as_str()), (StatusCode::BAD_REQUEST, Some("name must be at most 15 characters")));
    // Several bad labels are reported together.
    let body = json!({"labels": {"a/b/c": "x", "ok": "fine", "v": "not ok"}}).to_string();
    let (status, _, v) =
        app.call(Method::PATCH, &format!("{CLUSTERS}/{}", c["id"].as_str().unwrap_or_default()), Some(&body)).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(2), "{v}");
    let (_, _, list) = app.call(Method::GET, CLUSTERS, None).await?;
    assert_eq!(list["total"], 1, "nothing but the owner was created");
    app.done().await;
    Ok(())
}
