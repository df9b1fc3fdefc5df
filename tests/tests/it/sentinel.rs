//! The sentinel against the real API and RabbitMQ over AMQPS: what it publishes, when, to whom.
//! No adapter runs here; the tests play the adapter's part through the API where needed.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hyperfleet_tests::{ApiStack, KubeProxy, Service, Tap, eventually, metric_sum};
use serde_json::json;

/// Waits until the sentinel has completed `passes` more polls than now.
async fn passes(sentinel: &Service, passes: f64) -> Result<()> {
    let count = "hyperfleet_sentinel_poll_duration_seconds_count";
    let start = metric_sum(&sentinel.metrics().await?, count);
    eventually(Duration::from_secs(30), || async {
        Ok((metric_sum(&sentinel.metrics().await?, count) >= start + passes).then_some(()))
    })
    .await
}

/// Leader election on Lease `lease` (namespace `default`) through `kubeconfig`: a 3 s lease, a 2 s
/// renew deadline, a round every 300 ms.
fn election(lease: &str, kubeconfig: &str) -> [(&'static str, String); 8] {
    [
        ("HYPERFLEET_LEADER_ELECTION_ENABLED", "true".into()),
        ("HYPERFLEET_LEADER_ELECTION_LEASE_NAME", lease.into()),
        ("HYPERFLEET_LEADER_ELECTION_NAMESPACE", "default".into()),
        ("HYPERFLEET_LEADER_ELECTION_LEASE_DURATION", "3s".into()),
        ("HYPERFLEET_LEADER_ELECTION_RENEW_DEADLINE", "2s".into()),
        ("HYPERFLEET_LEADER_ELECTION_RETRY_PERIOD", "300ms".into()),
        ("HYPERFLEET_LEADER_ELECTION_KUBECONFIG", kubeconfig.into()),
        ("HYPERFLEET_MAX_AGE_NOT_READY", "1h".into()),
    ]
}

fn leader_gauge(metrics: &str) -> f64 {
    metric_sum(metrics, "hyperfleet_sentinel_leader")
}

async fn delete_lease(stack: &ApiStack, lease: &str) -> Result<()> {
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(stack.env.kube().await?, "default");
    let _ = leases.delete(lease, &Default::default()).await;
    Ok(())
}

/// Polls a health `url` until it answers `status` (within `within`); returns the body (JSON, or null).
async fn until_status(url: &str, status: u16, within: Duration) -> Result<serde_json::Value> {
    eventually(within, || async {
        let r = reqwest::get(url).await?;
        Ok(if r.status() == status { Some(r.json().await.unwrap_or_default()) } else { None })
    })
    .await
}

async fn all_seen(tap: &Tap, ids: &[String]) -> Result<()> {
    for id in ids {
        eventually(Duration::from_secs(30), || async { Ok((tap.count(id).await? > 0).then_some(())) })
            .await
            .with_context(|| format!("no event for {id}"))?;
    }
    Ok(())
}

#[tokio::test]
async fn publishes_each_cluster_once_over_many_pages_then_per_the_decision_rules() -> Result<()> {
    let stack = ApiStack::start().await?;
    let all = stack.tap("#").await?;
    let clusters_only = stack.tap("cluster.*").await?;
    let sentinel = stack
        .sentinel(
            "main",
            &[("HYPERFLEET_HYPERFLEET_API_PAGE_SIZE", "2".into()), ("HYPERFLEET_MAX_AGE_NOT_READY", "1h".into())],
        )
        .await?;

    // Seven clusters over four pages; each announced promptly, to both bindings.
    let mut ids = Vec::new();
    let mut latencies = Vec::new();
    for i in 0..7 {
        let created = Instant::now();
        let id = stack.create_cluster(&format!("page-{i}"), json!({})).await?;
        eventually(Duration::from_secs(30), || async { Ok((all.count(&id).await? > 0).then_some(())) }).await?;
        latencies.push(created.elapsed());
        ids.push(id);
    }
    all_seen(&clusters_only, &ids).await?;
    latencies.sort();
    println!("create→published (poll every 300 ms, N=7): median {:?}, max {:?}", latencies[3], latencies[6]);
    let event = all.events().await?[0].clone();
    assert_eq!(event["type"], "com.redhat.hyperfleet.cluster.reconcile");
    assert_eq!(event["source"], "hyperfleet-sentinel");
    assert_eq!(event["data"]["kind"], "Cluster");
    assert_eq!(event["data"]["generation"], 1);
    assert!(event["data"]["href"].as_str().unwrap_or("").ends_with(event["data"]["id"].as_str().unwrap_or("?")));

    // Several more passes: nothing new happened, so nothing is announced twice.
    passes(&sentinel, 3.0).await?;
    for id in &ids {
        assert_eq!(all.count(id).await?, 1, "{id} announced more than once\n{}", sentinel.log_tail());
    }
    let metrics = sentinel.metrics().await?;
    assert_eq!(metric_sum(&metrics, "hyperfleet_sentinel_events_published_total"), 7.0, "{metrics}");
    assert!(metric_sum(&metrics, "hyperfleet_sentinel_resources_skipped_total") >= 7.0 * 3.0);

    // A PATCH moves the generation past what was announced: published at once.
    let http = reqwest::Client::new();
    let uri = format!("{}/api/hyperfleet/v1/clusters/{}", stack.api_url, ids[0]);
    assert_eq!(http.patch(&uri).json(&json!({"labels": {"x": "y"}})).send().await?.status(), 200);
    eventually(Duration::from_secs(30), || async {
        Ok(all
            .events()
            .await?
            .iter()
            .any(|e| e["data"]["id"] == ids[0].as_str() && e["data"]["generation"] == 2)
            .then_some(()))
    })
    .await?;

    // An adapter reports failure at the current generation: re-announced once that report is older
    // than max_age_not_ready (here 1 s, on a second sentinel).
    let at = chrono::Utc::now().to_rfc3339();
    let report = json!({"adapter": "landing-zone", "observed_generation": 1, "observed_time": at,
        "conditions": [{"type": "Available", "status": "False", "reason": "Broken"},
                       {"type": "Applied", "status": "True"}, {"type": "Health", "status": "False"}]});
    let resp = http
        .put(format!("{}/api/hyperfleet/v1/clusters/{}/statuses", stack.api_url, ids[1]))
        .json(&report)
        .send()
        .await?;
    assert_eq!(resp.status(), 201);
    sentinel.stop().await;
    let fast = stack.sentinel("fast", &[("HYPERFLEET_MAX_AGE_NOT_READY", "1s".into())]).await?;
    eventually(Duration::from_secs(30), || async {
        let m = fast.metrics().await?;
        let republished = m.lines().any(|l| {
            l.starts_with("hyperfleet_sentinel_events_published_total{") && l.contains("reason=\"not_ready_max_age\"")
        });
        Ok(republished.then_some(()))
    })
    .await
    .with_context(|| fast.log_tail())?;
    let before = all.count(&ids[1]).await?;
    eventually(Duration::from_secs(30), || async { Ok((all.count(&ids[1]).await? >= before + 2).then_some(())) })
        .await?;

    fast.stop().await;
    all.close().await;
    clusters_only.close().await;
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_change_feed_publishes_within_milliseconds_and_survives_an_api_restart() -> Result<()> {
    let mut stack = ApiStack::start().await?;
    let tap = stack.tap("#").await?;
    // Polls only at start-up and then once an hour: whatever is published later came by the feed.
    let sentinel = stack.sentinel("feed", &[("HYPERFLEET_POLL_INTERVAL", "1h".into())]).await?;
    let count = "hyperfleet_sentinel_poll_duration_seconds_count";
    eventually(Duration::from_secs(30), || async {
        Ok((metric_sum(&sentinel.metrics().await?, count) >= 1.0).then_some(()))
    })
    .await?;
    let mut latencies = Vec::new();
    for i in 0..20 {
        let created = Instant::now();
        let id = stack.create_cluster(&format!("fed-{i}"), json!({})).await?;
        eventually(Duration::from_secs(30), || async { Ok((tap.count(&id).await? > 0).then_some(())) })
            .await
            .with_context(|| sentinel.log_tail())?;
        latencies.push(created.elapsed());
    }
    latencies.sort();
    println!(
        "create→published via the change feed (N=20): median {:?}, p90 {:?}, max {:?}",
        latencies[10], latencies[18], latencies[19]
    );
    // A PATCH comes through the feed too.
    let id = stack.create_cluster("fed-patched", json!({})).await?;
    eventually(Duration::from_secs(30), || async { Ok((tap.count(&id).await? > 0).then_some(())) }).await?;
    let uri = format!("{}/api/hyperfleet/v1/clusters/{id}", stack.api_url);
    reqwest::Client::new().patch(&uri).json(&json!({"labels": {"v": "2"}})).send().await?;
    eventually(Duration::from_secs(30), || async {
        Ok(tap
            .events()
            .await?
            .iter()
            .any(|e| e["data"]["id"] == id.as_str() && e["data"]["generation"] == 2)
            .then_some(()))
    })
    .await?;

    // The API restarts: the sentinel reconnects and resumes; a cluster created afterwards arrives.
    stack.restart_api().await?;
    let after = stack.create_cluster("after-restart", json!({})).await?;
    eventually(Duration::from_secs(30), || async { Ok((tap.count(&after).await? > 0).then_some(())) })
        .await
        .with_context(|| sentinel.log_tail())?;
    assert_eq!(metric_sum(&sentinel.metrics().await?, "hyperfleet_sentinel_poll_duration_seconds_count"), 1.0);
    sentinel.stop().await;
    tap.close().await;
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn sentinels_with_different_selectors_publish_disjoint_sets() -> Result<()> {
    let stack = ApiStack::start().await?;
    let (ex_a, ex_b) = (format!("{}-a", stack.exchange), format!("{}-b", stack.exchange));
    let tap_a = stack.tap_on(&ex_a, "#").await?;
    let tap_b = stack.tap_on(&ex_b, "#").await?;
    let selector = |shard: &str| json!([{"label": "shard", "value": shard}]).to_string();
    let a = stack
        .sentinel("a", &[("HYPERFLEET_BROKER_EXCHANGE", ex_a.clone()), ("HYPERFLEET_RESOURCE_SELECTOR", selector("a"))])
        .await?;
    let b = stack
        .sentinel("b", &[("HYPERFLEET_BROKER_EXCHANGE", ex_b.clone()), ("HYPERFLEET_RESOURCE_SELECTOR", selector("b"))])
        .await?;
    let a1 = stack.create_cluster("in-a-1", json!({"shard": "a"})).await?;
    let a2 = stack.create_cluster("in-a-2", json!({"shard": "a", "other": "x"})).await?;
    let b1 = stack.create_cluster("in-b-1", json!({"shard": "b"})).await?;
    let none = stack.create_cluster("in-none", json!({"shard": "c"})).await?;
    all_seen(&tap_a, &[a1.clone(), a2.clone()]).await?;
    all_seen(&tap_b, std::slice::from_ref(&b1)).await?;
    passes(&a, 2.0).await?;
    passes(&b, 2.0).await?;
    for id in [&b1, &none] {
        assert_eq!(tap_a.count(id).await?, 0, "sentinel a published {id}");
    }
    for id in [&a1, &a2, &none] {
        assert_eq!(tap_b.count(id).await?, 0, "sentinel b published {id}");
    }
    let m = a.metrics().await?;
    assert!(m.contains("resource_selector=\"shard=a\""), "{m}");
    a.stop().await;
    b.stop().await;
    tap_a.close().await;
    tap_b.close().await;
    if let Ok(conn) = stack.broker()?.connect("hyperfleet-test-cleanup").await {
        let ch = conn.create_channel().await?;
        for ex in [&ex_a, &ex_b] {
            let _ = ch.exchange_delete(ex.as_str().into(), Default::default()).await;
        }
        let _ = conn.close(200, "done".into()).await;
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_exchange_of_another_type_stops_the_sentinel_naming_both_types() -> Result<()> {
    let stack = ApiStack::start().await?;
    let fanout = hyperfleet_common::broker::BrokerConfig { exchange_type: "fanout".into(), ..stack.broker()? };
    let conn = fanout.connect("hyperfleet-test-fanout").await?;
    fanout.declare_exchange(&conn.create_channel().await?).await?;
    let mut vars = stack.worker_vars()?;
    vars.push(("HYPERFLEET_HEALTH_PORT", hyperfleet_tests::free_port().to_string()));
    vars.push(("HYPERFLEET_METRICS_PORT", hyperfleet_tests::free_port().to_string()));
    vars.push(("HYPERFLEET_LOG_FORMAT", "text".into()));
    let run = tokio::process::Command::new(stack.env.bin("hyperfleet-sentinel")?).env_clear().envs(vars).output();
    let out = tokio::time::timeout(Duration::from_secs(60), run).await.context("the sentinel should exit")??;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("received 'topic' but current is 'fanout'"), "{text}");
    let _ = conn.close(200, "done".into()).await;
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn two_replicas_publish_once_and_the_survivor_takes_over() -> Result<()> {
    let stack = ApiStack::start().await?;
    let tap = stack.tap("#").await?;
    let lease = format!("hf-test-{}", stack.tag);
    let election = election(&lease, stack.env.get("KUBECONFIG")?);
    let mut replicas =
        vec![stack.sentinel("replica-a", &election).await?, stack.sentinel("replica-b", &election).await?];
    let leader = eventually(Duration::from_secs(30), || async {
        let a = leader_gauge(&replicas[0].metrics().await?);
        let b = leader_gauge(&replicas[1].metrics().await?);
        Ok(match (a, b) {
            (1.0, 0.0) => Some(0),
            (0.0, 1.0) => Some(1),
            _ => None,
        })
    })
    .await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(stack.create_cluster(&format!("replicated-{i}"), json!({})).await?);
    }
    all_seen(&tap, &ids).await?;
    passes(&replicas[0], 2.0).await?;
    passes(&replicas[1], 2.0).await?;
    for id in &ids {
        assert_eq!(tap.count(id).await?, 1, "{id} published by both replicas");
    }
    let published = "hyperfleet_sentinel_events_published_total";
    assert_eq!(metric_sum(&replicas[1 - leader].metrics().await?, published), 0.0, "the follower publishes nothing");

    // The leader dies without a word; the survivor takes over once the lease lapses.
    let mut dead = replicas.remove(leader);
    dead.kill().await?;
    let survivor = replicas.remove(0);
    eventually(Duration::from_secs(30), || async {
        Ok((leader_gauge(&survivor.metrics().await?) == 1.0).then_some(()))
    })
    .await
    .with_context(|| survivor.log_tail())?;
    let late = stack.create_cluster("after-failover", json!({})).await?;
    all_seen(&tap, std::slice::from_ref(&late)).await?;

    survivor.stop().await;
    delete_lease(&stack, &lease).await?;
    tap.close().await;
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn liveness_fails_when_polls_go_stale_and_recovers() -> Result<()> {
    let mut stack = ApiStack::start().await?;
    let sentinel = stack.sentinel("stale", &[]).await?;
    let healthz = format!("http://127.0.0.1:{}/healthz", sentinel.health_port);
    assert_eq!(reqwest::get(&healthz).await?.status(), 200);
    stack.api.kill().await?;
    let body = until_status(&healthz, 503, Duration::from_secs(30)).await?;
    assert!(body["reason"].as_str().unwrap_or("").contains("poll stale"), "{body}");
    stack.restart_api().await?;
    until_status(&healthz, 200, Duration::from_secs(60)).await.with_context(|| sentinel.log_tail())?;
    sentinel.stop().await;
    stack.stop().await;
    Ok(())
}

/// Events are published `mandatory`: one that no queue takes is not "published" — it is counted,
/// `/readyz` says why, and it is retried until a queue is bound, then it arrives.
#[tokio::test]
async fn an_unroutable_event_is_reported_and_retried_until_a_queue_is_bound() -> Result<()> {
    let stack = ApiStack::start().await?;
    let sentinel = stack.sentinel("unroutable", &[]).await?;
    let readyz = format!("http://127.0.0.1:{}/readyz", sentinel.health_port);
    let id = stack.create_cluster("nobody-listens", json!({})).await?;
    let body = until_status(&readyz, 503, Duration::from_secs(30)).await.with_context(|| sentinel.log_tail())?;
    let reason = body["reason"].as_str().unwrap_or("");
    assert!(reason.contains("unroutable") && reason.contains(&stack.exchange), "{body}");
    let unroutable = metric_sum(&sentinel.metrics().await?, "hyperfleet_sentinel_unroutable_total");
    assert!(unroutable >= 1.0, "unroutable_total = {unroutable}");
    let published = metric_sum(&sentinel.metrics().await?, "hyperfleet_sentinel_events_published_total");
    assert_eq!(published, 0.0, "nothing was routed, so nothing counts as published");

    let tap = stack.tap("#").await?;
    all_seen(&tap, std::slice::from_ref(&id)).await.with_context(|| sentinel.log_tail())?;
    until_status(&readyz, 200, Duration::from_secs(30)).await.with_context(|| sentinel.log_tail())?;
    sentinel.stop().await;
    tap.close().await;
    stack.stop().await;
    Ok(())
}

/// A leader whose apiserver calls hang (a frozen proxy) stops publishing at its renew deadline,
/// before its lease can lapse for the other replica, which then takes over: no event created
/// before, during or after the handover is published by both.
#[tokio::test]
async fn a_leader_cut_off_from_the_apiserver_stops_before_the_other_takes_over() -> Result<()> {
    let stack = ApiStack::start().await?;
    let tap = stack.tap("#").await?;
    let proxy = KubeProxy::start(&stack.env).await?;
    let lease = format!("hf-test-{}", stack.tag);
    let cut = stack.sentinel("cut", &election(&lease, &proxy.kubeconfig.display().to_string())).await?;
    eventually(Duration::from_secs(30), || async { Ok((leader_gauge(&cut.metrics().await?) == 1.0).then_some(())) })
        .await
        .with_context(|| cut.log_tail())?;
    let other = stack.sentinel("other", &election(&lease, stack.env.get("KUBECONFIG")?)).await?;
    passes(&other, 2.0).await?;
    assert_eq!(leader_gauge(&other.metrics().await?), 0.0, "one leader while both reach the apiserver");

    proxy.freeze();
    // Clusters keep coming, ten a second, through the handover and after it. The new leader
    // announces again what the old one announced (it has no record of it: by design); what is
    // created once it leads must be announced once, and the old leader must have stopped by then.
    let published = "hyperfleet_sentinel_events_published_total";
    let (mut ids, deadline) = (Vec::new(), Instant::now() + Duration::from_secs(30));
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    let mut took_over = None;
    loop {
        pace.tick().await;
        if took_over.is_none() && leader_gauge(&other.metrics().await?) == 1.0 {
            took_over = Some((ids.len(), metric_sum(&cut.metrics().await?, published)));
        }
        ids.push(stack.create_cluster(&format!("handover-{}", ids.len()), json!({})).await?);
        if took_over.is_some_and(|(from, _)| ids.len() >= from + 5) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the other replica did not take over\n{}", other.log_tail());
    }
    let (from, cut_published) = took_over.context("took over")?;
    all_seen(&tap, &ids).await?;
    passes(&cut, 2.0).await?;
    passes(&other, 2.0).await?;
    for id in &ids[from..] {
        assert_eq!(tap.count(id).await?, 1, "{id} published by both replicas\n{}", cut.log_tail());
    }
    assert_eq!(
        metric_sum(&cut.metrics().await?, published),
        cut_published,
        "the cut-off replica published after the other took over\n{}",
        cut.log_tail()
    );
    assert_eq!(leader_gauge(&cut.metrics().await?), 0.0, "the cut-off replica no longer leads");

    proxy.thaw();
    cut.stop().await;
    other.stop().await;
    proxy.stop().await;
    delete_lease(&stack, &lease).await?;
    tap.close().await;
    stack.stop().await;
    Ok(())
}
