//! `csr-warden check --csr NAME` and `check --all-pending`: explain live CSRs with the facts the
//! controller itself would ask the cluster for ([`Facts::lookup`]), decided by the same
//! [`policy::decide`].
//!
//! The caller's own credentials are used (in-cluster, else KUBECONFIG or ~/.kube/config). It needs:
//! get/list CSRs, create SubjectAccessReviews, list Nodes, get Service default/kubernetes, list
//! EndpointSlices in `default`, and get the policy ConfigMap unless
//! `--policy` is given. It writes nothing.

use std::path::Path;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::Serialize;

use super::{EXIT_BAD_INPUT, LiveError, exit_code, print, render};
use crate::cli::{CheckArgs, OutputFormat};
use crate::csr::object::{CsrState, csr_state, csr_view};
use crate::facts::Facts;
use crate::kube::request::list_paged;
use crate::policy::file::{load_policy, parse_policy};
use crate::policy::{self, Policy, Verdict};

/// Key of the policy in the controller's ConfigMap (as the chart mounts it).
const POLICY_KEY: &str = "policy.yaml";

/// One condition of a live CSR, as `kubectl describe csr` shows it.
#[derive(Debug, Serialize)]
pub struct LiveCondition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// The issued certificate, read back.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveCertificate {
    pub subject: String,
    pub not_after: String,
}

/// Where a live CSR stands now, beside what the policy says of it.
#[derive(Debug, Serialize)]
pub struct LiveState {
    pub state: String,
    pub conditions: Vec<LiveCondition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<LiveCertificate>,
    /// Set when status.certificate is there but cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_error: Option<String>,
}

impl LiveState {
    pub fn of(csr: &CertificateSigningRequest) -> Self {
        let status = csr.status.as_ref();
        let conditions = status
            .and_then(|s| s.conditions.as_ref())
            .map(|conditions| {
                conditions
                    .iter()
                    .map(|c| LiveCondition {
                        kind: c.type_.clone(),
                        status: c.status.clone(),
                        reason: c.reason.clone().unwrap_or_default(),
                        message: c.message.clone().unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (certificate, certificate_error) = match status
            .and_then(|s| s.certificate.as_ref())
            .filter(|c| !c.0.is_empty())
        {
            None => (None, None),
            Some(pem) => match read_certificate(&pem.0) {
                Ok(certificate) => (Some(certificate), None),
                Err(error) => (None, Some(error)),
            },
        };
        LiveState {
            state: format!("{:?}", csr_state(csr)),
            conditions,
            certificate,
            certificate_error,
        }
    }

    pub fn render_text(&self) -> String {
        let mut out = format!("State:     {}\n", self.state);
        for c in &self.conditions {
            out.push_str(&format!(
                "  {}={} {}: {}\n",
                c.kind, c.status, c.reason, c.message
            ));
        }
        if let Some(certificate) = &self.certificate {
            out.push_str(&format!(
                "Certificate: subject {}, not after {}\n",
                certificate.subject, certificate.not_after
            ));
        }
        if let Some(error) = &self.certificate_error {
            out.push_str(&format!("Certificate: unreadable: {error}\n"));
        }
        out
    }
}

/// The first certificate of status.certificate (the leaf).
fn read_certificate(pem: &[u8]) -> Result<LiveCertificate, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not PEM: {e}"))?;
    let certificate = pem.parse_x509().map_err(|e| format!("not X.509: {e}"))?;
    Ok(LiveCertificate {
        subject: certificate.subject().to_string(),
        not_after: certificate
            .validity()
            .not_after
            .to_rfc2822()
            .unwrap_or_else(|e| e.to_string()),
    })
}

/// Run a live check and return its exit code; errors print on stderr and exit 3.
pub fn run(args: &CheckArgs) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("csr-warden check: {}", LiveError::Runtime(error));
            return EXIT_BAD_INPUT;
        }
    };
    let outcome = runtime.block_on(async {
        let client = client().await?;
        let policy = live_policy(&client, args).await?;
        if let Some(pcr) = &args.pcr {
            return super::pods::explain_live(&client, &policy, pcr, args.output).await;
        }
        match args.live_name() {
            Some(name) => explain(&client, &policy, name, args.output).await,
            None => all_pending(&client, &policy, args.output).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("csr-warden check: {error}");
            EXIT_BAD_INPUT
        }
    }
}

async fn client() -> Result<Client, LiveError> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| LiveError::NoConfig(e.to_string()))?;
    crate::kube::client::bounded(config).map_err(|e| LiveError::NoConfig(e.to_string()))
}

/// `--policy`, else the policy the running controller reads (its ConfigMap).
async fn live_policy(client: &Client, args: &CheckArgs) -> Result<Policy, LiveError> {
    if let Some(path) = &args.policy {
        return Ok(load_policy(path)?);
    }
    let unreadable = |message: String| LiveError::PolicyConfigMap {
        namespace: args.namespace.clone(),
        name: args.policy_configmap.clone(),
        message,
    };
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &args.namespace);
    let configmap = configmaps
        .get_opt(&args.policy_configmap)
        .await
        .map_err(|e| unreadable(e.to_string()))?
        .ok_or_else(|| unreadable("it does not exist".into()))?;
    let text = configmap
        .data
        .as_ref()
        .and_then(|data| data.get(POLICY_KEY))
        .ok_or_else(|| unreadable(format!("it has no {POLICY_KEY} key")))?;
    let origin = format!(
        "configmap/{}/{}:{POLICY_KEY}",
        args.namespace, args.policy_configmap
    );
    Ok(parse_policy(text, Path::new(&origin))?)
}

/// The policy's verdict on a live CSR, with the cluster's facts.
async fn verdict(
    facts: &Facts,
    policy: &Policy,
    csr: &CertificateSigningRequest,
) -> Result<Verdict, LiveError> {
    let view = csr_view(csr);
    let facts = facts
        .lookup(
            &policy::facts_needed(&view, policy),
            &view,
            &policy.privilege_checks,
        )
        .await
        .map_err(|source| LiveError::Facts {
            name: view.name.clone(),
            source,
        })?;
    Ok(policy::decide(&view, &facts, policy))
}

/// `check --csr NAME`: the trace and the CSR's state; exit code from the decision.
async fn explain(
    client: &Client,
    policy: &Policy,
    name: &str,
    output: OutputFormat,
) -> Result<u8, LiveError> {
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let csr = csrs
        .get_opt(name)
        .await
        .map_err(|source| LiveError::ReadCsr {
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| LiveError::NoSuchCsr(name.to_owned()))?;
    let verdict = verdict(&Facts::listed(client.clone()), policy, &csr).await?;
    let state = LiveState::of(&csr);
    match print(&render(&csr_view(&csr), &verdict, Some(&state), output)) {
        Ok(()) => Ok(exit_code(&verdict.decision)),
        Err(error) => {
            eprintln!("csr-warden check: cannot write the report: {error}");
            Ok(EXIT_BAD_INPUT)
        }
    }
}

/// One line of `--all-pending`.
#[derive(Debug, Serialize)]
struct PendingLine {
    csr: String,
    signer: String,
    requester: String,
    decision: String,
    reason: String,
    message: String,
}

/// `check --all-pending`: every pending CSR of the policy's signers, oldest first, with what the
/// policy says of it now. A CSR whose facts cannot be read gets an `error` line and exit 3.
async fn all_pending(
    client: &Client,
    policy: &Policy,
    output: OutputFormat,
) -> Result<u8, LiveError> {
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let mut pending = Vec::new();
    // Only the policy's signers, each listed by field selector, as the controller's resync does.
    for signer in &policy.signer_names {
        let params = ListParams::default().fields(&format!("spec.signerName={signer}"));
        list_paged(&csrs, params, |items| {
            pending.extend(
                items
                    .into_iter()
                    .filter(|csr| csr_state(csr) == CsrState::Pending),
            )
        })
        .await
        .map_err(LiveError::ListCsrs)?;
    }
    pending.sort_by_key(|csr| (csr.creation_timestamp().map(|t| t.0), csr.name_any()));

    let mut lines = Vec::with_capacity(pending.len());
    let mut failed = false;
    // Nodes and the API server's addresses are listed once, for every serving CSR.
    let facts = Facts::listed(client.clone());
    for csr in &pending {
        let (decision, reason, message) = match verdict(&facts, policy, csr).await {
            Ok(verdict) => (
                verdict.decision.verb().to_owned(),
                verdict.decision.reason().as_str().to_owned(),
                verdict.decision.message().to_owned(),
            ),
            Err(error) => {
                failed = true;
                (
                    "error".to_owned(),
                    "FactsUnavailable".to_owned(),
                    error.to_string(),
                )
            }
        };
        lines.push(PendingLine {
            csr: csr.name_any(),
            signer: csr.spec.signer_name.clone(),
            requester: csr.spec.username.clone().unwrap_or_default(),
            decision,
            reason,
            message,
        });
    }
    let text = match output {
        OutputFormat::Json => serde_json::to_string_pretty(&lines)
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
        OutputFormat::Text => pending_table(&lines),
    };
    if let Err(error) = print(&text) {
        eprintln!("csr-warden check: cannot write the report: {error}");
        return Ok(EXIT_BAD_INPUT);
    }
    Ok(if failed { EXIT_BAD_INPUT } else { 0 })
}

/// Columns as `kubectl get` aligns them; the message last, whole.
fn pending_table(lines: &[PendingLine]) -> String {
    if lines.is_empty() {
        return "No pending CSRs for the policy's signers.".to_owned();
    }
    let width = |header: &str, column: fn(&PendingLine) -> &str| {
        lines
            .iter()
            .map(|line| column(line).len())
            .chain([header.len()])
            .max()
            .unwrap_or(0)
    };
    let name = width("NAME", |l| &l.csr);
    let requester = width("REQUESTER", |l| &l.requester);
    let signer = width("SIGNER", |l| &l.signer);
    let decision = width("WOULD", |l| &l.decision);
    let reason = width("REASON", |l| &l.reason);
    let mut out = format!(
        "{:<name$}  {:<requester$}  {:<signer$}  {:<decision$}  {:<reason$}  MESSAGE",
        "NAME", "REQUESTER", "SIGNER", "WOULD", "REASON"
    );
    for line in lines {
        out.push_str(&format!(
            "\n{:<name$}  {:<requester$}  {:<signer$}  {:<decision$}  {:<reason$}  {}",
            line.csr, line.requester, line.signer, line.decision, line.reason, line.message
        ));
    }
    out
}
