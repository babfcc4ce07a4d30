//! The `transform_request` hook.

use serde::{Deserialize, Serialize};

/// Input of the `transform_request` hook. `B` is how the body is held: parsed (the default, what plugins use)
/// or, in a host that only passes it through, as JSON text (`&serde_json::value::RawValue`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformInput<B = serde_json::Value> {
    /// The route's name.
    pub route: String,
    /// The model (resource) the request targets.
    pub model: String,
    /// The request body, JSON.
    pub body: B,
}

/// Output of the `transform_request` hook; `B` as in [`TransformInput`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransformOutput<B = serde_json::Value> {
    /// Forward this body instead.
    Body(B),
    /// Refuse the request with this reason (HTTP 400 or 413 as `too_large` says).
    Reject {
        /// Reason shown to the caller.
        reason: String,
        /// The payload exceeds a limit (413) rather than being malformed (400).
        #[serde(default)]
        too_large: bool,
    },
}
