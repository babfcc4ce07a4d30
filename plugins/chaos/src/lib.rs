//! A plugin that misbehaves on purpose, so the hosts' isolation can be tested with a real module: it loops
//! forever, traps, grows memory without bound, returns bytes that are not an envelope, or behaves.
//! Never configure it in production.
#![deny(missing_docs)]

use gatehouse_plugin_sdk::{
    AuthnInput, AuthnVerdict, Hook, Manifest, Plugin, PluginError, TransformInput, TransformOutput,
};
use serde::Deserialize;

/// The plugin.
pub struct Chaos;

/// How to misbehave.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Spin until the host stops it.
    Loop,
    /// Execute `unreachable`.
    Trap,
    /// Allocate until memory runs out.
    Hog,
    /// Return the input body unchanged.
    Echo,
}

/// Configuration.
#[derive(Debug, Deserialize)]
pub struct Config {
    /// What to do.
    pub mode: Mode,
}

impl Plugin for Chaos {
    type Config = Config;

    fn manifest() -> Manifest {
        gatehouse_plugin_sdk::manifest(
            "chaos",
            "transform",
            &[Hook::Authenticate, Hook::TransformRequest],
            gatehouse_plugin_sdk::serde_json::json!({"type": "object", "properties": {
                "mode": {"enum": ["loop", "trap", "hog", "echo"]}}}),
        )
    }

    fn authenticate(cfg: &Config, _input: AuthnInput) -> Result<AuthnVerdict, PluginError> {
        misbehave(cfg.mode);
        Err(PluginError::new("unsupported", "chaos does not authenticate"))
    }

    fn transform_request(cfg: &Config, input: TransformInput) -> Result<TransformOutput, PluginError> {
        misbehave(cfg.mode);
        Ok(TransformOutput::Body(input.body))
    }
}

fn misbehave(mode: Mode) {
    match mode {
        Mode::Loop => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        Mode::Trap => trap(),
        Mode::Hog => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        Mode::Echo => {}
    }
}

#[cfg(target_arch = "wasm32")]
fn trap() {
    core::arch::wasm32::unreachable()
}

#[cfg(not(target_arch = "wasm32"))]
fn trap() {
    std::process::abort()
}

gatehouse_plugin_sdk::export_plugin!(Chaos);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_behaves() {
        let cfg = Config { mode: Mode::Echo };
        let body = gatehouse_plugin_sdk::serde_json::json!({"a": 1});
        let out =
            Chaos::transform_request(&cfg, TransformInput { route: "r".into(), model: "m".into(), body: body.clone() });
        assert_eq!(out.unwrap(), TransformOutput::Body(body));
    }
}
