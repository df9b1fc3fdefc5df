//! Resource lifecycle against a real PostgreSQL: nodepools on flat and nested routes, generation
//! rules, adapter status reports and their aggregation, deletion with finalization, force-delete.

use crate::support::{App, CLUSTERS, app, app_with};
use anyhow::{Context, Result};
use axum::http::{Method, StatusCode};
use chrono::{Duration, SecondsFormat, Utc};
use hyperfleet_api::{
    config::RequiredAdapters, domain::model::Kind, store::resources::reaggregate_if_required_changed,
};
use hyperfleet_tests::eventually;
use serde_json::{Value, json};

async fn total(app: &App, uri: &str) -> Result<Value> {
    Ok(app.call(Method::GET, uri, None).await?.2["total"].clone())
}

fn nodepool(name: &str) -> Value {
    json!({"kind": "NodePool", "name": name, "spec": {"replicas": 2}})
}

fn time(offset_secs: i64) -> String {
    (Utc::now() + Duration::seconds(offset_secs)).to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A report with the mandatory conditions plus `Finalized`.
fn report(adapter: &str, generation: i64, available: &str, finalized: &str, at: &str) -> String {
    json!({
        "adapter": adapter, "observed_generation": generation, "observed_time": at,
        "conditions": [
            {"type": "Available", "status": available, "reason": "Checked", "message": format!("available={available}")},
            {"type": "Applied", "status": "True", "reason": "Applied"},
            {"type": "Health", "status": "True", "reason": "Healthy"},
            {"type": "Finalized", "status": finalized},
        ],
        "data": {"namespace": "x"}
    })
    .to_string()
}

/// How long the background re-aggregation of a restarted app may take.
const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn condition<'a>(resource: &'a Value, kind: &str) -> &'a Value {
    resource["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn nodepools_on_flat_and_nested_routes() -> Result<()> {
    let app = app().await?;
    let a = app.create_cluster("alpha").await?;
    let b = app.create_cluster("beta").await?;
    let np = app.create(&format!("{CLUSTERS}/{a}/nodepools"), nodepool("pool-1")).await?;
    let id = np["id"].as_str().context("id")?;
    assert_eq!(np["href"], format!("{CLUSTERS}/{a}/nodepools/{id}"));
    assert_eq!(np["owner_references"], json!({"id": a, "kind": "Cluster", "href": format!("{CLUSTERS}/{a}")}));
    // Nodepools have no required adapters by default: Reconciled and LastKnownReconciled, vacuously.
    for kind in ["Reconciled", "LastKnownReconciled"] {
        let c = condition(&np, kind);
        assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("True"), Some("NoAdaptersRequired")), "{np}");
        assert_eq!(c["observed_generation"], 1, "{np}");
    }
    assert_eq!(np["status"]["conditions"].as_array().map(Vec::len), Some(2), "{np}");

    let (status, _, body) =
        app.call(Method::POST, "/api/hyperfleet/v1/nodepools", Some(&nodepool("x").to_string())).await?;
    assert_eq!((status, body["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("HYPERFLEET-VAL-000")));

    for uri in [format!("/api/hyperfleet/v1/nodepools/{id}"), format!("{CLUSTERS}/{a}/nodepools/{id}")] {
        let (status, _, got) = app.call(Method::GET, &uri, None).await?;
        assert_eq!((status, &got["id"]), (StatusCode::OK, &np["id"]), "{uri}");
    }
    let (status, _, body) = app.call(Method::GET, &format!("{CLUSTERS}/{b}/nodepools/{id}"), None).await?;
    assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("HYPERFLEET-NTF-001")), "wrong cluster");
    let missing = uuid::Uuid::now_v7();
    let (status, _, body) = app.call(Method::GET, &format!("{CLUSTERS}/{missing}/nodepools"), None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["detail"], format!("Cluster with id='{missing}' not found"));

    assert_eq!(total(&app, "/api/hyperfleet/v1/nodepools").await?, 1);
    assert_eq!(total(&app, &format!("{CLUSTERS}/{a}/nodepools")).await?, 1);
    assert_eq!(total(&app, &format!("{CLUSTERS}/{b}/nodepools")).await?, 0);

    let (status, _, body) =
        app.call(Method::POST, &format!("{CLUSTERS}/{a}/nodepools"), Some(&nodepool("pool-1").to_string())).await?;
    assert_eq!((status, body["detail"].as_str()), (StatusCode::CONFLICT, Some("This NodePool already exists")));
    app.create(&format!("{CLUSTERS}/{b}/nodepools"), nodepool("pool-1")).await?;
    let (status, _, _) = app
        .call(Method::POST, &format!("{CLUSTERS}/{a}/nodepools"), Some(&nodepool("a-too-long-name").to_string()))
        .await?;
    assert_eq!(status, StatusCode::CREATED, "15 characters is the limit");
    let (status, _, body) = app
        .call(Method::POST, &format!("{CLUSTERS}/{a}/nodepools"), Some(&nodepool("a-much-too-long-1").to_string()))
        .await?;
    assert_eq!(
        (status, body["detail"].as_str()),
        (StatusCode::BAD_REQUEST, Some("name must be at most 15 characters"))
    );
    app.done().await;
    Ok(())
}

/// A labels-only PATCH leaves the stored spec text alone, even one serde_json could not read back
/// (PostgreSQL takes `1e400`; a spec written around the API could hold it).
#[tokio::test]
async fn a_labels_patch_never_rewrites_the_spec() -> Result<()> {
    let app = app().await?;
    let id = app.create_cluster("odd-spec").await?;
    let uuid: uuid::Uuid = id.parse()?;
    sqlx::query("update resources set spec = '{\"n\": 1e400, \"k\": \"v\"}' where id = $1")
        .bind(uuid)
        .execute(app.pool())
        .await?;
    let spec_text = || sqlx::query_scalar::<_, String>("select spec::text from resources where id = $1").bind(uuid);
    let before = spec_text().fetch_one(app.pool()).await?;
    let (status, _, v) =
        app.call(Method::PATCH, &format!("{CLUSTERS}/{id}"), Some(&json!({"labels": {"a": "b"}}).to_string())).await?;
    assert_eq!(status, StatusCode::OK, "{v}");
    let labels: Value =
        sqlx::query_scalar("select labels from resources where id = $1").bind(uuid).fetch_one(app.pool()).await?;
    assert_eq!(labels, json!({"a": "b"}));
    let after = spec_text().fetch_one(app.pool()).await?;
    assert_eq!(after, before, "the spec is untouched");
    assert!(after.contains("\"k\""), "{after}");
    app.done().await;
    Ok(())
}

#[tokio::test]
async fn generation_counts_effective_changes_and_delete_once() -> Result<()> {
    let app = app().await?;
    let id = app.create_cluster("gen").await?;
    let uri = format!("{CLUSTERS}/{id}");
    let patch = |body: Value| {
        let uri = uri.clone();
        let app = &app;
        async move { app.call(Method::PATCH, &uri, Some(&body.to_string())).await }
    };

    let (status, _, v) = patch(json!({"labels": {"env": "prod"}})).await?;
    assert_eq!((status, v["generation"].as_i64()), (StatusCode::OK, Some(2)), "label-only change counts");
    assert_eq!(v["labels"], json!({"env": "prod"}), "labels are replaced wholesale");
    let (_, _, v) = patch(json!({"labels": {"env": "prod"}, "spec": {"region": "eu"}})).await?;
    assert_eq!(v["generation"], 2, "an identical patch changes nothing");
    let (_, _, v) = patch(json!({"spec": {"size": "xl"}})).await?;
    assert_eq!((v["generation"].as_i64(), &v["spec"]), (Some(3), &json!({"size": "xl"})), "spec replaced, not merged");
    assert_eq!(condition(&v, "Reconciled")["observed_generation"], 3);
    let (status, _, v) = patch(json!({})).await?;
    assert_eq!((status, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("HYPERFLEET-VAL-005")));
    let (status, _, _) = patch(json!({"name": "renamed"})).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, _, deleted) = app.call(Method::DELETE, &uri, None).await?;
    assert_eq!((status, deleted["generation"].as_i64()), (StatusCode::ACCEPTED, Some(4)));
    assert!(deleted["deleted_time"].is_string());
    let (status, _, again) = app.call(Method::DELETE, &uri, None).await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        (&again["generation"], &again["deleted_time"]),
        (&deleted["generation"], &deleted["deleted_time"]),
        "idempotent"
    );

    let (status, _, v) = patch(json!({"labels": {}})).await?;
    assert_eq!((status, v["code"].as_str()), (StatusCode::CONFLICT, Some("HYPERFLEET-CNF-003")));
    assert_eq!(v["detail"], format!("Cluster '{id}' is marked for deletion"));
    let (status, _, v) =
        app.call(Method::POST, &format!("{uri}/nodepools"), Some(&nodepool("late").to_string())).await?;
    assert_eq!((status, v["code"].as_str()), (StatusCode::CONFLICT, Some("HYPERFLEET-CNF-003")));
    let (status, _, v) = app.call(Method::GET, &uri, None).await?;
    assert_eq!(
        (status, &v["deleted_time"]),
        (StatusCode::OK, &deleted["deleted_time"]),
        "finalizing is still readable"
    );
    let r = condition(&v, "Reconciled");
    assert_eq!(r["message"], "Required adapters not reporting Finalized=True: [landing-zone]. Currently reporting: []");
    app.done().await;
    Ok(())
}

#[tokio::test]
async fn status_reports_are_validated_discarded_or_aggregated() -> Result<()> {
    let app = crate::support::app_with_optional(&["audit"]).await?;
    let id = app.create_cluster("reported").await?;
    let uri = format!("{CLUSTERS}/{id}");
    let statuses = format!("{uri}/statuses");
    let put = |body: String| {
        let statuses = statuses.clone();
        let app = &app;
        async move { app.call(Method::PUT, &statuses, Some(&body)).await }
    };

    let (status, _, _) = put(report("landing-zone", 2, "True", "False", &time(0))).await?;
    assert_eq!(status, StatusCode::NO_CONTENT, "a future generation is discarded");
    let missing_health = json!({"adapter": "landing-zone", "observed_generation": 1, "observed_time": time(0),
        "conditions": [{"type": "Available", "status": "True"}, {"type": "Applied", "status": "True"}]});
    let (status, _, v) = put(missing_health.to_string()).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        v["detail"],
        "missing mandatory condition 'Health': all adapters must report Available, Applied, and Health"
    );
    let (status, _, v) = put(report("landing-zone", 1, "True", "False", &time(-3600))).await?;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("HYPERFLEET-VAL-000")),
        "outside the time window"
    );

    let first_at = time(-10);
    let (status, _, stored) = put(report("landing-zone", 1, "True", "False", &first_at)).await?;
    assert_eq!(status, StatusCode::CREATED, "{stored}");
    assert_eq!((stored["adapter"].as_str(), stored["observed_generation"].as_i64()), (Some("landing-zone"), Some(1)));
    assert_eq!(stored["data"], json!({"namespace": "x"}));
    let (status, _, same) = put(report("landing-zone", 1, "True", "False", &first_at)).await?;
    assert_eq!((status, &same), (StatusCode::CREATED, &stored), "an identical re-send returns the stored report");
    let (status, _, _) = put(report("landing-zone", 1, "False", "False", &time(-20))).await?;
    assert_eq!(status, StatusCode::NO_CONTENT, "older than the stored report");
    let no_time = json!({"adapter": "landing-zone", "observed_generation": 1,
        "conditions": [{"type": "Available", "status": "True"}, {"type": "Applied", "status": "True"}, {"type": "Health", "status": "True"}]});
    assert_eq!(put(no_time.to_string()).await?.0, StatusCode::NO_CONTENT, "no observed_time");

    let (_, _, c) = app.call(Method::GET, &uri, None).await?;
    let r = condition(&c, "Reconciled");
    assert_eq!((r["status"].as_str(), r["reason"].as_str()), (Some("True"), Some("ReconciledAll")));
    assert_eq!(condition(&c, "LastKnownReconciled")["status"], "True");
    let lz = condition(&c, "LandingZoneSuccessful");
    assert_eq!(
        (lz["status"].as_str(), lz["reason"].as_str(), lz["message"].as_str()),
        (Some("True"), Some("Checked"), Some("available=True"))
    );

    // An optional adapter reporting Unknown: stored once, then discarded; not required, so ignored.
    assert_eq!(put(report("audit", 1, "Unknown", "False", &time(0))).await?.0, StatusCode::CREATED);
    assert_eq!(put(report("audit", 1, "Unknown", "False", &time(1))).await?.0, StatusCode::NO_CONTENT);
    // A name nobody configured cannot report (nor grow the status table).
    let (status, _, v) = put(report("stranger", 1, "True", "False", &time(0))).await?;
    assert_eq!((status, v["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("adapter")), "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| d.contains("optional_adapters")), "{v}");
    let (_, _, list) = app.call(Method::GET, &statuses, None).await?;
    assert_eq!(list["total"], 2);

    // A PATCH makes the reports stale: not reconciled at generation 2, last known still True.
    let (_, _, c) = app.call(Method::PATCH, &uri, Some(&json!({"labels": {"x": "y"}}).to_string())).await?;
    assert_eq!(
        (condition(&c, "Reconciled")["status"].as_str(), condition(&c, "Reconciled")["observed_generation"].as_i64()),
        (Some("False"), Some(2))
    );
    assert_eq!(condition(&c, "Reconciled")["last_transition_time"], c["updated_time"], "flipped at the PATCH");
    assert_eq!(condition(&c, "LastKnownReconciled")["status"], "True");

    // The adapter catches up, but reports not available.
    assert_eq!(put(report("landing-zone", 2, "False", "False", &time(0))).await?.0, StatusCode::CREATED);
    let (_, _, c) = app.call(Method::GET, &uri, None).await?;
    assert_eq!(condition(&c, "Reconciled")["status"], "False");
    assert_eq!(condition(&c, "LandingZoneSuccessful")["status"], "False");
    let (status, _, _) = put(report("landing-zone", 1, "True", "False", &time(1))).await?;
    assert_eq!(status, StatusCode::NO_CONTENT, "a newer generation is already stored");

    let missing = uuid::Uuid::now_v7();
    let (status, _, _) = app
        .call(Method::PUT, &format!("{CLUSTERS}/{missing}/statuses"), Some(&report("x", 1, "True", "False", &time(0))))
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, headers, _) = app.call(Method::POST, &statuses, Some("{}")).await?;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(crate::support::header(&headers, "allow").is_some_and(|a| a.contains("PUT")));
    app.done().await;
    Ok(())
}

#[tokio::test]
async fn deletion_is_finalized_by_the_adapters() -> Result<()> {
    let app = app().await?;
    let id = app.create_cluster("doomed").await?;
    let uri = format!("{CLUSTERS}/{id}");
    let np = app.create(&format!("{uri}/nodepools"), nodepool("pool")).await?;
    let np_uri = format!("/api/hyperfleet/v1/nodepools/{}", np["id"].as_str().context("id")?);

    let (_, _, deleted) = app.call(Method::DELETE, &uri, None).await?;
    let generation = deleted["generation"].as_i64().context("generation")?;
    assert_eq!(
        app.call(Method::GET, &np_uri, None).await?.0,
        StatusCode::NOT_FOUND,
        "nodepools without adapters go at once"
    );

    let statuses = format!("{uri}/statuses");
    let (status, _, _) =
        app.call(Method::PUT, &statuses, Some(&report("landing-zone", generation, "False", "False", &time(0)))).await?;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(app.call(Method::GET, &uri, None).await?.0, StatusCode::OK, "not finalized yet");
    let (status, _, _) =
        app.call(Method::PUT, &statuses, Some(&report("landing-zone", generation, "False", "True", &time(1)))).await?;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(app.call(Method::GET, &uri, None).await?.0, StatusCode::NOT_FOUND, "hard-deleted once finalized");
    assert_eq!(app.call(Method::GET, &statuses, None).await?.0, StatusCode::NOT_FOUND);

    let again = app.create_cluster("doomed").await?;
    assert_ne!(again, id, "the name is free again, under a new id");
    app.done().await;
    Ok(())
}

#[tokio::test]
async fn a_cluster_waits_for_its_nodepools_to_be_finalized() -> Result<()> {
    let app =
        app_with(RequiredAdapters { clusters: vec!["landing-zone".into()], nodepools: vec!["pools".into()] }).await?;
    let id = app.create_cluster("parent").await?;
    let uri = format!("{CLUSTERS}/{id}");
    let np = app.create(&format!("{uri}/nodepools"), nodepool("child")).await?;
    let np_uri = format!("{uri}/nodepools/{}", np["id"].as_str().context("id")?);

    let (_, _, cluster) = app.call(Method::DELETE, &uri, None).await?;
    let (status, _, child) = app.call(Method::GET, &np_uri, None).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(child["deleted_time"].is_string(), "deletion cascades to the nodepool");
    assert_eq!(child["generation"], 2);

    let cluster_gen = cluster["generation"].as_i64().context("generation")?;
    let finalize_cluster = |at: String| report("landing-zone", cluster_gen, "False", "True", &at);
    app.call(Method::PUT, &format!("{uri}/statuses"), Some(&finalize_cluster(time(0)))).await?;
    assert_eq!(app.call(Method::GET, &uri, None).await?.0, StatusCode::OK, "the nodepool is still there");

    app.call(Method::PUT, &format!("{np_uri}/statuses"), Some(&report("pools", 2, "False", "True", &time(0)))).await?;
    assert_eq!(app.call(Method::GET, &np_uri, None).await?.0, StatusCode::NOT_FOUND, "nodepool finalized");
    assert_eq!(app.call(Method::GET, &uri, None).await?.0, StatusCode::OK, "the cluster needs one more report");
    app.call(Method::PUT, &format!("{uri}/statuses"), Some(&finalize_cluster(time(1)))).await?;
    assert_eq!(app.call(Method::GET, &uri, None).await?.0, StatusCode::NOT_FOUND);
    app.done().await;
    Ok(())
}

#[tokio::test]
async fn force_delete_removes_a_finalizing_cluster_and_its_nodepools() -> Result<()> {
    let app =
        app_with(RequiredAdapters { clusters: vec!["landing-zone".into()], nodepools: vec!["pools".into()] }).await?;
    let id = app.create_cluster("stuck").await?;
    let uri = format!("{CLUSTERS}/{id}");
    let np = app.create(&format!("{uri}/nodepools"), nodepool("pool")).await?;
    let force = format!("{uri}/force-delete");

    let (status, _, v) = app.call(Method::POST, &force, Some(r#"{"reason": "stuck"}"#)).await?;
    assert_eq!((status, v["code"].as_str()), (StatusCode::CONFLICT, Some("HYPERFLEET-CNF-003")));
    assert_eq!(v["detail"], format!("Cluster '{id}' is not in Finalizing state"));
    app.call(Method::DELETE, &uri, None).await?;
    let (status, _, v) = app.call(Method::POST, &force, Some("{}")).await?;
    assert_eq!((status, v["detail"].as_str()), (StatusCode::BAD_REQUEST, Some("reason is required")));
    let (status, _, _) = app.call(Method::POST, &force, Some(r#"{"reason": "adapter gone"}"#)).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(app.call(Method::GET, &uri, None).await?.0, StatusCode::NOT_FOUND);
    let np_uri = format!("/api/hyperfleet/v1/nodepools/{}", np["id"].as_str().context("id")?);
    assert_eq!(app.call(Method::GET, &np_uri, None).await?.0, StatusCode::NOT_FOUND);
    assert_eq!(app.call(Method::POST, &force, Some(r#"{"reason": "again"}"#)).await?.0, StatusCode::NOT_FOUND);
    let again = app.create_cluster("stuck").await?;
    let (_, _, fresh) = app.call(Method::GET, &format!("{CLUSTERS}/{again}"), None).await?;
    assert_eq!(fresh["generation"], 1);
    app.done().await;
    Ok(())
}

/// Whether cluster `id` is Reconciled, the cluster, and its ETag.
async fn reconciled(app: &App, id: &str) -> Result<(bool, Value, String)> {
    let (_, headers, c) = app.call(Method::GET, &format!("{CLUSTERS}/{id}"), None).await?;
    let etag = crate::support::header(&headers, "etag").unwrap_or_default().to_string();
    Ok((condition(&c, "Reconciled")["status"].as_str() == Some("True"), c, etag))
}

/// A release of the API that requires another adapter makes the resources already there
/// un-Reconciled until that adapter reports (the API re-aggregates at start); one that requires the
/// same adapters again changes nothing, and dropping the adapter makes them Reconciled again.
#[tokio::test]
async fn a_newly_required_adapter_makes_existing_clusters_wait_for_its_report() -> Result<()> {
    let required = |names: &[&str]| RequiredAdapters {
        clusters: names.iter().map(|n| n.to_string()).collect(),
        nodepools: Vec::new(),
    };
    let mut app = app_with(required(&["landing-zone"])).await?;
    let (a, b) = (app.create_cluster("first").await?, app.create_cluster("second").await?);
    for id in [&a, &b] {
        let statuses = format!("{CLUSTERS}/{id}/statuses");
        let (status, _, _) =
            app.call(Method::PUT, &statuses, Some(&report("landing-zone", 1, "True", "False", &time(0)))).await?;
        assert_eq!(status, StatusCode::CREATED);
    }
    assert!(reconciled(&app, &a).await?.0 && reconciled(&app, &b).await?.0, "both landed");

    app.restart(|cfg| cfg.required_adapters = required(&["landing-zone", "dns"])).await?;
    let waiting = eventually(WAIT, || async {
        let (first, c, _) = reconciled(&app, &a).await?;
        Ok((!first && !reconciled(&app, &b).await?.0).then_some(c))
    })
    .await
    .context("both clusters become un-Reconciled once dns is required")?;
    let message = condition(&waiting, "Reconciled")["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("dns"), "the condition names the adapter it waits for: {message}");

    let (status, _, _) = app
        .call(Method::PUT, &format!("{CLUSTERS}/{a}/statuses"), Some(&report("dns", 1, "True", "False", &time(1))))
        .await?;
    assert_eq!(status, StatusCode::CREATED);
    assert!(reconciled(&app, &a).await?.0, "Reconciled once dns has reported");
    assert!(!reconciled(&app, &b).await?.0, "the other still waits for dns");

    // The set is recorded once the pass is done; the same set (in any order) needs no other pass.
    let wanted = vec!["dns".to_string(), "landing-zone".to_string()];
    eventually(WAIT, || async {
        let recorded: Option<Vec<String>> =
            sqlx::query_scalar("select required_adapters from aggregated_with where kind = 'Cluster'")
                .fetch_optional(app.pool())
                .await?;
        Ok((recorded.as_ref() == Some(&wanted)).then_some(()))
    })
    .await
    .context("the new set is recorded")?;
    let names = ["landing-zone".to_string(), "dns".to_string()];
    let pass = reaggregate_if_required_changed(app.pool(), Kind::Cluster, &names, false).await?;
    assert_eq!(pass, None, "nothing to do for the recorded set");
    let pass = reaggregate_if_required_changed(app.pool(), Kind::Cluster, &names, true).await?;
    assert_eq!(pass, Some((2, 0)), "a forced pass looks at both clusters and changes neither");

    app.restart(|cfg| cfg.required_adapters = required(&["landing-zone"])).await?;
    eventually(WAIT, || async { Ok(reconciled(&app, &b).await?.0.then_some(())) })
        .await
        .context("Reconciled again once dns is no longer required")?;
    app.done().await;
    Ok(())
}

/// A request dropped while its transaction's `BEGIN` is on the wire (its client went away) leaves
/// no transaction behind on the pooled connection: after a read on it, the next transaction can
/// still set its isolation level. sqlx counts a transaction only once `BEGIN` is answered, so without
/// `store::begin` the connection went back to the pool inside one.
#[tokio::test]
async fn a_transaction_dropped_while_it_begins_leaves_none_behind_on_the_connection() -> Result<()> {
    let app = app().await?;
    // One connection, so every transaction below runs on the one the dropped BEGIN used; handed
    // out without a ping, as the serving pool does (a ping would be where the one poll stops).
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_with((*app.pool().connect_options()).clone())
        .await?;
    for _ in 0..20 {
        sqlx::query("select 1").execute(&pool).await?;
        // Polled once, then dropped: the connection is idle, so the BEGIN goes out at once.
        let _ = tokio::time::timeout(std::time::Duration::ZERO, hyperfleet_api::store::begin(&pool)).await;
        // A read the way a GET makes it, then a transaction the way a list begins one.
        sqlx::query("select 1").execute(&pool).await?;
        let mut tx = hyperfleet_api::store::begin(&pool).await?;
        sqlx::query("set transaction isolation level repeatable read, read only")
            .execute(&mut *tx)
            .await
            .context("the connection came back inside a transaction")?;
        tx.rollback().await?;
    }
    pool.close().await;
    app.done().await;
    Ok(())
}

/// A write transaction holds the version lock from the moment it is begun (`BEGIN` and the lock
/// go out as one statement) until it ends; another session cannot take the lock meanwhile.
#[tokio::test]
async fn a_write_transaction_holds_the_version_lock_until_it_ends() -> Result<()> {
    let app = app().await?;
    let mut other = app.pool().acquire().await?;
    let try_lock = "select pg_try_advisory_lock($1)";
    let version_lock = hyperfleet_api::store::VERSION_LOCK;
    let tx = hyperfleet_api::store::write(app.pool()).await?;
    let free: bool = sqlx::query_scalar(try_lock).bind(version_lock).fetch_one(&mut *other).await?;
    assert!(!free, "the version lock is held while the write transaction is open");
    tx.commit().await?;
    let free: bool = sqlx::query_scalar(try_lock).bind(version_lock).fetch_one(&mut *other).await?;
    assert!(free, "and released when it ends");
    sqlx::query("select pg_advisory_unlock($1)").bind(version_lock).execute(&mut *other).await?;
    drop(other);
    app.done().await;
    Ok(())
}
