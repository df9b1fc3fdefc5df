//! Follows the API's change feed (`?watch=true`) so a new or changed resource is decided about
//! within milliseconds; the poll stays the safety net. Reconnects with `resource_version` after
//! an API restart; a version the API no longer has (410) starts over from the present. Sends the
//! bearer token like the list requests; a refusal (401/403) is counted and warned about with theirs.

use std::{sync::Arc, time::Duration};

use hyperfleet_common::api_client::{ApiClient, Failure};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{Resource, SentinelConfig};

/// What the feed reports about one resource.
#[derive(Debug)]
pub enum Change {
    Changed(Box<Resource>),
    Gone(String),
}

#[derive(Debug, Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    object: Option<Resource>,
    resource_version: String,
    #[serde(default)]
    traceparent: Option<String>,
}

/// No line (not even a heartbeat) for this long means a dead stream: reconnect.
const IDLE: Duration = Duration::from_secs(60);

/// Streams changes into `tx` until `shutdown`.
pub fn spawn(
    cfg: &SentinelConfig,
    api: Arc<ApiClient>,
    start: tokio::sync::oneshot::Receiver<Option<String>>,
    tx: mpsc::Sender<Change>,
    shutdown: CancellationToken,
) {
    let search = cfg.search();
    let cfg = cfg.clone();
    tokio::spawn(async move {
        // From the position of the first successful poll's list: what changes between that list and
        // this connection arrives through the feed (starting "from now" would lose it until the next poll).
        let mut resume: Option<String> = tokio::select! {
            _ = shutdown.cancelled() => return,
            v = start => v.ok().flatten(),
        };
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            let mut query = Vec::new();
            if let Some(s) = &search {
                query.push(("search", s.clone()));
            }
            if let Some(v) = &resume {
                query.push(("resource_version", v.clone()));
            }
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = follow(&api, &cfg, &query, &tx, &mut resume) => r,
            };
            match outcome {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(Stop::Receiver) => return,
                Err(Stop::Gone) => {
                    tracing::info!("change feed position expired; following from now (the poll covers the gap)");
                    resume = None;
                }
                Err(Stop::Refused) => {
                    tracing::debug!(retry_in = ?backoff, "change feed refused");
                }
                Err(Stop::Failed(e)) => {
                    metrics::counter!("hyperfleet_sentinel_watch_reconnects_total").increment(1);
                    tracing::debug!(error = %e, retry_in = ?backoff, "change feed interrupted");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}

enum Stop {
    Receiver,
    Gone,
    /// 401 or 403: already counted and (once per streak) warned about.
    Refused,
    Failed(String),
}

async fn follow(
    api: &ApiClient,
    cfg: &SentinelConfig,
    query: &[(&str, String)],
    tx: &mpsc::Sender<Change>,
    resume: &mut Option<String>,
) -> Result<(), Stop> {
    let mut resp = match api.watch(&cfg.resource_type, query).await {
        Ok(resp) => resp,
        Err(e) => {
            return Err(match e.failure {
                Failure::Status(410) => Stop::Gone,
                Failure::Refused { .. } => {
                    crate::note_refusal(api, cfg, "watch", &e);
                    Stop::Refused
                }
                Failure::Status(code) => Stop::Failed(format!("HTTP {code}")),
                _ => Stop::Failed(e.message),
            });
        }
    };
    if resume.is_none() {
        *resume = resp
            .headers()
            .get(hyperfleet_common::api_client::VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
    }
    tracing::info!(url = %api.url(&cfg.resource_type, None), resume = ?resume, "following the change feed");
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(IDLE, resp.chunk()).await {
            Err(_) => return Err(Stop::Failed("no heartbeat".into())),
            Ok(Err(e)) => return Err(Stop::Failed(e.to_string())),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(c))) => c,
        };
        buffer.extend_from_slice(&chunk);
        while let Some(i) = buffer.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = buffer.drain(..=i).collect();
            let line: Line = match serde_json::from_slice(&raw) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable change-feed line skipped");
                    continue;
                }
            };
            let change = match (line.kind.as_str(), line.object) {
                ("ADDED" | "MODIFIED", Some(mut r)) => {
                    r.traceparent = line.traceparent;
                    Some(Change::Changed(Box::new(r)))
                }
                ("DELETED", Some(r)) => Some(Change::Gone(r.id)),
                _ => None,
            };
            if let Some(c) = change {
                tx.send(c).await.map_err(|_| Stop::Receiver)?;
            }
            *resume = Some(line.resource_version);
        }
    }
}
