//! The `authenticate` hook.

use serde::{Deserialize, Serialize};

/// Input of the `authenticate` hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthnInput {
    /// The bearer token exactly as presented.
    pub token: String,
    /// The current time, seconds since the Unix epoch, as the host sees it.
    pub now: i64,
    /// The JSON Web Key Set of the issuer named by the token's `iss` (fetched by the host), if known.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
}

/// Output of the `authenticate` hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthnVerdict {
    /// The credential is valid.
    Identity(Identity),
    /// The credential is not acceptable.
    Refusal(Refusal),
}

/// Whether the caller is a person or a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A person (the default).
    #[default]
    User,
    /// A machine client, e.g. one that used the client-credentials grant.
    Service,
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// The `iss` claim.
    pub issuer: String,
    /// The `sub` claim.
    pub subject: String,
    /// Person or workload.
    #[serde(default)]
    pub kind: PrincipalKind,
    /// Groups or roles, from the issuer's configured claim.
    #[serde(default)]
    pub groups: Vec<String>,
    /// OAuth scopes (`scope`/`scp`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The `kid` of the key that verified the token.
    #[serde(default)]
    pub kid: Option<String>,
    /// The `jti` claim (the host hashes it before it is logged).
    #[serde(default)]
    pub jti: Option<String>,
    /// The `exp` claim.
    pub expires_at: i64,
    /// The verified claims.
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// Why a credential was refused; maps to an RFC 6750 `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The RFC 6750 error code.
    pub code: RefusalCode,
    /// Human-readable reason, safe to show the caller (never contains the token).
    pub description: String,
    /// The token names a key (`kid`) that the key set passed in does not hold: fresh keys may help.
    #[serde(default)]
    pub unknown_key: bool,
}

/// RFC 6750 section 3.1 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// The request is malformed.
    InvalidRequest,
    /// The token is expired, revoked, malformed or invalid.
    InvalidToken,
    /// The token lacks the privileges the request needs.
    InsufficientScope,
}

impl RefusalCode {
    /// The code as it appears in the challenge.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::InvalidRequest => "invalid_request",
            RefusalCode::InvalidToken => "invalid_token",
            RefusalCode::InsufficientScope => "insufficient_scope",
        }
    }
}
