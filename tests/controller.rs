//! End-to-end: the real csr-warden binary against the fake API server, CSRs made by openssl,
//! certificates checked by openssl.

mod support;

use serde_json::Value;
use support::apiserver::ADMIN_TOKEN;
use support::*;

struct Harness {
    server: FakeApiServer,
    dir: tempfile::TempDir,
    ca: (std::path::PathBuf, std::path::PathBuf),
}

async fn harness() -> Harness {
    let server = FakeApiServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = openssl_ca(dir.path(), KeyKind::P256, 365);
    server.add_user("jane-token", "jane", &["system:authenticated"]);
    server.add_user("smith-token", "agent-smith", &["system:authenticated"]);
    Harness { server, dir, ca }
}

fn csr_state(server: &FakeApiServer, name: &str) -> Value {
    server.csr(name).expect("csr exists")
}

fn issued(server: &FakeApiServer, name: &str) -> bool {
    server.csr(name).and_then(|c| certificate_pem(&c)).is_some()
}

fn has(server: &FakeApiServer, name: &str, kind: &str) -> bool {
    server.csr(name).is_some_and(|c| condition(&c, kind).is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jane_is_approved_and_signed() {
    let h = harness().await;
    let pem = openssl_csr(h.dir.path(), "jane", KeyKind::Rsa(2048), "/CN=jane/O=developers", None, &[]);
    h.server.create_csr("jane-token", csr_object("jane", CLIENT_SIGNER, &["client auth"], &pem));
    let controller = ControllerProcess::start(&h.server, h.dir.path(), &h.ca, &[]);
    h.server.wait_for("jane issued", |s| issued(s, "jane")).await;

    let csr = csr_state(&h.server, "jane");
    let approved = condition(&csr, "Approved").expect("Approved condition");
    assert_eq!(approved["status"], "True");
    assert_eq!(approved["reason"], "AutoApprovedAllowList");
    assert_eq!(condition_types(&csr), ["Approved"]);
    let cert = certificate_pem(&csr).expect("certificate");
    let verified = openssl_verify(h.dir.path(), &h.ca.0, &cert, "sslclient");
    assert!(verified.contains("OK"), "{verified}");
    let text = openssl_text(h.dir.path(), &cert);
    assert!(text.contains("Subject: CN = jane, O = developers") || text.contains("Subject: CN=jane, O=developers"), "{text}");
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
}
