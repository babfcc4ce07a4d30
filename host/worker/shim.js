// Gatehouse on Cloudflare Workers: the shim around the engine core.
//
// The shim translates requests and responses and performs I/O (fetch for key sets, token endpoints and
// upstreams; reading secrets from bindings; running plugin modules). Every decision comes from the engine
// core (gatehouse_core.wasm, the same engine as the native host) and from the plugin modules (the modules the
// native host runs: the same files, with their mutable globals exported where instances can be reset).
// bundle.js, written by `gatehouse bundle`, holds the compiled configuration.
//
// Caches (key sets, verified tokens, forward-auth decisions, upstream credentials) live in the core's memory:
// one per isolate. A new isolate starts cold; a rotated key or credential is picked up per isolate.

import { core as coreModule, plugins as pluginModules, bundle } from "./bundle.js";

const enc = new TextEncoder();
const dec = new TextDecoder();
let core = null;
let loaded = null;
const keyFlights = new Map();
const credentialFlights = new Map();

function call(cmd) {
  cmd.now_ms = Date.now();
  const bytes = enc.encode(JSON.stringify(cmd));
  const x = core.exports;
  let packed;
  try {
    const ptr = x.gh_alloc(bytes.length);
    new Uint8Array(x.memory.buffer, ptr, bytes.length).set(bytes);
    packed = BigInt.asUintN(64, BigInt(x.gh_call(ptr, bytes.length)));
  } catch (e) {
    // A trap inside the core (it aborts on panic) leaves its memory in an unknown state: the next request
    // starts a new core (cold caches) instead of using this one.
    core = null;
    loaded = null;
    throw e;
  }
  const out = JSON.parse(dec.decode(region(x.memory, packed)));
  if ("error" in out) throw new Error(`gatehouse core: ${out.error}`);
  return out.ok;
}

function region(memory, packed) {
  const ptr = Number(packed >> 32n);
  const len = Number(packed & 0xffffffffn);
  return new Uint8Array(memory.buffer, ptr, len).slice();
}

function ensureLoaded() {
  if (loaded) return loaded;
  core = new WebAssembly.Instance(coreModule, {});
  loaded = call({ op: "load", config_file: bundle.config_file, files: bundle.files, dirs: bundle.dirs });
  for (const p of loaded.plugins) {
    if (!pluginModules[p.name]) throw new Error(`plugin ${p.name} is not in the bundle`);
  }
  return loaded;
}

// Plugin instances ready for their next call, by plugin: only for modules `gatehouse bundle` found resettable
// (`bundle.reusable`: one memory, no start function, no table or segment changes, mutable globals exported as
// the native host rewrites them). Each comes with its initial state: a copy of its memory and the values of its
// exported globals right after instantiation. Calls are synchronous, so one instance per plugin suffices.
const idle = new Map();
const reusable = new Set(bundle.reusable ?? []);

function instantiate(name) {
  const instance = new WebAssembly.Instance(pluginModules[name], {});
  if (!reusable.has(name)) return { instance };
  const x = instance.exports;
  const globals = Object.entries(x)
    .filter(([exported]) => exported.startsWith("__gatehouse_global_"))
    .map(([, g]) => [g, g.value]);
  return { instance, memory: new Uint8Array(x.memory.buffer).slice(), globals };
}

// Puts a used instance back in the state it had when instantiated; false if it cannot be (memory grew).
function reset(slot) {
  const memory = slot.instance.exports.memory.buffer;
  if (memory.byteLength !== slot.memory.length) return false;
  new Uint8Array(memory).set(slot.memory);
  for (const [g, v] of slot.globals) g.value = v;
  return true;
}

// One plugin call in an instance in its initial state (a fresh one, or one reset after its last call): no data
// of one request is visible to another. An instance that trapped is dropped.
function callPlugin(c) {
  let slot = idle.get(c.plugin);
  idle.delete(c.plugin);
  try {
    slot ??= instantiate(c.plugin);
    const x = slot.instance.exports;
    const put = (text) => {
      const bytes = enc.encode(text);
      const ptr = x.gatehouse_alloc(bytes.length);
      new Uint8Array(x.memory.buffer, ptr, bytes.length).set(bytes);
      return [ptr, bytes.length];
    };
    const [cp, cl] = put(c.config);
    const [ip, il] = put(c.input);
    const packed = BigInt.asUintN(64, BigInt(x[`gatehouse_hook_${c.hook}`](cp, cl, ip, il)));
    const ok = dec.decode(region(x.memory, packed));
    if (slot.memory && reset(slot)) idle.set(c.plugin, slot);
    return { ok };
  } catch (e) {
    return { err: `it trapped: ${e && e.message ? e.message : e}` };
  }
}

function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function fromBase64(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

// The body, unless it exceeds `limit` bytes ({ tooLarge }) or is not all there within `ms` ({ timedOut }).
async function readLimited(stream, limit, ms = Infinity) {
  if (!stream) return { bytes: new Uint8Array(0) };
  const reader = stream.getReader();
  const chunks = [];
  let total = 0;
  let timer;
  const late = new Promise((resolve) => {
    if (ms !== Infinity) timer = setTimeout(() => resolve({ late: true }), ms);
  });
  try {
    for (;;) {
      const read = await Promise.race([reader.read(), late]);
      if (read.late) {
        reader.cancel().catch(() => {});
        return { timedOut: true };
      }
      if (read.done) break;
      total += read.value.length;
      if (total > limit) {
        await reader.cancel();
        return { tooLarge: true };
      }
      chunks.push(read.value);
    }
  } finally {
    clearTimeout(timer);
  }
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.length;
  }
  return { bytes };
}

// fetch with a deadline on the response headers only (a streamed body may take longer), cancelled early when
// `cancel` (an AbortSignal) fires.
async function fetchWithDeadline(url, init, ms, cancel) {
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, ms);
  cancel?.addEventListener("abort", () => controller.abort());
  try {
    return await fetch(url, { ...init, signal: controller.signal });
  } catch (e) {
    if (timedOut) {
      const t = new Error(`no answer within ${ms} ms`);
      t.timedOut = true;
      throw t;
    }
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

async function keys(issuer, refresh, seen) {
  let flight = keyFlights.get(issuer);
  if (!flight) {
    flight = (async () => {
      let r = call({ op: "keys", issuer, refresh, seen });
      while (r.get) {
        try {
          const res = await fetchWithDeadline(r.get, { headers: { accept: "application/json" } }, 5000);
          const body = await res.text();
          r = call({ op: "keys_got", issuer, status: res.status, cache_control: res.headers.get("cache-control"), body });
        } catch (e) {
          r = call({ op: "keys_got", issuer, error: `GET ${r.get}: ${e.message}` });
        }
      }
    })().finally(() => keyFlights.delete(issuer));
    keyFlights.set(issuer, flight);
  }
  await flight;
  return { keys: issuer };
}

function readSecret(source, env) {
  const name = source.env ?? bundle.secret_bindings[source.file];
  const value = name === undefined ? undefined : env[name];
  if (value === undefined || value === null) {
    return { Err: `the Worker binding ${name ?? "(none for " + source.file + ")"} is not set` };
  }
  return { Ok: String(value).trim() };
}

async function tokenCall(h) {
  try {
    const res = await fetchWithDeadline(h.url, { method: h.method, headers: h.headers, body: h.body }, h.timeout_ms);
    return { Ok: { status: res.status, body: await res.text() } };
  } catch (e) {
    return { Err: e.timedOut ? `${new URL(h.url).host} did not answer in ${h.timeout_ms} ms` : `cannot reach ${new URL(h.url).host}` };
  }
}

async function driveFlow(flow, env) {
  let need = call({ op: "flow", flow });
  while (!need.done) {
    let fed;
    if (need.read) fed = { read: readSecret(need.read, env) };
    else fed = { http: await tokenCall(need.http) };
    need = call({ op: "flow_fed", flow, fed });
  }
  return flow;
}

// One flow at a time per credential: requests that need the same credential share the flow under way.
async function credential(flow, key, env) {
  let flight = credentialFlights.get(key);
  if (flight) {
    call({ op: "flow_drop", flow });
  } else {
    flight = driveFlow(flow, env).finally(() => credentialFlights.delete(key));
    credentialFlights.set(key, flight);
  }
  return { credential: await flight };
}

function background(step, env, ctx) {
  if (step.background) ctx.waitUntil(driveFlow(step.background, env).catch(() => {}));
}

// The core returns null when the configuration keeps no audit records.
function audit(record) {
  if (record !== null) console.log(JSON.stringify(record));
}

function answer(a) {
  return new Response(a.body, { status: a.status, headers: a.headers });
}

// Thrown by a request's calls into the core once its caller has hung up: that exchange is over.
const CALLER_GONE = Symbol("caller gone");

// One request's exchange in the core, ended exactly once with its audit record written: `finish` when the
// answer goes out, `caller_gone` when the caller hangs up first (request.signal, with the
// `enable_request_signal` compatibility flag), `host_failed` when this shim throws. A caller that hangs up
// also cancels the upstream request under way, as the native host does.
class Exchange {
  constructor(request, head) {
    const { ex, step } = call({ op: "start", head });
    this.id = ex;
    this.first = step;
    this.cancel = new AbortController();
    request.signal?.addEventListener("abort", () => {
      this.end("caller_gone");
      this.cancel.abort();
    });
  }

  call(cmd) {
    if (this.id === null) throw CALLER_GONE;
    return call({ ...cmd, ex: this.id });
  }

  end(op) {
    if (this.id === null) return;
    const ex = this.id;
    this.id = null;
    audit(call({ op, ex }));
  }
}

async function handle(request, env, ctx, open) {
  ensureLoaded();
  const url = new URL(request.url);
  const head = {
    request_id: crypto.randomUUID().replaceAll("-", ""),
    method: request.method,
    path: url.pathname,
    query: url.search ? url.search.slice(1) : null,
    headers: [...request.headers],
    client_ip: request.headers.get("cf-connecting-ip") ?? "0.0.0.0",
    decide_only: false,
  };
  const x = new Exchange(request, head);
  open.exchange = x;
  let step = x.first;
  for (;;) {
    let input;
    if (step.fetch_keys) {
      input = await keys(step.fetch_keys.issuer, step.fetch_keys.refresh, step.fetch_keys.seen);
    } else if (step.read_body) {
      const r = await readLimited(request.body, step.read_body.limit, loaded.client_timeout_secs * 1000).catch(() => ({
        unreadable: true,
      }));
      input = r.tooLarge
        ? { body_too_large: true }
        : r.timedOut
          ? { body_timed_out: true }
          : r.unreadable
            ? { body_unreadable: true }
            : { body_b64: toBase64(r.bytes) };
    } else if (step.call_plugin) {
      input = { plugin_output: callPlugin(step.call_plugin) };
    } else if (step.obtain_credential) {
      input = await credential(step.obtain_credential.flow, step.obtain_credential.key, env);
    } else if (step.respond) {
      x.end("finish");
      return answer(step.respond);
    } else if (step.grant) {
      background(step, env, ctx);
      x.end("finish");
      return new Response(null, { status: 200, headers: step.grant.headers });
    } else if (step.forward) {
      background(step, env, ctx);
      const up = step.forward;
      const bodyless = up.method === "GET" || up.method === "HEAD";
      let res;
      try {
        res = await fetchWithDeadline(
          up.url,
          { method: up.method, headers: up.headers, body: bodyless ? undefined : fromBase64(up.body_b64), redirect: "manual" },
          up.timeout_ms,
          x.cancel.signal,
        );
      } catch (e) {
        const failed = x.call({ op: "failed", timed_out: !!e.timedOut, reason: e.timedOut ? "timeout" : "cannot connect to the upstream" });
        x.end("finish");
        return answer(failed.respond);
      }
      const after = x.call({
        op: "responded",
        status: res.status,
        content_type: res.headers.get("content-type"),
        connection: res.headers.get("connection"),
      });
      if (after.read_error !== undefined) {
        const r = await readLimited(res.body, after.read_error).catch(() => ({ bytes: new Uint8Array(0) }));
        const bytes = r.bytes ?? new Uint8Array(0);
        step = x.call({ op: "resume", input: { upstream_error_b64: toBase64(bytes) } }).step;
        continue;
      }
      x.end("finish");
      const headers = new Headers(res.headers);
      for (const h of after.drop_headers) headers.delete(h);
      for (const [n, v] of up.response_headers) headers.set(n, v);
      return new Response(res.body, { status: res.status, headers });
    } else {
      throw new Error(`unknown step ${JSON.stringify(step)}`);
    }
    step = x.call({ op: "resume", input }).step;
  }
}

export default {
  async fetch(request, env, ctx) {
    const open = { exchange: null };
    try {
      return await handle(request, env, ctx, open);
    } catch (e) {
      // Nobody is waiting for this answer; the exchange's record was written at the hang-up.
      if (e === CALLER_GONE) return new Response(null, { status: 499 });
      console.error(`gatehouse: ${e && e.stack ? e.stack : e}`);
      try {
        open.exchange?.end("host_failed");
      } catch (_) {
        // The core itself failed: nothing more to record.
      }
      const body = JSON.stringify({ type: "urn:gatehouse:problem:internal", title: "Internal Server Error", status: 500, detail: "the gateway failed" });
      return new Response(body, { status: 500, headers: { "content-type": "application/problem+json" } });
    }
  },
};
