//! Loopback fakes and helpers for Gatehouse's end-to-end tests: a JWKS/OIDC server, a model backend that
//! can be slow, fail or stream, token minting with the test keys, and a gateway harness.
#![allow(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod bench;
pub mod cloud;
pub mod raw_http;
pub mod workerd;

pub const AUD: &str = "api://gatehouse";

pub fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// The test JWKS (`tests/keys/jwks.json`), optionally restricted to some kids.
pub fn jwks(kids: &[&str]) -> Value {
    let all: Value = serde_json::from_str(&std::fs::read_to_string(repo("tests/keys/jwks.json")).unwrap()).unwrap();
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
        .cloned()
        .collect();
    json!({ "keys": keys })
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Claims for `sub` in `groups`, valid for five minutes.
pub fn claims(iss: &str, sub: &str, groups: &[&str]) -> Value {
    let n = now();
    json!({"iss": iss, "sub": sub, "aud": AUD, "exp": n + 300, "iat": n - 5, "nbf": n - 5,
           "groups": groups, "jti": format!("jti-{sub}-{n}")})
}

/// Signs `claims` with test key `kid` (rsa1, rsa2, ec256, ec384, ed25519) using `jsonwebtoken`.
pub fn mint(alg: jsonwebtoken::Algorithm, kid: &str, claims: &Value) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let file = match kid {
        "rotated" => "rsa2",
        k => k,
    };
    let pem = std::fs::read(repo(&format!("tests/keys/{file}.pem"))).unwrap();
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// Builds a token from raw parts (for forged headers).
pub fn forge(header: Value, claims: &Value, sig: &[u8]) -> String {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!("{}.{}.{}", e.encode(header.to_string()), e.encode(claims.to_string()), e.encode(sig))
}

async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(http::Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = http::Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

fn json_response(status: u16, v: &Value) -> http::Response<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "max-age=300")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap()
}

/// A loopback OpenID provider: discovery document and JWKS, with a switchable key set and outage.
#[derive(Clone)]
pub struct IdP {
    pub addr: SocketAddr,
    pub keys: Arc<Mutex<Value>>,
    pub down: Arc<AtomicBool>,
    pub jwks_fetches: Arc<AtomicUsize>,
}

impl IdP {
    pub async fn start(kids: &[&str]) -> IdP {
        let keys = Arc::new(Mutex::new(jwks(kids)));
        let down = Arc::new(AtomicBool::new(false));
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let addr_cell = Arc::new(Mutex::new(None::<SocketAddr>));
        let (k, d, f, a) = (keys.clone(), down.clone(), jwks_fetches.clone(), addr_cell.clone());
        let addr = serve(move |req| {
            let (k, d, f, a) = (k.clone(), d.clone(), f.clone(), a.clone());
            async move {
                if d.load(Ordering::SeqCst) {
                    return json_response(503, &json!({"error": "temporarily_unavailable"}));
                }
                let me = a.lock().unwrap().unwrap();
                match req.uri().path() {
                    "/.well-known/openid-configuration" => json_response(
                        200,
                        &json!({"issuer": format!("http://{me}"), "jwks_uri": format!("http://{me}/jwks")}),
                    ),
                    "/jwks" => {
                        f.fetch_add(1, Ordering::SeqCst);
                        let v = k.lock().unwrap().clone();
                        json_response(200, &v)
                    }
                    _ => json_response(404, &json!({})),
                }
            }
        })
        .await;
        *addr_cell.lock().unwrap() = Some(addr);
        IdP { addr, keys, down, jwks_fetches }
    }

    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }
}

/// A loopback model backend. Paths: `/v1/models/{m}:predict` echoes what it received; `/slow/...` waits
/// two seconds before answering; `/stream/...` sends a first chunk, then waits for `release` before the rest.
#[derive(Clone)]
pub struct Backend {
    pub addr: SocketAddr,
    pub release: Arc<tokio::sync::Notify>,
    pub finished: Arc<AtomicBool>,
}

impl Backend {
    pub async fn start() -> Backend {
        let release = Arc::new(tokio::sync::Notify::new());
        let finished = Arc::new(AtomicBool::new(false));
        let (r, fin) = (release.clone(), finished.clone());
        let addr = serve(move |req: http::Request<Incoming>| {
            let (r, fin) = (r.clone(), fin.clone());
            async move {
                let path = req.uri().path().to_owned();
                let headers: serde_json::Map<String, Value> = req
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), Value::String(v.to_str().unwrap_or("").to_owned())))
                    .collect();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                if path.starts_with("/slow") {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                if path.starts_with("/stream") {
                    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
                    tokio::spawn(async move {
                        let _ = tx.send(Bytes::from_static(b"data: first\n\n")).await;
                        let _ = tokio::time::timeout(Duration::from_secs(10), r.notified()).await;
                        fin.store(true, Ordering::SeqCst);
                        let _ = tx.send(Bytes::from_static(b"data: last\n\n")).await;
                    });
                    return http::Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(ChannelBody(rx).boxed())
                        .unwrap();
                }
                let received: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                // Hop-by-hop headers the gateway must not pass on (one of HTTP/1.1's, one the `Connection` header
                // names), and an end-to-end one it must.
                let mut res = json_response(200, &json!({"path": path, "headers": headers, "body": received}));
                res.headers_mut().insert("proxy-authenticate", http::HeaderValue::from_static("Basic realm=\"model\""));
                res.headers_mut().insert("connection", http::HeaderValue::from_static("keep-alive, X-Hop-Note"));
                res.headers_mut().insert("x-hop-note", http::HeaderValue::from_static("for the next hop only"));
                res.headers_mut().insert("x-model-version", http::HeaderValue::from_static("7"));
                res
            }
        })
        .await;
        Backend { addr, release, finished }
    }
}

/// A response body fed through a channel, so a test controls when each chunk is sent.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// A running gateway with its temporary directory and audit file.
pub struct Gateway {
    pub addr: SocketAddr,
    pub dir: std::path::PathBuf,
    pub gateway: Arc<gatehouse_host::Gateway>,
    pub task: tokio::task::JoinHandle<()>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Writes `config` (with `{policies}` replaced by the repository's policies directory and `{dir}` by a
/// fresh temporary directory) and starts a gateway on an ephemeral port.
pub async fn gateway(config: &str) -> Gateway {
    let dir = std::env::temp_dir().join(format!(
        "gatehouse-e2e-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let text = config.replace("{policies}", &repo("policies")).replace("{dir}", &dir.display().to_string());
    let path = dir.join("gatehouse.toml");
    std::fs::write(&path, text).unwrap();
    let gw = Arc::new(gatehouse_host::Gateway::from_file(&path.display().to_string()).unwrap());
    let (addr, task) = gatehouse_host::serve(gw.clone(), "127.0.0.1:0").await.unwrap();
    Gateway { addr, dir, gateway: gw, task }
}

impl Gateway {
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The audit record of the request whose reply carried `request_id` (its `x-request-id`).
    pub fn audit_of(&self, request_id: &str) -> Value {
        self.audit().into_iter().find(|a| a["request_id"] == request_id).expect("no audit record for the request")
    }

    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A plain HTTP/1 client for the tests.
pub type Client = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new())
}

/// An answer read whole.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// POSTs `body` to `url` with an optional bearer token.
pub async fn post(url: &str, token: Option<&str>, body: impl Into<Bytes>) -> Reply {
    let mut req = http::Request::post(url).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = client().request(req.body(Full::new(body.into())).unwrap()).await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes()).into_owned();
    Reply { status, headers, body }
}
