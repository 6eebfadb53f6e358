//! The work queue: which CSR a free worker takes next. Pure (no I/O, no clock).
//!
//! - Each CSR is queued at most once and worked by at most one worker at a time; a CSR that
//!   changes while it is being worked is queued again when the worker is done with it.
//! - Oldest first: within one requester, CSRs come out in creation order, so a backlog after a
//!   restart is worked from its oldest request and half of it is done in half the time.
//! - Fair between requesters: requesters take turns (round robin), so one user creating
//!   thousands of CSRs delays a kubelet's renewal by at most one CSR per busy requester, not by
//!   the whole flood.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

/// Where a CSR sits in the queue: its requester's lane and its age.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// spec.username of the CSR, the unit of fairness.
    pub requester: String,
    /// creationTimestamp in seconds (any monotonic number works; ties break on the name).
    pub created: i64,
}

impl Placement {
    /// `requester`'s lane, by the object's creationTimestamp (last when it has none).
    pub fn of(
        requester: String,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> Self {
        Placement {
            requester,
            created: meta
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(i64::MAX),
        }
    }
}

#[derive(Debug, Default)]
pub struct WorkQueue {
    /// Per requester, the CSRs waiting, oldest first.
    lanes: HashMap<String, BTreeSet<(i64, String)>>,
    /// Requesters with waiting CSRs, in the order they get their next turn.
    turns: VecDeque<String>,
    /// Every waiting CSR and where it sits.
    waiting: HashMap<String, Placement>,
    /// CSRs a worker holds right now.
    working: HashSet<String>,
    /// CSRs that changed while being worked: queued again once their worker is done.
    again: HashMap<String, Placement>,
}

impl WorkQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask for `name` to be worked. A CSR already waiting keeps its place.
    pub fn add(&mut self, name: &str, placement: Placement) {
        if self.working.contains(name) {
            self.again.insert(name.to_owned(), placement);
            return;
        }
        if self.waiting.contains_key(name) {
            return;
        }
        let lane = self.lanes.entry(placement.requester.clone()).or_default();
        if lane.is_empty() {
            self.turns.push_back(placement.requester.clone());
        }
        lane.insert((placement.created, name.to_owned()));
        self.waiting.insert(name.to_owned(), placement);
    }

    /// The next CSR to work, now held by the caller until [`WorkQueue::done`].
    pub fn take(&mut self) -> Option<String> {
        let requester = self.turns.pop_front()?;
        let lane = self.lanes.get_mut(&requester)?;
        let (_, name) = lane.pop_first()?;
        if lane.is_empty() {
            self.lanes.remove(&requester);
        } else {
            self.turns.push_back(requester);
        }
        self.waiting.remove(&name);
        self.working.insert(name.clone());
        Some(name)
    }

    /// The worker is done with `name`; if it changed meanwhile, it is queued again.
    pub fn done(&mut self, name: &str) {
        self.working.remove(name);
        if let Some(placement) = self.again.remove(name) {
            self.add(name, placement);
        }
    }

    /// Forget a CSR that no longer exists (it is not taken again; a worker holding it finishes).
    pub fn forget(&mut self, name: &str) {
        self.again.remove(name);
        let Some(placement) = self.waiting.remove(name) else {
            return;
        };
        if let Some(lane) = self.lanes.get_mut(&placement.requester) {
            lane.remove(&(placement.created, name.to_owned()));
            if lane.is_empty() {
                self.lanes.remove(&placement.requester);
                self.turns.retain(|r| r != &placement.requester);
            }
        }
    }

    /// `name` is waiting or being worked.
    pub fn holds(&self, name: &str) -> bool {
        self.waiting.contains_key(name) || self.working.contains(name)
    }

    /// CSRs waiting for a worker.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// CSRs a worker holds.
    pub fn working(&self) -> usize {
        self.working.len()
    }
}

/// A delay after `failures` failures in a row: `first`, doubling each time, at most `last`,
/// times a random factor in [1, 1.5) (`jitter` in [0, 1]) so that objects that failed together
/// (an outage) do not all come back in the same instant.
pub fn doubling(
    failures: u32,
    first: std::time::Duration,
    last: std::time::Duration,
    jitter: f64,
) -> std::time::Duration {
    first
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(last)
        .mul_f64(1.0 + 0.5 * jitter.clamp(0.0, 1.0))
}
