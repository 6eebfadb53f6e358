//! The workers: a fixed number of tasks, each taking the next CSR from the [`WorkQueue`] of its
//! lane and reconciling it. The numbers bound the requests csr-warden has in flight (and so the
//! connections it holds to the API server), however large the backlog.
//!
//! Two lanes, so that a slow answer never holds up a CSR that does not need it: kubelet client
//! CSRs, whose decision waits on SubjectAccessReviews, have workers of their own; everything else
//! (allow-listed users, kubelet serving requests decided from the Node index, signing) never
//! queues behind them.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::Notify;

use super::{Context, Error, reconcile};
use crate::csr::object::{CsrState, csr_state};
use crate::facts::NodeChange;
use crate::kube::queue::{Placement, WorkQueue};
use crate::ops::live::Live;
use crate::ops::metrics::ErrorLabels;
use crate::policy::{NODE_USER_PREFIX, SIGNER_KUBELET_CLIENT, SIGNER_KUBELET_SERVING};

/// Retry delay after a failed reconcile of one CSR (429, 5xx, network, conflicts): doubles from
/// the first to the last, per CSR, and resets when that CSR next succeeds. Never given up.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(60);

/// The queue shared by the watch, the resync and the workers.
pub struct Work {
    store: Store<CertificateSigningRequest>,
    live: Arc<Live>,
    state: Mutex<State>,
    /// One per lane: a wake-up for one lane's workers is never taken by the other's.
    wake: [Notify; 2],
    /// Tells [`retry_forever`] that the earliest deadline may have changed.
    retry_wake: Notify,
}

/// Which workers take a CSR: a pending kubelet client CSR waits on a SubjectAccessReview, so it
/// goes to the review workers, where a slow or hanging authorizer holds up nothing else;
/// everything else (signing an approved kubelet client CSR too) goes to the main workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Everything that needs no SubjectAccessReview.
    Main = 0,
    /// Pending kubelet client CSRs: each decision waits on SubjectAccessReviews.
    Reviews = 1,
}

impl Lane {
    pub fn of(csr: &CertificateSigningRequest) -> Lane {
        if csr.spec.signer_name == SIGNER_KUBELET_CLIENT && csr_state(csr) == CsrState::Pending {
            Lane::Reviews
        } else {
            Lane::Main
        }
    }

    fn other(self) -> Lane {
        match self {
            Lane::Main => Lane::Reviews,
            Lane::Reviews => Lane::Main,
        }
    }
}

/// One failing CSR's retries, as client-go's rate limiter keeps them.
struct Failing {
    /// The CSR object that failed: a CSR recreated under the same name starts afresh.
    uid: Option<String>,
    failures: u32,
    /// When it is due, and whether the last failure was the connection's, not the CSR's.
    due: Instant,
    connection: bool,
}

#[derive(Default)]
struct State {
    queues: [WorkQueue; 2],
    /// CSRs in backoff after a failed reconcile, and when each is due.
    failing: HashMap<String, Failing>,
    retry_at: BTreeSet<(Instant, String)>,
    /// Fresh copies the resync fetched of CSRs the cache missed or holds stale: used instead
    /// of the cached copy for their next reconcile.
    fresh: HashMap<String, Arc<CertificateSigningRequest>>,
    closed: bool,
}

impl State {
    /// Queue `csr` in its lane's queue (the caller wakes that lane); returns the lane.
    /// Queue `csr` in its lane, unless the other lane holds it (waiting, or being worked):
    /// then it stays there until done, so no two workers ever hold one CSR at once.
    fn queue(&mut self, csr: &CertificateSigningRequest) -> Lane {
        let name = csr.name_any();
        let wanted = Lane::of(csr);
        let lane = if self.queues[wanted.other() as usize].holds(&name) {
            wanted.other()
        } else {
            wanted
        };
        self.queues[lane as usize].add(&name, placement(csr));
        lane
    }
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
            retry_wake: Notify::new(),
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
        let lane = self.lock().queue(csr);
        self.wake[lane as usize].notify_one();
    }

    /// Queue every CSR in `csrs` that needs work, oldest first.
    pub fn offer_all(&self, mut csrs: Vec<Arc<CertificateSigningRequest>>) {
        csrs.retain(|csr| self.wanted(csr));
        csrs.sort_by_key(|csr| (placement(csr).created, csr.name_any()));
        {
            let mut state = self.lock();
            for csr in &csrs {
                state.queue(csr);
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
        let csr = Arc::new(csr);
        let lane = {
            let mut state = self.lock();
            state.fresh.insert(csr.name_any(), csr.clone());
            state.queue(&csr)
        };
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
        if let Some(failing) = state.failing.remove(name) {
            state.retry_at.remove(&(failing.due, name.to_owned()));
        }
    }

    /// `name` was reconciled: its backoff is over.
    fn succeeded(&self, name: &str) {
        let mut state = self.lock();
        if let Some(failing) = state.failing.remove(name) {
            state.retry_at.remove(&(failing.due, name.to_owned()));
        }
    }

    /// `csr` failed: when it is tried again (its consecutive failures, the delay). The copy
    /// that failed is kept for the retry when the cache has none (a CSR the resync found), so
    /// a CSR is never lost between a failed try and its retry.
    fn failed(
        &self,
        name: &str,
        csr: Arc<CertificateSigningRequest>,
        error: &Error,
    ) -> (u32, Duration) {
        let uid = csr.metadata.uid.clone();
        let cached = self.store.get(&ObjectRef::new(name)).is_some();
        let mut state = self.lock();
        let failures = match state.failing.remove(name) {
            Some(before) => {
                state.retry_at.remove(&(before.due, name.to_owned()));
                if before.uid == uid {
                    before.failures + 1
                } else {
                    1
                }
            }
            None => 1,
        };
        let delay = backoff(failures, jitter());
        let due = Instant::now() + delay;
        state.failing.insert(
            name.to_owned(),
            Failing {
                uid,
                failures,
                due,
                connection: is_connection_error(error),
            },
        );
        state.retry_at.insert((due, name.to_owned()));
        if !cached {
            state.fresh.insert(name.to_owned(), csr);
        }
        drop(state);
        self.retry_wake.notify_one();
        (failures, delay)
    }

    /// Consecutive failed reconciles of `name` so far.
    pub fn failures_of(&self, name: &str) -> u32 {
        self.lock().failing.get(name).map_or(0, |f| f.failures)
    }

    /// The API server answers again (the watch has relisted): CSRs in backoff only because
    /// the connection failed are tried now, not after their delay.
    pub fn retry_connection_failures_now(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        let due: Vec<(String, Instant)> = state
            .failing
            .iter()
            .filter(|(_, f)| f.connection && f.due > now)
            .map(|(name, f)| (name.clone(), f.due))
            .collect();
        for (name, was) in due {
            state.retry_at.remove(&(was, name.clone()));
            state.retry_at.insert((now, name.clone()));
            if let Some(failing) = state.failing.get_mut(&name) {
                failing.due = now;
            }
        }
        drop(state);
        self.retry_wake.notify_one();
    }

    /// Offer every CSR whose backoff is over by `now`: the cache's copy (the watch may have
    /// brought a newer one), else the copy that failed.
    fn offer_due(&self, now: Instant) {
        let due: Vec<String> = {
            let mut state = self.lock();
            let mut due = Vec::new();
            while let Some((at, name)) = state.retry_at.first().cloned() {
                if at > now {
                    break;
                }
                state.retry_at.pop_first();
                due.push(name);
            }
            due
        };
        for name in due {
            match self.store.get(&ObjectRef::new(&name)) {
                Some(cached) => self.offer(&cached),
                None => {
                    let lane = {
                        let mut state = self.lock();
                        let copy = state.fresh.get(&name).cloned();
                        copy.map(|copy| state.queue(&copy))
                    };
                    if let Some(lane) = lane {
                        self.wake[lane as usize].notify_one();
                    }
                }
            }
        }
    }

    fn wanted(&self, csr: &CertificateSigningRequest) -> bool {
        crate::csr::object::wanted(csr, &self.live)
    }

    /// Stop handing out work; workers finish the CSR they hold and return.
    pub fn close(&self) {
        self.lock().closed = true;
        for wake in &self.wake {
            wake.notify_waiters();
        }
        self.retry_wake.notify_waiters();
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
                Ok(()) => work.succeeded(&name),
                Err(error) => {
                    let (failures, delay) = work.failed(&name, csr, &error);
                    tracing::warn!(csr = %name, error = %error, kind = error.label(), failures, retry_in = ?delay, "reconcile failed; retrying");
                    ctx.live
                        .metrics
                        .reconcile_errors
                        .get_or_create(&ErrorLabels {
                            kind: error.label().to_owned(),
                        })
                        .inc();
                }
            }
        }
        work.done(lane, &name);
    }
}

/// Offer each failed CSR again when its backoff is over: one task and one ordered set of
/// deadlines, however many CSRs are failing.
pub async fn retry_forever(work: Arc<Work>) {
    loop {
        let woken = work.retry_wake.notified();
        let next = {
            let state = work.lock();
            if state.closed {
                return;
            }
            state.retry_at.first().map(|(at, _)| *at)
        };
        match next {
            None => woken.await,
            Some(at) if at > Instant::now() => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = woken => {}
                }
            }
            Some(_) => work.offer_due(Instant::now()),
        }
    }
}

/// How long a CSR waits after its `failures`-th failure in a row: doubling from the first delay
/// to the last, times a random factor in [1, 1.5) so that CSRs that failed together (an outage)
/// do not all come back in the same instant.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    FIRST_RETRY
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(LAST_RETRY)
        .mul_f64(1.0 + 0.5 * jitter.clamp(0.0, 1.0))
}

fn jitter() -> f64 {
    f64::from(getrandom::u32().unwrap_or(0)) / f64::from(u32::MAX)
}

/// A failure that says nothing about the CSR: the API server could not be reached or did not
/// answer. Retried at once when the watch reconnects.
fn is_connection_error(error: &Error) -> bool {
    let transport = |e: &kube::Error| !matches!(e, kube::Error::Api(_));
    match error {
        Error::Kube { source, .. } => transport(source),
        Error::Facts { source, .. } => source.kube().is_some_and(transport),
        _ => false,
    }
}
