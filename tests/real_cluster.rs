//! Against a real cluster, when one is at hand. Proves that the RBAC in manifests/ is exactly
//! enough on a real API server's authorizer: the release binary runs out of cluster with only the
//! csr-warden ServiceAccount's token.
//!
//! Run it (never in CI here: there is no cluster) with a cluster-admin kubeconfig:
//!
//! ```sh
//! cargo build --release --locked --bin csr-warden
//! E2E_KUBECONFIG=$HOME/.kube/config cargo test --release --test real_cluster -- --ignored
//! ```
//!
//! It applies the Namespace, ServiceAccount and RBAC objects from manifests/, mints a token with
//! `kubectl create token`, creates CSRs as other users by impersonation, checks what happened,
//! and deletes everything it made.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::*;

struct Cluster {
    admin: PathBuf,
}

impl Cluster {
    /// kubectl as the admin, with the user's own HOME (exec credential plugins live there).
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out, err) = kubectl_with_home(&self.admin, None, args, stdin);
        assert!(ok, "kubectl {args:?} failed: {err}");
        out
    }

    fn create_as(&self, user: &str, groups: &[&str], object: &Value) {
        let mut args = vec!["create", "-f", "-", "--as", user];
        for group in groups {
            args.extend(["--as-group", group]);
        }
        self.kubectl(&args, Some(&object.to_string()));
    }

    fn csr(&self, name: &str) -> Value {
        serde_json::from_str(&self.kubectl(&["get", "csr", name, "-o", "json"], None))
            .expect("csr json")
    }

    fn wait(&self, what: &str, name: &str) {
        self.kubectl(
            &[
                "wait",
                "--timeout=90s",
                &format!("--for={what}"),
                &format!("csr/{name}"),
            ],
            None,
        );
    }
}

fn token_kubeconfig(cluster: &Cluster, dir: &Path) -> PathBuf {
    let token = cluster.kubectl(
        &[
            "-n",
            "csr-warden",
            "create",
            "token",
            "csr-warden",
            "--duration",
            "1h",
        ],
        None,
    );
    let server = cluster.kubectl(
        &[
            "config",
            "view",
            "--raw",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
        None,
    );
    let ca = cluster.kubectl(
        &[
            "config",
            "view",
            "--raw",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ],
        None,
    );
    let path = dir.join("csr-warden.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: csr-warden\n  user:\n    token: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: csr-warden\ncurrent-context: c\n",
            token.trim()
        ),
    )
    .expect("kubeconfig");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: set E2E_KUBECONFIG to a cluster-admin kubeconfig and pass --ignored"]
async fn manifests_rbac_is_enough_on_a_real_cluster() {
    let admin = PathBuf::from(
        std::env::var("E2E_KUBECONFIG").expect("set E2E_KUBECONFIG to a cluster-admin kubeconfig"),
    );
    let cluster = Cluster { admin };
    let dir = tempfile::tempdir().expect("dir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rbac = [
        "00-namespace.yaml",
        "10-serviceaccount.yaml",
        "20-rbac.yaml",
    ]
    .map(|f| root.join("manifests").join(f));
    for file in &rbac {
        cluster.kubectl(&["apply", "-f", file.to_str().expect("path")], None);
    }
    let kubeconfig = token_kubeconfig(&cluster, dir.path());
    let ca = openssl_ca(dir.path(), KeyKind::P256, 30);
    std::fs::copy(
        root.join("examples/policy.yaml"),
        dir.path().join("policy.yaml"),
    )
    .expect("policy");
    let controller = ControllerProcess::start_with_kubeconfig(dir.path(), &ca, &[], &kubeconfig);

    let suffix = format!("{:x}", std::process::id());
    let jane = format!("e2e-jane-{suffix}");
    let smith = format!("e2e-agent-smith-{suffix}");
    let node = format!("e2e-node-{suffix}");
    let foreign = format!("e2e-foreign-{suffix}");
    let pem = |name: &str, subject: &str| {
        openssl_csr(dir.path(), name, KeyKind::P256, subject, None, &[])
    };

    cluster.create_as(
        "jane",
        &["system:authenticated"],
        &csr_object(
            &jane,
            CLIENT_SIGNER,
            &["client auth"],
            &pem("jane", "/CN=jane/O=developers"),
        ),
    );
    // The CertificateSubjectRestriction admission plugin refuses system:masters for
    // kube-apiserver-client at create time; the kubelet client signer is not covered by it.
    cluster.create_as(
        "agent-smith",
        &["system:authenticated"],
        &csr_object(
            &smith,
            KUBELET_CLIENT_SIGNER,
            &["digital signature", "client auth"],
            &pem("smith", "/CN=agent-smith/O=system:masters"),
        ),
    );
    cluster.create_as(
        "system:bootstrap:e2e",
        &[
            "system:bootstrappers",
            "system:bootstrappers:kubeadm:default-node-token",
            "system:authenticated",
        ],
        &csr_object(
            &node,
            KUBELET_CLIENT_SIGNER,
            &["digital signature", "client auth"],
            &pem("node", &format!("/CN=system:node:{node}/O=system:nodes")),
        ),
    );
    cluster.create_as(
        "jane",
        &["system:authenticated"],
        &csr_object(
            &foreign,
            "example.com/e2e",
            &["client auth"],
            &pem("foreign", "/CN=jane/O=developers"),
        ),
    );

    cluster.wait("jsonpath={.status.certificate}", &jane);
    assert_eq!(
        condition(&cluster.csr(&jane), "Approved").expect("approved")["reason"],
        "AutoApprovedAllowList"
    );
    cluster.wait("condition=Denied", &smith);
    assert_eq!(
        condition(&cluster.csr(&smith), "Denied").expect("denied")["reason"],
        "ForbiddenGroup"
    );
    let events: Value = serde_json::from_str(&cluster.kubectl(
        &[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            &format!("involvedObject.name={smith}"),
            "-o",
            "json",
        ],
        None,
    ))
    .expect("events");
    assert!(
        events["items"].as_array().is_some_and(|items| items
            .iter()
            .any(|e| e["type"] == "Warning" && e["reason"] == "ForbiddenGroup")),
        "Warning Event on {smith}: {events}"
    );
    // Approved by csr-warden, or by kube-controller-manager's own approver if it is running.
    cluster.wait("condition=Approved", &node);
    controller
        .wait_for_log("foreign signer seen", |l| {
            l["csr"] == foreign.as_str() && l["decision"] == "ignored"
        })
        .await;
    assert!(
        condition_types(&cluster.csr(&foreign)).is_empty(),
        "a foreign signer's CSR is untouched"
    );

    let lines = controller.kill().await;
    let forbidden: Vec<&Value> = lines
        .iter()
        .filter(|l| l["level"] == "WARN" && l.to_string().contains("forbidden"))
        .collect();
    assert!(
        forbidden.is_empty(),
        "the API server refused csr-warden something: {forbidden:?}"
    );

    for name in [&jane, &smith, &node, &foreign] {
        cluster.kubectl(&["delete", "csr", name, "--ignore-not-found"], None);
    }
    for file in rbac.iter().rev() {
        cluster.kubectl(
            &[
                "delete",
                "--ignore-not-found",
                "-f",
                file.to_str().expect("path"),
            ],
            None,
        );
    }
}
