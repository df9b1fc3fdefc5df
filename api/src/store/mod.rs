//! The store: every SQL statement of the API, typed rows, the connection pools and the write
//! transaction. Nothing above this module writes SQL; nothing here knows about HTTP.
//!
//! - [`pool`]: the serving pool (statement and lock timeouts, pings only where they pay), the
//!   readiness probe's own connection, and which connection errors mean "configuration, not load";
//! - [`resources`]: clusters and nodepools (load, insert, update, delete, list, re-aggregate);
//! - [`statuses`]: adapter reports;
//! - [`changes`]: the change table behind the change feed.

pub mod changes;
pub mod pool;
pub mod resources;
pub mod statuses;

use sqlx::{Arguments, PgPool, postgres::PgArguments};
use uuid::Uuid;

use crate::{domain::search::Filter, error::ApiError};

/// The advisory lock that orders versions (the versions migration takes the same number).
pub const VERSION_LOCK: i64 = 7_306_195_426;

/// A write transaction.
pub type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// Begins a write transaction. It takes the version lock first (see the versions migration), so
/// every writer takes row locks after it and writers cannot deadlock on it.
pub async fn write(db: &PgPool) -> Result<Tx, ApiError> {
    let mut tx = db.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1)").bind(VERSION_LOCK).execute(&mut *tx).await?;
    Ok(tx)
}

/// The arguments of a selection of resources: `$1` the kind, `$2` the parent (or null), then the
/// search filter's parameters (compiled to start at `$3`), then `extra` in order.
fn selection_args(
    kind: &str,
    parent: Option<Uuid>,
    filter: Option<&Filter>,
    extra: &[i64],
) -> Result<PgArguments, sqlx::Error> {
    let encode = sqlx::Error::Encode;
    let mut args = PgArguments::default();
    args.add(kind).map_err(encode)?;
    args.add(parent).map_err(encode)?;
    for p in filter.map_or(&[][..], |f| &f.params[..]) {
        p.add_to(&mut args).map_err(encode)?;
    }
    for v in extra {
        args.add(*v).map_err(encode)?;
    }
    Ok(args)
}

/// The `where` clause of a selection (see [`selection_args`]) and the number of its first free
/// placeholder.
fn selection_sql(filter: Option<&Filter>) -> (String, usize) {
    let and_search = filter.map(|f| format!(" and ({})", f.sql)).unwrap_or_default();
    (format!("kind = $1 and ($2::uuid is null or owner_id = $2){and_search}"), 3 + filter.map_or(0, |f| f.params.len()))
}
