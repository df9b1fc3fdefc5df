//! Leader election on a `coordination.k8s.io/v1` Lease, so replicas of one sentinel never publish
//! twice: only the holder publishes; the others poll (staying ready) and take over once the
//! holder has not renewed for `lease_duration`. Every write is a compare-and-swap on the Lease's
//! `resourceVersion`, so two replicas cannot both win.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LeaderElectionConfig {
    /// Elect a leader among replicas (needs Kubernetes access); off for a single local instance.
    pub enabled: bool,
    /// Lease name; replicas that should share one leader use the same name.
    pub lease_name: String,
    /// Namespace of the Lease; empty means the pod's (`POD_NAMESPACE`, then the service account's).
    pub namespace: String,
    /// A leader that has not renewed for this long is replaced.
    #[serde(with = "hyperfleet_common::config::duration")]
    pub lease_duration: Duration,
    /// How often the leader renews and the others check.
    #[serde(with = "hyperfleet_common::config::duration")]
    pub retry_period: Duration,
    /// kubeconfig file; unset means `KUBECONFIG`, `~/.kube/config`, then in-cluster.
    pub kubeconfig: Option<std::path::PathBuf>,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        LeaderElectionConfig {
            enabled: false,
            lease_name: "hyperfleet-sentinel".into(),
            namespace: String::new(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
            kubeconfig: None,
        }
    }
}

/// Whether this process may publish.
#[derive(Clone)]
pub struct Leadership(Arc<AtomicBool>);

impl Leadership {
    /// Always the leader (election off).
    pub fn alone() -> Self {
        Leadership(Arc::new(AtomicBool::new(true)))
    }
    pub fn is_leader(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    fn set(&self, leader: bool) {
        if self.0.swap(leader, Ordering::Relaxed) != leader {
            tracing::info!(leader, "leadership changed");
        }
        metrics::gauge!("hyperfleet_sentinel_leader").set(if leader { 1.0 } else { 0.0 });
    }
}

async fn client(cfg: &LeaderElectionConfig) -> Result<Client, String> {
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.map_err(|e| e.to_string())?
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    Client::try_from(config).map_err(|e| e.to_string())
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Starts campaigning; the returned handle says whether this process leads right now.
pub async fn start(cfg: &LeaderElectionConfig, shutdown: CancellationToken) -> Result<Leadership, String> {
    if !cfg.enabled {
        return Ok(Leadership::alone());
    }
    let client = client(cfg).await.map_err(|e| format!("leader election needs Kubernetes: {e}"))?;
    let namespace = if cfg.namespace.is_empty() {
        std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| client.default_namespace().to_string())
    } else {
        cfg.namespace.clone()
    };
    let host = std::env::var("POD_NAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "sentinel".into());
    let me = format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let leases: Api<Lease> = Api::namespaced(client, &namespace);
    let leadership = Leadership(Arc::new(AtomicBool::new(false)));
    leadership.set(false);
    let (cfg, handle) = (cfg.clone(), leadership.clone());
    tracing::info!(lease = %cfg.lease_name, %namespace, identity = %me, "campaigning for leadership");
    tokio::spawn(async move {
        loop {
            match round(&leases, &cfg, &me).await {
                Ok(leader) => handle.set(leader),
                Err(e) => {
                    // Without a successful renewal the lease lapses: stop publishing before someone
                    // else may start.
                    tracing::warn!(error = %e, "leader election round failed");
                    handle.set(false);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(cfg.retry_period) => {}
            }
        }
        if handle.is_leader() {
            handle.set(false);
            if let Err(e) = release(&leases, &cfg, &me).await {
                tracing::debug!(error = %e, "lease not released");
            }
        }
    });
    Ok(leadership)
}

fn lease_seconds(cfg: &LeaderElectionConfig) -> i32 {
    i32::try_from(cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// One election round: acquire, renew or observe. Returns whether this process holds the lease.
async fn round(leases: &Api<Lease>, cfg: &LeaderElectionConfig, me: &str) -> Result<bool, kube::Error> {
    let Some(mut lease) = leases.get_opt(&cfg.lease_name).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(cfg.lease_name.clone()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(me.into()),
                lease_duration_seconds: Some(lease_seconds(cfg)),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false), // someone else was faster
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let duration = Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0));
    let expired = match &spec.renew_time {
        None => true,
        Some(MicroTime(t)) => {
            let age = Timestamp::now().duration_since(*t);
            age.as_secs_f64() > duration.as_secs_f64()
        }
    };
    if holder != me && !holder.is_empty() && !expired {
        return Ok(false);
    }
    let taking_over = holder != me;
    let mut next = spec;
    if taking_over {
        next.holder_identity = Some(me.into());
        next.acquire_time = Some(now());
        next.lease_transitions = Some(next.lease_transitions.unwrap_or(0) + 1);
    }
    next.renew_time = Some(now());
    next.lease_duration_seconds = Some(lease_seconds(cfg));
    lease.spec = Some(next);
    // `replace` carries the resourceVersion read above: a concurrent writer makes this a 409.
    match leases.replace(&cfg.lease_name, &PostParams::default(), &lease).await {
        Ok(_) => {
            if taking_over {
                tracing::info!(previous = %holder, "lease acquired");
            }
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the lease up on shutdown so a replica takes over at once.
async fn release(leases: &Api<Lease>, cfg: &LeaderElectionConfig, me: &str) -> Result<(), kube::Error> {
    let Some(mut lease) = leases.get_opt(&cfg.lease_name).await? else { return Ok(()) };
    let mut spec = lease.spec.clone().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(me) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    lease.spec = Some(spec);
    leases.replace(&cfg.lease_name, &PostParams::default(), &lease).await.map(|_| ())
}
