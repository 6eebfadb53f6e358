//! Recording: the Event on the CSR (where `kubectl describe csr` shows it) and the structured
//! audit log line (what remains after the CSR is garbage-collected).

use std::time::Duration;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use super::{Context, EVENT_ATTEMPTS, Error, subject_of};
use crate::policy::{CsrView, Decision, Reason};

impl Context {
    /// The reason as it goes into an Event: `DryRun`-prefixed in dry-run.
    fn event_reason(&self, reason: &str) -> String {
        if self.settings.dry_run {
            format!("DryRun{reason}")
        } else {
            reason.to_owned()
        }
    }

    /// Tell the requester and the operator why a CSR is left for a human: one Normal Event per CSR
    /// and reason. Looking at the CSR again with the same outcome (a policy reload, a relist, a
    /// restart, a new leader) writes nothing; a different outcome writes the new reason.
    pub(super) async fn say_left_pending(
        &self,
        csr: &CertificateSigningRequest,
        reason: Reason,
        message: &str,
    ) -> Result<(), Error> {
        let (Some(name), Some(uid)) = (csr.metadata.name.clone(), csr.uid()) else {
            return Ok(());
        };
        let said = self.event_reason(reason.as_str());
        let known = self
            .left_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
            .is_some_and(|(known_uid, known)| *known_uid == uid && *known == said);
        if known || self.event_exists(&uid, &said).await {
            self.remember_left_pending(name, uid, said);
            return Ok(());
        }
        // For a CSR left pending the Event is the only word on it: if it cannot be written,
        // the CSR is looked at again later, after the usual backoff.
        if !self
            .event(csr, EventType::Normal, reason.as_str(), message, "Leave")
            .await
        {
            return Err(Error::EventNotRecorded { csr: name });
        }
        self.remember_left_pending(name, uid, said);
        Ok(())
    }

    fn remember_left_pending(&self, name: String, uid: String, reason: String) {
        self.left_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, (uid, reason));
    }

    /// Whether an Event with this reason is already recorded for the CSR (after a restart or a
    /// change of leader the memory above is empty). Events of cluster-scoped objects live in
    /// `default`. If the Events cannot be read, say it again rather than not at all.
    async fn event_exists(&self, uid: &str, reason: &str) -> bool {
        let events: Api<CoreEvent> = Api::namespaced(self.client.clone(), "default");
        let params = ListParams::default()
            .fields(&format!("involvedObject.uid={uid},reason={reason}"))
            .limit(1);
        match events.list(&params).await {
            Ok(list) => !list.items.is_empty(),
            Err(error) => {
                tracing::debug!(%error, "could not read existing Events; recording the reason again");
                false
            }
        }
    }

    /// Forget what was said about CSRs no longer in the cache (finished or deleted).
    pub(super) fn forget_left_pending(&self, still_cached: impl Fn(&str) -> bool) {
        self.left_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| still_cached(name));
    }

    pub(super) async fn event(
        &self,
        csr: &CertificateSigningRequest,
        type_: EventType,
        reason: &str,
        note: &str,
        action: &str,
    ) -> bool {
        let reason = self.event_reason(reason);
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
                Ok(()) => return true,
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
        false
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
