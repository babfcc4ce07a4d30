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
                hooks: vec![],
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
        hooks: vec![],
    };
    let err = Plugins::load([&r], Duration::from_secs(1), 1 << 24).err().unwrap().to_string();
    assert!(err.contains("sha256"), "{err}");
}

/// A module that answers with bytes that are not an envelope, or with a region outside its memory, fails the
/// call (the engine then denies the request); one that imports anything is refused at load.
/// Loads a module written in the text format as plugin `name` (configuration `{}`, 1 MiB of memory).
pub(crate) fn load_wat(
    name: &str,
    wat_text: &str,
    timeout: Duration,
) -> Result<Plugins, gatehouse_host::runtime::LoadError> {
    let dir = std::env::temp_dir().join(format!("gatehouse-wat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wat::parse_str(wat_text).unwrap()).unwrap();
    let r = PluginRef {
        name: name.into(),
        module: ModuleSource::Path(path.display().to_string()),
        sha256: None,
        config: b"{}".to_vec().into(),
        hooks: vec![],
    };
    Plugins::load([&r], timeout, 1 << 20)
}

#[test]
fn garbage_and_importing_modules_are_refused() {
    let manifest = r#"{"name":"garbage","version":"0","kind":"transform","hooks":["transform_request"],"config":{}}"#;
    let module = |hook_result: &str| {
        format!(
            r#"(module
                (memory (export "memory") 1)
                (data (i32.const 1024) "{manifest}")
                (data (i32.const 4096) "this is not json")
                (global $next (mut i32) (i32.const 8192))
                (func (export "gatehouse_abi_version") (result i32) (i32.const 1))
                (func (export "gatehouse_alloc") (param i32) (result i32)
                    (local $p i32)
                    (local.set $p (global.get $next))
                    (global.set $next (i32.add (global.get $next) (local.get 0)))
                    (local.get $p))
                (func (export "gatehouse_manifest") (result i64)
                    (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.const {len})))
                (func (export "gatehouse_hook_transform_request") (param i32 i32 i32 i32) (result i64)
                    {hook_result}))"#,
            manifest = manifest.replace('"', "\\\""),
            len = manifest.len(),
        )
    };
    let run = |name: &str, wat_text: &str| {
        load_wat(name, wat_text, Duration::from_millis(100)).map(|p| {
            let call = PluginCall {
                plugin: name.into(),
                hook: gatehouse_plugin_abi::Hook::TransformRequest,
                config: b"{}".to_vec().into(),
                input: b"{}".to_vec(),
            };
            p.call(&call)
        })
    };
    // Not an envelope: the call "succeeds" at the wasm level; the engine rejects the bytes.
    let out =
        run("not-json", &module("(i64.or (i64.shl (i64.const 4096) (i64.const 32)) (i64.const 16))")).unwrap().unwrap();
    assert!(serde_json::from_slice::<Value>(&out).is_err());
    // A region past the end of memory.
    let err = run("out-of-bounds", &module("(i64.or (i64.shl (i64.const 65000) (i64.const 32)) (i64.const 4096))"))
        .unwrap()
        .unwrap_err();
    assert!(err.contains("outside its memory"), "{err}");
    // Imports are refused at load.
    let importing = r#"(module (import "env" "clock" (func (result i64))) (memory (export "memory") 1))"#;
    let err = run("importing", importing).err().unwrap().to_string();
    assert!(err.contains("must import nothing"), "{err}");
}
