//! `csr-warden check --pcr NAMESPACE/NAME` (live) and `--pcr-object FILE` (offline): what the
//! policy gives a PodCertificateRequest's pod, with the same [`pods::decide`] the
//! controller uses. Exit codes as for CSRs: 0 issue, 1 deny, 2 not ours (left alone), 3 bad
//! input.

use std::path::Path;

use k8s_openapi::api::certificates::v1beta1::PodCertificateRequest;
use kube::{Api, Client};
use serde::Serialize;

use super::LiveError;
use super::{EXIT_APPROVE, EXIT_BAD_INPUT, EXIT_DENY, EXIT_LEAVE, print, read};
use crate::cli::OutputFormat;
use crate::pods::pcr_view;
use crate::policy::Policy;
use crate::policy::file::load_policy;
use crate::policy::pods::{self, PcrView, PodDecision};

#[derive(Serialize)]
struct JsonReport<'a> {
    pcr: String,
    signer: &'a str,
    pod: &'a str,
    service_account: &'a str,
    node: &'a str,
    decision: &'static str,
    reason: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_lifetime_seconds: Option<i64>,
}

/// The report and the exit code for one request under `policy`.
pub fn report(view: &PcrView, policy: &Policy, output: OutputFormat) -> (String, u8) {
    let decision = policy
        .pod_signers
        .get(&view.signer_name)
        .map(|signer| pods::decide(view, signer));
    let (verb, reason, message, spiffe_id, lifetime, code) = match &decision {
        None => (
            "leave",
            "NotOurSigner",
            format!(
                "signerName {:?} is not one of the policy's pod-certificate signers; another signer owns this request",
                view.signer_name
            ),
            None,
            None,
            EXIT_LEAVE,
        ),
        Some(PodDecision::Issue {
            spiffe_id,
            max_lifetime_seconds,
        }) => (
            "issue",
            "Issued",
            format!("a certificate for {spiffe_id}, living at most {max_lifetime_seconds} s"),
            Some(spiffe_id.as_str()),
            Some(*max_lifetime_seconds),
            EXIT_APPROVE,
        ),
        Some(PodDecision::Deny { reason, message }) => (
            "deny",
            reason.as_str(),
            message.clone(),
            None,
            None,
            EXIT_DENY,
        ),
    };
    let name = format!("{}/{}", view.namespace, view.name);
    let text = match output {
        OutputFormat::Json => serde_json::to_string_pretty(&JsonReport {
            pcr: name,
            signer: &view.signer_name,
            pod: &view.pod_name,
            service_account: &view.service_account_name,
            node: &view.node_name,
            decision: verb,
            reason,
            message,
            spiffe_id,
            max_lifetime_seconds: lifetime,
        })
        .unwrap_or_default(),
        _ => format!(
            "PodCertificateRequest: {name}\nSigner: {}\nPod: {} (service account {}) on node {}\nKey: {}\nDecision: {} ({reason})\n  {message}",
            view.signer_name,
            view.pod_name,
            view.service_account_name,
            view.node_name,
            view.request
                .as_ref()
                .map(|r| r.key.to_string())
                .unwrap_or_else(|e| format!("unreadable: {e}")),
            verb.to_uppercase(),
        ),
    };
    (text, code)
}

fn emit((text, code): (String, u8)) -> u8 {
    match print(&text) {
        Ok(()) => code,
        Err(error) => {
            eprintln!("csr-warden check: cannot write the report: {error}");
            EXIT_BAD_INPUT
        }
    }
}

/// `--pcr-object FILE --policy FILE`.
pub fn run_offline(args: &crate::cli::CheckArgs, path: &Path) -> u8 {
    let outcome = (|| -> Result<(Policy, PodCertificateRequest), String> {
        let policy_path = args
            .policy
            .as_deref()
            .ok_or("a file is checked against a policy file: add --policy FILE")?;
        let policy = load_policy(policy_path).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&read(path).map_err(|e| e.to_string())?).into_owned();
        let pcr: PodCertificateRequest = serde_saphyr::from_str(&text).map_err(|e| {
            format!(
                "{} is not a PodCertificateRequest object: {e}",
                path.display()
            )
        })?;
        Ok((policy, pcr))
    })();
    match outcome {
        Ok((policy, pcr)) => emit(report(&pcr_view(&pcr), &policy, args.output)),
        Err(error) => {
            eprintln!("csr-warden check: {error}");
            EXIT_BAD_INPUT
        }
    }
}

/// `--pcr NAMESPACE/NAME`.
pub async fn explain_live(
    client: &Client,
    policy: &Policy,
    name: &str,
    output: OutputFormat,
) -> Result<u8, LiveError> {
    let Some((namespace, pcr_name)) = name.split_once('/') else {
        return Err(LiveError::PcrName(name.to_owned()));
    };
    let pcrs: Api<PodCertificateRequest> = Api::namespaced(client.clone(), namespace);
    let pcr = pcrs
        .get_opt(pcr_name)
        .await
        .map_err(|source| LiveError::ReadPcr {
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| LiveError::NoSuchPcr(name.to_owned()))?;
    Ok(emit(report(&pcr_view(&pcr), policy, output)))
}
