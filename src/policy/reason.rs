//! The one set of reason codes, for CSR decisions, pod certificate decisions and signing.

/// Stable reason codes, one set for every answer csr-warden gives: CSR decisions, pod
/// certificate decisions and signing. Written into conditions and Events and used as metric
/// labels. Operators alert on these; do not rename them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    NotOurSigner,
    SignOnlySigner,
    InvalidRequest,
    WeakKey,
    UnsupportedKey,
    UnsupportedSubject,
    ForbiddenGroup,
    AutoApprovedKubeletClient,
    KubeletClientNotAuthorized,
    AutoApprovedKubeletServing,
    SubjectMismatch,
    DisallowedUsages,
    DisallowedSANs,
    NodeAddressMismatch,
    NodeFactsUnavailable,
    NodeAddressesPending,
    ApiServerName,
    ApiServerAddress,
    ServiceDomainName,
    LocalhostName,
    NonUnicastAddress,
    AddressOfAnotherNode,
    OutsideServingAddresses,
    AutoApprovedAllowList,
    DisallowedGroups,
    DisallowedUid,
    ReservedIdentity,
    PrivilegedIdentity,
    PrivilegeReviewUnavailable,
    RequesterNotAllowed,
    NoMatchingRule,
    NotAllowListed,
    // Pod certificates (the Denied condition of a PodCertificateRequest).
    /// The API's own reason for a key type the signer does not sign.
    UnsupportedKeyType,
    NamespaceNotAllowed,
    ServiceAccountNotAllowed,
    /// `unverifiedUserAnnotations` this signer does not know (the API asks signers to deny).
    UnrecognizedAnnotations,
    // Signing (a Failed condition, or a wait).
    /// The signer's own rules refuse what was approved (a human approved it).
    SignerValidationFailure,
    /// The CA expires too soon for the shortest certificate.
    CaExpiring,
    /// The certificate could not be built or signed.
    SigningFailed,
    /// The API server refused to store the issued certificate (400, 413, 422).
    CertificateRejected,
    /// The signer's CA is not there (missing, unreadable, not loaded yet): the request waits,
    /// and is issued once the CA loads; never Failed for it.
    CaUnavailable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotOurSigner => "NotOurSigner",
            Reason::SignOnlySigner => "SignOnlySigner",
            Reason::InvalidRequest => "InvalidRequest",
            Reason::WeakKey => "WeakKey",
            Reason::UnsupportedKey => "UnsupportedKey",
            Reason::UnsupportedSubject => "UnsupportedSubject",
            Reason::ForbiddenGroup => "ForbiddenGroup",
            Reason::AutoApprovedKubeletClient => "AutoApprovedKubeletClient",
            Reason::KubeletClientNotAuthorized => "KubeletClientNotAuthorized",
            Reason::AutoApprovedKubeletServing => "AutoApprovedKubeletServing",
            Reason::SubjectMismatch => "SubjectMismatch",
            Reason::DisallowedUsages => "DisallowedUsages",
            Reason::DisallowedSANs => "DisallowedSANs",
            Reason::NodeAddressMismatch => "NodeAddressMismatch",
            Reason::NodeFactsUnavailable => "NodeFactsUnavailable",
            Reason::NodeAddressesPending => "NodeAddressesPending",
            Reason::ApiServerName => "ApiServerName",
            Reason::ApiServerAddress => "ApiServerAddress",
            Reason::ServiceDomainName => "ServiceDomainName",
            Reason::LocalhostName => "LocalhostName",
            Reason::NonUnicastAddress => "NonUnicastAddress",
            Reason::AddressOfAnotherNode => "AddressOfAnotherNode",
            Reason::OutsideServingAddresses => "OutsideServingAddresses",
            Reason::AutoApprovedAllowList => "AutoApprovedAllowList",
            Reason::DisallowedGroups => "DisallowedGroups",
            Reason::DisallowedUid => "DisallowedUID",
            Reason::ReservedIdentity => "ReservedIdentity",
            Reason::PrivilegedIdentity => "PrivilegedIdentity",
            Reason::PrivilegeReviewUnavailable => "PrivilegeReviewUnavailable",
            Reason::RequesterNotAllowed => "RequesterNotAllowed",
            Reason::NoMatchingRule => "NoMatchingRule",
            Reason::NotAllowListed => "NotAllowListed",
            Reason::UnsupportedKeyType => "UnsupportedKeyType",
            Reason::NamespaceNotAllowed => "NamespaceNotAllowed",
            Reason::ServiceAccountNotAllowed => "ServiceAccountNotAllowed",
            Reason::UnrecognizedAnnotations => "UnrecognizedAnnotations",
            Reason::SignerValidationFailure => "SignerValidationFailure",
            Reason::CaExpiring => "CAExpiring",
            Reason::SigningFailed => "SigningFailed",
            Reason::CertificateRejected => "CertificateRejected",
            Reason::CaUnavailable => "CAUnavailable",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
