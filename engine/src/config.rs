//! The configuration file model (TOML) and its loading.

use crate::error::{ConfigError, Located};
use serde::Deserialize;
use std::collections::BTreeMap;

/// A whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener and limits.
    #[serde(default)]
    pub server: Server,
    /// Trusted token issuers.
    #[serde(default)]
    pub issuers: Vec<Issuer>,
    /// Which plugin authenticates callers.
    #[serde(default)]
    pub authn: Authn,
    /// Plugin modules by name (built-ins `jwt` and `transform` need no entry).
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginSpec>,
    /// Cedar schema, policies and entities.
    pub policies: Policies,
    /// Upstreams by name.
    #[serde(default)]
    pub backends: BTreeMap<String, Backend>,
    /// Upstream credential providers by name.
    #[serde(default)]
    pub credentials: BTreeMap<String, crate::credentials::ProviderSpec>,
    /// Routes, tried in order.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Answering proxies' authorization sub-requests.
    #[serde(default)]
    pub forward_auth: crate::forward_auth::ForwardAuth,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Address to listen on.
    pub listen: String,
    /// Largest accepted request body, in bytes (413 above).
    pub body_limit_bytes: u64,
    /// Whether 403 answers name the determining policy ids.
    pub reveal_policy_ids: bool,
    /// Where audit records go: `stdout`, `off`, or a file path.
    pub audit: String,
    /// Wall-clock budget of one plugin call, in milliseconds.
    pub plugin_timeout_ms: u64,
    /// Memory cap of one plugin instance, in bytes.
    pub plugin_memory_bytes: u64,
    /// Take the client address from `X-Forwarded-For` (only behind a trusted proxy).
    pub trust_forwarded_for: bool,
    /// Verified tokens remembered (until their `exp`) so a repeated token skips the signature check; 0 disables.
    pub token_cache_entries: usize,
    /// Worker threads of `gatehouse serve`, each with its own event loop; 0 means one per core.
    pub workers: usize,
    /// How long a caller may take to send a request's head, and then its whole body (408 after that), in
    /// seconds; also how long an idle keep-alive connection is kept. Bounds what a slow caller holds.
    pub client_timeout_secs: u64,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "127.0.0.1:8080".into(),
            body_limit_bytes: 1024 * 1024,
            reveal_policy_ids: false,
            audit: "stdout".into(),
            plugin_timeout_ms: 100,
            plugin_memory_bytes: 64 * 1024 * 1024,
            trust_forwarded_for: false,
            token_cache_entries: 10_000,
            workers: 0,
            client_timeout_secs: 30,
        }
    }
}

/// `[[issuers]]`: an OIDC provider whose tokens are accepted.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    /// The exact `iss` value.
    pub issuer: String,
    /// Where the keys are; when absent, discovery at `{issuer}/.well-known/openid-configuration`.
    #[serde(default, skip_serializing)]
    pub jwks_uri: Option<String>,
    /// Discovery document address, when it is not under the issuer URL.
    #[serde(default, skip_serializing)]
    pub discovery_url: Option<String>,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// Accepted algorithms.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Tolerated clock difference in seconds.
    #[serde(default = "default_skew")]
    pub clock_skew_secs: i64,
    /// Claims that must be present.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Claim holding groups or roles.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Claim holding scopes (default `scope`, then `scp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes_claim: Option<String>,
    /// When this claim has this value the caller is a `Service` principal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_when: Option<ClaimEquals>,
    /// Upper bound on how long a fetched key set is trusted without refetching, in seconds.
    #[serde(default = "default_max_age", skip_serializing)]
    pub jwks_max_age_secs: u64,
    /// Least time between two refetches triggered by an unknown `kid`, in seconds.
    #[serde(default = "default_refresh_interval", skip_serializing)]
    pub jwks_refresh_interval_secs: u64,
}

/// A claim compared with a string.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimEquals {
    /// Claim name.
    pub claim: String,
    /// Expected value.
    pub equals: String,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}
fn default_skew() -> i64 {
    60
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_max_age() -> u64 {
    3600
}
fn default_refresh_interval() -> u64 {
    30
}

impl Issuer {
    /// The discovery document's address.
    pub fn discovery(&self) -> String {
        self.discovery_url
            .clone()
            .unwrap_or_else(|| format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/')))
    }
}

/// `[authn]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authn {
    /// The plugin that runs the `authenticate` hook.
    pub plugin: String,
}

impl Default for Authn {
    fn default() -> Self {
        Authn { plugin: "jwt".into() }
    }
}

/// `[plugins.NAME]`: where a module comes from and its configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// A built-in module by name (`jwt`, `transform`).
    pub builtin: Option<String>,
    /// A module file, relative to the config file.
    pub path: Option<String>,
    /// Expected sha256 of the module (hex); loading fails on a mismatch.
    pub sha256: Option<String>,
    /// The plugin's configuration, passed to it as JSON.
    #[serde(default)]
    pub config: Option<toml::Value>,
}

/// `[policies]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policies {
    /// The Cedar schema (`.cedarschema`).
    pub schema: String,
    /// Policy files (`.cedar`), or directories whose `.cedar` files are all loaded.
    pub files: Vec<String>,
    /// Static entities (Cedar JSON entity format).
    #[serde(default)]
    pub entities: Option<String>,
    /// The decision corpus run by `gatehouse test`.
    #[serde(default)]
    pub tests: Option<String>,
}

/// `[backends.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Base URL (`http://` or `https://`).
    pub url: String,
    /// Time allowed until the upstream's response headers arrive, in milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// The adapter plugin that speaks this backend's wire format (`vertex-ai`, `azure-ml`, `openai`, or a
    /// `[plugins.NAME]` of one of those or of your own module).
    #[serde(default)]
    pub adapter: Option<String>,
    /// The `[credentials.NAME]` whose short-lived credential every forwarded request carries.
    #[serde(default)]
    pub credential: Option<String>,
}

fn default_timeout() -> u64 {
    30_000
}

/// `[[routes]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Name used in audit records and the Cedar context.
    pub name: String,
    /// Path template, e.g. `/v1/models/{model}:predict`.
    pub path: String,
    /// Accepted methods.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// The Cedar action id (`Gatehouse::Action::"<action>"`).
    pub action: String,
    /// The Cedar resource id (`Gatehouse::Model::"<model>"`), a template over the path's parameters.
    #[serde(default = "default_model")]
    pub model: String,
    /// The backend that serves the route.
    pub backend: String,
    /// The upstream path template (default: the request path).
    #[serde(default)]
    pub upstream_path: Option<String>,
    /// Transform plugins applied in order to the JSON body.
    #[serde(default)]
    pub transform: Vec<String>,
    /// A `[credentials.NAME]` for this route instead of the backend's (e.g. a user-delegated one), or `"none"`.
    #[serde(default)]
    pub credential: Option<String>,
}

fn default_methods() -> Vec<String> {
    vec!["POST".into()]
}
fn default_model() -> String {
    "{model}".into()
}

impl Config {
    /// Parses a TOML configuration; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            ConfigError::Syntax(Located::new(file, line, e.message().to_owned()))
        })
    }
}

/// The 1-based line of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len())).map_or(1, |t| t.matches('\n').count() + 1)
}

/// The 1-based line of the first occurrence of `needle` in `text` (1 when absent).
pub fn line_containing(text: &str, needle: &str) -> usize {
    text.find(needle).map_or(1, |o| line_of(text, o))
}
