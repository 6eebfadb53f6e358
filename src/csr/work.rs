//! The CSR controller on the generic runtime ([`crate::kube::work`]): which CSRs are ours to
//! work, where they queue, and what a worker does with one.
//!
//! Two lanes, so that a slow answer never holds up a CSR that does not need it: pending kubelet
//! client CSRs, whose decision waits on SubjectAccessReviews, have workers of their own;
//! everything else (allow-listed users, kubelet serving requests decided from the Node index,
//! signing) never queues behind them.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;

use super::{Context, Error, reconcile};
use crate::csr::object::{CsrState, csr_state};
use crate::facts::FactChange;
use crate::kube::queue::Placement;
use crate::kube::work::{self, Lane, Reconciler, Rules};
use crate::ops::live::Live;
use crate::ops::metrics::ErrorLabels;
use crate::policy::{NODE_USER_PREFIX, SIGNER_KUBELET_CLIENT, SIGNER_KUBELET_SERVING};

/// The CSR work queue.
pub type Work = work::Work<CertificateSigningRequest, CsrRules>;

/// Which CSRs are ours to work, and where they queue.
pub struct CsrRules {
    pub live: Arc<Live>,
}

impl Rules<CertificateSigningRequest> for CsrRules {
    fn wanted(&self, csr: &CertificateSigningRequest) -> bool {
        crate::csr::object::wanted(csr, &self.live)
    }

    fn placement(&self, csr: &CertificateSigningRequest) -> Placement {
        placement(csr)
    }

    /// A pending kubelet client CSR waits on a SubjectAccessReview, so it goes to the review
    /// workers, where a slow or hanging authorizer holds up nothing else; everything else
    /// (signing an approved kubelet client CSR too) goes to the main workers.
    fn lane(&self, csr: &CertificateSigningRequest) -> Lane {
        lane_of(csr)
    }
}

pub fn lane_of(csr: &CertificateSigningRequest) -> Lane {
    if csr.spec.signer_name == SIGNER_KUBELET_CLIENT && csr_state(csr) == CsrState::Pending {
        Lane::Reviews
    } else {
        Lane::Main
    }
}

/// Where a CSR goes in the queue: its requester's lane, by creation time.
pub fn placement(csr: &CertificateSigningRequest) -> Placement {
    Placement::of(csr.spec.username.clone().unwrap_or_default(), &csr.metadata)
}

/// The kubelet serving CSRs that a change of the facts concerns: those of that Node (the
/// requester is the node itself), or all of them after a relist or a change of the API
/// server's addresses.
pub fn offer_serving(work: &Work, change: &FactChange) {
    let requester = match change {
        FactChange::Everything => None,
        FactChange::Node(name) => Some(format!("{NODE_USER_PREFIX}{name}")),
    };
    work.offer_where(|csr| {
        csr.spec.signer_name == SIGNER_KUBELET_SERVING
            && requester
                .as_deref()
                .is_none_or(|r| csr.spec.username.as_deref() == Some(r))
    });
}

impl Reconciler<CertificateSigningRequest> for Context {
    type Error = Error;

    fn reconcile(
        &self,
        csr: Arc<CertificateSigningRequest>,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send {
        reconcile(csr, self)
    }

    fn is_connection_error(&self, error: &Error) -> bool {
        is_connection_error(error)
    }

    fn failed(&self, name: &str, error: &Error, failures: u32, retry_in: Duration) {
        tracing::warn!(csr = %name, error = %error, kind = error.label(), failures, ?retry_in, "reconcile failed; retrying");
        self.live
            .metrics
            .reconcile_errors
            .get_or_create(&ErrorLabels {
                kind: error.label().to_owned(),
            })
            .inc();
    }
}

/// A failure that says nothing about the CSR: the API server could not be reached, or answered
/// that it cannot serve now (429, 5xx: starting up, overloaded, etcd away). Retried at once when
/// it answers again.
fn is_connection_error(error: &Error) -> bool {
    match error {
        Error::Kube { source, .. } => crate::kube::request::is_unavailable(source),
        Error::Facts { source, .. } => source
            .kube()
            .is_some_and(crate::kube::request::is_unavailable),
        _ => false,
    }
}
