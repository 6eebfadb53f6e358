//! PURE: a PEM "CERTIFICATE REQUEST" in, what it asks for out.
//!
//! Everything here is self-reported by the requester. The policy must never trust it on its own;
//! who asked comes from `spec.username`/`spec.groups`, which the API server sets.

use std::net::IpAddr;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
    OID_SIG_ED25519, OID_X509_COMMON_NAME, OID_X509_ORGANIZATION_NAME,
    OID_X509_ORGANIZATIONAL_UNIT,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// The largest PEM we look at. Real requests are a few KiB; anything far larger is an attack on
/// our memory, not a certificate request.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Longest subject attribute value accepted. X.520 bounds a CN at 64 characters; Kubernetes user
/// names (service accounts) run longer, so allow those, but not a 16 KiB subject.
pub const MAX_ATTRIBUTE_CHARS: usize = 1024;
/// RSA keys below this are refused (NIST SP 800-131A; also kube-controller-manager's floor).
pub const MIN_RSA_BITS: usize = 2048;
/// RSA keys above this are refused: signature verification cost grows fast and nothing needs them.
pub const MAX_RSA_BITS: usize = 8192;

/// Why a request could not be read. Each maps to a Deny with reason `InvalidRequest`, except
/// `WeakKey` and `UnsupportedKey`, which have their own reason codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    #[error("spec.request is {0} bytes; the limit is {MAX_REQUEST_BYTES}")]
    TooLarge(usize),
    #[error("spec.request is not PEM: {0}")]
    NotPem(String),
    #[error("spec.request must hold exactly one PEM block, found {0}")]
    BlockCount(usize),
    #[error("spec.request has text after the PEM block; send the CSR alone")]
    TrailingData,
    #[error("spec.request is a PEM {0:?} block; expected \"CERTIFICATE REQUEST\"")]
    WrongPemType(String),
    #[error("the CERTIFICATE REQUEST is not valid DER: {0}")]
    BadDer(String),
    #[error("the CSR's subject is malformed: {0}")]
    BadSubject(String),
    #[error(
        "the CSR's subject joins several attributes in one RDN ({0}); csr-warden does not issue multi-valued RDNs: give each attribute its own RDN, e.g. /CN=maria/O=developers/O=ops"
    )]
    MultiValuedRdn(String),
    #[error("the CSR's extensions are malformed or unsupported: {0}")]
    BadExtension(String),
    #[error(
        "the CSR's signature does not verify against its own public key (no proof of possession)"
    )]
    BadSignature,
    #[error(
        "the CSR is signed with SHA-1, which is no longer accepted; sign it with SHA-256 or better"
    )]
    Sha1Signature,
    #[error("RSA key of {bits} bits is too weak; use at least {MIN_RSA_BITS} bits")]
    WeakKey { bits: usize },
    #[error("unsupported key: {0}; use RSA 2048-8192, ECDSA P-256/P-384 or Ed25519")]
    UnsupportedKey(String),
}

/// The public key the requester wants certified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Rsa { bits: usize },
    EcdsaP256,
    EcdsaP384,
    Ed25519,
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyAlgorithm::Rsa { bits } => write!(f, "RSA-{bits}"),
            KeyAlgorithm::EcdsaP256 => f.write_str("ECDSA-P256"),
            KeyAlgorithm::EcdsaP384 => f.write_str("ECDSA-P384"),
            KeyAlgorithm::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

/// One attribute of the subject, in the order the CSR gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectAttribute {
    /// Dotted OID, e.g. "2.5.4.3" for CN.
    pub oid: Vec<u64>,
    pub value: String,
}

/// What a certificate request asks for, decoded and with its signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRequest {
    pub common_name: Option<String>,
    /// Subject O values: in Kubernetes these become the certificate holder's groups.
    pub organizations: Vec<String>,
    pub organizational_units: Vec<String>,
    /// The full subject in order, for the policy and for messages.
    pub subject: Vec<SubjectAttribute>,
    /// The subject Name exactly as the CSR encodes it: the issued certificate carries these bytes.
    pub subject_der: Vec<u8>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub email_addresses: Vec<String>,
    pub uris: Vec<String>,
    pub key: KeyAlgorithm,
    /// DER SubjectPublicKeyInfo, copied into the certificate as-is.
    pub public_key_der: Vec<u8>,
    /// The subjectPublicKey bits alone (what the certificate's SKI is derived from).
    pub subject_public_key: Vec<u8>,
}

impl CertificateRequest {
    /// True when the request carries any subject alternative name.
    pub fn has_sans(&self) -> bool {
        !(self.dns_names.is_empty()
            && self.ip_addresses.is_empty()
            && self.email_addresses.is_empty()
            && self.uris.is_empty())
    }

    /// "CN=jane,O=developers": for logs and messages.
    pub fn subject_string(&self) -> String {
        self.subject
            .iter()
            .map(|attr| format!("{}={}", short_attribute_name(&attr.oid), attr.value))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn short_attribute_name(oid: &[u64]) -> String {
    match oid {
        [2, 5, 4, 3] => "CN".into(),
        [2, 5, 4, 10] => "O".into(),
        [2, 5, 4, 11] => "OU".into(),
        [2, 5, 4, 6] => "C".into(),
        [2, 5, 4, 7] => "L".into(),
        [2, 5, 4, 8] => "ST".into(),
        other => other
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    }
}

/// Decode and verify `spec.request`.
pub fn inspect(pem_bytes: &[u8]) -> Result<CertificateRequest, InspectError> {
    if pem_bytes.len() > MAX_REQUEST_BYTES {
        return Err(InspectError::TooLarge(pem_bytes.len()));
    }
    let der = single_pem_block(pem_bytes)?;
    inspect_der(&der)
}

/// What a DER PKCS#10 request asks for (a PodCertificateRequest's `stubPKCS10Request`).
pub fn inspect_der(der: &[u8]) -> Result<CertificateRequest, InspectError> {
    if der.len() > MAX_REQUEST_BYTES {
        return Err(InspectError::TooLarge(der.len()));
    }
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| InspectError::BadDer(e.to_string()))?;
    if !rest.is_empty() {
        return Err(InspectError::BadDer(format!(
            "{} bytes after the request",
            rest.len()
        )));
    }

    let info = &csr.certification_request_info;
    // Key first: a weak key is its own, clearer reason, and the verifier refuses small RSA anyway.
    let key = key_algorithm(&info.subject_pki)?;
    check_signature(&csr, &key)?;

    let mut request = CertificateRequest {
        common_name: None,
        organizations: Vec::new(),
        organizational_units: Vec::new(),
        subject: Vec::new(),
        subject_der: info.subject.as_raw().to_vec(),
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
        email_addresses: Vec::new(),
        uris: Vec::new(),
        key,
        public_key_der: info.subject_pki.raw.to_vec(),
        subject_public_key: info.subject_pki.subject_public_key.data.to_vec(),
    };
    read_subject(&csr, &mut request)?;
    read_sans(&csr, &mut request)?;
    Ok(request)
}

fn single_pem_block(pem_bytes: &[u8]) -> Result<Vec<u8>, InspectError> {
    let text = std::str::from_utf8(pem_bytes)
        .map_err(|_| InspectError::NotPem("it is not UTF-8 text".into()))?;
    let blocks = text.matches("-----BEGIN ").count();
    if blocks == 0 {
        return Err(InspectError::NotPem("no \"-----BEGIN\" line".into()));
    }
    if blocks > 1 {
        return Err(InspectError::BlockCount(blocks));
    }
    let (rest, pem) = x509_parser::pem::parse_x509_pem(pem_bytes)
        .map_err(|e| InspectError::NotPem(e.to_string()))?;
    if !rest.iter().all(u8::is_ascii_whitespace) {
        return Err(InspectError::TrailingData);
    }
    if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
        return Err(InspectError::WrongPemType(pem.label));
    }
    Ok(pem.contents)
}

fn key_algorithm(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<KeyAlgorithm, InspectError> {
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let parsed = spki
            .parsed()
            .map_err(|e| InspectError::UnsupportedKey(format!("unreadable RSA key: {e}")))?;
        let PublicKey::RSA(rsa) = parsed else {
            return Err(InspectError::UnsupportedKey("unreadable RSA key".into()));
        };
        let bits = rsa.key_size();
        if bits < MIN_RSA_BITS {
            return Err(InspectError::WeakKey { bits });
        }
        if bits > MAX_RSA_BITS {
            return Err(InspectError::UnsupportedKey(format!(
                "RSA key of {bits} bits is larger than {MAX_RSA_BITS}"
            )));
        }
        return Ok(KeyAlgorithm::Rsa { bits });
    }
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| InspectError::UnsupportedKey("EC key without a named curve".into()))?;
        return if curve == OID_EC_P256 {
            Ok(KeyAlgorithm::EcdsaP256)
        } else if curve == OID_NIST_EC_P384 {
            Ok(KeyAlgorithm::EcdsaP384)
        } else {
            Err(InspectError::UnsupportedKey(format!("EC curve {curve}")))
        };
    }
    if *algorithm == OID_SIG_ED25519 {
        return Ok(KeyAlgorithm::Ed25519);
    }
    Err(InspectError::UnsupportedKey(format!(
        "key algorithm {algorithm}"
    )))
}

fn check_signature(
    csr: &X509CertificationRequest<'_>,
    key: &KeyAlgorithm,
) -> Result<(), InspectError> {
    let signature_algorithm = &csr.signature_algorithm.algorithm;
    if *signature_algorithm == OID_PKCS1_SHA1WITHRSA || *signature_algorithm == OID_SHA1_WITH_RSA {
        return Err(InspectError::Sha1Signature);
    }
    // A P-384 key signed with ecdsa-with-SHA256 (or P-256 with SHA384) verifies, but certificate
    // builders that infer the curve from the signature algorithm get it wrong (rcgen#448). Such
    // CSRs come from nowhere legitimate; refuse them outright.
    let curve_hash_mismatch = match key {
        KeyAlgorithm::EcdsaP256 => *signature_algorithm != OID_SIG_ECDSA_WITH_SHA256,
        KeyAlgorithm::EcdsaP384 => *signature_algorithm != OID_SIG_ECDSA_WITH_SHA384,
        _ => false,
    };
    if curve_hash_mismatch {
        return Err(InspectError::UnsupportedKey(format!(
            "{key} key signed with {signature_algorithm}; sign a P-256 key with ecdsa-with-SHA256 \
             and a P-384 key with ecdsa-with-SHA384"
        )));
    }
    csr.verify_signature()
        .map_err(|_| InspectError::BadSignature)
}

fn read_subject(
    csr: &X509CertificationRequest<'_>,
    request: &mut CertificateRequest,
) -> Result<(), InspectError> {
    for rdn in csr.certification_request_info.subject.iter_rdn() {
        let attributes: Vec<_> = rdn.iter().collect();
        // O=a+OU=b in one SET: denied rather than carried over. Nothing Kubernetes reads needs
        // it, and DER would reorder the SET's members.
        if attributes.len() != 1 {
            let joined = attributes
                .iter()
                .map(|a| a.attr_type().to_id_string())
                .collect::<Vec<_>>()
                .join("+");
            return Err(InspectError::MultiValuedRdn(joined));
        }
        let attribute = attributes[0];
        let oid = attribute.attr_type();
        let value = attribute
            .as_str()
            .map_err(|_| InspectError::BadSubject(format!("attribute {oid} is not a string")))?;
        if value.chars().count() > MAX_ATTRIBUTE_CHARS {
            return Err(InspectError::BadSubject(format!(
                "attribute {oid} is {} characters long; the limit is {MAX_ATTRIBUTE_CHARS}",
                value.chars().count()
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(InspectError::BadSubject(format!(
                "attribute {oid} contains control characters: {value:?}"
            )));
        }
        let arcs: Vec<u64> = oid.iter().map(|arcs| arcs.collect()).ok_or_else(|| {
            InspectError::BadSubject(format!("attribute type {oid} is too large"))
        })?;
        if *oid == OID_X509_COMMON_NAME {
            if request.common_name.is_some() {
                return Err(InspectError::BadSubject("more than one CN".into()));
            }
            request.common_name = Some(value.to_owned());
        } else if *oid == OID_X509_ORGANIZATION_NAME {
            request.organizations.push(value.to_owned());
        } else if *oid == OID_X509_ORGANIZATIONAL_UNIT {
            request.organizational_units.push(value.to_owned());
        }
        request.subject.push(SubjectAttribute {
            oid: arcs,
            value: value.to_owned(),
        });
    }
    Ok(())
}

fn read_sans(
    csr: &X509CertificationRequest<'_>,
    request: &mut CertificateRequest,
) -> Result<(), InspectError> {
    // Extensions other than SANs (KeyUsage, BasicConstraints CA:TRUE, ...) are read and ignored:
    // the issued certificate's extensions come from spec.usages and our own rules, never the CSR.
    let Some(extensions) = csr.requested_extensions() else {
        return Ok(());
    };
    for extension in extensions {
        match extension {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(dns) => request.dns_names.push((*dns).to_owned()),
                        GeneralName::RFC822Name(email) => {
                            request.email_addresses.push((*email).to_owned())
                        }
                        GeneralName::URI(uri) => request.uris.push((*uri).to_owned()),
                        GeneralName::IPAddress(bytes) => {
                            request.ip_addresses.push(ip_from_bytes(bytes)?)
                        }
                        other => {
                            return Err(InspectError::BadExtension(format!(
                                "unsupported subject alternative name {other:?}"
                            )));
                        }
                    }
                }
            }
            ParsedExtension::ParseError { error } => {
                return Err(InspectError::BadExtension(error.to_string()));
            }
            _ => {}
        }
    }
    Ok(())
}

fn ip_from_bytes(bytes: &[u8]) -> Result<IpAddr, InspectError> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::from(v4));
    }
    if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        return Ok(IpAddr::from(v6));
    }
    Err(InspectError::BadExtension(format!(
        "IP address SAN of {} bytes",
        bytes.len()
    )))
}
