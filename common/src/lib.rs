//! Shared plumbing for the three HyperFleet services (`api`, `sentinel`, `adapter`).
//!
//! Nothing in here knows what a cluster is; it only provides the pieces every service needs in the
//! same shape:
//!
//! * [`config`] — layered configuration: defaults → YAML file → `HYPERFLEET_*` environment → flags,
//!   plus [`config::Secret`] for values that must never be printed and a duration format (`"5s"`).
//! * [`telemetry`] — `tracing` setup (JSON or text), OpenTelemetry traces over OTLP/HTTP (off unless
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set) with W3C trace-context propagation, and the rustls
//!   crypto-provider install.
//! * [`ops`] — the health (`/healthz`, `/readyz`) and metrics (`/metrics`) listeners.
//! * [`process`] — the shared start-up and exit-code handling of the service binaries.
//! * [`shutdown`] — SIGINT/SIGTERM → a [`tokio_util::sync::CancellationToken`].
//! * [`api_client`] — the HyperFleet API as the workers call it (list pages, a resource, a status
//!   report, the change feed) with their bearer token, timeouts and one retryable-status rule.
//! * [`broker`] — an AMQP 0-9-1 connection from an `amqp://`/`amqps://` URL with a CA bundle and an
//!   optional client certificate, and idempotent exchange declaration.
//! * [`cloudevent`] — CloudEvents 1.0 over AMQP in structured mode, and the reconcile-event payload
//!   shared by the sentinel (producer) and the adapters (consumers).
//! * [`token`] — the bearer token the workers send to the API, read from a file
//!   (`hyperfleet_api.token_file`, e.g. a projected ServiceAccount token) and re-read when it is
//!   rotated; a refusal (401/403) remembered so that it is logged once per streak.
#![forbid(unsafe_code)]

pub mod api_client;
pub mod broker;
pub mod cloudevent;
pub mod config;
pub mod ops;
pub mod process;
pub mod shutdown;
pub mod telemetry;
pub mod token;
