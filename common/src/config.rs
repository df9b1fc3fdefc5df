//! Layered configuration.
//!
//! Every service describes its configuration as one `serde` struct whose `Default` is the documented
//! default. [`load`] merges, later layers winning:
//!
//! 1. the defaults,
//! 2. a YAML file (optional; when a path is given it must exist),
//! 3. compatibility layers a service derives from other sources (the seed chart's `broker.yaml`
//!    and `BROKER_*` variables, see [`crate::broker::seed_chart_layers`]),
//! 4. environment variables `HYPERFLEET_<PATH>` where `<PATH>` is the upper-cased key path joined by
//!    `_` (`database.ssl.mode` ← `HYPERFLEET_DATABASE_SSL_MODE`),
//! 5. command-line flags, given as `(key.path, value)` pairs.
//!
//! Only keys that exist in the defaults are read from the environment, so unrelated `HYPERFLEET_*`
//! variables are ignored instead of failing the start.

use std::{collections::HashMap, fmt, path::Path, time::Duration};

use figment::{
    Figment,
    providers::{Format, Serialized, Yaml},
};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned};

/// Prefix of every environment variable the services read for configuration.
pub const ENV_PREFIX: &str = "HYPERFLEET_";

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("cannot describe the configuration defaults: {0}")]
    Defaults(#[from] serde_json::Error),
    #[error("two configuration keys map to the same environment variable {0}")]
    AmbiguousEnv(String),
}

/// Describes every error of an extraction as `key.path: problem (origin)`, where the origin is the
/// file, the environment variable or the flag the bad value came from.
fn describe(errors: figment::Error, origins: &HashMap<String, String>) -> ConfigError {
    let parts: Vec<String> = errors
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let origin = origins.get(&key).cloned().or_else(|| {
                e.metadata.as_ref().and_then(|m| m.source.as_ref()).and_then(|s| match s {
                    figment::Source::File(path) => Some(format!("in {}", path.display())),
                    _ => None,
                })
            });
            let what = if key.is_empty() { e.kind.to_string() } else { format!("{key}: {}", e.kind) };
            match origin {
                Some(o) => format!("{what} ({o})"),
                None => what,
            }
        })
        .collect();
    ConfigError::Invalid(parts.join("; "))
}

/// A configuration value from a source other than the file, the `HYPERFLEET_*` environment or flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// Key path, e.g. `broker.url`.
    pub key: String,
    pub value: serde_json::Value,
    /// Named in errors, e.g. `from BROKER_RABBITMQ_URL`.
    pub origin: String,
}

/// Loads `T` from defaults, an optional YAML file, the environment and flag overrides.
pub fn load<T>(file: Option<&Path>, overrides: &[(&str, serde_json::Value)]) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    load_with_env(file, overrides, std::env::vars())
}

/// [`load`] with an explicit environment, so tests need not touch the process environment.
pub fn load_with_env<T>(
    file: Option<&Path>,
    overrides: &[(&str, serde_json::Value)],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    load_layered(file, &[], overrides, env)
}

/// [`load_with_env`] with compatibility `layers` between the file and the environment.
pub fn load_layered<T>(
    file: Option<&Path>,
    layers: &[Layer],
    overrides: &[(&str, serde_json::Value)],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let defaults = T::default();
    let env_keys = env_key_map(&serde_json::to_value(&defaults)?)?;

    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::MissingFile(path.display().to_string()));
        }
        figment = figment.merge(Yaml::file_exact(path));
    }
    let mut origins = HashMap::new();
    for layer in layers {
        figment = figment.merge(Serialized::default(&layer.key, layer.value.clone()));
        origins.insert(layer.key.clone(), layer.origin.clone());
    }
    for (name, value) in env {
        if let Some(leaf) = name.strip_prefix(ENV_PREFIX).and_then(|rest| env_keys.get(rest)) {
            figment = figment.merge(Serialized::default(&leaf.path, leaf.parse(&value)));
            origins.insert(leaf.path.clone(), format!("from {name}"));
        }
    }
    for (path, value) in overrides {
        figment = figment.merge(Serialized::default(path, value.clone()));
        origins.insert(path.to_string(), "from the command line".to_string());
    }
    figment.extract().map_err(|e| describe(e, &origins))
}

/// A configuration key reachable from the environment, typed by its default value.
#[derive(Debug, Clone)]
struct Leaf {
    path: String,
    numeric: bool,
    boolean: bool,
    list: bool,
}

impl Leaf {
    /// Environment values are strings; a key whose default is a list takes a JSON array or a
    /// comma-separated list, a key whose default is a number or a boolean gets the value
    /// parsed as one (so `HYPERFLEET_SERVER_PORT=8000` fills a `u16`), everything else stays a
    /// string (so a password of digits is still a string). Unparsable values are passed on as
    /// strings and rejected by the typed extraction with the key named.
    fn parse(&self, raw: &str) -> serde_json::Value {
        if self.list {
            // A JSON array (`["a","b"]`), or a comma-separated list (`a,b`); empty means none.
            if let Ok(v @ serde_json::Value::Array(_)) = serde_json::from_str(raw) {
                return v;
            }
            return raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(serde_json::Value::from).collect();
        }
        if self.numeric {
            if let Ok(n) = raw.trim().parse::<i64>() {
                return n.into();
            }
            if let Some(n) = raw.trim().parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                return n.into();
            }
        }
        if self.boolean {
            match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => return true.into(),
                "false" | "0" | "no" | "off" => return false.into(),
                _ => {}
            }
        }
        raw.into()
    }
}

/// Maps `DATABASE_SSL_MODE` → `database.ssl.mode` for every leaf of the defaults.
fn env_key_map(defaults: &serde_json::Value) -> Result<HashMap<String, Leaf>, ConfigError> {
    fn walk(
        value: &serde_json::Value,
        path: &mut Vec<String>,
        out: &mut HashMap<String, Leaf>,
    ) -> Result<(), ConfigError> {
        match value {
            serde_json::Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    path.push(k.clone());
                    walk(v, path, out)?;
                    path.pop();
                }
                Ok(())
            }
            _ if path.is_empty() => Ok(()),
            leaf => {
                let env = path.join("_").to_ascii_uppercase();
                let entry = Leaf {
                    path: path.join("."),
                    numeric: leaf.is_number(),
                    boolean: leaf.is_boolean(),
                    list: leaf.is_array(),
                };
                if out.insert(env.clone(), entry).is_some() {
                    return Err(ConfigError::AmbiguousEnv(format!("{ENV_PREFIX}{env}")));
                }
                Ok(())
            }
        }
    }
    let mut out = HashMap::new();
    walk(defaults, &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// Every environment variable `HYPERFLEET_*` that configures `T`, with its key path, sorted.
/// Used by `--help`-style listings and by the documentation test that keeps the README honest.
pub fn env_vars<T: Serialize + Default>() -> Vec<(String, String)> {
    let Ok(value) = serde_json::to_value(T::default()) else {
        return Vec::new();
    };
    let mut vars: Vec<_> = env_key_map(&value)
        .unwrap_or_default()
        .into_iter()
        .map(|(env, leaf)| (format!("{ENV_PREFIX}{env}"), leaf.path))
        .collect();
    vars.sort();
    vars
}

/// A configuration value that must never be printed: `Debug` and `Display` show `[redacted]`, and it
/// serialises as `""` (defaults) or `"[redacted]"`, so a dumped configuration cannot leak it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret value itself; call only where it is handed to the system that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "[redacted]" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        lenient_string(d).map(Secret)
    }
}

/// Deserialises a string field that may arrive as a number or boolean from the environment.
pub fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        S(String),
        I(i64),
        U(u64),
        F(f64),
        B(bool),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::S(s) => s,
        Raw::I(i) => i.to_string(),
        Raw::U(u) => u.to_string(),
        Raw::F(f) => f.to_string(),
        Raw::B(b) => b.to_string(),
    })
}

/// Parses `"250ms"`, `"5s"`, `"2m"`, `"1h"`, `"1h30m"` or a plain number of seconds.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {input:?}: {e}"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, tail) = rest.split_at(digits);
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let value: f64 =
            num.parse().map_err(|_| format!("invalid duration {input:?}: expected e.g. 500ms, 5s, 2m, 1h"))?;
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("invalid duration {input:?}: unknown unit {unit:?} (use ms, s, m, h)")),
        };
        total += Duration::try_from_secs_f64(value * scale).map_err(|e| format!("invalid duration {input:?}: {e}"))?;
        rest = next;
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if !ms.is_multiple_of(60_000) || ms == 0 {
        format!("{}s", ms / 1000)
    } else if !ms.is_multiple_of(3_600_000) {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}h", ms / 3_600_000)
    }
}

/// `#[serde(with = "hyperfleet_common::config::duration")]` for `Duration` fields written as `"5s"`.
pub mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let raw = lenient_string(d)?;
        parse_duration(&raw).map_err(serde::de::Error::custom)
    }
}

/// Reads a value from a file (as mounted by Kubernetes Secrets or the Secrets Store CSI driver),
/// trimming the trailing newline such files usually have.
pub fn read_value_file(path: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim_end_matches(['\n', '\r']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        name: String,
        port: u16,
        password: Secret,
        #[serde(with = "duration")]
        interval: Duration,
        nested: Nested,
        names: Vec<String>,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Nested {
        ssl_mode: String,
        ca_file: Option<String>,
    }

    impl Default for Sample {
        fn default() -> Self {
            Sample {
                name: "default".into(),
                port: 8000,
                password: Secret::default(),
                interval: Duration::from_secs(5),
                nested: Nested { ssl_mode: "disable".into(), ca_file: None },
                names: vec!["a".into()],
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn layers_apply_in_order_defaults_file_env_flags() {
        let dir = std::env::temp_dir().join(format!("hf-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("c.yaml");
        std::fs::write(&file, "name: from-file\nport: 7000\nnested:\n  ssl_mode: require\n").expect("write");

        let c: Sample = load_with_env(Some(&file), &[], env(&[])).expect("file");
        assert_eq!((c.name.as_str(), c.port, c.nested.ssl_mode.as_str()), ("from-file", 7000, "require"));

        let c: Sample = load_with_env(
            Some(&file),
            &[],
            env(&[("HYPERFLEET_PORT", "7100"), ("HYPERFLEET_NESTED_CA_FILE", "/ca.pem"), ("OTHER_PORT", "1")]),
        )
        .expect("env");
        assert_eq!(c.port, 7100);
        assert_eq!(c.nested.ca_file.as_deref(), Some("/ca.pem"));
        assert_eq!(c.name, "from-file");

        let c: Sample = load_with_env(
            Some(&file),
            &[("port", 7200.into()), ("interval", "250ms".into())],
            env(&[("HYPERFLEET_PORT", "7100")]),
        )
        .expect("flags");
        assert_eq!(c.port, 7200);
        assert_eq!(c.interval, Duration::from_millis(250));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn numeric_looking_env_values_fill_string_fields() {
        let c: Sample = load_with_env(None, &[], env(&[("HYPERFLEET_PASSWORD", "12345"), ("HYPERFLEET_NAME", "true")]))
            .expect("load");
        assert_eq!(c.password.expose(), "12345");
        assert_eq!(c.name, "true");
    }

    #[test]
    fn bad_values_and_missing_files_are_clear_errors() {
        let e = load_with_env::<Sample>(None, &[], env(&[("HYPERFLEET_PORT", "99999")])).expect_err("range");
        assert!(e.to_string().starts_with("invalid configuration: port: "), "{e}");
        assert!(e.to_string().contains("(from HYPERFLEET_PORT)"), "{e}");
        let e = load_with_env::<Sample>(None, &[("port", "x".into())], env(&[])).expect_err("flag");
        assert!(e.to_string().contains("(from the command line)"), "{e}");
        let e = load_with_env::<Sample>(None, &[], env(&[("HYPERFLEET_INTERVAL", "5 parsecs")])).expect_err("unit");
        assert!(e.to_string().contains("unknown unit"), "{e}");
        let e = load_with_env::<Sample>(Some(Path::new("/nonexistent/c.yaml")), &[], env(&[])).expect_err("file");
        assert!(matches!(e, ConfigError::MissingFile(_)));
    }

    #[test]
    fn list_values_from_the_environment() {
        for (raw, want) in [("x, y", vec!["x", "y"]), (r#"["p","q"]"#, vec!["p", "q"]), ("", vec![])] {
            let c: Sample = load_with_env(None, &[], env(&[("HYPERFLEET_NAMES", raw)])).expect(raw);
            assert_eq!(c.names, want, "{raw:?}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
        assert_eq!(serde_json::to_string(&s).expect("json"), "\"[redacted]\"");
    }

    #[test]
    fn durations_round_trip() {
        for (text, d) in [("500ms", 500), ("5s", 5_000), ("2m", 120_000), ("1h", 3_600_000), ("1h30m", 5_400_000)] {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(d)), "{text}");
        }
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(format_duration(Duration::from_secs(30 * 60)), "30m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn env_var_listing_covers_nested_and_optional_keys() {
        let vars = env_vars::<Sample>();
        let names: Vec<_> = vars.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"HYPERFLEET_NESTED_CA_FILE"), "{names:?}");
        assert!(names.contains(&"HYPERFLEET_NESTED_SSL_MODE"));
    }
}
