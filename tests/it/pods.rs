//! Pod certificates and trust bundles against a real kube-apiserver v1.36 that serves them
//! (`--feature-gates=PodCertificateRequest=true,ClusterTrustBundle=true
//! --runtime-config=certificates.k8s.io/v1beta1=true`), and the same binary against one that
//! does not. PodCertificateRequests are created as the kubelet does: as the pod's node, for a
//! pod bound to it, with the pod's, node's and service account's names and UIDs.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use support::control_plane::{self, ControlPlane};
use support::*;

const SIGNER: &str = "example.com/workload-identity";
const BUNDLE: &str = "example.com:workload-identity:csr-warden";
const NODE: &str = "pcr-node";

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The control plane that serves the pod certificate APIs, and this test's turn on it.
async fn gated(
    test: &str,
) -> Option<(&'static ControlPlane, tokio::sync::MutexGuard<'static, ()>)> {
    let plane = control_plane::shared_with_pod_certificates(test)?;
    Some((plane, TURN.lock().await))
}

fn policy(ca: &(PathBuf, PathBuf)) -> String {
    format!(
        "{POLICY}podCertificates:\n  - signerName: {SIGNER}\n    ca: {{cert: {}, key: {}}}\n    trustDomain: cluster.local\n    allow:\n      - {{namespace: payments, serviceAccounts: [api, worker]}}\n      - {{namespace: apps}}\n    maxExpirationSeconds: 7200\n    trustBundle: true\n",
        ca.0.display(),
        ca.1.display()
    )
}

fn start(plane: &ControlPlane, dir: &Path, pod_ca: &(PathBuf, PathBuf)) -> ControllerProcess {
    // Each test starts from no bundle (an earlier test's CA would be kept in it as retired);
    // a server without the API has none to delete.
    let _ = plane.try_kubectl(
        &["delete", "clustertrustbundle", BUNDLE, "--ignore-not-found"],
        None,
    );
    std::fs::write(dir.join("policy.yaml"), policy(pod_ca)).expect("policy");
    ControllerProcess::start_with_kubeconfig(
        dir,
        &(plane.ca_cert.clone(), plane.ca_key.clone()),
        &[
            "--resync-interval-seconds",
            "3600",
            "--reload-interval-ms",
            "200",
        ],
        &plane.admin,
    )
}

/// A PKCS#10 request with an empty subject, as the kubelet makes, in DER, base64.
fn stub_request(dir: &Path, name: &str, key: &[&str]) -> String {
    let out = dir.join(format!("{name}.der"));
    let mut args = vec!["req", "-new", "-nodes", "-subj", "/", "-outform", "DER"];
    args.extend_from_slice(key);
    let keyout = dir.join(format!("{name}.key"));
    args.extend(["-keyout", keyout.to_str().expect("path")]);
    args.extend(["-out", out.to_str().expect("path")]);
    openssl(&args);
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(&out).expect("der"))
}

const P256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
const P521: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"];

fn uid(plane: &ControlPlane, args: &[&str]) -> String {
    plane.get(args)["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_owned()
}

/// The namespace, service account and a pod bound to [`NODE`] that mounts a podCertificate
/// volume of `signer`; then the kubelet's PodCertificateRequest for it, created as the node.
fn pod_request(
    plane: &ControlPlane,
    dir: &Path,
    namespace: &str,
    account: &str,
    name: &str,
    signer: &str,
    key: &[&str],
) {
    plane.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}));
    plane.apply(&json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": account, "namespace": namespace}}));
    plane.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": NODE,
            "serviceAccountName": account,
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                "volumeMounts": [{"name": "identity", "mountPath": "/var/run/identity"}]}],
            "volumes": [{"name": "identity", "projected": {"sources": [{"podCertificate": {
                "signerName": signer, "keyType": "ECDSAP256",
                "credentialBundlePath": "credentialbundle.pem"}}]}}],
        }
    }));
    let pcr = json!({
        "apiVersion": "certificates.k8s.io/v1beta1", "kind": "PodCertificateRequest",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "signerName": signer,
            "podName": name,
            "podUID": uid(plane, &["pod", "-n", namespace, name]),
            "serviceAccountName": account,
            "serviceAccountUID": uid(plane, &["serviceaccount", "-n", namespace, account]),
            "nodeName": NODE,
            "nodeUID": uid(plane, &["node", NODE]),
            "maxExpirationSeconds": 86400,
            "stubPKCS10Request": stub_request(dir, &format!("{namespace}-{name}"), key),
        }
    });
    plane.create_as(&format!("system:node:{NODE}"), &["system:nodes"], &pcr);
}

fn pcr(plane: &ControlPlane, namespace: &str, name: &str) -> Value {
    plane.get(&["podcertificaterequests", "-n", namespace, name])
}

/// The request's Issued, Denied or Failed condition, once it has one.
async fn answered(plane: &ControlPlane, namespace: &str, name: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, _, err) = plane.try_kubectl(
            &[
                "wait",
                "-n",
                namespace,
                "--timeout=5s",
                "--for=jsonpath={.status.conditions[0].status}=True",
                &format!("podcertificaterequest/{name}"),
            ],
            None,
        );
        if ok {
            return pcr(plane, namespace, name);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{namespace}/{name} never answered: {err}\n{:#}",
            pcr(plane, namespace, name)
        );
    }
}

fn condition_of(pcr: &Value) -> (String, String) {
    let condition = &pcr["status"]["conditions"][0];
    (
        condition["type"].as_str().unwrap_or_default().to_owned(),
        condition["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

fn bundle(plane: &ControlPlane) -> Option<Value> {
    let (ok, out, _) =
        plane.try_kubectl(&["get", "clustertrustbundle", BUNDLE, "-o", "json"], None);
    ok.then(|| serde_json::from_str(&out).expect("json"))
}

/// The SHA-256 fingerprints of the bundle's anchors, sorted.
fn anchors(dir: &Path, bundle: &Value) -> Vec<String> {
    let pem = bundle["spec"]["trustBundle"].as_str().unwrap_or_default();
    let mut anchors: Vec<String> = pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .filter(|one| one.contains("BEGIN CERTIFICATE"))
        .map(|one| fingerprint(dir, one))
        .collect();
    anchors.sort();
    anchors
}

fn fingerprint(dir: &Path, pem: &str) -> String {
    let file = dir.join("fingerprint.pem");
    std::fs::write(&file, pem).expect("pem");
    String::from_utf8(openssl(&[
        "x509",
        "-noout",
        "-fingerprint",
        "-sha256",
        "-in",
        file.to_str().expect("path"),
    ]))
    .expect("utf8")
}

/// Allowed and disallowed service accounts, an unsupported key type and another signer's
/// request, and the CA published as a ClusterTrustBundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_spiffe_certificates_by_policy_and_the_ca_is_published() {
    let Some((plane, _turn)) =
        gated("pods_get_spiffe_certificates_by_policy_and_the_ca_is_published").await
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let pod_ca = openssl_ca(dir.path(), KeyKind::P256, 365);
    plane.node(NODE, &[("InternalIP", "10.0.0.90")]);
    let controller = start(plane, dir.path(), &pod_ca);
    controller.wait_synced().await;

    pod_request(plane, dir.path(), "payments", "api", "api-0", SIGNER, P256);
    pod_request(
        plane,
        dir.path(),
        "payments",
        "intruder",
        "intruder-0",
        SIGNER,
        P256,
    );
    pod_request(plane, dir.path(), "elsewhere", "api", "api-0", SIGNER, P256);
    pod_request(plane, dir.path(), "apps", "anyone", "p521-0", SIGNER, P521);
    pod_request(
        plane,
        dir.path(),
        "apps",
        "anyone",
        "foreign-0",
        "example.com/not-ours",
        P256,
    );
    pod_request(
        plane,
        dir.path(),
        "apps",
        "anyone",
        "anyone-0",
        SIGNER,
        P256,
    );

    // Issued: the SPIFFE ID alone, for the request's key, chained to the CA, times as written.
    for (namespace, name, id) in [
        (
            "payments",
            "api-0",
            "spiffe://cluster.local/ns/payments/sa/api",
        ),
        (
            "apps",
            "anyone-0",
            "spiffe://cluster.local/ns/apps/sa/anyone",
        ),
    ] {
        let issued = answered(plane, namespace, name).await;
        assert_eq!(condition_of(&issued).0, "Issued", "{issued:#}");
        let chain = issued["status"]["certificateChain"]
            .as_str()
            .expect("chain");
        let text = openssl_text(dir.path(), chain);
        assert!(text.contains(&format!("URI:{id}")), "{text}");
        assert!(
            !text.contains("DNS:") && !text.contains("Subject: CN"),
            "{text}"
        );
        assert!(
            text.contains("TLS Web Client Authentication")
                && text.contains("TLS Web Server Authentication"),
            "{text}"
        );
        assert!(
            openssl_verifies(dir.path(), &pod_ca.0, chain, "sslclient"),
            "chain verifies"
        );
        for field in ["notBefore", "notAfter", "beginRefreshAt"] {
            assert!(issued["status"][field].is_string(), "{field}: {issued:#}");
        }
        let line = controller
            .wait_for_log("the audit line", |l| {
                l["message"] == "pod certificate issued"
                    && l["pcr"] == format!("{namespace}/{name}")
            })
            .await;
        assert_eq!(line["spiffe_id"], id);
        assert_eq!(
            format!(
                "sha256 Fingerprint={}\n",
                line["sha256_fingerprint"].as_str().expect("fp")
            ),
            fingerprint(dir.path(), chain),
        );
    }
    // The policy's maximum (2 h) wins over the request's (24 h).
    let issued = pcr(plane, "payments", "api-0");
    let seconds = |field: &str| {
        time::OffsetDateTime::parse(
            issued["status"][field].as_str().expect("time"),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("rfc3339")
        .unix_timestamp()
    };
    assert!(
        seconds("notAfter") - seconds("notBefore") <= 7200,
        "{issued:#}"
    );

    for (namespace, name, reason) in [
        ("payments", "intruder-0", "ServiceAccountNotAllowed"),
        ("elsewhere", "api-0", "NamespaceNotAllowed"),
        ("apps", "p521-0", "UnsupportedKeyType"),
    ] {
        let denied = answered(plane, namespace, name).await;
        assert_eq!(
            condition_of(&denied),
            ("Denied".to_owned(), reason.to_owned()),
            "{denied:#}"
        );
        assert!(denied["status"]["certificateChain"].is_null());
    }
    let p521 = pcr(plane, "apps", "p521-0");
    assert!(
        p521["status"]["conditions"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("ECDSAP256")),
        "suggests a key type that works: {p521:#}"
    );
    // `check --pcr` explains a live request with the same decision.
    let checked = std::process::Command::new(env!("CARGO_BIN_EXE_csr-warden"))
        .args([
            "check",
            "--pcr",
            "payments/intruder-0",
            "-o",
            "json",
            "--policy",
        ])
        .arg(dir.path().join("policy.yaml"))
        .env("KUBECONFIG", &plane.admin)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("check");
    assert_eq!(checked.status.code(), Some(1), "{checked:?}");
    let report: Value = serde_json::from_slice(&checked.stdout).expect("json");
    assert_eq!(report["reason"], "ServiceAccountNotAllowed", "{report}");
    // Another signer's request: untouched (created before anyone-0, which is answered).
    assert!(pcr(plane, "apps", "foreign-0")["status"]["conditions"].is_null());

    // The CA as a ClusterTrustBundle for the signer, with the label to select it by.
    control_plane::wait_until("the trust bundle", || bundle(plane).is_some());
    let published = bundle(plane).expect("bundle");
    assert_eq!(published["spec"]["signerName"], SIGNER);
    assert_eq!(
        published["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "csr-warden"
    );
    let ca_pem = std::fs::read_to_string(&pod_ca.0).expect("ca");
    assert_eq!(
        fingerprint(
            dir.path(),
            published["spec"]["trustBundle"].as_str().expect("pem")
        ),
        fingerprint(dir.path(), &ca_pem)
    );
    controller.kill().await;
}

/// A CA rotation: the bundle carries the old and the new CA, and new certificates come from
/// the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trust_bundle_carries_old_and_new_ca_across_a_rotation() {
    let Some((plane, _turn)) =
        gated("the_trust_bundle_carries_old_and_new_ca_across_a_rotation").await
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let mounted = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let old_dir = tempfile::tempdir().expect("dir");
    let old = openssl_ca(old_dir.path(), KeyKind::P256, 365);
    std::fs::copy(&old.0, &mounted.0).expect("cert");
    std::fs::copy(&old.1, &mounted.1).expect("key");
    plane.node(NODE, &[("InternalIP", "10.0.0.90")]);
    let controller = start(plane, dir.path(), &mounted);
    controller.wait_synced().await;
    let old_pem = std::fs::read_to_string(&old.0).expect("old");
    let old_anchor = vec![fingerprint(dir.path(), &old_pem)];
    control_plane::wait_until("the bundle with the first CA alone", || {
        bundle(plane).is_some_and(|b| anchors(dir.path(), &b) == old_anchor)
    });

    let new_dir = tempfile::tempdir().expect("dir");
    let new = openssl_ca(new_dir.path(), KeyKind::P256, 365);
    std::fs::copy(&new.1, &mounted.1).expect("key");
    std::fs::copy(&new.0, &mounted.0).expect("cert");
    // The old CA and the new one, each whole (openssl cannot be asked to verify against the
    // bundle: both CAs have one subject name, and it tries only the first of a name).
    let mut both = vec![
        fingerprint(dir.path(), &old_pem),
        fingerprint(dir.path(), &std::fs::read_to_string(&new.0).expect("new")),
    ];
    both.sort();
    control_plane::wait_until("the bundle with both CAs", || {
        bundle(plane).is_some_and(|b| anchors(dir.path(), &b) == both)
    });

    pod_request(
        plane,
        dir.path(),
        "apps",
        "rotated",
        "rotated-0",
        SIGNER,
        P256,
    );
    let issued = answered(plane, "apps", "rotated-0").await;
    let chain = issued["status"]["certificateChain"]
        .as_str()
        .expect("chain");
    assert!(
        openssl_verifies(dir.path(), &new.0, chain, "sslclient"),
        "issued by the new CA"
    );
    assert!(!openssl_verifies(dir.path(), &old.0, chain, "sslclient"));
    controller.kill().await;
}

/// Against an API server without the pod certificate APIs: said once, CSRs decided and signed
/// as ever, ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_apis_it_says_so_once_and_carries_on_with_csrs() {
    let Some(plane) =
        control_plane::shared("without_the_apis_it_says_so_once_and_carries_on_with_csrs")
    else {
        return;
    };
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().expect("dir");
    let pod_ca = openssl_ca(dir.path(), KeyKind::P256, 365);
    let controller = start(plane, dir.path(), &pod_ca);
    controller.wait_synced().await;
    for resource in ["podcertificaterequests", "clustertrustbundles"] {
        controller
            .wait_for_log("said it is not served", |l| {
                l["resource"] == resource
                    && l["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("does not serve"))
            })
            .await;
    }
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
        &csr_object("pcr-less-jane", CLIENT_SIGNER, &["client auth"], &jane),
    );
    controller
        .wait_for_log("jane issued", |l| {
            l["csr"] == "pcr-less-jane" && l["decision"] == "issued"
        })
        .await;
    let said = |resource: &str| {
        controller
            .lines()
            .iter()
            .filter(|l| {
                l["resource"] == resource
                    && l["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("does not serve"))
            })
            .count()
    };
    assert_eq!(
        said("podcertificaterequests"),
        1,
        "{:#?}",
        controller.lines()
    );
    assert_eq!(said("clustertrustbundles"), 1);
    let (status, body) = controller.http_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    controller.kill().await;
}

/// Turning `trustBundle` off withdraws the signer's bundle on the next reload; a bundle with
/// csr-warden's label for a signer this policy does not know (another installation's) stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_is_withdrawn_when_turned_off_and_another_installations_stays() {
    let Some((plane, _turn)) =
        gated("a_bundle_is_withdrawn_when_turned_off_and_another_installations_stays").await
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let pod_ca = openssl_ca(dir.path(), KeyKind::P256, 365);
    let ca_pem = std::fs::read_to_string(&pod_ca.0).expect("ca");
    let foreign = "example.org:other-installation:csr-warden";
    let _ = plane.try_kubectl(
        &[
            "delete",
            "clustertrustbundle",
            foreign,
            "--ignore-not-found",
        ],
        None,
    );
    plane.apply(&json!({
        "apiVersion": "certificates.k8s.io/v1beta1", "kind": "ClusterTrustBundle",
        "metadata": {"name": foreign, "labels": {"app.kubernetes.io/managed-by": "csr-warden"}},
        "spec": {"signerName": "example.org/other-installation", "trustBundle": ca_pem},
    }));
    let controller = start(plane, dir.path(), &pod_ca);
    controller.wait_synced().await;
    control_plane::wait_until("the trust bundle", || bundle(plane).is_some());

    std::fs::write(
        dir.path().join("policy.yaml"),
        policy(&pod_ca).replace("    trustBundle: true\n", ""),
    )
    .expect("policy");
    controller
        .wait_for_log("withdrawn", |l| {
            l["bundle"] == BUNDLE
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("no longer published, deleted"))
        })
        .await;
    assert!(bundle(plane).is_none(), "withdrawn");
    let (kept, _, _) = plane.try_kubectl(&["get", "clustertrustbundle", foreign], None);
    assert!(kept, "another installation's bundle is left alone");
    controller.kill().await;
}
