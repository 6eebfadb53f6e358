//! Deciding: ask [`crate::facts`] what the policy needs, run the pure `policy::decide`, and
//! write Approved or Denied through /approval. Leave decisions write nothing to the CSR.

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::error::{is_conflict, kube_error};
use super::record::log_decision;
use super::{Context, Error, MAX_CONFLICT_RETRIES};
use crate::csr::object::{APPROVED, CsrState, DENIED, age_seconds, condition, csr_state};
use crate::ops::metrics::DecisionLabels;
use crate::policy::{self, CsrView, Decision, PrivilegeReview, Reason};

impl Context {
    /// Decide a pending CSR and write the decision; on 409 re-read and decide again.
    pub(super) async fn decide_pending(
        &self,
        mut csr: CertificateSigningRequest,
    ) -> Result<(), Error> {
        let name = csr.name_any();
        let policy = self.live.policy();
        for _ in 0..MAX_CONFLICT_RETRIES {
            let view = self.view(&csr);
            let facts = self
                .facts
                .lookup(
                    &policy::facts_needed(&view, &policy),
                    &view,
                    &policy.privilege_checks,
                )
                .await
                .map_err(|source| Error::Facts {
                    csr: name.clone(),
                    source,
                })?;
            let verdict = policy::decide(&view, &facts, &policy);
            // Every rule looked at, for `RUST_LOG=csr_warden=debug`.
            tracing::debug!(csr = %name, steps = ?verdict.steps, "rules");
            let decision = &verdict.decision;
            let kind = match decision {
                // A leave writes nothing to the CSR, only its Event. One for want of the
                // privilege ceiling's answers is tried again, with the CSR's backoff.
                Decision::Leave { reason, .. } => {
                    let Some(PrivilegeReview::Unavailable(why)) = facts.privilege else {
                        return self.announce(&csr, &view, decision, false).await;
                    };
                    // A blip is retried before it is said on the CSR.
                    if *reason != Reason::PrivilegeReviewUnavailable || self.failures_of(&name) > 0
                    {
                        self.announce(&csr, &view, decision, false).await?;
                    }
                    return Err(Error::PrivilegeReview { csr: name, why });
                }
                Decision::Approve { .. } => APPROVED,
                Decision::Deny { .. } => DENIED,
            };
            if self.settings.dry_run {
                return self.announce(&csr, &view, decision, false).await;
            }
            let (reason, message) = (decision.reason().as_str(), decision.message());
            csr.status
                .get_or_insert_with(Default::default)
                .conditions
                .get_or_insert_with(Vec::new)
                .push(condition(kind, reason, message));
            match self.write_status("approval", &csr).await {
                Ok(_) => return self.announce(&csr, &view, decision, true).await,
                Err(error) if is_conflict(&error) => {
                    tracing::info!(csr = %name, "approval conflicted with another change; re-reading and deciding again");
                    match self.get(&name).await? {
                        Some(fresh) if csr_state(&fresh) == CsrState::Pending => csr = fresh,
                        // Approved by someone else meanwhile (or our copy was older than our
                        // own approval): sign it now rather than wait for another event.
                        Some(fresh) if csr_state(&fresh) == CsrState::ApprovedUnsigned => {
                            return self.sign_approved(fresh).await;
                        }
                        _ => return Ok(()),
                    }
                }
                Err(error) => return Err(kube_error("approve/deny", &name)(error)),
            }
        }
        Err(Error::TooManyConflicts { csr: name })
    }

    /// Make a decision known, once it is written (or would be, in a dry run): the metric, the
    /// audit log line, and the Event (a leave's is the only word on the CSR).
    async fn announce(
        &self,
        csr: &CertificateSigningRequest,
        view: &CsrView,
        decision: &Decision,
        written: bool,
    ) -> Result<(), Error> {
        // Metrics first: once the log line is out, /metrics already shows it.
        let counted = DecisionLabels {
            signer: view.signer_name.clone(),
            decision: decision.verb().to_owned(),
            reason: decision.reason().as_str().to_owned(),
        };
        self.live.metrics.decisions.get_or_create(&counted).inc();
        if written && let Some(age) = age_seconds(csr) {
            self.live.metrics.seconds_to_decision.observe(age);
        }
        log_decision(view, decision, self.settings.dry_run);
        let (event_type, kind) = match decision {
            Decision::Leave { reason, message } => {
                return self.say_left_pending(csr, *reason, message).await;
            }
            Decision::Approve { .. } => (EventType::Normal, APPROVED),
            Decision::Deny { .. } => (EventType::Warning, DENIED),
        };
        let (reason, message) = (decision.reason().as_str(), decision.message());
        self.event(csr, event_type, reason, message, kind).await;
        Ok(())
    }
}
