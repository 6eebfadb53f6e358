//! All Kubernetes I/O: watch CSRs, ask the cluster for facts, write approvals, denials,
//! certificates and Failed conditions, record Events and the audit log line.
//!
//! Every write carries the resourceVersion it was decided on. A 409 means somebody else changed
//! the CSR first (another replica, a human with kubectl): we re-read and decide again, so nothing
//! is decided or signed twice.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestStatus,
};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::inspect::inspect;
use crate::issue::{ApprovedRequest, IssueError, issue};
use crate::live::Live;
use crate::metrics::{DecisionLabels, ErrorLabels, FailureLabels, SignerLabels};
use crate::policy::{
    self, ClusterFacts, CsrView, Decision, FactsNeeded, NodeLookup, Reason, Requester,
};

/// How often one reconcile re-reads and retries after a 409 before giving up for a backoff.
const MAX_CONFLICT_RETRIES: usize = 5;
/// Retry delay after an API error (429, 5xx, network) on one CSR: doubles from the first to the
/// last, per CSR, and resets when that CSR next succeeds. The controller never gives up.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(60);
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
}

impl Error {
    /// Short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube { action, .. } => action,
            Error::TooManyConflicts { .. } => "conflicts",
            Error::Randomness(_) => "randomness",
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
}

/// Shared state of every reconcile.
pub struct Context {
    client: Client,
    csrs: Api<CertificateSigningRequest>,
    recorder: Recorder,
    live: Arc<Live>,
    settings: Settings,
    /// Consecutive failures per CSR, for the retry backoff.
    failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
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
        request: inspect(&spec.request.0),
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
    pub fn new(client: Client, live: Arc<Live>, settings: Settings) -> Self {
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
            recorder,
            live,
            settings,
            failures: Default::default(),
        }
    }

    async fn event(
        &self,
        csr: &CertificateSigningRequest,
        type_: EventType,
        reason: &str,
        note: &str,
        action: &str,
    ) {
        let reason = if self.settings.dry_run {
            format!("DryRun{reason}")
        } else {
            reason.to_owned()
        };
        let event = Event {
            type_,
            reason,
            note: Some(note.to_owned()),
            action: action.to_owned(),
            secondary: None,
        };
        // An Event that cannot be written must not undo a decision already made: retry a few
        // times, then leave it to the log line.
        let reference = csr.object_ref(&());
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=EVENT_ATTEMPTS {
            match self.recorder.publish(&event, &reference).await {
                Ok(()) => return,
                Err(error) if attempt == EVENT_ATTEMPTS => {
                    tracing::warn!(csr = %csr.name_any(), %error, "could not record Event; the decision stands and is in this log");
                }
                Err(error) => {
                    tracing::debug!(csr = %csr.name_any(), %error, attempt, "Event write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }

    async fn facts(&self, needed: &FactsNeeded, view: &CsrView) -> Result<ClusterFacts, Error> {
        let mut facts = ClusterFacts::default();
        if needed.node_client_review {
            facts.node_client_allowed = Some(self.review(view, "nodeclient").await?);
        }
        if needed.self_node_client_review {
            facts.self_node_client_allowed = Some(self.review(view, "selfnodeclient").await?);
        }
        if let Some(node_name) = &needed.node_name {
            let nodes: Api<Node> = Api::all(self.client.clone());
            let node = nodes
                .get_opt(node_name)
                .await
                .map_err(kube_error("get node", &view.name))?;
            facts.node = Some(match node {
                None => NodeLookup::Missing,
                Some(node) => NodeLookup::Addresses(
                    node.status
                        .and_then(|s| s.addresses)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|a| a.address)
                        .collect(),
                ),
            });
        }
        Ok(facts)
    }

    /// SubjectAccessReview, as kube-controller-manager's CSR approver does it.
    async fn review(&self, view: &CsrView, subresource: &str) -> Result<bool, Error> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(view.requester.username.clone()),
                uid: view.requester.uid.clone(),
                groups: Some(view.requester.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some("certificates.k8s.io".into()),
                    resource: Some("certificatesigningrequests".into()),
                    verb: Some("create".into()),
                    subresource: Some(subresource.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviews: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(kube_error("subjectaccessreview", &view.name))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }

    async fn get(&self, name: &str) -> Result<Option<CertificateSigningRequest>, Error> {
        self.csrs
            .get_opt(name)
            .await
            .map_err(kube_error("get csr", name))
    }

    /// Decide a pending CSR and write the decision; on 409 re-read and decide again.
    async fn decide_pending(&self, mut csr: CertificateSigningRequest) -> Result<Action, Error> {
        let name = csr.name_any();
        let policy = self.live.policy();
        for _ in 0..MAX_CONFLICT_RETRIES {
            let view = csr_view(&csr);
            let facts = self
                .facts(&policy::facts_needed(&view, &policy), &view)
                .await?;
            let verdict = policy::decide(&view, &facts, &policy);
            let counted = DecisionLabels {
                signer: view.signer_name.clone(),
                decision: verdict.decision.verb().to_owned(),
                reason: verdict.decision.reason().as_str().to_owned(),
            };
            let (kind, event_type) = match &verdict.decision {
                Decision::Leave { .. } => {
                    // Every rule looked at, for `RUST_LOG=csr_warden=debug`.
                    tracing::debug!(csr = %name, steps = ?verdict.steps, "rules");
                    log_decision(&view, &verdict.decision, self.settings.dry_run);
                    self.live.metrics.decisions.get_or_create(&counted).inc();
                    return Ok(Action::await_change());
                }
                Decision::Approve { .. } => (APPROVED, EventType::Normal),
                Decision::Deny { .. } => (DENIED, EventType::Warning),
            };
            let reason = verdict.decision.reason().as_str();
            let message = verdict.decision.message();
            if self.settings.dry_run {
                log_decision(&view, &verdict.decision, true);
                self.live.metrics.decisions.get_or_create(&counted).inc();
                self.event(&csr, event_type, reason, message, kind).await;
                return Ok(Action::await_change());
            }
            csr.status
                .get_or_insert_with(Default::default)
                .conditions
                .get_or_insert_with(Vec::new)
                .push(condition(kind, reason, message));
            match self
                .csrs
                .replace_subresource("approval", &name, &PostParams::default(), &csr)
                .await
            {
                Ok(_) => {
                    // Metrics first: once the log line is out, /metrics already shows it.
                    self.live.metrics.decisions.get_or_create(&counted).inc();
                    if let Some(age) = age_seconds(&csr) {
                        self.live.metrics.seconds_to_decision.observe(age);
                    }
                    log_decision(&view, &verdict.decision, false);
                    self.event(&csr, event_type, reason, message, kind).await;
                    return Ok(Action::await_change());
                }
                Err(error) if is_conflict(&error) => {
                    tracing::info!(csr = %name, "approval conflicted with another change; re-reading and deciding again");
                    match self.get(&name).await? {
                        Some(fresh) if csr_state(&fresh) == CsrState::Pending => csr = fresh,
                        // Decided by someone else meanwhile; if approved, the watch brings it
                        // back for signing.
                        _ => return Ok(Action::await_change()),
                    }
                }
                Err(error) => return Err(kube_error("approve/deny", &name)(error)),
            }
        }
        Err(Error::TooManyConflicts { csr: name })
    }

    /// Sign an approved CSR, or mark it Failed with the reason it cannot be signed.
    async fn sign_approved(&self, mut csr: CertificateSigningRequest) -> Result<Action, Error> {
        let name = csr.name_any();
        for _ in 0..MAX_CONFLICT_RETRIES {
            let view = csr_view(&csr);
            let outcome = self.certificate_for(&view)?;
            if self.settings.dry_run {
                match &outcome {
                    Ok(_) => {
                        tracing::info!(csr = %name, signer = %view.signer_name, dry_run = true, "would issue certificate")
                    }
                    Err((reason, message)) => {
                        tracing::warn!(csr = %name, signer = %view.signer_name, %reason, dry_run = true, "would fail the request: {message}")
                    }
                }
                return Ok(Action::await_change());
            }
            let status = csr
                .status
                .get_or_insert_with(CertificateSigningRequestStatus::default);
            match &outcome {
                Ok(pem) => status.certificate = Some(ByteString(pem.clone().into_bytes())),
                Err((reason, message)) => status
                    .conditions
                    .get_or_insert_with(Vec::new)
                    .push(condition(FAILED, reason, message)),
            }
            match self
                .csrs
                .replace_status(&name, &PostParams::default(), &csr)
                .await
            {
                Ok(_) => {
                    match outcome {
                        Ok(_) => {
                            self.live
                                .metrics
                                .certificates_issued
                                .get_or_create(&SignerLabels {
                                    signer: view.signer_name.clone(),
                                })
                                .inc();
                            if let Some(age) = age_seconds(&csr) {
                                self.live.metrics.seconds_to_certificate.observe(age);
                            }
                            tracing::info!(csr = %name, requester = %view.requester.username, signer = %view.signer_name, subject = %subject_of(&view), decision = "issued", "certificate issued");
                            self.event(
                                &csr,
                                EventType::Normal,
                                "Issued",
                                &format!("certificate issued by {}", self.ca_subject()),
                                "Sign",
                            )
                            .await;
                        }
                        Err((reason, message)) => {
                            self.live
                                .metrics
                                .issuance_failures
                                .get_or_create(&FailureLabels {
                                    signer: view.signer_name.clone(),
                                    reason: reason.clone(),
                                })
                                .inc();
                            tracing::warn!(csr = %name, requester = %view.requester.username, signer = %view.signer_name, subject = %subject_of(&view), decision = "failed", %reason, "certificate not issued: {message}");
                            self.event(&csr, EventType::Warning, &reason, &message, "Sign")
                                .await;
                        }
                    }
                    return Ok(Action::await_change());
                }
                Err(error) if is_conflict(&error) => {
                    tracing::info!(csr = %name, "status write conflicted; re-reading");
                    match self.get(&name).await? {
                        Some(fresh) if csr_state(&fresh) == CsrState::ApprovedUnsigned => {
                            csr = fresh
                        }
                        _ => return Ok(Action::await_change()),
                    }
                }
                Err(error) => return Err(kube_error("write status", &name)(error)),
            }
        }
        Err(Error::TooManyConflicts { csr: name })
    }

    fn ca_subject(&self) -> String {
        self.live
            .ca()
            .as_ref()
            .as_ref()
            .map(|ca| ca.subject().to_owned())
            .unwrap_or_default()
    }

    /// The certificate PEM, or (reason, message) for the Failed condition.
    fn certificate_for(&self, view: &CsrView) -> Result<Result<String, (String, String)>, Error> {
        let policy = self.live.policy();
        // Approved by a human or not, we never sign what the policy forbids.
        if let Some((reason, message)) = policy::signing_refusal(view, &policy) {
            return Ok(Err((reason.as_str().to_owned(), message)));
        }
        let request = match &view.request {
            Ok(request) => request,
            Err(error) => {
                return Ok(Err((
                    Reason::InvalidRequest.as_str().to_owned(),
                    error.to_string(),
                )));
            }
        };
        let ca_slot = self.live.ca();
        let ca = match ca_slot.as_ref() {
            Ok(ca) => ca,
            Err(why) => {
                return Ok(Err((
                    "CAUnavailable".to_owned(),
                    format!("the signing CA is not loaded: {why}"),
                )));
            }
        };
        let serial = crate::ca::random_serial().map_err(|e| Error::Randomness(e.to_string()))?;
        let approved = ApprovedRequest {
            signer_name: &view.signer_name,
            usages: &view.usages,
            expiration_seconds: view.expiration_seconds,
            request,
        };
        Ok(issue(
            ca,
            &approved,
            policy.signing,
            time::OffsetDateTime::now_utc(),
            serial,
        )
        .map(|issued| issued.pem)
        .map_err(|error: IssueError| (error.reason().to_owned(), error.to_string())))
    }
}

/// The audit record: one structured line per decision. CSRs and their Events are garbage-collected
/// an hour after a decision; this line is what remains.
fn log_decision(view: &CsrView, decision: &Decision, dry_run: bool) {
    let subject = subject_of(view);
    let reason = decision.reason();
    let message = decision.message();
    match decision {
        Decision::Leave {
            reason: Reason::NotOurSigner,
            ..
        } => {
            tracing::debug!(csr = %view.name, requester = %view.requester.username, signer = %view.signer_name, decision = "ignored", %reason, "not our signer");
        }
        Decision::Deny { .. } => {
            tracing::warn!(csr = %view.name, requester = %view.requester.username, groups = ?view.requester.groups, signer = %view.signer_name, %subject, decision = decision.verb(), %reason, dry_run, "{message}");
        }
        _ => {
            tracing::info!(csr = %view.name, requester = %view.requester.username, groups = ?view.requester.groups, signer = %view.signer_name, %subject, decision = decision.verb(), %reason, dry_run, "{message}");
        }
    }
}

/// One reconcile: look at where the CSR stands and do the one thing it needs.
pub async fn reconcile(
    csr: Arc<CertificateSigningRequest>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = csr.name_any();
    if !ctx
        .live
        .policy()
        .signer_names
        .contains(&csr.spec.signer_name)
    {
        tracing::debug!(csr = %name, signer = %csr.spec.signer_name, decision = "ignored", "not our signer; untouched");
        return Ok(Action::await_change());
    }
    if !ctx.live.is_leader() {
        // Gaining leadership re-runs every CSR.
        tracing::debug!(csr = %name, "standby; the leader handles it");
        return Ok(Action::await_change());
    }
    let outcome = match csr_state(&csr) {
        CsrState::Pending => ctx.decide_pending((*csr).clone()).await,
        CsrState::ApprovedUnsigned => ctx.sign_approved((*csr).clone()).await,
        state => {
            tracing::debug!(csr = %name, ?state, "already final; nothing to do");
            Ok(Action::await_change())
        }
    };
    if outcome.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
    }
    outcome
}

pub fn error_policy(
    csr: Arc<CertificateSigningRequest>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let name = csr.name_any();
    let failures = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let count = failures.entry(name.clone()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let delay = FIRST_RETRY
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(LAST_RETRY);
    tracing::warn!(csr = %name, error = %error, kind = error.label(), failures, retry_in = ?delay, "reconcile failed; retrying");
    ctx.live
        .metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            kind: error.label().to_owned(),
        })
        .inc();
    Action::requeue(delay)
}

/// Keep the pending-CSR gauges current: operators alert on a growing queue or an old request.
async fn watch_queue(store: Store<CertificateSigningRequest>, live: Arc<Live>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        ticker.tick().await;
        let policy = live.policy();
        let waiting: Vec<f64> = store
            .state()
            .iter()
            .filter(|csr| policy.signer_names.contains(&csr.spec.signer_name))
            .filter(|csr| {
                matches!(
                    csr_state(csr),
                    CsrState::Pending | CsrState::ApprovedUnsigned
                )
            })
            .filter_map(|csr| age_seconds(csr))
            .collect();
        live.metrics
            .pending
            .set(i64::try_from(waiting.len()).unwrap_or(i64::MAX));
        let oldest = waiting.iter().copied().fold(0.0_f64, f64::max);
        live.metrics.oldest_pending_age.set(oldest as i64);
    }
}

/// Run the controller until a shutdown signal.
pub async fn run(client: Client, live: Arc<Live>, settings: Settings) {
    let ctx = Arc::new(Context::new(client.clone(), live.clone(), settings));
    let csrs: Api<CertificateSigningRequest> = Api::all(client);
    let (store, writer) = reflector::store();
    let watched = live.clone();
    let mut first_list = true;
    // The cache keeps what decisions need, not managedFields (most of a CSR's bytes after the
    // request itself).
    let stream = watcher(csrs, watcher::Config::default())
        .default_backoff()
        .inspect_ok(move |event| match event {
            watcher::Event::Init if !first_list => {
                tracing::info!("CSR watch restarted; relisting");
                watched.metrics.watch_restarts.inc();
            }
            // Readiness comes from the stream itself: kube's Store::wait_until_ready wakes only
            // one waiter, and the controller's own runner is already waiting on it.
            watcher::Event::InitDone if first_list => {
                first_list = false;
                tracing::info!("watch synced; deciding CSRs");
                watched.set_synced();
            }
            _ => {}
        })
        .modify(|csr| csr.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects();

    tokio::spawn(watch_queue(store.clone(), live.clone()));
    // A new policy or newly won leadership: look at every CSR again.
    let recheck = futures::stream::unfold(live.recheck_events(), |mut changes| async move {
        changes.changed().await.ok()?;
        Some(((), changes))
    });

    Controller::for_stream(stream, store)
        .reconcile_all_on(recheck)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile loop");
            }
        })
        .await;
}
