//! Loading and holding the signing CA (the tls.crt/tls.key of a mounted kubernetes.io/tls Secret).

use std::path::{Path, PathBuf};

use der::Encode;
use der::asn1::{ObjectIdentifier, OctetString};
use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm, SigningKey as _};
use time::OffsetDateTime;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, BasicConstraints};
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::encoding::ExtensionOf;
use super::pkcs11::{TokenError, TokenKey, TokenKeyConfig, TokenKeyKind};

/// A CA's mounted files (tls.crt, tls.key of a kubernetes.io/tls Secret), or its certificate
/// and a key kept in a PKCS#11 token.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CaPaths {
    pub cert: PathBuf,
    /// Empty (and unused) when the key is in a token.
    pub key: PathBuf,
    /// The key is in a PKCS#11 token, not in `key`.
    pub pkcs11: Option<TokenKeyConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(
        "cannot read CA {what} {path}: {source}; check --ca-cert/--ca-key and that the Secret is mounted"
    )]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA certificate {path} is not a PEM certificate: {message}")]
    BadCertificate { path: PathBuf, message: String },
    #[error(
        "CA certificate {path} is not a CA (BasicConstraints CA:TRUE missing); mount the cluster CA, not a leaf"
    )]
    NotCa { path: PathBuf },
    #[error(
        "CA private key {path} cannot be loaded: {message}; PKCS#1 (RSA PRIVATE KEY), SEC1 (EC PRIVATE KEY) and PKCS#8 (PRIVATE KEY) PEM are accepted"
    )]
    BadKey { path: PathBuf, message: String },
    #[error(
        "CA private key {key} does not belong to the certificate {cert}; mount the matching tls.crt and tls.key"
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "CA private key {path} is of a kind csr-warden cannot sign with; use RSA, ECDSA P-256/P-384/P-521 or Ed25519"
    )]
    UnsupportedKey { path: PathBuf },
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error(
        "the CA certificate {cert}'s key is of a kind csr-warden cannot sign with through PKCS#11; use ECDSA P-256/P-384, RSA or Ed25519"
    )]
    UnsupportedTokenKey { cert: PathBuf },
    #[error(
        "the token key {uri} does not belong to the CA certificate {cert} (a test signature does not verify with its public key); point the URI at the key of that certificate, or mount the certificate made for the token's key"
    )]
    TokenKeyMismatch { cert: PathBuf, uri: String },
}

/// The CA's private key: a file loaded into memory, or a key that stays in a PKCS#11 token.
pub enum SigningKey {
    File(KeyPair),
    Token(TokenKey),
}

/// Why a signature was not made.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The token is not usable now: csr-warden's fault, waited out (`CAUnavailable`).
    #[error("{0}")]
    Unavailable(TokenError),
    #[error("{0}")]
    Failed(String),
}

/// The CA that signs approved requests. The private key never reaches logs: Debug redacts it.
/// What every certificate it issues repeats (issuer name, AKI, signature algorithm) is worked out
/// once, when it is loaded.
pub struct CertificateAuthority {
    key: SigningKey,
    /// The CA certificate's subject, exactly as encoded: every certificate's issuer.
    issuer_der: Vec<u8>,
    /// AuthorityKeyIdentifier naming the CA's key identifier (its SKI, else derived from its
    /// key), and BasicConstraints CA:FALSE: the same in every certificate, so encoded once.
    authority_key_extension: Vec<u8>,
    basic_constraints_extension: Vec<u8>,
    signature_algorithm: AlgorithmIdentifierOwned,
    subject: String,
    /// Its key identifier (its SKI, else derived from its key): every certificate's AKI.
    key_id: Vec<u8>,
    not_after: OffsetDateTime,
    /// Every certificate of tls.crt, DER, the CA first: the chain it may be given with, which
    /// the cluster-CA guard follows.
    chain_der: Vec<Vec<u8>>,
    /// DER SubjectPublicKeyInfo: what makes two CA certificates the same signer.
    public_key: Vec<u8>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CertificateAuthority {
    /// Load from the files of a mounted Secret.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        let cert_pem = std::fs::read_to_string(cert_path).map_err(|source| CaError::Read {
            what: "certificate",
            path: cert_path.to_owned(),
            source,
        })?;
        let key_pem = std::fs::read_to_string(key_path).map_err(|source| CaError::Read {
            what: "private key",
            path: key_path.to_owned(),
            source,
        })?;
        Self::from_pem(&cert_pem, &key_pem, cert_path, key_path)
    }

    /// Load the certificate from its file and use the key in a PKCS#11 token. The token must
    /// sign something the certificate's public key verifies: a key that is not the
    /// certificate's is refused here, not found out by relying parties.
    pub fn load_with_token(cert_path: &Path, token: &TokenKeyConfig) -> Result<Self, CaError> {
        let cert_pem = std::fs::read_to_string(cert_path).map_err(|source| CaError::Read {
            what: "certificate",
            path: cert_path.to_owned(),
            source,
        })?;
        Self::from_certificate(&cert_pem, cert_path, |cert| {
            let spki = &cert.tbs_certificate.subject_pki;
            let unsupported = || CaError::UnsupportedTokenKey {
                cert: cert_path.to_owned(),
            };
            let (kind, algorithm, verifier): (
                _,
                _,
                &dyn aws_lc_rs::signature::VerificationAlgorithm,
            ) = match token_key_kind(spki).ok_or_else(unsupported)? {
                TokenKeyKind::EcdsaP256 => (
                    TokenKeyKind::EcdsaP256,
                    "1.2.840.10045.4.3.2",
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
                ),
                TokenKeyKind::EcdsaP384 => (
                    TokenKeyKind::EcdsaP384,
                    "1.2.840.10045.4.3.3",
                    &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1,
                ),
                TokenKeyKind::Rsa => (
                    TokenKeyKind::Rsa,
                    "1.2.840.113549.1.1.11",
                    &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                ),
                TokenKeyKind::Ed25519 => (
                    TokenKeyKind::Ed25519,
                    "1.3.101.112",
                    &aws_lc_rs::signature::ED25519,
                ),
            };
            let key = TokenKey::open(token, kind)?;
            let probe = b"csr-warden: does this token key belong to the CA certificate?";
            let signature = key.sign(probe)?;
            aws_lc_rs::signature::UnparsedPublicKey::new(verifier, &spki.subject_public_key.data)
                .verify(probe, &signature)
                .map_err(|_| CaError::TokenKeyMismatch {
                    cert: cert_path.to_owned(),
                    uri: token.uri.clone(),
                })?;
            let algorithm = AlgorithmIdentifierOwned {
                oid: ObjectIdentifier::new(algorithm).map_err(|_| unsupported())?,
                // RSA PKCS#1 v1.5 identifiers carry NULL parameters (RFC 4055).
                parameters: (kind == TokenKeyKind::Rsa).then(|| der::asn1::Null.into()),
            };
            Ok((SigningKey::Token(key), algorithm))
        })
    }

    /// Build from PEM text; the paths only name the files in errors.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, CaError> {
        Self::from_certificate(cert_pem, cert_path, |cert| {
            let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::BadKey {
                path: key_path.to_owned(),
                message: e.to_string(),
            })?;
            if key.subject_public_key_info() != cert.tbs_certificate.subject_pki.raw {
                return Err(CaError::KeyMismatch {
                    cert: cert_path.to_owned(),
                    key: key_path.to_owned(),
                });
            }
            let signature_algorithm =
                signature_algorithm(key.algorithm()).ok_or_else(|| CaError::UnsupportedKey {
                    path: key_path.to_owned(),
                })?;
            Ok((SigningKey::File(key), signature_algorithm))
        })
    }

    /// The CA from its certificate's PEM and the key `key_for` finds for it (and the
    /// signature algorithm that key signs with).
    fn from_certificate(
        cert_pem: &str,
        cert_path: &Path,
        key_for: impl FnOnce(
            &X509Certificate<'_>,
        ) -> Result<(SigningKey, AlgorithmIdentifierOwned), CaError>,
    ) -> Result<Self, CaError> {
        let bad_cert = |message: String| CaError::BadCertificate {
            path: cert_path.to_owned(),
            message,
        };
        // The first block is the CA; a bundle may follow (kubeadm's ca.crt holds one).
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| bad_cert(e.to_string()))?;
        if pem.label != "CERTIFICATE" {
            return Err(bad_cert(format!("found a {:?} block", pem.label)));
        }
        let (_, cert) =
            X509Certificate::from_der(&pem.contents).map_err(|e| bad_cert(e.to_string()))?;
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(CaError::NotCa {
                path: cert_path.to_owned(),
            });
        }
        let (key, signature_algorithm) = key_for(&cert)?;
        let not_after = cert.validity().not_after.to_datetime();
        let subject = cert.subject().to_string();
        let public_key = cert.tbs_certificate.subject_pki.raw.to_vec();
        let issuer_der = cert.subject().as_raw().to_vec();
        let key_identifier = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(ski) => Some(ski.0.to_vec()),
                _ => None,
            })
            .unwrap_or_else(|| {
                key_identifier(&cert.tbs_certificate.subject_pki.subject_public_key.data)
            });
        let unencodable =
            |e: der::Error| bad_cert(format!("cannot encode its key identifier: {e}"));
        let authority_key_extension = ExtensionOf::new(
            false,
            AuthorityKeyIdentifier {
                key_identifier: Some(
                    OctetString::new(key_identifier.clone()).map_err(unencodable)?,
                ),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
        )
        .to_der()
        .map_err(unencodable)?;
        let basic_constraints_extension = ExtensionOf::new(
            true,
            BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
        )
        .to_der()
        .map_err(unencodable)?;
        Ok(CertificateAuthority {
            key,
            issuer_der,
            authority_key_extension,
            basic_constraints_extension,
            signature_algorithm,
            subject,
            key_id: key_identifier,
            not_after,
            chain_der: x509_parser::pem::Pem::iter_from_buffer(cert_pem.as_bytes())
                .flatten()
                .filter(|pem| pem.label == "CERTIFICATE")
                .map(|pem| pem.contents)
                .collect(),
            public_key,
        })
    }

    /// The signing key: a file's (aws-lc-rs underneath) or a token's.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Sign `message` (a TBSCertificate) with the CA's key, as the certificate's signature
    /// field wants it.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        match &self.key {
            SigningKey::File(key) => key
                .sign(message)
                .map_err(|e| SignError::Failed(e.to_string())),
            SigningKey::Token(key) => key.sign(message).map_err(SignError::Unavailable),
        }
    }

    /// The token key, when the CA's key is in a token.
    pub fn token_key(&self) -> Option<&TokenKey> {
        match &self.key {
            SigningKey::Token(key) => Some(key),
            SigningKey::File(_) => None,
        }
    }

    /// The CA certificate's subject DER: the issuer of what it signs.
    pub fn issuer_der(&self) -> &[u8] {
        &self.issuer_der
    }

    /// The encoded AuthorityKeyIdentifier extension of every certificate this CA issues.
    pub fn authority_key_extension(&self) -> &[u8] {
        &self.authority_key_extension
    }

    /// The encoded BasicConstraints CA:FALSE extension (critical) of every issued certificate.
    pub fn basic_constraints_extension(&self) -> &[u8] {
        &self.basic_constraints_extension
    }

    pub fn signature_algorithm(&self) -> &AlgorithmIdentifierOwned {
        &self.signature_algorithm
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The key identifier of this CA (the AKI of what it issues), colon-separated hex as
    /// `openssl x509 -text` shows it.
    pub fn key_id_hex(&self) -> String {
        colon_hex(&self.key_id)
    }

    /// Issued certificates never outlive this.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The CA certificate and whatever tls.crt holds after it, DER.
    pub fn chain_der(&self) -> &[Vec<u8>] {
        &self.chain_der
    }

    /// The top of `tls.crt`'s chain (the CA itself when it is a root): what relying parties
    /// trust, and what a ClusterTrustBundle publishes.
    pub fn anchor_der(&self) -> Option<&[u8]> {
        self.chain_der.last().map(Vec::as_slice)
    }

    /// The certificates between an issued leaf and the anchor (the CA itself and any
    /// intermediates above it, when the CA is not a root): what a certificate chain carries.
    pub fn intermediates_der(&self) -> &[Vec<u8>] {
        match self.chain_der.len() {
            0 | 1 => &[],
            n => &self.chain_der[..n - 1],
        }
    }

    /// DER SubjectPublicKeyInfo of the CA's key.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }
}

/// The cluster's own CA certificates: whatever they sign, directly or through intermediates,
/// authenticates to the API server (its x509 authenticator builds the chain from what the client
/// presents). A re-issued CA certificate with the same key is the same CA, so keys are compared.
#[derive(Debug, Clone, Default)]
pub struct ClusterCa {
    /// DER SubjectPublicKeyInfo of each.
    pub public_keys: Vec<Vec<u8>>,
    /// Where they came from, for messages.
    pub origin: String,
}

/// How a signing CA relates to the cluster's CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterRelation {
    /// Not the cluster CA, nor issued by it: its chain ends at a root of its own.
    Unrelated,
    /// The cluster CA itself (the same key).
    Same,
    /// Issued by the cluster CA, directly or through the intermediates named (subjects).
    ChainsTo { through: Vec<String> },
    /// Its chain stops at an issuer that is neither in tls.crt nor the cluster CA: it cannot be
    /// told apart from an intermediate of the cluster CA.
    Incomplete { missing_issuer: String },
}

/// Longest chain followed: more than any real PKI uses, and a bound on a loop of cross-signs.
const MAX_CHAIN: usize = 8;

impl ClusterCa {
    /// From DER certificates (kube's Config::root_cert: the service account's ca.crt in a pod,
    /// the kubeconfig's certificate-authority otherwise) and PEM bundles.
    pub fn from_certificates(der: &[Vec<u8>], pem_bundles: &[Vec<u8>], origin: String) -> Self {
        let mut public_keys = Vec::new();
        let mut add = |der: &[u8]| {
            if let Ok((_, cert)) = X509Certificate::from_der(der) {
                public_keys.push(cert.tbs_certificate.subject_pki.raw.to_vec());
            }
        };
        der.iter().for_each(|d| add(d));
        for bundle in pem_bundles {
            for pem in x509_parser::pem::Pem::iter_from_buffer(bundle).flatten() {
                if pem.label == "CERTIFICATE" {
                    add(&pem.contents);
                }
            }
        }
        ClusterCa {
            public_keys,
            origin,
        }
    }

    pub fn is_known(&self) -> bool {
        !self.public_keys.is_empty()
    }

    /// Follow `ca`'s chain (the certificates of its tls.crt) up, verifying each signature, until
    /// it reaches the cluster CA, a self-signed root, or an issuer nobody here holds.
    pub fn relation(&self, ca: &CertificateAuthority) -> ClusterRelation {
        let parsed: Vec<X509Certificate<'_>> = ca
            .chain_der()
            .iter()
            .filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, c)| c))
            .collect();
        let Some(mut current) = parsed.first() else {
            return ClusterRelation::Incomplete {
                missing_issuer: ca.subject().to_owned(),
            };
        };
        let cluster_keys: Vec<x509_parser::x509::SubjectPublicKeyInfo<'_>> = self
            .public_keys
            .iter()
            .filter_map(|der| {
                x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
                    .ok()
                    .map(|(_, k)| k)
            })
            .collect();
        let mut through = Vec::new();
        for _ in 0..MAX_CHAIN {
            let key = &current.tbs_certificate.subject_pki;
            if self.public_keys.iter().any(|k| k.as_slice() == key.raw) {
                return if through.is_empty() {
                    ClusterRelation::Same
                } else {
                    ClusterRelation::ChainsTo { through }
                };
            }
            if cluster_keys
                .iter()
                .any(|k| current.verify_signature(Some(k)).is_ok())
            {
                through.push(current.subject().to_string());
                return ClusterRelation::ChainsTo { through };
            }
            if current.verify_signature(None).is_ok() {
                return ClusterRelation::Unrelated;
            }
            let issuer = parsed.iter().find(|candidate| {
                !std::ptr::eq(*candidate, current)
                    && current
                        .verify_signature(Some(&candidate.tbs_certificate.subject_pki))
                        .is_ok()
            });
            match issuer {
                Some(issuer) => {
                    through.push(current.subject().to_string());
                    current = issuer;
                }
                None => {
                    return ClusterRelation::Incomplete {
                        missing_issuer: current.issuer().to_string(),
                    };
                }
            }
        }
        ClusterRelation::Incomplete {
            missing_issuer: current.issuer().to_string(),
        }
    }
}

/// Which token key kind signs for a certificate with this public key, if csr-warden can.
fn token_key_kind(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Option<TokenKeyKind> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
        OID_SIG_ED25519,
    };
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        return Some(TokenKeyKind::Rsa);
    }
    if *algorithm == OID_SIG_ED25519 {
        return Some(TokenKeyKind::Ed25519);
    }
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
        if curve == OID_EC_P256 {
            return Some(TokenKeyKind::EcdsaP256);
        }
        if curve == OID_NIST_EC_P384 {
            return Some(TokenKeyKind::EcdsaP384);
        }
    }
    None
}

/// `AB:CD:...`, the form openssl prints fingerprints and key identifiers in.
pub fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// SHA-256 fingerprint of a DER certificate, as `openssl x509 -noout -fingerprint -sha256`
/// prints it.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    colon_hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

/// RFC 7093 section 2 method 1: the leftmost 160 bits of the SHA-256 of the subjectPublicKey
/// bits. Used for the SKI of every certificate issued (and a CA's AKI when it has no SKI).
pub fn key_identifier(subject_public_key: &[u8]) -> Vec<u8> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, subject_public_key);
    digest.as_ref()[..20].to_vec()
}

/// The AlgorithmIdentifier of the signatures `key` makes, for the certificates it signs.
fn signature_algorithm(algorithm: &SignatureAlgorithm) -> Option<AlgorithmIdentifierOwned> {
    const RSA_SHA256: &str = "1.2.840.113549.1.1.11";
    const RSA_SHA384: &str = "1.2.840.113549.1.1.12";
    const RSA_SHA512: &str = "1.2.840.113549.1.1.13";
    const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
    const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
    const ECDSA_SHA512: &str = "1.2.840.10045.4.3.4";
    const ED25519: &str = "1.3.101.112";
    use rcgen::{
        PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ECDSA_P521_SHA256,
        PKCS_ECDSA_P521_SHA384, PKCS_ECDSA_P521_SHA512, PKCS_ED25519, PKCS_RSA_SHA256,
        PKCS_RSA_SHA384, PKCS_RSA_SHA512,
    };
    // RSA PKCS#1 v1.5 identifiers carry NULL parameters (RFC 4055); ECDSA and Ed25519 none.
    let (oid, null_parameters) = [
        (&PKCS_RSA_SHA256, RSA_SHA256, true),
        (&PKCS_RSA_SHA384, RSA_SHA384, true),
        (&PKCS_RSA_SHA512, RSA_SHA512, true),
        (&PKCS_ECDSA_P256_SHA256, ECDSA_SHA256, false),
        (&PKCS_ECDSA_P384_SHA384, ECDSA_SHA384, false),
        (&PKCS_ECDSA_P521_SHA256, ECDSA_SHA256, false),
        (&PKCS_ECDSA_P521_SHA384, ECDSA_SHA384, false),
        (&PKCS_ECDSA_P521_SHA512, ECDSA_SHA512, false),
        (&PKCS_ED25519, ED25519, false),
    ]
    .into_iter()
    .find(|(known, _, _)| *known == algorithm)
    .map(|(_, oid, null)| (oid, null))?;
    Some(AlgorithmIdentifierOwned {
        oid: ObjectIdentifier::new(oid).ok()?,
        parameters: null_parameters.then(|| der::asn1::Null.into()),
    })
}

/// A random positive serial of 128 bits (top bit cleared so the DER INTEGER stays positive and
/// within RFC 5280's 20 octets; first octet non-zero so the encoding is minimal), so two
/// certificates for one key never share a serial.
pub fn random_serial() -> Result<[u8; 16], getrandom::Error> {
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial)?;
    serial[0] = (serial[0] & 0x7f).max(1);
    Ok(serial)
}
