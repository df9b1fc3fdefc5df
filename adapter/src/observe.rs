//! The adapter's metrics: their `# HELP` texts and the series that start at zero.

use hyperfleet_common::cloudevent::EventError;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// The `status` values of `hyperfleet_adapter_events_processed_total`.
pub const EVENT_STATUSES: [&str; 4] = ["success", "failed", "skipped", "dead_lettered"];

/// Gives every metric the adapter exports its `# HELP` text (and unit), and starts the per-outcome
/// counters at 0 so that `increase()` over them sees the very first event; called once, right
/// after the recorder is installed.
pub fn describe_metrics() {
    describe_gauge!("hyperfleet_adapter_build_info", "Always 1; the labels name the running build.");
    describe_gauge!("hyperfleet_adapter_up", "1 while consuming from the queue, 0 while the broker is lost.");
    describe_counter!("hyperfleet_adapter_broker_errors_total", "Broker connections lost or refused.");
    describe_counter!(
        "hyperfleet_adapter_events_processed_total",
        "Events handled and acknowledged, by outcome (success, failed, skipped, dead_lettered)."
    );
    describe_histogram!(
        "hyperfleet_adapter_event_processing_duration_seconds",
        Unit::Seconds,
        "Time to handle one event, from delivery to acknowledgement."
    );
    describe_counter!(
        "hyperfleet_adapter_dead_letters_total",
        "Messages moved to the dead-letter queue because they are not reconcile events, by reason."
    );
    describe_histogram!(
        "hyperfleet_adapter_phase_duration_seconds",
        Unit::Seconds,
        "Time of one phase of the work on a resource, for an event or a watch settle, retries included: fetch (the API read), apply (applying or reading the objects), delete (deleting them and checking they are gone), report (the status PUT)."
    );
    describe_counter!("hyperfleet_adapter_retries_total", "Transient failures retried, by phase.");
    describe_counter!(
        "hyperfleet_adapter_api_auth_failures_total",
        "API requests refused with 401 or 403 (the bearer token missing, invalid or without permission)."
    );
    describe_counter!(
        "hyperfleet_adapter_errors_total",
        "Failures that outlasted the retries, by phase and error type."
    );
    describe_gauge!(
        "hyperfleet_adapter_resource_deletions_in_progress",
        Unit::Count,
        "Resources whose Kubernetes objects this adapter has asked to delete and that are not gone yet."
    );
    describe_counter!(
        "hyperfleet_adapter_resources_deleted_total",
        "Kubernetes objects deleted for resources being deleted."
    );
    describe_histogram!(
        "hyperfleet_adapter_resource_deletion_duration_seconds",
        Unit::Seconds,
        "Time from asking for a resource's Kubernetes objects to be deleted until they are gone."
    );
    describe_counter!(
        "hyperfleet_adapter_drift_repairs_total",
        "Objects of live resources restored after being deleted or changed out of band, by kind and change."
    );
    describe_counter!(
        "hyperfleet_adapter_watch_errors_total",
        "Failures of the watches of owned objects (retried with backoff), by kind."
    );
    describe_gauge!(
        "hyperfleet_adapter_watching",
        "1 while the watch of the owned objects of a kind is established, 0 while it is being (re)started or failing."
    );
    describe_counter!(
        "hyperfleet_adapter_readiness_changes_total",
        "Reports made because the objects' ready: rules changed their answer (by whether they are now available)."
    );
    describe_counter!(
        "hyperfleet_adapter_orphans_removed_total",
        "Objects removed because their resource was deleted while they were being applied."
    );
    metrics::counter!("hyperfleet_adapter_api_auth_failures_total").increment(0);
    metrics::counter!("hyperfleet_adapter_orphans_removed_total").increment(0);
    for available in ["true", "false"] {
        metrics::counter!("hyperfleet_adapter_readiness_changes_total", "available" => available).increment(0);
    }
    metrics::gauge!("hyperfleet_adapter_resource_deletions_in_progress").set(0.0);
    for status in EVENT_STATUSES {
        metrics::counter!("hyperfleet_adapter_events_processed_total", "status" => status).increment(0);
    }
    for reason in EventError::LABELS {
        metrics::counter!("hyperfleet_adapter_dead_letters_total", "reason" => reason).increment(0);
    }
}
