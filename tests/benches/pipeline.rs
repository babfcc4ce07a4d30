//! Full-pipeline benchmark: requests/s and p50/p99 latency through Gatehouse (RS256 token checked by the
//! wasm JWT plugin, Cedar decision, forward) against the same loopback backend called directly.
//!
//! Run: `cargo bench -p gatehouse-tests --bench pipeline` (optional env: BENCH_SECS, BENCH_CONNS).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use bytes::Bytes;
use gatehouse_tests::*;
use http_body_util::{BodyExt, Full};
use jsonwebtoken::Algorithm;
use std::time::{Duration, Instant};

const BODY: &str = r#"{"instances": [[1.0, 2.0, 3.0]]}"#;

struct Figures {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

async fn load(url: String, token: Option<String>, conns: usize, secs: u64) -> Figures {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (url, token) = (url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let mut req = http::Request::post(&url).header("content-type", "application/json");
                if let Some(t) = &token {
                    req = req.header("authorization", format!("Bearer {t}"));
                }
                let t0 = Instant::now();
                let res = c.request(req.body(Full::new(Bytes::from_static(BODY.as_bytes()))).unwrap()).await.unwrap();
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

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let conns: usize = std::env::var("BENCH_CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let idp = IdP::start(&["rsa1"]).await;
        let backend = Backend::start().await;
        let config = format!(
            r#"
[server]
audit = "off"
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
"#,
            iss = idp.issuer(),
            backend = backend.addr
        );
        let gw = gateway(&config).await;
        let mut c = claims(&idp.issuer(), "alice", &["data-scientists"]);
        c["exp"] = serde_json::json!(now() + 3600);
        let token = mint(Algorithm::RS256, "rsa1", &c);
        let path = "/v1/models/demo:predict";
        // Warm up both paths (connection pools, key fetch, compiled code).
        load(format!("http://{}{path}", backend.addr), None, 2, 1).await;
        load(gw.url(path), Some(token.clone()), 2, 1).await;

        let direct = load(format!("http://{}{path}", backend.addr), None, conns, secs).await;
        let full = load(gw.url(path), Some(token), conns, secs).await;
        println!("pipeline benchmark: {conns} connections, {secs} s each, load generator in-process, 2 worker threads");
        for (name, f) in [("backend direct", &direct), ("gatehouse full pipeline", &full)] {
            println!(
                "{name:<26} {:>9.0} req/s   p50 {:>8.1} µs   p99 {:>8.1} µs",
                f.rps,
                f.p50.as_secs_f64() * 1e6,
                f.p99.as_secs_f64() * 1e6
            );
        }
        println!(
            "gatehouse / direct: throughput {:.2}x, added p50 {:.1} µs",
            full.rps / direct.rps,
            (full.p50.as_secs_f64() - direct.p50.as_secs_f64()) * 1e6
        );
    });
}
