//! End-to-end: the real csr-warden binary against the fake API server, CSRs made by openssl,
//! certificates checked by openssl.

use crate::support;

use support::apiserver::ADMIN_TOKEN;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jane_is_approved_and_signed() {
    let h = harness().await;
    let pem = openssl_csr(
        h.dir.path(),
        "jane",
        KeyKind::Rsa(2048),
        "/CN=jane/O=developers",
        None,
        &[],
    );
    h.server.create_csr(
        "jane-token",
        csr_object("jane", CLIENT_SIGNER, &["client auth"], &pem),
    );
    let controller = ControllerProcess::start(&h.server, h.dir.path(), &h.ca, &[]);
    h.server
        .wait_for("jane issued", |s| issued(s, "jane"))
        .await;

    let csr = csr_state(&h.server, "jane");
    let approved = condition(&csr, "Approved").expect("Approved condition");
    assert_eq!(approved["status"], "True");
    assert_eq!(approved["reason"], "AutoApprovedAllowList");
    assert_eq!(condition_types(&csr), ["Approved"]);
    let cert = certificate_pem(&csr).expect("certificate");
    let verified = openssl_verify(h.dir.path(), &h.ca.0, &cert, "sslclient");
    assert!(verified.contains("OK"), "{verified}");
    let text = openssl_text(h.dir.path(), &cert);
    assert!(
        text.contains("Subject: CN = jane, O = developers")
            || text.contains("Subject: CN=jane, O=developers"),
        "{text}"
    );
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");

    let events = h.server.events_for("jane");
    let reasons: Vec<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
    assert_eq!(reasons, ["AutoApprovedAllowList", "Issued"]);
    assert!(events.iter().all(|e| e["type"] == "Normal"));

    let lines = controller.kill().await;
    let decision = lines
        .iter()
        .find(|l| l["csr"] == "jane" && l["decision"] == "approve")
        .expect("decision log line");
    assert_eq!(decision["requester"], "jane");
    assert_eq!(decision["signer"], CLIENT_SIGNER);
    assert_eq!(decision["subject"], "CN=jane,O=developers");
    assert_eq!(decision["reason"], "AutoApprovedAllowList");

    // From a certificate file to the line that issued it, as README's operator section says:
    // openssl's serial and SHA-256 fingerprint are the line's fields, verbatim.
    let file = h.dir.path().join("leaked.crt");
    std::fs::write(&file, &cert).expect("cert file");
    let file = file.display().to_string();
    let said = String::from_utf8(openssl(&[
        "x509",
        "-in",
        &file,
        "-noout",
        "-serial",
        "-fingerprint",
        "-sha256",
    ]))
    .expect("utf-8");
    let serial = said
        .lines()
        .find_map(|l| l.strip_prefix("serial="))
        .expect("serial");
    let fingerprint = said
        .lines()
        .find_map(|l| l.split_once("Fingerprint=").map(|(_, f)| f))
        .expect("fingerprint");
    let issued_line = lines
        .iter()
        .find(|l| l["decision"] == "issued" && l["serial"] == serial)
        .expect("the issued line, found by serial");
    assert_eq!(issued_line["csr"], "jane");
    assert_eq!(issued_line["sha256_fingerprint"], fingerprint);
    assert_eq!(issued_line["requester"], "jane");
    assert_eq!(issued_line["signer"], CLIENT_SIGNER);
    assert_eq!(issued_line["subject"], "CN=jane,O=developers");
    assert!(
        issued_line["not_after"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    assert!(
        issued_line["not_before"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    let ca_text = String::from_utf8(openssl(&[
        "x509",
        "-in",
        &h.ca.0.display().to_string(),
        "-noout",
        "-ext",
        "subjectKeyIdentifier",
    ]))
    .unwrap_or_default();
    let ca_key_id = issued_line["ca_key_id"].as_str().expect("ca_key_id");
    assert!(
        ca_text.contains(ca_key_id) || text.contains(ca_key_id),
        "the CA's key id {ca_key_id} is the certificate's AKI: {ca_text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_smith_is_denied_with_a_warning_event_naming_system_masters() {
    let h = harness().await;
    h.create_client_csr(
        "smith-token",
        "agent-smith",
        "/CN=agent-smith/O=system:masters",
    );
    let controller = ControllerProcess::start(&h.server, h.dir.path(), &h.ca, &[]);
    h.server
        .wait_for("agent-smith denied", |s| has(s, "agent-smith", "Denied"))
        .await;
    h.server
        .wait_for("its event", |s| !s.events_for("agent-smith").is_empty())
        .await;

    let csr = csr_state(&h.server, "agent-smith");
    let denied = condition(&csr, "Denied").expect("Denied");
    assert_eq!(denied["reason"], "ForbiddenGroup");
    assert!(
        denied["message"]
            .as_str()
            .unwrap_or_default()
            .contains("system:masters")
    );
    assert!(
        certificate_pem(&csr).is_none(),
        "a denied CSR must never get a certificate"
    );
    let events = h.server.events_for("agent-smith");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "Warning");
    assert_eq!(events[0]["reason"], "ForbiddenGroup");
    assert!(
        events[0]["note"]
            .as_str()
            .unwrap_or_default()
            .contains("system:masters")
    );
    assert_eq!(events[0]["metadata"]["namespace"], "default");

    let lines = controller.kill().await;
    let line = lines
        .iter()
        .find(|l| l["csr"] == "agent-smith" && l["decision"] == "deny")
        .expect("deny log line");
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["requester"], "agent-smith");
    assert_eq!(line["subject"], "CN=agent-smith,O=system:masters");
    assert!(
        line["message"]
            .as_str()
            .unwrap_or_default()
            .contains("system:masters")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_client_csr_from_a_bootstrap_token_is_approved_and_signed() {
    let h = harness().await;
    h.server.add_user(
        "bootstrap-token",
        "system:bootstrap:abcdef",
        &["system:bootstrappers", "system:authenticated"],
    );
    h.server.allow_sar("system:bootstrappers", "nodeclient");
    let pem = openssl_csr(
        h.dir.path(),
        "node",
        KeyKind::P256,
        "/CN=system:node:worker-1/O=system:nodes",
        None,
        &[],
    );
    h.server.create_csr(
        "bootstrap-token",
        csr_object(
            "node-csr-1",
            KUBELET_CLIENT_SIGNER,
            &["digital signature", "client auth"],
            &pem,
        ),
    );
    let _controller = ControllerProcess::start(&h.server, h.dir.path(), &h.ca, &[]);
    h.server
        .wait_for("kubelet client issued", |s| issued(s, "node-csr-1"))
        .await;
    let csr = csr_state(&h.server, "node-csr-1");
    assert_eq!(
        condition(&csr, "Approved").expect("approved")["reason"],
        "AutoApprovedKubeletClient"
    );
    let cert = certificate_pem(&csr).expect("cert");
    assert!(openssl_verify(h.dir.path(), &h.ca.0, &cert, "sslclient").contains("OK"));
    assert!(openssl_text(h.dir.path(), &cert).contains("system:node:worker-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_client_csr_without_an_allowing_review_is_left_pending() {
    let h = harness().await;
    // No SubjectAccessReview allows anyone.
    h.create_bootstrap_client_csr("node-csr-2", "worker-1");
    let controller = ControllerProcess::start(&h.server, h.dir.path(), &h.ca, &[]);
    let line = controller
        .wait_for_log("leave decision", |l| {
            l["csr"] == "node-csr-2" && l["decision"] == "leave"
        })
        .await;
    assert_eq!(line["reason"], "KubeletClientNotAuthorized");
    assert!(h.server.writes().is_empty(), "{:?}", h.server.writes());
    assert!(condition_types(&csr_state(&h.server, "node-csr-2")).is_empty());
    // The kubelet's operator sees why, on the CSR: which review said no, and for whom.
    h.server
        .wait_for("the Event saying why", |s| {
            !s.events_for("node-csr-2").is_empty()
        })
        .await;
    let events = h.server.events_for("node-csr-2");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "Normal");
    assert_eq!(events[0]["reason"], "KubeletClientNotAuthorized");
    let note = events[0]["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("nodeclient") && note.contains("system:bootstrap:abcdef"),
        "{note}"
    );
}

/// A CSR left for a human says why, once: looking at it again (a policy reload, a restart)
/// with the same outcome writes no second Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_left_pending_gets_one_event_saying_why() {
    let h = harness().await;
    h.create_client_csr("bob-token", "bob", "/CN=bob/O=ops");
    // One worker: CSRs are finished one after another, so a CSR created later being done
    // means bob's look (and any Event it writes) is done too.
    let flags = ["--concurrency", "1", "--reload-interval-ms", "100"];
    let first = h.controller(&flags);
    h.server
        .wait_for("bob's Event", |s| !s.events_for("bob").is_empty())
        .await;
    let events = h.server.events_for("bob");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "Normal");
    assert_eq!(events[0]["reason"], "NoMatchingRule");
    assert!(
        events[0]["note"]
            .as_str()
            .is_some_and(|n| n.contains("left pending for a human")),
        "{events:?}"
    );

    // A policy reload looks at bob again.
    let policy = h.dir.path().join("policy.yaml");
    let text = std::fs::read_to_string(&policy).expect("policy");
    std::fs::write(
        &policy,
        text.replace(
            "allowList:\n",
            "allowList:\n  - commonName: carol\n    groups: [ops]\n",
        ),
    )
    .expect("new policy");
    first
        .wait_for_log("policy reloaded", |l| l["message"] == "policy reloaded")
        .await;
    first
        .wait_for_logs("bob looked at again", 2, |l| {
            l["csr"] == "bob" && l["decision"] == "leave"
        })
        .await;
    h.caught_up("after-reload").await;
    assert_eq!(
        h.server.events_for("bob").len(),
        1,
        "no second Event after a reload"
    );

    // A restarted controller has no memory of it, and reads the Event from the server.
    first.kill().await;
    let second = h.controller(&flags);
    second
        .wait_for_log("bob looked at after the restart", |l| {
            l["csr"] == "bob" && l["decision"] == "leave"
        })
        .await;
    h.caught_up("after-restart").await;
    assert_eq!(
        h.server.events_for("bob").len(),
        1,
        "no second Event after a restart"
    );
    assert!(condition_types(&csr_state(&h.server, "bob")).is_empty());
}

/// After a restart (or a change of leader) the reasons already given are read from the server
/// with one list of csr-warden's own CSR Events, not one list of `default` per pending CSR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_reasons_already_given_are_read_in_one_list() {
    let h = harness().await;
    let names: Vec<String> = (0..10).map(|i| format!("bob-{i}")).collect();
    for name in &names {
        h.create_client_csr("bob-token", name, "/CN=bob/O=ops");
    }
    let flags = ["--concurrency", "1"];
    let first = h.controller(&flags);
    h.server
        .wait_for("every bob's Event", |s| {
            names.iter().all(|n| !s.events_for(n).is_empty())
        })
        .await;
    first.kill().await;
    let lists_before = h.server.event_lists();
    let second = h.controller(&flags);
    second
        .wait_for_logs("every bob looked at again", names.len(), |l| {
            l["decision"] == "leave" && l["csr"].as_str().is_some_and(|c| c.starts_with("bob-"))
        })
        .await;
    h.caught_up("after-restart").await;
    assert_eq!(
        h.server.event_lists() - lists_before,
        1,
        "one list of Events for {} pending CSRs",
        names.len()
    );
    for name in &names {
        assert_eq!(
            h.server.events_for(name).len(),
            1,
            "{name}: no second Event"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_serving_csr_with_a_foreign_san_is_denied() {
    let h = harness().await;
    h.server.add_user(
        "node-token",
        "system:node:worker-1",
        &["system:nodes", "system:authenticated"],
    );
    h.server.add_node(
        "worker-1",
        &[("InternalIP", "10.0.0.11"), ("Hostname", "worker-1")],
    );
    let good = openssl_csr(
        h.dir.path(),
        "good",
        KeyKind::P256,
        "/CN=system:node:worker-1/O=system:nodes",
        Some("DNS:worker-1,IP:10.0.0.11"),
        &[],
    );
    let bad = openssl_csr(
        h.dir.path(),
        "bad",
        KeyKind::P256,
        "/CN=system:node:worker-1/O=system:nodes",
        Some("DNS:worker-1,DNS:KUBERNETES.default.svc"),
        &[],
    );
    let usages = ["digital signature", "server auth"];
    h.server.create_csr(
        "node-token",
        csr_object("serving-good", KUBELET_SERVING_SIGNER, &usages, &good),
    );
    h.server.create_csr(
        "node-token",
        csr_object("serving-bad", KUBELET_SERVING_SIGNER, &usages, &bad),
    );
    let _controller = ControllerProcess::start(&h.server, h.dir.path(), &h.ca, &[]);
    h.server
        .wait_for("both decided", |s| {
            issued(s, "serving-good") && has(s, "serving-bad", "Denied")
        })
        .await;

    let bad = csr_state(&h.server, "serving-bad");
    let denied = condition(&bad, "Denied").expect("denied");
    assert_eq!(denied["reason"], "ApiServerName");
    assert!(
        denied["message"]
            .as_str()
            .unwrap_or_default()
            .contains("KUBERNETES.default.svc")
    );
    let cert = certificate_pem(&csr_state(&h.server, "serving-good")).expect("cert");
    assert!(openssl_verify(h.dir.path(), &h.ca.0, &cert, "sslserver").contains("OK"));
    let text = openssl_text(h.dir.path(), &cert);
    assert!(
        text.contains("DNS:worker-1") && text.contains("IP Address:10.0.0.11"),
        "{text}"
    );
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csr_for_another_signer_is_left_untouched() {
    let h = harness().await;
    let pem = openssl_csr(
        h.dir.path(),
        "other",
        KeyKind::P256,
        "/CN=jane/O=developers",
        None,
        &[],
    );
    h.server.create_csr(
        "jane-token",
        csr_object(
            "other-signer",
            "example.com/some-signer",
            &["client auth"],
            &pem,
        ),
    );
    let _controller = ControllerProcess::start(&h.server, h.dir.path(), &h.ca, &[]);
    // Created after the foreign one: once it is done, the controller has seen both.
    h.caught_up("jane").await;
    assert!(h.server.writes_except("jane").is_empty());
    assert!(h.server.events_for("other-signer").is_empty());
    let csr = csr_state(&h.server, "other-signer");
    assert!(condition_types(&csr).is_empty() && certificate_pem(&csr).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_request_is_denied() {
    let h = harness().await;
    let garbage =
        "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n";
    h.server.create_csr(
        "jane-token",
        csr_object("garbage", CLIENT_SIGNER, &["client auth"], garbage),
    );
    let _controller = ControllerProcess::start(&h.server, h.dir.path(), &h.ca, &[]);
    h.server
        .wait_for("garbage denied, with its event", |s| {
            has(s, "garbage", "Denied") && !s.events_for("garbage").is_empty()
        })
        .await;
    let csr = csr_state(&h.server, "garbage");
    assert_eq!(
        condition(&csr, "Denied").expect("denied")["reason"],
        "InvalidRequest"
    );
    assert_eq!(h.server.events_for("garbage")[0]["type"], "Warning");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_on_approval_is_retried_with_a_fresh_read() {
    let h = harness().await;
    h.server.arm(|f| f.conflict_approvals = 2);
    h.create_client_csr("jane-token", "jane", "/CN=jane/O=developers");
    let _controller = ControllerProcess::start(&h.server, h.dir.path(), &h.ca, &[]);
    h.server
        .wait_for("jane issued", |s| issued(s, "jane"))
        .await;
    let approvals: Vec<u16> = h
        .server
        .writes()
        .iter()
        .filter(|w| w.subresource == "approval")
        .map(|w| w.outcome)
        .collect();
    // The two armed conflicts, then success. A reconcile queued by the conflicts' watch events
    // may try once more with a stale copy and get 409 too: that is the guard working.
    assert_eq!(approvals[..3], [409, 409, 200], "{approvals:?}");
    assert_eq!(
        approvals.iter().filter(|&&code| code == 200).count(),
        1,
        "{approvals:?}"
    );
    let csr = csr_state(&h.server, "jane");
    assert_eq!(
        condition_types(&csr),
        ["Approved"],
        "exactly one decision condition"
    );
    let approved_events = h
        .server
        .events_for("jane")
        .iter()
        .filter(|e| e["reason"] == "AutoApprovedAllowList")
        .count();
    assert_eq!(approved_events, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csr_approved_by_hand_with_kubectl_is_then_signed() {
    let h = harness().await;
    // Bob is not allow-listed: csr-warden leaves his request for a human.
    h.server
        .add_user("bob-token", "bob", &["system:authenticated"]);
    let pem = openssl_csr(
        h.dir.path(),
        "bob",
        KeyKind::Ed25519,
        "/CN=bob/O=ops",
        None,
        &[],
    );
    h.server.create_csr(
        "bob-token",
        csr_object("bob", CLIENT_SIGNER, &["client auth"], &pem),
    );
    let controller = ControllerProcess::start(&h.server, h.dir.path(), &h.ca, &[]);
    controller
        .wait_for_log("bob left pending", |l| {
            l["csr"] == "bob" && l["decision"] == "leave"
        })
        .await;
    assert!(h.server.writes().is_empty());

    let admin = h.server.kubeconfig(h.dir.path(), ADMIN_TOKEN);
    let (ok, out, err) = kubectl(&admin, &["certificate", "approve", "bob"], None);
    assert!(ok, "kubectl certificate approve failed: {out}{err}");
    h.server.wait_for("bob issued", |s| issued(s, "bob")).await;
    let csr = csr_state(&h.server, "bob");
    assert_eq!(
        condition(&csr, "Approved").expect("approved")["reason"],
        "KubectlApprove"
    );
    let cert = certificate_pem(&csr).expect("cert");
    assert!(openssl_verify(h.dir.path(), &h.ca.0, &cert, "sslclient").contains("OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_masters_approved_by_hand_is_failed_not_signed() {
    let h = harness().await;
    // Approved before csr-warden ever saw it, as a careless human would.
    h.create_client_csr(
        "smith-token",
        "agent-smith",
        "/CN=agent-smith/O=system:masters",
    );
    let admin = h.server.kubeconfig(h.dir.path(), ADMIN_TOKEN);
    let (ok, out, err) = kubectl(&admin, &["certificate", "approve", "agent-smith"], None);
    assert!(ok, "{out}{err}");
    let _controller = ControllerProcess::start(&h.server, h.dir.path(), &h.ca, &[]);
    h.server
        .wait_for("agent-smith failed", |s| has(s, "agent-smith", "Failed"))
        .await;
    let csr = csr_state(&h.server, "agent-smith");
    assert!(certificate_pem(&csr).is_none());
    assert_eq!(
        condition(&csr, "Failed").expect("failed")["reason"],
        "ForbiddenGroup"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_controller_decides_and_signs_nothing_twice() {
    let h = harness().await;
    let jane = openssl_csr(
        h.dir.path(),
        "jane",
        KeyKind::P256,
        "/CN=jane/O=developers",
        None,
        &[],
    );
    let smith = openssl_csr(
        h.dir.path(),
        "smith",
        KeyKind::P256,
        "/CN=agent-smith/O=system:masters",
        None,
        &[],
    );
    h.server.create_csr(
        "jane-token",
        csr_object("jane", CLIENT_SIGNER, &["client auth"], &jane),
    );
    h.server.create_csr(
        "smith-token",
        csr_object("agent-smith", CLIENT_SIGNER, &["client auth"], &smith),
    );
    let first = ControllerProcess::start(&h.server, h.dir.path(), &h.ca, &[]);
    h.server
        .wait_for("first run done", |s| {
            issued(s, "jane")
                && has(s, "agent-smith", "Denied")
                && s.events_for("jane").len() == 2
                && s.events_for("agent-smith").len() == 1
        })
        .await;
    first.kill().await;
    let writes_before = h.server.writes();
    let events_before = h.server.events();
    let cert_before = certificate_pem(&csr_state(&h.server, "jane"));

    let _second = ControllerProcess::start(&h.server, h.dir.path(), &h.ca, &[]);
    // A CSR created after the restart: once it is done, the second run has seen the others.
    h.caught_up("after-restart").await;
    assert_eq!(
        h.server.writes_except("after-restart"),
        writes_before,
        "no new writes after restart"
    );
    assert_eq!(
        h.server.events_except("after-restart"),
        events_before.len(),
        "no new events after restart"
    );
    assert_eq!(certificate_pem(&csr_state(&h.server, "jane")), cert_before);
}

/// The README's user and operator flows, with kubectl itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_user_and_operator_flows() {
    let h = harness().await;
    let _controller = ControllerProcess::start(&h.server, h.dir.path(), &h.ca, &[]);
    let jane_kubeconfig = h.server.kubeconfig(h.dir.path(), "jane-token");
    let smith_kubeconfig = h.server.kubeconfig(h.dir.path(), "smith-token");
    let admin = h.server.kubeconfig(h.dir.path(), ADMIN_TOKEN);

    // The user: key + CSR with openssl, the CSR object with kubectl apply.
    let pem = openssl_csr(
        h.dir.path(),
        "jane",
        KeyKind::Rsa(2048),
        "/CN=jane/O=developers",
        None,
        &[],
    );
    let manifest =
        serde_json::to_string(&csr_object("jane", CLIENT_SIGNER, &["client auth"], &pem))
            .expect("json");
    let (ok, out, err) = kubectl(
        &jane_kubeconfig,
        &["apply", "--validate=false", "-f", "-"],
        Some(&manifest),
    );
    assert!(ok, "kubectl apply: {out}{err}");
    let smith = openssl_csr(
        h.dir.path(),
        "smith",
        KeyKind::P256,
        "/CN=agent-smith/O=system:masters",
        None,
        &[],
    );
    let manifest = serde_json::to_string(&csr_object(
        "agent-smith",
        CLIENT_SIGNER,
        &["client auth"],
        &smith,
    ))
    .expect("json");
    let (ok, out, err) = kubectl(
        &smith_kubeconfig,
        &["create", "--validate=false", "-f", "-"],
        Some(&manifest),
    );
    assert!(ok, "kubectl create: {out}{err}");
    h.server
        .wait_for("decided", |s| {
            issued(s, "jane")
                && has(s, "agent-smith", "Denied")
                && !s.events_for("agent-smith").is_empty()
        })
        .await;

    let (ok, out, err) = kubectl(
        &jane_kubeconfig,
        &["get", "csr", "jane", "-o", "jsonpath={.status.certificate}"],
        None,
    );
    assert!(ok, "{err}");
    use base64::Engine;
    let cert = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(out.trim())
            .expect("base64"),
    )
    .expect("pem");
    assert!(openssl_verify(h.dir.path(), &h.ca.0, &cert, "sslclient").contains("OK"));
    let (ok, out, err) = kubectl(&admin, &["get", "csr"], None);
    assert!(ok, "{err}");
    assert!(out.contains("jane") && out.contains("agent-smith"), "{out}");

    // The operator: why was agent-smith denied?
    let (ok, out, err) = kubectl(&admin, &["describe", "csr", "agent-smith"], None);
    assert!(ok, "{err}");
    assert!(out.contains("Denied"), "{out}");
    assert!(out.contains("ForbiddenGroup"), "{out}");
    assert!(out.contains("system:masters"), "{out}");
    let (ok, out, err) = kubectl(
        &admin,
        // custom-columns: the fake API server does not render server-side Tables.
        &[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            "involvedObject.kind=CertificateSigningRequest,involvedObject.name=agent-smith",
            "-o",
            "custom-columns=TYPE:.type,REASON:.reason,OBJECT:.involvedObject.name,MESSAGE:.message",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("ForbiddenGroup") && out.contains("Warning") && out.contains("system:masters"),
        "{out}"
    );
    assert!(
        !out.contains("jane"),
        "the field selector must filter: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_in_two_groups_gets_a_certificate_the_api_server_reads_as_both() {
    let h = harness().await;
    h.server
        .add_user("maria-token", "maria", &["system:authenticated"]);
    std::fs::write(
        h.dir.path().join("policy.yaml"),
        POLICY.replace(
            "allowList:\n",
            "allowList:\n  - commonName: maria\n    groups: [developers, ops]\n",
        ),
    )
    .expect("policy");
    // As on kubeadm: csr-warden signs kube-apiserver-client with the cluster CA, the CA the API
    // server trusts for client certificates.
    let cluster_ca = h.server.cluster_ca_files(h.dir.path());
    let controller = ControllerProcess::start(&h.server, h.dir.path(), &cluster_ca, &[]);
    h.create_client_csr("maria-token", "maria", "/CN=maria/O=developers/O=ops");
    h.server
        .wait_for("maria issued", |s| issued(s, "maria"))
        .await;
    let state = csr_state(&h.server, "maria");
    assert_eq!(
        condition(&state, "Approved").expect("approved")["reason"],
        "AutoApprovedAllowList"
    );
    let line = log_about(&controller.lines(), "maria")
        .into_iter()
        .find(|l| l["decision"] == "approve")
        .cloned()
        .expect("decision line");
    assert_eq!(line["subject"], "CN=maria,O=developers,O=ops", "{line}");

    // The certificate logs maria in, with both groups: the server's own view (kubectl auth whoami).
    let certificate = certificate_pem(&state).expect("certificate");
    let key = std::fs::read_to_string(h.dir.path().join("maria.key")).expect("maria's key");
    let kubeconfig =
        h.server
            .kubeconfig_with_certificate(h.dir.path(), "maria", &certificate, &key);
    let (ok, out, err) = kubectl(&kubeconfig, &["auth", "whoami", "-o", "json"], None);
    assert!(ok, "{out}{err}");
    let review: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        review["status"]["userInfo"]["username"], "maria",
        "{review}"
    );
    let groups = review["status"]["userInfo"]["groups"]
        .as_array()
        .expect("groups");
    for group in ["developers", "ops"] {
        assert!(groups.iter().any(|g| g == group), "{group}: {review}");
    }

    // Decided and signed from one inspection of the request.
    let (_, metrics) = controller.http_get("/metrics").await;
    assert_eq!(
        metric_sample(&metrics, "csr_warden_requests_inspected_total"),
        Some(1.0),
        "{metrics}"
    );
}

/// A Node that has no addresses yet (its cloud provider has not initialised it) leaves its
/// serving CSR pending, and the CSR is decided as soon as the Node's addresses arrive: the Node
/// watch re-offers it, no resync or restart needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_serving_waits_for_a_node_without_addresses_then_is_decided() {
    let h = harness().await;
    h.server.add_user(
        "node-token",
        "system:node:worker-1",
        &["system:nodes", "system:authenticated"],
    );
    h.server.add_node("worker-1", &[]);
    let pem = openssl_csr(
        h.dir.path(),
        "late",
        KeyKind::P256,
        "/CN=system:node:worker-1/O=system:nodes",
        Some("DNS:worker-1,IP:10.0.0.11"),
        &[],
    );
    h.server.create_csr(
        "node-token",
        csr_object(
            "serving-late",
            KUBELET_SERVING_SIGNER,
            &["digital signature", "server auth"],
            &pem,
        ),
    );
    let controller = ControllerProcess::start(&h.server, h.dir.path(), &h.ca, &[]);
    controller
        .wait_for_log("left pending for want of addresses", |l| {
            l["csr"] == "serving-late" && l["reason"] == "NodeAddressesPending"
        })
        .await;
    assert!(condition_types(&csr_state(&h.server, "serving-late")).is_empty());
    h.server.add_node(
        "worker-1",
        &[("InternalIP", "10.0.0.11"), ("Hostname", "worker-1")],
    );
    h.server
        .wait_for("issued once the Node has addresses", |s| {
            issued(s, "serving-late")
        })
        .await;
    let approved = csr_state(&h.server, "serving-late");
    assert_eq!(
        condition(&approved, "Approved").expect("approved")["reason"],
        "AutoApprovedKubeletServing"
    );
}

/// Any requester controls the text of its Event (the subject goes into the message): a subject
/// of 30 long O values makes a message far over the API's 1024-byte limit. The Event is written
/// cut to fit, with a marker, and the CSR is not looked at again; the log line keeps it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_text_over_the_apis_limit_is_cut_to_fit_and_written_once() {
    let h = harness().await;
    let long: Vec<String> = (0..30)
        .map(|i| format!("/O=team-{i:02}-with-a-rather-long-organisation-name-for-the-limit"))
        .collect();
    let subject = format!("/CN=bob{}", long.concat());
    h.create_client_csr("bob-token", "bob", &subject);
    let controller = h.controller(&["--concurrency", "1"]);
    h.server
        .wait_for("bob's leave Event", |s| s.events_for("bob").len() == 1)
        .await;
    h.caught_up("marker").await;
    let events = h.server.events_for("bob");
    assert_eq!(events.len(), 1, "{events:#?}");
    let note = events[0]["note"].as_str().expect("note");
    assert!(note.len() <= 1024, "{} bytes", note.len());
    assert!(
        note.ends_with("the whole text is in csr-warden's log]"),
        "{note}"
    );
    assert_eq!(events[0]["reason"], "NoMatchingRule");
    let lines = controller.kill().await;
    let about_bob = log_about(&lines, "bob");
    let decided: Vec<_> = about_bob
        .iter()
        .filter(|l| l["decision"] == "leave")
        .collect();
    assert_eq!(
        decided.len(),
        1,
        "decided once, not retried: {about_bob:#?}"
    );
    assert!(
        decided[0]["message"]
            .as_str()
            .is_some_and(|m| m.len() > 1024 && m.contains("team-29")),
        "the log line keeps the whole text"
    );
}

/// An Event the server refuses is not retried and never holds up or repeats the decision;
/// one the server cannot take now is retried a bounded number of times, then dropped. Both are
/// counted in csr_warden_events_dropped_total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_or_failing_events_are_dropped_and_counted_and_the_decisions_stand() {
    use support::apiserver::ErrorFault;
    let h = harness().await;
    h.server.arm(|f| {
        f.errors.push(ErrorFault::new(
            Some(hyper::Method::POST),
            "/events",
            422,
            1,
        ))
    });
    h.create_client_csr("jane-token", "jane", "/CN=jane/O=developers");
    let controller = h.controller(&["--concurrency", "1"]);
    h.server
        .wait_for("jane issued", |s| issued(s, "jane"))
        .await;
    controller
        .wait_for_log("the refused Event dropped", |l| {
            l["cause"] == "invalid" && l["csr"] == "jane"
        })
        .await;
    h.server
        .wait_for("jane's Issued Event", |s| {
            s.events_for("jane").iter().any(|e| e["reason"] == "Issued")
        })
        .await;
    // The server cannot take Events for a while: jane-2's approval Event is tried a few times,
    // then dropped; jane-2 is approved and issued all the same.
    h.server.arm(|f| {
        f.errors.push(ErrorFault::new(
            Some(hyper::Method::POST),
            "/events",
            503,
            100,
        ))
    });
    h.create_client_csr("jane-token", "jane-2", "/CN=jane/O=developers");
    h.server
        .wait_for("jane-2 issued", |s| issued(s, "jane-2"))
        .await;
    controller
        .wait_for_logs("jane-2's two Events given up", 2, |l| {
            l["cause"] == "unavailable" && l["csr"] == "jane-2"
        })
        .await;
    let (_, metrics) = controller.http_get("/metrics").await;
    assert_eq!(
        metric_sample(
            &metrics,
            r#"csr_warden_events_dropped_total{cause="invalid"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_sample(
            &metrics,
            r#"csr_warden_events_dropped_total{cause="unavailable"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
    // A leave Event is the only word on a CSR left pending: a passing outage (here 6 refusals,
    // more than one try's 4 attempts) is outlasted by trying the CSR again, boundedly.
    h.server.arm(|f| {
        f.errors.clear();
        f.errors.push(ErrorFault::new(
            Some(hyper::Method::POST),
            "/events",
            503,
            6,
        ))
    });
    h.create_client_csr("bob-token", "bob", "/CN=bob/O=ops");
    h.server
        .wait_for("bob's leave Event, in the end", |s| {
            s.events_for("bob").len() == 1
        })
        .await;
    let lines = controller.kill().await;
    let bob: Vec<_> = log_about(&lines, "bob")
        .into_iter()
        .filter(|l| l["decision"] == "leave")
        .collect();
    assert_eq!(
        bob.len(),
        2,
        "bob looked at again once for its Event: {bob:#?}"
    );
    assert_eq!(condition_types(&csr_state(&h.server, "jane")), ["Approved"]);
}

/// SubjectAccessReviews that hang must not hold up a CSR that needs none: while 12 bootstrap
/// kubelet CSRs wait for their reviews, jane's allow-listed CSR is issued; once the reviews
/// answer again, the kubelet CSRs (whose hung reviews timed out) are approved too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_reviews_hold_up_only_the_csrs_that_wait_for_them() {
    let h = harness().await;
    h.server.allow_sar("system:bootstrappers", "nodeclient");
    h.server
        .arm(|f| f.slow_node_reviews = std::time::Duration::from_secs(3600));
    let nodes: Vec<String> = (0..12).map(|i| format!("boot-{i:02}")).collect();
    for node in &nodes {
        h.create_bootstrap_client_csr(&format!("node-csr-{node}"), node);
    }
    let controller = h.controller(&[]);
    controller.wait_synced().await;
    h.create_client_csr("jane-token", "jane", "/CN=jane/O=developers");
    h.server
        .wait_for("jane issued while the reviews hang", |s| issued(s, "jane"))
        .await;
    let decided: Vec<&String> = nodes
        .iter()
        .filter(|n| !condition_types(&csr_state(&h.server, &format!("node-csr-{n}"))).is_empty())
        .collect();
    assert!(
        decided.is_empty(),
        "no review has answered yet: {decided:?}"
    );
    h.server
        .arm(|f| f.slow_node_reviews = std::time::Duration::ZERO);
    h.server
        .wait_for_within(
            "every kubelet CSR approved once the reviews answer",
            std::time::Duration::from_secs(120),
            |s| {
                nodes
                    .iter()
                    .all(|n| has(s, &format!("node-csr-{n}"), "Approved"))
            },
        )
        .await;
    let lines = controller.kill().await;
    assert!(
        lines.iter().any(|l| l["error"]
            .as_str()
            .is_some_and(|e| e.contains("no answer within"))),
        "the hung reviews timed out"
    );
}

/// A bootstrap storm is many CSRs from one identity: one SubjectAccessReview answers them all
/// for a few seconds (README says how long a revoked binding is still honoured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_review_serves_a_storm_from_one_bootstrap_identity() {
    let h = harness().await;
    h.server.allow_sar("system:bootstrappers", "nodeclient");
    let names: Vec<String> = (0..20).map(|i| format!("storm-{i:02}")).collect();
    for name in &names {
        h.create_bootstrap_client_csr(name, name);
    }
    // One review worker (half of 2): the first answer is there before the second asks.
    let _controller = h.controller(&["--concurrency", "2"]);
    h.server
        .wait_for("the storm approved", |s| {
            names.iter().all(|n| has(s, n, "Approved"))
        })
        .await;
    assert_eq!(h.server.reviews_asked(), 1, "one review for 20 CSRs");
}
