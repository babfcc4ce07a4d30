//! Full-pipeline benchmark. Prints requests/s and p50/p99 latency, on loopback, for:
//! - the backend called directly;
//! - Gatehouse, full pipeline (RS256 checked by the wasm JWT plugin, Cedar, forward), 1,000 distinct tokens in
//!   rotation, with the verified-token cache (the steady state) and without it (every request verifies);
//! - the forward-auth hop alone (`/_gatehouse/auth`, as nginx `auth_request` calls it), decisions cached.
//!
//! Run: `cargo bench -p gatehouse-tests --bench pipeline` (env: BENCH_SECS, default 5; BENCH_CONNS, default 16).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use gatehouse_tests::bench::{Figures, PATH, Shape, load, print};
use gatehouse_tests::*;
use std::sync::Arc;

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

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let conns: usize = std::env::var("BENCH_CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let idp = IdP::start(&["rsa1"]).await;
        let backend = Backend::start().await;
        let cached = gateway(&config(&idp.issuer(), backend.addr, 10_000)).await;
        let uncached = gateway(&config(&idp.issuer(), backend.addr, 0)).await;
        let tokens = gatehouse_tests::bench::rotating_tokens(&idp.issuer(), 1000);
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
