//! Creating a CSR and following it to a certificate: created → approved → issued, or denied, or
//! failed, with what csr-warden said about it on the way (the Event it writes when it leaves a
//! CSR for a human). Everything is shown on stderr: stdout belongs to the command's result (a
//! kubectl exec plugin's stdout must carry only its ExecCredential).
//!
//! Only the CSR is watched and csr-warden's Events read: no assumption about who approves or
//! signs, so this works as well when a human approves and kube-controller-manager signs.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::Event as CoreEvent;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};

use super::UserError;

/// How often the Events are read while a CSR waits for a decision (the Event does not change
/// the CSR, so the watch does not bring it).
const EVENT_POLL: Duration = Duration::from_secs(1);
/// How long a CSR may wait without any Event before the user is told what that may mean.
const SILENCE_NOTICE: Duration = Duration::from_secs(15);

/// What the request asks for.
#[derive(Debug, Clone)]
pub struct Ask {
    pub name: String,
    pub request_pem: String,
    pub signer_name: String,
    pub usages: Vec<String>,
    pub expiration_seconds: i32,
}

/// How a followed CSR ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The PEM certificate(s) from status.certificate.
    Issued(String),
    Denied {
        reason: String,
        message: String,
    },
    Failed {
        reason: String,
        message: String,
    },
    /// No decision within the time given; the last reason csr-warden gave, if any.
    StillPending {
        said: Option<String>,
    },
    /// Approved, but no certificate within the time given.
    NotIssued,
    Interrupted,
}

/// Create the CSR; its name is returned as the server has it.
pub async fn create(
    client: &kube::Client,
    ask: &Ask,
) -> Result<CertificateSigningRequest, UserError> {
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(ask.name.clone()),
            ..ObjectMeta::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(ask.request_pem.clone().into_bytes()),
            signer_name: ask.signer_name.clone(),
            usages: Some(ask.usages.clone()),
            expiration_seconds: Some(ask.expiration_seconds),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    };
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    api.create(&PostParams::default(), &csr)
        .await
        .map_err(|e| UserError::api(format!("cannot create CSR {}", ask.name), e))
}

/// Where a CSR stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Pending,
    Approved,
    Issued(String),
    Denied { reason: String, message: String },
    Failed { reason: String, message: String },
}

fn state_of(csr: &CertificateSigningRequest) -> State {
    let status = csr.status.as_ref();
    let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
    let condition = |kind: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == kind && c.status != "False")
            .map(|c| {
                (
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default(),
                )
            })
    };
    if let Some((reason, message)) = condition("Denied") {
        return State::Denied { reason, message };
    }
    if let Some((reason, message)) = condition("Failed") {
        return State::Failed { reason, message };
    }
    let certificate = status
        .and_then(|s| s.certificate.as_ref())
        .filter(|c| !c.0.is_empty())
        .map(|c| String::from_utf8_lossy(&c.0).into_owned());
    match (condition("Approved"), certificate) {
        (Some(_), Some(certificate)) => State::Issued(certificate),
        (Some(_), None) => State::Approved,
        // A certificate without an approval: the API server accepts one, we do not.
        (None, _) => State::Pending,
    }
}

/// Follow CSR `name` (uid `uid`) until it is issued, denied or failed, `timeout` runs out, or
/// Ctrl-C. Progress goes to stderr.
pub async fn follow(
    client: &kube::Client,
    name: &str,
    uid: Option<&str>,
    timeout: Duration,
) -> Result<Outcome, UserError> {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut updates = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
    let deadline = tokio::time::Instant::now() + timeout;
    let started = tokio::time::Instant::now();
    let mut events = EventReader::new(client, name, uid);
    // Not at once: most CSRs are decided within a second, and need no word on why they wait.
    let mut tick = tokio::time::interval_at(started + EVENT_POLL, EVENT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shown = State::Pending;
    let mut told_silence = false;
    let mut watch_trouble_told = false;
    // One listener for the whole wait: a Ctrl-C between two turns of the loop is not lost.
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            update = updates.next() => {
                let csr = match update {
                    Some(Ok(csr)) => csr,
                    Some(Err(error)) => {
                        if let Some(fatal) = refused(&error) {
                            return Err(UserError::api(format!("cannot watch CSR {name}"), fatal));
                        }
                        if !watch_trouble_told {
                            say(&format!("watching CSR {name} failed ({error}); retrying"));
                            watch_trouble_told = true;
                        }
                        continue;
                    }
                    None => return Err(UserError::Input(format!("the watch of CSR {name} ended"))),
                };
                // The field selector is the server's to honour; a server that ignores it must
                // not make us follow another CSR.
                if csr.metadata.name.as_deref() != Some(name)
                    || uid.is_some_and(|uid| csr.metadata.uid.as_deref() != Some(uid))
                {
                    continue;
                }
                let state = state_of(&csr);
                if state == shown {
                    continue;
                }
                match &state {
                    State::Pending => {}
                    State::Approved => say(&format!("approved: {}; waiting for the signer", approval_of(&csr))),
                    State::Issued(certificate) => {
                        if shown == State::Pending {
                            say(&format!("approved: {}", approval_of(&csr)));
                        }
                        say("issued");
                        return Ok(Outcome::Issued(certificate.clone()));
                    }
                    State::Denied { reason, message } => {
                        return Ok(Outcome::Denied { reason: reason.clone(), message: message.clone() });
                    }
                    State::Failed { reason, message } => {
                        return Ok(Outcome::Failed { reason: reason.clone(), message: message.clone() });
                    }
                }
                shown = state;
            }
            _ = tick.tick() => {
                if shown != State::Pending {
                    continue;
                }
                events.show_new().await;
                if !told_silence && events.leave_reason.is_none() && started.elapsed() >= SILENCE_NOTICE {
                    told_silence = true;
                    say(&format!(
                        "no decision yet, and no word from csr-warden on CSR {name}. Either it does not decide this signerName, it is not running, or you may not read Events in namespace default. An operator can see why with `kubectl csr-warden check {name}`, or decide by hand: `kubectl certificate approve {name}`"
                    ));
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(match shown {
                    State::Approved => Outcome::NotIssued,
                    _ => Outcome::StillPending { said: events.leave_reason.clone() },
                });
            }
            _ = &mut interrupted => return Ok(Outcome::Interrupted),
        }
    }
}

/// A watch error no retry can cure: the credentials or the permissions.
fn refused(error: &watcher::Error) -> Option<kube::Error> {
    let api = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.clone(),
        watcher::Error::WatchError(status) => status.clone(),
        _ => return None,
    };
    matches!(api.code, 401 | 403).then(|| kube::Error::Api(api))
}

fn approval_of(csr: &CertificateSigningRequest) -> String {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Approved"))
        .map(|c| {
            let reason = c.reason.clone().unwrap_or_default();
            match c.message.as_deref() {
                Some(message) if !message.is_empty() => format!("{reason} ({message})"),
                _ => reason,
            }
        })
        .unwrap_or_default()
}

/// One line of progress on stderr.
pub fn say(line: &str) {
    eprintln!("csr-warden: {line}");
}

/// Reads csr-warden's Events about one CSR and shows each new one once.
struct EventReader {
    api: Api<CoreEvent>,
    name: String,
    uid: Option<String>,
    seen: HashSet<String>,
    /// The reason of the last Leave Event shown.
    leave_reason: Option<String>,
    /// Reading Events failed; said once, not tried again.
    unreadable: bool,
}

impl EventReader {
    fn new(client: &kube::Client, name: &str, uid: Option<&str>) -> Self {
        // Events about cluster-scoped objects (CSRs) live in `default`.
        EventReader {
            api: Api::namespaced(client.clone(), "default"),
            name: name.to_owned(),
            uid: uid.map(str::to_owned),
            seen: HashSet::new(),
            leave_reason: None,
            unreadable: false,
        }
    }

    async fn show_new(&mut self) {
        if self.unreadable {
            return;
        }
        let params = ListParams::default().fields(&format!(
            "involvedObject.kind=CertificateSigningRequest,involvedObject.name={}",
            self.name
        ));
        let list = match tokio::time::timeout(Duration::from_secs(10), self.api.list(&params)).await
        {
            Ok(Ok(list)) => list,
            Ok(Err(error)) => {
                self.unreadable = true;
                say(&format!(
                    "cannot read the Events about CSR {} ({error}); an operator sees them with `kubectl describe csr {}`",
                    self.name, self.name
                ));
                return;
            }
            Err(_) => return,
        };
        let mut events: Vec<CoreEvent> = list
            .items
            .into_iter()
            .filter(|e| {
                self.uid.is_none()
                    || e.involved_object.uid.is_none()
                    || e.involved_object.uid == self.uid
            })
            .filter(|e| {
                e.reporting_component.as_deref() == Some(crate::CONTROLLER_NAME)
                    || e.source.as_ref().and_then(|s| s.component.as_deref())
                        == Some(crate::CONTROLLER_NAME)
            })
            .collect();
        events.sort_by_key(|e| {
            e.metadata
                .resource_version
                .as_ref()
                .and_then(|rv| rv.parse::<u64>().ok())
        });
        for event in events {
            let key = event
                .metadata
                .uid
                .clone()
                .or(event.metadata.name.clone())
                .unwrap_or_default();
            if !self.seen.insert(key) {
                continue;
            }
            let reason = event.reason.clone().unwrap_or_default();
            let message = event.message.clone().unwrap_or_default();
            let leave = event.action.as_deref() == Some("Leave");
            if leave {
                say(&format!(
                    "pending: csr-warden left it for a human: {reason}: {message}"
                ));
                say(&format!(
                    "what to do: {}",
                    leave_advice(&reason, &self.name)
                ));
                self.leave_reason = Some(reason);
            } else if event.type_.as_deref() == Some("Warning") {
                say(&format!("{reason}: {message}"));
            }
        }
    }
}

/// What the person waiting can do about a CSR csr-warden left pending, by reason.
pub fn leave_advice(reason: &str, csr: &str) -> String {
    let reason = reason.strip_prefix("DryRun").unwrap_or(reason);
    let by_hand = format!(
        "an operator to approve it by hand (`kubectl certificate approve {csr}`) or deny it"
    );
    match reason {
        "NoMatchingRule" => format!(
            "no allow-list rule covers this subject and requester. Wait for {by_hand}, or ask for an allowList entry in csr-warden's policy for your CN and groups; `kubectl csr-warden check {csr}` shows the rules looked at"
        ),
        "PrivilegeReviewUnavailable" => format!(
            "csr-warden could not ask the cluster whether this identity is privileged; it asks again by itself. If it stays, ask {by_hand}, after `kubectl csr-warden check {csr}`"
        ),
        "KubeletClientNotAuthorized" => format!(
            "the requester may not create certificatesigningrequests/nodeclient (or selfnodeclient): ask an operator to bind that ClusterRole, or wait for {by_hand}"
        ),
        "NodeFactsUnavailable" | "NodeAddressesPending" => {
            "csr-warden waits for the Node's addresses and decides again when they arrive; nothing to do unless it stays".to_owned()
        }
        _ => format!("wait for {by_hand}; `kubectl csr-warden check {csr}` explains what csr-warden decided"),
    }
}

/// What to say about a denied or failed CSR: it is final, a new request is needed.
pub fn final_advice(outcome: &Outcome, csr: &str) -> Option<String> {
    match outcome {
        Outcome::Denied { .. } => Some(format!(
            "a denied CSR is final: change what the message names and request again, or ask an operator (`kubectl csr-warden check {csr}` shows the rule)"
        )),
        Outcome::Failed { .. } => Some(format!(
            "it was approved, but its signer could not issue it; ask an operator to look at the signer's log for CSR {csr}, then request again"
        )),
        Outcome::StillPending { said } => Some(format!(
            "CSR {csr} stays on the cluster, pending{}; the key was not kept, so its certificate could not be used: once the cause is fixed, request again (and `kubectl delete csr {csr}` if you may)",
            said.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
        )),
        Outcome::NotIssued => Some(format!(
            "CSR {csr} was approved but nothing issued it in time: is a signer running for its signerName? Request again once it is"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequestCondition, CertificateSigningRequestStatus,
    };

    fn with(conditions: &[(&str, &str)], certificate: Option<&str>) -> CertificateSigningRequest {
        CertificateSigningRequest {
            status: Some(CertificateSigningRequestStatus {
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(kind, reason)| CertificateSigningRequestCondition {
                            type_: (*kind).into(),
                            status: "True".into(),
                            reason: Some((*reason).into()),
                            message: Some("why".into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                certificate: certificate.map(|c| ByteString(c.as_bytes().to_vec())),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn states_as_kubectl_shows_them() {
        assert_eq!(state_of(&with(&[], None)), State::Pending);
        assert_eq!(
            state_of(&with(&[], Some("x"))),
            State::Pending,
            "no certificate without an approval"
        );
        assert_eq!(state_of(&with(&[("Approved", "A")], None)), State::Approved);
        assert_eq!(
            state_of(&with(&[("Approved", "A")], Some("PEM"))),
            State::Issued("PEM".into())
        );
        assert_eq!(
            state_of(&with(&[("Denied", "ForbiddenGroup")], None)),
            State::Denied {
                reason: "ForbiddenGroup".into(),
                message: "why".into()
            }
        );
        assert_eq!(
            state_of(&with(
                &[("Approved", "A"), ("Failed", "DisallowedUID")],
                None
            )),
            State::Failed {
                reason: "DisallowedUID".into(),
                message: "why".into()
            }
        );
    }

    #[test]
    fn a_leave_reason_says_what_to_do() {
        let advice = leave_advice("NoMatchingRule", "jane-1");
        assert!(
            advice.contains("kubectl certificate approve jane-1"),
            "{advice}"
        );
        assert!(advice.contains("allowList"), "{advice}");
        assert_eq!(
            leave_advice("DryRunNoMatchingRule", "x"),
            leave_advice("NoMatchingRule", "x")
        );
    }
}
