//! The Gatehouse plugin SDK.
//!
//! A plugin is a type that implements [`Plugin`] plus one call to [`export_plugin!`]; build the crate as a
//! `cdylib` for `wasm32-unknown-unknown` and the result is a module that imports nothing and exports exactly
//! what `plugins/abi/ABI.md` describes:
//!
//! ```
//! use gatehouse_plugin_sdk::{Plugin, Manifest, Hook, PluginError, TransformInput, TransformOutput};
//!
//! pub struct Uppercase;
//!
//! #[derive(serde::Deserialize)]
//! pub struct Config { field: String }
//!
//! impl Plugin for Uppercase {
//!     type Config = Config;
//!     fn manifest() -> Manifest {
//!         gatehouse_plugin_sdk::manifest("uppercase", "transform", &[Hook::TransformRequest],
//!             serde_json::json!({"type": "object", "properties": {"field": {"type": "string"}}}))
//!     }
//!     fn transform_request(cfg: &Config, mut input: TransformInput) -> Result<TransformOutput, PluginError> {
//!         if let Some(v) = input.body.get_mut(&cfg.field) {
//!             if let Some(s) = v.as_str() { *v = s.to_uppercase().into(); }
//!         }
//!         Ok(TransformOutput::Body(input.body))
//!     }
//! }
//!
//! gatehouse_plugin_sdk::export_plugin!(Uppercase);
//! ```
//!
//! On targets other than wasm32 the macro exports nothing, so the plugin's own unit tests call the trait
//! directly and several plugins can be linked into one native binary.
#![deny(missing_docs)]

pub use gatehouse_plugin_abi::{
    self as abi, AdaptInput, AdaptOutput, AuthnInput, AuthnVerdict, BackendRequest, ErrorInput, ErrorOutput, Facts,
    Hook, HookResult, Identity, Manifest, PluginError, PrincipalKind, Refusal, RefusalCode, TransformInput,
    TransformOutput,
};
pub use serde_json;
pub use serde_json::value::RawValue;

use serde::de::DeserializeOwned;

/// The `transform_request` input with the body as the caller's JSON text (see [`Plugin::TRANSFORMS_TEXT`]).
pub type TextTransformInput = TransformInput<Box<RawValue>>;
/// The `transform_request` output with the body as JSON text (see [`Plugin::TRANSFORMS_TEXT`]).
pub type TextTransformOutput = TransformOutput<JsonText>;

/// A body as JSON text, published as it is: the plugin vouches that it is one JSON value (the host checks it,
/// and refuses the output otherwise), so the SDK does not parse it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(pub Box<str>);

impl From<Box<RawValue>> for JsonText {
    fn from(raw: Box<RawValue>) -> JsonText {
        JsonText(raw.into())
    }
}

/// A Gatehouse plugin: a pure function of its configuration and its input. Every hook has a default that
/// answers `unsupported`; implement the ones the manifest lists.
pub trait Plugin {
    /// The plugin's configuration, deserialized from the JSON the host passes with every call.
    type Config: DeserializeOwned;

    /// What the plugin says about itself.
    fn manifest() -> Manifest;

    /// The `authenticate` hook.
    fn authenticate(_config: &Self::Config, _input: AuthnInput) -> Result<AuthnVerdict, PluginError> {
        Err(unsupported(Hook::Authenticate))
    }

    /// The `transform_request` hook.
    fn transform_request(_config: &Self::Config, _input: TransformInput) -> Result<TransformOutput, PluginError> {
        Err(unsupported(Hook::TransformRequest))
    }

    /// Whether the exported `transform_request` calls [`Plugin::transform_request_text`] (the body as the
    /// caller's JSON text, checked but not parsed) instead of [`Plugin::transform_request`] (the body parsed
    /// into a tree). A plugin that edits a few spans of the text saves the parse and the re-encoding, and what
    /// it leaves alone reaches the backend byte for byte (numbers, key order, duplicate keys).
    const TRANSFORMS_TEXT: bool = false;

    /// The `transform_request` hook on the body's JSON text; called instead of
    /// [`Plugin::transform_request`] when [`Plugin::TRANSFORMS_TEXT`] is set.
    fn transform_request_text(
        _config: &Self::Config,
        _input: TextTransformInput,
    ) -> Result<TextTransformOutput, PluginError> {
        Err(unsupported(Hook::TransformRequest))
    }

    /// The `adapt_request` hook.
    fn adapt_request(_config: &Self::Config, _input: AdaptInput) -> Result<AdaptOutput, PluginError> {
        Err(unsupported(Hook::AdaptRequest))
    }

    /// The `adapt_error` hook.
    fn adapt_error(_config: &Self::Config, _input: ErrorInput) -> Result<ErrorOutput, PluginError> {
        Err(unsupported(Hook::AdaptError))
    }
}

/// Runs every case of a plugin's corpus (`tests/corpus/*.json`: `{"hook", "config", "input", "expect"}`)
/// natively through `P`; returns the cases whose envelope differs from `expect` (file and what came out), or why
/// the corpus could not be read. The e2e suite runs the same files through the wasm module.
pub fn run_corpus<P: Plugin>(dir: &str) -> Result<Vec<String>, String> {
    use serde_json::Value;
    let mut failures = Vec::new();
    let mut files: Vec<_> =
        std::fs::read_dir(dir).map_err(|e| format!("{dir}: {e}"))?.flatten().map(|e| e.path()).collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{dir} holds no case"));
    }
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let case: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let part = |k: &str| serde_json::to_vec(case.get(k).unwrap_or(&Value::Null)).unwrap_or_default();
        let (cfg, input) = (part("config"), part("input"));
        let got = match case.get("hook").and_then(Value::as_str) {
            Some("authenticate") => serde_json::to_value(rt::call(&cfg, &input, P::authenticate)),
            Some("transform_request") if P::TRANSFORMS_TEXT => {
                let envelope = rt::text_envelope(rt::call(&cfg, &input, P::transform_request_text));
                serde_json::from_slice(&envelope)
            }
            Some("transform_request") => serde_json::to_value(rt::call(&cfg, &input, P::transform_request)),
            Some("adapt_request") => serde_json::to_value(rt::call(&cfg, &input, P::adapt_request)),
            Some("adapt_error") => serde_json::to_value(rt::call(&cfg, &input, P::adapt_error)),
            other => return Err(format!("{}: unknown hook {other:?}", path.display())),
        }
        .map_err(|e| e.to_string())?;
        if Some(&got) != case.get("expect") {
            failures.push(format!("{}: got {got}", path.display()));
        }
    }
    Ok(failures)
}

/// Builds a [`Manifest`] whose version is the plugin crate's.
pub fn manifest(name: &str, kind: &str, hooks: &[Hook], config: serde_json::Value) -> Manifest {
    Manifest { name: name.to_owned(), version: env_version(), kind: kind.to_owned(), hooks: hooks.to_vec(), config }
}

fn env_version() -> String {
    option_env!("CARGO_PKG_VERSION").unwrap_or("0.0.0").to_owned()
}

fn unsupported(hook: Hook) -> PluginError {
    PluginError::new("unsupported", format!("this plugin does not implement `{}`", hook.name()))
}

/// Exports a [`Plugin`] implementation as the functions of ABI v1 (on wasm32 only).
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        mod __gatehouse_exports {
            use super::*;

            #[unsafe(no_mangle)]
            pub extern "C" fn gatehouse_abi_version() -> i32 {
                $crate::abi::ABI_VERSION as i32
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn gatehouse_alloc(len: i32) -> i32 {
                $crate::rt::alloc(len)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn gatehouse_manifest() -> i64 {
                $crate::rt::publish_json(&<$plugin as $crate::Plugin>::manifest())
            }

            /// # Safety
            /// The host passes regions it obtained from `gatehouse_alloc` and filled.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn gatehouse_hook_authenticate(c: i32, cl: i32, i: i32, il: i32) -> i64 {
                unsafe { $crate::rt::run(c, cl, i, il, <$plugin as $crate::Plugin>::authenticate) }
            }

            /// # Safety
            /// The host passes regions it obtained from `gatehouse_alloc` and filled.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn gatehouse_hook_transform_request(c: i32, cl: i32, i: i32, il: i32) -> i64 {
                if <$plugin as $crate::Plugin>::TRANSFORMS_TEXT {
                    unsafe { $crate::rt::run_text(c, cl, i, il, <$plugin as $crate::Plugin>::transform_request_text) }
                } else {
                    unsafe { $crate::rt::run(c, cl, i, il, <$plugin as $crate::Plugin>::transform_request) }
                }
            }

            /// # Safety
            /// The host passes regions it obtained from `gatehouse_alloc` and filled.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn gatehouse_hook_adapt_request(c: i32, cl: i32, i: i32, il: i32) -> i64 {
                unsafe { $crate::rt::run(c, cl, i, il, <$plugin as $crate::Plugin>::adapt_request) }
            }

            /// # Safety
            /// The host passes regions it obtained from `gatehouse_alloc` and filled.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn gatehouse_hook_adapt_error(c: i32, cl: i32, i: i32, il: i32) -> i64 {
                unsafe { $crate::rt::run(c, cl, i, il, <$plugin as $crate::Plugin>::adapt_error) }
            }
        }
    };
}

#[doc(hidden)]
pub mod rt {
    //! The raw side of the boundary, used by [`export_plugin!`](crate::export_plugin). Every function here
    //! turns failures into an error envelope; none panics on bad input.
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        /// The last region returned to the host; valid until the next call into the module.
        static OUTPUT: RefCell<Box<[u8]>> = RefCell::new(Box::default());
    }

    /// Allocates `len` bytes the host fills with an argument; ownership passes to the callee.
    pub fn alloc(len: i32) -> i32 {
        let len = usize::try_from(len).unwrap_or(0);
        let region: Box<[u8]> = vec![0u8; len].into_boxed_slice();
        Box::into_raw(region) as *mut u8 as usize as i32
    }

    /// Takes back a region made by [`alloc`].
    ///
    /// # Safety
    /// `ptr`/`len` must come from one call of [`alloc`] and be taken once.
    pub unsafe fn take(ptr: i32, len: i32) -> Box<[u8]> {
        let len = usize::try_from(len).unwrap_or(0);
        if len == 0 {
            return Box::default();
        }
        let slice = std::ptr::slice_from_raw_parts_mut(ptr as usize as *mut u8, len);
        // SAFETY: the caller guarantees the region came from `alloc` with this length.
        unsafe { Box::from_raw(slice) }
    }

    /// Serializes `value` and hands it to the host as a packed region.
    pub fn publish_json<T: serde::Serialize>(value: &T) -> i64 {
        let bytes = serde_json::to_vec(value).unwrap_or_else(|e| {
            let err: HookResult<()> = HookResult::Error(PluginError::new("internal", e.to_string()));
            serde_json::to_vec(&err).unwrap_or_default()
        });
        publish(bytes.into_boxed_slice())
    }

    fn publish(bytes: Box<[u8]>) -> i64 {
        let ptr = bytes.as_ptr() as usize as u32;
        let len = bytes.len() as u32;
        OUTPUT.with(|out| *out.borrow_mut() = bytes);
        abi::pack(ptr, len)
    }

    /// Runs one hook: decodes config and input, calls `f`, publishes the envelope.
    ///
    /// # Safety
    /// Both regions must come from [`alloc`].
    pub unsafe fn run<C, I, O>(
        cfg_ptr: i32,
        cfg_len: i32,
        in_ptr: i32,
        in_len: i32,
        f: fn(&C, I) -> Result<O, PluginError>,
    ) -> i64
    where
        C: DeserializeOwned,
        I: DeserializeOwned,
        O: serde::Serialize,
    {
        // SAFETY: forwarded from the caller.
        let (cfg, input) = unsafe { (take(cfg_ptr, cfg_len), take(in_ptr, in_len)) };
        publish_json(&call(&cfg, &input, f))
    }

    /// [`run`] for [`Plugin::transform_request_text`]: the body's text goes into the envelope as it is.
    ///
    /// # Safety
    /// Both regions must come from [`alloc`].
    pub unsafe fn run_text<C: DeserializeOwned>(
        cfg_ptr: i32,
        cfg_len: i32,
        in_ptr: i32,
        in_len: i32,
        f: fn(&C, TextTransformInput) -> Result<TextTransformOutput, PluginError>,
    ) -> i64 {
        // SAFETY: forwarded from the caller.
        let (cfg, input) = unsafe { (take(cfg_ptr, cfg_len), take(in_ptr, in_len)) };
        publish(text_envelope(call(&cfg, &input, f)).into_boxed_slice())
    }

    /// The envelope of a text transform's result: `{"ok":{"body":<the text>}}` written around the text, the
    /// rest serialized.
    pub fn text_envelope(result: HookResult<TextTransformOutput>) -> Vec<u8> {
        let out = match result {
            HookResult::Ok(TransformOutput::Body(JsonText(text))) => {
                let mut out = Vec::with_capacity(text.len() + 20);
                out.extend_from_slice(br#"{"ok":{"body":"#);
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"}}");
                return out;
            }
            HookResult::Ok(TransformOutput::Reject { reason, too_large }) => {
                serde_json::to_vec(&HookResult::Ok(TransformOutput::<()>::Reject { reason, too_large }))
            }
            HookResult::Error(e) => serde_json::to_vec(&HookResult::<()>::Error(e)),
        };
        out.unwrap_or_default()
    }

    /// Decodes and calls; shared by the wasm exports and native tests.
    pub fn call<C, I, O>(cfg: &[u8], input: &[u8], f: fn(&C, I) -> Result<O, PluginError>) -> HookResult<O>
    where
        C: DeserializeOwned,
        I: DeserializeOwned,
    {
        let cfg: C = match serde_json::from_slice(cfg) {
            Ok(c) => c,
            Err(e) => return HookResult::Error(PluginError::new("bad_config", e.to_string())),
        };
        let input: I = match serde_json::from_slice(input) {
            Ok(i) => i,
            Err(e) => return HookResult::Error(PluginError::new("bad_input", e.to_string())),
        };
        match f(&cfg, input) {
            Ok(o) => HookResult::Ok(o),
            Err(e) => HookResult::Error(e),
        }
    }
}

pub mod adapt {
    //! Helpers that backend adapters share: the operation named by the caller's path, counting instances, and
    //! mapping a backend's error answer to the caller's status.
    use crate::{AdaptInput, AdaptOutput, ErrorInput, ErrorOutput};
    use serde_json::Value;

    /// The operation the caller asked for: the route's `{operation}` parameter, else the text after the last
    /// `:` of the path's last segment (`/v1/models/fraud:predict` → `predict`).
    pub fn operation(input: &AdaptInput) -> Option<String> {
        if let Some(op) = input.params.get("operation") {
            return Some(op.clone());
        }
        let last = input.path.rsplit('/').next()?;
        last.rsplit_once(':').map(|(_, op)| op.to_owned()).filter(|op| !op.is_empty())
    }

    /// A refusal with status 400.
    pub fn bad_request(reason: impl Into<String>) -> AdaptOutput {
        AdaptOutput::Reject { reason: reason.into(), too_large: false }
    }

    /// The length of the array at `pointer`, if there is one.
    pub fn count(body: &Value, pointer: &str) -> Option<i64> {
        body.pointer(pointer).and_then(Value::as_array).map(|a| i64::try_from(a.len()).unwrap_or(i64::MAX))
    }

    /// The first integer found at one of `pointers`.
    pub fn first_int(body: &Value, pointers: &[&str]) -> Option<i64> {
        pointers.iter().find_map(|p| body.pointer(p).and_then(Value::as_i64))
    }

    /// The backend's own explanation: the first string at `pointers` in a JSON body, else the body itself,
    /// cut to 500 characters.
    pub fn detail(input: &ErrorInput, pointers: &[&str]) -> String {
        let from_json = serde_json::from_str::<Value>(&input.body)
            .ok()
            .and_then(|v| pointers.iter().find_map(|p| v.pointer(p).and_then(Value::as_str).map(str::to_owned)));
        let text = from_json.unwrap_or_else(|| input.body.trim().to_owned());
        let text = if text.is_empty() { format!("the backend answered {}", input.status) } else { text };
        text.chars().take(500).collect()
    }

    /// What the caller gets for a backend error status: the caller's own mistakes (400, 404 of a request
    /// entity, 413, 422) and back-pressure (429, 503) keep their status; the gateway's credential being refused
    /// (401, 403) and other backend failures are 502; backend timeouts (408, 504) are 504.
    pub fn caller_status(backend: u16) -> u16 {
        match backend {
            400 | 413 | 422 | 429 | 503 => backend,
            408 | 504 => 504,
            _ => 502,
        }
    }

    /// Builds the error output from a backend status, a title and the backend's detail.
    pub fn error_output(input: &ErrorInput, title: &str, detail: String) -> ErrorOutput {
        let status = caller_status(input.status);
        let retry_after = matches!(status, 429 | 503).then_some(1);
        ErrorOutput { status, title: title.to_owned(), detail, retry_after }
    }
}

/// The allocator of plugin modules (wasm32 only): a bump allocator over a 256 KiB arena in `.bss`.
///
/// Every call starts from the instance's initial state (ABI v1: a fresh or completely reset instance), so
/// nothing needs freeing, and because the arena is part of the module's initial memory a typical call never
/// executes `memory.grow`: growing costs the host an `mprotect` per call and keeps the native host from reusing
/// the instance (memory cannot shrink back). The arena is small because the host scans the whole memory for
/// written pages after each call. Past the arena, fresh pages come from `memory.grow`. The last allocation can
/// be freed or grown in place, which keeps serialization buffers from copying.
#[cfg(all(target_arch = "wasm32", feature = "bump-allocator"))]
pub mod bump {
    use core::alloc::{GlobalAlloc, Layout};
    use core::cell::UnsafeCell;

    const ARENA: usize = 256 << 10;

    /// The cursor, then the arena: a call's first allocations and the cursor share a page the host copies
    /// back anyway (the cursor after the arena cost a page of its own per call).
    #[repr(C, align(16))]
    struct Arena(UnsafeCell<usize>, UnsafeCell<[u8; ARENA]>);

    // SAFETY: wasm32 plugins are single-threaded.
    unsafe impl Sync for Arena {}

    static MEM: Arena = Arena(UnsafeCell::new(0), UnsafeCell::new([0; ARENA]));

    /// The allocator.
    pub struct Bump;

    fn base() -> usize {
        MEM.1.get() as usize
    }

    // SAFETY: single-threaded; every pointer handed out is inside the arena or in pages obtained from
    // `memory.grow`, aligned as asked, and never handed out twice while live.
    unsafe impl GlobalAlloc for Bump {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: single-threaded access to the cursor.
            let next = unsafe { &mut *MEM.0.get() };
            let start = (base() + *next + layout.align() - 1) & !(layout.align() - 1);
            let end = start + layout.size();
            if end <= base() + ARENA {
                *next = end - base();
                return start as *mut u8;
            }
            let pages = (layout.size() + layout.align()).div_ceil(65536);
            let old = core::arch::wasm32::memory_grow(0, pages);
            if old == usize::MAX {
                return core::ptr::null_mut();
            }
            ((old * 65536 + layout.align() - 1) & !(layout.align() - 1)) as *mut u8
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: single-threaded access to the cursor.
            let next = unsafe { &mut *MEM.0.get() };
            if ptr as usize + layout.size() == base() + *next {
                *next = ptr as usize - base();
            }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: single-threaded access to the cursor.
            let next = unsafe { &mut *MEM.0.get() };
            let p = ptr as usize;
            if p + layout.size() == base() + *next && p + new_size <= base() + ARENA {
                *next = p + new_size - base();
                return ptr;
            }
            // SAFETY: the layout is valid (same alignment, non-zero size checked by the caller's contract).
            let new = unsafe { self.alloc(Layout::from_size_align_unchecked(new_size, layout.align())) };
            if !new.is_null() {
                // SAFETY: both regions are valid for the smaller size and do not overlap.
                unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            }
            new
        }
    }

    #[global_allocator]
    static GLOBAL: Bump = Bump;
}
