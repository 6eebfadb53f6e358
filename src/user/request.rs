//! `csr-warden request`: the user's flow in one command. The key is made here and written only
//! here (0600); the CSR is created with the user's own kubeconfig; its progress is shown as it
//! happens; the key and certificate are written together once the certificate is there, and a
//! kubeconfig user and context added on request.

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, PostParams};
use kube::config::{AuthInfo, ExecConfig, ExecInteractiveMode};
use std::path::{Path, PathBuf};

use super::files::{PRIVATE, PUBLIC, Staged};
use super::follow::{self, Ask, Outcome, say};
use super::key::{check_certificate, new_request};
use super::kubeconfig;
use super::{Exit, UserError};
use crate::cli::{CertificateArgs, RequestArgs};

/// What `request` asks for when --expiration is not given: a day. Short enough that a lost
/// laptop's certificate runs out soon; the exec plugin (`--exec`) makes an hour practical.
pub const DEFAULT_REQUEST_EXPIRATION: i32 = 86_400;
/// What the exec plugin asks for by default: an hour, renewed in its last third.
pub const DEFAULT_CREDENTIAL_EXPIRATION: i32 = 3_600;
/// The API server refuses less.
const MIN_EXPIRATION: i32 = 600;

pub fn run(args: &RequestArgs) -> Exit {
    super::block_on(request(args), "csr-warden")
}

async fn request(args: &RequestArgs) -> Result<Exit, UserError> {
    let kubeconfig_path = args.cluster.kubeconfig.as_deref();
    let config = kubeconfig::config(kubeconfig_path, args.cluster.context.as_deref()).await?;
    let client = kube::Client::try_from(config).map_err(UserError::Client)?;
    let common_name = common_name(&client, &args.certificate).await?;
    // The plugin renews by itself, so what it asks for can be short.
    let default_expiration = if args.exec {
        DEFAULT_CREDENTIAL_EXPIRATION
    } else {
        DEFAULT_REQUEST_EXPIRATION
    };
    let expiration = expiration(&args.certificate, default_expiration)?;
    if args.exec {
        return print_exec(args, &common_name, expiration);
    }

    let key_out = args
        .key_out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.key", super::cache::safe_name(&common_name))));
    let cert_out = args
        .cert_out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.crt", super::cache::safe_name(&common_name))));
    for path in [&key_out, &cert_out] {
        let directory = parent_of(path);
        if !directory.is_dir() {
            return Err(UserError::Input(format!(
                "{} is not a directory: create it, or choose another --key-out/--cert-out",
                directory.display()
            )));
        }
    }
    let name = match &args.name {
        Some(name) => name.clone(),
        None => csr_name(&common_name)?,
    };
    let made = new_request(
        args.certificate.key_type,
        &common_name,
        &args.certificate.groups,
    )?;
    let ask = Ask {
        name,
        request_pem: made.request_pem,
        signer_name: args.certificate.signer.clone(),
        usages: args.certificate.usages.clone(),
        expiration_seconds: expiration,
    };
    let created = follow::create(&client, &ask).await?;
    let name = created.metadata.name.clone().unwrap_or(ask.name.clone());
    say(&format!(
        "created CSR {name}: CN={common_name}{}, signer {}, usages [{}], {} s",
        args.certificate
            .groups
            .iter()
            .map(|g| format!(", O={g}"))
            .collect::<String>(),
        ask.signer_name,
        ask.usages.join(", "),
        expiration
    ));
    let timeout = args.certificate.timeout_duration();
    let outcome = follow::follow(&client, &name, created.metadata.uid.as_deref(), timeout).await?;
    let certificate = match outcome {
        Outcome::Issued(certificate) => certificate,
        other => return Ok(report_unfinished(&other, &name)),
    };
    let validity = check_certificate(&certificate, &made.key)?;

    // Both files staged first, then renamed: an error before the renames leaves neither.
    let staged_key = Staged::write(&key_out, made.key.0.as_bytes(), PRIVATE)?;
    let staged_cert = Staged::write(&cert_out, certificate.as_bytes(), PUBLIC)?;
    staged_key.commit()?;
    if let Err(error) = staged_cert.commit() {
        let _ = std::fs::remove_file(&key_out);
        return Err(error);
    }
    let until = time::OffsetDateTime::from_unix_timestamp(validity.not_after)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    println!(
        "key:         {} (0600; it never left this machine)",
        key_out.display()
    );
    println!("certificate: {} (valid until {until})", cert_out.display());

    if let Some(context_name) = &args.set_context {
        let file = kubeconfig::file_to_edit(kubeconfig_path)?;
        let merged = kubeconfig::read(kubeconfig_path)?;
        let (_, context) = kubeconfig::context_of(&merged, args.cluster.context.as_deref())?;
        let user = AuthInfo {
            client_certificate: Some(absolute(&cert_out)?.display().to_string()),
            client_key: Some(absolute(&key_out)?.display().to_string()),
            ..AuthInfo::default()
        };
        kubeconfig::set_user_and_context(
            &file,
            context_name,
            user,
            &context.cluster,
            context.namespace,
        )?;
        println!(
            "context:     {context_name} in {} (try: kubectl --context {context_name} auth whoami)",
            file.display()
        );
    }
    Ok(Exit::Issued)
}

/// Print what happened to a CSR that gave no certificate, and the exit code that says it.
pub fn report_unfinished(outcome: &Outcome, name: &str) -> Exit {
    let exit = match outcome {
        Outcome::Issued(_) => return Exit::Issued,
        Outcome::Denied { reason, message } => {
            say(&format!("denied: {reason}: {message}"));
            Exit::Denied
        }
        Outcome::Failed { reason, message } => {
            say(&format!("failed: {reason}: {message}"));
            Exit::Failed
        }
        Outcome::StillPending { .. } => {
            say("still pending when --timeout ran out");
            Exit::StillPending
        }
        Outcome::NotIssued => {
            say("approved, but not issued when --timeout ran out");
            Exit::NotIssued
        }
        Outcome::Interrupted => {
            say(&format!(
                "interrupted; nothing was written (CSR {name} stays on the cluster)"
            ));
            Exit::Interrupted
        }
    };
    if let Some(advice) = follow::final_advice(outcome, name) {
        say(&format!("what to do: {advice}"));
    }
    exit
}

/// --common-name, which the exec plugin needs (it must not ask who you are with a certificate
/// that may be somebody else's by then).
pub fn common_name_given(args: &CertificateArgs) -> Result<String, UserError> {
    match args.common_name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => Ok(name.to_owned()),
        _ => Err(UserError::Input(
            "--common-name is required: `csr-warden request --exec` writes it in the stanza".into(),
        )),
    }
}

/// --common-name, else the username the cluster knows the caller by.
pub async fn common_name(
    client: &kube::Client,
    args: &CertificateArgs,
) -> Result<String, UserError> {
    if let Some(name) = &args.common_name {
        if name.trim().is_empty() {
            return Err(UserError::Input("--common-name must not be empty".into()));
        }
        return Ok(name.clone());
    }
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = reviews
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| {
            UserError::api("cannot ask the cluster who you are (pass --common-name)", e)
        })?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            UserError::Input("the cluster did not say who you are: pass --common-name".into())
        })
}

pub fn expiration(args: &CertificateArgs, default: i32) -> Result<i32, UserError> {
    let seconds = args.expiration.unwrap_or(default);
    if seconds < MIN_EXPIRATION {
        return Err(UserError::Input(format!(
            "--expiration must be at least 10m (600 s): the API server refuses less; {seconds} s was given"
        )));
    }
    Ok(seconds)
}

/// `<cn>-<8 random hex>`: unique enough not to collide with the user's earlier requests.
pub fn csr_name(common_name: &str) -> Result<String, UserError> {
    let mut random = [0u8; 4];
    getrandom::fill(&mut random)
        .map_err(|e| UserError::Key(format!("no randomness for the CSR's name: {e}")))?;
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{}-{suffix}", super::cache::safe_name(common_name)))
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn absolute(path: &Path) -> Result<PathBuf, UserError> {
    std::path::absolute(path).map_err(|e| UserError::file("cannot resolve", path, e))
}

/// `--exec`: the kubeconfig user (and context) that has kubectl run `csr-warden credential`.
fn print_exec(args: &RequestArgs, common_name: &str, expiration: i32) -> Result<Exit, UserError> {
    let kubeconfig_path = args.cluster.kubeconfig.as_deref();
    let merged = kubeconfig::read(kubeconfig_path)?;
    let (bootstrap, context) = kubeconfig::context_of(&merged, args.cluster.context.as_deref())?;
    let command = std::env::current_exe()
        .map_err(|e| UserError::file("cannot find this program's own path", "csr-warden", e))?;
    let certificate = &args.certificate;
    let mut plugin_args = vec![
        "credential".to_owned(),
        "--bootstrap-context".to_owned(),
        bootstrap.clone(),
        "--common-name".to_owned(),
        common_name.to_owned(),
    ];
    for group in &certificate.groups {
        plugin_args.extend(["--group".to_owned(), group.clone()]);
    }
    plugin_args.extend([
        "--signer".to_owned(),
        certificate.signer.clone(),
        "--usages".to_owned(),
        certificate.usages.join(","),
        "--expiration".to_owned(),
        format!("{expiration}s"),
        "--key-type".to_owned(),
        clap::ValueEnum::to_possible_value(&certificate.key_type)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_else(|| "ecdsa-p256".to_owned()),
    ]);
    if let Some(fraction) = args.renew_when_remaining {
        plugin_args.extend(["--renew-when-remaining".to_owned(), fraction.to_string()]);
    }
    if let Some(path) = kubeconfig_path {
        plugin_args.extend([
            "--kubeconfig".to_owned(),
            absolute(path)?.display().to_string(),
        ]);
    }
    let exec = ExecConfig {
        api_version: Some("client.authentication.k8s.io/v1".into()),
        command: Some(command.display().to_string()),
        args: Some(plugin_args),
        // The bootstrap context may be an OIDC login that needs the terminal.
        interactive_mode: Some(ExecInteractiveMode::IfAvailable),
        install_hint: Some(
            "csr-warden is not on PATH: install it (csr-warden README, \"The user's flow\")".into(),
        ),
        ..ExecConfig::default()
    };
    let user = AuthInfo {
        exec: Some(exec),
        ..AuthInfo::default()
    };
    let user_name = args
        .set_context
        .clone()
        .unwrap_or_else(|| format!("{}@{}", common_name, context.cluster));
    match &args.set_context {
        Some(name) => {
            let file = kubeconfig::file_to_edit(kubeconfig_path)?;
            kubeconfig::set_user_and_context(
                &file,
                name,
                user,
                &context.cluster,
                context.namespace,
            )?;
            println!(
                "context {name} in {}: kubectl runs `csr-warden credential`, which requests with context {bootstrap} the first time and renews by itself (try: kubectl --context {name} auth whoami)",
                file.display()
            );
        }
        None => {
            #[derive(serde::Serialize)]
            struct Snippet {
                users: Vec<kube::config::NamedAuthInfo>,
                contexts: Vec<kube::config::NamedContext>,
            }
            let snippet = Snippet {
                users: vec![kube::config::NamedAuthInfo {
                    name: user_name.clone(),
                    auth_info: Some(user),
                    ..Default::default()
                }],
                contexts: vec![kube::config::NamedContext {
                    name: user_name.clone(),
                    context: Some(kube::config::Context {
                        cluster: context.cluster.clone(),
                        user: Some(user_name),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
            };
            let text = serde_saphyr::to_string(&snippet)
                .map_err(|e| UserError::Input(format!("cannot print the stanza: {e}")))?;
            println!(
                "# Paste into your kubeconfig (or rerun with --set-context NAME to have it written):"
            );
            print!("{text}");
        }
    }
    Ok(Exit::Issued)
}
