//! Connection pools: the serving pool, the readiness probe's own connection and the migrations'.

use std::{sync::Arc, time::Duration};

use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::{ApiConfig, ApiError};

/// A connection idle at least this long is pinged before it is handed out.
const PING_IF_IDLE: Duration = Duration::from_secs(1);
/// After the database was seen failing, every connection is pinged before use for this long.
const PING_AFTER_TROUBLE: Duration = Duration::from_secs(30);

/// When the database last failed (the readiness probe's ping, or a request's connection): for
/// [`PING_AFTER_TROUBLE`] after it, every pooled connection is pinged before it is handed out, so
/// connections a restart killed — their `terminating connection` already waiting in the socket —
/// are dropped at acquire instead of failing the first request on each of them.
mod trouble {
    use std::{
        sync::{
            OnceLock,
            atomic::{AtomicU64, Ordering},
        },
        time::{Duration, Instant},
    };

    static EPOCH: OnceLock<Instant> = OnceLock::new();
    /// Milliseconds after [`EPOCH`] of the last failure, plus one (0: none yet).
    static LAST: AtomicU64 = AtomicU64::new(0);

    fn now_ms() -> u64 {
        u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn note() {
        LAST.store(now_ms().saturating_add(1), Ordering::Relaxed);
    }

    pub fn within(window: Duration) -> bool {
        let last = LAST.load(Ordering::Relaxed);
        last != 0 && now_ms().saturating_sub(last - 1) < u64::try_from(window.as_millis()).unwrap_or(u64::MAX)
    }
}

pub(crate) use trouble::note as note_db_trouble;

/// A lazily connecting pool: the API starts (and reports not-ready) while the database is down,
/// and recovers on its own when it returns.
///
/// sqlx pings every connection it hands out by default: a second round trip (and a PostgreSQL
/// wake-up) for a GET that needs one. Here only connections idle for [`PING_IF_IDLE`] are pinged —
/// those are the ones a database restart leaves dead — and, for [`PING_AFTER_TROUBLE`] after the
/// database was seen failing, every one; a busy connection that breaks fails its query (503) and
/// is discarded when released.
///
/// Its connections carry `database.statement_timeout` and `database.lock_timeout`.
pub fn serving(cfg: &ApiConfig) -> Result<PgPool, ApiError> {
    let opts = cfg.database.connect_options().map_err(ApiError::DatabaseConfig)?;
    Ok(lazy(opts, cfg.database.max_connections, cfg.database.acquire_timeout, Some(cfg.database.session_setup())))
}

/// The readiness probe's own connection: a pool saturated by requests (writers queued behind the
/// write lock) does not turn every replica NotReady at once — the probe asks whether the database
/// answers, not whether this replica is busy.
pub fn probe(cfg: &ApiConfig) -> Result<PgPool, ApiError> {
    let opts = cfg.database.connect_options().map_err(ApiError::DatabaseConfig)?;
    Ok(lazy(opts, 1, Duration::from_secs(2), Some(cfg.database.session_setup())))
}

/// Two connections without the serving timeouts: a migration may rightly take longer than any
/// request.
pub fn migrations(cfg: &ApiConfig) -> Result<PgPool, ApiError> {
    let opts = cfg.database.connect_options().map_err(ApiError::DatabaseConfig)?;
    Ok(lazy(opts, 2, cfg.database.acquire_timeout, None))
}

/// `setup` (SQL) runs once on every new connection.
fn lazy(opts: sqlx::postgres::PgConnectOptions, max: u32, acquire: Duration, setup: Option<String>) -> PgPool {
    let setup = Arc::new(setup);
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire)
        .after_connect(move |conn, _| {
            let setup = setup.clone();
            Box::pin(async move {
                if let Some(sql) = setup.as_deref() {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(conn).await?;
                }
                Ok(())
            })
        })
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE || trouble::within(PING_AFTER_TROUBLE) {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(opts)
}

/// Connection errors that retrying cannot fix.
pub fn refuses_us(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Tls(_) | sqlx::Error::Configuration(_) => true,
        // A certificate the CA bundle does not vouch for surfaces as an I/O error from rustls.
        sqlx::Error::Io(io) => io.get_ref().is_some_and(|inner| {
            matches!(
                inner.downcast_ref::<rustls::Error>(),
                Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
            )
        }),
        // invalid_authorization_specification, invalid_password, invalid_catalog_name
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("28000" | "28P01" | "3D000")),
        _ => false,
    }
}

/// `host:port/name` of the configured database, for logs and start errors (never the password).
pub fn endpoint(cfg: &ApiConfig) -> String {
    format!("{}:{}/{}", cfg.database.host, cfg.database.port, cfg.database.name)
}
