//! The task file: which API resource an event names, which Kubernetes objects it gets, and what
//! the status report says — so a different task needs a different file, not different code.
//! The landing-zone task ([`LANDING_ZONE`]) is built in and is the default.
//!
//! Strings in the file are templates over the resource as the API shows it: the fixed variables
//! ([`VARIABLES`]) and any path under `resource.spec.`, `resource.labels.` (a nodepool also
//! `resource.owner_references.{id,kind,href}`) and a few more members ([`MEMBERS`]). A variable
//! that can never have a value, a malformed object or an unknown key is refused when the adapter
//! starts; a path the resource lacks at run time stops its objects (reported `Health=False`, see
//! [`render`]). `when:` preconditions ([`Check`]) hold the objects back until they hold, and an
//! object's `ready:` rule (a [`Check`] on its live state) says when it is available (see
//! [`Task::waiting`]).

use std::{collections::HashMap, path::Path, sync::Mutex};
use tracing::Instrument;

use kube::{
    Api, Client,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams},
    discovery::{self, Scope},
};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The built-in landing-zone task: the chart's own file, so the chart (which must be a self-contained
/// directory: it is copied into GitOps repositories) and the binary ship one text.
pub const LANDING_ZONE: &str = include_str!("../../charts/hyperfleet-system/files/landing-zone.yaml");

/// Template variables a task may use as they are.
pub const VARIABLES: &[&str] =
    &["resource.id", "resource.name", "resource.kind", "resource.generation", "adapter.name"];

/// Other top-level members of the resource a template may name (`{{resource.href}}`).
pub const MEMBERS: &[&str] = &["href", "created_time", "updated_time", "created_by", "updated_by"];

/// Why `name` can never have a value for a task on `collection`, if it cannot.
fn unknown_variable(name: &str, collection: &str) -> Option<String> {
    if VARIABLES.contains(&name) {
        return None;
    }
    let known = || {
        format!(
            "{}, resource.spec.<path>, resource.labels.<key>, resource.{{{}}}{}",
            VARIABLES.join(", "),
            MEMBERS.join(","),
            if collection == "nodepools" { ", resource.owner_references.{id,kind,href}" } else { "" }
        )
    };
    let Some(path) = name.strip_prefix("resource.") else {
        return Some(format!("unknown variable {{{{{name}}}}} (known: {})", known()));
    };
    let ok = match path.split_once('.') {
        Some(("spec" | "labels", rest)) => !rest.is_empty() && !rest.split('.').any(str::is_empty),
        Some(("owner_references", field)) => collection == "nodepools" && matches!(field, "id" | "kind" | "href"),
        Some(_) => false,
        None => MEMBERS.contains(&path) || matches!(path, "spec" | "labels"),
    };
    (!ok).then(|| format!("{{{{{name}}}}} can never have a value (known: {})", known()))
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// API collection the event's resource is read from (`clusters`).
    pub resource: String,
    /// Objects to apply, in order (and to delete, in reverse order).
    pub objects: Vec<Value>,
    pub report: ReportSpec,
    /// Preconditions: all must hold for the objects to be applied; otherwise nothing is applied and
    /// the report says which one does not (`PreconditionNotMet`). Deletions are never held back.
    #[serde(default)]
    pub when: Vec<Check>,
    /// The resource paths the templates read (below `resource.`), found by validation.
    #[serde(skip)]
    pub paths: Vec<String>,
    /// Each object's `ready:` rule (taken out of the object, which is applied without it), by index.
    #[serde(skip)]
    pub ready: Vec<Option<Check>>,
}

/// A condition (in `status.conditions`, by `type`) with a status, or a field that must exist or
/// equal a value. As a `when:` precondition it reads the resource as the API shows it: its
/// aggregated conditions (another adapter's `<Name>Successful`, `Reconciled`) and its fields named
/// like template variables without braces (`resource.labels.tier`). As an object's `ready:` rule
/// it reads the object's live state: a Job's `Complete` condition, a Deployment's `Available`, or a
/// field path in the object (`status.phase`, `status.readyReplicas`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, untagged)]
pub enum Check {
    Condition {
        condition: String,
        #[serde(default = "condition_true")]
        status: String,
    },
    Field {
        field: String,
        /// A string, number or boolean (compared as its JSON text: `3`, `true`).
        #[serde(default, deserialize_with = "scalar_text")]
        equals: Option<String>,
    },
}

/// A scalar as template text (`equals: 3` reads as `"3"`); objects and arrays are refused.
fn scalar_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        v @ (Value::Number(_) | Value::Bool(_)) => Ok(Some(v.to_string())),
        _ => Err(serde::de::Error::custom("equals must be a string, a number or a boolean")),
    }
}

fn condition_true() -> String {
    "True".into()
}

impl Check {
    /// As a `when:` precondition: `None` when it holds for `resource`, else why not.
    pub fn unmet(&self, resource: &ResourceView) -> Option<String> {
        self.unmet_in(resource.fields.get("status"), |field| {
            field.strip_prefix("resource.").and_then(|p| resource.value(p))
        })
    }

    /// As a `ready:` rule: `None` when the live object `live` is ready, else why not.
    pub fn unready(&self, live: &Value) -> Option<String> {
        self.unmet_in(live.get("status"), |field| live.as_object().and_then(|o| lookup(o, field)).and_then(as_text))
    }

    /// `None` when it holds for an object with this `status` and these fields, else why not.
    fn unmet_in(&self, status: Option<&Value>, field_value: impl Fn(&str) -> Option<String>) -> Option<String> {
        match self {
            Check::Condition { condition, status: wanted } => {
                let found = status
                    .and_then(|s| s.get("conditions"))
                    .and_then(Value::as_array)
                    .and_then(|cs| cs.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(condition)))
                    .and_then(|c| c.get("status").and_then(Value::as_str));
                match found {
                    Some(s) if s == wanted => None,
                    Some(s) => Some(format!("condition {condition} is {s}, not {wanted}")),
                    None => Some(format!("condition {condition} is not reported yet (wanted {wanted})")),
                }
            }
            Check::Field { field, equals } => match (field_value(field), equals) {
                (None, _) => Some(format!("{field} is not set")),
                (Some(v), Some(want)) if v != *want => Some(format!("{field} is {v:?}, not {want:?}")),
                _ => None,
            },
        }
    }

    /// Checks the check's own shape (`at` names it in the error); a field must pass `field_ok`.
    fn validate(&self, at: &str, field_ok: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        match self {
            Check::Field { field, .. } => match field_ok(field) {
                Some(why) => Err(format!("{at}.field: {why}")),
                None => Ok(()),
            },
            Check::Condition { condition, status } => {
                if condition.is_empty() || !matches!(status.as_str(), "True" | "False" | "Unknown") {
                    return Err(format!("{at}: condition needs a type and a status of True, False or Unknown"));
                }
                Ok(())
            }
        }
    }
}

/// The value at the dotted `path` below `root` (array items by index); `None` when absent.
fn lookup<'a>(root: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut at = root.get(parts.next()?)?;
    for part in parts {
        at = match at {
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            other => other.get(part)?,
        };
    }
    Some(at)
}

/// A value as template text: strings as they are, other scalars, objects and arrays as JSON;
/// `None` for null.
fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    pub applied_message: String,
    pub available_message: String,
    #[serde(default)]
    pub data: Map<String, Value>,
}

/// The resource an event names, as read from the API.
#[derive(Debug, Clone, Deserialize)]
pub struct ResourceView {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub generation: i64,
    /// Set once the resource is being deleted.
    #[serde(default)]
    pub deleted_time: Option<String>,
    /// Every other member (`spec`, `labels`, …), for the templates; see [`Task::trim`].
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl ResourceView {
    /// The view without its other members.
    fn clone_scalars(&self) -> ResourceView {
        ResourceView {
            id: self.id.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            generation: self.generation,
            deleted_time: self.deleted_time.clone(),
            fields: Map::new(),
        }
    }

    /// The value at `path` below `resource.` (`spec.region`, `labels.<key>`: a label key may hold
    /// dots), as template text: strings as they are, other scalars as JSON, objects and arrays as
    /// JSON text; `None` when the resource has no (or a null) value there.
    fn value(&self, path: &str) -> Option<String> {
        as_text(match path.split_once('.') {
            Some(("labels", key)) => self.fields.get("labels")?.get(key)?,
            _ => lookup(&self.fields, path)?,
        })
    }
}

/// Values of the template variables for one resource.
pub struct Vars<'a> {
    pub resource: &'a ResourceView,
    pub adapter: &'a str,
}

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "resource.id" => self.resource.id.clone(),
            "resource.name" => self.resource.name.clone(),
            "resource.kind" => self.resource.kind.clone(),
            "resource.generation" => self.resource.generation.to_string(),
            "adapter.name" => self.adapter.to_string(),
            _ => return self.resource.value(name.strip_prefix("resource.")?),
        })
    }
}

/// The `{{ name }}` placeholders of `s`, or an error naming a malformed one.
fn placeholders(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| format!("unclosed '{{{{' in {s:?}"))?;
        out.push(after[..end].trim());
        rest = &after[end + 2..];
    }
    Ok(out)
}

/// Replaces the placeholders of `s` with their values; `Err` names the first variable the resource
/// has no value for.
pub fn try_render_str(s: &str, vars: &Vars<'_>) -> Result<String, String> {
    fill(s, |name| vars.get(name).ok_or_else(|| name.to_string()))
}

/// [`try_render_str`] with an empty value for a missing one (report messages and data).
pub fn render_str(s: &str, vars: &Vars<'_>) -> String {
    fill(s, |name| Ok::<_, String>(vars.get(name).unwrap_or_default())).unwrap_or_default()
}

/// `s` with each `{{ name }}` replaced by `value(name)`; the first error stops it.
fn fill(s: &str, value: impl Fn(&str) -> Result<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push_str(&value(after[..end].trim())?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Renders every string (keys included) of a JSON value; `Err` names the first variable the
/// resource has no value for (the objects are then not applied).
pub fn try_render(v: &Value, vars: &Vars<'_>) -> Result<Value, String> {
    render_with(v, &|s| try_render_str(s, vars))
}

/// [`try_render`] with an empty value for a missing one (report data).
pub fn render(v: &Value, vars: &Vars<'_>) -> Value {
    render_with(v, &|s| Ok(render_str(s, vars))).unwrap_or_default()
}

/// `v` with every string (keys included) passed through `string`; the first error stops it.
fn render_with(v: &Value, string: &dyn Fn(&str) -> Result<String, String>) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(string(s)?),
        Value::Array(a) => Value::Array(a.iter().map(|x| render_with(x, string)).collect::<Result<_, _>>()?),
        Value::Object(m) => Value::Object(
            m.iter().map(|(k, x)| Ok((string(k)?, render_with(x, string)?))).collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Checks every placeholder of `v` (for a task on `collection`); collects the paths below
/// `resource.` that are not fixed variables into `paths`.
fn check_templates(v: &Value, at: &str, collection: &str, paths: &mut Vec<String>) -> Result<(), String> {
    match v {
        Value::String(s) => check_placeholders(s, at, collection, paths),
        Value::Array(a) => {
            a.iter().enumerate().try_for_each(|(i, x)| check_templates(x, &format!("{at}[{i}]"), collection, paths))
        }
        Value::Object(m) => m.iter().try_for_each(|(k, x)| {
            check_placeholders(k, at, collection, paths)?;
            check_templates(x, &format!("{at}.{k}"), collection, paths)
        }),
        _ => Ok(()),
    }
}

/// [`check_templates`] for one string.
fn check_placeholders(s: &str, at: &str, collection: &str, paths: &mut Vec<String>) -> Result<(), String> {
    for name in placeholders(s).map_err(|e| format!("{at}: {e}"))? {
        if let Some(why) = unknown_variable(name, collection) {
            return Err(format!("{at}: {why}"));
        }
        if !VARIABLES.contains(&name)
            && let Some(path) = name.strip_prefix("resource.")
        {
            paths.push(path.to_string());
        }
    }
    Ok(())
}

impl Task {
    /// Parses and validates a task; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, String> {
        let mut task: Task = serde_yaml::from_str(text).map_err(|e| format!("task {origin}: {e}"))?;
        task.ready = task.take_ready_rules().map_err(|e| format!("task {origin}: {e}"))?;
        task.paths = task.validate().map_err(|e| format!("task {origin}: {e}"))?;
        Ok(task)
    }

    /// Takes each object's `ready:` rule out of it (the object is applied without it).
    fn take_ready_rules(&mut self) -> Result<Vec<Option<Check>>, String> {
        let field_ok = |f: &str| {
            (f.is_empty() || f.split('.').any(str::is_empty))
                .then(|| format!("{f:?} is not a dotted path into the object (status.phase)"))
        };
        self.objects
            .iter_mut()
            .enumerate()
            .map(|(i, obj)| {
                let Some(rule) = obj.as_object_mut().and_then(|o| o.remove("ready")) else { return Ok(None) };
                let at = format!("objects[{i}].ready");
                if rule.to_string().contains("{{") {
                    return Err(format!("{at}: a ready: rule is read from the live object as written; templates are not rendered in it"));
                }
                let check: Check = serde_json::from_value(rule).map_err(|_| {
                    format!("{at}: expected {{condition: <type>, status: True|False|Unknown}} or {{field: <path>, equals: <value>}}")
                })?;
                check.validate(&at, field_ok)?;
                Ok(Some(check))
            })
            .collect()
    }

    /// Why the applied objects are not all ready yet (the first object that is not, and why), or
    /// `None` when they are: an object without a `ready:` rule is ready once applied. `live` holds
    /// the objects as the apiserver returned or shows them, in the task's order.
    pub fn waiting(&self, rendered: &[Value], live: &[Value]) -> Option<String> {
        self.ready.iter().zip(rendered.iter().zip(live)).find_map(|(rule, (want, live))| {
            let why = rule.as_ref()?.unready(live)?;
            Some(format!("waiting for {}: {why}", describe(want)))
        })
    }

    /// Whether any object has a `ready:` rule (the adapter then follows readiness changes).
    pub fn has_ready_rules(&self) -> bool {
        self.ready.iter().any(Option::is_some)
    }

    /// `resource` with only the members its templates read (what the adapter keeps in memory for
    /// the resources it watches: a 64 KiB spec is not kept for a task that reads one field of it).
    pub fn trim(&self, resource: &ResourceView) -> ResourceView {
        let mut kept = Map::new();
        for path in &self.paths {
            let (root, rest) = path.split_once('.').unwrap_or((path.as_str(), ""));
            let Some(value) = resource.fields.get(root) else { continue };
            // What is kept of the root: a label whole (its key may hold dots), a spec path's
            // top-level member (enough to bound it), anything else (or a whole spec or label set) all.
            let member = match root {
                "labels" => rest,
                "spec" => rest.split('.').next().unwrap_or_default(),
                _ => "",
            };
            if member.is_empty() {
                kept.insert(root.to_string(), value.clone());
            } else if let Some(v) = value.get(member)
                && let Some(map) = kept.entry(root).or_insert_with(|| Value::Object(Map::new())).as_object_mut()
            {
                map.insert(member.to_string(), v.clone());
            }
        }
        ResourceView { fields: kept, ..resource.clone_scalars() }
    }

    /// The task in `path`, or the built-in landing-zone task.
    pub fn load(path: Option<&Path>) -> Result<Self, String> {
        match path {
            None => Task::parse(LANDING_ZONE, "landing-zone (built in)"),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| format!("task file {}: {e}", p.display()))?;
                Task::parse(&text, &p.display().to_string())
            }
        }
    }

    /// Checks the task; returns the resource paths its templates read.
    fn validate(&self) -> Result<Vec<String>, String> {
        let mut paths = Vec::new();
        if !matches!(self.resource.as_str(), "clusters" | "nodepools") {
            return Err(format!("resource {:?} is not clusters or nodepools", self.resource));
        }
        if self.objects.is_empty() {
            return Err("objects: at least one object is needed".into());
        }
        for (i, obj) in self.objects.iter().enumerate() {
            let at = format!("objects[{i}]");
            let text = |key: &str| obj.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
            let api_version = text("apiVersion").ok_or_else(|| format!("{at}: apiVersion is required"))?;
            text("kind").ok_or_else(|| format!("{at}: kind is required"))?;
            if api_version.split('/').count() > 2 {
                return Err(format!("{at}: apiVersion {api_version:?} is not group/version or version"));
            }
            let name = obj.pointer("/metadata/name").and_then(Value::as_str).filter(|s| !s.is_empty());
            name.ok_or_else(|| format!("{at}: metadata.name is required"))?;
            check_templates(obj, &at, &self.resource, &mut paths)?;
        }
        for (i, p) in self.when.iter().enumerate() {
            p.validate(&format!("when[{i}]"), |field| unknown_variable(field, &self.resource))?;
        }
        let report = [
            (Value::String(self.report.applied_message.clone()), "report.applied_message"),
            (Value::String(self.report.available_message.clone()), "report.available_message"),
            (Value::Object(self.report.data.clone()), "report.data"),
        ];
        for (v, at) in report {
            check_templates(&v, at, &self.resource, &mut paths)?;
        }
        paths.sort();
        paths.dedup();
        Ok(paths)
    }
}

/// The group, version and kind of a rendered object.
pub fn gvk(obj: &Value) -> GroupVersionKind {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    GroupVersionKind::gvk(group, version, obj["kind"].as_str().unwrap_or_default())
}

/// Kubernetes access for a task: resolves kinds once (discovery) and applies or removes objects.
pub struct Objects {
    client: Client,
    field_manager: String,
    kinds: Mutex<HashMap<GroupVersionKind, (ApiResource, bool)>>,
}

impl Objects {
    pub fn new(client: Client, field_manager: &str) -> Self {
        Objects { client, field_manager: field_manager.into(), kinds: Mutex::new(HashMap::new()) }
    }

    /// The API resource of a kind and whether it is namespaced (discovery, once per kind).
    pub async fn resource(&self, gvk: &GroupVersionKind) -> Result<(ApiResource, bool), kube::Error> {
        if let Some(hit) = self.kinds.lock().ok().and_then(|k| k.get(gvk).cloned()) {
            return Ok(hit);
        }
        let (ar, caps) = discovery::pinned_kind(&self.client, gvk).await?;
        let entry = (ar, caps.scope == Scope::Namespaced);
        if let Ok(mut k) = self.kinds.lock() {
            k.insert(gvk.clone(), entry.clone());
        }
        Ok(entry)
    }

    /// The API of a rendered object and its name.
    async fn api(&self, obj: &Value) -> Result<(Api<DynamicObject>, String), kube::Error> {
        let (resource, namespaced) = self.resource(&gvk(obj)).await?;
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let api = match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
            Some(ns) if namespaced => Api::namespaced_with(self.client.clone(), ns, &resource),
            _ if namespaced => Api::default_namespaced_with(self.client.clone(), &resource),
            _ => Api::all_with(self.client.clone(), &resource),
        };
        Ok((api, name))
    }

    /// Server-side applies the rendered objects in order; the objects as the apiserver returned them.
    pub async fn apply(&self, objects: &[Value]) -> Result<Vec<Value>, kube::Error> {
        let params = PatchParams::apply(&self.field_manager).force();
        let mut live = Vec::with_capacity(objects.len());
        for obj in objects {
            let (api, name) = self.api(obj).await?;
            let applied =
                api.patch(&name, &params, &Patch::Apply(obj)).instrument(kube_span("apply", obj, &name)).await?;
            live.push(serde_json::to_value(applied).unwrap_or_default());
        }
        Ok(live)
    }

    /// Asks for the rendered objects to be deleted, in reverse order (one already gone is fine);
    /// does not wait for them to go — a Namespace is emptied by the controller-manager first.
    pub async fn delete(&self, objects: &[Value]) -> Result<(), kube::Error> {
        for obj in objects.iter().rev() {
            let (api, name) = self.api(obj).await?;
            match api.delete(&name, &DeleteParams::background()).instrument(kube_span("delete", obj, &name)).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The live state of each rendered object (`None`: it does not exist).
    pub async fn observe(&self, objects: &[Value]) -> Result<Vec<Option<Value>>, kube::Error> {
        let mut live = Vec::with_capacity(objects.len());
        for obj in objects {
            let (api, name) = self.api(obj).await?;
            live.push(api.get_opt(&name).await?.map(|o| serde_json::to_value(o).unwrap_or_default()));
        }
        Ok(live)
    }

    /// Whether every rendered object is gone.
    pub async fn gone(&self, objects: &[Value]) -> Result<bool, kube::Error> {
        Ok(self.observe(objects).await?.iter().all(Option::is_none))
    }
}

/// The span of one Kubernetes call on a rendered object (none when tracing is off).
fn kube_span(verb: &'static str, obj: &Value, name: &str) -> tracing::Span {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    hyperfleet_common::trace_span!(
        "kubernetes",
        otel.name = %format!("{verb} {kind}"),
        otel.kind = "client",
        k8s.verb = verb,
        k8s.kind = kind,
        k8s.name = name,
    )
}

/// The label naming the adapter that owns an object; its watches select on it.
pub const ADAPTER_LABEL: &str = "hyperfleet.io/adapter";
/// The label naming the API resource an object belongs to.
pub const RESOURCE_LABEL: &str = "hyperfleet.io/resource-id";

/// Marks a rendered object as the adapter's, for the resource `id` (labels [`ADAPTER_LABEL`] and
/// [`RESOURCE_LABEL`]), whatever the task says.
pub fn own(obj: &mut Value, adapter: &str, id: &str) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        let labels = meta.entry("labels").or_insert_with(|| Value::Object(Map::new()));
        if !labels.is_object() {
            *labels = Value::Object(Map::new());
        }
        if let Some(labels) = labels.as_object_mut() {
            labels.insert(ADAPTER_LABEL.into(), Value::String(adapter.into()));
            labels.insert(RESOURCE_LABEL.into(), Value::String(id.into()));
        }
    }
}

/// The kind and name of an object, for messages (`Namespace 0194-x`).
pub fn describe(obj: &Value) -> String {
    let field = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default();
    match field("/metadata/namespace") {
        "" => format!("{} {}", field("/kind"), field("/metadata/name")),
        ns => format!("{} {ns}/{}", field("/kind"), field("/metadata/name")),
    }
}

/// Whether the live object `live` still holds everything the adapter applied (`wanted`): every
/// field of `wanted` is in `live` with the same value; what others add is not drift.
pub fn holds(live: &Value, wanted: &Value) -> bool {
    match (live, wanted) {
        (Value::Object(l), Value::Object(w)) => w.iter().all(|(k, v)| l.get(k).is_some_and(|x| holds(x, v))),
        (Value::Array(l), Value::Array(w)) => l.len() == w.len() && l.iter().zip(w).all(|(x, v)| holds(x, v)),
        (l, w) => l == w,
    }
}

/// Whether `live` (a watched object) is the one `wanted` renders: same kind and name, and the
/// same namespace when `wanted` names one.
pub fn same_object(live: &Value, wanted: &Value) -> bool {
    let field = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
    field(live, "/kind") == field(wanted, "/kind")
        && field(live, "/apiVersion") == field(wanted, "/apiVersion")
        && field(live, "/metadata/name") == field(wanted, "/metadata/name")
        && (field(wanted, "/metadata/namespace").is_none()
            || field(live, "/metadata/namespace") == field(wanted, "/metadata/namespace"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ResourceView {
        ResourceView {
            id: "0194-x".into(),
            kind: "Cluster".into(),
            name: "prod".into(),
            generation: 4,
            deleted_time: None,
            fields: serde_json::json!({
                "spec": {"region": "eu-west-1", "nodes": 3, "network": {"cidr": "10.0.0.0/16"}, "big": {"x": 1}},
                "labels": {"team": "a", "hyperfleet.io/tier": "gold"},
                "href": "/api/hyperfleet/v1/clusters/0194-x"
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        }
    }

    #[test]
    fn templates_read_any_field_and_name_what_is_missing() {
        let c = cluster();
        let vars = Vars { resource: &c, adapter: "lz" };
        let s = |t: &str| try_render_str(t, &vars);
        assert_eq!(s("{{resource.spec.region}}/{{resource.spec.nodes}}").as_deref(), Ok("eu-west-1/3"));
        assert_eq!(s("{{resource.spec.network.cidr}}").as_deref(), Ok("10.0.0.0/16"));
        assert_eq!(s("{{resource.labels.hyperfleet.io/tier}}").as_deref(), Ok("gold"), "label keys hold dots");
        assert_eq!(s("{{resource.spec.network}}").as_deref(), Ok(r#"{"cidr":"10.0.0.0/16"}"#));
        assert_eq!(s("{{resource.href}}").as_deref(), Ok("/api/hyperfleet/v1/clusters/0194-x"));
        assert_eq!(s("x-{{resource.spec.zone}}"), Err("resource.spec.zone".to_string()));
        let obj = serde_json::json!({"metadata": {"labels": {"region": "{{resource.spec.absent}}"}}});
        assert_eq!(try_render(&obj, &vars), Err("resource.spec.absent".to_string()));
        assert_eq!(render_str("[{{resource.spec.zone}}]", &vars), "[]", "messages render a missing value empty");
    }

    #[test]
    fn variables_that_can_never_have_a_value_are_refused_at_start() {
        let task = |name: &str, collection: &str| {
            format!(
                "resource: {collection}\nobjects:\n  - {{apiVersion: v1, kind: ConfigMap, metadata: {{name: x, labels: {{a: \"{name}\"}}}}}}\nreport: {{applied_message: a, available_message: b}}\n"
            )
        };
        for bad in ["{{resource.spec.}}", "{{resource.status.x}}", "{{resource.owner_references.id}}", "{{cluster.id}}"]
        {
            let e = Task::parse(&task(bad, "clusters"), "t").expect_err(bad);
            assert!(e.contains("resource.spec.<path>"), "{bad}: {e}");
        }
        let ok = Task::parse(&task("{{resource.owner_references.id}}-{{resource.spec.a.b}}", "nodepools"), "t")
            .expect("nodepool");
        assert_eq!(ok.paths, ["owner_references.id", "spec.a.b"]);
    }

    #[test]
    fn preconditions_say_why_they_do_not_hold() {
        let mut c = cluster();
        c.fields.insert(
            "status".into(),
            serde_json::json!({"conditions": [{"type": "LandingZoneSuccessful", "status": "False"}]}),
        );
        let when: Vec<Check> = serde_yaml::from_str(
            "- {condition: LandingZoneSuccessful}\n- {field: resource.labels.team, equals: a}\n- {field: resource.spec.zone}\n",
        )
        .expect("when");
        assert_eq!(when[0].unmet(&c).as_deref(), Some("condition LandingZoneSuccessful is False, not True"));
        assert_eq!(when[1].unmet(&c), None);
        assert_eq!(when[2].unmet(&c).as_deref(), Some("resource.spec.zone is not set"));
        c.fields["status"]["conditions"][0]["status"] = "True".into();
        assert_eq!(when[0].unmet(&c), None);
        let bad = "resource: clusters\nwhen: [{field: resource.nope}]\nobjects:\n  - {apiVersion: v1, kind: Namespace, metadata: {name: x}}\nreport: {applied_message: a, available_message: b}\n";
        assert!(Task::parse(bad, "t").expect_err("bad field").contains("when[0].field"));
    }

    #[test]
    fn ready_rules_are_taken_out_of_the_objects_and_read_from_their_live_state() {
        let text = r#"
resource: clusters
objects:
  - {apiVersion: v1, kind: Namespace, metadata: {name: "{{resource.id}}"}, ready: {field: status.phase, equals: Active}}
  - {apiVersion: batch/v1, kind: Job, metadata: {name: j, namespace: "{{resource.id}}"}, ready: {condition: Complete}}
  - {apiVersion: v1, kind: ConfigMap, metadata: {name: c, namespace: "{{resource.id}}"}}
  - {apiVersion: apps/v1, kind: Deployment, metadata: {name: d, namespace: x}, ready: {field: status.readyReplicas, equals: 2}}
report: {applied_message: a, available_message: b}
"#;
        let task = Task::parse(text, "t").expect("task");
        assert!(task.objects.iter().all(|o| o.get("ready").is_none()), "applied without the rule");
        assert!(task.has_ready_rules() && task.ready[2].is_none());
        let c = cluster();
        let rendered: Vec<Value> =
            task.objects.iter().map(|o| render(o, &Vars { resource: &c, adapter: "lz" })).collect();
        let mut live = rendered.clone();
        live[0]["status"] = serde_json::json!({"phase": "Active"});
        live[3]["status"] = serde_json::json!({"readyReplicas": 2});
        assert_eq!(
            task.waiting(&rendered, &live).as_deref(),
            Some("waiting for Job 0194-x/j: condition Complete is not reported yet (wanted True)")
        );
        live[1]["status"] = serde_json::json!({"conditions": [{"type": "Complete", "status": "False"}]});
        assert!(task.waiting(&rendered, &live).is_some_and(|w| w.ends_with("condition Complete is False, not True")));
        live[1]["status"]["conditions"][0]["status"] = "True".into();
        assert_eq!(task.waiting(&rendered, &live), None, "every rule holds");
        live[3]["status"]["readyReplicas"] = 1.into();
        assert_eq!(
            task.waiting(&rendered, &live).as_deref(),
            Some(r#"waiting for Deployment x/d: status.readyReplicas is "1", not "2""#)
        );
        assert!(!Task::load(None).expect("built in").has_ready_rules());

        let bad = |rule: &str| {
            let text = format!(
                "resource: clusters\nobjects:\n  - {{apiVersion: v1, kind: Namespace, metadata: {{name: x}}, ready: {rule}}}\nreport: {{applied_message: a, available_message: b}}\n"
            );
            Task::parse(&text, "t").expect_err(rule)
        };
        assert!(bad("{condition: Complete, status: Yes}").contains("objects[0].ready: condition needs"));
        assert!(bad("{field: status..phase}").contains("objects[0].ready.field"));
        assert!(bad("{phase: Active}").contains("objects[0].ready: expected"));
        assert!(bad("{field: status.x, equals: [1]}").contains("objects[0].ready: expected"));
        assert!(bad("{field: status.x, equals: \"{{resource.spec.n}}\"}").contains("not rendered"));
    }

    #[test]
    fn the_kept_view_holds_only_what_the_templates_read() {
        let text = "resource: clusters\nobjects:\n  - {apiVersion: v1, kind: ConfigMap, metadata: {name: \"{{resource.spec.network.cidr}}\", labels: {t: \"{{resource.labels.hyperfleet.io/tier}}\"}}}\nreport: {applied_message: a, available_message: b}\n";
        let task = Task::parse(text, "t").expect("task");
        let kept = task.trim(&cluster());
        assert_eq!(
            Value::Object(kept.fields.clone()),
            serde_json::json!({"spec": {"network": {"cidr": "10.0.0.0/16"}}, "labels": {"hyperfleet.io/tier": "gold"}})
        );
        let vars = Vars { resource: &kept, adapter: "lz" };
        assert_eq!(try_render(&task.objects[0], &vars).expect("renders")["metadata"]["name"], "10.0.0.0/16");
        assert_eq!(
            Task::load(None).expect("built in").trim(&cluster()).fields.len(),
            0,
            "the landing zone keeps nothing more"
        );
        let whole = text.replace("{{resource.labels.hyperfleet.io/tier}}", "{{resource.labels}}");
        let kept = Task::parse(&whole, "t").expect("task").trim(&cluster());
        assert_eq!(kept.fields["labels"], serde_json::json!({"team": "a", "hyperfleet.io/tier": "gold"}));
    }

    #[test]
    fn the_built_in_task_renders_the_landing_zone() {
        let task = Task::load(None).expect("built-in task");
        let c = cluster();
        let vars = Vars { resource: &c, adapter: "landing-zone" };
        let objects: Vec<Value> = task.objects.iter().map(|o| render(o, &vars)).collect();
        let ns = &objects[0];
        assert_eq!((ns["kind"].as_str(), ns["metadata"]["name"].as_str()), (Some("Namespace"), Some("0194-x")));
        assert_eq!(ns["metadata"]["labels"]["hyperfleet.io/cluster-id"], "0194-x");
        assert_eq!(ns["metadata"]["labels"]["hyperfleet.io/cluster-name"], "prod");
        assert_eq!(ns["metadata"]["labels"]["app.kubernetes.io/managed-by"], "hyperfleet-adapter");
        assert_eq!(ns["metadata"]["annotations"]["hyperfleet.io/generation"], "4");
        let sa = &objects[1];
        assert_eq!(
            (sa["kind"].as_str(), sa["metadata"]["namespace"].as_str()),
            (Some("ServiceAccount"), Some("0194-x"))
        );
        assert_eq!(render(&Value::Object(task.report.data.clone()), &vars)["namespace"], "0194-x");
        assert_eq!(gvk(ns), GroupVersionKind::gvk("", "v1", "Namespace"));
    }

    #[test]
    fn the_chart_nodepool_task_puts_the_spec_in_the_cluster_namespace() {
        let text = include_str!("../../charts/hyperfleet-system/files/nodepool-configmap.yaml");
        let task = Task::parse(text, "nodepool-configmap.yaml").expect("the chart's nodepool task");
        let np = ResourceView {
            id: "0194-np".into(),
            kind: "NodePool".into(),
            name: "workers".into(),
            generation: 2,
            deleted_time: None,
            fields:
                serde_json::json!({"spec": {"replicas": 3}, "owner_references": {"id": "0194-x", "kind": "Cluster"}})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
        };
        let kept = task.trim(&np);
        let map = try_render(&task.objects[0], &Vars { resource: &kept, adapter: "nodepool-config" }).expect("renders");
        assert_eq!(map["metadata"]["namespace"], "0194-x");
        assert_eq!(map["metadata"]["name"], "nodepool-0194-np");
        assert_eq!(map["data"]["spec.json"], r#"{"replicas":3}"#);
        assert!(Task::parse(&text.replace("nodepools", "clusters"), "t").is_err(), "owner_references: nodepools only");
    }

    #[test]
    fn bad_tasks_are_refused_with_the_place_and_the_problem() {
        let base = |objects: &str| {
            format!("resource: clusters\nobjects:\n{objects}\nreport: {{applied_message: a, available_message: b}}\n")
        };
        let err = |text: String| Task::parse(&text, "t.yaml").expect_err("must fail");
        assert!(
            err(base("  - {apiVersion: v1, kind: Namespace, metadata: {name: \"{{cluster.id}}\"}}"))
                .contains("objects[0].metadata.name: unknown variable {{cluster.id}}")
        );
        assert!(
            err(base("  - {apiVersion: v1, kind: Namespace, metadata: {name: \"{{resource.id\"}}"))
                .contains("unclosed")
        );
        assert!(err(base("  - {kind: Namespace, metadata: {name: x}}")).contains("objects[0]: apiVersion is required"));
        assert!(err(base("  - {apiVersion: v1, kind: Namespace, metadata: {}}")).contains("metadata.name is required"));
        assert!(err(base("  - {apiVersion: a/b/c, kind: X, metadata: {name: x}}")).contains("not group/version"));
        assert!(
            err("resource: clusters\nobjects: []\nreport: {applied_message: a, available_message: b}\n".into())
                .contains("at least one object")
        );
        assert!(
            err(base("  - {apiVersion: v1, kind: Namespace, metadata: {name: x}}").replace("clusters", "pods"))
                .contains("not clusters or nodepools")
        );
        assert!(
            err(format!("{}extra: 1\n", base("  - {apiVersion: v1, kind: Namespace, metadata: {name: x}}")))
                .contains("unknown field `extra`")
        );
        assert!(err("objects: [".into()).starts_with("task t.yaml:"));
    }

    #[test]
    fn drift_is_a_field_the_adapter_set_that_differs_or_is_missing() {
        let task = Task::load(None).expect("built-in task");
        let c = cluster();
        let mut want = render(&task.objects[0], &Vars { resource: &c, adapter: "lz" });
        own(&mut want, "lz", &c.id);
        assert_eq!(want["metadata"]["labels"][ADAPTER_LABEL], "lz");
        assert_eq!(want["metadata"]["labels"][RESOURCE_LABEL], "0194-x");
        let mut live = want.clone();
        live["metadata"]["labels"]["kubernetes.io/metadata.name"] = "0194-x".into();
        live["metadata"]["uid"] = "u".into();
        live["status"] = serde_json::json!({"phase": "Active"});
        assert!(holds(&live, &want), "fields others add are not drift");
        assert!(same_object(&live, &want));
        live["metadata"]["labels"]["hyperfleet.io/cluster-name"] = "tampered".into();
        assert!(!holds(&live, &want), "a changed label is");
        live["metadata"]["labels"].as_object_mut().expect("labels").remove("hyperfleet.io/cluster-name");
        assert!(!holds(&live, &want), "so is a removed one");
        let mut other = want.clone();
        other["metadata"]["name"] = "another".into();
        assert!(!same_object(&other, &want));
        assert_eq!(describe(&want), "Namespace 0194-x");
    }

    #[test]
    fn rendering_replaces_every_placeholder() {
        let c = cluster();
        let vars = Vars { resource: &c, adapter: "lz" };
        assert_eq!(render_str("{{ resource.name }}-{{adapter.name}}/{{resource.generation}}", &vars), "prod-lz/4");
        assert_eq!(render_str("plain", &vars), "plain");
    }
}
