//! PURE: who asked + what they asked for + the policy + cluster facts → a decision with reasons.
//!
//! This is the one file to read to learn why a CSR was approved, denied or left pending: the
//! model, the rule order and [`decide`]; each rule family beside it (`kubelet.rs` for rules 4
//! and 5, `allow_list.rs` for rule 6, [`ceiling`] for reserved identities and rule 8, [`pods`]
//! for pod certificates, [`file`] for the policy file). No I/O, no clock: the controller and
//! `csr-warden check` both call [`decide`] and get the same answer.
//!
//! Rules run in this order and the first that decides wins:
//! 1. signerName not ours, or ours only to sign (`role: sign`) → Leave (we do not touch it)
//! 2. malformed request, bad signature, weak key, bad usages/expiration → Deny
//! 3. any subject O in `forbiddenGroups` (system:masters always) → Deny `ForbiddenGroup`; a
//!    subject UID that no allow-list rule for its CN names → Deny `DisallowedUID`; on every
//!    signer but the kubelet ones, a reserved identity (a node's, a ServiceAccount's, the
//!    control plane's own users, `reservedUsers`) → Deny `ReservedIdentity` ([`ceiling`])
//! 4. kubelet client certificates → Approve after a SubjectAccessReview, Deny on a wrong shape
//! 5. kubelet serving certificates → Approve when the node itself asks and every SAN is its own
//!    Node's address, of no other Node, not the API server's, not in-cluster or localhost, and
//!    within `kubelet.servingAddresses`; else Deny (or Leave while the facts are not known)
//! 6. the allow-list → Approve, or Deny when a rule names the CN but something else is wrong
//! 7. anything else → Leave for a human (or Deny `NotAllowListed` with `unmatched: deny`)
//! 8. the privilege ceiling, over every approval and leave of rules 6 and 7: when the cluster
//!    says the certificate's identity may do an escalation check (cluster-admin, bind,
//!    impersonate, read Secrets, ...) → Deny `PrivilegedIdentity`; an approval whose review
//!    could not be had → Leave `PrivilegeReviewUnavailable` ([`ceiling`])

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::x509::inspect::{CertificateRequest, InspectError};

mod allow_list;
pub mod ceiling;
pub mod file;
mod kubelet;
pub mod pods;
pub mod reason;

pub use crate::x509::ca::CaPaths;
pub use crate::x509::validity::SigningLimits;
use allow_list::*;
use kubelet::*;
pub use kubelet::{IpRange, ServingAddresses, normalize_dns};
pub use reason::Reason;

pub use ceiling::{
    Ceiling, CertificateIdentity, DEFAULT_RESERVED_USERS, PrivilegeCheck, PrivilegeReview,
    default_privilege_checks, identity_of,
};

pub const SIGNER_KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
pub const SIGNER_KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const SIGNER_KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// Signers under this prefix are Kubernetes' own: signing them with the cluster CA is the point.
pub const SIGNER_PREFIX_KUBERNETES: &str = "kubernetes.io/";
/// The group that bypasses RBAC entirely. Always forbidden, whatever the policy file says.
pub const SYSTEM_MASTERS: &str = "system:masters";
pub const NODE_GROUP: &str = "system:nodes";
pub const NODE_USER_PREFIX: &str = "system:node:";
/// The API server refuses shorter lifetimes at create time; a fake or old server may not.
pub const MIN_EXPIRATION_SECONDS: i32 = 600;

pub const USAGE_CLIENT_AUTH: &str = "client auth";
pub const USAGE_SERVER_AUTH: &str = "server auth";
pub const USAGE_DIGITAL_SIGNATURE: &str = "digital signature";
pub const USAGE_KEY_ENCIPHERMENT: &str = "key encipherment";

/// Every value `certificates.k8s.io/v1` accepts in spec.usages.
pub const KNOWN_USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// Usages a client certificate may carry (kube-apiserver-client, the kubelet client signer,
/// custom signers). The signer in `issue` enforces the same sets.
pub const CLIENT_USAGES: &[&str] = &[
    USAGE_CLIENT_AUTH,
    USAGE_DIGITAL_SIGNATURE,
    USAGE_KEY_ENCIPHERMENT,
];
/// Usages a kubelet serving certificate may carry.
pub const SERVING_USAGES: &[&str] = &[
    USAGE_SERVER_AUTH,
    USAGE_DIGITAL_SIGNATURE,
    USAGE_KEY_ENCIPHERMENT,
];

/// What csr-warden does for one signerName.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignerRole {
    /// Approve, deny or leave; another signer (kube-controller-manager) issues.
    Approve,
    /// Issue what a human or another approver approved; make no decisions.
    Sign,
    /// Both (the default).
    ApproveAndSign,
}

impl SignerRole {
    pub fn decides(self) -> bool {
        matches!(self, SignerRole::Approve | SignerRole::ApproveAndSign)
    }

    pub fn signs(self) -> bool {
        matches!(self, SignerRole::Sign | SignerRole::ApproveAndSign)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SignerRole::Approve => "approve",
            SignerRole::Sign => "sign",
            SignerRole::ApproveAndSign => "approveAndSign",
        }
    }
}

/// One signerName of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerConfig {
    pub role: SignerRole,
    /// Its own CA; None signs with the default CA (--ca-cert/--ca-key). Unused unless it signs.
    pub ca: Option<CaPaths>,
    /// A custom signer may sign with the cluster's own CA only when this says so.
    pub allow_cluster_ca: bool,
    /// Publish its CA as a ClusterTrustBundle (only for a signer that signs).
    pub trust_bundle: bool,
    /// Line of the entry in the policy file, for errors found after parsing.
    pub line: u64,
}

/// The validated policy. Built from the policy file by `config`; see README "Policy reference".
#[derive(Debug, Clone)]
pub struct Policy {
    /// Every signer of ours, whatever its role.
    pub signer_names: BTreeSet<String>,
    /// What we do for each of them.
    pub signers: BTreeMap<String, SignerConfig>,
    /// Always contains system:masters.
    pub forbidden_groups: Vec<String>,
    pub kubelet_client: bool,
    pub kubelet_serving: bool,
    /// `kubelet.servingAddresses`: where serving SANs may point; empty restricts nothing.
    pub serving_addresses: ServingAddresses,
    /// The cluster's DNS domain (`clusterDomain`, default cluster.local): no node may hold a
    /// name under it.
    pub cluster_domain: String,
    pub allow_list: Vec<AllowRule>,
    pub unmatched: Unmatched,
    pub signing: SigningLimits,
    /// CNs refused on every signer but the kubelet ones: the defaults and `reservedUsers`.
    pub reserved_users: Vec<String>,
    /// What the privilege ceiling asks the cluster: the defaults and `privilegeCeiling.checks`.
    pub privilege_checks: Vec<PrivilegeCheck>,
    /// Pod-certificate signers (PodCertificateRequests), by signerName; never CSR signers.
    pub pod_signers: BTreeMap<String, crate::policy::pods::PodSigner>,
}

impl Policy {
    /// Our role for `signer`; None for a foreign signer.
    pub fn role(&self, signer: &str) -> Option<SignerRole> {
        self.signers.get(signer).map(|s| s.role)
    }

    /// We approve, deny or leave `signer`'s pending CSRs.
    pub fn decides(&self, signer: &str) -> bool {
        self.role(signer).is_some_and(SignerRole::decides)
    }

    /// We issue `signer`'s approved CSRs.
    pub fn signs(&self, signer: &str) -> bool {
        self.role(signer).is_some_and(SignerRole::signs)
    }

    /// The CA files `signer` signs with: its own, else the default.
    pub fn ca_for<'a>(&'a self, signer: &str, default: &'a CaPaths) -> Option<&'a CaPaths> {
        let config = self.signers.get(signer)?;
        config
            .role
            .signs()
            .then(|| config.ca.as_ref().unwrap_or(default))
    }

    /// Every CA some signing signer needs (CSR signers and pod-certificate signers), each once.
    pub fn cas_needed<'a>(&'a self, default: &'a CaPaths) -> BTreeSet<&'a CaPaths> {
        self.signers
            .keys()
            .filter_map(|signer| self.ca_for(signer, default))
            .chain(self.pod_signers.values().map(|pod| &pod.ca))
            .collect()
    }

    /// Every signer csr-warden signs for with the CA files it uses: CSR signers that sign, then
    /// pod-certificate signers. What the CA guard, the expiry metrics and readiness go over.
    pub fn signing_signers<'a>(
        &'a self,
        default: &'a CaPaths,
    ) -> impl Iterator<Item = (&'a str, &'a CaPaths)> + 'a {
        self.signers
            .keys()
            .filter_map(move |signer| Some((signer.as_str(), self.ca_for(signer, default)?)))
            .chain(
                self.pod_signers
                    .iter()
                    .map(|(name, pod)| (name.as_str(), &pod.ca)),
            )
    }

    /// The signers whose CA is to be published as a ClusterTrustBundle, with their CA files.
    pub fn trust_bundle_signers<'a>(
        &'a self,
        default: &'a CaPaths,
    ) -> impl Iterator<Item = (&'a str, &'a CaPaths)> + 'a {
        self.signing_signers(default).filter(|(name, _)| {
            self.signers.get(*name).is_some_and(|s| s.trust_bundle)
                || self.pod_signers.get(*name).is_some_and(|p| p.trust_bundle)
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    Leave,
    Deny,
}

/// One allow-list entry: who may hold a certificate for which subject.
#[derive(Debug, Clone)]
pub struct AllowRule {
    pub common_name: CommonNameMatch,
    /// The O values a certificate for this subject may carry.
    pub groups: Vec<String>,
    /// The subject UIDs this CN may carry (kube-apiserver reads the UID attribute as the user's
    /// UID since 1.33); empty: none.
    pub uids: Vec<String>,
    /// Privilege checks this identity may pass and still be approved and signed (by name).
    pub accept_checks: Vec<String>,
    /// Who may ask besides the subject itself.
    pub requester_users: Vec<String>,
    pub requester_groups: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum CommonNameMatch {
    Exact(String),
    /// Anchored: the whole CN must match.
    Pattern(regex::Regex),
}

impl CommonNameMatch {
    fn matches(&self, common_name: &str) -> bool {
        match self {
            CommonNameMatch::Exact(name) => name == common_name,
            CommonNameMatch::Pattern(pattern) => pattern.is_match(common_name),
        }
    }
}

impl std::fmt::Display for CommonNameMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommonNameMatch::Exact(name) => write!(f, "commonName {name:?}"),
            CommonNameMatch::Pattern(pattern) => {
                write!(f, "commonNamePattern {:?}", pattern.as_str())
            }
        }
    }
}

/// Who created the CSR, as the API server recorded it. Clients cannot forge these fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requester {
    pub username: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
}

/// Everything about one CSR that the policy looks at.
#[derive(Debug, Clone)]
pub struct CsrView {
    pub name: String,
    pub signer_name: String,
    pub usages: Vec<String>,
    pub expiration_seconds: Option<i32>,
    pub requester: Requester,
    /// `spec.request`, decoded by [`crate::x509::inspect::inspect`], or why it could not be.
    pub request: Result<CertificateRequest, InspectError>,
}

impl CsrView {
    /// The requested subject as logs and `check` print it, or why it cannot be read.
    pub fn subject(&self) -> String {
        self.request
            .as_ref()
            .map(|r| r.subject_string())
            .unwrap_or_else(|e| format!("<unreadable: {e}>"))
    }
}

/// What the cluster knows that the CSR cannot tell us. `None` means "not looked up" (offline, or
/// not needed); the policy treats it as "not allowed" and leaves the request pending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    /// SubjectAccessReview: may the requester `create certificatesigningrequests/nodeclient`?
    pub node_client_allowed: Option<bool>,
    /// SubjectAccessReview: may the requester `create certificatesigningrequests/selfnodeclient`?
    pub self_node_client_allowed: Option<bool>,
    /// The Node named by a kubelet serving request.
    pub node: Option<NodeLookup>,
    /// For a kubelet serving request: every Node that lists one of its SANs among its
    /// addresses (the requesting Node's own entries may be there too; they are ignored).
    pub other_nodes: Option<Vec<AddressClaim>>,
    /// The API server's in-cluster addresses: the ClusterIPs of Service default/kubernetes and
    /// the addresses of its EndpointSlices.
    pub api_server: Option<Vec<IpAddr>>,
    /// The privilege ceiling's SubjectAccessReviews for the certificate's identity.
    pub privilege: Option<PrivilegeReview>,
}

/// One Node listing one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressClaim {
    pub node: String,
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeLookup {
    Missing,
    /// Every entry of the Node's status.addresses, whatever its type.
    Addresses(Vec<String>),
}

/// Which facts [`decide`] will want for this CSR, so the controller asks only for those.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FactsNeeded {
    pub node_client_review: bool,
    pub self_node_client_review: bool,
    pub node_name: Option<String>,
    /// The certificate identity whose privileges the ceiling must review.
    pub privilege: Option<CertificateIdentity>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Approve {
        reason: Reason,
        message: String,
    },
    Deny {
        reason: Reason,
        message: String,
    },
    /// Do nothing: leave the CSR for a human or for another signer.
    Leave {
        reason: Reason,
        message: String,
    },
}

impl Decision {
    pub fn reason(&self) -> Reason {
        match self {
            Decision::Approve { reason, .. }
            | Decision::Deny { reason, .. }
            | Decision::Leave { reason, .. } => *reason,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Decision::Approve { message, .. }
            | Decision::Deny { message, .. }
            | Decision::Leave { message, .. } => message,
        }
    }

    /// "approve", "deny" or "leave": the `decision` field of log lines and metrics.
    pub fn verb(&self) -> &'static str {
        match self {
            Decision::Approve { .. } => "approve",
            Decision::Deny { .. } => "deny",
            Decision::Leave { .. } => "leave",
        }
    }
}

/// One rule the policy looked at, for `csr-warden check` and debug logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleStep {
    pub rule: &'static str,
    pub outcome: StepOutcome,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// The rule passed (or did not apply) and evaluation went on.
    Passed,
    /// The rule did not apply to this CSR.
    NotApplicable,
    /// The rule made the decision.
    Decided,
}

impl StepOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            StepOutcome::Passed => "passed",
            StepOutcome::NotApplicable => "not applicable",
            StepOutcome::Decided => "decided",
        }
    }
}

/// The decision and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    pub steps: Vec<RuleStep>,
}

struct Trace {
    steps: Vec<RuleStep>,
}

impl Trace {
    fn pass(&mut self, rule: &'static str, detail: impl Into<String>) {
        self.steps.push(RuleStep {
            rule,
            outcome: StepOutcome::Passed,
            detail: detail.into(),
        });
    }

    fn skip(&mut self, rule: &'static str, detail: impl Into<String>) {
        self.steps.push(RuleStep {
            rule,
            outcome: StepOutcome::NotApplicable,
            detail: detail.into(),
        });
    }

    fn decide(mut self, rule: &'static str, decision: Decision) -> Verdict {
        self.steps.push(RuleStep {
            rule,
            outcome: StepOutcome::Decided,
            detail: format!("{}: {}", decision.reason(), decision.message()),
        });
        Verdict {
            decision,
            steps: self.steps,
        }
    }
}

const RULE_SIGNER: &str = "signerName";
const RULE_WELL_FORMED: &str = "well-formed request";
const RULE_FORBIDDEN: &str = "forbiddenGroups";
const RULE_UID: &str = "subject UID";
const RULE_RESERVED: &str = "reserved identities";
const RULE_CEILING: &str = "privilege ceiling";
const RULE_KUBELET_CLIENT: &str = "kubelet client";
const RULE_KUBELET_SERVING: &str = "kubelet serving";
const RULE_SERVING_REQUESTER: &str = "serving: requester is the node";
const RULE_SERVING_SHAPE: &str = "serving: usages and SAN kinds";
const RULE_SERVING_RESERVED: &str = "serving: reserved names and addresses";
const RULE_SERVING_ADDRESSES: &str = "serving: kubelet.servingAddresses";
const RULE_SERVING_API_SERVER: &str = "serving: API server addresses";
const RULE_SERVING_NODE: &str = "serving: the Node's addresses";
const RULE_SERVING_OTHER_NODES: &str = "serving: other Nodes' addresses";
const RULE_ALLOW_LIST: &str = "allowList";
const RULE_UNMATCHED: &str = "unmatched";

fn approve(reason: Reason, message: impl Into<String>) -> Decision {
    Decision::Approve {
        reason,
        message: message.into(),
    }
}

fn deny(reason: Reason, message: impl Into<String>) -> Decision {
    Decision::Deny {
        reason,
        message: message.into(),
    }
}

fn leave(reason: Reason, message: impl Into<String>) -> Decision {
    Decision::Leave {
        reason,
        message: message.into(),
    }
}

/// Which cluster facts `decide` will need for this CSR.
pub fn facts_needed(csr: &CsrView, policy: &Policy) -> FactsNeeded {
    let mut needed = FactsNeeded::default();
    if !policy.decides(&csr.signer_name) {
        return needed;
    }
    let Ok(request) = &csr.request else {
        return needed;
    };
    if signing_refusal(csr, policy).is_none() {
        needed.privilege = ceiling_identity(csr);
    }
    let Some(node_name) = request
        .common_name
        .as_deref()
        .and_then(|cn| cn.strip_prefix(NODE_USER_PREFIX))
    else {
        return needed;
    };
    if csr.signer_name == SIGNER_KUBELET_CLIENT && policy.kubelet_client {
        needed.node_client_review = true;
        needed.self_node_client_review =
            request.common_name.as_deref() == Some(&csr.requester.username);
    }
    if csr.signer_name == SIGNER_KUBELET_SERVING && policy.kubelet_serving && !node_name.is_empty()
    {
        needed.node_name = Some(node_name.to_owned());
    }
    needed
}

/// Decide what to do with one CSR. See the module documentation for the rule order.
pub fn decide(csr: &CsrView, facts: &ClusterFacts, policy: &Policy) -> Verdict {
    let mut trace = Trace { steps: Vec::new() };

    // 1. Only our signers. Everything else belongs to someone else and is never touched.
    if !policy.signer_names.contains(&csr.signer_name) {
        return trace.decide(
            RULE_SIGNER,
            leave(
                Reason::NotOurSigner,
                format!(
                    "signerName {:?} is not one of ours ({}); another signer owns this request",
                    csr.signer_name,
                    join(&policy.signer_names)
                ),
            ),
        );
    }
    if !policy.decides(&csr.signer_name) {
        return trace.decide(
            RULE_SIGNER,
            leave(
                Reason::SignOnlySigner,
                format!(
                    "csr-warden only signs {} (role: sign): it issues the certificate once a human or another approver approves, and makes no decision",
                    csr.signer_name
                ),
            ),
        );
    }
    trace.pass(RULE_SIGNER, format!("{} is one of ours", csr.signer_name));

    // 2. A request we cannot read, or that asks for nonsense, is refused outright.
    let request = match well_formed(csr) {
        Ok(request) => request,
        Err((reason, message)) => return trace.decide(RULE_WELL_FORMED, deny(reason, message)),
    };
    trace.pass(
        RULE_WELL_FORMED,
        format!(
            "{} key, signature verified, subject {:?}",
            request.key,
            request.subject_string()
        ),
    );

    // 3. Forbidden groups, whoever asks and whatever the signer: a certificate with
    //    O=system:masters is cluster-admin that no RBAC rule can take away.
    if let Some(message) = forbidden_group(request, &policy.forbidden_groups) {
        return trace.decide(RULE_FORBIDDEN, deny(Reason::ForbiddenGroup, message));
    }
    trace.pass(RULE_FORBIDDEN, "no forbidden group requested");
    match (&request.uid, uid_problem(csr, request, policy)) {
        (_, Some(message)) => return trace.decide(RULE_UID, deny(Reason::DisallowedUid, message)),
        (Some(uid), None) => trace.pass(
            RULE_UID,
            format!("UID {uid:?} is named by an allowList rule for this CN"),
        ),
        // No UID: nothing to show (most requests).
        (None, None) => {}
    }
    if !is_kubelet_signer(&csr.signer_name) {
        if let Some(message) = ceiling::reserved_identity(request, &policy.reserved_users) {
            return trace.decide(RULE_RESERVED, deny(Reason::ReservedIdentity, message));
        }
        trace.pass(RULE_RESERVED, "no reserved user or group");
    }

    // 4 and 5. The kubelet signers have fixed shapes.
    if csr.signer_name == SIGNER_KUBELET_CLIENT {
        if policy.kubelet_client {
            return trace.decide(RULE_KUBELET_CLIENT, kubelet_client(csr, request, facts));
        }
        trace.skip(
            RULE_KUBELET_CLIENT,
            "disabled by policy (kubelet.client: false)",
        );
        return unmatched(trace, csr, request, policy);
    }
    trace.skip(RULE_KUBELET_CLIENT, "not the kubelet client signer");
    if csr.signer_name == SIGNER_KUBELET_SERVING {
        if policy.kubelet_serving {
            let decision = kubelet_serving(csr, request, facts, policy, &mut trace);
            return trace.decide(RULE_KUBELET_SERVING, decision);
        }
        trace.skip(
            RULE_KUBELET_SERVING,
            "disabled by policy (kubelet.serving: false)",
        );
        return unmatched(trace, csr, request, policy);
    }
    trace.skip(RULE_KUBELET_SERVING, "not the kubelet serving signer");

    // 6 and 7. The allow-list, for kube-apiserver-client and custom signers; else a human.
    let (rule, decision) = match allow_list(csr, request, policy, &mut trace) {
        Some(decision) => (RULE_ALLOW_LIST, decision),
        None => (RULE_UNMATCHED, unmatched_decision(csr, request, policy)),
    };
    if let Decision::Deny { .. } = decision {
        return trace.decide(rule, decision);
    }
    // 8. The privilege ceiling, over an approval and over a leave alike: a human must not be
    //    handed cluster-admin by another name to approve, nor another signer (approve-only) a
    //    request csr-warden let through.
    match privilege_ceiling(csr, policy, facts.privilege.as_ref()) {
        Ceiling::Clear(detail) => trace.pass(RULE_CEILING, detail),
        Ceiling::Exceeded { message, .. } => {
            return trace.decide(RULE_CEILING, deny(Reason::PrivilegedIdentity, message));
        }
        Ceiling::Unknown { message, .. } if matches!(decision, Decision::Approve { .. }) => {
            return trace.decide(
                RULE_CEILING,
                leave(Reason::PrivilegeReviewUnavailable, message),
            );
        }
        Ceiling::Unknown { message, .. } => trace.skip(RULE_CEILING, message),
    }
    trace.decide(rule, decision)
}

fn is_kubelet_signer(signer: &str) -> bool {
    signer == SIGNER_KUBELET_CLIENT || signer == SIGNER_KUBELET_SERVING
}

/// The privilege checks the allow-list accepts for this request: those of the rule that
/// approves it (the first whose every condition holds, requester included), none otherwise. A
/// rule's acceptChecks never lend themselves to a request another rule approves.
fn accepted_checks<'a>(
    csr: &CsrView,
    request: &CertificateRequest,
    policy: &'a Policy,
) -> Vec<&'a str> {
    let common_name = request.common_name.as_deref().unwrap_or_default();
    policy
        .allow_list
        .iter()
        .find(|rule| {
            rule.common_name.matches(common_name)
                && allow_rule_problem(csr, request, rule).is_none()
        })
        .map(|rule| rule.accept_checks.iter().map(String::as_str).collect())
        .unwrap_or_default()
}

/// The identity whose privileges the ceiling reviews, before approving and again before
/// signing: every signer's but the kubelet signers', whose shape rules allow only a node's own
/// identity.
pub fn ceiling_identity(csr: &CsrView) -> Option<CertificateIdentity> {
    if is_kubelet_signer(&csr.signer_name) {
        return None;
    }
    identity_of(csr.request.as_ref().ok()?)
}

/// The privilege ceiling (rule 8), one function for the approver and the signer: a human's
/// `kubectl certificate approve` does not make `O=kubeadm:cluster-admins` safe.
pub fn privilege_ceiling(
    csr: &CsrView,
    policy: &Policy,
    review: Option<&PrivilegeReview>,
) -> Ceiling {
    let (false, Ok(request)) = (is_kubelet_signer(&csr.signer_name), &csr.request) else {
        return Ceiling::Clear("not a certificate the ceiling applies to".into());
    };
    ceiling::ceiling(
        identity_of(request).as_ref(),
        &policy.privilege_checks,
        &accepted_checks(csr, request, policy),
        review,
    )
}

/// Why an approved CSR must still not be signed, whoever approved it: the same checks as rules
/// 2 and 3. A human's `kubectl certificate approve agent-smith` does not make system:masters safe.
pub fn signing_refusal(csr: &CsrView, policy: &Policy) -> Option<(Reason, String)> {
    let request = match well_formed(csr) {
        Ok(request) => request,
        Err(refusal) => return Some(refusal),
    };
    if let Some(message) = forbidden_group(request, &policy.forbidden_groups) {
        return Some((Reason::ForbiddenGroup, message));
    }
    if let Some(message) = uid_problem(csr, request, policy) {
        return Some((Reason::DisallowedUid, message));
    }
    if is_kubelet_signer(&csr.signer_name) {
        return None;
    }
    ceiling::reserved_identity(request, &policy.reserved_users)
        .map(|message| (Reason::ReservedIdentity, message))
}

/// A subject UID is an identity of its own: kube-apiserver's x509 authenticator reads it as the
/// user's UID (Kubernetes ≥ 1.33), and a UID can stand in RBAC-adjacent checks (impersonation
/// of uids, admission webhooks) for another user's. So it is refused on every signer unless an
/// allow-list rule for the request's CN names that very UID; the kubelet signers never carry one.
fn uid_problem(csr: &CsrView, request: &CertificateRequest, policy: &Policy) -> Option<String> {
    let uid = request.uid.as_deref()?;
    let common_name = request.common_name.as_deref().unwrap_or_default();
    let named = csr.signer_name != SIGNER_KUBELET_CLIENT
        && csr.signer_name != SIGNER_KUBELET_SERVING
        && policy.allow_list.iter().any(|rule| {
            rule.common_name.matches(common_name) && rule.uids.iter().any(|u| u == uid)
        });
    (!named).then(|| {
        format!(
            "the subject carries UID={uid:?}, which kube-apiserver reads as the user's UID; no \
             allowList rule for CN {common_name:?} names it (a rule's uids list does), so \
             csr-warden neither approves nor signs it"
        )
    })
}

fn well_formed(csr: &CsrView) -> Result<&CertificateRequest, (Reason, String)> {
    let request = match &csr.request {
        Ok(request) => request,
        Err(error) => {
            let reason = match error {
                InspectError::WeakKey { .. } => Reason::WeakKey,
                InspectError::UnsupportedKey(_) => Reason::UnsupportedKey,
                InspectError::MultiValuedRdn(_)
                | InspectError::UnsupportedString { .. }
                | InspectError::UnknownAttribute(_) => Reason::UnsupportedSubject,
                _ => Reason::InvalidRequest,
            };
            return Err((reason, error.to_string()));
        }
    };
    if let Some(problem) = spec_problem(csr) {
        return Err((Reason::InvalidRequest, problem));
    }
    Ok(request)
}

fn unmatched(
    trace: Trace,
    csr: &CsrView,
    request: &CertificateRequest,
    policy: &Policy,
) -> Verdict {
    trace.decide(RULE_UNMATCHED, unmatched_decision(csr, request, policy))
}

fn unmatched_decision(csr: &CsrView, request: &CertificateRequest, policy: &Policy) -> Decision {
    let who = format!(
        "no rule covers subject {:?} requested by {:?} for {}",
        request.subject_string(),
        csr.requester.username,
        csr.signer_name
    );
    match policy.unmatched {
        Unmatched::Leave => leave(
            Reason::NoMatchingRule,
            format!("{who}; left pending for a human to approve or deny"),
        ),
        Unmatched::Deny => deny(
            Reason::NotAllowListed,
            format!("{who} and the policy denies unmatched requests (unmatched: deny)"),
        ),
    }
}

/// Problems in the CSR object's own fields (the API server checks these too, but a fake or an
/// old server may not, and we must not sign nonsense).
fn spec_problem(csr: &CsrView) -> Option<String> {
    if let Some(seconds) = csr.expiration_seconds
        && seconds < MIN_EXPIRATION_SECONDS
    {
        return Some(format!(
            "spec.expirationSeconds is {seconds}; the minimum is {MIN_EXPIRATION_SECONDS}"
        ));
    }
    if csr.usages.is_empty() {
        return Some("spec.usages is empty".into());
    }
    let mut seen = BTreeSet::new();
    for usage in &csr.usages {
        if !KNOWN_USAGES.contains(&usage.as_str()) {
            return Some(format!("spec.usages has unknown usage {usage:?}"));
        }
        if !seen.insert(usage.as_str()) {
            return Some(format!("spec.usages lists {usage:?} twice"));
        }
    }
    None
}

/// Subjects we could not put into a certificate faithfully. The issuer writes one value per
/// attribute type, so a second O would be silently dropped: refuse instead of guessing.
/// Groups compare equal when they differ only in case, whitespace or invisible characters, so
/// "System:Masters " cannot slip past a deny list that says "system:masters".
pub fn normalize_group(group: &str) -> String {
    group
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control() && !is_invisible(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}'
    )
}

fn forbidden_group(request: &CertificateRequest, forbidden: &[String]) -> Option<String> {
    for organization in &request.organizations {
        let normalized = normalize_group(organization);
        let Some(group) = forbidden.iter().find(|g| normalize_group(g) == normalized) else {
            continue;
        };
        let lookalike = if organization == group {
            String::new()
        } else {
            format!(" (O={organization:?} differs from {group} only in case or whitespace)")
        };
        let consequence = if normalize_group(group) == SYSTEM_MASTERS {
            "membership of system:masters grants unrestricted cluster-admin access that bypasses \
             RBAC and cannot be revoked"
        } else {
            "the policy's forbiddenGroups lists it"
        };
        return Some(format!(
            "the request asks for group O={group}{lookalike}; {consequence}, so csr-warden never \
             approves it"
        ));
    }
    None
}

/// What each signer issues, whoever approved the request: the approver applies it (rules 4 to
/// 6) and so does the signer at signing time (`issue::issue`), because a human may approve
/// anything. One function, so the two can never drift apart. Kubelet signers take only
/// `CN=system:node:<name>, O=system:nodes`; kubelet-serving issues serving certificates with DNS
/// and IP SANs only; every other signer (kube-apiserver-client, the kubelet client signer and
/// custom signers) issues client certificates.
pub fn signer_shape_problem(
    signer: &str,
    usages: &[String],
    request: &CertificateRequest,
) -> Option<(Reason, String)> {
    let serving = signer == SIGNER_KUBELET_SERVING;
    if (serving || signer == SIGNER_KUBELET_CLIENT)
        && let Some(problem) = node_subject_problem(request)
    {
        return Some((Reason::SubjectMismatch, problem));
    }
    let (allowed, required) = if serving {
        (SERVING_USAGES, USAGE_SERVER_AUTH)
    } else {
        (CLIENT_USAGES, USAGE_CLIENT_AUTH)
    };
    if let Some(extra) = usages.iter().find(|u| !allowed.contains(&u.as_str())) {
        return Some((
            Reason::DisallowedUsages,
            format!(
                "usage {extra:?} is not allowed for {signer}; allowed: {}",
                allowed.join(", ")
            ),
        ));
    }
    if !usages.iter().any(|u| u == required) {
        return Some((
            Reason::DisallowedUsages,
            format!("usages must include {required:?}"),
        ));
    }
    if signer == SIGNER_KUBELET_CLIENT && request.has_sans() {
        return Some((
            Reason::DisallowedSANs,
            "kubelet client certificates carry no subject alternative names".into(),
        ));
    }
    if serving {
        if !request.email_addresses.is_empty() || !request.uris.is_empty() {
            return Some((
                Reason::DisallowedSANs,
                "kubelet serving certificates may not carry email or URI SANs".into(),
            ));
        }
        if request.dns_names.is_empty() && request.ip_addresses.is_empty() {
            return Some((
                Reason::DisallowedSANs,
                "kubelet serving certificates need at least one DNS or IP SAN".into(),
            ));
        }
    }
    None
}
