//! Wiring only: flags → telemetry → policy + CA → client → controller, leader election,
//! file reloads and the HTTP server.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use csr_warden::config::{Cli, Command, PolicyCommand, RunArgs, load_policy};
use csr_warden::controller::{self, Settings};
use csr_warden::leader::{self, LeaseSettings};
use csr_warden::live::{self, Live, Sources};
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
    let sources = Sources {
        policy: args.policy.clone(),
        ca_cert: args.ca_cert.clone(),
        ca_key: args.ca_key.clone(),
    };
    // A bad policy stops start-up: better no controller than one that approves the wrong thing.
    let policy = load_policy(&sources.policy)?;
    tracing::info!(signers = ?policy.signer_names, dry_run = args.dry_run, "policy loaded");
    let ca = live::load_ca(&sources);
    match &ca {
        Ok(ca) => tracing::info!(subject = ca.subject(), not_after = %ca.not_after(), "CA loaded"),
        Err(error) => {
            tracing::error!(%error, "CA not loaded: approved CSRs are marked Failed until it is fixed")
        }
    }
    let live = Live::new(policy, ca, args.leader_election);

    let config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration: run in a pod, or set KUBECONFIG")?;
    let client = kube::Client::try_from(config).context("cannot build the Kubernetes client")?;

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

    let settings = Settings {
        dry_run: args.dry_run,
        instance: args.instance,
        concurrency: usize::from(args.concurrency),
        resync_interval: Duration::from_secs(args.resync_interval_seconds),
        watch_timeout_seconds: args.watch_timeout_seconds,
    };
    controller::run(client, live, settings).await;
    // Hand the lease over now rather than making a standby wait for it to expire.
    let _ = stop_leading.send(());
    if let Some(election) = election {
        let _ = election.await;
    }
    tracing::info!("shut down");
    Ok(())
}
