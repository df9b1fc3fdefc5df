//! Adapter status reporting (reference §2.9): `PUT …/statuses` upserts one adapter's report,
//! `GET …/statuses` lists them. A report may be discarded (204) — future or stale generation, older
//! than the stored one, a repeated `Available=Unknown` — which adapters must not treat as failure.
//! A report with `Finalized=True` on a resource being deleted may hard-delete it (§2.10).
//!
//! A report goes handler → store (the report) → aggregation → store (the resource's conditions),
//! once, in one transaction.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::Value;
use sqlx::PgConnection;

use crate::{
    domain::{
        aggregation::Report,
        listing::{self, ListBody},
        model::{AdapterStatus, Row, now},
        validation::{self, MANDATORY_CONDITIONS},
    },
    error::ApiError,
    http::{
        AppState, KindRoute,
        extract::{JsonBody, Target},
    },
    store::{self, statuses::StatusRow},
};

pub async fn put<K: KindRoute>(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    grants: Option<axum::Extension<crate::authz::Grants>>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let incoming = validation::report(&body, now(), &state.limits)?;
    // An adapter's identity reports under its own name only (authentication on).
    if let Some(axum::Extension(g)) = &grants
        && !g.may_report_as(&incoming.adapter)
    {
        metrics::counter!("hyperfleet_api_authorization_denials_total").increment(1);
        return Err(ApiError::Forbidden(g.report_refusal(&incoming.adapter)));
    }
    let mut tx = store::write(&state.db).await?;
    let row = Target::from_path(K::KIND, &params).load(&mut tx, true).await?;
    if !state.may_report(row.kind(), &incoming.adapter) {
        return Err(ApiError::validation(
            "adapter",
            body.get("adapter").cloned(),
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
    // Every report of the resource, the adapter's own among them: the resource's row lock orders
    // its reports' writers.
    let mut reports = store::statuses::rows(&mut tx, row.id).await?;
    let own = reports.iter().position(|s| s.adapter == incoming.adapter);
    let stored = own.map(|i| &reports[i]);
    if stored.is_some_and(|s| s.observed_generation > incoming.observed_generation) {
        return Ok(discard("a newer generation is already reported"));
    }
    let Some(observed_time) = incoming.observed_time else {
        return Ok(discard("no observed_time"));
    };
    if stored
        .is_some_and(|s| s.observed_generation == incoming.observed_generation && observed_time < s.last_report_time)
    {
        return Ok(discard("older than the stored report"));
    }
    if let Some(missing) = MANDATORY_CONDITIONS.iter().find(|m| incoming.status_of(m).is_none()) {
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
            s.clone() // an identical re-send: nothing to write
        }
        previous => store::statuses::upsert(&mut tx, row.id, &incoming, observed_time, previous).await?,
    };
    let view = report.view();
    match own {
        Some(i) => reports[i] = report,
        None => reports.push(report),
    }
    let reports: Vec<Report> = reports.into_iter().map(StatusRow::report).collect();

    let finalized = incoming.status_of("Finalized") == Some("True");
    if row.deleted_time.is_some() && finalized && finalize(&state, &mut tx, &row, &reports).await? {
        tx.commit().await?;
        return Ok((StatusCode::CREATED, Json(view)).into_response());
    }
    if available != "Unknown" {
        store::resources::reaggregate_with(&mut tx, row, state.required(K::KIND), &reports).await?;
    }
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Hard-deletes a resource being deleted once every required adapter reported `Finalized=True` at
/// its current generation and no child is left (`reports`: every report of it, this one's
/// included). Returns whether it was deleted.
async fn finalize(state: &AppState, conn: &mut PgConnection, row: &Row, reports: &[Report]) -> Result<bool, ApiError> {
    let all_final = state.required(row.kind()).iter().all(|name| {
        reports.iter().any(|r| {
            &r.adapter == name
                && r.observed_generation == row.generation
                && r.condition("Finalized").is_some_and(|c| c.status == "True")
        })
    });
    if !all_final || store::resources::has_children(conn, row, false).await? {
        return Ok(false);
    }
    store::resources::delete(conn, &[row.id]).await?;
    tracing::info!(id = %row.id, kind = %row.kind, "resource finalized by its adapters and deleted");
    Ok(true)
}

pub async fn list<K: KindRoute>(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
) -> Result<Json<ListBody<AdapterStatus>>, ApiError> {
    let (page, size) = listing::paging(&listing::pairs(raw.as_deref())?)?;
    let mut tx = store::begin(&state.db).await?;
    let row = Target::from_path(K::KIND, &params).load(&mut tx, false).await?;
    let (total, rows) = store::statuses::list(&mut tx, row.id, (size, (page - 1) * size)).await?;
    tx.commit().await?;
    let items: Vec<AdapterStatus> = rows.iter().map(StatusRow::view).collect();
    Ok(Json(ListBody { page, size: items.len() as i64, total: Some(total), items }))
}
