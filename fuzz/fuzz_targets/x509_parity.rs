//! Differential: csr-warden's reading of a request against Go's crypto/x509 (what kube-apiserver
//! and kube-controller-manager read). The input is a CertificationRequestInfo; it is signed with
//! a fixed P-256 key (the seeds carry that key, so mutations keep a verifiable one) and wrapped
//! into a CertificationRequest. Whenever csr-warden accepts it, Go must read the same identity
//! from it and from the certificate csr-warden issues for it; else this panics.
//!
//! Go's reader (tests/go/x509read) runs as one long-lived process, its path in
//! CSR_WARDEN_GO_READER (scripts/fuzz builds it).
#![no_main]

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use csr_warden::x509::ca::CertificateAuthority;
use csr_warden::x509::inspect::inspect_der;
use csr_warden::x509::issue::{ApprovedRequest, issue};
use csr_warden::policy::SigningLimits;
use libfuzzer_sys::fuzz_target;

// The comparisons of tests/x509_parity.rs, shared; its build helpers go unused here.
#[allow(dead_code)]
#[path = "../../tests/support/go_reader.rs"]
mod go_reader;

/// The fixed P-256 key (PKCS#8) whose public key the seeds in fuzz/corpus/x509_parity carry.
/// A test key, made for this target only.
const KEY_PKCS8: &[u8] = &[
    0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
    0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x6d, 0x30, 0x6b, 0x02,
    0x01, 0x01, 0x04, 0x20, 0xca, 0x2e, 0x67, 0x01, 0x45, 0xd0, 0xa9, 0x4c, 0x01, 0xd2, 0xee, 0x7d,
    0x03, 0xea, 0x21, 0xd1, 0x3f, 0xcf, 0xda, 0x9c, 0x5b, 0xe4, 0xdc, 0xb1, 0x38, 0x66, 0x97, 0xec,
    0xe2, 0xbb, 0x1d, 0xe8, 0xa1, 0x44, 0x03, 0x42, 0x00, 0x04, 0xa3, 0xda, 0xd3, 0x71, 0x55, 0xba,
    0x5e, 0x2e, 0x80, 0x4e, 0x8a, 0x04, 0xdb, 0xbd, 0xf5, 0x16, 0x32, 0xd8, 0x67, 0x50, 0x2b, 0x48,
    0x93, 0x3a, 0x3e, 0xc5, 0x1a, 0xf7, 0x28, 0xa6, 0x44, 0xbb, 0x00, 0x4c, 0x36, 0x31, 0xad, 0x04,
    0x46, 0x6d, 0x56, 0x2c, 0xc2, 0xc8, 0x80, 0x65, 0xff, 0x87, 0xe6, 0xc5, 0x18, 0x3e, 0x1e, 0xda,
    0x1c, 0x83, 0x05, 0x34, 0x20, 0x42, 0x21, 0x2b, 0x5b, 0x42,
];

/// ecdsa-with-SHA256, no parameters.
const ECDSA_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];

const USAGES: [&str; 2] = ["digital signature", "client auth"];

struct Fixture {
    key: EcdsaKeyPair,
    ca: CertificateAuthority,
    go: Mutex<go_reader::GoReader>,
    usages: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let reader = std::env::var_os("CSR_WARDEN_GO_READER").expect(
            "CSR_WARDEN_GO_READER must name a built tests/go/x509read (./scripts/fuzz builds it)",
        );
        Fixture {
            key: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, KEY_PKCS8)
                .expect("the embedded key"),
            ca: test_ca(),
            go: Mutex::new(go_reader::GoReader::spawn(Path::new(&reader))),
            usages: USAGES.iter().map(|u| u.to_string()).collect(),
        }
    })
}

/// A throwaway CA for the certificates issued from accepted inputs.
fn test_ca() -> CertificateAuthority {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "x509_parity fuzz CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key).expect("CA certificate");
    CertificateAuthority::from_pem(
        &cert.pem(),
        &key.serialize_pem(),
        Path::new("fuzz-ca.crt"),
        Path::new("fuzz-ca.key"),
    )
    .expect("CA loads")
}

/// Tag, minimal definite length, content.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    if content.len() < 0x80 {
        out.push(content.len() as u8);
    } else {
        let bytes: Vec<u8> = content
            .len()
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fuzz_target!(|info: &[u8]| {
    let fixture = fixture();
    let Ok(signature) = fixture.key.sign(&SystemRandom::new(), info) else {
        return;
    };
    let mut bits = vec![0];
    bits.extend_from_slice(signature.as_ref());
    let der = tlv(0x30, &[info, ECDSA_SHA256, &tlv(0x03, &bits)].concat());
    let Ok(request) = inspect_der(&der) else {
        return;
    };
    let mut go = fixture.go.lock().expect("Go reader");
    let differences = go_reader::request_differences(&request, &go.csr(&der));
    assert!(
        differences.is_empty(),
        "csr-warden accepts a request Go reads differently: {differences:#?}\nrequest: {der:02x?}"
    );
    let approved = ApprovedRequest {
        signer_name: "kubernetes.io/kube-apiserver-client",
        usages: &fixture.usages,
        expiration_seconds: None,
        request: &request,
    };
    let Ok(certificate) = issue(
        &fixture.ca,
        &approved,
        SigningLimits {
            default_expiration_seconds: 3600,
            max_expiration_seconds: 3600,
        },
        time::OffsetDateTime::now_utc(),
        [0x42; 16],
    ) else {
        return;
    };
    let differences = go_reader::certificate_differences(
        &request,
        &go.cert(&certificate.der),
        go_reader::GO_KEY_USAGE_DIGITAL_SIGNATURE,
        &[go_reader::GO_EXT_KEY_USAGE_CLIENT_AUTH],
    );
    assert!(
        differences.is_empty(),
        "Go reads the certificate csr-warden issued differently: {differences:#?}\nrequest: {der:02x?}"
    );
});
