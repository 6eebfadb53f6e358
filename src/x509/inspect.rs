//! PURE: a PEM "CERTIFICATE REQUEST" in, what it asks for out.
//!
//! Everything here is self-reported by the requester. The policy must never trust it on its own;
//! who asked comes from `spec.username`/`spec.groups`, which the API server sets.
//!
//! ## One strict reading
//! Everything that acts on a request after csr-warden (kube-apiserver's validation and its x509
//! authenticator, kube-controller-manager's signer, kubelets, every TLS client) is Go, reading
//! the same bytes with `encoding/asn1` and `crypto/x509`. A lenient reader that stops early, skips
//! an element or compares tags without their class reads one request where Go reads another, and
//! csr-warden would then decide on an identity the certificate does not carry. So the request is
//! read once, strictly, and only in the shapes where Go's reading is known to be the same:
//! - it must be DER as X.690 defines it: decoded by the `der`/`x509-cert` crates (definite
//!   minimal lengths, tag class and number, canonical INTEGERs and BOOLEANs) and re-encoded to
//!   exactly its own bytes, at every level csr-warden looks into (the request, each
//!   extensionRequest, each extension it reads, the key);
//! - subject values only as UTF8String, PrintableString or IA5String (character sets checked),
//!   one attribute per RDN, at most one CN and one UID (Go keeps the last CN, kube-apiserver
//!   refuses two UIDs);
//! - exactly one extensionRequest with one value (Go merges several and skips broken ones), each
//!   extension once, no unknown critical extension, SANs only as DNS, IP, e-mail or URI;
//! - keys and signature algorithms in their one canonical encoding.
//!
//! Anything else is an [`InspectError`]: a Deny, never an approval. The certificate is later
//! built from the values decoded here, re-encoded, never from slices of the request.

use std::net::IpAddr;

use der::asn1::{Any, BitString, ObjectIdentifier, OctetString, UintRef};
use der::{Decode, Encode, Tag, Tagged};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::request::CertReq;

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

/// The PEM label kube-apiserver requires (`pem.Decode`, then `Type == "CERTIFICATE REQUEST"`).
const PEM_LABEL: &str = "CERTIFICATE REQUEST";

/// Subject attribute types csr-warden names in messages, and the two Kubernetes reads besides O.
pub const OID_COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
pub const OID_ORGANIZATION: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.10");
pub const OID_ORGANIZATIONAL_UNIT: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");
/// The UID attribute kube-apiserver's x509 authenticator reads as the user's UID (feature
/// AllowParsingUserUIDFromCertAuth: alpha in 1.33, on by default since 1.34).
pub const OID_KUBERNETES_UID: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57683.2");
/// RFC 4519's `uid`: not what Kubernetes reads, but a UID to anyone else; decided on alike.
pub const OID_LDAP_UID: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.1");

/// The subject attribute types a request may carry: the ones Kubernetes reads (CN, O, the
/// UIDs) and the ordinary descriptive ones. Any other type is refused, so an attribute some
/// future Kubernetes reads as an identity is never passed through unread.
const KNOWN_SUBJECT_ATTRIBUTES: &[ObjectIdentifier] = &[
    OID_COMMON_NAME,
    OID_ORGANIZATION,
    OID_ORGANIZATIONAL_UNIT,
    OID_KUBERNETES_UID,
    OID_LDAP_UID,
    ObjectIdentifier::new_unwrap("2.5.4.4"),  // surname
    ObjectIdentifier::new_unwrap("2.5.4.5"),  // serialNumber
    ObjectIdentifier::new_unwrap("2.5.4.6"),  // countryName
    ObjectIdentifier::new_unwrap("2.5.4.7"),  // localityName
    ObjectIdentifier::new_unwrap("2.5.4.8"),  // stateOrProvinceName
    ObjectIdentifier::new_unwrap("2.5.4.9"),  // streetAddress
    ObjectIdentifier::new_unwrap("2.5.4.12"), // title
    ObjectIdentifier::new_unwrap("2.5.4.17"), // postalCode
    ObjectIdentifier::new_unwrap("2.5.4.42"), // givenName
    ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.25"), // domainComponent
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.1"), // emailAddress
];

const OID_EXTENSION_REQUEST: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");
const OID_SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
/// Extensions a request may carry and csr-warden reads past: the certificate's own come from
/// spec.usages and csr-warden's rules, never from the request (Go's signer does the same).
const IGNORED_EXTENSIONS: &[ObjectIdentifier] = &[
    ObjectIdentifier::new_unwrap("2.5.29.14"), // subjectKeyIdentifier
    ObjectIdentifier::new_unwrap("2.5.29.15"), // keyUsage
    ObjectIdentifier::new_unwrap("2.5.29.19"), // basicConstraints
    ObjectIdentifier::new_unwrap("2.5.29.37"), // extKeyUsage
];

const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

const OID_SHA1_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.5");
const OID_SHA1_WITH_RSA_OIW: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.29");
const OID_ECDSA_WITH_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.1");
const OID_SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const OID_SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const OID_SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const OID_ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");

/// Why a request could not be read. Each maps to a Deny with reason `InvalidRequest`, except
/// `WeakKey` and `UnsupportedKey` (their own reason codes) and `MultiValuedRdn`,
/// `UnsupportedString` and `UnknownAttribute` (`UnsupportedSubject`).
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
    #[error(
        "the CERTIFICATE REQUEST is not valid DER: {0}; csr-warden reads requests exactly as \
         DER defines them (as Go, which every Kubernetes component uses, reads them): make it \
         with openssl req, Go's x509.CreateCertificateRequest or another standard tool"
    )]
    BadDer(String),
    #[error("the CSR's subject is malformed: {0}")]
    BadSubject(String),
    #[error(
        "the CSR's subject joins several attributes in one RDN ({0}); csr-warden does not issue multi-valued RDNs: give each attribute its own RDN, e.g. /CN=maria/O=developers/O=ops"
    )]
    MultiValuedRdn(String),
    #[error(
        "the CSR's subject attribute {attribute} is a {found}; csr-warden reads subject values only as UTF8String, PrintableString or IA5String, the types every Kubernetes component reads alike (openssl req writes UTF8String by default)"
    )]
    UnsupportedString { attribute: String, found: String },
    #[error(
        "the CSR's subject has an attribute of type {0}, which csr-warden does not read; it carries only the types it decides on (CN, O, OU, UID, C, L, ST, street, postal code, title, serial number, given name, surname, DC, e-mail): leave it out"
    )]
    UnknownAttribute(String),
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

/// The ASN.1 string type a subject value came in: the certificate carries it in the same type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringType {
    Utf8,
    Printable,
    Ia5,
}

impl StringType {
    pub fn tag(self) -> Tag {
        match self {
            StringType::Utf8 => Tag::Utf8String,
            StringType::Printable => Tag::PrintableString,
            StringType::Ia5 => Tag::Ia5String,
        }
    }
}

/// One attribute of the subject, in the order the CSR gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectAttribute {
    /// The attribute type, e.g. 2.5.4.3 for CN (its `Display` is the dotted form).
    pub oid: ObjectIdentifier,
    pub value: String,
    pub string_type: StringType,
}

/// What a certificate request asks for, decoded and with its signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRequest {
    pub common_name: Option<String>,
    /// Subject O values: in Kubernetes these become the certificate holder's groups.
    pub organizations: Vec<String>,
    pub organizational_units: Vec<String>,
    /// The subject UID attribute: kube-apiserver's user UID for the certificate's holder.
    pub uid: Option<String>,
    /// The full subject in order: the policy's messages and the issued certificate's subject.
    pub subject: Vec<SubjectAttribute>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub email_addresses: Vec<String>,
    pub uris: Vec<String>,
    pub key: KeyAlgorithm,
    /// DER SubjectPublicKeyInfo, encoded from the decoded key: what the certificate carries.
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

fn short_attribute_name(oid: &ObjectIdentifier) -> String {
    let short = match oid.to_string().as_str() {
        "2.5.4.3" => "CN",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "1.3.6.1.4.1.57683.2" => "UID",
        "0.9.2342.19200300.100.1.1" => "uid",
        other => return other.to_owned(),
    };
    short.to_owned()
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
    // `from_der` refuses trailing bytes; the re-encoding catches everything DER forbids that a
    // decoder lets through (unsorted SETs, a DEFAULT value written out, ...).
    let csr = CertReq::from_der(der).map_err(der_error("the request"))?;
    same_encoding(&csr, der, "the request")?;
    every_oid_canonical(&csr)?;
    // The signed bytes: the CertificationRequestInfo as re-encoded, which is the request's own
    // first element now that the whole re-encodes to the request (taken from there, not encoded
    // a second time).
    let info_len = csr
        .info
        .encoded_len()
        .and_then(usize::try_from)
        .map_err(der_error("the request"))?;
    let header_len = match der.get(1) {
        Some(length) if length & 0x80 == 0 => 2,
        Some(length) => 2 + usize::from(length & 0x7f),
        None => return Err(InspectError::BadDer("the request is empty".into())),
    };
    let info = der
        .get(header_len..header_len + info_len)
        .ok_or_else(|| InspectError::BadDer("the request is shorter than its parts".into()))?;

    // Key first: a weak key is its own, clearer reason, and the verifier refuses small RSA anyway.
    let key = read_key(&csr.info.public_key)?;
    check_signature(&csr, info, &key)?;

    let mut request = CertificateRequest {
        common_name: None,
        organizations: Vec::new(),
        organizational_units: Vec::new(),
        uid: None,
        subject: Vec::new(),
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
        email_addresses: Vec::new(),
        uris: Vec::new(),
        key: key.algorithm,
        public_key_der: key.spki_der,
        subject_public_key: key.bits,
    };
    read_subject(&csr.info.subject, &mut request)?;
    read_extensions(&csr.info.attributes, &mut request)?;
    Ok(request)
}

fn der_error(what: &'static str) -> impl Fn(der::Error) -> InspectError {
    move |error| InspectError::BadDer(format!("{what}: {error}"))
}

/// `value`'s DER must be exactly `bytes`: a value a decoder accepted from something else (BER,
/// a SET out of order, a DEFAULT written out) is not DER.
fn same_encoding(value: &impl Encode, bytes: &[u8], what: &str) -> Result<(), InspectError> {
    let encoded = value
        .to_der()
        .map_err(|e| InspectError::BadDer(format!("{what}: {e}")))?;
    if encoded != bytes {
        return Err(InspectError::BadDer(format!(
            "{what} is not in its one DER encoding (DER re-encodes it to other bytes)"
        )));
    }
    Ok(())
}

/// An OBJECT IDENTIFIER keeps the bytes it was decoded from, so re-encoding cannot tell an arc
/// written with a leading 0x80 (which Go refuses as "not minimally encoded") from the real one.
/// Each arc's first byte must not be 0x80.
fn canonical_oid(oid: &ObjectIdentifier, what: &str) -> Result<(), InspectError> {
    let bytes = oid.as_bytes();
    let arc_starts = std::iter::once(0).chain(
        bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| *b & 0x80 == 0)
            .map(|(at, _)| at + 1),
    );
    for start in arc_starts {
        if bytes.get(start) == Some(&0x80) {
            return Err(InspectError::BadDer(format!(
                "{what}: OBJECT IDENTIFIER {oid} has an arc that is not minimally encoded"
            )));
        }
    }
    // Go reads each base-128 sub-identifier into 31 bits and refuses anything larger.
    let mut value: u64 = 0;
    for byte in bytes {
        value = (value << 7) | u64::from(byte & 0x7f);
        if value > i32::MAX as u64 {
            return Err(InspectError::BadDer(format!(
                "{what}: OBJECT IDENTIFIER {oid} has an arc above 2^31 - 1"
            )));
        }
        if byte & 0x80 == 0 {
            value = 0;
        }
    }
    Ok(())
}

/// Every OBJECT IDENTIFIER of the request csr-warden reads or carries, canonical.
fn every_oid_canonical(csr: &CertReq) -> Result<(), InspectError> {
    canonical_oid(&csr.algorithm.oid, "the signature algorithm")?;
    canonical_oid(&csr.info.public_key.algorithm.oid, "the key algorithm")?;
    for rdn in &csr.info.subject.0 {
        for attribute in rdn.0.iter() {
            canonical_oid(&attribute.oid, "the subject")?;
        }
    }
    for attribute in csr.info.attributes.iter() {
        canonical_oid(&attribute.oid, "an attribute")?;
    }
    Ok(())
}

/// Decode `bytes` as exactly one `T` in DER, nothing after it.
fn strict<'a, T: Decode<'a> + Encode>(bytes: &'a [u8], what: &str) -> Result<T, InspectError> {
    let value = T::from_der(bytes).map_err(|e| InspectError::BadDer(format!("{what}: {e}")))?;
    same_encoding(&value, bytes, what)?;
    Ok(value)
}

/// The one PEM block, read as strictly as its DER: the BEGIN line, base64 lines, the END line,
/// nothing but whitespace around them. Go's `pem.Decode` skips text before a block, headers and
/// stray spaces; a request that needs any of that is refused rather than read two ways.
fn single_pem_block(pem_bytes: &[u8]) -> Result<Vec<u8>, InspectError> {
    use base64::Engine;
    let text = std::str::from_utf8(pem_bytes)
        .map_err(|_| InspectError::NotPem("it is not UTF-8 text".into()))?;
    let blocks = text.matches("-----BEGIN ").count();
    if blocks == 0 {
        return Err(InspectError::NotPem("no \"-----BEGIN\" line".into()));
    }
    if blocks > 1 {
        return Err(InspectError::BlockCount(blocks));
    }
    let mut lines = text.trim_start().lines().map(|l| l.trim_end_matches('\r'));
    let label = lines
        .next()
        .and_then(|l| l.strip_prefix("-----BEGIN "))
        .and_then(|l| l.strip_suffix("-----"))
        .ok_or_else(|| InspectError::NotPem("text before the \"-----BEGIN\" line".into()))?;
    if label != PEM_LABEL {
        return Err(InspectError::WrongPemType(label.to_owned()));
    }
    let end = format!("-----END {PEM_LABEL}-----");
    let mut body = String::new();
    let mut ended = false;
    for line in lines.by_ref() {
        if line == end {
            ended = true;
            break;
        }
        if !line
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        {
            return Err(InspectError::NotPem(
                "a line inside the block is not base64 (PEM headers are not accepted)".into(),
            ));
        }
        body.push_str(line);
    }
    if !ended {
        return Err(InspectError::NotPem(format!("no {end:?} line")));
    }
    if !lines.all(|l| l.trim().is_empty()) {
        return Err(InspectError::TrailingData);
    }
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| InspectError::NotPem(format!("the base64 inside the block: {e}")))
}

/// A public key as decoded: what it is, its bits, and its SubjectPublicKeyInfo re-encoded.
struct DecodedKey {
    algorithm: KeyAlgorithm,
    bits: Vec<u8>,
    spki_der: Vec<u8>,
}

/// RFC 8017's RSAPublicKey.
#[derive(der::Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

fn read_key(spki: &x509_cert::spki::SubjectPublicKeyInfoOwned) -> Result<DecodedKey, InspectError> {
    let algorithm = &spki.algorithm.oid;
    let parameters = spki.algorithm.parameters.as_ref();
    let bits = whole_bytes(&spki.subject_public_key, "the public key")?;
    let key = if *algorithm == OID_RSA_ENCRYPTION {
        // RFC 3279: NULL parameters, and Go refuses the key without them.
        if !parameters.is_some_and(Any::is_null) {
            return Err(InspectError::UnsupportedKey(
                "RSA key without its NULL parameters".into(),
            ));
        }
        let rsa: RsaPublicKey<'_> = strict(bits, "the RSA public key")
            .map_err(|e| InspectError::UnsupportedKey(format!("unreadable RSA key: {e}")))?;
        let modulus = rsa.modulus.as_bytes();
        let size = modulus.len() * 8
            - modulus
                .first()
                .map_or(0, |top| top.leading_zeros() as usize);
        if size < MIN_RSA_BITS {
            return Err(InspectError::WeakKey { bits: size });
        }
        if size > MAX_RSA_BITS {
            return Err(InspectError::UnsupportedKey(format!(
                "RSA key of {size} bits is larger than {MAX_RSA_BITS}"
            )));
        }
        let exponent = rsa.public_exponent.as_bytes();
        // Odd, at least 3, below 2^31: what Go and aws-lc both verify with.
        let exponent_ok = exponent.len() <= 4
            && exponent.last().is_some_and(|low| low & 1 == 1)
            && exponent
                .iter()
                .fold(0u64, |e, b| (e << 8) | u64::from(*b))
                .checked_sub(3)
                .is_some_and(|e| e < (1 << 31) - 3);
        if !exponent_ok {
            return Err(InspectError::UnsupportedKey(
                "RSA public exponent must be odd, at least 3 and below 2^31".into(),
            ));
        }
        KeyAlgorithm::Rsa { bits: size }
    } else if *algorithm == OID_EC_PUBLIC_KEY {
        let curve = parameters
            .filter(|p| p.tag() == Tag::ObjectIdentifier)
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
            .ok_or_else(|| InspectError::UnsupportedKey("EC key without a named curve".into()))?;
        canonical_oid(&curve, "the EC curve")?;
        let (algorithm, point_len) = if curve == OID_P256 {
            (KeyAlgorithm::EcdsaP256, 65)
        } else if curve == OID_P384 {
            (KeyAlgorithm::EcdsaP384, 97)
        } else {
            return Err(InspectError::UnsupportedKey(format!("EC curve {curve}")));
        };
        // Uncompressed points only: Go parses nothing else.
        if bits.len() != point_len || bits.first() != Some(&4) {
            return Err(InspectError::UnsupportedKey(format!(
                "{algorithm} key is not an uncompressed point of {point_len} bytes"
            )));
        }
        algorithm
    } else if *algorithm == OID_ED25519 {
        if parameters.is_some() {
            return Err(InspectError::UnsupportedKey(
                "Ed25519 key with parameters".into(),
            ));
        }
        if bits.len() != 32 {
            return Err(InspectError::UnsupportedKey(format!(
                "Ed25519 key of {} bytes",
                bits.len()
            )));
        }
        KeyAlgorithm::Ed25519
    } else {
        return Err(InspectError::UnsupportedKey(format!(
            "key algorithm {algorithm}"
        )));
    };
    let spki_der = encode_public_key(&key, bits)
        .map_err(|e| InspectError::BadDer(format!("re-encoding the public key: {e}")))?;
    Ok(DecodedKey {
        algorithm: key,
        bits: bits.to_vec(),
        spki_der,
    })
}

/// The SubjectPublicKeyInfo of a decoded key, in its one canonical encoding.
pub fn encode_public_key(key: &KeyAlgorithm, bits: &[u8]) -> der::Result<Vec<u8>> {
    let (oid, parameters) = match key {
        KeyAlgorithm::Rsa { .. } => (OID_RSA_ENCRYPTION, Some(Any::null())),
        KeyAlgorithm::EcdsaP256 => (OID_EC_PUBLIC_KEY, Some(Any::encode_from(&OID_P256)?)),
        KeyAlgorithm::EcdsaP384 => (OID_EC_PUBLIC_KEY, Some(Any::encode_from(&OID_P384)?)),
        KeyAlgorithm::Ed25519 => (OID_ED25519, None),
    };
    x509_cert::spki::SubjectPublicKeyInfoOwned {
        algorithm: x509_cert::spki::AlgorithmIdentifierOwned { oid, parameters },
        subject_public_key: BitString::from_bytes(bits)?,
    }
    .to_der()
}

/// A BIT STRING's bytes, which must be whole: keys and signatures are octet strings.
fn whole_bytes<'a>(bits: &'a BitString, what: &str) -> Result<&'a [u8], InspectError> {
    bits.as_bytes()
        .ok_or_else(|| InspectError::BadDer(format!("{what} is not a whole number of bytes")))
}

fn check_signature(csr: &CertReq, info: &[u8], key: &DecodedKey) -> Result<(), InspectError> {
    use aws_lc_rs::signature;
    let algorithm = &csr.algorithm.oid;
    let parameters = csr.algorithm.parameters.as_ref();
    if [
        OID_SHA1_WITH_RSA,
        OID_SHA1_WITH_RSA_OIW,
        OID_ECDSA_WITH_SHA1,
    ]
    .contains(algorithm)
    {
        return Err(InspectError::Sha1Signature);
    }
    type Verifier = &'static dyn signature::VerificationAlgorithm;
    let rsa = |verifier: Verifier| {
        // RFC 4055: NULL parameters for the PKCS #1 v1.5 signatures.
        if parameters.is_some_and(Any::is_null) {
            Ok(verifier)
        } else {
            Err(InspectError::BadDer(format!(
                "signature algorithm {algorithm} without its NULL parameters"
            )))
        }
    };
    let absent = |verifier: Verifier| match parameters {
        None => Ok(verifier),
        Some(_) => Err(InspectError::BadDer(format!(
            "signature algorithm {algorithm} with parameters"
        ))),
    };
    let key_algorithm = &key.algorithm;
    // A P-384 key signed with ecdsa-with-SHA256 (or P-256 with SHA384) verifies, but certificate
    // builders that infer the curve from the signature algorithm get it wrong (rcgen#448). Such
    // CSRs come from nowhere legitimate; refuse them outright.
    let verifier: Verifier = match key_algorithm {
        KeyAlgorithm::Rsa { .. } if *algorithm == OID_SHA256_WITH_RSA => {
            rsa(&signature::RSA_PKCS1_2048_8192_SHA256)?
        }
        KeyAlgorithm::Rsa { .. } if *algorithm == OID_SHA384_WITH_RSA => {
            rsa(&signature::RSA_PKCS1_2048_8192_SHA384)?
        }
        KeyAlgorithm::Rsa { .. } if *algorithm == OID_SHA512_WITH_RSA => {
            rsa(&signature::RSA_PKCS1_2048_8192_SHA512)?
        }
        KeyAlgorithm::EcdsaP256 if *algorithm == OID_ECDSA_WITH_SHA256 => {
            absent(&signature::ECDSA_P256_SHA256_ASN1)?
        }
        KeyAlgorithm::EcdsaP384 if *algorithm == OID_ECDSA_WITH_SHA384 => {
            absent(&signature::ECDSA_P384_SHA384_ASN1)?
        }
        KeyAlgorithm::Ed25519 if *algorithm == OID_ED25519 => absent(&signature::ED25519)?,
        KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
            return Err(InspectError::UnsupportedKey(format!(
                "{key_algorithm} key signed with {algorithm}; sign a P-256 key with \
                 ecdsa-with-SHA256 and a P-384 key with ecdsa-with-SHA384"
            )));
        }
        _ => {
            return Err(InspectError::UnsupportedKey(format!(
                "{key_algorithm} key signed with {algorithm}; use sha256/384/512WithRSAEncryption \
                 for RSA, ECDSA with the curve's hash, or Ed25519"
            )));
        }
    };
    let signature = whole_bytes(&csr.signature, "the signature")?;
    signature::UnparsedPublicKey::new(verifier, &key.bits)
        .verify(info, signature)
        .map_err(|_| InspectError::BadSignature)
}

fn read_subject(
    subject: &x509_cert::name::Name,
    request: &mut CertificateRequest,
) -> Result<(), InspectError> {
    for rdn in &subject.0 {
        let attributes = rdn.0.as_slice();
        // O=a+OU=b in one SET (or an empty SET): denied rather than carried over. Nothing
        // Kubernetes reads needs it, and Go flattens what a certificate keeps apart.
        let [attribute] = attributes else {
            let joined = attributes
                .iter()
                .map(|a| a.oid.to_string())
                .collect::<Vec<_>>()
                .join("+");
            return Err(if attributes.is_empty() {
                InspectError::BadSubject("an RDN with no attribute".into())
            } else {
                InspectError::MultiValuedRdn(joined)
            });
        };
        let oid = attribute.oid;
        if !KNOWN_SUBJECT_ATTRIBUTES.contains(&oid) {
            return Err(InspectError::UnknownAttribute(oid.to_string()));
        }
        let (value, string_type) = subject_string(&oid, &attribute.value)?;
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
        if oid == OID_COMMON_NAME {
            // Go keeps the last CN; a reader that kept the first would decide on another user.
            if request.common_name.is_some() {
                return Err(InspectError::BadSubject("more than one CN".into()));
            }
            request.common_name = Some(value.clone());
        } else if oid == OID_ORGANIZATION {
            request.organizations.push(value.clone());
        } else if oid == OID_ORGANIZATIONAL_UNIT {
            request.organizational_units.push(value.clone());
        } else if oid == OID_KUBERNETES_UID || oid == OID_LDAP_UID {
            // kube-apiserver refuses a certificate with two UIDs or an empty one; Kubernetes'
            // and RFC 4519's together are two.
            if request.uid.is_some() {
                return Err(InspectError::BadSubject("more than one UID".into()));
            }
            if value.is_empty() {
                return Err(InspectError::BadSubject("an empty UID".into()));
            }
            request.uid = Some(value.clone());
        }
        request.subject.push(SubjectAttribute {
            oid,
            value,
            string_type,
        });
    }
    Ok(())
}

/// A subject value in one of the three string types Go reads the same way in a request and in a
/// certificate, with its character set checked as Go checks it (or more strictly).
fn subject_string(
    oid: &ObjectIdentifier,
    value: &Any,
) -> Result<(String, StringType), InspectError> {
    let bytes = value.value();
    let bad = |why: &str| InspectError::BadSubject(format!("attribute {oid}: {why}"));
    let string_type = match value.tag() {
        Tag::Utf8String => StringType::Utf8,
        Tag::PrintableString => {
            // X.680's PrintableString; Go also lets '*' and '&' through, csr-warden does not.
            let printable = |b: &u8| b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(b);
            if !bytes.iter().all(printable) {
                return Err(bad("a PrintableString with characters outside its set"));
            }
            StringType::Printable
        }
        Tag::Ia5String => {
            if !bytes.is_ascii() {
                return Err(bad("an IA5String with non-ASCII bytes"));
            }
            StringType::Ia5
        }
        other => {
            return Err(InspectError::UnsupportedString {
                attribute: short_attribute_name(oid),
                found: tag_name(other),
            });
        }
    };
    let text = std::str::from_utf8(bytes).map_err(|_| bad("a UTF8String that is not UTF-8"))?;
    Ok((text.to_owned(), string_type))
}

fn tag_name(tag: Tag) -> String {
    match tag {
        Tag::TeletexString => "T61String".into(),
        Tag::BmpString => "BMPString".into(),
        Tag::VisibleString => "VisibleString".into(),
        Tag::OctetString => "OCTET STRING".into(),
        Tag::Integer => "INTEGER".into(),
        Tag::Sequence => "SEQUENCE".into(),
        Tag::Set => "SET".into(),
        other => format!("value tagged {other}"),
    }
}

/// The request's attributes: exactly one extensionRequest with one value (Go merges several and
/// skips the ones it cannot read), each extension at most once, SANs read strictly.
fn read_extensions(
    attributes: &x509_cert::attr::Attributes,
    request: &mut CertificateRequest,
) -> Result<(), InspectError> {
    let mut extension_requests = attributes
        .iter()
        .filter(|attribute| attribute.oid == OID_EXTENSION_REQUEST);
    let Some(extension_request) = extension_requests.next() else {
        return Ok(());
    };
    if extension_requests.next().is_some() {
        return Err(InspectError::BadExtension(
            "more than one extensionRequest attribute".into(),
        ));
    }
    let [value] = extension_request.values.as_slice() else {
        return Err(InspectError::BadExtension(format!(
            "the extensionRequest attribute holds {} values; it must hold exactly one",
            extension_request.values.len()
        )));
    };
    let encoded = value
        .to_der()
        .map_err(|e| InspectError::BadDer(format!("the extensionRequest: {e}")))?;
    let extensions: Vec<x509_cert::ext::Extension> =
        strict(&encoded, "the extensionRequest").map_err(extension_error)?;
    let mut seen = Vec::with_capacity(extensions.len());
    for extension in &extensions {
        let oid = extension.extn_id;
        canonical_oid(&oid, "an extension")?;
        if seen.contains(&oid) {
            return Err(InspectError::BadExtension(format!(
                "extension {oid} is requested twice"
            )));
        }
        seen.push(oid);
        if oid == OID_SUBJECT_ALT_NAME {
            read_sans(extension.extn_value.as_bytes(), request)?;
        } else if extension.critical && !IGNORED_EXTENSIONS.contains(&oid) {
            return Err(InspectError::BadExtension(format!(
                "extension {oid} is marked critical and csr-warden does not know it"
            )));
        }
    }
    Ok(())
}

fn extension_error(error: InspectError) -> InspectError {
    match error {
        InspectError::BadDer(message) => InspectError::BadExtension(message),
        other => other,
    }
}

fn read_sans(value: &[u8], request: &mut CertificateRequest) -> Result<(), InspectError> {
    let san: SubjectAltName =
        strict(value, "the subjectAltName extension").map_err(extension_error)?;
    for name in &san.0 {
        match name {
            GeneralName::DnsName(dns) => request.dns_names.push(dns.to_string()),
            GeneralName::Rfc822Name(email) => request.email_addresses.push(email.to_string()),
            GeneralName::UniformResourceIdentifier(uri) => {
                let uri = uri.to_string();
                check_uri(&uri)?;
                request.uris.push(uri);
            }
            GeneralName::IpAddress(bytes) => request.ip_addresses.push(ip_from_bytes(bytes)?),
            other => {
                return Err(InspectError::BadExtension(format!(
                    "unsupported subject alternative name {}",
                    general_name_kind(other)
                )));
            }
        }
    }
    Ok(())
}

fn general_name_kind(name: &GeneralName) -> &'static str {
    match name {
        GeneralName::OtherName(_) => "otherName",
        GeneralName::DirectoryName(_) => "directoryName",
        GeneralName::EdiPartyName(_) => "ediPartyName",
        GeneralName::RegisteredId(_) => "registeredID",
        GeneralName::DnsName(_) => "dNSName",
        GeneralName::Rfc822Name(_) => "rfc822Name",
        GeneralName::UniformResourceIdentifier(_) => "uniformResourceIdentifier",
        GeneralName::IpAddress(_) => "iPAddress",
    }
}

/// A URI SAN that Go parses (`url.Parse`, then x509's host check) and re-renders as the same
/// text (kube-controller-manager issues `url.String()` of what Go parsed): a lower-case scheme;
/// after `//`, a host of DNS labels and an optional numeric port, no user info and no IP
/// literal; then RFC 3986 path, query and fragment characters, `%` only before two hex digits.
fn check_uri(uri: &str) -> Result<(), InspectError> {
    let bad = |why: &str| InspectError::BadExtension(format!("URI SAN {uri:?}: {why}"));
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err(bad("no scheme"));
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if !scheme_ok {
        return Err(bad(
            "the scheme must be lower-case letters, digits, '+', '-' or '.'",
        ));
    }
    let rest = match rest.strip_prefix("//") {
        None => rest,
        Some(after) => {
            let end = after.find(['/', '?', '#']).unwrap_or(after.len());
            let (authority, path) = after.split_at(end);
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            let label_ok = |label: &str| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            };
            if host.is_empty() || !host.split('.').all(label_ok) {
                return Err(bad(
                    "the host must be DNS labels (letters, digits, '-'), with no user info or IP literal",
                ));
            }
            if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
                return Err(bad("the port must be digits"));
            }
            path
        }
    };
    let bytes = rest.as_bytes();
    if rest.matches('#').count() > 1 {
        return Err(bad("more than one '#'"));
    }
    if rest.ends_with('#') {
        return Err(bad(
            "an empty fragment (Go re-renders the URI without its '#')",
        ));
    }
    for (at, byte) in bytes.iter().enumerate() {
        let allowed = byte.is_ascii_alphanumeric() || b"-._~:/?#@!$&'()*+,;=%".contains(byte);
        if !allowed {
            return Err(bad("a character outside RFC 3986"));
        }
        if *byte == b'%'
            && !bytes
                .get(at + 1..at + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
        {
            return Err(bad("a '%' not followed by two hex digits"));
        }
    }
    Ok(())
}

fn ip_from_bytes(bytes: &OctetString) -> Result<IpAddr, InspectError> {
    let bytes = bytes.as_bytes();
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::from(v4));
    }
    if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        // Go reads ::ffff:a.b.c.d as the IPv4 address a.b.c.d (and so does a TLS client): read
        // it so too, and the certificate carries it as the 4 bytes of that address.
        return Ok(IpAddr::from(v6).to_canonical());
    }
    Err(InspectError::BadExtension(format!(
        "IP address SAN of {} bytes",
        bytes.len()
    )))
}
