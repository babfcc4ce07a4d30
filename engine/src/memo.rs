//! A bounded memo shared by requests: values that are recomputable from their key, kept in two generations.
//! New entries go into the current generation; when it holds half the capacity it becomes the previous one and
//! the old previous generation is dropped. A hit in the previous generation moves the entry back into the
//! current one. So an entry used at least once per generation stays, whatever else comes and goes, and the cost
//! of being full is one map dropped now and then (no eviction order to maintain per hit). The memo never holds
//! more than `capacity` entries.

use crate::FastMap as HashMap;
use hashbrown::Equivalent;
use std::hash::Hash;
use std::sync::Mutex;

/// The memo.
pub(crate) struct Memo<K, V> {
    generations: Mutex<Generations<K, V>>,
    /// Entries per generation.
    half: usize,
}

struct Generations<K, V> {
    current: HashMap<K, V>,
    previous: HashMap<K, V>,
}

impl<K: Hash + Eq, V> Generations<K, V> {
    fn insert(&mut self, key: K, value: V, half: usize) {
        if self.current.len() >= half {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, value);
    }
}

impl<K: Hash + Eq, V: Clone> Memo<K, V> {
    /// An empty memo holding at most `capacity` entries.
    pub(crate) fn new(capacity: usize) -> Memo<K, V> {
        let generations = Generations { current: HashMap::default(), previous: HashMap::default() };
        Memo { generations: Mutex::new(generations), half: (capacity / 2).max(1) }
    }

    /// The value remembered for `key` (any type that hashes as `K` does and compares equal to it).
    pub(crate) fn get<Q: Hash + Equivalent<K> + ?Sized>(&self, key: &Q) -> Option<V> {
        let mut g = self.generations.lock().ok()?;
        if let Some(v) = g.current.get(key) {
            return Some(v.clone());
        }
        let (key, value) = g.previous.remove_entry(key)?;
        let found = value.clone();
        g.insert(key, value, self.half);
        Some(found)
    }

    /// Remembers `value` for `key`.
    pub(crate) fn insert(&self, key: K, value: V) {
        if let Ok(mut g) = self.generations.lock() {
            g.insert(key, value, self.half);
        }
    }
}

impl<K, V> std::fmt::Debug for Memo<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.generations.lock().map_or(0, |g| g.current.len() + g.previous.len());
        f.debug_struct("Memo").field("len", &len).field("capacity", &(self.half * 2)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_in_use_survives_any_number_of_others() {
        let memo = Memo::new(100);
        memo.insert(0u32, "hot");
        for i in 1..10_000u32 {
            memo.insert(i, "cold");
            // Used once every 40 insertions: at least once while a generation (50) fills.
            if i % 40 == 0 {
                assert_eq!(memo.get(&0), Some("hot"), "after {i} insertions");
            }
            let g = memo.generations.lock().unwrap();
            assert!(g.current.len() + g.previous.len() <= 100);
        }
        // An entry nobody asks for goes within two generations.
        assert_eq!(memo.get(&1), None);
        assert_eq!(memo.get(&9_999), Some("cold"));
    }

    #[test]
    fn a_full_memo_keeps_the_newer_half() {
        let memo = Memo::new(10);
        for i in 0..10u32 {
            memo.insert(i, i);
        }
        // Generations of 5: 5..9 is the current one, 0..4 the previous; one more starts a new generation.
        memo.insert(10, 10);
        assert_eq!(memo.get(&0), None);
        assert_eq!(memo.get(&5), Some(5));
        assert_eq!(memo.get(&10), Some(10));
    }
}
