//! `csr-warden credential`: a client-go exec credential plugin (`client.authentication.k8s.io/v1`
//! ExecCredential). kubectl runs it for a user whose kubeconfig entry says `exec:`; it prints a
//! client certificate and key from its cache and, once the certificate is in the last part of its
//! life (a third by default) or gone, requests the next one first:
//!
//! - while the cached certificate is still valid, authenticated with it: the renewal is the
//!   certificate's own identity asking again (csr-warden's allow-list lets a CN ask for itself);
//! - otherwise with the bootstrap context the user named (their OIDC or token login).
//!
//! Every renewal is a new CSR that the approver decides again. A renewal that is left pending,
//! denied or failed while the current certificate still works does not stop kubectl: the
//! current certificate is given until it runs out, and a pending renewal is asked about again
//! next time rather than requested anew.
//!
//! stdout carries the ExecCredential JSON and nothing else; everything else goes to stderr,
//! which kubectl shows.

use std::time::Duration;

use serde_json::json;

use super::cache::{self, Cached, Entry, Identity, Pending};
use super::follow::{self, Ask, Outcome, say};
use super::key::{Validity, check_certificate, new_request, validity_of};
use super::kubeconfig;
use super::request::{
    DEFAULT_CREDENTIAL_EXPIRATION, common_name_given, csr_name, expiration, report_unfinished,
};
use super::{Exit, UserError};
use crate::cli::CredentialArgs;

/// A certificate closer than this to its end is not used to authenticate a renewal (the request
/// could outlive it) and is not handed to kubectl.
const END_MARGIN_SECONDS: i64 = 60;
/// How soon kubectl asks again when a due renewal could not be had yet.
const RETRY_SECONDS: i64 = 60;

pub fn run(args: &CredentialArgs) -> Exit {
    super::block_on(credential(args), "csr-warden credential")
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

async fn credential(args: &CredentialArgs) -> Result<Exit, UserError> {
    let api_version = exec_api_version()?;
    let kubeconfig_path = args.kubeconfig.as_deref();
    let merged = kubeconfig::read(kubeconfig_path)?;
    let (bootstrap, context) = kubeconfig::context_of(&merged, Some(&args.bootstrap_context))?;
    refuse_self_reference(&merged, &bootstrap, context.user.as_deref())?;
    let server = merged
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .ok_or_else(|| {
            UserError::Input(format!(
                "context {bootstrap} names cluster {:?}, which the kubeconfig does not define with a server",
                context.cluster
            ))
        })?;
    let common_name = common_name_given(&args.certificate)?;
    let expiration_seconds = expiration(&args.certificate, DEFAULT_CREDENTIAL_EXPIRATION)?;
    let identity = Identity {
        server,
        signer: args.certificate.signer.clone(),
        common_name: common_name.clone(),
        groups: args.certificate.groups.clone(),
    };
    let directory = match &args.cache_dir {
        Some(directory) => directory.clone(),
        None => cache::default_directory()?,
    };
    // Another kubectl running this plugin for the same entry waits here for its turn.
    let entry = Entry::lock(&directory, &identity)?;
    let renewal = Renewal {
        args,
        bootstrap: &bootstrap,
        common_name: &common_name,
        expiration_seconds,
    };
    let current = entry
        .read()
        .and_then(|cached| validity_of(&cached.certificate).ok().map(|v| (cached, v)));
    let fraction = args.renew_when_remaining;
    match current {
        Some((cached, validity)) if now() < validity.renew_at(fraction) => {
            print_credential(&api_version, &cached, validity, validity.renew_at(fraction));
            Ok(Exit::Issued)
        }
        Some((cached, validity)) if now() < validity.not_after - END_MARGIN_SECONDS => {
            let kept = match renewal.with_certificate(cached.clone()).await {
                Ok(Renewed::New(new, new_validity)) => {
                    entry.write(&new)?;
                    print_credential(
                        &api_version,
                        &new,
                        new_validity,
                        new_validity.renew_at(fraction),
                    );
                    return Ok(Exit::Issued);
                }
                Ok(Renewed::Keep(kept)) => kept,
                Err(error) => {
                    say(&format!(
                        "renewal failed: {error}; the current certificate is used meanwhile"
                    ));
                    cached
                }
            };
            entry.write(&kept)?;
            let next_try = if kept.renewal_refused {
                validity.not_after - END_MARGIN_SECONDS
            } else {
                now() + RETRY_SECONDS
            };
            print_credential(&api_version, &kept, validity, next_try);
            Ok(Exit::Issued)
        }
        _ => {
            let config = kubeconfig::config(kubeconfig_path, Some(&bootstrap)).await?;
            say(&format!(
                "no valid certificate for {common_name} in the cache: requesting one with context {bootstrap}"
            ));
            let (outcome, name, key) = renewal
                .request(config, args.certificate.timeout_duration())
                .await?;
            match outcome {
                Outcome::Issued(certificate) => {
                    let validity = check_certificate(&certificate, &key)?;
                    let cached = Cached {
                        key: key.0,
                        certificate,
                        csr: name,
                        pending: None,
                        renewal_refused: false,
                    };
                    entry.write(&cached)?;
                    print_credential(&api_version, &cached, validity, validity.renew_at(fraction));
                    Ok(Exit::Issued)
                }
                other => Ok(report_unfinished(&other, &name)),
            }
        }
    }
}

enum Renewed {
    New(Cached, Validity),
    Keep(Cached),
}

struct Renewal<'a> {
    args: &'a CredentialArgs,
    bootstrap: &'a str,
    common_name: &'a str,
    expiration_seconds: i32,
}

impl Renewal<'_> {
    /// A new CSR with a new key, created with `config`'s credentials and followed for `wait`.
    async fn request(
        &self,
        config: kube::Config,
        wait: Duration,
    ) -> Result<(Outcome, String, super::key::PrivateKeyPem), UserError> {
        let client = kube::Client::try_from(config).map_err(UserError::Client)?;
        let certificate = &self.args.certificate;
        let made = new_request(certificate.key_type, self.common_name, &certificate.groups)?;
        let ask = Ask {
            name: csr_name(self.common_name)?,
            request_pem: made.request_pem,
            signer_name: certificate.signer.clone(),
            usages: certificate.usages.clone(),
            expiration_seconds: self.expiration_seconds,
        };
        let created = follow::create(&client, &ask).await?;
        let name = created.metadata.name.clone().unwrap_or(ask.name);
        say(&format!("created CSR {name} for {}", self.common_name));
        let outcome = follow::follow(&client, &name, created.metadata.uid.as_deref(), wait).await?;
        Ok((outcome, name, made.key))
    }

    /// The next certificate, asked for with the current one, or the current one kept (with a
    /// pending renewal noted, or the renewal's refusal).
    async fn with_certificate(&self, mut cached: Cached) -> Result<Renewed, UserError> {
        if cached.renewal_refused {
            return Ok(Renewed::Keep(cached));
        }
        let mut config =
            kubeconfig::config(self.args.kubeconfig.as_deref(), Some(self.bootstrap)).await?;
        config.auth_info = certificate_auth(&cached)?;
        let wait = Duration::from_secs(u64::try_from(self.args.renewal_wait).unwrap_or(0));
        let (outcome, name, key) = match cached.pending.clone() {
            Some(pending) => {
                let client = kube::Client::try_from(config).map_err(UserError::Client)?;
                let outcome = follow::follow(&client, &pending.csr, None, wait).await?;
                (outcome, pending.csr, super::key::PrivateKeyPem(pending.key))
            }
            None => {
                say("the certificate is due for renewal: requesting the next one with it");
                self.request(config, wait).await?
            }
        };
        match outcome {
            Outcome::Issued(certificate) => {
                let validity = check_certificate(&certificate, &key)?;
                say(&format!("renewed with CSR {name}"));
                Ok(Renewed::New(
                    Cached {
                        key: key.0,
                        certificate,
                        csr: name,
                        pending: None,
                        renewal_refused: false,
                    },
                    validity,
                ))
            }
            Outcome::Denied { .. } | Outcome::Failed { .. } => {
                report_unfinished(&outcome, &name);
                say(
                    "the current certificate is used until it runs out; then a request is made with the bootstrap context",
                );
                cached.pending = None;
                cached.renewal_refused = true;
                Ok(Renewed::Keep(cached))
            }
            Outcome::StillPending { .. } | Outcome::NotIssued | Outcome::Interrupted => {
                say(&format!(
                    "renewal CSR {name} not issued yet; the current certificate is used meanwhile and CSR {name} asked about again next time"
                ));
                cached.pending = Some(Pending {
                    csr: name,
                    key: key.0,
                });
                Ok(Renewed::Keep(cached))
            }
        }
    }
}

/// Credentials that are the cached certificate and key, nothing else.
fn certificate_auth(cached: &Cached) -> Result<kube::config::AuthInfo, UserError> {
    use base64::Engine as _;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    serde_json::from_value(json!({
        "client-certificate-data": b64(&cached.certificate),
        "client-key-data": b64(&cached.key),
    }))
    .map_err(|e| UserError::Input(format!("cannot use the cached certificate: {e}")))
}

/// The ExecCredential version kubectl asked for (KUBERNETES_EXEC_INFO), v1 when it says none.
fn exec_api_version() -> Result<String, UserError> {
    const V1: &str = "client.authentication.k8s.io/v1";
    const V1BETA1: &str = "client.authentication.k8s.io/v1beta1";
    let Some(info) = std::env::var_os("KUBERNETES_EXEC_INFO") else {
        return Ok(V1.to_owned());
    };
    let info: serde_json::Value = serde_json::from_str(&info.to_string_lossy()).map_err(|e| {
        UserError::Input(format!(
            "KUBERNETES_EXEC_INFO is not JSON ({e}): run this from kubectl"
        ))
    })?;
    match info["apiVersion"].as_str() {
        Some(version @ (V1 | V1BETA1)) => Ok(version.to_owned()),
        other => Err(UserError::Input(format!(
            "kubectl asked for ExecCredential {other:?}; csr-warden speaks {V1} and {V1BETA1}: set apiVersion: {V1} in the kubeconfig's exec stanza"
        ))),
    }
}

/// A bootstrap context whose user is this plugin would have the plugin call itself for ever.
fn refuse_self_reference(
    kubeconfig: &kube::config::Kubeconfig,
    context: &str,
    user: Option<&str>,
) -> Result<(), UserError> {
    let exec = kubeconfig
        .auth_infos
        .iter()
        .find(|u| Some(u.name.as_str()) == user)
        .and_then(|u| u.auth_info.as_ref())
        .and_then(|a| a.exec.as_ref());
    let is_us = exec.is_some_and(|exec| {
        let command = exec.command.as_deref().unwrap_or_default();
        (command.ends_with("csr-warden") || command.ends_with("kubectl-csr_warden"))
            && exec
                .args
                .as_ref()
                .is_some_and(|args| args.iter().any(|a| a == "credential"))
    });
    if is_us {
        return Err(UserError::Input(format!(
            "--bootstrap-context {context} logs in with csr-warden credential itself: name a context whose user logs in another way (OIDC, a token)"
        )));
    }
    Ok(())
}

/// The ExecCredential on stdout. `refresh_at` is when kubectl should run the plugin again: the
/// renewal time, so a long-running kubectl (a watch) picks up the renewed certificate; never
/// past the certificate's end, never sooner than a minute from now.
fn print_credential(api_version: &str, cached: &Cached, validity: Validity, refresh_at: i64) {
    let expires = refresh_at
        .max(now() + RETRY_SECONDS)
        .min(validity.not_after);
    let timestamp = time::OffsetDateTime::from_unix_timestamp(expires)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let credential = json!({
        "apiVersion": api_version,
        "kind": "ExecCredential",
        "spec": {"interactive": false},
        "status": {
            "clientCertificateData": cached.certificate,
            "clientKeyData": cached.key,
            "expirationTimestamp": timestamp,
        }
    });
    println!("{credential}");
}
