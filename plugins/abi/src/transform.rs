//! The `transform_request` hook.

use serde::{Deserialize, Serialize};

/// Input of the `transform_request` hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformInput {
    /// The route's name.
    pub route: String,
    /// The model (resource) the request targets.
    pub model: String,
    /// The request body parsed as JSON.
    pub body: serde_json::Value,
}

/// Output of the `transform_request` hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransformOutput {
    /// Forward this body instead.
    Body(serde_json::Value),
    /// Refuse the request with this reason (HTTP 400 or 413 as `too_large` says).
    Reject {
        /// Reason shown to the caller.
        reason: String,
        /// The payload exceeds a limit (413) rather than being malformed (400).
        #[serde(default)]
        too_large: bool,
    },
}
