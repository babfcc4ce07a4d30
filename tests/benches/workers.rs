//! The Worker bundle in workerd: bundle size (raw and gzipped; the Workers free plan allows 3 MB compressed),
//! isolate start (workerd start, then the first request, which instantiates the core and loads the
//! configuration), and the full pipeline under load (RS256 by the wasm JWT plugin, Cedar, forward; 1,000 tokens
//! in rotation): requests/s, p50/p99 and workerd's CPU time per request, beside the native host in the same run.
//!
//! Run: `cargo bench -p gatehouse-tests --bench workers` (env: BENCH_SECS, default 5; BENCH_CONNS, default 16).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use gatehouse_tests::bench::{BODY, PATH, Shape, load, print};
use gatehouse_tests::workerd::Workerd;
use gatehouse_tests::*;
use std::time::Instant;

/// CPU seconds (user + system) the process has used, from /proc.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn gzipped(path: &std::path::Path) -> usize {
    let out = std::process::Command::new("gzip").args(["-9", "-c"]).arg(path).output().unwrap();
    out.stdout.len()
}

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let conns: usize = std::env::var("BENCH_CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let idp = IdP::start(&["rsa1"]).await;
        let backend = Backend::start().await;
        let dir = std::env::temp_dir().join(format!("gatehouse-bench-workers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            r#"
[server]
audit = "off"
[[issuers]]
issuer = "{iss}"
audiences = ["{AUD}"]
[policies]
schema = "{p}/schema.cedarschema"
files = ["{p}/models.cedar"]
entities = "{p}/entities.json"
[backends.model]
url = "http://{b}"
[[routes]]
name = "predict"
path = "/v1/models/{{model}}:predict"
action = "predict"
backend = "model"
"#,
            iss = idp.issuer(),
            p = repo("policies"),
            b = backend.addr
        );
        let file = dir.join("gatehouse.toml");
        std::fs::write(&file, &config).unwrap();
        let native = gateway(&config.replace(&repo("policies"), "{policies}")).await;

        let t0 = Instant::now();
        let file_s = file.display().to_string();
        let out = dir.join("worker");
        let w = tokio::task::spawn_blocking(move || Workerd::start(&file_s, &out)).await.unwrap();
        let listening = t0.elapsed();
        let tokens = gatehouse_tests::bench::rotating_tokens(&idp.issuer(), 1000);
        let t1 = Instant::now();
        let first = post(&w.url(PATH), Some(&tokens[0]), BODY).await;
        assert_eq!(first.status, 200, "{}", first.body);
        let first_request = t1.elapsed();
        let t2 = Instant::now();
        let second = post(&w.url(PATH), Some(&tokens[0]), BODY).await;
        assert_eq!(second.status, 200);
        let warm_request = t2.elapsed();

        let mut sizes = Vec::new();
        let mut total = (0, 0);
        let mut files: Vec<_> = std::fs::read_dir(&w.dir).unwrap().flatten().map(|e| e.path()).collect();
        files.extend(std::fs::read_dir(w.dir.join("plugins")).unwrap().flatten().map(|e| e.path()));
        files.sort();
        // Not the Worker: workerd's configuration, the edge stand-in of the tests, the deploy manifest.
        let not_bundled = ["workerd.capnp", "edge.js", "wrangler.toml"];
        for f in files.iter().filter(|f| f.is_file() && !not_bundled.iter().any(|n| f.ends_with(n))) {
            let raw = std::fs::metadata(f).unwrap().len() as usize;
            let gz = gzipped(f);
            total = (total.0 + raw, total.1 + gz);
            sizes.push((f.strip_prefix(&w.dir).unwrap().display().to_string(), raw, gz));
        }

        // Warm up both, then measure: every token verified once, then steady state.
        load(w.url(PATH), Shape::Proxy, tokens.clone(), 4, 3).await;
        load(native.url(PATH), Shape::Proxy, tokens.clone(), 4, 3).await;
        let pid = w.pid();
        let cpu0 = cpu_secs(pid);
        let workers = load(w.url(PATH), Shape::Proxy, tokens.clone(), conns, secs).await;
        let cpu = cpu_secs(pid) - cpu0;
        let nat = load(native.url(PATH), Shape::Proxy, tokens.clone(), conns, secs).await;

        println!("workers benchmark ({conns} connections, {secs} s each, 1,000 RS256 tokens in rotation)");
        println!("bundle:");
        for (name, raw, gz) in &sizes {
            println!("  {name:<28} {raw:>9} bytes  {gz:>9} gzipped");
        }
        println!(
            "  {:<28} {:>9} bytes  {:>9} gzipped (free-plan limit 3,145,728 compressed)",
            "total", total.0, total.1
        );
        println!(
            "isolate start: workerd listening after {:.0} ms; first request {:.1} ms (core instantiation, config \
             load, JWKS fetch, first RS256 verify); the same request again {:.1} ms",
            listening.as_secs_f64() * 1e3,
            first_request.as_secs_f64() * 1e3,
            warm_request.as_secs_f64() * 1e3
        );
        print("workerd, full pipeline (token cache warm)", &workers);
        print("native host, same configuration", &nat);
        println!(
            "workerd CPU: {:.0} µs per request ({:.2} s for {} requests); workerd / native throughput {:.2}x",
            cpu / workers.count as f64 * 1e6,
            cpu,
            workers.count,
            workers.rps / nat.rps
        );
    });
}
