//! Metrics of reference §2.12: per-request counters and durations, build info, and gauges the
//! database answers (resources pending reconciliation, stuck ones, pool connections).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};
use sqlx::PgPool;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit the binary was built from, when the build passed `HYPERFLEET_GIT_COMMIT`.
pub const COMMIT: &str = match option_env!("HYPERFLEET_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// Gives every metric the API exports its `# HELP` text (and unit); called once, right after the
/// recorder is installed. A metric named here appears in `/metrics` only once it has a value.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("hyperfleet_api_build_info", "Always 1; the labels name the running build.");
    describe_counter!("hyperfleet_api_requests_total", "HTTP requests served, by method, route and status code.");
    describe_histogram!(
        "hyperfleet_api_request_duration_seconds",
        Unit::Seconds,
        "Time to serve an HTTP request, by method and route."
    );
    describe_counter!("hyperfleet_api_errors_total", "Error responses sent, by error code.");
    describe_counter!(
        "hyperfleet_api_auth_failures_total",
        "Requests refused because their bearer token failed verification."
    );
    describe_counter!(
        "hyperfleet_api_authorization_denials_total",
        "Requests refused with 403 because the caller's identity lacks the permission (authz.rules)."
    );
    describe_counter!(
        "hyperfleet_api_status_reports_discarded_total",
        "Adapter status reports answered 204 but not stored (out of order, stale or repeated)."
    );
    describe_counter!(
        "hyperfleet_api_reconciliation_started_total",
        "Resources whose Reconciled condition went from True to False, by resource type and deletion."
    );
    describe_counter!("hyperfleet_api_resources_created_total", "Resources created, by kind.");
    describe_counter!(
        "hyperfleet_api_watch_disconnects_total",
        "Change-feed watchers disconnected by the API, by reason."
    );
    describe_counter!(
        "hyperfleet_api_watch_queries_total",
        "Change-feed queries: by the shared reader (by=reader) and by watchers catching up or with a search filter (by=watcher)."
    );
    describe_gauge!(
        "hyperfleet_api_watch_streams",
        "Change feeds (?watch=true) open now; bounded by watch.max_streams (429 beyond)."
    );
    describe_gauge!(
        "hyperfleet_api_resource_pending_reconciliation",
        Unit::Count,
        "Resources whose Reconciled condition is not True, by resource type."
    );
    describe_gauge!(
        "hyperfleet_api_resource_pending_reconciliation_stuck",
        Unit::Count,
        "Resources not Reconciled for longer than reconciliation_stuck_threshold, by resource type."
    );
    describe_gauge!(
        "hyperfleet_api_resource_pending_reconciliation_stuck_duration_seconds",
        Unit::Seconds,
        "How long the longest-stuck resource has not been Reconciled (0 when none is stuck), by resource type."
    );
    describe_gauge!("hyperfleet_db_connections_open", Unit::Count, "Connections open in the database pool.");
    describe_gauge!("hyperfleet_db_connections_in_use", Unit::Count, "Connections of the database pool in use.");
    describe_counter!("hyperfleet_db_errors_total", "Database operations that failed.");
    describe_histogram!(
        "hyperfleet_db_query_duration_seconds",
        Unit::Seconds,
        "Time of a database round trip, by query."
    );
}

/// `hyperfleet_api_build_info` = 1 with the build's labels.
pub fn build_info() {
    metrics::gauge!("hyperfleet_api_build_info", "component" => "api", "version" => VERSION, "commit" => COMMIT)
        .set(1.0);
}

/// The route template with path parameters replaced by `-` (`/api/hyperfleet/v1/clusters/-`), so
/// label values stay few; requests that matched no route count as `unmatched`.
pub fn path_label(matched: Option<&str>) -> String {
    match matched {
        None => "unmatched".into(),
        Some(p) => p.split('/').map(|s| if s.starts_with('{') { "-" } else { s }).collect::<Vec<_>>().join("/"),
    }
}

/// Middleware: `hyperfleet_api_requests_total` and `hyperfleet_api_request_duration_seconds`.
pub async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let path = path_label(req.extensions().get::<MatchedPath>().map(MatchedPath::as_str));
    let resp = next.run(req).await;
    let code = resp.status().as_u16().to_string();
    metrics::counter!("hyperfleet_api_requests_total",
        "component" => "api", "version" => VERSION, "method" => method.clone(), "path" => path.clone(), "code" => code)
    .increment(1);
    metrics::histogram!("hyperfleet_api_request_duration_seconds",
        "component" => "api", "version" => VERSION, "method" => method, "path" => path)
    .record(started.elapsed().as_secs_f64());
    resp
}

/// Records one database round trip in `hyperfleet_db_query_duration_seconds`.
pub fn db_query(query: &'static str, started: Instant) {
    metrics::histogram!("hyperfleet_db_query_duration_seconds", "query" => query)
        .record(started.elapsed().as_secs_f64());
}

#[derive(sqlx::FromRow)]
struct Pending {
    kind: String,
    pending: i64,
    stuck: i64,
    stuck_seconds: f64,
}

/// Resources whose `Reconciled` is not `True`, per kind; "stuck" once that has lasted longer than
/// `threshold` (measured from the condition's last transition).
const PENDING_SQL: &str = "\
    select kind, count(*) filter (where pending) as pending, \
           count(*) filter (where pending and since < now() - make_interval(secs => $1)) as stuck, \
           coalesce(extract(epoch from max(now() - since) \
               filter (where pending and since < now() - make_interval(secs => $1))), 0)::float8 as stuck_seconds \
    from (select kind, \
                 not conditions @> '[{\"type\": \"Reconciled\", \"status\": \"True\"}]'::jsonb as pending, \
                 coalesce((select (c ->> 'last_transition_time')::timestamptz \
                           from jsonb_array_elements(conditions) c where c ->> 'type' = 'Reconciled' limit 1), \
                          created_time) as since \
          from resources) r \
    group by kind";

async fn refresh(db: &PgPool, threshold: Duration) {
    metrics::gauge!("hyperfleet_db_connections_open").set(f64::from(db.size()));
    metrics::gauge!("hyperfleet_db_connections_in_use").set(db.size().saturating_sub(db.num_idle() as u32) as f64);
    let started = Instant::now();
    let rows: Result<Vec<Pending>, _> = sqlx::query_as(PENDING_SQL).bind(threshold.as_secs_f64()).fetch_all(db).await;
    db_query("reconciliation_stats", started);
    match rows {
        Ok(rows) => {
            for kind in [crate::domain::model::Kind::Cluster, crate::domain::model::Kind::NodePool] {
                let row = rows.iter().find(|r| r.kind == kind.name());
                let labels = [("resource_type", kind.plural())];
                let (pending, stuck, secs) = row.map_or((0, 0, 0.0), |r| (r.pending, r.stuck, r.stuck_seconds));
                metrics::gauge!("hyperfleet_api_resource_pending_reconciliation", &labels).set(pending as f64);
                metrics::gauge!("hyperfleet_api_resource_pending_reconciliation_stuck", &labels).set(stuck as f64);
                metrics::gauge!("hyperfleet_api_resource_pending_reconciliation_stuck_duration_seconds", &labels)
                    .set(secs);
            }
        }
        Err(e) => {
            metrics::counter!("hyperfleet_db_errors_total").increment(1);
            tracing::debug!(error = %e, "reconciliation gauges not refreshed");
        }
    }
}

/// Refreshes the database-derived gauges before each scrape, as the original computes them.
pub fn scrape_hook(db: PgPool, threshold: Duration) -> hyperfleet_common::ops::ScrapeHook {
    Arc::new(move || {
        let db = db.clone();
        Box::pin(async move { refresh(&db, threshold).await })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_labels_hide_ids() {
        assert_eq!(path_label(Some("/api/hyperfleet/v1/clusters/{id}")), "/api/hyperfleet/v1/clusters/-");
        assert_eq!(
            path_label(Some("/api/hyperfleet/v1/clusters/{cluster_id}/nodepools/{id}/statuses")),
            "/api/hyperfleet/v1/clusters/-/nodepools/-/statuses"
        );
        assert_eq!(path_label(None), "unmatched");
    }
}
