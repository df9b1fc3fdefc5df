//! The sentinel's metrics: their `# HELP` texts.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Gives every metric the sentinel exports its `# HELP` text (and unit); called once, right after
/// the recorder is installed. A metric named here appears in `/metrics` only once it has a value.
pub fn describe_metrics() {
    describe_gauge!(
        "hyperfleet_sentinel_last_successful_poll_timestamp_seconds",
        Unit::Seconds,
        "Unix time of the last poll that listed every resource from the API."
    );
    describe_histogram!(
        "hyperfleet_sentinel_poll_duration_seconds",
        Unit::Seconds,
        "Time of one successful poll: list, decide and publish."
    );
    describe_gauge!(
        "hyperfleet_sentinel_pending_resources",
        Unit::Count,
        "Resources the last poll found due for an event."
    );
    describe_counter!(
        "hyperfleet_sentinel_events_published_total",
        "Reconcile events published and confirmed by the broker, by reason."
    );
    describe_counter!("hyperfleet_sentinel_resources_skipped_total", "Resources that needed no event, by reason.");
    describe_counter!("hyperfleet_sentinel_publish_retries_total", "Events published again after a failed attempt.");
    describe_counter!("hyperfleet_sentinel_broker_errors_total", "Broker connections refused and publishes failed.");
    describe_counter!(
        "hyperfleet_sentinel_unroutable_total",
        "Events the broker returned because no queue is bound for their routing key (not published; retried)."
    );
    describe_counter!("hyperfleet_sentinel_api_errors_total", "Polls that failed to list resources from the API.");
    describe_counter!(
        "hyperfleet_sentinel_api_errors_by_type_total",
        "Polls that failed to list resources from the API, by error type."
    );
    describe_counter!(
        "hyperfleet_sentinel_api_auth_failures_total",
        "API requests (list pages and the change feed) refused with 401 or 403: the bearer token missing, invalid or without permission."
    );
    describe_counter!(
        "hyperfleet_sentinel_watch_reconnects_total",
        "Times the API's change feed was interrupted and followed again."
    );
    describe_gauge!("hyperfleet_sentinel_leader", "1 while this sentinel holds the leader Lease, 0 while it follows.");
}
