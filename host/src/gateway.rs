//! The gateway: drives the engine's [`Exchange`] for each HTTP request, performing the I/O it asks for.

use crate::audit::AuditSink;
use crate::client::HttpClient;
use crate::keys::KeyStore;
use crate::runtime::Plugins;
use crate::upstream::Upstreams;
use bytes::Bytes;
use gatehouse_engine::jwks::Want;
use gatehouse_engine::{AfterUpstream, Answer, Engine, Exchange, Input, RequestHead, Step, Upstream};
use http::{HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body: a buffered answer or the upstream's stream.
pub type ResponseBody = BoxBody<Bytes, BoxError>;

/// One loaded configuration: engine, plugins and key caches, swapped as a whole on reload.
pub struct Loaded {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The plugins it uses.
    pub plugins: Plugins,
    /// The issuers' keys.
    pub keys: KeyStore,
    /// Upstream credential flows under way.
    pub credentials: crate::credentials::Flights,
}

/// A running gateway.
pub struct Gateway {
    current: Arc<RwLock<Arc<Loaded>>>,
    client: HttpClient,
    upstreams: Upstreams,
    audit: Arc<AuditSink>,
    local: Option<Arc<dyn LocalRoutes>>,
}

/// Requests the host answers itself before the pipeline (the demo's dev issuer).
pub trait LocalRoutes: Send + Sync {
    /// An answer for this request, if it is a local route.
    fn answer(&self, method: &str, path: &str, body: &[u8]) -> Option<Response<Full<Bytes>>>;
}

impl Gateway {
    /// A gateway over a loaded configuration.
    pub fn new(loaded: Loaded, client: HttpClient, audit: AuditSink) -> Gateway {
        Gateway {
            current: Arc::new(RwLock::new(Arc::new(loaded))),
            client,
            upstreams: Upstreams::new(),
            audit: Arc::new(audit),
            local: None,
        }
    }

    /// Another handle on this gateway for one worker thread: the same configuration (a reload through either
    /// reaches both), audit sink and local routes, with its own HTTP client and upstream pool, so the
    /// connections it keeps are driven by the runtime of the thread that uses them (no cross-thread wake-up per
    /// request).
    pub fn worker(&self) -> Gateway {
        Gateway {
            current: Arc::clone(&self.current),
            client: crate::client::build(),
            upstreams: Upstreams::new(),
            audit: Arc::clone(&self.audit),
            local: self.local.clone(),
        }
    }

    /// Adds host-local routes (used by the demo).
    pub fn with_local_routes(mut self, local: Arc<dyn LocalRoutes>) -> Gateway {
        self.local = Some(local);
        self
    }

    /// The configuration in force.
    pub fn loaded(&self) -> Arc<Loaded> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Puts a new configuration in force; requests under way finish on the old one.
    pub fn replace(&self, loaded: Loaded) {
        let new = Arc::new(loaded);
        match self.current.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }

    /// The client used for upstreams and key fetches.
    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    /// Handles one request end to end. Never fails: every error becomes an answer.
    pub async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        let body = match &self.local {
            Some(local) if parts.uri.path().starts_with("/_dev/") => {
                let bytes = Limited::new(body, 64 * 1024).collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                return match local.answer(parts.method.as_str(), parts.uri.path(), &bytes) {
                    Some(res) => res.map(|b| b.map_err(|never| match never {}).boxed()),
                    None => answer_response(gatehouse_engine::Rejection::NoRoute.answer(&request_id(), false)),
                };
            }
            _ => body,
        };
        let loaded = self.loaded();
        match self.drive(&loaded, &parts, body, peer, false).await {
            Outcome::Forward(ex, upstream) => self.forward(*ex, upstream, &loaded).await,
            Outcome::Grant(grant) => grant_response(grant),
            Outcome::Answer(answer) => answer_response(answer),
        }
    }

    /// Decides without forwarding: authenticates, authorizes and returns the verdict, for proxies that only
    /// want the decision (the same as forward-auth, without the sub-request conventions).
    pub async fn authorize<B>(&self, parts: &http::request::Parts, body: B, peer: SocketAddr) -> Verdict
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        match self.drive(&self.loaded(), parts, body, peer, true).await {
            Outcome::Grant(g) => Verdict::Allow { headers: g.headers },
            Outcome::Answer(a) => Verdict::Deny(a),
            Outcome::Forward(mut ex, _) => {
                let answer = ex.upstream_failed(false, "the engine asked to forward a decide-only request");
                ex.finish();
                Verdict::Deny(answer)
            }
        }
    }

    /// Runs the engine until it answers, grants or asks to forward; writes the audit record unless forwarding.
    async fn drive<B>(
        &self,
        loaded: &Loaded,
        parts: &http::request::Parts,
        body: B,
        peer: SocketAddr,
        decide_only: bool,
    ) -> Outcome<'_>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let head = RequestHead {
            request_id: request_id(),
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts
                .headers
                .iter()
                .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str().to_owned(), v.to_owned())))
                .collect(),
            client_ip: peer.ip().to_string(),
            decide_only,
        };
        let (ex, step) = loaded.engine.start(head);
        self.run(loaded, Audited::new(ex, &self.audit), step, Some(body)).await
    }

    /// Performs the steps the engine asks for until it answers, grants or forwards.
    async fn run<'a, B>(&self, loaded: &Loaded, mut ex: Audited<'a>, mut step: Step, mut body: Option<B>) -> Outcome<'a>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        loop {
            let input = match step {
                Step::FetchKeys { issuer, refresh, seen } => {
                    let want = if refresh { Want::UnknownKey { seen } } else { Want::Current };
                    Input::Keys(loaded.keys.keys(issuer, want).await)
                }
                Step::ReadBody { limit } => match body.take() {
                    Some(b) => {
                        let deadline = Duration::from_secs(loaded.engine.config.server.client_timeout_secs);
                        tokio::time::timeout(deadline, read_body(b, limit)).await.unwrap_or(Input::BodyTimedOut)
                    }
                    None => Input::Body(Vec::new()),
                },
                Step::CallPlugin(call) => Input::PluginOutput(loaded.plugins.call(&call)),
                Step::ObtainCredential(flow) => Input::Credential(loaded.credentials.obtain(&self.client, flow).await),
                Step::Forward(upstream) => {
                    self.background(&mut ex);
                    return Outcome::Forward(Box::new(ex), upstream);
                }
                Step::Respond(answer) => {
                    ex.finish();
                    return Outcome::Answer(answer);
                }
                Step::Grant(grant) => {
                    self.background(&mut ex);
                    ex.finish();
                    return Outcome::Grant(grant);
                }
            };
            step = ex.resume(input);
        }
    }

    /// Starts the credential refresh the exchange asked for, without holding the request up.
    fn background(&self, ex: &mut Exchange) {
        if let Some(flow) = ex.take_background() {
            let client = self.client.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::credentials::drive(&client, flow).await {
                    crate::log(format_args!("background credential refresh failed: {e}"));
                }
            });
        }
    }

    async fn forward(&self, mut ex: Audited<'_>, up: Upstream, loaded: &Loaded) -> Response<ResponseBody> {
        let req = match upstream_request(up.method, &up.url, up.headers, up.body) {
            Ok(r) => r,
            Err(e) => return self.fail(ex, false, &format!("cannot build the upstream request: {e}")),
        };
        let sent = tokio::time::timeout(Duration::from_millis(up.timeout_ms), self.upstreams.send(req)).await;
        let res = match sent {
            Err(_) => return self.fail(ex, true, "timeout"),
            Ok(Err(e)) => return self.fail(ex, false, &e.to_string()),
            Ok(Ok(res)) => res,
        };
        let content_type = res.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        if let AfterUpstream::ReadError { limit } = ex.upstream_responded(res.status().as_u16(), content_type) {
            let bytes = match Limited::new(res.into_body(), limit).collect().await {
                Ok(c) => c.to_bytes().to_vec(),
                Err(_) => Vec::new(),
            };
            let step = ex.resume(Input::UpstreamError(bytes));
            return match self.run::<Full<Bytes>>(loaded, ex, step, None).await {
                Outcome::Answer(a) => answer_response(a),
                Outcome::Grant(g) => grant_response(g),
                Outcome::Forward(ex, _) => self.fail(*ex, false, "the engine asked to forward twice"),
            };
        }
        ex.finish();
        let (mut parts, incoming) = res.into_parts();
        let nominated: Vec<http::HeaderName> = parts
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(gatehouse_engine::connection_options)
            .filter_map(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for name in nominated.iter().chain(RESPONSE_HOP_BY_HOP.iter()) {
            parts.headers.remove(name);
        }
        for (n, v) in up.response_headers {
            if let Ok((n, v)) = header(n, v) {
                parts.headers.insert(n, v);
            }
        }
        Response::from_parts(parts, incoming.map_err(BoxError::from).boxed())
    }

    fn fail(&self, mut ex: Audited<'_>, timed_out: bool, reason: &str) -> Response<ResponseBody> {
        let answer = ex.upstream_failed(timed_out, reason);
        ex.finish();
        answer_response(answer)
    }
}

async fn read_body<B>(body: B, limit: u64) -> Input
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).collect().await {
        Ok(c) => Input::Body(c.to_bytes().to_vec()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Input::BodyTooLarge,
        Err(e) if caller_hung_up(&*e) => Input::CallerGone,
        Err(_) => Input::BodyUnreadable,
    }
}

/// Whether reading a body failed because the caller closed the connection before sending all of it (hyper
/// reports an unexpected end of file; other body types cannot tell).
fn caller_hung_up(e: &(dyn std::error::Error + 'static)) -> bool {
    let Some(h) = e.downcast_ref::<hyper::Error>() else { return false };
    h.is_incomplete_message()
        || std::error::Error::source(h)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
}

/// An exchange whose audit record is written exactly once: by [`Audited::finish`], or, if the exchange is
/// dropped unfinished (the caller hung up and hyper dropped the request's future, possibly while the
/// upstream was working on it), marked as the caller's doing when it is dropped.
struct Audited<'a> {
    ex: Exchange,
    audit: &'a AuditSink,
    written: bool,
}

impl<'a> Audited<'a> {
    fn new(ex: Exchange, audit: &'a AuditSink) -> Audited<'a> {
        Audited { ex, audit, written: false }
    }

    /// Ends the exchange: writes its record (built only when the configuration keeps records).
    fn finish(&mut self) {
        if !std::mem::replace(&mut self.written, true) && self.ex.keeps_record() {
            self.audit.write(&self.ex.take_record());
        }
    }
}

impl Drop for Audited<'_> {
    fn drop(&mut self) {
        if !self.written {
            self.ex.caller_gone();
            self.finish();
        }
    }
}

impl std::ops::Deref for Audited<'_> {
    type Target = Exchange;
    fn deref(&self) -> &Exchange {
        &self.ex
    }
}

impl std::ops::DerefMut for Audited<'_> {
    fn deref_mut(&mut self) -> &mut Exchange {
        &mut self.ex
    }
}

enum Outcome<'a> {
    Forward(Box<Audited<'a>>, Upstream),
    Grant(gatehouse_engine::Grant),
    Answer(Answer),
}

/// The outcome of [`Gateway::authorize`].
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Allowed: headers to add to the request sent upstream (identity, request id).
    Allow {
        /// Header names and values.
        headers: Vec<(String, String)>,
    },
    /// Refused: the answer to send the caller (401, 403, 413, ...).
    Deny(Answer),
}

fn grant_response(grant: gatehouse_engine::Grant) -> Response<ResponseBody> {
    let mut res = Response::new(Full::new(Bytes::new()).map_err(|never| match never {}).boxed());
    for (n, v) in grant.headers {
        if let (Ok(n), Ok(v)) = (http::HeaderName::try_from(n), HeaderValue::try_from(v)) {
            res.headers_mut().append(n, v);
        }
    }
    res
}

/// Turns an engine answer into a response.
pub fn answer_response(answer: Answer) -> Response<ResponseBody> {
    let mut res = Response::new(Full::new(Bytes::from(answer.body)).map_err(|never| match never {}).boxed());
    *res.status_mut() = http::StatusCode::from_u16(answer.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    for (n, v) in answer.headers {
        if let (Ok(n), Ok(v)) = (http::HeaderName::try_from(n), HeaderValue::try_from(v)) {
            res.headers_mut().append(n, v);
        }
    }
    res
}

/// The engine's [`gatehouse_engine::RESPONSE_HOP_BY_HOP`] as header names, parsed once.
static RESPONSE_HOP_BY_HOP: std::sync::LazyLock<Vec<http::HeaderName>> = std::sync::LazyLock::new(|| {
    gatehouse_engine::RESPONSE_HOP_BY_HOP.iter().map(|n| http::HeaderName::from_static(n)).collect()
});

/// The request the engine asked to send, built from its parts without copying header values (each `String`
/// becomes the value's bytes).
fn upstream_request(
    method: String,
    url: &str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> Result<Request<Full<Bytes>>, http::Error> {
    let mut req = Request::new(Full::new(Bytes::from(body)));
    *req.method_mut() = http::Method::from_bytes(method.as_bytes())?;
    *req.uri_mut() = http::Uri::try_from(url)?;
    let map = req.headers_mut();
    map.reserve(headers.len());
    for (n, v) in headers {
        let (n, v) = header(n, v)?;
        map.append(n, v);
    }
    Ok(req)
}

/// A header from owned strings; the value's bytes are taken, not copied.
fn header(name: String, value: String) -> Result<(http::HeaderName, HeaderValue), http::Error> {
    let name = http::HeaderName::from_bytes(name.as_bytes())?;
    let value = HeaderValue::from_maybe_shared(Bytes::from(value.into_bytes()))?;
    Ok((name, value))
}

/// A random request id: 32 lowercase hex digits.
fn request_id() -> String {
    let n: u128 = rand::random();
    let mut id = String::with_capacity(32);
    id.extend((0..32).rev().filter_map(|i| char::from_digit(((n >> (4 * i)) & 0xf) as u32, 16)));
    id
}
