//! Forward-auth: answering a proxy's authorization sub-request instead of proxying. nginx `auth_request`
//! (`X-Original-Method`, `X-Original-URI`), Traefik `forwardAuth` (`X-Forwarded-Method`, `X-Forwarded-Uri`)
//! and Envoy's HTTP `ext_authz` (the original method and path under a prefix) all become the same pipeline run,
//! which stops after the Cedar decision: 200 with headers for the upstream, or the proxy mode's 401/403.
//! Decisions are cached per (token, method, path) until the token expires, and the cache dies with the
//! configuration, so a policy change empties it.

use serde::Deserialize;

/// `[forward_auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardAuth {
    /// Whether the endpoints below answer sub-requests.
    pub enabled: bool,
    /// The nginx/Traefik endpoint; the original request comes in headers.
    pub path: String,
    /// The Envoy `ext_authz` prefix; the original path follows it.
    pub envoy_prefix: String,
    /// Longest time a decision is reused, in seconds (never past the token's `exp`).
    pub cache_secs: i64,
    /// Most decisions kept.
    pub cache_entries: usize,
    /// Put the route's upstream credential (e.g. `authorization: Bearer …`) in the 200 answer, for the proxy to
    /// pass upstream. Only safe when the endpoints are reachable by the proxy alone (nginx `internal`, a
    /// listener on a private interface): anyone who can call them would receive the credential.
    pub pass_credentials: bool,
}

impl Default for ForwardAuth {
    fn default() -> Self {
        ForwardAuth {
            enabled: false,
            path: "/_gatehouse/auth".into(),
            envoy_prefix: "/_gatehouse/ext_authz".into(),
            cache_secs: 300,
            cache_entries: 10_000,
            pass_credentials: false,
        }
    }
}

/// The request a sub-request asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    /// Method.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Query.
    pub query: Option<String>,
}

impl ForwardAuth {
    /// The original request, if `path` is a forward-auth endpoint.
    pub fn original(&self, method: &str, path: &str, header: impl Fn(&str) -> Option<String>) -> Option<Original> {
        if !self.enabled {
            return None;
        }
        if path == self.path {
            let method = header("x-original-method").or_else(|| header("x-forwarded-method"))?;
            let uri = header("x-original-uri").or_else(|| header("x-forwarded-uri"))?;
            let (path, query) = match uri.split_once('?') {
                Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                None => (uri, None),
            };
            return Some(Original { method: method.to_ascii_uppercase(), path, query });
        }
        let rest = path.strip_prefix(self.envoy_prefix.as_str())?;
        rest.starts_with('/').then(|| Original { method: method.to_owned(), path: rest.to_owned(), query: None })
    }
}

/// A cached forward-auth outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// Allowed, with these headers for the upstream.
    Grant(Vec<(String, String)>),
    /// Denied by policy, with these policy ids.
    Deny(Vec<String>),
}

/// Forward-auth outcomes by (token hash, method, path), kept until the decision's end (see
/// [`crate::token_cache::Expiring`] for what goes when full).
pub type DecisionCache = crate::token_cache::Expiring<String, Cached>;

#[cfg(test)]
mod tests {
    use super::*;

    fn fa() -> ForwardAuth {
        ForwardAuth { enabled: true, ..ForwardAuth::default() }
    }

    #[test]
    fn nginx_traefik_and_envoy_styles() {
        let nginx = |n: &str| match n {
            "x-original-method" => Some("post".into()),
            "x-original-uri" => Some("/v1/models/demo:predict?x=1".into()),
            _ => None,
        };
        let o = fa().original("GET", "/_gatehouse/auth", nginx).unwrap();
        assert_eq!(
            (o.method.as_str(), o.path.as_str(), o.query.as_deref()),
            ("POST", "/v1/models/demo:predict", Some("x=1"))
        );
        let traefik = |n: &str| match n {
            "x-forwarded-method" => Some("POST".into()),
            "x-forwarded-uri" => Some("/v1/models/demo:predict".into()),
            _ => None,
        };
        assert_eq!(fa().original("GET", "/_gatehouse/auth", traefik).unwrap().path, "/v1/models/demo:predict");
        let o = fa().original("POST", "/_gatehouse/ext_authz/v1/models/demo:predict", |_| None).unwrap();
        assert_eq!((o.method.as_str(), o.path.as_str()), ("POST", "/v1/models/demo:predict"));
        assert!(fa().original("GET", "/_gatehouse/auth", |_| None).is_none());
        assert!(ForwardAuth::default().original("GET", "/_gatehouse/auth", nginx).is_none());
    }

    #[test]
    fn cache_expires_and_stays_bounded() {
        let c = DecisionCache::default();
        c.put("a".into(), 100, Cached::Deny(vec![]), 0, 2);
        assert!(c.get("a", 99).is_some());
        assert!(c.get("a", 100).is_none());
        c.put("b".into(), 50, Cached::Deny(vec![]), 0, 2);
        c.put("c".into(), 500, Cached::Deny(vec![]), 60, 2);
        assert!(c.len() <= 2);
        assert!(c.get("c", 61).is_some());
        // Full of live decisions: the soonest to end go, not all of them (the cache emptied itself before).
        let full = DecisionCache::default();
        for i in 0..16 {
            full.put(i.to_string(), 100 + i, Cached::Deny(vec![]), 0, 16);
        }
        full.put("new".into(), 1000, Cached::Deny(vec![]), 0, 16);
        assert_eq!(full.len(), 15);
        assert!(full.get("0", 1).is_none() && full.get("2", 1).is_some() && full.get("new", 1).is_some());
    }
}
