//! A real OTLP/HTTP trace receiver for the tests and the bench: `POST /v1/traces` with an
//! `ExportTraceServiceRequest` in protobuf, decoded with the OpenTelemetry protocol's own types
//! (`opentelemetry-proto`), each span kept with the service that sent it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use anyhow::Result;
use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::any_value::Value as AnyValue,
};
use prost::Message;

/// One received span.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    pub name: String,
    /// Lower-case hex, as in `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// String, integer and boolean attributes, as text.
    pub attributes: HashMap<String, String>,
    /// Trace ids of the span's links.
    pub links: Vec<String>,
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    requests: u64,
}

/// A receiver listening on a loopback port until dropped.
pub struct Collector {
    url: String,
    received: Arc<Mutex<Received>>,
    server: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Listens on `127.0.0.1:<free port>`; `keep` false only counts requests (for the bench).
    pub async fn start(keep: bool) -> Result<Collector> {
        let received = Arc::new(Mutex::new(Received::default()));
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .layer(axum::extract::DefaultBodyLimit::max(32 << 20))
            .with_state((received.clone(), keep));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Collector { url, received, server })
    }

    /// What `OTEL_EXPORTER_OTLP_ENDPOINT` should be.
    pub fn endpoint(&self) -> &str {
        &self.url
    }

    /// The settings that make a service export here, flushing a batch every 100 ms.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![("OTEL_EXPORTER_OTLP_ENDPOINT", self.url.clone()), ("OTEL_BSP_SCHEDULE_DELAY", "100".into())]
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.lock().map(|r| r.spans.clone()).unwrap_or_default()
    }

    /// Export requests received so far.
    pub fn requests(&self) -> u64 {
        self.received.lock().map(|r| r.requests).unwrap_or_default()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans().into_iter().filter(|s| s.trace_id == trace_id).collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(State((received, keep)): State<(Arc<Mutex<Received>>, bool)>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut spans = Vec::new();
    if keep {
        for rs in request.resource_spans {
            let attrs = rs.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
            let service = attrs.get("service.name").cloned().unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        start_unix_nano: s.start_time_unix_nano,
                        end_unix_nano: s.end_time_unix_nano,
                        attributes: attributes(&s.attributes),
                        links: s.links.iter().map(|l| hex(&l.trace_id)).collect(),
                    });
                }
            }
        }
    }
    if let Ok(mut r) = received.lock() {
        r.requests += 1;
        r.spans.extend(spans);
    }
    (StatusCode::OK, ExportTraceServiceResponse::default().encode_to_vec())
}

fn attributes(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .filter_map(|kv| {
            let v = match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => s.clone(),
                AnyValue::IntValue(i) => i.to_string(),
                AnyValue::BoolValue(b) => b.to_string(),
                AnyValue::DoubleValue(d) => d.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), v))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
