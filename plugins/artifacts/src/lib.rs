//! The built-in plugin modules, compiled from `plugins/*` for `wasm32-unknown-unknown` by this crate's build
//! script. Nothing here is checked in: the modules are rebuilt whenever a plugin's source changes.
#![deny(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

/// The embedded module of built-in plugin `name`.
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
}

/// The path of the module of plugin `name`, test fixtures included.
pub fn path(name: &str) -> Option<&'static str> {
    ALL_PATHS.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}
