//! The privilege ceiling's questions to the cluster: one SubjectAccessReview per check for the
//! identity a certificate would carry (user = CN, groups = the O values and
//! `system:authenticated`, the UID), answered as kube-apiserver's authorizers (RBAC, webhooks)
//! answer any request of that identity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::PostParams;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::OnceCell;

use super::REVIEW_REUSE;
use crate::kube::request::{REVIEW_TIMEOUT, within};
use crate::ops::metrics::PrivilegeReviewLabels;
use crate::policy::{CertificateIdentity, PrivilegeCheck, PrivilegeReview};

/// Reviews of one identity asked at once: a handful, so one CSR does not take every connection.
const CONCURRENT_REVIEWS: usize = 4;

/// Each check's name and whether the identity may do it.
type Answers = Vec<(String, bool)>;

/// One identity's answers: asked once, by whichever reconcile came first, while every other
/// reconcile of the same identity waits for them (a backlog of one user's CSRs asks once, and
/// in the order its CSRs came); reused for [`REVIEW_REUSE`] as the kubelet reviews are.
struct Entry {
    asked_at: Instant,
    /// The check names asked, in order: a policy whose checks changed asks afresh.
    checks: Vec<String>,
    answers: Arc<OnceCell<PrivilegeReview>>,
}

#[derive(Default)]
pub(super) struct PrivilegeAnswers {
    by_identity: Mutex<HashMap<CertificateIdentity, Entry>>,
    counted: Mutex<Option<Family<PrivilegeReviewLabels, Counter>>>,
}

impl PrivilegeAnswers {
    pub(super) fn count_in(&self, family: Family<PrivilegeReviewLabels, Counter>) {
        *self.counted.lock().unwrap_or_else(|p| p.into_inner()) = Some(family);
    }

    fn count(&self, check: &str, answer: &str) {
        if let Some(family) = &*self.counted.lock().unwrap_or_else(|p| p.into_inner()) {
            family
                .get_or_create(&PrivilegeReviewLabels {
                    check: check.to_owned(),
                    answer: answer.to_owned(),
                })
                .inc();
        }
    }

    /// Every check answered for `identity`: the recent answers for the same checks, else asked
    /// (once, however many reconciles want them now). Any review that fails makes the whole
    /// answer `Unavailable`, never judged on part of it, and is not kept: the next asks again.
    pub(super) async fn review(
        &self,
        client: &Client,
        identity: &CertificateIdentity,
        checks: &[PrivilegeCheck],
    ) -> PrivilegeReview {
        let now = Instant::now();
        let names: Vec<String> = checks.iter().map(|c| c.name.clone()).collect();
        let cell = {
            let mut known = self.by_identity.lock().unwrap_or_else(|p| p.into_inner());
            known.retain(|_, entry| now.saturating_duration_since(entry.asked_at) < REVIEW_REUSE);
            match known.get(identity) {
                Some(entry) if entry.checks == names => entry.answers.clone(),
                _ => {
                    let answers = Arc::new(OnceCell::new());
                    known.insert(
                        identity.clone(),
                        Entry {
                            asked_at: now,
                            checks: names,
                            answers: answers.clone(),
                        },
                    );
                    answers
                }
            }
        };
        let review = cell
            .get_or_init(|| self.ask_all(client, identity, checks))
            .await
            .clone();
        if let PrivilegeReview::Unavailable(_) = review {
            let mut known = self.by_identity.lock().unwrap_or_else(|p| p.into_inner());
            if known
                .get(identity)
                .is_some_and(|entry| Arc::ptr_eq(&entry.answers, &cell))
            {
                known.remove(identity);
            }
        }
        review
    }

    async fn ask_all(
        &self,
        client: &Client,
        identity: &CertificateIdentity,
        checks: &[PrivilegeCheck],
    ) -> PrivilegeReview {
        let asked: Vec<Result<(String, bool), String>> = futures::stream::iter(checks.to_vec())
            .map(|check: PrivilegeCheck| async move {
                let answer = ask(client, identity, &check).await;
                let word = match &answer {
                    Ok(true) => "allowed",
                    Ok(false) => "denied",
                    Err(_) => "error",
                };
                self.count(&check.name, word);
                answer
                    .map(|allowed| (check.name.clone(), allowed))
                    .map_err(|e| format!("privilege check {}: {e}", check.name))
            })
            .buffered(CONCURRENT_REVIEWS)
            .collect()
            .await;
        match asked.into_iter().collect::<Result<Answers, _>>() {
            Ok(answers) => PrivilegeReview::Answered(answers),
            Err(why) => PrivilegeReview::Unavailable(why),
        }
    }
}

/// A SubjectAccessReview's answer as sent: `allowed` is required by the API, and an answer
/// without it is no answer (k8s-openapi's type would read it as false).
#[derive(serde::Deserialize)]
struct Answer {
    status: Option<AnswerStatus>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerStatus {
    allowed: Option<bool>,
    #[serde(default)]
    evaluation_error: Option<String>,
}

async fn ask(
    client: &Client,
    identity: &CertificateIdentity,
    check: &PrivilegeCheck,
) -> Result<bool, String> {
    let optional = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(identity.user.clone()),
            uid: identity.uid.clone(),
            groups: Some(identity.groups.clone()),
            resource_attributes: Some(ResourceAttributes {
                namespace: optional(&check.namespace),
                verb: Some(check.verb.clone()),
                group: Some(check.group.clone()),
                resource: Some(check.resource.clone()),
                subresource: optional(&check.subresource),
                name: optional(&check.resource_name),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let body = serde_json::to_vec(&review).map_err(|e| e.to_string())?;
    let request = kube::core::Request::new("/apis/authorization.k8s.io/v1/subjectaccessreviews")
        .create(&PostParams::default(), body)
        .map_err(|e| e.to_string())?;
    let answer: Answer = within(REVIEW_TIMEOUT, client.request(request))
        .await
        .map_err(|e| e.to_string())?;
    let status = answer
        .status
        .ok_or_else(|| "the SubjectAccessReview came back without a status".to_owned())?;
    let allowed = status.allowed.ok_or_else(|| {
        "the SubjectAccessReview's status says neither allowed nor not".to_owned()
    })?;
    // An authorizer that could not decide (evaluationError, e.g. a webhook down) without allowing
    // is no answer: csr-warden does not read "no rule matched here" as "cannot".
    if !allowed && let Some(error) = status.evaluation_error.filter(|e| !e.is_empty()) {
        return Err(format!("the authorizer could not decide: {error}"));
    }
    Ok(allowed)
}
