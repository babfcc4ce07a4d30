//! The embedded demo: `gatehouse serve` with no configuration. A dev issuer whose ES256 key is made at start
//! (discovery document and JWKS served under `/_dev/issuer`, tokens minted at `POST /_dev/token`), a demo
//! model backend on an ephemeral loopback port, and the example policies of `policies/`.

use crate::gateway::LocalRoutes;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use p256::ecdsa::{Signature, SigningKey, signature::Signer};
use serde_json::{Value, json};

/// The demo's audience.
pub const AUDIENCE: &str = "gatehouse-demo";

/// The example policies, embedded so the demo runs from any directory.
pub const FILES: [(&str, &str); 3] = [
    ("schema.cedarschema", include_str!("../../policies/schema.cedarschema")),
    ("models.cedar", include_str!("../../policies/models.cedar")),
    ("entities.json", include_str!("../../policies/entities.json")),
];

/// A development identity provider. Never use it outside a demo.
pub struct DevIssuer {
    issuer: String,
    kid: String,
    key: SigningKey,
}

impl DevIssuer {
    /// A new issuer at `base` (e.g. `http://127.0.0.1:8080`), with a fresh key.
    pub fn new(base: &str) -> DevIssuer {
        let key = SigningKey::random(&mut rand::rngs::OsRng);
        let kid = format!("dev-{:08x}", rand::random::<u32>());
        DevIssuer { issuer: format!("{base}/_dev/issuer"), kid, key }
    }

    /// The `iss` of its tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    fn jwks(&self) -> Value {
        let point = self.key.verifying_key().to_encoded_point(false);
        let coord = |c: Option<&p256::FieldBytes>| c.map(|c| URL_SAFE_NO_PAD.encode(c)).unwrap_or_default();
        json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
                          "x": coord(point.x()), "y": coord(point.y())}]})
    }

    /// Mints an ES256 token.
    pub fn mint(&self, sub: &str, groups: &[String], ttl: i64, aud: &str, now: i64) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let claims = json!({"iss": self.issuer, "sub": sub, "aud": aud, "groups": groups,
                            "iat": now, "nbf": now, "exp": now + ttl,
                            "jti": format!("{:016x}", rand::random::<u64>())});
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig: Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }
}

fn json_response(status: u16, v: &Value) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(v.to_string())));
    *res.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    res.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    res
}

impl LocalRoutes for DevIssuer {
    fn answer(&self, method: &str, path: &str, body: &[u8]) -> Option<Response<Full<Bytes>>> {
        match (method, path) {
            ("GET", "/_dev/issuer/.well-known/openid-configuration") => Some(json_response(
                200,
                &json!({
                    "issuer": self.issuer,
                    "jwks_uri": format!("{}/jwks", self.issuer),
                    "id_token_signing_alg_values_supported": ["ES256"],
                }),
            )),
            ("GET", "/_dev/issuer/jwks") => Some(json_response(200, &self.jwks())),
            ("POST", "/_dev/token") => {
                let req: Value = serde_json::from_slice(body).unwrap_or(json!({}));
                let sub = req.get("sub").and_then(Value::as_str).unwrap_or("demo-user");
                let groups: Vec<String> = req
                    .get("groups")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                    .unwrap_or_default();
                let ttl = req.get("ttl").and_then(Value::as_i64).unwrap_or(3600).clamp(1, 86_400);
                let aud = req.get("aud").and_then(Value::as_str).unwrap_or(AUDIENCE);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let token = self.mint(sub, &groups, ttl, aud, now);
                Some(json_response(200, &json!({"access_token": token, "token_type": "Bearer", "expires_in": ttl})))
            }
            _ => None,
        }
    }
}

/// The demo configuration for a gateway at `listen` in front of a backend at `backend`.
pub fn config(listen: &str, backend: &str) -> String {
    format!(
        r#"[server]
listen = "{listen}"
audit = "stdout"

[[issuers]]
issuer = "http://{listen}/_dev/issuer"
audiences = ["{AUDIENCE}"]
algorithms = ["ES256"]

[policies]
schema = "schema.cedarschema"
files = ["models.cedar"]
entities = "entities.json"

[backends.demo]
url = "http://{backend}"
timeout_ms = 10000

[[routes]]
name = "predict"
path = "/v1/models/{{model}}:predict"
action = "predict"
backend = "demo"
"#
    )
}

/// Reads the demo's embedded files (`demo/…`).
pub fn read(path: &str) -> Result<String, String> {
    let name = path.trim_start_matches("demo/");
    FILES.iter().find(|(n, _)| *n == name).map(|(_, t)| (*t).to_owned()).ok_or_else(|| format!("no demo file `{name}`"))
}

/// Starts the demo model backend on an ephemeral loopback port: it answers `:predict` with a made-up
/// prediction per instance.
pub async fn start_backend() -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let path = req.uri().path().to_owned();
                    let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                    let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let n = input.get("instances").and_then(Value::as_array).map_or(1, Vec::len);
                    let predictions: Vec<Value> = (0..n).map(|i| json!({"score": 0.5 + (i as f64) / 100.0})).collect();
                    let model = path.rsplit('/').next().unwrap_or_default().split(':').next().unwrap_or_default();
                    Ok::<_, std::convert::Infallible>(json_response(
                        200,
                        &json!({
                        "model": model, "predictions": predictions, "deployedModelId": "demo-1"}),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(addr)
}

/// The demo's engine (configuration and embedded policies) for a gateway at `listen` and a backend at `backend`.
pub fn engine(listen: &str, backend: &str) -> Result<gatehouse_engine::Engine, gatehouse_engine::ConfigError> {
    let text = config(listen, backend);
    let read = move |path: &str| if path == "demo/gatehouse.toml" { Ok(text.clone()) } else { read(path) };
    let clock = std::sync::Arc::new(crate::SystemClock::new());
    gatehouse_engine::Engine::load("demo/gatehouse.toml", &read, &|_| None, clock)
}

/// A demo gateway for a server listening at `addr`: starts the demo backend, makes the dev issuer (served by the
/// gateway itself under `/_dev/`) and loads the example policies. Audit records go to stdout.
pub async fn gateway(addr: std::net::SocketAddr) -> Result<crate::Gateway, crate::HostError> {
    let backend = start_backend().await?;
    let dev = std::sync::Arc::new(DevIssuer::new(&format!("http://{addr}")));
    let engine = engine(&addr.to_string(), &backend.to_string())?;
    let client = crate::client::build();
    let loaded = crate::load_engine(engine, &client)?;
    Ok(crate::Gateway::new(loaded, client, crate::AuditSink::Stdout).with_local_routes(dev))
}
