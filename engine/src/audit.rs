//! The audit record: one per request, written by the host as one JSON line. It names who asked, what was
//! decided and why, and where the time went; it never holds a token, key or credential.

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// Microseconds spent in each phase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    /// Token validation, key fetching included.
    pub authn: u64,
    /// Cedar evaluation.
    pub policy: u64,
    /// Transform plugins.
    pub plugins: u64,
    /// Adapter plugin (request and error translation).
    #[serde(default)]
    pub adapter: u64,
    /// Obtaining the upstream credential (0 when cached).
    #[serde(default)]
    pub credential: u64,
    /// From forwarding until the upstream's response headers.
    pub upstream: u64,
    /// The whole exchange, as seen by the engine.
    pub total: u64,
}

/// One audit record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Unix time (seconds) when the request arrived.
    pub time: i64,
    /// The request id (also sent to the caller and the upstream as `x-request-id`).
    pub request_id: String,
    /// HTTP method.
    pub method: String,
    /// Request path (no query: it may carry secrets).
    pub path: String,
    /// The matched route.
    pub route: Option<String>,
    /// The client's address.
    pub client_ip: String,
    /// Token issuer (verified, or as claimed when validation failed).
    pub issuer: Option<String>,
    /// Verified subject.
    pub subject: Option<String>,
    /// The `kid` of the verifying key.
    pub kid: Option<String>,
    /// SHA-256 (hex) of the token's `jti`, so replays can be correlated without logging the id.
    pub jti_sha256: Option<String>,
    /// `allow` or `deny`.
    pub decision: String,
    /// Why the request was not forwarded or failed (a stable kind), if it was not served: a problem type's
    /// name (`forbidden`, `upstream-timeout`, ...), `caller-gone` when the caller hung up first, or
    /// `host-failed` when the host itself failed (answered 500).
    pub reason: Option<String>,
    /// Explanation of the reason.
    pub detail: Option<String>,
    /// Determining Cedar policies.
    pub policy_ids: Vec<String>,
    /// Cedar evaluation errors.
    pub policy_errors: Vec<String>,
    /// Status sent to the caller; 499 when the caller hung up before its answer (nginx's convention).
    pub status: u16,
    /// Status the upstream answered with.
    pub upstream_status: Option<u16>,
    /// The request was a proxy's forward-auth sub-request (nothing was forwarded by Gatehouse).
    pub forward_auth: bool,
    /// The decision came from the forward-auth decision cache.
    pub cached: bool,
    /// The token was verified earlier and its identity reused (no signature check this time).
    pub token_cached: bool,
    /// The upstream credential the request carried: provider, kind, identity, expiry, cache hit. Never its
    /// value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<crate::credentials::CredentialAudit>,
    /// Facts the backend adapter stated for the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference: Option<gatehouse_plugin_abi::Facts>,
    /// Request body size in bytes.
    pub request_bytes: u64,
    /// Time split.
    pub latency_us: Latency,
}

/// Hex SHA-256 of `value`.
pub fn sha256_hex(value: &[u8]) -> String {
    hex(&sha2::Sha256::digest(value))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nibble in [b >> 4, b & 15] {
            out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
    out
}
