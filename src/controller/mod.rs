//! All Kubernetes I/O: watch CSRs, ask the cluster for facts, write approvals, denials,
//! certificates and Failed conditions, record Events and the audit log line.
//!
//! Every write carries the resourceVersion it was decided on. A 409 means somebody else changed
//! the CSR first (another replica, a human with kubectl): we re-read and decide again, so nothing
//! is decided or signed twice.

//! Where to look:
//! - `watch`: the CSR watch that feeds the cache and the work queue, and the resync behind it.
//! - `work`: the bounded pool of workers and the order they take CSRs in (`queue`).
//! - `decide`: facts from the cluster, the policy's decision, the /approval write.
//! - `sign`: the certificate (or Failed condition) in /status.
//! - `record`: Events and the audit log line.

mod decide;
pub mod queue;
mod record;
pub use record::{EVENT_BURST, EVENT_RATE, EventBudget, fit};
mod sign;
pub mod watch;
pub mod work;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::{Client, ResourceExt};

use crate::facts::{Facts, FactsError, NodeChange};
use crate::inspect::{CertificateRequest, InspectError, inspect};
use crate::live::Live;
use crate::policy::{CsrView, Requester};
use crate::request::{REQUEST_TIMEOUT, within};

/// How often one reconcile re-reads and retries after a 409 before giving up for a backoff.
const MAX_CONFLICT_RETRIES: usize = 5;
/// Attempts at writing one Event before it is given up (the decision is in the log regardless).
const EVENT_ATTEMPTS: u32 = 4;

pub const APPROVED: &str = "Approved";
pub const DENIED: &str = "Denied";
pub const FAILED: &str = "Failed";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call {action} for CSR {csr} failed: {source}")]
    Kube {
        action: &'static str,
        csr: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "CSR {csr} kept changing under us ({MAX_CONFLICT_RETRIES} conflicts in a row); will retry"
    )]
    TooManyConflicts { csr: String },
    #[error("no system randomness for a certificate serial: {0}")]
    Randomness(String),
    #[error("could not record the Event saying why CSR {csr} is left pending; will retry")]
    EventUnavailable { csr: String },
    #[error("the facts for CSR {csr} are not to be had yet: {source}; will retry")]
    Facts {
        csr: String,
        #[source]
        source: FactsError,
    },
}

impl Error {
    /// Short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube { action, .. } => action,
            Error::TooManyConflicts { .. } => "conflicts",
            Error::Randomness(_) => "randomness",
            Error::EventUnavailable { .. } => "event",
            Error::Facts {
                source: FactsError::NotSynced(_),
                ..
            } => "facts not synced",
            Error::Facts { .. } => "facts",
        }
    }
}

fn kube_error<'a>(action: &'static str, csr: &'a str) -> impl FnOnce(kube::Error) -> Error + 'a {
    move |source| Error::Kube {
        action,
        csr: csr.to_owned(),
        source,
    }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_conflict())
}

/// Fixed for the life of the process; the policy and CA live in [`Live`] and can be reloaded.
pub struct Settings {
    /// Decide and report, but write nothing to CSRs.
    pub dry_run: bool,
    /// The name Events are reported under (the pod name in a cluster).
    pub instance: String,
    /// CSRs worked at once (each holds at most one API request at a time).
    pub concurrency: usize,
    /// How often every CSR of our signers is listed fresh from the API server, to catch any
    /// the watch missed.
    pub resync_interval: Duration,
    /// Server-side timeout of each watch request; a watch silent for this long (plus a few
    /// seconds) is taken as dead and restarted. The API server sends a bookmark every minute.
    pub watch_timeout_seconds: u32,
}

/// Shared state of every reconcile.
pub struct Context {
    client: Client,
    /// Reviews, Nodes and the API server's addresses, for the policy.
    facts: Facts,
    csrs: Api<CertificateSigningRequest>,
    recorder: Recorder,
    live: Arc<Live>,
    settings: Settings,
    /// What is left of the budget for Normal Events.
    event_budget: record::EventBudget,
    /// Certificates written without an answer, whose audit line waits for them to turn up.
    unconfirmed: Arc<sign::Unconfirmed>,
    /// The work queue, for what a reconcile needs to know of its CSR's retries.
    work: Arc<work::Work>,
    /// Per CSR name: (uid, Event reason) last recorded for leaving it pending.
    left_pending: std::sync::Mutex<std::collections::HashMap<String, (String, String)>>,
    /// Approved CSRs (name → uid) waiting for their signer's CA; each has had its Warning Event.
    waiting_for_ca: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Per CSR uid: its spec.request and what inspecting it found. spec is immutable, so each CSR
    /// is parsed and its signature verified once, not on every reconcile and again to sign it.
    inspected: std::sync::Mutex<std::collections::HashMap<String, Inspected>>,
}

/// A fingerprint of one CSR's request bytes (the bytes themselves already sit in the cache), and
/// their inspection.
type Inspected = (u64, Result<CertificateRequest, InspectError>);

fn fingerprint(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// Where a CSR stands, from its conditions and certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrState {
    Pending,
    /// Approved and waiting for our certificate.
    ApprovedUnsigned,
    Issued,
    Denied,
    Failed,
}

impl CsrState {
    /// Pending or approved-unsigned: something is still to be done.
    pub fn needs_work(self) -> bool {
        matches!(self, CsrState::Pending | CsrState::ApprovedUnsigned)
    }
}

pub fn csr_state(csr: &CertificateSigningRequest) -> CsrState {
    let status = csr.status.as_ref();
    let has = |kind: &str| {
        status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == kind && c.status == "True")
            })
    };
    if has(DENIED) {
        CsrState::Denied
    } else if has(FAILED) {
        CsrState::Failed
    } else if status
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty())
    {
        CsrState::Issued
    } else if has(APPROVED) {
        CsrState::ApprovedUnsigned
    } else {
        CsrState::Pending
    }
}

/// The policy's view of a CSR object.
pub fn csr_view(csr: &CertificateSigningRequest) -> CsrView {
    csr_view_with(csr, inspect(&csr.spec.request.0))
}

/// The policy's view of a CSR object whose request was already inspected.
fn csr_view_with(
    csr: &CertificateSigningRequest,
    request: Result<CertificateRequest, InspectError>,
) -> CsrView {
    let spec = &csr.spec;
    CsrView {
        name: csr.name_any(),
        signer_name: spec.signer_name.clone(),
        usages: spec.usages.clone().unwrap_or_default(),
        expiration_seconds: spec.expiration_seconds,
        requester: Requester {
            username: spec.username.clone().unwrap_or_default(),
            uid: spec.uid.clone(),
            groups: spec.groups.clone().unwrap_or_default(),
        },
        request,
    }
}

fn condition(kind: &str, reason: &str, message: &str) -> CertificateSigningRequestCondition {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    CertificateSigningRequestCondition {
        type_: kind.to_owned(),
        status: "True".to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// The merge patch that writes `csr`'s conditions (and, for /status, its certificate) and
/// nothing else, on the condition that the CSR is still at the resourceVersion it was decided
/// on (409 otherwise). The server applies it to its own copy, so annotations, labels and
/// finalizers that our trimmed cache copy lacks are kept (a PUT would drop them).
fn status_patch(csr: &CertificateSigningRequest, with_certificate: bool) -> serde_json::Value {
    let status = csr.status.clone().unwrap_or_default();
    let mut patch = serde_json::json!({
        "metadata": {"resourceVersion": csr.metadata.resource_version},
        "status": {"conditions": status.conditions.unwrap_or_default()},
    });
    if with_certificate && let Some(certificate) = status.certificate {
        patch["status"]["certificate"] = serde_json::json!(certificate);
    }
    patch
}

fn subject_of(view: &CsrView) -> String {
    view.request
        .as_ref()
        .map(|r| r.subject_string())
        .unwrap_or_else(|e| format!("<unreadable: {e}>"))
}

/// Seconds since the CSR was created, for the latency histograms.
fn age_seconds(csr: &CertificateSigningRequest) -> Option<f64> {
    let created = csr.metadata.creation_timestamp.as_ref()?;
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(created.0);
    Some(age.as_secs_f64().max(0.0))
}

impl Context {
    pub fn new(
        client: Client,
        live: Arc<Live>,
        settings: Settings,
        facts: Facts,
        work: Arc<work::Work>,
        unconfirmed: Arc<sign::Unconfirmed>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "csr-warden".into(),
                instance: Some(settings.instance.clone()),
            },
        );
        Context {
            csrs: Api::all(client.clone()),
            client,
            facts,
            recorder,
            live,
            settings,
            work,
            unconfirmed,
            event_budget: Default::default(),
            left_pending: Default::default(),
            waiting_for_ca: Default::default(),
            inspected: Default::default(),
        }
    }

    /// Consecutive failed reconciles of this CSR so far.
    fn failures_of(&self, name: &str) -> u32 {
        self.work.failures_of(name)
    }

    /// The policy's view of `csr`, inspecting its request only the first time it is seen.
    fn view(&self, csr: &CertificateSigningRequest) -> CsrView {
        let request_bytes = &csr.spec.request.0;
        let Some(uid) = csr.metadata.uid.as_deref() else {
            return csr_view(csr);
        };
        let print = fingerprint(request_bytes);
        let known = self
            .inspected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .filter(|(known, _)| *known == print)
            .map(|(_, request)| request.clone());
        let request = match known {
            Some(request) => request,
            None => {
                // Inspected outside the lock: workers verify signatures in parallel.
                let request = inspect(request_bytes);
                self.live.metrics.requests_inspected.inc();
                self.inspected
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(uid.to_owned(), (print, request.clone()));
                request
            }
        };
        csr_view_with(csr, request)
    }

    /// Drop the inspections of CSRs no longer cached (finished, deleted, foreign).
    fn forget_inspected(&self, still_cached: impl Fn(&str) -> bool) {
        self.inspected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|uid, _| still_cached(uid));
    }

    async fn get(&self, name: &str) -> Result<Option<CertificateSigningRequest>, Error> {
        within(REQUEST_TIMEOUT, self.csrs.get_opt(name))
            .await
            .map_err(kube_error("get csr", name))
    }
}

/// The CSR no longer exists (deleted by a human or the garbage collector while we worked).
fn is_not_found(error: &Error) -> bool {
    matches!(error, Error::Kube { source: kube::Error::Api(status), .. } if status.is_not_found())
}

/// One reconcile: look at where the CSR stands and do the one thing it needs.
pub async fn reconcile(csr: Arc<CertificateSigningRequest>, ctx: &Context) -> Result<(), Error> {
    let name = csr.name_any();
    if !watch::wanted(&csr, &ctx.live) {
        tracing::debug!(csr = %name, signer = %csr.spec.signer_name, decision = "ignored", "not ours to decide or sign; untouched");
        return Ok(());
    }
    if !ctx.live.is_leader() {
        // Gaining leadership re-runs every CSR.
        tracing::debug!(csr = %name, "standby; the leader handles it");
        return Ok(());
    }
    let outcome = match csr_state(&csr) {
        CsrState::Pending => ctx.decide_pending((*csr).clone()).await,
        CsrState::ApprovedUnsigned => ctx.sign_approved((*csr).clone()).await,
        state => {
            tracing::debug!(csr = %name, ?state, "already final; nothing to do");
            Ok(())
        }
    };
    match outcome {
        Err(error) if is_not_found(&error) => {
            tracing::info!(csr = %name, "CSR was deleted while being handled; nothing to do");
            Ok(())
        }
        outcome => outcome,
    }
}

/// Keep the pending-CSR gauges current: operators alert on a growing queue or an old request.
async fn watch_queue(
    store: Store<CertificateSigningRequest>,
    work: Arc<work::Work>,
    ctx: Arc<Context>,
    live: Arc<Live>,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        ticker.tick().await;
        ctx.forget_left_pending(|name| store.get(&ObjectRef::new(name)).is_some());
        ctx.forget_waiting_for_ca(|name| store.get(&ObjectRef::new(name)).is_some());
        let cached_uids: std::collections::HashSet<String> = store
            .state()
            .iter()
            .filter_map(|csr| csr.metadata.uid.clone())
            .collect();
        ctx.forget_inspected(|uid| cached_uids.contains(uid));
        let (waiting, _) = work.sizes();
        live.metrics
            .queue_waiting
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        let waiting: Vec<f64> = store
            .state()
            .iter()
            .filter(|csr| watch::wanted(csr, &live))
            .filter_map(|csr| age_seconds(csr))
            .collect();
        live.metrics
            .pending
            .set(i64::try_from(waiting.len()).unwrap_or(i64::MAX));
        let oldest = waiting.iter().copied().fold(0.0_f64, f64::max);
        live.metrics.oldest_pending_age.set(oldest as i64);
    }
}

/// Run the controller until a shutdown signal: one watch feeding the cache and the work queue,
/// a periodic resync behind it, and `settings.concurrency` workers.
pub async fn run(client: Client, live: Arc<Live>, settings: Settings) {
    let concurrency = settings.concurrency.max(1);
    let resync_interval = settings.resync_interval;
    let watch_timeout = settings.watch_timeout_seconds;
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let (store, writer) = reflector::store();
    let work = Arc::new(work::Work::new(store.clone(), live.clone()));
    // A serving CSR left pending while its Node had no addresses (or before the Node index
    // synced) is decided again when they change.
    let facts = Facts::watched(client.clone(), {
        let work = Arc::downgrade(&work);
        move |change: NodeChange| {
            if let Some(work) = work.upgrade() {
                work.offer_serving(&change);
            }
        }
    });
    let unconfirmed = Arc::new(sign::Unconfirmed::default());
    let ctx = Arc::new(Context::new(
        client,
        live.clone(),
        settings,
        facts,
        work.clone(),
        unconfirmed.clone(),
    ));
    let retrying = tokio::spawn(work::retry_forever(work.clone()));

    tokio::spawn(watch_queue(
        store.clone(),
        work.clone(),
        ctx.clone(),
        live.clone(),
    ));
    let (stale_tx, stale_rx) = tokio::sync::mpsc::unbounded_channel();
    let watching = tokio::spawn(watch::watch_forever(
        csrs.clone(),
        writer,
        work.clone(),
        live.clone(),
        watch_timeout,
        stale_rx,
        unconfirmed,
    ));
    let resyncing = tokio::spawn(watch::resync_forever(
        csrs,
        store,
        work.clone(),
        live.clone(),
        resync_interval,
        stale_tx,
    ));
    // SubjectAccessReviews get their own workers, half as many: a slow or hanging review holds
    // up only the kubelet client CSRs that wait for one.
    let reviewers = (concurrency / 2).max(1);
    let workers: Vec<_> = (0..concurrency)
        .map(|_| work::Lane::Main)
        .chain((0..reviewers).map(|_| work::Lane::Reviews))
        .map(|lane| tokio::spawn(work::work_forever(work.clone(), ctx.clone(), lane)))
        .collect();

    shutdown_signal().await;
    tracing::info!("shutting down: finishing the CSRs in hand");
    watching.abort();
    resyncing.abort();
    retrying.abort();
    work.close();
    for worker in workers {
        let _ = worker.await;
    }
}

/// SIGTERM (what the kubelet sends) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
