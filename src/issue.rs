//! PURE: CA + approved request + now → certificate PEM.
//!
//! The certificate is built from what the policy inspected, never from the CSR's own extension
//! requests: subject and SANs from the CSR, KeyUsage/ExtendedKeyUsage from spec.usages,
//! CA:false always, validity from spec.expirationSeconds clamped by policy and by the CA.
//! The signer re-checks each well-known signer's rules, because a human may approve anything.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use time::{Duration, OffsetDateTime};

use crate::ca::CertificateAuthority;
use crate::inspect::{CertificateRequest, SubjectAttribute};
use crate::policy::{
    CLIENT_USAGES, NODE_GROUP, NODE_USER_PREFIX, SERVING_USAGES, SIGNER_KUBELET_CLIENT,
    SIGNER_KUBELET_SERVING, SigningLimits, USAGE_CLIENT_AUTH, USAGE_SERVER_AUTH,
};

/// Certificates start this far in the past, so clocks that lag a little still accept them.
pub const BACKDATE: Duration = Duration::minutes(5);
/// Shortest certificate we issue (kube-controller-manager's floor).
pub const MIN_LIFETIME: Duration = Duration::minutes(10);

/// Why a certificate was not issued. Written as the CSR's Failed condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("{signer} does not issue this request: {problem}")]
    SignerRules { signer: String, problem: String },
    #[error("the CA expires at {ca_not_after}, less than {} minutes from now; rotate the CA Secret", MIN_LIFETIME.whole_minutes())]
    CaExpiring { ca_not_after: OffsetDateTime },
    #[error("the request's public key cannot be certified: {0}")]
    PublicKey(String),
    #[error("building the certificate failed: {0}")]
    Build(String),
}

impl IssueError {
    /// The reason of the Failed condition and the Warning Event.
    pub fn reason(&self) -> &'static str {
        match self {
            IssueError::SignerRules { .. } | IssueError::PublicKey(_) => "SignerValidationFailure",
            IssueError::CaExpiring { .. } => "CAExpiring",
            IssueError::Build(_) => "SigningFailed",
        }
    }
}

/// An approved request, as the signer sees it.
#[derive(Debug, Clone, Copy)]
pub struct ApprovedRequest<'a> {
    pub signer_name: &'a str,
    pub usages: &'a [String],
    pub expiration_seconds: Option<i32>,
    pub request: &'a CertificateRequest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    pub pem: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Lower-case hex, for logs.
    pub serial_hex: String,
}

/// Issue a certificate for an approved request.
pub fn issue(
    ca: &CertificateAuthority,
    approved: &ApprovedRequest<'_>,
    limits: SigningLimits,
    now: OffsetDateTime,
    serial: [u8; 16],
) -> Result<IssuedCertificate, IssueError> {
    check_signer_rules(approved)?;
    let (not_before, not_after) =
        validity(approved.expiration_seconds, limits, now, ca.not_after())?;

    let mut params = CertificateParams::default();
    params.distinguished_name = subject(&approved.request.subject)?;
    params.subject_alt_names = sans(approved.request)?;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    let (key_usages, extended_key_usages) = usages(approved.usages);
    params.key_usages = key_usages;
    params.extended_key_usages = extended_key_usages;

    let public_key = SubjectPublicKeyInfo::from_der(&approved.request.public_key_der)
        .map_err(|e| IssueError::PublicKey(e.to_string()))?;
    let certificate = params
        .signed_by(&public_key, ca.issuer())
        .map_err(|e| IssueError::Build(e.to_string()))?;
    Ok(IssuedCertificate {
        pem: certificate.pem(),
        not_before,
        not_after,
        serial_hex: serial.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// NotBefore = now - 5 min; NotAfter = now + requested (or default), at most the policy maximum
/// and never beyond the CA.
pub fn validity(
    expiration_seconds: Option<i32>,
    limits: SigningLimits,
    now: OffsetDateTime,
    ca_not_after: OffsetDateTime,
) -> Result<(OffsetDateTime, OffsetDateTime), IssueError> {
    let requested = expiration_seconds
        .map(|s| i64::from(s.max(0)))
        .unwrap_or(i64::from(limits.default_expiration_seconds));
    let lifetime = Duration::seconds(requested.min(i64::from(limits.max_expiration_seconds)))
        .max(MIN_LIFETIME);
    let not_after = (now + lifetime).min(ca_not_after);
    if not_after < now + MIN_LIFETIME {
        return Err(IssueError::CaExpiring { ca_not_after });
    }
    Ok((now - BACKDATE, not_after))
}

fn rules_error(approved: &ApprovedRequest<'_>, problem: impl Into<String>) -> IssueError {
    IssueError::SignerRules {
        signer: approved.signer_name.to_owned(),
        problem: problem.into(),
    }
}

fn check_signer_rules(approved: &ApprovedRequest<'_>) -> Result<(), IssueError> {
    let request = approved.request;
    // kube-apiserver-client, the kubelet client signer and custom signers issue client
    // certificates only; kubelet-serving issues serving certificates only.
    let (allowed, required) = if approved.signer_name == SIGNER_KUBELET_SERVING {
        (SERVING_USAGES, USAGE_SERVER_AUTH)
    } else {
        (CLIENT_USAGES, USAGE_CLIENT_AUTH)
    };
    if let Some(bad) = approved
        .usages
        .iter()
        .find(|u| !allowed.contains(&u.as_str()))
    {
        return Err(rules_error(approved, format!("invalid usage {bad:?}")));
    }
    if !approved.usages.iter().any(|u| u == required) {
        return Err(rules_error(
            approved,
            format!("usages must include {required:?}"),
        ));
    }
    if approved.signer_name == SIGNER_KUBELET_CLIENT
        || approved.signer_name == SIGNER_KUBELET_SERVING
    {
        let is_node = request
            .common_name
            .as_deref()
            .and_then(|cn| cn.strip_prefix(NODE_USER_PREFIX))
            .is_some_and(|name| !name.is_empty());
        if !is_node || request.organizations != [NODE_GROUP] {
            return Err(rules_error(
                approved,
                format!(
                    "subject must be CN=system:node:<name>, O={NODE_GROUP}; got {:?}",
                    request.subject_string()
                ),
            ));
        }
    }
    if approved.signer_name == SIGNER_KUBELET_CLIENT && request.has_sans() {
        return Err(rules_error(
            approved,
            "kubelet client certificates carry no SANs",
        ));
    }
    if approved.signer_name == SIGNER_KUBELET_SERVING {
        if !request.email_addresses.is_empty() || !request.uris.is_empty() {
            return Err(rules_error(approved, "email and URI SANs are not allowed"));
        }
        if request.dns_names.is_empty() && request.ip_addresses.is_empty() {
            return Err(rules_error(
                approved,
                "at least one DNS or IP SAN is required",
            ));
        }
    }
    Ok(())
}

fn subject(attributes: &[SubjectAttribute]) -> Result<DistinguishedName, IssueError> {
    let mut name = DistinguishedName::new();
    for attribute in attributes {
        let (kind, value): (DnType, DnValue) = match attribute.oid.as_slice() {
            [2, 5, 4, 3] => (DnType::CommonName, attribute.value.clone().into()),
            [2, 5, 4, 10] => (DnType::OrganizationName, attribute.value.clone().into()),
            [2, 5, 4, 11] => (
                DnType::OrganizationalUnitName,
                attribute.value.clone().into(),
            ),
            [2, 5, 4, 7] => (DnType::LocalityName, attribute.value.clone().into()),
            [2, 5, 4, 8] => (DnType::StateOrProvinceName, attribute.value.clone().into()),
            // RFC 5280 wants countryName as a PrintableString.
            [2, 5, 4, 6] => (
                DnType::CountryName,
                match rcgen::string::PrintableString::try_from(attribute.value.as_str()) {
                    Ok(printable) => DnValue::PrintableString(printable),
                    Err(_) => attribute.value.clone().into(),
                },
            ),
            other => (
                DnType::CustomDnType(other.to_vec()),
                attribute.value.clone().into(),
            ),
        };
        // rcgen keeps one value per attribute type; refuse rather than drop a value silently.
        if name.get(&kind).is_some() {
            return Err(IssueError::SignerRules {
                signer: String::from("csr-warden"),
                problem: "the subject repeats an attribute type (e.g. two O values); request one"
                    .into(),
            });
        }
        name.push(kind, value);
    }
    Ok(name)
}

fn sans(request: &CertificateRequest) -> Result<Vec<SanType>, IssueError> {
    let mut sans = Vec::new();
    for dns in &request.dns_names {
        let name = dns
            .clone()
            .try_into()
            .map_err(|_| IssueError::Build(format!("DNS SAN {dns:?} is not IA5 text")))?;
        sans.push(SanType::DnsName(name));
    }
    sans.extend(request.ip_addresses.iter().copied().map(SanType::IpAddress));
    for email in &request.email_addresses {
        let name = email
            .clone()
            .try_into()
            .map_err(|_| IssueError::Build(format!("email SAN {email:?} is not IA5 text")))?;
        sans.push(SanType::Rfc822Name(name));
    }
    for uri in &request.uris {
        let name = uri
            .clone()
            .try_into()
            .map_err(|_| IssueError::Build(format!("URI SAN {uri:?} is not IA5 text")))?;
        sans.push(SanType::URI(name));
    }
    Ok(sans)
}

/// spec.usages → KeyUsage and ExtendedKeyUsage, as kube-controller-manager maps them.
fn usages(usages: &[String]) -> (Vec<KeyUsagePurpose>, Vec<ExtendedKeyUsagePurpose>) {
    let mut key_usages = Vec::new();
    let mut extended = Vec::new();
    for usage in usages {
        match usage.as_str() {
            "signing" | "digital signature" => key_usages.push(KeyUsagePurpose::DigitalSignature),
            "content commitment" => key_usages.push(KeyUsagePurpose::ContentCommitment),
            "key encipherment" => key_usages.push(KeyUsagePurpose::KeyEncipherment),
            "key agreement" => key_usages.push(KeyUsagePurpose::KeyAgreement),
            "data encipherment" => key_usages.push(KeyUsagePurpose::DataEncipherment),
            "encipher only" => key_usages.push(KeyUsagePurpose::EncipherOnly),
            "decipher only" => key_usages.push(KeyUsagePurpose::DecipherOnly),
            "client auth" => extended.push(ExtendedKeyUsagePurpose::ClientAuth),
            "server auth" => extended.push(ExtendedKeyUsagePurpose::ServerAuth),
            "code signing" => extended.push(ExtendedKeyUsagePurpose::CodeSigning),
            "email protection" | "s/mime" => {
                extended.push(ExtendedKeyUsagePurpose::EmailProtection)
            }
            "timestamping" => extended.push(ExtendedKeyUsagePurpose::TimeStamping),
            "ocsp signing" => extended.push(ExtendedKeyUsagePurpose::OcspSigning),
            "any" => extended.push(ExtendedKeyUsagePurpose::Any),
            // "cert sign", "crl sign" and the IPsec/SGC purposes are refused by the signer rules
            // before we get here; never grant them.
            _ => {}
        }
    }
    key_usages.dedup();
    extended.dedup();
    (key_usages, extended)
}
