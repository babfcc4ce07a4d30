//! The load generator the benchmarks share: N connections for S seconds against one URL, with bearer tokens in
//! rotation; requests/s and latency percentiles.

use super::client;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BODY: &str = r#"{"instances": [[1.0, 2.0, 3.0]]}"#;
pub const PATH: &str = "/v1/models/demo:predict";

pub struct Figures {
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub count: usize,
}

#[derive(Clone)]
pub enum Shape {
    /// POST the body to the URL.
    Proxy,
    /// GET the URL with nginx-style `X-Original-*` headers.
    SubRequest,
}

pub async fn load(url: String, shape: Shape, tokens: Arc<Vec<String>>, conns: usize, secs: u64) -> Figures {
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
    Figures { rps: all.len() as f64 / secs as f64, p50: pct(0.50), p99: pct(0.99), count: all.len() }
}

pub fn print(name: &str, f: &Figures) {
    println!(
        "{name:<44} {:>9.0} req/s   p50 {:>9.1} µs   p99 {:>9.1} µs",
        f.rps,
        f.p50.as_secs_f64() * 1e6,
        f.p99.as_secs_f64() * 1e6
    );
}

/// `n` RS256 tokens (subjects `user-0`..) of group `data-scientists`, valid for an hour: the rotation set of the
/// benchmarks.
pub fn rotating_tokens(issuer: &str, n: usize) -> Arc<Vec<String>> {
    Arc::new(
        (0..n)
            .map(|i| {
                let mut c = super::claims(issuer, &format!("user-{i}"), &["data-scientists"]);
                c["exp"] = serde_json::json!(super::now() + 3600);
                super::mint(jsonwebtoken::Algorithm::RS256, "rsa1", &c)
            })
            .collect(),
    )
}
