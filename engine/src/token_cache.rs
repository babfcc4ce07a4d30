//! Verified tokens, remembered: a bounded map from (token hash, issuer, key-set version) to the identity the
//! authenticate plugin returned, kept never past the token's `exp`. A repeated token skips the signature check;
//! a rotated key set (new version) or an expired token misses.

use gatehouse_plugin_abi::Identity;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The cache.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], Arc<Identity>>>,
}

/// The cache key of a token checked against one issuer's key set.
pub fn key(token: &str, issuer: usize, keys_version: u64) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(token.as_bytes());
    h.update((issuer as u64).to_le_bytes());
    h.update(keys_version.to_le_bytes());
    h.finalize().into()
}

impl TokenCache {
    /// The identity verified earlier for `key`, if its token has not expired at `now`.
    pub fn get(&self, key: &[u8; 32], now: i64) -> Option<Arc<Identity>> {
        let map = self.entries.lock().ok()?;
        map.get(key).filter(|id| now < id.expires_at).cloned()
    }

    /// Remembers `identity`; when `capacity` is reached, expired entries go first, then everything.
    pub fn put(&self, key: [u8; 32], identity: Arc<Identity>, now: i64, capacity: usize) {
        if capacity == 0 || now >= identity.expires_at {
            return;
        }
        let Ok(mut map) = self.entries.lock() else { return };
        if map.len() >= capacity {
            map.retain(|_, id| now < id.expires_at);
            if map.len() >= capacity {
                map.clear();
            }
        }
        map.insert(key, identity);
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
        c.put(key("t", 0, 1), id(100), 0, 10);
        assert!(c.get(&key("t", 0, 1), 99).is_some());
        assert!(c.get(&key("t", 0, 1), 100).is_none());
        assert!(c.get(&key("t", 0, 2), 50).is_none(), "a new key set misses");
        assert!(c.get(&key("t", 1, 1), 50).is_none(), "another issuer misses");
        c.put(key("u", 0, 1), id(10), 20, 10);
        assert!(c.get(&key("u", 0, 1), 5).is_none(), "expired tokens are not stored");
        let small = TokenCache::default();
        for i in 0..5 {
            small.put(key(&i.to_string(), 0, 1), id(100), 0, 3);
        }
        assert!(small.entries.lock().unwrap().len() <= 3);
    }
}
