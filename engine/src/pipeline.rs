//! The request pipeline: one state machine per request, driven by the host.

use crate::answer::{Answer, Rejection};
use crate::audit::{AuditRecord, hex, sha256_hex};
use crate::credentials::{Credential, CredentialAudit, Flow, Lookup, Secret};
use crate::forward_auth::Cached;
use crate::load::{Engine, RouteRuntime};
use crate::policy::{Ask, ContextSource, Decision, Question};
use crate::route::Params;
use crate::token_cache;
use base64::Engine as _;
use gatehouse_plugin_abi::{
    AdaptInput, AdaptOutput, AuthnInput, AuthnVerdict, BackendRequest, ErrorInput, ErrorOutput, Facts as Inference,
    Hook, HookResult, Identity, TransformInput, TransformOutput,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;

/// What the host knows of a request before reading its body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestHead {
    /// A unique id the host made.
    pub request_id: String,
    /// HTTP method.
    pub method: String,
    /// The path, without query.
    pub path: String,
    /// The query string, without `?`.
    #[serde(default)]
    pub query: Option<String>,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The peer's address.
    pub client_ip: String,
    /// Stop after the decision: answer with a [`Step::Grant`] instead of forwarding (forward-auth, library
    /// `authorize`). Requests to the configured forward-auth endpoints are decide-only by themselves.
    #[serde(default)]
    pub decide_only: bool,
}

impl RequestHead {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A plugin call the host must make.
#[derive(Debug, Clone)]
pub struct PluginCall {
    /// The plugin's name.
    pub plugin: String,
    /// The hook to call.
    pub hook: Hook,
    /// The plugin's configuration (JSON).
    pub config: Arc<[u8]>,
    /// The hook's input (JSON).
    pub input: Vec<u8>,
}

/// A request the host must send upstream, streaming the answer back.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Full URL.
    pub url: String,
    /// Method.
    pub method: String,
    /// Headers to send (no hop-by-hop headers, no caller credential).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Time allowed until response headers, in milliseconds.
    pub timeout_ms: u64,
    /// Headers to add to the response sent back to the caller.
    pub response_headers: Vec<(String, String)>,
}

/// A forward-auth grant: answer 200 with these headers, which the proxy passes to its upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Headers for the upstream request (identity, and later upstream credentials).
    pub headers: Vec<(String, String)>,
}

/// An issuer's key set as the host holds it.
#[derive(Debug, Clone)]
pub struct KeySet {
    /// The JWKS document.
    pub jwks: Arc<serde_json::Value>,
    /// Changes whenever the set changes (see [`crate::jwks::IssuerKeys::version`]).
    pub version: u64,
}

/// What the engine needs next.
#[derive(Debug, Clone)]
pub enum Step {
    /// Keys of issuer `issuer` (index into [`Engine::issuers`]); `refresh` asks for a refetch because the
    /// token named an unknown key. Answer with [`Input::Keys`].
    FetchKeys {
        /// Issuer index.
        issuer: usize,
        /// An unknown key was named.
        refresh: bool,
        /// With `refresh`: the key-set version that lacked the key (see [`crate::jwks::Want::UnknownKey`]).
        seen: u64,
    },
    /// The request body, at most `limit` bytes. Answer with [`Input::Body`] or [`Input::BodyTooLarge`].
    ReadBody {
        /// Largest acceptable body.
        limit: u64,
    },
    /// A plugin call. Answer with [`Input::PluginOutput`].
    CallPlugin(PluginCall),
    /// Obtain an upstream credential: drive the flow to [`crate::credentials::Need::Done`] (one flow at a time
    /// per [`Flow::key`]; concurrent exchanges with the same key wait for it) and answer with
    /// [`Input::Credential`].
    ObtainCredential(Flow),
    /// Forward and stream the answer; then call [`Exchange::upstream_responded`] or
    /// [`Exchange::upstream_failed`].
    Forward(Upstream),
    /// Send this answer; the exchange is over.
    Respond(Answer),
    /// Forward-auth only: the request is allowed; answer 200 with the grant's headers. The exchange is over.
    Grant(Grant),
}

/// What the host feeds back.
#[derive(Debug, Clone)]
pub enum Input {
    /// The issuer's keys, or `None` if none could be had.
    Keys(Option<KeySet>),
    /// The whole body.
    Body(Vec<u8>),
    /// The body exceeded the limit.
    BodyTooLarge,
    /// The body could not be read (malformed framing, or a body type that cannot say why).
    BodyUnreadable,
    /// The body did not arrive within `server.client_timeout_secs`.
    BodyTimedOut,
    /// The caller closed the connection before sending its whole body: the exchange ends as
    /// [`Exchange::caller_gone`] says, and its answer goes nowhere.
    CallerGone,
    /// The plugin's output bytes, or why the call failed (trap, deadline, memory).
    PluginOutput(Result<Vec<u8>, String>),
    /// The credential a flow obtained, or why it could not.
    Credential(Result<Arc<Credential>, String>),
    /// The upstream's error body (after [`AfterUpstream::ReadError`]), at most the limit asked.
    UpstreamError(Vec<u8>),
}

/// What the host does once the upstream's response headers arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterUpstream {
    /// Stream the response to the caller as it is.
    Stream,
    /// The backend failed and its adapter translates errors: read at most `limit` bytes of the body and feed
    /// them with [`Input::UpstreamError`]; the exchange continues with a plugin call and an answer.
    ReadError {
        /// Largest body to read.
        limit: usize,
    },
}

/// What happens once the upstream credential is at hand.
#[derive(Debug, Clone)]
enum After {
    Forward,
    Grant(Vec<(String, String)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Keys { refresh: bool },
    Authn { refreshed: bool },
    Body,
    Transform { index: usize },
    Adapt,
    Credential,
    Forwarding,
    UpstreamError { status: u16 },
    Done,
}

/// One request going through the pipeline.
pub struct Exchange {
    engine: Arc<Engine>,
    head: RequestHead,
    phase: Phase,
    route: Option<Arc<RouteRuntime>>,
    params: Params,
    token: String,
    /// The trusted issuer the token names (its index), once known.
    issuer: Option<usize>,
    identity: Option<Arc<Identity>>,
    /// Cedar's decision, once made (the audit record takes its policy ids when it is taken).
    decision: Option<Arc<Decision>>,
    /// The token's cache key, while it is being verified (the cache is on).
    token_key: Option<[u8; 32]>,
    /// What the token cache holds for the token, found before its key set is fetched.
    verified: Option<token_cache::Verified>,
    keys_version: u64,
    model: String,
    body: Vec<u8>,
    started: u64,
    phase_started: u64,
    /// Whether the configuration keeps audit records (`server.audit` is not `off`); phases are timed only then.
    recorded: bool,
    audit: AuditRecord,
    forward_auth: bool,
    cache_key: Option<String>,
    backend: Option<BackendRequest>,
    after: Option<After>,
    background: Option<Flow>,
    content_type: Option<String>,
}

/// Caller headers passed to a backend behind an adapter.
const ADAPTED_PASS: [&str; 4] = ["accept", "user-agent", "traceparent", "tracestate"];

/// Headers the gateway sets upstream; a caller's own are dropped.
const GATEHOUSE_PREFIX: &str = "x-gatehouse-";

/// Whether a header (any case) is one the gateway decides on its way upstream, never taken from the caller or
/// an adapter: hop-by-hop headers (the response's, and the request-only `proxy-authorization` and `te`), the
/// host, the credential and the body's length. Compared without a lowercased copy.
fn set_by_the_gateway(name: &str) -> bool {
    const REQUEST: [&str; 5] = ["proxy-authorization", "te", "host", "authorization", "content-length"];
    RESPONSE_HOP_BY_HOP.iter().chain(&REQUEST).any(|h| name.eq_ignore_ascii_case(h))
}

/// Headers of the upstream's response that are not passed on to the caller: HTTP/1.1's hop-by-hop headers
/// (RFC 9110 7.6.1) that a response can carry, and those its `Connection` header names
/// ([`connection_options`]). Every host removes both (the Workers shim gets the names from the core).
pub const RESPONSE_HOP_BY_HOP: [&str; 6] =
    ["connection", "keep-alive", "proxy-authenticate", "trailer", "transfer-encoding", "upgrade"];

/// The header names a `Connection` header's value nominates as hop-by-hop (RFC 9110 7.6.1: a proxy removes
/// them with the `Connection` header itself), as written (header names compare without case), leaving out
/// those already in [`RESPONSE_HOP_BY_HOP`] and `close` (the usual values, `keep-alive` and `close`, then
/// name nothing more to remove).
pub fn connection_options(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|name| {
        !name.is_empty()
            && !name.eq_ignore_ascii_case("close")
            && !RESPONSE_HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
    })
}

impl Engine {
    /// Starts an exchange for a request.
    pub fn start(self: &Arc<Self>, mut head: RequestHead) -> (Exchange, Step) {
        let clock = self.clock();
        // Latencies only go into the audit record: with audit off, phases are not timed (no clock reads).
        let recorded = self.config.server.audit != "off";
        let now = if recorded { clock.micros() } else { 0 };
        let original =
            self.config.forward_auth.original(&head.method, &head.path, |n| head.header(n).map(str::to_owned));
        let forward_auth = original.is_some() || head.decide_only;
        if let Some(o) = original {
            head.method = o.method;
            head.path = o.path;
            head.query = o.query;
        }
        if self.config.server.trust_forwarded_for
            && let Some(first) = head.header("x-forwarded-for").and_then(|v| v.split(',').next())
        {
            head.client_ip = first.trim().to_owned();
        }
        // The request's id, method, path and address join the record when it is taken (moved, not copied).
        let audit =
            AuditRecord { time: clock.unix_secs(), decision: "deny".into(), forward_auth, ..AuditRecord::default() };
        let mut ex = Exchange {
            engine: Arc::clone(self),
            head,
            phase: Phase::Done,
            route: None,
            params: Params::new(),
            token: String::new(),
            issuer: None,
            identity: None,
            decision: None,
            token_key: None,
            verified: None,
            keys_version: 0,
            model: String::new(),
            body: Vec::new(),
            started: now,
            phase_started: now,
            recorded,
            audit,
            forward_auth,
            cache_key: None,
            backend: None,
            after: None,
            background: None,
            content_type: None,
        };
        let step = match ex.begin() {
            Ok(step) => step,
            Err(r) => ex.reject(r),
        };
        (ex, step)
    }
}

impl Exchange {
    /// The request id.
    pub fn request_id(&self) -> &str {
        &self.head.request_id
    }

    /// The engine this exchange runs on.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    fn begin(&mut self) -> Result<Step, Rejection> {
        let (route, params) = self.engine.route_for(&self.head.method, &self.head.path)?;
        self.model = route.model.render(&params);
        self.route = Some(route);
        self.params = params;

        self.token = bearer(self.head.header("authorization"))?;
        let per_caller = self.route.as_ref().and_then(|r| r.credential.as_ref()).is_some_and(|p| p.spec.per_caller());
        // A per-caller credential needs the verified identity, which a cached decision skips.
        let cache_decision = self.forward_auth && !per_caller;
        let cache_token = self.engine.config.server.token_cache_entries > 0;
        // One hash of the token keys both caches.
        let digest = (cache_token || cache_decision).then(|| token_cache::key(&self.token));
        // A token verified before names its issuer in the cache; another's `iss` claim is read (unverified: it
        // only picks the key set the plugin then checks the signature with).
        if let Some(key) = digest.filter(|_| cache_token) {
            self.verified = self.engine.tokens.get(&key, self.audit.time);
            self.token_key = Some(key);
        }
        // The audit record names a trusted issuer when it is taken; an untrusted one is kept as claimed.
        let issuer = match self.verified.as_ref().map(|v| v.issuer) {
            Some(issuer) => issuer,
            None => {
                let iss = claimed_issuer(&self.token);
                let trusted =
                    iss.as_ref().and_then(|iss| self.engine.issuers.iter().position(|i| i.spec.issuer == *iss));
                if trusted.is_none() {
                    self.audit.issuer = iss;
                }
                trusted.ok_or_else(|| invalid_token("the token's issuer is not trusted"))?
            }
        };
        self.issuer = Some(issuer);
        if let Some(digest) = digest.filter(|_| cache_decision) {
            let key = format!("{}\n{}\n{}", hex(&digest), self.head.method, self.head.path);
            let cached = self.engine.decisions.get(&key, self.audit.time);
            self.cache_key = Some(key);
            match cached {
                Some(Cached::Grant(headers)) => {
                    self.audit.cached = true;
                    self.audit.decision = "allow".into();
                    return self.with_credential(After::Grant(headers));
                }
                Some(Cached::Deny(policy_ids)) => {
                    self.audit.cached = true;
                    self.audit.policy_ids.clone_from(&policy_ids);
                    return Err(Rejection::Forbidden(Decision { allowed: false, policy_ids, errors: vec![] }));
                }
                None => {}
            }
        }
        Ok(self.enter(Phase::Keys { refresh: false }, Step::FetchKeys { issuer, refresh: false, seen: 0 }))
    }

    /// The matched route (borrowed: an `Arc` clone here would write its count, a line every worker shares).
    fn rt(&self) -> Result<&Arc<RouteRuntime>, Rejection> {
        self.route.as_ref().ok_or(Rejection::NoRoute)
    }

    fn enter(&mut self, phase: Phase, step: Step) -> Step {
        self.account();
        self.phase = phase;
        step
    }

    /// Adds the time since the phase began to its latency bucket.
    fn account(&mut self) {
        if !self.recorded {
            return;
        }
        let now = self.engine.clock().micros();
        let spent = now.saturating_sub(self.phase_started);
        self.phase_started = now;
        let l = &mut self.audit.latency_us;
        match self.phase {
            Phase::Keys { .. } | Phase::Authn { .. } => l.authn += spent,
            Phase::Transform { .. } => l.plugins += spent,
            Phase::Adapt | Phase::UpstreamError { .. } => l.adapter += spent,
            Phase::Credential => l.credential += spent,
            Phase::Forwarding => l.upstream += spent,
            Phase::Body | Phase::Done => {}
        }
    }

    /// Feeds the host's result for the last step and returns the next one.
    pub fn resume(&mut self, input: Input) -> Step {
        match self.advance(input) {
            Ok(step) => step,
            Err(r) => self.reject(r),
        }
    }

    fn advance(&mut self, input: Input) -> Result<Step, Rejection> {
        match (self.phase, input) {
            (Phase::Keys { refresh }, Input::Keys(keys)) => {
                let Some(keys) = keys else { return Err(Rejection::KeysUnavailable) };
                self.keys_version = keys.version;
                if let Some(v) = self.verified.take()
                    && v.keys_version == keys.version
                {
                    self.audit.token_cached = true;
                    self.token_key = None;
                    return self.authenticated(v.identity);
                }
                let now = self.engine.clock().unix_secs();
                let input =
                    AuthnInput { token: std::mem::take(&mut self.token), now, jwks: Some((*keys.jwks).clone()) };
                let bytes = serde_json::to_vec(&input).map_err(|e| internal("authn input", e))?;
                self.token = input.token;
                let call = self.call(self.engine.authn_plugin.clone(), Hook::Authenticate, bytes)?;
                Ok(self.enter(Phase::Authn { refreshed: refresh }, call))
            }
            (Phase::Authn { refreshed }, Input::PluginOutput(out)) => {
                let plugin = self.engine.authn_plugin.clone();
                match decode::<AuthnVerdict>(&plugin, out)? {
                    AuthnVerdict::Refusal(r) if r.unknown_key && !refreshed => {
                        let step = Step::FetchKeys {
                            issuer: self.issuer.unwrap_or_default(),
                            refresh: true,
                            seen: self.keys_version,
                        };
                        Ok(self.enter(Phase::Keys { refresh: true }, step))
                    }
                    AuthnVerdict::Refusal(r) => Err(Rejection::InvalidToken(r)),
                    AuthnVerdict::Identity(id) => {
                        let id = Arc::new(id);
                        if let Some(key) = self.token_key.take() {
                            let (now, capacity) = (self.audit.time, self.engine.config.server.token_cache_entries);
                            let verified = token_cache::Verified {
                                issuer: self.issuer.unwrap_or_default(),
                                keys_version: self.keys_version,
                                identity: Arc::clone(&id),
                            };
                            self.engine.tokens.put(key, id.expires_at, verified, now, capacity);
                        }
                        self.authenticated(id)
                    }
                }
            }
            (Phase::Body, Input::BodyTooLarge) => {
                Err(Rejection::PayloadTooLarge { limit: self.engine.config.server.body_limit_bytes })
            }
            (Phase::Body, Input::BodyUnreadable) => {
                Err(Rejection::BadPayload("the request body could not be read".into()))
            }
            (Phase::Body, Input::BodyTimedOut) => {
                Err(Rejection::RequestTimeout { secs: self.engine.config.server.client_timeout_secs })
            }
            (Phase::Body, Input::CallerGone) => {
                self.account();
                self.phase = Phase::Done;
                self.caller_gone();
                Ok(Step::Respond(Answer { status: 499, headers: Vec::new(), body: String::new() }))
            }
            (Phase::Body, Input::Body(body)) => {
                self.account();
                self.audit.request_bytes = body.len() as u64;
                self.body = body;
                self.next_transform(0)
            }
            (Phase::Transform { index }, Input::PluginOutput(out)) => {
                let name = self.rt()?.spec.transform.get(index).cloned().unwrap_or_default();
                // The new body is kept as the plugin wrote it (checked to be JSON), not parsed and re-encoded.
                match decode::<TransformOutput<Box<RawValue>>>(&name, out)? {
                    TransformOutput::Body(v) => {
                        self.body = String::from(Box::<str>::from(v)).into_bytes();
                        self.next_transform(index + 1)
                    }
                    TransformOutput::Reject { reason, too_large: true } => Err(Rejection::PayloadRefused(reason)),
                    TransformOutput::Reject { reason, too_large: false } => Err(Rejection::BadPayload(reason)),
                }
            }
            (Phase::Adapt, Input::PluginOutput(out)) => {
                let name = self.rt()?.adapter.clone().unwrap_or_default();
                match decode::<AdaptOutput>(&name, out)? {
                    AdaptOutput::Request(r) => {
                        if !r.path.starts_with('/') || r.path.starts_with("//") || r.path.contains(['\r', '\n']) {
                            return Err(Rejection::PluginFailed {
                                plugin: name,
                                reason: "it returned a backend path that is not an absolute path".into(),
                            });
                        }
                        self.audit.inference = Some(r.facts.clone());
                        self.backend = Some(r);
                        self.decide()
                    }
                    AdaptOutput::Reject { reason, too_large: true } => Err(Rejection::PayloadRefused(reason)),
                    AdaptOutput::Reject { reason, too_large: false } => Err(Rejection::BadPayload(reason)),
                }
            }
            (Phase::Credential, Input::Credential(result)) => {
                self.account();
                let after = self.after.take().unwrap_or(After::Forward);
                match result {
                    Ok(cred) => Ok(self.proceed(after, Some(cred))),
                    Err(why) => {
                        let key = self.credential_key().unwrap_or_default();
                        // Another exchange's flow may have succeeded meanwhile.
                        if let Lookup::Use(cred, _) =
                            self.engine.credentials.lookup(&key, self.engine.clock().unix_secs())
                        {
                            return Ok(self.proceed(after, Some(cred)));
                        }
                        if let Some(a) = &mut self.audit.credential {
                            a.error = Some(why.clone());
                        }
                        Err(Rejection::CredentialUnavailable(why))
                    }
                }
            }
            (Phase::UpstreamError { status }, Input::UpstreamError(body)) => {
                let adapter = self.rt()?.adapter.clone().unwrap_or_default();
                let input = ErrorInput {
                    status,
                    content_type: self.content_type.take(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                };
                let bytes = serde_json::to_vec(&input).map_err(|e| internal("adapt_error input", e))?;
                let call = self.call(adapter, Hook::AdaptError, bytes)?;
                Ok(self.enter(Phase::UpstreamError { status }, call))
            }
            (Phase::UpstreamError { status }, Input::PluginOutput(out)) => {
                let adapter = self.rt()?.adapter.clone().unwrap_or_default();
                let e = decode::<ErrorOutput>(&adapter, out).unwrap_or_else(|_| ErrorOutput {
                    status: if status == 504 || status == 408 { 504 } else { 502 },
                    title: "Bad Gateway".into(),
                    detail: format!("the backend answered {status}"),
                    retry_after: None,
                });
                let status_out = if (400..=599).contains(&e.status) { e.status } else { 502 };
                Err(Rejection::Backend {
                    status: status_out,
                    backend_status: status,
                    title: e.title,
                    detail: e.detail,
                    retry_after: e.retry_after,
                })
            }
            (phase, input) => Err(Rejection::PluginFailed {
                plugin: "host".into(),
                reason: format!("internal: input {} does not fit phase {phase:?}", input_name(&input)),
            }),
        }
    }

    /// The caller is who `id` says: record it and read the body.
    fn authenticated(&mut self, id: Arc<Identity>) -> Result<Step, Rejection> {
        if !self.route.as_ref().and_then(|r| r.credential.as_ref()).is_some_and(|p| p.spec.per_caller()) {
            self.token.clear();
        }
        self.identity = Some(id);
        let limit = self.engine.config.server.body_limit_bytes;
        let declared = self.head.header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(Rejection::PayloadTooLarge { limit });
        }
        Ok(self.enter(Phase::Body, Step::ReadBody { limit }))
    }

    /// Forward-auth: the decision is the answer; remember it for this token.
    fn decide_only(&mut self, decision: Decision) -> Result<Step, Rejection> {
        let fa = &self.engine.config.forward_auth;
        let expires = self.identity.as_ref().map_or(self.audit.time, |i| i.expires_at);
        let until = expires.min(self.audit.time.saturating_add(fa.cache_secs));
        let outcome = if decision.allowed {
            let mut headers = Vec::new();
            if let Some(id) = &self.identity {
                headers.push(("x-gatehouse-subject".to_owned(), id.subject.clone()));
                headers.push(("x-gatehouse-issuer".to_owned(), id.issuer.clone()));
                headers.push(("x-gatehouse-groups".to_owned(), id.groups.join(",")));
            }
            Cached::Grant(headers)
        } else {
            Cached::Deny(decision.policy_ids.clone())
        };
        if let Some(key) = self.cache_key.take() {
            self.engine.decisions.put(key, until, outcome.clone(), self.audit.time, fa.cache_entries);
        }
        match outcome {
            Cached::Grant(headers) => {
                self.audit.decision = "allow".into();
                self.with_credential(After::Grant(headers))
            }
            Cached::Deny(_) => Err(Rejection::Forbidden(decision)),
        }
    }

    /// The cache key of the route's credential: the provider, and for per-caller providers the caller.
    fn credential_key(&self) -> Option<String> {
        let provider = self.route.as_ref()?.credential.as_ref()?;
        Some(match (&self.identity, provider.spec.per_caller()) {
            (Some(id), true) => format!("{}\n{}\n{}", provider.name, id.issuer, id.subject),
            _ => provider.name.clone(),
        })
    }

    /// Attaches the route's upstream credential (cached, or obtained now), then forwards or grants.
    fn with_credential(&mut self, after: After) -> Result<Step, Rejection> {
        let rt = self.rt()?;
        if matches!(after, After::Grant(_)) && !self.engine.config.forward_auth.pass_credentials {
            return Ok(self.proceed(after, None));
        }
        let (Some(provider), Some(key)) = (rt.credential.clone(), self.credential_key()) else {
            return Ok(self.proceed(after, None));
        };
        let now = self.engine.clock().unix_secs();
        self.audit.credential = Some(CredentialAudit {
            provider: provider.name.clone(),
            kind: provider.spec.kind().into(),
            ..CredentialAudit::default()
        });
        let caller = match (&self.identity, provider.spec.per_caller()) {
            (Some(id), true) => Some((Secret::new(std::mem::take(&mut self.token)), id.expires_at)),
            _ => None,
        };
        let entropy = self.engine.clock().micros();
        let cache = Arc::clone(&self.engine.credentials);
        let flow = move |key: String, background: bool| {
            crate::credentials::flow(provider, cache, key, caller, background, now, entropy)
        };
        match self.engine.credentials.lookup(&key, now) {
            Lookup::Use(cred, refresh) => {
                if let Some(a) = &mut self.audit.credential {
                    a.cached = true;
                    a.refresh_started = refresh;
                }
                if refresh {
                    self.background = Some(flow(key, true));
                }
                Ok(self.proceed(after, Some(cred)))
            }
            Lookup::Missing => {
                self.after = Some(after);
                Ok(self.enter(Phase::Credential, Step::ObtainCredential(flow(key, false))))
            }
        }
    }

    fn proceed(&mut self, after: After, cred: Option<Arc<Credential>>) -> Step {
        self.token.clear();
        if let (Some(c), Some(a)) = (&cred, &mut self.audit.credential) {
            a.identity = Some(c.identity.clone());
            a.expires_at = Some(c.expires_at);
        }
        match after {
            After::Grant(mut headers) => {
                if let Some(c) = cred {
                    headers.push((c.header.clone(), c.value.expose().to_owned()));
                }
                self.grant(headers)
            }
            After::Forward => {
                let mut upstream = self.upstream();
                if let Some(c) = cred {
                    upstream.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&c.header));
                    upstream.headers.push((c.header.clone(), c.value.expose().to_owned()));
                }
                self.enter(Phase::Forwarding, Step::Forward(upstream))
            }
        }
    }

    /// A credential refresh to run in the background once this exchange has forwarded or granted (the
    /// request itself used the still-valid credential). The flow stores its result in the cache.
    pub fn take_background(&mut self) -> Option<Flow> {
        self.background.take()
    }

    fn grant(&mut self, mut headers: Vec<(String, String)>) -> Step {
        self.account();
        self.phase = Phase::Done;
        self.audit.decision = "allow".into();
        self.audit.status = 200;
        headers.push(("x-request-id".to_owned(), self.head.request_id.clone()));
        Step::Grant(Grant { headers })
    }

    fn call(&self, plugin: String, hook: Hook, input: Vec<u8>) -> Result<Step, Rejection> {
        let config = self
            .engine
            .plugins
            .get(&plugin)
            .map(|p| Arc::clone(&p.config))
            .ok_or_else(|| Rejection::PluginFailed { plugin: plugin.clone(), reason: "not loaded".into() })?;
        Ok(Step::CallPlugin(PluginCall { plugin, hook, config, input }))
    }

    fn authorize(&self) -> Arc<Decision> {
        let (Some(id), Some(rt)) = (&self.identity, &self.route) else {
            return Arc::new(Decision { allowed: false, policy_ids: vec![], errors: vec!["no identity".into()] });
        };
        let facts = Facts {
            method: &self.head.method,
            path: &self.head.path,
            client_ip: &self.head.client_ip,
            time: self.audit.time,
            payload_size: self.audit.request_bytes,
            inference: self.backend.as_ref().map(|b| &b.facts),
        };
        let ask = ask(rt, &self.model, id);
        let context = RequestContext { route: &rt.spec.name, facts: &facts, id };
        self.engine.policies.authorize_lazily(&ask, &context, || Cow::Owned(ask.question(context.whole())))
    }

    /// Cedar decides on the request as it will be sent (after transforms and the adapter).
    fn decide(&mut self) -> Result<Step, Rejection> {
        self.account();
        let decision = self.authorize();
        if self.recorded {
            let spent = self.engine.clock().micros().saturating_sub(self.phase_started);
            self.audit.latency_us.policy += spent;
            self.phase_started += spent;
        }
        self.decision = Some(Arc::clone(&decision));
        if self.forward_auth {
            return self.decide_only(Arc::unwrap_or_clone(decision));
        }
        if !decision.allowed {
            return Err(Rejection::Forbidden(Arc::unwrap_or_clone(decision)));
        }
        self.audit.decision = "allow".into();
        self.with_credential(After::Forward)
    }

    /// Runs the route's backend adapter, if it has one, on the (transformed) body.
    fn adapt(&mut self) -> Result<Step, Rejection> {
        let rt = self.rt()?;
        let Some(adapter) = rt.adapter.clone() else { return self.decide() };
        let body = if self.body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&self.body)
                .map_err(|_| Rejection::BadPayload("the request body is not JSON".into()))?
        };
        let input = AdaptInput {
            route: rt.spec.name.clone(),
            model: self.model.clone(),
            method: self.head.method.clone(),
            path: self.head.path.clone(),
            query: self.head.query.clone(),
            params: self.params.clone(),
            body,
        };
        let bytes = serde_json::to_vec(&input).map_err(|e| internal("adapt input", e))?;
        let call = self.call(adapter, Hook::AdaptRequest, bytes)?;
        Ok(self.enter(Phase::Adapt, call))
    }

    fn next_transform(&mut self, index: usize) -> Result<Step, Rejection> {
        let rt = self.rt()?;
        if let Some(name) = rt.spec.transform.get(index).cloned() {
            // The body goes to the plugin as the caller's JSON text: checked, not parsed into a tree.
            let body = std::str::from_utf8(&self.body)
                .ok()
                .and_then(|text| serde_json::from_str::<&RawValue>(text).ok())
                .ok_or_else(|| Rejection::BadPayload("the request body is not JSON".into()))?;
            let input = TransformInput { route: rt.spec.name.clone(), model: self.model.clone(), body };
            let bytes = serde_json::to_vec(&input).map_err(|e| internal("transform input", e))?;
            let call = self.call(name, Hook::TransformRequest, bytes)?;
            return Ok(self.enter(Phase::Transform { index }, call));
        }
        self.adapt()
    }

    fn upstream(&mut self) -> Upstream {
        let Some(rt) = self.route.clone() else {
            return Upstream {
                url: String::new(),
                method: String::new(),
                headers: vec![],
                body: vec![],
                timeout_ms: 0,
                response_headers: vec![],
            };
        };
        let adapted = self.backend.take();
        let (url, method, mut headers, body) = match adapted {
            Some(b) => {
                // A cloud backend gets the adapter's request and a minimal set of the caller's headers: the
                // caller must not pin deployments or smuggle provider headers past the policy.
                let mut headers: Vec<(String, String)> = self
                    .head
                    .headers
                    .iter()
                    .filter(|(n, _)| ADAPTED_PASS.iter().any(|p| n.eq_ignore_ascii_case(p)))
                    .cloned()
                    .collect();
                for (n, v) in b.headers {
                    if set_by_the_gateway(&n) {
                        continue;
                    }
                    headers.retain(|(h, _)| !h.eq_ignore_ascii_case(&n));
                    headers.push((n.to_ascii_lowercase(), v));
                }
                if !headers.iter().any(|(n, _)| n == "content-type") {
                    headers.push(("content-type".into(), "application/json".into()));
                }
                let body = serde_json::to_vec(&b.body).unwrap_or_default();
                (format!("{}{}", rt.backend_url, b.path), b.method, headers, body)
            }
            None => {
                let path = rt.upstream_path.as_ref().map_or_else(|| self.head.path.clone(), |t| t.render(&self.params));
                let mut url = format!("{}{path}", rt.backend_url);
                if let Some(q) = &self.head.query {
                    url.push('?');
                    url.push_str(q);
                }
                let headers: Vec<(String, String)> = self
                    .head
                    .headers
                    .iter()
                    .filter(|(n, _)| {
                        !set_by_the_gateway(n)
                            && !n.eq_ignore_ascii_case("x-forwarded-for")
                            && !n
                                .get(..GATEHOUSE_PREFIX.len())
                                .is_some_and(|p| p.eq_ignore_ascii_case(GATEHOUSE_PREFIX))
                    })
                    .cloned()
                    .collect();
                (url, self.head.method.clone(), headers, std::mem::take(&mut self.body))
            }
        };
        let forwarded = match self.head.header("x-forwarded-for") {
            Some(prev) if self.engine.config.server.trust_forwarded_for => format!("{prev}, {}", self.head.client_ip),
            _ => self.head.client_ip.clone(),
        };
        headers.push(("x-forwarded-for".into(), forwarded));
        headers.push(("x-request-id".into(), self.head.request_id.clone()));
        if let Some(id) = &self.identity {
            headers.push(("x-gatehouse-subject".into(), id.subject.clone()));
            headers.push(("x-gatehouse-issuer".into(), id.issuer.clone()));
        }
        Upstream {
            url,
            method,
            headers,
            body,
            timeout_ms: rt.timeout_ms,
            response_headers: vec![("x-request-id".into(), self.head.request_id.clone())],
        }
    }

    /// The upstream answered with `status`: stream its body to the caller, or (an error the route's adapter
    /// translates) read the error body and continue the exchange.
    pub fn upstream_responded(&mut self, status: u16, content_type: Option<&str>) -> AfterUpstream {
        self.account();
        self.audit.upstream_status = Some(status);
        if status >= 400 && self.route.as_ref().is_some_and(|r| r.adapter.is_some()) {
            self.content_type = content_type.map(str::to_owned);
            self.phase = Phase::UpstreamError { status };
            return AfterUpstream::ReadError { limit: 64 * 1024 };
        }
        self.phase = Phase::Done;
        self.audit.status = status;
        AfterUpstream::Stream
    }

    /// The upstream failed before answering; returns what to send the caller.
    pub fn upstream_failed(&mut self, timed_out: bool, reason: &str) -> Answer {
        self.account();
        let r = if timed_out { Rejection::UpstreamTimeout } else { Rejection::UpstreamFailed(reason.to_owned()) };
        self.reject_answer(r)
    }

    /// The response body broke off after the headers were sent.
    pub fn stream_failed(&mut self, reason: &str) {
        self.audit.reason = Some("upstream-stream-broken".into());
        self.audit.detail = Some(reason.to_owned());
    }

    fn reject(&mut self, r: Rejection) -> Step {
        Step::Respond(self.reject_answer(r))
    }

    fn reject_answer(&mut self, r: Rejection) -> Answer {
        self.account();
        self.phase = Phase::Done;
        let answer = r.answer(&self.head.request_id, self.engine.config.server.reveal_policy_ids);
        self.audit.status = answer.status;
        self.audit.reason = Some(r.kind().to_owned());
        self.audit.detail = Some(r.audit_detail());
        if !matches!(r, Rejection::UpstreamFailed(_) | Rejection::UpstreamTimeout | Rejection::Backend { .. }) {
            self.audit.decision = "deny".into();
        }
        answer
    }

    /// Whether the configuration keeps audit records (`server.audit` is not `off`). When it does not, a host
    /// need not take the record at all (and the exchange did not time its phases).
    pub fn keeps_record(&self) -> bool {
        self.recorded
    }

    /// Ends the exchange and returns its audit record.
    pub fn finish(mut self) -> AuditRecord {
        self.take_record()
    }

    /// The audit record, for a host that keeps the exchange itself (see [`Exchange::caller_gone`]); the
    /// exchange must not be used afterwards. What the exchange holds anyway (the request's head, the route,
    /// the identity, Cedar's decision) goes into the record here rather than being copied as the request
    /// goes, so a host that writes no record (audit off) never builds one.
    pub fn take_record(&mut self) -> AuditRecord {
        self.account();
        if self.recorded {
            self.audit.latency_us.total = self.engine.clock().micros().saturating_sub(self.started);
        }
        let mut record = std::mem::take(&mut self.audit);
        let head = &mut self.head;
        record.request_id = std::mem::take(&mut head.request_id);
        record.method = std::mem::take(&mut head.method);
        record.path = std::mem::take(&mut head.path);
        record.client_ip = std::mem::take(&mut head.client_ip);
        record.route = self.route.as_ref().map(|r| r.spec.name.clone());
        if let Some(id) = &self.identity {
            record.subject = Some(id.subject.clone());
            record.issuer = Some(id.issuer.clone());
            record.kid.clone_from(&id.kid);
            record.jti_sha256 = id.jti.as_deref().map(|j| sha256_hex(j.as_bytes()));
        } else if let Some(trusted) = self.issuer.and_then(|i| self.engine.issuers.get(i)) {
            record.issuer = Some(trusted.spec.issuer.clone());
        }
        if let Some(d) = &self.decision {
            record.policy_ids.clone_from(&d.policy_ids);
            record.policy_errors.clone_from(&d.errors);
        }
        record
    }

    /// The caller closed the connection before its answer was sent (the host dropped the request): the
    /// record says so with status 499 (nginx's "client closed request"), keeping the decision made so far. A
    /// request already forwarded may have reached the backend: this record is its only trace.
    pub fn caller_gone(&mut self) {
        self.audit.status = 499;
        self.audit.reason = Some("caller-gone".into());
        self.audit.detail = Some("the caller closed the connection before the answer".into());
    }

    /// The host itself failed while the exchange was under way (a Workers shim exception) and answered 500:
    /// the record says so, keeping the decision made so far. The detail is fixed text: a host's error
    /// message may quote what it was handling.
    pub fn host_failed(&mut self) {
        self.audit.status = 500;
        self.audit.reason = Some("host-failed".into());
        self.audit.detail = Some("the host failed while handling the request".into());
    }

    /// The verified identity, once authentication succeeded.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_deref()
    }
}

fn input_name(i: &Input) -> &'static str {
    match i {
        Input::Keys(_) => "Keys",
        Input::Body(_) => "Body",
        Input::BodyTooLarge => "BodyTooLarge",
        Input::BodyUnreadable => "BodyUnreadable",
        Input::BodyTimedOut => "BodyTimedOut",
        Input::CallerGone => "CallerGone",
        Input::PluginOutput(_) => "PluginOutput",
        Input::Credential(_) => "Credential",
        Input::UpstreamError(_) => "UpstreamError",
    }
}

fn internal(what: &str, e: serde_json::Error) -> Rejection {
    Rejection::PluginFailed { plugin: "host".into(), reason: format!("{what}: {e}") }
}

fn decode<T: serde::de::DeserializeOwned>(plugin: &str, out: Result<Vec<u8>, String>) -> Result<T, Rejection> {
    let failed = |reason: String| Rejection::PluginFailed { plugin: plugin.to_owned(), reason };
    let bytes = out.map_err(failed)?;
    match serde_json::from_slice::<HookResult<T>>(&bytes) {
        Ok(HookResult::Ok(v)) => Ok(v),
        Ok(HookResult::Error(e)) => Err(failed(format!("{}: {}", e.code, e.message))),
        Err(_) => Err(failed("it returned output that is not a valid envelope".into())),
    }
}

fn invalid_token(description: &str) -> Rejection {
    Rejection::InvalidToken(gatehouse_plugin_abi::Refusal {
        code: gatehouse_plugin_abi::RefusalCode::InvalidToken,
        description: description.into(),
        unknown_key: false,
    })
}

fn bearer(header: Option<&str>) -> Result<String, Rejection> {
    let Some(value) = header else { return Err(Rejection::MissingToken) };
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Rejection::MissingToken);
    }
    let token = token.trim();
    if token.is_empty() || token.contains(' ') {
        return Err(Rejection::InvalidToken(gatehouse_plugin_abi::Refusal {
            code: gatehouse_plugin_abi::RefusalCode::InvalidRequest,
            description: "the Authorization header is malformed".into(),
            unknown_key: false,
        }));
    }
    Ok(token.to_owned())
}

/// The `iss` the token claims, read without verification, only to choose which keys to fetch.
fn claimed_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    // Only `iss` is read; the other claims are skipped, not built (the plugin checks them all).
    #[derive(serde::Deserialize)]
    struct Claimed {
        iss: Option<String>,
    }
    serde_json::from_slice::<Claimed>(&bytes).ok()?.iss
}

fn ip_or_unspecified(ip: &str) -> String {
    let ip = ip.trim_start_matches('[');
    let ip = ip.split(']').next().unwrap_or(ip);
    if ip.parse::<std::net::IpAddr>().is_ok() { ip.to_owned() } else { "0.0.0.0".to_owned() }
}

/// Request facts that go into the Cedar context.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Path.
    pub path: &'a str,
    /// Client address.
    pub client_ip: &'a str,
    /// Unix time.
    pub time: i64,
    /// Body size in bytes.
    pub payload_size: u64,
    /// Facts the backend adapter stated.
    pub inference: Option<&'a Inference>,
}

fn question(rt: &RouteRuntime, model: &str, f: &Facts<'_>, id: &Identity) -> Question {
    ask(rt, model, id).question(RequestContext { route: &rt.spec.name, facts: f, id }.whole())
}

/// The principal (the verified identity), action (the route's) and resource (the model) of a request.
fn ask<'a>(rt: &'a RouteRuntime, model: &'a str, id: &'a Identity) -> Ask<'a> {
    Ask {
        kind: id.kind,
        principal: &id.subject,
        issuer: &id.issuer,
        email: email(id),
        groups: &id.groups,
        action: &rt.spec.action,
        resource: model,
    }
}

fn email(id: &Identity) -> Option<&str> {
    id.claims.get("email").and_then(|v| v.as_str())
}

/// The Cedar context of a request, built from its facts attribute by attribute (a cached decision needs only
/// the attributes the policies read).
struct RequestContext<'a> {
    route: &'a str,
    facts: &'a Facts<'a>,
    id: &'a Identity,
}

/// The context record's attributes, in the order the record lists them.
const CONTEXT_ATTRIBUTES: [&str; 9] =
    ["method", "path", "route", "client_ip", "time", "scopes", "issuer", "payload_size", "inference"];

impl ContextSource for RequestContext<'_> {
    fn attribute(&self, name: &str) -> Option<Cow<'_, serde_json::Value>> {
        let f = self.facts;
        let v = match name {
            "method" => f.method.into(),
            "path" => f.path.into(),
            "route" => self.route.into(),
            "client_ip" => serde_json::json!({"__extn": {"fn": "ip", "arg": ip_or_unspecified(f.client_ip)}}),
            "time" => f.time.into(),
            "scopes" => self.id.scopes.iter().map(|s| serde_json::Value::from(s.as_str())).collect(),
            "issuer" => self.id.issuer.as_str().into(),
            "payload_size" => i64::try_from(f.payload_size).unwrap_or(i64::MAX).into(),
            "inference" => {
                f.inference.map_or_else(|| serde_json::json!({}), |i| serde_json::to_value(i).unwrap_or_default())
            }
            _ => return None,
        };
        Some(Cow::Owned(v))
    }

    fn record(&self) -> Cow<'_, serde_json::Value> {
        Cow::Owned(self.whole())
    }
}

impl RequestContext<'_> {
    /// The whole record, every attribute in [`CONTEXT_ATTRIBUTES`] order.
    fn whole(&self) -> serde_json::Value {
        let mut m = serde_json::Map::with_capacity(CONTEXT_ATTRIBUTES.len());
        for name in CONTEXT_ATTRIBUTES {
            if let Some(v) = self.attribute(name) {
                m.insert(name.to_owned(), v.into_owned());
            }
        }
        serde_json::Value::Object(m)
    }
}

impl Engine {
    /// Answers offline what the pipeline would decide for an already verified `identity`: the matched
    /// route, the Cedar question and the decision. Used by `gatehouse authorize`.
    pub fn explain(&self, facts: &Facts<'_>, identity: &Identity) -> Result<(String, Question, Decision), Rejection> {
        let (r, params) = self.route_for(facts.method, facts.path)?;
        let q = question(&r, &r.model.render(&params), facts, identity);
        let d = self.policies.authorize(&q);
        Ok((r.spec.name.clone(), q, d))
    }

    /// The first route whose path and method match.
    fn route_for(&self, method: &str, path: &str) -> Result<(Arc<RouteRuntime>, Params), Rejection> {
        let mut allow = Vec::new();
        for r in &self.routes {
            if let Some(params) = r.path.matches(path) {
                if r.spec.methods.iter().any(|m| m == method) {
                    return Ok((Arc::clone(r), params));
                }
                allow.extend(r.spec.methods.iter().cloned());
            }
        }
        Err(if allow.is_empty() { Rejection::NoRoute } else { Rejection::MethodNotAllowed { allow } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_options_are_the_names_beyond_the_hop_by_hop_ones() {
        let names = |v| connection_options(v).collect::<Vec<_>>();
        assert_eq!(names("keep-alive"), Vec::<&str>::new());
        assert_eq!(names("Close"), Vec::<&str>::new());
        assert_eq!(names(" keep-alive , X-Hop-Note,,upgrade, x-trace "), ["X-Hop-Note", "x-trace"]);
        assert_eq!(names(""), Vec::<&str>::new());
    }

    /// A decision asked from the request's facts (the cache keyed by the attributes the policies read, the
    /// question built only on a miss) equals Cedar's evaluation of the whole question, on generated
    /// principals and facts asked repeatedly, with policies that read time, path, address, payload size,
    /// scopes and inference facts.
    #[test]
    fn decisions_from_facts_equal_evaluated_questions() {
        use crate::policy::{PolicyStore, PrincipalKind, Source};
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
        let src = |f: &str| Source { name: f.into(), text: std::fs::read_to_string(format!("{dir}/{f}")).unwrap() };
        let extra = Source {
            name: "extra.cedar".into(),
            text: r#"
                @id("night") permit(principal in Gatehouse::Group::"night-shift", action, resource)
                    when { context.time > 1800000001 && context.method == "POST" };
                @id("no-admin") forbid(principal, action, resource) when { context.path like "/admin/*" };
                @id("lan") forbid(principal in Gatehouse::Group::"contractors", action, resource)
                    unless { context.client_ip.isInRange(ip("10.0.0.0/8")) };
                @id("route") forbid(principal, action, resource) when { context.route == "other" };
                @id("iss") forbid(principal, action, resource) when { context.issuer == "https://b" && context.payload_size > 5 };
            "#
            .into(),
        };
        let store =
            PolicyStore::load(&src("schema.cedarschema"), &[src("models.cedar"), extra], Some(&src("entities.json")))
                .unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut below = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut allowed, mut denied) = (0, 0);
        for _ in 0..4_000 {
            let groups = ["data-scientists", "data-scientists", "night-shift", "contractors", "nobody"];
            let mut claims = serde_json::Map::new();
            if below(2) == 0 {
                claims.insert("email".into(), "a@example.com".into());
            }
            let id = Identity {
                issuer: ["https://a", "https://b"][below(2)].into(),
                subject: format!("p{}", below(4)),
                kind: if below(4) == 0 { PrincipalKind::Service } else { PrincipalKind::User },
                groups: (0..1 + below(2)).map(|_| groups[below(groups.len())].to_owned()).collect(),
                scopes: [vec![], vec!["predict".to_owned()], vec!["predict".to_owned(), "x".to_owned()]][below(3)]
                    .clone(),
                kid: None,
                jti: None,
                expires_at: 0,
                claims,
            };
            let inference = [
                None,
                Some(Inference::default()),
                Some(Inference { max_tokens: Some([10, 5000][below(2)]), ..Inference::default() }),
            ][below(3)]
            .clone();
            let facts = Facts {
                method: ["POST", "GET"][below(2)],
                path: ["/v1/models/demo:predict", "/v1/models/demo:predict", "/admin/x"][below(3)],
                client_ip: ["10.1.2.3", "192.168.0.1", "[::1]:80", "nonsense"][below(4)],
                time: 1_800_000_000 + below(4) as i64,
                payload_size: [3, 300_000][below(2)],
                inference: inference.as_ref(),
            };
            let route = ["predict", "predict", "predict", "other"][below(4)];
            let action = ["predict", "predict", "explain", "generate"][below(4)];
            let model = ["demo", "demo", "fraud-scorer", "gemini", "unknown"][below(5)];
            let context = RequestContext { route, facts: &facts, id: &id };
            let ask = Ask {
                kind: id.kind,
                principal: &id.subject,
                issuer: &id.issuer,
                email: email(&id),
                groups: &id.groups,
                action,
                resource: model,
            };
            let q = ask.question(context.whole());
            let lazily = store.authorize_lazily(&ask, &context, || Cow::Borrowed(&q));
            let evaluated = store.authorize_uncached(&q);
            assert_eq!(*lazily, evaluated, "{q:?}");
            assert_eq!(store.authorize(&q), evaluated, "{q:?}");
            if evaluated.allowed { allowed += 1 } else { denied += 1 }
        }
        assert!(allowed > 200 && denied > 300, "{allowed} allowed, {denied} denied");
    }

    /// Each attribute of the request context is what the whole record holds under its name.
    #[test]
    fn context_attributes_are_the_record() {
        use crate::policy::PrincipalKind;
        let id = Identity {
            issuer: "https://a".into(),
            subject: "s".into(),
            kind: PrincipalKind::User,
            groups: vec![],
            scopes: vec!["predict".into()],
            kid: None,
            jti: None,
            expires_at: 0,
            claims: serde_json::Map::new(),
        };
        let inference = Inference { operation: Some("predict".into()), ..Inference::default() };
        let facts = Facts {
            method: "POST",
            path: "/p",
            client_ip: "10.0.0.1",
            time: 7,
            payload_size: 9,
            inference: Some(&inference),
        };
        let context = RequestContext { route: "r", facts: &facts, id: &id };
        let record = context.whole();
        assert_eq!(record.as_object().unwrap().len(), CONTEXT_ATTRIBUTES.len());
        for name in CONTEXT_ATTRIBUTES {
            assert_eq!(Some(context.attribute(name).unwrap().as_ref()), record.get(name), "{name}");
        }
        assert_eq!(record["client_ip"], serde_json::json!({"__extn": {"fn": "ip", "arg": "10.0.0.1"}}));
        assert_eq!(record["inference"], serde_json::json!({"operation": "predict"}));
        assert!(context.attribute("nothing").is_none());
    }

    #[test]
    fn garbage_plugin_output_is_a_plugin_failure() {
        let r = decode::<AuthnVerdict>("p", Ok(b"this is not json".to_vec())).unwrap_err();
        assert_eq!(r.kind(), "plugin-failed");
        assert_eq!(r.status(), 403);
        let r = decode::<AuthnVerdict>("p", Ok(br#"{"ok": {"something": "else"}}"#.to_vec())).unwrap_err();
        assert_eq!(r.kind(), "plugin-failed");
        let r = decode::<AuthnVerdict>("p", Err("it trapped".into())).unwrap_err();
        assert!(r.detail().contains("it trapped"));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(Some("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer(Some("bearer   abc ")).unwrap(), "abc");
        assert!(matches!(bearer(None), Err(Rejection::MissingToken)));
        assert!(matches!(bearer(Some("Basic dXNlcg==")), Err(Rejection::MissingToken)));
        assert_eq!(bearer(Some("Bearer a b")).unwrap_err().status(), 400);
    }
}
