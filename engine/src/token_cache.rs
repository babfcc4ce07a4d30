//! Bounded caches of entries that expire. [`TokenCache`]: verified tokens, a map from the token's SHA-256 to the
//! issuer and key-set version it was verified with and the identity the authenticate plugin returned, kept never
//! past the token's `exp`; a repeated token skips the signature check (and the reading of its claimed issuer), a
//! rotated key set (new version) or an expired token misses. The forward-auth decision cache
//! ([`crate::forward_auth::DecisionCache`]) is the same mechanism.

use crate::FastMap as HashMap;
use gatehouse_plugin_abi::Identity;
use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Entries kept until a time each carries (unix seconds), at most a given number of them.
#[derive(Debug)]
pub struct Expiring<K, V> {
    entries: Mutex<HashMap<K, (i64, V)>>,
}

impl<K, V> Default for Expiring<K, V> {
    fn default() -> Self {
        Expiring { entries: Mutex::new(HashMap::default()) }
    }
}

/// The verified-token cache, by [`key`].
pub type TokenCache = Expiring<[u8; 32], Verified>;

/// A token the authenticate plugin accepted.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The issuer (index in the configuration) whose keys verified it: the one its `iss` claim names.
    pub issuer: usize,
    /// The version of that issuer's key set; another version means keys rotated, and the token is checked again.
    pub keys_version: u64,
    /// What the plugin returned.
    pub identity: Arc<Identity>,
}

/// The cache key of a token: its SHA-256 (the issuer and key set are in the entry; a token's bytes name one
/// issuer).
pub fn key(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
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

    fn id(exp: i64) -> Verified {
        Verified { issuer: 0, keys_version: 1, identity: identity(exp) }
    }

    fn identity(exp: i64) -> Arc<Identity> {
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
    fn never_past_exp() {
        let c = TokenCache::default();
        c.put(key("t"), 100, id(100), 0, 10);
        assert!(c.get(&key("t"), 99).is_some());
        assert!(c.get(&key("t"), 100).is_none());
        assert_eq!(c.get(&key("t"), 50).map(|v| (v.issuer, v.keys_version)), Some((0, 1)));
        c.put(key("u"), 10, id(10), 20, 10);
        assert!(c.get(&key("u"), 5).is_none(), "expired tokens are not stored");
        let small = TokenCache::default();
        for i in 0..5 {
            small.put(key(&i.to_string()), 100, id(100), 0, 3);
        }
        assert!(small.len() <= 3);
    }

    #[test]
    fn a_full_cache_drops_the_soonest_to_expire_and_keeps_the_rest() {
        let c = TokenCache::default();
        for i in 0..16 {
            c.put(key(&i.to_string()), 100 + i, id(100 + i), 0, 16);
        }
        c.put(key("new"), 1000, id(1000), 0, 16);
        // 16 / 8 = 2 dropped: the two that expire first.
        assert!(c.get(&key("0"), 1).is_none() && c.get(&key("1"), 1).is_none());
        for i in 2..16 {
            assert!(c.get(&key(&i.to_string()), 1).is_some(), "{i} kept");
        }
        assert!(c.get(&key("new"), 1).is_some());
        // Full again: expired entries go first, and then no live one has to.
        c.put(key("x"), 1000, id(1000), 0, 16);
        c.put(key("late"), 1000, id(1000), 110, 16);
        assert_eq!(c.len(), 8, "the 9 expired by 110 dropped, then `late` added");
        assert!(c.get(&key("11"), 110).is_some() && c.get(&key("x"), 110).is_some());
        // Equal expiries (tokens minted together): still a part, never all.
        let same = TokenCache::default();
        for i in 0..64 {
            same.put(key(&i.to_string()), 100, id(100), 0, 32);
        }
        assert!(same.len() >= 28);
    }
}
