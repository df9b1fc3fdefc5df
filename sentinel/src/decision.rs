//! Whether a resource needs its adapters now (SPEC §3, reference §3.3). Pure: the clock and the
//! sentinel's memory of what it already published are parameters.
//!
//! In order:
//! 1. **new** — generation 1 and no adapter has reported yet;
//! 2. **generation_changed** — the generation is ahead of what some adapter last reported
//!    (a PATCH or DELETE the adapters have not seen);
//! 3. **not_ready_max_age** — not `Reconciled` and its reference time (`Reconciled.last_updated_time`:
//!    the oldest current report, or the last change when none) is older than `max_age_not_ready`;
//! 4. **ready_max_age** — `Reconciled` and the reference time is older than `max_age_ready`.
//!
//! Rules 1 and 2 fire at once, but not twice for the same generation within `max_age_not_ready`
//! (the sentinel remembers what it published), so a poll or a burst of changes does not flood the
//! adapters while they work; rules 3 and 4 are the level-triggered safety net.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// Conditions the API computes itself; every other condition is an adapter's `<Name>Successful`.
const API_CONDITIONS: &[&str] = &["Reconciled", "LastKnownReconciled"];

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    #[serde(default)]
    pub observed_generation: i64,
    pub last_updated_time: Option<DateTime<Utc>>,
}

/// What the decision reads of a resource.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub generation: i64,
    pub created_time: Option<DateTime<Utc>>,
    pub conditions: Vec<Condition>,
}

/// The sentinel's last confirmed event for a resource.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Published {
    pub generation: i64,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    New,
    GenerationChanged,
    NotReadyMaxAge,
    ReadyMaxAge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Rule 1 or 2 holds but this generation was published less than `max_age_not_ready` ago.
    RecentlyPublished,
    WithinMaxAgeNotReady,
    WithinMaxAgeReady,
}

pub type Decision = Result<Reason, Skip>;

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::GenerationChanged => "generation_changed",
            Reason::NotReadyMaxAge => "not_ready_max_age",
            Reason::ReadyMaxAge => "ready_max_age",
        }
    }
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::RecentlyPublished => "recently_published",
            Skip::WithinMaxAgeNotReady => "within_max_age_not_ready",
            Skip::WithinMaxAgeReady => "within_max_age_ready",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct MaxAge {
    pub not_ready: Duration,
    pub ready: Duration,
}

fn older_than(then: DateTime<Utc>, now: DateTime<Utc>, age: Duration) -> bool {
    (now - then).to_std().is_ok_and(|elapsed| elapsed > age)
}

pub fn decide(state: &State, last: Option<Published>, now: DateTime<Utc>, max: MaxAge) -> Decision {
    let reconciled = state.conditions.iter().find(|c| c.kind == "Reconciled");
    let adapters: Vec<&Condition> =
        state.conditions.iter().filter(|c| !API_CONDITIONS.contains(&c.kind.as_str())).collect();
    let edge = if state.generation <= 1 && adapters.is_empty() {
        Some(Reason::New)
    } else if adapters.is_empty() || adapters.iter().any(|c| c.observed_generation < state.generation) {
        Some(Reason::GenerationChanged)
    } else {
        None
    };
    if let Some(reason) = edge {
        return match last {
            Some(p) if p.generation == state.generation && !older_than(p.at, now, max.not_ready) => {
                Err(Skip::RecentlyPublished)
            }
            _ => Ok(reason),
        };
    }
    let is_reconciled = reconciled.is_some_and(|c| c.status == "True");
    let reference = reconciled.and_then(|c| c.last_updated_time).or(state.created_time);
    let (age, reason, skip) = if is_reconciled {
        (max.ready, Reason::ReadyMaxAge, Skip::WithinMaxAgeReady)
    } else {
        (max.not_ready, Reason::NotReadyMaxAge, Skip::WithinMaxAgeNotReady)
    };
    match reference {
        Some(t) if !older_than(t, now, age) => Err(skip),
        _ => Ok(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: MaxAge = MaxAge { not_ready: Duration::from_secs(10), ready: Duration::from_secs(1800) };

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
    }
    fn cond(kind: &str, status: &str, generation: i64, at: i64) -> Condition {
        Condition {
            kind: kind.into(),
            status: status.into(),
            observed_generation: generation,
            last_updated_time: Some(t(at)),
        }
    }
    fn state(generation: i64, conditions: Vec<Condition>) -> State {
        State { generation, created_time: Some(t(0)), conditions }
    }
    /// Freshly created: the API's own conditions, no adapter report.
    fn fresh() -> State {
        state(1, vec![cond("Reconciled", "False", 1, 0), cond("LastKnownReconciled", "False", 1, 0)])
    }
    /// Reconciled at `generation` by the landing-zone adapter, which reported at `at`.
    fn reconciled(generation: i64, adapter_generation: i64, at: i64) -> State {
        let status = if adapter_generation == generation { "True" } else { "False" };
        state(
            generation,
            vec![
                cond("Reconciled", status, generation, at),
                cond("LastKnownReconciled", "True", adapter_generation, at),
                cond("LandingZoneSuccessful", "True", adapter_generation, at),
            ],
        )
    }

    #[test]
    fn a_new_resource_is_published_at_once_then_debounced() {
        assert_eq!(decide(&fresh(), None, t(0), MAX), Ok(Reason::New));
        let published = Published { generation: 1, at: t(0) };
        assert_eq!(decide(&fresh(), Some(published), t(10), MAX), Err(Skip::RecentlyPublished), "exactly max age");
        assert_eq!(decide(&fresh(), Some(published), t(11), MAX), Ok(Reason::New));
        let no_conditions = State { generation: 1, created_time: None, conditions: vec![] };
        assert_eq!(decide(&no_conditions, None, t(0), MAX), Ok(Reason::New));
    }

    #[test]
    fn a_generation_ahead_of_the_adapters_is_published_at_once() {
        let patched = reconciled(2, 1, 5);
        assert_eq!(
            decide(&patched, Some(Published { generation: 1, at: t(4) }), t(6), MAX),
            Ok(Reason::GenerationChanged)
        );
        assert_eq!(
            decide(&patched, Some(Published { generation: 2, at: t(6) }), t(7), MAX),
            Err(Skip::RecentlyPublished)
        );
        assert_eq!(
            decide(&patched, Some(Published { generation: 2, at: t(6) }), t(17), MAX),
            Ok(Reason::GenerationChanged)
        );
        // Patched before any adapter reported.
        let mut early = fresh();
        early.generation = 2;
        assert_eq!(decide(&early, None, t(1), MAX), Ok(Reason::GenerationChanged));
        // One of two adapters behind.
        let mut mixed = reconciled(2, 2, 5);
        mixed.conditions.push(cond("DnsSuccessful", "True", 1, 5));
        assert_eq!(decide(&mixed, None, t(6), MAX), Ok(Reason::GenerationChanged));
    }

    #[test]
    fn not_reconciled_is_republished_after_max_age_not_ready() {
        let mut failing = reconciled(1, 1, 100);
        failing.conditions[0].status = "False".into();
        failing.conditions[2].status = "False".into();
        assert_eq!(decide(&failing, None, t(110), MAX), Err(Skip::WithinMaxAgeNotReady), "exactly max age");
        assert_eq!(decide(&failing, None, t(111), MAX), Ok(Reason::NotReadyMaxAge));
    }

    #[test]
    fn reconciled_is_republished_after_max_age_ready() {
        let ok = reconciled(3, 3, 100);
        assert_eq!(decide(&ok, None, t(101), MAX), Err(Skip::WithinMaxAgeReady));
        assert_eq!(decide(&ok, None, t(1900), MAX), Err(Skip::WithinMaxAgeReady), "exactly max age");
        assert_eq!(decide(&ok, None, t(1901), MAX), Ok(Reason::ReadyMaxAge));
    }

    #[test]
    fn a_missing_reference_time_falls_back_to_creation_or_publishes() {
        let mut s = reconciled(1, 1, 0);
        s.conditions[0].last_updated_time = None;
        s.conditions[0].status = "False".into();
        assert_eq!(decide(&s, None, t(5), MAX), Err(Skip::WithinMaxAgeNotReady), "created 5s ago");
        s.created_time = None;
        assert_eq!(decide(&s, None, t(5), MAX), Ok(Reason::NotReadyMaxAge), "nothing to wait for");
    }

    #[test]
    fn a_clock_behind_the_api_never_publishes_early() {
        let ok = reconciled(1, 1, 100);
        assert_eq!(decide(&ok, None, t(50), MAX), Err(Skip::WithinMaxAgeReady));
    }
}
