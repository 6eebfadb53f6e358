//! How an issued certificate is written: RFC 5280's structures over the `der` crate's encoders,
//! borrowing what they carry over (the CA's subject, the CSR's subject and key, the extensions
//! the CA encoded once) and encoded in one pass into a growing buffer.

use der::asn1::{BitStringRef, ContextSpecificRef, UintRef};
use der::oid::AssociatedOid;
use der::{Encode, EncodeValue, FixedTag, Length, Tag, TagMode, TagNumber, Writer};
use x509_cert::certificate::Version;
use x509_cert::ext::pkix::{ExtendedKeyUsage, KeyUsage, SubjectAltName, SubjectKeyIdentifier};
use x509_cert::spki::AlgorithmIdentifierRef;
use x509_cert::time::Validity;

/// A SEQUENCE of the fields listed, encoded one after another. Its length and its encoding come
/// from the one list, so they cannot disagree.
macro_rules! sequence {
    ([$($generics:tt)*] $type:ty, |$this:ident| [$($field:expr),+ $(,)?]) => {
        impl<$($generics)*> EncodeValue for $type {
            fn value_len(&self) -> der::Result<Length> {
                let $this = self;
                [$($field.encoded_len()),+]
                    .into_iter()
                    .try_fold(Length::ZERO, |sum, length| sum + length?)
            }

            fn encode_value(&self, writer: &mut impl Writer) -> der::Result<()> {
                let $this = self;
                $($field.encode(writer)?;)+
                Ok(())
            }
        }

        impl<$($generics)*> FixedTag for $type {
            const TAG: Tag = Tag::Sequence;
        }
    };
}

/// RFC 5280's TBSCertificate, borrowing what is encoded already: the issuer (the CA
/// certificate's subject), and the subject and key, which `issue` encoded from the request's
/// decoded values. Encoded in one pass by the `der` crate.
pub(super) struct TbsCertificate<'a> {
    pub serial_number: UintRef<'a>,
    pub signature: AlgorithmIdentifierRef<'a>,
    pub issuer: Encoded<'a>,
    pub validity: Validity,
    pub subject: Encoded<'a>,
    pub subject_public_key_info: Encoded<'a>,
    pub extensions: KnownLength<CertificateExtensions<'a>>,
}

impl TbsCertificate<'_> {
    const VERSION: ContextSpecificRef<'static, Version> = ContextSpecificRef {
        tag_number: TagNumber::N0,
        tag_mode: TagMode::Explicit,
        value: &Version::V3,
    };

    fn extensions(&self) -> ContextSpecificRef<'_, KnownLength<CertificateExtensions<'_>>> {
        ContextSpecificRef {
            tag_number: TagNumber::N3,
            tag_mode: TagMode::Explicit,
            value: &self.extensions,
        }
    }
}

sequence!(['a] TbsCertificate<'a>, |tbs| [
    TbsCertificate::VERSION,
    tbs.serial_number,
    tbs.signature,
    tbs.issuer,
    tbs.validity,
    tbs.subject,
    tbs.subject_public_key_info,
    tbs.extensions(),
]);

/// The Extensions SEQUENCE of an issued certificate, in this order. The two that are the same
/// in every certificate a CA issues come encoded from the CA.
pub(super) struct CertificateExtensions<'a> {
    pub key_usage: Option<ExtensionOf<KeyUsage>>,
    pub extended_key_usage: Option<ExtensionOf<ExtendedKeyUsage>>,
    pub basic_constraints: Encoded<'a>,
    pub subject_alt_name: Option<ExtensionOf<SubjectAltName>>,
    pub subject_key_identifier: ExtensionOf<SubjectKeyIdentifier>,
    pub authority_key_identifier: Encoded<'a>,
}

sequence!(['a] CertificateExtensions<'a>, |extensions| [
    extensions.key_usage,
    extensions.extended_key_usage,
    extensions.basic_constraints,
    extensions.subject_alt_name,
    extensions.subject_key_identifier,
    extensions.authority_key_identifier,
]);

/// RFC 5280's Extension, encoded straight from its value: the value's DER goes inside the
/// extnValue OCTET STRING as it is written, with no intermediate buffer.
pub(crate) struct ExtensionOf<T> {
    /// Encoded only when true (DEFAULT FALSE).
    critical: Option<bool>,
    value: T,
}

impl<T> ExtensionOf<T> {
    pub fn new(critical: bool, value: T) -> Self {
        ExtensionOf {
            critical: critical.then_some(true),
            value,
        }
    }
}

impl<T: Encode> ExtensionOf<T> {
    fn value(&self) -> ContentsOfOctetString<'_, T> {
        ContentsOfOctetString(&self.value)
    }
}

sequence!([T: Encode + AssociatedOid] ExtensionOf<T>, |extension| [
    T::OID,
    extension.critical,
    extension.value(),
]);

/// An OCTET STRING whose contents are the DER of `T` (how an extension wraps its value).
struct ContentsOfOctetString<'a, T>(&'a T);

impl<T: Encode> EncodeValue for ContentsOfOctetString<'_, T> {
    fn value_len(&self) -> der::Result<Length> {
        self.0.encoded_len()
    }

    fn encode_value(&self, writer: &mut impl Writer) -> der::Result<()> {
        self.0.encode(writer)
    }
}

impl<T> FixedTag for ContentsOfOctetString<'_, T> {
    const TAG: Tag = Tag::OctetString;
}

/// A value that is DER already, written as it is: the CA certificate's subject, the subject
/// and key encoded from the request's decoded values, an extension the CA encoded once, the
/// signed TBSCertificate.
pub(super) struct Encoded<'a>(pub &'a [u8]);

impl Encode for Encoded<'_> {
    fn encoded_len(&self) -> der::Result<Length> {
        Length::try_from(self.0.len())
    }

    fn encode(&self, writer: &mut impl Writer) -> der::Result<()> {
        writer.write(self.0)
    }
}

/// A value whose length is worked out once. der asks a value for its length again at every
/// level above it, and the extensions are the deepest part of a certificate.
pub(super) struct KnownLength<T> {
    value_len: Length,
    value: T,
}

impl<T: EncodeValue> KnownLength<T> {
    pub fn new(value: T) -> der::Result<Self> {
        Ok(KnownLength {
            value_len: value.value_len()?,
            value,
        })
    }
}

impl<T: EncodeValue> EncodeValue for KnownLength<T> {
    fn value_len(&self) -> der::Result<Length> {
        Ok(self.value_len)
    }

    fn encode_value(&self, writer: &mut impl Writer) -> der::Result<()> {
        self.value.encode_value(writer)
    }
}

impl<T: FixedTag> FixedTag for KnownLength<T> {
    const TAG: Tag = T::TAG;
}

/// DER into a Vec through der's writer for `io::Write`: each write is an append, where
/// `to_der`'s slice writer zeroes the buffer first and checks bounds on every byte it writes.
pub(super) fn encode(value: &impl Encode) -> der::Result<Vec<u8>> {
    let mut der = Vec::with_capacity(usize::try_from(value.encoded_len()?)?);
    value.encode(&mut der)?;
    Ok(der)
}

/// RFC 5280's Certificate around an already encoded TBSCertificate (signed as those bytes).
pub(super) struct SignedCertificate<'a> {
    pub tbs_certificate: Encoded<'a>,
    pub signature_algorithm: AlgorithmIdentifierRef<'a>,
    pub signature: BitStringRef<'a>,
}

sequence!(['a] SignedCertificate<'a>, |certificate| [
    certificate.tbs_certificate,
    certificate.signature_algorithm,
    certificate.signature,
]);
