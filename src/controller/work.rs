//! The workers: a fixed number of tasks, each taking the next CSR from the [`WorkQueue`] of its
//! lane and reconciling it. The numbers bound the requests csr-warden has in flight (and so the
//! connections it holds to the API server), however large the backlog.
//!
//! Two lanes, so that a slow answer never holds up a CSR that does not need it: kubelet client
//! CSRs, whose decision waits on SubjectAccessReviews, have workers of their own; everything else
//! (allow-listed users, kubelet serving requests decided from the Node index, signing) never
//! queues behind them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::Notify;

use super::queue::{Placement, WorkQueue};
use super::{Context, reconcile, retry_delay};
use crate::facts::NodeChange;
use crate::live::Live;
use crate::policy::{NODE_USER_PREFIX, SIGNER_KUBELET_CLIENT, SIGNER_KUBELET_SERVING};

/// The queue shared by the watch, the resync and the workers.
pub struct Work {
    store: Store<CertificateSigningRequest>,
    live: Arc<Live>,
    state: Mutex<State>,
    /// One per lane: a wake-up for one lane's workers is never taken by the other's.
    wake: [Notify; 2],
}

/// Which workers take a CSR. Fixed by its signer, so one CSR is never in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Everything that needs no SubjectAccessReview.
    Main = 0,
    /// Kubelet client CSRs: each decision waits on SubjectAccessReviews.
    Reviews = 1,
}

impl Lane {
    pub fn of(csr: &CertificateSigningRequest) -> Lane {
        if csr.spec.signer_name == SIGNER_KUBELET_CLIENT {
            Lane::Reviews
        } else {
            Lane::Main
        }
    }
}

#[derive(Default)]
struct State {
    queues: [WorkQueue; 2],
    /// Fresh copies the resync fetched of CSRs the cache missed or holds stale: used instead
    /// of the cached copy for their next reconcile.
    fresh: HashMap<String, Arc<CertificateSigningRequest>>,
    closed: bool,
}

/// Where a CSR goes in the queue: its requester's lane, by creation time.
pub fn placement(csr: &CertificateSigningRequest) -> Placement {
    Placement {
        requester: csr.spec.username.clone().unwrap_or_default(),
        created: csr
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(i64::MAX),
    }
}

impl Work {
    pub fn new(store: Store<CertificateSigningRequest>, live: Arc<Live>) -> Self {
        Work {
            store,
            live,
            state: Mutex::new(State::default()),
            wake: [Notify::new(), Notify::new()],
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a CSR if it is one of ours and something is still to be done with it.
    pub fn offer(&self, csr: &CertificateSigningRequest) {
        if !self.wanted(csr) {
            return;
        }
        let lane = Lane::of(csr);
        self.lock().queues[lane as usize].add(&csr.name_any(), placement(csr));
        self.wake[lane as usize].notify_one();
    }

    /// Queue every CSR in `csrs` that needs work, oldest first.
    pub fn offer_all(&self, mut csrs: Vec<Arc<CertificateSigningRequest>>) {
        csrs.retain(|csr| self.wanted(csr));
        csrs.sort_by_key(|csr| (placement(csr).created, csr.name_any()));
        {
            let mut state = self.lock();
            for csr in &csrs {
                state.queues[Lane::of(csr) as usize].add(&csr.name_any(), placement(csr));
            }
        }
        for wake in &self.wake {
            wake.notify_waiters();
            wake.notify_one();
        }
    }

    /// Queue the kubelet serving CSRs that a change of Node addresses concerns: those of that
    /// Node (the requester is the node itself), or all of them after a relist.
    pub fn offer_serving(&self, change: &NodeChange) {
        let requester = match change {
            NodeChange::Relisted => None,
            NodeChange::Node(name) => Some(format!("{NODE_USER_PREFIX}{name}")),
        };
        let concerned: Vec<_> = self
            .store
            .state()
            .into_iter()
            .filter(|csr| csr.spec.signer_name == SIGNER_KUBELET_SERVING)
            .filter(|csr| {
                requester
                    .as_deref()
                    .is_none_or(|r| csr.spec.username.as_deref() == Some(r))
            })
            .collect();
        if !concerned.is_empty() {
            self.offer_all(concerned);
        }
    }

    /// Queue every cached CSR again (a new policy, or leadership just won).
    pub fn offer_everything(&self) {
        self.offer_all(self.store.state());
    }

    /// Queue a fresh copy the resync fetched; it is reconciled instead of the cached one.
    pub fn offer_fresh(&self, csr: CertificateSigningRequest) {
        let name = csr.name_any();
        let placement = placement(&csr);
        let lane = Lane::of(&csr);
        {
            let mut state = self.lock();
            state.fresh.insert(name.clone(), Arc::new(csr));
            state.queues[lane as usize].add(&name, placement);
        }
        self.wake[lane as usize].notify_one();
    }

    /// The CSR is queued, being worked, or has a fresh copy waiting.
    pub fn holds(&self, name: &str) -> bool {
        let state = self.lock();
        state.queues.iter().any(|q| q.holds(name)) || state.fresh.contains_key(name)
    }

    pub fn forget(&self, name: &str) {
        let mut state = self.lock();
        for queue in &mut state.queues {
            queue.forget(name);
        }
        state.fresh.remove(name);
    }

    fn wanted(&self, csr: &CertificateSigningRequest) -> bool {
        super::watch::wanted(csr, &self.live)
    }

    /// Stop handing out work; workers finish the CSR they hold and return.
    pub fn close(&self) {
        self.lock().closed = true;
        for wake in &self.wake {
            wake.notify_waiters();
        }
    }

    /// The next CSR of `lane` to reconcile, with the copy to reconcile; None once closed.
    async fn take(&self, lane: Lane) -> Option<(String, Option<Arc<CertificateSigningRequest>>)> {
        loop {
            // Register for a wake-up before looking, so a notify between the look and the
            // wait is not lost.
            let woken = self.wake[lane as usize].notified();
            {
                let mut state = self.lock();
                if state.closed {
                    return None;
                }
                if let Some(name) = state.queues[lane as usize].take() {
                    let copy = state
                        .fresh
                        .remove(&name)
                        .or_else(|| self.store.get(&ObjectRef::new(&name)));
                    return Some((name, copy));
                }
            }
            woken.await;
        }
    }

    fn done(&self, lane: Lane, name: &str) {
        self.lock().queues[lane as usize].done(name);
        self.wake[lane as usize].notify_one();
    }

    /// CSRs waiting for a worker and CSRs being worked, for the metrics and tests.
    pub fn sizes(&self) -> (usize, usize) {
        let state = self.lock();
        (
            state.queues.iter().map(WorkQueue::waiting).sum(),
            state.queues.iter().map(WorkQueue::working).sum(),
        )
    }
}

/// One worker: take, reconcile, repeat. A failed CSR is queued again after its backoff; the
/// worker moves on to the next one meanwhile.
pub async fn work_forever(work: Arc<Work>, ctx: Arc<Context>, lane: Lane) {
    while let Some((name, copy)) = work.take(lane).await {
        // Gone from the cache: deleted; nothing to do.
        if let Some(csr) = copy {
            match reconcile(csr.clone(), &ctx).await {
                Ok(()) => {
                    ctx.failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&name);
                }
                Err(error) => {
                    let delay = retry_delay(&ctx, &name, &error);
                    let retry = work.clone();
                    let name = name.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        // The cache's copy by then: the watch may have brought a newer one.
                        let latest = retry.store.get(&ObjectRef::new(&name)).unwrap_or(csr);
                        retry.offer(&latest);
                    });
                }
            }
        }
        work.done(lane, &name);
    }
}
