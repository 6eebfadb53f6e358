//! PURE: the identities no certificate of csr-warden's may carry, and the privilege ceiling.
//!
//! A client certificate is an identity kube-apiserver believes until it expires: user = CN,
//! groups = every O, UID = the UID attribute. It cannot be revoked, so approval and signing are
//! the only moments anyone can stop a certificate that amounts to cluster-admin under another
//! name (`O=kubeadm:cluster-admins`, `CN=system:kube-controller-manager`, a node's identity on
//! the wrong signer). Two rules, both for every signer but the two kubelet signers (whose node
//! review and fixed shape decide who a node is):
//! - **reserved identities** are refused outright, whatever the cluster's RBAC says today;
//! - the **privilege ceiling**: the cluster is asked, with SubjectAccessReviews, whether the
//!   certificate's identity may do any of a set of escalation checks; any yes refuses it, unless
//!   an allow-list rule for that identity accepts that check by name.

use super::{CertificateRequest, normalize_group};

/// The group every authenticated request carries: part of the certificate's identity.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// The control plane's own users, refused by default (the policy's `reservedUsers` adds more).
pub const DEFAULT_RESERVED_USERS: &[&str] = &[
    "system:kube-controller-manager",
    "system:kube-scheduler",
    "system:kube-proxy",
    "system:apiserver",
    "system:volume-scheduler",
    "system:anonymous",
    "kube-apiserver-kubelet-client",
    "kube-apiserver-etcd-client",
    "front-proxy-client",
    // kubeadm's admin.conf and super-admin.conf users.
    "kubernetes-admin",
    "kubernetes-super-admin",
];

/// Names reserved to Kubernetes itself, as user (CN) or group (O), with why. A prefix ends in
/// `*`. Fixed: no policy can make them safe.
const RESERVED_NAMES: &[(&str, &str)] = &[
    (
        "system:node:*",
        "a node's identity, which only the kubelet signers issue, after their node review",
    ),
    (
        "system:nodes",
        "the nodes' group, which only the kubelet signers issue, after their node review",
    ),
    (
        "system:serviceaccount:*",
        "a ServiceAccount's identity, which only kube-apiserver's tokens carry",
    ),
    (
        "system:serviceaccounts*",
        "the ServiceAccounts' groups, which only kube-apiserver's tokens carry",
    ),
    (
        "system:bootstrappers*",
        "the bootstrap tokens' groups, which may ask for any node's client certificate",
    ),
    (
        "system:anonymous",
        "the identity of unauthenticated requests",
    ),
    (
        "system:unauthenticated",
        "the group of unauthenticated requests",
    ),
    (
        "system:authenticated",
        "the group every authenticated request already carries",
    ),
    (
        "system:*",
        "the prefix Kubernetes reserves for its own users and groups (bootstrap tokens, \
         aggregators, the control plane's components)",
    ),
];

/// Why `request` asks for a reserved identity, or None. `reserved_users` is the policy's list
/// (the defaults included). Names compare ignoring case, whitespace and invisible characters.
pub fn reserved_identity(
    request: &CertificateRequest,
    reserved_users: &[String],
) -> Option<String> {
    let common_name = request.common_name.as_deref().unwrap_or_default();
    let names = std::iter::once(("CN", common_name))
        .chain(request.organizations.iter().map(|o| ("O", o.as_str())));
    for (attribute, name) in names {
        let normalized = normalize_group(name);
        if normalized.is_empty() {
            continue;
        }
        // The reserved names are written normalised already (lower case, no spaces).
        let fixed = RESERVED_NAMES
            .iter()
            .find(|(reserved, _)| match reserved.strip_suffix('*') {
                Some(prefix) => normalized.starts_with(prefix),
                None => normalized == *reserved,
            });
        if let Some((reserved, why)) = fixed {
            return Some(format!(
                "{attribute}={name:?} is reserved ({reserved}: {why}); csr-warden never approves \
                 or signs it on this signer"
            ));
        }
        // The policy's reservedUsers are normalised when it is loaded.
        if attribute == "CN"
            && let Some(user) = reserved_users.iter().find(|u| **u == normalized)
        {
            return Some(format!(
                "CN={name:?} is the control plane's own user {user} (reservedUsers); a \
                 certificate for it would act as that component, so csr-warden never approves \
                 or signs it"
            ));
        }
    }
    None
}

/// One question the ceiling asks the cluster: may the identity do this?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivilegeCheck {
    /// Stable name, used in reasons, Events, metrics and allow-list `acceptChecks`.
    pub name: String,
    pub verb: String,
    /// API group; "" is the core group, "*" any.
    pub group: String,
    pub resource: String,
    /// "" for none.
    pub subresource: String,
    /// "" for all namespaces (and cluster-scoped resources).
    pub namespace: String,
    /// "" for every object; else one object by name (RBAC grants limited by `resourceNames`
    /// answer only a review that names the object).
    pub resource_name: String,
}

impl PrivilegeCheck {
    pub fn new(
        name: &str,
        verb: &str,
        group: &str,
        resource: &str,
        subresource: &str,
        namespace: &str,
    ) -> Self {
        PrivilegeCheck {
            name: name.into(),
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            resource_name: String::new(),
        }
    }

    /// The same check, for one object by name.
    pub fn named(mut self, resource_name: &str) -> Self {
        self.resource_name = resource_name.into();
        self
    }
}

impl std::fmt::Display for PrivilegeCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            String::new()
        } else {
            format!(".{}", self.group)
        };
        let subresource = if self.subresource.is_empty() {
            String::new()
        } else {
            format!("/{}", self.subresource)
        };
        let namespace = if self.namespace.is_empty() {
            "in all namespaces".to_owned()
        } else {
            format!("in namespace {}", self.namespace)
        };
        let name = if self.resource_name.is_empty() {
            String::new()
        } else {
            format!(" {:?}", self.resource_name)
        };
        write!(
            f,
            "{} {}{group}{subresource}{name} {namespace}",
            self.verb, self.resource
        )
    }
}

/// The escalation checks every policy starts with (`privilegeCeiling.checks` adds more), one a
/// line: (name, verb, API group, resource, subresource, namespace, object name). An empty
/// namespace is every namespace; an object name asks about that object alone, which is the only
/// way a review sees an RBAC grant limited by `resourceNames`.
#[rustfmt::skip]
const DEFAULT_CHECKS: &[(&str, &str, &str, &str, &str, &str, &str)] = &[
    ("cluster-admin", "*", "*", "*", "", "", ""),
    ("escalate-roles", "escalate", "rbac.authorization.k8s.io", "roles", "", "", ""),
    ("escalate-clusterroles", "escalate", "rbac.authorization.k8s.io", "clusterroles", "", "", ""),
    ("bind-roles", "bind", "rbac.authorization.k8s.io", "roles", "", "", ""),
    ("bind-clusterroles", "bind", "rbac.authorization.k8s.io", "clusterroles", "", "", ""),
    ("impersonate-users", "impersonate", "", "users", "", "", ""),
    ("impersonate-groups", "impersonate", "", "groups", "", "", ""),
    ("impersonate-serviceaccounts", "impersonate", "", "serviceaccounts", "", "", ""),
    ("impersonate-uids", "impersonate", "authentication.k8s.io", "uids", "", "", ""),
    ("create-serviceaccount-tokens", "create", "", "serviceaccounts", "token", "", ""),
    ("get-secrets", "get", "", "secrets", "", "", ""),
    ("list-secrets", "list", "", "secrets", "", "", ""),
    ("approve-signers", "approve", "certificates.k8s.io", "signers", "", "", ""),
    ("approve-csrs", "update", "certificates.k8s.io", "certificatesigningrequests", "approval", "", ""),
    ("create-pods-kube-system", "create", "", "pods", "", "kube-system", ""),
    ("exec-pods-kube-system", "create", "", "pods", "exec", "kube-system", ""),
    ("nodes-proxy-get", "get", "", "nodes", "proxy", "", ""),
    ("nodes-proxy-create", "create", "", "nodes", "proxy", "", ""),
    ("update-validating-webhooks", "update", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "", "", ""),
    ("patch-validating-webhooks", "patch", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "", "", ""),
    ("update-mutating-webhooks", "update", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "", ""),
    ("patch-mutating-webhooks", "patch", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "", ""),
    ("impersonate-system-masters", "impersonate", "", "groups", "", "", "system:masters"),
    ("bind-cluster-admin", "bind", "rbac.authorization.k8s.io", "clusterroles", "", "", "cluster-admin"),
    ("escalate-cluster-admin", "escalate", "rbac.authorization.k8s.io", "clusterroles", "", "", "cluster-admin"),
    ("bind-admin", "bind", "rbac.authorization.k8s.io", "clusterroles", "", "", "admin"),
    ("approve-kubernetes-signers", "approve", "certificates.k8s.io", "signers", "", "", "kubernetes.io/*"),
    ("approve-kube-apiserver-client", "approve", "certificates.k8s.io", "signers", "", "", "kubernetes.io/kube-apiserver-client"),
    ("approve-kubelet-client", "approve", "certificates.k8s.io", "signers", "", "", "kubernetes.io/kube-apiserver-client-kubelet"),
    ("approve-kubelet-serving", "approve", "certificates.k8s.io", "signers", "", "", "kubernetes.io/kubelet-serving"),
    ("create-serviceaccount-tokens-kube-system", "create", "", "serviceaccounts", "token", "kube-system", ""),
    ("get-secrets-kube-system", "get", "", "secrets", "", "kube-system", ""),
    ("list-secrets-kube-system", "list", "", "secrets", "", "kube-system", ""),
    ("watch-secrets-kube-system", "watch", "", "secrets", "", "kube-system", ""),
    ("watch-secrets", "watch", "", "secrets", "", "", ""),
    ("update-daemonsets-kube-system", "update", "apps", "daemonsets", "", "kube-system", ""),
    ("patch-daemonsets-kube-system", "patch", "apps", "daemonsets", "", "kube-system", ""),
    ("update-deployments-kube-system", "update", "apps", "deployments", "", "kube-system", ""),
    ("patch-deployments-kube-system", "patch", "apps", "deployments", "", "kube-system", ""),
    ("create-validating-webhooks", "create", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "", "", ""),
    ("create-mutating-webhooks", "create", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "", ""),
    ("create-apiservices", "create", "apiregistration.k8s.io", "apiservices", "", "", ""),
    ("update-apiservices", "update", "apiregistration.k8s.io", "apiservices", "", "", ""),
    ("patch-apiservices", "patch", "apiregistration.k8s.io", "apiservices", "", "", ""),
];

/// The escalation checks every policy starts with; `privilegeCeiling.checks` adds more.
pub fn default_privilege_checks() -> Vec<PrivilegeCheck> {
    DEFAULT_CHECKS
        .iter()
        .map(
            |(name, verb, group, resource, subresource, namespace, object)| {
                PrivilegeCheck::new(name, verb, group, resource, subresource, namespace)
                    .named(object)
            },
        )
        .collect()
}

/// Who a certificate would log in as: what the SubjectAccessReviews ask about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertificateIdentity {
    pub user: String,
    /// The O values, then `system:authenticated`.
    pub groups: Vec<String>,
    pub uid: Option<String>,
}

impl std::fmt::Display for CertificateIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "user {:?} in groups [{}]",
            self.user,
            self.groups.join(", ")
        )?;
        if let Some(uid) = &self.uid {
            write!(f, " with UID {uid:?}")?;
        }
        Ok(())
    }
}

/// The identity a certificate for `request` carries; None when it has no CN (kube-apiserver
/// authenticates no one by such a certificate).
pub fn identity_of(request: &CertificateRequest) -> Option<CertificateIdentity> {
    let user = request.common_name.clone().filter(|cn| !cn.is_empty())?;
    let mut groups = request.organizations.clone();
    groups.push(AUTHENTICATED_GROUP.to_owned());
    Some(CertificateIdentity {
        user,
        groups,
        uid: request.uid.clone(),
    })
}

/// The cluster's answers to the checks, for one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrivilegeReview {
    /// Each check asked, by name, and whether the identity may do it.
    Answered(Vec<(String, bool)>),
    /// The reviews could not be had (timeout, refused, API server down): why.
    Unavailable(String),
}

/// What the ceiling says of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ceiling {
    /// Under the ceiling: why (for the trace).
    Clear(String),
    /// Over it: the check that matched, and the whole message.
    Exceeded { check: String, message: String },
    /// Not known: no review (offline) or none to be had. Never approve or sign blind.
    Unknown { unavailable: bool, message: String },
}

/// Apply the ceiling to `identity`, with the checks the policy asks, the ones an allow-list rule
/// accepts for it, and the cluster's answers.
pub fn ceiling(
    identity: Option<&CertificateIdentity>,
    checks: &[PrivilegeCheck],
    accepted: &[&str],
    review: Option<&PrivilegeReview>,
) -> Ceiling {
    let Some(identity) = identity else {
        return Ceiling::Clear("no CN: kube-apiserver authenticates no one by it".into());
    };
    let answers = match review {
        None => {
            return Ceiling::Unknown {
                unavailable: false,
                message: format!(
                    "what {identity} may do was not reviewed (offline: say what the cluster \
                     would answer with --privilege-matches none, or the names of the checks that \
                     would match)"
                ),
            };
        }
        Some(PrivilegeReview::Unavailable(why)) => {
            return Ceiling::Unknown {
                unavailable: true,
                message: format!(
                    "the SubjectAccessReviews for {identity} could not be had ({why}); \
                     csr-warden neither approves nor signs a certificate it could not check, and \
                     tries again"
                ),
            };
        }
        Some(PrivilegeReview::Answered(answers)) => answers,
    };
    for (at, check) in checks.iter().enumerate() {
        // Answers come in the checks' order; look further only when they do not.
        let allowed = match answers.get(at) {
            Some((name, allowed)) if *name == check.name => Some(*allowed),
            _ => answers
                .iter()
                .find(|(name, _)| *name == check.name)
                .map(|(_, allowed)| *allowed),
        };
        match allowed {
            Some(false) => {}
            Some(true) if accepted.contains(&check.name.as_str()) => {}
            Some(true) => {
                return Ceiling::Exceeded {
                    check: check.name.clone(),
                    message: format!(
                        "the certificate's identity, {identity}, may {check} (privilege check \
                         {}); a client certificate cannot be revoked, so csr-warden never \
                         approves or signs one that reaches this far (an allowList rule's \
                         acceptChecks can accept a named check)",
                        check.name
                    ),
                };
            }
            None => {
                return Ceiling::Unknown {
                    unavailable: true,
                    message: format!(
                        "privilege check {} was not answered for {identity}; tries again",
                        check.name
                    ),
                };
            }
        }
    }
    // Each review and its answer, for `check` and the debug log, written into one string.
    let mut detail = format!(
        "{identity} may do none of the {} privilege checks it is not accepted for:",
        checks.len()
    );
    for (name, allowed) in answers {
        detail.push(' ');
        detail.push_str(name);
        detail.push_str(if *allowed {
            " yes (acceptChecks),"
        } else {
            " no,"
        });
    }
    detail.pop();
    Ceiling::Clear(detail)
}
