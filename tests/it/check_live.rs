//! `csr-warden check --csr NAME` / `--all-pending` against the tests' API server, as an operator
//! runs them (and through kubectl as a plugin): the cluster's own facts, the controller's policy.

use crate::support;

use support::*;

fn json(out: &str, err: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_explains_live_csrs_with_the_clusters_facts_and_the_controllers_policy() {
    let h = harness().await;
    h.install_policy_configmap();
    h.create_client_csr("bob-token", "bob", "/CN=bob/O=ops");
    h.create_bootstrap_client_csr("node-csr-1", "worker-1");
    h.create_serving_csr("serving-elsewhere", "DNS:worker-1,IP:10.0.0.99");

    // bob: no rule names him.
    let (code, out, err) = h.check_live(&["--csr", "bob"]).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("LEAVE (NoMatchingRule)"), "{out}");
    assert!(out.contains("State:     Pending"), "{out}");

    // The bootstrap user: the live nodeclient review says no (offline it is only assumed).
    let (code, out, err) = h
        .check_live(&["--csr", "node-csr-1", "--output", "json"])
        .await;
    assert_eq!(code, 2, "{out}{err}");
    let report = json(&out, &err);
    assert_eq!(report["reason"], "KubeletClientNotAuthorized");
    assert!(
        report["message"]
            .as_str()
            .is_some_and(|m| m.contains("nodeclient")),
        "{report}"
    );
    assert_eq!(report["state"]["state"], "Pending");
    // Allowed by the cluster, the same CSR is approved: the answer is the live review's.
    h.server.allow_sar("system:bootstrappers", "nodeclient");
    let (code, out, err) = h.check_live(&["--csr", "node-csr-1"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("APPROVE (AutoApprovedKubeletClient)"), "{out}");

    // A serving CSR for an address the live Node does not have.
    let (code, out, err) = h
        .check_live(&["--csr", "serving-elsewhere", "--output", "json"])
        .await;
    assert_eq!(code, 1, "{out}{err}");
    let report = json(&out, &err);
    assert_eq!(report["reason"], "NodeAddressMismatch");
    assert!(
        report["message"]
            .as_str()
            .is_some_and(|m| m.contains("10.0.0.99")),
        "{report}"
    );

    // A name nobody created.
    let (code, out, err) = h.check_live(&["--csr", "no-such-csr"]).await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("\"no-such-csr\" does not exist"), "{err}");

    // The check wrote nothing: it only reads and asks.
    assert!(h.server.writes().is_empty(), "{:?}", h.server.writes());
    assert!(h.server.events().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_on_an_issued_kubelet_client_csr_shows_the_certificate() {
    let h = harness().await;
    h.create_kubelet_renewal("node-renewal", "worker-2");
    let _controller = h.controller(&[]);
    h.server
        .wait_for("renewal issued", |s| issued(s, "node-renewal"))
        .await;

    // --policy given: no ConfigMap is needed.
    let policy = h.dir.path().join("policy.yaml");
    let policy = policy.to_str().expect("path");
    let (code, out, err) = h
        .check_live(&["--csr", "node-renewal", "--policy", policy])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("APPROVE (AutoApprovedKubeletClient)"), "{out}");
    assert!(out.contains("State:     Issued"), "{out}");
    assert!(
        out.contains("Approved=True AutoApprovedKubeletClient"),
        "{out}"
    );
    assert!(
        out.contains("Certificate: subject CN=system:node:worker-2, O=system:nodes")
            || out.contains("Certificate: subject O=system:nodes, CN=system:node:worker-2"),
        "{out}"
    );
    assert!(out.contains("not after"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_policy_file_or_configmap_check_says_what_to_pass() {
    let h = harness().await;
    h.create_client_csr("bob-token", "bob", "/CN=bob/O=ops");
    let (code, out, err) = h.check_live(&["bob"]).await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("csr-warden/csr-warden-policy") && err.contains("--policy FILE"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_pending_lists_the_queue_with_each_reason() {
    let h = harness().await;
    h.install_policy_configmap();
    h.create_client_csr("jane-token", "jane-issued", "/CN=jane/O=developers");
    let controller = h.controller(&["--concurrency", "1"]);
    h.server
        .wait_for("jane issued", |s| issued(s, "jane-issued"))
        .await;
    controller.kill().await;
    h.create_client_csr("bob-token", "bob", "/CN=bob/O=ops");
    h.create_bootstrap_client_csr("node-csr-1", "worker-1");
    let pem = rcgen_csr("carol", &["ops"], &[]);
    h.server.create_csr(
        "bob-token",
        csr_object("foreign", "example.com/other", &["client auth"], &pem),
    );

    let (code, out, err) = h.check_live(&["--all-pending"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "a header and one line per pending CSR: {out}"
    );
    assert!(lines[0].starts_with("NAME"), "{out}");
    assert!(
        lines[1].starts_with("bob ") && lines[1].contains("NoMatchingRule"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("node-csr-1 ") && lines[2].contains("KubeletClientNotAuthorized"),
        "{out}"
    );

    let (code, out, err) = h.check_live(&["--all-pending", "--output", "json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let names: Vec<String> = json(&out, &err)
        .as_array()
        .expect("array")
        .iter()
        .map(|l| format!("{}:{}", l["csr"], l["reason"]))
        .collect();
    assert_eq!(
        names,
        [
            "\"bob\":\"NoMatchingRule\"",
            "\"node-csr-1\":\"KubeletClientNotAuthorized\""
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_runs_csr_warden_as_a_plugin() {
    let h = harness().await;
    h.install_policy_configmap();
    h.create_client_csr("bob-token", "bob", "/CN=bob/O=ops");
    // The plugin is the same binary under the name kubectl looks for on PATH.
    let bin = h.dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_csr-warden"),
        bin.join("kubectl-csr_warden"),
    )
    .expect("symlink");
    h.server
        .add_user("admin-token", "admin", &["system:masters"]);
    let kubeconfig = h.server.kubeconfig(h.dir.path(), "admin-token");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = tokio::process::Command::new("kubectl")
        .args(["csr-warden", "check", "bob"])
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", h.dir.path())
        .env("PATH", &path)
        .output()
        .await
        .expect("kubectl must be installed");
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    // kubectl passes the plugin's exit code through.
    assert_eq!(output.status.code(), Some(2), "{out}{err}");
    assert!(out.contains("LEAVE (NoMatchingRule)"), "{out}{err}");

    let listed = tokio::process::Command::new("kubectl")
        .args(["plugin", "list"])
        .env("HOME", h.dir.path())
        .env("PATH", &path)
        .output()
        .await
        .expect("kubectl plugin list");
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("kubectl-csr_warden"),
        "{listed:?}"
    );
}
