//! The policy file: parsed strictly, validated completely, turned into a [`Policy`].
//!
//! A policy that does not parse, names an unknown key or contradicts itself is rejected with every
//! problem and its line, so a bad ConfigMap stops start-up (or a reload) loudly instead of
//! approving the wrong thing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::policy::pods::{
    DEFAULT_MAX_EXPIRATION_SECONDS, MAX_MAX_EXPIRATION_SECONDS, MIN_LIFETIME_SECONDS, PodSigner,
    check_trust_domain,
};
use crate::policy::{
    AllowRule, CaPaths, CommonNameMatch, DEFAULT_RESERVED_USERS, IpRange, MIN_EXPIRATION_SECONDS,
    Policy, PrivilegeCheck, SIGNER_KUBE_APISERVER_CLIENT, SIGNER_KUBELET_CLIENT,
    SIGNER_KUBELET_SERVING, SIGNER_PREFIX_KUBERNETES, SYSTEM_MASTERS, ServingAddresses,
    SignerConfig, SignerRole, SigningLimits, Unmatched, default_privilege_checks, normalize_dns,
    normalize_group,
};

/// The largest policy file we read; a real one is a few KiB.
const MAX_POLICY_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "cannot read policy file {path}: {source}; check --policy and that the ConfigMap is mounted"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "policy file {path} is not valid YAML for csr-warden:\n{message}\nSee README \"Policy reference\" for the keys"
    )]
    Parse { path: PathBuf, message: String },
    #[error("policy file {path} has {} problem(s):\n{}\nFix them and check with `csr-warden policy validate {path}`",
        .problems.len(), .problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<PolicyProblem>,
    },
}

/// One semantic problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    pub line: u64,
    pub message: String,
}

impl std::fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyFile {
    /// Shorthand: each of these approveAndSign with the default CA.
    #[serde(default)]
    signer_names: Option<Spanned<Vec<Spanned<String>>>>,
    /// Per signer: its role and CA.
    #[serde(default)]
    signers: Option<Spanned<Vec<Spanned<SignerFile>>>>,
    #[serde(default)]
    forbidden_groups: Vec<Spanned<String>>,
    #[serde(default)]
    kubelet: KubeletFile,
    #[serde(default)]
    allow_list: Vec<Spanned<AllowRuleFile>>,
    #[serde(default)]
    unmatched: UnmatchedFile,
    #[serde(default)]
    signing: Option<Spanned<SigningFile>>,
    /// The cluster's DNS domain; no kubelet serving SAN may lie under it.
    #[serde(default)]
    cluster_domain: Option<Spanned<String>>,
    /// Pod-certificate signers (PodCertificateRequests).
    #[serde(default)]
    pod_certificates: Vec<Spanned<PodCertificatesFile>>,
    /// CNs refused on every signer but the kubelet ones, besides the defaults.
    #[serde(default)]
    reserved_users: Vec<Spanned<String>>,
    #[serde(default)]
    privilege_ceiling: PrivilegeCeilingFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrivilegeCeilingFile {
    /// Checks asked besides the defaults.
    #[serde(default)]
    checks: Vec<Spanned<PrivilegeCheckFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PrivilegeCheckFile {
    name: String,
    verb: String,
    #[serde(default)]
    group: String,
    resource: String,
    #[serde(default)]
    subresource: String,
    /// Absent: all namespaces (and cluster-scoped resources).
    #[serde(default)]
    namespace: String,
    /// Absent: every object; else the one object a review names.
    #[serde(default)]
    resource_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodCertificatesFile {
    signer_name: String,
    ca: CaFile,
    trust_domain: String,
    #[serde(default)]
    allow: Vec<PodAllowFile>,
    #[serde(default)]
    max_expiration_seconds: Option<i32>,
    #[serde(default)]
    trust_bundle: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodAllowFile {
    namespace: String,
    /// Absent: every service account in the namespace.
    #[serde(default)]
    service_accounts: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SignerFile {
    name: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    ca: Option<CaFile>,
    #[serde(default, rename = "allowClusterCA")]
    allow_cluster_ca: bool,
    /// Publish the signer's CA as a ClusterTrustBundle.
    #[serde(default)]
    trust_bundle: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaFile {
    cert: PathBuf,
    /// The private key file; or `pkcs11`, never both.
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    pkcs11: Option<Pkcs11File>,
}

/// `ca.pkcs11`: the CA key stays in a PKCS#11 token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Pkcs11File {
    module: PathBuf,
    uri: String,
    pin_file: PathBuf,
}

/// A `ca` entry as the policy holds it, its key a file or a token key (exactly one).
fn ca_paths(ca: CaFile, whose: &str, line: u64, problem: &mut impl FnMut(u64, String)) -> CaPaths {
    match (&ca.key, &ca.pkcs11) {
        (Some(_), Some(_)) => problem(
            line,
            format!(
                "{whose}: ca sets both key and pkcs11; keep key for a key file, or pkcs11 for a key in a token"
            ),
        ),
        (None, None) => problem(
            line,
            format!(
                "{whose}: ca has no key; add key: <tls.key path>, or pkcs11: {{module, uri, pinFile}} for a key in a token"
            ),
        ),
        _ => {}
    }
    if let Some(token) = &ca.pkcs11 {
        if let Err(error) = crate::x509::pkcs11::Pkcs11Uri::parse(&token.uri) {
            problem(line, format!("{whose}: ca.pkcs11.uri: {error}"));
        }
        if !token.module.is_absolute() || !token.pin_file.is_absolute() {
            problem(
                line,
                format!("{whose}: ca.pkcs11.module and pinFile must be absolute paths"),
            );
        }
    }
    CaPaths {
        cert: ca.cert,
        key: ca.key.unwrap_or_default(),
        pkcs11: ca.pkcs11.map(|token| crate::x509::pkcs11::TokenKeyConfig {
            module: token.module,
            uri: token.uri,
            pin_file: token.pin_file,
        }),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KubeletFile {
    #[serde(default = "yes")]
    client: bool,
    #[serde(default = "yes")]
    serving: bool,
    #[serde(default)]
    serving_addresses: Option<Spanned<ServingAddressesFile>>,
}

impl Default for KubeletFile {
    fn default() -> Self {
        KubeletFile {
            client: true,
            serving: true,
            serving_addresses: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServingAddressesFile {
    #[serde(default)]
    ip_ranges: Vec<Spanned<String>>,
    #[serde(default)]
    dns_names: Vec<Spanned<String>>,
}

/// The default of `clusterDomain`, as kubeadm and the kubelet have it.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AllowRuleFile {
    #[serde(default)]
    common_name: Option<String>,
    #[serde(default)]
    common_name_pattern: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    /// The subject UID values (OID 0.9.2342.19200300.100.1.1) this CN may carry; none by default.
    #[serde(default)]
    uids: Vec<String>,
    /// Privilege checks this identity may pass (by name); none by default.
    #[serde(default)]
    accept_checks: Vec<String>,
    #[serde(default)]
    requesters: RequestersFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestersFile {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum UnmatchedFile {
    #[default]
    Leave,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SigningFile {
    #[serde(default = "default_expiration")]
    default_expiration_seconds: u32,
    #[serde(default = "max_expiration")]
    max_expiration_seconds: u32,
}

fn default_expiration() -> u32 {
    86_400
}

fn max_expiration() -> u32 {
    30 * 86_400
}

/// The signers csr-warden handles when the policy does not say.
pub fn default_signer_names() -> Vec<String> {
    [
        SIGNER_KUBE_APISERVER_CLIENT,
        SIGNER_KUBELET_CLIENT,
        SIGNER_KUBELET_SERVING,
    ]
    .map(String::from)
    .to_vec()
}

/// Read and validate the policy file at `path`.
pub fn load_policy(path: &Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_policy(&text, path)
}

/// Parse and validate policy text; `path` only names the file in errors.
pub fn parse_policy(text: &str, path: &Path) -> Result<Policy, PolicyError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::Parse {
            path: path.to_owned(),
            message: format!(
                "the file is {} bytes; the limit is {MAX_POLICY_BYTES}",
                text.len()
            ),
        });
    }
    let file: PolicyFile = serde_saphyr::from_str(text).map_err(|e| PolicyError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    validate(file).map_err(|problems| PolicyError::Invalid {
        path: path.to_owned(),
        problems,
    })
}

fn validate(file: PolicyFile) -> Result<Policy, Vec<PolicyProblem>> {
    let mut problems = Vec::new();
    let mut problem = |line: u64, message: String| problems.push(PolicyProblem { line, message });

    let signers = signers(file.signer_names, file.signers, &mut problem);
    let signer_names: BTreeSet<String> = signers.keys().cloned().collect();
    let pod_signers = pod_signers(file.pod_certificates, &signer_names, &mut problem);

    // system:masters is forbidden even when the file leaves it out.
    let mut forbidden_groups = vec![SYSTEM_MASTERS.to_owned()];
    for group in file.forbidden_groups {
        if normalize_group(&group.value).is_empty() {
            problem(
                group.referenced.line(),
                "forbiddenGroups has an empty group".into(),
            );
        } else if !forbidden_groups
            .iter()
            .any(|g| normalize_group(g) == normalize_group(&group.value))
        {
            forbidden_groups.push(group.value);
        }
    }

    let mut allow_list = Vec::new();
    // (line, acceptChecks) of each rule: checked once every privilege check is known.
    let mut allow_list_lines = Vec::new();
    for rule in file.allow_list {
        let line = rule.referenced.line();
        let spec = rule.value;
        allow_list_lines.push((line, spec.accept_checks.clone()));
        let common_name = match (spec.common_name, spec.common_name_pattern) {
            (Some(name), None) if !name.is_empty() => Some(CommonNameMatch::Exact(name)),
            (None, Some(pattern)) => match regex::Regex::new(&format!("^(?:{pattern})$")) {
                Ok(regex) => Some(CommonNameMatch::Pattern(regex)),
                Err(e) => {
                    problem(
                        line,
                        format!("commonNamePattern {pattern:?} is not a valid regex: {e}"),
                    );
                    None
                }
            },
            (Some(_), Some(_)) => {
                problem(
                    line,
                    "an allowList rule takes commonName or commonNamePattern, not both".into(),
                );
                None
            }
            _ => {
                problem(
                    line,
                    "an allowList rule needs a non-empty commonName or commonNamePattern".into(),
                );
                None
            }
        };
        for group in &spec.groups {
            if forbidden_groups
                .iter()
                .any(|f| normalize_group(f) == normalize_group(group))
            {
                problem(
                    line,
                    format!(
                        "allowList groups include {group:?}, which is a forbidden group; remove it"
                    ),
                );
            }
        }
        if spec.uids.iter().any(String::is_empty) {
            problem(
                line,
                "allowList uids include an empty string; kube-apiserver refuses an empty UID"
                    .into(),
            );
        }
        if let Some(common_name) = common_name {
            allow_list.push(AllowRule {
                common_name,
                groups: spec.groups,
                uids: spec.uids,
                accept_checks: spec.accept_checks,
                requester_users: spec.requesters.users,
                requester_groups: spec.requesters.groups,
            });
        }
    }

    let signing = match file.signing {
        None => SigningLimits {
            default_expiration_seconds: default_expiration(),
            max_expiration_seconds: max_expiration(),
        },
        Some(signing) => {
            let line = signing.referenced.line();
            let limits = SigningLimits {
                default_expiration_seconds: signing.value.default_expiration_seconds,
                max_expiration_seconds: signing.value.max_expiration_seconds,
            };
            let floor = MIN_EXPIRATION_SECONDS.unsigned_abs();
            if limits.default_expiration_seconds < floor || limits.max_expiration_seconds < floor {
                problem(
                    line,
                    format!("signing expirations must be at least {floor} seconds"),
                );
            }
            if limits.default_expiration_seconds > limits.max_expiration_seconds {
                problem(
                    line,
                    "signing.defaultExpirationSeconds is larger than maxExpirationSeconds".into(),
                );
            }
            limits
        }
    };

    let mut serving_addresses = ServingAddresses::default();
    if let Some(spec) = file.kubelet.serving_addresses {
        for range in spec.value.ip_ranges {
            match range.value.parse::<IpRange>() {
                Ok(parsed) => serving_addresses.ip_ranges.push(parsed),
                Err(why) => problem(
                    range.referenced.line(),
                    format!("kubelet.servingAddresses.ipRanges: {why}"),
                ),
            }
        }
        for pattern in spec.value.dns_names {
            match regex::Regex::new(&format!("^(?:{})$", pattern.value)) {
                Ok(regex) => serving_addresses.dns_names.push(regex),
                Err(e) => problem(
                    pattern.referenced.line(),
                    format!(
                        "kubelet.servingAddresses.dnsNames {:?} is not a valid regex: {e}",
                        pattern.value
                    ),
                ),
            }
        }
    }
    // Kept normalised (as requests' names are compared), so each check is one comparison.
    let mut reserved_users: Vec<String> = DEFAULT_RESERVED_USERS
        .iter()
        .map(|u| normalize_group(u))
        .collect();
    for user in file.reserved_users {
        let normalized = normalize_group(&user.value);
        if normalized.is_empty() {
            problem(
                user.referenced.line(),
                "reservedUsers has an empty name".into(),
            );
        } else if !reserved_users.contains(&normalized) {
            reserved_users.push(normalized);
        }
    }
    let mut privilege_checks = default_privilege_checks();
    for check in file.privilege_ceiling.checks {
        let line = check.referenced.line();
        let check = check.value;
        if check.name.is_empty() || check.verb.is_empty() || check.resource.is_empty() {
            problem(
                line,
                "a privilegeCeiling check needs a name, a verb and a resource".into(),
            );
        } else if privilege_checks.iter().any(|c| c.name == check.name) {
            problem(
                line,
                format!(
                    "privilege check {:?} is defined twice (the defaults included)",
                    check.name
                ),
            );
        } else {
            privilege_checks.push(PrivilegeCheck {
                name: check.name,
                verb: check.verb,
                group: check.group,
                resource: check.resource,
                subresource: check.subresource,
                namespace: check.namespace,
                resource_name: check.resource_name,
            });
        }
    }
    for rule in &allow_list_lines {
        for name in &rule.1 {
            if !privilege_checks.iter().any(|c| c.name == *name) {
                problem(
                    rule.0,
                    format!(
                        "acceptChecks names {name:?}, which is no privilege check; known: {}",
                        privilege_checks
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
    }

    let cluster_domain = match file.cluster_domain {
        None => DEFAULT_CLUSTER_DOMAIN.to_owned(),
        Some(domain) => {
            let normalized = normalize_dns(&domain.value);
            let valid = !normalized.is_empty()
                && normalized.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !valid {
                problem(
                    domain.referenced.line(),
                    format!(
                        "clusterDomain {:?} is not a DNS domain (e.g. cluster.local)",
                        domain.value
                    ),
                );
            }
            normalized
        }
    };

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Policy {
        signer_names,
        signers,
        forbidden_groups,
        kubelet_client: file.kubelet.client,
        kubelet_serving: file.kubelet.serving,
        serving_addresses,
        cluster_domain,
        allow_list,
        unmatched: match file.unmatched {
            UnmatchedFile::Leave => Unmatched::Leave,
            UnmatchedFile::Deny => Unmatched::Deny,
        },
        signing,
        pod_signers,
        reserved_users,
        privilege_checks,
    })
}

/// The pod-certificate signers (`podCertificates:`), each with its own CA.
fn pod_signers(
    entries: Vec<Spanned<PodCertificatesFile>>,
    csr_signers: &BTreeSet<String>,
    problem: &mut impl FnMut(u64, String),
) -> BTreeMap<String, PodSigner> {
    let mut out = BTreeMap::new();
    for entry in entries {
        let line = entry.referenced.line();
        let entry = entry.value;
        let name = entry.signer_name;
        if let Err(why) = check_signer_name(&name) {
            problem(line, why);
        }
        if name.starts_with(SIGNER_PREFIX_KUBERNETES) {
            problem(
                line,
                format!(
                    "podCertificates signer {name:?}: kubernetes.io signers are the Kubernetes project's; use a signer name of your own domain"
                ),
            );
        }
        if csr_signers.contains(&name) {
            problem(
                line,
                format!(
                    "{name} is both a CSR signer and a pod-certificate signer; give each its own name (and CA)"
                ),
            );
        }
        if let Err(why) = check_trust_domain(&entry.trust_domain) {
            problem(line, format!("podCertificates signer {name}: {why}"));
        }
        if entry.allow.is_empty() {
            problem(
                line,
                format!(
                    "podCertificates signer {name} allows no namespace: every request would be denied; add allow entries"
                ),
            );
        }
        let max = entry
            .max_expiration_seconds
            .unwrap_or(DEFAULT_MAX_EXPIRATION_SECONDS);
        if !(MIN_LIFETIME_SECONDS..=i64::from(MAX_MAX_EXPIRATION_SECONDS)).contains(&i64::from(max))
        {
            problem(
                line,
                format!(
                    "podCertificates signer {name}: maxExpirationSeconds {max} is outside what the API accepts ({MIN_LIFETIME_SECONDS} to {MAX_MAX_EXPIRATION_SECONDS})"
                ),
            );
        }
        let mut allow: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
        for rule in entry.allow {
            let accounts = rule.service_accounts.map(|a| a.into_iter().collect());
            if let Some(accounts) = &accounts
                && BTreeSet::is_empty(accounts)
            {
                problem(
                    line,
                    format!(
                        "podCertificates signer {name}: namespace {} lists no service accounts; leave serviceAccounts out to allow every one",
                        rule.namespace
                    ),
                );
            }
            if allow.insert(rule.namespace.clone(), accounts).is_some() {
                problem(
                    line,
                    format!(
                        "podCertificates signer {name}: namespace {} is allowed twice; keep one entry",
                        rule.namespace
                    ),
                );
            }
        }
        let signer = PodSigner {
            signer_name: name.clone(),
            ca: ca_paths(
                entry.ca,
                &format!("podCertificates signer {name}"),
                line,
                problem,
            ),
            trust_domain: entry.trust_domain,
            allow,
            max_expiration_seconds: max,
            trust_bundle: entry.trust_bundle,
            line,
        };
        if out.insert(name.clone(), signer).is_some() {
            problem(
                line,
                format!("podCertificates signer {name:?} is listed twice; keep one entry"),
            );
        }
    }
    out
}

/// The signers and their roles, from `signers`, or `signerNames` (each approveAndSign with the
/// default CA), or neither (the default three, approveAndSign).
fn signers(
    signer_names: Option<Spanned<Vec<Spanned<String>>>>,
    signers: Option<Spanned<Vec<Spanned<SignerFile>>>>,
    problem: &mut impl FnMut(u64, String),
) -> BTreeMap<String, SignerConfig> {
    let approve_and_sign = |line| SignerConfig {
        role: SignerRole::ApproveAndSign,
        ca: None,
        allow_cluster_ca: false,
        trust_bundle: false,
        line,
    };
    let mut out = BTreeMap::new();
    match (signer_names, signers) {
        (Some(names), Some(entries)) => problem(
            entries.referenced.line(),
            format!(
                "the policy sets both signerNames (line {}) and signers (line {}); keep one: signers lists each signer with its role, signerNames means approveAndSign for each",
                names.referenced.line(),
                entries.referenced.line()
            ),
        ),
        (None, None) => {
            for name in default_signer_names() {
                out.insert(name, approve_and_sign(1));
            }
        }
        (Some(names), None) => {
            if names.value.is_empty() {
                problem(
                    names.referenced.line(),
                    "signerNames is empty: csr-warden would do nothing".into(),
                );
            }
            for name in names.value {
                let line = name.referenced.line();
                if let Err(why) = check_signer_name(&name.value) {
                    problem(line, why);
                }
                out.insert(name.value, approve_and_sign(line));
            }
        }
        (None, Some(entries)) => {
            if entries.value.is_empty() {
                problem(
                    entries.referenced.line(),
                    "signers is empty: csr-warden would do nothing".into(),
                );
            }
            for entry in entries.value {
                let line = entry.referenced.line();
                let entry = entry.value;
                if let Err(why) = check_signer_name(&entry.name) {
                    problem(line, why);
                }
                let role = match entry.role.as_deref() {
                    None | Some("approveAndSign") => SignerRole::ApproveAndSign,
                    Some("approve") => SignerRole::Approve,
                    Some("sign") => SignerRole::Sign,
                    Some(other) => {
                        problem(
                            line,
                            format!(
                                "signer {:?} has unknown role {other:?}; use approve, sign or approveAndSign",
                                entry.name
                            ),
                        );
                        continue;
                    }
                };
                if !role.signs() && entry.ca.is_some() {
                    problem(
                        line,
                        format!(
                            "signer {:?} has role approve, which never signs, but sets ca; remove ca or use approveAndSign",
                            entry.name
                        ),
                    );
                }
                if entry.trust_bundle && !role.signs() {
                    problem(
                        line,
                        format!(
                            "signer {:?} has role approve and trustBundle: true; only a signer csr-warden signs for has a CA to publish",
                            entry.name
                        ),
                    );
                }
                let config = SignerConfig {
                    trust_bundle: entry.trust_bundle && role.signs(),
                    role,
                    ca: entry
                        .ca
                        .map(|ca| ca_paths(ca, &format!("signer {:?}", entry.name), line, problem)),
                    allow_cluster_ca: entry.allow_cluster_ca,
                    line,
                };
                if out.insert(entry.name.clone(), config).is_some() {
                    problem(
                        line,
                        format!("signer {:?} is listed twice; keep one entry", entry.name),
                    );
                }
            }
        }
    }
    out
}

fn check_signer_name(name: &str) -> Result<(), String> {
    let Some((domain, path)) = name.split_once('/') else {
        return Err(format!(
            "signerName {name:?} must look like <domain>/<path>"
        ));
    };
    if domain.is_empty() || path.is_empty() || !domain.contains('.') {
        return Err(format!(
            "signerName {name:?} must look like <domain>/<path>"
        ));
    }
    if name == "kubernetes.io/legacy-unknown" {
        return Err("kubernetes.io/legacy-unknown is never signed; remove it".into());
    }
    Ok(())
}
