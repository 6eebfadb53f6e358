//! PURE: CA + approved request + now → certificate PEM.
//!
//! The certificate is built from what the policy inspected, never from the CSR's own extension
//! requests: the subject is the CSR's own encoded Name, carried over whole (every attribute, in
//! order, with its string type: Kubernetes reads a user's groups from every O); SANs from the CSR;
//! KeyUsage/ExtendedKeyUsage from spec.usages; CA:false always; validity from
//! spec.expirationSeconds clamped by policy and by the CA. The signer re-checks each well-known
//! signer's rules, because a human may approve anything.
//!
//! Built with RustCrypto's `x509-cert` (rcgen keeps one value per attribute type, so it cannot
//! carry `O=app1/O=app2`) and signed with the CA's key on aws-lc-rs.

use rcgen::SigningKey;
use time::{Duration, OffsetDateTime};
use x509_cert::certificate::{Certificate, TbsCertificate, Version};
use x509_cert::der::asn1::{BitString, Ia5String, OctetString};
use x509_cert::der::pem::LineEnding;
use x509_cert::der::{Decode, Encode, EncodePem};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::ext::{AsExtension, Extension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{ObjectIdentifier, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};

use crate::ca::{CertificateAuthority, key_identifier};
use crate::inspect::CertificateRequest;
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

    let request = approved.request;
    let subject = Name::from_der(&request.subject_der).map_err(build_error("the subject"))?;
    let public_key = SubjectPublicKeyInfoOwned::from_der(&request.public_key_der)
        .map_err(|e| IssueError::PublicKey(e.to_string()))?;
    let subject_key_id = key_identifier(public_key.subject_public_key.raw_bytes());
    let tbs_certificate = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial).map_err(build_error("the serial"))?,
        signature: ca.signature_algorithm().clone(),
        issuer: ca.issuer_name().clone(),
        validity: Validity {
            not_before: time_of(not_before)?,
            not_after: time_of(not_after)?,
        },
        extensions: Some(extensions(
            approved,
            &subject,
            subject_key_id,
            ca.key_identifier(),
        )?),
        subject,
        subject_public_key_info: public_key,
        issuer_unique_id: None,
        subject_unique_id: None,
    };
    let to_be_signed = tbs_certificate
        .to_der()
        .map_err(build_error("the certificate"))?;
    let signature = ca
        .key()
        .sign(&to_be_signed)
        .map_err(|e| IssueError::Build(format!("signing failed: {e}")))?;
    let certificate = Certificate {
        tbs_certificate,
        signature_algorithm: ca.signature_algorithm().clone(),
        signature: BitString::from_bytes(&signature).map_err(build_error("the signature"))?,
    };
    let pem = certificate
        .to_pem(LineEnding::LF)
        .map_err(build_error("the PEM"))?;
    Ok(IssuedCertificate {
        pem,
        not_before,
        not_after,
        serial_hex: serial.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

fn build_error<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> IssueError {
    move |error| IssueError::Build(format!("encoding {what}: {error}"))
}

/// UTCTime until 2049, GeneralizedTime after (RFC 5280 4.1.2.5).
fn time_of(at: OffsetDateTime) -> Result<Time, IssueError> {
    Time::try_from(std::time::SystemTime::from(at)).map_err(build_error("a validity time"))
}

/// KeyUsage (critical) and ExtendedKeyUsage from spec.usages, BasicConstraints CA:FALSE
/// (critical), the SANs (critical when the subject is empty, RFC 5280 4.2.1.6), SKI and AKI.
fn extensions(
    approved: &ApprovedRequest<'_>,
    subject: &Name,
    subject_key_id: Vec<u8>,
    authority_key_id: &[u8],
) -> Result<Vec<Extension>, IssueError> {
    let mut out = Vec::with_capacity(6);
    let mut add = |extension: &dyn Fn() -> Result<Extension, x509_cert::der::Error>| {
        extension()
            .map(|e| out.push(e))
            .map_err(build_error("an extension"))
    };
    let (key_usages, extended_key_usages) = usages(approved.usages);
    if !key_usages.is_empty() {
        add(&|| KeyUsage(key_usages).to_extension(subject, &[]))?;
    }
    if !extended_key_usages.is_empty() {
        add(&|| ExtendedKeyUsage(extended_key_usages.clone()).to_extension(subject, &[]))?;
    }
    add(&|| {
        BasicConstraints {
            ca: false,
            path_len_constraint: None,
        }
        .to_extension(subject, &[])
    })?;
    let names = sans(approved.request)?;
    if !names.is_empty() {
        add(&|| SubjectAltName(names.clone()).to_extension(subject, &[]))?;
    }
    add(&|| {
        SubjectKeyIdentifier(OctetString::new(subject_key_id.clone())?).to_extension(subject, &[])
    })?;
    add(&|| {
        AuthorityKeyIdentifier {
            key_identifier: Some(OctetString::new(authority_key_id)?),
            authority_cert_issuer: None,
            authority_cert_serial_number: None,
        }
        .to_extension(subject, &[])
    })?;
    Ok(out)
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

fn sans(request: &CertificateRequest) -> Result<Vec<GeneralName>, IssueError> {
    let ia5 = |kind: &str, value: &str| {
        Ia5String::new(value)
            .map_err(|_| IssueError::Build(format!("{kind} SAN {value:?} is not IA5 text")))
    };
    let mut sans = Vec::new();
    for dns in &request.dns_names {
        sans.push(GeneralName::DnsName(ia5("DNS", dns)?));
    }
    for ip in &request.ip_addresses {
        let bytes = match ip {
            std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        sans.push(GeneralName::IpAddress(
            OctetString::new(bytes).map_err(build_error("an IP SAN"))?,
        ));
    }
    for email in &request.email_addresses {
        sans.push(GeneralName::Rfc822Name(ia5("email", email)?));
    }
    for uri in &request.uris {
        sans.push(GeneralName::UniformResourceIdentifier(ia5("URI", uri)?));
    }
    Ok(sans)
}

/// spec.usages → KeyUsage and ExtendedKeyUsage, as kube-controller-manager maps them.
fn usages(
    usages: &[String],
) -> (
    x509_cert::der::flagset::FlagSet<KeyUsages>,
    Vec<ObjectIdentifier>,
) {
    use x509_cert::der::oid::db::rfc5280 as oids;
    let mut key_usages = x509_cert::der::flagset::FlagSet::<KeyUsages>::default();
    let mut extended = Vec::new();
    for usage in usages {
        let purpose = match usage.as_str() {
            "signing" | "digital signature" => {
                key_usages |= KeyUsages::DigitalSignature;
                None
            }
            "content commitment" => {
                key_usages |= KeyUsages::NonRepudiation;
                None
            }
            "key encipherment" => {
                key_usages |= KeyUsages::KeyEncipherment;
                None
            }
            "key agreement" => {
                key_usages |= KeyUsages::KeyAgreement;
                None
            }
            "data encipherment" => {
                key_usages |= KeyUsages::DataEncipherment;
                None
            }
            "encipher only" => {
                key_usages |= KeyUsages::EncipherOnly;
                None
            }
            "decipher only" => {
                key_usages |= KeyUsages::DecipherOnly;
                None
            }
            "client auth" => Some(oids::ID_KP_CLIENT_AUTH),
            "server auth" => Some(oids::ID_KP_SERVER_AUTH),
            "code signing" => Some(oids::ID_KP_CODE_SIGNING),
            "email protection" | "s/mime" => Some(oids::ID_KP_EMAIL_PROTECTION),
            "timestamping" => Some(oids::ID_KP_TIME_STAMPING),
            "ocsp signing" => Some(oids::ID_KP_OCSP_SIGNING),
            "any" => Some(oids::ANY_EXTENDED_KEY_USAGE),
            // "cert sign", "crl sign" and the IPsec/SGC purposes are refused by the signer rules
            // before we get here; never grant them.
            _ => None,
        };
        if let Some(purpose) = purpose
            && !extended.contains(&purpose)
        {
            extended.push(purpose);
        }
    }
    (key_usages, extended)
}
