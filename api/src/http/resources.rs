//! Clusters and nodepools: flat and nested routes (reference §2.2), CRUD semantics (§2.8).
//!
//! Every write runs in one transaction that holds the write lock ([`store::write`]) and locks the
//! rows it changes (`SELECT … FOR UPDATE`), so concurrent writers serialise per resource. Handlers
//! are shared by the flat and nested forms of a route: a `cluster_id` path parameter, when present,
//! scopes a nodepool to its cluster.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;

use crate::{
    auth::Identity,
    domain::{
        aggregation,
        listing::{self, ListBody, ListParams},
        model::{Kind, Row, href, now},
        validation,
    },
    error::ApiError,
    http::{
        AppState, KindRoute,
        extract::{JsonBody, Target},
    },
    store::{self, resources::NewRow},
    watch,
};

fn marked_for_deletion(row: &Row) -> ApiError {
    ApiError::StateConflict(format!("{} '{}' is marked for deletion", row.kind, row.id))
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

pub async fn child_create_on_flat_route() -> ApiError {
    ApiError::Unprocessable("kind \"NodePool\" is a child kind; create it via /clusters/{id}/nodepools".into())
}

pub async fn create<K: KindRoute>(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    Identity(who): Identity,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let target = Target::from_path(K::KIND, &params);
    let new = validation::create(K::KIND, &body, &state.limits)?;
    let mut tx = store::write(&state.db).await?;
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
    let row = store::resources::insert(
        &mut tx,
        NewRow {
            kind: K::KIND,
            name: &new.name,
            owner: target.parent,
            spec: &new.spec,
            labels: &new.labels,
            conditions: &conditions,
            at,
            by: &who,
        },
    )
    .await?;
    tx.commit().await?;
    metrics::counter!("hyperfleet_api_resources_created_total", "kind" => K::KIND.name()).increment(1);
    tracing::info!(id = %row.id, kind = K::KIND.name(), name = %row.name, "resource created");
    Ok(created(&row))
}

pub async fn fetch<K: KindRoute>(
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

pub async fn patch<K: KindRoute>(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    Identity(who): Identity,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let changes = validation::patch(&body, &state.limits)?;
    let mut tx = store::write(&state.db).await?;
    let row = Target::from_path(K::KIND, &params).load(&mut tx, true).await?;
    check_if_match(&headers, &row)?;
    if row.deleted_time.is_some() {
        return Err(marked_for_deletion(&row));
    }
    // A spec the patch leaves out is not rewritten: the stored text stays as it is.
    let spec = changes.spec.filter(|new| row.spec_map().as_ref() != Some(new));
    let labels = changes.labels.unwrap_or_else(|| row.labels.0.clone());
    if spec.is_none() && labels == row.labels.0 {
        return Ok(with_etag(StatusCode::OK, &row, Json(row.to_resource()).into_response()));
    }
    let updated = store::resources::update(&mut tx, row.id, spec.as_ref(), &labels, now(), &who).await?;
    let updated = store::resources::reaggregate(&mut tx, updated, state.required(K::KIND)).await?;
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
        let children = store::resources::mark_children_deleted(conn, row.id, at, who).await?;
        let (gone, finalizing): (Vec<Row>, Vec<Row>) =
            children.into_iter().partition(|c| state.required(c.kind()).is_empty());
        if !gone.is_empty() {
            let ids: Vec<_> = gone.iter().map(|c| c.id).collect();
            store::resources::delete(conn, &ids).await?;
            tracing::info!(owner = %row.id, children = ids.len(), "children deleted (no adapters to finalize them)");
        }
        for child in finalizing {
            let required = state.required(child.kind());
            store::resources::reaggregate(conn, child, required).await?;
        }
    }
    let waiting_children = store::resources::has_children(conn, &row, false).await?;
    let marked = store::resources::mark_deleted(conn, row.id, at, who).await?;
    if state.required(row.kind()).is_empty() && !waiting_children {
        store::resources::delete(conn, &[row.id]).await?;
        tracing::info!(id = %row.id, kind = %row.kind, "resource deleted (no adapters to finalize it)");
        return Ok(marked);
    }
    tracing::info!(id = %row.id, kind = %row.kind, "resource marked for deletion");
    store::resources::reaggregate(conn, marked, state.required(row.kind())).await
}

pub async fn delete<K: KindRoute>(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    Identity(who): Identity,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut tx = store::write(&state.db).await?;
    let row = Target::from_path(K::KIND, &params).load(&mut tx, true).await?;
    check_if_match(&headers, &row)?;
    let row = if row.deleted_time.is_some() { row } else { mark_deleted(&state, &mut tx, row, &who).await? };
    tx.commit().await?;
    Ok(with_etag(StatusCode::ACCEPTED, &row, Json(row.to_resource()).into_response()))
}

pub async fn force_delete<K: KindRoute>(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    Identity(who): Identity,
    JsonBody(body): JsonBody<Value>,
) -> Result<StatusCode, ApiError> {
    let reason = validation::force_delete(body)?.reason;
    let mut tx = store::write(&state.db).await?;
    let row = Target::from_path(K::KIND, &params).load(&mut tx, true).await?;
    if row.deleted_time.is_none() {
        return Err(ApiError::StateConflict(format!("{} '{}' is not in Finalizing state", row.kind, row.id)));
    }
    // Children, adapter statuses and conditions go with the row (foreign keys cascade).
    store::resources::delete(&mut tx, &[row.id]).await?;
    tx.commit().await?;
    tracing::warn!(id = %row.id, kind = %row.kind, by = %who, %reason, "resource force-deleted");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list<K: KindRoute>(
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
        let sel = watch::Selection { kind: K::KIND, parent: target.parent, filter, until };
        // Streams are counted per caller: its identity, or its address without authentication.
        let client = match (identity, peer) {
            (Some(axum::Extension(id)), _) => id.0,
            (None, Some(axum::Extension(axum::extract::ConnectInfo(addr)))) => addr.ip().to_string(),
            (None, None) => "unknown".to_string(),
        };
        return state.watches.respond(sel, q.resource_version.as_deref(), &client).await;
    }
    // One snapshot for the page, the total and the version a watch can continue from.
    let mut tx = store::begin(&state.db).await?;
    sqlx::query("set transaction isolation level repeatable read, read only").execute(&mut *tx).await?;
    let version = store::changes::current_version(&mut tx).await?;
    target.check_parent(&mut tx, false).await?;
    let page = store::resources::list(
        &mut tx,
        K::KIND,
        target.parent,
        filter.as_ref(),
        &q.order,
        (q.size, (q.page - 1) * q.size),
        q.total,
    )
    .await?;
    tx.commit().await?;
    let items: Vec<Box<serde_json::value::RawValue>> =
        page.rows.iter().map(|r| representation(r, q.fields.as_deref())).collect();
    let mut resp = Json(ListBody { page: q.page, size: items.len() as i64, total: page.total, items }).into_response();
    if let Ok(v) = HeaderValue::from_str(&version.to_string()) {
        resp.headers_mut().insert(watch::VERSION_HEADER, v);
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
            let mut value = listing::project(serde_json::to_value(resource).unwrap_or_default(), Some(fields));
            if let (Some(parent), Some(map)) = (&row.trace_parent, value.as_object_mut())
                && fields.iter().any(|f| f == listing::TRACEPARENT)
            {
                map.insert(listing::TRACEPARENT.into(), parent.clone().into());
            }
            raw(&value)
        }
    }
}

/// `v` as JSON text (`null` if it cannot be serialised, which these types always can).
fn raw<T: Serialize>(v: &T) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(v).unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned())
}
