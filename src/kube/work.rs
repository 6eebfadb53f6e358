//! The workers, for every kind csr-warden answers (CSRs, PodCertificateRequests): a fixed
//! number of tasks, each taking the next object from the [`WorkQueue`] of its lane and
//! reconciling it. The numbers bound the requests in flight (and so the connections held to the
//! API server), however large the backlog.
//!
//! - Per object: queued at most once, worked by one worker at a time, oldest first and fair
//!   between requesters ([`WorkQueue`]).
//! - Two lanes, so that a slow answer never holds up an object that does not need it (the CSR
//!   controller sends the CSRs that wait on SubjectAccessReviews to a lane of their own).
//! - A failed reconcile is retried after a backoff of its own ([`backoff`]), never given up;
//!   the copy that failed is kept for the retry when the cache has none.
//! - A failure of the connection, not of the object, is retried at once when the API server
//!   answers again: the watch relisted, or [`retry_forever`]'s probe of `/readyz` succeeded.
//!
//! What is specific to a kind (which objects are ours, their lane and place) is its [`Rules`];
//! what is done with one is its [`Reconciler`].

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::queue::{Placement, WorkQueue, doubling};

/// Retry delay after a failed reconcile of one object (429, 5xx, network, conflicts): doubles
/// from the first to the last, per object, and resets when that object next succeeds.
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
pub const LAST_RETRY: Duration = Duration::from_secs(60);
/// While connection failures wait, how often the API server's `/readyz` is asked whether it
/// answers again.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// How long an object waits after its `failures`-th failure in a row: from [`FIRST_RETRY`],
/// doubling, to [`LAST_RETRY`], times a random factor in [1, 1.5).
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    doubling(failures.saturating_sub(1), FIRST_RETRY, LAST_RETRY, jitter)
}

fn jitter() -> f64 {
    f64::from(getrandom::u32().unwrap_or(0)) / f64::from(u32::MAX)
}

/// Which workers take an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Main = 0,
    /// Objects whose reconcile waits on SubjectAccessReviews.
    Reviews = 1,
}

impl Lane {
    fn other(self) -> Lane {
        match self {
            Lane::Main => Lane::Reviews,
            Lane::Reviews => Lane::Main,
        }
    }
}

/// What is specific to a kind: which objects are ours to work, and where they queue.
pub trait Rules<K>: Send + Sync + 'static {
    /// Ours, with something left to do.
    fn wanted(&self, object: &K) -> bool;
    /// Where it queues: its requester and its age.
    fn placement(&self, object: &K) -> Placement;
    fn lane(&self, _object: &K) -> Lane {
        Lane::Main
    }
}

/// What a worker does with an object.
pub trait Reconciler<K>: Send + Sync + 'static {
    type Error: std::fmt::Display + Send + Sync;
    fn reconcile(&self, object: Arc<K>) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// The failure says nothing about the object: the API server could not be reached or
    /// could not answer. Retried at once when it answers again.
    fn is_connection_error(&self, error: &Self::Error) -> bool;
    /// Say (log, metric) that `key` failed and when it is tried again.
    fn failed(&self, key: &str, error: &Self::Error, failures: u32, retry_in: Duration);
}

/// The key of an object in the queue: `namespace/name`, or `name` for a cluster-scoped one.
pub fn key_of<K: Resource>(object: &K) -> String {
    match object.meta().namespace.as_deref() {
        Some(namespace) => format!("{namespace}/{}", object.name_any()),
        None => object.name_any(),
    }
}

fn reference<K: Resource<DynamicType = ()>>(key: &str) -> ObjectRef<K> {
    match key.split_once('/') {
        Some((namespace, name)) => ObjectRef::new(name).within(namespace),
        None => ObjectRef::new(key),
    }
}

/// One failing object's retries, as client-go's rate limiter keeps them.
struct Failing {
    /// The object that failed: one recreated under the same name starts afresh.
    uid: Option<String>,
    failures: u32,
    due: Instant,
    /// The last failure was the connection's, not the object's.
    connection: bool,
}

struct State<K> {
    queues: [WorkQueue; 2],
    failing: HashMap<String, Failing>,
    retry_at: BTreeSet<(Instant, String)>,
    /// Copies of objects the cache does not hold (fetched by a resync, or failed while out of
    /// it): used instead of the cache for their next reconcile.
    fresh: HashMap<String, Arc<K>>,
    closed: bool,
}

impl<K> Default for State<K> {
    fn default() -> Self {
        State {
            queues: Default::default(),
            failing: Default::default(),
            retry_at: Default::default(),
            fresh: Default::default(),
            closed: false,
        }
    }
}

/// The queue shared by a kind's watch, its resync and its workers.
pub struct Work<K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static, R: Rules<K>> {
    store: Store<K>,
    rules: R,
    state: Mutex<State<K>>,
    /// One per lane: a wake-up for one lane's workers is never taken by the other's.
    wake: [Notify; 2],
    /// Tells [`retry_forever`] that the earliest deadline may have changed.
    retry_wake: Notify,
}

impl<K, R> Work<K, R>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    R: Rules<K>,
{
    pub fn new(store: Store<K>, rules: R) -> Self {
        Work {
            store,
            rules,
            state: Mutex::new(State::default()),
            wake: [Notify::new(), Notify::new()],
            retry_wake: Notify::new(),
        }
    }

    pub fn rules(&self) -> &R {
        &self.rules
    }

    pub fn store(&self) -> &Store<K> {
        &self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `object` in its lane, unless the other lane holds it (waiting, or being worked):
    /// then it stays there until done, so no two workers ever hold one object at once.
    fn queue(&self, state: &mut State<K>, object: &K) -> Lane {
        let key = key_of(object);
        let wanted = self.rules.lane(object);
        let lane = if state.queues[wanted.other() as usize].holds(&key) {
            wanted.other()
        } else {
            wanted
        };
        state.queues[lane as usize].add(&key, self.rules.placement(object));
        lane
    }

    /// Queue an object if it is ours and something is still to be done with it.
    pub fn offer(&self, object: &K) {
        if !self.rules.wanted(object) {
            return;
        }
        let lane = {
            let mut state = self.lock();
            self.queue(&mut state, object)
        };
        self.wake[lane as usize].notify_one();
    }

    /// Queue every object in `objects` that needs work, oldest first.
    pub fn offer_all(&self, mut objects: Vec<Arc<K>>) {
        objects.retain(|object| self.rules.wanted(object));
        objects.sort_by_key(|object| (self.rules.placement(object).created, key_of(&**object)));
        {
            let mut state = self.lock();
            for object in &objects {
                self.queue(&mut state, object);
            }
        }
        for wake in &self.wake {
            wake.notify_waiters();
            wake.notify_one();
        }
    }

    /// Queue the cached objects `concerned` picks (a fact they waited on arrived).
    pub fn offer_where(&self, concerned: impl Fn(&K) -> bool) {
        let objects: Vec<_> = self
            .store
            .state()
            .into_iter()
            .filter(|object| concerned(object))
            .collect();
        if !objects.is_empty() {
            self.offer_all(objects);
        }
    }

    /// Queue every cached object again (a new policy or CA, leadership just won, a relist).
    pub fn offer_everything(&self) {
        self.offer_all(self.store.state());
    }

    /// Queue a copy the cache does not hold (a resync's fresh read): it is reconciled instead
    /// of the cached one.
    pub fn offer_fresh(&self, object: K) {
        let object = Arc::new(object);
        let lane = {
            let mut state = self.lock();
            state.fresh.insert(key_of(&*object), object.clone());
            self.queue(&mut state, &object)
        };
        self.wake[lane as usize].notify_one();
    }

    /// The object is queued, being worked, or has a fresh copy waiting.
    pub fn holds(&self, key: &str) -> bool {
        let state = self.lock();
        state.queues.iter().any(|q| q.holds(key)) || state.fresh.contains_key(key)
    }

    /// The object is gone (or finished): out of the queues and its backoff.
    pub fn forget(&self, key: &str) {
        let mut state = self.lock();
        for queue in &mut state.queues {
            queue.forget(key);
        }
        state.fresh.remove(key);
        if let Some(failing) = state.failing.remove(key) {
            state.retry_at.remove(&(failing.due, key.to_owned()));
        }
    }

    /// `key` was reconciled: its backoff is over.
    fn succeeded(&self, key: &str) {
        let mut state = self.lock();
        if let Some(failing) = state.failing.remove(key) {
            state.retry_at.remove(&(failing.due, key.to_owned()));
        }
    }

    /// `object` failed: when it is tried again (its consecutive failures, the delay).
    pub fn failed(&self, key: &str, object: Arc<K>, connection: bool) -> (u32, Duration) {
        let uid = object.meta().uid.clone();
        let cached = self.store.get(&reference(key)).is_some();
        let mut state = self.lock();
        let failures = match state.failing.remove(key) {
            Some(before) => {
                state.retry_at.remove(&(before.due, key.to_owned()));
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
            key.to_owned(),
            Failing {
                uid,
                failures,
                due,
                connection,
            },
        );
        state.retry_at.insert((due, key.to_owned()));
        if !cached {
            state.fresh.insert(key.to_owned(), object);
        }
        drop(state);
        self.retry_wake.notify_one();
        (failures, delay)
    }

    /// Consecutive failed reconciles of `key` so far.
    pub fn failures_of(&self, key: &str) -> u32 {
        self.lock().failing.get(key).map_or(0, |f| f.failures)
    }

    /// Objects in backoff only because the connection failed, still waiting for their turn.
    pub fn connection_failures(&self) -> usize {
        let now = Instant::now();
        self.lock()
            .failing
            .values()
            .filter(|f| f.connection && f.due > now)
            .count()
    }

    /// The API server answers again: objects in backoff only because the connection failed
    /// are tried now, not after their delay.
    pub fn retry_connection_failures_now(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        let due: Vec<(String, Instant)> = state
            .failing
            .iter()
            .filter(|(_, f)| f.connection && f.due > now)
            .map(|(key, f)| (key.clone(), f.due))
            .collect();
        for (key, was) in due {
            state.retry_at.remove(&(was, key.clone()));
            state.retry_at.insert((now, key.clone()));
            if let Some(failing) = state.failing.get_mut(&key) {
                failing.due = now;
            }
        }
        drop(state);
        self.retry_wake.notify_one();
    }

    /// Offer every object whose backoff is over by `now`: the cache's copy (the watch may have
    /// brought a newer one), else the copy that failed.
    fn offer_due(&self, now: Instant) {
        let due: Vec<String> = {
            let mut state = self.lock();
            let mut due = Vec::new();
            while let Some((at, key)) = state.retry_at.first().cloned() {
                if at > now {
                    break;
                }
                state.retry_at.pop_first();
                due.push(key);
            }
            due
        };
        for key in due {
            match self.store.get(&reference(&key)) {
                Some(cached) => self.offer(&cached),
                None => {
                    let lane = {
                        let mut state = self.lock();
                        let copy = state.fresh.get(&key).cloned();
                        copy.map(|copy| self.queue(&mut state, &copy))
                    };
                    if let Some(lane) = lane {
                        self.wake[lane as usize].notify_one();
                    }
                }
            }
        }
    }

    /// Stop handing out work; workers finish the object they hold and return.
    pub fn close(&self) {
        self.lock().closed = true;
        for wake in &self.wake {
            wake.notify_waiters();
        }
        self.retry_wake.notify_waiters();
    }

    /// The next object of `lane` to reconcile, with the copy to reconcile; None once closed.
    pub async fn take(&self, lane: Lane) -> Option<(String, Option<Arc<K>>)> {
        loop {
            // Register for a wake-up before looking, so a notify between the look and the
            // wait is not lost.
            let woken = self.wake[lane as usize].notified();
            {
                let mut state = self.lock();
                if state.closed {
                    return None;
                }
                if let Some(key) = state.queues[lane as usize].take() {
                    let copy = state
                        .fresh
                        .remove(&key)
                        .or_else(|| self.store.get(&reference(&key)));
                    return Some((key, copy));
                }
            }
            woken.await;
        }
    }

    /// The worker is done with `key`.
    pub fn done(&self, lane: Lane, key: &str) {
        self.lock().queues[lane as usize].done(key);
        self.wake[lane as usize].notify_one();
    }

    /// Objects waiting for a worker and objects being worked, for the metrics and tests.
    pub fn sizes(&self) -> (usize, usize) {
        let state = self.lock();
        (
            state.queues.iter().map(WorkQueue::waiting).sum(),
            state.queues.iter().map(WorkQueue::working).sum(),
        )
    }

    fn next_retry(&self) -> Option<Option<Instant>> {
        let state = self.lock();
        if state.closed {
            return None;
        }
        Some(state.retry_at.first().map(|(at, _)| *at))
    }
}

/// One worker: take, reconcile, repeat. A failed object is queued again after its backoff; the
/// worker moves on to the next one meanwhile.
pub async fn work_forever<K, R, C>(work: Arc<Work<K, R>>, reconciler: Arc<C>, lane: Lane)
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    R: Rules<K>,
    C: Reconciler<K>,
{
    while let Some((key, copy)) = work.take(lane).await {
        // Gone from the cache and no copy kept: deleted or finished; nothing to do.
        if let Some(object) = copy {
            match reconciler.reconcile(object.clone()).await {
                Ok(()) => work.succeeded(&key),
                Err(error) => {
                    let connection = reconciler.is_connection_error(&error);
                    let (failures, delay) = work.failed(&key, object, connection);
                    reconciler.failed(&key, &error, failures, delay);
                }
            }
        }
        work.done(lane, &key);
    }
}

/// Offer each failed object again when its backoff is over: one task and one ordered set of
/// deadlines, however many are failing. While some wait only for the connection, `probe` (the
/// API server's `/readyz`) is asked every [`PROBE_INTERVAL`]; when it answers again after it
/// did not, they are tried at once.
pub async fn retry_forever<K, R, P, F>(work: Arc<Work<K, R>>, probe: P)
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    R: Rules<K>,
    P: Fn() -> F + Send + Sync + 'static,
    F: Future<Output = bool> + Send,
{
    // A probe failed since the last retry: the API server was away. Only its return retries
    // early (an object that fails with a 5xx while the server is up keeps its backoff).
    let mut server_away = false;
    // Asked at most every PROBE_INTERVAL, however many retry deadlines fall in between.
    let mut last_probe: Option<Instant> = None;
    loop {
        let woken = work.retry_wake.notified();
        let Some(next) = work.next_retry() else {
            return;
        };
        let now = Instant::now();
        match next {
            Some(at) if at <= now => {
                work.offer_due(now);
                continue;
            }
            _ => {}
        }
        let probing = work.connection_failures() > 0;
        let wait_until = match (next, probing) {
            (Some(at), true) => Some(at.min(now + PROBE_INTERVAL)),
            (Some(at), false) => Some(at),
            (None, true) => Some(now + PROBE_INTERVAL),
            (None, false) => None,
        };
        match wait_until {
            None => woken.await,
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = woken => continue,
                }
            }
        }
        if work.connection_failures() == 0 {
            server_away = false;
        } else if probing && last_probe.is_none_or(|at| at.elapsed() >= PROBE_INTERVAL) {
            last_probe = Some(Instant::now());
            if !probe().await {
                server_away = true;
            } else if std::mem::take(&mut server_away) {
                tracing::info!("the API server answers again; retrying what failed for want of it");
                work.retry_connection_failures_now();
            }
        }
    }
}
