//! The landing-zone work: one Namespace named after the cluster id and one ServiceAccount in it,
//! applied server-side with a fixed field manager so that re-applying is a no-op.

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

/// The cluster as the adapter reads it from the API.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ClusterView {
    pub id: String,
    pub name: String,
    pub generation: i64,
    /// Set once the cluster is being deleted.
    #[serde(default)]
    pub deleted_time: Option<String>,
}

/// Labels every object the adapter creates carries.
pub fn labels(cluster: &ClusterView) -> Value {
    json!({
        "hyperfleet.io/cluster-id": cluster.id,
        "hyperfleet.io/cluster-name": cluster.name,
        "app.kubernetes.io/managed-by": "hyperfleet-adapter",
    })
}

pub fn namespace_manifest(cluster: &ClusterView) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": cluster.id,
            "labels": labels(cluster),
            "annotations": {"hyperfleet.io/generation": cluster.generation.to_string()},
        },
    })
}

pub fn service_account_manifest(cluster: &ClusterView, name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": name,
            "namespace": cluster.id,
            "labels": labels(cluster),
            "annotations": {"hyperfleet.io/generation": cluster.generation.to_string()},
        },
    })
}

/// Deletes the cluster's Namespace (its ServiceAccount goes with it) and waits up to `within` for
/// the controller-manager to finish removing it. Returns whether it is gone.
pub async fn remove(client: &Client, cluster: &ClusterView, within: std::time::Duration) -> Result<bool, kube::Error> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.delete(&cluster.id, &Default::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(true),
        Err(e) => return Err(e),
    }
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if namespaces.get_opt(&cluster.id).await?.is_none() {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Applies the Namespace, then the ServiceAccount inside it.
pub async fn apply(
    client: &Client,
    cluster: &ClusterView,
    field_manager: &str,
    sa_name: &str,
) -> Result<(), kube::Error> {
    let params = PatchParams::apply(field_manager).force();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.patch(&cluster.id, &params, &Patch::Apply(namespace_manifest(cluster))).await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &cluster.id);
    accounts.patch(sa_name, &params, &Patch::Apply(service_account_manifest(cluster, sa_name))).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_carry_identity_and_generation() {
        let c = ClusterView { id: "0194-x".into(), name: "prod".into(), generation: 4, deleted_time: None };
        let ns = namespace_manifest(&c);
        assert_eq!(ns["metadata"]["name"], "0194-x");
        assert_eq!(ns["metadata"]["labels"]["hyperfleet.io/cluster-name"], "prod");
        assert_eq!(ns["metadata"]["labels"]["app.kubernetes.io/managed-by"], "hyperfleet-adapter");
        assert_eq!(ns["metadata"]["annotations"]["hyperfleet.io/generation"], "4");
        let sa = service_account_manifest(&c, "landing-zone");
        assert_eq!(sa["metadata"]["namespace"], "0194-x");
        assert_eq!(sa["metadata"]["name"], "landing-zone");
    }
}
