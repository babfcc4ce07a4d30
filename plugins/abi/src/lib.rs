//! The Gatehouse plugin ABI, version 1: the types that cross the boundary between a host and a plugin.
//!
//! A plugin is a core WASM module that imports nothing. The exports and the memory ownership rules are
//! described in `ABI.md` beside this crate; this crate holds the names of those exports and the JSON shapes
//! of every hook's input and output, so that the host, the SDK and tests agree on them by construction.
#![deny(missing_docs)]

mod adapt;
mod authn;
mod transform;

pub use adapt::{AdaptInput, AdaptOutput, BackendRequest, ErrorInput, ErrorOutput, Facts};
pub use authn::{AuthnInput, AuthnVerdict, Identity, PrincipalKind, Refusal, RefusalCode};
pub use transform::{TransformInput, TransformOutput};

use serde::{Deserialize, Serialize};

/// The ABI version this crate describes; a plugin announces it through [`exports::ABI_VERSION`].
pub const ABI_VERSION: u32 = 1;

/// Names of the functions a plugin module exports.
pub mod exports {
    /// `() -> i32`: the ABI version the plugin was built for.
    pub const ABI_VERSION: &str = "gatehouse_abi_version";
    /// `(len: i32) -> i32`: allocates `len` bytes in guest memory for the host to write an argument into.
    pub const ALLOC: &str = "gatehouse_alloc";
    /// `() -> i64`: the manifest as a packed region (see [`crate::pack`]) of JSON.
    pub const MANIFEST: &str = "gatehouse_manifest";
    /// The module's linear memory.
    pub const MEMORY: &str = "memory";
    /// Prefix of hook exports: `gatehouse_hook_<hook>(cfg_ptr, cfg_len, in_ptr, in_len) -> i64`.
    pub const HOOK_PREFIX: &str = "gatehouse_hook_";
}

/// A point in the request pipeline at which a plugin can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// Validates the caller's credential and returns an [`Identity`] or a [`Refusal`].
    Authenticate,
    /// Reshapes, limits or redacts the request payload before it is forwarded.
    TransformRequest,
    /// Turns the request into a backend's wire format and states facts about it for the policy.
    AdaptRequest,
    /// Turns a backend's error answer into a problem for the caller.
    AdaptError,
}

impl Hook {
    /// All hooks of this ABI version.
    pub const ALL: [Hook; 4] = [Hook::Authenticate, Hook::TransformRequest, Hook::AdaptRequest, Hook::AdaptError];

    /// The hook's name as used in manifests and export names.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Authenticate => "authenticate",
            Hook::TransformRequest => "transform_request",
            Hook::AdaptRequest => "adapt_request",
            Hook::AdaptError => "adapt_error",
        }
    }

    /// The name of the export that implements this hook.
    pub fn export_name(self) -> String {
        format!("{}{}", exports::HOOK_PREFIX, self.name())
    }
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Short name, e.g. `jwt`.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// What kind of plugin this is: `authn`, `transform` or `adapter`.
    pub kind: String,
    /// The hooks the module exports.
    pub hooks: Vec<Hook>,
    /// A JSON description of the plugin's configuration (a JSON Schema subset).
    pub config: serde_json::Value,
}

/// The envelope every hook returns: exactly one of `ok` and `error` is present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookResult<T> {
    /// The hook ran; its output.
    Ok(T),
    /// The hook could not run (bad configuration, unreadable input): the host denies the request.
    Error(PluginError),
}

/// A plugin's failure to do its job, as opposed to a verdict such as a [`Refusal`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginError {
    /// A stable, machine-readable code such as `bad_config` or `bad_input`.
    pub code: String,
    /// A human-readable explanation; it must never contain a credential.
    pub message: String,
}

impl PluginError {
    /// A new error with `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        PluginError { code: code.into(), message: message.into() }
    }
}

/// Packs a guest memory region into the `i64` that hook and manifest exports return: pointer in the high
/// 32 bits, length in the low 32 bits.
pub fn pack(ptr: u32, len: u32) -> i64 {
    ((u64::from(ptr) << 32) | u64::from(len)) as i64
}

/// Splits a packed region into `(ptr, len)`.
pub fn unpack(packed: i64) -> (u32, u32) {
    let v = packed as u64;
    ((v >> 32) as u32, (v & 0xffff_ffff) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips() {
        for (p, l) in [(0, 0), (1, 2), (u32::MAX, u32::MAX), (65536, 7)] {
            assert_eq!(unpack(pack(p, l)), (p, l));
        }
    }

    #[test]
    fn hook_names_match_serde() {
        for hook in Hook::ALL {
            let json = serde_json::to_string(&hook).unwrap();
            assert_eq!(json, format!("\"{}\"", hook.name()));
        }
    }
}
