//! What handlers take from a request: the JSON body (its rejections as problem+json) and the
//! target the path names.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{FromRequest, Request, rejection::JsonRejection},
};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    domain::model::{Kind, Row},
    error::ApiError,
    store,
};

/// JSON body extractor whose rejections are problem+json (`HYPERFLEET-VAL-006`).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<Value>::from_request(req, state).await {
            Ok(Json(v)) if contains_nul(&v) => {
                Err(ApiError::Malformed("Invalid JSON: strings cannot contain the NUL character (\\u0000)".into()))
            }
            Ok(Json(v)) => {
                serde_json::from_value(v).map(JsonBody).map_err(|e| ApiError::Malformed(format!("Invalid JSON: {e}")))
            }
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(ApiError::Malformed("Content-Type must be application/json".into()))
            }
            Err(JsonRejection::JsonSyntaxError(e)) => {
                Err(ApiError::Malformed(format!("Invalid JSON: {}", e.body_text())))
            }
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::TooLarge(
                "The request body is larger than the API accepts (limits.max_body_bytes)".into(),
            )),
            Err(e) => Err(ApiError::Malformed(e.body_text())),
        }
    }
}

/// PostgreSQL cannot store NUL in `text` or `jsonb`; such input is refused up front.
fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(contains_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// Where a request points: the kind, the parent cluster for nested routes, the resource id.
pub struct Target {
    pub kind: Kind,
    pub parent: Option<Uuid>,
    pub id: Option<Uuid>,
    raw_parent: Option<String>,
    raw_id: Option<String>,
}

impl Target {
    pub fn from_path(kind: Kind, params: &HashMap<String, String>) -> Self {
        let raw_parent = params.get("cluster_id").cloned();
        let raw_id = params.get("id").cloned();
        Target {
            kind,
            parent: raw_parent.as_deref().and_then(|s| Uuid::parse_str(s).ok()),
            id: raw_id.as_deref().and_then(|s| Uuid::parse_str(s).ok()),
            raw_parent,
            raw_id,
        }
    }

    fn not_found(&self) -> ApiError {
        ApiError::NotFound { kind: self.kind.name(), id: self.raw_id.clone().unwrap_or_default() }
    }

    fn parent_not_found(&self) -> ApiError {
        ApiError::NotFound { kind: Kind::Cluster.name(), id: self.raw_parent.clone().unwrap_or_default() }
    }

    /// For nested routes: 404 unless the parent cluster exists (optionally locking it).
    pub async fn check_parent(&self, conn: &mut PgConnection, lock: bool) -> Result<Option<Row>, ApiError> {
        if self.raw_parent.is_none() {
            return Ok(None);
        }
        let parent = self.parent.ok_or_else(|| self.parent_not_found())?;
        let row = store::resources::load(conn, parent, Kind::Cluster, lock).await?;
        row.map(Some).ok_or_else(|| self.parent_not_found())
    }

    /// Loads the addressed resource (404 when missing or under another parent).
    pub async fn load(&self, conn: &mut PgConnection, lock: bool) -> Result<Row, ApiError> {
        self.check_parent(conn, false).await?;
        let id = self.id.ok_or_else(|| self.not_found())?;
        match store::resources::load(conn, id, self.kind, lock).await? {
            Some(r) if self.parent.is_none() || r.owner_id == self.parent => Ok(r),
            _ => Err(self.not_found()),
        }
    }
}
