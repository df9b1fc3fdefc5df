//! Adapter reports in the `adapter_statuses` table.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{FromRow, PgConnection, types::Json as SqlJson};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    domain::{
        aggregation::{Report, ReportedCondition},
        model::{AdapterCondition, AdapterStatus, rfc3339},
        validation::StatusReport,
    },
    error::ApiError,
};

/// A stored report.
#[derive(Debug, Clone, FromRow)]
pub struct StatusRow {
    pub adapter: String,
    pub observed_generation: i32,
    pub conditions: SqlJson<Vec<ReportedCondition>>,
    pub data: SqlJson<Value>,
    pub metadata: Option<SqlJson<Value>>,
    pub created_time: DateTime<Utc>,
    pub last_report_time: DateTime<Utc>,
}

const STATUS_COLUMNS: &str = "adapter, observed_generation, conditions, data, metadata, created_time, last_report_time";

impl StatusRow {
    /// What aggregation reads of the report.
    pub fn report(self) -> Report {
        Report {
            adapter: self.adapter,
            observed_generation: self.observed_generation,
            conditions: self.conditions.0,
            last_report_time: self.last_report_time,
        }
    }

    /// The representation clients see.
    pub fn view(&self) -> AdapterStatus {
        AdapterStatus {
            adapter: self.adapter.clone(),
            observed_generation: self.observed_generation,
            conditions: self
                .conditions
                .0
                .iter()
                .filter(|c| matches!(c.status.as_str(), "True" | "False" | "Unknown"))
                .map(|c| AdapterCondition {
                    kind: c.kind.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                    last_transition_time: rfc3339(c.last_transition_time),
                })
                .collect(),
            data: self.data.0.clone(),
            metadata: self.metadata.as_ref().map(|m| m.0.clone()),
            created_time: rfc3339(self.created_time),
            last_report_time: rfc3339(self.last_report_time),
        }
    }
}

/// Every stored report of a resource, as stored. Nothing locks them: whoever writes a resource's
/// reports holds the resource's row lock (and the version lock), which orders its reports' writers.
pub async fn rows(conn: &mut PgConnection, resource: Uuid) -> Result<Vec<StatusRow>, ApiError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {STATUS_COLUMNS} from adapter_statuses where resource_id = $1"
    )))
    .bind(resource)
    .fetch_all(conn)
    .await?)
}

/// Every stored report of a resource, for aggregation.
pub async fn reports(conn: &mut PgConnection, resource: Uuid) -> Result<Vec<Report>, ApiError> {
    Ok(rows(conn, resource).await?.into_iter().map(StatusRow::report).collect())
}

/// Every stored report of each of `resources` (one query), for aggregation.
pub async fn reports_of(conn: &mut PgConnection, resources: &[Uuid]) -> Result<HashMap<Uuid, Vec<Report>>, ApiError> {
    #[derive(FromRow)]
    struct Reported {
        resource_id: Uuid,
        #[sqlx(flatten)]
        row: StatusRow,
    }
    let rows: Vec<Reported> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select resource_id, {STATUS_COLUMNS} from adapter_statuses where resource_id = any($1)"
    )))
    .bind(resources)
    .fetch_all(conn)
    .await?;
    let mut by_resource: HashMap<Uuid, Vec<Report>> = HashMap::new();
    for Reported { resource_id, row } in rows {
        by_resource.entry(resource_id).or_default().push(row.report());
    }
    Ok(by_resource)
}

/// Stores `report` as its adapter's report on `resource`; a condition whose status did not change
/// keeps the transition time `previous` had.
pub async fn upsert(
    conn: &mut PgConnection,
    resource: Uuid,
    report: &StatusReport,
    observed_time: DateTime<Utc>,
    previous: Option<&StatusRow>,
) -> Result<StatusRow, ApiError> {
    let conditions: Vec<ReportedCondition> = report
        .conditions
        .iter()
        .map(|c| {
            let kept = previous
                .and_then(|p| p.conditions.0.iter().find(|s| s.kind == c.kind && s.status == c.status))
                .map(|s| s.last_transition_time);
            ReportedCondition {
                kind: c.kind.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                last_transition_time: kept.unwrap_or(observed_time),
            }
        })
        .collect();
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into adapter_statuses (resource_id, adapter, observed_generation, conditions, data, metadata, \
         created_time, last_report_time) values ($1, $2, $3, $4, $5, $6, $7, $7) \
         on conflict (resource_id, adapter) do update set observed_generation = excluded.observed_generation, \
         conditions = excluded.conditions, data = excluded.data, metadata = excluded.metadata, \
         last_report_time = excluded.last_report_time returning {STATUS_COLUMNS}"
    )))
    .bind(resource)
    .bind(&report.adapter)
    .bind(report.observed_generation)
    .bind(SqlJson(&conditions))
    .bind(SqlJson(&report.data))
    .bind(report.metadata.as_ref().map(SqlJson))
    .bind(observed_time)
    .fetch_one(conn)
    .instrument(crate::store::write_span("upsert adapter_statuses"))
    .await?)
}

/// A page of a resource's reports in adapter order, and how many there are.
pub async fn list(
    conn: &mut PgConnection,
    resource: Uuid,
    (limit, offset): (i64, i64),
) -> Result<(i64, Vec<StatusRow>), ApiError> {
    let total: i64 = sqlx::query_scalar("select count(*) from adapter_statuses where resource_id = $1")
        .bind(resource)
        .fetch_one(&mut *conn)
        .await?;
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {STATUS_COLUMNS} from adapter_statuses where resource_id = $1 order by adapter limit $2 offset $3"
    )))
    .bind(resource)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await?;
    Ok((total, rows))
}
