//! What every reconcile shares: the client and API handles, the facts, the Event recorder, the
//! settings, and what is remembered between reconciles (each in a [`Memo`]).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::Client;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Recorder, Reporter};

use super::error::{Error, kube_error};
use super::memo::Memo;
use super::{REPORTER, sign, work};
use crate::csr::object::{StatusWrite, csr_view, csr_view_with, status_write};
use crate::facts::Facts;
use crate::kube::request::{REQUEST_TIMEOUT, within};
use crate::ops::live::Live;
use crate::policy::CsrView;
use crate::x509::inspect::{CertificateRequest, InspectError, inspect};

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
    pub(super) client: Client,
    /// Reviews, Nodes and the API server's addresses, for the policy.
    pub(super) facts: Facts,
    pub(super) csrs: Api<CertificateSigningRequest>,
    pub(super) recorder: Recorder,
    pub(super) live: Arc<Live>,
    pub(super) settings: Settings,
    /// What is left of the budget for Normal Events.
    pub(super) event_budget: crate::kube::events::EventBudget,
    /// Certificates written without an answer, whose audit line waits for them to turn up.
    pub(super) unconfirmed: Arc<sign::Unconfirmed>,
    /// The work queue, for what a reconcile needs to know of its CSR's retries.
    pub(super) work: Arc<work::Work>,
    /// Per CSR name: (uid, Event reason) last recorded for leaving it pending.
    pub(super) left_pending: Memo<String, (String, String)>,
    /// Approved CSRs (name → uid) waiting for their signer's CA; each has had its Warning Event.
    pub(super) waiting_for_ca: Memo<String, String>,
    /// Per CSR uid: its spec.request and what inspecting it found. spec is immutable, so each CSR
    /// is parsed and its signature verified once, not on every reconcile and again to sign it.
    pub(super) inspected: Memo<String, Inspected>,
    /// (CSR uid, reason) of the Events recorded before this process led, read once.
    pub(super) said_before: tokio::sync::OnceCell<std::collections::HashSet<(String, String)>>,
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
    /// Write `csr`'s conditions to `subresource` ("approval" or "status", which also takes its
    /// certificate), conditional on its resourceVersion: a PUT of the whole object where the copy
    /// is whole, else a merge patch ([`status_write`]).
    pub(super) async fn write_status(
        &self,
        subresource: &str,
        csr: &CertificateSigningRequest,
    ) -> Result<CertificateSigningRequest, kube::Error> {
        let name = csr.name_any();
        match status_write(csr, subresource == "status") {
            StatusWrite::Replace => {
                let params = PostParams::default();
                let put = self
                    .csrs
                    .replace_subresource(subresource, &name, &params, csr);
                within(REQUEST_TIMEOUT, put).await
            }
            StatusWrite::MergePatch(patch) => {
                let (params, patch) = (PatchParams::default(), Patch::Merge(patch));
                let sent = self
                    .csrs
                    .patch_subresource(subresource, &name, &params, &patch);
                within(REQUEST_TIMEOUT, sent).await
            }
        }
    }

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

    /// A context of its own, for reconciling one CSR at a time in-process (tests, tools): its
    /// own facts (listed when needed, not watched), queue and memory; no watch, no workers.
    pub fn standalone(client: Client, live: Arc<Live>, settings: Settings) -> Self {
        let (store, _) = kube::runtime::reflector::store();
        let work = Arc::new(work::Work::new(
            store,
            work::CsrRules { live: live.clone() },
        ));
        let facts = Facts::listed(client.clone());
        Self::new(
            client,
            live,
            settings,
            facts,
            work,
            Arc::new(sign::Unconfirmed::default()),
        )
    }

    /// Consecutive failed reconciles of this CSR so far.
    pub(super) fn failures_of(&self, name: &str) -> u32 {
        self.work.failures_of(name)
    }

    /// The policy's view of `csr`, inspecting its request only the first time it is seen.
    pub(super) fn view(&self, csr: &CertificateSigningRequest) -> CsrView {
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
    pub(super) fn forget_inspected(&self, still_cached: impl Fn(&str) -> bool) {
        self.inspected.retain(|uid| still_cached(uid));
    }

    pub(super) async fn get(&self, name: &str) -> Result<Option<CertificateSigningRequest>, Error> {
        within(REQUEST_TIMEOUT, self.csrs.get_opt(name))
            .await
            .map_err(kube_error("get csr", name))
    }
}
