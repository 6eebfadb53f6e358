//! Against a real cluster, when one is at hand: the release binary runs out of cluster with only
//! the csr-warden ServiceAccount's token and the RBAC in manifests/, and does its job for users and
//! kubelets as a real API server (RBAC, admission plugins) lets them ask.
//!
//! Run it (never in CI here: there is no cluster) with a cluster-admin kubeconfig:
//!
//! ```sh
//! cargo build --release --locked --bin csr-warden
//! E2E_KUBECONFIG=$HOME/.kube/config cargo test --release --test it real_cluster -- --ignored --nocapture
//! # optional: sign with the cluster's client CA, and log in with the issued certificate
//! E2E_CA_CERT=/etc/kubernetes/pki/ca.crt E2E_CA_KEY=/etc/kubernetes/pki/ca.key ...
//! ```
//!
//! It creates whatever it relies on that is missing (csr-warden's RBAC from manifests/, the
//! requester binding for its users, bootstrap-token bindings, a Node), with names unique to the
//! run, and deletes what it created when it ends, also when an assertion fails. It does not
//! assume kube-controller-manager runs, and every wait is bounded and says what it waited for.
//! Each step is printed, so a failure on someone's cluster says where.

use crate::support;

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{Value, json};
use support::*;

/// kubectl's own bound on every wait.
const WAIT: &str = "--timeout=90s";

fn step(what: &str) {
    eprintln!("[real-cluster] {what}");
}

struct Cluster {
    admin: PathBuf,
}

impl Cluster {
    /// kubectl as the admin, with the user's own HOME (exec credential plugins live there).
    fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        kubectl_with_home(&self.admin, None, args, stdin)
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out, err) = self.run(args, stdin);
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

    /// `kubectl wait` with a bound; a timeout fails with what was awaited.
    fn wait(&self, what: &str, name: &str) {
        step(&format!("waiting (90 s at most) for {what} on csr/{name}"));
        let (ok, _, err) = self.run(
            &[
                "wait",
                WAIT,
                &format!("--for={what}"),
                &format!("csr/{name}"),
            ],
            None,
        );
        assert!(ok, "csr/{name} never reached {what}: {err}");
    }

    fn exists(&self, args: &[&str]) -> bool {
        let mut all = vec!["get"];
        all.extend(args);
        self.run(&all, None).0
    }

    /// `kubectl auth can-i create certificatesigningrequests` for `user`.
    fn may_create_csrs(&self, user: &str) -> bool {
        let (_, out, _) = self.run(
            &[
                "auth",
                "can-i",
                "create",
                "certificatesigningrequests.certificates.k8s.io",
                "--as",
                user,
            ],
            None,
        );
        out.trim() == "yes"
    }

    fn server_and_ca(&self) -> (String, String) {
        let view = |path: &str| {
            self.kubectl(
                &[
                    "config",
                    "view",
                    "--raw",
                    "--minify",
                    "-o",
                    &format!("jsonpath={{.clusters[0].cluster.{path}}}"),
                ],
                None,
            )
        };
        (view("server"), view("certificate-authority-data"))
    }
}

/// Deletes what the run created, newest first, when dropped: also after a failed assertion.
struct Cleanup<'a> {
    cluster: &'a Cluster,
    created: Vec<Vec<String>>,
}

impl Cleanup<'_> {
    /// Remember `kubectl delete ARGS` for the end.
    fn later(&mut self, args: &[&str]) {
        self.created
            .push(args.iter().map(|a| (*a).to_owned()).collect());
    }

    /// Create `object` as the admin and remember to delete it.
    fn create(&mut self, object: Value) {
        let kind = object["kind"].as_str().expect("kind").to_lowercase();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_owned();
        step(&format!("creating {kind}/{name}"));
        self.cluster
            .kubectl(&["create", "-f", "-"], Some(&object.to_string()));
        self.later(&[&kind, &name]);
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for args in self.created.iter().rev() {
            let mut all = vec!["delete", "--ignore-not-found", "--wait=false"];
            all.extend(args.iter().map(String::as_str));
            let (ok, _, err) = self.cluster.run(&all, None);
            if !ok {
                eprintln!("[real-cluster] cleanup: kubectl {all:?} failed: {err}");
            }
        }
    }
}

fn cluster_role_binding(name: &str, role: &str, subjects: Value) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"e2e.csr-warden": "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

fn user(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name})
}

fn group(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name})
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
    let (server, ca) = cluster.server_and_ca();
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

/// A kubeconfig that logs in with a client certificate.
fn certificate_kubeconfig(cluster: &Cluster, dir: &Path, cert: &Path, key: &Path) -> PathBuf {
    let (server, ca) = cluster.server_and_ca();
    let path = dir.join("jane.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: jane\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: jane\ncurrent-context: c\n",
            cert.display(),
            key.display()
        ),
    )
    .expect("kubeconfig");
    path
}

fn reason(csr: &Value, kind: &str) -> String {
    condition(csr, kind)
        .and_then(|c| c["reason"].as_str().map(String::from))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: set E2E_KUBECONFIG to a cluster-admin kubeconfig and pass --ignored"]
async fn csr_warden_on_a_real_cluster() {
    let admin = PathBuf::from(
        std::env::var("E2E_KUBECONFIG").expect("set E2E_KUBECONFIG to a cluster-admin kubeconfig"),
    );
    let cluster = Cluster { admin };
    let mut cleanup = Cleanup {
        cluster: &cluster,
        created: Vec::new(),
    };
    let dir = tempfile::tempdir().expect("dir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() % 0x10000)
            .unwrap_or(0)
    );

    step("csr-warden's Namespace, ServiceAccount and RBAC from manifests/");
    if cluster.exists(&["namespace", "csr-warden"]) {
        step(
            "namespace csr-warden exists: csr-warden may be installed; its objects are used and left alone",
        );
        for file in ["10-serviceaccount.yaml", "20-rbac.yaml"] {
            let path = root.join("manifests").join(file);
            cluster.kubectl(&["apply", "-f", path.to_str().expect("path")], None);
        }
    } else {
        for file in [
            "00-namespace.yaml",
            "10-serviceaccount.yaml",
            "20-rbac.yaml",
        ] {
            let path = root.join("manifests").join(file);
            let path = path.to_str().expect("path");
            cluster.kubectl(&["apply", "-f", path], None);
            cleanup.later(&["-f", path]);
        }
    }

    let jane_user = "jane";
    let smith_user = "agent-smith";
    let bob_user = format!("e2e-bob-{run}");
    let node = format!("e2e-node-{run}");
    let node_user = format!("system:node:{node}");
    let bootstrap_user = format!("system:bootstrap:e2e{run}");
    let bootstrap_group = format!("e2e-bootstrappers-{run}");

    step(&format!(
        "before: may jane create CSRs? {}",
        cluster.may_create_csrs(jane_user)
    ));
    cleanup.create(cluster_role_binding(
        &format!("e2e-requesters-{run}"),
        "csr-warden-requester",
        json!([
            user(jane_user),
            user(smith_user),
            user(&bob_user),
            user(&node_user)
        ]),
    ));
    let jane_may = cluster.may_create_csrs(jane_user);
    step(&format!(
        "after the requester binding: may jane create CSRs? {jane_may}"
    ));
    assert!(jane_may, "csr-warden-requester lets jane create CSRs");
    // What kubeadm makes for bootstrap tokens, for this run's own token group.
    cleanup.create(cluster_role_binding(
        &format!("e2e-kubelet-bootstrap-{run}"),
        "system:node-bootstrapper",
        json!([group(&bootstrap_group)]),
    ));
    cleanup.create(cluster_role_binding(
        &format!("e2e-node-autoapprove-bootstrap-{run}"),
        "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
        json!([group(&bootstrap_group)]),
    ));
    // A Node whose addresses a serving CSR is checked against (TEST-NET-1: data only).
    cleanup.create(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node, "labels": {"e2e.csr-warden": "true"}},
        "status": {"addresses": [
            {"type": "InternalIP", "address": "192.0.2.10"},
            {"type": "Hostname", "address": node},
        ]},
    }));

    step("starting the release-built controller with the ServiceAccount's token");
    let kubeconfig = token_kubeconfig(&cluster, dir.path());
    let cluster_ca = match (std::env::var("E2E_CA_CERT"), std::env::var("E2E_CA_KEY")) {
        (Ok(cert), Ok(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
        _ => None,
    };
    let ca = cluster_ca
        .clone()
        .unwrap_or_else(|| openssl_ca(dir.path(), KeyKind::P256, 30));
    std::fs::copy(
        root.join("examples/policy.yaml"),
        dir.path().join("policy.yaml"),
    )
    .expect("policy");
    let controller = ControllerProcess::start_with_kubeconfig(dir.path(), &ca, &[], &kubeconfig);
    controller.wait_synced().await;

    let pem = |name: &str, subject: &str, sans: Option<&str>| {
        openssl_csr(dir.path(), name, KeyKind::P256, subject, sans, &[])
    };
    let mut csr = |name: &str, signer: &str, usages: &[&str], pem: String| {
        cleanup.later(&["csr", name]);
        csr_object(name, signer, usages, &pem)
    };
    let foreign = format!("e2e-foreign-{run}");
    let jane = format!("e2e-jane-{run}");
    let smith = format!("e2e-agent-smith-{run}");
    let bootstrap = format!("e2e-bootstrap-{run}");
    let serving = format!("e2e-serving-{run}");
    let serving_foreign = format!("e2e-serving-foreign-san-{run}");
    let bob = format!("e2e-bob-{run}");
    let authenticated = "system:authenticated";

    step("creating CSRs as their requesters (impersonated)");
    // First, so that once the later ones are handled, the controller has seen it too.
    let object = csr(
        &foreign,
        &format!("example.com/e2e-{run}"),
        &["client auth"],
        pem("foreign", "/CN=jane/O=developers", None),
    );
    cluster.create_as(jane_user, &[authenticated], &object);
    let object = csr(
        &jane,
        CLIENT_SIGNER,
        &["client auth"],
        pem("jane", "/CN=jane/O=developers", None),
    );
    cluster.create_as(jane_user, &[authenticated], &object);
    // CertificateSubjectRestriction refuses system:masters for kube-apiserver-client at create
    // time; the kubelet client signer is not covered by it, so csr-warden must refuse it.
    let object = csr(
        &smith,
        KUBELET_CLIENT_SIGNER,
        &["digital signature", "client auth"],
        pem("smith", "/CN=agent-smith/O=system:masters", None),
    );
    cluster.create_as(smith_user, &[authenticated], &object);
    let object = csr(
        &bootstrap,
        KUBELET_CLIENT_SIGNER,
        &["digital signature", "client auth"],
        pem(
            "bootstrap",
            &format!("/CN=system:node:e2e-joining-{run}/O=system:nodes"),
            None,
        ),
    );
    cluster.create_as(
        &bootstrap_user,
        &["system:bootstrappers", &bootstrap_group, authenticated],
        &object,
    );
    let node_subject = format!("/CN={node_user}/O=system:nodes");
    let object = csr(
        &serving,
        KUBELET_SERVING_SIGNER,
        &["digital signature", "server auth"],
        pem(
            "serving",
            &node_subject,
            Some(&format!("DNS:{node},IP:192.0.2.10")),
        ),
    );
    cluster.create_as(&node_user, &["system:nodes", authenticated], &object);
    let object = csr(
        &serving_foreign,
        KUBELET_SERVING_SIGNER,
        &["digital signature", "server auth"],
        pem(
            "serving-foreign",
            &node_subject,
            Some(&format!("DNS:{node},DNS:kubernetes.default.svc")),
        ),
    );
    cluster.create_as(&node_user, &["system:nodes", authenticated], &object);
    let object = csr(
        &bob,
        CLIENT_SIGNER,
        &["client auth"],
        pem("bob", &format!("/CN={bob_user}/O=ops"), None),
    );
    cluster.create_as(&bob_user, &[authenticated], &object);

    step("jane: approved by the allow-list and issued");
    cluster.wait("jsonpath={.status.certificate}", &jane);
    assert_eq!(
        reason(&cluster.csr(&jane), "Approved"),
        "AutoApprovedAllowList"
    );

    step("agent-smith: denied, with the Warning Event operators look at");
    cluster.wait("condition=Denied", &smith);
    assert_eq!(reason(&cluster.csr(&smith), "Denied"), "ForbiddenGroup");
    let described = cluster.kubectl(&["describe", "csr", &smith], None);
    assert!(
        described.contains("ForbiddenGroup"),
        "kubectl describe csr {smith} shows the denial's Event:\n{described}"
    );
    let events: Value = serde_json::from_str(&cluster.kubectl(
        &[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            "involvedObject.kind=CertificateSigningRequest",
            "-o",
            "json",
        ],
        None,
    ))
    .expect("events");
    assert!(
        events["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|e| {
                e["involvedObject"]["name"] == smith.as_str()
                    && e["type"] == "Warning"
                    && e["reason"] == "ForbiddenGroup"
            })),
        "kubectl get events lists the Warning on {smith}: {events}"
    );

    step("kubelet bootstrap client CSR: approved after the nodeclient SubjectAccessReview");
    cluster.wait("condition=Approved", &bootstrap);
    // kube-controller-manager's own approver, if it runs, may get there first (AutoApproved).
    step(&format!(
        "approved with reason {}",
        reason(&cluster.csr(&bootstrap), "Approved")
    ));

    step("kubelet serving CSR: SANs checked against the Node");
    cluster.wait("condition=Approved", &serving);
    cluster.wait("jsonpath={.status.certificate}", &serving);
    cluster.wait("condition=Denied", &serving_foreign);

    step("bob: left pending for a human, approved with kubectl, then issued");
    controller
        .wait_for_log("bob left pending", |l| {
            l["csr"] == bob.as_str() && l["decision"] == "leave"
        })
        .await;
    assert!(condition_types(&cluster.csr(&bob)).is_empty());
    cluster.kubectl(&["certificate", "approve", &bob], None);
    cluster.wait("jsonpath={.status.certificate}", &bob);

    step("the foreign signer's CSR: untouched");
    assert!(
        condition_types(&cluster.csr(&foreign)).is_empty(),
        "a foreign signer's CSR is untouched"
    );

    if cluster_ca.is_some() {
        step("logging in with jane's certificate, signed by the cluster's client CA");
        let certificate = cluster.csr(&jane)["status"]["certificate"]
            .as_str()
            .map(|b64| {
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .expect("base64")
            })
            .expect("certificate");
        let cert_path = dir.path().join("jane.crt");
        std::fs::write(&cert_path, certificate).expect("jane.crt");
        let jane_kubeconfig = certificate_kubeconfig(
            &cluster,
            dir.path(),
            &cert_path,
            &dir.path().join("jane.key"),
        );
        let (ok, out, err) = kubectl_with_home(
            &jane_kubeconfig,
            None,
            &["auth", "whoami", "-o", "json"],
            None,
        );
        assert!(ok, "kubectl auth whoami as jane: {err}");
        let whoami: Value = serde_json::from_str(&out).expect("whoami json");
        step(&format!(
            "the API server sees: {}",
            whoami["status"]["userInfo"]
        ));
        assert_eq!(whoami["status"]["userInfo"]["username"], "jane");
        assert!(
            whoami["status"]["userInfo"]["groups"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g == "developers")),
            "{whoami}"
        );
    }

    step("the controller's log: nothing refused");
    let lines = controller.kill().await;
    let refused: Vec<&Value> = lines
        .iter()
        .filter(|l| l["level"] == "WARN" || l["level"] == "ERROR")
        .filter(|l| {
            // What the API server answers a request RBAC refuses: status code 403 with
            // "<resource> is forbidden: User ... cannot ...". Not our own deny lines, whose
            // reason (ForbiddenGroup) and message say "forbidden" too.
            let text = l.to_string();
            text.contains("code: 403") || text.contains("is forbidden: User")
        })
        .collect();
    assert!(
        refused.is_empty(),
        "the API server refused csr-warden something: {refused:?}"
    );
    step("done; cleaning up what this run created");
}
