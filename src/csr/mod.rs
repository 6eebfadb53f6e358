//! All Kubernetes I/O: watch CSRs, ask the cluster for facts, write approvals, denials,
//! certificates and Failed conditions, record Events and the audit log line.
//!
//! Every write carries the resourceVersion it was decided on. A 409 means somebody else changed
//! the CSR first (another replica, a human with kubectl): we re-read and decide again, so nothing
//! is decided or signed twice.

//! Where to look:
//! - `watch`: the CSR watch that feeds the cache and the work queue, and the resync behind it.
//! - `work`: the bounded pool of workers and the order they take CSRs in (`queue`).
//! - `decide`: facts from the cluster, the policy's decision, the /approval write.
//! - `sign`: the certificate (or Failed condition) in /status.
//! - `record`: Events and the audit log line.

mod context;
mod decide;
mod error;
mod housekeeping;
mod memo;
pub mod object;
mod record;
mod sign;
pub mod watch;
pub mod work;

use std::sync::Arc;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::Api;
use kube::runtime::reflector;
use kube::{Client, ResourceExt};

pub use context::{Context, Settings};
pub use error::Error;
use error::is_not_found;

use crate::csr::object::{CsrState, csr_state};
use crate::facts::{FactChange, Facts};
use crate::kube::work::Lane;
use crate::ops::live::Live;

/// The reporting controller of csr-warden's Events (`reportingComponent` in core/v1).
const REPORTER: &str = crate::CONTROLLER_NAME;
/// How often one reconcile re-reads and retries after a 409 before giving up for a backoff.
const MAX_CONFLICT_RETRIES: usize = 5;
/// Attempts at writing one Event before it is given up (the decision is in the log regardless).
const EVENT_ATTEMPTS: u32 = 4;

/// One reconcile: look at where the CSR stands and do the one thing it needs.
pub async fn reconcile(csr: Arc<CertificateSigningRequest>, ctx: &Context) -> Result<(), Error> {
    let name = csr.name_any();
    if !object::wanted(&csr, &ctx.live) {
        tracing::debug!(csr = %name, signer = %csr.spec.signer_name, decision = "ignored", "not ours to decide or sign; untouched");
        return Ok(());
    }
    if !ctx.live.is_leader() {
        // Gaining leadership re-runs every CSR.
        tracing::debug!(csr = %name, "standby; the leader handles it");
        return Ok(());
    }
    let outcome = match csr_state(&csr) {
        CsrState::Pending => ctx.decide_pending((*csr).clone()).await,
        CsrState::ApprovedUnsigned => ctx.sign_approved((*csr).clone()).await,
        state => {
            tracing::debug!(csr = %name, ?state, "already final; nothing to do");
            Ok(())
        }
    };
    match outcome {
        Err(error) if is_not_found(&error) => {
            tracing::info!(csr = %name, "CSR was deleted while being handled; nothing to do");
            Ok(())
        }
        outcome => outcome,
    }
}

/// Run the controller until a shutdown signal: one watch feeding the cache and the work queue,
/// a periodic resync behind it, and `settings.concurrency` workers.
pub async fn run(client: Client, live: Arc<Live>, settings: Settings) {
    let concurrency = settings.concurrency.max(1);
    let resync_interval = settings.resync_interval;
    let watch_timeout = settings.watch_timeout_seconds;
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let (store, writer) = reflector::store();
    let work = Arc::new(work::Work::new(
        store.clone(),
        work::CsrRules { live: live.clone() },
    ));
    // A serving CSR left pending while its Node had no addresses (or before the Node index or
    // the API server's addresses synced) is decided again when they change.
    let facts = Facts::watched(client.clone(), {
        let work = Arc::downgrade(&work);
        move |change: FactChange| {
            if let Some(work) = work.upgrade() {
                work::offer_serving(&work, &change);
            }
        }
    })
    .count_privilege_reviews_in(live.metrics.privilege_reviews.clone());
    if live
        .policy()
        .role(crate::policy::SIGNER_KUBELET_SERVING)
        .is_some_and(|role| role.decides())
    {
        // Synced before the first kubelet serving request, not started by it.
        facts.watch();
    }
    let probe_client = client.clone();
    let unconfirmed = Arc::new(sign::Unconfirmed::default());
    let ctx = Arc::new(Context::new(
        client,
        live.clone(),
        settings,
        facts,
        work.clone(),
        unconfirmed.clone(),
    ));
    let retrying = tokio::spawn(crate::kube::work::retry_forever(work.clone(), move || {
        let client = probe_client.clone();
        async move { crate::kube::request::ready(&client).await }
    }));

    tokio::spawn(housekeeping::keep_house(
        store.clone(),
        work.clone(),
        ctx.clone(),
        live.clone(),
    ));
    let (stale_tx, stale_rx) = tokio::sync::mpsc::unbounded_channel();
    let finished = Arc::new(watch::Finished::default());
    let watching = tokio::spawn(watch::watch_forever(
        csrs.clone(),
        writer,
        work.clone(),
        live.clone(),
        watch_timeout,
        stale_rx,
        watch::Seen {
            unconfirmed,
            finished: finished.clone(),
        },
    ));
    let resyncing = tokio::spawn(watch::resync_forever(
        csrs,
        store,
        work.clone(),
        live.clone(),
        resync_interval,
        stale_tx,
        finished,
    ));
    // SubjectAccessReviews get their own workers, half as many: a slow or hanging review holds
    // up only the kubelet client CSRs that wait for one.
    let reviewers = (concurrency / 2).max(1);
    let workers: Vec<_> = (0..concurrency)
        .map(|_| Lane::Main)
        .chain((0..reviewers).map(|_| Lane::Reviews))
        .map(|lane| {
            tokio::spawn(crate::kube::work::work_forever(
                work.clone(),
                ctx.clone(),
                lane,
            ))
        })
        .collect();

    shutdown_signal().await;
    tracing::info!("shutting down: finishing the CSRs in hand");
    watching.abort();
    resyncing.abort();
    retrying.abort();
    work.close();
    for worker in workers {
        let _ = worker.await;
    }
}

/// SIGTERM (what the kubelet sends) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
