//! `csr-warden check`: decide one CSR with the same [`policy::decide`] the controller uses, and
//! explain every rule it looked at. Files are decided here, offline, with facts from flags; a live
//! CSR (`--csr`, `--all-pending`) in [`cluster`], with the cluster's own facts.

pub mod cluster;
pub mod pods;

use std::io::Write;
use std::path::Path;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use serde::Serialize;

use crate::cli::{CheckArgs, OutputFormat};
use crate::csr::object::csr_view;
use crate::policy::file::load_policy;
use crate::x509::inspect::inspect;
use std::net::IpAddr;

use crate::policy::{
    self, AddressClaim, ClusterFacts, CsrView, Decision, NodeLookup, Policy, PrivilegeReview,
    Requester, Verdict,
};

/// Exit codes: scripts branch on these.
pub const EXIT_APPROVE: u8 = 0;
pub const EXIT_DENY: u8 = 1;
pub const EXIT_LEAVE: u8 = 2;
pub const EXIT_BAD_INPUT: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Policy(#[from] crate::policy::file::PolicyError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a CertificateSigningRequest object: {message}")]
    NotACsr { path: String, message: String },
    #[error(
        "--request needs --signer and --usages (e.g. --signer kubernetes.io/kube-apiserver-client --usages 'client auth')"
    )]
    MissingRequestFlags,
    #[error(
        "a file is checked against a policy file: add --policy FILE (e.g. examples/policy.yaml)"
    )]
    MissingPolicy,
    #[error("{flag}: {message}")]
    BadFlag { flag: &'static str, message: String },
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, CheckError> {
    std::fs::read(path).map_err(|source| CheckError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Build the CSR the flags describe.
pub fn load_view(args: &CheckArgs) -> Result<CsrView, CheckError> {
    let mut view = if let Some(path) = &args.csr_object {
        let text = String::from_utf8_lossy(&read(path)?).into_owned();
        let csr: CertificateSigningRequest =
            serde_saphyr::from_str(&text).map_err(|e| CheckError::NotACsr {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        csr_view(&csr)
    } else {
        let path = args
            .request
            .as_deref()
            .ok_or(CheckError::MissingRequestFlags)?;
        let (Some(signer), false) = (&args.signer, args.usages.is_empty()) else {
            return Err(CheckError::MissingRequestFlags);
        };
        CsrView {
            name: path.display().to_string(),
            signer_name: signer.clone(),
            usages: args.usages.clone(),
            expiration_seconds: args.expiration_seconds,
            requester: Requester::default(),
            request: inspect(&read(path)?),
        }
    };
    if let Some(username) = &args.username {
        view.requester.username = username.clone();
    }
    if let Some(groups) = &args.groups {
        view.requester.groups = groups.clone();
    }
    if args.expiration_seconds.is_some() {
        view.expiration_seconds = args.expiration_seconds;
    }
    Ok(view)
}

/// The facts a cluster would have supplied, as far as the flags say. A fact no flag gives is
/// "not looked up", and the policy leaves the CSR pending rather than guess.
pub fn offline_facts(args: &CheckArgs, policy: &Policy) -> Result<ClusterFacts, CheckError> {
    let api_server = match &args.apiserver_addresses {
        None => None,
        Some(addresses) => Some(
            addresses
                .iter()
                .filter(|a| !a.trim().is_empty())
                .map(|a| {
                    a.trim()
                        .parse::<IpAddr>()
                        .map(|ip| ip.to_canonical())
                        .map_err(|_| CheckError::BadFlag {
                            flag: "--apiserver-addresses",
                            message: format!("{a:?} is not an IP address"),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let other_nodes = args.other_node_addresses.as_ref().map(|entries| {
        entries
            .iter()
            .filter(|e| !e.trim().is_empty())
            .map(|entry| match entry.split_once('=') {
                Some((node, address)) => AddressClaim {
                    node: node.trim().to_owned(),
                    address: address.trim().to_owned(),
                },
                None => AddressClaim {
                    node: "another node".to_owned(),
                    address: entry.trim().to_owned(),
                },
            })
            .collect()
    });
    Ok(ClusterFacts {
        node_client_allowed: args.assume_node_client_allowed.then_some(true),
        self_node_client_allowed: args.assume_self_node_client_allowed.then_some(true),
        node: args
            .node_addresses
            .as_ref()
            .map(|addresses| NodeLookup::Addresses(addresses.clone())),
        other_nodes,
        api_server,
        privilege: privilege_matches(args, policy)?,
    })
}

/// `--privilege-matches`: the ceiling's answers as the flag gives them; every check it does not
/// name answered no.
fn privilege_matches(
    args: &CheckArgs,
    policy: &Policy,
) -> Result<Option<PrivilegeReview>, CheckError> {
    let Some(matches) = &args.privilege_matches else {
        return Ok(None);
    };
    let matches: Vec<&str> = matches
        .iter()
        .map(|m| m.trim())
        .filter(|m| !m.is_empty() && *m != "none")
        .collect();
    let known = |name: &str| policy.privilege_checks.iter().any(|c| c.name == name);
    if let Some(unknown) = matches.iter().find(|m| !known(m)) {
        return Err(CheckError::BadFlag {
            flag: "--privilege-matches",
            message: format!(
                "{unknown:?} is no privilege check of this policy; say none, or some of: {}",
                policy
                    .privilege_checks
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    Ok(Some(PrivilegeReview::Answered(
        policy
            .privilege_checks
            .iter()
            .map(|c| (c.name.clone(), matches.contains(&c.name.as_str())))
            .collect(),
    )))
}

pub fn exit_code(decision: &Decision) -> u8 {
    match decision {
        Decision::Approve { .. } => EXIT_APPROVE,
        Decision::Deny { .. } => EXIT_DENY,
        Decision::Leave { .. } => EXIT_LEAVE,
    }
}

#[derive(Serialize)]
struct JsonStep<'a> {
    rule: &'a str,
    outcome: &'a str,
    detail: &'a str,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    csr: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'a cluster::LiveState>,
    signer: &'a str,
    requester: &'a str,
    subject: String,
    decision: &'a str,
    reason: &'a str,
    message: &'a str,
    rules: Vec<JsonStep<'a>>,
}

/// Render the verdict for a person (text) or a script (json).
/// `state` is the live CSR's current state, when it was read from a cluster.
pub fn render(
    view: &CsrView,
    verdict: &Verdict,
    state: Option<&cluster::LiveState>,
    format: OutputFormat,
) -> String {
    let subject = view.subject();
    let decision = &verdict.decision;
    match format {
        OutputFormat::Json => {
            let report = JsonReport {
                csr: &view.name,
                state,
                signer: &view.signer_name,
                requester: &view.requester.username,
                subject,
                decision: decision.verb(),
                reason: decision.reason().as_str(),
                message: decision.message(),
                rules: verdict
                    .steps
                    .iter()
                    .map(|s| JsonStep {
                        rule: s.rule,
                        outcome: s.outcome.as_str(),
                        detail: &s.detail,
                    })
                    .collect(),
            };
            serde_json::to_string_pretty(&report)
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        }
        OutputFormat::Text => {
            let mut out = format!(
                "CSR:       {}\nSigner:    {}\nRequester: {} {:?}\nSubject:   {}\n",
                view.name,
                view.signer_name,
                view.requester.username,
                view.requester.groups,
                subject,
            );
            if let Some(state) = state {
                out.push_str(&state.render_text());
            }
            out.push_str(&format!(
                "\nDecision:  {} ({})\nMessage:   {}\n\nRules:\n",
                decision.verb().to_uppercase(),
                decision.reason(),
                decision.message()
            ));
            let width = verdict
                .steps
                .iter()
                .map(|s| s.rule.len())
                .max()
                .unwrap_or(0);
            for step in &verdict.steps {
                out.push_str(&format!(
                    "  - {:<width$} {:<15} {}\n",
                    step.rule,
                    step.outcome.as_str(),
                    step.detail
                ));
            }
            out
        }
    }
}

/// Print `text` on stdout; `check ... | head` closing the pipe early is no error.
pub(crate) fn print(text: &str) -> Result<(), std::io::Error> {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}") {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error),
        _ => Ok(()),
    }
}

/// Run `check`: print the report and return the exit code.
pub fn run(args: &CheckArgs) -> u8 {
    if let Some(path) = &args.pcr_object {
        return pods::run_offline(args, path);
    }
    if args.all_pending || args.live_name().is_some() || args.pcr.is_some() {
        return cluster::run(args);
    }
    let outcome = args
        .policy
        .as_deref()
        .ok_or(CheckError::MissingPolicy)
        .and_then(|path| Ok(load_policy(path)?))
        .and_then(|policy| {
            let facts = offline_facts(args, &policy)?;
            Ok((policy, load_view(args)?, facts))
        });
    match outcome {
        Ok((policy, view, facts)) => {
            let verdict = policy::decide(&view, &facts, &policy);
            match print(&render(&view, &verdict, None, args.output)) {
                Err(error) => {
                    eprintln!("csr-warden check: cannot write the report: {error}");
                    EXIT_BAD_INPUT
                }
                Ok(()) => exit_code(&verdict.decision),
            }
        }
        Err(error) => {
            eprintln!("csr-warden check: {error}");
            EXIT_BAD_INPUT
        }
    }
}

/// What stops a live check; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(
        "no Kubernetes configuration ({0}): run in a pod, set KUBECONFIG, or check a file with --csr-object"
    )]
    NoConfig(String),
    #[error("CSR {0:?} does not exist (kubectl get csr lists them)")]
    NoSuchCsr(String),
    #[error(
        "cannot read CSR {name:?}: {source}; the caller needs get on certificatesigningrequests"
    )]
    ReadCsr {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot list CSRs: {0}; the caller needs list on certificatesigningrequests")]
    ListCsrs(#[source] kube::Error),
    #[error(
        "cannot read the policy ConfigMap {namespace}/{name}: {message}; pass --policy FILE, or --namespace where csr-warden runs"
    )]
    PolicyConfigMap {
        namespace: String,
        name: String,
        message: String,
    },
    #[error(transparent)]
    Policy(#[from] crate::policy::file::PolicyError),
    #[error(
        "cannot ask the cluster the facts for CSR {name:?}: {source}; the caller needs create on subjectaccessreviews, list on nodes, get on service default/kubernetes and list on endpointslices in default"
    )]
    Facts {
        name: String,
        #[source]
        source: crate::facts::FactsError,
    },
    #[error("no async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("--pcr takes NAMESPACE/NAME, got {0:?}")]
    PcrName(String),
    #[error(
        "cannot read PodCertificateRequest {name}: {source}; the caller needs get on podcertificaterequests, and the API server must serve certificates.k8s.io/v1beta1"
    )]
    ReadPcr {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "PodCertificateRequest {0} does not exist (kubectl get podcertificaterequests -A lists them)"
    )]
    NoSuchPcr(String),
}
