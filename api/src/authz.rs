//! Authorization: configured rules map a verified identity to what it may do.
//!
//! A rule names subjects (exact; a prefix ending in `*`, e.g. `system:serviceaccount:ops:*`; a
//! suffix starting with `*`, e.g. `*@example.com`; `*` alone is every authenticated caller) and/or
//! groups (exact members of the token's groups claim, e.g. an IdP's `hyperfleet-admins`), and
//! permissions: `read` (GET), `write` (create, patch, delete clusters and nodepools),
//! `force_delete`, `report` (PUT a status under any adapter name) or `report:<adapter>` (only under
//! that name), or `*` (everything). A caller's permissions are the union of the rules matching it.
//! With authentication on and no rules, every authenticated caller may do everything (a warning at
//! start says so); with rules, anything not granted is 403 `HYPERFLEET-AUT-003`.

use std::collections::BTreeSet;

use axum::http::Method;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthzConfig {
    /// Who may do what; empty: every authenticated caller may do everything.
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// Identities (the configured identity claim, e.g. `system:serviceaccount:ns:sa`); a trailing
    /// `*` matches a prefix, a leading one a suffix, `*` alone any authenticated caller.
    pub subjects: Vec<String>,
    /// Groups (exact names in the issuer's groups claim, `groups` by default); a caller in any of
    /// them matches the rule as if it were named in `subjects`.
    pub groups: Vec<String>,
    /// `read`, `write`, `force_delete`, `report`, `report:<adapter>` or `*`.
    pub allow: Vec<String>,
}

/// What a request needs, from its method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Write,
    ForceDelete,
    /// A status report; the adapter name is checked by the handler once the body is read.
    Report,
}

impl Action {
    /// Only the methods that change something need more than `read`; any other (GET, HEAD, and
    /// methods no route serves, such as OPTIONS or TRACE) is a read, so the router answers 405
    /// for those rather than authorization 403.
    pub fn of(method: &Method, path: &str) -> Action {
        if !matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
            Action::Read
        } else if path.ends_with("/statuses") {
            Action::Report
        } else if path.ends_with("/force-delete") {
            Action::ForceDelete
        } else {
            Action::Write
        }
    }

    fn name(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::ForceDelete => "force_delete",
            Action::Report => "report",
        }
    }
}

/// One caller's permissions (a request extension the status handler reads).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Grants {
    pub identity: String,
    all: bool,
    read: bool,
    write: bool,
    force_delete: bool,
    report_any: bool,
    report_as: BTreeSet<String>,
}

impl Grants {
    /// Everything (authentication on, no rules configured).
    pub fn everything(identity: String) -> Grants {
        Grants { identity, all: true, ..Default::default() }
    }

    pub fn allows(&self, action: Action) -> bool {
        self.all
            || match action {
                Action::Read => self.read,
                Action::Write => self.write,
                Action::ForceDelete => self.force_delete,
                Action::Report => self.report_any || !self.report_as.is_empty(),
            }
    }

    pub fn may_report_as(&self, adapter: &str) -> bool {
        self.all || self.report_any || self.report_as.contains(adapter)
    }

    /// Why `action` is refused, for the 403's detail.
    pub fn refusal(&self, action: Action) -> String {
        format!("'{}' may not {} (see the API's authz.rules)", self.identity, action.name())
    }

    pub fn report_refusal(&self, adapter: &str) -> String {
        let names: Vec<&str> = self.report_as.iter().map(String::as_str).collect();
        if names.is_empty() {
            format!("'{}' may not report status", self.identity)
        } else {
            format!("'{}' may report only as adapter {}, not as '{adapter}'", self.identity, names.join(", "))
        }
    }
}

impl AuthzConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.subjects.is_empty() && rule.groups.is_empty() {
                return Err(format!("authz.rules[{i}] must list at least one subject or group"));
            }
            if rule.subjects.iter().chain(&rule.groups).any(|s| s.is_empty()) {
                return Err(format!("authz.rules[{i}]: subjects and groups must not be empty strings"));
            }
            let inner_star = |s: &str| s.len() > 1 && s.trim_start_matches('*').trim_end_matches('*').contains('*');
            let both_ends = |s: &str| s.len() > 1 && s.starts_with('*') && s.ends_with('*');
            if rule.subjects.iter().any(|s| inner_star(s) || both_ends(s)) {
                return Err(format!("authz.rules[{i}].subjects: '*' is allowed only at the start or the end"));
            }
            if rule.allow.is_empty() {
                return Err(format!("authz.rules[{i}].allow must list at least one permission"));
            }
            for p in &rule.allow {
                let ok = matches!(p.as_str(), "*" | "read" | "write" | "force_delete" | "report")
                    || p.strip_prefix("report:").is_some_and(crate::config::adapter_name_ok);
                if !ok {
                    return Err(format!(
                        "authz.rules[{i}].allow: unknown permission {p:?} (read, write, force_delete, report, report:<adapter>, *)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The union of the permissions of every rule naming `identity` or one of its `groups`.
    pub fn grants(&self, identity: &str, groups: &[String]) -> Grants {
        if self.rules.is_empty() {
            return Grants::everything(identity.to_string());
        }
        let mut g = Grants { identity: identity.to_string(), ..Default::default() };
        let matches = |pattern: &str| {
            if let Some(prefix) = pattern.strip_suffix('*') {
                identity.starts_with(prefix)
            } else if let Some(suffix) = pattern.strip_prefix('*') {
                identity.ends_with(suffix)
            } else {
                identity == pattern
            }
        };
        let applies = |r: &&Rule| r.subjects.iter().any(|s| matches(s)) || r.groups.iter().any(|g| groups.contains(g));
        for rule in self.rules.iter().filter(applies) {
            for p in &rule.allow {
                match p.as_str() {
                    "*" => g.all = true,
                    "read" => g.read = true,
                    "write" => g.write = true,
                    "force_delete" => g.force_delete = true,
                    "report" => g.report_any = true,
                    other => {
                        if let Some(a) = other.strip_prefix("report:") {
                            g.report_as.insert(a.to_string());
                        }
                    }
                }
            }
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(subjects: &[&str], groups: &[&str], allow: &[&str]) -> Rule {
        let own = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Rule { subjects: own(subjects), groups: own(groups), allow: own(allow) }
    }

    fn cfg() -> AuthzConfig {
        AuthzConfig {
            rules: vec![
                rule(&["system:serviceaccount:hf:sentinel-sa"], &[], &["read"]),
                rule(&["system:serviceaccount:hf:hyperfleet-adapter-sa"], &[], &["read", "report:landing-zone"]),
                rule(&["system:serviceaccount:ops:*"], &[], &["*"]),
                rule(&["*@example.com"], &[], &["read", "write"]),
                rule(&[], &["hyperfleet-admins"], &["force_delete"]),
            ],
        }
    }

    #[test]
    fn actions_follow_method_and_path() {
        assert_eq!(Action::of(&Method::GET, "/api/hyperfleet/v1/clusters"), Action::Read);
        assert_eq!(Action::of(&Method::PUT, "/api/hyperfleet/v1/clusters/x/statuses"), Action::Report);
        assert_eq!(Action::of(&Method::POST, "/api/hyperfleet/v1/clusters/x/force-delete"), Action::ForceDelete);
        assert_eq!(Action::of(&Method::DELETE, "/api/hyperfleet/v1/clusters/x"), Action::Write);
        assert_eq!(Action::of(&Method::POST, "/api/hyperfleet/v1/clusters"), Action::Write);
        assert_eq!(Action::of(&Method::PATCH, "/api/hyperfleet/v1/clusters/x"), Action::Write);
        // No route serves these: a read, so the router's 405 is what the caller sees.
        assert_eq!(Action::of(&Method::OPTIONS, "/api/hyperfleet/v1/clusters"), Action::Read);
        assert_eq!(Action::of(&Method::TRACE, "/api/hyperfleet/v1/clusters/x/statuses"), Action::Read);
    }

    #[test]
    fn rules_grant_exactly_what_they_say() {
        let c = cfg();
        let sentinel = c.grants("system:serviceaccount:hf:sentinel-sa", &[]);
        assert!(sentinel.allows(Action::Read));
        assert!(!sentinel.allows(Action::Write) && !sentinel.allows(Action::Report));
        let adapter = c.grants("system:serviceaccount:hf:hyperfleet-adapter-sa", &[]);
        assert!(
            adapter.allows(Action::Report) && !adapter.allows(Action::Write) && !adapter.allows(Action::ForceDelete)
        );
        assert!(adapter.may_report_as("landing-zone") && !adapter.may_report_as("dns"));
        assert!(adapter.report_refusal("dns").contains("only as adapter landing-zone"));
        let ops = c.grants("system:serviceaccount:ops:alice", &[]);
        assert!(ops.allows(Action::ForceDelete) && ops.may_report_as("anything"));
        let human = c.grants("ada@example.com", &[]);
        assert!(human.allows(Action::Write) && !human.allows(Action::ForceDelete));
        assert!(!c.grants("ada@example.com.evil", &[]).allows(Action::Read));
        let stranger = c.grants("system:serviceaccount:other:x", &[]);
        assert!(!stranger.allows(Action::Read));
        assert!(AuthzConfig::default().grants("anyone", &[]).allows(Action::ForceDelete), "no rules: everything");
        // Groups add to what the subject rules give, and only exact names count.
        let admin = c.grants("ada@example.com", &["hyperfleet-admins".into()]);
        assert!(admin.allows(Action::ForceDelete) && admin.allows(Action::Write));
        let only_group = c.grants("bob@elsewhere.test", &["hyperfleet-admins".into()]);
        assert!(only_group.allows(Action::ForceDelete) && !only_group.allows(Action::Read));
        assert!(!c.grants("bob@elsewhere.test", &["hyperfleet-admins-x".into()]).allows(Action::ForceDelete));
    }

    #[test]
    fn bad_rules_are_refused() {
        for (rule, why) in [
            (rule(&[], &[], &["read"]), "at least one subject or group"),
            (rule(&[], &[""], &["read"]), "must not be empty"),
            (rule(&["a*b"], &[], &["read"]), "only at the start or the end"),
            (rule(&["*a*"], &[], &["read"]), "only at the start or the end"),
            (rule(&["a"], &[], &["delete"]), "unknown permission"),
            (rule(&["a"], &[], &["report:Bad Name"]), "unknown permission"),
            (rule(&[], &["g"], &[]), "at least one permission"),
        ] {
            let err = AuthzConfig { rules: vec![rule] }.validate().expect_err("refused");
            assert!(err.contains(why), "{err}");
        }
    }
}
