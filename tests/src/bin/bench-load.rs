//! Open-loop load for `bench/run`'s half-peak runs: POSTs a prediction at a fixed rate, evenly spaced (see
//! `gatehouse_tests::bench::load_at_rate`), and prints one JSON line of figures in the format of
//! `bench/wrk.lua`.
//!
//! `bench-load HOST:PORT PATH RATE SECS [TOKENS_FILE]` (64 connections)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use gatehouse_tests::bench::load_at_rate;
use std::sync::Arc;

/// The body `bench/wrk.lua` sends.
const BODY: &str = r#"{"instances": [[1.0, 2.0, 3.0]], "metadata": {"user_email": "a@example.com"}}"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, path, rate, secs, rest @ ..] = &args[..] else {
        panic!("usage: bench-load HOST:PORT PATH RATE SECS [TOKENS_FILE]");
    };
    let (rate, secs): (f64, f64) = (rate.parse().unwrap(), secs.parse().unwrap());
    let tokens: Vec<String> = match rest.first() {
        Some(f) if !f.is_empty() => {
            std::fs::read_to_string(f).unwrap().lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
        }
        _ => Vec::new(),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let load = load_at_rate(addr.parse().unwrap(), path, Arc::new(tokens), BODY, rate, secs, 64);
    let out = rt.block_on(tokio::task::LocalSet::new().run_until(load));
    let f = &out.figures;
    println!(
        r#"{{"requests": {}, "duration_us": {}, "rps": {:.1}, "p50_us": {}, "p99_us": {}, "errors": {}, "non2xx": {}}}"#,
        f.count,
        (secs * 1e6) as u64,
        f.rps,
        f.p50.as_micros(),
        f.p99.as_micros(),
        out.errors,
        out.non2xx
    );
}
