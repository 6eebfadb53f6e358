//! The privilege ceiling and reserved identities, end to end: the real binary against the fake
//! API server, whose SubjectAccessReviews are answered from RBAC bindings the test sets (as
//! kube-apiserver's RBAC authorizer answers them).

use crate::support;

use hyper::Method;
use support::apiserver::{ErrorFault, PolicyRule, RbacSubject};
use support::*;

/// Bindings of a cluster where a few identities reach far: kubeadm's admin group is
/// cluster-admin; group `ops` may exec into kube-system's Pods; user `reader` may read every
/// Secret.
fn bind_the_cluster(h: &Harness) {
    h.server.bind_cluster_role(
        RbacSubject::group("kubeadm:cluster-admins"),
        &[PolicyRule::new(&["*"], &["*"], &["*"])],
    );
    h.server.bind_role(
        "kube-system",
        RbacSubject::group("ops"),
        &[PolicyRule::new(&["create"], &[""], &["pods/exec"])],
    );
    h.server.bind_cluster_role(
        RbacSubject::user("reader"),
        &[PolicyRule::new(&["get", "list"], &[""], &["secrets"])],
    );
    // Grants limited to one object answer only a review that names it.
    h.server.bind_cluster_role(
        RbacSubject::user("impersonator"),
        &[PolicyRule::new(&["impersonate"], &[""], &["groups"]).names(&["system:masters"])],
    );
    // A RoleBinding in kube-system: no all-namespace review sees it.
    h.server.bind_role(
        "kube-system",
        RbacSubject::user("ks-reader"),
        &[PolicyRule::new(&["get"], &[""], &["secrets"])],
    );
}

fn failed_reason(server: &support::apiserver::FakeApiServer, name: &str) -> Option<String> {
    condition(&csr_state(server, name), "Failed")
        .and_then(|c| c["reason"].as_str())
        .map(str::to_owned)
}

/// The table: an admin approves, by hand, requests csr-warden would never approve; as
/// their signer, csr-warden refuses each with Failed and issues the ordinary one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_approval_never_signs_cluster_admin_by_another_name() {
    let h = harness().await;
    bind_the_cluster(&h);
    // Sign-only: csr-warden decides nothing, so every request waits for the human.
    let policy = format!(
        "signers:\n  - name: {CLIENT_SIGNER}\n    role: sign\n    ca: {}\n",
        ca_yaml(&h.ca)
    );
    // (CSR, subject, the Failed reason and what the message must name); None: issued.
    type Refusal = Option<(&'static str, &'static str)>;
    let rows: [(&str, &str, Refusal); 9] = [
        (
            "eve",
            "/CN=eve/O=kubeadm:cluster-admins",
            Some(("PrivilegedIdentity", "privilege check cluster-admin")),
        ),
        (
            "kcm",
            "/CN=system:kube-controller-manager",
            Some(("ReservedIdentity", "system:kube-controller-manager")),
        ),
        (
            "node",
            "/CN=system:node:worker-1/O=system:nodes",
            Some(("ReservedIdentity", "system:node:*")),
        ),
        (
            "ops-bot",
            "/CN=ops-bot/O=ops",
            Some(("PrivilegedIdentity", "exec-pods-kube-system")),
        ),
        (
            "reader",
            "/CN=reader",
            Some(("PrivilegedIdentity", "get-secrets")),
        ),
        (
            "impersonator",
            "/CN=impersonator",
            Some(("PrivilegedIdentity", "impersonate-system-masters")),
        ),
        (
            "ks-reader",
            "/CN=ks-reader",
            Some(("PrivilegedIdentity", "get-secrets-kube-system")),
        ),
        (
            "bootstrap",
            "/CN=system:bootstrap:abcdef",
            Some(("ReservedIdentity", "system:*")),
        ),
        ("bob", "/CN=bob/O=developers", None),
    ];
    for (name, subject, _) in &rows {
        h.create_client_csr("jane-token", name, subject);
    }
    let _controller = h.controller_with_policy(&policy, &[]);
    let names: Vec<&str> = rows.iter().map(|(name, _, _)| *name).collect();
    let mut args = vec!["certificate", "approve"];
    args.extend(&names);
    let (ok, out, err) = kubectl(&h.admin_kubeconfig(), &args, None);
    assert!(ok, "{out}{err}");
    h.server
        .wait_for("every row issued or failed", |s| {
            names
                .iter()
                .all(|name| issued(s, name) || has(s, name, "Failed"))
        })
        .await;
    for (name, subject, failed) in rows {
        let csr = csr_state(&h.server, name);
        match failed {
            None => {
                let cert = certificate_pem(&csr).unwrap_or_else(|| panic!("{name}: {csr}"));
                assert!(
                    openssl_verifies(h.dir.path(), &h.ca.0, &cert, "sslclient"),
                    "{name}"
                );
            }
            Some((reason, names_it)) => {
                assert_eq!(
                    failed_reason(&h.server, name).as_deref(),
                    Some(reason),
                    "{name} {subject}: {csr}"
                );
                assert!(certificate_pem(&csr).is_none(), "{name}: no certificate");
                let message = condition(&csr, "Failed").expect("Failed")["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                assert!(message.contains(names_it), "{name}: {message}");
                let warned = h.server.events_for(name).iter().any(|e| {
                    e["type"] == "Warning"
                        && e["reason"] == reason
                        && e["note"]
                            .as_str()
                            .or(e["message"].as_str())
                            .is_some_and(|m| m.contains(names_it))
                });
                assert!(warned, "{name}: {:?}", h.server.events_for(name));
            }
        }
    }
    // The reviews asked about the certificate's identity, not the requester's (jane).
    let reviews = h.server.reviews();
    let eve = reviews
        .iter()
        .find(|r| r["user"] == "eve")
        .unwrap_or_else(|| panic!("a review of eve: {reviews:?}"));
    assert_eq!(
        eve["groups"],
        serde_json::json!(["kubeadm:cluster-admins", "system:authenticated"])
    );
    assert!(
        reviews
            .iter()
            .all(|r| r["user"] != "system:kube-controller-manager"),
        "a reserved identity is refused before any review"
    );
}

/// As approver: an allow-listed identity the cluster makes powerful is denied, naming the check;
/// a rule's acceptChecks lets exactly that check through; a request left for a human is denied
/// before the human sees it, on an approve-only signer too (kube-controller-manager issues
/// what csr-warden approves, and checks nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approver_denies_privileged_identities_and_approves_the_rest() {
    let h = harness().await;
    bind_the_cluster(&h);
    const TEAM: &str = "example.com/team";
    let policy = format!(
        "signers:\n  - name: {CLIENT_SIGNER}\n    ca: {}\n  - name: {TEAM}\n    role: approve\nallowList:\n  - commonName: jane\n    groups: [developers]\n  - commonName: ops-bot\n    groups: [ops]\n  - commonName: ci-bot\n    groups: [ops]\n    acceptChecks: [exec-pods-kube-system]\n",
        ca_yaml(&h.ca)
    );
    h.create_client_csr("jane-token", "jane", "/CN=jane/O=developers");
    h.server
        .add_user("ops-token", "ops-bot", &["system:authenticated"]);
    h.server
        .add_user("ci-token", "ci-bot", &["system:authenticated"]);
    h.create_client_csr("ops-token", "ops-bot", "/CN=ops-bot/O=ops");
    h.create_client_csr("ci-token", "ci-bot", "/CN=ci-bot/O=ops");
    h.create_client_csr("jane-token", "eve", "/CN=eve/O=kubeadm:cluster-admins");
    h.create_signer_csr(
        "jane-token",
        "eve-team",
        "/CN=eve/O=kubeadm:cluster-admins",
        TEAM,
    );
    h.create_client_csr("jane-token", "kcm", "/CN=system:kube-controller-manager");
    let controller = h.controller_with_policy(&policy, &[]);
    let expected = [
        ("jane", "Approved", "AutoApprovedAllowList"),
        ("ci-bot", "Approved", "AutoApprovedAllowList"),
        ("ops-bot", "Denied", "PrivilegedIdentity"),
        ("eve", "Denied", "PrivilegedIdentity"),
        ("eve-team", "Denied", "PrivilegedIdentity"),
        ("kcm", "Denied", "ReservedIdentity"),
    ];
    h.server
        .wait_for("every CSR decided, the approved ones issued", |s| {
            expected.iter().all(|(name, kind, _)| {
                has(s, name, kind) && (*kind != "Approved" || issued(s, name))
            })
        })
        .await;
    for (name, kind, reason) in expected {
        let csr = csr_state(&h.server, name);
        assert_eq!(
            condition(&csr, kind).expect(kind)["reason"],
            reason,
            "{name}"
        );
    }
    let ops = csr_state(&h.server, "ops-bot");
    let message = condition(&ops, "Denied").expect("Denied")["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("exec-pods-kube-system") && message.contains("ops-bot"),
        "{message}"
    );
    let logged = controller
        .wait_for_log("eve's deny line", |l| {
            l["csr"] == "eve" && l["decision"] == "deny"
        })
        .await;
    assert_eq!(logged["reason"], "PrivilegedIdentity");
}

/// No answer is never a yes: while the SubjectAccessReviews fail, an allow-listed request is
/// left with a PrivilegeReviewUnavailable Event and a hand-approved one is not signed; when the
/// reviews answer again, both go through without anyone touching them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_that_cannot_be_had_never_approves_or_signs() {
    for status in [503, 403] {
        let h = harness().await;
        const LEGACY: &str = "example.com/legacy";
        let policy = format!(
            "signers:\n  - name: {CLIENT_SIGNER}\n    ca: {ca}\n  - name: {LEGACY}\n    role: sign\n    ca: {ca}\nallowList:\n  - commonName: jane\n    groups: [developers]\n",
            ca = ca_yaml(&h.ca)
        );
        h.server.arm(|faults| {
            faults.errors.push(ErrorFault::new(
                Some(Method::POST),
                "subjectaccessreviews",
                status,
                usize::MAX,
            ))
        });
        h.create_client_csr("jane-token", "jane", "/CN=jane/O=developers");
        h.create_signer_csr("jane-token", "legacy", "/CN=bob/O=developers", LEGACY);
        let (ok, out, err) = kubectl(
            &h.admin_kubeconfig(),
            &["certificate", "approve", "legacy"],
            None,
        );
        assert!(ok, "{out}{err}");
        let controller = h.controller_with_policy(&policy, &[]);
        let said = |s: &support::apiserver::FakeApiServer, name: &str| {
            s.events_for(name)
                .iter()
                .any(|e| e["reason"] == "PrivilegeReviewUnavailable")
        };
        h.server
            .wait_for("both CSRs say why they wait", |s| {
                said(s, "jane") && said(s, "legacy")
            })
            .await;
        controller
            .wait_for_log("a retry after the failed reviews", |l| {
                l["csr"] == "jane" && l["kind"] == "privilege review"
            })
            .await;
        let jane = csr_state(&h.server, "jane");
        assert!(condition_types(&jane).is_empty(), "{status}: {jane}");
        assert!(
            certificate_pem(&csr_state(&h.server, "legacy")).is_none(),
            "{status}: not signed blind"
        );
        h.server.arm(|faults| faults.errors.clear());
        h.server
            .wait_for("both issued once the reviews answer", |s| {
                issued(s, "jane") && issued(s, "legacy")
            })
            .await;
        let (_, metrics) = controller.http_get("/metrics").await;
        assert!(
            metric_sample(
                &metrics,
                "csr_warden_privilege_reviews_total{check=\"cluster-admin\",answer=\"error\"}"
            )
            .is_some_and(|n| n >= 1.0),
            "{status}: {metrics}"
        );
        assert!(
            metric_sample(
                &metrics,
                "csr_warden_privilege_reviews_total{check=\"cluster-admin\",answer=\"denied\"}"
            )
            .is_some_and(|n| n >= 1.0),
            "{status}: {metrics}"
        );
    }
}

/// One identity's reviews are asked once however many of its CSRs are decided at the same
/// moment: the second worker waits for the first's answers (and so a backlog of one user's
/// CSRs is still worked oldest first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_of_one_identity_are_asked_once_for_csrs_decided_together() {
    let h = harness().await;
    // Slow enough that both workers want the answers while the first round is still out.
    h.server
        .arm(|f| f.slow_reviews = std::time::Duration::from_millis(50));
    h.create_client_csr("jane-token", "jane-a", "/CN=jane/O=developers");
    h.create_client_csr("jane-token", "jane-b", "/CN=jane/O=developers");
    let _controller = h.controller(&["--concurrency", "2"]);
    h.server
        .wait_for("both issued", |s| {
            issued(s, "jane-a") && issued(s, "jane-b")
        })
        .await;
    let checks = csr_warden::policy::default_privilege_checks().len();
    let asked = h
        .server
        .reviews()
        .iter()
        .filter(|r| r["user"] == "jane")
        .count();
    assert_eq!(asked, checks, "one round of the ceiling's reviews for jane");
}
