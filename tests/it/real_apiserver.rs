//! csr-warden against a real kube-apiserver (v1.36 from `../shared/kubernetes`, or any envtest
//! assets in `KUBEBUILDER_ASSETS`): its validation, admission, RBAC and watch behaviour decide
//! the outcome, not our fake's. One control plane per test binary; the tests take turns (one
//! controller at a time acts on the shared server) and each uses names of its own.
//!
//! Without `KUBEBUILDER_ASSETS` each test prints one `SKIPPED` line and passes.

use crate::support;

use std::path::Path;

use serde_json::{Value, json};
use support::control_plane::{self, API_SERVER_CLUSTER_IP, ControlPlane};
use support::*;

/// One csr-warden at a time on the shared server: two would race for the same CSRs.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SERVING_USAGES: &[&str] = &["digital signature", "server auth"];

/// A lying node: its name, the (type, address) pairs it writes into its Node's status, the SANs
/// it asks for, and the reason it must be denied.
type Attack<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);

/// The control plane and this test's turn, or None (skipped) without assets.
pub(crate) async fn plane(
    test: &str,
) -> Option<(&'static ControlPlane, tokio::sync::MutexGuard<'static, ()>)> {
    let plane = control_plane::shared(test)?;
    Some((plane, TURN.lock().await))
}

/// csr-warden with the default test policy (or `policy`), signing with the cluster CA, as the
/// admin unless `kubeconfig` says otherwise.
fn controller(
    plane: &ControlPlane,
    dir: &Path,
    policy: Option<&str>,
    kubeconfig: Option<&Path>,
) -> ControllerProcess {
    if let Some(policy) = policy {
        std::fs::write(dir.join("policy.yaml"), policy).expect("policy");
    }
    ControllerProcess::start_with_kubeconfig(
        dir,
        &(plane.ca_cert.clone(), plane.ca_key.clone()),
        &["--resync-interval-seconds", "3600"],
        kubeconfig.unwrap_or(&plane.admin),
    )
}

fn csr(plane: &ControlPlane, name: &str) -> Value {
    plane.get(&["csr", name])
}

/// Wait (bounded) until the CSR has a condition of `kind`; returns the CSR.
async fn wait_condition(plane: &ControlPlane, name: &str, kind: &str) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (ok, _, err) = plane.try_kubectl(
            &[
                "wait",
                "--timeout=5s",
                &format!("--for=condition={kind}"),
                &format!("csr/{name}"),
            ],
            None,
        );
        if ok {
            return csr(plane, name);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "csr/{name} never got {kind}: {err}\n{:#}",
            csr(plane, name)
        );
    }
}

/// A kubelet serving CSR from Node `node`'s own identity for `sans` (openssl's form).
fn serving_csr(
    plane: &ControlPlane,
    dir: &Path,
    name: &str,
    node: &str,
    sans: &str,
    groups: &[&str],
) {
    let pem = openssl_csr(
        dir,
        name,
        KeyKind::P256,
        &format!("/CN=system:node:{node}/O=system:nodes"),
        Some(sans),
        &[],
    );
    plane.create_as(
        &format!("system:node:{node}"),
        groups,
        &csr_object(name, KUBELET_SERVING_SIGNER, SERVING_USAGES, &pem),
    );
}

fn reason_of(csr: &Value, kind: &str) -> String {
    condition(csr, kind)
        .and_then(|c| c["reason"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// The trust boundary, as a node with its own credentials would attack it: it may write
/// anything into its own Node's status. One row per attack: the Node's addresses (as the lying
/// kubelet set them), the SANs it asks for, and the reason it is denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_lying_about_its_addresses_never_gets_another_identity() {
    let Some((plane, _turn)) =
        plane("a_node_lying_about_its_addresses_never_gets_another_identity").await
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    // What the API server really has: its ClusterIP, and an endpoint we publish now, after the
    // controller started, to show the addresses are kept fresh.
    plane.node(
        "tb-honest",
        &[("InternalIP", "10.0.0.21"), ("Hostname", "tb-honest")],
    );
    let controller = controller(plane, dir.path(), None, None);
    controller.wait_synced().await;
    // The honest node gets its own, before the liars below list its addresses too (after that
    // its next request is denied as well: a lying node can hold up another's serving
    // certificate, never obtain it).
    serving_csr(
        plane,
        dir.path(),
        "tb-honest-serving",
        "tb-honest",
        "DNS:tb-honest,IP:10.0.0.21",
        &["system:nodes"],
    );
    let approved = wait_condition(plane, "tb-honest-serving", "Approved").await;
    assert_eq!(
        reason_of(&approved, "Approved"),
        "AutoApprovedKubeletServing"
    );
    plane.apply(&json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes-tb", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.0.2.50"]}],
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
    }));
    let rows: &[Attack] = &[
        (
            "tb-evil-1",
            &[
                ("InternalIP", API_SERVER_CLUSTER_IP),
                ("Hostname", "kubernetes.default.svc"),
            ],
            "DNS:kubernetes.default.svc,IP:10.96.0.1",
            "ApiServerName",
        ),
        (
            "tb-evil-2",
            &[("InternalIP", API_SERVER_CLUSTER_IP)],
            "IP:10.96.0.1",
            "ApiServerAddress",
        ),
        (
            "tb-evil-3",
            &[("InternalIP", "192.0.2.50")],
            "IP:192.0.2.50",
            "ApiServerAddress",
        ),
        (
            "tb-evil-4",
            &[("InternalIP", "10.0.0.24"), ("InternalIP", "10.0.0.21")],
            "IP:10.0.0.24,IP:10.0.0.21",
            "AddressOfAnotherNode",
        ),
        (
            "tb-evil-5",
            &[("InternalIP", "10.0.0.25"), ("Hostname", "TB-Honest")],
            "DNS:tb-honest,IP:10.0.0.25",
            "AddressOfAnotherNode",
        ),
        (
            "tb-evil-6",
            &[("InternalIP", "127.0.0.1"), ("Hostname", "localhost")],
            "IP:127.0.0.1",
            "NonUnicastAddress",
        ),
        (
            "tb-evil-7",
            &[("Hostname", "web.payments.svc.cluster.local")],
            "DNS:web.payments.svc.cluster.local",
            "ServiceDomainName",
        ),
    ];
    for (node, addresses, sans, _) in rows {
        plane.node(node, addresses);
        serving_csr(
            plane,
            dir.path(),
            &format!("{node}-serving"),
            node,
            sans,
            &["system:nodes"],
        );
    }
    for (node, _, sans, expected) in rows {
        let denied = wait_condition(plane, &format!("{node}-serving"), "Denied").await;
        assert_eq!(
            reason_of(&denied, "Denied"),
            *expected,
            "{node} asking for {sans}"
        );
        assert!(certificate_pem(&denied).is_none(), "{node}: no certificate");
    }
    plane.kubectl(
        &["-n", "default", "delete", "endpointslice", "kubernetes-tb"],
        None,
    );
    drop(controller);
}

/// The node's own username is not enough: its credentials put it in system:nodes, and a
/// requester outside that group (an impersonated name, say) is denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_request_outside_system_nodes_is_denied() {
    let Some((plane, _turn)) = plane("a_serving_request_outside_system_nodes_is_denied").await
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    plane.node(
        "tb-nogroup",
        &[("InternalIP", "10.0.0.31"), ("Hostname", "tb-nogroup")],
    );
    let _controller = controller(plane, dir.path(), None, None);
    serving_csr(
        plane,
        dir.path(),
        "tb-nogroup-serving",
        "tb-nogroup",
        "DNS:tb-nogroup",
        &[],
    );
    let denied = wait_condition(plane, "tb-nogroup-serving", "Denied").await;
    assert_eq!(reason_of(&denied, "Denied"), "SubjectMismatch");
    assert!(
        condition(&denied, "Denied").expect("denied")["message"]
            .as_str()
            .unwrap_or_default()
            .contains("system:nodes")
    );
}

/// A Node whose cloud provider has not given it addresses yet: its serving CSR stays pending
/// (untouched, one Event saying why) and is approved and issued once the addresses arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_addresses_yet_is_decided_when_they_arrive() {
    let Some((plane, _turn)) =
        plane("a_node_without_addresses_yet_is_decided_when_they_arrive").await
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    plane.node("tb-late", &[]);
    let controller = controller(plane, dir.path(), None, None);
    serving_csr(
        plane,
        dir.path(),
        "tb-late-serving",
        "tb-late",
        "DNS:tb-late,IP:10.0.0.41",
        &["system:nodes"],
    );
    controller
        .wait_for_log("left pending for want of addresses", |l| {
            l["csr"] == "tb-late-serving" && l["reason"] == "NodeAddressesPending"
        })
        .await;
    assert!(condition_types(&csr(plane, "tb-late-serving")).is_empty());
    plane.set_node_addresses(
        "tb-late",
        &[("InternalIP", "10.0.0.41"), ("Hostname", "tb-late")],
    );
    let approved = wait_condition(plane, "tb-late-serving", "Approved").await;
    assert_eq!(
        reason_of(&approved, "Approved"),
        "AutoApprovedKubeletServing"
    );
}

/// `kubelet.servingAddresses` restricts every SAN further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_addresses_from_the_policy_are_enforced() {
    let Some((plane, _turn)) = plane("serving_addresses_from_the_policy_are_enforced").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let policy = POLICY.replace(
        "kubelet: { client: true, serving: true }",
        "kubelet:\n  client: true\n  serving: true\n  servingAddresses:\n    ipRanges: [10.0.0.0/24]\n    dnsNames: ['tb-[a-z]+']",
    );
    plane.node(
        "tb-ranged",
        &[
            ("InternalIP", "10.0.0.51"),
            ("InternalIP", "10.9.0.51"),
            ("Hostname", "tb-ranged"),
        ],
    );
    let _controller = controller(plane, dir.path(), Some(&policy), None);
    serving_csr(
        plane,
        dir.path(),
        "tb-ranged-in",
        "tb-ranged",
        "DNS:tb-ranged,IP:10.0.0.51",
        &["system:nodes"],
    );
    serving_csr(
        plane,
        dir.path(),
        "tb-ranged-out",
        "tb-ranged",
        "DNS:tb-ranged,IP:10.9.0.51",
        &["system:nodes"],
    );
    let approved = wait_condition(plane, "tb-ranged-in", "Approved").await;
    assert_eq!(
        reason_of(&approved, "Approved"),
        "AutoApprovedKubeletServing"
    );
    let denied = wait_condition(plane, "tb-ranged-out", "Denied").await;
    assert_eq!(reason_of(&denied, "Denied"), "OutsideServingAddresses");
}

/// A custom signer's CA that the cluster CA issued (an intermediate) is the cluster CA for
/// logging in: csr-warden refuses to start with it, naming the policy line, unless the signer
/// says allowClusterCA. The chain is verified by signature, not by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_signer_on_an_intermediate_of_the_cluster_ca_is_refused() {
    let Some((plane, _turn)) =
        plane("a_custom_signer_on_an_intermediate_of_the_cluster_ca_is_refused").await
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let path = |n: &str| dir.path().join(n).display().to_string();
    // cluster CA -> intermediate-1 -> intermediate-2 (the signer's CA, chain in its tls.crt).
    let intermediate = |name: &str, issuer_crt: &str, issuer_key: &str| {
        std::fs::write(
            dir.path().join(format!("{name}.ext")),
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n",
        )
        .expect("ext");
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &path(&format!("{name}.key")),
            "-out",
            &path(&format!("{name}.csr")),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &path(&format!("{name}.csr")),
            "-CA",
            issuer_crt,
            "-CAkey",
            issuer_key,
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            &path(&format!("{name}.ext")),
            "-out",
            &path(&format!("{name}.crt")),
        ]);
    };
    let cluster_crt = plane.ca_cert.display().to_string();
    let cluster_key = plane.ca_key.display().to_string();
    intermediate("team-int-1", &cluster_crt, &cluster_key);
    intermediate(
        "team-int-2",
        &path("team-int-1.crt"),
        &path("team-int-1.key"),
    );
    let direct = [path("team-int-1.crt"), path("team-int-1.key")];
    let chained = dir.path().join("team-chain.crt");
    std::fs::write(
        &chained,
        std::fs::read_to_string(path("team-int-2.crt")).expect("int-2")
            + &std::fs::read_to_string(path("team-int-1.crt")).expect("int-1"),
    )
    .expect("chain");
    let chained = [chained.display().to_string(), path("team-int-2.key")];
    // A CA of the team's own, for contrast.
    let (own_crt, own_key) = openssl_ca(dir.path(), KeyKind::P256, 30);
    let own = [own_crt.display().to_string(), own_key.display().to_string()];
    let policy = |ca: &[String; 2], allow: bool| {
        format!(
            "signers:\n  - name: kubernetes.io/kube-apiserver-client\n    role: approveAndSign\n  - name: example.com/team\n    role: approveAndSign\n    ca: {{cert: {}, key: {}}}\n    allowClusterCA: {allow}\n",
            ca[0], ca[1]
        )
    };
    for (what, ca) in [
        ("directly", &direct),
        ("through another intermediate", &chained),
    ] {
        let run = tempfile::tempdir().expect("dir");
        let (code, lines) = controller(plane, run.path(), Some(&policy(ca, false)), None)
            .wait_exit()
            .await;
        assert_eq!(
            code,
            Some(1),
            "issued by the cluster CA {what}: must not start"
        );
        let said: String = lines.iter().map(|l| l.to_string()).collect();
        assert!(
            said.contains("line 4") || said.contains("line 5"),
            "{what}: names the policy line: {said}"
        );
        assert!(said.contains("chains up to"), "{what}: {said}");
    }
    // Opting in starts; a CA of its own starts.
    for (what, ca, allow) in [("allowClusterCA", &chained, true), ("own CA", &own, false)] {
        let run = tempfile::tempdir().expect("dir");
        let controller = controller(plane, run.path(), Some(&policy(ca, allow)), None);
        controller.wait_synced().await;
        assert!(
            !controller
                .lines()
                .iter()
                .any(|l| l.to_string().contains("cluster's own CA")),
            "{what}"
        );
    }
}

/// Only the RBAC that manifests/ grants, and only the ServiceAccount's token (TokenRequest):
/// jane issued, agent-smith denied with an Event, a foreign signer's CSR untouched, kubelet
/// serving decided with the Node, Service and EndpointSlice watches, and the API server never
/// answered csr-warden 403 (read from the server's audit log, not from our log lines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_the_manifests_rbac_every_request_is_allowed() {
    let Some((plane, _turn)) = plane("with_only_the_manifests_rbac_every_request_is_allowed").await
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let kubeconfig = plane.as_csr_warden(dir.path());
    let controller = controller(plane, dir.path(), None, Some(&kubeconfig));
    controller.wait_synced().await;

    let foreign = rcgen_csr("rbac-foreign", &[], &[]);
    plane.create_as(
        "jane",
        &[],
        &csr_object(
            "rbac-foreign",
            "example.com/not-ours",
            &["client auth"],
            &foreign,
        ),
    );
    let jane = openssl_csr(
        dir.path(),
        "jane",
        KeyKind::P256,
        "/CN=jane/O=developers",
        None,
        &[],
    );
    plane.create_as(
        "jane",
        &["developers"],
        &csr_object("rbac-jane", CLIENT_SIGNER, &["client auth"], &jane),
    );
    // The kubelet client signer: CertificateSubjectRestriction only guards kube-apiserver-client.
    let smith = openssl_csr(
        dir.path(),
        "smith",
        KeyKind::P256,
        "/CN=agent-smith/O=system:masters",
        None,
        &[],
    );
    plane.create_as(
        "agent-smith",
        &[],
        &csr_object(
            "rbac-agent-smith",
            KUBELET_CLIENT_SIGNER,
            &["digital signature", "client auth"],
            &smith,
        ),
    );
    plane.node(
        "rbac-node",
        &[("InternalIP", "10.0.0.61"), ("Hostname", "rbac-node")],
    );
    serving_csr(
        plane,
        dir.path(),
        "rbac-serving",
        "rbac-node",
        "DNS:rbac-node,IP:10.0.0.61",
        &["system:nodes"],
    );

    let denied = wait_condition(plane, "rbac-agent-smith", "Denied").await;
    assert_eq!(reason_of(&denied, "Denied"), "ForbiddenGroup");
    let approved = wait_condition(plane, "rbac-jane", "Approved").await;
    assert_eq!(reason_of(&approved, "Approved"), "AutoApprovedAllowList");
    controller
        .wait_for_log("the serving CSR approved", |l| {
            l["csr"] == "rbac-serving" && l["decision"] == "approve"
        })
        .await;
    let serving = wait_condition(plane, "rbac-serving", "Approved").await;
    assert_eq!(
        reason_of(&serving, "Approved"),
        "AutoApprovedKubeletServing"
    );
    for name in ["rbac-jane", "rbac-serving"] {
        controller
            .wait_for_log("issued", |l| l["csr"] == name && l["decision"] == "issued")
            .await;
        assert!(
            certificate_pem(&csr(plane, name)).is_some(),
            "{name} issued"
        );
    }
    // Created before jane's, so the watch delivered it first: it was seen and left alone.
    assert!(condition_types(&csr(plane, "rbac-foreign")).is_empty());
    let events = plane.get(&[
        "events",
        "-n",
        "default",
        "--field-selector",
        "involvedObject.name=rbac-agent-smith",
    ]);
    assert!(
        events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["reason"] == "ForbiddenGroup" && e["type"] == "Warning"),
        "a Warning Event for agent-smith: {events:#}"
    );

    // A CSR left for a human, then a restart: the new process reads the reasons already given
    // with one list of its own CSR Events (a field selector the real server must accept, with
    // the manifests' RBAC), and bob's is among them.
    let bob = openssl_csr(dir.path(), "bob", KeyKind::P256, "/CN=bob/O=ops", None, &[]);
    plane.create_as(
        "bob",
        &[],
        &csr_object("rbac-bob", CLIENT_SIGNER, &["client auth"], &bob),
    );
    controller
        .wait_for_log("bob left pending", |l| {
            l["csr"] == "rbac-bob" && l["decision"] == "leave"
        })
        .await;
    let bob_events = || {
        plane.get(&[
            "events",
            "-n",
            "default",
            "--field-selector",
            "involvedObject.name=rbac-bob,reason=NoMatchingRule",
        ])["items"]
            .as_array()
            .map_or(0, Vec::len)
    };
    control_plane::wait_until("bob's leave Event", || bob_events() == 1);
    controller.kill().await;
    let restarted = self::controller(plane, dir.path(), None, Some(&kubeconfig));
    let read = restarted
        .wait_for_log("the Events recorded before, read", |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("read the Events csr-warden recorded before"))
        })
        .await;
    assert!(
        read["events"].as_u64().is_some_and(|n| n >= 1),
        "bob's Event among them: {read}"
    );

    let ours = "system:serviceaccount:csr-warden:csr-warden";
    let refused: Vec<String> = plane
        .audit_events()
        .into_iter()
        .filter(|e| e["user"]["username"] == ours && e["stage"] == "ResponseComplete")
        .filter(|e| e["responseStatus"]["code"] == 403)
        .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
        .collect();
    assert!(
        refused.is_empty(),
        "the API server refused csr-warden: {refused:#?}"
    );
}

/// What the real server decides about bad input and our own faults: a CSR made with
/// `kubectl apply` keeps its last-applied annotation through approval and issuance; a subject
/// whose Event text is far over the server's 1024-byte limit gets its Event, cut; a signer
/// whose CA is not mounted yet leaves its CSR approved, then issues it once the CA appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_a_missing_ca_never_cost_a_csr() {
    let Some((plane, _turn)) = plane("bad_input_and_a_missing_ca_never_cost_a_csr").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let ca = (dir.path().join("late.crt"), dir.path().join("late.key"));
    let controller = ControllerProcess::start_with_kubeconfig(
        dir.path(),
        &ca,
        &["--reload-interval-ms", "200"],
        &plane.admin,
    );
    controller.wait_synced().await;

    // kubectl apply, as jane: the annotation is the server's to keep.
    let jane = openssl_csr(
        dir.path(),
        "jane",
        KeyKind::P256,
        "/CN=jane/O=developers",
        None,
        &[],
    );
    let object = csr_object("bad-jane", CLIENT_SIGNER, &["client auth"], &jane);
    plane.kubectl(
        &[
            "apply",
            "-f",
            "-",
            "--as",
            "jane",
            "--as-group",
            "developers",
        ],
        Some(&object.to_string()),
    );
    // And one made with kubectl create, labelled and annotated: written back whole (a PUT), so
    // what it carries must be in the controller's copy.
    let mut labelled = csr_object("bad-labelled", CLIENT_SIGNER, &["client auth"], &jane);
    labelled["metadata"]["labels"] = json!({"team": "payments"});
    labelled["metadata"]["annotations"] = json!({"example.com/ticket": "SEC-1234"});
    plane.create_as("jane", &["developers"], &labelled);
    // bob, on no allow-list, with 30 long O values.
    let long: String = (0..30)
        .map(|i| format!("/O=team-{i:02}-with-a-rather-long-organisation-name-for-the-limit"))
        .collect();
    let bob = openssl_csr(
        dir.path(),
        "bob",
        KeyKind::P256,
        &format!("/CN=bob{long}"),
        None,
        &[],
    );
    plane.create_as(
        "bob",
        &[],
        &csr_object("bad-bob", CLIENT_SIGNER, &["client auth"], &bob),
    );

    controller
        .wait_for_log("jane waits for the CA", |l| {
            l["csr"] == "bad-jane" && l["decision"] == "waiting"
        })
        .await;
    let approved = csr(plane, "bad-jane");
    assert_eq!(
        condition_types(&approved),
        ["Approved"],
        "approved, not Failed"
    );
    std::fs::copy(&plane.ca_cert, &ca.0).expect("CA cert");
    std::fs::copy(&plane.ca_key, &ca.1).expect("CA key");
    controller
        .wait_for_log("jane issued once the CA is there", |l| {
            l["csr"] == "bad-jane" && l["decision"] == "issued"
        })
        .await;
    controller
        .wait_for_log("the labelled CSR issued", |l| {
            l["csr"] == "bad-labelled" && l["decision"] == "issued"
        })
        .await;
    let labelled = csr(plane, "bad-labelled");
    assert!(certificate_pem(&labelled).is_some());
    assert_eq!(
        (
            &labelled["metadata"]["labels"]["team"],
            &labelled["metadata"]["annotations"]
        ),
        (
            &json!("payments"),
            &json!({"example.com/ticket": "SEC-1234"})
        ),
        "labels and annotations kept through the PUTs, and nothing of ours added"
    );
    let issued = csr(plane, "bad-jane");
    assert_eq!(condition_types(&issued), ["Approved"], "never Failed");
    assert!(certificate_pem(&issued).is_some());
    assert!(
        issued["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string(),
        "the annotation kubectl apply wrote is still there: {:#}",
        issued["metadata"]
    );
    assert_eq!(
        issued["metadata"]["annotations"]
            .as_object()
            .map(|a| a.keys().map(String::as_str).collect::<Vec<_>>()),
        Some(vec!["kubectl.kubernetes.io/last-applied-configuration"]),
        "the cache's own marker never reaches the server"
    );

    let events = plane.get(&[
        "events",
        "-n",
        "default",
        "--field-selector",
        "involvedObject.name=bad-bob",
    ]);
    let notes: Vec<&str> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reason"] == "NoMatchingRule")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert_eq!(notes.len(), 1, "bob's leave Event, once: {events:#}");
    assert!(
        notes[0].len() <= 1024 && notes[0].contains("cut"),
        "{}",
        notes[0]
    );
}

/// The kubeadm recipe: csr-warden approves the kubelet signers (approve-only), the real
/// kube-controller-manager's csrsigning issues them. Every CSR issued by it, none Failed, and
/// csr-warden never writes status (the audit log says who wrote what).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeadm_recipe_approve_only_beside_kube_controller_managers_signer() {
    let Some((plane, _turn)) =
        plane("kubeadm_recipe_approve_only_beside_kube_controller_managers_signer").await
    else {
        return;
    };
    let Some(_kcm) = plane.controller_manager("csrsigning") else {
        eprintln!("SKIPPED kubeadm recipe: the assets folder has no kube-controller-manager");
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let policy = "signers:\n  - {name: kubernetes.io/kubelet-serving, role: approve}\n  - {name: kubernetes.io/kube-apiserver-client-kubelet, role: approve}\n";
    let missing = (dir.path().join("none.crt"), dir.path().join("none.key"));
    std::fs::write(dir.path().join("policy.yaml"), policy).expect("policy");
    // csr-warden as its own ServiceAccount (the manifests' RBAC), so the audit log tells its
    // writes from kube-controller-manager's (which runs as the admin here).
    let kubeconfig = plane.as_csr_warden(dir.path());
    let controller =
        ControllerProcess::start_with_kubeconfig(dir.path(), &missing, &[], &kubeconfig);
    controller.wait_synced().await;
    // Kubelet renewals (selfnodeclient, which the default roles bind to system:nodes only
    // through kubeadm's binding) and serving requests of three nodes.
    plane.kubectl(
        &[
            "create",
            "clusterrolebinding",
            "kubeadm-recipe-selfnodeclient",
            "--clusterrole=system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            "--group=system:nodes",
        ],
        None,
    );
    let nodes = ["ka-node-1", "ka-node-2", "ka-node-3"];
    for (i, node) in nodes.iter().enumerate() {
        let ip = format!("10.0.1.{}", i + 1);
        plane.node(node, &[("InternalIP", ip.as_str()), ("Hostname", node)]);
        serving_csr(
            plane,
            dir.path(),
            &format!("{node}-serving"),
            node,
            &format!("DNS:{node},IP:{ip}"),
            &["system:nodes"],
        );
        let pem = openssl_csr(
            dir.path(),
            &format!("{node}-client"),
            KeyKind::P256,
            &format!("/CN=system:node:{node}/O=system:nodes"),
            None,
            &[],
        );
        plane.create_as(
            &format!("system:node:{node}"),
            &["system:nodes"],
            &csr_object(
                &format!("{node}-client"),
                KUBELET_CLIENT_SIGNER,
                &["digital signature", "client auth"],
                &pem,
            ),
        );
    }
    for node in nodes {
        for kind in ["serving", "client"] {
            let name = format!("{node}-{kind}");
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let (ok, _, _) = plane.try_kubectl(
                    &[
                        "wait",
                        "--timeout=5s",
                        "--for=jsonpath={.status.certificate}",
                        &format!("csr/{name}"),
                    ],
                    None,
                );
                if ok {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{name} never issued: {:#}",
                    csr(plane, &name)
                );
            }
            let done = csr(plane, &name);
            assert_eq!(
                condition_types(&done),
                ["Approved"],
                "{name}: approved, never Failed"
            );
            let cert = certificate_pem(&done).expect("certificate");
            assert!(
                openssl_verifies(
                    dir.path(),
                    &plane.ca_cert,
                    &cert,
                    if kind == "serving" {
                        "sslserver"
                    } else {
                        "sslclient"
                    }
                ),
                "{name}"
            );
        }
    }
    let status_writers: Vec<String> = plane
        .audit_events()
        .into_iter()
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| {
            e["objectRef"]["subresource"] == "status"
                && e["objectRef"]["resource"] == "certificatesigningrequests"
        })
        .filter(|e| {
            e["objectRef"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("ka-node-"))
        })
        .filter(|e| e["responseStatus"]["code"] == 200)
        .map(|e| {
            e["user"]["username"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(status_writers.len(), 6, "{status_writers:?}");
    assert!(
        status_writers.iter().all(|u| u == "kubernetes-admin"),
        "kube-controller-manager issued every one, csr-warden none: {status_writers:?}"
    );
    let approvers: Vec<String> = plane
        .audit_events()
        .into_iter()
        .filter(|e| e["stage"] == "ResponseComplete" && e["responseStatus"]["code"] == 200)
        .filter(|e| e["objectRef"]["subresource"] == "approval")
        .filter(|e| {
            e["objectRef"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("ka-node-"))
        })
        .map(|e| {
            e["user"]["username"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(approvers.len(), 6, "{approvers:?}");
    assert!(
        approvers
            .iter()
            .all(|u| u == "system:serviceaccount:csr-warden:csr-warden"),
        "csr-warden approved every one: {approvers:?}"
    );
}

/// `n` allow-listed client CSRs from jane named `{prefix}-000`..., created in one request.
fn jane_burst(
    plane: &ControlPlane,
    dir: &Path,
    prefix: &str,
    range: std::ops::Range<usize>,
) -> Vec<String> {
    let pem = openssl_csr(
        dir,
        prefix,
        KeyKind::P256,
        "/CN=jane/O=developers",
        None,
        &[],
    );
    let names: Vec<String> = range.map(|i| format!("{prefix}-{i:03}")).collect();
    let items: Vec<Value> = names
        .iter()
        .map(|name| csr_object(name, CLIENT_SIGNER, &["client auth"], &pem))
        .collect();
    plane.create_as(
        "jane",
        &["developers"],
        &json!({"apiVersion": "v1", "kind": "List", "items": items}),
    );
    names
}

/// Every CSR named `prefix...` approved exactly once: the server's audit log shows no CSR with
/// two successful approval writes and no approval refused as a duplicate (422), and each CSR
/// has one Approved condition and a certificate. (A SIGKILLed server may lose the audit record
/// of its last requests, so the log alone cannot count them all.)
fn assert_each_approved_once(plane: &ControlPlane, prefix: &str, names: &[String]) {
    let mut approved = std::collections::BTreeMap::new();
    let mut refused = Vec::new();
    for event in plane.audit_events() {
        let name = event["objectRef"]["name"].as_str().unwrap_or_default();
        if event["stage"] != "ResponseComplete"
            || event["objectRef"]["subresource"] != "approval"
            || !name.starts_with(prefix)
        {
            continue;
        }
        match event["responseStatus"]["code"].as_u64() {
            Some(200) => *approved.entry(name.to_owned()).or_insert(0) += 1,
            Some(422) => refused.push(name.to_owned()),
            _ => {}
        }
    }
    let twice: Vec<_> = approved.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "approved more than once: {twice:?}");
    assert!(
        refused.is_empty(),
        "approvals refused as duplicates: {refused:?}"
    );
    let listed = plane.get(&["csr"]);
    let by_name: std::collections::BTreeMap<&str, &Value> = listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["metadata"]["name"].as_str()?, c)))
        .collect();
    for name in names {
        let csr = by_name
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{name} exists"));
        assert_eq!(condition_types(csr), ["Approved"], "{name}");
        assert!(certificate_pem(csr).is_some(), "{name} issued");
    }
}

fn issued_with_prefix(prefix: &'static str) -> impl Fn(&Value) -> bool {
    move |l: &Value| {
        l["decision"] == "issued" && l["csr"].as_str().is_some_and(|c| c.starts_with(prefix))
    }
}

/// The API server SIGKILLed mid-burst and started again on the same etcd: watches end, the
/// resumed watch gets 410 from the new watch cache, lists are paginated. Every CSR is approved
/// exactly once and issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_killed_mid_burst_costs_no_csr_and_approves_none_twice() {
    let Some((plane, _turn)) =
        plane("the_api_server_killed_mid_burst_costs_no_csr_and_approves_none_twice").await
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let controller = controller(plane, dir.path(), None, None);
    controller.wait_synced().await;
    let mut names = jane_burst(plane, dir.path(), "restart", 0..150);
    // Mid-burst: some issued, most not yet.
    controller
        .wait_for_logs(
            "some of the burst issued",
            10,
            issued_with_prefix("restart-"),
        )
        .await;
    plane.restart_apiserver();
    let back = std::time::Instant::now();
    names.extend(jane_burst(plane, dir.path(), "restart", 150..300));
    controller
        .wait_for_logs(
            "every CSR of the burst issued",
            names.len(),
            issued_with_prefix("restart-"),
        )
        .await;
    // A figure for the notes, not a pass mark.
    eprintln!(
        "[real-apiserver] all {} CSRs issued {:.2} s after the API server was ready again",
        names.len(),
        back.elapsed().as_secs_f64()
    );
    assert_each_approved_once(plane, "restart-", &names);
}

/// Two replicas with leader election; the leader is SIGKILLed mid-burst (it releases nothing).
/// The standby takes over when the Lease expires; every CSR is approved exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_mid_burst_costs_no_csr_and_approves_none_twice() {
    let Some((plane, _turn)) =
        plane("the_leader_killed_mid_burst_costs_no_csr_and_approves_none_twice").await
    else {
        return;
    };
    let (exists, _, _) = plane.try_kubectl(&["get", "namespace", "csr-warden"], None);
    if !exists {
        plane.kubectl(&["create", "namespace", "csr-warden"], None);
    }
    let replica = |name: &str, dir: &Path| {
        ControllerProcess::start_with_kubeconfig(
            dir,
            &(plane.ca_cert.clone(), plane.ca_key.clone()),
            &[
                "--leader-election",
                "--lease-namespace",
                "csr-warden",
                "--lease-name",
                "failover-test",
                "--lease-duration-seconds",
                "3",
                "--instance",
                name,
                "--resync-interval-seconds",
                "3600",
                // One worker, so the burst outlasts the leader.
                "--concurrency",
                "1",
            ],
            &plane.admin,
        )
    };
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let a = replica("replica-a", dir_a.path());
    a.wait_for_log("a leads", |l| {
        l["message"] == "became leader: deciding and signing"
    })
    .await;
    let b = replica("replica-b", dir_b.path());
    b.wait_synced().await;
    let names = jane_burst(plane, dir_a.path(), "failover", 0..300);
    a.wait_for_logs(
        "some of the burst issued by a",
        10,
        issued_with_prefix("failover-"),
    )
    .await;
    let a_lines = a.kill().await;
    b.wait_for_log("b leads", |l| {
        l["message"] == "became leader: deciding and signing"
    })
    .await;
    let issued_by_a = a_lines
        .iter()
        .filter(|l| issued_with_prefix("failover-")(l))
        .count();
    b.wait_for_logs(
        "the rest issued by b",
        names.len().saturating_sub(issued_by_a + 1),
        issued_with_prefix("failover-"),
    )
    .await;
    assert_each_approved_once(plane, "failover-", &names);
    let by_a = a_lines
        .iter()
        .filter(|l| l["decision"] == "approve")
        .count();
    let b_lines = b.kill().await;
    let by_b = b_lines
        .iter()
        .filter(|l| l["decision"] == "approve")
        .count();
    // (a may die between a write and its log line: the server's state above is the count.)
    assert!(
        by_a > 0 && by_b > 0,
        "both replicas worked the burst: a {by_a}, b {by_b}"
    );
}
