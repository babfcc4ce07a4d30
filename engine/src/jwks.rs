//! Key-set caching rules, without I/O: when to fetch, how long keys stay fresh, what to do while the
//! identity provider is down. The host performs the fetches (one at a time per issuer) and reports back.

use serde_json::Value;
use std::sync::Arc;

/// The cached keys of one issuer.
///
/// Times are milliseconds since the Unix epoch: whole seconds would let a refetch "at most once per second"
/// follow the last one by a millisecond when a second boundary falls between them.
#[derive(Debug, Clone, Default)]
pub struct IssuerKeys {
    keys: Option<Arc<Value>>,
    fresh_until_ms: i64,
    last_fetch_ms: Option<i64>,
    version: u64,
    attempts: u64,
}

/// Why keys are wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// An ordinary request.
    Current,
    /// A token named a key that set `seen` (a [`IssuerKeys::version`]) does not hold. When the set has changed
    /// since, the new set is the answer and nothing is fetched.
    UnknownKey {
        /// The version that lacked the key.
        seen: u64,
    },
}

impl IssuerKeys {
    /// Whether the host should fetch at `now_ms` (`min_interval_secs` bounds refetches triggered by unknown
    /// keys).
    pub fn should_fetch(&self, now_ms: i64, want: Want, min_interval_secs: u64) -> bool {
        let since_last = self.last_fetch_ms.map_or(i64::MAX, |t| now_ms.saturating_sub(t));
        let wanted = match want {
            Want::Current => self.keys.is_none() || now_ms >= self.fresh_until_ms,
            Want::UnknownKey { seen } => seen == self.version && since_last >= millis(min_interval_secs),
        };
        // A failed fetch is retried no more often than once a second.
        wanted && since_last >= 1000
    }

    /// The keys to use: fresh or stale (stale keys keep serving while the provider is down).
    pub fn current(&self) -> Option<Arc<Value>> {
        self.keys.clone()
    }

    /// Increases every time the key set changes; part of cache keys of verified tokens.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// How many fetches were recorded; lets a waiter see that another request fetched meanwhile.
    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    /// Records the outcome of a fetch attempt made at `now_ms`. `cache_control` is the response's header; the
    /// server's `max-age` is honoured within `[60, max_age_cap]` seconds.
    pub fn record(&mut self, now_ms: i64, outcome: Result<(Value, Option<&str>), String>, max_age_cap: u64) {
        self.last_fetch_ms = Some(now_ms);
        self.attempts += 1;
        if let Ok((jwks, cache_control)) = outcome {
            let ttl = max_age(cache_control).unwrap_or(max_age_cap).clamp(60.min(max_age_cap), max_age_cap);
            self.fresh_until_ms = now_ms.saturating_add(millis(ttl));
            if self.keys.as_deref() != Some(&jwks) {
                self.version += 1;
                self.keys = Some(Arc::new(jwks));
            }
        }
    }
}

fn millis(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn max_age(cache_control: Option<&str>) -> Option<u64> {
    let cc = cache_control?;
    if cc.split(',').any(|d| matches!(d.trim(), "no-store" | "no-cache")) {
        return Some(0);
    }
    cc.split(',').find_map(|d| d.trim().strip_prefix("max-age=")?.trim_matches('"').parse().ok())
}

/// Checks a fetched JWKS document: a JSON object with a `keys` array, private members removed.
pub fn parse_jwks(body: &[u8]) -> Result<Value, String> {
    let mut v: Value = serde_json::from_slice(body).map_err(|e| format!("the key set is not JSON: {e}"))?;
    let keys = v.get_mut("keys").and_then(Value::as_array_mut).ok_or("the key set has no `keys` array")?;
    for key in keys.iter_mut() {
        if let Some(obj) = key.as_object_mut() {
            for private in ["d", "p", "q", "dp", "dq", "qi", "k", "oth"] {
                obj.remove(private);
            }
        }
    }
    Ok(v)
}

/// Reads `jwks_uri` from an OpenID discovery document, checking that it describes `issuer`.
pub fn jwks_uri_from_discovery(body: &[u8], issuer: &str) -> Result<String, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("the discovery document is not JSON: {e}"))?;
    let found = v.get("issuer").and_then(Value::as_str).unwrap_or_default();
    if found.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(format!("the discovery document names issuer `{found}`, not `{issuer}`"));
    }
    v.get("jwks_uri")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| "the discovery document has no `jwks_uri`".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn freshness_follows_max_age_within_bounds() {
        let mut k = IssuerKeys::default();
        assert!(k.should_fetch(1_000_000, Want::Current, 30));
        k.record(1_000_000, Ok((json!({"keys": []}), Some("public, max-age=120"))), 3600);
        assert!(!k.should_fetch(1_100_000, Want::Current, 30));
        assert!(k.should_fetch(1_120_000, Want::Current, 30));
        k.record(2_000_000, Ok((json!({"keys": []}), Some("max-age=999999"))), 600);
        assert!(!k.should_fetch(2_599_000, Want::Current, 30));
        assert!(k.should_fetch(2_600_000, Want::Current, 30));
    }

    #[test]
    fn unknown_key_refetch_is_rate_limited_and_failures_keep_keys() {
        let mut k = IssuerKeys::default();
        k.record(1_000_000, Ok((json!({"keys": [{"kid": "a"}]}), None)), 3600);
        let v = k.version();
        let seen = k.version();
        assert!(!k.should_fetch(1_010_000, Want::UnknownKey { seen }, 30));
        assert!(k.should_fetch(1_030_000, Want::UnknownKey { seen }, 30));
        assert!(!k.should_fetch(1_030_000, Want::UnknownKey { seen: seen - 1 }, 30), "a newer set is the answer");
        k.record(1_030_000, Err("down".into()), 3600);
        assert_eq!(k.version(), v);
        assert!(k.current().is_some());
        assert!(!k.should_fetch(1_040_000, Want::UnknownKey { seen: k.version() }, 30));
    }

    /// "Once per second" means a thousand milliseconds, whatever second boundary falls in between.
    #[test]
    fn intervals_are_measured_in_milliseconds() {
        let mut k = IssuerKeys::default();
        k.record(1_999, Ok((json!({"keys": [{"kid": "a"}]}), None)), 3600);
        let seen = k.version();
        assert!(!k.should_fetch(2_001, Want::UnknownKey { seen }, 1), "2 ms later, across a second boundary");
        assert!(!k.should_fetch(2_998, Want::UnknownKey { seen }, 1));
        assert!(k.should_fetch(2_999, Want::UnknownKey { seen }, 1));
    }

    #[test]
    fn discovery_must_name_the_issuer() {
        let doc = br#"{"issuer": "https://a/", "jwks_uri": "https://a/keys"}"#;
        assert_eq!(jwks_uri_from_discovery(doc, "https://a").unwrap(), "https://a/keys");
        assert!(jwks_uri_from_discovery(doc, "https://b").is_err());
    }

    #[test]
    fn private_members_are_dropped() {
        let v = parse_jwks(br#"{"keys": [{"kty": "RSA", "n": "x", "e": "y", "d": "secret"}]}"#).unwrap();
        assert!(v["keys"][0].get("d").is_none());
    }
}

/// One fetch of an issuer's key set, sans-IO: the discovery document when the `jwks_uri` is not known yet,
/// then the key set. The host performs each GET it asks for ([`KeyFetch::next`]) and reports the answer.
#[derive(Debug, Clone)]
pub struct KeyFetch {
    issuer: String,
    discovery: String,
    jwks_uri: Option<String>,
    awaiting_discovery: bool,
}

/// What a [`KeyFetch`] needs next.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyStep {
    /// GET this URL (JSON, small) and report status, `Cache-Control` and body.
    Get(String),
    /// The fetch is over: the key set and its `Cache-Control`, or why it failed. `jwks_uri` is the address
    /// learned from discovery, for the host to remember.
    Done {
        /// The outcome.
        outcome: Result<(Value, Option<String>), String>,
        /// The key set's address, once known.
        jwks_uri: Option<String>,
    },
}

impl KeyFetch {
    /// A fetch for `issuer`; `jwks_uri` when configured or learned earlier.
    pub fn new(issuer: &crate::config::Issuer, jwks_uri: Option<String>) -> KeyFetch {
        KeyFetch { issuer: issuer.issuer.clone(), discovery: issuer.discovery(), jwks_uri, awaiting_discovery: false }
    }

    /// The first GET.
    pub fn start(&mut self) -> KeyStep {
        match &self.jwks_uri {
            Some(u) => KeyStep::Get(u.clone()),
            None => {
                self.awaiting_discovery = true;
                KeyStep::Get(self.discovery.clone())
            }
        }
    }

    /// Feeds the answer to the last GET (`Err` when it could not be made).
    pub fn next(&mut self, answer: Result<(u16, Option<String>, &[u8]), String>) -> KeyStep {
        let done = |outcome, jwks_uri: &Option<String>| KeyStep::Done { outcome, jwks_uri: jwks_uri.clone() };
        let (status, cache_control, body) = match answer {
            Ok(a) => a,
            Err(e) => return done(Err(e), &self.jwks_uri),
        };
        if self.awaiting_discovery {
            self.awaiting_discovery = false;
            if status != 200 {
                return done(Err(format!("discovery answered {status}")), &self.jwks_uri);
            }
            return match jwks_uri_from_discovery(body, &self.issuer) {
                Ok(uri) => {
                    self.jwks_uri = Some(uri.clone());
                    KeyStep::Get(uri)
                }
                Err(e) => done(Err(e), &self.jwks_uri),
            };
        }
        if status != 200 {
            return done(Err(format!("the JWKS endpoint answered {status}")), &self.jwks_uri);
        }
        done(parse_jwks(body).map(|jwks| (jwks, cache_control)), &self.jwks_uri)
    }
}
