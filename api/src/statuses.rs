//! Adapter status reporting (reference §2.9): `PUT …/statuses` upserts one adapter's report,
//! `GET …/statuses` lists them. A report may be discarded (204) — future or stale generation, older
//! than the stored one, a repeated `Available=Unknown` — which adapters must not treat as failure.
//! A report with `Finalized=True` on a resource being deleted may hard-delete it (§2.10).

use std::collections::{HashMap, HashSet};

use axum::{
    Json,
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::{FromRow, PgConnection, types::Json as SqlJson};
use uuid::Uuid;

use crate::{
    aggregation::{Report, ReportedCondition},
    error::{ApiError, FieldError},
    listing::{self, ListBody},
    model::{now, rfc3339},
    resources::{AppState, JsonBody, KindRoute, Target, reaggregate},
};

const MANDATORY: [&str; 3] = ["Available", "Applied", "Health"];

/// A stored report.
#[derive(Debug, Clone, FromRow)]
struct StatusRow {
    adapter: String,
    observed_generation: i32,
    conditions: SqlJson<Vec<ReportedCondition>>,
    data: SqlJson<Value>,
    metadata: Option<SqlJson<Value>>,
    created_time: DateTime<Utc>,
    last_report_time: DateTime<Utc>,
}

const STATUS_COLUMNS: &str = "adapter, observed_generation, conditions, data, metadata, created_time, last_report_time";

/// One adapter's latest report about a resource.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AdapterStatus {
    adapter: String,
    observed_generation: i32,
    conditions: Vec<ConditionView>,
    #[schema(value_type = Object)]
    data: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>, nullable = false)]
    metadata: Option<Value>,
    created_time: String,
    last_report_time: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = AdapterCondition)]
struct ConditionView {
    #[serde(rename = "type")]
    kind: String,
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    last_transition_time: String,
}

impl StatusRow {
    fn view(&self) -> AdapterStatus {
        AdapterStatus {
            adapter: self.adapter.clone(),
            observed_generation: self.observed_generation,
            conditions: self
                .conditions
                .0
                .iter()
                .filter(|c| matches!(c.status.as_str(), "True" | "False" | "Unknown"))
                .map(|c| ConditionView {
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

/// Every stored report of a resource, for aggregation.
pub async fn reports(conn: &mut PgConnection, resource: Uuid) -> Result<Vec<Report>, ApiError> {
    let rows: Vec<StatusRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {STATUS_COLUMNS} from adapter_statuses where resource_id = $1"
    )))
    .bind(resource)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Report {
            adapter: r.adapter,
            observed_generation: r.observed_generation,
            conditions: r.conditions.0,
            last_report_time: r.last_report_time,
        })
        .collect())
}

/// A validated report body.
#[derive(Debug)]
pub struct Incoming {
    adapter: String,
    observed_generation: i32,
    observed_time: Option<DateTime<Utc>>,
    conditions: Vec<(String, String, Option<String>, Option<String>)>,
    data: Value,
    metadata: Option<Value>,
}

impl Incoming {
    fn status_of(&self, kind: &str) -> Option<&str> {
        self.conditions.iter().find(|c| c.0 == kind).map(|c| c.1.as_str())
    }
}

fn field_error(field: &str, value: Option<&Value>, constraint: &'static str, message: String) -> ApiError {
    ApiError::Validation {
        detail: message.clone(),
        errors: vec![FieldError { field: field.into(), value: value.cloned(), constraint, message }],
    }
}

fn opt_string(obj: &Map<String, Value>, key: &str, field: &str) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(field_error(field, Some(other), "format", format!("field '{field}' must be a string"))),
    }
}

/// Validates a report body (400 `HYPERFLEET-VAL-000` on any violation). `at` is the server's clock.
pub fn validate(body: &Value, at: DateTime<Utc>, limits: &crate::config::LimitsConfig) -> Result<Incoming, ApiError> {
    let obj = body.as_object().ok_or_else(|| ApiError::Malformed("request body must be a JSON object".into()))?;
    let adapter = match obj.get("adapter") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        other => return Err(field_error("adapter", other, "required", "adapter is required".into())),
    };
    if !crate::config::adapter_name_ok(&adapter) {
        return Err(field_error(
            "adapter",
            obj.get("adapter"),
            "format",
            "adapter must be a DNS label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
                .into(),
        ));
    }
    let observed_generation = match obj.get("observed_generation") {
        Some(Value::Number(n)) => match n.as_i64() {
            Some(g) if (1..=i64::from(i32::MAX)).contains(&g) => g as i32,
            _ => {
                return Err(field_error(
                    "observed_generation",
                    obj.get("observed_generation"),
                    "min",
                    "observed_generation must be an integer of at least 1".into(),
                ));
            }
        },
        None | Some(Value::Null) => {
            return Err(field_error("observed_generation", None, "required", "observed_generation is required".into()));
        }
        other => {
            return Err(field_error(
                "observed_generation",
                other,
                "format",
                "observed_generation must be an integer of at least 1".into(),
            ));
        }
    };
    let observed_time = match obj.get("observed_time") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let t = DateTime::parse_from_rfc3339(s)
                .map_err(|_| {
                    field_error(
                        "observed_time",
                        obj.get("observed_time"),
                        "format",
                        "observed_time must be an RFC 3339 timestamp".into(),
                    )
                })?
                .with_timezone(&Utc);
            if t > at + Duration::minutes(5) {
                return Err(field_error(
                    "observed_time",
                    obj.get("observed_time"),
                    "max",
                    "observed_time must not be more than 5 minutes in the future".into(),
                ));
            }
            if t < at - Duration::minutes(30) {
                return Err(field_error(
                    "observed_time",
                    obj.get("observed_time"),
                    "min",
                    "observed_time must not be more than 30 minutes in the past".into(),
                ));
            }
            Some(t)
        }
        Some(other) => {
            return Err(field_error(
                "observed_time",
                Some(other),
                "format",
                "field 'observed_time' must be a string".into(),
            ));
        }
    };
    let list = match obj.get("conditions") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => {
            return Err(field_error("conditions", None, "required", "conditions is required".into()));
        }
        Some(other) => {
            return Err(field_error("conditions", Some(other), "format", "field 'conditions' must be an array".into()));
        }
    };
    if list.len() > limits.max_conditions {
        return Err(field_error(
            "conditions",
            None,
            "max",
            format!(
                "{} conditions; at most {} are accepted (limits.max_conditions)",
                list.len(),
                limits.max_conditions
            ),
        ));
    }
    let mut seen = HashSet::new();
    let mut conditions = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        let field = format!("conditions[{i}]");
        let c = c
            .as_object()
            .ok_or_else(|| field_error(&field, Some(c), "format", format!("field '{field}' must be an object")))?;
        let kind = match c.get("type") {
            Some(Value::String(t)) if !t.trim().is_empty() => t.clone(),
            other => {
                return Err(field_error(
                    &format!("{field}.type"),
                    other,
                    "required",
                    "condition type is required".into(),
                ));
            }
        };
        if !seen.insert(kind.clone()) {
            return Err(field_error(
                &format!("{field}.type"),
                c.get("type"),
                "unique",
                format!("duplicate condition type '{kind}'"),
            ));
        }
        let status = match c.get("status") {
            Some(Value::String(s)) if matches!(s.as_str(), "True" | "False" | "Unknown") => s.clone(),
            other => {
                return Err(field_error(
                    &format!("{field}.status"),
                    other,
                    "enum",
                    format!("condition '{kind}' status must be True, False or Unknown"),
                ));
            }
        };
        let reason = opt_string(c, "reason", &format!("{field}.reason"))?;
        let message = opt_string(c, "message", &format!("{field}.message"))?;
        conditions.push((kind, status, reason, message));
    }
    let data = match obj.get("data") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(other) => return Err(field_error("data", Some(other), "format", "field 'data' must be an object".into())),
    };
    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(other) => {
            return Err(field_error("metadata", Some(other), "format", "field 'metadata' must be an object".into()));
        }
    };
    crate::validation::within("data", &data, limits.max_status_bytes, "limits.max_status_bytes")?;
    if let Some(m) = &metadata {
        crate::validation::within("metadata", m, limits.max_status_bytes, "limits.max_status_bytes")?;
    }
    Ok(Incoming { adapter, observed_generation, observed_time, conditions, data, metadata })
}

pub async fn put<K: KindRoute>(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    grants: Option<axum::Extension<crate::authz::Grants>>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let incoming = validate(&body, now(), &state.limits)?;
    // An adapter's identity reports under its own name only (authentication on).
    if let Some(axum::Extension(g)) = &grants
        && !g.may_report_as(&incoming.adapter)
    {
        metrics::counter!("hyperfleet_api_authorization_denials_total").increment(1);
        return Err(ApiError::Forbidden(g.report_refusal(&incoming.adapter)));
    }
    let mut tx = state.write().await?;
    let row = Target::from_path(K::KIND, &params).load(&mut tx, true).await?;
    if !state.may_report(row.kind(), &incoming.adapter) {
        return Err(field_error(
            "adapter",
            body.get("adapter"),
            "enum",
            format!(
                "adapter '{}' is neither required for {}s (required_adapters) nor in optional_adapters",
                incoming.adapter,
                K::KIND.name().to_lowercase()
            ),
        ));
    }
    let discard = |why: &str| {
        tracing::debug!(id = %row.id, adapter = %incoming.adapter, why, "status report discarded");
        metrics::counter!("hyperfleet_api_status_reports_discarded_total").increment(1);
        StatusCode::NO_CONTENT.into_response()
    };
    if incoming.observed_generation > row.generation {
        return Ok(discard("observed_generation is ahead of the resource"));
    }
    let stored: Option<StatusRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {STATUS_COLUMNS} from adapter_statuses where resource_id = $1 and adapter = $2 for update"
    )))
    .bind(row.id)
    .bind(&incoming.adapter)
    .fetch_optional(&mut *tx)
    .await?;
    if stored.as_ref().is_some_and(|s| s.observed_generation > incoming.observed_generation) {
        return Ok(discard("a newer generation is already reported"));
    }
    let Some(observed_time) = incoming.observed_time else {
        return Ok(discard("no observed_time"));
    };
    if stored
        .as_ref()
        .is_some_and(|s| s.observed_generation == incoming.observed_generation && observed_time < s.last_report_time)
    {
        return Ok(discard("older than the stored report"));
    }
    if let Some(missing) = MANDATORY.iter().find(|m| incoming.status_of(m).is_none()) {
        return Err(ApiError::validation(
            "conditions",
            None,
            "required",
            format!("missing mandatory condition '{missing}': all adapters must report Available, Applied, and Health"),
        ));
    }
    let available = incoming.status_of("Available").unwrap_or("Unknown");
    if available == "Unknown" && stored.is_some() {
        return Ok(discard("repeated Available=Unknown"));
    }
    let report = match stored {
        Some(s)
            if !(s.observed_generation < incoming.observed_generation
                || (s.observed_generation == incoming.observed_generation && s.last_report_time < observed_time)) =>
        {
            s // an identical re-send: nothing to write
        }
        previous => upsert(&mut tx, row.id, &incoming, observed_time, previous.as_ref()).await?,
    };

    let finalized = incoming.status_of("Finalized") == Some("True");
    if row.deleted_time.is_some() && finalized && finalize(&state, &mut tx, &row).await? {
        tx.commit().await?;
        return Ok((StatusCode::CREATED, Json(report.view())).into_response());
    }
    if available != "Unknown" {
        reaggregate(&state, &mut tx, row).await?;
    }
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(report.view())).into_response())
}

async fn upsert(
    conn: &mut PgConnection,
    resource: Uuid,
    incoming: &Incoming,
    observed_time: DateTime<Utc>,
    previous: Option<&StatusRow>,
) -> Result<StatusRow, ApiError> {
    let conditions: Vec<ReportedCondition> = incoming
        .conditions
        .iter()
        .map(|(kind, status, reason, message)| {
            let kept = previous
                .and_then(|p| p.conditions.0.iter().find(|c| &c.kind == kind && &c.status == status))
                .map(|c| c.last_transition_time);
            ReportedCondition {
                kind: kind.clone(),
                status: status.clone(),
                reason: reason.clone(),
                message: message.clone(),
                last_transition_time: kept.unwrap_or(observed_time),
            }
        })
        .collect();
    let row: StatusRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into adapter_statuses (resource_id, adapter, observed_generation, conditions, data, metadata, \
         created_time, last_report_time) values ($1, $2, $3, $4, $5, $6, $7, $7) \
         on conflict (resource_id, adapter) do update set observed_generation = excluded.observed_generation, \
         conditions = excluded.conditions, data = excluded.data, metadata = excluded.metadata, \
         last_report_time = excluded.last_report_time returning {STATUS_COLUMNS}"
    )))
    .bind(resource)
    .bind(&incoming.adapter)
    .bind(incoming.observed_generation)
    .bind(SqlJson(&conditions))
    .bind(SqlJson(&incoming.data))
    .bind(incoming.metadata.as_ref().map(SqlJson))
    .bind(observed_time)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row)
}

/// Hard-deletes a resource being deleted once every required adapter reported `Finalized=True` at
/// its current generation and no child is left. Returns whether it was deleted.
async fn finalize(state: &AppState, conn: &mut PgConnection, row: &crate::model::Row) -> Result<bool, ApiError> {
    let reports = reports(conn, row.id).await?;
    let all_final = state.required(row.kind()).iter().all(|name| {
        reports.iter().any(|r| {
            &r.adapter == name
                && r.observed_generation == row.generation
                && r.condition("Finalized").is_some_and(|c| c.status == "True")
        })
    });
    let children: bool = sqlx::query_scalar("select exists(select 1 from resources where owner_id = $1)")
        .bind(row.id)
        .fetch_one(&mut *conn)
        .await?;
    if !all_final || children {
        return Ok(false);
    }
    sqlx::query("delete from resources where id = $1").bind(row.id).execute(&mut *conn).await?;
    tracing::info!(id = %row.id, kind = %row.kind, "resource finalized by its adapters and deleted");
    Ok(true)
}

pub async fn list<K: KindRoute>(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
) -> Result<Json<ListBody<AdapterStatus>>, ApiError> {
    let (page, size) = listing::paging(&listing::pairs(raw.as_deref())?)?;
    let mut tx = state.db.begin().await?;
    let row = Target::from_path(K::KIND, &params).load(&mut tx, false).await?;
    let total: i64 = sqlx::query_scalar("select count(*) from adapter_statuses where resource_id = $1")
        .bind(row.id)
        .fetch_one(&mut *tx)
        .await?;
    let rows: Vec<StatusRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {STATUS_COLUMNS} from adapter_statuses where resource_id = $1 order by adapter limit $2 offset $3"
    )))
    .bind(row.id)
    .bind(size)
    .bind((page - 1) * size)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let items: Vec<AdapterStatus> = rows.iter().map(StatusRow::view).collect();
    Ok(Json(ListBody { page, size: items.len() as i64, total: Some(total), items }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(extra: Value) -> Value {
        let mut b = json!({
            "adapter": "landing-zone", "observed_generation": 1, "observed_time": rfc3339(now()),
            "conditions": [{"type": "Available", "status": "True"}, {"type": "Applied", "status": "True"},
                           {"type": "Health", "status": "True"}]
        });
        if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        b
    }

    #[test]
    fn report_validation_rules() {
        let limits = crate::config::LimitsConfig { max_status_bytes: 100, max_conditions: 4, ..Default::default() };
        assert!(validate(&body(json!({})), now(), &limits).is_ok());
        let old = rfc3339(now() - Duration::minutes(31));
        let future = rfc3339(now() + Duration::minutes(6));
        let cases = [
            (json!({"adapter": ""}), "adapter is required"),
            (json!({"observed_generation": 0}), "at least 1"),
            (json!({"observed_generation": "1"}), "at least 1"),
            (json!({"observed_time": old}), "30 minutes in the past"),
            (json!({"observed_time": future}), "5 minutes in the future"),
            (json!({"observed_time": "yesterday"}), "RFC 3339"),
            (json!({"conditions": [{"type": "", "status": "True"}]}), "condition type is required"),
            (json!({"conditions": [{"type": "A", "status": "Yes"}]}), "must be True, False or Unknown"),
            (
                json!({"conditions": [{"type": "A", "status": "True"}, {"type": "A", "status": "False"}]}),
                "duplicate condition type 'A'",
            ),
            (json!({"conditions": {}}), "must be an array"),
            (json!({"data": []}), "must be an object"),
            (json!({"adapter": "Landing_Zone"}), "DNS label"),
            (json!({"adapter": "x".repeat(64)}), "DNS label"),
            (json!({"adapter": "-dns"}), "DNS label"),
            (json!({"data": {"k": "v".repeat(100)}}), "data is 108 bytes of JSON; at most 100"),
            (json!({"metadata": {"k": "v".repeat(100)}}), "limits.max_status_bytes"),
            (
                json!({"conditions": (0..5).map(|i| json!({"type": format!("C{i}"), "status": "True"})).collect::<Vec<_>>()}),
                "5 conditions; at most 4",
            ),
        ];
        for (extra, msg) in cases {
            let e = validate(&body(extra.clone()), now(), &limits).expect_err("invalid");
            assert_eq!(e.code(), "HYPERFLEET-VAL-000", "{extra}");
            assert!(e.to_string().contains(msg), "{extra}: {e}");
        }
    }
}
