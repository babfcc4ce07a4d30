//! The self-hosted Gatehouse host: a hyper server and an embeddable library that drive the sans-IO
//! [`gatehouse_engine`], running plugins with wasmtime, fetching keys and forwarding to upstreams.
//!
//! Three ways to use it:
//! - **Server**: `gatehouse serve --config gatehouse.toml` ([`serve`]).
//! - **Tower service**: [`Gateway::into_service`] gives a [`GatewayService`], a `tower::Service` over
//!   `http::Request<B>` for any body `B`; hyper, axum and tower stacks take it as is (see
//!   `host/examples/embed_hyper.rs` and `embed_axum.rs`). Put a [`ClientAddr`] in the request extensions so
//!   policies see the caller's address.
//! - **Decision only**: [`Gateway::authorize`] returns a [`Verdict`] (allow with headers for the upstream, or
//!   the 401/403 answer) without forwarding; `[forward_auth]` exposes the same over HTTP for nginx
//!   `auth_request`, Traefik `forwardAuth` and Envoy `ext_authz`.
//!
//! ```no_run
//! # async fn run() -> Result<(), gatehouse_host::HostError> {
//! let gateway = std::sync::Arc::new(gatehouse_host::Gateway::from_file("gatehouse.toml")?);
//! let (addr, server) = gatehouse_host::serve(gateway, "127.0.0.1:8080").await?;
//! println!("listening on {addr}");
//! server.await.ok();
//! # Ok(()) }
//! ```
//!
//! # Request lifecycle
//!
//! Each request is one engine [`Exchange`](gatehouse_engine::Exchange); the host performs the step it asks
//! for and resumes it. Every phase can end the exchange with an answer; the audit record is written when it
//! ends (for forwarded requests, when the upstream's headers arrive).
//!
//! ```text
//!  request ─▶ route match ──404/405──▶ answer
//!               │
//!               ▼
//!           bearer token ──401 (no token)──▶ answer           forward-auth: decision cache hit ─▶ 200 / 403
//!               │ `iss` picks the issuer (untrusted: 401)
//!               ▼
//!        [FetchKeys] JWKS: cached, or one fetch shared by all waiting requests; stale keys kept if the IdP is down
//!               │                                                         (no keys ever: 503)
//!               ▼
//!        [CallPlugin authenticate] jwt.wasm in a fresh instance ──refusal──▶ 401 + WWW-Authenticate
//!               │ unknown kid: [FetchKeys refresh] once, then again       trap/timeout/garbage ──▶ 403
//!               ▼
//!        [ReadBody] up to body_limit_bytes ──▶ 413
//!               ▼
//!        Cedar (principal, action, model, context) ──deny──▶ 403 problem+json
//!               │                                  decide-only / forward-auth ──▶ [Grant] 200 + identity headers
//!               ▼
//!        [CallPlugin transform_request] per route transform ──reject──▶ 400/413
//!               ▼
//!        [Forward] upstream; response streamed back ──connect error──▶ 502, timeout ──▶ 504
//! ```
#![deny(missing_docs)]

pub mod audit;
pub mod bundle;
pub mod client;
pub mod credentials;
pub mod demo;
pub mod gateway;
pub mod keys;
pub mod reuse;
pub mod runtime;
pub mod service;
pub mod upstream;

pub use audit::AuditSink;
pub use gateway::{Gateway, Loaded, ResponseBody, Verdict};
pub use service::{ClientAddr, GatewayService};

use gatehouse_engine::{ConfigError, Engine};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Writes one diagnostic line to stderr. A closed or full stderr must never take the gateway down, so
/// failures to write are ignored (unlike `eprintln!`, which panics).
pub fn log(message: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "gatehouse: {message}");
}

/// Why a configuration could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The configuration or its policies are invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A plugin module could not be loaded.
    #[error("{0}")]
    Plugin(#[from] runtime::LoadError),
    /// Listening or opening the audit file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A Worker bundle could not be written.
    #[error("{0}")]
    Bundle(String),
}

/// The host's clock: wall time for token checks, a monotonic clock for latencies.
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    /// A new clock.
    pub fn new() -> SystemClock {
        SystemClock { start: Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl gatehouse_engine::Clock for SystemClock {
    fn unix_secs(&self) -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
    }
    fn micros(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

fn read_file(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

fn list_dir(path: &str) -> Option<Vec<String>> {
    let rd = std::fs::read_dir(path).ok()?;
    Some(rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
}

/// Loads a configuration file and everything it names except plugins (for `check`, `authorize`, `test`).
pub fn engine_from_file(path: &str) -> Result<Engine, ConfigError> {
    Engine::load(path, &read_file, &list_dir, Arc::new(SystemClock::new()))
}

/// Loads a configuration file and the plugins it names.
pub fn load_file(path: &str, client: &client::HttpClient) -> Result<Loaded, HostError> {
    load_engine(engine_from_file(path)?, client)
}

/// Loads the plugins of an engine and prepares its key caches.
pub fn load_engine(engine: Engine, client: &client::HttpClient) -> Result<Loaded, HostError> {
    let server = &engine.config.server;
    let plugins = runtime::Plugins::load(
        engine.plugins(),
        Duration::from_millis(server.plugin_timeout_ms),
        server.plugin_memory_bytes,
    )?;
    let keys = keys::KeyStore::new(engine.issuers.iter().map(|i| i.spec.clone()), client.clone());
    Ok(Loaded { engine: Arc::new(engine), plugins, keys, credentials: credentials::Flights::default() })
}

impl Gateway {
    /// A gateway from a configuration file, auditing where the file says.
    pub fn from_file(path: &str) -> Result<Gateway, HostError> {
        let client = client::build();
        let loaded = load_file(path, &client)?;
        let audit = AuditSink::open(&loaded.engine.config.server.audit)?;
        Ok(Gateway::new(loaded, client, audit))
    }

    /// A tower service over this gateway.
    pub fn into_service(self: Arc<Self>) -> GatewayService {
        GatewayService::new(self)
    }

    /// Re-reads `path` and puts it in force; on any error the running configuration stays.
    pub fn reload(&self, path: &str) -> Result<(), HostError> {
        let loaded = load_file(path, self.client())?;
        self.replace(loaded);
        Ok(())
    }
}

/// Listens on `addr` and serves `gateway` until the returned task is dropped or aborted.
pub async fn serve(gateway: Arc<Gateway>, addr: &str) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), HostError> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(gateway, listener)
}

/// Keeps a timer due within a quarter second on a worker's loop. Tokio's timer wheel wakes its own driver (an
/// eventfd write, then an extra turn of the loop) whenever a timer is set that falls due before the loop's
/// next planned wake-up, and with no timer pending that is every request's upstream timeout: one system call
/// and one loop turn per request. With this tick pending, a request's timeout (seconds away) never comes
/// first. Four idle wake-ups a second are the price.
async fn heartbeat() {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
    }
}

/// Serves `gateway` with one single-threaded runtime per worker thread, the way nginx runs one event loop per
/// core: an acceptor thread hands connections out in turn, and each worker serves its connections and their
/// upstream connections on its own loop, with its own [`Gateway::worker`] handle. The workers run until the
/// process exits.
pub fn serve_threads(
    gateway: &Gateway,
    listener: std::net::TcpListener,
    threads: usize,
) -> std::io::Result<SocketAddr> {
    let local = listener.local_addr()?;
    let mut workers = Vec::with_capacity(threads.max(1));
    for i in 0..threads.max(1) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(std::net::TcpStream, SocketAddr)>();
        let gw = Arc::new(gateway.worker());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name(format!("gatehouse-worker-{i}")).spawn(move || {
            rt.block_on(async move {
                tokio::spawn(heartbeat());
                while let Some((stream, peer)) = rx.recv().await {
                    let Ok(stream) = tokio::net::TcpStream::from_std(stream) else { continue };
                    tokio::spawn(serve_connection(Arc::clone(&gw), stream, peer));
                }
            });
        })?;
        workers.push(tx);
    }
    std::thread::Builder::new().name("gatehouse-accept".into()).spawn(move || {
        let mut next = 0usize;
        loop {
            let (stream, peer) = match listener.accept() {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    log(format_args!("accept: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = stream.set_nodelay(true);
            let Some(worker) = workers.get(next % workers.len()) else { return };
            next = next.wrapping_add(1);
            if worker.send((stream, peer)).is_err() {
                return;
            }
        }
    })?;
    Ok(local)
}

async fn serve_connection(gw: Arc<Gateway>, stream: tokio::net::TcpStream, peer: SocketAddr) {
    // A caller gets `client_timeout_secs` to send each request's head, and an idle keep-alive connection is
    // closed after as long (hyper's header read timeout covers both): a slow caller cannot hold connections.
    let timeout = Duration::from_secs(gw.loaded().engine.config.server.client_timeout_secs);
    let svc = service_fn(move |req| {
        let gw = Arc::clone(&gw);
        async move { Ok::<_, std::convert::Infallible>(gw.handle(req, peer).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

/// Serves `gateway` on an already bound listener.
pub fn serve_on(
    gateway: Arc<Gateway>,
    listener: tokio::net::TcpListener,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), HostError> {
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve_connection(Arc::clone(&gateway), stream, peer));
        }
    });
    Ok((local, task))
}
