//! Backend adapter for OpenAI-compatible servers (OpenAI, Azure OpenAI's v1 API, vLLM, llama.cpp, TGI...).
//!
//! The caller's path ends with `/chat/completions`, `/completions` or `/embeddings`; the request goes to
//! `{base_path}` + that suffix with the body's `model` set to the backend's name for the route's model
//! (`models`; default the route's model itself). `stream: true` answers stream as server-sent events.
#![deny(missing_docs)]

use gatehouse_plugin_sdk::adapt::{bad_request, count, detail, error_output, first_int};
use gatehouse_plugin_sdk::serde_json::{Value, json};
use gatehouse_plugin_sdk::{
    AdaptInput, AdaptOutput, BackendRequest, ErrorInput, ErrorOutput, Facts, Hook, Manifest, Plugin, PluginError,
};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The plugin.
pub struct OpenAi;

/// Configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Route model → the backend's model name.
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// Path prefix of the backend's API (default `/v1`).
    #[serde(default = "v1")]
    pub base_path: String,
}

fn v1() -> String {
    "/v1".into()
}

const OPERATIONS: [(&str, &str, &str); 3] = [
    ("/chat/completions", "chat.completions", "messages"),
    ("/completions", "completions", "prompt"),
    ("/embeddings", "embeddings", "input"),
];

impl Plugin for OpenAi {
    type Config = Config;

    fn manifest() -> Manifest {
        gatehouse_plugin_sdk::manifest(
            "openai",
            "adapter",
            &[Hook::AdaptRequest, Hook::AdaptError],
            json!({
                "type": "object",
                "properties": {
                    "models": {"type": "object", "additionalProperties": {"type": "string"}},
                    "base_path": {"type": "string"}
                }
            }),
        )
    }

    fn adapt_request(cfg: &Config, input: AdaptInput) -> Result<AdaptOutput, PluginError> {
        let Some((suffix, op, required)) = OPERATIONS.iter().find(|(s, _, _)| input.path.ends_with(s)) else {
            return Ok(bad_request(
                "the path names no OpenAI operation (`/chat/completions`, `/completions`, `/embeddings`)",
            ));
        };
        let mut body = input.body;
        let Some(obj) = body.as_object_mut() else {
            return Ok(bad_request("the payload must be a JSON object"));
        };
        if !obj.contains_key(*required) {
            return Ok(bad_request(format!("the payload needs `{required}`")));
        }
        let name = cfg.models.get(&input.model).cloned().unwrap_or(input.model);
        obj.insert("model".into(), Value::String(name.clone()));
        let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let instances = match *op {
            "embeddings" => count(&body, "/input").or(Some(1)),
            "chat.completions" => count(&body, "/messages"),
            _ => count(&body, "/prompt").or(Some(1)),
        };
        let facts = Facts {
            operation: Some((*op).to_owned()),
            model_name: Some(name),
            instances,
            max_tokens: first_int(&body, &["/max_completion_tokens", "/max_tokens"]),
            stream: Some(stream),
            ..Facts::default()
        };
        let path = format!("{}{suffix}", cfg.base_path.trim_end_matches('/'));
        Ok(AdaptOutput::Request(BackendRequest { method: "POST".into(), path, headers: vec![], body, facts }))
    }

    /// OpenAI errors: `{"error": {"message", "type", "param", "code"}}`.
    fn adapt_error(_cfg: &Config, input: ErrorInput) -> Result<ErrorOutput, PluginError> {
        let kind = serde_json::from_str::<Value>(&input.body)
            .ok()
            .and_then(|v| v.pointer("/error/type").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {}", input.status));
        let detail = detail(&input, &["/error/message"]);
        Ok(error_output(&input, &format!("model server: {kind}"), detail))
    }
}

gatehouse_plugin_sdk::export_plugin!(OpenAi);

/// Every corpus case, run natively: the e2e suite runs the same files through the wasm module.
#[test]
fn corpus_holds_natively() {
    let failures = gatehouse_plugin_sdk::run_corpus::<OpenAi>(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus"));
    assert_eq!(failures, Ok(Vec::<String>::new()));
}
