//! The one place where every way a request can fail becomes an HTTP answer (RFC 9457 problem+json, RFC 6750
//! challenges). The status follows from the kind of failure, never from string matching.

use crate::policy::Decision;
use gatehouse_plugin_abi::{Refusal, RefusalCode};
use serde::{Deserialize, Serialize};

/// An answer the host sends as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: String,
}

impl Answer {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Where a failure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The caller sent something unacceptable.
    Client,
    /// The upstream or an identity provider failed.
    Upstream,
    /// Gatehouse or one of its plugins failed.
    Internal,
}

/// Why a request was not forwarded, or failed upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// No route matches the path.
    NoRoute,
    /// A route matches the path but not the method.
    MethodNotAllowed {
        /// Methods the route accepts.
        allow: Vec<String>,
    },
    /// No bearer token was presented.
    MissingToken,
    /// The token was refused.
    InvalidToken(Refusal),
    /// The issuer's signing keys could not be obtained.
    KeysUnavailable,
    /// Cedar denied the request.
    Forbidden(Decision),
    /// The caller did not send its body in time.
    RequestTimeout {
        /// The time it had, in seconds.
        secs: u64,
    },
    /// The body exceeds the configured limit.
    PayloadTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The body is unacceptable (not JSON, refused by a transform).
    BadPayload(String),
    /// A transform refused the payload as too large.
    PayloadRefused(String),
    /// A plugin trapped, timed out, ran out of memory or returned garbage: the request is denied.
    PluginFailed {
        /// The plugin's name.
        plugin: String,
        /// What happened (safe to show).
        reason: String,
    },
    /// The upstream could not be reached or broke the exchange.
    UpstreamFailed(String),
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// No upstream credential could be obtained and none still valid is cached (the reason goes to the audit
    /// record, not to the caller).
    CredentialUnavailable(String),
    /// The backend answered with an error, translated by its adapter.
    Backend {
        /// Status for the caller.
        status: u16,
        /// The backend's status the answer was made from.
        backend_status: u16,
        /// Title.
        title: String,
        /// The backend's explanation.
        detail: String,
        /// Retry-After seconds.
        retry_after: Option<u64>,
    },
}

impl Rejection {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Rejection::NoRoute => 404,
            Rejection::MethodNotAllowed { .. } => 405,
            Rejection::MissingToken => 401,
            Rejection::InvalidToken(r) => match r.code {
                RefusalCode::InvalidRequest => 400,
                RefusalCode::InvalidToken => 401,
                RefusalCode::InsufficientScope => 403,
            },
            Rejection::KeysUnavailable => 503,
            Rejection::Forbidden(_) | Rejection::PluginFailed { .. } => 403,
            Rejection::PayloadTooLarge { .. } | Rejection::PayloadRefused(_) => 413,
            Rejection::BadPayload(_) => 400,
            Rejection::RequestTimeout { .. } => 408,
            Rejection::UpstreamFailed(_) => 502,
            Rejection::UpstreamTimeout => 504,
            Rejection::CredentialUnavailable(_) => 503,
            Rejection::Backend { status, .. } => *status,
        }
    }

    /// Where the failure comes from.
    pub fn source(&self) -> Source {
        match self {
            Rejection::KeysUnavailable
            | Rejection::UpstreamFailed(_)
            | Rejection::UpstreamTimeout
            | Rejection::CredentialUnavailable(_)
            | Rejection::Backend { .. } => Source::Upstream,
            Rejection::PluginFailed { .. } => Source::Internal,
            _ => Source::Client,
        }
    }

    /// A short stable name, used in problem types and audit records.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::NoRoute => "no-route",
            Rejection::MethodNotAllowed { .. } => "method-not-allowed",
            Rejection::MissingToken => "missing-token",
            Rejection::InvalidToken(_) => "invalid-token",
            Rejection::KeysUnavailable => "keys-unavailable",
            Rejection::Forbidden(_) => "forbidden",
            Rejection::PayloadTooLarge { .. } | Rejection::PayloadRefused(_) => "payload-too-large",
            Rejection::BadPayload(_) => "bad-payload",
            Rejection::RequestTimeout { .. } => "request-timeout",
            Rejection::PluginFailed { .. } => "plugin-failed",
            Rejection::UpstreamFailed(_) => "upstream-failed",
            Rejection::UpstreamTimeout => "upstream-timeout",
            Rejection::CredentialUnavailable(_) => "credential-unavailable",
            Rejection::Backend { .. } => "backend-error",
        }
    }

    /// A human-readable explanation (never contains a credential).
    pub fn detail(&self) -> String {
        match self {
            Rejection::NoRoute => "no route matches this path".into(),
            Rejection::MethodNotAllowed { allow } => format!("this route accepts {}", allow.join(", ")),
            Rejection::MissingToken => "a bearer token is required".into(),
            Rejection::InvalidToken(r) => r.description.clone(),
            Rejection::KeysUnavailable => "the token issuer's signing keys are unavailable; try again later".into(),
            Rejection::Forbidden(d) if d.policy_ids.is_empty() => "no policy permits this request".into(),
            Rejection::Forbidden(_) => "a policy forbids this request".into(),
            Rejection::PayloadTooLarge { limit } => format!("the request body exceeds {limit} bytes"),
            Rejection::BadPayload(r) | Rejection::PayloadRefused(r) => r.clone(),
            Rejection::RequestTimeout { secs } => format!("the request body did not arrive within {secs} s"),
            Rejection::PluginFailed { plugin, reason } => format!("plugin `{plugin}` failed: {reason}"),
            Rejection::UpstreamFailed(r) => format!("the upstream failed: {r}"),
            Rejection::UpstreamTimeout => "the upstream did not answer in time".into(),
            Rejection::CredentialUnavailable(_) => {
                "the gateway could not obtain a credential for the backend; try again later".into()
            }
            Rejection::Backend { detail, .. } => detail.clone(),
        }
    }

    /// What the audit record keeps: the detail, or for a missing credential the provider's error.
    pub fn audit_detail(&self) -> String {
        match self {
            Rejection::CredentialUnavailable(why) => why.clone(),
            Rejection::Backend { backend_status, detail, .. } => format!("backend answered {backend_status}: {detail}"),
            r => r.detail(),
        }
    }

    /// The answer to send.
    pub fn answer(&self, request_id: &str, reveal_policy_ids: bool) -> Answer {
        let status = self.status();
        let mut problem = serde_json::json!({
            "type": format!("urn:gatehouse:problem:{}", self.kind()),
            "title": match self {
                Rejection::Backend { title, .. } => title.as_str(),
                _ => title(status),
            },
            "status": status,
            "detail": self.detail(),
            "request_id": request_id,
        });
        if let (Rejection::Forbidden(d), true) = (self, reveal_policy_ids)
            && let Some(obj) = problem.as_object_mut()
        {
            obj.insert("policy_ids".into(), serde_json::json!(d.policy_ids));
        }
        let mut headers = vec![
            ("content-type".to_owned(), "application/problem+json".to_owned()),
            ("cache-control".to_owned(), "no-store".to_owned()),
            ("x-request-id".to_owned(), request_id.to_owned()),
        ];
        match self {
            Rejection::MissingToken => {
                headers.push(("www-authenticate".into(), "Bearer realm=\"gatehouse\"".into()));
            }
            Rejection::InvalidToken(r) => headers.push((
                "www-authenticate".into(),
                format!(
                    "Bearer realm=\"gatehouse\", error=\"{}\", error_description=\"{}\"",
                    r.code.as_str(),
                    challenge_text(&r.description)
                ),
            )),
            Rejection::MethodNotAllowed { allow } => headers.push(("allow".into(), allow.join(", "))),
            Rejection::KeysUnavailable | Rejection::CredentialUnavailable(_) => {
                headers.push(("retry-after".into(), "5".into()));
            }
            Rejection::Backend { retry_after: Some(s), .. } => headers.push(("retry-after".into(), s.to_string())),
            _ => {}
        }
        Answer { status, headers, body: problem.to_string() }
    }
}

/// RFC 6750 restricts `error_description` to printable ASCII without `"` and `\`.
fn challenge_text(s: &str) -> String {
    s.chars().map(|c| if (' '..='~').contains(&c) && c != '"' && c != '\\' { c } else { '\'' }).collect()
}

fn title(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_token_has_a_challenge() {
        let r = Rejection::InvalidToken(Refusal {
            code: RefusalCode::InvalidToken,
            description: "the token has \"expired\"".into(),
            unknown_key: false,
        });
        let a = r.answer("req-1", false);
        assert_eq!(a.status, 401);
        assert_eq!(
            a.header("WWW-Authenticate").unwrap(),
            "Bearer realm=\"gatehouse\", error=\"invalid_token\", error_description=\"the token has 'expired'\""
        );
        assert_eq!(a.header("content-type"), Some("application/problem+json"));
    }

    #[test]
    fn policy_ids_only_when_revealed() {
        let d = Decision { allowed: false, policy_ids: vec!["forbid-x".into()], errors: vec![] };
        let hidden = Rejection::Forbidden(d.clone()).answer("r", false);
        assert!(!hidden.body.contains("forbid-x"));
        let shown = Rejection::Forbidden(d).answer("r", true);
        assert!(shown.body.contains("forbid-x"));
    }
}
