//! csr-warden's reading of a request against Go's (tests/go/x509read, crypto/x509), on a
//! hand-written corpus of hostile encodings.
//!
//! csr-warden decides on its own reading of a PKCS#10 request; kube-apiserver, the
//! controller-manager's signer and every kubelet read the same bytes with Go. Wherever the two
//! readings differ, csr-warden approves one identity and the certificate acts as another. Each
//! row says what csr-warden must answer (the strict reader's answer: when in doubt, Deny);
//! whenever csr-warden accepts, Go must read the same identity from the request and from the
//! certificate csr-warden issues for it.

use crate::support;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256,
    RsaKeyPair,
};
use csr_warden::policy::SigningLimits;
use csr_warden::x509::ca::{CertificateAuthority, random_serial};
use csr_warden::x509::inspect::{CertificateRequest, inspect_der};
use csr_warden::x509::issue::{ApprovedRequest, issue};
use support::go_reader::{self, GO_EXT_KEY_USAGE_CLIENT_AUTH, GO_KEY_USAGE_DIGITAL_SIGNATURE};
use support::{KeyKind, openssl_ca, openssl_csr};

/// A tiny DER writer: what the test writes is exactly what it says, including the encodings a
/// DER library would refuse to produce.
mod der {
    pub const BOOLEAN: u8 = 0x01;
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const NULL: u8 = 0x05;
    pub const OID: u8 = 0x06;
    pub const UTF8_STRING: u8 = 0x0c;
    pub const NUMERIC_STRING: u8 = 0x12;
    pub const PRINTABLE_STRING: u8 = 0x13;
    pub const T61_STRING: u8 = 0x14;
    pub const IA5_STRING: u8 = 0x16;
    pub const VISIBLE_STRING: u8 = 0x1a;
    pub const UNIVERSAL_STRING: u8 = 0x1c;
    pub const BMP_STRING: u8 = 0x1e;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;

    /// Minimal definite length.
    pub fn length(n: usize) -> Vec<u8> {
        if n < 0x80 {
            return vec![n as u8];
        }
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        let mut out = vec![0x80 | bytes.len() as u8];
        out.extend(bytes);
        out
    }

    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend(length(content.len()));
        out.extend_from_slice(content);
        out
    }

    /// Long form with `width` length bytes, whatever the length (non-minimal on purpose).
    pub fn tlv_long(tag: u8, content: &[u8], width: usize) -> Vec<u8> {
        let mut out = vec![tag, 0x80 | width as u8];
        out.extend_from_slice(&content.len().to_be_bytes()[8 - width..]);
        out.extend_from_slice(content);
        out
    }

    /// BER indefinite length: 0x80, the content, end-of-contents.
    pub fn tlv_indefinite(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag, 0x80];
        out.extend_from_slice(content);
        out.extend_from_slice(&[0, 0]);
        out
    }

    /// A header whose length is `claimed`, followed by `content` of another length.
    pub fn tlv_claiming(tag: u8, claimed: usize, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend(length(claimed));
        out.extend_from_slice(content);
        out
    }

    pub fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    pub fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(SEQUENCE, &parts.concat())
    }

    /// A SET in the order given (unsorted on purpose where a row needs it).
    pub fn set(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(SET, &parts.concat())
    }

    /// A DER SET OF: members sorted by their encodings (X.690 11.6).
    pub fn set_of(parts: &[Vec<u8>]) -> Vec<u8> {
        set(&sorted(parts))
    }

    /// Encodings in DER SET OF order: compared as octet strings, the shorter padded with zeros.
    pub fn sorted(parts: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut sorted = parts.to_vec();
        sorted.sort_by(|a, b| {
            let n = a.len().max(b.len());
            let pad = |v: &Vec<u8>| {
                let mut p = v.clone();
                p.resize(n, 0);
                p
            };
            pad(a).cmp(&pad(b))
        });
        sorted
    }

    pub fn oid(arcs: &[u64]) -> Vec<u8> {
        let mut content = base128(arcs[0] * 40 + arcs[1]);
        for arc in &arcs[2..] {
            content.extend(base128(*arc));
        }
        tlv(OID, &content)
    }

    fn base128(mut n: u64) -> Vec<u8> {
        let mut out = vec![(n & 0x7f) as u8];
        n >>= 7;
        while n > 0 {
            out.insert(0, 0x80 | (n & 0x7f) as u8);
            n >>= 7;
        }
        out
    }

    pub fn int(n: u8) -> Vec<u8> {
        tlv(INTEGER, &[n])
    }

    pub fn null() -> Vec<u8> {
        vec![NULL, 0]
    }

    pub fn utf8(s: &str) -> Vec<u8> {
        tlv(UTF8_STRING, s.as_bytes())
    }

    pub fn printable(s: &str) -> Vec<u8> {
        tlv(PRINTABLE_STRING, s.as_bytes())
    }

    pub fn ia5(s: &str) -> Vec<u8> {
        tlv(IA5_STRING, s.as_bytes())
    }

    pub fn octets(bytes: &[u8]) -> Vec<u8> {
        tlv(OCTET_STRING, bytes)
    }

    /// A BIT STRING with no unused bits.
    pub fn bits(bytes: &[u8]) -> Vec<u8> {
        let mut content = vec![0];
        content.extend_from_slice(bytes);
        tlv(BIT_STRING, &content)
    }
}

use der::*;

const CN: &[u64] = &[2, 5, 4, 3];
const O: &[u64] = &[2, 5, 4, 10];
/// The UID attribute kube-apiserver reads as the user's UID.
const UID: &[u64] = &[1, 3, 6, 1, 4, 1, 57683, 2];
/// RFC 4519's uid, which csr-warden treats as a UID too.
const LDAP_UID: &[u64] = &[0, 9, 2342, 19200300, 100, 1, 1];
const EXTENSION_REQUEST: &[u64] = &[1, 2, 840, 113549, 1, 9, 14];
const CHALLENGE_PASSWORD: &[u64] = &[1, 2, 840, 113549, 1, 9, 7];
const SAN: &[u64] = &[2, 5, 29, 17];
const BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
const EC_PUBLIC_KEY: &[u64] = &[1, 2, 840, 10045, 2, 1];
const P256: &[u64] = &[1, 2, 840, 10045, 3, 1, 7];
const ECDSA_SHA256: &[u64] = &[1, 2, 840, 10045, 4, 3, 2];
const RSA_ENCRYPTION: &[u64] = &[1, 2, 840, 113549, 1, 1, 1];
const SHA256_WITH_RSA: &[u64] = &[1, 2, 840, 113549, 1, 1, 11];
const ED25519: &[u64] = &[1, 3, 101, 112];

const SIGNER: &str = "kubernetes.io/kube-apiserver-client";
const USAGES: [&str; 2] = ["digital signature", "client auth"];
const LIMITS: SigningLimits = SigningLimits {
    default_expiration_seconds: 86_400,
    max_expiration_seconds: 86_400,
};

/// The keys requests are signed with, so that a bad signature is never why a row is denied
/// (except the rows about the signature itself).
struct Keys {
    p256: EcdsaKeyPair,
    rsa: RsaKeyPair,
    ed25519: Ed25519KeyPair,
}

#[derive(Clone, Copy)]
enum Key {
    P256,
    Rsa,
    Ed25519,
}

impl Keys {
    fn generate() -> Keys {
        Keys {
            p256: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).expect("P-256 key"),
            rsa: RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key"),
            ed25519: Ed25519KeyPair::generate().expect("Ed25519 key"),
        }
    }

    /// The uncompressed P-256 point (0x04 || X || Y).
    fn p256_point(&self) -> Vec<u8> {
        self.p256.public_key().as_ref().to_vec()
    }

    /// The key's SubjectPublicKeyInfo, well formed.
    fn spki(&self, key: Key) -> Vec<u8> {
        match key {
            Key::P256 => spki_ec(&self.p256_point()),
            Key::Rsa => seq(&[
                seq(&[oid(RSA_ENCRYPTION), null()]),
                bits(self.rsa.public_key().as_ref()),
            ]),
            Key::Ed25519 => seq(&[
                seq(&[oid(ED25519)]),
                bits(self.ed25519.public_key().as_ref()),
            ]),
        }
    }

    fn algorithm(&self, key: Key) -> Vec<u8> {
        match key {
            Key::P256 => seq(&[oid(ECDSA_SHA256)]),
            Key::Rsa => seq(&[oid(SHA256_WITH_RSA), null()]),
            Key::Ed25519 => seq(&[oid(ED25519)]),
        }
    }

    fn sign(&self, key: Key, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match key {
            Key::P256 => self
                .p256
                .sign(&rng, message)
                .expect("ECDSA signs")
                .as_ref()
                .to_vec(),
            Key::Rsa => {
                let mut signature = vec![0; self.rsa.public_modulus_len()];
                self.rsa
                    .sign(&RSA_PKCS1_SHA256, &rng, message, &mut signature)
                    .expect("RSA signs");
                signature
            }
            Key::Ed25519 => self.ed25519.sign(message).as_ref().to_vec(),
        }
    }

    /// A CertificationRequest: `info` signed as encoded, wrapped with a well-formed outside.
    fn request(&self, key: Key, info: &[u8]) -> Vec<u8> {
        seq(&[
            info.to_vec(),
            self.algorithm(key),
            bits(&self.sign(key, info)),
        ])
    }
}

fn spki_ec(point: &[u8]) -> Vec<u8> {
    seq(&[seq(&[oid(EC_PUBLIC_KEY), oid(P256)]), bits(point)])
}

/// CertificationRequestInfo: version 0, subject, key, attributes.
fn info(subject: &[u8], spki: &[u8], attributes: &[u8]) -> Vec<u8> {
    seq(&[int(0), subject.to_vec(), spki.to_vec(), attributes.to_vec()])
}

fn rdn(atvs: &[Vec<u8>]) -> Vec<u8> {
    set(atvs)
}

fn atv(oid_arcs: &[u64], value: Vec<u8>) -> Vec<u8> {
    seq(&[oid(oid_arcs), value])
}

/// A Name of single-valued RDNs.
fn name(atvs: &[Vec<u8>]) -> Vec<u8> {
    seq(&atvs
        .iter()
        .map(|a| rdn(std::slice::from_ref(a)))
        .collect::<Vec<_>>())
}

/// The usual subject: CN=jane, O=developers (UTF8String).
fn jane() -> Vec<u8> {
    name(&[atv(CN, utf8("jane")), atv(O, utf8("developers"))])
}

/// `[0] IMPLICIT SET OF Attribute`, sorted.
fn attributes(list: &[Vec<u8>]) -> Vec<u8> {
    tlv(0xa0, &sorted(list).concat())
}

fn no_attributes() -> Vec<u8> {
    tlv(0xa0, &[])
}

fn extension_request(extensions: &[Vec<u8>]) -> Vec<u8> {
    seq(&[oid(EXTENSION_REQUEST), set(&[seq(extensions)])])
}

fn extension(oid_arcs: &[u64], critical: Option<Vec<u8>>, value: &[u8]) -> Vec<u8> {
    let mut parts = vec![oid(oid_arcs)];
    parts.extend(critical);
    parts.push(octets(value));
    seq(&parts)
}

fn san(names: &[Vec<u8>]) -> Vec<u8> {
    extension(SAN, None, &seq(names))
}

fn dns(name: &str) -> Vec<u8> {
    tlv(0x82, name.as_bytes())
}

fn ip(bytes: &[u8]) -> Vec<u8> {
    tlv(0x87, bytes)
}

fn email(address: &str) -> Vec<u8> {
    tlv(0x81, address.as_bytes())
}

fn uri(uri: &str) -> Vec<u8> {
    tlv(0x86, uri.as_bytes())
}

/// Attributes asking for one SAN extension with these names.
fn with_sans(names: &[Vec<u8>]) -> Vec<u8> {
    attributes(&[extension_request(&[san(names)])])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Accept,
    Deny,
}
use Expect::*;

type Build = Box<dyn Fn(&Keys) -> Vec<u8>>;

struct Case {
    name: String,
    expect: Expect,
    build: Build,
}

fn case(
    name: impl Into<String>,
    expect: Expect,
    build: impl Fn(&Keys) -> Vec<u8> + 'static,
) -> Case {
    Case {
        name: name.into(),
        expect,
        build: Box::new(build),
    }
}

/// A P-256 request with this subject and these attributes.
fn simple(subject: Vec<u8>, attributes: Vec<u8>) -> impl Fn(&Keys) -> Vec<u8> {
    move |k: &Keys| k.request(Key::P256, &info(&subject, &k.spki(Key::P256), &attributes))
}

/// Every ASN.1 type a CN or an O value may come in; only UTF8String, valid PrintableString and
/// ASCII IA5String are read.
fn string_types(base: &str) -> Vec<(String, Expect, Vec<u8>)> {
    let utf16: Vec<u8> = base
        .encode_utf16()
        .chain([0])
        .flat_map(u16::to_be_bytes)
        .collect();
    let utf32: Vec<u8> = base
        .chars()
        .flat_map(|c| (c as u32).to_be_bytes())
        .collect();
    let latin1 = |s: &str| {
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0xe9);
        bytes
    };
    vec![
        ("UTF8String".into(), Accept, utf8(base)),
        ("PrintableString".into(), Accept, printable(base)),
        (
            "PrintableString with '*'".into(),
            Deny,
            printable(&format!("{base}*")),
        ),
        (
            "PrintableString with '&'".into(),
            Deny,
            printable(&format!("{base}&")),
        ),
        (
            "PrintableString with '@'".into(),
            Deny,
            printable(&format!("{base}@x")),
        ),
        ("IA5String".into(), Accept, ia5(base)),
        (
            "IA5String with a non-ASCII byte".into(),
            Deny,
            tlv(IA5_STRING, &latin1(base)),
        ),
        (
            "T61String with a Latin-1 byte".into(),
            Deny,
            tlv(T61_STRING, &latin1(base)),
        ),
        (
            "BMPString with a NUL terminator".into(),
            Deny,
            tlv(BMP_STRING, &utf16),
        ),
        (
            "UniversalString".into(),
            Deny,
            tlv(UNIVERSAL_STRING, &utf32),
        ),
        ("NumericString".into(), Deny, tlv(NUMERIC_STRING, b"1234")),
        (
            "VisibleString".into(),
            Deny,
            tlv(VISIBLE_STRING, base.as_bytes()),
        ),
        ("OCTET STRING".into(), Deny, octets(base.as_bytes())),
        ("INTEGER".into(), Deny, int(7)),
        ("SEQUENCE".into(), Deny, seq(&[utf8(base)])),
        (
            "context-tagged [0]".into(),
            Deny,
            tlv(0x80, base.as_bytes()),
        ),
    ]
}

fn corpus(dir: &std::path::Path) -> Vec<Case> {
    let mut cases = vec![
        // Positive controls.
        case(
            "control: CN+O UTF8String",
            Accept,
            simple(jane(), no_attributes()),
        ),
        case(
            "control: several O values",
            Accept,
            simple(
                name(&[
                    atv(CN, utf8("jane")),
                    atv(O, utf8("developers")),
                    atv(O, printable("ops")),
                    atv(O, utf8("viewers")),
                ]),
                no_attributes(),
            ),
        ),
        case(
            "control: DNS, IP, email and URI SANs",
            Accept,
            simple(
                jane(),
                with_sans(&[
                    dns("jane.example.com"),
                    ip(&[10, 0, 0, 1]),
                    ip(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
                    email("jane@example.com"),
                    uri("spiffe://cluster.local/ns/default/sa/jane"),
                ]),
            ),
        ),
        case(
            "control: one UID attribute (UTF8String)",
            Accept,
            simple(
                name(&[
                    atv(CN, utf8("jane")),
                    atv(O, utf8("developers")),
                    atv(UID, utf8("6a1f2c3d-uid")),
                ]),
                no_attributes(),
            ),
        ),
        case(
            "control: empty subject",
            Accept,
            simple(seq(&[]), no_attributes()),
        ),
        case("control: RSA-2048 key", Accept, |k: &Keys| {
            k.request(
                Key::Rsa,
                &info(&jane(), &k.spki(Key::Rsa), &no_attributes()),
            )
        }),
        case("control: Ed25519 key", Accept, |k: &Keys| {
            k.request(
                Key::Ed25519,
                &info(&jane(), &k.spki(Key::Ed25519), &no_attributes()),
            )
        }),
        case(
            "control: unknown non-critical extension (ignored)",
            Accept,
            simple(
                jane(),
                attributes(&[extension_request(&[extension(
                    &[1, 3, 6, 1, 4, 1, 99999, 1],
                    None,
                    &null(),
                )])]),
            ),
        ),
        case(
            "control: request asks for basicConstraints CA:TRUE (certificate must say CA:FALSE)",
            Accept,
            simple(
                jane(),
                attributes(&[extension_request(&[extension(
                    BASIC_CONSTRAINTS,
                    None,
                    &seq(&[tlv(BOOLEAN, &[0xff])]),
                )])]),
            ),
        ),
    ];

    // The request tools really send.
    let openssl = openssl_csr(
        dir,
        "parity",
        KeyKind::P256,
        "/CN=jane/O=developers/O=ops",
        Some("DNS:jane.example.com,IP:10.1.2.3,email:jane@example.com,URI:spiffe://td/jane"),
        &[],
    );
    let openssl_der = pem_body(&openssl);
    cases.push(case(
        "control: openssl-made request",
        Accept,
        move |_: &Keys| openssl_der.clone(),
    ));
    let go_der = go_reader::go_made_csr();
    cases.push(case(
        "control: Go-made request (x509.CreateCertificateRequest)",
        Accept,
        move |_: &Keys| go_der.clone(),
    ));

    // Every string type, for CN and for O.
    for (label, expect, value) in string_types("jane") {
        let subject = name(&[atv(CN, value), atv(O, utf8("developers"))]);
        cases.push(case(
            format!("CN as {label}"),
            expect,
            simple(subject, no_attributes()),
        ));
    }
    for (label, expect, value) in string_types("devs") {
        let subject = name(&[atv(CN, utf8("jane")), atv(O, value)]);
        cases.push(case(
            format!("O as {label}"),
            expect,
            simple(subject, no_attributes()),
        ));
    }

    let more = vec![
        // The subject's structure.
        case(
            "empty RDN SET between CN and O",
            Deny,
            simple(
                seq(&[
                    rdn(&[atv(CN, utf8("jane"))]),
                    set(&[]),
                    rdn(&[atv(O, utf8("developers"))]),
                ]),
                no_attributes(),
            ),
        ),
        case(
            "multi-valued RDN: CN+O in one SET",
            Deny,
            simple(
                seq(&[set_of(&[
                    atv(CN, utf8("jane")),
                    atv(O, utf8("system:masters")),
                ])]),
                no_attributes(),
            ),
        ),
        case(
            "two CNs (Go: the last wins)",
            Deny,
            simple(
                name(&[
                    atv(CN, utf8("jane")),
                    atv(CN, utf8("admin")),
                    atv(O, utf8("developers")),
                ]),
                no_attributes(),
            ),
        ),
        case(
            "two UIDs",
            Deny,
            simple(
                name(&[
                    atv(CN, utf8("jane")),
                    atv(UID, utf8("uid-1")),
                    atv(UID, utf8("uid-2")),
                ]),
                no_attributes(),
            ),
        ),
        case(
            "control: one RFC 4519 uid attribute",
            Accept,
            simple(
                name(&[atv(CN, utf8("jane")), atv(LDAP_UID, utf8("uid-1"))]),
                no_attributes(),
            ),
        ),
        case(
            "a Kubernetes UID and an RFC 4519 uid",
            Deny,
            simple(
                name(&[
                    atv(CN, utf8("jane")),
                    atv(UID, utf8("uid-1")),
                    atv(LDAP_UID, utf8("uid-1")),
                ]),
                no_attributes(),
            ),
        ),
        case(
            "a subject attribute type csr-warden does not know (private OID)",
            Deny,
            simple(
                name(&[
                    atv(CN, utf8("jane")),
                    atv(&[1, 3, 6, 1, 4, 1, 99999, 1], utf8("x")),
                ]),
                no_attributes(),
            ),
        ),
        case(
            "subject attribute type with an arc of 2^31 (Go: base 128 integer too large)",
            Deny,
            simple(
                name(&[
                    atv(CN, utf8("jane")),
                    atv(&[2, 5, 4, 2_147_483_648], utf8("x")),
                ]),
                no_attributes(),
            ),
        ),
        case(
            "SAN URI with an empty fragment (Go's url.String drops the '#')",
            Deny,
            simple(
                jane(),
                with_sans(&[uri("spiffe://cluster.local/ns/a/sa/b#")]),
            ),
        ),
        case(
            "UID as OCTET STRING",
            Deny,
            simple(
                name(&[atv(CN, utf8("jane")), atv(UID, octets(b"uid-1"))]),
                no_attributes(),
            ),
        ),
        case(
            "RDN tagged SEQUENCE instead of SET",
            Deny,
            simple(
                seq(&[
                    seq(&[atv(CN, utf8("jane"))]),
                    rdn(&[atv(O, utf8("developers"))]),
                ]),
                no_attributes(),
            ),
        ),
        case(
            "attribute type OID with a non-minimal arc (2.5.4.3 as 55 80 04 03)",
            Deny,
            simple(
                seq(&[
                    rdn(&[seq(&[tlv(OID, &[0x55, 0x80, 0x04, 0x03]), utf8("admin")])]),
                    rdn(&[atv(O, utf8("developers"))]),
                ]),
                no_attributes(),
            ),
        ),
        // The attributes.
        case("attributes [0] missing", Deny, |k: &Keys| {
            k.request(Key::P256, &seq(&[int(0), jane(), k.spki(Key::P256)]))
        }),
        case(
            "attributes tagged [APPLICATION 0] instead of [0]",
            Deny,
            simple(
                jane(),
                tlv(
                    0x60,
                    &extension_request(&[san(&[dns("admin.example.com")])]),
                ),
            ),
        ),
        case(
            "attributes tagged [PRIVATE 0] instead of [0]",
            Deny,
            simple(
                jane(),
                tlv(
                    0xe0,
                    &extension_request(&[san(&[dns("admin.example.com")])]),
                ),
            ),
        ),
        case(
            "two extensionRequest attributes (Go merges them)",
            Deny,
            simple(
                jane(),
                attributes(&[
                    extension_request(&[extension(&[1, 3, 6, 1, 4, 1, 99999, 1], None, &null())]),
                    extension_request(&[san(&[dns("admin.example.com")])]),
                ]),
            ),
        ),
        case(
            "extensionRequest with zero values",
            Deny,
            simple(
                jane(),
                attributes(&[seq(&[oid(EXTENSION_REQUEST), set(&[])])]),
            ),
        ),
        case(
            "extensionRequest with two values",
            Deny,
            simple(
                jane(),
                attributes(&[seq(&[
                    oid(EXTENSION_REQUEST),
                    set_of(&[
                        seq(&[san(&[dns("jane.example.com")])]),
                        seq(&[san(&[dns("admin.example.com")])]),
                    ]),
                ])]),
            ),
        ),
        case(
            "extensionRequest value followed by a stray byte",
            Deny,
            simple(
                jane(),
                attributes(&[seq(&[
                    oid(EXTENSION_REQUEST),
                    tlv(
                        SET,
                        &cat(&[seq(&[san(&[dns("admin.example.com")])]), vec![0]]),
                    ),
                ])]),
            ),
        ),
        case(
            "undecodable attribute with the extensionRequest OID (values in a SEQUENCE)",
            Deny,
            simple(
                jane(),
                attributes(&[seq(&[
                    oid(EXTENSION_REQUEST),
                    seq(&[seq(&[san(&[dns("admin.example.com")])])]),
                ])]),
            ),
        ),
        case(
            "unsorted SET OF attributes",
            Deny,
            simple(
                jane(),
                tlv(
                    0xa0,
                    &cat(&[
                        extension_request(&[san(&[dns("jane.example.com")])]),
                        seq(&[oid(CHALLENGE_PASSWORD), set(&[printable("secret")])]),
                    ]),
                ),
            ),
        ),
        // The extensions.
        case(
            "SAN extension twice",
            Deny,
            simple(
                jane(),
                attributes(&[extension_request(&[
                    san(&[dns("jane.example.com")]),
                    san(&[dns("admin.example.com")]),
                ])]),
            ),
        ),
        case(
            "SAN with bytes after the SEQUENCE inside the OCTET STRING (Go ignores them)",
            Deny,
            simple(
                jane(),
                attributes(&[extension_request(&[extension(
                    SAN,
                    None,
                    &cat(&[seq(&[dns("jane.example.com")]), dns("admin.example.com")]),
                )])]),
            ),
        ),
        case(
            "SAN with a constructed [2] dNSName",
            Deny,
            simple(jane(), with_sans(&[tlv(0xa2, b"admin.example.com")])),
        ),
        case(
            "SAN with an otherName (UPN)",
            Deny,
            simple(
                jane(),
                with_sans(&[tlv(
                    0xa0,
                    &cat(&[
                        oid(&[1, 3, 6, 1, 4, 1, 311, 20, 2, 3]),
                        tlv(0xa0, &utf8("admin@corp")),
                    ]),
                )]),
            ),
        ),
        case(
            "SAN IP address of 5 bytes",
            Deny,
            simple(jane(), with_sans(&[ip(&[10, 0, 0, 1, 9])])),
        ),
        case(
            "SAN IPv4-mapped IPv6 address, read as the IPv4 address (as Go reads it)",
            Accept,
            simple(
                jane(),
                with_sans(&[ip(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1])]),
            ),
        ),
        case(
            "SAN URI whose port is not a number (Go's url.Parse: invalid port)",
            Deny,
            simple(jane(), with_sans(&[uri("spiffe://cluster.local:x/ns/a")])),
        ),
        case(
            "SAN URI with user info and an IP literal host",
            Deny,
            simple(jane(), with_sans(&[uri("https://admin@[::1]/x")])),
        ),
        case(
            "SAN URI with a space",
            Deny,
            simple(jane(), with_sans(&[uri("spiffe://cluster.local/a b")])),
        ),
        case(
            "control: SAN URI with a port, a query and a fragment",
            Accept,
            simple(
                jane(),
                with_sans(&[uri("https://svc.example.com:8443/a/b?c=d#e")]),
            ),
        ),
        case(
            "SAN dNSName with a non-ASCII byte",
            Deny,
            simple(jane(), with_sans(&[tlv(0x82, b"jan\xe9.example.com")])),
        ),
        case(
            "unknown critical extension",
            Deny,
            simple(
                jane(),
                attributes(&[extension_request(&[extension(
                    &[1, 3, 6, 1, 4, 1, 99999, 2],
                    Some(tlv(BOOLEAN, &[0xff])),
                    &null(),
                )])]),
            ),
        ),
        case(
            "extension with critical FALSE encoded (DER omits DEFAULT)",
            Deny,
            simple(
                jane(),
                attributes(&[extension_request(&[extension(
                    SAN,
                    Some(tlv(BOOLEAN, &[0])),
                    &seq(&[dns("jane.example.com")]),
                )])]),
            ),
        ),
        case(
            "extension with critical TRUE encoded as 0x01",
            Deny,
            simple(
                jane(),
                attributes(&[extension_request(&[extension(
                    SAN,
                    Some(tlv(BOOLEAN, &[1])),
                    &seq(&[dns("jane.example.com")]),
                )])]),
            ),
        ),
        // Trailing bytes at every level.
        case("bytes after the outer SEQUENCE", Deny, |k: &Keys| {
            let mut der = simple(jane(), no_attributes())(k);
            der.extend(null());
            der
        }),
        case(
            "element after the signature inside the outer SEQUENCE",
            Deny,
            |k: &Keys| {
                let info = info(&jane(), &k.spki(Key::P256), &no_attributes());
                seq(&[
                    info.clone(),
                    k.algorithm(Key::P256),
                    bits(&k.sign(Key::P256, &info)),
                    null(),
                ])
            },
        ),
        case(
            "element after the attributes inside CertificationRequestInfo",
            Deny,
            |k: &Keys| {
                let info = seq(&[
                    int(0),
                    jane(),
                    k.spki(Key::P256),
                    no_attributes(),
                    utf8("admin"),
                ]);
                k.request(Key::P256, &info)
            },
        ),
        case(
            "element after the last RDN inside the Name",
            Deny,
            simple(
                seq(&[rdn(&[atv(CN, utf8("jane"))]), null()]),
                no_attributes(),
            ),
        ),
        case(
            "element after the ATV inside an RDN",
            Deny,
            simple(
                seq(&[tlv(SET, &cat(&[atv(CN, utf8("jane")), null()]))]),
                no_attributes(),
            ),
        ),
        case(
            "element after the value inside an ATV",
            Deny,
            simple(
                seq(&[rdn(&[seq(&[oid(CN), utf8("jane"), utf8("admin")])])]),
                no_attributes(),
            ),
        ),
        case(
            "element after the BIT STRING inside the SPKI",
            Deny,
            |k: &Keys| {
                let spki = seq(&[
                    seq(&[oid(EC_PUBLIC_KEY), oid(P256)]),
                    bits(&k.p256_point()),
                    null(),
                ]);
                k.request(Key::P256, &info(&jane(), &spki, &no_attributes()))
            },
        ),
        // Lengths.
        case(
            "long-form length on a short CN",
            Deny,
            simple(
                name(&[
                    atv(CN, tlv_long(UTF8_STRING, b"jane", 1)),
                    atv(O, utf8("developers")),
                ]),
                no_attributes(),
            ),
        ),
        case(
            "non-minimal long-form length on the outer SEQUENCE",
            Deny,
            |k: &Keys| {
                let info = info(&jane(), &k.spki(Key::P256), &no_attributes());
                tlv_long(
                    SEQUENCE,
                    &cat(&[
                        info.clone(),
                        k.algorithm(Key::P256),
                        bits(&k.sign(Key::P256, &info)),
                    ]),
                    3,
                )
            },
        ),
        case(
            "indefinite-length Name",
            Deny,
            simple(
                tlv_indefinite(
                    SEQUENCE,
                    &cat(&[
                        rdn(&[atv(CN, utf8("jane"))]),
                        rdn(&[atv(O, utf8("developers"))]),
                    ]),
                ),
                no_attributes(),
            ),
        ),
        case(
            "SPKI header claims one byte fewer than its content",
            Deny,
            |k: &Keys| {
                let spki = k.spki(Key::P256);
                let content = &spki[2..];
                let short = tlv_claiming(SEQUENCE, content.len() - 1, content);
                k.request(Key::P256, &info(&jane(), &short, &no_attributes()))
            },
        ),
        case(
            "SPKI header claims one byte more than its content",
            Deny,
            |k: &Keys| {
                let spki = k.spki(Key::P256);
                let content = &spki[2..];
                let long = tlv_claiming(SEQUENCE, content.len() + 1, content);
                k.request(Key::P256, &info(&jane(), &long, &no_attributes()))
            },
        ),
        case(
            "Name header claims fewer bytes than its RDNs",
            Deny,
            |k: &Keys| {
                let rdns = cat(&[
                    rdn(&[atv(CN, utf8("jane"))]),
                    rdn(&[atv(O, utf8("developers"))]),
                ]);
                let subject = tlv_claiming(SEQUENCE, rdn(&[atv(CN, utf8("jane"))]).len(), &rdns);
                k.request(
                    Key::P256,
                    &info(&subject, &k.spki(Key::P256), &no_attributes()),
                )
            },
        ),
        // The version.
        case(
            "version as a non-minimal INTEGER (02 02 00 00)",
            Deny,
            |k: &Keys| {
                let info = seq(&[
                    tlv(INTEGER, &[0, 0]),
                    jane(),
                    k.spki(Key::P256),
                    no_attributes(),
                ]);
                k.request(Key::P256, &info)
            },
        ),
        case("version 1", Deny, |k: &Keys| {
            let info = seq(&[int(1), jane(), k.spki(Key::P256), no_attributes()]);
            k.request(Key::P256, &info)
        }),
        case("version 2", Deny, |k: &Keys| {
            let info = seq(&[int(2), jane(), k.spki(Key::P256), no_attributes()]);
            k.request(Key::P256, &info)
        }),
        // The key and the signature.
        case("RSA key without the NULL parameters", Deny, |k: &Keys| {
            let spki = seq(&[
                seq(&[oid(RSA_ENCRYPTION)]),
                bits(k.rsa.public_key().as_ref()),
            ]);
            k.request(Key::Rsa, &info(&jane(), &spki, &no_attributes()))
        }),
        case("EC key with a compressed point", Deny, |k: &Keys| {
            let point = k.p256_point();
            let mut compressed = vec![0x02 | (point[64] & 1)];
            compressed.extend_from_slice(&point[1..33]);
            k.request(
                Key::P256,
                &info(&jane(), &spki_ec(&compressed), &no_attributes()),
            )
        }),
        case(
            "signature BIT STRING with 1 unused bit (a zero one: valid DER padding)",
            Deny,
            |k: &Keys| {
                let info = info(&jane(), &k.spki(Key::P256), &no_attributes());
                // ECDSA is randomized: sign until the last bit, declared unused, is zero, so the
                // BIT STRING is well formed and only its meaning differs (Go shifts it right).
                let signature = loop {
                    let signature = k.sign(Key::P256, &info);
                    if signature.last().is_some_and(|b| b & 1 == 0) {
                        break signature;
                    }
                };
                let content = cat(&[vec![1], signature]);
                seq(&[info, k.algorithm(Key::P256), tlv(BIT_STRING, &content)])
            },
        ),
        case("signature over other bytes", Deny, |k: &Keys| {
            let signed = info(&jane(), &k.spki(Key::P256), &no_attributes());
            let other = info(
                &name(&[atv(CN, utf8("jane"))]),
                &k.spki(Key::P256),
                &no_attributes(),
            );
            seq(&[
                signed,
                k.algorithm(Key::P256),
                bits(&k.sign(Key::P256, &other)),
            ])
        }),
    ];
    cases.extend(more);
    cases
}

fn pem_body(pem: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .expect("openssl writes PEM")
        .1
        .contents
}

/// One line for messages: csr-warden's reading.
fn our_summary(
    ours: &Result<CertificateRequest, csr_warden::x509::inspect::InspectError>,
) -> String {
    match ours {
        Err(e) => format!("csr-warden: Deny ({e})"),
        Ok(r) => format!(
            "csr-warden: Accept cn={:?} o={:?} uids={:?} subject=[{}] dns={:?} ips={:?} \
             emails={:?} uris={:?}",
            r.common_name,
            r.organizations,
            go_reader::our_uids(r),
            r.subject_string(),
            r.dns_names,
            r.ip_addresses,
            r.email_addresses,
            r.uris
        ),
    }
}

#[test]
fn csr_warden_reads_every_request_it_accepts_as_go_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Keys::generate();
    let cases = corpus(dir.path());
    assert!(cases.len() >= 40, "the corpus has {} rows", cases.len());
    let ders: Vec<Vec<u8>> = cases.iter().map(|c| (c.build)(&keys)).collect();
    let go_readings = go_reader::read_csrs(&ders);

    let (ca_cert, ca_key) = openssl_ca(dir.path(), KeyKind::P256, 30);
    let ca = CertificateAuthority::load(&ca_cert, &ca_key).expect("CA loads");
    let usages: Vec<String> = USAGES.iter().map(|u| u.to_string()).collect();

    let mut failures: Vec<String> = Vec::new();
    let mut accepted = Vec::new();
    let (mut accept_count, mut deny_count) = (0, 0);
    for ((case, der), go) in cases.iter().zip(&ders).zip(&go_readings) {
        let ours = inspect_der(der);
        // Every row's two readings, shown with --nocapture or when the test fails.
        eprintln!(
            "[{}]\n    {}\n    {}",
            case.name,
            our_summary(&ours),
            go.summary()
        );
        let mut problems = Vec::new();
        match (&ours, case.expect) {
            (Ok(_), Deny) => problems.push("csr-warden accepts it; it must be denied".to_owned()),
            (Err(e), Accept) => {
                problems.push(format!("csr-warden denies it ({e}); it must be accepted"))
            }
            _ => {}
        }
        if let Ok(request) = &ours {
            accept_count += 1;
            problems.extend(go_reader::request_differences(request, go));
            let approved = ApprovedRequest {
                signer_name: SIGNER,
                usages: &usages,
                expiration_seconds: None,
                request,
            };
            match issue(
                &ca,
                &approved,
                LIMITS,
                time::OffsetDateTime::now_utc(),
                random_serial().expect("randomness"),
            ) {
                Ok(certificate) => accepted.push((case, request.clone(), certificate.der)),
                Err(e) => problems.push(format!("accepted, but issuing failed: {e}")),
            }
        } else {
            deny_count += 1;
        }
        if !problems.is_empty() {
            failures.push(format!(
                "[{}] expected {:?}\n    {}\n    {}\n    - {}",
                case.name,
                case.expect,
                our_summary(&ours),
                go.summary(),
                problems.join("\n    - ")
            ));
        }
    }

    // The certificates csr-warden issued, as Go reads them.
    let certificates: Vec<Vec<u8>> = accepted.iter().map(|(_, _, der)| der.clone()).collect();
    let go_certificates = go_reader::read_certs(&certificates);
    for ((case, request, _), go) in accepted.iter().zip(&go_certificates) {
        let problems = go_reader::certificate_differences(
            request,
            go,
            GO_KEY_USAGE_DIGITAL_SIGNATURE,
            &[GO_EXT_KEY_USAGE_CLIENT_AUTH],
        );
        if !problems.is_empty() {
            failures.push(format!(
                "[{}] issued certificate\n    {}\n    - {}",
                case.name,
                go.summary(),
                problems.join("\n    - ")
            ));
        }
    }

    eprintln!(
        "x509_parity: {} rows: csr-warden accepted {accept_count}, denied {deny_count}; {} problems",
        cases.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} rows disagree:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
