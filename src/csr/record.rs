//! Recording: the Event on the CSR (where `kubectl describe csr` shows it) and the structured
//! audit log line (what remains after the CSR is garbage-collected).

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use super::{Context, EVENT_ATTEMPTS, Error, REPORTER};
use crate::kube::events::{EVENT_NOTE_LIMIT, EVENT_REASON_LIMIT, fit};
use crate::kube::request::{REQUEST_TIMEOUT, list_paged, within};
use crate::ops::metrics::EventDropLabels;
use crate::policy::{CsrView, Decision, Reason};

/// How many tries (each with its own few attempts, spaced by the CSR's backoff) a leave Event
/// gets before it is dropped: enough to outlast a token rotation (kube-client re-reads the
/// token file every minute).
const LEAVE_EVENT_TRIES: u32 = 8;

enum EventOutcome {
    Written,
    /// The server refused it as invalid: final.
    Refused,
    /// The server could not be reached or would not take it now.
    Unavailable,
}

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
            .get(&name)
            .is_some_and(|(known_uid, known)| known_uid == uid && known == said);
        if known || self.event_exists(&uid, &said).await {
            self.remember_left_pending(name, uid, said);
            return Ok(());
        }
        // For a CSR left pending the Event is the only word on it. One the server refuses is
        // dropped at once (retrying cannot help, and any requester controls its text); one the
        // server cannot take now (an outage, a token being rotated) is tried again with the
        // CSR's backoff, a bounded number of times, then dropped. Either way it is counted.
        match self
            .try_event(csr, EventType::Normal, reason.as_str(), message, "Leave")
            .await
        {
            EventOutcome::Written => self.remember_left_pending(name, uid, said),
            EventOutcome::Refused => self.event_dropped("invalid"),
            EventOutcome::Unavailable if self.failures_of(&name) + 1 < LEAVE_EVENT_TRIES => {
                return Err(Error::EventUnavailable { csr: name });
            }
            EventOutcome::Unavailable => self.event_dropped("unavailable"),
        }
        Ok(())
    }

    fn remember_left_pending(&self, name: String, uid: String, reason: String) {
        self.left_pending.insert(name, (uid, reason));
    }

    /// Whether an Event with this reason is already recorded for the CSR (after a restart or a
    /// change of leader the memory above is empty). Events of cluster-scoped objects live in
    /// `default`: csr-warden's own CSR Events there are listed once, paged, the first time one
    /// is asked about, not once per pending CSR (the server has no index on involvedObject, so
    /// each such list reads the whole namespace). If they cannot be read, say it again rather
    /// than not at all.
    async fn event_exists(&self, uid: &str, reason: &str) -> bool {
        let said = self
            .said_before
            .get_or_try_init(|| self.list_said_before())
            .await;
        match said {
            Ok(said) => said.contains(&(uid.to_owned(), reason.to_owned())),
            Err(error) => {
                tracing::debug!(%error, "could not read existing Events; recording the reason again");
                false
            }
        }
    }

    /// (CSR uid, reason) of every Event csr-warden recorded on a CSR.
    async fn list_said_before(&self) -> Result<HashSet<(String, String)>, kube::Error> {
        let events: Api<CoreEvent> = Api::namespaced(self.client.clone(), "default");
        let params = ListParams::default().fields(&format!(
            "involvedObject.kind=CertificateSigningRequest,reportingComponent={REPORTER}"
        ));
        let mut said = HashSet::new();
        list_paged(&events, params, |page| {
            said.extend(
                page.into_iter()
                    .filter_map(|event| Some((event.involved_object.uid?, event.reason?))),
            );
        })
        .await?;
        tracing::info!(
            events = said.len(),
            "read the Events csr-warden recorded before, so reasons already given are not repeated"
        );
        Ok(said)
    }

    /// Forget what was said about CSRs no longer in the cache (finished or deleted).
    pub(super) fn forget_left_pending(&self, still_cached: impl Fn(&str) -> bool) {
        self.left_pending.retain(|name| still_cached(name));
    }

    /// Record a decision's Event; one that cannot be written is counted and left to the log
    /// line: the decision stands. Normal Events (approved, issued) come out of a budget, so a
    /// storm of thousands does not double the API server's load; Warning Events (denied,
    /// failed, waiting for a CA) are never shed, nor are leave Events (written elsewhere).
    pub(super) async fn event(
        &self,
        csr: &CertificateSigningRequest,
        type_: EventType,
        reason: &str,
        note: &str,
        action: &str,
    ) {
        if type_ == EventType::Normal && !self.event_budget.take(std::time::Instant::now()) {
            tracing::debug!(csr = %csr.name_any(), %reason, "Event shed: over the Event budget (the log line stands)");
            self.live.metrics.events_shed.inc();
            return;
        }
        match self.try_event(csr, type_, reason, note, action).await {
            EventOutcome::Written => {}
            EventOutcome::Refused => self.event_dropped("invalid"),
            EventOutcome::Unavailable => self.event_dropped("unavailable"),
        }
    }

    fn event_dropped(&self, cause: &str) {
        self.live
            .metrics
            .events_dropped
            .get_or_create(&EventDropLabels {
                cause: cause.to_owned(),
            })
            .inc();
    }

    async fn try_event(
        &self,
        csr: &CertificateSigningRequest,
        type_: EventType,
        reason: &str,
        note: &str,
        action: &str,
    ) -> EventOutcome {
        // Within the API's limits, whatever the requester put in its subject: the full text is
        // in the log line.
        let event = Event {
            type_,
            reason: fit(&self.event_reason(reason), EVENT_REASON_LIMIT),
            note: Some(fit(note, EVENT_NOTE_LIMIT)),
            action: fit(action, EVENT_REASON_LIMIT),
            secondary: None,
        };
        // An Event that cannot be written must not undo, hold up or repeat a decision already
        // made: a refusal is final, anything else is retried a few times; then the log line is
        // the record.
        let reference = csr.object_ref(&());
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=EVENT_ATTEMPTS {
            let publish = self.recorder.publish(&event, &reference);
            let error = match within(REQUEST_TIMEOUT, publish).await {
                Ok(()) => return EventOutcome::Written,
                Err(error) => error,
            };
            // 400 and 422: the server will never take this Event as it is.
            let refused =
                matches!(&error, kube::Error::Api(status) if matches!(status.code, 400 | 422));
            if refused || attempt == EVENT_ATTEMPTS {
                let cause = if refused { "invalid" } else { "unavailable" };
                tracing::warn!(csr = %csr.name_any(), %error, cause, "could not record Event; the decision stands and is in this log");
                return if refused {
                    EventOutcome::Refused
                } else {
                    EventOutcome::Unavailable
                };
            }
            tracing::debug!(csr = %csr.name_any(), %error, attempt, "Event write failed; retrying");
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        EventOutcome::Unavailable
    }
}

/// The audit record: one structured line per decision. CSRs and their Events are garbage-collected
/// an hour after a decision; this line is what remains.
pub(super) fn log_decision(view: &CsrView, decision: &Decision, dry_run: bool) {
    let subject = view.subject();
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
