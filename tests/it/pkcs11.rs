//! A signer's CA key in a PKCS#11 token (SoftHSM2, the real module): keys generated inside the
//! token, certificates issued through C_Sign and verified by openssl, and each fault of the
//! token (module missing, PIN wrong, token deleted while running) waited out with
//! CAUnavailable and recovered from without a restart; and a restart.
//!
//! Needs SoftHSM2 (`apt-get install softhsm2`): SKIPPED without it, a failure with CI=true.

use std::path::Path;

use crate::support;
use csr_warden::x509::pkcs11::TokenKeyKind;
use support::softhsm::{SoftHsm, USER_PIN};
use support::*;

const HSM_SIGNER: &str = "example.com/hsm";

fn policy(signers: &[(&str, String)]) -> String {
    let mut policy = String::from("signers:\n");
    for (name, ca) in signers {
        policy.push_str(&format!("  - name: {name}\n    ca: {ca}\n"));
    }
    policy.push_str("allowList:\n  - commonName: jane\n    groups: [developers]\n");
    policy
}

fn token_up(metrics: &str, signer: &str) -> Option<f64> {
    metric_sample(
        metrics,
        &format!("csr_warden_pkcs11_token_up{{signer=\"{signer}\"}}"),
    )
}

/// `name` is approved and waits for its CA (never Failed), with a CAUnavailable Event.
async fn waits_for_the_ca(h: &Harness, controller: &ControllerProcess, name: &str) {
    controller
        .wait_for_log(&format!("{name} waits for the token"), |l| {
            l["csr"] == name && l["decision"] == "waiting" && l["reason"] == "CAUnavailable"
        })
        .await;
    h.server
        .wait_for(&format!("{name}'s CAUnavailable Event"), |s| {
            s.events()
                .iter()
                .any(|e| e["regarding"]["name"] == name && e["reason"] == "CAUnavailable")
        })
        .await;
    assert_eq!(
        condition_types(&csr_state(&h.server, name)),
        ["Approved"],
        "approved and waiting, never Failed"
    );
}

fn verified_by(h: &Harness, ca: &Path, name: &str) {
    let cert = certificate_pem(&csr_state(&h.server, name)).expect("certificate");
    let verdict = openssl_verify(h.dir.path(), ca, &cert, "sslclient");
    assert!(verdict.contains("OK"), "{name}: {verdict}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_kind_signs_through_the_token_and_never_leaves_it() {
    let Some(hsm) = SoftHsm::get("each_key_kind_signs_through_the_token_and_never_leaves_it")
    else {
        return;
    };
    let h = harness().await;
    let token = hsm.token("kinds", h.dir.path());
    let kinds = [
        ("p256", TokenKeyKind::EcdsaP256),
        ("p384", TokenKeyKind::EcdsaP384),
        ("rsa", TokenKeyKind::Rsa),
        ("ed25519", TokenKeyKind::Ed25519),
    ];
    let mut signers = Vec::new();
    let mut cas = Vec::new();
    for (object, kind) in kinds {
        let (cert, attributes) = token.generate_ca(object, kind, h.dir.path());
        assert!(
            attributes.sensitive && !attributes.extractable,
            "{object}: {attributes:?}"
        );
        // The CA certificate, signed through the token, verifies on its own.
        let ca_pem = std::fs::read_to_string(&cert).expect("CA");
        let verdict = openssl_verify(h.dir.path(), &cert, &ca_pem, "any");
        assert!(verdict.contains("OK"), "{object}'s CA: {verdict}");
        let signer = format!("example.com/hsm-{object}");
        signers.push((signer.clone(), token.ca_yaml(&cert, object)));
        cas.push((signer, object, cert));
    }
    let policy = policy(
        &signers
            .iter()
            .map(|(name, ca)| (name.as_str(), ca.clone()))
            .collect::<Vec<_>>(),
    );
    let controller = h.controller_with_policy(&policy, &["--reload-interval-ms", "200"]);
    for (signer, object, _) in &cas {
        h.create_signer_csr("jane-token", object, "/CN=jane/O=developers", signer);
    }
    h.server
        .wait_for("all four issued", |s| {
            cas.iter().all(|(_, object, _)| issued(s, object))
        })
        .await;
    for (signer, object, cert) in &cas {
        verified_by(&h, cert, object);
        let text = openssl_text(
            h.dir.path(),
            &certificate_pem(&csr_state(&h.server, object)).expect("cert"),
        );
        let algorithm = match *object {
            "p256" => "ecdsa-with-SHA256",
            "p384" => "ecdsa-with-SHA384",
            "rsa" => "sha256WithRSAEncryption",
            _ => "ED25519",
        };
        assert!(text.contains(algorithm), "{signer}: {text}");
    }
    controller.wait_synced().await;
    let (status, body) = controller.http_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = controller.http_get("/metrics").await;
    for (signer, _, _) in &cas {
        assert_eq!(token_up(&metrics, signer), Some(1.0), "{metrics}");
    }
    let log = serde_json::to_string(&controller.lines()).expect("log");
    assert!(!log.contains(USER_PIN), "the PIN never reaches the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_key_that_is_not_the_certificates_is_refused_at_load() {
    let Some(hsm) = SoftHsm::get("a_token_key_that_is_not_the_certificates_is_refused_at_load")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let token = hsm.token("mismatch", dir.path());
    let (cert, _) = token.generate_ca("right", TokenKeyKind::EcdsaP256, dir.path());
    token.generate_ca("other", TokenKeyKind::EcdsaP256, dir.path());
    let _exclusive = support::softhsm::exclusive();
    let error =
        csr_warden::x509::ca::CertificateAuthority::load_with_token(&cert, &token.config("other"))
            .expect_err("another key than the certificate's");
    assert!(
        matches!(
            error,
            csr_warden::x509::ca::CaError::TokenKeyMismatch { .. }
        ),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("does not belong to the CA certificate"),
        "{error}"
    );
    let ca =
        csr_warden::x509::ca::CertificateAuthority::load_with_token(&cert, &token.config("right"))
            .expect("the certificate's own key");
    assert!(ca.token_key().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_path_that_is_wrong_waits_and_recovers_when_the_module_appears() {
    let Some(hsm) =
        SoftHsm::get("a_module_path_that_is_wrong_waits_and_recovers_when_the_module_appears")
    else {
        return;
    };
    let h = harness().await;
    let token = hsm.token("module", h.dir.path());
    let (cert, _) = token.generate_ca("ca", TokenKeyKind::EcdsaP256, h.dir.path());
    let modules = h.dir.path().join("modules");
    let module = modules.join("libsofthsm2.so");
    let policy = policy(&[(HSM_SIGNER, token.ca_yaml_with(&cert, &module, "ca"))]);
    let controller = h.controller_with_policy(&policy, &["--reload-interval-ms", "100"]);
    controller.wait_synced().await;
    h.create_signer_csr("jane-token", "jane", "/CN=jane/O=developers", HSM_SIGNER);
    waits_for_the_ca(&h, &controller, "jane").await;
    let (status, body) = controller.http_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(HSM_SIGNER) && body.contains("cannot load PKCS#11 module"),
        "{body}"
    );
    let (_, metrics) = controller.http_get("/metrics").await;
    assert_eq!(token_up(&metrics, HSM_SIGNER), Some(0.0), "{metrics}");

    // The module mounted late: picked up by the next reload tick, no restart.
    std::fs::create_dir(&modules).expect("modules dir");
    std::os::unix::fs::symlink(&hsm.module, &module).expect("module");
    h.server
        .wait_for("jane issued once the module is there", |s| {
            issued(s, "jane")
        })
        .await;
    assert_eq!(condition_types(&csr_state(&h.server, "jane")), ["Approved"]);
    verified_by(&h, &cert, "jane");
    let (status, body) = controller.http_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = controller.http_get("/metrics").await;
    assert_eq!(token_up(&metrics, HSM_SIGNER), Some(1.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_waits_until_the_pin_is_fixed_and_a_restart_signs_again() {
    let Some(hsm) =
        SoftHsm::get("a_wrong_pin_waits_until_the_pin_is_fixed_and_a_restart_signs_again")
    else {
        return;
    };
    let h = harness().await;
    let token = hsm.token("pin", h.dir.path());
    let (cert, _) = token.generate_ca("ca", TokenKeyKind::EcdsaP256, h.dir.path());
    std::fs::write(&token.pin_file, "0000-wrong\n").expect("wrong pin");
    let policy = policy(&[(HSM_SIGNER, token.ca_yaml(&cert, "ca"))]);
    let first = h.controller_with_policy(&policy, &["--reload-interval-ms", "100"]);
    first.wait_synced().await;
    h.create_signer_csr("jane-token", "jane", "/CN=jane/O=developers", HSM_SIGNER);
    waits_for_the_ca(&h, &first, "jane").await;
    let (status, body) = first.http_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("check the PIN"), "{body}");
    // A refused PIN is not tried again until the PIN file changes (a real HSM locks it).
    let logins = |controller: &ControllerProcess| {
        controller
            .lines()
            .iter()
            .filter(|l| {
                l["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("PinIncorrect"))
            })
            .count()
    };
    assert_eq!(logins(&first), 1, "one failed login, said once");

    // The Secret fixed: the next tick logs in and jane is issued.
    std::fs::write(&token.pin_file, format!("{USER_PIN}\n")).expect("right pin");
    h.server
        .wait_for("jane issued with the right PIN", |s| issued(s, "jane"))
        .await;
    verified_by(&h, &cert, "jane");

    // A restart opens the token again and signs.
    first.kill().await;
    let second = h.controller_with_policy(&policy, &["--reload-interval-ms", "100"]);
    h.create_signer_csr("jane-token", "jane-2", "/CN=jane/O=developers", HSM_SIGNER);
    h.server
        .wait_for("jane-2 issued after the restart", |s| issued(s, "jane-2"))
        .await;
    verified_by(&h, &cert, "jane-2");
    let log = serde_json::to_string(&second.lines()).expect("log");
    assert!(!log.contains(USER_PIN), "the PIN never reaches the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_deleted_while_running_waits_and_recovers_when_it_is_restored() {
    let Some(hsm) =
        SoftHsm::get("a_token_deleted_while_running_waits_and_recovers_when_it_is_restored")
    else {
        return;
    };
    let h = harness().await;
    let token = hsm.token("deleted", h.dir.path());
    let (cert, _) = token.generate_ca("ca", TokenKeyKind::EcdsaP256, h.dir.path());
    let policy = policy(&[(HSM_SIGNER, token.ca_yaml(&cert, "ca"))]);
    let controller = h.controller_with_policy(&policy, &["--reload-interval-ms", "100"]);
    h.create_signer_csr("jane-token", "before", "/CN=jane/O=developers", HSM_SIGNER);
    h.server
        .wait_for("issued while the token is there", |s| issued(s, "before"))
        .await;

    // The token's files gone (as a deleted token, or an HSM partition taken away).
    let away = h.dir.path().join("token-away");
    std::fs::rename(&token.directory, &away).expect("take the token away");
    controller
        .wait_for_log("the token noticed gone", |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("PKCS#11 token stopped answering"))
        })
        .await;
    h.create_signer_csr("jane-token", "during", "/CN=jane/O=developers", HSM_SIGNER);
    waits_for_the_ca(&h, &controller, "during").await;
    let (status, body) = controller.http_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let (_, metrics) = controller.http_get("/metrics").await;
    assert_eq!(token_up(&metrics, HSM_SIGNER), Some(0.0), "{metrics}");

    // Restored: reopened by itself, and the waiting request issued.
    std::fs::rename(&away, &token.directory).expect("restore the token");
    h.server
        .wait_for("issued once the token is back", |s| issued(s, "during"))
        .await;
    assert_eq!(
        condition_types(&csr_state(&h.server, "during")),
        ["Approved"]
    );
    verified_by(&h, &cert, "during");
    let (status, body) = controller.http_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
}

/// The policy's `ca.pkcs11`: read into the signer's CA, and each mistake said with its line.
#[test]
fn the_policy_names_a_token_key_and_refuses_mistakes_by_line() {
    use csr_warden::policy::file::{PolicyError, parse_policy};
    let policy = parse_policy(
        "\
signers:
  - name: example.com/hsm
    ca:
      cert: /cas/hsm/tls.crt
      pkcs11:
        module: /usr/lib/softhsm/libsofthsm2.so
        uri: \"pkcs11:token=csr-warden;object=team-ca\"
        pinFile: /etc/csr-warden/pin/pin
",
        Path::new("p.yaml"),
    )
    .expect("valid");
    let ca = policy.signers["example.com/hsm"]
        .ca
        .as_ref()
        .expect("its CA");
    let token = ca.pkcs11.as_ref().expect("a token key");
    assert_eq!(token.uri, "pkcs11:token=csr-warden;object=team-ca");
    assert_eq!(token.pin_file, Path::new("/etc/csr-warden/pin/pin"));

    let problems = |text: &str| match parse_policy(text, Path::new("p.yaml")) {
        Err(PolicyError::Invalid { problems, .. }) => problems
            .into_iter()
            .map(|p| (p.line, p.message))
            .collect::<Vec<_>>(),
        other => panic!("expected problems, got {other:?}"),
    };
    let token = "pkcs11: { module: /m.so, uri: \"pkcs11:object=k\", pinFile: /pin }";
    for (ca, says) in [
        (format!("{{ cert: /c, key: /k, {token} }}"), "both key and pkcs11"),
        ("{ cert: /c }".to_owned(), "has no key"),
        (
            "{ cert: /c, pkcs11: { module: /m.so, uri: \"pkcs11:token=t\", pinFile: /pin } }"
                .to_owned(),
            "names no key",
        ),
        (
            "{ cert: /c, pkcs11: { module: /m.so, uri: \"pkcs11:object=k?pin-value=1\", pinFile: /pin } }"
                .to_owned(),
            "pinFile",
        ),
        (
            "{ cert: /c, pkcs11: { module: m.so, uri: \"pkcs11:object=k\", pinFile: /pin } }"
                .to_owned(),
            "absolute",
        ),
    ] {
        let found = problems(&format!(
            "signers:\n  - name: example.com/ok\n  - name: example.com/hsm\n    ca: {ca}\n"
        ));
        assert!(
            found.iter().any(|(line, message)| *line == 3 && message.contains(says)),
            "{ca}: {found:?}"
        );
    }
    // A pod certificate signer's CA the same way.
    let found = problems(&format!(
        "podCertificates:\n  - signerName: example.com/pods\n    trustDomain: cluster.local\n    ca: {{ cert: /c, key: /k, {token} }}\n    allow: [{{ namespace: default }}]\n"
    ));
    assert!(
        found
            .iter()
            .any(|(line, m)| *line == 2 && m.contains("both key and pkcs11")),
        "{found:?}"
    );
}

/// A pod certificate is issued through the token the same way (no real kube-apiserver serving
/// PodCertificateRequests is needed for the signing itself), and a token that disappears under
/// a signature gives `CAUnavailable` (a wait), never a failure of the request.
#[test]
fn pod_certificates_sign_through_the_token_and_a_lost_token_is_unavailable() {
    let Some(hsm) =
        SoftHsm::get("pod_certificates_sign_through_the_token_and_a_lost_token_is_unavailable")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let token = hsm.token("pods", dir.path());
    let (cert, _) = token.generate_ca("pods-ca", TokenKeyKind::EcdsaP384, dir.path());
    let _exclusive = support::softhsm::exclusive();
    let ca = csr_warden::x509::ca::CertificateAuthority::load_with_token(
        &cert,
        &token.config("pods-ca"),
    )
    .expect("token CA");
    let stub = openssl_csr(dir.path(), "pod", KeyKind::P256, "/", None, &[]);
    let request = csr_warden::x509::inspect::inspect(stub.as_bytes()).expect("request");
    let now = time::OffsetDateTime::now_utc();
    let times = csr_warden::x509::validity::pod_validity(3600, now, ca.not_after()).expect("times");
    let spiffe = "spiffe://cluster.local/ns/apps/sa/api";
    let issued =
        csr_warden::x509::issue::issue_pod_certificate(&ca, &request, spiffe, times, [7; 16])
            .expect("issued through the token");
    let verdict = openssl_verify(dir.path(), &cert, &issued.pem, "sslclient");
    assert!(verdict.contains("OK"), "{verdict}");

    let away = dir.path().join("away");
    std::fs::rename(&token.directory, &away).expect("take the token away");
    let key = ca.token_key().expect("a token key");
    let probed = key.probe();
    assert!(probed.is_err(), "the probe notices: {probed:?}");
    assert!(key.is_broken());
    let error =
        csr_warden::x509::issue::issue_pod_certificate(&ca, &request, spiffe, times, [8; 16])
            .expect_err("no token, no signature");
    assert_eq!(error.reason().as_str(), "CAUnavailable", "{error}");
    std::fs::rename(&away, &token.directory).expect("restore");
}

/// A pod-certificate signer whose key is in the token, the real binary against the fake API
/// server serving PodCertificateRequests: a request made while the module is missing waits
/// (CAUnavailable, no status written), and is Issued through the token once the module is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_certificate_waits_for_the_token_and_is_issued_through_it() {
    let Some(hsm) = SoftHsm::get("a_pod_certificate_waits_for_the_token_and_is_issued_through_it")
    else {
        return;
    };
    const POD_SIGNER: &str = "example.com/workload-identity";
    let h = harness().await;
    h.server.serve_pod_certificates();
    let token = hsm.token("pod-signer", h.dir.path());
    let (cert, _) = token.generate_ca("pods", TokenKeyKind::EcdsaP256, h.dir.path());
    let module = h.dir.path().join("late-module").join("libsofthsm2.so");
    let policy = format!(
        "{}podCertificates:\n  - signerName: {POD_SIGNER}\n    ca: {}\n    trustDomain: cluster.local\n    allow:\n      - {{namespace: payments, serviceAccounts: [api]}}\n",
        policy(&[]).replace("signers:\n", ""),
        token.ca_yaml_with(&cert, &module, "pods")
    );
    let controller = h.controller_with_policy(&policy, &["--reload-interval-ms", "100"]);
    controller.wait_synced().await;
    // The kubelet's stub request: empty subject, DER.
    let (stub_der, stub_key) = (h.dir.path().join("stub.der"), h.dir.path().join("stub.key"));
    openssl(&[
        "req",
        "-new",
        "-nodes",
        "-subj",
        "/",
        "-outform",
        "DER",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-keyout",
        stub_key.to_str().expect("path"),
        "-out",
        stub_der.to_str().expect("path"),
    ]);
    let stub = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        std::fs::read(&stub_der).expect("stub DER"),
    );
    h.server.create_pcr(
        "payments",
        "api-0",
        serde_json::json!({
            "signerName": POD_SIGNER, "podName": "api-0", "podUID": "pod-uid",
            "serviceAccountName": "api", "serviceAccountUID": "sa-uid",
            "nodeName": "node-1", "nodeUID": "node-uid",
            "maxExpirationSeconds": 86400, "stubPKCS10Request": stub,
        }),
    );
    controller
        .wait_for_log("the request waits for the token", |l| {
            l["pcr"] == "payments/api-0"
                && l["decision"] == "waiting"
                && l["reason"] == "CAUnavailable"
        })
        .await;
    assert_eq!(
        h.server.pcr_status_writes("payments", "api-0"),
        0,
        "nothing written while the token is missing: no Failed"
    );

    std::fs::create_dir(module.parent().expect("dir")).expect("module dir");
    std::os::unix::fs::symlink(&hsm.module, &module).expect("module");
    h.server
        .wait_for("Issued through the token", |s| {
            s.pcr("payments", "api-0").is_some_and(|pcr| {
                pcr["status"]["certificateChain"]
                    .as_str()
                    .is_some_and(|c| c.contains("BEGIN CERTIFICATE"))
            })
        })
        .await;
    let pcr = h.server.pcr("payments", "api-0").expect("pcr");
    let chain = pcr["status"]["certificateChain"].as_str().expect("chain");
    let verdict = openssl_verify(h.dir.path(), &cert, chain, "sslclient");
    assert!(verdict.contains("OK"), "{verdict}");
    assert_eq!(h.server.pcr_status_writes("payments", "api-0"), 1);
}
