//! Issuing: CA loading in the formats operators have, and certificates checked with x509-parser
//! and openssl. Each rcgen trap from shared/reference/style.md has a test here.

use crate::support;

use std::path::Path;

use csr_warden::policy::SigningLimits;
use csr_warden::x509::ca::{CaError, CertificateAuthority, random_serial};
use csr_warden::x509::inspect::{CertificateRequest, InspectError, inspect};
use csr_warden::x509::issue::{ApprovedRequest, IssueError, issue, validity};
use support::*;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

const LIMITS: SigningLimits = SigningLimits {
    default_expiration_seconds: 86_400,
    max_expiration_seconds: 30 * 86_400,
};

/// One CA of each key kind csr-warden signs with (issue 9 asks for each).
const CA_KINDS: [KeyKind; 4] = [
    KeyKind::Rsa(2048),
    KeyKind::P256,
    KeyKind::P384,
    KeyKind::Ed25519,
];

fn load(ca: &(std::path::PathBuf, std::path::PathBuf)) -> CertificateAuthority {
    CertificateAuthority::load(&ca.0, &ca.1).expect("CA loads")
}

fn usages(list: &[&str]) -> Vec<String> {
    list.iter().map(|u| u.to_string()).collect()
}

fn issue_for(
    ca: &CertificateAuthority,
    request: &CertificateRequest,
    signer: &str,
    usage: &[String],
    expiration: Option<i32>,
    now: OffsetDateTime,
) -> Result<String, IssueError> {
    let approved = ApprovedRequest {
        signer_name: signer,
        usages: usage,
        expiration_seconds: expiration,
        request,
    };
    issue(
        ca,
        &approved,
        LIMITS,
        now,
        random_serial().expect("randomness"),
    )
    .map(|c| c.pem)
}

fn der_of(pem: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .expect("pem")
        .1
        .contents
}

fn jane(dir: &Path, kind: KeyKind) -> CertificateRequest {
    inspect(openssl_csr(dir, "jane", kind, "/CN=jane/O=developers", None, &[]).as_bytes())
        .expect("inspect")
}

#[test]
fn ca_keys_load_in_every_format_operators_mount_and_sign_verifiable_certificates() {
    for kind in [
        KeyKind::RsaPkcs1(2048),
        KeyKind::Rsa(2048),
        KeyKind::P256Sec1,
        KeyKind::P256,
        KeyKind::P384,
        KeyKind::Ed25519,
    ] {
        let dir = tempfile::tempdir().expect("dir");
        let ca_files = openssl_ca(dir.path(), kind, 365);
        let key_text = std::fs::read_to_string(&ca_files.1).expect("key");
        if matches!(kind, KeyKind::RsaPkcs1(_)) {
            assert!(
                key_text.contains("BEGIN RSA PRIVATE KEY"),
                "kubeadm's format"
            );
        }
        if matches!(kind, KeyKind::P256Sec1) {
            assert!(key_text.contains("BEGIN EC PRIVATE KEY"), "SEC1");
        }
        let ca = load(&ca_files);
        assert!(
            !format!("{ca:?}").contains("PRIVATE"),
            "Debug must redact the key"
        );
        let request = jane(dir.path(), KeyKind::P256);
        let pem = issue_for(
            &ca,
            &request,
            CLIENT_SIGNER,
            &usages(&["client auth"]),
            None,
            OffsetDateTime::now_utc(),
        )
        .expect("issue");
        let verified = openssl_verify(dir.path(), &ca_files.0, &pem, "sslclient");
        assert!(verified.contains("OK"), "{kind:?}: {verified}");
    }
}

#[test]
fn certificate_fields_come_from_the_csr_and_spec_usages() {
    let dir = tempfile::tempdir().expect("dir");
    let ca_files = openssl_ca(dir.path(), KeyKind::P256, 365);
    let ca = load(&ca_files);
    let request = inspect(
        openssl_csr(
            dir.path(),
            "node",
            KeyKind::P256,
            "/CN=system:node:worker-1/O=system:nodes",
            Some("DNS:worker-1,IP:10.0.0.11,IP:2001:db8::11"),
            &[],
        )
        .as_bytes(),
    )
    .expect("inspect");
    let pem = issue_for(
        &ca,
        &request,
        SERVING_SIGNER,
        &usages(&["digital signature", "key encipherment", "server auth"]),
        Some(3600),
        OffsetDateTime::now_utc(),
    )
    .expect("issue");
    let text = openssl_text(dir.path(), &pem);
    assert!(
        text.contains("CN=system:node:worker-1, O=system:nodes")
            || text.contains("CN = system:node:worker-1, O = system:nodes"),
        "{text}"
    );
    assert!(
        text.contains("DNS:worker-1, IP Address:10.0.0.11, IP Address:2001:DB8:0:0:0:0:0:11"),
        "{text}"
    );
    assert!(
        text.contains("TLS Web Server Authentication") && !text.contains("Client Authentication"),
        "{text}"
    );
    assert!(
        text.contains("Digital Signature, Key Encipherment"),
        "{text}"
    );
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(
        text.contains("Subject Key Identifier") && text.contains("Authority Key Identifier"),
        "{text}"
    );

    let der = der_of(&pem);
    let (_, cert) = X509Certificate::from_der(&der).expect("x509");
    let ca_der = der_of(&std::fs::read_to_string(&ca_files.0).expect("ca"));
    let (_, ca_cert) = X509Certificate::from_der(&ca_der).expect("ca x509");
    use x509_parser::extensions::ParsedExtension;
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("AKI");
    let ski = ca_cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(ski) => Some(ski.0.to_vec()),
            _ => None,
        })
        .expect("CA SKI");
    assert_eq!(aki, ski, "AKI must name the CA's SKI");
    assert_eq!(cert.issuer(), ca_cert.subject());
}

const SERVING_SIGNER: &str = KUBELET_SERVING_SIGNER;

#[test]
fn validity_is_backdated_within_the_lifetime_clamped_and_never_beyond_the_ca() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = load(&openssl_ca(dir.path(), KeyKind::P256, 365));
    let request = jane(dir.path(), KeyKind::P256);
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).expect("ns");
    let times = |expiration: Option<i32>| {
        let pem = issue_for(
            &ca,
            &request,
            CLIENT_SIGNER,
            &usages(&["client auth"]),
            expiration,
            now,
        )
        .expect("issue");
        let der = der_of(&pem);
        let (_, cert) = X509Certificate::from_der(&der).expect("x509");
        (
            cert.validity().not_before.to_datetime(),
            cert.validity().not_after.to_datetime(),
        )
    };
    // rcgen would default to 1975..4096: we always set both.
    let (nb, _) = times(Some(3600));
    assert_eq!(nb, now - Duration::seconds(36), "backdated 1% of an hour");
    let (nb, _) = times(Some(86_400));
    assert_eq!(
        nb,
        now - Duration::minutes(5),
        "backdated at most 5 minutes"
    );
    let (nb, na) = times(Some(3600));
    // The whole window, backdate included, is the lifetime granted (as kube-controller-manager).
    assert_eq!(na - nb, Duration::hours(1));
    let (nb, na) = times(None);
    assert_eq!(na - nb, Duration::days(1), "policy default");
    let (nb, na) = times(Some(i32::MAX));
    assert_eq!(
        na - nb,
        Duration::days(30),
        "clamped to maxExpirationSeconds"
    );
    let (nb, na) = times(Some(600));
    assert_eq!(na - nb, Duration::minutes(10), "the shortest: 10 minutes");
    // A CA that expires in 2 days caps the certificate.
    let short_dir = tempfile::tempdir().expect("dir");
    let short_ca = load(&openssl_ca(short_dir.path(), KeyKind::P256, 2));
    let pem = issue_for(
        &short_ca,
        &request,
        CLIENT_SIGNER,
        &usages(&["client auth"]),
        Some(10 * 86_400),
        now,
    )
    .expect("issue");
    let der = der_of(&pem);
    let (_, cert) = X509Certificate::from_der(&der).expect("x509");
    assert_eq!(
        cert.validity().not_after.to_datetime(),
        short_ca.not_after()
    );
    // A CA about to expire issues nothing.
    let err =
        validity(Some(3600), LIMITS, now, now + Duration::minutes(3)).expect_err("expiring CA");
    assert!(matches!(err, IssueError::CaExpiring { .. }));
}

#[test]
fn serials_are_random_positive_and_long_even_for_the_same_key() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = load(&openssl_ca(dir.path(), KeyKind::P256, 365));
    let request = jane(dir.path(), KeyKind::P256);
    let serial = |_: usize| {
        let pem = issue_for(
            &ca,
            &request,
            CLIENT_SIGNER,
            &usages(&["client auth"]),
            None,
            OffsetDateTime::now_utc(),
        )
        .expect("issue");
        let der = der_of(&pem);
        let (_, cert) = X509Certificate::from_der(&der).expect("x509");
        cert.raw_serial().to_vec()
    };
    let serials: Vec<Vec<u8>> = (0..8).map(serial).collect();
    for s in &serials {
        assert!(s.len() * 8 >= 64 && s.len() <= 20, "{s:?}");
        assert!(s[0] & 0x80 == 0, "positive");
    }
    let unique: std::collections::BTreeSet<_> = serials.iter().collect();
    assert_eq!(
        unique.len(),
        serials.len(),
        "rcgen derives serials from the key unless told otherwise"
    );
}

#[test]
fn requested_ca_true_eku_and_other_extensions_do_not_carry_over() {
    let dir = tempfile::tempdir().expect("dir");
    let ca_files = openssl_ca(dir.path(), KeyKind::P256, 365);
    let ca = load(&ca_files);
    let pem = openssl_csr(
        dir.path(),
        "greedy",
        KeyKind::P256,
        "/CN=jane/O=developers",
        None,
        &[
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "extendedKeyUsage=serverAuth,codeSigning",
            "-addext",
            "keyUsage=keyCertSign",
            "-addext",
            "certificatePolicies=1.2.3.4",
        ],
    );
    let request = inspect(pem.as_bytes()).expect("extensions are ignored, not fatal");
    let cert = issue_for(
        &ca,
        &request,
        CLIENT_SIGNER,
        &usages(&["client auth"]),
        None,
        OffsetDateTime::now_utc(),
    )
    .expect("issue");
    let text = openssl_text(dir.path(), &cert);
    assert!(
        text.contains("CA:FALSE") && !text.contains("CA:TRUE"),
        "{text}"
    );
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(
        !text.contains("Server Authentication")
            && !text.contains("Code Signing")
            && !text.contains("Certificate Sign"),
        "{text}"
    );
    assert!(!text.contains("1.2.3.4"), "{text}");
}

#[test]
fn p384_key_signed_with_sha256_is_refused_before_it_can_be_misissued() {
    let dir = tempfile::tempdir().expect("dir");
    let mismatched = openssl_csr(
        dir.path(),
        "p384",
        KeyKind::P384,
        "/CN=jane/O=developers",
        None,
        &["-sha256"],
    );
    assert!(matches!(
        inspect(mismatched.as_bytes()),
        Err(InspectError::UnsupportedKey(_))
    ));
    // The matching pair is fine, and the issued certificate keeps the P-384 key.
    let matched = openssl_csr(
        dir.path(),
        "p384ok",
        KeyKind::P384,
        "/CN=jane/O=developers",
        None,
        &["-sha384"],
    );
    let request = inspect(matched.as_bytes()).expect("P-384 with SHA-384");
    let ca_files = openssl_ca(dir.path(), KeyKind::P256, 365);
    let cert = issue_for(
        &load(&ca_files),
        &request,
        CLIENT_SIGNER,
        &usages(&["client auth"]),
        None,
        OffsetDateTime::now_utc(),
    )
    .expect("issue");
    assert!(openssl_text(dir.path(), &cert).contains("NIST CURVE: P-384"));
    assert!(openssl_verify(dir.path(), &ca_files.0, &cert, "sslclient").contains("OK"));
}

#[test]
fn signer_rules_refuse_usages_and_shapes_the_signer_does_not_issue() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = load(&openssl_ca(dir.path(), KeyKind::P256, 365));
    let request = jane(dir.path(), KeyKind::P256);
    let now = OffsetDateTime::now_utc();
    for bad in [
        &["client auth", "server auth"][..],
        &["cert sign", "client auth"][..],
        &["digital signature"][..],
    ] {
        let err =
            issue_for(&ca, &request, CLIENT_SIGNER, &usages(bad), None, now).expect_err("refused");
        assert_eq!(err.reason().as_str(), "SignerValidationFailure", "{err}");
    }
    let err = issue_for(
        &ca,
        &request,
        KUBELET_CLIENT_SIGNER,
        &usages(&["client auth"]),
        None,
        now,
    )
    .expect_err("not a node");
    assert!(err.to_string().contains("system:node:"), "{err}");
}

#[test]
fn broken_ca_files_give_errors_that_say_what_to_do() {
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = openssl_ca(dir.path(), KeyKind::P256, 365);
    let other_key = openssl_key(dir.path(), "other", KeyKind::P256);
    let err = CertificateAuthority::load(&cert, &other_key).expect_err("mismatch");
    assert!(matches!(err, CaError::KeyMismatch { .. }));
    assert!(err.to_string().contains("matching tls.crt and tls.key"));
    let missing =
        CertificateAuthority::load(&dir.path().join("nope.crt"), &key).expect_err("missing");
    assert!(
        missing.to_string().contains("Secret is mounted"),
        "{missing}"
    );
    // A leaf is not a CA.
    let leaf_key = openssl_key(dir.path(), "leaf", KeyKind::P256);
    let leaf = dir.path().join("leaf.crt");
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        leaf_key.to_str().expect("p"),
        "-subj",
        "/CN=leaf",
        "-days",
        "1",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-out",
        leaf.to_str().expect("p"),
    ]);
    assert!(matches!(
        CertificateAuthority::load(&leaf, &leaf_key),
        Err(CaError::NotCa { .. })
    ));
}

#[test]
fn the_subject_is_the_csrs_own_name_byte_for_byte_with_every_group() {
    let dir = tempfile::tempdir().expect("dir");
    // Several O and OU values, UTF8Strings (-utf8; openssl would otherwise pick PrintableString)
    // and the CSR's own order (O before CN): all carried over exactly.
    let csr_pem = openssl_csr(
        dir.path(),
        "maria",
        KeyKind::P256,
        "/O=developers/O=ops/OU=platform/OU=oncall/CN=maria/C=NL",
        None,
        &["-utf8"],
    );
    let request = inspect(csr_pem.as_bytes()).expect("inspect");
    assert_eq!(request.organizations, ["developers", "ops"]);
    let csr_der = der_of(&csr_pem);
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&csr_der)
        .expect("csr");
    let csr_subject = csr.certification_request_info.subject.as_raw().to_vec();
    for kind in CA_KINDS {
        let ca_dir = tempfile::tempdir().expect("dir");
        let ca_files = openssl_ca(ca_dir.path(), kind, 365);
        let pem = issue_for(
            &load(&ca_files),
            &request,
            CLIENT_SIGNER,
            &usages(&["client auth"]),
            None,
            OffsetDateTime::now_utc(),
        )
        .expect("issue");
        let der = der_of(&pem);
        let (_, cert) = X509Certificate::from_der(&der).expect("x509");
        assert_eq!(
            cert.subject().as_raw(),
            csr_subject.as_slice(),
            "{kind:?}: the CSR's subject bytes"
        );
        let subject = String::from_utf8(openssl(&[
            "x509",
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253",
            "-in",
            write(ca_dir.path(), "maria.crt", &pem)
                .to_str()
                .expect("path"),
        ]))
        .expect("utf8");
        assert_eq!(
            subject.trim(),
            "subject=C=NL,CN=maria,OU=oncall,OU=platform,O=ops,O=developers",
            "{kind:?}"
        );
        let verified = openssl_verify(ca_dir.path(), &ca_files.0, &pem, "sslclient");
        assert!(verified.contains("OK"), "{kind:?}: {verified}");
    }
}

#[test]
fn certificates_are_canonical_der_that_x509_cert_reads_back_byte_for_byte() {
    use der::{Decode, Encode};
    let dir = tempfile::tempdir().expect("dir");
    let sans = "DNS:eve.example.com,IP:10.0.0.7,IP:fd00::7,email:eve@example.com,URI:spiffe://example.com/eve";
    let requests = [
        (
            "eve",
            inspect(
                openssl_csr(
                    dir.path(),
                    "eve",
                    KeyKind::P256,
                    "/CN=eve/O=a/O=b",
                    Some(sans),
                    &[],
                )
                .as_bytes(),
            )
            .expect("inspect"),
            usages(&["client auth", "digital signature", "key encipherment"]),
        ),
        (
            "jane",
            jane(dir.path(), KeyKind::Ed25519),
            usages(&["client auth"]),
        ),
    ];
    for kind in CA_KINDS {
        let ca_dir = tempfile::tempdir().expect("dir");
        let ca = load(&openssl_ca(ca_dir.path(), kind, 365));
        for (name, request, usage) in &requests {
            let pem = issue_for(
                &ca,
                request,
                CLIENT_SIGNER,
                usage,
                None,
                OffsetDateTime::now_utc(),
            )
            .expect("issue");
            // RFC 7468's strict form: 64 characters a line, the last one shorter or equal.
            let lines: Vec<&str> = pem.lines().collect();
            let body = &lines[1..lines.len() - 1];
            assert!(
                body.iter().all(|l| l.len() == 64)
                    || body[..body.len() - 1].iter().all(|l| l.len() == 64),
                "{kind:?} {name}: {pem}"
            );
            assert!(body.last().is_some_and(|l| !l.is_empty() && l.len() <= 64));
            let der = der_of(&pem);
            // x509-cert's decoder accepts DER only (minimal lengths, BOOLEAN TRUE as 0xFF, ...);
            // encoding what it read must give the very same bytes.
            let certificate = x509_cert::Certificate::from_der(&der)
                .unwrap_or_else(|e| panic!("{kind:?} {name}: not DER x509-cert accepts: {e}"));
            assert_eq!(
                certificate.to_der().expect("re-encode"),
                der,
                "{kind:?} {name}: re-encoded differently"
            );
            let extensions = certificate.tbs_certificate.extensions.expect("extensions");
            let critical: Vec<(String, bool)> = extensions
                .iter()
                .map(|e| (e.extn_id.to_string(), e.critical))
                .collect();
            // KeyUsage (when spec.usages has key usages), ExtendedKeyUsage, BasicConstraints,
            // SAN (when asked for), SKI, AKI: in this order, critical where RFC 5280 says.
            let asked_for_more = *name == "eve";
            let has_sans = *name != "jane";
            let expected: Vec<(String, bool)> = [
                ("2.5.29.15", true, asked_for_more),
                ("2.5.29.37", false, true),
                ("2.5.29.19", true, true),
                ("2.5.29.17", *name == "nameless", has_sans),
                ("2.5.29.14", false, true),
                ("2.5.29.35", false, true),
            ]
            .into_iter()
            .filter(|(_, _, present)| *present)
            .map(|(oid, critical, _)| (oid.to_owned(), critical))
            .collect();
            assert_eq!(critical, expected, "{kind:?} {name}");
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// The approver and the signer apply one rule for what each signer issues
/// (`policy::signer_shape_problem`): over every signer, every usage combination of one or two
/// usages (and every combination of the four usages the signers know), and subjects of each
/// kind, an approved request is always issuable and a request the signer refuses is never
/// approved, and refused with the same words.
#[test]
fn approver_and_signer_agree_on_every_signer_and_usage_combination() {
    use csr_warden::policy::file::parse_policy;
    use csr_warden::policy::*;

    const CUSTOM: &str = "example.com/custom";
    let policy = parse_policy(
        "signers:\n  - name: kubernetes.io/kube-apiserver-client\n  - name: kubernetes.io/kube-apiserver-client-kubelet\n  - name: kubernetes.io/kubelet-serving\n  - name: example.com/custom\nforbiddenGroups: [system:masters]\nkubelet: { client: true, serving: true }\nallowList:\n  - commonName: jane\n    groups: [developers]\n  - commonName: system:node:n1\n    groups: [system:nodes]\n",
        Path::new("agree.yaml"),
    )
    .expect("policy");
    let dir = tempfile::tempdir().expect("dir");
    let ca = load(&openssl_ca(dir.path(), KeyKind::P256, 365));
    let node = "system:node:n1";
    // (common name, organisations, SANs, requester): the shapes each signer sees.
    let shapes: [(&str, &[&str], &[&str], &str); 4] = [
        ("jane", &["developers"], &[], "jane"),
        (node, &["system:nodes"], &[], node),
        (
            node,
            &["system:nodes"],
            &["n1.example.com", "10.0.0.5"],
            node,
        ),
        ("jane", &["developers"], &["jane.example.com"], "jane"),
    ];
    let facts = ClusterFacts {
        node_client_allowed: Some(true),
        self_node_client_allowed: Some(true),
        node: Some(NodeLookup::Addresses(vec![
            "n1.example.com".into(),
            "10.0.0.5".into(),
        ])),
        other_nodes: Some(Vec::new()),
        api_server: Some(vec!["10.96.0.1".parse().expect("ip")]),
        // The cluster says no to every privilege check: the ceiling passes.
        privilege: Some(csr_warden::policy::PrivilegeReview::Answered(
            csr_warden::policy::default_privilege_checks()
                .into_iter()
                .map(|check| (check.name, false))
                .collect(),
        )),
    };
    let mut combinations: Vec<Vec<&str>> = Vec::new();
    for (i, first) in KNOWN_USAGES.iter().enumerate() {
        combinations.push(vec![first]);
        for second in &KNOWN_USAGES[i + 1..] {
            combinations.push(vec![first, second]);
        }
    }
    let known = [
        "client auth",
        "server auth",
        "digital signature",
        "key encipherment",
    ];
    for mask in 1..16u32 {
        let set: Vec<&str> = (0..4)
            .filter(|bit| mask & (1 << bit) != 0)
            .map(|bit| known[bit])
            .collect();
        if set.len() > 2 {
            combinations.push(set);
        }
    }
    let now = OffsetDateTime::now_utc();
    let (mut approved, mut refused) = (0, 0);
    for (common_name, organizations, sans, requester) in shapes {
        let pem = rcgen_csr(common_name, organizations, sans);
        let request = inspect(pem.as_bytes()).expect("inspect");
        for signer in [
            SIGNER_KUBE_APISERVER_CLIENT,
            SIGNER_KUBELET_CLIENT,
            SIGNER_KUBELET_SERVING,
            CUSTOM,
        ] {
            for combination in &combinations {
                let usage = usages(combination);
                let csr = CsrView {
                    name: "agree".into(),
                    signer_name: signer.into(),
                    usages: usage.clone(),
                    expiration_seconds: Some(3600),
                    requester: Requester {
                        username: requester.into(),
                        uid: None,
                        groups: if requester == node {
                            vec!["system:nodes".into(), "system:authenticated".into()]
                        } else {
                            vec!["system:authenticated".into()]
                        },
                    },
                    request: Ok(request.clone()),
                };
                let decision = decide(&csr, &facts, &policy).decision;
                let issued = issue_for(&ca, &request, signer, &usage, Some(3600), now);
                let case = format!("{signer} {common_name} {sans:?} {combination:?}");
                match (&decision, &issued) {
                    (Decision::Approve { .. }, Ok(_)) => approved += 1,
                    (Decision::Approve { .. }, Err(error)) => {
                        panic!("{case}: approved but the signer refuses: {error}")
                    }
                    (_, Err(IssueError::SignerRules { problem, .. })) => {
                        refused += 1;
                        // A reserved identity is refused before any shape rule, by the approver
                        // and by the signer's own first check (`signing_refusal`).
                        if let Decision::Deny { message, reason } = &decision
                            && *reason != csr_warden::policy::Reason::ReservedIdentity
                        {
                            assert_eq!(message, problem, "{case}: the two say different things");
                        }
                    }
                    (_, Err(error)) => panic!("{case}: unexpected signing error {error}"),
                    (_, Ok(_)) => {}
                }
            }
        }
    }
    // Both answers occur, so the agreement is not vacuous.
    assert!(approved >= 16, "only {approved} approvals");
    assert!(refused > 1000, "only {refused} refusals");
}
