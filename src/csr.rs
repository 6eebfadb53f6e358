//! What a CertificateSigningRequest object says: where it stands (its conditions and
//! certificate), the policy's view of it, and the condition and status patch csr-warden writes.
//! Read by the controller and by `check`.

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::inspect::{CertificateRequest, InspectError, inspect};
use crate::policy::{CsrView, Requester};

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

/// The merge patch that writes `csr`'s conditions (and, for /status, its certificate) and
/// nothing else, on the condition that the CSR is still at the resourceVersion it was decided
/// on (409 otherwise). The server applies it to its own copy, so annotations, labels and
/// finalizers that our trimmed cache copy lacks are kept (a PUT would drop them).
pub(crate) fn status_patch(
    csr: &CertificateSigningRequest,
    with_certificate: bool,
) -> serde_json::Value {
    let status = csr.status.clone().unwrap_or_default();
    let mut patch = serde_json::json!({
        "metadata": {"resourceVersion": csr.metadata.resource_version},
        "status": {"conditions": status.conditions.unwrap_or_default()},
    });
    if with_certificate && let Some(certificate) = status.certificate {
        patch["status"]["certificate"] = serde_json::json!(certificate);
    }
    patch
}

/// Seconds since the CSR was created, for the latency histograms.
pub(crate) fn age_seconds(csr: &CertificateSigningRequest) -> Option<f64> {
    let created = csr.metadata.creation_timestamp.as_ref()?;
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(created.0);
    Some(age.as_secs_f64().max(0.0))
}
