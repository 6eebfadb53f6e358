//! What a CertificateSigningRequest object says: where it stands (its conditions and
//! certificate), the policy's view of it, and the condition csr-warden adds and how it is written.
//! Read by the controller and by `check`.

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::ops::live::Live;
use crate::policy::{CsrView, Requester, SignerRole};
use crate::x509::inspect::{CertificateRequest, InspectError, inspect};

pub const APPROVED: &str = "Approved";
pub const DENIED: &str = "Denied";
pub const FAILED: &str = "Failed";

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

impl CsrState {
    /// Pending or approved-unsigned: something is still to be done.
    pub fn needs_work(self) -> bool {
        matches!(self, CsrState::Pending | CsrState::ApprovedUnsigned)
    }
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
    csr_view_with(csr, inspect(&csr.spec.request.0))
}

/// The policy's view of a CSR object whose request was already inspected.
pub(crate) fn csr_view_with(
    csr: &CertificateSigningRequest,
    request: Result<CertificateRequest, InspectError>,
) -> CsrView {
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
        request,
    }
}

pub(crate) fn condition(
    kind: &str,
    reason: &str,
    message: &str,
) -> CertificateSigningRequestCondition {
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

/// Written by `kubectl apply`: a second copy of the whole object, request included; the cache
/// drops it.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Put on a cached copy in place of a dropped last-applied annotation, so its writes know the
/// copy is incomplete. Never sent to the server: such a copy is written as a merge patch.
pub const CACHE_TRIMMED: &str = "csr-warden.io/cache-dropped-last-applied";

/// How a decision or a certificate is written to /approval or /status.
#[derive(Debug)]
pub enum StatusWrite {
    /// The whole object, as kubectl and kube-controller-manager send it: the cheapest write for
    /// the server (a merge patch costs it a re-encode and a merge of the stored object first).
    /// The server keeps the stored spec and managedFields but takes metadata from the body,
    /// so this is only for a copy that carries all of it. Its resourceVersion makes it
    /// conditional (409 if the CSR changed since).
    Replace,
    /// For a copy the cache trimmed of an annotation: the conditions (and certificate) and the
    /// resourceVersion precondition, applied by the server to its own copy, so nothing our
    /// copy lacks is lost.
    MergePatch(serde_json::Value),
}

/// How to write `csr`'s conditions (and, for /status, its certificate), on the condition that
/// the CSR is still at the resourceVersion it was decided on.
pub fn status_write(csr: &CertificateSigningRequest, with_certificate: bool) -> StatusWrite {
    let trimmed = csr
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|annotations| annotations.contains_key(CACHE_TRIMMED));
    if !trimmed {
        return StatusWrite::Replace;
    }
    let status = csr.status.clone().unwrap_or_default();
    let mut patch = serde_json::json!({
        "metadata": {"resourceVersion": csr.metadata.resource_version},
        "status": {"conditions": status.conditions.unwrap_or_default()},
    });
    if with_certificate && let Some(certificate) = status.certificate {
        patch["status"]["certificate"] = serde_json::json!(certificate);
    }
    StatusWrite::MergePatch(patch)
}

/// Seconds since the CSR was created, for the latency histograms.
pub(crate) fn age_seconds(csr: &CertificateSigningRequest) -> Option<f64> {
    let created = csr.metadata.creation_timestamp.as_ref()?;
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(created.0);
    Some(age.as_secs_f64().max(0.0))
}

/// Whether the cache keeps a CSR at all: only ours with work left. A finished CSR (Issued,
/// Denied, Failed) is never acted on again and a foreign signer's is never acted on, so neither
/// costs memory; a change that makes one interesting again arrives as a watch event.
pub fn worth_caching(csr: &CertificateSigningRequest, role: Option<SignerRole>) -> bool {
    match (csr_state(csr), role) {
        (CsrState::Pending, Some(role)) => role.decides(),
        (CsrState::ApprovedUnsigned, Some(role)) => role.signs(),
        _ => false,
    }
}

/// The one test of "ours to work on": one of our signers, and something left for us to do in its
/// role (decide a pending CSR, sign an approved one). The cache, the queue, the resync and
/// reconcile all ask this.
pub fn wanted(csr: &CertificateSigningRequest, live: &Live) -> bool {
    worth_caching(csr, live.policy().role(&csr.spec.signer_name))
}
