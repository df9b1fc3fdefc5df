//! The change table behind the change feed: `resource_changes`, written by triggers in the
//! transaction that makes each change (see the versions migration), and its pruning horizon.
//! These return sqlx's errors: the feed's background reader and pruner log the cause and retry,
//! and count nothing as a request's database error; handlers convert with `?`.

use std::time::Duration;

use sqlx::{FromRow, PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::{
    domain::{
        model::{Kind, Row},
        search::Filter,
    },
    store::{resources::COLUMNS, selection_args, selection_sql},
};

/// One committed change and the resource as it was after it (before it, for a delete).
#[derive(FromRow)]
pub struct Change {
    pub seq: i64,
    pub change_type: String,
    #[sqlx(flatten)]
    pub row: Row,
}

/// The newest committed change number (what a watch without `resource_version` starts after).
pub async fn current_version(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "select greatest((select coalesce(max(seq), 0) from resource_changes), \
                         (select pruned_through from resource_changes_horizon))",
    )
    .fetch_one(conn)
    .await
}

/// The newest change number the pruner has removed: history starts after it.
pub async fn pruned_through<'e>(db: impl PgExecutor<'e>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select pruned_through from resource_changes_horizon").fetch_one(db).await
}

/// The resource columns of a change, read from its snapshot.
fn change_sql(condition: &str, limit: i64) -> String {
    format!(
        "select c.seq, c.change_type, {COLUMNS} from resource_changes c \
         cross join lateral jsonb_populate_record(null::resources, c.snapshot) r \
         where {condition} order by c.seq limit {limit}"
    )
}

/// Up to `limit` changes of any kind after `after`, in order.
pub async fn after(db: &PgPool, after: i64, limit: i64) -> Result<Vec<Change>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(change_sql("c.seq > $1", limit))).bind(after).fetch_all(db).await
}

/// Up to `limit` changes in `(after, upto]` of resources of `kind` (under `parent`) that match
/// `filter` (compiled with placeholders from `$3`), in order.
pub async fn selected(
    db: &PgPool,
    (kind, parent, filter): (Kind, Option<Uuid>, Option<&Filter>),
    (after, upto): (i64, i64),
    limit: i64,
) -> Result<Vec<Change>, sqlx::Error> {
    let (selection, n) = selection_sql(filter);
    let sql = change_sql(&format!("c.seq > ${n} and c.seq <= ${} and {selection}", n + 1), limit);
    let args = selection_args(kind.name(), parent, filter, &[after, upto])?;
    sqlx::query_as_with(sqlx::AssertSqlSafe(sql), args).fetch_all(db).await
}

/// Deletes up to `batch` of the oldest changes older than `retention` and moves the horizon past
/// them; returns how many went.
pub async fn prune(db: &PgPool, retention: Duration, batch: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "with gone as (delete from resource_changes where seq in (select seq from resource_changes \
             where changed_at < now() - make_interval(secs => $1) order by seq limit $2) returning seq), \
         horizon as (update resource_changes_horizon set pruned_through = greatest(pruned_through, \
             coalesce((select max(seq) from gone), 0))) \
         select count(*) from gone",
    )
    .bind(retention.as_secs_f64())
    .bind(batch)
    .fetch_one(db)
    .await
}
