//! Recording: the Event on the CSR (where `kubectl describe csr` shows it) and the structured
//! audit log line (what remains after the CSR is garbage-collected).

use std::time::Duration;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use super::{Context, EVENT_ATTEMPTS, subject_of};
use crate::policy::{CsrView, Decision, Reason};

impl Context {
    pub(super) async fn event(
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
}

/// The audit record: one structured line per decision. CSRs and their Events are garbage-collected
/// an hour after a decision; this line is what remains.
pub(super) fn log_decision(view: &CsrView, decision: &Decision, dry_run: bool) {
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
