//! Test harness: the API router on a fresh, migrated database per test, called without a socket.
#![allow(dead_code)]

use anyhow::Result;
use axum::{
    Router,
    body::{Body, to_bytes},
    extract::ConnectInfo,
    http::{Method, Request, StatusCode, header},
};
use hyperfleet_api::config::{RequiredAdapters, WatchConfig};
use hyperfleet_tests::{LocalEnv, TestDb};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use tower::ServiceExt;

pub const CLUSTERS: &str = "/api/hyperfleet/v1/clusters";

/// The peer address requests come from unless a test says otherwise (a gateway's, say).
pub const PEER: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7)), 40000);

pub struct App {
    router: Router,
    db: TestDb,
    pool: sqlx::PgPool,
}

pub async fn app() -> Result<App> {
    app_with(RequiredAdapters::default()).await
}

/// An app whose kinds require the given adapters.
pub async fn app_with(adapters: RequiredAdapters) -> Result<App> {
    app_configured(adapters, WatchConfig::default()).await
}

/// An app that requires JWTs as `jwt` says (every authenticated caller may do everything).
pub async fn app_with_auth(jwt: hyperfleet_api::auth::JwtConfig) -> Result<App> {
    app_with_authz(jwt, Default::default()).await
}

/// An app that requires JWTs and applies `authz`'s rules.
pub async fn app_with_authz(
    jwt: hyperfleet_api::auth::JwtConfig,
    authz: hyperfleet_api::authz::AuthzConfig,
) -> Result<App> {
    let env = LocalEnv::load()?;
    let db = TestDb::create(&env).await?;
    let pool = PgPoolOptions::new().max_connections(4).connect_with(env.pg_options(&db.name)?).await?;
    hyperfleet_api::MIGRATOR.run(&pool).await?;
    let auth = hyperfleet_api::auth::Authenticator::new(jwt, authz).await.map_err(anyhow::Error::msg)?;
    let state = hyperfleet_api::AppState::new(pool.clone(), RequiredAdapters::default()).with_auth(Some(auth));
    Ok(App { router: hyperfleet_api::router(state), db, pool })
}

/// An app with the given request limits and change-feed settings.
pub async fn app_bounded(limits: hyperfleet_api::config::LimitsConfig, watch: WatchConfig) -> Result<App> {
    build(RequiredAdapters::default(), |s| s.with_watch(watch, Default::default()).with_limits(limits)).await
}

/// An app where `optional` adapters may report besides the required ones.
pub async fn app_with_optional(optional: &[&str]) -> Result<App> {
    let names = optional.iter().map(|s| s.to_string()).collect();
    build(RequiredAdapters::default(), |s| s.with_optional_adapters(names)).await
}

/// An app with the given adapters and change-feed settings.
pub async fn app_configured(adapters: RequiredAdapters, watch: WatchConfig) -> Result<App> {
    build(adapters, |s| s.with_watch(watch, Default::default())).await
}

/// The router on a fresh, migrated database, its state as `configure` makes it.
async fn build(
    adapters: RequiredAdapters,
    configure: impl FnOnce(hyperfleet_api::AppState) -> hyperfleet_api::AppState,
) -> Result<App> {
    let env = LocalEnv::load()?;
    let db = TestDb::create(&env).await?;
    let pool = PgPoolOptions::new().max_connections(8).connect_with(env.pg_options(&db.name)?).await?;
    hyperfleet_api::MIGRATOR.run(&pool).await?;
    let state = configure(hyperfleet_api::AppState::new(pool.clone(), adapters));
    Ok(App { router: hyperfleet_api::router(state), db, pool })
}

/// A server of the app's router on a loopback port of its own; stopped when dropped.
pub struct Served {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    /// Serves the router over a real socket, for clients outside the test process.
    pub async fn serve(&self) -> Result<Served> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = self.router.clone().into_make_service_with_connect_info::<std::net::SocketAddr>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Served { url, task })
    }

    /// The app's database pool, for setting up states the API cannot reach by itself.
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }

    /// Sends a request with extra headers; returns the raw response (for streams and 304s).
    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<axum::response::Response> {
        self.send_from(PEER, method, uri, headers, body).await
    }

    /// Like [`App::send`], as if from `peer` (the connection's address the server would see).
    pub async fn send_from(
        &self,
        peer: std::net::SocketAddr,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<axum::response::Response> {
        let mut req = Request::builder().method(method).uri(uri).extension(ConnectInfo(peer));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        Ok(self.router.clone().oneshot(req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_default())?).await?)
    }

    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<&str>,
    ) -> Result<(StatusCode, Vec<(String, String)>, Value)> {
        let mut req = Request::builder().method(method).uri(uri);
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let resp =
            self.router.clone().oneshot(req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_default())?).await?;
        let status = resp.status();
        let headers =
            resp.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
        let bytes = to_bytes(resp.into_body(), 1 << 20).await?;
        let json = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Ok((status, headers, json))
    }

    pub async fn done(self) {
        self.pool.close().await;
        self.db.drop_db().await;
    }
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub fn cluster(name: &str) -> String {
    json!({"kind": "Cluster", "name": name, "spec": {"region": "eu"}, "labels": {"env": "test"}}).to_string()
}
