//! `/api/hyperfleet/v1/clusters`: create, get, list.

use std::collections::BTreeMap;

use axum::{
    Json, Router,
    extract::{FromRequest, Path, Query, Request, State, rejection::JsonRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{FromRow, PgPool, types::Json as SqlJson};
use uuid::Uuid;

use crate::{API_PREFIX, error::ApiError};

const KIND: &str = "Cluster";
const NAME_MIN: usize = 3;
const NAME_MAX: usize = 53;
/// Who writes when no authenticated identity is known (as the original).
pub const SYSTEM_IDENTITY: &str = "system@hyperfleet.local";

pub fn router() -> Router<PgPool> {
    Router::new().route("/clusters", get(list).post(create)).route("/clusters/{id}", get(fetch))
}

/// A row of `resources`.
#[derive(Debug, FromRow)]
struct ResourceRow {
    id: Uuid,
    kind: String,
    name: String,
    spec: SqlJson<Value>,
    labels: SqlJson<BTreeMap<String, String>>,
    generation: i32,
    created_time: DateTime<Utc>,
    updated_time: DateTime<Utc>,
    created_by: String,
    updated_by: String,
    deleted_time: Option<DateTime<Utc>>,
    deleted_by: Option<String>,
}

/// The representation clients see.
#[derive(Debug, Serialize)]
pub struct Cluster {
    id: Uuid,
    kind: String,
    name: String,
    href: String,
    spec: Value,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    generation: i32,
    status: Status,
    created_time: String,
    updated_time: String,
    created_by: String,
    updated_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_by: Option<String>,
}

#[derive(Debug, Serialize)]
struct Status {
    conditions: Vec<Value>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub fn href(id: Uuid) -> String {
    format!("{API_PREFIX}/clusters/{id}")
}

impl From<ResourceRow> for Cluster {
    fn from(r: ResourceRow) -> Self {
        Cluster {
            href: href(r.id),
            id: r.id,
            kind: r.kind,
            name: r.name,
            spec: r.spec.0,
            labels: r.labels.0,
            generation: r.generation,
            status: Status { conditions: Vec::new() },
            created_time: rfc3339(r.created_time),
            updated_time: rfc3339(r.updated_time),
            created_by: r.created_by,
            updated_by: r.updated_by,
            deleted_time: r.deleted_time.map(rfc3339),
            deleted_by: r.deleted_by,
        }
    }
}

const COLUMNS: &str = "id, kind, name, spec, labels, generation, created_time, updated_time, \
                       created_by, updated_by, deleted_time, deleted_by";

/// JSON body extractor whose rejections are problem+json (`HYPERFLEET-VAL-006`).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(ApiError::Malformed("Content-Type must be application/json".into()))
            }
            Err(JsonRejection::JsonSyntaxError(e)) => {
                Err(ApiError::Malformed(format!("Invalid JSON: {}", e.body_text())))
            }
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::Malformed(e.body_text())),
            Err(e) => Err(ApiError::Malformed(e.body_text())),
        }
    }
}

/// A validated create request.
#[derive(Debug, PartialEq)]
pub struct NewCluster {
    pub name: String,
    pub spec: Map<String, Value>,
    pub labels: BTreeMap<String, String>,
}

/// Validates a create body. Unknown fields are ignored (as the original); `kind`, `name` and `spec`
/// are required.
pub fn validate_create(body: &Value) -> Result<NewCluster, ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::Malformed("request body must be a JSON object".into()));
    };
    match obj.get("kind") {
        Some(Value::String(k)) if k == KIND => {}
        None | Some(Value::Null) => {
            return Err(ApiError::validation("kind", None, "required", "kind is required".into()));
        }
        Some(other) => {
            return Err(ApiError::validation("kind", Some(other.clone()), "enum", format!("kind must be '{KIND}'")));
        }
    }
    let name = match obj.get("name") {
        None | Some(Value::Null) => {
            return Err(ApiError::validation("name", None, "required", "name is required".into()));
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(ApiError::validation(
                "name",
                Some(other.clone()),
                "format",
                "field 'name' must be a string".into(),
            ));
        }
    };
    validate_name(&name)?;
    let spec = match obj.get("spec") {
        None | Some(Value::Null) => {
            return Err(ApiError::validation("spec", None, "required", "spec is required".into()));
        }
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(ApiError::validation(
                "spec",
                Some(other.clone()),
                "format",
                "field 'spec' must be an object".into(),
            ));
        }
    };
    let labels = match obj.get("labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => {
            let mut labels = BTreeMap::new();
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        labels.insert(k.clone(), s.clone());
                    }
                    other => {
                        return Err(ApiError::validation(
                            &format!("labels.{k}"),
                            Some(other.clone()),
                            "format",
                            format!("label '{k}' must be a string"),
                        ));
                    }
                }
            }
            labels
        }
        Some(other) => {
            return Err(ApiError::validation(
                "labels",
                Some(other.clone()),
                "format",
                "field 'labels' must be an object".into(),
            ));
        }
    };
    Ok(NewCluster { name, spec, labels })
}

fn validate_name(name: &str) -> Result<(), ApiError> {
    let value = Some(Value::String(name.to_string()));
    let len = name.chars().count();
    if len < NAME_MIN {
        return Err(ApiError::validation(
            "name",
            value,
            "min_length",
            format!("name must be at least {NAME_MIN} characters"),
        ));
    }
    if len > NAME_MAX {
        return Err(ApiError::validation(
            "name",
            value,
            "max_length",
            format!("name must be at most {NAME_MAX} characters"),
        ));
    }
    let bytes = name.as_bytes();
    let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let inner_ok = bytes.iter().all(|&b| edge_ok(b) || b == b'-');
    if !(inner_ok && edge_ok(bytes[0]) && edge_ok(bytes[bytes.len() - 1])) {
        return Err(ApiError::validation(
            "name",
            value,
            "pattern",
            "name must start and end with lowercase letter or number, and contain only lowercase letters, numbers, and hyphens".into(),
        ));
    }
    Ok(())
}

async fn create(State(db): State<PgPool>, JsonBody(body): JsonBody<Value>) -> Result<impl IntoResponse, ApiError> {
    let new = validate_create(&body)?;
    let id = Uuid::now_v7();
    let row: ResourceRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into resources (id, kind, name, spec, labels, created_by, updated_by) \
         values ($1, $2, $3, $4, $5, $6, $6) returning {COLUMNS}"
    )))
    .bind(id)
    .bind(KIND)
    .bind(&new.name)
    .bind(SqlJson(&new.spec))
    .bind(SqlJson(&new.labels))
    .bind(SYSTEM_IDENTITY)
    .fetch_one(&db)
    .await
    .map_err(|e| match e.as_database_error().and_then(|d| d.constraint()) {
        Some("resources_top_level_name_key") => ApiError::Duplicate { kind: KIND },
        _ => ApiError::from(e),
    })?;
    metrics::counter!("hyperfleet_api_resources_created_total", "kind" => KIND).increment(1);
    tracing::info!(cluster_id = %row.id, name = %row.name, "cluster created");
    let mut headers = HeaderMap::new();
    if let Ok(loc) = HeaderValue::from_str(&href(row.id)) {
        headers.insert(header::LOCATION, loc);
    }
    Ok((StatusCode::CREATED, headers, Json(Cluster::from(row))))
}

async fn fetch(State(db): State<PgPool>, Path(id): Path<String>) -> Result<Json<Cluster>, ApiError> {
    let not_found = || ApiError::NotFound { kind: KIND, id: id.clone() };
    let uuid = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let row: Option<ResourceRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("select {COLUMNS} from resources where id = $1 and kind = $2")))
            .bind(uuid)
            .bind(KIND)
            .fetch_optional(&db)
            .await?;
    row.map(|r| Json(Cluster::from(r))).ok_or_else(not_found)
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    page: Option<String>,
    size: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ListBody<T> {
    page: i64,
    size: i64,
    total: i64,
    items: Vec<T>,
}

fn int_param(name: &'static str, raw: Option<&str>, default: i64, min: i64, max: i64) -> Result<i64, ApiError> {
    let Some(raw) = raw else { return Ok(default) };
    let value = Some(Value::String(raw.to_string()));
    let n: i64 = raw
        .trim()
        .parse()
        .map_err(|_| ApiError::validation(name, value.clone(), "format", "must be a valid integer".into()))?;
    if n < min {
        return Err(ApiError::validation(name, value, "min", format!("{name} must be at least {min}")));
    }
    if n > max {
        return Err(ApiError::validation(name, value, "max", format!("{name} must be at most {max}")));
    }
    Ok(n)
}

async fn list(
    State(db): State<PgPool>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ListBody<Cluster>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::validation("query", None, "format", e.body_text()))?;
    let page = int_param("page", q.page.as_deref(), 1, 1, 100_000)?;
    let size = int_param("size", q.size.as_deref(), 20, 1, 100)?;
    let mut tx = db.begin().await?;
    let total: i64 =
        sqlx::query_scalar("select count(*) from resources where kind = $1").bind(KIND).fetch_one(&mut *tx).await?;
    let rows: Vec<ResourceRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from resources where kind = $1 \
         order by created_time desc, id desc limit $2 offset $3"
    )))
    .bind(KIND)
    .bind(size)
    .bind((page - 1) * size)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let items: Vec<Cluster> = rows.into_iter().map(Cluster::from).collect();
    Ok(Json(ListBody { page, size: items.len() as i64, total, items }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(e: ApiError) -> (&'static str, String) {
        (e.code(), e.to_string())
    }

    #[test]
    fn valid_create_body() {
        let c = validate_create(
            &json!({"kind": "Cluster", "name": "prod-1", "spec": {"a": 1}, "labels": {"env": "p"}, "extra": true}),
        )
        .expect("valid");
        assert_eq!(c.name, "prod-1");
        assert_eq!(c.labels.get("env").map(String::as_str), Some("p"));
    }

    #[test]
    fn invalid_create_bodies_name_the_field() {
        let cases = [
            (json!({"name": "abc", "spec": {}}), "kind is required"),
            (json!({"kind": "NodePool", "name": "abc", "spec": {}}), "kind must be 'Cluster'"),
            (json!({"kind": "Cluster", "spec": {}}), "name is required"),
            (json!({"kind": "Cluster", "name": "ab", "spec": {}}), "at least 3"),
            (json!({"kind": "Cluster", "name": "a".repeat(54), "spec": {}}), "at most 53"),
            (json!({"kind": "Cluster", "name": "Bad_Name", "spec": {}}), "lowercase"),
            (json!({"kind": "Cluster", "name": "-abc", "spec": {}}), "lowercase"),
            (json!({"kind": "Cluster", "name": "abc"}), "spec is required"),
            (json!({"kind": "Cluster", "name": "abc", "spec": [1]}), "must be an object"),
            (json!({"kind": "Cluster", "name": "abc", "spec": {}, "labels": {"a": 1}}), "must be a string"),
            (json!({"kind": "Cluster", "name": 7, "spec": {}}), "must be a string"),
        ];
        for (body, msg) in cases {
            let (c, m) = code(validate_create(&body).expect_err("invalid"));
            assert_eq!(c, "HYPERFLEET-VAL-000", "{body}");
            assert!(m.contains(msg), "{body}: {m}");
        }
        assert_eq!(validate_create(&json!([1])).map(|_| ()).expect_err("array").code(), "HYPERFLEET-VAL-006");
        // multi-byte names are measured in characters and rejected by the pattern, not by a panic
        assert!(validate_create(&json!({"kind": "Cluster", "name": "ééé", "spec": {}})).is_err());
    }

    #[test]
    fn paging_parameters() {
        assert_eq!(int_param("size", None, 20, 1, 100).expect("default"), 20);
        assert_eq!(int_param("size", Some("100"), 20, 1, 100).expect("max"), 100);
        assert!(int_param("size", Some("101"), 20, 1, 100).expect_err("too big").to_string().contains("at most 100"));
        assert!(int_param("page", Some("0"), 1, 1, 10).is_err());
        assert!(int_param("page", Some("x"), 1, 1, 10).expect_err("nan").to_string().contains("valid integer"));
    }
}
