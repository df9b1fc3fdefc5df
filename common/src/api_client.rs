//! The HyperFleet API as the workers use it: list pages, one resource, a status report and the
//! change feed, each with the worker's bearer token ([`ApiCredentials`]), a timeout, and one rule
//! for what is worth retrying. Retrying itself (how often, how long) stays with the caller.

use std::time::Duration;

use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::token::{ApiCredentials, problem_detail};

/// The API's header naming the change-feed position of a list or a watch.
pub const VERSION_HEADER: &str = "x-hyperfleet-resource-version";

/// Whether an HTTP status is worth retrying: server errors, 408 and 429.
pub fn is_retryable_status(status: u16) -> bool {
    (500..600).contains(&status) || status == 408 || status == 429
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer: connection refused, reset, timed out.
    Network,
    /// The token file cannot be read.
    Token,
    /// 401 or 403: the caller counts it; `first` is true for the first refusal since the last
    /// accepted request (the one worth a warning); `detail` is the problem's.
    Refused { status: u16, first: bool, detail: String },
    /// Another error status.
    Status(u16),
    /// A success whose body cannot be read.
    Body,
}

/// A failed call: what happened and a message naming the request (never the token).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    pub failure: Failure,
    pub message: String,
}

impl CallError {
    /// Network errors, 5xx, 408 and 429.
    pub fn is_retryable(&self) -> bool {
        match self.failure {
            Failure::Network => true,
            Failure::Status(s) => is_retryable_status(s),
            _ => false,
        }
    }

    /// The API refused the credentials (401/403).
    pub fn is_refused(&self) -> bool {
        matches!(self.failure, Failure::Refused { .. })
    }
}

/// One page of a list, and the change-feed position it reflects.
pub struct Page<T> {
    pub items: Vec<T>,
    pub version: Option<String>,
}

/// A client of the HyperFleet API for one worker.
pub struct ApiClient {
    /// Requests with a total timeout.
    http: reqwest::Client,
    /// Change feeds: a connect timeout only (a feed lasts as long as it lasts).
    streams: reqwest::Client,
    base: String,
    creds: ApiCredentials,
    /// Bounds every request, and reading a refusal's body on a change feed's connection.
    timeout: Duration,
    /// The worker's name in log lines ("sentinel", "adapter").
    who: &'static str,
}

impl ApiClient {
    /// A client of the API at `base_url` sending `creds`; `timeout` bounds every request (and the
    /// connection of a change feed).
    pub fn new(who: &'static str, base_url: &str, timeout: Duration, creds: ApiCredentials) -> Result<Self, String> {
        // reqwest is built without a provider of its own: without one it would panic.
        crate::telemetry::install_crypto_provider();
        let agent = format!("hyperfleet-{who}/{}", env!("CARGO_PKG_VERSION"));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(agent.clone())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let streams = reqwest::Client::builder()
            .connect_timeout(timeout)
            .user_agent(agent)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(ApiClient { http, streams, base: base_url.trim_end_matches('/').to_string(), creds, timeout, who })
    }

    pub fn credentials(&self) -> &ApiCredentials {
        &self.creds
    }

    /// `{base}/api/hyperfleet/v1/{plural}`, and `/{id}` when given.
    pub fn url(&self, plural: &str, id: Option<&str>) -> String {
        match id {
            Some(id) => format!("{}/api/hyperfleet/v1/{plural}/{id}", self.base),
            None => format!("{}/api/hyperfleet/v1/{plural}", self.base),
        }
    }

    /// A request with the bearer token (read again if the file changed or was refused).
    async fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        url: &str,
    ) -> Result<reqwest::RequestBuilder, CallError> {
        let request = client.request(method.clone(), url);
        match self.creds.authorization().await {
            Ok(Some(value)) => Ok(request.header(reqwest::header::AUTHORIZATION, value)),
            Ok(None) => Ok(request),
            Err(e) => Err(CallError { failure: Failure::Token, message: format!("{method} {url}: {e}") }),
        }
    }

    /// Sends `request`; a 401/403 is recorded (the token file is read again next time) and
    /// returned as [`Failure::Refused`] with the problem's `detail`. An answer the API could only
    /// give past authentication (a success, or a 4xx other than 401, 403 and 408) ends a streak of
    /// refusals.
    async fn send(&self, what: &str, request: reqwest::RequestBuilder) -> Result<reqwest::Response, CallError> {
        // Inside a trace (an adapter's event, a sentinel's announcement) the call is a client span
        // whose context the API continues; outside one (the sentinel's poll) it is not traced.
        let span = if crate::telemetry::in_trace() {
            // "GET http://host/api/…": the method, and the path without the host (nor any
            // credentials a base URL may carry).
            let (method, url) = what.split_once(' ').unwrap_or(("HTTP", what));
            let path = url.split_once("://").map_or(url, |(_, rest)| rest.find('/').map_or("/", |i| &rest[i..]));
            crate::trace_span!(
                "call",
                otel.name = method,
                otel.kind = "client",
                http.request.method = method,
                url.path = path,
                http.response.status_code = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        let mut headers = reqwest::header::HeaderMap::new();
        span.in_scope(|| crate::telemetry::inject(&mut headers));
        let resp = request
            .headers(headers)
            .send()
            .instrument(span.clone())
            .await
            .map_err(|e| CallError { failure: Failure::Network, message: format!("{what}: {e}") });
        if resp.is_err() {
            crate::telemetry::fail(&span, "no answer (connection failed or timed out)");
        }
        let resp = resp?;
        let status = resp.status();
        span.record("http.response.status_code", status.as_u16());
        if !matches!(status.as_u16(), 401 | 403) {
            if (status.is_success() || (status.is_client_error() && status.as_u16() != 408)) && self.creds.accepted() {
                tracing::info!("the API accepts the {}'s credentials again", self.who);
            }
            return Ok(resp);
        }
        // A problem+json body of a few hundred bytes, read with a deadline: a change feed's client
        // has no total timeout.
        let body = tokio::time::timeout(self.timeout, resp.text()).await.ok().and_then(Result::ok).unwrap_or_default();
        let first = self.creds.refused().await;
        let detail = problem_detail(&body);
        let message = format!("{what}: HTTP {status}: {detail}");
        let status = status.as_u16();
        Err(CallError { failure: Failure::Refused { status, first, detail }, message })
    }

    fn status_error(what: &str, resp: &reqwest::Response) -> CallError {
        let status = resp.status();
        CallError { failure: Failure::Status(status.as_u16()), message: format!("{what}: HTTP {status}") }
    }

    /// One page of `plural` with `query`.
    pub async fn list_page<T: DeserializeOwned>(
        &self,
        plural: &str,
        query: &[(&str, String)],
    ) -> Result<Page<T>, CallError> {
        #[derive(serde::Deserialize)]
        struct Body<T> {
            items: Vec<T>,
        }
        let url = self.url(plural, None);
        let what = format!("GET {url}");
        let resp = self.send(&what, self.request(&self.http, reqwest::Method::GET, &url).await?.query(query)).await?;
        if !resp.status().is_success() {
            let mut e = Self::status_error(&what, &resp);
            if !e.is_retryable() {
                let detail: String = resp.text().await.unwrap_or_default().chars().take(300).collect();
                e.message = format!("{}: {detail}", e.message);
            }
            return Err(e);
        }
        let version = resp.headers().get(VERSION_HEADER).and_then(|v| v.to_str().ok()).map(String::from);
        match resp.json::<Body<T>>().await {
            Ok(body) => Ok(Page { items: body.items, version }),
            Err(e) => Err(CallError { failure: Failure::Body, message: format!("{what}: unreadable body: {e}") }),
        }
    }

    /// One resource, or `None` when the API does not have it (404).
    pub async fn get<T: DeserializeOwned>(&self, plural: &str, id: &str) -> Result<Option<T>, CallError> {
        let url = self.url(plural, Some(id));
        let what = format!("GET {url}");
        let resp = self.send(&what, self.request(&self.http, reqwest::Method::GET, &url).await?).await?;
        match resp.status() {
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            s if !s.is_success() => Err(Self::status_error(&what, &resp)),
            _ => resp
                .json()
                .await
                .map(Some)
                .map_err(|e| CallError { failure: Failure::Body, message: format!("{what}: unreadable body: {e}") }),
        }
    }

    /// PUTs an adapter's status report about a resource. 201 (stored), 204 (discarded as stale)
    /// and 404 (the resource is gone) are all answers the adapter is done with.
    pub async fn put_status(&self, plural: &str, id: &str, report: &serde_json::Value) -> Result<u16, CallError> {
        let url = format!("{}/statuses", self.url(plural, Some(id)));
        let what = format!("PUT {url}");
        let resp = self.send(&what, self.request(&self.http, reqwest::Method::PUT, &url).await?.json(report)).await?;
        match resp.status().as_u16() {
            s @ (201 | 204 | 404) => Ok(s),
            _ => Err(Self::status_error(&what, &resp)),
        }
    }

    /// Opens the change feed of `plural` (`?watch=true` plus `query`); the response streams NDJSON
    /// lines. A position the API no longer has is `Status(410)`.
    pub async fn watch(&self, plural: &str, query: &[(&str, String)]) -> Result<reqwest::Response, CallError> {
        let url = self.url(plural, None);
        let what = format!("GET {url}?watch=true");
        let request = self.request(&self.streams, reqwest::Method::GET, &url).await?.query(&[("watch", "true")]);
        let resp = self.send(&what, request.query(query)).await?;
        if resp.status().as_u16() != 200 {
            return Err(Self::status_error(&what, &resp));
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_statuses() {
        for s in [500, 502, 503, 504, 408, 429] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 409, 410, 422] {
            assert!(!is_retryable_status(s), "{s}");
        }
    }

    #[test]
    fn urls_name_the_kind_and_the_resource() -> Result<(), String> {
        let client = ApiClient::new("test", "http://api:8000/", Duration::from_secs(1), ApiCredentials::default())?;
        assert_eq!(client.url("clusters", None), "http://api:8000/api/hyperfleet/v1/clusters");
        assert_eq!(client.url("nodepools", Some("x")), "http://api:8000/api/hyperfleet/v1/nodepools/x");
        Ok(())
    }
}
