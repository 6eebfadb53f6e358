//! Pod certificates, the pure part (`src/policy/pods.rs`, `x509::issue::issue_pod_certificate`)
//! and their policy keys: one row per behaviour.

use crate::support;

use std::path::Path;

use csr_warden::policy::Reason;
use csr_warden::policy::file::parse_policy;
use csr_warden::policy::pods::*;
use csr_warden::x509::ca::{CertificateAuthority, random_serial};
use csr_warden::x509::inspect::inspect_der;
use csr_warden::x509::issue::issue_pod_certificate;
use support::*;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

const SIGNER: &str = "example.com/workload-identity";

fn policy_text(extra: &str) -> String {
    format!(
        "podCertificates:\n  - signerName: {SIGNER}\n    ca: {{cert: /ca.crt, key: /ca.key}}\n    trustDomain: cluster.local\n    allow:\n      - {{namespace: payments, serviceAccounts: [api, worker]}}\n      - {{namespace: apps}}\n    maxExpirationSeconds: 7200\n{extra}"
    )
}

fn signer() -> PodSigner {
    let policy = parse_policy(&policy_text(""), Path::new("pods.yaml")).expect("policy");
    policy.pod_signers[SIGNER].clone()
}

/// A DER PKCS#10 request with an empty subject for a key openssl makes.
fn stub(dir: &Path, name: &str, key: &[&str]) -> Vec<u8> {
    let out = dir.join(format!("{name}.der"));
    let keyout = dir.join(format!("{name}.key"));
    let mut args = vec!["req", "-new", "-nodes", "-subj", "/", "-outform", "DER"];
    args.extend_from_slice(key);
    args.extend(["-keyout", keyout.to_str().expect("path")]);
    args.extend(["-out", out.to_str().expect("path")]);
    openssl(&args);
    std::fs::read(out).expect("der")
}

const P256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

fn view(namespace: &str, account: &str, der: &[u8], annotations: &[&str]) -> PcrView {
    PcrView {
        namespace: namespace.into(),
        name: "pcr".into(),
        signer_name: SIGNER.into(),
        pod_name: "pod-0".into(),
        service_account_name: account.into(),
        node_name: "node-1".into(),
        max_expiration_seconds: Some(86_400),
        annotation_keys: annotations.iter().map(|a| a.to_string()).collect(),
        request: inspect_der(der),
    }
}

/// (case, namespace, service account, request, annotations, SPIFFE ID and lifetime or reason)
type Row<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a [u8],
    &'a [&'a str],
    Result<(String, i64), Reason>,
);

#[test]
fn who_gets_a_certificate_and_why_the_others_are_denied() {
    let dir = tempfile::tempdir().expect("dir");
    let p256 = stub(dir.path(), "p256", P256);
    let p521 = stub(
        dir.path(),
        "p521",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"],
    );
    let rsa2048 = stub(dir.path(), "rsa2048", &["-newkey", "rsa:2048"]);
    let rsa3072 = stub(dir.path(), "rsa3072", &["-newkey", "rsa:3072"]);
    let ed25519 = stub(dir.path(), "ed25519", &["-newkey", "ed25519"]);
    let issue = |id: &str| Ok::<_, Reason>((format!("spiffe://cluster.local/ns/{id}"), 7200));
    let rows: Vec<Row> = vec![
        (
            "listed service account",
            "payments",
            "api",
            &p256,
            &[],
            issue("payments/sa/api"),
        ),
        (
            "another listed one",
            "payments",
            "worker",
            &ed25519,
            &[],
            issue("payments/sa/worker"),
        ),
        (
            "any service account of an open namespace",
            "apps",
            "anyone",
            &rsa3072,
            &[],
            issue("apps/sa/anyone"),
        ),
        (
            "a service account not listed",
            "payments",
            "intruder",
            &p256,
            &[],
            Err(Reason::ServiceAccountNotAllowed),
        ),
        (
            "a namespace not listed",
            "kube-system",
            "api",
            &p256,
            &[],
            Err(Reason::NamespaceNotAllowed),
        ),
        (
            "P-521, which the API allows and csr-warden does not sign",
            "apps",
            "a",
            &p521,
            &[],
            Err(Reason::UnsupportedKeyType),
        ),
        (
            "RSA-2048, not a pod certificate key type",
            "apps",
            "a",
            &rsa2048,
            &[],
            Err(Reason::UnsupportedKeyType),
        ),
        (
            "not a PKCS#10 request",
            "apps",
            "a",
            b"garbage",
            &[],
            Err(Reason::InvalidRequest),
        ),
        (
            "annotations nobody understands",
            "apps",
            "a",
            &p256,
            &["example.com/wish"],
            Err(Reason::UnrecognizedAnnotations),
        ),
    ];
    let signer = signer();
    for (case, namespace, account, der, annotations, expected) in rows {
        let decision = decide(&view(namespace, account, der, annotations), &signer);
        let got = match &decision {
            PodDecision::Issue {
                spiffe_id,
                max_lifetime_seconds,
            } => Ok((spiffe_id.clone(), *max_lifetime_seconds)),
            PodDecision::Deny { reason, .. } => Err(*reason),
        };
        assert_eq!(got, expected, "{case}: {decision:?}");
    }
    // The request's own maximum, when shorter than the policy's, wins.
    let mut short = view("apps", "a", &p256, &[]);
    short.max_expiration_seconds = Some(3600);
    assert!(matches!(
        decide(&short, &signer),
        PodDecision::Issue {
            max_lifetime_seconds: 3600,
            ..
        }
    ));
}

#[test]
fn validity_follows_the_api_rules_and_stops_at_the_ca() {
    let now = OffsetDateTime::now_utc();
    let far = now + Duration::days(365);
    let times = validity(7200, now, far).expect("times");
    assert!(
        now - times.not_before < Duration::minutes(5),
        "within 5 minutes of now"
    );
    assert_eq!(times.not_after - times.not_before, Duration::seconds(7200));
    assert!(times.begin_refresh_at >= times.not_before + Duration::minutes(10));
    assert!(times.begin_refresh_at <= times.not_after - Duration::minutes(10));
    // Cut off at the CA's expiry, but never below the API's hour.
    let soon = now + Duration::minutes(90);
    let cut = validity(86_400, now, soon).expect("times");
    assert_eq!(cut.not_after, soon);
    assert!(validity(86_400, now, now + Duration::minutes(50)).is_none());
}

#[test]
fn the_certificate_names_the_spiffe_id_alone_for_the_requests_key() {
    let dir = tempfile::tempdir().expect("dir");
    let ca_files = openssl_ca(dir.path(), KeyKind::P256, 365);
    let ca = CertificateAuthority::load(&ca_files.0, &ca_files.1).expect("ca");
    let der = stub(dir.path(), "leaf", P256);
    let request = inspect_der(&der).expect("request");
    let id = "spiffe://cluster.local/ns/payments/sa/api";
    let now = OffsetDateTime::now_utc();
    let times = validity(3600, now, ca.not_after()).expect("times");
    let issued = issue_pod_certificate(&ca, &request, id, times, random_serial().expect("serial"))
        .expect("issued");
    let (_, cert) = X509Certificate::from_der(&issued.der).expect("parse");
    assert!(cert.subject().iter().next().is_none(), "empty subject");
    assert_eq!(
        cert.public_key().raw,
        request.public_key_der.as_slice(),
        "the request's key"
    );
    let mut uris = Vec::new();
    for extension in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = extension.parsed_extension() {
            assert!(extension.critical, "SAN critical with an empty subject");
            for name in &san.general_names {
                match name {
                    GeneralName::URI(uri) => uris.push(uri.to_string()),
                    other => panic!("only a URI SAN, found {other:?}"),
                }
            }
        }
    }
    assert_eq!(uris, [id]);
    assert_eq!(
        cert.validity().not_after.timestamp(),
        times.not_after.unix_timestamp()
    );
    let text = openssl_text(dir.path(), &issued.pem);
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication")
            || (text.contains("TLS Web Server Authentication")
                && text.contains("TLS Web Client Authentication")),
        "{text}"
    );
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(openssl_verifies(
        dir.path(),
        &ca_files.0,
        &issued.pem,
        "sslserver"
    ));
}

#[test]
fn policy_mistakes_are_refused_with_their_line() {
    let rows: &[(&str, String, &str)] = &[
        (
            "a trust domain with a scheme",
            policy_text("").replace("trustDomain: cluster.local", "trustDomain: spiffe://x"),
            "not a SPIFFE trust domain",
        ),
        (
            "a kubernetes.io pod signer",
            policy_text("").replace(SIGNER, "kubernetes.io/pods"),
            "kubernetes.io signers are the Kubernetes project's",
        ),
        (
            "a lifetime the API refuses",
            policy_text("").replace("maxExpirationSeconds: 7200", "maxExpirationSeconds: 600"),
            "outside what the API accepts",
        ),
        (
            "no namespace allowed",
            format!(
                "podCertificates:\n  - signerName: {SIGNER}\n    ca: {{cert: /c, key: /k}}\n    trustDomain: td\n"
            ),
            "allows no namespace",
        ),
        (
            "the name of a CSR signer",
            format!("signerNames: [{SIGNER}]\n{}", policy_text("")),
            "both a CSR signer and a pod-certificate signer",
        ),
        (
            "a trust bundle for an approve-only signer",
            "signers:\n  - name: kubernetes.io/kubelet-serving\n    role: approve\n    trustBundle: true\n".to_owned(),
            "only a signer csr-warden signs for has a CA to publish",
        ),
    ];
    for (case, text, expected) in rows {
        let error = parse_policy(text, Path::new("pods.yaml")).expect_err(case);
        assert!(error.to_string().contains(expected), "{case}: {error}");
    }
    // And what is right is taken as written.
    let policy = parse_policy(
        &format!(
            "signers:\n  - name: example.com/client\n    ca: {{cert: /c, key: /k}}\n    trustBundle: true\n{}    trustBundle: true\n",
            policy_text("")
        ),
        Path::new("pods.yaml"),
    )
    .expect("valid");
    let default = csr_warden::policy::CaPaths {
        cert: "/d.crt".into(),
        key: "/d.key".into(),
        pkcs11: None,
    };
    let published: Vec<&str> = policy
        .trust_bundle_signers(&default)
        .map(|(s, _)| s)
        .collect();
    assert_eq!(published, ["example.com/client", SIGNER]);
}
