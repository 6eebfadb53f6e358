//! PURE: pod certificates (`certificates.k8s.io/v1beta1` PodCertificateRequests, KEP-4317).
//! Which pods get a certificate from which of our pod-certificate signers, why the others are
//! denied, and what the certificate says: its only identity is the SPIFFE ID
//! `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`, for the key in the request's
//! `stubPKCS10Request`, for client and server auth, with a lifetime within both the request's
//! `maxExpirationSeconds` and the policy's, and never past the CA.
//!
//! The kubelet creates the request for a pod bound to its node and the API server checks the
//! pod, node and service account it names (NodeRestriction), so the namespace and service
//! account are facts here, not claims: the policy decides on them alone.

use std::collections::{BTreeMap, BTreeSet};

use crate::policy::reason::Reason;
use crate::x509::ca::CaPaths;
use crate::x509::inspect::{CertificateRequest, InspectError, KeyAlgorithm};

/// The shortest certificate the API accepts for a PodCertificateRequest (and the floor of
/// `spec.maxExpirationSeconds`).
pub use crate::x509::validity::POD_MIN_LIFETIME_SECONDS as MIN_LIFETIME_SECONDS;
pub use crate::x509::validity::{PodValidity, pod_validity as validity};
/// The API's default and ceiling for `spec.maxExpirationSeconds` (91 days).
pub const DEFAULT_MAX_EXPIRATION_SECONDS: i32 = 86_400;
pub const MAX_MAX_EXPIRATION_SECONDS: i32 = 7_862_400;

/// The key types to suggest when denying one we do not sign (the API's list, less P-521).
pub const SUPPORTED_KEYS: &str = "ECDSAP256, ECDSAP384, ED25519, RSA3072 or RSA4096";

/// One pod-certificate signer of the policy (`podCertificates:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSigner {
    pub signer_name: String,
    pub ca: CaPaths,
    /// The SPIFFE trust domain of the IDs issued (`cluster.local`).
    pub trust_domain: String,
    /// Namespace → the service accounts there that may get a certificate; None: every one.
    pub allow: BTreeMap<String, Option<BTreeSet<String>>>,
    pub max_expiration_seconds: i32,
    /// Publish the CA as a ClusterTrustBundle.
    pub trust_bundle: bool,
    /// Line of the entry in the policy file.
    pub line: u64,
}

/// Everything about one PodCertificateRequest that the decision looks at.
#[derive(Debug, Clone)]
pub struct PcrView {
    pub namespace: String,
    pub name: String,
    pub signer_name: String,
    pub pod_name: String,
    pub service_account_name: String,
    pub node_name: String,
    /// `spec.maxExpirationSeconds` (the API server defaults it to 86400).
    pub max_expiration_seconds: Option<i32>,
    /// Keys of `spec.unverifiedUserAnnotations`.
    pub annotation_keys: Vec<String>,
    /// `spec.stubPKCS10Request`, inspected.
    pub request: Result<CertificateRequest, InspectError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodDecision {
    /// Issue a certificate for this SPIFFE ID, living at most this long.
    Issue {
        spiffe_id: String,
        max_lifetime_seconds: i64,
    },
    Deny {
        reason: Reason,
        message: String,
    },
}

impl PodDecision {
    pub fn verb(&self) -> &'static str {
        match self {
            PodDecision::Issue { .. } => "issue",
            PodDecision::Deny { .. } => "deny",
        }
    }
}

fn deny(reason: Reason, message: String) -> PodDecision {
    PodDecision::Deny { reason, message }
}

/// Decide one PodCertificateRequest of `signer`.
pub fn decide(pcr: &PcrView, signer: &PodSigner) -> PodDecision {
    if !pcr.annotation_keys.is_empty() {
        return deny(
            Reason::UnrecognizedAnnotations,
            format!(
                "{} understands no unverifiedUserAnnotations; remove [{}] from the pod's podCertificate volume",
                signer.signer_name,
                pcr.annotation_keys.join(", ")
            ),
        );
    }
    let request = match &pcr.request {
        Ok(request) => request,
        Err(error @ (InspectError::UnsupportedKey(_) | InspectError::WeakKey { .. })) => {
            return deny(
                Reason::UnsupportedKeyType,
                format!(
                    "{} does not sign this key ({error}); use {SUPPORTED_KEYS} (the podCertificate volume's keyType)",
                    signer.signer_name
                ),
            );
        }
        Err(error) => {
            return deny(
                Reason::InvalidRequest,
                format!("spec.stubPKCS10Request cannot be used: {error}"),
            );
        }
    };
    if let KeyAlgorithm::Rsa { bits } = request.key
        && bits != 3072
        && bits != 4096
    {
        return deny(
            Reason::UnsupportedKeyType,
            format!("RSA-{bits} is not a pod certificate key type; use {SUPPORTED_KEYS}"),
        );
    }
    let namespace = &pcr.namespace;
    let account = &pcr.service_account_name;
    match signer.allow.get(namespace) {
        None => deny(
            Reason::NamespaceNotAllowed,
            format!(
                "pods in namespace {namespace:?} may not get certificates from {} (allowed namespaces: {})",
                signer.signer_name,
                signer.allow.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ),
        Some(Some(accounts)) if !accounts.contains(account) => deny(
            Reason::ServiceAccountNotAllowed,
            format!(
                "service account {namespace}/{account} may not get certificates from {} (allowed in {namespace}: {})",
                signer.signer_name,
                accounts.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        ),
        Some(_) => PodDecision::Issue {
            spiffe_id: spiffe_id(&signer.trust_domain, namespace, account),
            max_lifetime_seconds: i64::from(
                pcr.max_expiration_seconds
                    .unwrap_or(DEFAULT_MAX_EXPIRATION_SECONDS)
                    .min(signer.max_expiration_seconds),
            ),
        },
    }
}

pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// A SPIFFE trust domain: lower-case letters, digits, dots, dashes and underscores (the SPIFFE
/// ID specification), not empty.
pub fn check_trust_domain(trust_domain: &str) -> Result<(), String> {
    let valid = !trust_domain.is_empty()
        && trust_domain.len() <= 255
        && trust_domain
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "trustDomain {trust_domain:?} is not a SPIFFE trust domain: use lower-case letters, digits, '.', '-' and '_' only, no scheme or path (cluster.local)"
        ))
    }
}
