//! Operating csr-warden: dry-run, metrics and health, live reload, leader election. The real
//! binary against the fake API server.

use crate::support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_reports_but_writes_nothing() {
    let h = harness().await;
    h.create_client_csr("jane-token", "jane", "/CN=jane/O=developers");
    h.create_client_csr(
        "smith-token",
        "agent-smith",
        "/CN=agent-smith/O=system:masters",
    );
    let controller = ControllerProcess::start(&h.server, h.dir.path(), &h.ca, &["--dry-run"]);
    h.server
        .wait_for("dry-run events", |s| {
            !s.events_for("jane").is_empty() && !s.events_for("agent-smith").is_empty()
        })
        .await;
    assert_eq!(
        h.server.events_for("agent-smith")[0]["reason"],
        "DryRunForbiddenGroup"
    );
    assert_eq!(
        h.server.events_for("jane")[0]["reason"],
        "DryRunAutoApprovedAllowList"
    );
    assert!(
        h.server.writes().is_empty(),
        "dry-run wrote {:?}",
        h.server.writes()
    );
    let lines = controller.kill().await;
    let smith = lines
        .iter()
        .find(|l| l["csr"] == "agent-smith" && l["decision"] == "deny")
        .expect("logged");
    assert_eq!(smith["dry_run"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints_report_what_happened() {
    let h = harness().await;
    h.create_client_csr("jane-token", "jane", "/CN=jane/O=developers");
    h.create_client_csr(
        "smith-token",
        "agent-smith",
        "/CN=agent-smith/O=system:masters",
    );
    let controller = ControllerProcess::start(&h.server, h.dir.path(), &h.ca, &[]);
    h.server
        .wait_for("decided", |s| {
            issued(s, "jane") && has(s, "agent-smith", "Denied")
        })
        .await;
    controller.wait_synced().await;
    // The controller updates metrics before it logs; the server sees a write before either.
    controller
        .wait_for_log("issued", |l| {
            l["csr"] == "jane" && l["decision"] == "issued"
        })
        .await;
    controller
        .wait_for_log("denied", |l| {
            l["csr"] == "agent-smith" && l["decision"] == "deny"
        })
        .await;

    let (status, body) = controller.http_get("/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, _) = controller.http_get("/readyz").await;
    assert_eq!(status, 200);
    let (status, metrics) = controller.http_get("/metrics").await;
    assert_eq!(status, 200);
    let approve = r#"csr_warden_decisions_total{signer="kubernetes.io/kube-apiserver-client",decision="approve",reason="AutoApprovedAllowList"}"#;
    let deny = r#"csr_warden_decisions_total{signer="kubernetes.io/kube-apiserver-client",decision="deny",reason="ForbiddenGroup"}"#;
    assert_eq!(metric_sample(&metrics, approve), Some(1.0), "{metrics}");
    assert_eq!(metric_sample(&metrics, deny), Some(1.0), "{metrics}");
    assert_eq!(
        metric_sample(
            &metrics,
            r#"csr_warden_certificates_issued_total{signer="kubernetes.io/kube-apiserver-client"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_sample(&metrics, "csr_warden_seconds_to_certificate_count"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_sample(&metrics, "csr_warden_leader "),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metric_sample(
            &metrics,
            r#"csr_warden_ca_not_after_timestamp_seconds{signer="kubernetes.io/kube-apiserver-client"}"#
        )
        .is_some_and(|t| t > 1.7e9),
        "{metrics}"
    );
    assert_eq!(
        metric_sample(
            &metrics,
            r#"csr_warden_ca_expiring_soon{signer="kubernetes.io/kube-apiserver-client"}"#
        ),
        Some(0.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_the_ca_is_missing() {
    let h = harness().await;
    let missing = (
        h.dir.path().join("missing.crt"),
        h.dir.path().join("missing.key"),
    );
    let controller =
        ControllerProcess::start(&h.server, h.dir.path(), &missing, &["--concurrency", "1"]);
    controller.wait_synced().await;
    let (status, body) = controller.http_get("/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("the CA of signer kubernetes.io/") && body.contains("is not loaded"),
        "{body}"
    );
    // Approvals still happen. A CA of our own that is missing is our problem, not the
    // requester's: jane stays approved (never Failed), with one Warning Event saying why.
    h.create_client_csr("jane-token", "jane", "/CN=jane/O=developers");
    controller
        .wait_for_log("jane waits for the CA", |l| {
            l["csr"] == "jane" && l["decision"] == "waiting"
        })
        .await;
    let csr = h.server.csr("jane").expect("jane");
    assert_eq!(condition_types(&csr), ["Approved"]);
    let warned = |s: &FakeApiServer, name: &str| {
        s.events()
            .into_iter()
            .filter(|e| e["regarding"]["name"] == name && e["reason"] == "CAUnavailable")
            .count()
    };
    h.server
        .wait_for("jane's Warning Event", |s| warned(s, "jane") == 1)
        .await;
    // Looked at again (a change to the CSR), jane gets no second Event. With one worker, once
    // jane-2 (created after the change) has its Event, jane's second look is done.
    h.server.label_csr("jane", "team", "blue");
    h.create_client_csr("jane-token", "jane-2", "/CN=jane/O=developers");
    h.server
        .wait_for("jane-2's Warning Event", |s| warned(s, "jane-2") == 1)
        .await;
    assert_eq!(warned(&h.server, "jane"), 1, "one Warning Event per CSR");
    let (_, metrics) = controller.http_get("/metrics").await;
    assert_eq!(
        metric_sample(&metrics, "csr_warden_csrs_waiting_for_ca "),
        Some(2.0),
        "{metrics}"
    );
}

/// The CA's Secret mounted late (or a path fixed): every approved CSR that waited is issued
/// within a reload interval, none is Failed, and the waiting gauge goes back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_csrs_waiting_for_a_missing_ca_are_issued_when_it_appears() {
    let h = harness().await;
    let late = (h.dir.path().join("late.crt"), h.dir.path().join("late.key"));
    let controller = ControllerProcess::start(
        &h.server,
        h.dir.path(),
        &late,
        &["--reload-interval-ms", "100"],
    );
    controller.wait_synced().await;
    h.create_client_csr("jane-token", "jane", "/CN=jane/O=developers");
    controller
        .wait_for_log("jane waits for the CA", |l| {
            l["csr"] == "jane" && l["decision"] == "waiting"
        })
        .await;
    std::fs::copy(&h.ca.0, &late.0).expect("CA cert");
    std::fs::copy(&h.ca.1, &late.1).expect("CA key");
    h.server
        .wait_for("jane issued once the CA is there", |s| issued(s, "jane"))
        .await;
    let csr = h.server.csr("jane").expect("jane");
    assert_eq!(condition_types(&csr), ["Approved"], "never Failed");
    let cert = certificate_pem(&csr).expect("certificate");
    assert!(openssl_verifies(h.dir.path(), &h.ca.0, &cert, "sslclient"));
    controller
        .wait_for_log("gauge back to 0", |l| {
            l["csr"] == "jane" && l["decision"] == "issued"
        })
        .await;
    let (_, metrics) = controller.http_get("/metrics").await;
    assert_eq!(
        metric_sample(&metrics, "csr_warden_csrs_waiting_for_ca "),
        Some(0.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_takes_effect_and_a_broken_policy_is_rejected() {
    let h = harness().await;
    let policy = h.dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("policy");
    let controller = ControllerProcess::start(
        &h.server,
        h.dir.path(),
        &h.ca,
        &["--reload-interval-ms", "100"],
    );
    h.create_client_csr("bob-token", "bob", "/CN=bob/O=ops");
    controller
        .wait_for_log("bob left", |l| {
            l["csr"] == "bob" && l["decision"] == "leave"
        })
        .await;

    // Allow-list bob: the reload re-checks pending CSRs.
    let with_bob = format!("{POLICY}  - commonName: bob\n    groups: [ops]\n")
        .replace("unmatched: leave\nsigning:", "unmatched: leave\nsigning:");
    let with_bob = with_bob.replace(
        "    groups: [developers]\n",
        "    groups: [developers]\n  - commonName: bob\n    groups: [ops]\n",
    );
    let with_bob = with_bob
        .trim_end_matches("  - commonName: bob\n    groups: [ops]\n")
        .to_owned()
        + "\n";
    std::fs::write(&policy, &with_bob).expect("new policy");
    controller
        .wait_for_log("policy reloaded", |l| l["message"] == "policy reloaded")
        .await;
    h.server.wait_for("bob issued", |s| issued(s, "bob")).await;

    // A broken policy is rejected and the last good one stays in force.
    std::fs::write(
        &policy,
        "signerNames: [kubernetes.io/kube-apiserver-client]\nallowList: {oops\n",
    )
    .expect("broken");
    controller
        .wait_for_log("rejected", |l| {
            l["message"] == "new policy rejected; the previous policy stays in force"
        })
        .await;
    let (_, metrics) = controller.http_get("/metrics").await;
    assert_eq!(
        metric_sample(
            &metrics,
            r#"csr_warden_reloads_total{kind="policy",result="failure"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_sample(
            &metrics,
            r#"csr_warden_reloads_total{kind="policy",result="success"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    h.create_client_csr("bob-token", "bob-2", "/CN=bob/O=ops");
    h.server
        .wait_for("bob-2 issued under the last good policy", |s| {
            issued(s, "bob-2")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_acts_and_a_standby_takes_over() {
    let h = harness().await;
    let leader_args = |name: &'static str| {
        vec![
            "--leader-election",
            "--lease-duration-seconds",
            "2",
            "--lease-namespace",
            "csr-warden",
            "--instance",
            name,
        ]
    };
    let first = ControllerProcess::start(&h.server, h.dir.path(), &h.ca, &leader_args("replica-a"));
    first
        .wait_for_log("a leads", |l| {
            l["message"] == "became leader: deciding and signing"
        })
        .await;
    let second =
        ControllerProcess::start(&h.server, h.dir.path(), &h.ca, &leader_args("replica-b"));
    second
        .wait_for_log("b started", |l| l["message"] == "leader election started")
        .await;

    h.create_client_csr("jane-token", "jane", "/CN=jane/O=developers");
    h.create_client_csr(
        "smith-token",
        "agent-smith",
        "/CN=agent-smith/O=system:masters",
    );
    h.server
        .wait_for("decided", |s| {
            issued(s, "jane") && has(s, "agent-smith", "Denied")
        })
        .await;
    second
        .wait_for_log("b stands by for jane", |l| {
            l["csr"] == "jane" && l["message"] == "standby; the leader handles it"
        })
        .await;

    // The leader dies without releasing the lease; the standby takes over when it expires.
    let first_lines = first.kill().await;
    assert!(
        first_lines
            .iter()
            .any(|l| l["csr"] == "jane" && l["decision"] == "approve")
    );
    second
        .wait_for_log("b leads", |l| {
            l["message"] == "became leader: deciding and signing"
        })
        .await;
    h.create_client_csr("jane-token", "jane-2", "/CN=jane/O=developers");
    h.server
        .wait_for("jane-2 issued by b", |s| issued(s, "jane-2"))
        .await;

    let lines = second.terminate().await;
    let decided_by_b: Vec<&str> = lines
        .iter()
        .filter(|l| l["decision"] == "approve" || l["decision"] == "deny")
        .filter_map(|l| l["csr"].as_str())
        .collect();
    assert_eq!(
        decided_by_b,
        ["jane-2"],
        "b decided only what came after it led"
    );
    let successful: Vec<(String, String)> = h
        .server
        .writes()
        .into_iter()
        .filter(|w| w.outcome == 200)
        .map(|w| (w.csr, w.subresource))
        .collect();
    let once = |csr: &str, sub: &str| {
        successful
            .iter()
            .filter(|(c, s)| c == csr && s == sub)
            .count()
    };
    for csr in ["jane", "agent-smith", "jane-2"] {
        assert_eq!(
            once(csr, "approval"),
            1,
            "{csr} decided exactly once: {successful:?}"
        );
    }
    assert_eq!(once("jane", "status"), 1);
    assert_eq!(once("jane-2", "status"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_close_to_expiry_is_reported_and_caps_certificates() {
    let h = harness().await;
    let short_dir = tempfile::tempdir().expect("dir");
    let short_ca = openssl_ca(short_dir.path(), KeyKind::P256, 10);
    let controller = ControllerProcess::start(
        &h.server,
        h.dir.path(),
        &short_ca,
        &["--reload-interval-ms", "100"],
    );
    controller
        .wait_for_log("expiry warning", |l| {
            l["level"] == "WARN"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("expires within 30 days"))
        })
        .await;
    let (_, metrics) = controller.http_get("/metrics").await;
    assert_eq!(
        metric_sample(
            &metrics,
            r#"csr_warden_ca_expiring_soon{signer="kubernetes.io/kubelet-serving"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    // A 30-day request is cut off at the CA's expiry.
    let pem = openssl_csr(
        h.dir.path(),
        "jane",
        KeyKind::P256,
        "/CN=jane/O=developers",
        None,
        &[],
    );
    let mut object = csr_object("jane", CLIENT_SIGNER, &["client auth"], &pem);
    object["spec"]["expirationSeconds"] = serde_json::json!(30 * 86_400);
    h.server.create_csr("jane-token", object);
    h.server
        .wait_for("jane issued", |s| issued(s, "jane"))
        .await;
    let cert = certificate_pem(&h.server.csr("jane").expect("jane")).expect("cert");
    let ca_end = openssl(&[
        "x509",
        "-noout",
        "-enddate",
        "-in",
        short_ca.0.to_str().expect("path"),
    ]);
    let cert_file = h.dir.path().join("jane.crt");
    std::fs::write(&cert_file, cert).expect("write");
    let cert_end = openssl(&[
        "x509",
        "-noout",
        "-enddate",
        "-in",
        cert_file.to_str().expect("path"),
    ]);
    assert_eq!(cert_end, ca_end, "the certificate ends when the CA does");

    // A signer taken out of the policy leaves no expiry alert behind; the others keep theirs.
    std::fs::write(
        h.dir.path().join("policy.yaml"),
        POLICY.replace("  - kubernetes.io/kubelet-serving\n", ""),
    )
    .expect("policy without kubelet-serving");
    controller
        .wait_for_log("policy reloaded", |l| l["message"] == "policy reloaded")
        .await;
    let (_, metrics) = controller.http_get("/metrics").await;
    assert_eq!(
        metric_sample(
            &metrics,
            r#"csr_warden_ca_expiring_soon{signer="kubernetes.io/kubelet-serving"}"#
        ),
        None,
        "{metrics}"
    );
    assert_eq!(
        metric_sample(
            &metrics,
            r#"csr_warden_ca_expiring_soon{signer="kubernetes.io/kube-apiserver-client"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
}

/// A leader that cannot renew its Lease stops acting before the Lease can expire (client-go's
/// renew deadline), says so, and acts again once renewals get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_its_lease_stops_acting() {
    use support::apiserver::{ErrorFault, Method};
    let h = harness().await;
    let controller = h.controller(&[
        "--leader-election",
        "--lease-duration-seconds",
        "3",
        "--lease-namespace",
        "csr-warden",
        "--instance",
        "replica-a",
    ]);
    controller
        .wait_for_log("a leads", |l| {
            l["message"] == "became leader: deciding and signing"
        })
        .await;
    h.server.arm(|f| {
        f.errors.push(ErrorFault::new(
            Some(Method::PATCH),
            "/leases/",
            500,
            100_000,
        ));
        f.errors
            .push(ErrorFault::new(Some(Method::GET), "/leases/", 500, 100_000));
    });
    controller
        .wait_for_log("a stands down", |l| {
            l["message"]
                == "the leader lease could not be confirmed renewed within the renew deadline; no longer acting until it is"
        })
        .await;
    let (_, metrics) = controller.http_get("/metrics").await;
    assert_eq!(
        metric_sample(&metrics, "csr_warden_leader "),
        Some(0.0),
        "{metrics}"
    );
    h.create_client_csr("jane-token", "jane", "/CN=jane/O=developers");
    controller
        .wait_for_log("jane left to the leader", |l| {
            l["csr"] == "jane" && l["message"] == "standby; the leader handles it"
        })
        .await;
    assert!(condition_types(&h.server.csr("jane").expect("jane")).is_empty());
    h.server.arm(|f| f.errors.clear());
    h.server
        .wait_for("jane issued once the lease is renewed again", |s| {
            issued(s, "jane")
        })
        .await;
}
