//! Leader election on a coordination.k8s.io/v1 Lease in the controller's namespace, with the
//! `kube-lease-manager` crate (maintained, built on kube 5; kube-runtime has no lease helper and
//! kubert pins an older kube). Only the leader approves, denies or signs; standbys keep their
//! watch cache warm and take over when the lease expires.
//!
//! Leases are not a mutual-exclusion proof (clocks, pauses): every write csr-warden makes also
//! carries a resourceVersion, so even two replicas that both think they lead cannot decide or sign
//! a CSR twice.

use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::oneshot;

use crate::kube::request::{REQUEST_TIMEOUT, within};
use crate::ops::live::Live;

/// How long ago the holder last renewed `lease` (its renewTime, by this host's clock: the
/// holder is this replica, so there is no skew to allow for).
fn renewed_ago(lease: &Lease) -> Option<Duration> {
    let renewed = lease.spec.as_ref()?.renew_time.as_ref()?.0;
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(renewed);
    Some(Duration::try_from(age).unwrap_or(Duration::ZERO))
}

/// Whether `lease` names `identity` as its holder.
fn holds(lease: &Lease, identity: &str) -> bool {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        == Some(identity)
}

/// client-go's renew deadline: a leader whose lease has not been renewed for this long (two
/// thirds of the lease duration) stops acting, before the lease expires and a standby may take
/// it over.
#[derive(Debug)]
pub struct RenewDeadline {
    pub renew_deadline: Duration,
    elected: bool,
    confirmed: Option<Instant>,
}

impl RenewDeadline {
    pub fn new(settings: &LeaseSettings) -> Self {
        let duration = Duration::from_secs(settings.duration_seconds);
        // The lease manager renews every (duration - grace) = 2 s (1 s for leases under 3 s);
        // the deadline leaves room for one slow renewal, and ends before the lease does.
        let interval = Duration::from_secs(settings.duration_seconds.min(3) - 1);
        RenewDeadline {
            renew_deadline: duration
                .mul_f64(2.0 / 3.0)
                .max(interval + duration.saturating_sub(interval) / 2),
            elected: false,
            confirmed: None,
        }
    }

    /// How often the lease is checked: a few times within the deadline.
    pub fn check_every(&self) -> Duration {
        (self.renew_deadline / 4).max(Duration::from_millis(250))
    }

    /// The lease manager says we lead (or not); winning the lease is a renewal.
    pub fn elected(&mut self, elected: bool, now: Instant) {
        if elected && !self.elected {
            self.confirmed = Some(now);
        }
        self.elected = elected;
    }

    pub fn elected_now(&self) -> bool {
        self.elected
    }

    /// The lease was seen renewed at `renewed`.
    pub fn confirmed(&mut self, renewed: Instant) {
        self.confirmed = Some(self.confirmed.map_or(renewed, |c| c.max(renewed)));
    }

    /// Act only while elected and confirmed within the deadline.
    pub fn acting(&self, now: Instant) -> bool {
        self.elected
            && self
                .confirmed
                .is_some_and(|at| now.saturating_duration_since(at) < self.renew_deadline)
    }
}

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration_seconds: u64,
}

/// Hold or wait for the lease until `shutdown` fires, then release it so a standby takes over
/// at once instead of after the lease expires.
pub async fn run(
    client: Client,
    settings: LeaseSettings,
    live: Arc<Live>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut retry = Duration::from_secs(1);
    loop {
        let built = LeaseManagerBuilder::new(client.clone(), &settings.name)
            .with_namespace(&settings.namespace)
            .with_identity(&settings.identity)
            .with_duration(settings.duration_seconds)
            // Renew every couple of seconds, as client-go's retry period, so the renewTime a
            // healthy leader shows is always well within the renew deadline.
            .with_grace(settings.duration_seconds.saturating_sub(2).max(1))
            .build()
            .await;
        let manager = match built {
            Ok(manager) => manager,
            Err(error) => {
                tracing::error!(%error, lease = %settings.name, namespace = %settings.namespace,
                    "cannot set up the leader lease; check the Role for coordination.k8s.io leases; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = &mut shutdown => return,
                }
                retry = (retry * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        tracing::info!(identity = %settings.identity, lease = %settings.name, "leader election started");
        let (mut state, task) = manager.watch().await;
        let mut deadline = RenewDeadline::new(&settings);
        let leases: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
        let mut check = tokio::time::interval(deadline.check_every());
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        deadline.elected(*state.borrow_and_update(), Instant::now());
        live.set_leader(deadline.acting(Instant::now()));
        loop {
            tokio::select! {
                changed = state.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    deadline.elected(*state.borrow_and_update(), Instant::now());
                    live.set_leader(deadline.acting(Instant::now()));
                }
                _ = check.tick(), if deadline.elected_now() => {
                    // kube-lease-manager logs a failed renewal and keeps saying "leader": see
                    // for ourselves that the Lease is still ours and fresh, and stop acting
                    // once it cannot be confirmed before the renew deadline, as client-go does.
                    let lease = within(REQUEST_TIMEOUT.min(deadline.check_every()), leases.get_opt(&settings.name)).await;
                    let now = Instant::now();
                    match lease {
                        Ok(Some(lease)) if holds(&lease, &settings.identity) => {
                            if let Some(age) = renewed_ago(&lease) {
                                deadline.confirmed(now.checked_sub(age).unwrap_or(now));
                            }
                        }
                        Ok(_) => tracing::warn!(lease = %settings.name, "the leader lease is no longer ours"),
                        Err(error) => tracing::warn!(%error, lease = %settings.name, "cannot read the leader lease to confirm it is renewed"),
                    }
                    let acting = deadline.acting(now);
                    if !acting && live.is_leader() {
                        tracing::warn!(lease = %settings.name, renew_deadline = ?deadline.renew_deadline, "the leader lease could not be confirmed renewed within the renew deadline; no longer acting until it is");
                    }
                    live.set_leader(acting);
                }
                _ = &mut shutdown => {
                    live.set_leader(false);
                    // Closing the channel makes the manager release the lease.
                    drop(state);
                    if let Ok(Err(error)) = task.await {
                        tracing::warn!(%error, "could not release the leader lease; a standby takes over when it expires");
                    }
                    return;
                }
            }
        }
        live.set_leader(false);
        tracing::warn!("leader election stopped; restarting it");
        if let Ok(Err(error)) = task.await {
            tracing::warn!(%error, "leader election failed");
        }
    }
}
