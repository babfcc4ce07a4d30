//! Loopback fakes of the cloud services Gatehouse exchanges credentials with and forwards to. Each speaks the
//! service's documented wire format (paths, form or JSON bodies, headers, error bodies, `expires_in` /
//! `expireTime`) and checks what it receives the way the real service would: Google STS verifies the subject
//! token's signature and audience, IAM Credentials accepts only tokens STS issued, Vertex AI accepts only
//! tokens IAM minted; Entra ID verifies the federated assertion; Azure ML checks the bearer token or key and
//! the deployment header; the OpenAI-compatible server checks its API key and streams server-sent events.

use super::{ChannelBody, json_response, serve};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Res = http::Response<http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>>;

/// The audience of the fake workload identity pool provider. Its allowed audiences also include the
/// gateway's own ([`super::AUD`]), for user-delegated federation with the caller's token.
pub const WIF_AUDIENCE: &str =
    "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/gatehouse/providers/test-idp";
/// The service account the fake IAM lets the federated principal impersonate.
pub const SERVICE_ACCOUNT: &str = "vertex-caller@acme-ml.iam.gserviceaccount.com";
/// The audience Entra ID expects in a federated assertion.
pub const ENTRA_ASSERTION_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Form fields of an `application/x-www-form-urlencoded` body.
pub fn parse_form(body: &[u8]) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(body);
    text.split('&').filter_map(|pair| pair.split_once('=')).map(|(k, v)| (decode(k), decode(v))).collect()
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn rfc3339(unix: i64) -> String {
    // Civil from days (Howard Hinnant).
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.123456Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Verifies an RS256 JWT with the test keys; returns its claims.
pub fn verify_test_jwt(token: &str, audiences: &[&str]) -> Option<Value> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    let jwks = super::jwks(&["rsa1", "rsa2"]);
    let jwk = jwks["keys"].as_array()?.iter().find(|k| k["kid"].as_str() == header.kid.as_deref())?.clone();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk).ok()?;
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).ok()?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(audiences);
    v.required_spec_claims = ["exp", "iss", "sub", "aud"].iter().map(|s| s.to_string()).collect();
    jsonwebtoken::decode::<Value>(token, &key, &v).ok().map(|d| d.claims)
}

fn google_error(code: u16, status: &str, message: &str) -> Res {
    json_response(code, &json!({"error": {"code": code, "message": message, "status": status}}))
}

fn oauth_error(code: u16, error: &str, description: &str) -> Res {
    json_response(code, &json!({"error": error, "error_description": description}))
}

fn bearer(req: &http::request::Parts) -> Option<String> {
    let v = req.headers.get("authorization")?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(str::to_owned)
}

fn sse(chunks: Vec<String>, release: Arc<tokio::sync::Notify>, finished: Arc<AtomicBool>) -> Res {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        let mut chunks = chunks.into_iter();
        if let Some(first) = chunks.next() {
            let _ = tx.send(Bytes::from(first)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), release.notified()).await;
        for c in chunks {
            let _ = tx.send(Bytes::from(c)).await;
        }
        finished.store(true, Ordering::SeqCst);
    });
    http::Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(ChannelBody(rx).boxed())
        .unwrap()
}

/// Shared state of the Google fakes.
#[derive(Default)]
pub struct GoogleState {
    /// Tokens STS issued → expiry.
    pub sts_tokens: Mutex<HashMap<String, i64>>,
    /// Tokens IAM minted → expiry.
    pub iam_tokens: Mutex<HashMap<String, i64>>,
    /// Subjects (`sub`) of the subject tokens STS exchanged, in order.
    pub subjects: Mutex<Vec<String>>,
    /// Exchanges and impersonations performed.
    pub exchanges: AtomicUsize,
    pub impersonations: AtomicUsize,
    /// Lifetime (seconds) of the tokens STS and IAM issue.
    pub lifetime: AtomicI64,
    /// STS and IAM answer 503.
    pub down: AtomicBool,
    /// Requests Vertex served, with the body each received.
    pub predictions: Mutex<Vec<Value>>,
    pub release: Arc<tokio::sync::Notify>,
    pub finished: Arc<AtomicBool>,
}

/// Google STS, IAM Credentials and Vertex AI prediction, each on its own loopback port.
#[derive(Clone)]
pub struct Google {
    pub sts: SocketAddr,
    pub iam: SocketAddr,
    pub vertex: SocketAddr,
    pub state: Arc<GoogleState>,
}

impl Google {
    pub async fn start() -> Google {
        let state = Arc::new(GoogleState::default());
        state.lifetime.store(3600, Ordering::SeqCst);
        let s = state.clone();
        let sts = serve(move |req| {
            let s = s.clone();
            async move { Google::sts(&s, req).await }
        })
        .await;
        let s = state.clone();
        let iam = serve(move |req| {
            let s = s.clone();
            async move { Google::iam(&s, req).await }
        })
        .await;
        let s = state.clone();
        let vertex = serve(move |req| {
            let s = s.clone();
            async move { Google::vertex(&s, req).await }
        })
        .await;
        Google { sts, iam, vertex, state }
    }

    /// `POST /v1/token` (RFC 8693 token exchange).
    async fn sts(s: &GoogleState, req: http::Request<Incoming>) -> Res {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        if s.down.load(Ordering::SeqCst) {
            return google_error(503, "UNAVAILABLE", "The service is currently unavailable.");
        }
        if parts.method != http::Method::POST || parts.uri.path() != "/v1/token" {
            return google_error(404, "NOT_FOUND", "not found");
        }
        let ct = parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        if !ct.starts_with("application/x-www-form-urlencoded") {
            return oauth_error(400, "invalid_request", "Invalid content type");
        }
        let f = parse_form(&body);
        let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
        if get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange" {
            return oauth_error(400, "unsupported_grant_type", "Invalid value for \"grant_type\".");
        }
        if get("requested_token_type") != "urn:ietf:params:oauth:token-type:access_token" {
            return oauth_error(400, "invalid_request", "Invalid value for \"requested_token_type\".");
        }
        if get("subject_token_type") != "urn:ietf:params:oauth:token-type:jwt" {
            return oauth_error(400, "invalid_request", "Invalid value for \"subject_token_type\".");
        }
        if get("audience") != WIF_AUDIENCE {
            return oauth_error(
                400,
                "invalid_target",
                "The target service indicated by the \"audience\" parameters is invalid.",
            );
        }
        if get("scope") != "https://www.googleapis.com/auth/cloud-platform" {
            return oauth_error(400, "invalid_scope", "Invalid scope.");
        }
        let Some(claims) = verify_test_jwt(get("subject_token"), &[WIF_AUDIENCE, super::AUD]) else {
            return oauth_error(400, "invalid_grant", "The subject token's signature, audience or expiry is invalid.");
        };
        s.subjects.lock().unwrap().push(claims["sub"].as_str().unwrap_or("").to_owned());
        let n = s.exchanges.fetch_add(1, Ordering::SeqCst);
        let lifetime = s.lifetime.load(Ordering::SeqCst);
        let token = format!("sts-federated-{n}-{}", super::now());
        s.sts_tokens.lock().unwrap().insert(token.clone(), super::now() + lifetime);
        json_response(
            200,
            &json!({"access_token": token, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                    "token_type": "Bearer", "expires_in": lifetime}),
        )
    }

    /// `POST /v1/projects/-/serviceAccounts/{email}:generateAccessToken`.
    async fn iam(s: &GoogleState, req: http::Request<Incoming>) -> Res {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        if s.down.load(Ordering::SeqCst) {
            return google_error(503, "UNAVAILABLE", "The service is currently unavailable.");
        }
        let path = parts.uri.path().to_owned();
        let Some(sa) = path
            .strip_prefix("/v1/projects/-/serviceAccounts/")
            .and_then(|r| r.strip_suffix(":generateAccessToken"))
            .map(decode)
        else {
            return google_error(404, "NOT_FOUND", "Requested entity was not found.");
        };
        let valid = bearer(&parts).and_then(|t| s.sts_tokens.lock().unwrap().get(&t).copied());
        if valid.is_none_or(|exp| super::now() >= exp) {
            return google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.");
        }
        if sa != SERVICE_ACCOUNT {
            return google_error(403, "PERMISSION_DENIED", "Permission 'iam.serviceAccounts.getAccessToken' denied");
        }
        let Ok(req_body) = serde_json::from_slice::<Value>(&body) else {
            return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.");
        };
        if req_body["scope"].as_array().is_none_or(|s| s.is_empty()) {
            return google_error(400, "INVALID_ARGUMENT", "Scope required.");
        }
        let asked = req_body["lifetime"].as_str().and_then(|l| l.strip_suffix('s')).and_then(|l| l.parse::<i64>().ok());
        let lifetime = asked.unwrap_or(3600).min(s.lifetime.load(Ordering::SeqCst));
        let n = s.impersonations.fetch_add(1, Ordering::SeqCst);
        let token = format!("ya29.fake-iam-{n}-{}", super::now());
        let exp = super::now() + lifetime;
        s.iam_tokens.lock().unwrap().insert(token.clone(), exp);
        json_response(200, &json!({"accessToken": token, "expireTime": rfc3339(exp)}))
    }

    /// Vertex AI: `POST /v1/projects/{p}/locations/{l}/endpoints/{e}:{op}` and
    /// `.../publishers/google/models/{m}:{generateContent|streamGenerateContent}`.
    async fn vertex(s: &GoogleState, req: http::Request<Incoming>) -> Res {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let valid = bearer(&parts).and_then(|t| s.iam_tokens.lock().unwrap().get(&t).copied());
        if valid.is_none_or(|exp| super::now() >= exp) {
            return google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            );
        }
        let path = parts.uri.path().to_owned();
        let Some(rest) = path.strip_prefix("/v1/projects/") else {
            return google_error(404, "NOT_FOUND", "The requested URL was not found.");
        };
        let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
            return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.");
        };
        s.predictions.lock().unwrap().push(json!({"path": path, "query": parts.uri.query(), "body": payload}));
        let op = rest.rsplit(':').next().unwrap_or("");
        if rest.contains("/endpoints/quota:") {
            return google_error(
                429,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model",
            );
        }
        match op {
            "predict" | "explain" => {
                let Some(instances) = payload["instances"].as_array() else {
                    return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload: \"instances\" is required.");
                };
                let predictions: Vec<Value> =
                    instances.iter().enumerate().map(|(i, _)| json!({"score": 0.25 * i as f64})).collect();
                json_response(
                    200,
                    &json!({"predictions": predictions, "deployedModelId": "4242",
                    "model": "projects/123456/locations/us-central1/models/77", "modelDisplayName": "fraud"}),
                )
            }
            "generateContent" => json_response(
                200,
                &json!({"candidates": [{"content": {"role": "model",
                "parts": [{"text": "A short answer."}]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 3, "totalTokenCount": 7}}),
            ),
            "streamGenerateContent" if parts.uri.query() == Some("alt=sse") => {
                let chunk = |t: &str| {
                    let v = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": t}]}}]});
                    format!("data: {v}\r\n\r\n")
                };
                sse(vec![chunk("First"), chunk(" and"), chunk(" last.")], s.release.clone(), s.finished.clone())
            }
            _ => google_error(400, "INVALID_ARGUMENT", "Unknown method."),
        }
    }

    pub fn exchanges(&self) -> usize {
        self.state.exchanges.load(Ordering::SeqCst)
    }
    pub fn impersonations(&self) -> usize {
        self.state.impersonations.load(Ordering::SeqCst)
    }
}

/// Shared state of the Azure fakes.
#[derive(Default)]
pub struct AzureState {
    /// Tokens Entra issued → expiry.
    pub tokens: Mutex<HashMap<String, i64>>,
    /// `jti` of every federated assertion Entra accepted, in order.
    pub assertions: Mutex<Vec<String>>,
    pub lifetime: AtomicI64,
    /// Keys the scoring endpoint accepts (key auth), besides Entra tokens.
    pub keys: Mutex<Vec<String>>,
    /// Credentials and deployment headers the scoring endpoint saw.
    pub seen: Mutex<Vec<(String, Option<String>)>>,
}

/// Entra ID's token endpoint and an Azure ML managed online endpoint.
#[derive(Clone)]
pub struct Azure {
    pub entra: SocketAddr,
    pub ml: SocketAddr,
    pub state: Arc<AzureState>,
}

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT_ID: &str = "0b1f3a2c-5d6e-4f70-8a9b-1c2d3e4f5a6b";

impl Azure {
    pub async fn start() -> Azure {
        let state = Arc::new(AzureState::default());
        state.lifetime.store(3599, Ordering::SeqCst);
        let s = state.clone();
        let entra = serve(move |req| {
            let s = s.clone();
            async move { Azure::entra(&s, req).await }
        })
        .await;
        let s = state.clone();
        let ml = serve(move |req| {
            let s = s.clone();
            async move { Azure::score(&s, req).await }
        })
        .await;
        Azure { entra, ml, state }
    }

    /// `POST /{tenant}/oauth2/v2.0/token`, client credentials with a jwt-bearer client assertion.
    async fn entra(s: &AzureState, req: http::Request<Incoming>) -> Res {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let aad = |status: u16, error: &str, code: u32, text: &str| {
            json_response(
                status,
                &json!({"error": error, "error_description": format!("AADSTS{code}: {text}"),
                "error_codes": [code], "timestamp": "2026-11-22 23:59:59Z", "trace_id": "t", "correlation_id": "c"}),
            )
        };
        if parts.uri.path() != format!("/{TENANT}/oauth2/v2.0/token") {
            return aad(400, "invalid_request", 90002, "Tenant not found.");
        }
        let f = parse_form(&body);
        let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
        if get("grant_type") != "client_credentials" {
            return aad(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.");
        }
        if get("client_id") != CLIENT_ID {
            return aad(400, "unauthorized_client", 700016, "Application not found in the directory.");
        }
        if get("scope") != "https://ml.azure.com/.default" {
            return aad(400, "invalid_scope", 1002012, "The provided value for scope is not valid.");
        }
        if get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
            return aad(400, "invalid_request", 900144, "The request body must contain client_assertion_type.");
        }
        let Some(claims) = verify_test_jwt(get("client_assertion"), &[ENTRA_ASSERTION_AUDIENCE]) else {
            return aad(400, "invalid_client", 700024, "Client assertion is not within its valid time range.");
        };
        s.assertions.lock().unwrap().push(claims["jti"].as_str().unwrap_or("").to_owned());
        let lifetime = s.lifetime.load(Ordering::SeqCst);
        let token = format!("eyJ0eXAi.fake-entra-{}-{}", s.assertions.lock().unwrap().len(), super::now());
        s.tokens.lock().unwrap().insert(token.clone(), super::now() + lifetime);
        json_response(
            200,
            &json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
            "access_token": token}),
        )
    }

    /// `POST /score`.
    async fn score(s: &AzureState, req: http::Request<Incoming>) -> Res {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let token = bearer(&parts).unwrap_or_default();
        let entra_ok = s.tokens.lock().unwrap().get(&token).is_some_and(|exp| super::now() < *exp);
        let key_ok = s.keys.lock().unwrap().contains(&token);
        let deployment = parts.headers.get("azureml-model-deployment").and_then(|v| v.to_str().ok()).map(str::to_owned);
        s.seen.lock().unwrap().push((token, deployment.clone()));
        if !entra_ok && !key_ok {
            return http::Response::builder()
                .status(401)
                .header("content-type", "text/plain")
                .body(http_body_util::Full::new(Bytes::from_static(b"key_auth_access_denied")).boxed())
                .unwrap();
        }
        if parts.uri.path() != "/score" {
            return json_response(404, &json!({"message": "Not found"}));
        }
        if deployment.as_deref().is_some_and(|d| d != "blue" && d != "green") {
            return json_response(404, &json!({"message": "Deployment not found"}));
        }
        let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
            return json_response(400, &json!({"message": "Input is not valid JSON"}));
        };
        if payload.to_string().contains("explode") {
            return json_response(
                424,
                &json!({"message": "An unexpected error occurred in scoring script. Check the logs for more info."}),
            );
        }
        let rows = payload.pointer("/input_data/data").and_then(Value::as_array).map_or(1, Vec::len);
        json_response(200, &json!({"predictions": vec![0.5; rows], "deployment": deployment}))
    }

    pub fn assertions(&self) -> Vec<String> {
        self.state.assertions.lock().unwrap().clone()
    }
}

/// An OpenAI-compatible server: `/v1/chat/completions` (with `stream: true` as SSE), `/v1/embeddings`.
#[derive(Clone)]
pub struct OpenAi {
    pub addr: SocketAddr,
    pub keys: Arc<Mutex<Vec<String>>>,
    pub seen_keys: Arc<Mutex<Vec<String>>>,
    pub release: Arc<tokio::sync::Notify>,
    pub finished: Arc<AtomicBool>,
}

impl OpenAi {
    pub async fn start(keys: &[&str]) -> OpenAi {
        let keys = Arc::new(Mutex::new(keys.iter().map(|k| k.to_string()).collect::<Vec<_>>()));
        let seen_keys = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(tokio::sync::Notify::new());
        let finished = Arc::new(AtomicBool::new(false));
        let (k, sk, r, f) = (keys.clone(), seen_keys.clone(), release.clone(), finished.clone());
        let addr = serve(move |req: http::Request<Incoming>| {
            let (k, sk, r, f) = (k.clone(), sk.clone(), r.clone(), f.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let key = bearer(&parts).unwrap_or_default();
                sk.lock().unwrap().push(key.clone());
                if !k.lock().unwrap().contains(&key) {
                    return json_response(
                        401,
                        &json!({"error": {"message": "Incorrect API key provided.",
                        "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
                    );
                }
                let Ok(req) = serde_json::from_slice::<Value>(&body) else {
                    return json_response(
                        400,
                        &json!({"error": {"message": "We could not parse the JSON body.",
                        "type": "invalid_request_error", "param": null, "code": null}}),
                    );
                };
                let model = req["model"].as_str().unwrap_or("").to_owned();
                match parts.uri.path() {
                    "/v1/chat/completions" if req["stream"] == json!(true) => {
                        let chunk = |content: &str, finish: Value| {
                            let v = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                                "model": model, "choices": [{"index": 0, "delta": {"content": content},
                                "finish_reason": finish}]});
                            format!("data: {v}\n\n")
                        };
                        let chunks =
                            vec![chunk("Hel", Value::Null), chunk("lo", json!("stop")), "data: [DONE]\n\n".to_owned()];
                        sse(chunks, r, f)
                    }
                    "/v1/chat/completions" => json_response(
                        200,
                        &json!({"id": "chatcmpl-1",
                        "object": "chat.completion", "model": model, "choices": [{"index": 0,
                        "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}]}),
                    ),
                    "/v1/embeddings" => json_response(
                        200,
                        &json!({"object": "list", "model": model,
                        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]}),
                    ),
                    _ => json_response(
                        404,
                        &json!({"error": {"message": "Unknown request URL",
                        "type": "invalid_request_error", "param": null, "code": "unknown_url"}}),
                    ),
                }
            }
        })
        .await;
        OpenAi { addr, keys, seen_keys, release, finished }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_and_time_helpers() {
        let f = parse_form(b"a=x%2Fy%3D&b=c+d");
        assert_eq!(f["a"], "x/y=");
        assert_eq!(f["b"], "c d");
        assert_eq!(rfc3339(1_412_262_083), "2014-10-02T15:01:23.123456Z");
    }
}

/// A generic OAuth 2.0 authorization server's token endpoint (`POST /oauth2/token`, client credentials) that
/// authenticates clients by `client_secret_basic`, `client_secret_post` or `private_key_jwt` (RFC 7523,
/// assertion signed with a test key, `aud` = the token endpoint's URL).
#[derive(Clone)]
pub struct OAuth {
    pub addr: SocketAddr,
    /// Client authentication methods of the grants issued, in order.
    pub grants: Arc<Mutex<Vec<String>>>,
}

pub const OAUTH_CLIENT: &str = "gatehouse-svc";
pub const OAUTH_SECRET: &str = "s3cr3t/with+special=chars";

impl OAuth {
    pub async fn start() -> OAuth {
        let grants = Arc::new(Mutex::new(Vec::new()));
        let addr_cell = Arc::new(Mutex::new(None::<SocketAddr>));
        let (g, a) = (grants.clone(), addr_cell.clone());
        let addr = serve(move |req: http::Request<Incoming>| {
            let (g, a) = (g.clone(), a.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let me = a.lock().unwrap().unwrap();
                let f = parse_form(&body);
                let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("").to_owned();
                if parts.uri.path() != "/oauth2/token" || get("grant_type") != "client_credentials" {
                    return oauth_error(400, "unsupported_grant_type", "client_credentials only");
                }
                if get("scope") != "models.invoke" {
                    return oauth_error(400, "invalid_scope", "unknown scope");
                }
                let basic = parts.headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| {
                    use base64::Engine as _;
                    let raw = base64::engine::general_purpose::STANDARD.decode(v.strip_prefix("Basic ")?).ok()?;
                    let pair = String::from_utf8(raw).ok()?;
                    let (id, secret) = pair.split_once(':')?;
                    Some((decode(id), decode(secret)))
                });
                let method = if let Some((id, secret)) = basic {
                    (id == OAUTH_CLIENT && secret == OAUTH_SECRET).then_some("client_secret_basic")
                } else if f.contains_key("client_secret") {
                    (get("client_id") == OAUTH_CLIENT && get("client_secret") == OAUTH_SECRET)
                        .then_some("client_secret_post")
                } else if get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
                    let aud = format!("http://{me}/oauth2/token");
                    verify_test_jwt(&get("client_assertion"), &[&aud])
                        .filter(|c| c["iss"] == OAUTH_CLIENT && c["sub"] == OAUTH_CLIENT && c["jti"].is_string())
                        .map(|_| "private_key_jwt")
                } else {
                    None
                };
                let Some(method) = method else {
                    return oauth_error(401, "invalid_client", "Client authentication failed.");
                };
                // Slow enough that concurrent requests overlap with the grant under way.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let n = {
                    let mut g = g.lock().unwrap();
                    g.push(method.to_owned());
                    g.len() - 1
                };
                json_response(
                    200,
                    &json!({"access_token": format!("at-{n}"), "token_type": "Bearer",
                    "expires_in": "3600"}),
                )
            }
        })
        .await;
        *addr_cell.lock().unwrap() = Some(addr);
        OAuth { addr, grants }
    }
}
