//! Logging, traces and process-wide TLS setup.
//!
//! Traces are OpenTelemetry spans from `tracing` (through `tracing-opentelemetry`), exported as
//! OTLP over HTTP/protobuf when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`)
//! is set; W3C trace context (`traceparent`, `tracestate`) crosses HTTP headers and CloudEvents.
//! Off (the default) no span is made ([`trace_span!`](crate::trace_span)) and nothing is exported.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use opentelemetry::{
    propagation::TextMapPropagator,
    trace::{SpanContext, TracerProvider as _},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_subscriber::{
    EnvFilter,
    fmt::{self, FmtContext, FormatEvent, FormatFields, format::Writer},
    prelude::*,
    registry::LookupSpan,
};

/// `log:` section shared by every service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `trace`, `debug`, `info`, `warn`, `error`, or a full `tracing` filter such as
    /// `info,hyperfleet_api=debug`. `RUST_LOG`, when set, wins.
    pub level: String,
    /// `json` (one object per line, for log pipelines) or `text` (for people).
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Json }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// Whether traces are exported (set once by [`init`]). Off, no OpenTelemetry layer is installed
/// and [`trace_span!`](crate::trace_span) makes no span at all: tracing costs nothing.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// The exporter's provider, flushed by [`flush`] on the way out.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether this process exports traces.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A span for the trace when tracing is on, else [`tracing::Span::none`] (nothing recorded,
/// nothing allocated). Same arguments as [`tracing::info_span!`].
#[macro_export]
macro_rules! trace_span {
    ($($arg:tt)*) => {
        if $crate::telemetry::enabled() { ::tracing::info_span!($($arg)*) } else { ::tracing::Span::none() }
    };
}

/// Installs the global `tracing` subscriber, and the OpenTelemetry exporter when the standard
/// `OTEL_*` variables ask for one ([`TraceSettings::from_env`]). Call once, early in `main`, inside
/// the Tokio runtime (the exporter sends on it). `service` names the process in traces unless
/// `OTEL_SERVICE_NAME` does.
pub fn init(cfg: &LogConfig, service: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(&v).map_err(|e| format!("RUST_LOG={v:?}: {e}"))?,
        _ => EnvFilter::try_new(&cfg.level).map_err(|e| format!("log.level={:?}: {e}", cfg.level))?,
    };
    let settings = TraceSettings::from_env(|k| std::env::var(k).ok())?;
    let otel = match &settings {
        Some(s) => Some(exporter(s, service)?),
        None => None,
    };
    let traced = otel.is_some();
    // One global filter, no per-layer filters (with one on the OpenTelemetry layer, spans went
    // missing from traces now and then): the log level's, widened while tracing to HyperFleet's own
    // spans, so the log level decides the log lines and never what a trace holds.
    let filter = SpansOrLog { log: filter, spans: traced };
    let otel_layer = otel.map(|provider| {
        let tracer = provider.tracer("hyperfleet");
        let _ = PROVIDER.set(provider);
        tracing_opentelemetry::layer().with_tracer(tracer).with_location(false).with_threads(false)
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let result = match cfg.format {
        LogFormat::Json => {
            let json = fmt::format().json().flatten_event(true).with_current_span(false).with_span_list(false);
            registry.with(fmt::layer().json().event_format(WithTraceIds { inner: json, json: true })).try_init()
        }
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            let text = fmt::format().with_target(true).with_ansi(ansi);
            registry
                .with(fmt::layer().with_ansi(ansi).event_format(WithTraceIds { inner: text, json: false }))
                .try_init()
        }
    };
    result.map_err(|e| e.to_string())?;
    if let Some(s) = settings {
        ENABLED.store(true, Ordering::Relaxed);
        let endpoint = redacted(&s.endpoint);
        tracing::info!(%endpoint, "exporting traces (OTLP over HTTP)");
    }
    Ok(())
}

/// Sends the spans still buffered and stops the exporter (at most 2 s, inside the pods' grace
/// period). Call once, on the way out, from a multi-thread runtime (the export runs on it).
pub fn flush() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(2))
    {
        eprintln!("traces not flushed: {e}");
    }
}

/// What the standard `OTEL_*` variables ask of the trace exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSettings {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `/v1/traces`).
    pub endpoint: String,
    /// `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` in milliseconds (default 10 000).
    pub timeout: Duration,
    /// `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE`: a PEM bundle to trust for an `https://` collector.
    pub certificate: Option<String>,
}

impl TraceSettings {
    /// `None` (tracing off) unless an OTLP endpoint is set; off also with `OTEL_SDK_DISABLED=true`
    /// or `OTEL_TRACES_EXPORTER=none`. The protocol must be `http/protobuf` (the one built in);
    /// anything else is a start-up error naming the variable.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let get = |k: &str| var(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match get("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(format!("OTEL_TRACES_EXPORTER={other:?}: only \"otlp\" and \"none\" are supported"));
            }
        }
        let endpoint = match (get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), get("OTEL_EXPORTER_OTLP_ENDPOINT")) {
            (Some(e), _) => e,
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(format!("OTLP endpoint {:?} is not an http:// or https:// URL", redacted(&endpoint)));
        }
        for k in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            match get(k).as_deref() {
                None | Some("http/protobuf") => {}
                Some(p) => {
                    return Err(format!(
                        "{k}={p:?}: only http/protobuf is built in; point the endpoint at the collector's OTLP/HTTP port (4318)"
                    ));
                }
            }
        }
        let timeout = match get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT").or_else(|| get("OTEL_EXPORTER_OTLP_TIMEOUT")) {
            None => Duration::from_secs(10),
            Some(ms) => Duration::from_millis(
                ms.parse().map_err(|_| format!("OTEL_EXPORTER_OTLP_TIMEOUT={ms:?} is not a number of milliseconds"))?,
            ),
        };
        let certificate =
            get("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE").or_else(|| get("OTEL_EXPORTER_OTLP_CERTIFICATE"));
        Ok(Some(TraceSettings { endpoint, timeout, certificate }))
    }
}

/// The provider: a batch of spans is sent (OTLP/HTTP, protobuf) through reqwest on this
/// process's Tokio runtime. The sampler (`OTEL_TRACES_SAMPLER`, default parent-based always-on),
/// the batch settings (`OTEL_BSP_*`) and the headers (`OTEL_EXPORTER_OTLP_HEADERS`) are the SDK's.
fn exporter(s: &TraceSettings, service: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    install_crypto_provider();
    // No redirects: the export headers (OTEL_EXPORTER_OTLP_HEADERS, often a key) go to the endpoint only.
    let mut client = reqwest::Client::builder()
        .timeout(s.timeout)
        .connect_timeout(s.timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &s.certificate {
        let pem = std::fs::read(path).map_err(|e| format!("OTEL_EXPORTER_OTLP_CERTIFICATE {path}: {e}"))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("OTEL_EXPORTER_OTLP_CERTIFICATE {path}: {e}"))?
        {
            client = client.add_root_certificate(cert);
        }
    }
    let client = client.build().map_err(|e| format!("OTLP HTTP client: {e}"))?;
    let rt = tokio::runtime::Handle::try_current().map_err(|_| "tracing needs a Tokio runtime".to_string())?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(s.endpoint.clone())
        .with_timeout(s.timeout)
        .with_http_client(OnRuntime { client, rt })
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let name = std::env::var("OTEL_SERVICE_NAME").ok().filter(|n| !n.is_empty()).unwrap_or_else(|| service.to_string());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// The exporter's HTTP client: the SDK's batch processor exports from a thread of its own, so the
/// request is handed to the service's runtime (where reqwest's connections live) and awaited.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    rt: tokio::runtime::Handle,
}

/// A collector's answer is a few bytes; more is not read.
const MAX_COLLECTOR_ANSWER: usize = 64 * 1024;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        // Without a subscriber: the export's own HTTP calls make no spans or log lines (which
        // would be exported in turn).
        let export = async move {
            let mut resp = client.execute(request).await?;
            let status = resp.status();
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await? {
                if body.len() + chunk.len() > MAX_COLLECTOR_ANSWER {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>((status, body))
        };
        let (status, body) = self
            .rt
            .spawn(tracing::instrument::WithSubscriber::with_subscriber(
                export,
                tracing::subscriber::NoSubscriber::default(),
            ))
            .await??;
        Ok(http::Response::builder().status(status).body(bytes::Bytes::from(body))?)
    }
}

/// The global filter: the log filter, or (while tracing) a span of HyperFleet's at INFO or above.
/// Events pass by the log filter alone, so the log lines are what the log level says; a span the
/// log filter would drop still exists for the trace (and is not printed: spans are not log lines).
struct SpansOrLog {
    log: EnvFilter,
    spans: bool,
}

impl SpansOrLog {
    fn traced_span(&self, meta: &tracing::Metadata<'_>) -> bool {
        self.spans && meta.is_span() && meta.target().starts_with("hyperfleet") && *meta.level() <= tracing::Level::INFO
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for SpansOrLog {
    fn register_callsite(&self, meta: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        if self.traced_span(meta) {
            return tracing::subscriber::Interest::always();
        }
        <EnvFilter as tracing_subscriber::Layer<S>>::register_callsite(&self.log, meta)
    }
    fn enabled(&self, meta: &tracing::Metadata<'_>, cx: tracing_subscriber::layer::Context<'_, S>) -> bool {
        self.traced_span(meta) || <EnvFilter as tracing_subscriber::Layer<S>>::enabled(&self.log, meta, cx)
    }
    fn max_level_hint(&self) -> Option<tracing_subscriber::filter::LevelFilter> {
        let log = <EnvFilter as tracing_subscriber::Layer<S>>::max_level_hint(&self.log);
        match (self.spans, log) {
            (true, Some(level)) => Some(level.max(tracing_subscriber::filter::LevelFilter::INFO)),
            (_, hint) => hint,
        }
    }
    // The log filter's span-scoped directives (`target[span]=level`) follow the spans.
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        cx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.log.on_new_span(attrs, id, cx);
    }
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        cx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.log.on_record(id, values, cx);
    }
    fn on_enter(&self, id: &tracing::span::Id, cx: tracing_subscriber::layer::Context<'_, S>) {
        self.log.on_enter(id, cx);
    }
    fn on_exit(&self, id: &tracing::span::Id, cx: tracing_subscriber::layer::Context<'_, S>) {
        self.log.on_exit(id, cx);
    }
    fn on_close(&self, id: tracing::span::Id, cx: tracing_subscriber::layer::Context<'_, S>) {
        self.log.on_close(id, cx);
    }
}

/// `url` without the user and password it may carry, for logs.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Prefixes each log line made inside a traced span with its `trace_id` and `span_id`.
struct WithTraceIds<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = current_span_context().filter(|sc| sc.is_valid());
        let Some(sc) = ids else { return self.inner.format_event(ctx, writer, event) };
        let (trace, span) = (sc.trace_id(), sc.span_id());
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        if self.json {
            match line.strip_prefix('{') {
                Some(rest) => write!(writer, "{{\"trace_id\":\"{trace}\",\"span_id\":\"{span}\",{rest}"),
                None => writer.write_str(&line),
            }
        } else {
            let body = line.strip_suffix('\n').unwrap_or(&line);
            writeln!(writer, "{body} trace_id={trace} span_id={span}")
        }
    }
}

/// The current span's OpenTelemetry context while tracing is on (`None` when off).
fn current_span_context() -> Option<SpanContext> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    enabled().then(|| tracing::Span::current().context().span().span_context().clone())
}

/// Whether the current span belongs to a trace (tracing is on and the span is in one).
pub fn in_trace() -> bool {
    current_span_context().is_some_and(|sc| sc.is_valid())
}

/// The current span's trace id when that trace is sampled (exported): one a reader can look up.
pub fn current_sampled_trace_id() -> Option<String> {
    current_span_context().filter(|sc| sc.is_valid() && sc.is_sampled()).map(|sc| sc.trace_id().to_string())
}

/// The W3C `traceparent` (and `tracestate`, when not empty) of the current span, when tracing is
/// on and the span is in a trace.
pub fn current_traceparent() -> Option<(String, Option<String>)> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !enabled() {
        return None;
    }
    let mut fields = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut fields);
    let parent = fields.remove("traceparent")?;
    Some((parent, fields.remove("tracestate").filter(|s| !s.is_empty())))
}

/// Adds the current span's `traceparent`/`tracestate` to outgoing HTTP headers (nothing when off).
pub fn inject(headers: &mut http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if enabled() {
        TraceContextPropagator::new()
            .inject_context(&tracing::Span::current().context(), &mut opentelemetry_http::HeaderInjector(headers));
    }
}

/// Makes `span` continue the trace of incoming HTTP headers (`traceparent`, `tracestate`); a
/// request without them starts a trace. Call before anything is logged inside `span`.
pub fn continue_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if enabled() && headers.contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
        let _ = span.set_parent(cx);
    }
}

/// Makes `span` continue the trace named by a `traceparent` (and `tracestate`), e.g. a CloudEvent's
/// distributed-tracing attributes. An invalid value is ignored (the span starts a trace).
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if let (true, Some(parent)) = (enabled(), traceparent) {
        let _ = span.set_parent(extract(parent, tracestate));
    }
}

/// The context a `traceparent` (and `tracestate`) names.
fn extract(traceparent: &str, tracestate: Option<&str>) -> opentelemetry::Context {
    let mut fields = std::collections::HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    if let Some(state) = tracestate {
        fields.insert("tracestate".to_string(), state.to_string());
    }
    TraceContextPropagator::new().extract(&fields)
}

/// Links `span` to the trace named by `traceparent` without making it a child (work that a change
/// did not cause directly, such as a periodic re-announcement).
pub fn link_to(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if enabled() {
        let sc = extract(traceparent, None).span().span_context().clone();
        if sc.is_valid() {
            span.add_link(sc);
        }
    }
}

/// Marks `span` failed (`otel.status_code = ERROR`) with `message`.
pub fn fail(span: &tracing::Span, message: impl std::fmt::Display) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if enabled() {
        span.set_status(opentelemetry::trace::Status::error(message.to_string()));
    }
}

/// Makes `ring` the process-wide rustls crypto provider.
///
/// All TLS in HyperFleet (PostgreSQL, AMQPS, the Kubernetes API, HTTP clients) goes through rustls with
/// `ring`. Some clients (reqwest with `rustls-no-provider`) refuse to build without a process default,
/// and which library would install one first depends on start-up order, so every binary calls this
/// first thing in `main`. Calling it twice is harmless.
pub fn install_crypto_provider() {
    // Err only means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<TraceSettings>, String> {
        let vars: std::collections::HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        TraceSettings::from_env(|k| vars.get(k).cloned())
    }

    #[test]
    fn endpoints_are_logged_without_credentials() {
        assert_eq!(redacted("https://user:secret@collector:4318/v1/traces"), "https://collector:4318/v1/traces");
        assert_eq!(redacted("http://collector:4318/v1/traces?a=b@c"), "http://collector:4318/v1/traces?a=b@c");
    }

    #[test]
    fn tracing_is_off_without_an_endpoint() {
        assert_eq!(settings(&[]), Ok(None));
        assert_eq!(settings(&[("OTEL_SERVICE_NAME", "x")]), Ok(None));
    }

    #[test]
    fn the_endpoint_gets_the_traces_path_unless_it_is_the_traces_endpoint() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]).expect("ok").expect("on");
        assert_eq!(s.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(s.timeout, Duration::from_secs(10));
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://b/traces"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ])
        .expect("ok")
        .expect("on");
        assert_eq!(s.endpoint, "https://b/traces");
        assert_eq!(s.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn disabled_or_exporter_none_turns_it_off() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert_eq!(settings(&[ep, ("OTEL_SDK_DISABLED", "true")]), Ok(None));
        assert_eq!(settings(&[ep, ("OTEL_TRACES_EXPORTER", "none")]), Ok(None));
    }

    #[test]
    fn unsupported_settings_are_start_up_errors_naming_the_variable() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317");
        let e = settings(&[ep, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).expect_err("grpc");
        assert!(e.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && e.contains("4318"), "{e}");
        let e = settings(&[ep, ("OTEL_TRACES_EXPORTER", "zipkin")]).expect_err("zipkin");
        assert!(e.contains("OTEL_TRACES_EXPORTER"), "{e}");
        let e = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]).expect_err("no scheme");
        assert!(e.contains("http://"), "{e}");
        let e = settings(&[ep, ("OTEL_EXPORTER_OTLP_TIMEOUT", "5s")]).expect_err("unit");
        assert!(e.contains("milliseconds"), "{e}");
    }
}
