//! Wiring only: flags → telemetry → policy + CA → client → controller + health server.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use csr_warden::ca::CertificateAuthority;
use csr_warden::config::{Cli, Command, PolicyCommand, RunArgs, load_policy};
use csr_warden::controller::{self, Settings};
use csr_warden::{check, http, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => ExitCode::from(check::run(&args)),
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
    let ca = CertificateAuthority::load(&args.ca_cert, &args.ca_key).map_err(|e| e.to_string());
    match &ca {
        Ok(ca) => tracing::info!(subject = ca.subject(), not_after = %ca.not_after(), "CA loaded"),
        Err(error) => {
            tracing::error!(%error, "CA not loaded: approved CSRs will be marked Failed until it is fixed")
        }
    }
    tracing::info!(signers = ?policy.signer_names, dry_run = args.dry_run, "policy loaded");

    let config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration: run in a pod, or set KUBECONFIG")?;
    let client = kube::Client::try_from(config).context("cannot build the Kubernetes client")?;

    let listener = http::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen on {} (--http-addr)", args.http_addr))?;
    tracing::info!(addr = %args.http_addr, "serving /healthz and /readyz");
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(http::serve(listener, ready_rx));

    let settings = Settings {
        policy,
        ca,
        dry_run: args.dry_run,
        instance: args.instance,
    };
    controller::run(client, settings, ready_tx).await;
    tracing::info!("shut down");
    Ok(())
}
