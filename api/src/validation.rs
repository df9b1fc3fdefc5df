//! Request-body validation (behaviour reference §2.7): names, Kubernetes label rules, spec and
//! type checks. Every failure is a 400 naming the field.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::{
    config::LimitsConfig,
    error::{ApiError, FieldError},
    model::Kind,
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

/// A validated create request.
#[derive(Debug, PartialEq)]
pub struct NewResource {
    pub name: String,
    pub spec: Map<String, Value>,
    pub labels: BTreeMap<String, String>,
}

/// A validated patch request: each part replaces the stored one wholesale when present.
#[derive(Debug, PartialEq, Default)]
pub struct Patch {
    pub spec: Option<Map<String, Value>>,
    pub labels: Option<BTreeMap<String, String>>,
}

fn object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object().ok_or_else(|| ApiError::Malformed("request body must be a JSON object".into()))
}

/// Validates a create body. Unknown fields are ignored; `kind`, `name` and `spec` are required.
pub fn create(kind: Kind, body: &Value, limits: &LimitsConfig) -> Result<NewResource, ApiError> {
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
    Ok(NewResource { name, spec, labels })
}

/// Validates a patch body: only `spec` and `labels`, at least one of them.
pub fn patch(body: &Value, limits: &LimitsConfig) -> Result<Patch, ApiError> {
    let obj = object(body)?;
    if let Some(unknown) = obj.keys().find(|k| !matches!(k.as_str(), "spec" | "labels")) {
        return Err(ApiError::Malformed(format!("unknown field '{unknown}': a patch may contain spec and labels")));
    }
    let patch = Patch {
        spec: obj.get("spec").map(|v| spec(v, limits)).transpose()?,
        labels: obj.get("labels").map(|v| labels(v, limits)).transpose()?,
    };
    if patch == Patch::default() {
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

#[cfg(test)]
mod tests {
    use super::*;
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
}
