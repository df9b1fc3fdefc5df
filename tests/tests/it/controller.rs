//! The adapter as the controller of the objects it owns, on the real kube-apiserver and
//! controller-manager: out-of-band deletes and changes restored without an API write, deletes
//! finished by the watch (not by a re-announcement, which these tests put an hour away), and an
//! apply that lands after its cluster was deleted cleaned up.

use std::time::Duration;

use anyhow::{Context, Result};
use hyperfleet_tests::{KubeProxy, LocalEnv, Stack, StackOptions, condition, eventually, metric_sum, metric_sum_where};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(90);

/// Only the change feed and the adapter's own watch drive the work: nothing is re-announced.
fn no_reannouncements() -> StackOptions {
    StackOptions {
        sentinel: vec![("HYPERFLEET_MAX_AGE_NOT_READY", "1h".into()), ("HYPERFLEET_MAX_AGE_READY", "1h".into())],
        ..Default::default()
    }
}

/// The adapter's condition `kind` in the cluster's status report.
async fn reported(stack: &Stack, id: &str, kind: &str) -> Result<Value> {
    let (_, s) = stack.get(&format!("clusters/{id}/statuses")).await?;
    let conditions = s["items"][0]["conditions"].as_array().cloned().unwrap_or_default();
    Ok(conditions.into_iter().find(|c| c["type"] == kind).unwrap_or(Value::Null))
}

async fn wait_no_namespace(namespaces: &Api<Namespace>, id: &str, stack: &Stack) -> Result<()> {
    eventually(WITHIN, || async { Ok(namespaces.get_opt(id).await?.is_none().then_some(())) })
        .await
        .with_context(|| format!("Namespace {id} is still there\n{}", stack.logs()))
}

#[tokio::test]
async fn objects_deleted_or_changed_out_of_band_are_restored_without_an_api_write() -> Result<()> {
    let stack = Stack::start_with(no_reannouncements()).await?;
    let kube = stack.env.kube().await?;
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    let id = stack.create_cluster("drifting").await?;
    stack.wait_reconciled(&id, 1, WITHIN).await?;
    let first = namespaces.get(&id).await?.metadata.uid.context("uid")?;
    let labels = namespaces.get(&id).await?.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("hyperfleet.io/adapter").map(String::as_str), Some("landing-zone"), "{labels:?}");
    assert_eq!(labels.get("hyperfleet.io/resource-id"), Some(&id));

    // Someone deletes the Namespace: it comes back (a new one), with its ServiceAccount.
    namespaces.delete(&id, &DeleteParams::default()).await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(kube.clone(), &id);
    eventually(WITHIN, || async {
        let ns = namespaces.get_opt(&id).await?;
        let fresh = ns.filter(|n| n.metadata.uid.as_ref() != Some(&first) && n.metadata.deletion_timestamp.is_none());
        Ok(match fresh {
            Some(_) => accounts.get_opt("landing-zone").await?.map(|_| ()),
            None => None,
        })
    })
    .await
    .with_context(|| format!("the Namespace was not restored\n{}", stack.logs()))?;
    let applied = eventually(WITHIN, || async {
        let c = reported(&stack, &id, "Applied").await?;
        Ok((c["reason"] == "ResourcesRestored").then_some(c))
    })
    .await?;
    assert!(
        applied["message"].as_str().unwrap_or_default().contains(&format!("Namespace {id} was deleted")),
        "{applied}"
    );

    // Someone changes a label the adapter set on the ServiceAccount: it is set back.
    let patch = json!({"metadata": {"labels": {"hyperfleet.io/cluster-name": "tampered"}}});
    accounts.patch("landing-zone", &PatchParams::default(), &Patch::Merge(&patch)).await?;
    eventually(WITHIN, || async {
        let sa = accounts.get("landing-zone").await?;
        let name = sa.metadata.labels.unwrap_or_default().get("hyperfleet.io/cluster-name").cloned();
        Ok((name.as_deref() == Some("drifting")).then_some(()))
    })
    .await
    .with_context(|| format!("the label was not set back\n{}", stack.logs()))?;

    let repairs = |metrics: &str, kind: &str, change: &str| {
        let (kind, change) = (format!("kind=\"{kind}\""), format!("change=\"{change}\""));
        metric_sum_where(metrics, "hyperfleet_adapter_drift_repairs_total", &[&kind, &change])
    };
    eventually(WITHIN, || async {
        let m = stack.adapter.metrics().await?;
        Ok((repairs(&m, "Namespace", "deleted") >= 1.0 && repairs(&m, "ServiceAccount", "changed") >= 1.0)
            .then_some(()))
    })
    .await
    .context("both repairs counted")?;
    // No API write: the cluster is still at generation 1, and Reconciled.
    let (_, c) = stack.get(&format!("clusters/{id}")).await?;
    assert_eq!((c["generation"].as_i64(), condition(&c, "Reconciled")["status"].as_str()), (Some(1), Some("True")));
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_delete_held_by_someone_elses_finalizer_finishes_when_it_is_released() -> Result<()> {
    let stack = Stack::start_with(no_reannouncements()).await?;
    let namespaces: Api<Namespace> = Api::all(stack.env.kube().await?);
    let id = stack.create_cluster("held").await?;
    stack.wait_reconciled(&id, 1, WITHIN).await?;
    // A finalizer of someone else's keeps the Namespace Terminating after the adapter deletes it.
    let hold = json!({"metadata": {"finalizers": ["hyperfleet.test/hold"]}});
    namespaces.patch(&id, &PatchParams::default(), &Patch::Merge(&hold)).await?;
    let held = async {
        let resp = stack.client().delete(format!("{}/api/hyperfleet/v1/clusters/{id}", stack.api_url)).send().await?;
        anyhow::ensure!(resp.status() == 202, "DELETE: {}", resp.status());
        let finalized = eventually(WITHIN, || async {
            let c = reported(&stack, &id, "Finalized").await?;
            Ok((c["reason"] == "CleanupInProgress").then_some(c))
        })
        .await
        .with_context(|| stack.logs())?;
        anyhow::ensure!(finalized["status"] == "False", "{finalized}");
        anyhow::ensure!(stack.get(&format!("clusters/{id}")).await?.0 == 200, "gone while its Namespace is not");
        Ok(())
    }
    .await;
    // Its owner lets it go (also when the checks above failed, so that nothing stays Terminating):
    // the watch sees it gone and the cluster is hard-deleted.
    namespaces.patch(&id, &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"finalizers": null}}))).await?;
    held?;
    stack.wait_gone(&id, WITHIN).await?;
    assert!(namespaces.get_opt(&id).await?.is_none());
    eventually(WITHIN, || async {
        let m = stack.adapter.metrics().await?;
        let recorded = metric_sum(&m, "hyperfleet_adapter_resource_deletion_duration_seconds_count") >= 1.0;
        Ok((recorded && metric_sum(&m, "hyperfleet_adapter_resource_deletions_in_progress") == 0.0).then_some(()))
    })
    .await
    .context("the deletion measured, none in progress")?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_made_while_the_adapter_is_down_all_finish_once_it_is_back_even_if_someone_else_removed_objects()
-> Result<()> {
    let mut stack = Stack::start_with(no_reannouncements()).await?;
    let namespaces: Api<Namespace> = Api::all(stack.env.kube().await?);
    let ids = stack.create_clusters("down", 20).await?;
    stack.wait_all_reconciled(&ids, WITHIN).await?;
    stack.kill_adapter().await?;
    for id in &ids {
        let resp = stack.client().delete(format!("{}/api/hyperfleet/v1/clusters/{id}", stack.api_url)).send().await?;
        assert_eq!(resp.status(), 202);
    }
    // Someone else removes half of the Namespaces meanwhile: those count as cleaned up.
    for id in ids.iter().step_by(2) {
        namespaces.delete(id, &DeleteParams::default()).await?;
    }
    // Nothing is re-announced: each delete event is worked on once, and the watch finishes those
    // whose Namespace was still terminating.
    stack.start_adapter().await?;
    for id in &ids {
        stack.wait_gone(id, WITHIN).await?;
        wait_no_namespace(&namespaces, id, &stack).await?;
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_apply_that_lands_after_its_cluster_was_deleted_is_removed() -> Result<()> {
    let env = LocalEnv::load()?;
    let proxy = KubeProxy::start(&env).await?;
    let mut stack = Stack::start_with(no_reannouncements()).await?;
    let namespaces: Api<Namespace> = Api::all(env.kube().await?);
    // Replica "slow" reaches Kubernetes through a proxy that will hang; the stack's own adapter is
    // stopped until slow holds the create event, so that the delete event goes to the other one.
    stack.kill_adapter().await?;
    let slow = stack
        .another_adapter(
            "slow",
            &[
                ("HYPERFLEET_KUBERNETES_KUBECONFIG", proxy.kubeconfig.display().to_string()),
                ("HYPERFLEET_KUBERNETES_REQUEST_TIMEOUT", "5m".into()),
                ("HYPERFLEET_PREFETCH", "1".into()),
            ],
        )
        .await?;
    // Its watches are up (nothing of theirs in flight), so what the freeze holds is the apply.
    eventually(WITHIN, || async {
        Ok((metric_sum(&slow.metrics().await?, "hyperfleet_adapter_watching") == 2.0).then_some(()))
    })
    .await
    .with_context(|| slow.log_tail())?;
    proxy.freeze();
    let id = stack.create_cluster("raced").await?;
    eventually(WITHIN, || async { Ok((proxy.held() > 0).then_some(())) })
        .await
        .with_context(|| format!("the slow replica never tried to apply\n{}", slow.log_tail()))?;

    stack.start_adapter().await?;
    let resp = stack.client().delete(format!("{}/api/hyperfleet/v1/clusters/{id}", stack.api_url)).send().await?;
    assert_eq!(resp.status(), 202);
    stack.wait_gone(&id, WITHIN).await?;
    // The slow replica's apply now goes through, for a cluster that is gone, and is undone.
    proxy.thaw();
    eventually(WITHIN, || async {
        Ok((metric_sum(&slow.metrics().await?, "hyperfleet_adapter_orphans_removed_total") >= 1.0).then_some(()))
    })
    .await
    .with_context(|| format!("the late apply was not undone\n{}", slow.log_tail()))?;
    wait_no_namespace(&namespaces, &id, &stack).await?;
    slow.stop().await;
    stack.stop().await;
    proxy.stop().await;
    Ok(())
}
