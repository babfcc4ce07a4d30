//! Turning a configuration file into a validated [`Engine`].

use crate::Clock;
use crate::config::{Config, Issuer, line_containing};
use crate::error::{ConfigError, Located};
use crate::policy::{PolicyStore, Source};
use crate::route::Template;
use gatehouse_plugin_abi::Hook;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Built-in plugins the host embeds.
pub const BUILTIN_PLUGINS: [&str; 5] = ["jwt", "transform", "vertex-ai", "azure-ml", "openai"];

/// Where a plugin's module comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleSource {
    /// Embedded in the host.
    Builtin(String),
    /// A file (already resolved against the config file's directory).
    Path(String),
}

/// A plugin the configuration uses.
#[derive(Debug, Clone)]
pub struct PluginRef {
    /// The name routes use.
    pub name: String,
    /// Its module.
    pub module: ModuleSource,
    /// Expected sha256 (lowercase hex), if pinned.
    pub sha256: Option<String>,
    /// The configuration passed with every call, as JSON.
    pub config: Arc<[u8]>,
    /// The hooks the configuration calls: a host refuses a module whose manifest lacks one.
    pub hooks: Vec<gatehouse_plugin_abi::Hook>,
}

/// A route, compiled.
#[derive(Debug, Clone)]
pub struct RouteRuntime {
    /// The route as configured.
    pub spec: crate::config::Route,
    pub(crate) path: Template,
    pub(crate) model: Template,
    pub(crate) upstream_path: Option<Template>,
    pub(crate) backend_url: String,
    pub(crate) timeout_ms: u64,
    pub(crate) adapter: Option<String>,
    pub(crate) credential: Option<Arc<crate::credentials::Provider>>,
}

/// An issuer with its key-fetching settings.
#[derive(Debug, Clone)]
pub struct IssuerRuntime {
    /// The issuer as configured.
    pub spec: Issuer,
}

/// A validated configuration with its policies: what the host drives requests through.
pub struct Engine {
    /// The configuration as parsed.
    pub config: Config,
    /// The Cedar policies.
    pub policies: PolicyStore,
    pub(crate) routes: Vec<Arc<RouteRuntime>>,
    /// Trusted issuers, in configuration order (a [`crate::Step::FetchKeys`] names one by index).
    pub issuers: Vec<IssuerRuntime>,
    pub(crate) plugins: BTreeMap<String, PluginRef>,
    pub(crate) authn_plugin: String,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) decisions: crate::forward_auth::DecisionCache,
    pub(crate) tokens: crate::token_cache::TokenCache,
    pub(crate) credentials: Arc<crate::credentials::CredentialCache>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("routes", &self.routes.len()).field("policies", &self.policies).finish()
    }
}

/// Reads a file for the engine: `Ok(text)` or `Err(message)`.
pub type Reader<'a> = &'a dyn Fn(&str) -> Result<String, String>;

fn resolve(base: &str, path: &str) -> String {
    if path.starts_with('/') || base.is_empty() {
        path.to_owned()
    } else {
        format!("{}/{path}", base.trim_end_matches('/'))
    }
}

impl Engine {
    /// Loads `config_file` and everything it names through `read`; `list_dir` lists a directory's files
    /// (names only) for policy directories.
    pub fn load(
        config_file: &str,
        read: Reader<'_>,
        list_dir: &dyn Fn(&str) -> Option<Vec<String>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, ConfigError> {
        let text = read(config_file).map_err(|message| ConfigError::Read { file: config_file.into(), message })?;
        let config = Config::parse(config_file, &text)?;
        let base = config_file.rsplit_once('/').map_or("", |(dir, _)| dir);
        let base = if base.is_empty() && config_file.starts_with('/') { "/" } else { base };
        Engine::from_config(config, config_file, &text, base, read, list_dir, clock)
    }

    /// Builds an engine from a parsed configuration; relative paths are resolved against `base`.
    pub fn from_config(
        config: Config,
        file: &str,
        text: &str,
        base: &str,
        read: Reader<'_>,
        list_dir: &dyn Fn(&str) -> Option<Vec<String>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, ConfigError> {
        let invalid =
            |needle: &str, msg: String| ConfigError::Invalid(Located::new(file, line_containing(text, needle), msg));
        let read_source = |path: &str| -> Result<Source, ConfigError> {
            let full = resolve(base, path);
            read(&full)
                .map(|t| Source { name: full.clone(), text: t })
                .map_err(|message| ConfigError::Read { file: full, message })
        };

        if config.server.client_timeout_secs == 0 {
            return Err(invalid("client_timeout_secs", "`client_timeout_secs` must be at least 1".into()));
        }
        let schema = read_source(&config.policies.schema)?;
        let mut policy_files = Vec::new();
        for entry in &config.policies.files {
            let full = resolve(base, entry);
            match list_dir(&full) {
                Some(mut names) => {
                    names.retain(|n| n.ends_with(".cedar"));
                    names.sort();
                    for n in names {
                        policy_files.push(read_source(&format!("{entry}/{n}"))?);
                    }
                }
                None => policy_files.push(read_source(entry)?),
            }
        }
        let entities = config.policies.entities.as_deref().map(read_source).transpose()?;
        let policies = PolicyStore::load(&schema, &policy_files, entities.as_ref())?;

        if config.issuers.is_empty() && !config.routes.is_empty() {
            return Err(invalid("[[routes]]", "routes need at least one `[[issuers]]` to authenticate callers".into()));
        }
        for i in &config.issuers {
            if i.audiences.is_empty() {
                return Err(invalid(&i.issuer, format!("issuer `{}` needs at least one audience", i.issuer)));
            }
        }

        let mut plugins = BTreeMap::new();
        let mut add_plugin = |name: &str,
                              needle: &str,
                              hook: Hook,
                              default_config: Option<serde_json::Value>|
         -> Result<(), ConfigError> {
            if let Some(p) = plugins.get_mut(name) {
                let p: &mut PluginRef = p;
                if !p.hooks.contains(&hook) {
                    p.hooks.push(hook);
                }
                return Ok(());
            }
            let spec = config.plugins.get(name).cloned().unwrap_or_default();
            let module = match (&spec.builtin, &spec.path) {
                (Some(b), None) => ModuleSource::Builtin(b.clone()),
                (None, Some(p)) => ModuleSource::Path(resolve(base, p)),
                (None, None) if BUILTIN_PLUGINS.contains(&name) => ModuleSource::Builtin(name.to_owned()),
                (None, None) => {
                    return Err(invalid(
                        needle,
                        format!("plugin `{name}` is not built in: give it `path` or `builtin` in [plugins.{name}]"),
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(needle, format!("plugin `{name}` has both `builtin` and `path`")));
                }
            };
            if let ModuleSource::Builtin(b) = &module
                && !BUILTIN_PLUGINS.contains(&b.as_str())
            {
                return Err(invalid(
                    needle,
                    format!("`{b}` is not a built-in plugin (built in: {})", BUILTIN_PLUGINS.join(", ")),
                ));
            }
            if let Some(pin) = &spec.sha256
                && (pin.len() != 64 || !pin.chars().all(|c| c.is_ascii_hexdigit()))
            {
                return Err(invalid(pin, format!("plugin `{name}`: sha256 must be 64 hex digits")));
            }
            let cfg = match (spec.config, default_config) {
                (Some(v), _) => serde_json::to_value(v).map_err(|e| invalid(needle, e.to_string()))?,
                (None, Some(d)) => d,
                (None, None) => serde_json::json!({}),
            };
            let bytes = serde_json::to_vec(&cfg).map_err(|e| invalid(needle, e.to_string()))?;
            plugins.insert(
                name.to_owned(),
                PluginRef {
                    name: name.to_owned(),
                    module,
                    sha256: spec.sha256.map(|s| s.to_ascii_lowercase()),
                    config: bytes.into(),
                    hooks: vec![hook],
                },
            );
            Ok(())
        };
        let authn_plugin = config.authn.plugin.clone();
        add_plugin(
            &authn_plugin,
            "[authn]",
            Hook::Authenticate,
            Some(serde_json::json!({ "issuers": config.issuers })),
        )?;
        for r in &config.routes {
            for t in &r.transform {
                add_plugin(t, t, Hook::TransformRequest, None)?;
            }
        }
        for (name, b) in &config.backends {
            if let Some(a) = &b.adapter {
                add_plugin(a, &format!("[backends.{name}]"), Hook::AdaptRequest, None)?;
            }
        }

        let mut providers = BTreeMap::new();
        for (name, spec) in &config.credentials {
            let needle = format!("[credentials.{name}]");
            spec.validate().map_err(|m| invalid(&needle, format!("credentials `{name}`: {m}")))?;
            if name == "none" {
                return Err(invalid(
                    &needle,
                    "`none` is reserved: a route says `credential = \"none\"` for no credential".into(),
                ));
            }
            let provider = crate::credentials::Provider { name: name.clone(), spec: spec.clone() };
            providers.insert(name.clone(), Arc::new(provider));
        }
        for (name, b) in &config.backends {
            if let Some(c) = &b.credential
                && !providers.contains_key(c)
            {
                return Err(invalid(
                    &format!("[backends.{name}]"),
                    format!("backend `{name}`: unknown credential `{c}`"),
                ));
            }
        }

        let mut routes = Vec::new();
        for r in &config.routes {
            let needle = format!("\"{}\"", r.name);
            let bad = |m: String| invalid(&needle, format!("route `{}`: {m}", r.name));
            let path = Template::parse(&r.path).map_err(&bad)?;
            let model = Template::parse(&r.model).map_err(&bad)?;
            let upstream_path = r.upstream_path.as_deref().map(Template::parse).transpose().map_err(&bad)?;
            let known: Vec<&str> = path.params().collect();
            for t in std::iter::once(&model).chain(upstream_path.iter()) {
                if let Some(p) = t.params().find(|p| !known.contains(p)) {
                    return Err(bad(format!("`{{{p}}}` is not a parameter of path `{}`", r.path)));
                }
            }
            if r.methods.is_empty()
                || r.methods.iter().any(|m| m.is_empty() || !m.chars().all(|c| c.is_ascii_uppercase()))
            {
                return Err(bad("methods must be upper-case HTTP methods".into()));
            }
            let backend =
                config.backends.get(&r.backend).ok_or_else(|| bad(format!("unknown backend `{}`", r.backend)))?;
            if !(backend.url.starts_with("http://") || backend.url.starts_with("https://")) {
                return Err(invalid(&backend.url, format!("backend `{}`: url must be http:// or https://", r.backend)));
            }
            let credential = match r.credential.as_deref().or(backend.credential.as_deref()) {
                None | Some("none") => None,
                Some(c) => Some(Arc::clone(providers.get(c).ok_or_else(|| bad(format!("unknown credential `{c}`")))?)),
            };
            if backend.adapter.is_some() && r.upstream_path.is_some() {
                return Err(bad(
                    "`upstream_path` and a backend `adapter` exclude each other: the adapter chooses the path".into(),
                ));
            }
            routes.push(Arc::new(RouteRuntime {
                spec: r.clone(),
                path,
                model,
                upstream_path,
                backend_url: backend.url.trim_end_matches('/').to_owned(),
                timeout_ms: backend.timeout_ms,
                adapter: backend.adapter.clone(),
                credential,
            }));
        }
        let issuers = config.issuers.iter().map(|spec| IssuerRuntime { spec: spec.clone() }).collect();
        Ok(Engine {
            config,
            policies,
            routes,
            issuers,
            plugins,
            authn_plugin,
            clock,
            decisions: Default::default(),
            tokens: Default::default(),
            credentials: Default::default(),
        })
    }

    /// The plugins this configuration uses; the host loads each module once.
    pub fn plugins(&self) -> impl Iterator<Item = &PluginRef> {
        self.plugins.values()
    }

    /// How many forward-auth decisions are cached.
    pub fn cached_decisions(&self) -> usize {
        self.decisions.len()
    }

    /// The clock.
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }
}
