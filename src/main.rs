//! Wiring only: flags → telemetry → policy + CA → client → controller, leader election,
//! file reloads and the HTTP server.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use csr_warden::cli::{Cli, Command, PolicyCommand, RunArgs};
use csr_warden::csr::{self, Settings};
use csr_warden::kube::client;
use csr_warden::kube::leader::{self, LeaseSettings};
use csr_warden::ops::live::{self, Live, Sources};
use csr_warden::ops::{http, telemetry};
use csr_warden::policy::CaPaths;
use csr_warden::policy::file::load_policy;
use csr_warden::x509::ca::ClusterCa;
use csr_warden::{check, pods, trust_bundles, user};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => ExitCode::from(check::run(&args)),
        Command::Request(args) => user::request::run(&args).into(),
        Command::Credential(args) => user::credential::run(&args).into(),
        Command::Policy(PolicyCommand::Validate { path }) => match load_policy(&path) {
            Ok(_) => {
                println!("{}: valid", path.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{error}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("csr-warden: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    eprintln!("csr-warden: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    // A bad policy stops start-up: better no controller than one that approves the wrong thing.
    let policy = load_policy(&args.policy)?;
    tracing::info!(signers = ?policy.signers.iter().map(|(name, s)| format!("{name}={}", s.role.as_str())).collect::<Vec<_>>(), dry_run = args.dry_run, "policy loaded");

    let mut config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration: run in a pod, or set KUBECONFIG")?;
    // One retry layer, ours: kube-client's own would retry a 429/503 up to 15 times with
    // delays growing to minutes underneath our per-CSR backoff, holding a worker meanwhile.
    config.default_retry = false;
    let sources = Sources {
        policy: args.policy.clone(),
        default_ca: CaPaths {
            cert: args.ca_cert.clone(),
            key: args.ca_key.clone(),
            pkcs11: None,
        },
        cluster_ca: cluster_ca(&config, &args.cluster_ca_file)?,
    };
    let live = Live::start(policy, &sources, args.leader_election)?;
    let client = client::bounded(config).context("cannot build the Kubernetes client")?;

    let listener = http::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen on {} (--http-addr)", args.http_addr))?;
    let addr = listener
        .local_addr()
        .context("no local address for the HTTP listener")?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    tokio::spawn(http::serve(listener, live.clone()));
    tokio::spawn(live::reload_forever(
        live.clone(),
        sources,
        Duration::from_millis(args.reload_interval_ms),
    ));

    let (stop_leading, shutdown) = tokio::sync::oneshot::channel();
    let election = args.leader_election.then(|| {
        tokio::spawn(leader::run(
            client.clone(),
            LeaseSettings {
                namespace: args.lease_namespace.clone(),
                name: args.lease_name.clone(),
                identity: args.instance.clone(),
                duration_seconds: args.lease_duration_seconds,
            },
            live.clone(),
            shutdown,
        ))
    });

    // Pod certificates and trust bundles beside the CSR controller, when the policy asks for
    // them; each waits (and says so once) while the API server does not serve its API.
    let pods = (!live.policy().pod_signers.is_empty()).then(|| {
        tokio::spawn(pods::run(
            client.clone(),
            live.clone(),
            args.instance.clone(),
            args.dry_run,
            usize::from(args.concurrency),
        ))
    });
    let bundles = tokio::spawn(trust_bundles::run(
        client.clone(),
        live.clone(),
        args.dry_run,
    ));

    let settings = Settings {
        dry_run: args.dry_run,
        instance: args.instance,
        concurrency: usize::from(args.concurrency),
        resync_interval: Duration::from_secs(args.resync_interval_seconds),
        watch_timeout_seconds: args.watch_timeout_seconds,
    };
    csr::run(client, live, settings).await;
    bundles.abort();
    if let Some(pods) = pods {
        pods.abort();
    }
    // Hand the lease over now rather than making a standby wait for it to expire.
    let _ = stop_leading.send(());
    if let Some(election) = election {
        let _ = election.await;
    }
    tracing::info!("shut down");
    Ok(())
}

/// The cluster's own CA: what the client trusts for the API server (the service account's
/// ca.crt in a pod, the kubeconfig's certificate-authority outside), and any --cluster-ca-file.
fn cluster_ca(config: &kube::Config, extra: &[std::path::PathBuf]) -> anyhow::Result<ClusterCa> {
    let bundles = extra
        .iter()
        .map(|path| {
            std::fs::read(path)
                .with_context(|| format!("cannot read --cluster-ca-file {}", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut origin = vec!["the Kubernetes configuration's certificate authority".to_owned()];
    origin.extend(extra.iter().map(|p| p.display().to_string()));
    Ok(ClusterCa::from_certificates(
        config.root_cert.as_deref().unwrap_or_default(),
        &bundles,
        origin.join(", "),
    ))
}
