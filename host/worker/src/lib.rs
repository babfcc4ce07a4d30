//! The Gatehouse engine as the WebAssembly core of a Cloudflare Worker.
//!
//! Built for `wasm32-unknown-unknown`, this module imports nothing, like a plugin. The JavaScript shim
//! (`shim.js` beside this crate) owns the I/O: it receives requests, calls `fetch` for key sets, token endpoints
//! and upstreams, and instantiates the plugin modules. Every decision is made here, by the same engine the
//! native host runs: the shim passes JSON commands to [`gh_call`] and does what the answers say.
//!
//! Commands (`{"op": ..., "now_ms": ...}`; every answer is `{"ok": ...}` or `{"error": "..."}`):
//! - `load {config_file, files: {path: text}, dirs: {path: [names]}}` → `{plugins: [...], issuers: n}`
//! - `start {head}` → `{ex, step}`; `resume {ex, input}` → `{step}`;
//!   `responded {ex, status, content_type, connection}` → `{stream, drop_headers}` or `{read_error: limit}`;
//!   `finish {ex}` → the audit record (null when none is kept)
//! - `keys {issuer, refresh}` → `{ready}` or `{get: url}`; `keys_got {issuer, status, cache_control, body}` or
//!   `{issuer, error}` → the same
//! - `flow {flow}` → a need; `flow_fed {flow, fed}` → the next need (`read`, `http` or `done`); `flow_drop
//!   {flow}` forgets a flow that will not run (another flow for the same credential was under way)
//!
//! Caches (key sets, verified tokens, forward-auth decisions, credentials) live in this module's memory: one
//! per isolate.
#![deny(missing_docs)]

use base64::Engine as _;
use gatehouse_engine::credentials::{Credential, Fed, Flow, Need};
use gatehouse_engine::jwks::{IssuerKeys, KeyFetch, KeyStep, Want};
use gatehouse_engine::{Clock, Engine, Exchange, Input, KeySet, RequestHead, Step};
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

static NOW_MS: AtomicU64 = AtomicU64::new(0);

/// Time as the shim reported it with the last command (Workers' `Date.now()`).
struct ShimClock;

impl ShimClock {
    /// Milliseconds since the Unix epoch: the unit of the key sets' fetch times.
    fn unix_millis() -> i64 {
        NOW_MS.load(Ordering::Relaxed) as i64
    }
}

impl Clock for ShimClock {
    fn unix_secs(&self) -> i64 {
        (NOW_MS.load(Ordering::Relaxed) / 1000) as i64
    }
    fn micros(&self) -> u64 {
        NOW_MS.load(Ordering::Relaxed).saturating_mul(1000)
    }
}

struct Issuer {
    keys: IssuerKeys,
    jwks_uri: Option<String>,
    fetch: Option<KeyFetch>,
}

#[derive(Default)]
struct State {
    engine: Option<Arc<Engine>>,
    issuers: Vec<Issuer>,
    exchanges: HashMap<u64, Exchange>,
    flows: HashMap<u64, Flow>,
    outcomes: BTreeMap<u64, Result<Arc<Credential>, String>>,
    next: u64,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Allocates `len` bytes for a command.
#[unsafe(no_mangle)]
pub extern "C" fn gh_alloc(len: i32) -> i32 {
    gatehouse_plugin_sdk::rt::alloc(len)
}

/// Runs one command (JSON at `ptr`/`len`, from [`gh_alloc`]); returns the answer as a packed region, valid
/// until the next call.
///
/// # Safety
/// The region must come from [`gh_alloc`] and be filled by the caller.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gh_call(ptr: i32, len: i32) -> i64 {
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { gatehouse_plugin_sdk::rt::take(ptr, len) };
    let answer = match serde_json::from_slice::<Value>(&bytes) {
        Ok(cmd) => STATE.with(|s| command(&mut s.borrow_mut(), &cmd)),
        Err(e) => Err(format!("the command is not JSON: {e}")),
    };
    let envelope = match answer {
        Ok(v) => json!({ "ok": v }),
        Err(e) => json!({ "error": e }),
    };
    gatehouse_plugin_sdk::rt::publish_json(&envelope)
}

fn field<'a>(cmd: &'a Value, name: &str) -> Result<&'a Value, String> {
    cmd.get(name).ok_or_else(|| format!("missing `{name}`"))
}

fn id(cmd: &Value, name: &str) -> Result<u64, String> {
    field(cmd, name)?.as_u64().ok_or_else(|| format!("`{name}` is not an id"))
}

fn text<'a>(cmd: &'a Value, name: &str) -> Result<&'a str, String> {
    field(cmd, name)?.as_str().ok_or_else(|| format!("`{name}` is not a string"))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| format!("bad base64: {e}"))
}

fn command(st: &mut State, cmd: &Value) -> Result<Value, String> {
    if let Some(ms) = cmd.get("now_ms").and_then(Value::as_f64) {
        NOW_MS.store(ms as u64, Ordering::Relaxed);
    }
    match text(cmd, "op")? {
        "load" => load(st, cmd),
        "start" => {
            let engine = st.engine.clone().ok_or("not loaded")?;
            let head: RequestHead = serde_json::from_value(field(cmd, "head")?.clone()).map_err(|e| e.to_string())?;
            let (ex, step) = engine.start(head);
            st.next += 1;
            let n = st.next;
            st.exchanges.insert(n, ex);
            let step = step_json(st, n, step);
            Ok(json!({"ex": n, "step": step}))
        }
        "resume" => {
            let n = id(cmd, "ex")?;
            let input = input(st, field(cmd, "input")?)?;
            let ex = st.exchanges.get_mut(&n).ok_or("no such exchange")?;
            let step = ex.resume(input);
            Ok(json!({"step": step_json(st, n, step)}))
        }
        "responded" => {
            let ex = st.exchanges.get_mut(&id(cmd, "ex")?).ok_or("no such exchange")?;
            let status = u16::try_from(field(cmd, "status")?.as_u64().unwrap_or(502)).unwrap_or(502);
            let ct = cmd.get("content_type").and_then(Value::as_str);
            Ok(match ex.upstream_responded(status, ct) {
                gatehouse_engine::AfterUpstream::Stream => {
                    let connection = cmd.get("connection").and_then(Value::as_str).unwrap_or("");
                    let drop: Vec<&str> = gatehouse_engine::RESPONSE_HOP_BY_HOP
                        .into_iter()
                        .chain(gatehouse_engine::connection_options(connection))
                        .collect();
                    json!({"stream": true, "drop_headers": drop})
                }
                gatehouse_engine::AfterUpstream::ReadError { limit } => json!({"read_error": limit}),
            })
        }
        "failed" => {
            let ex = st.exchanges.get_mut(&id(cmd, "ex")?).ok_or("no such exchange")?;
            let timed_out = cmd.get("timed_out").and_then(Value::as_bool).unwrap_or(false);
            let answer = ex.upstream_failed(timed_out, text(cmd, "reason").unwrap_or("the upstream failed"));
            Ok(json!({"respond": answer}))
        }
        // Every exchange ends with one of these three, which return its audit record (null when the
        // configuration keeps none): `finish` once the answer is on its way, `caller_gone` when the caller hung
        // up first, `host_failed` when the shim threw.
        "finish" | "caller_gone" | "host_failed" => {
            let mut ex = st.exchanges.remove(&id(cmd, "ex")?).ok_or("no such exchange")?;
            match text(cmd, "op")? {
                "caller_gone" => ex.caller_gone(),
                "host_failed" => ex.host_failed(),
                _ => {}
            }
            if !ex.keeps_record() {
                return Ok(Value::Null);
            }
            serde_json::to_value(ex.finish()).map_err(|e| e.to_string())
        }
        "keys" => {
            let i = usize::try_from(id(cmd, "issuer")?).unwrap_or(usize::MAX);
            let engine = st.engine.clone().ok_or("not loaded")?;
            let spec = &engine.issuers.get(i).ok_or("no such issuer")?.spec;
            let slot = st.issuers.get_mut(i).ok_or("no such issuer")?;
            let want = if cmd.get("refresh").and_then(Value::as_bool) == Some(true) {
                Want::UnknownKey { seen: cmd.get("seen").and_then(Value::as_u64).unwrap_or(0) }
            } else {
                Want::Current
            };
            if !slot.keys.should_fetch(ShimClock::unix_millis(), want, spec.jwks_refresh_interval_secs) {
                return Ok(json!({"ready": true}));
            }
            let mut fetch = KeyFetch::new(spec, slot.jwks_uri.clone());
            let step = fetch.start();
            slot.fetch = Some(fetch);
            key_step(slot, step, spec.jwks_max_age_secs)
        }
        "keys_got" => {
            let i = usize::try_from(id(cmd, "issuer")?).unwrap_or(usize::MAX);
            let engine = st.engine.clone().ok_or("not loaded")?;
            let spec = &engine.issuers.get(i).ok_or("no such issuer")?.spec;
            let slot = st.issuers.get_mut(i).ok_or("no such issuer")?;
            let fetch = slot.fetch.as_mut().ok_or("no key fetch under way")?;
            let step = match cmd.get("error").and_then(Value::as_str) {
                Some(e) => fetch.next(Err(e.to_owned())),
                None => {
                    let status = u16::try_from(field(cmd, "status")?.as_u64().unwrap_or(0)).unwrap_or(0);
                    let cc = cmd.get("cache_control").and_then(Value::as_str).map(str::to_owned);
                    fetch.next(Ok((status, cc, text(cmd, "body")?.as_bytes())))
                }
            };
            key_step(slot, step, spec.jwks_max_age_secs)
        }
        "flow" => {
            let n = id(cmd, "flow")?;
            let flow = st.flows.get_mut(&n).ok_or("no such flow")?;
            let need = flow.start();
            Ok(need_json(st, n, need))
        }
        "flow_fed" => {
            let n = id(cmd, "flow")?;
            let fed: Fed = serde_json::from_value(field(cmd, "fed")?.clone()).map_err(|e| e.to_string())?;
            let flow = st.flows.get_mut(&n).ok_or("no such flow")?;
            let need = flow.resume(fed);
            Ok(need_json(st, n, need))
        }
        "flow_drop" => {
            st.flows.remove(&id(cmd, "flow")?);
            Ok(Value::Null)
        }
        op => Err(format!("unknown op `{op}`")),
    }
}

fn load(st: &mut State, cmd: &Value) -> Result<Value, String> {
    let files: HashMap<String, String> =
        serde_json::from_value(field(cmd, "files")?.clone()).map_err(|e| e.to_string())?;
    let dirs: HashMap<String, Vec<String>> =
        serde_json::from_value(cmd.get("dirs").cloned().unwrap_or(json!({}))).map_err(|e| e.to_string())?;
    let read = |p: &str| files.get(p).cloned().ok_or_else(|| format!("{p} is not in the bundle"));
    let list = |p: &str| dirs.get(p).cloned();
    let engine =
        Engine::load(text(cmd, "config_file")?, &read, &list, Arc::new(ShimClock)).map_err(|e| e.to_string())?;
    let plugins: Vec<Value> = engine
        .plugins()
        .map(|p| {
            let module = match &p.module {
                gatehouse_engine::ModuleSource::Builtin(b) => json!({"builtin": b}),
                gatehouse_engine::ModuleSource::Path(path) => json!({"path": path}),
            };
            json!({"name": p.name, "module": module, "sha256": p.sha256,
                   "hooks": p.hooks.iter().map(|h| h.name()).collect::<Vec<_>>()})
        })
        .collect();
    let issuers: Vec<Issuer> = engine
        .issuers
        .iter()
        .map(|i| Issuer { keys: IssuerKeys::default(), jwks_uri: i.spec.jwks_uri.clone(), fetch: None })
        .collect();
    let count = issuers.len();
    let client_timeout_secs = engine.config.server.client_timeout_secs;
    *st = State { engine: Some(Arc::new(engine)), issuers, ..State::default() };
    Ok(json!({"plugins": plugins, "issuers": count, "client_timeout_secs": client_timeout_secs}))
}

fn key_step(slot: &mut Issuer, step: KeyStep, max_age_cap: u64) -> Result<Value, String> {
    match step {
        KeyStep::Get(url) => Ok(json!({"get": url})),
        KeyStep::Done { outcome, jwks_uri } => {
            slot.fetch = None;
            if jwks_uri.is_some() {
                slot.jwks_uri = jwks_uri;
            }
            let error = outcome.as_ref().err().cloned();
            let outcome = outcome.as_ref().map(|(v, cc)| (v.clone(), cc.as_deref())).map_err(Clone::clone);
            slot.keys.record(ShimClock::unix_millis(), outcome, max_age_cap);
            Ok(json!({"ready": true, "error": error}))
        }
    }
}

fn input(st: &mut State, v: &Value) -> Result<Input, String> {
    if let Some(i) = v.get("keys") {
        let i = usize::try_from(i.as_u64().ok_or("`keys` is not an issuer index")?).unwrap_or(usize::MAX);
        let slot = st.issuers.get(i).ok_or("no such issuer")?;
        return Ok(Input::Keys(slot.keys.current().map(|jwks| KeySet { jwks, version: slot.keys.version() })));
    }
    if let Some(b) = v.get("body_b64").and_then(Value::as_str) {
        return Ok(Input::Body(unb64(b)?));
    }
    if v.get("body_too_large").is_some() {
        return Ok(Input::BodyTooLarge);
    }
    if v.get("body_timed_out").is_some() {
        return Ok(Input::BodyTimedOut);
    }
    if v.get("body_unreadable").is_some() {
        return Ok(Input::BodyUnreadable);
    }
    if let Some(out) = v.get("plugin_output") {
        return Ok(Input::PluginOutput(match (out.get("ok").and_then(Value::as_str), out.get("err")) {
            (Some(ok), _) => Ok(ok.as_bytes().to_vec()),
            (None, Some(e)) => Err(e.as_str().unwrap_or("the plugin failed").to_owned()),
            (None, None) => Err("no plugin output".into()),
        }));
    }
    if let Some(n) = v.get("credential").and_then(Value::as_u64) {
        let outcome = st.outcomes.get(&n).cloned().unwrap_or_else(|| Err("the credential flow was lost".into()));
        return Ok(Input::Credential(outcome));
    }
    if let Some(b) = v.get("upstream_error_b64").and_then(Value::as_str) {
        return Ok(Input::UpstreamError(unb64(b)?));
    }
    Err(format!("unknown input {v}"))
}

fn keep_flow(st: &mut State, flow: Flow) -> u64 {
    st.next += 1;
    st.flows.insert(st.next, flow);
    st.next
}

fn step_json(st: &mut State, ex: u64, step: Step) -> Value {
    let background = match step {
        Step::Forward(_) | Step::Grant(_) => {
            st.exchanges.get_mut(&ex).and_then(Exchange::take_background).map(|f| keep_flow(st, f))
        }
        _ => None,
    };
    match step {
        Step::FetchKeys { issuer, refresh, seen } => {
            json!({"fetch_keys": {"issuer": issuer, "refresh": refresh, "seen": seen}})
        }
        Step::ReadBody { limit } => json!({"read_body": {"limit": limit}}),
        Step::CallPlugin(c) => json!({"call_plugin": {
            "plugin": c.plugin, "hook": c.hook.name(),
            "config": String::from_utf8_lossy(&c.config), "input": String::from_utf8_lossy(&c.input)}}),
        Step::ObtainCredential(flow) => {
            let key = flow.key().to_owned();
            let n = keep_flow(st, flow);
            json!({"obtain_credential": {"flow": n, "key": key}})
        }
        Step::Forward(up) => json!({"forward": {
            "url": up.url, "method": up.method, "headers": up.headers, "body_b64": b64(&up.body),
            "timeout_ms": up.timeout_ms, "response_headers": up.response_headers}, "background": background}),
        Step::Respond(answer) => json!({"respond": answer}),
        Step::Grant(g) => json!({"grant": {"headers": g.headers}, "background": background}),
    }
}

fn need_json(st: &mut State, flow: u64, need: Need) -> Value {
    match need {
        Need::Done => {
            let outcome = st.flows.remove(&flow).and_then(|f| f.outcome()).unwrap_or_else(|| Err("no outcome".into()));
            let error = outcome.as_ref().err().cloned();
            st.outcomes.insert(flow, outcome);
            // Waiters resume right after a flow ends; keep the newest few hundred outcomes.
            while st.outcomes.len() > 256 {
                st.outcomes.pop_first();
            }
            json!({"done": {"error": error}})
        }
        need => serde_json::to_value(need).unwrap_or(Value::Null),
    }
}
