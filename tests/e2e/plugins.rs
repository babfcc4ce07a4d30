//! Every plugin's corpus (`plugins/<name>/tests/corpus/*.json`) run through its real wasm module in the
//! host's runtime; the build refuses a plugin without one.

use gatehouse_engine::{ModuleSource, PluginCall, PluginRef};
use gatehouse_host::runtime::Plugins;
use serde_json::Value;
use std::time::Duration;

#[test]
fn every_plugin_passes_its_corpus_in_wasm() {
    let mut total = 0;
    for (name, path) in gatehouse_plugin_artifacts::ALL_PATHS {
        let corpus = format!("{}/../plugins/{name}/tests/corpus", env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<_> = std::fs::read_dir(&corpus).unwrap().flatten().map(|e| e.path()).collect();
        files.sort();
        assert!(!files.is_empty(), "{name} has no corpus");
        for file in files {
            let case: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            let config = serde_json::to_vec(&case["config"]).unwrap();
            let r = PluginRef {
                name: name.to_string(),
                module: ModuleSource::Path(path.to_string()),
                sha256: None,
                config: config.clone().into(),
            };
            let plugins = Plugins::load([&r], Duration::from_secs(5), 64 << 20).unwrap();
            let hook: gatehouse_plugin_abi::Hook = serde_json::from_value(case["hook"].clone()).unwrap();
            let call = PluginCall {
                plugin: name.to_string(),
                hook,
                config: config.into(),
                input: serde_json::to_vec(&case["input"]).unwrap(),
            };
            let out = plugins.call(&call).unwrap();
            let got: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(got, case["expect"], "{}", file.display());
            total += 1;
        }
    }
    assert!(total >= 12);
}

#[test]
fn pins_and_imports_are_enforced() {
    let path = gatehouse_plugin_artifacts::path("transform").unwrap();
    let r = PluginRef {
        name: "t".into(),
        module: ModuleSource::Path(path.into()),
        sha256: Some("0".repeat(64)),
        config: b"{}".to_vec().into(),
    };
    let err = Plugins::load([&r], Duration::from_secs(1), 1 << 24).err().unwrap().to_string();
    assert!(err.contains("sha256"), "{err}");
}
