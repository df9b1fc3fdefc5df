//! Leader election on a `coordination.k8s.io/v1` Lease, so replicas of one sentinel never publish
//! twice: only the holder publishes; the others poll (staying ready) and take over once the
//! holder has not renewed for `lease_duration`. Every write is a compare-and-swap on the Lease's
//! `resourceVersion`, so two replicas cannot both win.
//!
//! Time is only ever measured on this process's monotonic clock, never compared with another
//! replica's: the leader leads until `renew_deadline` after the start of its last successful
//! renewal (shorter than `lease_duration`, so it stops publishing before anyone may take over,
//! even while its apiserver calls hang), and a follower counts a holder's lease as expired once
//! the Lease record has not changed for `lease_duration` since it first saw it. A round's apiserver
//! calls are bounded by the renew deadline; on shutdown the lease is released and the release
//! awaited ([`Leadership::stopped`]).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

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
    /// A leader stops publishing this long after the start of its last successful renewal unless
    /// it renews again; shorter than `lease_duration`. `0s`: two thirds of `lease_duration`.
    #[serde(with = "hyperfleet_common::config::duration")]
    pub renew_deadline: Duration,
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
            renew_deadline: Duration::ZERO,
            retry_period: Duration::from_secs(2),
            kubeconfig: None,
        }
    }
}

impl LeaderElectionConfig {
    /// The renew deadline in effect (see [`LeaderElectionConfig::renew_deadline`]).
    pub fn renew_deadline(&self) -> Duration {
        if self.renew_deadline.is_zero() { self.lease_duration * 2 / 3 } else { self.renew_deadline }
    }

    /// `retry_period` < `renew_deadline` < `lease_duration`: a leader gets more than one try to
    /// renew, and stops before its lease can expire for the others.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.renew_deadline() >= self.lease_duration {
            return Err("leader_election.renew_deadline must be shorter than leader_election.lease_duration".into());
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline() {
            return Err(
                "leader_election.retry_period must be above 0 and shorter than leader_election.renew_deadline".into()
            );
        }
        Ok(())
    }
}

/// Whether this process may publish: always (election off), or until the renew deadline of the
/// last successful renewal.
#[derive(Clone)]
pub struct Leadership(Arc<State>);

struct State {
    alone: bool,
    /// Leader until then (monotonic); `None` while following.
    until: Mutex<Option<Instant>>,
    /// The campaign, which releases the lease when it ends.
    campaign: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Leadership {
    /// Always the leader (election off).
    pub fn alone() -> Self {
        Leadership::new(true)
    }
    fn new(alone: bool) -> Self {
        Leadership(Arc::new(State { alone, until: Mutex::new(None), campaign: Mutex::new(None) }))
    }
    pub fn is_leader(&self) -> bool {
        self.0.alone || self.until().is_some_and(|until| Instant::now() < until)
    }
    fn until(&self) -> Option<Instant> {
        *self.0.until.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Leads until `until` (a renewal succeeded), or not at all (`None`).
    fn set(&self, until: Option<Instant>) {
        let was = self.is_leader();
        *self.0.until.lock().unwrap_or_else(|e| e.into_inner()) = until;
        let leader = self.is_leader();
        if was != leader {
            tracing::info!(leader, "leadership changed");
        }
        metrics::gauge!("hyperfleet_sentinel_leader").set(if leader { 1.0 } else { 0.0 });
    }
    /// Waits (at most `within`) until the campaign has ended and released the lease; call after
    /// the shutdown token was cancelled.
    pub async fn stopped(&self, within: Duration) {
        let campaign = self.0.campaign.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(campaign) = campaign
            && tokio::time::timeout(within, campaign).await.is_err()
        {
            tracing::warn!("the lease was not released in time; the other replicas take over when it expires");
        }
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
    let leadership = Leadership::new(false);
    leadership.set(None);
    let (cfg, handle) = (cfg.clone(), leadership.clone());
    tracing::info!(lease = %cfg.lease_name, %namespace, identity = %me, "campaigning for leadership");
    let deadline = cfg.renew_deadline();
    let campaign = tokio::spawn(async move {
        let mut seen = Observed::default();
        loop {
            let started = Instant::now();
            // A round is bounded by the renew deadline: a hung apiserver cannot keep this loop
            // waiting, and the deadline has ended the leadership by then anyway.
            let outcome = tokio::time::timeout(deadline, round(&leases, &cfg, &me, &mut seen))
                .await
                .map_err(|_| format!("no answer within {deadline:?}"))
                .and_then(|r| r.map_err(|e| e.to_string()));
            match outcome {
                Ok(true) => handle.set(Some(started + deadline)),
                Ok(false) => handle.set(None),
                // Still the leader until the renew deadline of the last renewal: the next round
                // may renew in time (the gauge follows the deadline).
                Err(e) => {
                    tracing::warn!(error = %e, "leader election round failed");
                    handle.set(handle.until());
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(cfg.retry_period) => {}
            }
        }
        let led = handle.is_leader();
        handle.set(None);
        if led {
            match tokio::time::timeout(deadline, release(&leases, &cfg, &me)).await {
                Ok(Ok(())) => tracing::info!("lease released"),
                Ok(Err(e)) => tracing::warn!(error = %e, "lease not released"),
                Err(_) => tracing::warn!("lease release timed out"),
            }
        }
    });
    *leadership.0.campaign.lock().unwrap_or_else(|e| e.into_inner()) = Some(campaign);
    Ok(leadership)
}

/// What a replica last saw of the Lease (holder, renew time) and when, on its own monotonic clock.
#[derive(Default)]
struct Observed(Option<((String, Option<MicroTime>), Instant)>);

impl Observed {
    /// Notes the holder and renew time read now; returns how long they have been unchanged.
    fn unchanged_for(&mut self, holder: &str, renewed: Option<MicroTime>) -> Duration {
        let record = (holder.to_string(), renewed);
        match &self.0 {
            Some((seen, at)) if *seen == record => at.elapsed(),
            _ => {
                self.0 = Some((record, Instant::now()));
                Duration::ZERO
            }
        }
    }
}

/// The Lease's `leaseDurationSeconds`: whole seconds, rounded up, so the others never wait less
/// than `lease_duration` (which the renew deadline is checked against).
fn lease_seconds(cfg: &LeaderElectionConfig) -> i32 {
    let secs = cfg.lease_duration.as_secs() + u64::from(cfg.lease_duration.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

/// One election round: acquire, renew or observe. Returns whether this process holds the lease.
async fn round(
    leases: &Api<Lease>,
    cfg: &LeaderElectionConfig,
    me: &str,
    seen: &mut Observed,
) -> Result<bool, kube::Error> {
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
    // Expired when nobody renewed it for `lease_duration` as this process's clock counts, from
    // when it first saw the current record (the holder's clock may be off).
    let expired = spec.renew_time.is_none() || seen.unchanged_for(&holder, spec.renew_time.clone()) > duration;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled(lease: u64, renew: u64, retry: u64) -> LeaderElectionConfig {
        LeaderElectionConfig {
            enabled: true,
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(renew),
            retry_period: Duration::from_secs(retry),
            ..Default::default()
        }
    }

    #[test]
    fn the_renew_deadline_defaults_to_two_thirds_of_the_lease_and_must_be_shorter() {
        assert_eq!(LeaderElectionConfig::default().renew_deadline(), Duration::from_secs(10));
        assert!(enabled(15, 0, 2).validate().is_ok());
        let e = enabled(15, 15, 2).validate().expect_err("deadline = lease");
        assert!(e.contains("renew_deadline"), "{e}");
        let e = enabled(15, 10, 10).validate().expect_err("retry = deadline");
        assert!(e.contains("retry_period"), "{e}");
        assert!(enabled(1, 5, 9).validate().is_err());
        assert!(LeaderElectionConfig { enabled: false, ..enabled(1, 5, 9) }.validate().is_ok(), "unchecked when off");
    }

    #[tokio::test]
    async fn leadership_ends_at_its_deadline_without_another_round() {
        let l = Leadership::new(false);
        assert!(!l.is_leader());
        l.set(Some(Instant::now() + Duration::from_secs(60)));
        assert!(l.is_leader());
        l.set(Some(Instant::now() - Duration::from_millis(1)));
        assert!(!l.is_leader(), "a deadline in the past is no leadership");
        assert!(Leadership::alone().is_leader());
    }

    #[test]
    fn a_lease_record_ages_only_while_it_is_unchanged() {
        let mut seen = Observed::default();
        let t = Some(MicroTime(Timestamp::now()));
        assert!(seen.unchanged_for("a", t.clone()) < Duration::from_secs(1));
        if let Some((_, at)) = &mut seen.0 {
            *at = Instant::now() - Duration::from_secs(20);
        }
        assert!(seen.unchanged_for("a", t.clone()) >= Duration::from_secs(20), "same record: it ages");
        assert!(seen.unchanged_for("b", t) < Duration::from_secs(1), "a new holder starts the count afresh");
    }
}
