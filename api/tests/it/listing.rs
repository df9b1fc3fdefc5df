//! Lists against a real PostgreSQL: the search language (every operator and field family, and
//! hostile inputs), ordering, field projection and paging edges.

use crate::support::{App, CLUSTERS, app};
use anyhow::{Context, Result};
use axum::http::{Method, StatusCode};
use chrono::{Duration, SecondsFormat, Utc};
use serde_json::{Value, json};

fn enc(s: &str) -> String {
    serde_urlencoded::to_string([("search", s)]).unwrap_or_default()
}

/// Names of the clusters a search returns, sorted.
async fn names(app: &App, search: &str) -> Result<Vec<String>> {
    let uri = format!("{CLUSTERS}?size=100&{}", enc(search));
    let (status, _, v) = app.call(Method::GET, &uri, None).await?;
    assert_eq!(status, StatusCode::OK, "search {search:?}: {v}");
    let mut names: Vec<String> =
        v["items"].as_array().context("items")?.iter().filter_map(|i| i["name"].as_str().map(String::from)).collect();
    names.sort();
    assert_eq!(v["total"].as_u64(), Some(names.len() as u64), "total matches the items for {search:?}");
    Ok(names)
}

async fn seed(app: &App) -> Result<Vec<String>> {
    let clusters = [
        (
            "c-one",
            json!({"env": "prod", "team": "a"}),
            json!({"region": "eu", "replicas": 1, "tier": {"name": "gold"}, "enabled": true}),
        ),
        (
            "c-two",
            json!({"env": "prod", "team": "b"}),
            json!({"region": "us", "replicas": 3, "tier": {"name": "silver"}}),
        ),
        ("c-three", json!({"env": "test"}), json!({"region": "eu", "replicas": 5, "enabled": false})),
        ("c-four", json!({"env": "dev"}), json!({"region": "ap", "replicas": "many"})),
        ("c-five", json!({}), json!({"region": "o'hare"})),
    ];
    let mut ids = Vec::new();
    for (name, labels, spec) in clusters {
        let body = json!({"kind": "Cluster", "name": name, "labels": labels, "spec": spec}).to_string();
        let (status, _, v) = app.call(Method::POST, CLUSTERS, Some(&body)).await?;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        ids.push(v["id"].as_str().context("id")?.to_string());
    }
    Ok(ids)
}

fn set(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn search_covers_every_operator_and_field_family() -> Result<()> {
    let app = app().await?;
    let before = (Utc::now() - Duration::seconds(5)).to_rfc3339_opts(SecondsFormat::Micros, true);
    let ids = seed(&app).await?;

    // Columns and comparison operators.
    assert_eq!(names(&app, "name = 'c-one'").await?, set(&["c-one"]));
    assert_eq!(names(&app, "name != 'c-one'").await?.len(), 4);
    assert_eq!(names(&app, "name <> 'c-one'").await?.len(), 4);
    assert_eq!(names(&app, "name < 'c-o'").await?, set(&["c-five", "c-four"]));
    assert_eq!(names(&app, "name >= 'c-t'").await?, set(&["c-three", "c-two"]));
    assert_eq!(names(&app, "name in ('c-one', 'c-two', 'nope')").await?, set(&["c-one", "c-two"]));
    assert_eq!(names(&app, "name not in ['c-one', 'c-two']").await?.len(), 3);
    assert_eq!(names(&app, &format!("id = '{}'", ids[2])).await?, set(&["c-three"]));
    assert_eq!(names(&app, &format!("created_time > '{before}'")).await?.len(), 5);
    assert_eq!(names(&app, &format!("created_time < '{before}'")).await?.len(), 0);
    assert_eq!(names(&app, "kind = 'Cluster' and created_by = 'system@hyperfleet.local'").await?.len(), 5);

    // Generation compares as an integer.
    let patch = json!({"labels": {"env": "prod", "team": "a", "patched": "yes"}}).to_string();
    let (status, _, _) = app.call(Method::PATCH, &format!("{CLUSTERS}/{}", ids[0]), Some(&patch)).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(names(&app, "generation >= 2").await?, set(&["c-one"]));
    assert_eq!(names(&app, "generation = 1").await?.len(), 4);

    // Labels.
    assert_eq!(names(&app, "labels.env = 'prod'").await?, set(&["c-one", "c-two"]));
    assert_eq!(names(&app, "labels.env = 'prod' and labels.team = 'b'").await?, set(&["c-two"]));
    assert_eq!(names(&app, "labels.env in ('test', 'dev')").await?, set(&["c-three", "c-four"]));
    assert_eq!(names(&app, "labels.env != 'prod'").await?, set(&["c-three", "c-four"]), "absent labels never match");

    // Spec paths: strings, nested objects, numbers (non-numbers never match), booleans.
    assert_eq!(names(&app, "spec.region = 'eu'").await?, set(&["c-one", "c-three"]));
    assert_eq!(names(&app, "spec.region = 'o''hare'").await?, set(&["c-five"]));
    assert_eq!(names(&app, "spec.tier.name = 'gold'").await?, set(&["c-one"]));
    assert_eq!(names(&app, "spec.replicas > 2").await?, set(&["c-two", "c-three"]));
    assert_eq!(names(&app, "spec.replicas <= 1.5").await?, set(&["c-one"]));
    assert_eq!(names(&app, "spec.enabled = true").await?, set(&["c-one"]));
    assert_eq!(names(&app, "spec.enabled = false").await?, set(&["c-three"]));
    assert_eq!(names(&app, "spec.region in ('us', 'ap')").await?, set(&["c-two", "c-four"]));

    // Boolean structure, parentheses, keyword case.
    assert_eq!(
        names(&app, "(labels.env = 'prod' OR name = 'c-five') AND NOT spec.region = 'us'").await?,
        set(&["c-one", "c-five"])
    );
    assert_eq!(names(&app, "not (name = 'c-one' or name = 'c-two')").await?.len(), 3);

    // Conditions: every new cluster is not reconciled until its adapter reports.
    assert_eq!(names(&app, "status.conditions.Reconciled = 'False'").await?.len(), 5);
    let at = (Utc::now() - Duration::seconds(1)).to_rfc3339_opts(SecondsFormat::Micros, true);
    let report = json!({
        "adapter": "landing-zone", "observed_generation": 1, "observed_time": at,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "Ready"},
            {"type": "Applied", "status": "True", "reason": "Applied"},
            {"type": "Health", "status": "True", "reason": "Healthy"},
        ],
    });
    let (status, _, v) =
        app.call(Method::PUT, &format!("{CLUSTERS}/{}/statuses", ids[1]), Some(&report.to_string())).await?;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(names(&app, "status.conditions.Reconciled = 'True'").await?, set(&["c-two"]));
    assert_eq!(names(&app, "status.conditions.Reconciled = True").await?, set(&["c-two"]));
    assert_eq!(names(&app, "status.conditions.Reconciled = False").await?.len(), 4);
    assert_eq!(names(&app, "status.conditions.LandingZoneSuccessful = 'True'").await?, set(&["c-two"]));
    assert_eq!(names(&app, "status.conditions.Reconciled.observed_generation >= 2").await?, set(&["c-one"]));
    let soon = (Utc::now() + Duration::hours(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    assert_eq!(names(&app, &format!("status.conditions.Reconciled.last_updated_time < '{soon}'")).await?.len(), 5);
    assert_eq!(names(&app, &format!("status.conditions.Reconciled.last_transition_time > '{soon}'")).await?.len(), 0);

    // Nodepools are searched by the same language, scoped to their cluster on nested routes.
    let np = json!({"kind": "NodePool", "name": "pool-a", "labels": {"role": "gpu"}, "spec": {}}).to_string();
    let nested = format!("{CLUSTERS}/{}/nodepools", ids[0]);
    assert_eq!(app.call(Method::POST, &nested, Some(&np)).await?.0, StatusCode::CREATED);
    let (_, _, v) = app.call(Method::GET, &format!("{nested}?{}", enc("labels.role = 'gpu'")), None).await?;
    assert_eq!(v["total"], 1);
    let (_, _, v) = app.call(Method::GET, &format!("{nested}?{}", enc("labels.role = 'cpu'")), None).await?;
    assert_eq!(v["total"], 0);
    app.done().await;
    Ok(())
}

#[tokio::test]
async fn hostile_or_malformed_searches_are_400s_and_change_nothing() -> Result<()> {
    let app = app().await?;
    seed(&app).await?;
    let long = format!("name = '{}'", "x".repeat(5000));
    let deep = format!("{}name = 'a'{}", "(".repeat(200), ")".repeat(200));
    let cases: &[(&str, &str)] = &[
        ("name = 'a'; drop table resources", "unexpected character ';'"),
        ("name = 'a' -- comment", "unexpected character '-'"),
        ("name = 'a' /* x */", "unexpected character '/'"),
        ("name = 'a'' or ''1''=''1", "unterminated string"),
        ("name = 'x' or 1 = 1", "expected a field name"),
        ("password = 'x'", "invalid field in search query: 'password'"),
        ("labels.env = prod", "quoted string"),
        ("spec.a-b = 'x'", "invalid spec path"),
        ("spec.x = 'a' union select", "unexpected 'union'"),
        ("generation = 'one'", "must be compared to an integer"),
        ("created_time > 'yesterday'", "RFC 3339"),
        ("id = 'not-a-uuid'", "UUID"),
        ("not labels.env = 'prod'", "'not' cannot be applied"),
        ("status.conditions.Reconciled = 'Yes'", "True, False or Unknown"),
        ("status.conditions.Reconciled.color = 1", "invalid condition field"),
        ("name in ()", "expected a value"),
        ("(name = 'a'", "unexpected end of query"),
        ("name = 'a\u{0}'", "NUL character"),
        ("name = 'a'\u{0}", "unexpected character"),
        (&long, "at most 4096"),
        (&deep, "deeper than"),
    ];
    for (query, expected) in cases {
        let (status, headers, v) = app.call(Method::GET, &format!("{CLUSTERS}?{}", enc(query)), None).await?;
        let shown: String = query.chars().take(60).collect();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{shown:?}: {v}");
        assert_eq!(v["code"], "HYPERFLEET-VAL-005", "{shown:?}");
        assert_eq!(crate::support::header(&headers, "content-type"), Some("application/problem+json"));
        let detail = v["detail"].as_str().unwrap_or_default();
        assert!(detail.starts_with("failed to parse search query: "), "{shown:?}: {detail}");
        assert!(detail.contains(expected), "{shown:?}: {detail} should mention {expected:?}");
    }
    assert_eq!(names(&app, "kind = 'Cluster'").await?.len(), 5, "nothing changed");
    app.done().await;
    Ok(())
}

#[tokio::test]
async fn ordering_projection_and_paging_edges() -> Result<()> {
    let app = app().await?;
    let ids = seed(&app).await?;
    let list = |q: &str| {
        let uri = format!("{CLUSTERS}?{q}");
        let app = &app;
        async move { app.call(Method::GET, &uri, None).await }
    };
    let names_of = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .map_or(vec![], |a| a.iter().filter_map(|i| i["name"].as_str().map(String::from)).collect())
    };

    let (_, _, v) = list("").await?;
    assert_eq!(names_of(&v), ["c-five", "c-four", "c-three", "c-two", "c-one"], "default: newest first");
    let (_, _, v) = list("order=name").await?;
    assert_eq!(names_of(&v), ["c-five", "c-four", "c-one", "c-three", "c-two"]);
    let patch = json!({"spec": {"region": "eu", "v": 2}}).to_string();
    for id in [&ids[0], &ids[3]] {
        assert_eq!(app.call(Method::PATCH, &format!("{CLUSTERS}/{id}"), Some(&patch)).await?.0, StatusCode::OK);
    }
    let (_, _, v) = list("order=generation%20desc,name%20asc").await?;
    assert_eq!(names_of(&v), ["c-four", "c-one", "c-five", "c-three", "c-two"], "two fields");
    let (_, _, v) = list("order=generation%20DESC&order=name%20desc").await?;
    assert_eq!(names_of(&v), ["c-one", "c-four", "c-two", "c-three", "c-five"], "repeated parameter");
    let (status, _, v) = list("order=colour").await?;
    assert_eq!((status, v["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("order")));
    assert_eq!(list("order=name%20upwards").await?.0, StatusCode::BAD_REQUEST);

    // `fields` keeps the named members and always the id, on lists and single GETs.
    let (_, _, v) = list("fields=name,generation&order=name").await?;
    assert_eq!(v["items"][0], json!({"id": ids[4], "name": "c-five", "generation": 1}));
    let (_, _, v) = app.call(Method::GET, &format!("{CLUSTERS}/{}?fields=labels", ids[1]), None).await?;
    assert_eq!(v, json!({"id": ids[1], "labels": {"env": "prod", "team": "b"}}));
    // `traceparent` is known but, with tracing off, nothing is stored to show.
    let (_, _, v) = list("fields=name,traceparent&order=name").await?;
    assert_eq!(v["items"][0], json!({"id": ids[4], "name": "c-five"}));
    let (status, _, v) = list("fields=name,secret").await?;
    assert_eq!((status, v["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("fields")));

    // Paging: size is what was returned, total what matched.
    let (_, _, v) = list("size=2&page=3&order=name").await?;
    assert_eq!((v["page"].as_i64(), v["size"].as_i64(), v["total"].as_i64()), (Some(3), Some(1), Some(5)));
    assert_eq!(names_of(&v), ["c-two"]);
    let (_, _, v) = list("size=2&page=9").await?;
    assert_eq!((v["size"].as_i64(), v["total"].as_i64()), (Some(0), Some(5)));
    // total=false: the same page without counting every match (keyset clients such as the sentinel).
    let (_, _, counted) = list("size=2&order=id").await?;
    let (status, _, v) = list("size=2&order=id&total=false").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(v.get("total").is_none(), "{v}");
    assert_eq!((&v["items"], &v["size"], &v["page"]), (&counted["items"], &counted["size"], &counted["page"]));
    let (status, _, v) = list("total=maybe").await?;
    assert_eq!((status, v["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("total")));
    for (q, field, constraint, message) in [
        ("size=0", "size", "min", "size must be at least 1"),
        ("size=101", "size", "max", "size must be at most 100"),
        ("page=0", "page", "min", "page must be at least 1"),
        ("page=x", "page", "format", "must be a valid integer"),
        ("size=2.5", "size", "format", "must be a valid integer"),
    ] {
        let (status, _, v) = list(q).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}");
        assert_eq!(v["code"], "HYPERFLEET-VAL-000");
        let e = &v["errors"][0];
        assert_eq!((e["field"].as_str(), e["constraint"].as_str()), (Some(field), Some(constraint)), "{q}");
        assert_eq!(e["message"], message, "{q}");
    }
    app.done().await;
    Ok(())
}
