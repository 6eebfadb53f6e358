//! Signing: an Approved CSR of our signer becomes a certificate in /status, or a Failed
//! condition that says why it cannot be signed.

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestStatus,
};
use kube::ResourceExt;
use kube::api::PostParams;
use kube::runtime::events::EventType;

use super::{
    Context, CsrState, Error, FAILED, MAX_CONFLICT_RETRIES, age_seconds, condition, csr_state,
    is_conflict, kube_error, subject_of,
};
use crate::issue::{ApprovedRequest, IssueError, issue};
use crate::metrics::{FailureLabels, SignerLabels};
use crate::policy::{self, CsrView, Reason};

impl Context {
    /// Sign an approved CSR, or mark it Failed with the reason it cannot be signed.
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
        for _ in 0..MAX_CONFLICT_RETRIES {
            let view = self.view(&csr);
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
                return Ok(());
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
                                &format!(
                                    "certificate issued by {}",
                                    self.ca_subject(&view.signer_name)
                                ),
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
                    return Ok(());
                }
                Err(error) if is_conflict(&error) => {
                    tracing::info!(csr = %name, "status write conflicted; re-reading");
                    match self.get(&name).await? {
                        Some(fresh) if csr_state(&fresh) == CsrState::ApprovedUnsigned => {
                            csr = fresh
                        }
                        _ => return Ok(()),
                    }
                }
                Err(error) => return Err(kube_error("write status", &name)(error)),
            }
        }
        Err(Error::TooManyConflicts { csr: name })
    }

    fn ca_subject(&self, signer: &str) -> String {
        self.live
            .ca_for(signer)
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
        let ca_slot = self.live.ca_for(&view.signer_name);
        let ca = match ca_slot.as_ref() {
            Ok(ca) => ca,
            Err(why) => {
                return Ok(Err((
                    "CAUnavailable".to_owned(),
                    format!(
                        "the CA of signer {} is not loaded: {why}; fix its Secret (it is reloaded) and ask for a new certificate",
                        view.signer_name
                    ),
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
