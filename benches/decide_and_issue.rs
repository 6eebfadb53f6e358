//! Per-CSR cost: parsing + policy decision, and issuing one certificate with P-256, P-384,
//! RSA-2048 and Ed25519 CAs, against the floor of the raw signature with the same key. The CSR is
//! a user in two groups (/CN=maria/O=developers/O=ops), its subject carried over whole.
//! With SoftHSM2 installed, the same with the CA key in a PKCS#11 token (`pkcs11` rows).
//! `cargo bench --bench decide_and_issue`; figures in BENCHMARKS.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use csr_warden::policy::file::parse_policy;
use csr_warden::policy::{CsrView, Requester, decide};
use csr_warden::x509::ca::CertificateAuthority;
use csr_warden::x509::inspect::inspect;
use csr_warden::x509::issue::{ApprovedRequest, issue};
use csr_warden::x509::pkcs11::TokenKeyKind;
use support::softhsm::SoftHsm;
use support::{KeyKind, openssl_ca, openssl_csr, unprivileged};

const POLICY: &str = "allowList:\n  - commonName: maria\n    groups: [developers, ops]\n";

fn benches(c: &mut Criterion) {
    let policy = parse_policy(POLICY, Path::new("bench.yaml")).expect("policy");
    let csr_dir = tempfile::tempdir().expect("dir");
    // A P-256 CSR made by openssl, as users make them, for a user in two groups.
    let pem = openssl_csr(
        csr_dir.path(),
        "maria",
        KeyKind::P256,
        "/CN=maria/O=developers/O=ops",
        None,
        &[],
    );
    let usages = vec!["client auth".to_owned()];
    let view_of = |pem: &str| CsrView {
        name: "maria".into(),
        signer_name: "kubernetes.io/kube-apiserver-client".into(),
        usages: usages.clone(),
        expiration_seconds: Some(3600),
        requester: Requester {
            username: "maria".into(),
            uid: None,
            groups: vec![],
        },
        request: inspect(black_box(pem.as_bytes())),
    };
    // The cluster's answers to the privilege ceiling, as the controller has them (the reviews
    // themselves are I/O, outside this bench): no to every check.
    let facts = unprivileged();
    assert!(decide(&view_of(&pem), &facts, &policy).decision.verb() == "approve");

    // The two halves alone: reading the request (signature included), and the policy on it.
    c.bench_function("inspect (P-256 CSR, two groups)", |b| {
        b.iter(|| black_box(inspect(black_box(pem.as_bytes()))))
    });
    let view = view_of(&pem);
    c.bench_function("decide (allow-listed, ceiling answered)", |b| {
        b.iter(|| black_box(decide(black_box(&view), &facts, &policy)))
    });

    c.bench_function(
        "inspect+decide (P-256 CSR, two groups, allow-listed)",
        |b| b.iter(|| black_box(decide(&view_of(&pem), &facts, &policy))),
    );

    let request = inspect(pem.as_bytes()).expect("request");
    let approved = ApprovedRequest {
        signer_name: "kubernetes.io/kube-apiserver-client",
        usages: &usages,
        expiration_seconds: Some(3600),
        request: &request,
    };
    let mut cas = Vec::new();
    let ca_dir = tempfile::tempdir().expect("dir");
    for (name, kind) in [
        ("ECDSA P-256", KeyKind::P256),
        ("ECDSA P-384", KeyKind::P384),
        ("RSA-2048", KeyKind::Rsa(2048)),
        ("Ed25519", KeyKind::Ed25519),
    ] {
        // A CA made by openssl, as operators have them.
        let dir = ca_dir.path().join(name.replace(' ', "-"));
        std::fs::create_dir(&dir).expect("dir");
        let (cert, key) = openssl_ca(&dir, kind, 30);
        cas.push((
            format!("{name} CA"),
            CertificateAuthority::load(&cert, &key).expect("CA"),
            200,
        ));
    }
    // The same kinds with the key in a SoftHSM2 token (generated there, never extractable),
    // signing through C_Sign: what the `pkcs11` rows measure. Skipped without SoftHSM.
    if let Some(hsm) = SoftHsm::get("decide_and_issue pkcs11 rows") {
        let token = hsm.token("bench", ca_dir.path());
        for (name, object, kind) in [
            ("ECDSA P-256", "p256", TokenKeyKind::EcdsaP256),
            ("ECDSA P-384", "p384", TokenKeyKind::EcdsaP384),
            ("RSA-2048", "rsa", TokenKeyKind::Rsa),
            ("Ed25519", "ed25519", TokenKeyKind::Ed25519),
        ] {
            let (cert, _) = token.generate_ca(object, kind, ca_dir.path());
            let ca = CertificateAuthority::load_with_token(&cert, &token.config(object))
                .expect("token CA");
            // A token signature costs far more than a file key's: fewer per round.
            cas.push((format!("{name} CA, pkcs11 SoftHSM"), ca, 50));
        }
    }
    for (name, ca, per_round) in &cas {
        let now = time::OffsetDateTime::now_utc();
        c.bench_function(&format!("issue ({name})"), |b| {
            b.iter(|| black_box(issue(ca, &approved, policy.signing, now, [1; 16]).expect("issue")))
        });
        if name.starts_with("ECDSA P-256") {
            // What one CSR costs csr-warden from request to certificate.
            let label = name.replace("ECDSA P-256 CA", "P-256 CSR and CA");
            c.bench_function(&format!("inspect+decide+issue ({label})"), |b| {
                b.iter(|| {
                    let view = view_of(&pem);
                    let verdict = decide(&view, &facts, &policy);
                    let request = view.request.as_ref().expect("request");
                    let approved = ApprovedRequest {
                        signer_name: "kubernetes.io/kube-apiserver-client",
                        usages: &usages,
                        expiration_seconds: Some(3600),
                        request,
                    };
                    black_box((
                        verdict,
                        issue(ca, &approved, policy.signing, now, [1; 16]).expect("issue"),
                    ))
                })
            });
        }
        // The floor: one signature with the same key over a message as long as the real
        // TBSCertificate (what `issue` signs).
        let issued = issue(ca, &approved, policy.signing, now, [1; 16]).expect("issue");
        let message = vec![0x5a_u8; tbs_len(&issued.pem)];
        let raw_name = name.replace(" CA", " CA key");
        c.bench_function(&format!("raw signature ({raw_name})"), |b| {
            b.iter(|| black_box(ca.sign(black_box(&message)).expect("sign")))
        });
        // The ratio, measured interleaved (rounds of each, alternating) so that this VM's
        // drifting clock speed hits both alike: the median round's issue / raw.
        let mut ratios: Vec<f64> = (0..40)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..*per_round {
                    black_box(issue(ca, &approved, policy.signing, now, [1; 16]).expect("issue"));
                }
                let issuing = start.elapsed();
                let start = Instant::now();
                for _ in 0..*per_round {
                    black_box(ca.sign(black_box(&message)).expect("sign"));
                }
                issuing.as_secs_f64() / start.elapsed().as_secs_f64()
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "ratio issue / raw signature ({name}): median {:.2} (quartiles {:.2} .. {:.2}), TBSCertificate {} bytes",
            ratios[ratios.len() / 2],
            ratios[ratios.len() / 4],
            ratios[3 * ratios.len() / 4],
            message.len()
        );
    }
}

/// Length of the TBSCertificate inside a PEM certificate.
fn tbs_len(pem: &str) -> usize {
    use x509_parser::prelude::FromDer;
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(&block.contents).expect("x509");
    cert.tbs_certificate.as_ref().len()
}

criterion_group!(decide_and_issue, benches);
criterion_main!(decide_and_issue);
