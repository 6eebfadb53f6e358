//! What the controller remembers between reconciles: maps behind a mutex, written once here.
//! Every entry is a hint that can be rebuilt from the cluster, so a worker that panicked while
//! holding the lock leaves the map usable rather than poisoning the controller.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

#[derive(Debug)]
pub(super) struct Memo<K, V> {
    entries: Mutex<HashMap<K, V>>,
}

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Memo {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash, V> Memo<K, V> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, V>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the entry for `key`.
    pub(super) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
        V: Clone,
    {
        self.lock().get(key).cloned()
    }

    /// Set `key`; returns the previous entry and how many entries there are now.
    pub(super) fn insert(&self, key: K, value: V) -> (Option<V>, usize) {
        let mut entries = self.lock();
        let previous = entries.insert(key, value);
        (previous, entries.len())
    }

    /// Take `key` out; returns its entry and how many entries are left.
    pub(super) fn remove<Q>(&self, key: &Q) -> (Option<V>, usize)
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let mut entries = self.lock();
        let removed = entries.remove(key);
        (removed, entries.len())
    }

    /// Keep only the entries whose key passes; returns how many are left.
    pub(super) fn retain(&self, keep: impl Fn(&K) -> bool) -> usize {
        let mut entries = self.lock();
        entries.retain(|key, _| keep(key));
        entries.len()
    }
}
