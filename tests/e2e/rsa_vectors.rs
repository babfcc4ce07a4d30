//! The Wycheproof RSA signature vectors through the RSA code a built plugin runs: wasm32 with `simd128`, in
//! the host's runtime (the `rsa-vectors` test plugin wraps `gatehouse-rsa`, which the JWT plugin uses). On every
//! vector, "acceptable" ones included, the wasm verdict must equal the native build's (whose inner loops are
//! not the SIMD ones), and every valid signature must verify and every invalid one be refused.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_engine::{ModuleSource, PluginCall, PluginRef};
use gatehouse_host::runtime::Plugins;
use gatehouse_plugin_abi::Hook;
use gatehouse_rsa::vectors::{TestResult, Vector};
use serde_json::{Value, json};
use std::time::Duration;

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

    fn verify(&self, v: &Vector) -> bool {
        let b = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let vector = json!({"alg": v.alg, "n": b(&v.n), "e": b(&v.e), "msg": b(&v.msg), "sig": b(&v.sig)});
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

/// Every vector (`gatehouse_rsa::vectors`): the wasm verdict equals the native one and the expected one.
#[test]
fn wycheproof_verdicts_in_wasm_equal_the_native_ones() {
    let wasm = Wasm::load();
    let (mut verified, mut refused) = (0, 0);
    for v in &gatehouse_rsa::vectors::all().unwrap() {
        let ok = wasm.verify(v);
        assert_eq!(ok, v.verify(), "{} tc {}: wasm and native differ", v.set, v.case);
        match v.expect {
            TestResult::Valid => assert!(ok, "{} tc {} must verify", v.set, v.case),
            TestResult::Invalid => assert!(!ok, "{} tc {} must be refused", v.set, v.case),
            TestResult::Acceptable => {}
        }
        if ok { verified += 1 } else { refused += 1 }
    }
    assert!(verified >= 12 && refused >= 300, "{verified} verified, {refused} refused");
}
