//! The adapter's status report (reference §5.5) and its PUT to the API.

use crate::{Error, Worker, api_error, task::ResourceView};

/// A condition message cut to its first 1 000 characters.
fn bounded(message: String) -> String {
    message.chars().take(1000).collect()
}

/// One condition: type, status, reason, message.
type Condition = (&'static str, &'static str, &'static str, String);

/// `Available` of applied objects: True with `message`, or False naming what is awaited.
fn available(message: String, waiting: Option<String>) -> Condition {
    match waiting {
        None => ("Available", "True", "ResourcesAvailable", message),
        Some(why) => ("Available", "False", "ResourcesNotReady", bounded(why)),
    }
}

/// `Finalized` of a resource that is not being deleted.
fn not_deleting(message: &str) -> Condition {
    ("Finalized", "False", "NotDeleting", message.into())
}

/// The adapter's status report (reference §5.5): Applied, Available, Health, Finalized.
pub(crate) struct Report {
    conditions: [Condition; 4],
}

impl Report {
    /// The reason of its `Applied` condition (what the report says happened).
    pub(crate) fn reason(&self) -> &'static str {
        self.conditions[0].2
    }
    /// The objects are applied; `waiting` says which is not ready yet (a `ready:` rule), if one is.
    pub(crate) fn applied(applied: String, available_message: String, waiting: Option<String>) -> Self {
        Report {
            conditions: [
                ("Applied", "True", "ResourcesApplied", applied),
                available(available_message, waiting),
                ("Health", "True", "Healthy", "reconciled without errors".into()),
                not_deleting("the resource is not being deleted"),
            ],
        }
    }

    /// Whether the report says the objects are available.
    pub(crate) fn available(&self) -> bool {
        self.conditions[1].1 == "True"
    }
    pub(crate) fn finalized(resource: &ResourceView) -> Self {
        Report {
            conditions: [
                ("Applied", "False", "ResourcesDeleted", format!("the objects of {} are deleted", resource.id)),
                ("Available", "False", "Deleted", "the objects have been removed".into()),
                ("Health", "True", "Healthy", "removed without errors".into()),
                ("Finalized", "True", "CleanupConfirmed", format!("the objects of {} are gone", resource.id)),
            ],
        }
    }
    /// Nothing was applied, for `reason` (`message` on `Applied` and on `Health`, which says
    /// `health` as status and reason).
    fn nothing_applied(
        reason: &'static str,
        message: String,
        health: (&'static str, &'static str),
        finalized: &str,
    ) -> Self {
        Report {
            conditions: [
                ("Applied", "False", reason, message.clone()),
                ("Available", "False", reason, "nothing was applied".into()),
                ("Health", health.0, health.1, message),
                not_deleting(finalized),
            ],
        }
    }
    /// A `when:` precondition does not hold (`why`): nothing applied, nothing wrong.
    pub(crate) fn precondition_unmet(why: &str) -> Self {
        let message = bounded(format!("waiting: {why}; nothing applied"));
        Report::nothing_applied("PreconditionNotMet", message, ("True", "Healthy"), "the resource is not being deleted")
    }
    /// The resource has no value for a template `variable`: nothing applied.
    pub(crate) fn missing_value(variable: &str) -> Self {
        let message = bounded(format!("the resource has no value for {{{{{variable}}}}}; nothing applied"));
        let unhealthy = ("False", "TemplateValueMissing");
        Report::nothing_applied("TemplateValueMissing", message, unhealthy, "the objects were not applied")
    }
    /// Objects restored after a change out of band (`what`: which, and what happened to them);
    /// `waiting` as for [`Report::applied`].
    pub(crate) fn restored(what: &str, waiting: Option<String>) -> Self {
        let message = bounded(format!("restored after a change out of band: {what}"));
        Report {
            conditions: [
                ("Applied", "True", "ResourcesRestored", message.clone()),
                available("the objects exist again".into(), waiting),
                ("Health", "True", "Healthy", message),
                not_deleting("the resource is not being deleted"),
            ],
        }
    }
    pub(crate) fn cleanup_in_progress(resource: &ResourceView) -> Self {
        Report {
            conditions: [
                ("Applied", "True", "DeletionRequested", format!("the objects of {} are terminating", resource.id)),
                ("Available", "False", "Deleting", "the objects are being removed".into()),
                ("Health", "True", "Healthy", "waiting for the objects to terminate".into()),
                ("Finalized", "False", "CleanupInProgress", format!("objects of {} still exist", resource.id)),
            ],
        }
    }
    pub(crate) fn failed(e: &Error, deleting: bool) -> Self {
        let message = bounded(e.to_string());
        let (step, reason) = if deleting { ("deletion", "DeleteFailed") } else { ("apply", "ApplyFailed") };
        let health = if e.is_transient() { "KubernetesUnavailable" } else { "KubernetesError" };
        Report {
            conditions: [
                ("Applied", "False", reason, message.clone()),
                ("Available", "False", reason, format!("the {step} did not complete")),
                ("Health", "False", health, message),
                ("Finalized", "False", "AdapterUnhealthy", format!("the {step} did not complete")),
            ],
        }
    }
}

/// PUTs the report at the resource's generation; the API's answer: 201 (stored), 204 (discarded
/// as stale) or 404 (the resource is gone).
pub(crate) async fn put_status(
    worker: &Worker,
    resource: &ResourceView,
    report: &Report,
    data: &serde_json::Value,
) -> Result<u16, Error> {
    let conditions: Vec<serde_json::Value> = report
        .conditions
        .iter()
        .map(|(kind, status, reason, message)| {
            serde_json::json!({"type": kind, "status": status, "reason": reason, "message": message})
        })
        .collect();
    let body = serde_json::json!({
        "adapter": worker.cfg.name,
        "observed_generation": resource.generation,
        "observed_time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "conditions": conditions,
        "data": data,
    });
    worker.api.put_status(&worker.task.resource, &resource.id, &body).await.map_err(|e| api_error(&worker.api, e))
}
