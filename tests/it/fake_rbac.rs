//! The fake API server's SubjectAccessReviews (`tests/support/apiserver.rs`) answer as
//! kube-apiserver's RBAC authorizer does from the bindings a test sets: rbac/v1 rule matching
//! (verbs, apiGroups, resources with subresources and wildcards, resourceNames), ClusterRoleBindings
//! everywhere, RoleBindings only in their own namespace. Asked over HTTPS with the client
//! csr-warden builds, as the controller asks.

use crate::support;

use csr_warden::kube::client::bounded;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use support::FakeApiServer;
use support::apiserver::{ADMIN_TOKEN, PolicyRule, RbacSubject};

/// What a review asks: namespace, verb, API group, resource, subresource, name ("" = none).
type Ask<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, &'a str);

struct Fake {
    server: FakeApiServer,
    reviews: Api<SubjectAccessReview>,
    _dir: tempfile::TempDir,
}

async fn fake() -> Fake {
    let server = FakeApiServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig =
        Kubeconfig::read_from(server.kubeconfig(dir.path(), ADMIN_TOKEN)).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config");
    let reviews = Api::all(bounded(config).expect("client"));
    Fake {
        server,
        reviews,
        _dir: dir,
    }
}

fn review(user: &str, groups: &[&str], uid: Option<&str>, ask: Ask<'_>) -> SubjectAccessReview {
    let (namespace, verb, group, resource, subresource, name) = ask;
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: some(user),
            groups: Some(groups.iter().map(|g| g.to_string()).collect()),
            uid: uid.map(str::to_owned),
            resource_attributes: Some(ResourceAttributes {
                namespace: some(namespace),
                verb: some(verb),
                group: some(group),
                resource: some(resource),
                subresource: some(subresource),
                name: some(name),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

impl Fake {
    /// (allowed, reason) for `user` in `groups` asking `ask`.
    async fn ask(&self, user: &str, groups: &[&str], ask: Ask<'_>) -> (bool, String) {
        let answer = self
            .reviews
            .create(&PostParams::default(), &review(user, groups, None, ask))
            .await
            .expect("review answered");
        let status = answer.status.expect("status");
        (status.allowed, status.reason.unwrap_or_default())
    }
}

const CLUSTER_ADMINS: &str = "kubeadm:cluster-admins";
const SA_DEPLOYER: &str = "system:serviceaccount:ci:deployer";

/// The bindings the table is asked against, as a kubeadm cluster plus a few narrower roles.
fn bind(server: &FakeApiServer) {
    server.bind_cluster_role(
        RbacSubject::group(CLUSTER_ADMINS),
        &[PolicyRule::new(&["*"], &["*"], &["*"])],
    );
    server.bind_role(
        "kube-system",
        RbacSubject::group("ops"),
        &[
            PolicyRule::new(&["get", "list"], &[""], &["secrets"]),
            PolicyRule::new(&["create"], &[""], &["pods", "pods/exec"]),
        ],
    );
    server.bind_cluster_role(
        RbacSubject::user("jane"),
        &[PolicyRule::new(&["get", "create"], &[""], &["pods"])],
    );
    server.bind_cluster_role(
        RbacSubject::user("bob"),
        &[PolicyRule::new(&["get"], &[""], &["secrets"]).names(&["bootstrap-token-abcdef"])],
    );
    server.bind_cluster_role(
        RbacSubject::service_account("ci", "deployer"),
        &[PolicyRule::new(
            &["create"],
            &[""],
            &["serviceaccounts/token"],
        )],
    );
    server.bind_cluster_role(
        RbacSubject::user("proxy-reader"),
        &[PolicyRule::new(&["get"], &[""], &["*/proxy"])],
    );
    server.bind_cluster_role(
        RbacSubject::user("webhook-admin"),
        &[PolicyRule::new(
            &["update", "patch"],
            &["admissionregistration.k8s.io"],
            &["validatingwebhookconfigurations"],
        )],
    );
    server.allow_sar("system:bootstrappers", "nodeclient");
}

struct Row {
    proves: &'static str,
    user: &'static str,
    groups: &'static [&'static str],
    ask: Ask<'static>,
    allowed: bool,
}

#[tokio::test]
async fn reviews_are_answered_as_rbac_answers_them() {
    let f = fake().await;
    bind(&f.server);
    let authenticated: &[&str] = &["system:authenticated"];
    let admins: &[&str] = &[CLUSTER_ADMINS, "system:authenticated"];
    let ops: &[&str] = &["ops", "system:authenticated"];
    let sa: &[&str] = &[
        "system:serviceaccounts",
        "system:serviceaccounts:ci",
        "system:authenticated",
    ];
    let rows = [
        Row {
            proves: "cluster-admin's wildcards allow verb * group * resource *",
            user: "kubernetes-admin",
            groups: admins,
            ask: ("", "*", "*", "*", "", ""),
            allowed: true,
        },
        Row {
            proves: "resource * covers a subresource too (pods/exec)",
            user: "kubernetes-admin",
            groups: admins,
            ask: ("kube-system", "create", "", "pods", "exec", ""),
            allowed: true,
        },
        Row {
            proves: "a Group binding applies to any user in that group (jane's own rules are narrow)",
            user: "jane",
            groups: admins,
            ask: ("", "approve", "certificates.k8s.io", "signers", "", ""),
            allowed: true,
        },
        Row {
            proves: "a Group subject does not match a user of the same name",
            user: CLUSTER_ADMINS,
            groups: authenticated,
            ask: ("", "*", "*", "*", "", ""),
            allowed: false,
        },
        Row {
            proves: "a RoleBinding in kube-system does not grant namespace \"\" (all namespaces)",
            user: "olga",
            groups: ops,
            ask: ("", "list", "", "secrets", "", ""),
            allowed: false,
        },
        Row {
            proves: "a RoleBinding grants in its own namespace",
            user: "olga",
            groups: ops,
            ask: ("kube-system", "list", "", "secrets", "", ""),
            allowed: true,
        },
        Row {
            proves: "a RoleBinding grants nothing in another namespace",
            user: "olga",
            groups: ops,
            ask: ("default", "list", "", "secrets", "", ""),
            allowed: false,
        },
        Row {
            proves: "a RoleBinding does not grant cluster-scoped requests",
            user: "olga",
            groups: ops,
            ask: ("", "create", "", "pods", "exec", ""),
            allowed: false,
        },
        Row {
            proves: "a rule naming pods/exec allows the exec subresource",
            user: "olga",
            groups: ops,
            ask: ("kube-system", "create", "", "pods", "exec", ""),
            allowed: true,
        },
        Row {
            proves: "a rule naming pods does not cover pods/exec",
            user: "jane",
            groups: authenticated,
            ask: ("kube-system", "create", "", "pods", "exec", ""),
            allowed: false,
        },
        Row {
            proves: "a ClusterRoleBinding applies inside any namespace",
            user: "jane",
            groups: authenticated,
            ask: ("kube-system", "create", "", "pods", "", ""),
            allowed: true,
        },
        Row {
            proves: "a verb the rule lacks is denied",
            user: "jane",
            groups: authenticated,
            ask: ("", "list", "", "pods", "", ""),
            allowed: false,
        },
        Row {
            proves: "an API group the rule lacks is denied",
            user: "jane",
            groups: authenticated,
            ask: ("kube-system", "create", "apps", "pods", "", ""),
            allowed: false,
        },
        Row {
            proves: "resourceNames: the named object is allowed",
            user: "bob",
            groups: authenticated,
            ask: (
                "kube-system",
                "get",
                "",
                "secrets",
                "",
                "bootstrap-token-abcdef",
            ),
            allowed: true,
        },
        Row {
            proves: "resourceNames: another name is denied",
            user: "bob",
            groups: authenticated,
            ask: ("kube-system", "get", "", "secrets", "", "other"),
            allowed: false,
        },
        Row {
            proves: "resourceNames: a request without a name is denied",
            user: "bob",
            groups: authenticated,
            ask: ("", "get", "", "secrets", "", ""),
            allowed: false,
        },
        Row {
            proves: "a ServiceAccount subject matches system:serviceaccount:NS:NAME",
            user: SA_DEPLOYER,
            groups: sa,
            ask: ("", "create", "", "serviceaccounts", "token", ""),
            allowed: true,
        },
        Row {
            proves: "a ServiceAccount subject does not match the same name in another namespace",
            user: "system:serviceaccount:other:deployer",
            groups: authenticated,
            ask: ("", "create", "", "serviceaccounts", "token", ""),
            allowed: false,
        },
        Row {
            proves: "serviceaccounts/token does not cover serviceaccounts",
            user: SA_DEPLOYER,
            groups: sa,
            ask: ("", "create", "", "serviceaccounts", "", ""),
            allowed: false,
        },
        Row {
            proves: "*/proxy matches nodes/proxy",
            user: "proxy-reader",
            groups: authenticated,
            ask: ("", "get", "", "nodes", "proxy", ""),
            allowed: true,
        },
        Row {
            proves: "*/proxy does not match the resource without the subresource",
            user: "proxy-reader",
            groups: authenticated,
            ask: ("", "get", "", "nodes", "", ""),
            allowed: false,
        },
        Row {
            proves: "a webhook rule allows its own resource",
            user: "webhook-admin",
            groups: authenticated,
            ask: (
                "",
                "patch",
                "admissionregistration.k8s.io",
                "validatingwebhookconfigurations",
                "",
                "",
            ),
            allowed: true,
        },
        Row {
            proves: "a webhook rule does not cover a resource it does not name",
            user: "webhook-admin",
            groups: authenticated,
            ask: (
                "",
                "patch",
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                "",
                "",
            ),
            allowed: false,
        },
        Row {
            proves: "allow_sar still allows its (group, subresource) pair",
            user: "system:bootstrap:abcdef",
            groups: &["system:bootstrappers", "system:authenticated"],
            ask: (
                "",
                "create",
                "certificates.k8s.io",
                "certificatesigningrequests",
                "nodeclient",
                "",
            ),
            allowed: true,
        },
        Row {
            proves: "allow_sar allows only its subresource",
            user: "system:bootstrap:abcdef",
            groups: &["system:bootstrappers", "system:authenticated"],
            ask: (
                "",
                "create",
                "certificates.k8s.io",
                "certificatesigningrequests",
                "selfnodeclient",
                "",
            ),
            allowed: false,
        },
        Row {
            proves: "system:masters is allowed everything, bound or not (kube-apiserver's privileged group)",
            user: "root",
            groups: &["system:masters", "system:authenticated"],
            ask: ("", "impersonate", "authentication.k8s.io", "uids", "", ""),
            allowed: true,
        },
        Row {
            proves: "default deny: nothing bound to the user or its groups",
            user: "mallory",
            groups: authenticated,
            ask: ("kube-system", "create", "", "pods", "", ""),
            allowed: false,
        },
    ];
    let mut wrong = Vec::new();
    for row in &rows {
        let (allowed, reason) = f.ask(row.user, row.groups, row.ask).await;
        if allowed != row.allowed {
            wrong.push(format!(
                "{}: {} {:?} {:?} -> allowed {allowed} ({reason})",
                row.proves, row.user, row.groups, row.ask
            ));
        }
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    assert_eq!(f.server.reviews_asked(), rows.len());
}

/// Every escalation check of the ceiling: cluster-admin passes each one; an identity with no
/// bindings passes none, nor does one whose only grants are RoleBindings in kube-system for a
/// check in all namespaces.
#[tokio::test]
async fn the_ceiling_checks_refuse_cluster_admin_and_pass_nobody() {
    let f = fake().await;
    bind(&f.server);
    // The privilege ceiling's own checks, as csr-warden asks them.
    let checks = csr_warden::policy::default_privilege_checks();
    for check in &checks {
        let check: Ask = (
            &check.namespace,
            &check.verb,
            &check.group,
            &check.resource,
            &check.subresource,
            &check.resource_name,
        );
        let (admin, _) = f
            .ask(
                "kubernetes-admin",
                &[CLUSTER_ADMINS, "system:authenticated"],
                check,
            )
            .await;
        assert!(admin, "cluster-admin is allowed {check:?}");
        let (nobody, reason) = f.ask("mallory", &["system:authenticated"], check).await;
        assert!(!nobody, "mallory is denied {check:?} ({reason})");
    }
    let (exec, _) = f
        .ask(
            "olga",
            &["ops"],
            ("kube-system", "create", "", "pods", "exec", ""),
        )
        .await;
    assert!(exec, "ops may exec in kube-system");
    let (secrets, _) = f
        .ask("olga", &["ops"], ("", "list", "", "secrets", "", ""))
        .await;
    assert!(!secrets, "but not list secrets in all namespaces");
}

/// The reason names the binding as kube-apiserver's RBAC authorizer does.
#[tokio::test]
async fn an_allowed_review_says_which_binding_allowed_it() {
    let f = fake().await;
    let admins = f.server.bind_cluster_role(
        RbacSubject::group(CLUSTER_ADMINS),
        &[PolicyRule::new(&["*"], &["*"], &["*"])],
    );
    let ops = f.server.bind_role(
        "kube-system",
        RbacSubject::group("ops"),
        &[PolicyRule::new(&["create"], &[""], &["pods"])],
    );
    let deployer = f.server.bind_cluster_role(
        RbacSubject::service_account("ci", "deployer"),
        &[PolicyRule::new(
            &["create"],
            &[""],
            &["serviceaccounts/token"],
        )],
    );
    let rows: [(&str, &[&str], Ask, String); 3] = [
        (
            "kubernetes-admin",
            &[CLUSTER_ADMINS],
            ("", "*", "*", "*", "", ""),
            format!(
                "RBAC: allowed by ClusterRoleBinding \"{admins}\" of ClusterRole \"{admins}\" to Group \"{CLUSTER_ADMINS}\""
            ),
        ),
        (
            "olga",
            &["ops"],
            ("kube-system", "create", "", "pods", "", ""),
            format!(
                "RBAC: allowed by RoleBinding \"{ops}/kube-system\" of Role \"{ops}\" to Group \"ops\""
            ),
        ),
        (
            SA_DEPLOYER,
            &[],
            ("", "create", "", "serviceaccounts", "token", ""),
            format!(
                "RBAC: allowed by ClusterRoleBinding \"{deployer}\" of ClusterRole \"{deployer}\" to ServiceAccount \"ci/deployer\""
            ),
        ),
    ];
    for (user, groups, ask, expected) in rows {
        let (allowed, reason) = f.ask(user, groups, ask).await;
        assert!(allowed, "{user} {ask:?}");
        assert_eq!(reason, expected);
    }
}

/// Each review asked is kept, so a test can assert what the controller asked.
#[tokio::test]
async fn the_reviews_asked_are_recorded() {
    let f = fake().await;
    f.reviews
        .create(
            &PostParams::default(),
            &review(
                "system:node:n1",
                &["system:nodes", "system:authenticated"],
                Some("0f3c"),
                ("", "get", "", "nodes", "proxy", "n1"),
            ),
        )
        .await
        .expect("review answered");
    let asked = f.server.reviews();
    assert_eq!(asked.len(), 1);
    assert_eq!(f.server.reviews_asked(), 1);
    let spec = &asked[0];
    assert_eq!(spec["user"], "system:node:n1");
    assert_eq!(
        spec["groups"],
        serde_json::json!(["system:nodes", "system:authenticated"])
    );
    assert_eq!(spec["uid"], "0f3c");
    // The client leaves out what is empty (the core group "").
    assert_eq!(
        spec["resourceAttributes"],
        serde_json::json!({"verb": "get", "resource": "nodes", "subresource": "proxy", "name": "n1"})
    );
}

/// As kube-apiserver validates a review: one with neither user nor groups is a 422.
#[tokio::test]
async fn a_review_without_user_or_groups_is_invalid() {
    let f = fake().await;
    let mut bad = review("", &[], None, ("", "get", "", "secrets", "", ""));
    bad.spec.groups = None;
    match f.reviews.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 422, "{status:?}"),
        other => panic!("expected 422, got {other:?}"),
    }
}
