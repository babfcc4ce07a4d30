//! Bounded caches of entries that expire. [`TokenCache`]: verified tokens, a map from (token hash, issuer, key-set
//! version) to the identity the authenticate plugin returned, kept never past the token's `exp`; a repeated token
//! skips the signature check, a rotated key set (new version) or an expired token misses. The forward-auth
//! decision cache ([`crate::forward_auth::DecisionCache`]) is the same mechanism.

use gatehouse_plugin_abi::Identity;
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Entries kept until a time each carries (unix seconds), at most a given number of them.
#[derive(Debug)]
pub struct Expiring<K, V> {
    entries: Mutex<HashMap<K, (i64, V)>>,
}

impl<K, V> Default for Expiring<K, V> {
    fn default() -> Self {
        Expiring { entries: Mutex::new(HashMap::new()) }
    }
}

/// The verified-token cache.
pub type TokenCache = Expiring<[u8; 32], Arc<Identity>>;

/// The cache key of a token checked against one issuer's key set.
pub fn key(token: &str, issuer: usize, keys_version: u64) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(token.as_bytes());
    h.update((issuer as u64).to_le_bytes());
    h.update(keys_version.to_le_bytes());
    h.finalize().into()
}

impl<K: Hash + Eq + Clone, V: Clone> Expiring<K, V> {
    /// The value kept for `key`, if it has not expired at `now`.
    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q, now: i64) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let map = self.entries.lock().ok()?;
        map.get(key).filter(|(until, _)| now < *until).map(|(_, v)| v.clone())
    }

    /// Keeps `value` until `until` (nothing is kept with a `capacity` of 0, or already expired). When `capacity`
    /// is reached, expired entries go first, then the eighth of the entries that expire soonest (the least still
    /// to gain): the rest stay, so more callers than the capacity cost a few extra misses rather than a cache
    /// emptied at once (every caller missing). One pass over the map per capacity/8 insertions.
    pub fn put(&self, key: K, until: i64, value: V, now: i64, capacity: usize) {
        if capacity == 0 || now >= until {
            return;
        }
        let Ok(mut map) = self.entries.lock() else { return };
        if map.len() >= capacity {
            map.retain(|_, (u, _)| now < *u);
        }
        if map.len() >= capacity {
            let mut by_expiry: Vec<(i64, K)> = map.iter().map(|(k, (u, _))| (*u, k.clone())).collect();
            let drop = (map.len() + 1 - capacity).max(capacity / 8).min(by_expiry.len());
            if drop > 0 && drop < by_expiry.len() {
                by_expiry.select_nth_unstable_by_key(drop - 1, |(u, _)| *u);
            }
            for (_, k) in by_expiry.iter().take(drop) {
                map.remove(k);
            }
        }
        map.insert(key, (until, value));
    }

    /// How many entries are held.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(exp: i64) -> Arc<Identity> {
        Arc::new(Identity {
            issuer: "i".into(),
            subject: "s".into(),
            kind: Default::default(),
            groups: vec![],
            scopes: vec![],
            kid: None,
            jti: None,
            expires_at: exp,
            claims: Default::default(),
        })
    }

    #[test]
    fn never_past_exp_and_versioned() {
        let c = TokenCache::default();
        c.put(key("t", 0, 1), 100, id(100), 0, 10);
        assert!(c.get(&key("t", 0, 1), 99).is_some());
        assert!(c.get(&key("t", 0, 1), 100).is_none());
        assert!(c.get(&key("t", 0, 2), 50).is_none(), "a new key set misses");
        assert!(c.get(&key("t", 1, 1), 50).is_none(), "another issuer misses");
        c.put(key("u", 0, 1), 10, id(10), 20, 10);
        assert!(c.get(&key("u", 0, 1), 5).is_none(), "expired tokens are not stored");
        let small = TokenCache::default();
        for i in 0..5 {
            small.put(key(&i.to_string(), 0, 1), 100, id(100), 0, 3);
        }
        assert!(small.len() <= 3);
    }

    #[test]
    fn a_full_cache_drops_the_soonest_to_expire_and_keeps_the_rest() {
        let c = TokenCache::default();
        for i in 0..16 {
            c.put(key(&i.to_string(), 0, 1), 100 + i, id(100 + i), 0, 16);
        }
        c.put(key("new", 0, 1), 1000, id(1000), 0, 16);
        // 16 / 8 = 2 dropped: the two that expire first.
        assert!(c.get(&key("0", 0, 1), 1).is_none() && c.get(&key("1", 0, 1), 1).is_none());
        for i in 2..16 {
            assert!(c.get(&key(&i.to_string(), 0, 1), 1).is_some(), "{i} kept");
        }
        assert!(c.get(&key("new", 0, 1), 1).is_some());
        // Full again: expired entries go first, and then no live one has to.
        c.put(key("x", 0, 1), 1000, id(1000), 0, 16);
        c.put(key("late", 0, 1), 1000, id(1000), 110, 16);
        assert_eq!(c.len(), 8, "the 9 expired by 110 dropped, then `late` added");
        assert!(c.get(&key("11", 0, 1), 110).is_some() && c.get(&key("x", 0, 1), 110).is_some());
        // Equal expiries (tokens minted together): still a part, never all.
        let same = TokenCache::default();
        for i in 0..64 {
            same.put(key(&i.to_string(), 0, 1), 100, id(100), 0, 32);
        }
        assert!(same.len() >= 28);
    }
}
