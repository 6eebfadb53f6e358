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

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::oneshot;

use crate::live::Live;

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
            .with_grace(settings.duration_seconds.div_ceil(5).max(1))
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
        live.set_leader(*state.borrow_and_update());
        loop {
            tokio::select! {
                changed = state.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    live.set_leader(*state.borrow_and_update());
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
