//! Request-body validation (behaviour reference §2.7): names, Kubernetes label rules, spec and
//! type checks. Every failure is a 400 naming the field.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};

use crate::{
    config::LimitsConfig,
    domain::model::Kind,
    error::{ApiError, FieldError},
};

/// The size of `v` as compact JSON, counted without building the text.
pub fn json_size(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    // Writing to a counter cannot fail.
    let _ = serde_json::to_writer(&mut n, v);
    n.0
}

/// 400 naming `field` when `v` is larger than `max` bytes of JSON (`knob` is the setting).
pub fn within(field: &str, v: &Value, max: usize, knob: &str) -> Result<(), ApiError> {
    let size = json_size(v);
    if size > max {
        return Err(ApiError::validation(
            field,
            None,
            "max",
            format!("{field} is {size} bytes of JSON; at most {max} are accepted ({knob})"),
        ));
    }
    Ok(())
}

// What `create` returns; its doc comments are the OpenAPI document's descriptions.
/// Body of `POST /clusters` and `POST /clusters/{cluster_id}/nodepools`.
#[derive(Debug, PartialEq, utoipa::ToSchema)]
pub struct ResourceCreate {
    /// `Cluster` or `NodePool`, matching the route.
    pub kind: String,
    /// Lowercase letters, digits and `-`, starting with a letter; 3–53 characters for clusters,
    /// 3–15 for nodepools; unique among live resources of the kind (per cluster for nodepools).
    pub name: String,
    /// Free-form provider specification; must be an object.
    #[schema(value_type = Object)]
    pub spec: Map<String, Value>,
    /// Kubernetes-style labels (keys with an optional DNS prefix, values up to 63 characters).
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub labels: BTreeMap<String, String>,
}

// What `patch` returns.
/// Body of PATCH: each member given replaces the stored one wholesale.
#[derive(Debug, PartialEq, Default, utoipa::ToSchema)]
pub struct ResourcePatch {
    #[schema(value_type = Option<Object>)]
    pub spec: Option<Map<String, Value>>,
    pub labels: Option<BTreeMap<String, String>>,
}

// What `force_delete` returns.
/// Body of `force-delete`.
#[derive(Debug, PartialEq, utoipa::ToSchema)]
pub struct ForceDelete {
    /// Why the resource is removed without its adapters' confirmation (1–1024 characters).
    pub reason: String,
}

// What `report` returns.
/// Body of `PUT …/statuses`: one adapter's report about one generation of a resource.
#[derive(Debug, PartialEq, utoipa::ToSchema)]
pub struct StatusReport {
    pub adapter: String,
    pub observed_generation: i32,
    /// When the adapter observed the resource (RFC 3339); reports older than the stored one, or
    /// from the future, are discarded with 204.
    #[schema(value_type = String)]
    pub observed_time: Option<DateTime<Utc>>,
    pub conditions: Vec<ReportCondition>,
    #[schema(value_type = Option<Object>)]
    pub data: Value,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// A condition inside an adapter's report.
#[derive(Debug, PartialEq, utoipa::ToSchema)]
#[schema(as = ReportedCondition)]
pub struct ReportCondition {
    /// `Available`, `Applied` and `Health` are mandatory; `Finalized` reports cleanup.
    #[schema(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
}

impl StatusReport {
    /// The status the report gives condition `kind`, if it has it.
    pub fn status_of(&self, kind: &str) -> Option<&str> {
        self.conditions.iter().find(|c| c.kind == kind).map(|c| c.status.as_str())
    }
}

fn object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object().ok_or_else(|| ApiError::Malformed("request body must be a JSON object".into()))
}

/// Validates a create body. Unknown fields are ignored; `kind`, `name` and `spec` are required.
pub fn create(kind: Kind, body: &Value, limits: &LimitsConfig) -> Result<ResourceCreate, ApiError> {
    let obj = object(body)?;
    match obj.get("kind") {
        Some(Value::String(k)) if k == kind.name() => {}
        None | Some(Value::Null) => {
            return Err(ApiError::validation("kind", None, "required", "kind is required".into()));
        }
        Some(other) => {
            return Err(ApiError::validation(
                "kind",
                Some(other.clone()),
                "enum",
                format!("kind must be '{}'", kind.name()),
            ));
        }
    }
    let name = match obj.get("name") {
        None | Some(Value::Null) => {
            return Err(ApiError::validation("name", None, "required", "name is required".into()));
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(type_error("name", other, "a string")),
    };
    validate_name(kind, &name)?;
    let spec = match obj.get("spec") {
        None | Some(Value::Null) => {
            // A body like the seed README's `{"kind","name","region","version"}`: say where they go.
            let stray: Vec<&str> = obj
                .keys()
                .map(String::as_str)
                .filter(|k| !matches!(*k, "kind" | "name" | "spec" | "labels"))
                .take(5)
                .collect();
            let message = if stray.is_empty() {
                "spec is required".to_string()
            } else {
                format!(
                    "spec is required; {} properties belong inside spec (found '{}' at the top level)",
                    kind.name().to_lowercase(),
                    stray.join("', '")
                )
            };
            return Err(ApiError::validation("spec", None, "required", message));
        }
        Some(v) => spec(v, limits)?,
    };
    let labels = match obj.get("labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => labels(v, limits)?,
    };
    Ok(ResourceCreate { kind: kind.name().to_string(), name, spec, labels })
}

/// Validates a patch body: only `spec` and `labels`, at least one of them.
pub fn patch(body: &Value, limits: &LimitsConfig) -> Result<ResourcePatch, ApiError> {
    let obj = object(body)?;
    if let Some(unknown) = obj.keys().find(|k| !matches!(k.as_str(), "spec" | "labels")) {
        return Err(ApiError::Malformed(format!("unknown field '{unknown}': a patch may contain spec and labels")));
    }
    let patch = ResourcePatch {
        spec: obj.get("spec").map(|v| spec(v, limits)).transpose()?,
        labels: obj.get("labels").map(|v| labels(v, limits)).transpose()?,
    };
    if patch == ResourcePatch::default() {
        return Err(ApiError::BadRequest("at least one field must be provided for update".into()));
    }
    Ok(patch)
}

fn type_error(field: &str, value: &Value, expected: &str) -> ApiError {
    ApiError::validation(field, Some(value.clone()), "format", format!("field '{field}' must be {expected}"))
}

fn spec(v: &Value, limits: &LimitsConfig) -> Result<Map<String, Value>, ApiError> {
    let map = v.as_object().ok_or_else(|| type_error("spec", v, "an object"))?;
    within("spec", v, limits.max_spec_bytes, "limits.max_spec_bytes")?;
    Ok(map.clone())
}

fn labels(v: &Value, limits: &LimitsConfig) -> Result<BTreeMap<String, String>, ApiError> {
    let map = v.as_object().ok_or_else(|| type_error("labels", v, "an object"))?;
    if map.len() > limits.max_labels {
        return Err(ApiError::validation(
            "labels",
            None,
            "max",
            format!("{} labels; at most {} are accepted (limits.max_labels)", map.len(), limits.max_labels),
        ));
    }
    let mut labels = BTreeMap::new();
    let mut errors = Vec::new();
    for (key, value) in map {
        let field = format!("labels.{key}");
        let Some(value) = value.as_str() else {
            errors.push(FieldError {
                field,
                value: Some(value.clone()),
                constraint: "format",
                message: format!("label '{key}' must be a string"),
            });
            continue;
        };
        if let Err(message) = label_key(key) {
            errors.push(FieldError {
                field: field.clone(),
                value: Some(Value::String(key.clone())),
                constraint: "pattern",
                message,
            });
        }
        if let Err(message) = label_value(value) {
            errors.push(FieldError { field, value: Some(Value::String(value.into())), constraint: "pattern", message });
        }
        labels.insert(key.clone(), value.to_string());
    }
    if errors.is_empty() {
        Ok(labels)
    } else {
        Err(ApiError::Validation { detail: "label validation failed".into(), errors })
    }
}

/// `[a-zA-Z0-9]([a-zA-Z0-9._-]*[a-zA-Z0-9])?`, the shape of a label name and a non-empty value.
fn qualified_token(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |c: u8| c.is_ascii_alphanumeric();
    !b.is_empty() && edge(b[0]) && edge(b[b.len() - 1]) && b.iter().all(|&c| edge(c) || matches!(c, b'.' | b'_' | b'-'))
}

/// A DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
fn dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty() && b.len() <= 63 && edge(b[0]) && edge(b[b.len() - 1]) && b.iter().all(|&c| edge(c) || c == b'-')
}

fn label_key(key: &str) -> Result<(), String> {
    if key.len() > 255 {
        return Err(format!("label key '{key}' must be at most 255 characters"));
    }
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.len() > 253 || !p.split('.').all(dns_label))
    {
        return Err(format!("label key prefix '{p}' must be a DNS subdomain (lowercase letters, digits, '-', '.')"));
    }
    if name.len() > 63 || !qualified_token(name) {
        return Err(format!(
            "label key '{key}' must be at most 63 characters, start and end with a letter or digit, and contain only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

fn label_value(value: &str) -> Result<(), String> {
    if value.len() > 63 || !(value.is_empty() || qualified_token(value)) {
        return Err(format!(
            "label value '{value}' must be at most 63 characters, start and end with a letter or digit, and contain only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

fn validate_name(kind: Kind, name: &str) -> Result<(), ApiError> {
    let (min, max) = kind.name_len();
    let value = Some(Value::String(name.to_string()));
    let len = name.chars().count();
    if len < min {
        return Err(ApiError::validation(
            "name",
            value,
            "min_length",
            format!("name must be at least {min} characters"),
        ));
    }
    if len > max {
        return Err(ApiError::validation(
            "name",
            value,
            "max_length",
            format!("name must be at most {max} characters"),
        ));
    }
    if !dns_label(name) {
        return Err(ApiError::validation(
            "name",
            value,
            "pattern",
            "name must start and end with lowercase letter or number, and contain only lowercase letters, numbers, and hyphens".into(),
        ));
    }
    Ok(())
}

/// Validates a force-delete body: `reason`, a string of 1–1024 characters.
pub fn force_delete(body: Value) -> Result<ForceDelete, ApiError> {
    /// The body as JSON gives it, before the checks.
    #[derive(serde::Deserialize)]
    struct ForceDelete {
        reason: Option<Value>,
    }
    let body: ForceDelete =
        serde_json::from_value(body).map_err(|e| ApiError::Malformed(format!("Invalid JSON: {e}")))?;
    match body.reason {
        Some(Value::String(s)) if (1..=1024).contains(&s.chars().count()) => Ok(self::ForceDelete { reason: s }),
        Some(Value::String(s)) => Err(ApiError::validation(
            "reason",
            Some(Value::String(s)),
            "max_length",
            "reason must be between 1 and 1024 characters".into(),
        )),
        None | Some(Value::Null) => Err(ApiError::validation("reason", None, "required", "reason is required".into())),
        Some(other) => Err(type_error("reason", &other, "a string")),
    }
}

/// The conditions every report must carry.
pub const MANDATORY_CONDITIONS: [&str; 3] = ["Available", "Applied", "Health"];

fn field_error(field: &str, value: Option<&Value>, constraint: &'static str, message: String) -> ApiError {
    ApiError::validation(field, value.cloned(), constraint, message)
}

fn opt_string(obj: &Map<String, Value>, key: &str, field: &str) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(type_error(field, other, "a string")),
    }
}

/// Validates a report body (400 `HYPERFLEET-VAL-000` on any violation). `at` is the server's clock.
pub fn report(body: &Value, at: DateTime<Utc>, limits: &LimitsConfig) -> Result<StatusReport, ApiError> {
    let obj = body.as_object().ok_or_else(|| ApiError::Malformed("request body must be a JSON object".into()))?;
    let adapter = match obj.get("adapter") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        other => return Err(field_error("adapter", other, "required", "adapter is required".into())),
    };
    if !crate::config::adapter_name_ok(&adapter) {
        return Err(field_error(
            "adapter",
            obj.get("adapter"),
            "format",
            "adapter must be a DNS label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
                .into(),
        ));
    }
    let observed_generation = match obj.get("observed_generation") {
        Some(Value::Number(n)) => match n.as_i64() {
            Some(g) if (1..=i64::from(i32::MAX)).contains(&g) => g as i32,
            _ => {
                return Err(field_error(
                    "observed_generation",
                    obj.get("observed_generation"),
                    "min",
                    "observed_generation must be an integer of at least 1".into(),
                ));
            }
        },
        None | Some(Value::Null) => {
            return Err(field_error("observed_generation", None, "required", "observed_generation is required".into()));
        }
        other => {
            return Err(field_error(
                "observed_generation",
                other,
                "format",
                "observed_generation must be an integer of at least 1".into(),
            ));
        }
    };
    let observed_time = match obj.get("observed_time") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let t = DateTime::parse_from_rfc3339(s)
                .map_err(|_| {
                    field_error(
                        "observed_time",
                        obj.get("observed_time"),
                        "format",
                        "observed_time must be an RFC 3339 timestamp".into(),
                    )
                })?
                .with_timezone(&Utc);
            if t > at + Duration::minutes(5) {
                return Err(field_error(
                    "observed_time",
                    obj.get("observed_time"),
                    "max",
                    "observed_time must not be more than 5 minutes in the future".into(),
                ));
            }
            if t < at - Duration::minutes(30) {
                return Err(field_error(
                    "observed_time",
                    obj.get("observed_time"),
                    "min",
                    "observed_time must not be more than 30 minutes in the past".into(),
                ));
            }
            Some(t)
        }
        Some(other) => {
            return Err(field_error(
                "observed_time",
                Some(other),
                "format",
                "field 'observed_time' must be a string".into(),
            ));
        }
    };
    let list = match obj.get("conditions") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => {
            return Err(field_error("conditions", None, "required", "conditions is required".into()));
        }
        Some(other) => {
            return Err(field_error("conditions", Some(other), "format", "field 'conditions' must be an array".into()));
        }
    };
    if list.len() > limits.max_conditions {
        return Err(field_error(
            "conditions",
            None,
            "max",
            format!(
                "{} conditions; at most {} are accepted (limits.max_conditions)",
                list.len(),
                limits.max_conditions
            ),
        ));
    }
    let mut seen = HashSet::new();
    let mut conditions = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        let field = format!("conditions[{i}]");
        let c = c
            .as_object()
            .ok_or_else(|| field_error(&field, Some(c), "format", format!("field '{field}' must be an object")))?;
        let kind = match c.get("type") {
            Some(Value::String(t)) if !t.trim().is_empty() => t.clone(),
            other => {
                return Err(field_error(
                    &format!("{field}.type"),
                    other,
                    "required",
                    "condition type is required".into(),
                ));
            }
        };
        if !seen.insert(kind.clone()) {
            return Err(field_error(
                &format!("{field}.type"),
                c.get("type"),
                "unique",
                format!("duplicate condition type '{kind}'"),
            ));
        }
        let status = match c.get("status") {
            Some(Value::String(s)) if matches!(s.as_str(), "True" | "False" | "Unknown") => s.clone(),
            other => {
                return Err(field_error(
                    &format!("{field}.status"),
                    other,
                    "enum",
                    format!("condition '{kind}' status must be True, False or Unknown"),
                ));
            }
        };
        let reason = opt_string(c, "reason", &format!("{field}.reason"))?;
        let message = opt_string(c, "message", &format!("{field}.message"))?;
        conditions.push(ReportCondition { kind, status, reason, message });
    }
    let data = match obj.get("data") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(other) => return Err(field_error("data", Some(other), "format", "field 'data' must be an object".into())),
    };
    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(other) => {
            return Err(field_error("metadata", Some(other), "format", "field 'metadata' must be an object".into()));
        }
    };
    within("data", &data, limits.max_status_bytes, "limits.max_status_bytes")?;
    if let Some(m) = &metadata {
        within("metadata", m, limits.max_status_bytes, "limits.max_status_bytes")?;
    }
    Ok(StatusReport { adapter, observed_generation, observed_time, conditions, data, metadata })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{now, rfc3339};
    use serde_json::json;

    fn message(e: ApiError) -> (&'static str, String) {
        (e.code(), e.to_string())
    }

    #[test]
    fn valid_create_bodies() {
        let c = create(Kind::Cluster, &json!({"kind": "Cluster", "name": "prod-1", "spec": {"a": 1}, "labels": {"env": "p", "example.com/team": "a_b.c"}, "extra": true}), &LimitsConfig::default())
            .expect("valid");
        assert_eq!(c.name, "prod-1");
        assert_eq!(c.labels.get("example.com/team").map(String::as_str), Some("a_b.c"));
        assert!(
            create(Kind::NodePool, &json!({"kind": "NodePool", "name": "np-1", "spec": {}}), &LimitsConfig::default())
                .is_ok()
        );
    }

    #[test]
    fn invalid_create_bodies_name_the_field() {
        let cases = [
            (Kind::Cluster, json!({"name": "abc", "spec": {}}), "kind is required"),
            (Kind::Cluster, json!({"kind": "NodePool", "name": "abc", "spec": {}}), "kind must be 'Cluster'"),
            (Kind::Cluster, json!({"kind": "Cluster", "spec": {}}), "name is required"),
            (
                Kind::Cluster,
                json!({"kind": "Cluster", "name": "abc", "region": "us-east-1", "version": "4.14"}),
                "spec is required; cluster properties belong inside spec (found 'region', 'version' at the top level)",
            ),
            (Kind::Cluster, json!({"kind": "Cluster", "name": "ab", "spec": {}}), "name must be at least 3 characters"),
            (
                Kind::Cluster,
                json!({"kind": "Cluster", "name": "a".repeat(54), "spec": {}}),
                "name must be at most 53 characters",
            ),
            (
                Kind::NodePool,
                json!({"kind": "NodePool", "name": "a".repeat(16), "spec": {}}),
                "name must be at most 15 characters",
            ),
            (Kind::Cluster, json!({"kind": "Cluster", "name": "Bad_Name", "spec": {}}), "lowercase"),
            (Kind::Cluster, json!({"kind": "Cluster", "name": "-abc", "spec": {}}), "lowercase"),
            (Kind::Cluster, json!({"kind": "Cluster", "name": "abc"}), "spec is required"),
            (Kind::Cluster, json!({"kind": "Cluster", "name": "abc", "spec": [1]}), "field 'spec' must be an object"),
            (Kind::Cluster, json!({"kind": "Cluster", "name": 7, "spec": {}}), "field 'name' must be a string"),
            (
                Kind::Cluster,
                json!({"kind": "Cluster", "name": "abc", "spec": {}, "labels": []}),
                "field 'labels' must be an object",
            ),
            (
                Kind::Cluster,
                json!({"kind": "Cluster", "name": "abc", "spec": {}, "labels": {"a": 1}}),
                "label validation failed",
            ),
            (
                Kind::Cluster,
                json!({"kind": "Cluster", "name": "abc", "spec": {}, "labels": {"Bad Key": "v"}}),
                "label validation failed",
            ),
        ];
        for (kind, body, msg) in cases {
            let (code, m) = message(create(kind, &body, &LimitsConfig::default()).expect_err("invalid"));
            assert_eq!(code, "HYPERFLEET-VAL-000", "{body}");
            assert!(m.contains(msg), "{body}: {m}");
        }
        assert_eq!(
            create(Kind::Cluster, &json!([1]), &LimitsConfig::default()).map(|_| ()).expect_err("array").code(),
            "HYPERFLEET-VAL-006"
        );
        assert!(
            create(Kind::Cluster, &json!({"kind": "Cluster", "name": "ééé", "spec": {}}), &LimitsConfig::default())
                .is_err()
        );
    }

    #[test]
    fn kubernetes_label_rules() {
        for ok in ["a", "app.kubernetes.io/name", "x_y-z.w", "hyperfleet.io/cluster-id"] {
            assert!(label_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Bad Key",
            "UPPER.example.com/x",
            "a/b/c",
            &"k".repeat(64),
            &format!("{}/a", "p".repeat(254)),
        ] {
            assert!(label_key(bad).is_err(), "{bad}");
        }
        for ok in ["", "v", "v1.2_3-x"] {
            assert!(label_value(ok).is_ok(), "{ok:?}");
        }
        for bad in ["-v", "v ", &"v".repeat(64), "ü"] {
            assert!(label_value(bad).is_err(), "{bad}");
        }
        let e = labels(&json!({"Bad Key": "-bad", "ok": "fine"}), &LimitsConfig::default()).expect_err("two errors");
        match e {
            ApiError::Validation { errors, .. } => assert_eq!(errors.len(), 2, "all violations are reported"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn patch_bodies() {
        assert_eq!(
            patch(&json!({"labels": {"a": "b"}}), &LimitsConfig::default()).expect("labels").labels.map(|l| l.len()),
            Some(1)
        );
        assert_eq!(patch(&json!({}), &LimitsConfig::default()).expect_err("empty").code(), "HYPERFLEET-VAL-005");
        assert_eq!(
            patch(&json!({"name": "x"}), &LimitsConfig::default()).expect_err("unknown").code(),
            "HYPERFLEET-VAL-006"
        );
        assert_eq!(
            patch(&json!({"spec": null}), &LimitsConfig::default()).expect_err("null spec").code(),
            "HYPERFLEET-VAL-000"
        );
    }

    fn body(extra: Value) -> Value {
        let mut b = json!({
            "adapter": "landing-zone", "observed_generation": 1, "observed_time": rfc3339(now()),
            "conditions": [{"type": "Available", "status": "True"}, {"type": "Applied", "status": "True"},
                           {"type": "Health", "status": "True"}]
        });
        if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        b
    }

    #[test]
    fn report_validation_rules() {
        let limits = LimitsConfig { max_status_bytes: 100, max_conditions: 4, ..Default::default() };
        assert!(report(&body(json!({})), now(), &limits).is_ok());
        let old = rfc3339(now() - Duration::minutes(31));
        let future = rfc3339(now() + Duration::minutes(6));
        let cases = [
            (json!({"adapter": ""}), "adapter is required"),
            (json!({"observed_generation": 0}), "at least 1"),
            (json!({"observed_generation": "1"}), "at least 1"),
            (json!({"observed_time": old}), "30 minutes in the past"),
            (json!({"observed_time": future}), "5 minutes in the future"),
            (json!({"observed_time": "yesterday"}), "RFC 3339"),
            (json!({"conditions": [{"type": "", "status": "True"}]}), "condition type is required"),
            (json!({"conditions": [{"type": "A", "status": "Yes"}]}), "must be True, False or Unknown"),
            (
                json!({"conditions": [{"type": "A", "status": "True"}, {"type": "A", "status": "False"}]}),
                "duplicate condition type 'A'",
            ),
            (json!({"conditions": {}}), "must be an array"),
            (json!({"data": []}), "must be an object"),
            (json!({"adapter": "Landing_Zone"}), "DNS label"),
            (json!({"adapter": "x".repeat(64)}), "DNS label"),
            (json!({"adapter": "-dns"}), "DNS label"),
            (json!({"data": {"k": "v".repeat(100)}}), "data is 108 bytes of JSON; at most 100"),
            (json!({"metadata": {"k": "v".repeat(100)}}), "limits.max_status_bytes"),
            (
                json!({"conditions": (0..5).map(|i| json!({"type": format!("C{i}"), "status": "True"})).collect::<Vec<_>>()}),
                "5 conditions; at most 4",
            ),
        ];
        for (extra, msg) in cases {
            let e = report(&body(extra.clone()), now(), &limits).expect_err("invalid");
            assert_eq!(e.code(), "HYPERFLEET-VAL-000", "{extra}");
            assert!(e.to_string().contains(msg), "{extra}: {e}");
        }
    }
}
