//! Backend adapter for Azure Machine Learning managed online endpoints.
//!
//! The backend's base URL is the endpoint's scoring host, `https://{endpoint}.{region}.inference.ml.azure.com`;
//! requests go to `path` (default `/score`). A route's model may be pinned to a deployment with the
//! `azureml-model-deployment` header (`deployments`: model → deployment); otherwise the endpoint's traffic rules
//! choose. Bodies are MLflow (`{"input_data": ...}`) or free-form JSON, passed through unchanged.
#![deny(missing_docs)]

use gatehouse_plugin_sdk::adapt::{bad_request, count, detail, error_output};
use gatehouse_plugin_sdk::serde_json::json;
use gatehouse_plugin_sdk::{
    AdaptInput, AdaptOutput, BackendRequest, ErrorInput, ErrorOutput, Facts, Hook, Manifest, Plugin, PluginError,
};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The plugin.
pub struct AzureMl;

/// Configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Route model → deployment name, sent as `azureml-model-deployment`.
    #[serde(default)]
    pub deployments: BTreeMap<String, String>,
    /// The scoring path (default `/score`).
    #[serde(default = "score")]
    pub path: String,
    /// Refuse bodies that are not MLflow `input_data` payloads.
    #[serde(default)]
    pub require_mlflow: bool,
}

fn score() -> String {
    "/score".into()
}

impl Plugin for AzureMl {
    type Config = Config;

    fn manifest() -> Manifest {
        gatehouse_plugin_sdk::manifest(
            "azure-ml",
            "adapter",
            &[Hook::AdaptRequest, Hook::AdaptError],
            json!({
                "type": "object",
                "properties": {
                    "deployments": {"type": "object", "additionalProperties": {"type": "string"}},
                    "path": {"type": "string"},
                    "require_mlflow": {"type": "boolean"}
                }
            }),
        )
    }

    fn adapt_request(cfg: &Config, input: AdaptInput) -> Result<AdaptOutput, PluginError> {
        let body = input.body;
        if !body.is_object() && !body.is_array() {
            return Ok(bad_request("the payload must be a JSON object or array"));
        }
        let mlflow = body.get("input_data");
        if cfg.require_mlflow && mlflow.is_none() {
            return Ok(bad_request("the payload needs `input_data` (MLflow)"));
        }
        // MLflow: split orientation {"columns", "index", "data"}, a list of records, or named tensors.
        let instances = match mlflow {
            Some(d) if d.is_array() => count(d, ""),
            Some(d) => count(d, "/data"),
            None => count(&body, "/data").or_else(|| count(&body, "")),
        };
        let deployment = cfg.deployments.get(&input.model).cloned();
        let headers = deployment.iter().map(|d| ("azureml-model-deployment".to_owned(), d.clone())).collect();
        let facts = Facts {
            operation: Some("score".into()),
            model_name: Some(input.model),
            deployment,
            instances,
            stream: Some(false),
            ..Facts::default()
        };
        Ok(AdaptOutput::Request(BackendRequest { method: "POST".into(), path: cfg.path.clone(), headers, body, facts }))
    }

    /// Azure ML answers errors as `{"message": ...}`, `{"error": {"code", "message"}}` or plain text
    /// (424 when the model's own code failed, 408 on a scoring timeout, 429 over the request limit).
    fn adapt_error(_cfg: &Config, input: ErrorInput) -> Result<ErrorOutput, PluginError> {
        let detail = detail(&input, &["/error/message", "/message", "/detail"]);
        let title = match input.status {
            424 => "Azure ML: the model failed",
            408 => "Azure ML: scoring timed out",
            429 => "Azure ML: too many requests",
            401 | 403 => "Azure ML: the gateway's credential was refused",
            _ => "Azure ML: the endpoint failed",
        };
        Ok(error_output(&input, title, detail))
    }
}

gatehouse_plugin_sdk::export_plugin!(AzureMl);

/// Every corpus case, run natively: the e2e suite runs the same files through the wasm module.
#[test]
fn corpus_holds_natively() {
    let failures = gatehouse_plugin_sdk::run_corpus::<AzureMl>(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus"));
    assert_eq!(failures, Ok(Vec::<String>::new()));
}
