//! A bounded memo shared by requests: values that are recomputable from their key, kept until the map is full,
//! then all dropped at once (no eviction order to maintain; a steady workload's working set fits).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// The memo.
pub(crate) struct Memo<K, V> {
    map: Mutex<HashMap<K, V>>,
    capacity: usize,
}

impl<K: Hash + Eq, V: Clone> Memo<K, V> {
    /// An empty memo holding at most `capacity` entries.
    pub(crate) fn new(capacity: usize) -> Memo<K, V> {
        Memo { map: Mutex::new(HashMap::new()), capacity }
    }

    /// The value remembered for `key`.
    pub(crate) fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.map.lock().ok()?.get(key).cloned()
    }

    /// Remembers `value` for `key`, starting over first when full.
    pub(crate) fn insert(&self, key: K, value: V) {
        let Ok(mut map) = self.map.lock() else { return };
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(key, value);
    }
}

impl<K, V> std::fmt::Debug for Memo<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.map.lock().map_or(0, |m| m.len());
        f.debug_struct("Memo").field("len", &len).field("capacity", &self.capacity).finish()
    }
}
