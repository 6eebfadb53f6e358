//! Per-CSR cost: parsing + policy decision, and issuing one certificate with P-256, RSA-2048 and
//! Ed25519 CAs, against the floor of the raw signature with the same key.
//! `cargo bench --bench decide_and_issue`; figures in BENCHMARKS.md.

use std::hint::black_box;
use std::path::Path;
use std::process::Command;

use criterion::{Criterion, criterion_group, criterion_main};
use csr_warden::ca::CertificateAuthority;
use csr_warden::config::parse_policy;
use csr_warden::inspect::inspect;
use csr_warden::issue::{ApprovedRequest, issue};
use csr_warden::policy::{ClusterFacts, CsrView, Requester, decide};
use rcgen::SigningKey;

const POLICY: &str = "allowList:\n  - commonName: jane\n    groups: [developers]\n";

fn jane_csr() -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "jane");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "developers");
    params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

/// A CA made by openssl, as operators have them.
fn openssl_ca(dir: &Path, algorithm: &[&str]) -> CertificateAuthority {
    let key = dir.join("ca.key");
    let cert = dir.join("ca.crt");
    let mut genpkey = vec!["genpkey"];
    genpkey.extend(algorithm);
    genpkey.extend(["-out", key.to_str().expect("path")]);
    assert!(
        Command::new("openssl")
            .args(&genpkey)
            .status()
            .expect("openssl")
            .success()
    );
    assert!(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-new",
                "-key",
                key.to_str().expect("p"),
                "-subj",
                "/CN=bench CA",
                "-days",
                "30",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-out",
                cert.to_str().expect("p")
            ])
            .status()
            .expect("openssl")
            .success()
    );
    CertificateAuthority::load(&cert, &key).expect("CA")
}

fn benches(c: &mut Criterion) {
    let policy = parse_policy(POLICY, Path::new("bench.yaml")).expect("policy");
    let pem = jane_csr();
    let usages = vec!["client auth".to_owned()];

    c.bench_function("inspect+decide (P-256 CSR, allow-listed)", |b| {
        b.iter(|| {
            let view = CsrView {
                name: "jane".into(),
                signer_name: "kubernetes.io/kube-apiserver-client".into(),
                usages: usages.clone(),
                expiration_seconds: Some(3600),
                requester: Requester {
                    username: "jane".into(),
                    uid: None,
                    groups: vec![],
                },
                request: inspect(black_box(pem.as_bytes())),
            };
            black_box(decide(&view, &ClusterFacts::default(), &policy))
        })
    });

    let request = inspect(pem.as_bytes()).expect("request");
    let approved = ApprovedRequest {
        signer_name: "kubernetes.io/kube-apiserver-client",
        usages: &usages,
        expiration_seconds: Some(3600),
        request: &request,
    };
    for (name, algorithm) in [
        (
            "ECDSA P-256",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
        ),
        (
            "RSA-2048",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
        ),
        ("Ed25519", &["-algorithm", "ED25519"][..]),
    ] {
        let dir = tempfile::tempdir().expect("dir");
        let ca = openssl_ca(dir.path(), algorithm);
        let now = time::OffsetDateTime::now_utc();
        c.bench_function(&format!("issue ({name} CA)"), |b| {
            b.iter(|| {
                black_box(issue(&ca, &approved, policy.signing, now, [1; 16]).expect("issue"))
            })
        });
        // The floor: one signature over a TBSCertificate-sized message with the same key.
        let message = vec![0x5a_u8; 600];
        c.bench_function(&format!("raw signature ({name} CA key)"), |b| {
            b.iter(|| black_box(ca.issuer().key().sign(black_box(&message)).expect("sign")))
        });
    }
}

criterion_group!(decide_and_issue, benches);
criterion_main!(decide_and_issue);
