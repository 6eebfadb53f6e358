//! PURE: CA + approved request + now → certificate PEM.
//!
//! The certificate is built from what the policy inspected, never from the CSR's own extension
//! requests: the subject is the CSR's own encoded Name, carried over whole (every attribute, in
//! order, with its string type: Kubernetes reads a user's groups from every O); SANs from the CSR;
//! KeyUsage/ExtendedKeyUsage from spec.usages; CA:false always; validity from
//! spec.expirationSeconds clamped by policy and by the CA. The signer re-checks each well-known
//! signer's rules, because a human may approve anything.
//!
//! Built with RustCrypto's `x509-cert`/`der` types (rcgen keeps one value per attribute type, so
//! it cannot carry `O=app1/O=app2`; `encoding` writes them) and signed with the CA's key on
//! aws-lc-rs.

use der::asn1::{BitStringRef, Ia5String, OctetString, UintRef};
use der::referenced::OwnedToRef;
use time::{Duration, OffsetDateTime};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::spki::ObjectIdentifier;
use x509_cert::time::{Time, Validity};

use super::encoding::ExtensionOf;
use super::encoding::{
    CertificateExtensions, Encoded, KnownLength, SignedCertificate, TbsCertificate, encode,
};

use super::validity;
use super::validity::SigningLimits;
use crate::policy::reason::Reason;
use crate::policy::signer_shape_problem;
use crate::x509::ca::{CertificateAuthority, SignError, key_identifier};
use crate::x509::inspect::{CertificateRequest, SubjectAttribute};

/// Certificates start this far in the past, so clocks that lag a little still accept them.
pub const BACKDATE: Duration = Duration::minutes(5);
/// Shortest certificate we issue (kube-controller-manager's floor).
pub const MIN_LIFETIME: Duration = Duration::minutes(10);

/// Why a certificate was not issued. Written as the CSR's Failed condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("{signer} does not issue this request: {problem}")]
    SignerRules { signer: String, problem: String },
    #[error("the CA expires at {ca_not_after}, too soon for a certificate of at least {} minutes; rotate the CA Secret", MIN_LIFETIME.whole_minutes())]
    CaExpiring { ca_not_after: OffsetDateTime },
    #[error("building the certificate failed: {0}")]
    Build(String),
    /// The CA's token failed under the signature: our side's fault, waited out.
    #[error("the CA's key cannot sign now: {0}")]
    CaUnavailable(String),
}

impl IssueError {
    /// The reason of the Failed condition and the Warning Event.
    pub fn reason(&self) -> Reason {
        match self {
            IssueError::SignerRules { .. } => Reason::SignerValidationFailure,
            IssueError::CaExpiring { .. } => Reason::CaExpiring,
            IssueError::Build(_) => Reason::SigningFailed,
            IssueError::CaUnavailable(_) => Reason::CaUnavailable,
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
    /// Upper-case hex, as `openssl x509 -noout -serial` prints it: the audit line's key.
    pub serial_hex: String,
    /// The certificate's DER (the PEM's content), for its fingerprint in the audit line.
    pub der: Vec<u8>,
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
    let (key_usages, extended_key_usages) = usages(approved.usages);
    let subject_der = encode_subject(&request.subject)?;
    sign_leaf(
        ca,
        Leaf {
            subject_der: &subject_der,
            subject_is_empty: request.subject.is_empty(),
            request,
            sans: sans(request)?,
            key_usages,
            extended_key_usages,
            not_before,
            not_after,
        },
        serial,
    )
}

/// The subject Name, encoded from the attributes the request was read as: one attribute per
/// RDN, in the request's order, each in the string type it came in. Never the request's own
/// bytes, so the certificate says exactly what was decided on.
fn encode_subject(subject: &[SubjectAttribute]) -> Result<Vec<u8>, IssueError> {
    use x509_cert::attr::AttributeTypeAndValue;
    use x509_cert::name::{RdnSequence, RelativeDistinguishedName};
    let rdns = subject
        .iter()
        .map(|attribute| {
            let value = der::asn1::Any::new(
                attribute.string_type.tag(),
                attribute.value.as_bytes().to_vec(),
            )?;
            let rdn = der::asn1::SetOfVec::try_from(vec![AttributeTypeAndValue {
                oid: attribute.oid,
                value,
            }])?;
            Ok(RelativeDistinguishedName(rdn))
        })
        .collect::<der::Result<Vec<_>>>()
        .map_err(build_error("the subject"))?;
    encode(&RdnSequence(rdns)).map_err(build_error("the subject"))
}

/// The empty Name: a pod certificate's only identity is its SPIFFE URI SAN.
const EMPTY_NAME_DER: &[u8] = &[0x30, 0x00];

/// Issue a pod certificate: no subject, the SPIFFE ID as its only (critical) SAN, for the
/// request's key, for client and server auth (digital signature; key encipherment too for
/// RSA keys, which TLS 1.2 RSA key exchange uses), with the times `times` gives.
pub fn issue_pod_certificate(
    ca: &CertificateAuthority,
    request: &CertificateRequest,
    spiffe_id: &str,
    times: super::validity::PodValidity,
    serial: [u8; 16],
) -> Result<IssuedCertificate, IssueError> {
    let uri = Ia5String::new(spiffe_id)
        .map_err(|_| IssueError::Build(format!("URI SAN {spiffe_id:?} is not IA5 text")))?;
    let mut usages = vec![
        "digital signature".to_owned(),
        "client auth".to_owned(),
        "server auth".to_owned(),
    ];
    if matches!(request.key, crate::x509::inspect::KeyAlgorithm::Rsa { .. }) {
        usages.push("key encipherment".to_owned());
    }
    let (key_usages, extended_key_usages) = self::usages(&usages);
    sign_leaf(
        ca,
        Leaf {
            subject_der: EMPTY_NAME_DER,
            subject_is_empty: true,
            request,
            sans: vec![GeneralName::UniformResourceIdentifier(uri)],
            key_usages,
            extended_key_usages,
            not_before: times.not_before,
            not_after: times.not_after,
        },
        serial,
    )
}

/// What goes into one leaf certificate besides what the CA gives.
struct Leaf<'a> {
    subject_der: &'a [u8],
    subject_is_empty: bool,
    /// The key to certify.
    request: &'a CertificateRequest,
    sans: Vec<GeneralName>,
    key_usages: der::flagset::FlagSet<KeyUsages>,
    extended_key_usages: Vec<ObjectIdentifier>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

fn sign_leaf(
    ca: &CertificateAuthority,
    leaf: Leaf<'_>,
    serial: [u8; 16],
) -> Result<IssuedCertificate, IssueError> {
    let Leaf {
        subject_der,
        subject_is_empty,
        request,
        sans: subject_alt_names,
        key_usages,
        extended_key_usages,
        not_before,
        not_after,
    } = leaf;
    let signature_algorithm = ca.signature_algorithm().owned_to_ref();
    let subject_key_identifier = key_identifier(&request.subject_public_key);
    let tbs_certificate = TbsCertificate {
        serial_number: UintRef::new(&serial).map_err(build_error("the serial"))?,
        signature: signature_algorithm,
        issuer: Encoded(ca.issuer_der()),
        validity: Validity {
            not_before: time_of(not_before)?,
            not_after: time_of(not_after)?,
        },
        subject: Encoded(subject_der),
        subject_public_key_info: Encoded(&request.public_key_der),
        // KeyUsage (critical) and ExtendedKeyUsage from the usages, BasicConstraints CA:FALSE
        // (critical), the SANs (critical when the subject is empty, RFC 5280 4.2.1.6), SKI, and
        // the CA's AKI.
        extensions: KnownLength::new(CertificateExtensions {
            key_usage: (!key_usages.is_empty())
                .then(|| ExtensionOf::new(true, KeyUsage(key_usages))),
            extended_key_usage: (!extended_key_usages.is_empty())
                .then(|| ExtensionOf::new(false, ExtendedKeyUsage(extended_key_usages))),
            basic_constraints: Encoded(ca.basic_constraints_extension()),
            subject_alt_name: (!subject_alt_names.is_empty())
                .then(|| ExtensionOf::new(subject_is_empty, SubjectAltName(subject_alt_names))),
            subject_key_identifier: ExtensionOf::new(
                false,
                SubjectKeyIdentifier(
                    OctetString::new(subject_key_identifier).map_err(build_error("the SKI"))?,
                ),
            ),
            authority_key_identifier: Encoded(ca.authority_key_extension()),
        })
        .map_err(build_error("the extensions"))?,
    };
    let to_be_signed = encode(&tbs_certificate).map_err(build_error("the certificate"))?;
    let signature = ca.sign(&to_be_signed).map_err(|e| match e {
        SignError::Unavailable(e) => IssueError::CaUnavailable(e.to_string()),
        SignError::Failed(e) => IssueError::Build(format!("signing failed: {e}")),
    })?;
    let certificate = SignedCertificate {
        tbs_certificate: Encoded(&to_be_signed),
        signature_algorithm,
        signature: BitStringRef::from_bytes(&signature).map_err(build_error("the signature"))?,
    };
    let der = encode(&certificate).map_err(build_error("the certificate"))?;
    let pem = pem_certificate(&der)?;
    Ok(IssuedCertificate {
        pem,
        not_before,
        not_after,
        serial_hex: hex(&serial),
        der,
    })
}

/// RFC 7468 PEM: base64 in 64-character lines between the CERTIFICATE labels, each line
/// encoded in place.
pub(crate) fn pem_certificate(der: &[u8]) -> Result<String, IssueError> {
    use base64::Engine;
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----\n";
    const END: &[u8] = b"-----END CERTIFICATE-----\n";
    // 48 bytes of DER make one line of 64 characters.
    let body = base64::encoded_len(der.len(), true)
        .ok_or_else(|| IssueError::Build("the certificate is too large for PEM".into()))?;
    let mut pem = vec![0; BEGIN.len() + body + der.len().div_ceil(48) + END.len()];
    pem[..BEGIN.len()].copy_from_slice(BEGIN);
    let mut at = BEGIN.len();
    for chunk in der.chunks(48) {
        at += base64::engine::general_purpose::STANDARD
            .encode_slice(chunk, &mut pem[at..])
            .map_err(build_error("the PEM"))?;
        pem[at] = b'\n';
        at += 1;
    }
    pem[at..].copy_from_slice(END);
    String::from_utf8(pem).map_err(build_error("the PEM"))
}

/// Lower-case hex (a `format!` per byte costs more than the rest of the certificate's DER).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

fn build_error<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> IssueError {
    move |error| IssueError::Build(format!("encoding {what}: {error}"))
}

/// UTCTime until 2049, GeneralizedTime after (RFC 5280 4.1.2.5).
fn time_of(at: OffsetDateTime) -> Result<Time, IssueError> {
    Time::try_from(std::time::SystemTime::from(at)).map_err(build_error("a validity time"))
}

/// The requested lifetime (or the policy default), at most the policy maximum and at least
/// [`MIN_LIFETIME`], as one [`validity::window`]: backdated by [`BACKDATE`] (at most 1% of the
/// lifetime), the whole window at
/// most that lifetime and never beyond the CA. A CA that leaves less than [`MIN_LIFETIME`] issues
/// nothing.
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
    // At most 1% of the lifetime (kube-controller-manager's 5 minutes are 1% of 8 hours): a
    // 10-minute certificate is not half spent when it arrives.
    let backdate = BACKDATE.min(lifetime / 100);
    let window = validity::window(lifetime, backdate, now, ca_not_after);
    if window.length() < MIN_LIFETIME {
        return Err(IssueError::CaExpiring { ca_not_after });
    }
    Ok((window.not_before, window.not_after))
}

/// The signer's own rules, written once in `policy::signer_shape_problem` and applied here
/// again because a human may have approved the request.
fn check_signer_rules(approved: &ApprovedRequest<'_>) -> Result<(), IssueError> {
    match signer_shape_problem(approved.signer_name, approved.usages, approved.request) {
        Some((_, problem)) => Err(IssueError::SignerRules {
            signer: approved.signer_name.to_owned(),
            problem,
        }),
        None => Ok(()),
    }
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
fn usages(usages: &[String]) -> (der::flagset::FlagSet<KeyUsages>, Vec<ObjectIdentifier>) {
    use der::oid::db::rfc5280 as oids;
    let mut key_usages = der::flagset::FlagSet::<KeyUsages>::default();
    let mut extended = Vec::new();
    for usage in usages {
        let key_usage = match usage.as_str() {
            "signing" | "digital signature" => Some(KeyUsages::DigitalSignature),
            "content commitment" => Some(KeyUsages::NonRepudiation),
            "key encipherment" => Some(KeyUsages::KeyEncipherment),
            "key agreement" => Some(KeyUsages::KeyAgreement),
            "data encipherment" => Some(KeyUsages::DataEncipherment),
            "encipher only" => Some(KeyUsages::EncipherOnly),
            "decipher only" => Some(KeyUsages::DecipherOnly),
            _ => None,
        };
        let purpose = match usage.as_str() {
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
        if let Some(key_usage) = key_usage {
            key_usages |= key_usage;
        }
        if let Some(purpose) = purpose
            && !extended.contains(&purpose)
        {
            extended.push(purpose);
        }
    }
    (key_usages, extended)
}
