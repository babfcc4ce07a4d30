//! The sans-IO core of Gatehouse.
//!
//! The engine holds a validated configuration and Cedar policies and drives each request through one state
//! machine, [`Exchange`]. It never performs I/O: the host reads files for it ([`Engine::load`] takes a reader),
//! runs plugins, fetches keys and forwards requests when a [`Step`] asks, and feeds the results back with
//! [`Exchange::resume`]. Time comes from the host's [`Clock`]. The same code therefore runs natively and on
//! `wasm32-unknown-unknown`.
//!
//! ```text
//!  host                               engine (Exchange)
//!  ────                               ─────────────────
//!  request head ───────────────────▶  route, bearer token, issuer by `iss`
//!               ◀─ FetchKeys ───────  (cached keys or one fetch per issuer)
//!  keys ───────────────────────────▶
//!               ◀─ CallPlugin(authenticate) ─
//!  plugin output ──────────────────▶  identity or 401 (unknown kid: FetchKeys{refresh} once)
//!               ◀─ ReadBody{limit} ─
//!  body (or too large) ────────────▶  Cedar decision (403 on deny)
//!               ◀─ CallPlugin(transform_request) ─  (per configured transform)
//!  plugin output ──────────────────▶
//!               ◀─ Forward(upstream) / Respond(answer)
//!  upstream status ────────────────▶  finish() → AuditRecord
//! ```
#![deny(missing_docs)]

pub mod answer;
pub mod audit;
pub mod config;
pub mod credentials;
pub mod decision_tests;
pub mod error;
pub mod forward_auth;
pub mod jwks;
mod load;
mod memo;
pub mod pipeline;
pub mod policy;
pub mod policy_index;
pub mod route;
pub mod token_cache;

pub use answer::{Answer, Rejection};
pub use audit::AuditRecord;
pub use config::Config;
pub use error::{ConfigError, Located};
pub use load::{Engine, IssuerRuntime, ModuleSource, PluginRef, RouteRuntime};
pub use pipeline::{
    AfterUpstream, Exchange, Facts, Grant, Input, KeySet, PluginCall, RESPONSE_HOP_BY_HOP, RequestHead, Step, Upstream,
    connection_options,
};
pub use policy::{Ask, ContextSource, Decision, PolicyStore, Question};

/// The hash map of the caches that requests look up: foldhash instead of SipHash (a key is hashed on every
/// request; the seed is random per map), and hashbrown's so a lookup can use a key of borrowed parts
/// ([`hashbrown::Equivalent`]) instead of building an owned key first.
pub(crate) type FastMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;

/// Time as the host sees it.
pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch (wall clock).
    fn unix_secs(&self) -> i64;
    /// A monotonic reading in microseconds, for latencies.
    fn micros(&self) -> u64;
}
