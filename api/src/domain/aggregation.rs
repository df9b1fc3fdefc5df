//! The aggregated status of a resource (behaviour reference §2.10), as a pure function of the
//! resource, its required adapters, their stored reports and the previous conditions.
//!
//! * `Reconciled` — every required adapter reported `Available=True` (or `Finalized=True` while the
//!   resource is being deleted) at the current generation.
//! * `LastKnownReconciled` — the sticky, cross-generation view: did all required adapters last agree
//!   on `Available=True`.
//! * `<Adapter>Successful` — one per required adapter that has a usable report, mirroring its
//!   `Available` condition.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A condition as stored on the resource and shown in `status.conditions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub observed_generation: i32,
    pub created_time: DateTime<Utc>,
    pub last_updated_time: DateTime<Utc>,
    pub last_transition_time: DateTime<Utc>,
}

/// A condition inside an adapter's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedCondition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub last_transition_time: DateTime<Utc>,
}

/// One adapter's stored report.
#[derive(Debug, Clone)]
pub struct Report {
    pub adapter: String,
    pub observed_generation: i32,
    pub conditions: Vec<ReportedCondition>,
    pub last_report_time: DateTime<Utc>,
}

impl Report {
    pub fn condition(&self, kind: &str) -> Option<&ReportedCondition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }
    fn is(&self, kind: &str, status: &str) -> bool {
        self.condition(kind).is_some_and(|c| c.status == status)
    }
}

/// Everything the aggregation looks at.
pub struct Input<'a> {
    pub generation: i32,
    /// The resource's `updated_time` (the last PATCH or DELETE).
    pub ref_time: DateTime<Utc>,
    pub deleting: bool,
    /// A child that is not being deleted exists.
    pub live_children: bool,
    pub required: &'a [String],
    pub reports: &'a [Report],
    pub previous: &'a [Condition],
}

/// A required adapter's usable report: at or below the current generation, with `Available`
/// True or False.
struct Snapshot<'a> {
    adapter: &'a str,
    available: &'a ReportedCondition,
    available_true: bool,
    finalized_true: bool,
    generation: i32,
    time: DateTime<Utc>,
}

pub const RECONCILED: &str = "Reconciled";
pub const LAST_KNOWN_RECONCILED: &str = "LastKnownReconciled";

/// `landing-zone` → `LandingZoneSuccessful`.
pub fn adapter_condition_type(adapter: &str) -> String {
    let mut out = String::new();
    for part in adapter.split('-') {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    out + "Successful"
}

fn list(names: &[&str]) -> String {
    format!("[{}]", names.join(", "))
}

/// Computes the conditions. A kind with no required adapters still has `Reconciled` and
/// `LastKnownReconciled` (the contract requires both): True, vacuously — nothing has to report —
/// except that `Reconciled` waits for live children while the resource is being deleted.
pub fn aggregate(input: &Input<'_>) -> Vec<Condition> {
    if input.required.is_empty() {
        return vacuous(input);
    }
    let snapshots: Vec<Option<Snapshot<'_>>> = input
        .required
        .iter()
        .map(|name| {
            let report = input.reports.iter().find(|r| &r.adapter == name)?;
            let available = report.condition("Available").filter(|c| c.status == "True" || c.status == "False")?;
            (report.observed_generation <= input.generation).then(|| Snapshot {
                adapter: name,
                available,
                available_true: available.status == "True",
                finalized_true: report.is("Finalized", "True"),
                generation: report.observed_generation,
                time: report.last_report_time,
            })
        })
        .collect();
    let prev = |kind: &str| input.previous.iter().find(|c| c.kind == kind);
    let mut out = vec![
        reconciled(input, &snapshots, prev(RECONCILED)),
        last_known(input, &snapshots, prev(LAST_KNOWN_RECONCILED)),
    ];
    for snap in snapshots.iter().flatten() {
        let kind = adapter_condition_type(snap.adapter);
        let before = prev(&kind);
        let status = snap.available.status.clone();
        out.push(Condition {
            created_time: before.map_or(snap.time, |p| p.created_time),
            last_transition_time: match before {
                Some(p) if p.status == status => p.last_transition_time,
                _ => snap.time,
            },
            kind,
            status,
            reason: snap.available.reason.clone(),
            message: snap.available.message.clone(),
            observed_generation: snap.generation,
            last_updated_time: snap.time,
        });
    }
    out
}

fn reconciled(input: &Input<'_>, snaps: &[Option<Snapshot<'_>>], prev: Option<&Condition>) -> Condition {
    let g = input.generation;
    let met = |s: &Option<Snapshot<'_>>| {
        s.as_ref()
            .is_some_and(|s| s.generation == g && if input.deleting { s.finalized_true } else { s.available_true })
    };
    let all_met = snaps.iter().all(met);
    let status = all_met && !(input.deleting && input.live_children);
    let (reason, message) = if status {
        (
            "ReconciledAll",
            "All required adapters reported Available=True or Finalized=True at the current generation".to_string(),
        )
    } else if all_met {
        (
            "ReconciledWaitingForChildren",
            "Deletion in progress. All required adapters reported Finalized=True but child resources still exist"
                .to_string(),
        )
    } else {
        let mut missing: Vec<&str> =
            input.required.iter().zip(snaps).filter(|(_, s)| !met(s)).map(|(n, _)| n.as_str()).collect();
        let mut reporting: Vec<&str> = snaps.iter().flatten().map(|s| s.adapter).collect();
        missing.sort_unstable();
        reporting.sort_unstable();
        let what = if input.deleting { "Finalized=True" } else { "Available=True" };
        (
            "ReconciledMissingAdapters",
            format!(
                "Required adapters not reporting {what}: {}. Currently reporting: {}",
                list(&missing),
                list(&reporting)
            ),
        )
    };
    let last_updated =
        snaps.iter().flatten().filter(|s| s.generation == g).map(|s| s.time).min().unwrap_or(input.ref_time);
    let status = bool_status(status);
    let last_transition = match prev {
        None => last_updated,
        Some(p) if p.status == status => p.last_transition_time,
        Some(p) if p.status == "True" && g > p.observed_generation => input.ref_time,
        Some(_) => last_updated,
    };
    Condition {
        kind: RECONCILED.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        observed_generation: g,
        created_time: prev.map_or(last_updated, |p| p.created_time),
        last_updated_time: last_updated,
        last_transition_time: last_transition,
    }
}

fn last_known(input: &Input<'_>, snaps: &[Option<Snapshot<'_>>], prev: Option<&Condition>) -> Condition {
    let prev_true = prev.is_some_and(|p| p.status == "True");
    let present: Vec<&Snapshot<'_>> = snaps.iter().flatten().collect();
    let missing = present.len() < snaps.len();
    let all_true = !missing && present.iter().all(|s| s.available_true);
    let mixed = present.windows(2).any(|w| w[0].generation != w[1].generation);
    let any_false = present.iter().any(|s| !s.available_true);

    let status = if missing {
        false
    } else if all_true {
        !mixed || prev_true
    } else {
        prev_true
            && !present.iter().any(|s| !s.available_true && Some(s.generation) == prev.map(|p| p.observed_generation))
    };
    let max_gen = present.iter().map(|s| s.generation).max();
    let observed_generation = match (status, all_true && !mixed) {
        (true, true) => present.first().map_or(1, |s| s.generation),
        (true, false) => prev.map_or(1, |p| p.observed_generation),
        (false, _) => max_gen.or(prev.map(|p| p.observed_generation)).unwrap_or(1),
    };
    let (reason, message) = if status {
        ("AllAdaptersReconciled", "All required adapters report Available=True for the tracked generation")
    } else if missing {
        ("AdaptersMissingReports", "Required adapters have not yet reported status")
    } else if any_false {
        ("AdapterReportedNotAvailable", "One or more required adapters report Available=False")
    } else {
        ("AdaptersNotAtSameGeneration", "Required adapters do not report a consistent Available state")
    };
    let fallback = prev.map_or(input.ref_time, |p| p.last_updated_time);
    let last_updated = if all_true && !mixed {
        present.iter().map(|s| s.time).min().unwrap_or(fallback)
    } else if !status && any_false {
        present
            .iter()
            .filter(|s| !s.available_true && s.generation == observed_generation)
            .map(|s| s.time)
            .min()
            .unwrap_or(fallback)
    } else {
        fallback
    };
    let status = bool_status(status);
    Condition {
        kind: LAST_KNOWN_RECONCILED.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        observed_generation,
        created_time: prev.map_or(last_updated, |p| p.created_time),
        last_updated_time: last_updated,
        last_transition_time: match prev {
            Some(p) if p.status == status => p.last_transition_time,
            _ => last_updated,
        },
    }
}

/// The conditions of a resource whose kind requires no adapters.
fn vacuous(input: &Input<'_>) -> Vec<Condition> {
    let waiting = input.deleting && input.live_children;
    let condition = |kind: &str, status: bool, reason: &str, message: &str| {
        let prev = input.previous.iter().find(|c| c.kind == kind);
        let status = bool_status(status);
        Condition {
            kind: kind.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            observed_generation: input.generation,
            created_time: prev.map_or(input.ref_time, |p| p.created_time),
            last_updated_time: input.ref_time,
            last_transition_time: match prev {
                Some(p) if p.status == status => p.last_transition_time,
                _ => input.ref_time,
            },
        }
    };
    let none = "No adapters are required for this kind (required_adapters)";
    vec![
        if waiting {
            condition(RECONCILED, false, "ChildrenStillExist", "Waiting for the resource's children to be deleted")
        } else {
            condition(RECONCILED, true, "NoAdaptersRequired", none)
        },
        condition(LAST_KNOWN_RECONCILED, true, "NoAdaptersRequired", none),
    ]
}

fn bool_status(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).single().unwrap_or_default()
    }

    fn report(adapter: &str, generation: i32, available: &str, finalized: &str, at: i64) -> Report {
        let c = |kind: &str, status: &str| ReportedCondition {
            kind: kind.into(),
            status: status.into(),
            reason: Some(format!("{kind}Reason")),
            message: Some(format!("{kind} message")),
            last_transition_time: t(at),
        };
        Report {
            adapter: adapter.into(),
            observed_generation: generation,
            conditions: vec![
                c("Available", available),
                c("Applied", "True"),
                c("Health", "True"),
                c("Finalized", finalized),
            ],
            last_report_time: t(at),
        }
    }

    struct Case {
        generation: i32,
        deleting: bool,
        children: bool,
        reports: Vec<Report>,
        previous: Vec<Condition>,
    }

    impl Case {
        fn new(generation: i32) -> Self {
            Case { generation, deleting: false, children: false, reports: vec![], previous: vec![] }
        }
        fn run(&self, required: &[&str]) -> Vec<Condition> {
            let required: Vec<String> = required.iter().map(|s| s.to_string()).collect();
            aggregate(&Input {
                generation: self.generation,
                ref_time: t(0),
                deleting: self.deleting,
                live_children: self.children,
                required: &required,
                reports: &self.reports,
                previous: &self.previous,
            })
        }
    }

    fn get<'a>(conds: &'a [Condition], kind: &str) -> &'a Condition {
        conds.iter().find(|c| c.kind == kind).unwrap_or_else(|| panic!("no {kind} in {conds:?}"))
    }

    #[test]
    fn no_required_adapters_means_reconciled_vacuously() {
        let conds = Case::new(1).run(&[]);
        assert_eq!(conds.len(), 2, "{conds:?}");
        for kind in [RECONCILED, LAST_KNOWN_RECONCILED] {
            let c = get(&conds, kind);
            assert_eq!(
                (c.status.as_str(), c.reason.as_deref(), c.observed_generation),
                ("True", Some("NoAdaptersRequired"), 1)
            );
        }
        let waiting = Case { deleting: true, children: true, ..Case::new(2) }.run(&[]);
        assert_eq!(get(&waiting, RECONCILED).status, "False", "a deletion still waits for live children");
    }

    #[test]
    fn no_reports_yet() {
        let c = Case::new(1).run(&["landing-zone", "dns"]);
        assert_eq!(c.len(), 2);
        let r = get(&c, RECONCILED);
        assert_eq!((r.status.as_str(), r.reason.as_deref()), ("False", Some("ReconciledMissingAdapters")));
        assert_eq!(
            r.message.as_deref(),
            Some("Required adapters not reporting Available=True: [dns, landing-zone]. Currently reporting: []")
        );
        assert_eq!((r.observed_generation, r.last_updated_time, r.last_transition_time), (1, t(0), t(0)));
        let l = get(&c, LAST_KNOWN_RECONCILED);
        assert_eq!(
            (l.status.as_str(), l.reason.as_deref(), l.observed_generation),
            ("False", Some("AdaptersMissingReports"), 1)
        );
    }

    #[test]
    fn all_available_at_current_generation() {
        let mut case = Case::new(1);
        case.reports = vec![report("landing-zone", 1, "True", "False", 5), report("dns", 1, "True", "False", 7)];
        let c = case.run(&["landing-zone", "dns"]);
        let r = get(&c, RECONCILED);
        assert_eq!(
            (r.status.as_str(), r.reason.as_deref(), r.last_updated_time),
            ("True", Some("ReconciledAll"), t(5))
        );
        let l = get(&c, LAST_KNOWN_RECONCILED);
        assert_eq!((l.status.as_str(), l.observed_generation, l.last_updated_time), ("True", 1, t(5)));
        let a = get(&c, "LandingZoneSuccessful");
        assert_eq!(
            (a.status.as_str(), a.reason.as_deref(), a.last_updated_time),
            ("True", Some("AvailableReason"), t(5))
        );
        assert_eq!(
            c.iter().map(|c| c.kind.as_str()).collect::<Vec<_>>(),
            [RECONCILED, LAST_KNOWN_RECONCILED, "LandingZoneSuccessful", "DnsSuccessful"]
        );
    }

    #[test]
    fn one_adapter_not_available() {
        let mut case = Case::new(1);
        case.reports = vec![report("a", 1, "True", "False", 5), report("b", 1, "False", "False", 6)];
        let c = case.run(&["a", "b"]);
        let r = get(&c, RECONCILED);
        assert_eq!(r.status, "False");
        assert_eq!(
            r.message.as_deref(),
            Some("Required adapters not reporting Available=True: [b]. Currently reporting: [a, b]")
        );
        let l = get(&c, LAST_KNOWN_RECONCILED);
        assert_eq!(
            (l.status.as_str(), l.reason.as_deref(), l.last_updated_time),
            ("False", Some("AdapterReportedNotAvailable"), t(6))
        );
        assert_eq!(get(&c, "BSuccessful").status, "False");
    }

    #[test]
    fn stale_generation_after_a_patch() {
        let mut case = Case::new(1);
        case.reports = vec![report("a", 1, "True", "False", 5)];
        let first = case.run(&["a"]);
        case.generation = 2;
        case.previous = first.clone();
        let c = case.run(&["a"]);
        let r = get(&c, RECONCILED);
        assert_eq!((r.status.as_str(), r.observed_generation), ("False", 2));
        assert_eq!(r.last_transition_time, t(0), "True→False on a newer generation transitions at the PATCH time");
        assert_eq!(r.last_updated_time, t(0));
        let l = get(&c, LAST_KNOWN_RECONCILED);
        assert_eq!((l.status.as_str(), l.observed_generation), ("True", 1), "sticky across generations");
        assert_eq!(l.last_transition_time, get(&first, LAST_KNOWN_RECONCILED).last_transition_time);
    }

    #[test]
    fn future_and_unknown_reports_are_ignored() {
        let mut case = Case::new(1);
        case.reports = vec![report("a", 2, "True", "False", 5), report("b", 1, "Unknown", "False", 5)];
        let c = case.run(&["a", "b"]);
        assert_eq!(c.len(), 2, "no <Adapter>Successful without a usable report");
        assert_eq!(
            get(&c, RECONCILED).message.as_deref(),
            Some("Required adapters not reporting Available=True: [a, b]. Currently reporting: []")
        );
    }

    #[test]
    fn deletion_needs_finalized_and_waits_for_children() {
        let mut case = Case::new(2);
        case.deleting = true;
        case.reports = vec![report("a", 2, "True", "False", 5)];
        let r = get(&case.run(&["a"]), RECONCILED).clone();
        assert_eq!(r.status, "False");
        assert_eq!(
            r.message.as_deref(),
            Some("Required adapters not reporting Finalized=True: [a]. Currently reporting: [a]")
        );
        case.reports = vec![report("a", 2, "True", "True", 6)];
        assert_eq!(get(&case.run(&["a"]), RECONCILED).status, "True");
        case.children = true;
        let r = get(&case.run(&["a"]), RECONCILED).clone();
        assert_eq!((r.status.as_str(), r.reason.as_deref()), ("False", Some("ReconciledWaitingForChildren")));
    }

    #[test]
    fn condition_type_names() {
        assert_eq!(adapter_condition_type("landing-zone"), "LandingZoneSuccessful");
        assert_eq!(adapter_condition_type("dns"), "DnsSuccessful");
        assert_eq!(adapter_condition_type("cl-namespace"), "ClNamespaceSuccessful");
    }
}
