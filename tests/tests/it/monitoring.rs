//! Monitoring: the three services' `/metrics` pass `promtool check metrics` with a `# HELP` for
//! every metric; the chart's alerts (`files/alerts.yaml`) pass `promtool check rules` and their unit
//! tests (`tests/fixtures/prometheus/alerts-test.yaml`); the PrometheusRule and the Grafana
//! dashboard ConfigMap render from those files; and every metric the dashboard and the alerts ask
//! for is one the services really export.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use hyperfleet_tests::{
    LocalEnv, Stack, eventually, metric_sum,
    node::{chart_dir, helm},
    workspace_root,
};
use serde_json::Value;

const LAND: Duration = Duration::from_secs(60);

/// Metrics the dashboard or the alerts use that appear only after a failure this test does not
/// cause: the API or the broker refusing the sentinel, Kubernetes or the API failing the adapter's
/// retries, a database error. They are checked against the names the source code emits instead.
const ONLY_AFTER_FAILURES: &[&str] = &[
    "hyperfleet_sentinel_api_errors_total",
    "hyperfleet_sentinel_broker_errors_total",
    "hyperfleet_adapter_errors_total",
    "hyperfleet_adapter_retries_total",
    "hyperfleet_db_errors_total",
];

fn promtool(env: &LocalEnv) -> Result<PathBuf> {
    let path = PathBuf::from(env.get("HF_PROMTOOL").context("rerun `tests/env/run infra` to get promtool")?);
    if !path.is_file() {
        bail!("{} missing: rerun `tests/env/run infra`", path.display());
    }
    Ok(path)
}

/// Runs promtool with `args` (and `stdin`, if given); returns whether it succeeded and its output.
fn run_promtool(env: &LocalEnv, args: &[&str], stdin: Option<&str>) -> Result<(bool, String)> {
    let mut child = Command::new(promtool(env)?)
        .args(args)
        .current_dir(workspace_root())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run promtool")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// Every `# TYPE` of a Prometheus text: metric name → type.
fn types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.trim().to_string()))
        .collect()
}

/// Every `# HELP` of a Prometheus text: metric name → text.
fn helps(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .map(|l| l.split_once(' ').unwrap_or((l, "")))
        .map(|(name, help)| (name.to_string(), help.trim().to_string()))
        .collect()
}

/// Every `hyperfleet_…` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("hyperfleet_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let len =
            tail.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
    names
}

/// `name` without a `_bucket`/`_sum`/`_count` suffix when the rest is a histogram in `histograms`.
fn base_name(name: &str, histograms: &BTreeSet<String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && histograms.contains(base)
        {
            return base.to_string();
        }
    }
    name.to_string()
}

/// The metric macros in the Rust files under `dir`: (macro, metric name), e.g. ("counter", "…_total")
/// for `metrics::counter!("…_total", …)` and ("describe_counter", …) for its description.
fn metric_macros(dir: &Path, found: &mut BTreeSet<(String, String)>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            metric_macros(&path, found)?;
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for kind in ["counter", "gauge", "histogram"] {
            let call = format!("{kind}!(");
            for (at, _) in text.match_indices(&call) {
                let described = text[..at].ends_with("describe_");
                if !described && text[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                    continue;
                }
                let args = text[at + call.len()..].trim_start();
                let Some(name) = args.strip_prefix('"').and_then(|a| a.split_once('"')).map(|(n, _)| n) else {
                    bail!("{}: a {call} whose metric name is not a string literal", path.display());
                };
                let macro_name = if described { format!("describe_{kind}") } else { kind.to_string() };
                found.insert((macro_name, name.to_string()));
            }
        }
    }
    Ok(())
}

/// Every (macro, metric name) in the four crates' sources.
fn source_metrics() -> Result<BTreeSet<(String, String)>> {
    let mut found = BTreeSet::new();
    for krate in ["api", "sentinel", "adapter", "common"] {
        metric_macros(&workspace_root().join(krate).join("src"), &mut found)?;
    }
    Ok(found)
}

/// The chart rendered by the real helm, as JSON objects.
async fn render(env: &LocalEnv, extra: &[&str]) -> Result<Vec<Value>> {
    let chart = chart_dir().display().to_string();
    let mut args = vec!["template", "rel", chart.as_str()];
    args.extend_from_slice(extra);
    let (ok, text) = helm(env, &args).await?;
    if !ok {
        bail!("helm template {extra:?}:\n{text}");
    }
    hyperfleet_tests::node::yaml_objects(&text)
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

/// files/alerts.yaml, as JSON.
fn alert_file() -> Result<Value> {
    let text = std::fs::read_to_string(chart_dir().join("files/alerts.yaml"))?;
    Ok(serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&text)?)?)
}

/// files/dashboard.json.
fn dashboard_file() -> Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(chart_dir().join("files/dashboard.json"))?)?)
}

/// Every PromQL expression of a dashboard: panel targets (nested rows too) and variable queries.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    fn panels(list: &Value, out: &mut Vec<String>) {
        for panel in list.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.extend(target["expr"].as_str().map(str::to_string));
            }
            panels(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for var in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        out.extend(var["query"]["query"].as_str().or(var["query"].as_str()).map(str::to_string));
    }
    out
}

/// Every `expr` of a rule file's groups.
fn alert_exprs(groups: &Value) -> Vec<String> {
    let rules = groups.as_array().into_iter().flatten().flat_map(|g| g["rules"].as_array().into_iter().flatten());
    rules.filter_map(|r| r["expr"].as_str().map(str::to_string)).collect()
}

#[test]
fn every_metric_the_services_emit_is_described_with_its_type() -> Result<()> {
    let found = source_metrics()?;
    let emitted: BTreeSet<(String, String)> =
        found.iter().filter(|(m, _)| !m.starts_with("describe_")).cloned().collect();
    let described: BTreeSet<(String, String)> = found
        .iter()
        .filter_map(|(m, n)| m.strip_prefix("describe_").map(|kind| (kind.to_string(), n.clone())))
        .collect();
    assert!(emitted.len() >= 30, "the scan finds the metrics: {emitted:?}");
    let undescribed: Vec<_> = emitted.difference(&described).collect();
    let unused: Vec<_> = described.difference(&emitted).collect();
    assert!(undescribed.is_empty(), "emitted without a describe_* of the same type: {undescribed:?}");
    assert!(unused.is_empty(), "described but never emitted (or with another type): {unused:?}");
    Ok(())
}

#[tokio::test]
async fn alert_rules_pass_promtool_check_and_their_unit_tests() -> Result<()> {
    let env = LocalEnv::load()?;
    let (ok, text) = run_promtool(&env, &["check", "rules", "charts/hyperfleet-system/files/alerts.yaml"], None)?;
    assert!(ok && text.contains("SUCCESS"), "promtool check rules:\n{text}");
    let (ok, text) = run_promtool(&env, &["test", "rules", "tests/fixtures/prometheus/alerts-test.yaml"], None)?;
    assert!(ok && text.contains("SUCCESS"), "promtool test rules:\n{text}");

    // Every alert of the file has a unit test that expects it to fire.
    let tests = std::fs::read_to_string(workspace_root().join("tests/fixtures/prometheus/alerts-test.yaml"))?;
    let tests: serde_yaml::Value = serde_yaml::from_str(&tests)?;
    let tested: BTreeSet<&str> = tests["tests"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|t| t["alert_rule_test"].as_sequence().into_iter().flatten())
        .filter(|a| a["exp_alerts"].as_sequence().is_some_and(|e| !e.is_empty()))
        .filter_map(|a| a["alertname"].as_str())
        .collect();
    let file = alert_file()?;
    let rules =
        file["groups"].as_array().into_iter().flatten().flat_map(|g| g["rules"].as_array().into_iter().flatten());
    let alerts: BTreeSet<&str> = rules.filter_map(|r| r["alert"].as_str()).collect();
    assert!(alerts.len() >= 5, "{alerts:?}");
    assert_eq!(alerts, tested, "every alert has a unit test in which it fires");

    // The dashboard's queries are valid PromQL: promtool parses them as recording rules, with
    // Grafana's variables replaced by values.
    let queries = dashboard_queries(&dashboard_file()?);
    let rules: Vec<Value> = queries
        .iter()
        .filter(|q| !q.starts_with("label_values("))
        .enumerate()
        .map(|(i, q)| {
            let expr = q.replace("$__rate_interval", "1m").replace("$namespace", "hyperfleet-system");
            serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": expr})
        })
        .collect();
    assert!(rules.len() >= 20, "{queries:?}");
    let file = std::env::temp_dir().join(format!("hf-dashboard-queries-{}.yaml", uuid::Uuid::new_v4().simple()));
    let groups = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, serde_yaml::to_string(&groups)?)?;
    let checked = run_promtool(&env, &["check", "rules", &file.display().to_string()], None);
    let _ = std::fs::remove_file(&file);
    let (ok, text) = checked?;
    assert!(ok, "the dashboard's queries do not parse:\n{text}");
    Ok(())
}

#[tokio::test]
async fn chart_renders_the_prometheus_rule_and_the_dashboard_from_its_files() -> Result<()> {
    let env = LocalEnv::load()?;
    let on = [
        "--api-versions",
        "monitoring.coreos.com/v1",
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "metrics.grafanaDashboard.enabled=true",
    ];

    // Off by default, even where the API exists.
    let docs = render(&env, &on[..2]).await?;
    assert!(find(&docs, "PrometheusRule").is_none(), "no PrometheusRule by default");
    assert!(!docs.iter().any(|d| d["metadata"]["name"] == "hyperfleet-grafana-dashboard"), "no dashboard by default");
    // Enabled, but the cluster has no monitoring.coreos.com/v1: no PrometheusRule (the dashboard is
    // a plain ConfigMap and still renders).
    let docs = render(&env, &on[2..]).await?;
    assert!(find(&docs, "PrometheusRule").is_none(), "no PrometheusRule without its API");
    assert!(docs.iter().any(|d| d["metadata"]["name"] == "hyperfleet-grafana-dashboard"));

    let mut args = on.to_vec();
    args.extend(["--set", "metrics.prometheusRule.labels.release=kube-prometheus-stack"]);
    args.extend(["--set", "metrics.grafanaDashboard.annotations.grafana_folder=HyperFleet"]);
    let docs = render(&env, &args).await?;
    let rule = find(&docs, "PrometheusRule").context("PrometheusRule rendered")?;
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], "hyperfleet-system");
    assert_eq!(rule["metadata"]["labels"]["release"], "kube-prometheus-stack", "labels from values");
    assert_eq!(rule["spec"]["groups"], alert_file()?["groups"], "the groups of files/alerts.yaml, unchanged");

    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "hyperfleet-grafana-dashboard")
        .context("dashboard ConfigMap rendered")?;
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1", "the Grafana sidecar's default label");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "HyperFleet");
    let embedded: Value = serde_json::from_str(cm["data"]["hyperfleet.json"].as_str().context("hyperfleet.json")?)?;
    assert_eq!(embedded, dashboard_file()?, "files/dashboard.json, unchanged");
    assert!(dashboard_queries(&embedded).len() >= 20, "the dashboard has its queries");

    // Overrides: a `for:`, extra alert labels, an alert left out; the result still passes promtool.
    let mut args = on.to_vec();
    args.extend(["--set", "metrics.prometheusRule.for.HyperFleetReconciliationStuck=15m"]);
    args.extend(["--set", "metrics.prometheusRule.alertLabels.team=platform"]);
    args.extend(["--set", "metrics.prometheusRule.disabled={HyperFleetApiErrorRateHigh}"]);
    args.extend(["--set", "metrics.grafanaDashboard.namespace=monitoring"]);
    let docs = render(&env, &args).await?;
    let groups = &find(&docs, "PrometheusRule").context("PrometheusRule")?["spec"]["groups"];
    let rules: Vec<&Value> =
        groups.as_array().into_iter().flatten().flat_map(|g| g["rules"].as_array().into_iter().flatten()).collect();
    let rule = |name: &str| rules.iter().find(|r| r["alert"] == name).copied();
    assert!(rule("HyperFleetApiErrorRateHigh").is_none(), "disabled alert left out");
    assert_eq!(rule("HyperFleetReconciliationStuck").context("stuck")?["for"], "15m");
    assert_eq!(rule("HyperFleetServiceDown").context("down")?["for"], "5m", "other alerts keep theirs");
    assert!(rules.iter().all(|r| r["labels"]["team"] == "platform" && r["labels"]["severity"].is_string()));
    let cm = docs.iter().find(|d| d["metadata"]["name"] == "hyperfleet-grafana-dashboard").context("dashboard")?;
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    let file = std::env::temp_dir().join(format!("hf-rendered-rules-{}.yaml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, serde_yaml::to_string(&serde_json::json!({ "groups": groups }))?)?;
    let checked = run_promtool(&env, &["check", "rules", &file.display().to_string()], None);
    let _ = std::fs::remove_file(&file);
    let (ok, text) = checked?;
    assert!(ok, "promtool check rules on the rendered PrometheusRule:\n{text}");

    // A misspelt alert name is refused at template time.
    let mut args = on.to_vec();
    args.extend(["--set", "metrics.prometheusRule.for.HyperFleetNoSuchAlert=1m"]);
    let err = render(&env, &args).await.expect_err("unknown alert name");
    assert!(err.to_string().contains("there is no alert HyperFleetNoSuchAlert"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_pass_promtool_and_carry_every_name_the_dashboard_and_alerts_use() -> Result<()> {
    let stack = Stack::start().await?;
    let result = live_metrics(&stack).await;
    if result.is_err() {
        eprintln!("{}", stack.logs());
    }
    stack.stop().await;
    result
}

async fn live_metrics(stack: &Stack) -> Result<()> {
    // A cluster created and reconciled, and one error response, so the metrics exist.
    let id = stack.create_cluster(&format!("monitoring-{}", stack.tag)).await?;
    stack.wait_reconciled(&id, 1, LAND).await?;
    let (status, _) = stack.get(&format!("clusters/{}", uuid::Uuid::new_v4())).await?;
    assert_eq!(status, 404);

    let wanted = [
        ("api", "hyperfleet_api_errors_total"),
        ("api", "hyperfleet_api_resources_created_total"),
        ("api", "hyperfleet_api_resource_pending_reconciliation_stuck"),
        ("sentinel", "hyperfleet_sentinel_events_published_total"),
        ("sentinel", "hyperfleet_sentinel_last_successful_poll_timestamp_seconds"),
        ("adapter", "hyperfleet_adapter_events_processed_total"),
    ];
    let missing = std::sync::Mutex::new(Vec::new());
    let texts = eventually(LAND, || async {
        let texts = [
            ("api", stack.api.metrics().await?),
            ("sentinel", stack.sentinel.metrics().await?),
            ("adapter", stack.adapter.metrics().await?),
        ];
        let have =
            |svc: &str, name: &str| texts.iter().any(|(s, t)| *s == svc && t.lines().any(|l| l.starts_with(name)));
        let mut absent: Vec<&str> = wanted.iter().filter(|(svc, name)| !have(svc, name)).map(|(_, n)| *n).collect();
        if metric_sum(&texts[2].1, "hyperfleet_adapter_events_processed_total{status=\"success\"}") < 1.0 {
            absent.push("a processed event");
        }
        let done = absent.is_empty();
        *missing.lock().unwrap_or_else(|e| e.into_inner()) = absent;
        Ok(done.then_some(texts))
    })
    .await
    .with_context(|| format!("metrics missing after a reconciled cluster: {:?}", missing.lock().map(|m| m.clone())))?;

    let mut live: BTreeMap<String, String> = BTreeMap::new();
    for (service, text) in &texts {
        let (ok, out) = run_promtool(&stack.env, &["check", "metrics"], Some(text))?;
        assert!(ok && out.trim().is_empty(), "promtool check metrics on {service}:\n{out}\n--- /metrics ---\n{text}");
        let (types, helps) = (types(text), helps(text));
        assert!(types.len() >= 5, "{service} exports its metrics:\n{text}");
        for name in types.keys() {
            let help = helps.get(name).map(String::as_str).unwrap_or_default();
            assert!(!help.is_empty(), "{service}: {name} has no # HELP");
        }
        live.extend(types);
    }

    let histograms: BTreeSet<String> =
        live.iter().filter(|(_, kind)| *kind == "histogram").map(|(name, _)| name.clone()).collect();
    let emitted: BTreeSet<String> = source_metrics()?.into_iter().map(|(_, name)| name).collect();
    for name in ONLY_AFTER_FAILURES {
        assert!(emitted.contains(*name), "{name} is emitted somewhere in the source");
    }
    let alerts = alert_exprs(&alert_file()?["groups"]);
    let queries = dashboard_queries(&dashboard_file()?);
    for (what, exprs) in [("files/alerts.yaml", alerts), ("files/dashboard.json", queries)] {
        let used: BTreeSet<String> =
            exprs.iter().flat_map(|e| metric_names(e)).map(|n| base_name(&n, &histograms)).collect();
        assert!(!used.is_empty(), "{what} uses metrics");
        let unknown: Vec<&String> =
            used.iter().filter(|n| !live.contains_key(*n) && !ONLY_AFTER_FAILURES.contains(&n.as_str())).collect();
        assert!(unknown.is_empty(), "{what} uses metrics the services do not export: {unknown:?}\nexported: {live:?}");
    }
    Ok(())
}
