//! What the controller runs with right now: the policy and CA (reloaded from disk when the
//! mounted ConfigMap or Secret changes), leadership, readiness and metrics.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::ca::CertificateAuthority;
use crate::config::load_policy;
use crate::metrics::Metrics;
use crate::policy::Policy;

/// Warn when the CA expires sooner than this.
pub const CA_EXPIRY_WARNING: time::Duration = time::Duration::days(30);

/// Where the policy and the CA come from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub policy: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
}

pub type CaSlot = Result<CertificateAuthority, String>;

pub struct Live {
    policy: RwLock<Arc<Policy>>,
    ca: RwLock<Arc<CaSlot>>,
    leader: AtomicBool,
    leader_known: AtomicBool,
    synced: AtomicBool,
    pub metrics: Metrics,
    /// Bumped when every CSR should be looked at again: a new policy, or newly gained leadership.
    recheck: watch::Sender<u64>,
}

impl Live {
    /// `leader_election`: false means this replica always acts.
    pub fn new(policy: Policy, ca: CaSlot, leader_election: bool) -> Arc<Live> {
        let live = Arc::new(Live {
            policy: RwLock::new(Arc::new(policy)),
            ca: RwLock::new(Arc::new(Err(String::new()))),
            leader: AtomicBool::new(!leader_election),
            leader_known: AtomicBool::new(!leader_election),
            synced: AtomicBool::new(false),
            metrics: Metrics::new(),
            recheck: watch::channel(0).0,
        });
        live.metrics.leader.set(i64::from(!leader_election));
        live.set_ca(ca);
        live
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn ca(&self) -> Arc<CaSlot> {
        self.ca
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|c| c.into_inner().clone())
    }

    fn set_policy(&self, policy: Policy) {
        match self.policy.write() {
            Ok(mut slot) => *slot = Arc::new(policy),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(policy),
        }
        self.recheck.send_modify(|n| *n += 1);
    }

    fn set_ca(&self, ca: CaSlot) {
        if let Ok(ca) = &ca {
            self.metrics
                .ca_not_after
                .set(ca.not_after().unix_timestamp());
        }
        // A new CA gets its own warning if it is close to expiry.
        self.metrics.ca_expiring_soon.set(0);
        match self.ca.write() {
            Ok(mut slot) => *slot = Arc::new(ca),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(ca),
        }
        // Approved CSRs that failed for want of a CA are Failed for good; nothing to recheck.
        self.check_ca_expiry(OffsetDateTime::now_utc());
    }

    /// Warn (log + metric) once when the CA comes within 30 days of expiry. Called on every
    /// load and on every reload tick, so a long-running controller notices too.
    pub fn check_ca_expiry(&self, now: OffsetDateTime) {
        let ca = self.ca();
        let Ok(ca) = ca.as_ref() else { return };
        let expiring = ca.not_after() - now < CA_EXPIRY_WARNING;
        let was = self.metrics.ca_expiring_soon.set(i64::from(expiring)) == 1;
        if expiring && !was {
            tracing::warn!(subject = ca.subject(), not_after = %ca.not_after(), "the signing CA expires within 30 days; certificates are cut off at its expiry; rotate the CA Secret");
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    pub fn set_leader(&self, leader: bool) {
        let was = self.leader.swap(leader, Ordering::SeqCst);
        self.leader_known.store(true, Ordering::SeqCst);
        self.metrics.leader.set(i64::from(leader));
        if leader && !was {
            tracing::info!("became leader: deciding and signing");
            self.recheck.send_modify(|n| *n += 1);
        } else if !leader && was {
            tracing::warn!("lost leadership: standing by");
        }
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::SeqCst);
    }

    /// Ready: the watch has synced, the CA is loaded and this replica knows whether it leads.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.synced.load(Ordering::SeqCst) {
            return Err("the CSR watch has not synced yet".into());
        }
        if let Err(why) = self.ca().as_ref() {
            return Err(format!("the CA is not loaded: {why}"));
        }
        if !self.leader_known.load(Ordering::SeqCst) {
            return Err("leader election has not answered yet".into());
        }
        Ok(())
    }

    pub fn recheck_events(&self) -> watch::Receiver<u64> {
        self.recheck.subscribe()
    }
}

fn read_all(paths: &[&PathBuf]) -> Option<Vec<Vec<u8>>> {
    paths.iter().map(|p| std::fs::read(p).ok()).collect()
}

/// Load the CA, logging (not failing) when it cannot be.
pub fn load_ca(sources: &Sources) -> CaSlot {
    CertificateAuthority::load(&sources.ca_cert, &sources.ca_key).map_err(|e| e.to_string())
}

/// Poll the mounted files and swap in a new policy or CA when their content changes. A broken
/// new file is rejected (log + metric) and the last good one stays in force. Kubelet updates
/// ConfigMap and Secret volumes by swapping a symlink, so reading the content is what works.
pub async fn reload_forever(live: Arc<Live>, sources: Sources, interval: Duration) {
    let mut last_policy = read_all(&[&sources.policy]);
    let mut last_ca = read_all(&[&sources.ca_cert, &sources.ca_key]);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        live.check_ca_expiry(OffsetDateTime::now_utc());
        let policy_now = read_all(&[&sources.policy]);
        if policy_now != last_policy {
            last_policy = policy_now;
            match load_policy(&sources.policy) {
                Ok(policy) => {
                    tracing::info!(path = %sources.policy.display(), signers = ?policy.signer_names, "policy reloaded");
                    live.set_policy(policy);
                    live.metrics.reload("policy", true);
                }
                Err(error) => {
                    tracing::error!(%error, "new policy rejected; the previous policy stays in force");
                    live.metrics.reload("policy", false);
                }
            }
        }
        let ca_now = read_all(&[&sources.ca_cert, &sources.ca_key]);
        if ca_now != last_ca {
            last_ca = ca_now;
            match load_ca(&sources) {
                Ok(ca) => {
                    tracing::info!(subject = ca.subject(), not_after = %ca.not_after(), "CA reloaded");
                    live.set_ca(Ok(ca));
                    live.metrics.reload("ca", true);
                }
                Err(error) => {
                    let keeps = if live.ca().is_ok() {
                        "the previous CA stays in force"
                    } else {
                        "no CA is loaded"
                    };
                    tracing::error!(%error, "new CA rejected; {keeps}");
                    live.metrics.reload("ca", false);
                }
            }
        }
    }
}
