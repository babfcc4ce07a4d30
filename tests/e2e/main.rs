//! End-to-end tests of the native host: real HTTP on loopback, real signatures, real wasm plugins.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

mod cloud;
mod conformance;
mod embed;
mod plugins;
mod reuse;
mod rsa_vectors;
mod upstream;
mod workers;

use gatehouse_tests::*;
use jsonwebtoken::Algorithm;
use serde_json::json;
use std::time::Duration;

fn config(idp: &IdP, backend: &Backend, max_age: u64) -> String {
    let chaos = gatehouse_plugin_artifacts::path("chaos").unwrap();
    format!(
        r#"
[server]
audit = "{{dir}}/audit.log"
body_limit_bytes = 4096
plugin_timeout_ms = 50
plugin_memory_bytes = 16777216
reveal_policy_ids = true

[forward_auth]
enabled = true

[[issuers]]
issuer = "{iss}"
audiences = ["{AUD}"]
algorithms = ["RS256", "PS256", "ES256", "EdDSA"]
jwks_refresh_interval_secs = 1
jwks_max_age_secs = {max_age}

[plugins.loop]
path = "{chaos}"
config = {{ mode = "loop" }}

[plugins.trap]
path = "{chaos}"
config = {{ mode = "trap" }}

[plugins.hog]
path = "{chaos}"
config = {{ mode = "hog" }}

[plugins.redact]
builtin = "transform"
config = {{ redact = ["/secret"], max_items = {{ "/instances" = 3 }} }}

[policies]
schema = "{{policies}}/schema.cedarschema"
files = ["{{policies}}/models.cedar"]
entities = "{{policies}}/entities.json"

[backends.model]
url = "http://{backend}"
timeout_ms = 500

[backends.dead]
url = "http://127.0.0.1:1"

[[routes]]
name = "predict"
path = "/v1/models/{{model}}:predict"
action = "predict"
backend = "model"

[[routes]]
name = "slow"
path = "/slow/{{model}}:predict"
action = "predict"
backend = "model"

[[routes]]
name = "stream"
path = "/stream/{{model}}:predict"
action = "predict"
backend = "model"

[[routes]]
name = "dead"
path = "/dead/{{model}}:predict"
action = "predict"
backend = "dead"

[[routes]]
name = "redact"
path = "/redact/{{model}}:predict"
action = "predict"
backend = "model"
upstream_path = "/v1/models/{{model}}:predict"
transform = ["redact"]

[[routes]]
name = "loop"
path = "/loop/{{model}}:predict"
action = "predict"
backend = "model"
transform = ["loop"]

[[routes]]
name = "trap"
path = "/trap/{{model}}:predict"
action = "predict"
backend = "model"
transform = ["trap"]

[[routes]]
name = "hog"
path = "/hog/{{model}}:predict"
action = "predict"
backend = "model"
transform = ["hog"]
"#,
        iss = idp.issuer(),
        backend = backend.addr,
    )
}

pub(crate) struct World {
    pub(crate) idp: IdP,
    pub(crate) backend: Backend,
    pub(crate) gw: Gateway,
}

pub(crate) async fn world(kids: &[&str], max_age: u64) -> World {
    let idp = IdP::start(kids).await;
    let backend = Backend::start().await;
    let gw = gateway(&config(&idp, &backend, max_age)).await;
    World { idp, backend, gw }
}

impl World {
    pub(crate) fn token(&self, sub: &str, groups: &[&str]) -> String {
        mint(Algorithm::RS256, "rsa1", &claims(&self.idp.issuer(), sub, groups))
    }
}

const PREDICT: &str = "/v1/models/demo:predict";

#[tokio::test]
async fn policy_allows_and_denies() {
    let w = world(&["rsa1"], 300).await;
    let ok = post(&w.gw.url(PREDICT), Some(&w.token("alice", &["data-scientists"])), r#"{"instances": [1]}"#).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["body"]["instances"], json!([1]));
    // The caller's token is not forwarded; the verified identity is.
    let seen = &ok.json()["headers"];
    assert!(seen.get("authorization").is_none());
    assert_eq!(seen["x-gatehouse-subject"], "alice");
    assert_eq!(seen["x-request-id"], ok.header("x-request-id"));

    let denied = post(&w.gw.url(PREDICT), Some(&w.token("bob", &["marketing"])), "{}").await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.header("content-type"), "application/problem+json");
    assert_eq!(denied.json()["type"], "urn:gatehouse:problem:forbidden");
    assert_eq!(denied.json()["policy_ids"], json!([]));

    let restricted =
        post(&w.gw.url("/v1/models/fraud-scorer:predict"), Some(&w.token("alice", &["data-scientists"])), "{}").await;
    assert_eq!(restricted.status, 403);
    assert_eq!(restricted.json()["policy_ids"], json!(["restricted-models-need-owners"]));

    let missing = post(&w.gw.url(PREDICT), None, "{}").await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.header("www-authenticate"), "Bearer realm=\"gatehouse\"");

    let nowhere = post(&w.gw.url("/nope"), Some(&w.token("alice", &["data-scientists"])), "{}").await;
    assert_eq!(nowhere.status, 404);
}

#[tokio::test]
async fn every_algorithm_family_is_accepted() {
    let w = world(&["rsa2", "ec256", "ed25519"], 300).await;
    for (alg, kid) in [(Algorithm::PS256, "rsa2"), (Algorithm::ES256, "ec256"), (Algorithm::EdDSA, "ed25519")] {
        let t = mint(alg, kid, &claims(&w.idp.issuer(), "alice", &["data-scientists"]));
        let r = post(&w.gw.url(PREDICT), Some(&t), "{}").await;
        assert_eq!(r.status, 200, "{alg:?}: {}", r.body);
    }
}

#[tokio::test]
async fn bad_tokens_get_401_with_a_challenge() {
    let w = world(&["rsa1"], 300).await;
    let iss = w.idp.issuer();
    let base = claims(&iss, "alice", &["data-scientists"]);
    let with = |k: &str, v: serde_json::Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let good = mint(Algorithm::RS256, "rsa1", &base);
    let (signing_input, _) = good.rsplit_once('.').unwrap();
    let other_sig = mint(Algorithm::RS256, "rsa2", &base).rsplit_once('.').unwrap().1.to_owned();
    let hs256_with_public_key = {
        let secret = serde_json::to_vec(&jwks(&["rsa1"])["keys"][0]).unwrap();
        let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
        h.kid = Some("rsa1".into());
        jsonwebtoken::encode(&h, &base, &jsonwebtoken::EncodingKey::from_secret(&secret)).unwrap()
    };
    let cases = [
        ("expired", mint(Algorithm::RS256, "rsa1", &with("exp", json!(now() - 3600)))),
        ("not yet valid", mint(Algorithm::RS256, "rsa1", &with("nbf", json!(now() + 3600)))),
        ("wrong issuer", mint(Algorithm::RS256, "rsa1", &with("iss", json!("https://evil.example")))),
        ("wrong audience", mint(Algorithm::RS256, "rsa1", &with("aud", json!("api://other")))),
        ("bad signature", format!("{signing_input}.{other_sig}")),
        ("alg none", forge(json!({"alg": "none", "kid": "rsa1"}), &base, b"")),
        ("hs256 with the rsa public key", hs256_with_public_key),
        ("garbage", "not-a-jwt".to_owned()),
    ];
    for (what, token) in cases {
        let r = post(&w.gw.url(PREDICT), Some(&token), "{}").await;
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        let challenge = r.header("www-authenticate");
        assert!(
            challenge.starts_with("Bearer realm=\"gatehouse\", error=\"invalid_token\", error_description=\""),
            "{what}: {challenge}"
        );
        assert!(!r.body.contains(&token), "{what}: the token leaked into the answer");
    }
    let audit = w.gw.audit_text();
    assert!(!audit.contains(signing_input), "a token leaked into the audit log");
}

#[tokio::test]
async fn unknown_kid_refetches_once_then_refuses() {
    let w = world(&["rsa1"], 300).await;
    let ok = post(&w.gw.url(PREDICT), Some(&w.token("alice", &["data-scientists"])), "{}").await;
    assert_eq!(ok.status, 200);
    assert_eq!(w.idp.fetches(), 1);

    // The IdP rotates in a new key; tokens signed with it arrive, many at once.
    *w.idp.keys.lock().unwrap() = jwks(&["rsa1", "rsa2"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = mint(Algorithm::RS256, "rsa2", &claims(&w.idp.issuer(), "alice", &["data-scientists"]));
    let url = w.gw.url(PREDICT);
    let replies = futures_join(8, || {
        let (url, rotated) = (url.clone(), rotated.clone());
        async move { post(&url, Some(&rotated), "{}").await }
    })
    .await;
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(w.idp.fetches(), 2, "one refetch shared by all waiting requests");

    // A kid nobody knows: no refetch within the interval, 401.
    let unknown = mint(Algorithm::RS256, "rotated", &claims(&w.idp.issuer(), "alice", &["data-scientists"]));
    let r = post(&url, Some(&unknown), "{}").await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").contains("signing key"), "{}", r.header("www-authenticate"));
    assert_eq!(w.idp.fetches(), 2);
}

pub(crate) async fn futures_join<F, Fut>(n: usize, f: F) -> Vec<Reply>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Reply> + Send + 'static,
{
    let handles: Vec<_> = (0..n).map(|_| tokio::spawn(f())).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn keys_are_kept_while_the_idp_is_down() {
    let w = world(&["rsa1"], 1).await;
    let token = w.token("alice", &["data-scientists"]);
    assert_eq!(post(&w.gw.url(PREDICT), Some(&token), "{}").await.status, 200);
    w.idp.down.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A token never seen before, so the signature is checked with the stale keys (no verified-token cache hit).
    let fresh = mint(Algorithm::RS256, "rsa1", &claims(&w.idp.issuer(), "carol", &["data-scientists"]));
    let r = post(&w.gw.url(PREDICT), Some(&fresh), "{}").await;
    assert_eq!(r.status, 200, "stale keys keep serving: {}", r.body);
    let audit = w.gw.audit();
    assert_eq!(audit.last().unwrap()["token_cached"], false);
}

#[tokio::test]
async fn no_keys_at_all_is_503() {
    let w = world(&["rsa1"], 300).await;
    w.idp.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = post(&w.gw.url(PREDICT), Some(&w.token("alice", &["data-scientists"])), "{}").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), "5");
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let w = world(&["rsa1"], 300).await;
    let t = w.token("alice", &["data-scientists"]);
    let big = vec![b'x'; 5000];
    let r = post(&w.gw.url(PREDICT), Some(&t), big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["type"], "urn:gatehouse:problem:payload-too-large");
    // A transform's limit answers 413 as well.
    let r = post(&w.gw.url("/redact/demo:predict"), Some(&t), r#"{"instances": [1, 2, 3, 4]}"#).await;
    assert_eq!(r.status, 413, "{}", r.body);
}

#[tokio::test]
async fn callers_cannot_set_the_headers_the_gateway_sets() {
    use http_body_util::{BodyExt, Full};
    let w = world(&["rsa1"], 300).await;
    let req = http::Request::post(w.gw.url(PREDICT))
        .header("authorization", format!("Bearer {}", w.token("alice", &["data-scientists"])))
        .header("content-type", "application/json")
        .header("X-Gatehouse-Subject", "mallory")
        .header("X-GATEHOUSE-Issuer", "https://evil.example")
        .header("x-gatehouse-Groups", "admins")
        .header("X-Forwarded-For", "203.0.113.9")
        .header("Proxy-Authorization", "Basic c2VjcmV0")
        .header("X-Trace", "t1")
        .body(Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let res = client().request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let seen = &body["headers"];
    assert_eq!(seen["x-gatehouse-subject"], "alice", "{seen}");
    assert!(!seen.to_string().contains("mallory") && !seen.to_string().contains("evil.example"), "{seen}");
    assert!(seen.get("x-gatehouse-groups").is_none(), "a forwarded request carries no groups header: {seen}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "the caller's own claim is not trusted by default: {seen}");
    assert!(seen.get("proxy-authorization").is_none() && seen.get("authorization").is_none(), "{seen}");
    assert_eq!(seen["x-trace"], "t1", "other headers pass: {seen}");
}

#[tokio::test]
async fn transform_plugin_redacts_before_forwarding() {
    let w = world(&["rsa1"], 300).await;
    let t = w.token("alice", &["data-scientists"]);
    let r = post(&w.gw.url("/redact/demo:predict"), Some(&t), r#"{"instances": [1], "secret": "s3cr3t"}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["body"], json!({"instances": [1]}));
    assert_eq!(r.json()["path"], "/v1/models/demo:predict");
}

#[tokio::test]
async fn slow_and_failing_upstreams() {
    let w = world(&["rsa1"], 300).await;
    let t = w.token("alice", &["data-scientists"]);
    let slow = post(&w.gw.url("/slow/demo:predict"), Some(&t), "{}").await;
    assert_eq!(slow.status, 504, "{}", slow.body);
    assert_eq!(slow.json()["type"], "urn:gatehouse:problem:upstream-timeout");
    let dead = post(&w.gw.url("/dead/demo:predict"), Some(&t), "{}").await;
    assert_eq!(dead.status, 502, "{}", dead.body);
    let audit = w.gw.audit();
    assert!(audit.iter().any(|a| a["status"] == 504 && a["decision"] == "allow"));
}

#[tokio::test]
async fn misbehaving_plugins_deny_and_the_host_keeps_serving() {
    let w = world(&["rsa1"], 300).await;
    let t = w.token("alice", &["data-scientists"]);
    for route in ["loop", "trap", "hog"] {
        let started = std::time::Instant::now();
        let r = post(&w.gw.url(&format!("/{route}/demo:predict")), Some(&t), "{}").await;
        assert_eq!(r.status, 403, "{route}: {}", r.body);
        assert_eq!(r.json()["type"], "urn:gatehouse:problem:plugin-failed", "{route}");
        assert!(started.elapsed() < Duration::from_secs(5), "{route} was not stopped");
        let ok = post(&w.gw.url(PREDICT), Some(&t), "{}").await;
        assert_eq!(ok.status, 200, "after {route}");
    }
    let audit = w.gw.audit();
    let looped = audit.iter().find(|a| a["route"] == "loop").unwrap();
    assert!(looped["detail"].as_str().unwrap().contains("time budget"), "{looped}");
}

#[tokio::test]
async fn responses_stream_before_the_backend_finishes() {
    use http_body_util::BodyExt;
    let w = world(&["rsa1"], 300).await;
    let t = w.token("alice", &["data-scientists"]);
    let req = http::Request::post(w.gw.url("/stream/demo:predict"))
        .header("authorization", format!("Bearer {t}"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let res = client().request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: first\n\n");
    assert!(
        !w.backend.finished.load(std::sync::atomic::Ordering::SeqCst),
        "the first chunk came before the backend finished"
    );
    w.backend.release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "data: last\n\n");
}

#[tokio::test]
async fn audit_records_have_the_fields_and_no_token() {
    let w = world(&["rsa1"], 300).await;
    let c = claims(&w.idp.issuer(), "alice", &["data-scientists"]);
    let t = mint(Algorithm::RS256, "rsa1", &c);
    let r = post(&w.gw.url(PREDICT), Some(&t), r#"{"instances": [1]}"#).await;
    assert_eq!(r.status, 200);
    let a = w.gw.audit_of(r.header("x-request-id"));
    assert_eq!(a["route"], "predict");
    assert_eq!(a["issuer"], w.idp.issuer());
    assert_eq!(a["subject"], "alice");
    assert_eq!(a["kid"], "rsa1");
    assert_eq!(a["decision"], "allow");
    assert_eq!(a["policy_ids"], json!(["data-scientists-predict"]));
    assert_eq!(a["upstream_status"], 200);
    let jti = c["jti"].as_str().unwrap();
    assert_eq!(a["jti_sha256"], gatehouse_engine::audit::sha256_hex(jti.as_bytes()));
    for k in ["authn", "policy", "plugins", "upstream", "total"] {
        assert!(a["latency_us"][k].is_u64(), "{k}");
    }
    assert_eq!(a["token_cached"], false);
    // The same token again: its identity is reused without a signature check.
    let again = post(&w.gw.url(PREDICT), Some(&t), r#"{"instances": [1]}"#).await;
    let b = w.gw.audit_of(again.header("x-request-id"));
    assert_eq!(b["token_cached"], true);
    assert_eq!(b["subject"], "alice");
    let text = w.gw.audit_text();
    for part in t.split('.') {
        assert!(!text.contains(part), "a token part leaked into the audit log");
    }
    assert!(!text.contains(jti));
}

/// A verified token is reused only with the key set that verified it: once the issuer's keys change, the same
/// token is checked again, and refused when its key is gone.
#[tokio::test]
async fn a_cached_token_is_checked_again_when_the_keys_change() {
    let w = world(&["rsa1"], 1).await;
    let t = w.token("alice", &["data-scientists"]);
    for cached in [false, true] {
        let r = post(&w.gw.url(PREDICT), Some(&t), "{}").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let a = w.gw.audit_of(r.header("x-request-id"));
        assert_eq!(a["token_cached"], cached);
        assert_eq!(a["issuer"], w.idp.issuer());
    }
    // The IdP retires rsa1; the gateway's copy of the key set expires (max age 1 s) and is fetched again.
    *w.idp.keys.lock().unwrap() = jwks(&["rsa2"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = post(&w.gw.url(PREDICT), Some(&t), "{}").await;
    assert_eq!(r.status, 401, "{}", r.body);
    let a = w.gw.audit_of(r.header("x-request-id"));
    assert_eq!(a["token_cached"], false);
    assert_eq!(a["issuer"], w.idp.issuer());
}

#[tokio::test]
async fn a_bad_reload_keeps_the_running_configuration() {
    let w = world(&["rsa1"], 300).await;
    let path = w.gw.dir.join("gatehouse.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("backend = \"dead\"", "backend = \"missing\"")).unwrap();
    let err = w.gw.gateway.reload(&path.display().to_string()).unwrap_err().to_string();
    assert!(err.contains("gatehouse.toml:") && err.contains("unknown backend `missing`"), "{err}");
    std::fs::write(&path, good.replace("[server]\n", "[server]\nclient_timeout_secs = 0\n")).unwrap();
    let err = w.gw.gateway.reload(&path.display().to_string()).unwrap_err().to_string();
    assert!(err.contains("gatehouse.toml:3") && err.contains("`client_timeout_secs` must be at least 1"), "{err}");
    let ok = post(&w.gw.url(PREDICT), Some(&w.token("alice", &["data-scientists"])), "{}").await;
    assert_eq!(ok.status, 200);
}

/// `gatehouse serve` runs one single-threaded loop per core (`serve_threads`): connections are spread over the
/// workers, every worker serves the full pipeline, and a reload through the gateway reaches all of them.
#[tokio::test]
async fn worker_threads_serve_and_share_reloads() {
    let w = world(&["rsa1"], 300).await;
    let path = w.gw.dir.join("gatehouse.toml").display().to_string();
    let gw = gatehouse_host::Gateway::from_file(&path).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = gatehouse_host::serve_threads(&gw, listener, 2).unwrap();
    let token = w.token("alice", &["data-scientists"]);
    // `post` opens a connection per request, so four requests reach both workers (handed out in turn).
    for _ in 0..4 {
        let ok = post(&format!("http://{addr}{PREDICT}"), Some(&token), r#"{"instances": [1]}"#).await;
        assert_eq!(ok.status, 200, "{}", ok.body);
    }
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("path = \"/v1/models/{model}:predict\"", "path = \"/v2/models/{model}:predict\""),
    )
    .unwrap();
    gw.reload(&path).unwrap();
    for _ in 0..4 {
        let moved = post(&format!("http://{addr}/v2/models/demo:predict"), Some(&token), "{}").await;
        assert_eq!(moved.status, 200, "{}", moved.body);
        let gone = post(&format!("http://{addr}{PREDICT}"), Some(&token), "{}").await;
        assert_eq!(gone.status, 404, "{}", gone.body);
    }
}

#[tokio::test]
async fn a_slow_caller_is_cut_off_after_the_client_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (idp, backend) = (IdP::start(&["rsa1"]).await, Backend::start().await);
    let gw = gateway(&config(&idp, &backend, 300).replace("[server]\n", "[server]\nclient_timeout_secs = 1\n")).await;
    let t = mint(Algorithm::RS256, "rsa1", &claims(&idp.issuer(), "slow-caller", &["data-scientists"]));
    // Reads until the server closes the connection (at most 5 s): what it sent, and when it closed.
    let until_closed = |mut s: tokio::net::TcpStream| async move {
        let start = std::time::Instant::now();
        let mut got = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        assert!(r.is_ok(), "the connection was still open after 5 s");
        (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
    };

    // Half a head, then nothing: the connection is closed.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(format!("POST {PREDICT} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t}\r\n").as_bytes())
        .await
        .unwrap();
    let (_, after) = until_closed(s).await;
    assert!(after >= Duration::from_millis(900), "closed after {after:?}");

    // A whole request, then an idle keep-alive connection: answered, then closed.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let body = r#"{"instances": [1]}"#;
    let head = format!("POST {PREDICT} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t}\r\n");
    s.write_all(format!("{head}content-length: {}\r\n\r\n{body}", body.len()).as_bytes()).await.unwrap();
    let (answer, _) = until_closed(s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Half a body: 408 once the time is up, and a record of it.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(format!("{head}content-length: 100\r\n\r\n{{\"instances\"").as_bytes()).await.unwrap();
    let (answer, after) = until_closed(s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request-timeout") && answer.contains("application/problem+json"), "{answer}");
    assert!(after >= Duration::from_millis(900), "answered after {after:?}");
    let records = gw.audit();
    let r = records.iter().find(|r| r["status"] == 408).expect("a record of the 408");
    assert_eq!(
        (&r["reason"], &r["subject"], &r["decision"]),
        (&json!("request-timeout"), &json!("slow-caller"), &json!("deny"))
    );

    // The limit is the caller's, not the answer's: a stream that outlasts it reaches its end.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let stream_head = format!("POST /stream/demo:predict HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t}\r\n");
    s.write_all(format!("{stream_head}connection: close\r\ncontent-length: 2\r\n\r\n{{}}").as_bytes()).await.unwrap();
    let mut first = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut first)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).contains("data: first"), "{}", String::from_utf8_lossy(&first[..n]));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    backend.release.notify_one();
    let (rest, _) = until_closed(s).await;
    assert!(rest.contains("data: last"), "{rest}");
}
