//! Hostile and malformed input: every nasty request gets a clear Deny reason, and the controller
//! keeps running and deciding the honest requests beside them.

use crate::support;

use std::path::Path;

use csr_warden::policy::file::parse_policy;
use csr_warden::policy::*;
use csr_warden::x509::inspect::{InspectError, inspect};
use support::*;

fn policy() -> Policy {
    parse_policy(POLICY, Path::new("p.yaml")).expect("policy")
}

fn decide_client(pem: &str, expiration: Option<i32>) -> Decision {
    let csr = CsrView {
        name: "hostile".into(),
        signer_name: SIGNER_KUBE_APISERVER_CLIENT.into(),
        usages: vec!["client auth".into()],
        expiration_seconds: expiration,
        requester: Requester {
            username: "jane".into(),
            uid: None,
            groups: vec![],
        },
        request: inspect(pem.as_bytes()),
    };
    decide(&csr, &unprivileged(), &policy()).decision
}

fn assert_denied(what: &str, decision: &Decision, reason: Reason) {
    match decision {
        Decision::Deny {
            reason: got,
            message,
        } => {
            assert_eq!(*got, reason, "{what}: {message}");
            assert!(!message.is_empty(), "{what}: the message must say why");
        }
        other => panic!("{what}: expected Deny {reason}, got {other:?}"),
    }
}

#[test]
fn malformed_pem_and_der_are_denied_with_reasons() {
    let dir = tempfile::tempdir().expect("dir");
    let good = rcgen_csr("jane", &["developers"], &[]);
    let (ca_cert, _) = openssl_ca(dir.path(), KeyKind::P256, 1);
    let certificate = std::fs::read_to_string(ca_cert).expect("cert");
    let garbage_der =
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
    let cases: Vec<(&str, String)> = vec![
        ("trailing junk", format!("{good}junk")),
        ("two blocks", format!("{good}{good}")),
        ("a CERTIFICATE", certificate),
        ("DER garbage", garbage_der.into()),
        (
            "binary",
            String::from_utf8_lossy(&[0xff, 0x00, 0x13, 0x37]).into_owned(),
        ),
        ("64 KiB of nothing", "A".repeat(70 * 1024)),
        ("empty", String::new()),
    ];
    for (what, pem) in cases {
        assert_denied(
            what,
            &decide_client(&pem, Some(3600)),
            Reason::InvalidRequest,
        );
    }
}

#[test]
fn hostile_subjects_are_denied() {
    assert_denied(
        "NUL in CN",
        &decide_client(&rcgen_csr("jane\u{0}admin", &["developers"], &[]), None),
        Reason::InvalidRequest,
    );
    assert_denied(
        "newline in CN",
        &decide_client(&rcgen_csr("jane\nadmin", &["developers"], &[]), None),
        Reason::InvalidRequest,
    );
    assert_denied(
        "16 KiB CN",
        &decide_client(
            &rcgen_csr(&"j".repeat(16 * 1024), &["developers"], &[]),
            None,
        ),
        Reason::InvalidRequest,
    );
    // O=developers+OU=x in one RDN: denied with its own reason rather than reordered or dropped.
    let dir = tempfile::tempdir().expect("dir");
    let multi_valued = openssl_csr(
        dir.path(),
        "multi",
        KeyKind::P256,
        "/CN=jane/O=developers+OU=x",
        None,
        &["-multivalue-rdn"],
    );
    let decision = decide_client(&multi_valued, None);
    assert_denied("multi-valued RDN", &decision, Reason::UnsupportedSubject);
    assert!(
        decision.message().contains("own RDN"),
        "says what to do: {decision:?}"
    );
    assert_denied(
        "masters look-alike",
        &decide_client(&rcgen_csr("jane", &["System:Masters "], &[]), None),
        Reason::ForbiddenGroup,
    );
}

#[test]
fn huge_san_lists_are_bounded() {
    // Enough SANs to pass the size limit is denied as too large; a merely long list is decided.
    let huge: Vec<String> = (0..5_000)
        .map(|i| format!("node-{i}.example.com"))
        .collect();
    assert_denied(
        "5000 SANs",
        &decide_client(
            &rcgen_csr(
                "jane",
                &["developers"],
                &huge.iter().map(String::as_str).collect::<Vec<_>>(),
            ),
            None,
        ),
        Reason::InvalidRequest,
    );
    let long: Vec<String> = (0..500).map(|i| format!("n{i}.example.com")).collect();
    assert_denied(
        "500 SANs on a client cert",
        &decide_client(
            &rcgen_csr(
                "jane",
                &["developers"],
                &long.iter().map(String::as_str).collect::<Vec<_>>(),
            ),
            None,
        ),
        Reason::DisallowedSANs,
    );
}

#[test]
fn keys_too_weak_too_big_or_unknown_are_denied() {
    let dir = tempfile::tempdir().expect("dir");
    let rsa1024 = openssl_csr(
        dir.path(),
        "r1024",
        KeyKind::Rsa(1024),
        "/CN=jane/O=developers",
        None,
        &[],
    );
    assert_denied("RSA 1024", &decide_client(&rsa1024, None), Reason::WeakKey);
    let p521_key = dir.path().join("p521.key");
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-521",
        "-out",
        p521_key.to_str().expect("p"),
    ]);
    let ed448_key = dir.path().join("ed448.key");
    openssl(&[
        "genpkey",
        "-algorithm",
        "ED448",
        "-out",
        ed448_key.to_str().expect("p"),
    ]);
    let dsa_params = dir.path().join("dsa.params");
    openssl(&["dsaparam", "-out", dsa_params.to_str().expect("p"), "2048"]);
    let dsa_key = dir.path().join("dsa.key");
    openssl(&[
        "gendsa",
        "-out",
        dsa_key.to_str().expect("p"),
        dsa_params.to_str().expect("p"),
    ]);
    for (what, key) in [("P-521", p521_key), ("Ed448", ed448_key), ("DSA", dsa_key)] {
        let out = dir.path().join(format!("{what}.csr"));
        openssl(&[
            "req",
            "-new",
            "-key",
            key.to_str().expect("p"),
            "-subj",
            "/CN=jane/O=developers",
            "-out",
            out.to_str().expect("p"),
        ]);
        let pem = std::fs::read_to_string(out).expect("csr");
        assert!(
            matches!(
                inspect(pem.as_bytes()),
                Err(InspectError::UnsupportedKey(_))
            ),
            "{what}"
        );
        assert_denied(what, &decide_client(&pem, None), Reason::UnsupportedKey);
    }
}

#[test]
fn rsa_8192_is_accepted_as_a_strong_key() {
    let dir = tempfile::tempdir().expect("dir");
    let pem = openssl_csr(
        dir.path(),
        "r8192",
        KeyKind::Rsa(8192),
        "/CN=jane/O=developers",
        None,
        &[],
    );
    assert!(matches!(
        decide_client(&pem, None),
        Decision::Approve { .. }
    ));
}

#[test]
fn expiration_below_the_api_minimum_is_denied_and_a_huge_one_is_clamped_later() {
    let pem = rcgen_csr("jane", &["developers"], &[]);
    assert_denied(
        "599 s",
        &decide_client(&pem, Some(599)),
        Reason::InvalidRequest,
    );
    assert_denied(
        "negative",
        &decide_client(&pem, Some(-1)),
        Reason::InvalidRequest,
    );
    // Far too long is not a reason to deny: the signer clamps it (tests/issue.rs).
    assert!(matches!(
        decide_client(&pem, Some(i32::MAX)),
        Decision::Approve { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_keeps_deciding_beside_hostile_requests() {
    let server = FakeApiServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let ca = openssl_ca(dir.path(), KeyKind::P256, 365);
    server.add_user("jane-token", "jane", &["system:authenticated"]);
    let good = rcgen_csr("jane", &["developers"], &[]);
    let hostile = [
        ("h-junk", format!("{good}junk")),
        ("h-nul", rcgen_csr("jane\u{0}", &["developers"], &[])),
        (
            "h-huge-subject",
            rcgen_csr(&"x".repeat(16 * 1024), &[], &[]),
        ),
        ("h-binary", "\u{0}\u{1}\u{2}".repeat(1000)),
        ("h-masters", rcgen_csr("jane", &[" system:MASTERS"], &[])),
    ];
    for (name, pem) in &hostile {
        server.create_csr(
            "jane-token",
            csr_object(name, CLIENT_SIGNER, &["client auth"], pem),
        );
    }
    server.create_csr(
        "jane-token",
        csr_object("jane", CLIENT_SIGNER, &["client auth"], &good),
    );
    let controller = ControllerProcess::start(&server, dir.path(), &ca, &[]);
    server
        .wait_for("all decided", |s| {
            hostile.iter().all(|(name, _)| {
                s.csr(name)
                    .is_some_and(|c| condition(&c, "Denied").is_some())
            }) && s.csr("jane").and_then(|c| certificate_pem(&c)).is_some()
        })
        .await;
    let (status, _) = controller.http_get("/healthz").await;
    assert_eq!(status, 200, "still running");
}
