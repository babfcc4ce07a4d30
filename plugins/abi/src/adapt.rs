//! The backend adapter hooks: `adapt_request` turns the caller's request into the backend's wire format and
//! states facts about it for the policy; `adapt_error` turns a backend's error body into a problem.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Input of the `adapt_request` hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptInput {
    /// The route's name.
    pub route: String,
    /// The model (resource) the request targets.
    pub model: String,
    /// The caller's method.
    pub method: String,
    /// The caller's path.
    pub path: String,
    /// The caller's query string, without `?`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Parameters captured by the route's path template.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// The request body parsed as JSON (`null` when empty).
    pub body: serde_json::Value,
}

/// Output of the `adapt_request` hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // a wire type, built once per request
pub enum AdaptOutput {
    /// Send this request to the backend.
    Request(BackendRequest),
    /// Refuse the request (HTTP 400, or 413 when `too_large`).
    Reject {
        /// Reason shown to the caller.
        reason: String,
        /// The payload exceeds a limit (413) rather than being malformed (400).
        #[serde(default)]
        too_large: bool,
    },
}

/// The request in the backend's wire format. The host sends it to the backend's configured base URL: an
/// adapter chooses the path, never the host, so a credential only ever goes where the operator pointed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendRequest {
    /// Method (default `POST`).
    #[serde(default = "post")]
    pub method: String,
    /// Path and query, appended to the backend's base URL; must start with `/`.
    pub path: String,
    /// Headers to set (the content type is `application/json` unless given here).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: serde_json::Value,
    /// Facts about the request for the policy, under `context.inference` (see [`Facts`]).
    #[serde(default)]
    pub facts: Facts,
}

fn post() -> String {
    "POST".into()
}

/// What an adapter can tell the policy about an inference request. Cedar sees these as the optional
/// attributes of `context.inference`; a policy tests them with `has` first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// The backend operation, e.g. `predict`, `generateContent`, `chat.completions`, `score`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The model as the backend names it (endpoint id, publisher model, deployment's model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    /// The deployment the request is pinned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// How many instances, rows or inputs the request carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<i64>,
    /// The output-token limit the request asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    /// Whether the answer is streamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
}

/// Input of the `adapt_error` hook: a backend answered with an error status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInput {
    /// The backend's status.
    pub status: u16,
    /// Its content type, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Its body (at most 64 KiB, lossily decoded as UTF-8).
    pub body: String,
}

/// Output of the `adapt_error` hook: the problem to send the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorOutput {
    /// Status for the caller.
    pub status: u16,
    /// A short, stable title (e.g. the backend's status name).
    pub title: String,
    /// The backend's explanation, safe to show the caller.
    pub detail: String,
    /// Seconds after which a retry may succeed (429, 503).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}
