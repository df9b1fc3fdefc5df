//! Resource kinds, the stored row and the representation clients see (reference §2.3).

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{FromRow, types::Json};
use uuid::Uuid;

use crate::{API_PREFIX, domain::aggregation::Condition};

/// The resource kinds this API serves. NodePools are children of Clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cluster,
    NodePool,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cluster => "Cluster",
            Kind::NodePool => "NodePool",
        }
    }
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Cluster => "clusters",
            Kind::NodePool => "nodepools",
        }
    }
    /// Name length limits (min, max).
    pub fn name_len(self) -> (usize, usize) {
        match self {
            Kind::Cluster => (3, 53),
            Kind::NodePool => (3, 15),
        }
    }
}

/// Who writes when no authenticated identity is known (as the original).
pub const SYSTEM_IDENTITY: &str = "system@hyperfleet.local";

/// Current time at the database's precision (µs), so values read back compare equal.
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A row of `resources`.
#[derive(Debug, Clone, FromRow)]
pub struct Row {
    pub id: Uuid,
    pub kind: String,
    pub name: String,
    pub owner_id: Option<Uuid>,
    /// Kept as the JSON text PostgreSQL sent: a spec is never exploded into a map of values on the
    /// way out (a 64 KiB spec of small keys would take ten times that as a `Value`).
    pub spec: Json<Box<serde_json::value::RawValue>>,
    pub labels: Json<BTreeMap<String, String>>,
    pub conditions: Json<Vec<Condition>>,
    pub generation: i32,
    pub created_time: DateTime<Utc>,
    pub updated_time: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
    pub deleted_time: Option<DateTime<Utc>>,
    pub deleted_by: Option<String>,
    /// Bumped by every change (also of the conditions); the ETag and the change feed's position.
    pub version: i64,
    /// The W3C `traceparent` of the request that made this generation, when it was traced.
    pub trace_parent: Option<String>,
}

pub fn href(kind: Kind, id: Uuid, owner: Option<Uuid>) -> String {
    match (kind, owner) {
        (Kind::NodePool, Some(cluster)) => format!("{API_PREFIX}/clusters/{cluster}/nodepools/{id}"),
        _ => format!("{API_PREFIX}/{}/{id}", kind.plural()),
    }
}

/// The cluster a nodepool belongs to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OwnerRef {
    id: Uuid,
    kind: &'static str,
    href: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Status {
    conditions: Vec<ConditionView>,
}

/// An aggregated condition: `Reconciled`, `LastKnownReconciled` or `<Adapter>Successful`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ResourceCondition)]
struct ConditionView {
    #[serde(rename = "type")]
    kind: String,
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    observed_generation: i32,
    created_time: String,
    last_updated_time: String,
    last_transition_time: String,
}

/// The representation of a resource (a Cluster or a NodePool).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Resource {
    id: Uuid,
    kind: String,
    name: String,
    href: String,
    #[schema(value_type = Object)]
    spec: Box<serde_json::value::RawValue>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    generation: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    owner_references: Option<OwnerRef>,
    status: Status,
    created_time: String,
    updated_time: String,
    created_by: String,
    updated_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_by: Option<String>,
}

/// `{}` as raw JSON.
fn empty_object() -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string("{}".to_string())
        .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned())
}

impl Row {
    /// The stored spec as a map (for comparing a patch with it); `None` if serde_json cannot read
    /// it (PostgreSQL accepts numbers and depths it does not) — then it differs from any patch.
    pub fn spec_map(&self) -> Option<serde_json::Map<String, Value>> {
        serde_json::from_str(self.spec.0.get()).ok()
    }

    /// The strong ETag of this version of the resource.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }

    pub fn kind(&self) -> Kind {
        if self.kind == "NodePool" { Kind::NodePool } else { Kind::Cluster }
    }

    pub fn to_resource(&self) -> Resource {
        self.resource(true)
    }

    /// The representation; without the spec (`{}` in its place) when `with_spec` is false — for
    /// projections that drop it anyway.
    pub fn resource(&self, with_spec: bool) -> Resource {
        let kind = self.kind();
        Resource {
            id: self.id,
            kind: self.kind.clone(),
            name: self.name.clone(),
            href: href(kind, self.id, self.owner_id),
            spec: if with_spec { self.spec.0.clone() } else { empty_object() },
            labels: self.labels.0.clone(),
            generation: self.generation,
            owner_references: self.owner_id.map(|id| OwnerRef {
                id,
                kind: "Cluster",
                href: href(Kind::Cluster, id, None),
            }),
            status: Status {
                conditions: self
                    .conditions
                    .0
                    .iter()
                    .map(|c| ConditionView {
                        kind: c.kind.clone(),
                        status: c.status.clone(),
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                        observed_generation: c.observed_generation,
                        created_time: rfc3339(c.created_time),
                        last_updated_time: rfc3339(c.last_updated_time),
                        last_transition_time: rfc3339(c.last_transition_time),
                    })
                    .collect(),
            },
            created_time: rfc3339(self.created_time),
            updated_time: rfc3339(self.updated_time),
            created_by: self.created_by.clone(),
            updated_by: self.updated_by.clone(),
            deleted_time: self.deleted_time.map(rfc3339),
            deleted_by: self.deleted_by.clone(),
        }
    }
}

/// One adapter's latest report about a resource.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AdapterStatus {
    pub adapter: String,
    pub observed_generation: i32,
    pub conditions: Vec<AdapterCondition>,
    #[schema(value_type = Object)]
    pub data: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>, nullable = false)]
    pub metadata: Option<Value>,
    pub created_time: String,
    pub last_report_time: String,
}

// A condition of an adapter's report as clients see it (no doc comment: it would become the
// OpenAPI schema's description).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AdapterCondition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub last_transition_time: String,
}
