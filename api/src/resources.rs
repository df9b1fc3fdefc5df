//! Clusters and nodepools: flat and nested routes (reference §2.2), CRUD semantics (§2.8).
//!
//! Every write runs in one transaction and locks the rows it changes (`SELECT … FOR UPDATE`), so
//! concurrent writers serialise per resource. Handlers are shared by the flat and nested forms of
//! a route: a `cluster_id` path parameter, when present, scopes a nodepool to its cluster.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{FromRequest, Path, RawQuery, Request, State, rejection::JsonRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{MethodRouter, get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{Arguments, PgConnection, PgPool, postgres::PgArguments, types::Json as SqlJson};
use uuid::Uuid;

use crate::{
    aggregation,
    auth::Identity,
    config::RequiredAdapters,
    error::ApiError,
    listing::{self, ListBody, ListParams},
    model::{COLUMNS, Kind, Row, href, now},
    statuses, validation,
};

/// The advisory lock that orders versions (the versions migration takes the same number).
pub const VERSION_LOCK: i64 = 7_306_195_426;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub adapters: Arc<RequiredAdapters>,
    pub feed: crate::watch::Feed,
    pub watch: crate::config::WatchConfig,
    /// Ends open watches when the server stops.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// JWT verification; `None` when authentication is off.
    pub auth: Option<Arc<crate::auth::Authenticator>>,
    /// Bounds on request content.
    pub limits: Arc<crate::config::LimitsConfig>,
    /// Adapters that may report without being required (`*`: any).
    pub optional_adapters: Arc<Vec<String>>,
    /// The open change feeds, bounded by `watch.max_streams` and `watch.max_streams_per_client`.
    pub streams: crate::watch::Streams,
}

impl AppState {
    /// State with default watch settings; starts the change listener (needs a Tokio runtime).
    pub fn new(db: PgPool, adapters: RequiredAdapters) -> Self {
        AppState {
            feed: crate::watch::Feed::start(db.clone()),
            db,
            adapters: Arc::new(adapters),
            watch: crate::config::WatchConfig::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            auth: None,
            limits: Arc::default(),
            optional_adapters: Arc::default(),
            streams: crate::watch::Streams::new(&crate::config::WatchConfig::default()),
        }
    }

    pub fn with_limits(mut self, limits: crate::config::LimitsConfig) -> Self {
        self.limits = Arc::new(limits);
        self
    }

    pub fn with_optional_adapters(mut self, names: Vec<String>) -> Self {
        self.optional_adapters = Arc::new(names);
        self
    }

    /// Whether `adapter` may report on a `kind`: a required adapter of it, or an optional one.
    pub fn may_report(&self, kind: Kind, adapter: &str) -> bool {
        self.required(kind).iter().chain(self.optional_adapters.iter()).any(|n| n == adapter || n == "*")
    }

    pub fn with_auth(mut self, auth: Option<Arc<crate::auth::Authenticator>>) -> Self {
        self.auth = auth;
        self
    }

    pub fn with_watch(
        mut self,
        watch: crate::config::WatchConfig,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Self {
        self.streams = crate::watch::Streams::new(&watch);
        self.watch = watch;
        self.shutdown = shutdown;
        self
    }
    /// Begins a write transaction. It takes the version lock first (see the versions migration),
    /// so every writer takes row locks after it and writers cannot deadlock on it.
    pub async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, ApiError> {
        let mut tx = self.db.begin().await?;
        sqlx::query("select pg_advisory_xact_lock($1)").bind(VERSION_LOCK).execute(&mut *tx).await?;
        Ok(tx)
    }

    pub fn required(&self, kind: Kind) -> &[String] {
        match kind {
            Kind::Cluster => &self.adapters.clusters,
            Kind::NodePool => &self.adapters.nodepools,
        }
    }
}

/// A route's kind, as a type so one handler serves both kinds.
pub trait KindRoute: Send + Sync + 'static {
    const KIND: Kind;
}
pub struct Clusters;
pub struct NodePools;
impl KindRoute for Clusters {
    const KIND: Kind = Kind::Cluster;
}
impl KindRoute for NodePools {
    const KIND: Kind = Kind::NodePool;
}

/// Every resource route (relative to the API prefix) with its handlers. The OpenAPI document
/// ([`crate::openapi`]) describes exactly these paths; a test holds the two together.
pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/clusters", get(list::<Clusters>).post(create::<Clusters>)),
        ("/clusters/{id}", get(fetch::<Clusters>).patch(patch::<Clusters>).delete(delete::<Clusters>)),
        ("/clusters/{id}/force-delete", post(force_delete::<Clusters>)),
        ("/clusters/{id}/statuses", get(statuses::list::<Clusters>).put(statuses::put::<Clusters>)),
        ("/nodepools", get(list::<NodePools>).post(child_create_on_flat_route)),
        ("/nodepools/{id}", get(fetch::<NodePools>).patch(patch::<NodePools>).delete(delete::<NodePools>)),
        ("/nodepools/{id}/force-delete", post(force_delete::<NodePools>)),
        ("/nodepools/{id}/statuses", get(statuses::list::<NodePools>).put(statuses::put::<NodePools>)),
        ("/clusters/{cluster_id}/nodepools", get(list::<NodePools>).post(create::<NodePools>)),
        (
            "/clusters/{cluster_id}/nodepools/{id}",
            get(fetch::<NodePools>).patch(patch::<NodePools>).delete(delete::<NodePools>),
        ),
        ("/clusters/{cluster_id}/nodepools/{id}/force-delete", post(force_delete::<NodePools>)),
        (
            "/clusters/{cluster_id}/nodepools/{id}/statuses",
            get(statuses::list::<NodePools>).put(statuses::put::<NodePools>),
        ),
    ]
}

pub fn router() -> Router<AppState> {
    routes().into_iter().fold(Router::new(), |router, (path, methods)| router.route(path, methods))
}

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
    async fn check_parent(&self, conn: &mut PgConnection, lock: bool) -> Result<Option<Row>, ApiError> {
        if self.raw_parent.is_none() {
            return Ok(None);
        }
        let parent = self.parent.ok_or_else(|| self.parent_not_found())?;
        let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(select_one(lock)))
            .bind(parent)
            .bind(Kind::Cluster.name())
            .fetch_optional(&mut *conn)
            .await?;
        row.map(Some).ok_or_else(|| self.parent_not_found())
    }

    /// Loads the addressed resource (404 when missing or under another parent).
    pub async fn load(&self, conn: &mut PgConnection, lock: bool) -> Result<Row, ApiError> {
        self.check_parent(conn, false).await?;
        let id = self.id.ok_or_else(|| self.not_found())?;
        let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(select_one(lock)))
            .bind(id)
            .bind(self.kind.name())
            .fetch_optional(&mut *conn)
            .await?;
        match row {
            Some(r) if self.parent.is_none() || r.owner_id == self.parent => Ok(r),
            _ => Err(self.not_found()),
        }
    }
}

/// The statement loading one resource by id and kind, optionally locking it.
fn select_one(lock: bool) -> String {
    format!("select {COLUMNS} from resources where id = $1 and kind = $2{}", if lock { " for update" } else { "" })
}

fn marked_for_deletion(row: &Row) -> ApiError {
    ApiError::StateConflict(format!("{} '{}' is marked for deletion", row.kind, row.id))
}

/// Recomputes and stores a resource's aggregated conditions; returns the updated row.
pub async fn reaggregate(state: &AppState, conn: &mut PgConnection, mut row: Row) -> Result<Row, ApiError> {
    let reports = statuses::reports(conn, row.id).await?;
    let live_children: bool =
        sqlx::query_scalar("select exists(select 1 from resources where owner_id = $1 and deleted_time is null)")
            .bind(row.id)
            .fetch_one(&mut *conn)
            .await?;
    let conditions = aggregation::aggregate(&aggregation::Input {
        generation: row.generation,
        ref_time: row.updated_time,
        deleting: row.deleted_time.is_some(),
        live_children,
        required: state.required(row.kind()),
        reports: &reports,
        previous: &row.conditions.0,
    });
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

fn created(row: &Row) -> Response {
    let mut resp = with_etag(StatusCode::CREATED, row, Json(row.to_resource()).into_response());
    if let Ok(loc) = HeaderValue::from_str(&href(row.kind(), row.id, row.owner_id)) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    resp
}

/// `resp` with `status` and the row's `ETag`.
fn with_etag(status: StatusCode, row: &Row, mut resp: Response) -> Response {
    *resp.status_mut() = status;
    if let Ok(tag) = HeaderValue::from_str(&row.etag()) {
        resp.headers_mut().insert(header::ETAG, tag);
    }
    resp
}

/// Whether an `If-Match` / `If-None-Match` header value lists the row's ETag (or is `*`).
fn lists_etag(value: &HeaderValue, row: &Row) -> bool {
    let tag = row.etag();
    value.to_str().is_ok_and(|v| {
        v.split(',').map(str::trim).any(|t| t == "*" || t == tag || t.strip_prefix("W/") == Some(tag.as_str()))
    })
}

/// `If-Match` on a write: a stale version is a 412 and changes nothing.
fn check_if_match(headers: &HeaderMap, row: &Row) -> Result<(), ApiError> {
    match headers.get(header::IF_MATCH) {
        Some(v) if !lists_etag(v, row) => Err(ApiError::VersionConflict(format!(
            "{} '{}' has changed: its current ETag is {}; read it again and retry",
            row.kind,
            row.id,
            row.etag()
        ))),
        _ => Ok(()),
    }
}

async fn child_create_on_flat_route() -> ApiError {
    ApiError::Unprocessable("kind \"NodePool\" is a child kind; create it via /clusters/{id}/nodepools".into())
}

async fn create<K: KindRoute>(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    Identity(who): Identity,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let target = Target::from_path(K::KIND, &params);
    let new = validation::create(K::KIND, &body, &state.limits)?;
    let mut tx = state.write().await?;
    if let Some(parent) = target.check_parent(&mut tx, true).await?
        && parent.deleted_time.is_some()
    {
        return Err(marked_for_deletion(&parent));
    }
    let at = now();
    let conditions = aggregation::aggregate(&aggregation::Input {
        generation: 1,
        ref_time: at,
        deleting: false,
        live_children: false,
        required: state.required(K::KIND),
        reports: &[],
        previous: &[],
    });
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into resources (id, kind, name, owner_id, spec, labels, conditions, created_time, updated_time, \
         created_by, updated_by) values ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $9) returning {COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(K::KIND.name())
    .bind(&new.name)
    .bind(target.parent)
    .bind(SqlJson(&new.spec))
    .bind(SqlJson(&new.labels))
    .bind(SqlJson(&conditions))
    .bind(at)
    .bind(&who)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| match e.as_database_error().and_then(|d| d.constraint()) {
        Some("resources_top_level_name_key" | "resources_child_name_key") => {
            ApiError::Duplicate { kind: K::KIND.name() }
        }
        _ => ApiError::from(e),
    })?;
    tx.commit().await?;
    metrics::counter!("hyperfleet_api_resources_created_total", "kind" => K::KIND.name()).increment(1);
    tracing::info!(id = %row.id, kind = K::KIND.name(), name = %row.name, "resource created");
    Ok(created(&row))
}

async fn fetch<K: KindRoute>(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let fields = listing::fields(&listing::pairs(raw.as_deref())?)?;
    let mut conn = state.db.acquire().await?;
    let row = Target::from_path(K::KIND, &params).load(&mut conn, false).await?;
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| lists_etag(v, &row)) {
        return Ok(with_etag(StatusCode::NOT_MODIFIED, &row, ().into_response()));
    }
    Ok(with_etag(StatusCode::OK, &row, Json(representation(&row, fields.as_deref())).into_response()))
}

async fn patch<K: KindRoute>(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    Identity(who): Identity,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let changes = validation::patch(&body, &state.limits)?;
    let mut tx = state.write().await?;
    let row = Target::from_path(K::KIND, &params).load(&mut tx, true).await?;
    check_if_match(&headers, &row)?;
    if row.deleted_time.is_some() {
        return Err(marked_for_deletion(&row));
    }
    // A spec the patch leaves out is not rewritten (`coalesce`): the stored text stays as it is.
    let spec = changes.spec.filter(|new| row.spec_map().as_ref() != Some(new));
    let labels = changes.labels.unwrap_or_else(|| row.labels.0.clone());
    if spec.is_none() && labels == row.labels.0 {
        return Ok(with_etag(StatusCode::OK, &row, Json(row.to_resource()).into_response()));
    }
    let updated: Row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update resources set spec = coalesce($2, spec), labels = $3, generation = generation + 1, updated_time = $4, \
         updated_by = $5 where id = $1 returning {COLUMNS}"
    )))
    .bind(row.id)
    .bind(spec.as_ref().map(SqlJson))
    .bind(SqlJson(&labels))
    .bind(now())
    .bind(&who)
    .fetch_one(&mut *tx)
    .await?;
    let updated = reaggregate(&state, &mut tx, updated).await?;
    tx.commit().await?;
    Ok(with_etag(StatusCode::OK, &updated, Json(updated.to_resource()).into_response()))
}

/// Marks a resource deleted (generation +1) and recomputes its conditions, or removes it at once
/// when nobody will report `Finalized` for it.
async fn mark_deleted(state: &AppState, conn: &mut PgConnection, row: Row, who: &str) -> Result<Row, ApiError> {
    let at = now();
    // Children go first, set-based (the write lock is held meanwhile): one statement marks them
    // all, one removes those of kinds no adapter finalizes; the others get their conditions
    // recomputed. Children own nothing themselves (nodepools are the leaves).
    if row.kind() == Kind::Cluster {
        let children: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "update resources set deleted_time = $2, deleted_by = $3, updated_time = $2, updated_by = $3, \
             generation = generation + 1 where owner_id = $1 and deleted_time is null returning {COLUMNS}"
        )))
        .bind(row.id)
        .bind(at)
        .bind(who)
        .fetch_all(&mut *conn)
        .await?;
        let (gone, finalizing): (Vec<Row>, Vec<Row>) =
            children.into_iter().partition(|c| state.required(c.kind()).is_empty());
        if !gone.is_empty() {
            let ids: Vec<Uuid> = gone.iter().map(|c| c.id).collect();
            sqlx::query("delete from resources where id = any($1)").bind(&ids).execute(&mut *conn).await?;
            tracing::info!(owner = %row.id, children = ids.len(), "children deleted (no adapters to finalize them)");
        }
        for child in finalizing {
            reaggregate(state, conn, child).await?;
        }
    }
    let waiting_children = row.kind() == Kind::Cluster
        && sqlx::query_scalar::<_, bool>("select exists(select 1 from resources where owner_id = $1)")
            .bind(row.id)
            .fetch_one(&mut *conn)
            .await?;
    let marked: Row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update resources set deleted_time = $2, deleted_by = $3, updated_time = $2, updated_by = $3, \
         generation = generation + 1 where id = $1 returning {COLUMNS}"
    )))
    .bind(row.id)
    .bind(at)
    .bind(who)
    .fetch_one(&mut *conn)
    .await?;
    if state.required(row.kind()).is_empty() && !waiting_children {
        sqlx::query("delete from resources where id = $1").bind(row.id).execute(&mut *conn).await?;
        tracing::info!(id = %row.id, kind = %row.kind, "resource deleted (no adapters to finalize it)");
        return Ok(marked);
    }
    tracing::info!(id = %row.id, kind = %row.kind, "resource marked for deletion");
    reaggregate(state, conn, marked).await
}

async fn delete<K: KindRoute>(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    Identity(who): Identity,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut tx = state.write().await?;
    let row = Target::from_path(K::KIND, &params).load(&mut tx, true).await?;
    check_if_match(&headers, &row)?;
    let row = if row.deleted_time.is_some() { row } else { mark_deleted(&state, &mut tx, row, &who).await? };
    tx.commit().await?;
    Ok(with_etag(StatusCode::ACCEPTED, &row, Json(row.to_resource()).into_response()))
}

#[derive(Debug, Deserialize, Serialize)]
struct ForceDelete {
    reason: Option<Value>,
}

async fn force_delete<K: KindRoute>(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    Identity(who): Identity,
    JsonBody(body): JsonBody<ForceDelete>,
) -> Result<StatusCode, ApiError> {
    let reason = match body.reason {
        Some(Value::String(s)) if (1..=1024).contains(&s.chars().count()) => s,
        Some(Value::String(s)) => {
            return Err(ApiError::validation(
                "reason",
                Some(Value::String(s)),
                "max_length",
                "reason must be between 1 and 1024 characters".into(),
            ));
        }
        None | Some(Value::Null) => {
            return Err(ApiError::validation("reason", None, "required", "reason is required".into()));
        }
        Some(other) => {
            return Err(ApiError::validation(
                "reason",
                Some(other),
                "format",
                "field 'reason' must be a string".into(),
            ));
        }
    };
    let mut tx = state.write().await?;
    let row = Target::from_path(K::KIND, &params).load(&mut tx, true).await?;
    if row.deleted_time.is_none() {
        return Err(ApiError::StateConflict(format!("{} '{}' is not in Finalizing state", row.kind, row.id)));
    }
    // Children, adapter statuses and conditions go with the row (foreign keys cascade).
    sqlx::query("delete from resources where id = $1").bind(row.id).execute(&mut *tx).await?;
    tx.commit().await?;
    tracing::warn!(id = %row.id, kind = %row.kind, by = %who, %reason, "resource force-deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn list<K: KindRoute>(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    expiry: Option<axum::Extension<crate::auth::TokenExpiry>>,
    identity: Option<axum::Extension<crate::auth::Identity>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = ListParams::parse(raw.as_deref())?;
    let filter = q.filter(3)?;
    let target = Target::from_path(K::KIND, &params);
    if q.watch {
        let mut conn = state.db.acquire().await?;
        target.check_parent(&mut conn, false).await?;
        drop(conn);
        let until = expiry.map(|axum::Extension(e)| e.deadline());
        let sel = crate::watch::Selection { kind: K::KIND, parent: target.parent, filter, until };
        // Streams are counted per caller: its identity, or its address without authentication.
        let client = match (identity, peer) {
            (Some(axum::Extension(id)), _) => id.0,
            (None, Some(axum::Extension(axum::extract::ConnectInfo(addr)))) => addr.ip().to_string(),
            (None, None) => "unknown".to_string(),
        };
        return crate::watch::respond(state.clone(), sel, q.resource_version.as_deref(), &client).await;
    }
    let search_params = filter.as_ref().map_or(&[][..], |f| &f.params[..]);
    let and_search = filter.as_ref().map(|f| format!(" and ({})", f.sql)).unwrap_or_default();
    let base = format!("from resources where kind = $1 and ($2::uuid is null or owner_id = $2){and_search}");
    let arguments = |page: Option<(i64, i64)>| -> Result<PgArguments, ApiError> {
        let mut args = PgArguments::default();
        let encode = |e| ApiError::Database(sqlx::Error::Encode(e));
        args.add(K::KIND.name()).map_err(encode)?;
        args.add(target.parent).map_err(encode)?;
        for p in search_params {
            p.add_to(&mut args).map_err(encode)?;
        }
        if let Some((limit, offset)) = page {
            args.add(limit).map_err(encode)?;
            args.add(offset).map_err(encode)?;
        }
        Ok(args)
    };
    let n = 3 + search_params.len();
    // One snapshot for the page, the total and the version a watch can continue from.
    let mut tx = state.db.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only").execute(&mut *tx).await?;
    let version = crate::watch::current_version(&mut tx).await?;
    target.check_parent(&mut tx, false).await?;
    let total: Option<i64> = if q.total {
        Some(
            sqlx::query_scalar_with(sqlx::AssertSqlSafe(format!("select count(*) {base}")), arguments(None)?)
                .fetch_one(&mut *tx)
                .await?,
        )
    } else {
        None
    };
    let rows: Vec<Row> = sqlx::query_as_with(
        sqlx::AssertSqlSafe(format!("select {COLUMNS} {base} order by {} limit ${n} offset ${}", q.order, n + 1)),
        arguments(Some((q.size, (q.page - 1) * q.size)))?,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let items: Vec<Box<serde_json::value::RawValue>> =
        rows.iter().map(|r| representation(r, q.fields.as_deref())).collect();
    let mut resp = Json(ListBody { page: q.page, size: items.len() as i64, total, items }).into_response();
    if let Ok(v) = HeaderValue::from_str(&version.to_string()) {
        resp.headers_mut().insert(crate::watch::VERSION_HEADER, v);
    }
    Ok(resp)
}

/// A row's representation as JSON text, reduced to `fields` when given. The spec is copied as
/// the text it is stored as, and only when it is wanted.
fn representation(row: &Row, fields: Option<&[String]>) -> Box<serde_json::value::RawValue> {
    match fields {
        None => raw(&row.to_resource()),
        Some(fields) => {
            let resource = row.resource(fields.iter().any(|f| f == "spec"));
            raw(&listing::project(serde_json::to_value(resource).unwrap_or_default(), Some(fields)))
        }
    }
}

/// `v` as JSON text (`null` if it cannot be serialised, which these types always can).
fn raw<T: Serialize>(v: &T) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(v).unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned())
}
