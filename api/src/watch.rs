//! The change feed: `GET /api/hyperfleet/v1/{clusters|nodepools}?watch=true` streams one JSON
//! object per line (`application/x-ndjson`) for every change of a matching resource:
//!
//! ```text
//! {"type":"ADDED"|"MODIFIED"|"DELETED","object":{…the resource…},"resource_version":"42"}
//! {"type":"BOOKMARK","resource_version":"57"}      ← heartbeat while nothing matches
//! ```
//!
//! When the API traces, a change line also carries `"traceparent"`: the W3C trace context of the
//! request that made the resource's generation.
//!
//! Changes are recorded by triggers in the transaction that makes them and announced with
//! `NOTIFY` at commit (see the versions migration), so a rolled-back change never appears.
//! `resource_version=N` resumes after change N: every later change, in order, none twice. A
//! version older than the retained history is answered 410 (`HYPERFLEET-CNF-004`): list again
//! and watch from the list's `X-HyperFleet-Resource-Version` header.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    config::WatchConfig,
    domain::{model::Kind, search::Filter},
    error::ApiError,
    store::changes::{self, Change},
};

pub const NDJSON: &str = "application/x-ndjson";
pub const VERSION_HEADER: &str = "x-hyperfleet-resource-version";
/// Re-check for changes this often even without a notification (a lost LISTEN connection).
const FALLBACK_POLL: Duration = Duration::from_secs(2);
/// Changes read per query (a change's row is at most ~130 KiB: spec and status data at their
/// limits), by the reader and by a watcher catching up.
const BATCH: i64 = 100;
/// A batch handed to the watchers holds at most about this many bytes of event lines: the shared
/// buffer ([`FEED_BUFFER`] batches) stays bounded however large the resources are.
const BATCH_BYTES: usize = 1 << 20;
/// Batches kept for watchers that have not taken them yet; one that falls further behind reads
/// what it missed from the database itself.
const FEED_BUFFER: usize = 32;

/// One committed change, its event line already serialised (once, for every watcher).
struct Item {
    seq: i64,
    owner: Option<Uuid>,
    line: Bytes,
}

/// Every change of one kind numbered in `(after, upto]`, in order (the range may hold changes
/// of the other kind, which go to its own channel). `after > upto` never happens; a batch with
/// no items marks a position (the reader's start) that watchers behind it must read up to.
struct Batch {
    after: i64,
    upto: i64,
    items: Vec<Item>,
}

/// Index of a kind's channel.
fn channel(kind: &str) -> usize {
    usize::from(kind == Kind::NodePool.name())
}

/// The change table's single reader, shared by every watch of the process: it reads each
/// committed change once (woken by `NOTIFY`, and every [`FALLBACK_POLL`] in case the listening
/// connection was lost) and hands it to the watchers of its kind, so the database's work does not
/// grow with the number of watchers and a watch of one kind is not woken by changes of the other.
/// Watchers with a `search` filter run their own (bounded) query when the reader has seen
/// something new, and never while nothing changes.
#[derive(Clone)]
pub struct Feed {
    /// Per kind: clusters, nodepools.
    batches: [broadcast::Sender<Arc<Batch>>; 2],
    /// The newest change number the reader has read; published before the batches holding it
    /// are sent, so a watch that subscribes and then reads it misses nothing.
    position: tokio::sync::watch::Receiver<i64>,
}

impl Feed {
    /// Starts the listener for `hyperfleet_changes` and the reader (both reconnect on their own).
    pub fn start(pool: PgPool) -> Self {
        let batches = [broadcast::channel(FEED_BUFFER).0, broadcast::channel(FEED_BUFFER).0];
        let (position_tx, position) = tokio::sync::watch::channel(0);
        let wake = Arc::new(tokio::sync::Notify::new());
        let (listener_pool, notify) = (pool.clone(), wake.clone());
        tokio::spawn(async move {
            loop {
                match sqlx::postgres::PgListener::connect_with(&listener_pool).await {
                    Ok(mut listener) => {
                        if let Err(e) = listener.listen("hyperfleet_changes").await {
                            tracing::debug!(error = %e, "LISTEN failed");
                        } else {
                            while listener.recv().await.is_ok() {
                                notify.notify_one();
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "change listener cannot connect"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        tokio::spawn(read_changes(pool, batches.clone(), position_tx, wake));
        Feed { batches, position }
    }
}

/// The reader: from the newest change at its start, every later one, in order, in batches.
async fn read_changes(
    pool: PgPool,
    batches: [broadcast::Sender<Arc<Batch>>; 2],
    position: tokio::sync::watch::Sender<i64>,
    wake: Arc<tokio::sync::Notify>,
) {
    let mut last = loop {
        match pool.acquire().await {
            Ok(mut conn) => match changes::current_version(&mut conn).await {
                Ok(v) => break v,
                Err(e) => tracing::debug!(error = %e, "change reader cannot start yet"),
            },
            Err(e) => tracing::debug!(error = %e, "change reader cannot start yet"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // Where the reader starts: a watch that is behind it (it opened before the reader could
    // start) reads up to here from the database.
    position.send_replace(last);
    for tx in &batches {
        let _ = tx.send(Arc::new(Batch { after: last, upto: last, items: Vec::new() }));
    }
    // Per kind: the end of the last batch sent, where its next batch starts.
    let mut sent = [last, last];
    loop {
        // Everything committed since `last`, then wait for news (or the fallback poll).
        loop {
            metrics::counter!("hyperfleet_api_watch_queries_total", "by" => "reader").increment(1);
            let changes = match changes::after(&pool, last, BATCH).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "change reader query failed; retrying");
                    break;
                }
            };
            let full = changes.len() as i64 == BATCH;
            let Some(upto) = changes.last().map(|c| c.seq) else { break };
            // Per kind, batches of at most BATCH_BYTES of lines, each starting where the last ended.
            let mut ready: [Vec<Batch>; 2] = [Vec::new(), Vec::new()];
            let mut bytes = [0usize; 2];
            for c in &changes {
                let k = channel(&c.row.kind);
                if ready[k].is_empty() || bytes[k] >= BATCH_BYTES {
                    let after = ready[k].last().map_or(sent[k], |b| b.upto);
                    ready[k].push(Batch { after, upto: after, items: Vec::new() });
                    bytes[k] = 0;
                }
                let line = event_line(c);
                bytes[k] += line.len();
                if let Some(b) = ready[k].last_mut() {
                    b.upto = c.seq;
                    b.items.push(Item { seq: c.seq, owner: c.row.owner_id, line });
                }
            }
            last = upto;
            position.send_replace(last);
            for (k, list) in ready.into_iter().enumerate() {
                let n = list.len();
                for (i, mut b) in list.into_iter().enumerate() {
                    if i + 1 == n {
                        b.upto = upto; // the kind has nothing else up to here
                        sent[k] = upto;
                    }
                    let _ = batches[k].send(Arc::new(b));
                }
            }
            if !full {
                break;
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(FALLBACK_POLL) => {}
        }
    }
}

/// The change feeds of the process: the shared reader, the bound on open streams, their settings
/// and the token that ends them all when the server stops.
#[derive(Clone)]
pub struct Watches {
    db: PgPool,
    feed: Feed,
    streams: Streams,
    cfg: WatchConfig,
    stop: CancellationToken,
}

impl Watches {
    /// Starts the reader (see [`Feed::start`]); every stream ends when `stop` is cancelled.
    pub fn start(db: PgPool, cfg: WatchConfig, stop: CancellationToken) -> Self {
        Watches { feed: Feed::start(db.clone()), streams: Streams::new(&cfg), db, cfg, stop }
    }

    /// Answers a `?watch=true` request of `client` (its identity, or its address without
    /// authentication).
    pub async fn respond(&self, sel: Selection, resume: Option<&str>, client: &str) -> Result<Response, ApiError> {
        respond(self.clone(), sel, resume, client).await
    }
}

/// The open change feeds of the process, bounded in all and per caller: every stream costs a
/// task and database queries, so one client (or a crowd) cannot open them without limit.
#[derive(Clone)]
pub struct Streams {
    max: usize,
    per_client: usize,
    open: Arc<Mutex<(usize, HashMap<String, usize>)>>,
}

/// One open stream's place; given back when the stream ends.
pub struct StreamSlot {
    streams: Streams,
    client: String,
}

impl Streams {
    pub fn new(cfg: &crate::config::WatchConfig) -> Self {
        Streams { max: cfg.max_streams, per_client: cfg.max_streams_per_client, open: Arc::default() }
    }

    /// A place for one more stream of `client`, or 429 saying which bound it hit.
    pub fn open(&self, client: &str) -> Result<StreamSlot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, clients) = &mut *open;
        if *total >= self.max {
            return Err(ApiError::TooManyStreams(format!(
                "{} change feeds are open on this server, its limit (watch.max_streams); retry later",
                self.max
            )));
        }
        let mine = clients.entry(client.to_string()).or_default();
        if *mine >= self.per_client {
            return Err(ApiError::TooManyStreams(format!(
                "'{client}' has {} change feeds open, the limit per caller (watch.max_streams_per_client)",
                self.per_client
            )));
        }
        *mine += 1;
        *total += 1;
        metrics::gauge!("hyperfleet_api_watch_streams").set(*total as f64);
        Ok(StreamSlot { streams: self.clone(), client: client.to_string() })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, clients) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = clients.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                clients.remove(&self.client);
            }
        }
        metrics::gauge!("hyperfleet_api_watch_streams").set(*total as f64);
    }
}

/// What one watch selects.
pub struct Selection {
    pub kind: Kind,
    pub parent: Option<Uuid>,
    /// Compiled with placeholders from `$3`.
    pub filter: Option<Filter>,
    /// When the caller's token expires: the stream ends then (the client reconnects with a fresh
    /// token and its last `resource_version`), so a revoked or expired identity does not keep reading.
    pub until: Option<tokio::time::Instant>,
}

async fn respond(state: Watches, sel: Selection, resume: Option<&str>, client: &str) -> Result<Response, ApiError> {
    let slot = state.streams.open(client)?;
    let mut conn = state.db.acquire().await?;
    let pruned = changes::pruned_through(&mut *conn).await?;
    let start = match resume {
        Some(raw) => {
            let v: i64 = raw.trim().parse().map_err(|_| {
                ApiError::validation(
                    "resource_version",
                    Some(raw.into()),
                    "format",
                    "resource_version must be an integer".into(),
                )
            })?;
            if v < pruned {
                return Err(ApiError::Gone(format!(
                    "resource_version {v} is older than the retained change history (from {pruned}); list again and \
                     watch from the list's {VERSION_HEADER} header"
                )));
            }
            v
        }
        None => changes::current_version(&mut conn).await?,
    };
    drop(conn);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        stream(state, sel, start, tx).await;
        drop(slot);
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    }));
    let mut resp = (StatusCode::OK, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(v) = HeaderValue::from_str(&start.to_string()) {
        headers.insert(VERSION_HEADER, v);
    }
    Ok(resp)
}

/// One change as a line of the feed, serialised straight from the row (its spec as stored).
fn event_line(c: &Change) -> Bytes {
    #[derive(serde::Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        object: crate::domain::model::Resource,
        resource_version: String,
        /// The `traceparent` of the request that made the resource's generation, when traced.
        #[serde(skip_serializing_if = "Option::is_none")]
        traceparent: Option<&'a str>,
    }
    let event = Event {
        kind: &c.change_type,
        object: c.row.to_resource(),
        resource_version: c.seq.to_string(),
        traceparent: c.row.trace_parent.as_deref(),
    };
    let mut text = serde_json::to_vec(&event).unwrap_or_default();
    text.push(b'\n');
    Bytes::from(text)
}

fn line(v: serde_json::Value) -> Bytes {
    let mut text = v.to_string();
    text.push('\n');
    Bytes::from(text)
}

/// Sends changes after `last` until the client goes away or the server shuts down.
///
/// Without a search filter the watch serves itself from the shared reader's batches of its kind,
/// filtering by parent in memory; it reads the database only to catch up — at its start (up to
/// the reader's position), after a batch that starts past it (the reader's start, or batches it
/// missed), or after falling more than [`FEED_BUFFER`] batches behind. With a filter it runs its
/// own query for what the reader has seen since, when the reader has seen something.
async fn stream(state: Watches, sel: Selection, mut last: i64, tx: mpsc::Sender<Bytes>) {
    // Subscribed before the position is read: a batch sent before that was published before it
    // (the reader publishes first), so the catch-up up to the position covers it.
    let mut batches = state.feed.batches[channel(sel.kind.name())].subscribe();
    let mut position = state.feed.position.clone();
    let shared = sel.filter.is_none();
    let heartbeat = state.cfg.heartbeat;
    let stall = state.cfg.stall_timeout;
    let mut idle_since = tokio::time::Instant::now();
    let mut behind = true;
    loop {
        // Never below the end of a batch already received: the reader publishes first.
        let reader_at = *position.borrow_and_update();
        if last >= reader_at {
            behind = false;
        } else if behind || !shared {
            if behind && shared {
                // Resuming from the database: a position the pruner has passed meanwhile is gone;
                // ending the stream makes the client resume and get 410 (list again).
                match changes::pruned_through(&state.db).await {
                    Ok(pruned) if pruned > last => return,
                    _ => {}
                }
            }
            // What the reader has seen after `last`, from the database: matching changes in
            // (last, reader_at], at most BATCH of them per query.
            metrics::counter!("hyperfleet_api_watch_queries_total", "by" => "watcher").increment(1);
            let selection = (sel.kind, sel.parent, sel.filter.as_ref());
            match changes::selected(&state.db, selection, (last, reader_at), BATCH).await {
                Ok(changes) => {
                    let full = changes.len() as i64 == BATCH;
                    let mut upto = reader_at;
                    for c in changes {
                        upto = c.seq;
                        if !deliver(&tx, event_line(&c), stall).await {
                            return;
                        }
                        idle_since = tokio::time::Instant::now();
                    }
                    last = if full { upto } else { reader_at };
                    if full {
                        continue; // there is more
                    }
                    behind = false;
                }
                Err(e) => tracing::debug!(error = %e, "watch query failed; retrying"),
            }
        }
        if idle_since.elapsed() >= heartbeat {
            let bookmark = json!({"type": "BOOKMARK", "resource_version": last.to_string()});
            if !deliver(&tx, line(bookmark), stall).await {
                return;
            }
            idle_since = tokio::time::Instant::now();
        }
        let wait = FALLBACK_POLL.min(heartbeat.saturating_sub(idle_since.elapsed()));
        let expired = async {
            match sel.until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = state.stop.cancelled() => return,
            _ = expired => return,
            _ = tx.closed() => return,
            r = batches.recv(), if shared => match r {
                // A batch covers every change in (after, upto]: usable when it starts at or
                // before `last`; a later one means some were missed — read them first.
                Ok(batch) if batch.after <= last => {
                    for item in batch.items.iter().filter(|i| i.seq > last) {
                        if sel.parent.is_none() || item.owner == sel.parent {
                            if !deliver(&tx, item.line.clone(), stall).await {
                                return;
                            }
                            idle_since = tokio::time::Instant::now();
                        }
                    }
                    last = last.max(batch.upto);
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => behind = true,
                Err(broadcast::error::RecvError::Closed) => tokio::time::sleep(wait).await,
            },
            r = position.changed(), if !shared => {
                if r.is_err() {
                    tokio::time::sleep(wait).await;
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Hands a line to the response body. A client that has not taken anything for `stall` (its
/// buffer full) is cut off — it resumes from its last `resource_version` — so it holds nothing
/// but its own connection; writers and other watchers never wait for it.
async fn deliver(tx: &mpsc::Sender<Bytes>, line: Bytes, stall: Duration) -> bool {
    match tx.send_timeout(line, stall).await {
        Ok(()) => true,
        Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
            metrics::counter!("hyperfleet_api_watch_disconnects_total", "reason" => "stalled").increment(1);
            tracing::info!(?stall, "watch client stopped reading; disconnected (it can resume)");
            false
        }
        Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
    }
}

/// Changes deleted per statement of the pruner: each stays far below the statement timeout.
const PRUNE_BATCH: i64 = 10_000;

/// Drops changes older than `retention` every minute, in batches, and records how far it pruned.
pub fn spawn_pruner(pool: PgPool, retention: Duration, shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            // Oldest first, so the horizon is always the highest pruned number; a backlog (after
            // downtime or a burst) goes in several bounded statements, never one unbounded one.
            loop {
                let pruned = changes::prune(&pool, retention, PRUNE_BATCH).await;
                match pruned {
                    Ok(n) if n == PRUNE_BATCH && !shutdown.is_cancelled() => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "change history not pruned; retrying in a minute");
                        break;
                    }
                }
            }
        }
    });
}
