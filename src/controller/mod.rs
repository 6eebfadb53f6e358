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
mod error;
mod housekeeping;
mod memo;
pub mod queue;
mod record;
pub use record::{EVENT_BURST, EVENT_NOTE_LIMIT, EVENT_RATE, EventBudget, fit};
mod sign;
pub mod watch;
pub mod work;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::{Client, ResourceExt};

pub use error::Error;
use error::{is_not_found, kube_error};
use memo::Memo;

use crate::csr::{CsrState, csr_state, csr_view, csr_view_with};
use crate::facts::{Facts, NodeChange};
use crate::inspect::{CertificateRequest, InspectError, inspect};
use crate::live::Live;
use crate::policy::CsrView;
use crate::request::{REQUEST_TIMEOUT, within};

/// The reporting controller of csr-warden's Events (`reportingComponent` in core/v1).
const REPORTER: &str = "csr-warden";
/// How often one reconcile re-reads and retries after a 409 before giving up for a backoff.
const MAX_CONFLICT_RETRIES: usize = 5;
/// Attempts at writing one Event before it is given up (the decision is in the log regardless).
const EVENT_ATTEMPTS: u32 = 4;

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
    left_pending: Memo<String, (String, String)>,
    /// Approved CSRs (name → uid) waiting for their signer's CA; each has had its Warning Event.
    waiting_for_ca: Memo<String, String>,
    /// Per CSR uid: its spec.request and what inspecting it found. spec is immutable, so each CSR
    /// is parsed and its signature verified once, not on every reconcile and again to sign it.
    inspected: Memo<String, Inspected>,
    /// (CSR uid, reason) of the Events recorded before this process led, read once.
    said_before: tokio::sync::OnceCell<std::collections::HashSet<(String, String)>>,
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
                controller: REPORTER.into(),
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
            said_before: Default::default(),
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
            .get(uid)
            .filter(|(known, _)| *known == print)
            .map(|(_, request)| request);
        let request = match known {
            Some(request) => request,
            None => {
                // Inspected outside the lock: workers verify signatures in parallel.
                let request = inspect(request_bytes);
                self.live.metrics.requests_inspected.inc();
                self.inspected
                    .insert(uid.to_owned(), (print, request.clone()));
                request
            }
        };
        csr_view_with(csr, request)
    }

    /// Drop the inspections of CSRs no longer cached (finished, deleted, foreign).
    fn forget_inspected(&self, still_cached: impl Fn(&str) -> bool) {
        self.inspected.retain(|uid| still_cached(uid));
    }

    async fn get(&self, name: &str) -> Result<Option<CertificateSigningRequest>, Error> {
        within(REQUEST_TIMEOUT, self.csrs.get_opt(name))
            .await
            .map_err(kube_error("get csr", name))
    }
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

    tokio::spawn(housekeeping::keep_house(
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
