//! Backend adapter for Google Vertex AI.
//!
//! Online prediction on deployed endpoints (`:predict`, `:rawPredict`, `:streamRawPredict`, `:explain`) and
//! publisher models (`:generateContent`, `:streamGenerateContent`, streamed as server-sent events). The route's
//! model names an entry of `endpoints` (model → endpoint id) or `publisher_models` (model → publisher model
//! id); the operation is the text after the last `:` of the caller's path (or the route's `{operation}`).
//! The backend's base URL is the regional host `https://{location}-aiplatform.googleapis.com` or a dedicated
//! endpoint's DNS name; the path is the same for both.
#![deny(missing_docs)]

use gatehouse_plugin_sdk::adapt::{bad_request, count, detail, error_output, first_int, operation};
use gatehouse_plugin_sdk::serde_json::{Value, json};
use gatehouse_plugin_sdk::{
    AdaptInput, AdaptOutput, BackendRequest, ErrorInput, ErrorOutput, Facts, Hook, Manifest, Plugin, PluginError,
};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The plugin.
pub struct VertexAi;

/// Configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Google Cloud project id (or number).
    pub project: String,
    /// Region, e.g. `us-central1`.
    pub location: String,
    /// Route model → deployed endpoint id.
    #[serde(default)]
    pub endpoints: BTreeMap<String, String>,
    /// Route model → publisher model id (e.g. `gemini-2.0-flash`).
    #[serde(default)]
    pub publisher_models: BTreeMap<String, String>,
    /// The publisher of `publisher_models` (default `google`).
    #[serde(default = "google")]
    pub publisher: String,
}

fn google() -> String {
    "google".into()
}

const ENDPOINT_OPS: [&str; 4] = ["predict", "rawPredict", "streamRawPredict", "explain"];
const PUBLISHER_OPS: [&str; 2] = ["generateContent", "streamGenerateContent"];

impl Plugin for VertexAi {
    type Config = Config;

    fn manifest() -> Manifest {
        gatehouse_plugin_sdk::manifest(
            "vertex-ai",
            "adapter",
            &[Hook::AdaptRequest, Hook::AdaptError],
            json!({
                "type": "object",
                "required": ["project", "location"],
                "properties": {
                    "project": {"type": "string"},
                    "location": {"type": "string"},
                    "endpoints": {"type": "object", "additionalProperties": {"type": "string"}},
                    "publisher_models": {"type": "object", "additionalProperties": {"type": "string"}},
                    "publisher": {"type": "string"}
                }
            }),
        )
    }

    fn adapt_request(cfg: &Config, input: AdaptInput) -> Result<AdaptOutput, PluginError> {
        let Some(op) = operation(&input) else {
            return Ok(bad_request("the path names no Vertex AI operation (`...:predict`, `...:generateContent`)"));
        };
        let base = format!("/v1/projects/{}/locations/{}", cfg.project, cfg.location);
        let body = input.body;
        let mut facts =
            Facts { operation: Some(op.clone()), stream: Some(op.starts_with("stream")), ..Facts::default() };
        let path = if let Some(endpoint) = cfg.endpoints.get(&input.model) {
            if !ENDPOINT_OPS.contains(&op.as_str()) {
                return Ok(bad_request(format!("`{op}` is not an operation of a Vertex AI endpoint")));
            }
            if matches!(op.as_str(), "predict" | "explain") {
                if count(&body, "/instances").is_none() {
                    return Ok(bad_request("the payload needs an `instances` array"));
                }
                if body.get("parameters").is_some_and(|p| !p.is_object()) {
                    return Ok(bad_request("`parameters` must be an object"));
                }
            }
            facts.instances = count(&body, "/instances");
            facts.max_tokens =
                first_int(&body, &["/parameters/maxOutputTokens", "/parameters/max_tokens", "/parameters/maxTokens"]);
            facts.model_name = Some(endpoint.clone());
            format!("{base}/endpoints/{endpoint}:{op}")
        } else if let Some(model) = cfg.publisher_models.get(&input.model) {
            if !PUBLISHER_OPS.contains(&op.as_str()) {
                return Ok(bad_request(format!("`{op}` is not an operation of a Vertex AI publisher model")));
            }
            if count(&body, "/contents").is_none() {
                return Ok(bad_request("the payload needs a `contents` array"));
            }
            facts.instances = count(&body, "/contents");
            facts.max_tokens = first_int(&body, &["/generationConfig/maxOutputTokens"]);
            facts.model_name = Some(model.clone());
            let sse = if op == "streamGenerateContent" { "?alt=sse" } else { "" };
            format!("{base}/publishers/{}/models/{model}:{op}{sse}", cfg.publisher)
        } else {
            return Err(PluginError::new(
                "bad_config",
                format!("model `{}` is in neither `endpoints` nor `publisher_models`", input.model),
            ));
        };
        Ok(AdaptOutput::Request(BackendRequest { method: "POST".into(), path, headers: vec![], body, facts }))
    }

    /// Vertex AI errors are Google API errors: `{"error": {"code", "message", "status"}}`.
    fn adapt_error(_cfg: &Config, input: ErrorInput) -> Result<ErrorOutput, PluginError> {
        let status_name = serde_json::from_str::<Value>(&input.body)
            .ok()
            .and_then(|v| v.pointer("/error/status").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {}", input.status));
        let detail = detail(&input, &["/error/message"]);
        Ok(error_output(&input, &format!("Vertex AI: {status_name}"), detail))
    }
}

gatehouse_plugin_sdk::export_plugin!(VertexAi);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn cfg() -> Config {
        serde_json::from_value(json!({"project": "p", "location": "europe-west4",
            "endpoints": {"fraud": "123"}, "publisher_models": {"gemini": "gemini-2.0-flash"}}))
        .unwrap()
    }

    fn input(model: &str, path: &str, body: Value) -> AdaptInput {
        AdaptInput {
            route: "r".into(),
            model: model.into(),
            method: "POST".into(),
            path: path.into(),
            query: None,
            params: BTreeMap::new(),
            body,
        }
    }

    #[test]
    fn endpoint_prediction() {
        let body = json!({"instances": [[1], [2]], "parameters": {"maxOutputTokens": 300}});
        let AdaptOutput::Request(r) =
            VertexAi::adapt_request(&cfg(), input("fraud", "/m/fraud:predict", body.clone())).unwrap()
        else {
            panic!()
        };
        assert_eq!(r.path, "/v1/projects/p/locations/europe-west4/endpoints/123:predict");
        assert_eq!(r.body, body);
        assert_eq!(r.facts.instances, Some(2));
        assert_eq!(r.facts.max_tokens, Some(300));
        assert_eq!(r.facts.stream, Some(false));
    }

    #[test]
    fn streaming_generate_content_asks_for_sse() {
        let body = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
        let out = VertexAi::adapt_request(&cfg(), input("gemini", "/m/gemini:streamGenerateContent", body)).unwrap();
        let AdaptOutput::Request(r) = out else { panic!() };
        assert_eq!(
            r.path,
            "/v1/projects/p/locations/europe-west4/publishers/google/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(r.facts.stream, Some(true));
    }

    #[test]
    fn refusals() {
        let out = VertexAi::adapt_request(&cfg(), input("fraud", "/m/fraud:predict", json!({"x": 1}))).unwrap();
        assert!(matches!(out, AdaptOutput::Reject { .. }));
        let out = VertexAi::adapt_request(&cfg(), input("fraud", "/m/fraud:generateContent", json!({}))).unwrap();
        assert!(matches!(out, AdaptOutput::Reject { .. }));
        assert!(VertexAi::adapt_request(&cfg(), input("nope", "/m/nope:predict", json!({}))).is_err());
    }
}

/// Every corpus case, run natively: the e2e suite runs the same files through the wasm module.
#[test]
fn corpus_holds_natively() {
    let failures = gatehouse_plugin_sdk::run_corpus::<VertexAi>(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus"));
    assert_eq!(failures, Ok(Vec::<String>::new()));
}
