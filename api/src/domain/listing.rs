//! List parameters (reference §2.4): `page`, `size`, `order`, `fields` and `search`.
//!
//! Parameters may repeat (`order=a&order=b` is `order=a,b`); unknown parameters are ignored, as
//! in the original. Everything that reaches SQL is either an allowlisted column name or a bind
//! parameter.

use serde::Serialize;
use serde_json::Value;

use crate::{
    domain::search::{self, Filter},
    error::ApiError,
};

/// The list envelope; `size` is the number of items returned.
#[derive(Debug, Serialize)]
pub struct ListBody<T> {
    pub page: i64,
    pub size: i64,
    /// Absent when the client asked for none (`total=false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
    pub items: Vec<T>,
}

/// Top-level members of a resource's representation that `fields` may keep.
pub const FIELDS: &[&str] = &[
    "id",
    "kind",
    "name",
    "href",
    "spec",
    "labels",
    "generation",
    "owner_references",
    "status",
    "created_time",
    "updated_time",
    "created_by",
    "updated_by",
    "deleted_time",
    "deleted_by",
    TRACEPARENT,
];

/// A member no representation has unless `fields` names it: the W3C `traceparent` of the request
/// that made the resource's current generation (when the API traces), for the sentinel to continue
/// that trace.
pub const TRACEPARENT: &str = "traceparent";

/// The default list order.
pub const DEFAULT_ORDER: &str = "created_time desc";

#[derive(Debug, Default)]
pub struct ListParams {
    pub page: i64,
    pub size: i64,
    /// `ORDER BY` body: allowlisted columns and directions, ending with the `id` tie-breaker.
    pub order: String,
    pub fields: Option<Vec<String>>,
    /// The raw `search` text, compiled by [`ListParams::filter`].
    pub search: Option<String>,
    /// `watch=true`: stream changes instead of a page.
    pub watch: bool,
    /// Where a watch resumes (after this change).
    pub resource_version: Option<String>,
    /// Count the matches across all pages (`total`); `total=false` skips the count — keyset
    /// paging clients (the sentinel) do not need it and it is most of a page's cost.
    pub total: bool,
}

/// The query string as name/value pairs, percent-decoded.
pub fn pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::validation("query", None, "format", format!("invalid query string: {e}")))
}

fn all<'a>(pairs: &'a [(String, String)], name: &str) -> impl Iterator<Item = &'a str> {
    pairs.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn last<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    all(pairs, name).last()
}

/// `page` (default 1, 1–100000) and `size` (default 20, 1–100).
pub fn paging(pairs: &[(String, String)]) -> Result<(i64, i64), ApiError> {
    Ok((int_param("page", last(pairs, "page"), 1, 1, 100_000)?, int_param("size", last(pairs, "size"), 20, 1, 100)?))
}

pub fn int_param(name: &'static str, raw: Option<&str>, default: i64, min: i64, max: i64) -> Result<i64, ApiError> {
    let Some(raw) = raw else { return Ok(default) };
    let value = Some(Value::String(raw.to_string()));
    let n: i64 = raw
        .trim()
        .parse()
        .map_err(|_| ApiError::validation(name, value.clone(), "format", "must be a valid integer".into()))?;
    if n < min {
        return Err(ApiError::validation(name, value, "min", format!("{name} must be at least {min}")));
    }
    if n > max {
        return Err(ApiError::validation(name, value, "max", format!("{name} must be at most {max}")));
    }
    Ok(n)
}

/// Parses `order` items (`column [asc|desc]`, comma-separated or repeated) into an `ORDER BY` body.
pub fn order(pairs: &[(String, String)]) -> Result<String, ApiError> {
    let mut items: Vec<&str> = all(pairs, "order").flat_map(|v| v.split(',')).map(str::trim).collect();
    items.retain(|s| !s.is_empty());
    if items.is_empty() {
        items.push(DEFAULT_ORDER);
    }
    let mut out = Vec::with_capacity(items.len() + 1);
    let mut has_id = false;
    for item in items {
        let mut words = item.split_whitespace();
        let (Some(name), dir, None) = (words.next(), words.next(), words.next()) else {
            return Err(bad_order(item, "expected '<field> [asc|desc]'"));
        };
        let (column, _) =
            search::column(name).ok_or_else(|| bad_order(item, "invalid field in search or order query"))?;
        let dir = match dir.map(str::to_ascii_lowercase).as_deref() {
            None | Some("asc") => "asc",
            Some("desc") => "desc",
            Some(_) => return Err(bad_order(item, "the direction must be asc or desc")),
        };
        has_id |= column == "id";
        out.push(format!("{column} {dir}"));
    }
    if !has_id {
        out.push("id desc".into());
    }
    Ok(out.join(", "))
}

fn bad_order(item: &str, why: &str) -> ApiError {
    ApiError::validation("order", Some(Value::String(item.into())), "format", format!("{why}: '{item}'"))
}

/// Parses `fields` (comma-separated or repeated); `id` is always kept.
pub fn fields(pairs: &[(String, String)]) -> Result<Option<Vec<String>>, ApiError> {
    let mut names: Vec<String> = all(pairs, "fields")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        return Ok(None);
    }
    if let Some(bad) = names.iter().find(|n| !FIELDS.contains(&n.as_str())) {
        return Err(ApiError::validation(
            "fields",
            Some(Value::String(bad.clone())),
            "enum",
            format!("unknown field '{bad}'; fields are {}", FIELDS.join(", ")),
        ));
    }
    if !names.iter().any(|n| n == "id") {
        names.insert(0, "id".into());
    }
    Ok(Some(names))
}

/// Keeps only `fields` of a serialised object.
pub fn project(value: Value, fields: Option<&[String]>) -> Value {
    match (value, fields) {
        (Value::Object(map), Some(fields)) => {
            Value::Object(map.into_iter().filter(|(k, _)| fields.iter().any(|f| f == k)).collect())
        }
        (value, _) => value,
    }
}

impl ListParams {
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let pairs = pairs(raw)?;
        let (page, size) = paging(&pairs)?;
        let search = last(&pairs, "search").map(str::trim).filter(|s| !s.is_empty()).map(String::from);
        let watch = match last(&pairs, "watch") {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") | Some("") => true,
            Some(other) => {
                return Err(ApiError::validation(
                    "watch",
                    Some(Value::String(other.into())),
                    "format",
                    "watch must be true or false".into(),
                ));
            }
        };
        let resource_version = last(&pairs, "resource_version").map(String::from);
        let total = match last(&pairs, "total") {
            None | Some("true") | Some("1") => true,
            Some("false") | Some("0") => false,
            Some(other) => {
                return Err(ApiError::validation(
                    "total",
                    Some(Value::String(other.into())),
                    "format",
                    "total must be true or false".into(),
                ));
            }
        };
        Ok(ListParams {
            page,
            size,
            order: order(&pairs)?,
            fields: fields(&pairs)?,
            search,
            watch,
            resource_version,
            total,
        })
    }

    /// The compiled search, placeholders from `$first`.
    pub fn filter(&self, first: usize) -> Result<Option<Filter>, ApiError> {
        self.search
            .as_deref()
            .map(|q| {
                search::compile(q, first)
                    .map_err(|e| ApiError::BadRequest(format!("failed to parse search query: {e}")))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(q: &str) -> Vec<(String, String)> {
        pairs(Some(q)).expect("pairs")
    }

    #[test]
    fn paging_parameters() {
        assert_eq!(int_param("size", None, 20, 1, 100).expect("default"), 20);
        assert_eq!(int_param("size", Some("100"), 20, 1, 100).expect("max"), 100);
        assert!(int_param("size", Some("101"), 20, 1, 100).expect_err("too big").to_string().contains("at most 100"));
        assert!(int_param("page", Some("0"), 1, 1, 10).is_err());
        assert!(int_param("page", Some("x"), 1, 1, 10).expect_err("nan").to_string().contains("valid integer"));
    }

    #[test]
    fn order_parses_lists_and_repeats() {
        assert_eq!(order(&p("")).expect("default"), "created_time desc, id desc");
        assert_eq!(order(&p("order=name%20asc,generation%20DESC")).expect("two"), "name asc, generation desc, id desc");
        assert_eq!(order(&p("order=name&order=id")).expect("repeat"), "name asc, id asc");
        assert!(order(&p("order=spec")).expect_err("not a column").to_string().contains("invalid field"));
        assert!(order(&p("order=name%20sideways")).is_err());
        assert!(order(&p("order=name;drop")).is_err());
        assert!(order(&p("order=name%20asc%20x")).is_err());
    }

    #[test]
    fn fields_always_keep_id() {
        assert_eq!(fields(&p("")).expect("none"), None);
        assert_eq!(fields(&p("fields=name,spec")).expect("two"), Some(vec!["id".into(), "name".into(), "spec".into()]));
        assert!(
            fields(&p("fields=name,password")).expect_err("unknown").to_string().contains("unknown field 'password'")
        );
        let v = serde_json::json!({"id": 1, "name": "a", "spec": {}});
        assert_eq!(
            project(v, Some(&["id".to_string(), "name".to_string()])),
            serde_json::json!({"id": 1, "name": "a"})
        );
    }
}
