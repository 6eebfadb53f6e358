//! What the controller runs with right now: the policy and the CAs of its signing signers
//! (reloaded from disk when the mounted ConfigMap or Secrets change), leadership, readiness and
//! metrics.
//!
//! A CA is read only when some signer signs with it: an approve-only installation needs no CA
//! files at all.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::ops::metrics::{Metrics, SignerLabels};
use crate::policy::file::load_policy;
use crate::policy::{CaPaths, Policy, SIGNER_PREFIX_KUBERNETES};
use crate::x509::ca::{CertificateAuthority, ClusterCa, ClusterRelation};

/// Warn when the CA expires sooner than this.
pub const CA_EXPIRY_WARNING: time::Duration = time::Duration::days(30);

/// Where the policy and the CAs come from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub policy: PathBuf,
    /// --ca-cert/--ca-key: for signing signers without a `ca` of their own.
    pub default_ca: CaPaths,
    /// The cluster's own CA, which custom signers may not sign with unless allowed.
    pub cluster_ca: ClusterCa,
}

pub type CaSlot = Result<CertificateAuthority, String>;

/// One CA in force, with the file contents it was loaded from (to notice changes).
#[derive(Clone)]
struct LoadedCa {
    files: Option<FilesDigest>,
    slot: Arc<CaSlot>,
    /// A token that refused the PIN is not asked again with the same PIN (a real HSM locks
    /// the PIN after a few tries): only a changed PIN file is tried.
    pin_refused: bool,
}

/// Every CA some signing signer needs, by its files.
type CaTable = BTreeMap<CaPaths, LoadedCa>;

/// Why a policy (or a CA) cannot be used at all: start-up stops, a reload is rejected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

pub struct Live {
    policy: RwLock<Arc<Policy>>,
    cas: RwLock<Arc<CaTable>>,
    default_ca: CaPaths,
    leader: AtomicBool,
    leader_known: AtomicBool,
    synced: AtomicBool,
    pub metrics: Metrics,
    /// The signers whose CA expiry is in the metrics now.
    expiry_reported: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Bumped when every CSR should be looked at again: a new policy, or newly gained leadership.
    recheck: watch::Sender<u64>,
}

impl Live {
    /// Load the CAs the policy needs and refuse a custom signer on the cluster's CA.
    /// `leader_election`: false means this replica always acts. A CA that cannot be loaded is
    /// no error here (its signer's approved CSRs are marked Failed until it is fixed).
    pub fn start(
        policy: Policy,
        sources: &Sources,
        leader_election: bool,
    ) -> Result<Arc<Live>, Refused> {
        let cas = load_cas(&policy, sources, &CaTable::new());
        guard_cluster_ca(&policy, sources, &cas)?;
        let live = Arc::new(Live {
            policy: RwLock::new(Arc::new(policy)),
            cas: RwLock::new(Arc::new(cas)),
            default_ca: sources.default_ca.clone(),
            leader: AtomicBool::new(!leader_election),
            leader_known: AtomicBool::new(!leader_election),
            synced: AtomicBool::new(false),
            metrics: Metrics::new(),
            expiry_reported: Default::default(),
            recheck: watch::channel(0).0,
        });
        live.metrics.leader.set(i64::from(!leader_election));
        live.report_cas(OffsetDateTime::now_utc());
        Ok(live)
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn cas(&self) -> Arc<CaTable> {
        self.cas
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|c| c.into_inner().clone())
    }

    /// --ca-cert/--ca-key: the CA of signing signers without their own.
    pub fn default_ca(&self) -> &CaPaths {
        &self.default_ca
    }

    /// The CA CSR signer `signer` signs with, or why there is none.
    pub fn ca_for(&self, signer: &str) -> Arc<CaSlot> {
        let policy = self.policy();
        match policy.ca_for(signer, &self.default_ca) {
            Some(paths) => self.slot(paths),
            None => Arc::new(Err(format!("csr-warden does not sign for {signer}"))),
        }
    }

    /// The CA pod-certificate signer `signer` signs with, or why there is none.
    pub fn pod_ca_for(&self, signer: &str) -> Arc<CaSlot> {
        let policy = self.policy();
        match policy.pod_signers.get(signer) {
            Some(pod) => self.slot(&pod.ca),
            None => Arc::new(Err(format!(
                "csr-warden has no pod-certificate signer {signer}"
            ))),
        }
    }

    fn slot(&self, paths: &CaPaths) -> Arc<CaSlot> {
        self.cas()
            .get(paths)
            .map(|loaded| loaded.slot.clone())
            .unwrap_or_else(|| {
                Arc::new(Err(format!(
                    "the CA {} is not loaded yet",
                    paths.cert.display()
                )))
            })
    }

    /// Put a new policy and its CAs in force together, so no CSR of a new signer is ever
    /// signed (or failed) before its CA is there.
    fn set(&self, policy: Option<Policy>, cas: CaTable) {
        match self.cas.write() {
            Ok(mut slot) => *slot = Arc::new(cas),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(cas),
        }
        if let Some(policy) = policy {
            match self.policy.write() {
                Ok(mut slot) => *slot = Arc::new(policy),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(policy),
            }
            self.recheck.send_modify(|n| *n += 1);
        } else {
            // A CA changed: approved CSRs waiting for it are issued now.
            self.recheck.send_modify(|n| *n += 1);
        }
        self.report_cas(OffsetDateTime::now_utc());
    }

    /// Per signing signer: its CA's expiry in the metrics, and one warning when it comes within
    /// 30 days. Called on every load and every reload tick, so a long-running controller
    /// notices too.
    pub fn report_cas(&self, now: OffsetDateTime) {
        let policy = self.policy();
        self.metrics.ca_not_after.clear();
        // A signer that no longer signs (or has no CA now) leaves no stale expiry alert behind.
        // The others keep their gauge, which remembers whether the warning was logged.
        let mut reported = self
            .expiry_reported
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let signing: std::collections::BTreeSet<String> = policy
            .signing_signers(&self.default_ca)
            .filter(|(_, paths)| self.slot(paths).is_ok())
            .map(|(signer, _)| signer.to_owned())
            .collect();
        for gone in reported.difference(&signing) {
            self.metrics.ca_expiring_soon.remove(&SignerLabels {
                signer: gone.clone(),
            });
        }
        *reported = signing;
        self.metrics.pkcs11_token_up.clear();
        for (signer, paths) in policy.signing_signers(&self.default_ca) {
            if paths.pkcs11.is_some() {
                let up = self
                    .slot(paths)
                    .as_ref()
                    .as_ref()
                    .is_ok_and(|ca| ca.token_key().is_some_and(|key| !key.is_broken()));
                self.metrics
                    .pkcs11_token_up
                    .get_or_create(&SignerLabels {
                        signer: signer.to_owned(),
                    })
                    .set(i64::from(up));
            }
        }
        for (signer, paths) in policy.signing_signers(&self.default_ca) {
            let ca = self.slot(paths);
            let Ok(ca) = ca.as_ref() else { continue };
            let labels = SignerLabels {
                signer: signer.to_owned(),
            };
            self.metrics
                .ca_not_after
                .get_or_create(&labels)
                .set(ca.not_after().unix_timestamp());
            let expiring = ca.not_after() - now < CA_EXPIRY_WARNING;
            let was = self
                .metrics
                .ca_expiring_soon
                .get_or_create(&labels)
                .set(i64::from(expiring))
                == 1;
            if expiring && !was {
                tracing::warn!(%signer, subject = ca.subject(), not_after = %ca.not_after(), "this signer's CA expires within 30 days; certificates are cut off at its expiry; rotate its CA Secret");
            }
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

    /// Ready: the watch has synced, every signing signer's CA is loaded (none is needed when
    /// nothing signs) and this replica knows whether it leads.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.synced.load(Ordering::SeqCst) {
            return Err("the CSR watch has not synced yet".into());
        }
        let policy = self.policy();
        for (signer, paths) in policy.signing_signers(&self.default_ca) {
            match self.slot(paths).as_ref() {
                Err(why) => return Err(format!("the CA of signer {signer} is not loaded: {why}")),
                Ok(ca) if ca.token_key().is_some_and(|key| key.is_broken()) => {
                    return Err(format!(
                        "the PKCS#11 token of signer {signer} failed; csr-warden is reopening it"
                    ));
                }
                Ok(_) => {}
            }
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

/// A SHA-256 digest of a CA's files, to notice when they change: the private key's bytes are
/// read to compute it and not kept (the loaded key lives only inside its signing key pair).
type FilesDigest = [u8; 32];

fn digest_of(paths: &[&PathBuf]) -> Option<FilesDigest> {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for path in paths {
        let bytes = std::fs::read(path).ok()?;
        // Length first, so two files' bytes cannot shift from one into the other.
        context.update(&(bytes.len() as u64).to_be_bytes());
        context.update(&bytes);
    }
    context.finish().as_ref().try_into().ok()
}

/// What to watch for changes of a CA: its certificate, and its key file or its token's PIN file.
fn ca_digest(paths: &CaPaths) -> Option<FilesDigest> {
    match &paths.pkcs11 {
        Some(token) => digest_of(&[&paths.cert, &token.pin_file]),
        None => digest_of(&[&paths.cert, &paths.key]),
    }
}

fn load_ca(paths: &CaPaths) -> Result<CertificateAuthority, crate::x509::ca::CaError> {
    match &paths.pkcs11 {
        Some(token) => CertificateAuthority::load_with_token(&paths.cert, token),
        None => CertificateAuthority::load(&paths.cert, &paths.key),
    }
}

/// A CA whose key is in a token that is missing, locked or failed: opened again on every
/// reload tick until it signs, so csr-warden reconnects without a restart.
fn needs_reopen(paths: &CaPaths, loaded: &LoadedCa) -> bool {
    paths.pkcs11.is_some()
        && match loaded.slot.as_ref() {
            Err(_) => !loaded.pin_refused,
            Ok(ca) => ca.token_key().is_some_and(|key| key.is_broken()),
        }
}

/// The signers of `policy` that sign with `paths`, for log lines.
fn signers_of(policy: &Policy, sources: &Sources, paths: &CaPaths) -> Vec<String> {
    policy
        .signing_signers(&sources.default_ca)
        .filter(|(_, uses)| *uses == paths)
        .map(|(signer, _)| signer.to_owned())
        .collect()
}

/// Every CA `policy` needs: kept from `previous` when its files are unchanged, loaded otherwise.
/// A new file that does not load leaves the previous CA in force; with none before, the slot
/// holds the error (its signer's approved CSRs are marked Failed, `CAUnavailable`).
fn load_cas(policy: &Policy, sources: &Sources, previous: &CaTable) -> CaTable {
    let mut table = CaTable::new();
    for paths in policy.cas_needed(&sources.default_ca) {
        let files = ca_digest(paths);
        let before = previous.get(paths);
        if let Some(before) = before.filter(|b| b.files == files && !needs_reopen(paths, b)) {
            table.insert(paths.clone(), before.clone());
            continue;
        }
        let signers = signers_of(policy, sources, paths);
        let loaded = load_ca(paths);
        let pin_refused = matches!(
            loaded,
            Err(crate::x509::ca::CaError::Token(
                crate::x509::pkcs11::TokenError::Login { .. }
            ))
        );
        let slot = match loaded {
            Ok(ca) => {
                tracing::info!(?signers, subject = ca.subject(), not_after = %ca.not_after(), "CA loaded");
                Arc::new(Ok(ca))
            }
            Err(error) => match before.filter(|b| b.slot.is_ok() && !needs_reopen(paths, b)) {
                Some(before) => {
                    tracing::error!(?signers, %error, "new CA rejected; the previous CA stays in force");
                    before.slot.clone()
                }
                None => {
                    let error = error.to_string();
                    // A token still missing is retried every tick: said once, not every tick.
                    if before.is_some_and(|b| b.slot.as_ref().as_ref().err() == Some(&error)) {
                        tracing::debug!(?signers, %error, "CA still not loaded");
                    } else {
                        tracing::error!(?signers, %error, "CA not loaded: these signers' approved CSRs wait (approved, not Failed) until it is fixed");
                    }
                    Arc::new(Err(error))
                }
            },
        };
        table.insert(
            paths.clone(),
            LoadedCa {
                files,
                slot,
                pin_refused,
            },
        );
    }
    table
}

/// A custom signer's certificates signed by the cluster's own CA would log into the API server
/// as whatever subject they carry. Refuse that unless the signer says `allowClusterCA: true`.
fn guard_cluster_ca(policy: &Policy, sources: &Sources, cas: &CaTable) -> Result<(), Refused> {
    // (signer, its line, its CA files): custom CSR signers that sign, and every pod signer
    // (never allowed the cluster CA: a pod certificate is not a cluster identity).
    let guarded = policy
        .signers
        .iter()
        .filter(|(signer, config)| {
            !signer.starts_with(SIGNER_PREFIX_KUBERNETES) && !config.allow_cluster_ca
        })
        .filter_map(|(signer, config)| {
            Some((
                signer,
                config.line,
                policy.ca_for(signer, &sources.default_ca)?,
            ))
        })
        .chain(
            policy
                .pod_signers
                .iter()
                .map(|(signer, pod)| (signer, pod.line, &pod.ca)),
        );
    for (signer, line, paths) in guarded {
        if !sources.cluster_ca.is_known() {
            return Err(Refused(format!(
                "policy line {}: cannot tell whether signer {signer}'s CA is the cluster's own CA: the Kubernetes configuration has no CA certificate ({}); give it with --cluster-ca-file, or set allowClusterCA: true on that signer",
                line, sources.cluster_ca.origin
            )));
        }
        let Some(Ok(ca)) = cas.get(paths).map(|loaded| loaded.slot.as_ref()) else {
            continue;
        };
        let what = match sources.cluster_ca.relation(ca) {
            ClusterRelation::Unrelated => continue,
            ClusterRelation::Same => format!(
                "{} is the CA in {}",
                paths.cert.display(),
                sources.cluster_ca.origin
            ),
            ClusterRelation::ChainsTo { through } => format!(
                "{} chains up to the CA in {} (through {}), verified by signature",
                paths.cert.display(),
                sources.cluster_ca.origin,
                through.join(" <- ")
            ),
            ClusterRelation::Incomplete { missing_issuer } => {
                return Err(Refused(format!(
                    "policy line {}: cannot tell whether signer {signer}'s CA {} chains up to the cluster's own CA: it was issued by {missing_issuer:?}, which is neither in that tls.crt nor the cluster CA. Put the whole chain up to its root in tls.crt (CA first), or set allowClusterCA: true on that signer",
                    line,
                    paths.cert.display(),
                )));
            }
        };
        return Err(Refused(format!(
            "policy line {}: signer {signer} would sign with the cluster's own CA ({what}): its certificates would authenticate to the API server as whatever subject they carry. Give it a CA of its own (ca: {{cert, key}}), or set allowClusterCA: true on that signer if that is intended",
            line,
        )));
    }
    Ok(())
}

/// Poll the mounted files and put a new policy or CA in force when their content changes. A
/// broken new file, or one the cluster-CA guard refuses, is rejected (log + metric) and the last
/// good one stays. Kubelet updates ConfigMap and Secret volumes by swapping a symlink, so
/// reading the content is what works.
pub async fn reload_forever(live: Arc<Live>, sources: Sources, interval: Duration) {
    let mut last_policy = digest_of(&[&sources.policy]);
    // CA files the guard refused, so a refusal is logged once, not every tick.
    let mut last_refused = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        live.report_cas(OffsetDateTime::now_utc());
        let policy_now = digest_of(&[&sources.policy]);
        let mut new_policy = None;
        if policy_now != last_policy {
            last_policy = policy_now;
            match load_policy(&sources.policy) {
                Ok(policy) => new_policy = Some(policy),
                Err(error) => {
                    tracing::error!(%error, "new policy rejected; the previous policy stays in force");
                    live.metrics.reload("policy", false);
                }
            }
        }
        let current = live.policy();
        let policy = new_policy.as_ref().unwrap_or(&current);
        let before = live.cas();
        let wanted: Vec<(CaPaths, Option<FilesDigest>)> = policy
            .cas_needed(&sources.default_ca)
            .into_iter()
            .map(|paths| (paths.clone(), ca_digest(paths)))
            .collect();
        let in_force: Vec<(CaPaths, Option<FilesDigest>)> = before
            .iter()
            .map(|(paths, ca)| (paths.clone(), ca.files))
            .collect();
        // A token CA that signs is asked whether it still does; one that does not is reopened.
        for (paths, loaded) in before.iter() {
            if let (Some(_), Ok(ca)) = (&paths.pkcs11, loaded.slot.as_ref())
                && let Some(key) = ca.token_key()
                && !key.is_broken()
                && let Err(error) = key.probe()
            {
                tracing::error!(signers = ?signers_of(policy, &sources, paths), %error, "the CA's PKCS#11 token stopped answering: these signers' approved requests wait (CAUnavailable) until it is back; csr-warden reopens it by itself");
            }
        }
        let reopen = before
            .iter()
            .any(|(paths, loaded)| needs_reopen(paths, loaded));
        if new_policy.is_none()
            && !reopen
            && (wanted == in_force || last_refused.as_ref() == Some(&wanted))
        {
            continue;
        }
        let cas = load_cas(policy, &sources, &before);
        // A token still missing: nothing changed, nothing to recheck.
        let unchanged = new_policy.is_none()
            && cas.len() == before.len()
            && cas.iter().all(|(paths, ca)| {
                before.get(paths).is_some_and(|b| {
                    Arc::ptr_eq(&b.slot, &ca.slot)
                        || (b.files == ca.files && b.slot.is_err() && ca.slot.is_err())
                })
            });
        if unchanged {
            live.report_cas(OffsetDateTime::now_utc());
            continue;
        }
        if let Err(refused) = guard_cluster_ca(policy, &sources, &cas) {
            tracing::error!(error = %refused, "new policy or CA rejected; the previous ones stay in force");
            live.metrics
                .reload(if new_policy.is_some() { "policy" } else { "ca" }, false);
            last_refused = Some(wanted);
            continue;
        }
        last_refused = None;
        for (paths, ca) in &cas {
            if let Some(before) = before.get(paths).filter(|b| b.files != ca.files) {
                // The same slot as before: the new files were rejected.
                let accepted = !Arc::ptr_eq(&before.slot, &ca.slot) && ca.slot.is_ok();
                live.metrics.reload("ca", accepted);
            }
        }
        let reloaded = new_policy.as_ref().map(|p| p.signer_names.clone());
        live.set(new_policy, cas);
        // Logged once in force, so the line means the new policy now decides.
        if let Some(signers) = reloaded {
            tracing::info!(path = %sources.policy.display(), ?signers, "policy reloaded");
            live.metrics.reload("policy", true);
        }
    }
}
