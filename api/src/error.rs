//! The API's one error type, [`ApiError`]: start-up failures (each naming what to fix) and request
//! failures, answered as RFC 9457 `application/problem+json` with HyperFleet's `HYPERFLEET-*` codes;
//! [`ApiError::code`] is also its metric label.
//!
//! Handlers return [`ApiError`]; its response carries a [`Problem`] in the response extensions and
//! [`problem_context`] fills in `instance` (the request path) and `trace_id` (the request's trace
//! id when tracing is on and the trace is sampled, else its `X-Request-ID`) on the way out.
//! Server-side failures are logged with their cause and answered with a generic message: database
//! errors never reach clients.

use axum::{
    Json,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use chrono::{SecondsFormat, Utc};
use serde::Serialize;

pub const PROBLEM_JSON: &str = "application/problem+json";
const TYPE_BASE: &str = "https://api.hyperfleet.io/errors/";

/// One field-level violation in `errors[]`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub value: Option<serde_json::Value>,
    pub constraint: &'static str,
    pub message: String,
}

/// The RFC 9457 body.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    pub code: &'static str,
    pub timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `HYPERFLEET-VAL-000`.
    #[error("{detail}")]
    Validation { detail: String, errors: Vec<FieldError> },
    /// 400 `HYPERFLEET-VAL-006`: the body is not JSON or is empty.
    #[error("{0}")]
    Malformed(String),
    /// 400 `HYPERFLEET-VAL-005`.
    #[error("{0}")]
    BadRequest(String),
    /// 422 `HYPERFLEET-VAL-000`: a well-formed request this route cannot take.
    #[error("{0}")]
    Unprocessable(String),
    /// 409 `HYPERFLEET-CNF-003`: the resource's state forbids the operation.
    #[error("{0}")]
    StateConflict(String),
    /// 404 `HYPERFLEET-NTF-000`: no such route.
    #[error("The requested endpoint '{0}' does not exist")]
    NoRoute(String),
    /// 404 `HYPERFLEET-NTF-001`.
    #[error("{kind} with id='{id}' not found")]
    NotFound { kind: &'static str, id: String },
    /// 412 `HYPERFLEET-CNF-002`: `If-Match` names an older version.
    #[error("{0}")]
    VersionConflict(String),
    /// 401 `HYPERFLEET-AUT-001`: no bearer token.
    #[error("{0}")]
    Unauthenticated(String),
    /// 401 `HYPERFLEET-AUT-002`: a token that does not verify.
    #[error("{0}")]
    InvalidToken(String),
    /// 403 `HYPERFLEET-AUT-003`: a valid token whose identity may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 410 `HYPERFLEET-CNF-004`: a watch cannot resume that far back.
    #[error("{0}")]
    Gone(String),
    /// 409 `HYPERFLEET-CNF-001`.
    #[error("This {kind} already exists")]
    Duplicate { kind: &'static str },
    /// 503 `HYPERFLEET-SVC-001`: no database connection could be had in time.
    #[error("Database connection unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// 503 `HYPERFLEET-SVC-002` with `Retry-After`: a write waited past `database.lock_timeout`
    /// for the write lock; PostgreSQL gave up the wait.
    #[error("{0}")]
    Busy(String),
    /// 503 `HYPERFLEET-SVC-004`, no `Retry-After`: a statement ran past
    /// `database.statement_timeout` and PostgreSQL cancelled it (the same query would again).
    #[error("{0}")]
    QueryTimeout(String),
    /// 413 `HYPERFLEET-VAL-007`: the body is larger than `limits.max_body_bytes`.
    #[error("{0}")]
    TooLarge(String),
    /// 429 `HYPERFLEET-SVC-003` with `Retry-After`: too many open change feeds.
    #[error("{0}")]
    TooManyStreams(String),
    /// 500 `HYPERFLEET-INT-002`.
    #[error("Database error")]
    Database(#[source] sqlx::Error),
    // Start-up failures: `main` prints them and exits; they never reach a client (were one
    // answered, it would be a 500 `HYPERFLEET-INT-001`).
    #[error("database settings: {0}")]
    DatabaseConfig(String),
    #[error("cannot connect to PostgreSQL at {endpoint}: {source}")]
    Connect { endpoint: String, source: sqlx::Error },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("authentication: {0}")]
    Auth(String),
}

impl ApiError {
    pub fn validation(
        field: &str,
        value: Option<serde_json::Value>,
        constraint: &'static str,
        message: String,
    ) -> Self {
        ApiError::Validation {
            detail: message.clone(),
            errors: vec![FieldError { field: field.into(), value, constraint, message }],
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str, &'static str) {
        match self {
            ApiError::Validation { .. } => {
                (StatusCode::BAD_REQUEST, "HYPERFLEET-VAL-000", "Validation Failed", "validation-error")
            }
            ApiError::Malformed(_) => {
                (StatusCode::BAD_REQUEST, "HYPERFLEET-VAL-006", "Malformed Request", "malformed-request")
            }
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "HYPERFLEET-VAL-005", "Bad Request", "bad-request"),
            ApiError::Unprocessable(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "HYPERFLEET-VAL-000", "Validation Failed", "validation-error")
            }
            ApiError::StateConflict(_) => (StatusCode::CONFLICT, "HYPERFLEET-CNF-003", "State Conflict", "conflict"),
            ApiError::NoRoute(_) => (StatusCode::NOT_FOUND, "HYPERFLEET-NTF-000", "Endpoint Not Found", "not-found"),
            ApiError::NotFound { .. } => {
                (StatusCode::NOT_FOUND, "HYPERFLEET-NTF-001", "Resource Not Found", "not-found")
            }
            ApiError::Duplicate { .. } => (StatusCode::CONFLICT, "HYPERFLEET-CNF-001", "Resource Conflict", "conflict"),
            ApiError::Unauthenticated(_) => {
                (StatusCode::UNAUTHORIZED, "HYPERFLEET-AUT-001", "Authentication Required", "authentication-required")
            }
            ApiError::InvalidToken(_) => {
                (StatusCode::UNAUTHORIZED, "HYPERFLEET-AUT-002", "Invalid Token", "invalid-token")
            }
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "HYPERFLEET-AUT-003", "Forbidden", "forbidden"),
            ApiError::Gone(_) => (StatusCode::GONE, "HYPERFLEET-CNF-004", "Resource Version Too Old", "gone"),
            ApiError::VersionConflict(_) => {
                (StatusCode::PRECONDITION_FAILED, "HYPERFLEET-CNF-002", "Version Conflict", "version-conflict")
            }
            ApiError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "HYPERFLEET-SVC-001", "Service Unavailable", "service-unavailable")
            }
            ApiError::Busy(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "HYPERFLEET-SVC-002", "Service Busy", "service-busy")
            }
            ApiError::QueryTimeout(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "HYPERFLEET-SVC-004", "Query Timeout", "query-timeout")
            }
            ApiError::TooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "HYPERFLEET-VAL-007", "Payload Too Large", "payload-too-large")
            }
            ApiError::TooManyStreams(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "HYPERFLEET-SVC-003", "Too Many Requests", "too-many-requests")
            }
            ApiError::Database(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "HYPERFLEET-INT-002", "Database Error", "internal-error")
            }
            ApiError::DatabaseConfig(_)
            | ApiError::Connect { .. }
            | ApiError::Migrate(_)
            | ApiError::Io(_)
            | ApiError::Metrics(_)
            | ApiError::Auth(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "HYPERFLEET-INT-001", "Internal Server Error", "internal-error")
            }
        }
    }

    /// The problem's `code`, and the `code` label of `hyperfleet_api_errors_total`.
    pub fn code(&self) -> &'static str {
        self.parts().1
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        metrics::counter!("hyperfleet_db_errors_total").increment(1);
        match e {
            // A saturated pool is not a database in trouble: no pings for it.
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => ApiError::Unavailable(e),
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                crate::store::pool::note_db_trouble();
                ApiError::Unavailable(e)
            }
            // The server is going away or restarting (admin_shutdown, crash_shutdown,
            // cannot_connect_now) or the connection broke (class 08): the same as no connection.
            sqlx::Error::Database(ref db) if db.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")) => {
                crate::store::pool::note_db_trouble();
                ApiError::Unavailable(e)
            }
            // lock_not_available (lock_timeout), query_canceled (statement_timeout)
            sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => {
                ApiError::Busy("The write lock is held by other writers; retry shortly".into())
            }
            sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => ApiError::QueryTimeout(
                "The query ran longer than the database statement timeout and was cancelled; narrow the search or \
                 the page"
                    .into(),
            ),
            other => ApiError::Database(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title, type_suffix) = self.parts();
        if status.is_server_error() {
            tracing::error!(code, error = ?self, "request failed");
        }
        metrics::counter!("hyperfleet_api_errors_total", "code" => code).increment(1);
        let errors = match &self {
            ApiError::Validation { errors, .. } => errors.clone(),
            _ => Vec::new(),
        };
        let problem = Problem {
            type_uri: format!("{TYPE_BASE}{type_suffix}"),
            title,
            status: status.as_u16(),
            detail: self.to_string(),
            code,
            timestamp: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            instance: None,
            trace_id: None,
            errors,
        };
        let mut resp = problem_response(problem);
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(self, ApiError::Busy(_) | ApiError::TooManyStreams(_)) {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

fn problem_response(problem: Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, Json(&problem)).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    resp.extensions_mut().insert(problem);
    resp
}

/// Middleware: completes every problem response with the request path and request id.
pub async fn problem_context(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let resp = next.run(req).await;
    match resp.extensions().get::<Problem>().cloned() {
        Some(mut problem) if problem.instance.is_none() => {
            problem.instance = Some(path);
            problem.trace_id = hyperfleet_common::telemetry::current_sampled_trace_id().or(request_id);
            let mut fresh = problem_response(problem);
            for (name, value) in resp.headers() {
                if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                    fresh.headers_mut().insert(name.clone(), value.clone());
                }
            }
            fresh
        }
        _ => resp,
    }
}
