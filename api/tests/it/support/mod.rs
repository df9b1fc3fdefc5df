//! Test harness: the API as the binary wires it, on a fresh, migrated database per test, called
//! without a socket (or served on its own, for clients outside the process).
#![allow(dead_code)]

use anyhow::{Context, Result};
use axum::{
    Router,
    body::{Body, to_bytes},
    extract::ConnectInfo,
    http::{Method, Request, StatusCode, header},
};
use hyperfleet_api::{
    ApiConfig, Application,
    config::{RequiredAdapters, SslMode, WatchConfig},
};
use hyperfleet_common::{config::Secret, ops::Listen};
use hyperfleet_tests::{LocalEnv, TestDb};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub const CLUSTERS: &str = "/api/hyperfleet/v1/clusters";

/// The peer address requests come from unless a test says otherwise (a gateway's, say).
pub const PEER: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7)), 40000);

pub struct App {
    router: Router,
    db: TestDb,
    pool: sqlx::PgPool,
    /// Until [`App::serve`] takes it: the application with its API listener bound.
    application: Option<Application>,
    /// What it was built with, for [`App::restart`].
    cfg: ApiConfig,
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
    build(|cfg| {
        cfg.jwt = jwt;
        cfg.authz = authz;
    })
    .await
}

/// An app with the given request limits and change-feed settings.
pub async fn app_bounded(limits: hyperfleet_api::config::LimitsConfig, watch: WatchConfig) -> Result<App> {
    build(|cfg| {
        cfg.limits = limits;
        cfg.watch = watch;
    })
    .await
}

/// An app where `optional` adapters may report besides the required ones.
pub async fn app_with_optional(optional: &[&str]) -> Result<App> {
    let names = optional.iter().map(|s| s.to_string()).collect();
    build(|cfg| cfg.optional_adapters = names).await
}

/// An app with the given adapters and change-feed settings.
pub async fn app_configured(adapters: RequiredAdapters, watch: WatchConfig) -> Result<App> {
    build(|cfg| {
        cfg.required_adapters = adapters;
        cfg.watch = watch;
    })
    .await
}

/// The API as `hyperfleet-api serve` wires it ([`Application::build`]) on a fresh, migrated
/// database (`verify-full` TLS), every listener on a free loopback port, its configuration as
/// `configure` makes it.
async fn build(configure: impl FnOnce(&mut ApiConfig)) -> Result<App> {
    let env = LocalEnv::load()?;
    let db = TestDb::create(&env).await?;
    let mut cfg = ApiConfig {
        server: Listen::new("127.0.0.1", 0),
        health: Listen::new("127.0.0.1", 0),
        metrics: Listen::new("127.0.0.1", 0),
        ..Default::default()
    };
    cfg.database.host = env.get("HF_DB_HOST")?.into();
    cfg.database.port = env.get("HF_DB_PORT")?.parse()?;
    cfg.database.username = env.get("HF_DB_USER")?.into();
    cfg.database.password = Secret::new(env.get("HF_DB_PASSWORD")?);
    cfg.database.name = db.name.clone();
    cfg.database.ssl.mode = SslMode::VerifyFull;
    cfg.database.ssl.root_cert_file = Some(env.get("HF_DB_CA_FILE")?.into());
    configure(&mut cfg);
    hyperfleet_api::migrate(&cfg).await?;
    let application = Application::build(cfg.clone(), CancellationToken::new()).await?;
    Ok(App { router: application.router(), pool: application.db().clone(), db, application: Some(application), cfg })
}

/// A server of the app on a loopback port of its own; stopped when dropped.
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
    /// Serves the API over its real socket ([`Application::run_until_stopped`]), for clients
    /// outside the test process.
    pub fn serve(&mut self) -> Result<Served> {
        let application = self.application.take().context("the app is served already")?;
        let url = format!("http://127.0.0.1:{}", application.port());
        let task = tokio::spawn(async move {
            let _ = application.run_until_stopped().await;
        });
        Ok(Served { url, task })
    }

    /// POSTs `body` to `uri` and asserts 201; returns the created resource.
    pub async fn create(&self, uri: &str, body: Value) -> Result<Value> {
        self.created(uri, &body.to_string()).await
    }

    /// POSTs the cluster [`cluster`] describes and asserts 201; returns its id.
    pub async fn create_cluster(&self, name: &str) -> Result<String> {
        let v = self.created(CLUSTERS, &cluster(name)).await?;
        Ok(v["id"].as_str().context("id")?.to_string())
    }

    async fn created(&self, uri: &str, body: &str) -> Result<Value> {
        let (status, _, v) = self.call(Method::POST, uri, Some(body)).await?;
        assert_eq!(status, StatusCode::CREATED, "POST {uri}: {v}");
        Ok(v)
    }

    /// Builds the app again on the same database, its configuration changed by `configure` (a new
    /// release of the API with other settings); requests go to the new one from now on.
    pub async fn restart(&mut self, configure: impl FnOnce(&mut ApiConfig)) -> Result<()> {
        configure(&mut self.cfg);
        if let Some(old) = self.application.take() {
            old.stop_background();
        }
        let application = Application::build(self.cfg.clone(), CancellationToken::new()).await?;
        self.router = application.router();
        self.application = Some(application);
        Ok(())
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
