//! Reshape, limit and redact JSON request payloads.
//!
//! Configuration (every part optional; paths are RFC 6901 JSON pointers), applied in this order:
//! `require` (400 when a path is missing), `max_items` (413 when an array is longer), `redact` (remove),
//! `set` (insert or overwrite).
//!
//! The plugin works on the payload's JSON text ([`text`]): it finds the spans the paths name and splices the
//! text, so whatever the configuration does not touch reaches the backend as the caller sent it. Where the
//! text is ambiguous for a tree (a key twice in an object on a path) it parses the payload and applies the
//! same steps to the tree ([`Transform::transform_request`]), the reference both paths are tested against.
#![deny(missing_docs)]

use gatehouse_plugin_sdk::{
    Hook, JsonText, Manifest, Plugin, PluginError, TextTransformInput, TextTransformOutput, TransformInput,
    TransformOutput, serde_json, serde_json::Value,
};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;

pub mod text;

/// The plugin.
pub struct Transform;

/// Configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Paths that must be present.
    #[serde(default)]
    pub require: Vec<String>,
    /// Longest allowed array at each path.
    #[serde(default)]
    pub max_items: BTreeMap<String, usize>,
    /// Paths removed before forwarding.
    #[serde(default)]
    pub redact: Vec<String>,
    /// Values written at each path before forwarding.
    #[serde(default)]
    pub set: BTreeMap<String, Value>,
}

impl Plugin for Transform {
    type Config = Config;

    fn manifest() -> Manifest {
        gatehouse_plugin_sdk::manifest(
            "transform",
            "transform",
            &[Hook::TransformRequest],
            gatehouse_plugin_sdk::serde_json::json!({
                "type": "object",
                "properties": {
                    "require": {"type": "array", "items": {"type": "string", "format": "json-pointer"}},
                    "max_items": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                    "redact": {"type": "array", "items": {"type": "string", "format": "json-pointer"}},
                    "set": {"type": "object"}
                }
            }),
        )
    }

    const TRANSFORMS_TEXT: bool = true;

    fn transform_request_text(cfg: &Config, input: TextTransformInput) -> Result<TextTransformOutput, PluginError> {
        match text::transform(cfg, input.body.get()) {
            Ok(text::Outcome::Unchanged) => return Ok(TransformOutput::Body(input.body.into())),
            // Not parsed again: splices keep the text one JSON value (the differential test checks every case),
            // and the host refuses output that is not.
            Ok(text::Outcome::Edited(edited)) => return Ok(TransformOutput::Body(JsonText(edited.into()))),
            Ok(text::Outcome::Refused(refusal)) => return Ok(refusal),
            Ok(text::Outcome::Error(e)) => return Err(e),
            Err(text::Tree) => {}
        }
        let body: Value =
            serde_json::from_str(input.body.get()).map_err(|e| PluginError::new("bad_input", e.to_string()))?;
        match Self::transform_request(cfg, TransformInput { route: input.route, model: input.model, body })? {
            TransformOutput::Body(v) => serde_json::to_string(&v)
                .map(|text| TransformOutput::Body(JsonText(text.into())))
                .map_err(|e| PluginError::new("internal", e.to_string())),
            TransformOutput::Reject { reason, too_large } => Ok(reject(reason, too_large)),
        }
    }

    /// The reference: the same steps on the parsed payload.
    fn transform_request(cfg: &Config, input: TransformInput) -> Result<TransformOutput, PluginError> {
        let mut body = input.body;
        if let Some(missing) = cfg.require.iter().find(|p| body.pointer(p).is_none()) {
            return Ok(lacks(missing));
        }
        for (path, max) in &cfg.max_items {
            if let Some(len) = body.pointer(path).and_then(Value::as_array).map(Vec::len)
                && len > *max
            {
                return Ok(too_many(path, len, *max));
            }
        }
        for path in &cfg.redact {
            remove(&mut body, path);
        }
        for (path, value) in &cfg.set {
            set(&mut body, path, value.clone())?;
        }
        Ok(TransformOutput::Body(body))
    }
}

gatehouse_plugin_sdk::export_plugin!(Transform);

fn reject<B>(reason: String, too_large: bool) -> TransformOutput<B> {
    TransformOutput::Reject { reason, too_large }
}

/// The refusal of a payload without a `require`d path (both paths answer with these three).
fn lacks<B>(path: &str) -> TransformOutput<B> {
    reject(format!("the payload lacks `{path}`"), false)
}

/// The refusal of an array longer than its `max_items`.
fn too_many<B>(path: &str, len: usize, max: usize) -> TransformOutput<B> {
    reject(format!("`{path}` has {len} items; at most {max} are allowed"), true)
}

/// The error of a `set` whose parent is missing or not an object.
fn cannot_set(path: &str) -> PluginError {
    PluginError::new("bad_config", format!("cannot set `{path}`: its parent is not an object"))
}

fn split(path: &str) -> Option<(&str, Cow<'_, str>)> {
    let (parent, last) = path.rsplit_once('/')?;
    Some((parent, unescape(last)))
}

/// A JSON pointer token's text (RFC 6901: `~1` is `/`, then `~0` is `~`).
fn unescape(token: &str) -> Cow<'_, str> {
    if token.contains('~') { Cow::Owned(token.replace("~1", "/").replace("~0", "~")) } else { Cow::Borrowed(token) }
}

fn remove(body: &mut Value, path: &str) {
    let Some((parent, key)) = split(path) else { return };
    match body.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.remove(key.as_ref());
        }
        Some(Value::Array(items)) => {
            if let Ok(i) = key.parse::<usize>()
                && i < items.len()
            {
                items.remove(i);
            }
        }
        _ => {}
    }
}

fn set(body: &mut Value, path: &str, value: Value) -> Result<(), PluginError> {
    let (parent, key) = split(path).ok_or_else(|| cannot_set(path))?;
    match body.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(key.into_owned(), value);
            Ok(())
        }
        _ => Err(cannot_set(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_plugin_sdk::serde_json::json;

    fn run(cfg: Value, body: Value) -> TransformOutput {
        let cfg: Config = serde_json::from_value(cfg).unwrap();
        let input = TransformInput { route: "r".into(), model: "m".into(), body };
        Transform::transform_request(&cfg, input).unwrap()
    }

    #[test]
    fn redacts_sets_and_limits() {
        let cfg = json!({"redact": ["/user/ssn", "/debug"], "set": {"/parameters/temperature": 0.2},
                         "max_items": {"/instances": 2}, "require": ["/instances"]});
        let out = run(
            cfg.clone(),
            json!({"instances": [1, 2], "parameters": {}, "debug": true,
                                          "user": {"ssn": "123", "name": "a"}}),
        );
        assert_eq!(
            out,
            TransformOutput::Body(json!({"instances": [1, 2], "parameters": {"temperature": 0.2},
                                                      "user": {"name": "a"}}))
        );
        assert!(matches!(
            run(cfg.clone(), json!({"instances": [1, 2, 3]})),
            TransformOutput::Reject { too_large: true, .. }
        ));
        assert!(matches!(run(cfg, json!({"x": 1})), TransformOutput::Reject { too_large: false, .. }));
    }

    /// Every corpus case, run natively (through the text path and its envelope): the e2e suite runs the same
    /// files through the wasm module.
    #[test]
    fn corpus_holds_natively() {
        let failures =
            gatehouse_plugin_sdk::run_corpus::<Transform>(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus"));
        assert_eq!(failures, Ok(Vec::<String>::new()));
    }

    #[test]
    fn unknown_config_is_an_error() {
        assert!(serde_json::from_value::<Config>(json!({"redcat": []})).is_err());
    }
}
