//! Signing: an Approved CSR of our signer becomes a certificate in /status, or a Failed
//! condition that says why it cannot be signed.

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestStatus,
};
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::error::{is_conflict, kube_error, refusal};
use super::memo::Memo;
use super::{Context, Error, MAX_CONFLICT_RETRIES};
use crate::csr::object::{CsrState, FAILED, age_seconds, condition, csr_state};
use crate::kube::events::fit;
use crate::ops::metrics::{FailureLabels, SignerLabels};
use crate::policy::{self, Ceiling, CsrView, PrivilegeReview, Reason};
use crate::x509::ca::fingerprint_sha256;
use crate::x509::issue::{ApprovedRequest, IssueError, IssuedCertificate, issue};

/// What signing an approved CSR comes to.
#[derive(Clone)]
enum Signing {
    /// The certificate, to write.
    Issue(IssuedCertificate),
    /// What is wrong with the request itself: a Failed condition, final. `serial`: that of the
    /// certificate the API server refused to store, when that is why.
    Fail {
        reason: Reason,
        message: String,
        serial: Option<String>,
    },
    /// What is wrong on our side (the signer's CA missing, unreadable, invalid or about to
    /// expire): the CSR stays approved and is issued once the CA loads. Never Failed: the
    /// requester did nothing wrong.
    WaitForCa { message: String },
    /// The privilege ceiling could not be checked (its reviews failed): the CSR stays approved
    /// and is tried again; never signed blind, never Failed for it.
    WaitForReview { message: String, why: String },
}

impl Context {
    /// Sign an approved CSR, mark it Failed with the reason it cannot be signed, or leave it
    /// approved until its signer's CA is there.
    pub(super) async fn sign_approved(
        &self,
        mut csr: CertificateSigningRequest,
    ) -> Result<(), Error> {
        let name = csr.name_any();
        if !self.live.policy().signs(&csr.spec.signer_name) {
            // Approve-only: another signer (kube-controller-manager) issues; never Failed by us.
            tracing::debug!(csr = %name, signer = %csr.spec.signer_name, "approved; another signer issues it");
            return Ok(());
        }
        // Set once the API server has refused to store the certificate (an answer no retry can
        // change): from then on the outcome is this Fail, written in the next turn of the loop.
        let mut refused: Option<Signing> = None;
        let mut conflicts = 0;
        loop {
            let view = self.view(&csr);
            let outcome = match &refused {
                Some(fail) => fail.clone(),
                None => self.signing(&view).await?,
            };
            if let Signing::WaitForCa { message } = &outcome {
                self.wait_for_ca(&csr, &view, message).await;
                return Ok(());
            }
            if let Signing::WaitForReview { message, why } = outcome {
                tracing::warn!(csr = %name, requester = %view.requester.username, signer = %view.signer_name, subject = %view.subject(), decision = "waiting", reason = Reason::PrivilegeReviewUnavailable.as_str(), "approved, not issued yet: {message}");
                // A blip is retried before it is said on the CSR.
                if !self.settings.dry_run && self.failures_of(&name) > 0 {
                    self.say_left_pending(&csr, Reason::PrivilegeReviewUnavailable, &message)
                        .await?;
                }
                return Err(Error::PrivilegeReview { csr: name, why });
            }
            if self.settings.dry_run {
                match &outcome {
                    Signing::Fail {
                        reason, message, ..
                    } => {
                        tracing::warn!(csr = %name, signer = %view.signer_name, %reason, dry_run = true, "would fail the request: {message}")
                    }
                    _ => {
                        tracing::info!(csr = %name, signer = %view.signer_name, dry_run = true, "would issue certificate")
                    }
                }
                return Ok(());
            }
            let status = csr
                .status
                .get_or_insert_with(CertificateSigningRequestStatus::default);
            match &outcome {
                Signing::Issue(issued) => {
                    status.certificate = Some(ByteString(issued.pem.clone().into_bytes()))
                }
                Signing::Fail {
                    reason, message, ..
                } => {
                    // A refused certificate never goes out again, with the Failed condition.
                    status.certificate = None;
                    status
                        .conditions
                        .get_or_insert_with(Vec::new)
                        .push(condition(FAILED, reason.as_str(), message))
                }
                Signing::WaitForCa { .. } | Signing::WaitForReview { .. } => {}
            }
            match self.write_status("status", &csr).await {
                Ok(_) => {
                    self.no_longer_waiting_for_ca(&name);
                    if let Some(uid) = csr.metadata.uid.as_deref() {
                        self.unconfirmed.forget(uid);
                    }
                    match outcome {
                        Signing::Issue(issued) => {
                            let record = self.record_of(&view, &issued);
                            self.issued(&csr, &record).await
                        }
                        Signing::Fail {
                            reason,
                            message,
                            serial,
                        } => {
                            self.live
                                .metrics
                                .issuance_failures
                                .get_or_create(&FailureLabels {
                                    signer: view.signer_name.clone(),
                                    reason: reason.as_str().to_owned(),
                                })
                                .inc();
                            tracing::warn!(csr = %name, requester = %view.requester.username, signer = %view.signer_name, subject = %view.subject(), decision = "failed", %reason, serial = serial.as_deref(), "certificate not issued: {message}");
                            self.event(&csr, EventType::Warning, reason.as_str(), &message, "Sign")
                                .await;
                        }
                        Signing::WaitForCa { .. } | Signing::WaitForReview { .. } => {}
                    }
                    return Ok(());
                }
                Err(error) if is_conflict(&error) => {
                    tracing::info!(csr = %name, "status write conflicted; re-reading");
                    match self.get(&name).await? {
                        Some(fresh) if csr_state(&fresh) == CsrState::ApprovedUnsigned => {
                            csr = fresh
                        }
                        Some(fresh) => {
                            // Perhaps our own earlier write, whose answer was lost.
                            self.unconfirmed.settle(&fresh, &self.live);
                            return Ok(());
                        }
                        None => return Ok(()),
                    }
                    conflicts += 1;
                    if conflicts == MAX_CONFLICT_RETRIES {
                        return Err(Error::TooManyConflicts { csr: name });
                    }
                }
                Err(error) => {
                    // The server will never store this certificate, however often it is sent:
                    // the request is Failed instead, in the next turn. It was never stored, so
                    // there is no audit line and nothing unconfirmed for it.
                    if let (Signing::Issue(issued), Some(answer)) = (&outcome, refusal(&error)) {
                        tracing::info!(csr = %name, serial = %issued.serial_hex, %error, "the API server refused the certificate; marking the request Failed");
                        refused = Some(Signing::Fail {
                            reason: Reason::CertificateRejected,
                            message: rejected(&issued.serial_hex, answer),
                            serial: Some(issued.serial_hex.clone()),
                        });
                        continue;
                    }
                    // The certificate may have been written though the answer was lost (a
                    // connection cut, a server killed): if it turns up on the CSR, its audit
                    // line is written then.
                    if let (Signing::Issue(issued), Some(uid)) =
                        (&outcome, csr.metadata.uid.as_deref())
                        && !matches!(error, kube::Error::Api(_))
                    {
                        self.unconfirmed
                            .remember(uid, self.record_of(&view, issued));
                    }
                    return Err(kube_error("write status", &name)(error));
                }
            }
        }
    }

    /// The audit line of an issued certificate: what an operator holding a leaked certificate
    /// finds it by (`openssl x509 -noout -serial -fingerprint -sha256`), and the Event.
    async fn issued(&self, csr: &CertificateSigningRequest, record: &IssueRecord) {
        record.log(&self.live, csr, false);
        self.event(
            csr,
            EventType::Normal,
            "Issued",
            &format!(
                "certificate issued by {}, serial {}, valid until {}",
                record.ca_subject, record.serial, record.not_after
            ),
            "Sign",
        )
        .await;
    }

    fn record_of(&self, view: &CsrView, issued: &IssuedCertificate) -> IssueRecord {
        let ca = self.live.ca_for(&view.signer_name);
        let (ca_subject, ca_key_id) = match ca.as_ref() {
            Ok(ca) => (ca.subject().to_owned(), ca.key_id_hex()),
            Err(_) => (String::new(), String::new()),
        };
        IssueRecord {
            csr: view.name.clone(),
            requester: view.requester.username.clone(),
            groups: view.requester.groups.clone(),
            signer: view.signer_name.clone(),
            subject: view.subject(),
            serial: issued.serial_hex.clone(),
            sha256_fingerprint: fingerprint_sha256(&issued.der),
            not_before: issued.not_before.to_string(),
            not_after: issued.not_after.to_string(),
            ca_subject,
            ca_key_id,
            pem: issued.pem.clone(),
        }
    }

    /// An approved CSR whose signer has no usable CA: counted, one Warning Event per CSR, and
    /// issued when the CA loads (a CA reload looks at every cached CSR again).
    async fn wait_for_ca(&self, csr: &CertificateSigningRequest, view: &CsrView, message: &str) {
        let Some(uid) = csr.uid() else { return };
        let (previous, waiting) = self.waiting_for_ca.insert(view.name.clone(), uid.clone());
        self.set_waiting_for_ca(waiting);
        let first = previous.as_ref() != Some(&uid);
        if !first {
            return;
        }
        tracing::warn!(csr = %view.name, requester = %view.requester.username, signer = %view.signer_name, subject = %view.subject(), decision = "waiting", reason = Reason::CaUnavailable.as_str(), "approved, not issued yet: {message}");
        if !self.settings.dry_run {
            self.event(
                csr,
                EventType::Warning,
                Reason::CaUnavailable.as_str(),
                message,
                "Sign",
            )
            .await;
        }
    }

    pub(super) fn no_longer_waiting_for_ca(&self, name: &str) {
        if let (Some(_), waiting) = self.waiting_for_ca.remove(name) {
            self.set_waiting_for_ca(waiting);
        }
    }

    /// Forget the CSRs no longer cached (issued, failed, deleted) among those waiting.
    pub(super) fn forget_waiting_for_ca(&self, still_cached: impl Fn(&str) -> bool) {
        let waiting = self.waiting_for_ca.retain(|name| still_cached(name));
        self.set_waiting_for_ca(waiting);
    }

    fn set_waiting_for_ca(&self, waiting: usize) {
        self.live
            .metrics
            .waiting_for_ca
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    /// What signing `view` comes to, with the signer's CA as it is now.
    async fn signing(&self, view: &CsrView) -> Result<Signing, Error> {
        let policy = self.live.policy();
        // Approved by a human or not, we never sign what the policy forbids.
        if let Some((reason, message)) = policy::signing_refusal(view, &policy) {
            return Ok(Signing::Fail {
                reason,
                message,
                serial: None,
            });
        }
        // Nor an identity the cluster's RBAC makes all-powerful, whoever approved it.
        let review = match policy::ceiling_identity(view) {
            Some(identity) => Some(
                self.facts
                    .privilege(&identity, &policy.privilege_checks)
                    .await,
            ),
            None => None,
        };
        match policy::privilege_ceiling(view, &policy, review.as_ref()) {
            Ceiling::Clear(_) => {}
            Ceiling::Exceeded { message, .. } => {
                return Ok(Signing::Fail {
                    reason: Reason::PrivilegedIdentity,
                    message,
                    serial: None,
                });
            }
            Ceiling::Unknown { message, .. } => {
                let why = match review {
                    Some(PrivilegeReview::Unavailable(why)) => why,
                    _ => message.clone(),
                };
                return Ok(Signing::WaitForReview { message, why });
            }
        }
        let request = match &view.request {
            Ok(request) => request,
            Err(error) => {
                return Ok(Signing::Fail {
                    reason: Reason::InvalidRequest,
                    message: error.to_string(),
                    serial: None,
                });
            }
        };
        let ca_slot = self.live.ca_for(&view.signer_name);
        let ca = match ca_slot.as_ref() {
            Ok(ca) => ca,
            Err(why) => {
                return Ok(Signing::WaitForCa {
                    message: format!(
                        "the CA of signer {} is not loaded: {why}; the request stays approved and is issued as soon as the CA's Secret is mounted and valid (it is reloaded)",
                        view.signer_name
                    ),
                });
            }
        };
        let serial =
            crate::x509::ca::random_serial().map_err(|e| Error::Randomness(e.to_string()))?;
        let approved = ApprovedRequest {
            signer_name: &view.signer_name,
            usages: &view.usages,
            expiration_seconds: view.expiration_seconds,
            request,
        };
        Ok(
            match issue(
                ca,
                &approved,
                policy.signing,
                time::OffsetDateTime::now_utc(),
                serial,
            ) {
                Ok(issued) => Signing::Issue(issued),
                Err(error @ IssueError::CaExpiring { .. }) => Signing::WaitForCa {
                    message: format!(
                        "the CA of signer {} cannot sign: {error}; the request stays approved and is issued once the CA is rotated",
                        view.signer_name
                    ),
                },
                Err(error @ IssueError::CaUnavailable(_)) => Signing::WaitForCa {
                    message: format!(
                        "the CA of signer {} cannot sign now: {error}; the request stays approved and is issued as soon as the token is back",
                        view.signer_name
                    ),
                },
                Err(error) => Signing::Fail {
                    reason: error.reason(),
                    message: error.to_string(),
                    serial: None,
                },
            },
        )
    }
}

/// The most of the API server's answer quoted in a Failed condition (the Event's note is cut to
/// its own limit; the log line keeps the whole error).
const ANSWER_QUOTED: usize = 512;

/// The Failed condition's message for a certificate the API server refused: its answer, and
/// what to do.
fn rejected(serial: &str, answer: &kube::core::Status) -> String {
    let code = match answer.reason.as_str() {
        "" => answer.code.to_string(),
        reason => format!("{} {reason}", answer.code),
    };
    format!(
        "the API server refused to store the certificate issued for this request (serial {serial}): {code}: {}. Sending it again cannot change that answer, so no certificate was stored and the request is Failed. Check the signer's CA and csr-warden's log for serial {serial}, then create a new CSR",
        fit(answer.message.trim(), ANSWER_QUOTED)
    )
}

/// The audit record of one issued certificate: what an operator holding it finds it by.
#[derive(Debug, Clone)]
pub struct IssueRecord {
    csr: String,
    requester: String,
    groups: Vec<String>,
    signer: String,
    subject: String,
    serial: String,
    sha256_fingerprint: String,
    not_before: String,
    not_after: String,
    ca_subject: String,
    ca_key_id: String,
    /// The certificate written, to recognise it on the CSR.
    pem: String,
}

impl IssueRecord {
    /// The one JSON line of an issued certificate, and its metrics. `confirmed_late`: the write's
    /// answer was lost and the certificate was found on the CSR afterwards.
    fn log(
        &self,
        live: &crate::ops::live::Live,
        csr: &CertificateSigningRequest,
        confirmed_late: bool,
    ) {
        live.metrics
            .certificates_issued
            .get_or_create(&SignerLabels {
                signer: self.signer.clone(),
            })
            .inc();
        if let Some(age) = age_seconds(csr) {
            live.metrics.seconds_to_certificate.observe(age);
        }
        tracing::info!(
            csr = %self.csr,
            requester = %self.requester,
            groups = ?self.groups,
            signer = %self.signer,
            subject = %self.subject,
            decision = "issued",
            serial = %self.serial,
            sha256_fingerprint = %self.sha256_fingerprint,
            not_before = %self.not_before,
            not_after = %self.not_after,
            ca_subject = %self.ca_subject,
            ca_key_id = %self.ca_key_id,
            confirmed_late,
            "certificate issued"
        );
    }
}

/// Certificates whose status write got no answer, by CSR uid: if one turns up on its CSR (seen
/// by the watch, or on a re-read), it was issued, and its audit line is written then. Every
/// certificate csr-warden issued has its line, even across a lost answer.
#[derive(Debug, Default)]
pub struct Unconfirmed {
    writes: Memo<String, IssueRecord>,
}

impl Unconfirmed {
    fn remember(&self, uid: &str, record: IssueRecord) {
        self.writes.insert(uid.to_owned(), record);
    }

    fn forget(&self, uid: &str) {
        self.writes.remove(uid);
    }

    /// `csr` as the server has it now: if it carries a certificate we wrote without an
    /// answer, log it as issued. Either way the CSR is settled.
    pub fn settle(&self, csr: &CertificateSigningRequest, live: &crate::ops::live::Live) {
        let Some(uid) = csr.metadata.uid.as_deref() else {
            return;
        };
        let (Some(record), _) = self.writes.remove(uid) else {
            return;
        };
        let written = csr
            .status
            .as_ref()
            .and_then(|s| s.certificate.as_ref())
            .is_some_and(|c| c.0 == record.pem.as_bytes());
        if written {
            record.log(live, csr, true);
        }
    }
}
