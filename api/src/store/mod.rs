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
use tracing::Instrument;
use uuid::Uuid;

use crate::{domain::search::Filter, error::ApiError};

/// The advisory lock that orders versions (the versions migration takes the same number).
pub const VERSION_LOCK: i64 = 7_306_195_426;

/// A write transaction, and its span in the trace (from `begin` to `commit`; a transaction dropped
/// without one — rolled back — ends the span where it was last used).
pub struct Tx {
    inner: sqlx::Transaction<'static, sqlx::Postgres>,
    span: tracing::Span,
}

impl std::ops::Deref for Tx {
    type Target = sqlx::Transaction<'static, sqlx::Postgres>;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

impl Tx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        let span = hyperfleet_common::trace_span!(parent: &self.span, "db.commit", db.system.name = "postgresql");
        let result = self.inner.commit().instrument(span).await;
        if let Err(e) = &result {
            hyperfleet_common::telemetry::fail(&self.span, e);
        }
        // A span ends when it was last left: leave the transaction's now, after its commit.
        drop(self.span.enter());
        result
    }
}

/// Begins a transaction, in a task of its own. sqlx counts a transaction as open only once
/// PostgreSQL has answered its `BEGIN`: a request dropped while the `BEGIN` is on the wire (its
/// client went away) would return the connection to the pool inside a transaction nobody knows
/// about — the next request on it fails ("SET TRANSACTION ISOLATION LEVEL must be called before any
/// query", seen when the bench's load generator closed its connections) or runs inside it.
/// Spawned, the `BEGIN` completes whatever happens to the request; a transaction nobody awaits any
/// more is dropped, which rolls it back.
pub async fn begin(db: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    begin_with(db, None).await
}

/// [`begin`] with `statement` instead of a plain `BEGIN` (see [`sqlx::Pool::begin_with`]).
async fn begin_with(
    db: &PgPool,
    statement: Option<&'static str>,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let db = db.clone();
    let begun = async move {
        match statement {
            Some(statement) => db.begin_with(sqlx::AssertSqlSafe(statement)).await,
            None => db.begin().await,
        }
    };
    match tokio::spawn(begun.instrument(tracing::Span::current())).await {
        Ok(begun) => begun,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only the runtime shutting down cancels the task.
        Err(_) => Err(sqlx::Error::PoolClosed),
    }
}

/// Begins a write transaction. It takes the version lock first (see the versions migration), so
/// every writer takes row locks after it and writers cannot deadlock on it. The lock and `BEGIN`
/// go in one round trip (one simple query of two statements): writers queue on that lock, and
/// each round trip made while holding it is a round trip every writer behind waits for.
pub async fn write(db: &PgPool) -> Result<Tx, ApiError> {
    let span = hyperfleet_common::trace_span!("db.transaction", db.system.name = "postgresql");
    let inner = begin_with(db, Some(&WRITE_BEGIN)).instrument(span.clone()).await?;
    Ok(Tx { inner, span })
}

/// The statement that begins a write transaction: the lock first, in the implicit transaction of
/// a multi-statement query, which the `BEGIN` after it turns into the transaction block (the lock
/// stays held). In this order a lock wait that times out leaves no transaction behind: the
/// implicit one is rolled back with the error. `BEGIN` first would leave an aborted transaction
/// on the connection, which sqlx — counting a transaction only once its begin succeeded — hands
/// to the next request ("current transaction is aborted").
static WRITE_BEGIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("select pg_advisory_xact_lock({VERSION_LOCK}); begin"));

/// The span of one statement that writes a resource or a report (the change-feed row is written
/// by a trigger in the same statement).
pub(crate) fn write_span(statement: &'static str) -> tracing::Span {
    hyperfleet_common::trace_span!("db.write", otel.name = statement, db.system.name = "postgresql")
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
