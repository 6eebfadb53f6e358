//! Per signerName roles against the tests' API server, the real binary with no default CA files:
//! approve only (kube-controller-manager issues), sign only (a human approves), or both with the
//! signer's own CA; and the guard against a custom signer on the cluster's own CA.

use crate::support;

use support::*;

const TEAM: &str = "example.com/team-client";
const LEGACY: &str = "example.com/legacy";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_only_signers_are_approved_and_never_get_a_status_write() {
    let h = harness().await;
    let policy = r#"
signers:
  - name: kubernetes.io/kubelet-serving
    role: approve
  - name: kubernetes.io/kube-apiserver-client-kubelet
    role: approve
  - name: kubernetes.io/kube-apiserver-client
    role: approve
allowList:
  - commonName: jane
    groups: [developers]
"#;
    h.create_kubelet_renewal("node-renewal", "worker-2");
    h.create_serving_csr("serving", "DNS:worker-1,IP:10.0.0.11");
    h.create_client_csr("jane-token", "jane", "/CN=jane/O=developers");
    h.create_client_csr(
        "smith-token",
        "agent-smith",
        "/CN=agent-smith/O=system:masters",
    );
    let first = h.controller_with_policy(policy, &["--concurrency", "1"]);
    h.server
        .wait_for("all decided", |s| {
            ["node-renewal", "serving", "jane"]
                .iter()
                .all(|csr| has(s, csr, "Approved"))
                && has(s, "agent-smith", "Denied")
        })
        .await;
    // Nothing signs, so no CA is waited for.
    first.wait_synced().await;
    let (status, body) = first.http_get("/readyz").await;
    assert_eq!(status, 200, "{body}");

    // kube-controller-manager issues the renewal; csr-warden leaves its certificate alone.
    let kcm_certificate = std::fs::read_to_string(&h.ca.0).expect("a certificate");
    h.server
        .issue_as_another_signer("node-renewal", &kcm_certificate);
    // One worker and an ordered watch: once a later CSR is approved, the write above was seen.
    h.create_kubelet_renewal("node-renewal-2", "worker-3");
    h.server
        .wait_for("the later renewal approved", |s| {
            has(s, "node-renewal-2", "Approved")
        })
        .await;

    // A restarted controller (a relist, every CSR looked at again) signs nothing either.
    first.kill().await;
    let second = h.controller_with_policy(policy, &["--concurrency", "1"]);
    h.create_kubelet_renewal("node-renewal-3", "worker-4");
    h.server
        .wait_for("renewal 3 approved", |s| {
            has(s, "node-renewal-3", "Approved")
        })
        .await;
    second.wait_synced().await;

    let writes = h.server.writes();
    assert!(
        writes.iter().all(|w| w.subresource == "approval"),
        "csr-warden wrote only approvals: {writes:?}"
    );
    for csr in [
        "node-renewal",
        "node-renewal-2",
        "node-renewal-3",
        "serving",
        "jane",
    ] {
        let state = csr_state(&h.server, csr);
        assert!(
            !condition_types(&state).contains(&"Failed".to_owned()),
            "{csr}: {state}"
        );
    }
    assert_eq!(
        certificate_pem(&csr_state(&h.server, "node-renewal")).as_deref(),
        Some(kcm_certificate.as_str()),
        "kube-controller-manager's certificate is untouched"
    );
    assert!(!issued(&h.server, "jane"), "nobody signed jane's yet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_and_sign_uses_the_signers_own_ca() {
    let h = harness().await;
    let team_dir = tempfile::tempdir().expect("dir");
    let team_ca = openssl_ca(team_dir.path(), KeyKind::P256, 365);
    let policy = format!(
        "signers:\n  - name: {TEAM}\n    role: approveAndSign\n    ca: {}\nallowList:\n  - commonName: jane\n    groups: [developers]\n",
        ca_yaml(&team_ca)
    );
    h.create_signer_csr("jane-token", "team-jane", "/CN=jane/O=developers", TEAM);
    let controller = h.controller_with_policy(&policy, &[]);
    h.server
        .wait_for("team-jane issued", |s| issued(s, "team-jane"))
        .await;
    let cert = certificate_pem(&csr_state(&h.server, "team-jane")).expect("certificate");
    assert!(openssl_verifies(
        h.dir.path(),
        &team_ca.0,
        &cert,
        "sslclient"
    ));
    assert!(
        !openssl_verifies(h.dir.path(), &h.ca.0, &cert, "sslclient"),
        "signed by the team CA, not another"
    );
    let (_, metrics) = controller.http_get("/metrics").await;
    assert!(
        metric_sample(
            &metrics,
            &format!("csr_warden_ca_not_after_timestamp_seconds{{signer=\"{TEAM}\"}}")
        )
        .is_some_and(|t| t > 1.7e9),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_only_signs_what_a_human_approved_and_never_decides() {
    let h = harness().await;
    let legacy_dir = tempfile::tempdir().expect("dir");
    let legacy_ca = openssl_ca(legacy_dir.path(), KeyKind::P256, 365);
    let team_dir = tempfile::tempdir().expect("dir");
    let team_ca = openssl_ca(team_dir.path(), KeyKind::P256, 365);
    let policy = format!(
        "signers:\n  - name: {LEGACY}\n    role: sign\n    ca: {}\n  - name: {TEAM}\n    ca: {}\nallowList:\n  - commonName: jane\n    groups: [developers]\n",
        ca_yaml(&legacy_ca),
        ca_yaml(&team_ca)
    );
    // jane's would be approved if csr-warden decided for this signer.
    h.create_signer_csr("jane-token", "legacy-jane", "/CN=jane/O=developers", LEGACY);
    h.create_signer_csr(
        "smith-token",
        "legacy-smith",
        "/CN=agent-smith/O=system:masters",
        LEGACY,
    );
    let _controller = h.controller_with_policy(&policy, &["--concurrency", "1"]);
    h.create_signer_csr("jane-token", "team-marker", "/CN=jane/O=developers", TEAM);
    h.server
        .wait_for("the marker issued with its Events", |s| {
            issued(s, "team-marker") && s.events_for("team-marker").len() == 2
        })
        .await;
    assert!(
        h.server.writes_except("team-marker").is_empty(),
        "{:?}",
        h.server.writes()
    );
    assert_eq!(h.server.events_except("team-marker"), 0);
    assert!(condition_types(&csr_state(&h.server, "legacy-jane")).is_empty());

    // A human approves both.
    let admin = h.admin_kubeconfig();
    let (ok, out, err) = kubectl(
        &admin,
        &["certificate", "approve", "legacy-jane", "legacy-smith"],
        None,
    );
    assert!(ok, "{out}{err}");
    h.server
        .wait_for("jane issued, smith failed", |s| {
            issued(s, "legacy-jane") && has(s, "legacy-smith", "Failed")
        })
        .await;
    let cert = certificate_pem(&csr_state(&h.server, "legacy-jane")).expect("certificate");
    assert!(openssl_verifies(
        h.dir.path(),
        &legacy_ca.0,
        &cert,
        "sslclient"
    ));
    assert!(!openssl_verifies(
        h.dir.path(),
        &team_ca.0,
        &cert,
        "sslclient"
    ));
    let smith = csr_state(&h.server, "legacy-smith");
    assert_eq!(
        condition(&smith, "Failed").expect("Failed")["reason"],
        "ForbiddenGroup"
    );
    assert!(certificate_pem(&smith).is_none(), "{smith}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_signer_on_the_cluster_ca_refuses_to_start_unless_allowed() {
    let h = harness().await;
    let cluster_ca = h.server.cluster_ca_files(h.dir.path());
    let policy = format!(
        "# the team's signer\nsigners:\n  - name: kubernetes.io/kube-apiserver-client\n    ca: {ca}\n  - name: {TEAM}\n    ca: {ca}\n",
        ca = ca_yaml(&cluster_ca)
    );
    let (code, lines) = h.controller_with_policy(&policy, &[]).wait_exit().await;
    assert_eq!(code, Some(1), "{lines:?}");
    let error = lines
        .iter()
        .find(|l| l["level"] == "ERROR")
        .and_then(|l| l["message"].as_str())
        .unwrap_or_else(|| panic!("an error line: {lines:?}"));
    assert!(
        error.contains("policy line 5")
            && error.contains(TEAM)
            && error.contains("authenticate to the API server")
            && error.contains("allowClusterCA: true"),
        "{error}"
    );
    // The kubernetes.io signer on the same CA is not what it objects to.
    assert!(
        !error.contains("kubernetes.io/kube-apiserver-client would"),
        "{error}"
    );

    // Said explicitly, it starts.
    let allowed = policy.replace(
        &format!("  - name: {TEAM}\n"),
        &format!("  - name: {TEAM}\n    allowClusterCA: true\n"),
    );
    let controller = h.controller_with_policy(&allowed, &[]);
    controller.wait_synced().await;
    let (status, body) = controller.http_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signers_ca_is_reloaded_when_its_secret_changes() {
    let h = harness().await;
    // The Secret's files, as kubelet mounts them; rotated in place below.
    let mounted = tempfile::tempdir().expect("dir");
    let team_ca = (
        mounted.path().join("tls.crt"),
        mounted.path().join("tls.key"),
    );
    let old_dir = tempfile::tempdir().expect("dir");
    let old_ca = openssl_ca(old_dir.path(), KeyKind::P256, 365);
    let new_dir = tempfile::tempdir().expect("dir");
    let new_ca = openssl_ca(new_dir.path(), KeyKind::Ed25519, 365);
    let mount = |ca: &(std::path::PathBuf, std::path::PathBuf)| {
        std::fs::copy(&ca.0, &team_ca.0).expect("cert");
        std::fs::copy(&ca.1, &team_ca.1).expect("key");
    };
    mount(&old_ca);
    let policy = format!(
        "signers:\n  - name: {TEAM}\n    ca: {}\nallowList:\n  - commonName: jane\n    groups: [developers]\n",
        ca_yaml(&team_ca)
    );
    let controller = h.controller_with_policy(&policy, &["--reload-interval-ms", "100"]);
    h.create_signer_csr("jane-token", "before", "/CN=jane/O=developers", TEAM);
    h.server
        .wait_for("before issued", |s| issued(s, "before"))
        .await;
    mount(&new_ca);
    // The second "CA loaded" for the team signer: the first was at start-up.
    controller
        .wait_for_logs("the new CA loaded", 2, |l| {
            l["message"] == "CA loaded" && l["signers"].as_str().is_some_and(|s| s.contains(TEAM))
        })
        .await;
    h.create_signer_csr("jane-token", "after", "/CN=jane/O=developers", TEAM);
    h.server
        .wait_for("after issued", |s| issued(s, "after"))
        .await;
    let before = certificate_pem(&csr_state(&h.server, "before")).expect("before");
    let after = certificate_pem(&csr_state(&h.server, "after")).expect("after");
    assert!(openssl_verifies(
        h.dir.path(),
        &old_ca.0,
        &before,
        "sslclient"
    ));
    assert!(openssl_verifies(
        h.dir.path(),
        &new_ca.0,
        &after,
        "sslclient"
    ));
    assert!(!openssl_verifies(
        h.dir.path(),
        &old_ca.0,
        &after,
        "sslclient"
    ));
}
