//! The one error type of a reconcile, with a short label for logs and metrics.

use crate::facts::FactsError;

use super::MAX_CONFLICT_RETRIES;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call {action} for CSR {csr} failed: {source}")]
    Kube {
        action: &'static str,
        csr: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "CSR {csr} kept changing under us ({MAX_CONFLICT_RETRIES} conflicts in a row); will retry"
    )]
    TooManyConflicts { csr: String },
    #[error("no system randomness for a certificate serial: {0}")]
    Randomness(String),
    #[error("could not record the Event saying why CSR {csr} is left pending; will retry")]
    EventUnavailable { csr: String },
    #[error(
        "the privilege ceiling's SubjectAccessReviews for CSR {csr} could not be had: {why}; will retry (check csr-warden's RBAC: create subjectaccessreviews)"
    )]
    PrivilegeReview { csr: String, why: String },
    #[error("the facts for CSR {csr} are not to be had yet: {source}; will retry")]
    Facts {
        csr: String,
        #[source]
        source: FactsError,
    },
}

impl Error {
    /// Short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube { action, .. } => action,
            Error::TooManyConflicts { .. } => "conflicts",
            Error::Randomness(_) => "randomness",
            Error::EventUnavailable { .. } => "event",
            Error::PrivilegeReview { .. } => "privilege review",
            Error::Facts {
                source: FactsError::NotSynced(_),
                ..
            } => "facts not synced",
            Error::Facts { .. } => "facts",
        }
    }
}

pub(super) fn kube_error<'a>(
    action: &'static str,
    csr: &'a str,
) -> impl FnOnce(kube::Error) -> Error + 'a {
    move |source| Error::Kube {
        action,
        csr: csr.to_owned(),
        source,
    }
}

pub(super) fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_conflict())
}

/// The API server's answer to a write when it says the write itself is wrong, so that sending it
/// again can never succeed: 400 Bad Request, 413 Request Entity Too Large, 422 Invalid (a
/// certificate Go's x509 cannot parse, a field the server's validation or an admission policy
/// refuses). Everything else is ours or the server's and passes: 401 and 403 (our credentials and
/// RBAC), 404 (the CSR is gone), 409 (a conflict: re-read), 429 and 5xx (load, an unavailable
/// webhook, a server going down), and an answer without a code.
pub(super) fn refusal(error: &kube::Error) -> Option<&kube::core::Status> {
    match error {
        kube::Error::Api(status) if matches!(status.code, 400 | 413 | 422) => Some(status),
        _ => None,
    }
}

/// The CSR no longer exists (deleted by a human or the garbage collector while we worked).
pub(super) fn is_not_found(error: &Error) -> bool {
    matches!(error, Error::Kube { source: kube::Error::Api(status), .. } if status.is_not_found())
}
