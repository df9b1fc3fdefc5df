//! CloudEvents 1.0 over AMQP 0-9-1, structured content mode.
//!
//! There is no official AMQP 0-9-1 binding; HyperFleet follows the de-facto RabbitMQ binding: the
//! message body is the whole event in the JSON event format and the `content-type` property is
//! `application/cloudevents+json`. The event id is also the AMQP `message-id` and the event type the
//! AMQP `type`, so broker tooling can show them without parsing bodies. Messages are persistent.

use chrono::Utc;
pub use cloudevents::Event;
use cloudevents::{AttributesReader, Data, EventBuilder, EventBuilderV10};
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};

/// `content-type` of a structured-mode CloudEvent.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
/// `source` of every event the sentinel publishes.
pub const SENTINEL_SOURCE: &str = "hyperfleet-sentinel";

/// `com.redhat.hyperfleet.<kind>.reconcile` for a resource kind such as `Cluster`.
pub fn reconcile_type(kind: &str) -> String {
    format!("com.redhat.hyperfleet.{}.reconcile", kind.to_ascii_lowercase())
}

/// A reference to another resource (a nodepool's owning cluster).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectRef {
    pub id: String,
    pub kind: String,
    pub href: String,
}

/// The `data` of a reconcile event: which resource needs work, at which generation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReconcileData {
    pub id: String,
    pub kind: String,
    pub href: String,
    pub generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_references: Option<ObjectRef>,
}

/// Builds the reconcile event for one resource: UUIDv7 id, current time, JSON data.
pub fn reconcile_event(data: &ReconcileData) -> Result<Event, EventError> {
    let json = serde_json::to_value(data).map_err(|e| EventError::Data(e.to_string()))?;
    EventBuilderV10::new()
        .id(uuid::Uuid::now_v7().to_string())
        .ty(reconcile_type(&data.kind))
        .source(SENTINEL_SOURCE)
        .time(Utc::now())
        .data("application/json", json)
        .build()
        .map_err(|e| EventError::Invalid(e.to_string()))
}

/// Why a message could not be turned into an event (or back).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("content-type {0:?} is not a structured CloudEvent (expected {CONTENT_TYPE})")]
    ContentType(String),
    #[error("body is not a CloudEvent in the JSON format: {0}")]
    Invalid(String),
    #[error("unexpected event type {0:?}")]
    Type(String),
    #[error("event data is missing or not the expected JSON object: {0}")]
    Data(String),
}

impl EventError {
    /// Every value [`EventError::label`] can return.
    pub const LABELS: [&'static str; 4] = ["content_type", "not_cloudevent", "unknown_type", "invalid_data"];

    /// Short, stable name for metric labels and dead-letter headers.
    pub fn label(&self) -> &'static str {
        match self {
            EventError::ContentType(_) => "content_type",
            EventError::Invalid(_) => "not_cloudevent",
            EventError::Type(_) => "unknown_type",
            EventError::Data(_) => "invalid_data",
        }
    }
}

/// The CloudEvents distributed-tracing extension attributes.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Gives `event` the current span's trace context as its `traceparent` (and `tracestate`)
/// extension attributes; nothing when tracing is off.
pub fn add_trace_context(event: &mut Event) {
    if let Some((parent, state)) = crate::telemetry::current_traceparent() {
        event.set_extension(TRACEPARENT, parent);
        if let Some(state) = state {
            event.set_extension(TRACESTATE, state);
        }
    }
}

/// An event's `traceparent` and `tracestate` extension attributes, when it has them.
pub fn trace_context(event: &Event) -> (Option<String>, Option<String>) {
    let get = |name| event.extension(name).map(|v| v.to_string());
    (get(TRACEPARENT), get(TRACESTATE))
}

/// Serialises an event for `basic_publish`: body and properties. The trace context, when the
/// event has one, is also sent as `traceparent`/`tracestate` AMQP headers (for consumers that
/// read headers rather than the event).
pub fn encode(event: &Event) -> Result<(Vec<u8>, BasicProperties), EventError> {
    let body = serde_json::to_vec(event).map_err(|e| EventError::Invalid(e.to_string()))?;
    let (parent, state) = trace_context(event);
    let mut headers = lapin::types::FieldTable::default();
    for (name, value) in [(TRACEPARENT, parent), (TRACESTATE, state)] {
        if let Some(v) = value {
            headers.insert(name.into(), lapin::types::AMQPValue::LongString(v.into()));
        }
    }
    let props = if headers.inner().is_empty() {
        BasicProperties::default()
    } else {
        BasicProperties::default().with_headers(headers)
    };
    let props = props
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(2) // persistent
        .with_message_id(event.id().into())
        .with_type(event.ty().into())
        .with_app_id(event.source().as_str().into())
        .with_timestamp(event.time().map(|t| t.timestamp()).unwrap_or_default().max(0) as u64);
    Ok((body, props))
}

/// Parses a delivered message. A missing `content-type` is accepted (some producers, like the Go
/// original's Watermill, send none); any other content type than the structured one is refused.
pub fn decode(content_type: Option<&str>, body: &[u8]) -> Result<Event, EventError> {
    if let Some(ct) = content_type {
        let base = ct.split(';').next().unwrap_or("").trim();
        if !base.eq_ignore_ascii_case(CONTENT_TYPE) && !base.eq_ignore_ascii_case("application/json") {
            return Err(EventError::ContentType(ct.into()));
        }
    }
    serde_json::from_slice::<Event>(body).map_err(|e| EventError::Invalid(e.to_string()))
}

/// Extracts the reconcile payload, checking the event type matches `kind`.
pub fn reconcile_data(event: &Event) -> Result<ReconcileData, EventError> {
    let ty = event.ty();
    if !(ty.starts_with("com.redhat.hyperfleet.") && ty.ends_with(".reconcile")) {
        return Err(EventError::Type(ty.into()));
    }
    let value = match event.data() {
        Some(Data::Json(v)) => v.clone(),
        Some(Data::String(s)) => serde_json::from_str(s).map_err(|e| EventError::Data(e.to_string()))?,
        Some(Data::Binary(b)) => serde_json::from_slice(b).map_err(|e| EventError::Data(e.to_string()))?,
        None => return Err(EventError::Data("no data".into())),
    };
    let data: ReconcileData = serde_json::from_value(value).map_err(|e| EventError::Data(e.to_string()))?;
    if data.id.is_empty() {
        return Err(EventError::Data("data.id is empty".into()));
    }
    if reconcile_type(&data.kind) != ty {
        return Err(EventError::Data(format!("data.kind {:?} does not match event type {ty:?}", data.kind)));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_travels_as_extension_attributes_and_headers() {
        let mut event = reconcile_event(&sample()).expect("event");
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        event.set_extension(TRACEPARENT, parent);
        event.set_extension(TRACESTATE, "vendor=x");
        let (body, props) = encode(&event).expect("encode");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["traceparent"], parent, "a top-level extension attribute in the structured format");
        let headers = props.headers().as_ref().expect("headers");
        assert!(
            matches!(headers.inner().get("traceparent"), Some(lapin::types::AMQPValue::LongString(v)) if v.to_string() == parent)
        );
        let back = decode(Some(CONTENT_TYPE), &body).expect("decode");
        assert_eq!(trace_context(&back), (Some(parent.to_string()), Some("vendor=x".to_string())));
        let plain = reconcile_event(&sample()).expect("event");
        assert!(encode(&plain).expect("encode").1.headers().is_none(), "no trace, no headers");
    }

    fn sample() -> ReconcileData {
        ReconcileData {
            id: "019466a0-8f8e-7abc-9def-0123456789ab".into(),
            kind: "Cluster".into(),
            href: "/api/hyperfleet/v1/clusters/019466a0-8f8e-7abc-9def-0123456789ab".into(),
            generation: 3,
            owner_references: None,
        }
    }

    #[test]
    fn round_trip_structured_mode() {
        let event = reconcile_event(&sample()).expect("event");
        let (body, props) = encode(&event).expect("encode");
        assert_eq!(props.content_type().as_ref().map(|s| s.as_str()), Some(CONTENT_TYPE));
        assert_eq!(props.delivery_mode(), &Some(2));
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json body");
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "com.redhat.hyperfleet.cluster.reconcile");
        assert_eq!(json["source"], "hyperfleet-sentinel");
        assert_eq!(json["data"]["generation"], 3);
        assert!(json["time"].is_string());
        assert_eq!(uuid::Uuid::parse_str(json["id"].as_str().expect("id")).expect("uuid").get_version_num(), 7);

        let back = decode(Some(CONTENT_TYPE), &body).expect("decode");
        assert_eq!(reconcile_data(&back).expect("data"), sample());
    }

    #[test]
    fn poison_messages_are_classified_not_panicked_on() {
        assert_eq!(decode(Some("text/plain"), b"hi").map(|_| ()).expect_err("ct").label(), "content_type");
        assert_eq!(decode(None, b"not json").map(|_| ()).expect_err("json").label(), "not_cloudevent");
        assert_eq!(decode(None, b"{\"hello\":1}").map(|_| ()).expect_err("shape").label(), "not_cloudevent");
        assert_eq!(decode(None, &[0xff, 0xfe, 0x00]).map(|_| ()).expect_err("bytes").label(), "not_cloudevent");

        let mut other = reconcile_event(&sample()).expect("event");
        cloudevents::AttributesWriter::set_type(&mut other, "com.example.other");
        assert_eq!(reconcile_data(&other).expect_err("type").label(), "unknown_type");

        let no_id = ReconcileData { id: String::new(), ..sample() };
        let e = reconcile_event(&no_id).expect("event");
        assert_eq!(reconcile_data(&e).expect_err("empty id").label(), "invalid_data");

        let body = br#"{"specversion":"1.0","id":"1","source":"x","type":"com.redhat.hyperfleet.cluster.reconcile","data":{"id":5}}"#;
        let e = decode(None, body).expect("valid envelope");
        assert_eq!(reconcile_data(&e).expect_err("bad data").label(), "invalid_data");
    }

    #[test]
    fn labels_lists_every_label() {
        let all = [
            EventError::ContentType(String::new()),
            EventError::Invalid(String::new()),
            EventError::Type(String::new()),
            EventError::Data(String::new()),
        ];
        assert_eq!(all.map(|e| e.label()), EventError::LABELS);
    }
}
