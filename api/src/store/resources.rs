//! Clusters and nodepools in the `resources` table.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::{PgConnection, types::Json as SqlJson};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    domain::{
        aggregation::{self, Condition},
        model::{Kind, Row},
        search::Filter,
    },
    error::ApiError,
    store::{self, selection_args, selection_sql, statuses},
};

/// Columns in [`Row`] order.
pub const COLUMNS: &str = "id, kind, name, owner_id, spec, labels, conditions, generation, created_time, updated_time, \
                           created_by, updated_by, deleted_time, deleted_by, version, trace_parent";

/// The current request's `traceparent`, stored with a new generation (null when not traced).
fn trace_parent() -> Option<String> {
    hyperfleet_common::telemetry::current_traceparent().map(|(parent, _)| parent)
}

/// One resource by id and kind, optionally locked for update.
pub async fn load(conn: &mut PgConnection, id: Uuid, kind: Kind, lock: bool) -> Result<Option<Row>, ApiError> {
    let sql =
        format!("select {COLUMNS} from resources where id = $1 and kind = $2{}", if lock { " for update" } else { "" });
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(kind.name()).fetch_optional(conn).await?)
}

/// What a create stores.
pub struct NewRow<'a> {
    pub kind: Kind,
    pub name: &'a str,
    pub owner: Option<Uuid>,
    pub spec: &'a Map<String, Value>,
    pub labels: &'a BTreeMap<String, String>,
    pub conditions: &'a [Condition],
    pub at: DateTime<Utc>,
    pub by: &'a str,
}

/// Inserts a new resource; a live one of the same kind and name (under the same parent) is a
/// 409 `Duplicate`.
pub async fn insert(conn: &mut PgConnection, new: NewRow<'_>) -> Result<Row, ApiError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into resources (id, kind, name, owner_id, spec, labels, conditions, created_time, updated_time, \
         created_by, updated_by, trace_parent) values ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $9, $10) returning {COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(new.kind.name())
    .bind(new.name)
    .bind(new.owner)
    .bind(SqlJson(new.spec))
    .bind(SqlJson(new.labels))
    .bind(SqlJson(new.conditions))
    .bind(new.at)
    .bind(new.by)
    .bind(trace_parent())
    .fetch_one(conn)
    .instrument(store::write_span("insert resources"))
    .await
    .map_err(|e| match e.as_database_error().and_then(|d| d.constraint()) {
        Some("resources_top_level_name_key" | "resources_child_name_key") => {
            ApiError::Duplicate { kind: new.kind.name() }
        }
        _ => ApiError::from(e),
    })
}

/// A new generation with `labels` and, when given, `spec` (a spec left out is not rewritten: the
/// stored text stays as it is).
pub async fn update(
    conn: &mut PgConnection,
    id: Uuid,
    spec: Option<&Map<String, Value>>,
    labels: &BTreeMap<String, String>,
    at: DateTime<Utc>,
    by: &str,
) -> Result<Row, ApiError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update resources set spec = coalesce($2, spec), labels = $3, generation = generation + 1, updated_time = $4, \
         updated_by = $5, trace_parent = $6 where id = $1 returning {COLUMNS}"
    )))
    .bind(id)
    .bind(spec.map(SqlJson))
    .bind(SqlJson(labels))
    .bind(at)
    .bind(by)
    .bind(trace_parent())
    .fetch_one(conn)
    .instrument(store::write_span("update resources"))
    .await?)
}

/// Marks one resource deleted (a new generation).
pub async fn mark_deleted(conn: &mut PgConnection, id: Uuid, at: DateTime<Utc>, by: &str) -> Result<Row, ApiError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update resources set deleted_time = $2, deleted_by = $3, updated_time = $2, updated_by = $3, \
         generation = generation + 1, trace_parent = $4 where id = $1 returning {COLUMNS}"
    )))
    .bind(id)
    .bind(at)
    .bind(by)
    .bind(trace_parent())
    .fetch_one(conn)
    .instrument(store::write_span("delete resources"))
    .await?)
}

/// Marks every live child of `owner` deleted, in one statement; returns them.
pub async fn mark_children_deleted(
    conn: &mut PgConnection,
    owner: Uuid,
    at: DateTime<Utc>,
    by: &str,
) -> Result<Vec<Row>, ApiError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update resources set deleted_time = $2, deleted_by = $3, updated_time = $2, updated_by = $3, \
         generation = generation + 1, trace_parent = $4 where owner_id = $1 and deleted_time is null returning {COLUMNS}"
    )))
    .bind(owner)
    .bind(at)
    .bind(by)
    .bind(trace_parent())
    .fetch_all(conn)
    .await?)
}

/// Removes resources for good (their children, reports and conditions go with them: the foreign
/// keys cascade).
pub async fn delete(conn: &mut PgConnection, ids: &[Uuid]) -> Result<(), ApiError> {
    sqlx::query("delete from resources where id = any($1)").bind(ids).execute(conn).await?;
    Ok(())
}

/// Whether `owner` has children: any (`live_only` false) or only those not marked for deletion.
/// Only clusters have children (nodepools): for any other kind the answer is no, without a query.
pub async fn has_children(conn: &mut PgConnection, owner: &Row, live_only: bool) -> Result<bool, ApiError> {
    if owner.kind() != Kind::Cluster {
        return Ok(false);
    }
    let sql = if live_only {
        "select exists(select 1 from resources where owner_id = $1 and deleted_time is null)"
    } else {
        "select exists(select 1 from resources where owner_id = $1)"
    };
    Ok(sqlx::query_scalar(sql).bind(owner.id).fetch_one(conn).await?)
}

/// Which of `owners` have children not marked for deletion (one query; [`has_children`] for many).
pub async fn with_live_children(conn: &mut PgConnection, owners: &[Uuid]) -> Result<Vec<Uuid>, ApiError> {
    Ok(sqlx::query_scalar("select distinct owner_id from resources where owner_id = any($1) and deleted_time is null")
        .bind(owners)
        .fetch_all(conn)
        .await?)
}

/// The aggregated conditions `row` should have with `required`, given its adapters' stored
/// `reports` and whether it has live children.
fn aggregated(
    row: &Row,
    required: &[String],
    reports: &[aggregation::Report],
    live_children: bool,
) -> Vec<aggregation::Condition> {
    aggregation::aggregate(&aggregation::Input {
        generation: row.generation,
        ref_time: row.updated_time,
        deleting: row.deleted_time.is_some(),
        live_children,
        required,
        reports,
        previous: &row.conditions.0,
    })
}

/// Recomputes a resource's aggregated conditions from its adapters' reports and stores them when
/// they changed; returns the row as it is now.
pub async fn reaggregate(conn: &mut PgConnection, row: Row, required: &[String]) -> Result<Row, ApiError> {
    let reports = statuses::reports(conn, row.id).await?;
    reaggregate_with(conn, row, required, &reports).await
}

/// [`reaggregate`] with the resource's `reports` as its caller has them (read under its row lock).
pub async fn reaggregate_with(
    conn: &mut PgConnection,
    mut row: Row,
    required: &[String],
    reports: &[aggregation::Report],
) -> Result<Row, ApiError> {
    let live_children = has_children(conn, &row, true).await?;
    let conditions = aggregated(&row, required, reports, live_children);
    if conditions != row.conditions.0 {
        row.version = sqlx::query_scalar("update resources set conditions = $2 where id = $1 returning version")
            .bind(row.id)
            .bind(SqlJson(&conditions))
            .fetch_one(&mut *conn)
            .await?;
        if row.conditions.0.iter().any(|c| c.kind == aggregation::RECONCILED && c.status == "True")
            && conditions.iter().any(|c| c.kind == aggregation::RECONCILED && c.status == "False")
        {
            metrics::counter!("hyperfleet_api_reconciliation_started_total",
                "resource_type" => row.kind().plural(), "is_delete" => row.deleted_time.is_some().to_string())
            .increment(1);
        }
        row.conditions = SqlJson(conditions);
    }
    Ok(row)
}

/// The advisory lock (session level) held by the one API process re-aggregating at a time.
const REAGGREGATION_LOCK: i64 = 7_306_195_427;

/// Re-aggregates every resource of `kind` when the required adapters differ from those its
/// conditions were last aggregated with (the `aggregated_with` table), or always with `force`: a
/// newly required adapter makes resources un-Reconciled until it has reported, a removed one may
/// make them Reconciled. One API process at a time does it (a session advisory lock; another
/// finds it taken and returns `Ok(None)`). Rows are read in small batches without locks; those
/// whose conditions would change are written in a write transaction of their own — the versions
/// lock first, then the rows, as every writer takes them —, so writers wait for one batch's writes
/// at most, and not at all for a pass that changes nothing. The set is recorded once the pass is
/// done (a pass cut short is made again). `Ok(None)`: nothing was done; else how many resources
/// were looked at and changed.
pub async fn reaggregate_if_required_changed(
    pool: &sqlx::PgPool,
    kind: Kind,
    required: &[String],
    force: bool,
) -> Result<Option<(u64, u64)>, ApiError> {
    // Rows read at a time, and rows written in one write transaction at most.
    const READ: i64 = 100;
    const WRITE: usize = 25;
    let mut wanted = required.to_vec();
    wanted.sort();
    wanted.dedup();
    let recorded: Option<Vec<String>> =
        sqlx::query_scalar("select required_adapters from aggregated_with where kind = $1")
            .bind(kind.name())
            .fetch_optional(pool)
            .await?;
    if !force && recorded.as_deref() == Some(wanted.as_slice()) {
        return Ok(None);
    }
    // Outside the pool: the lock goes with the connection, whatever happens to the pass.
    let mut lock = pool.acquire().await?.detach();
    let locked: bool =
        sqlx::query_scalar("select pg_try_advisory_lock($1)").bind(REAGGREGATION_LOCK).fetch_one(&mut lock).await?;
    if !locked {
        return Ok(None);
    }
    let (mut seen, mut changed, mut after) = (0, 0, Uuid::nil());
    loop {
        // Read without locks, a batch's reports and children in one query each; only the resources
        // whose conditions would change are written, in a write transaction that reads them afresh
        // under the locks. A pass that changes nothing (the repass after a rollout, usually) never
        // holds up a writer.
        let mut conn = pool.acquire().await?;
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {COLUMNS} from resources where kind = $1 and id > $2 order by id limit $3"
        )))
        .bind(kind.name())
        .bind(after)
        .bind(READ)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = rows.last().map(|r| r.id) else { break };
        seen += rows.len() as u64;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let mut reports = statuses::reports_of(&mut conn, &ids).await?;
        let parents = with_live_children(&mut conn, &ids).await?;
        drop(conn);
        let stale: Vec<Uuid> = rows
            .iter()
            .filter(|row| {
                let reports = reports.remove(&row.id).unwrap_or_default();
                // In the configured order, as requests aggregate (it orders the adapters' conditions).
                aggregated(row, required, &reports, parents.contains(&row.id)) != row.conditions.0
            })
            .map(|row| row.id)
            .collect();
        for stale in stale.chunks(WRITE) {
            let mut tx = store::write(pool).await?;
            let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "select {COLUMNS} from resources where id = any($1) order by id for update"
            )))
            .bind(stale)
            .fetch_all(&mut **tx)
            .await?;
            for row in rows {
                let version = row.version;
                if reaggregate(&mut tx, row, required).await?.version != version {
                    changed += 1;
                }
            }
            tx.commit().await?;
        }
        after = last;
    }
    sqlx::query(
        "insert into aggregated_with (kind, required_adapters) values ($1, $2) \
         on conflict (kind) do update set required_adapters = excluded.required_adapters",
    )
    .bind(kind.name())
    .bind(&wanted)
    .execute(pool)
    .await?;
    let _ = sqlx::Connection::close(lock).await;
    Ok(Some((seen, changed)))
}

/// One page of a list.
pub struct Page {
    /// Matching resources across all pages (when asked for).
    pub total: Option<i64>,
    pub rows: Vec<Row>,
}

/// A page of the resources of `kind` (under `parent`) matching `filter`, in `order` (a clause
/// the listing parameters built from an allowlist). `total` counts them all, in the same snapshot.
pub async fn list(
    conn: &mut PgConnection,
    kind: Kind,
    parent: Option<Uuid>,
    filter: Option<&Filter>,
    order: &str,
    (limit, offset): (i64, i64),
    total: bool,
) -> Result<Page, ApiError> {
    let (selection, n) = selection_sql(filter);
    let total = if total {
        let sql = format!("select count(*) from resources where {selection}");
        Some(
            sqlx::query_scalar_with(sqlx::AssertSqlSafe(sql), selection_args(kind.name(), parent, filter, &[])?)
                .fetch_one(&mut *conn)
                .await?,
        )
    } else {
        None
    };
    let sql =
        format!("select {COLUMNS} from resources where {selection} order by {order} limit ${n} offset ${}", n + 1);
    let rows =
        sqlx::query_as_with(sqlx::AssertSqlSafe(sql), selection_args(kind.name(), parent, filter, &[limit, offset])?)
            .fetch_all(conn)
            .await?;
    Ok(Page { total, rows })
}
