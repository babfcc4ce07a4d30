//! Plugin call costs in the native host: a tiny transform in an instance reset after each call (what the host
//! does, see `gatehouse_host::reuse`) and in a fresh instance per call; the JWT plugin verifying RS256 / ES256 /
//! EdDSA tokens in wasm, beside the same verification done natively by `jsonwebtoken` (RustCrypto backend); and
//! RSA verification alone in wasm beside ring natively.
//!
//! Run: `cargo bench -p gatehouse-tests --bench plugins`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use gatehouse_engine::{ModuleSource, PluginCall, PluginRef};
use gatehouse_host::runtime::Plugins;
use gatehouse_plugin_abi::Hook;
use gatehouse_tests::bench::per_call;
use gatehouse_tests::*;
use jsonwebtoken::Algorithm;
use serde_json::json;
use std::time::Duration;

fn load(name: &str, builtin: bool, config: &serde_json::Value) -> (Plugins, std::sync::Arc<[u8]>) {
    let config: std::sync::Arc<[u8]> = serde_json::to_vec(config).unwrap().into();
    let module = if builtin {
        ModuleSource::Builtin(name.into())
    } else {
        ModuleSource::Path(gatehouse_plugin_artifacts::path(name).unwrap().into())
    };
    let r = PluginRef { name: name.into(), module, sha256: None, config: config.clone(), hooks: vec![] };
    (Plugins::load([&r], Duration::from_secs(1), 64 << 20).unwrap(), config)
}

fn main() {
    let (transform, cfg) = load("transform", true, &json!({}));
    let call = PluginCall {
        plugin: "transform".into(),
        hook: Hook::TransformRequest,
        config: cfg,
        input: br#"{"route":"r","model":"m","body":{"instances":[[1,2]]}}"#.to_vec(),
    };
    assert!(transform.get("transform").unwrap().reuses_instances() || !gatehouse_host::reuse::dirty::available());
    let t = per_call(20_000, || {
        transform.call(&call).unwrap();
    });
    println!("transform plugin, 60-byte input, instance reset after each call: {t:.1} µs per call");
    let (fresh, _) = load("transform", true, &json!({}));
    let fresh = fresh.fresh_instances();
    let t = per_call(20_000, || {
        fresh.call(&call).unwrap();
    });
    println!("transform plugin, 60-byte input, fresh instance per call:        {t:.1} µs per call");
    // What bench/run's requests ask of it: one field redacted, one array's length checked.
    let (edit, cfg) =
        load("transform", true, &json!({"redact": ["/metadata/user_email"], "max_items": {"/instances": 64}}));
    let call = PluginCall {
        plugin: "transform".into(),
        hook: Hook::TransformRequest,
        config: cfg,
        input: br#"{"route":"predict","model":"demo","body":{"instances": [[1.0, 2.0, 3.0]], "metadata": {"user_email": "a@example.com"}}}"#.to_vec(),
    };
    let out = String::from_utf8(edit.call(&call).unwrap()).unwrap();
    assert!(out.contains("instances") && !out.contains("user_email"), "{out}");
    let t = per_call(20_000, || {
        edit.call(&call).unwrap();
    });
    println!("transform plugin, bench/run's payload and edits, reset instance: {t:.1} µs per call");

    // The same edits on a larger payload: 64 instances of 16 floats.
    let row = (0..16).map(|i| format!("{:.6}", 0.1 + f64::from(i) / 7.0)).collect::<Vec<_>>().join(", ");
    let rows = (0..64).map(|_| format!("[{row}]")).collect::<Vec<_>>().join(", ");
    let body = format!(r#"{{"instances": [{rows}], "metadata": {{"user_email": "a@example.com"}}}}"#);
    let call =
        PluginCall { input: format!(r#"{{"route":"predict","model":"demo","body":{body}}}"#).into_bytes(), ..call };
    let t = per_call(5_000, || {
        edit.call(&call).unwrap();
    });
    println!(
        "transform plugin, the same edits on a {:.1} KB payload:      {t:.1} µs per call",
        body.len() as f64 / 1000.0
    );
    let iss = "https://idp.bench";
    let cfg = json!({"issuers": [{"issuer": iss, "audiences": [AUD], "algorithms": ["RS256", "ES256", "EdDSA"]}]});
    let (jwt, cfg_bytes) = load("jwt", true, &cfg);
    let keys = jwks(&["rsa1", "ec256", "ed25519"]);
    // The plugin's fixed cost: config and JWKS parsed, the token decoded, no key for its kid.
    {
        let mut c = claims(iss, "alice", &["data-scientists"]);
        c["exp"] = json!(now() + 3600);
        let token = forge(json!({"alg": "RS256", "typ": "JWT", "kid": "nobody"}), &c, &[0; 256]);
        let input = serde_json::to_vec(&json!({"token": token, "now": now(), "jwks": keys})).unwrap();
        let call = PluginCall { plugin: "jwt".into(), hook: Hook::Authenticate, config: cfg_bytes.clone(), input };
        let out = String::from_utf8(jwt.call(&call).unwrap()).unwrap();
        assert!(out.contains("\"unknown_key\":true"), "{out}");
        let t = per_call(1000, || {
            jwt.call(&call).unwrap();
        });
        println!("jwt plugin, refused before any signature check (unknown kid): {t:.1} µs per call");
        let fresh = load("jwt", true, &cfg).0.fresh_instances();
        let t = per_call(1000, || {
            fresh.call(&call).unwrap();
        });
        println!("jwt plugin, the same in a fresh instance per call:             {t:.1} µs per call");
    }
    for (alg, kid) in [(Algorithm::RS256, "rsa1"), (Algorithm::ES256, "ec256"), (Algorithm::EdDSA, "ed25519")] {
        let mut c = claims(iss, "alice", &["data-scientists"]);
        c["exp"] = json!(now() + 3600);
        let token = mint(alg, kid, &c);
        let input = serde_json::to_vec(&json!({"token": token, "now": now(), "jwks": keys})).unwrap();
        let call = PluginCall { plugin: "jwt".into(), hook: Hook::Authenticate, config: cfg_bytes.clone(), input };
        let out: serde_json::Value = serde_json::from_slice(&jwt.call(&call).unwrap()).unwrap();
        assert!(out["ok"]["identity"].is_object(), "{out}");
        let wasm = per_call(300, || {
            jwt.call(&call).unwrap();
        });
        let key = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(
            keys["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid).unwrap().clone(),
        )
        .unwrap();
        let dk = jsonwebtoken::DecodingKey::from_jwk(&key).unwrap();
        let mut v = jsonwebtoken::Validation::new(alg);
        v.set_audience(&[AUD]);
        v.set_issuer(&[iss]);
        let native = per_call(300, || {
            jsonwebtoken::decode::<serde_json::Value>(&token, &dk, &v).unwrap();
        });
        println!(
            "jwt plugin {alg:?}: wasm (JWKS parse, verify, claims) {wasm:>8.1} µs   native jsonwebtoken {native:>7.1} µs   ratio {:.1}x",
            wasm / native
        );
    }

    // RSA verification alone: the key prepared from (n, e), then one RS256 (PKCS#1 v1.5, SHA-256) verify of a
    // 2048-bit signature. In wasm through the `rsa-vectors` test plugin (the JWT plugin's RSA code, in the
    // host's runtime with its epoch checks), natively with ring (BoringSSL's assembly, the reference figure) and
    // natively with the same Rust code.
    {
        let mut c = claims(iss, "alice", &["data-scientists"]);
        c["exp"] = json!(now() + 3600);
        let token = mint(Algorithm::RS256, "rsa1", &c);
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (input, sig_b64) = token.rsplit_once('.').unwrap();
        let key = keys["keys"].as_array().unwrap().iter().find(|k| k["kid"] == "rsa1").unwrap();
        let bytes = |v: &serde_json::Value| b64.decode(v.as_str().unwrap()).unwrap();
        let (n, e, sig) = (bytes(&key["n"]), bytes(&key["e"]), b64.decode(sig_b64).unwrap());
        let vector = json!({"alg": "RS256", "n": key["n"], "e": key["e"], "msg": b64.encode(input), "sig": sig_b64});
        let call = |repeat: u32| {
            let mut vector = vector.clone();
            vector["repeat"] = json!(repeat);
            PluginCall {
                plugin: "rsa-vectors".into(),
                hook: Hook::Authenticate,
                config: b"{}".to_vec().into(),
                input: serde_json::to_vec(&json!({"token": "-", "now": 0, "jwks": vector})).unwrap(),
            }
        };
        let (vectors, _) = load("rsa-vectors", false, &json!({}));
        let (one, many) = (call(1), call(21));
        let out = String::from_utf8(vectors.call(&one).unwrap()).unwrap();
        assert!(out.contains("\"verified\""), "{out}");
        let wasm_call = per_call(2000, || {
            vectors.call(&one).unwrap();
        });
        // 21 verifications in one call against one: the difference over 20 is the verification alone.
        let wasm = (per_call(200, || {
            vectors.call(&many).unwrap();
        }) - wasm_call)
            / 20.0;
        let ring_key = ring::signature::RsaPublicKeyComponents { n: &n, e: &e };
        let ring = per_call(2000, || {
            ring_key.verify(&ring::signature::RSA_PKCS1_2048_8192_SHA256, input.as_bytes(), &sig).unwrap();
        });
        let rust = per_call(2000, || {
            let k = gatehouse_rsa::PublicKey::new(&n, &e).unwrap();
            assert!(gatehouse_rsa::verify_pkcs1::<sha2::Sha256>(&k, input.as_bytes(), &sig));
        });
        println!(
            "RSA-2048 verify with key preparation: wasm {wasm:>5.1} µs ({wasm_call:.1} µs as one plugin call)   native ring {ring:>5.1} µs   ratio {:.1}x   native gatehouse-rsa {rust:>5.1} µs",
            wasm / ring
        );
    }
}
