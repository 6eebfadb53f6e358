//! Pod certificates on the cluster: watch PodCertificateRequests (`certificates.k8s.io/v1beta1`),
//! ask [`crate::policy::pods`] what each gets, and write the answer through the `status`
//! subresource: the certificate chain with `notBefore`, `notAfter`, `beginRefreshAt` and an
//! `Issued` condition, or a `Denied` or `Failed` condition saying why. Each answer also gets an
//! Event on the request, a metric and an audit log line, as CSRs do.
//!
//! When the API server does not serve PodCertificateRequests (the default in Kubernetes 1.36:
//! the PodCertificateRequest feature gate and `--runtime-config=certificates.k8s.io/v1beta1=true`
//! turn them on), this says so once and stays out of the way of the CSR controller.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::certificates::v1beta1::PodCertificateRequest;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::kube::discovery::wait_until_served;
use crate::kube::events::{EVENT_NOTE_LIMIT, EventBudget, fit};
use crate::kube::queue::Placement;
use crate::kube::request::{PAGE_SIZE, REQUEST_TIMEOUT, is_unavailable, within};
use crate::kube::watch;
use crate::kube::work::{self, Lane, Reconciler, Rules};
use crate::ops::live::Live;
use crate::ops::metrics::DecisionLabels;
use crate::policy::Reason;
use crate::policy::pods::{self, PcrView, PodDecision, PodValidity};
use crate::x509::ca::{CertificateAuthority, fingerprint_sha256, random_serial};
use crate::x509::inspect::inspect_der;
use crate::x509::issue::{IssueError, issue_pod_certificate, pem_certificate};

const ISSUED: &str = "Issued";
const DENIED: &str = "Denied";
const FAILED: &str = "Failed";

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("writing the status of PodCertificateRequest {pcr} failed: {source}; will retry")]
    Write {
        pcr: String,
        #[source]
        source: kube::Error,
    },
    #[error("no system randomness for a certificate serial: {0}; will retry")]
    Randomness(String),
    #[error(
        "the CA of {signer} is not available ({why}); the request waits and is answered once it loads"
    )]
    CaUnavailable { signer: String, why: String },
}

struct Context {
    pcrs_client: Client,
    live: Arc<Live>,
    recorder: Recorder,
    dry_run: bool,
    /// Normal Events (Issued) within a budget; Warnings always.
    event_budget: EventBudget,
}

/// The PodCertificateRequest work queue.
type Work = work::Work<PodCertificateRequest, PodRules>;

/// Which requests are ours to work, and where they queue.
struct PodRules {
    live: Arc<Live>,
}

impl Rules<PodCertificateRequest> for PodRules {
    fn wanted(&self, pcr: &PodCertificateRequest) -> bool {
        wanted(pcr, &self.live)
    }

    /// Fair between Nodes (each kubelet asks for its own pods), oldest first within one.
    fn placement(&self, pcr: &PodCertificateRequest) -> Placement {
        Placement::of(pcr.spec.node_name.clone(), &pcr.metadata)
    }
}

/// One of our pod signers' requests, not answered yet.
fn wanted(pcr: &PodCertificateRequest, live: &Live) -> bool {
    live.policy()
        .pod_signers
        .contains_key(&pcr.spec.signer_name)
        && pending(pcr)
}

impl Reconciler<PodCertificateRequest> for Context {
    type Error = PodError;

    fn reconcile(
        &self,
        pcr: Arc<PodCertificateRequest>,
    ) -> impl std::future::Future<Output = Result<(), PodError>> + Send {
        reconcile(pcr, self)
    }

    fn is_connection_error(&self, error: &PodError) -> bool {
        matches!(error, PodError::Write { source, .. } if is_unavailable(source))
    }

    fn failed(&self, key: &str, error: &PodError, failures: u32, retry_in: Duration) {
        match error {
            PodError::CaUnavailable { .. } if failures > 1 => {
                tracing::debug!(pcr = %key, %error, failures, ?retry_in, "pod certificate still waiting for its CA")
            }
            _ => {
                tracing::warn!(pcr = %key, %error, failures, ?retry_in, "pod certificate request not answered yet; retrying")
            }
        }
    }
}

/// Sign PodCertificateRequests for the policy's pod-certificate signers, for ever, on the same
/// runtime as CSRs: one watch (relisting as the CSR watch does, nothing queued until a relist
/// is complete), per-request backoff, `concurrency` workers. Only the leader acts; gaining
/// leadership (or a policy or CA reload) looks at every request again.
pub async fn run(
    client: Client,
    live: Arc<Live>,
    instance: String,
    dry_run: bool,
    concurrency: usize,
) {
    wait_until_served(&client, "podcertificaterequests", "pod certificates").await;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: crate::CONTROLLER_NAME.into(),
            instance: Some(instance),
        },
    );
    let ctx = Arc::new(Context {
        pcrs_client: client.clone(),
        live: live.clone(),
        recorder,
        dry_run,
        event_budget: EventBudget::default(),
    });
    let (store, writer) = reflector::store();
    let work = Arc::new(Work::new(store, PodRules { live: live.clone() }));
    tracing::info!(
        signers = ?live.policy().pod_signers.keys().collect::<Vec<_>>(),
        "signing PodCertificateRequests"
    );
    let probe_client = client.clone();
    tokio::spawn(work::retry_forever(work.clone(), move || {
        let client = probe_client.clone();
        async move { crate::kube::request::ready(&client).await }
    }));
    for _ in 0..concurrency.max(1) {
        tokio::spawn(work::work_forever(work.clone(), ctx.clone(), Lane::Main));
    }
    watch_forever(Api::all(client), writer, work, live).await;
}

/// Watch every PodCertificateRequest: keep the cache of ours still pending and queue them. As
/// for CSRs, nothing is queued while a list is under way (the cache swaps the list in at its
/// end, and work queued before would find nothing), and everything cached is queued once it is
/// complete, with what failed for want of the API server retried at once.
async fn watch_forever(
    api: Api<PodCertificateRequest>,
    mut writer: Writer<PodCertificateRequest>,
    work: Arc<Work>,
    live: Arc<Live>,
) {
    let mut recheck = live.recheck_events();
    let signers_of =
        |live: &Live| -> Vec<String> { live.policy().pod_signers.keys().cloned().collect() };
    let mut signers = signers_of(&live);
    let mut listed_once = false;
    // The cache holds only requests of the signers in force: a reload that changes them
    // relists, so requests of a signer just added are found (they get no event of their own).
    loop {
        let config = watcher::Config::default()
            .list_semantic(watcher::ListSemantic::MostRecent)
            .page_size(PAGE_SIZE);
        let mut events =
            std::pin::pin!(watch::events(api.clone(), config, "PodCertificateRequest"));
        loop {
            tokio::select! {
                event = events.next() => {
                    let Some(event) = event else { return };
                    match event {
                        watcher::Event::Init => {
                            if listed_once {
                                tracing::info!("PodCertificateRequest watch restarted; relisting");
                            }
                            writer.apply_watcher_event(&watcher::Event::Init);
                        }
                        watcher::Event::InitApply(pcr) => {
                            if wanted(&pcr, &live) {
                                writer.apply_watcher_event(&watcher::Event::InitApply(pcr));
                            }
                        }
                        watcher::Event::InitDone => {
                            writer.apply_watcher_event(&watcher::Event::InitDone);
                            listed_once = true;
                            work.offer_everything();
                            work.retry_connection_failures_now();
                        }
                        watcher::Event::Apply(pcr) if wanted(&pcr, &live) => {
                            // Cache first: a worker may take it at once and must find this copy.
                            let event = watcher::Event::Apply(pcr);
                            writer.apply_watcher_event(&event);
                            if let watcher::Event::Apply(pcr) = &event {
                                work.offer(pcr);
                            }
                        }
                        watcher::Event::Apply(pcr) | watcher::Event::Delete(pcr) => {
                            work.forget(&work::key_of(&pcr));
                            writer.apply_watcher_event(&watcher::Event::Delete(pcr));
                        }
                    }
                }
                changed = recheck.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = signers_of(&live);
                    if now != signers {
                        signers = now;
                        tracing::info!(signers = ?signers, "pod certificate signers changed; relisting every PodCertificateRequest");
                        break;
                    }
                    work.offer_everything();
                }
            }
        }
    }
}

/// Whether the request is still waiting for a signer (no Issued, Denied or Failed condition).
fn pending(pcr: &PodCertificateRequest) -> bool {
    let status = pcr.status.as_ref();
    let answered = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| [ISSUED, DENIED, FAILED].contains(&c.type_.as_str()) && c.status == "True")
        });
    !answered && status.and_then(|s| s.certificate_chain.as_ref()).is_none()
}

/// The decision's view of a request.
pub fn pcr_view(pcr: &PodCertificateRequest) -> PcrView {
    let spec = &pcr.spec;
    PcrView {
        namespace: pcr.namespace().unwrap_or_default(),
        name: pcr.name_any(),
        signer_name: spec.signer_name.clone(),
        pod_name: spec.pod_name.clone(),
        service_account_name: spec.service_account_name.clone(),
        node_name: spec.node_name.clone(),
        max_expiration_seconds: spec.max_expiration_seconds,
        annotation_keys: spec
            .unverified_user_annotations
            .iter()
            .flatten()
            .map(|(key, _)| key.clone())
            .collect(),
        request: inspect_der(&spec.stub_pkc_s10_request.0),
    }
}

/// What the request gets, with the CA as it is now.
enum Answer {
    Issued {
        chain: String,
        times: PodValidity,
        spiffe_id: String,
        serial_hex: String,
        fingerprint: String,
        ca_subject: String,
        ca_key_id: String,
    },
    Denied {
        reason: Reason,
        message: String,
    },
    Failed {
        reason: Reason,
        message: String,
    },
}

async fn reconcile(pcr: Arc<PodCertificateRequest>, ctx: &Context) -> Result<(), PodError> {
    let policy = ctx.live.policy();
    let Some(signer) = policy.pod_signers.get(&pcr.spec.signer_name) else {
        // Another signer's request: never touched.
        return Ok(());
    };
    if !pending(&pcr) || !ctx.live.is_leader() {
        // Gaining leadership looks at every request again.
        return Ok(());
    }
    let view = pcr_view(&pcr);
    let answer = match pods::decide(&view, signer) {
        PodDecision::Deny { reason, message } => Answer::Denied { reason, message },
        PodDecision::Issue {
            spiffe_id,
            max_lifetime_seconds,
        } => {
            let ca = ctx.live.pod_ca_for(&view.signer_name);
            match ca.as_ref() {
                Err(why) => {
                    // Our fault, not the request's: wait for the CA rather than fail it.
                    tracing::warn!(pcr = %format!("{}/{}", view.namespace, view.name), signer = %view.signer_name, decision = "waiting", reason = Reason::CaUnavailable.as_str(), "pod certificate not issued yet: {why}");
                    return Err(PodError::CaUnavailable {
                        signer: view.signer_name.clone(),
                        why: why.to_string(),
                    });
                }
                Ok(ca) => issue(ca, &view, spiffe_id, max_lifetime_seconds)?,
            }
        }
    };
    write(&pcr, &view, answer, ctx).await
}

fn issue(
    ca: &CertificateAuthority,
    view: &PcrView,
    spiffe_id: String,
    max_lifetime_seconds: i64,
) -> Result<Answer, PodError> {
    let Ok(request) = &view.request else {
        return Ok(Answer::Denied {
            reason: Reason::InvalidRequest,
            message: "spec.stubPKCS10Request cannot be read".into(),
        });
    };
    let now = time::OffsetDateTime::now_utc();
    let failed = |error: IssueError| Answer::Failed {
        reason: error.reason(),
        message: error.to_string(),
    };
    let Some(times) = pods::validity(max_lifetime_seconds, now, ca.not_after()) else {
        return Ok(failed(IssueError::CaExpiring {
            ca_not_after: ca.not_after(),
        }));
    };
    let serial = random_serial().map_err(|e| PodError::Randomness(e.to_string()))?;
    let issued = match issue_pod_certificate(ca, request, &spiffe_id, times, serial) {
        Ok(issued) => issued,
        // The CA's PKCS#11 token failed under the signature: our fault, waited out as a
        // missing CA is.
        Err(IssueError::CaUnavailable(why)) => {
            tracing::warn!(pcr = %format!("{}/{}", view.namespace, view.name), signer = %view.signer_name, decision = "waiting", reason = Reason::CaUnavailable.as_str(), "pod certificate not issued yet: {why}");
            return Err(PodError::CaUnavailable {
                signer: view.signer_name.clone(),
                why,
            });
        }
        Err(error) => return Ok(failed(error)),
    };
    let mut chain = issued.pem.clone();
    for intermediate in ca.intermediates_der() {
        match pem_certificate(intermediate) {
            Ok(pem) => chain.push_str(&pem),
            Err(error) => return Ok(failed(error)),
        }
    }
    Ok(Answer::Issued {
        chain,
        times,
        spiffe_id,
        serial_hex: issued.serial_hex,
        fingerprint: fingerprint_sha256(&issued.der),
        ca_subject: ca.subject().to_owned(),
        ca_key_id: ca.key_id_hex(),
    })
}

fn time_of(at: time::OffsetDateTime) -> Time {
    let seconds = at.unix_timestamp();
    Time(
        k8s_openapi::jiff::Timestamp::from_second(seconds)
            .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now()),
    )
}

fn condition(kind: &str, reason: &str, message: &str, generation: Option<i64>) -> Condition {
    Condition {
        type_: kind.to_owned(),
        status: "True".to_owned(),
        reason: reason.to_owned(),
        message: fit(message, 32 * 1024),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        observed_generation: generation,
    }
}

/// Write the answer through /status (only if the request is still where it was decided), then
/// its Event, metric and audit line.
async fn write(
    pcr: &PodCertificateRequest,
    view: &PcrView,
    answer: Answer,
    ctx: &Context,
) -> Result<(), PodError> {
    let generation = pcr.metadata.generation;
    let (kind, reason, message, status) = match &answer {
        Answer::Issued {
            chain,
            times,
            spiffe_id,
            ..
        } => {
            let message = format!("issued for {spiffe_id}, valid until {}", times.not_after);
            let status = serde_json::json!({
                "certificateChain": chain,
                "notBefore": time_of(times.not_before),
                "notAfter": time_of(times.not_after),
                "beginRefreshAt": time_of(times.begin_refresh_at),
                "conditions": [condition(ISSUED, "Issued", &message, generation)],
            });
            (ISSUED, "Issued", message, status)
        }
        Answer::Denied { reason, message } => (
            DENIED,
            reason.as_str(),
            message.clone(),
            serde_json::json!({"conditions": [condition(DENIED, reason.as_str(), message, generation)]}),
        ),
        Answer::Failed { reason, message } => (
            FAILED,
            reason.as_str(),
            message.clone(),
            serde_json::json!({"conditions": [condition(FAILED, reason.as_str(), message, generation)]}),
        ),
    };
    let name = format!("{}/{}", view.namespace, view.name);
    if !ctx.dry_run {
        let pcrs: Api<PodCertificateRequest> =
            Api::namespaced(ctx.pcrs_client.clone(), &view.namespace);
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": pcr.metadata.resource_version},
            "status": status,
        });
        let written = within(
            REQUEST_TIMEOUT,
            pcrs.patch_status(&view.name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await;
        match written {
            Ok(_) => {}
            // Changed meanwhile (another replica, a human): the watch brings the new version.
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_not_found() => {
                lost(
                    &name,
                    &answer,
                    "the request changed or went meanwhile; not written",
                );
                return Ok(());
            }
            Err(source) => {
                lost(
                    &name,
                    &answer,
                    &format!(
                        "writing it failed ({source}); it may have landed, and a retry issues another"
                    ),
                );
                return Err(PodError::Write { pcr: name, source });
            }
        }
    }
    let decision = match &answer {
        Answer::Issued { .. } => "issued",
        Answer::Denied { .. } => "deny",
        Answer::Failed { .. } => "failed",
    };
    ctx.live
        .metrics
        .pod_certificates
        .get_or_create(&DecisionLabels {
            signer: view.signer_name.clone(),
            decision: decision.to_owned(),
            reason: reason.to_owned(),
        })
        .inc();
    match &answer {
        Answer::Issued {
            times,
            spiffe_id,
            serial_hex,
            fingerprint,
            ca_subject,
            ca_key_id,
            ..
        } => {
            tracing::info!(pcr = %name, signer = %view.signer_name, pod = %view.pod_name, service_account = %view.service_account_name, node = %view.node_name, spiffe_id = %spiffe_id, serial = %serial_hex, sha256_fingerprint = %fingerprint, not_before = %times.not_before, not_after = %times.not_after, begin_refresh_at = %times.begin_refresh_at, ca_subject = %ca_subject, ca_key_id = %ca_key_id, decision, dry_run = ctx.dry_run, "pod certificate issued");
        }
        _ => {
            tracing::warn!(pcr = %name, signer = %view.signer_name, pod = %view.pod_name, service_account = %view.service_account_name, node = %view.node_name, decision, %reason, dry_run = ctx.dry_run, "pod certificate not issued: {message}");
        }
    }
    // Normal Events within the budget (a storm of pods gets its first hundred, then ten a
    // second); Warnings always.
    if !ctx.dry_run && (kind != ISSUED || ctx.event_budget.take(std::time::Instant::now())) {
        let event_type = if kind == ISSUED {
            EventType::Normal
        } else {
            EventType::Warning
        };
        let event = Event {
            type_: event_type,
            reason: reason.to_owned(),
            note: Some(fit(&message, EVENT_NOTE_LIMIT)),
            action: kind.to_owned(),
            secondary: None,
        };
        let reference = pcr.object_ref(&());
        if let Err(error) = within(REQUEST_TIMEOUT, ctx.recorder.publish(&event, &reference)).await
        {
            tracing::warn!(pcr = %name, %error, "could not record Event; the answer stands and is in this log");
        }
    }
    Ok(())
}

/// The audit line of a certificate issued whose answer did not land (or may not have): every
/// certificate csr-warden signs is in its log, whatever became of it.
fn lost(name: &str, answer: &Answer, what: &str) {
    if let Answer::Issued {
        times,
        spiffe_id,
        serial_hex,
        fingerprint,
        ..
    } = answer
    {
        tracing::warn!(pcr = %name, spiffe_id = %spiffe_id, serial = %serial_hex, sha256_fingerprint = %fingerprint, not_before = %times.not_before, not_after = %times.not_after, decision = "issued-unwritten", "pod certificate issued but its answer is not confirmed: {what}");
    }
}
