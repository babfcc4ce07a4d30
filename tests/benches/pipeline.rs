//! Full-pipeline benchmark. Prints requests/s and p50/p99 latency, on loopback, for:
//! - the backend called directly;
//! - Gatehouse, full pipeline (RS256 checked by the wasm JWT plugin, Cedar, forward), 1,000 distinct tokens in
//!   rotation, with the verified-token cache (the steady state) and without it (every request verifies);
//! - the forward-auth hop alone (`/_gatehouse/auth`, as nginx `auth_request` calls it), decisions cached.
//!
//! Run: `cargo bench -p gatehouse-tests --bench pipeline` (env: BENCH_SECS, default 5; BENCH_CONNS, default 16).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use bytes::Bytes;
use gatehouse_tests::*;
use http_body_util::{BodyExt, Full};
use jsonwebtoken::Algorithm;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BODY: &str = r#"{"instances": [[1.0, 2.0, 3.0]]}"#;
const PATH: &str = "/v1/models/demo:predict";

struct Figures {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

#[derive(Clone)]
enum Shape {
    /// POST the body to the URL.
    Proxy,
    /// GET the URL with nginx-style `X-Original-*` headers.
    SubRequest,
}

async fn load(url: String, shape: Shape, tokens: Arc<Vec<String>>, conns: usize, secs: u64) -> Figures {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (url, shape, tokens, next) = (url.clone(), shape.clone(), tokens.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let mut req = match shape {
                    Shape::Proxy => http::Request::post(&url).header("content-type", "application/json"),
                    Shape::SubRequest => {
                        http::Request::get(&url).header("x-original-method", "POST").header("x-original-uri", PATH)
                    }
                };
                if !tokens.is_empty() {
                    let t = &tokens[next.fetch_add(1, Ordering::Relaxed) % tokens.len()];
                    req = req.header("authorization", format!("Bearer {t}"));
                }
                let body = match shape {
                    Shape::Proxy => Bytes::from_static(BODY.as_bytes()),
                    Shape::SubRequest => Bytes::new(),
                };
                let t0 = Instant::now();
                let res = c.request(req.body(Full::new(body)).unwrap()).await.unwrap();
                assert_eq!(res.status(), 200);
                res.into_body().collect().await.unwrap();
                lat.push(t0.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Figures { rps: all.len() as f64 / secs as f64, p50: pct(0.50), p99: pct(0.99) }
}

fn config(iss: &str, backend: std::net::SocketAddr, token_cache: usize) -> String {
    format!(
        r#"
[server]
audit = "off"
token_cache_entries = {token_cache}
[forward_auth]
enabled = true
[[issuers]]
issuer = "{iss}"
audiences = ["{AUD}"]
[policies]
schema = "{{policies}}/schema.cedarschema"
files = ["{{policies}}/models.cedar"]
entities = "{{policies}}/entities.json"
[backends.model]
url = "http://{backend}"
[[routes]]
name = "predict"
path = "/v1/models/{{model}}:predict"
action = "predict"
backend = "model"
"#
    )
}

fn print(name: &str, f: &Figures) {
    println!(
        "{name:<44} {:>9.0} req/s   p50 {:>9.1} µs   p99 {:>9.1} µs",
        f.rps,
        f.p50.as_secs_f64() * 1e6,
        f.p99.as_secs_f64() * 1e6
    );
}

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let conns: usize = std::env::var("BENCH_CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let idp = IdP::start(&["rsa1"]).await;
        let backend = Backend::start().await;
        let cached = gateway(&config(&idp.issuer(), backend.addr, 10_000)).await;
        let uncached = gateway(&config(&idp.issuer(), backend.addr, 0)).await;
        let tokens: Arc<Vec<String>> = Arc::new(
            (0..1000)
                .map(|i| {
                    let mut c = claims(&idp.issuer(), &format!("user-{i}"), &["data-scientists"]);
                    c["exp"] = serde_json::json!(now() + 3600);
                    mint(Algorithm::RS256, "rsa1", &c)
                })
                .collect(),
        );
        let none = Arc::new(Vec::new());
        let direct_url = format!("http://{}{PATH}", backend.addr);
        // Warm up: connection pools, key fetch, compiled code, and every token verified once.
        load(direct_url.clone(), Shape::Proxy, none.clone(), 2, 1).await;
        load(cached.url(PATH), Shape::Proxy, tokens.clone(), 4, 3).await;
        load(cached.url("/_gatehouse/auth"), Shape::SubRequest, tokens.clone(), 4, 3).await;
        load(uncached.url(PATH), Shape::Proxy, tokens.clone(), 2, 1).await;

        let direct = load(direct_url, Shape::Proxy, none, conns, secs).await;
        let full = load(cached.url(PATH), Shape::Proxy, tokens.clone(), conns, secs).await;
        let verify = load(uncached.url(PATH), Shape::Proxy, tokens.clone(), conns, secs).await;
        let hop = load(cached.url("/_gatehouse/auth"), Shape::SubRequest, tokens.clone(), conns, secs).await;
        println!(
            "pipeline benchmark: {conns} connections, {secs} s each, 1,000 RS256 tokens in rotation, \
             load generator in-process, 2 worker threads"
        );
        print("backend direct", &direct);
        print("gatehouse, verified-token cache (steady)", &full);
        print("gatehouse, every request verifies RS256", &verify);
        print("forward-auth hop (/_gatehouse/auth, cached)", &hop);
        let added = |f: &Figures| (f.p50.as_secs_f64() - direct.p50.as_secs_f64()) * 1e6;
        println!(
            "gatehouse / direct throughput: {:.2}x cached, {:.2}x verifying; added p50: {:.1} µs cached, {:.1} µs verifying",
            full.rps / direct.rps,
            verify.rps / direct.rps,
            added(&full),
            added(&verify)
        );
    });
}
