//! One trace per cluster change (OpenTelemetry): the three real binaries export to a real OTLP/HTTP
//! receiver ([`hyperfleet_tests::otlp::Collector`]); a client's `traceparent` on the POST is the
//! root of the trace that holds the API's create, the sentinel's publish, the adapter's work and
//! the API's status report, each the child of the one before.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hyperfleet_tests::{Stack, StackOptions, eventually, otlp::Collector, otlp::ReceivedSpan};
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(60);

/// The spans of `trace` from `service` named `name` (or, with a trailing `*`, starting with it)
/// whose parent is `parent`.
fn children<'a>(
    trace: &'a [ReceivedSpan],
    parent: &'a str,
    service: &'a str,
    name: &'a str,
) -> impl Iterator<Item = &'a ReceivedSpan> + 'a {
    trace.iter().filter(move |s| {
        s.service == service
            && s.parent_span_id == parent
            && name.strip_suffix('*').map_or(s.name == name, |prefix| s.name.starts_with(prefix))
    })
}

/// The first causal chain in `trace` from the client's span down to the API's status report, each
/// span the child of the one before (every candidate is tried: a re-announced event or a retried
/// request makes siblings).
fn chain(trace: &[ReceivedSpan], client_span: &str) -> Option<Vec<ReceivedSpan>> {
    const STEPS: [(&str, &str); 6] = [
        ("hyperfleet-api", "POST /api/hyperfleet/v1/clusters"),
        ("hyperfleet-sentinel", "publish *"),
        ("hyperfleet-adapter", "reconcile Cluster"),
        ("hyperfleet-adapter", "report"),
        ("hyperfleet-adapter", "PUT"),
        ("hyperfleet-api", "PUT /api/hyperfleet/v1/clusters/{id}/statuses"),
    ];
    fn walk(trace: &[ReceivedSpan], parent: &str, step: usize) -> Option<Vec<ReceivedSpan>> {
        let Some((service, name)) = STEPS.get(step) else { return Some(Vec::new()) };
        children(trace, parent, service, name).find_map(|span| {
            let mut rest = walk(trace, &span.span_id, step + 1)?;
            rest.insert(0, span.clone());
            Some(rest)
        })
    }
    walk(trace, client_span, 0)
}

fn show(trace: &[ReceivedSpan]) -> String {
    trace
        .iter()
        .map(|s| format!("{} {} {:?} span={} parent={}", s.trace_id, s.service, s.name, s.span_id, s.parent_span_id))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_post_is_one_trace_from_the_client_to_the_adapters_status_report() -> Result<()> {
    let collector = Collector::start(true).await?;
    let otel = collector.vars();
    let stack = Stack::start_with(StackOptions {
        api: otel.clone(),
        // The log level decides the log lines, not the trace: a quiet sentinel still has its spans.
        sentinel: [otel.clone(), vec![("HYPERFLEET_LOG_LEVEL", "warn".to_string())]].concat(),
        // JSON log lines, as deployed: the trace ids are members of their own.
        adapter: [otel, vec![("HYPERFLEET_LOG_FORMAT", "json".to_string())]].concat(),
        ..Default::default()
    })
    .await?;
    let tap = stack.tap("#").await?;

    // The client's own trace: its span is the root of everything that follows.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let client_span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    let name = format!("traced-{}", stack.tag);
    let resp = stack
        .client()
        .post(format!("{}/api/hyperfleet/v1/clusters", stack.api_url))
        .header("traceparent", &traceparent)
        .json(&json!({"kind": "Cluster", "name": name, "spec": {}}))
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    ensure!(resp.status() == 201, "POST: {}", resp.status());
    let created: serde_json::Value = resp.json().await?;
    let id = created["id"].as_str().context("id")?.to_string();
    stack.track_created(&id);
    stack.wait_reconciled(&id, 1, WITHIN).await?;

    let chain =
        eventually(WITHIN, || async { Ok(chain(&collector.trace(&trace_id), client_span)) }).await.with_context(
            || format!("no complete trace {trace_id}; received (every trace):\n{}", show(&collector.spans())),
        )?;

    // Causal order: each span starts no earlier than the one that caused it.
    for pair in chain.windows(2) {
        ensure!(pair[1].start_unix_nano >= pair[0].start_unix_nano, "{} starts before {}", pair[1].name, pair[0].name);
    }
    let trace = collector.trace(&trace_id);
    let adapter = |name: &str| trace.iter().any(|s| s.service == "hyperfleet-adapter" && s.name == name);
    ensure!(
        adapter("GET") && adapter("apply Namespace") && adapter("apply ServiceAccount"),
        "adapter spans:\n{}",
        show(&trace)
    );
    // The create's database work: the transaction (begin … commit) and the statement that also writes
    // the change-feed row, both in the request; the commit inside the transaction.
    let post = &chain[0];
    let tx = children(&trace, &post.span_id, "hyperfleet-api", "db.transaction").next();
    let insert = children(&trace, &post.span_id, "hyperfleet-api", "insert resources").next();
    let (Some(tx), Some(_insert)) = (tx, insert) else {
        bail!("no database spans under the create:\n{}", show(&trace))
    };
    let commit = children(&trace, &tx.span_id, "hyperfleet-api", "db.commit").next().context("no db.commit")?;
    ensure!(tx.end_unix_nano >= commit.end_unix_nano, "the transaction span ends before its commit");
    // The publish span lasts until the broker's confirm: it ends after the event was sent.
    ensure!(chain[1].end_unix_nano > chain[1].start_unix_nano, "publish span has no duration");

    // The event as a consumer using the CloudEvents SDK sees it: the trace context is an
    // extension attribute naming the sentinel's publish span.
    let publish = &chain[1];
    let event =
        eventually(WITHIN, || async { Ok(tap.events().await?.into_iter().find(|e| e["data"]["id"] == id.as_str())) })
            .await?;
    let event: cloudevents::Event = serde_json::from_value(event)?;
    let parent = event.extension("traceparent").map(|v| v.to_string()).context("no traceparent extension")?;
    ensure!(
        parent == format!("00-{trace_id}-{}-01", publish.span_id),
        "the event's traceparent {parent} is not the publish span {}",
        publish.span_id
    );

    // Log lines inside a span carry its ids.
    let logs = stack.logs();
    let reconciles: Vec<&str> = children(&trace, &chain[1].span_id, "hyperfleet-adapter", "reconcile Cluster")
        .map(|s| s.span_id.as_str())
        .collect();
    let applied = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "objects applied" && l["resource_id"] == id.as_str())
        .collect::<Vec<_>>();
    ensure!(
        applied.iter().any(|l| l["trace_id"] == trace_id.as_str() && reconciles.iter().any(|r| l["span_id"] == *r)),
        "no JSON 'objects applied' line with the reconcile span's ids: {applied:?}\n{logs}"
    );

    // A problem+json names the trace of the request that got it.
    let resp = stack
        .client()
        .post(format!("{}/api/hyperfleet/v1/clusters", stack.api_url))
        .header("traceparent", &traceparent)
        .json(&json!({"kind": "Cluster", "name": "", "spec": {}}))
        .send()
        .await?;
    ensure!(resp.status() == 400, "bad POST: {}", resp.status());
    let problem: serde_json::Value = resp.json().await?;
    ensure!(problem["trace_id"] == trace_id.as_str(), "problem: {problem}");

    tap.close().await;
    stack.stop().await;
    Ok(())
}
