//! Reused plugin instances (`gatehouse_host::reuse`) start every call in the state of a fresh instance: a
//! probe module reports, on each call, the values it finds in a mutable global, a data-segment byte and two
//! zero-initialised bytes, then changes them (and may grow memory or trap). Every call must see the
//! initial values, whatever the calls before it did.

use gatehouse_engine::{ModuleSource, PluginCall, PluginRef};
use gatehouse_host::reuse::prepare;
use gatehouse_host::runtime::Plugins;
use gatehouse_plugin_abi::Hook;
use std::time::Duration;

const MANIFEST: &str = r#"{"name":"probe","version":"1","kind":"transform","hooks":["transform_request"],"config":{}}"#;

/// The probe: `extra` is spliced into the hook after it has written its report and changed its state.
fn probe(extra: &str) -> String {
    format!(
        r#"(module
  (memory (export "memory") 2)
  (global $next (mut i32) (i32.const 4096))
  (global $calls (mut i32) (i32.const 0))
  (data (i32.const 0) "{manifest}")
  (data (i32.const 512) "A")
  (func (export "gatehouse_abi_version") (result i32) (i32.const 1))
  (func (export "gatehouse_alloc") (param $len i32) (result i32) (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $len)))
    (local.get $p))
  (func (export "gatehouse_manifest") (result i64) (i64.const {manifest_len}))
  (func (export "gatehouse_hook_transform_request") (param i32 i32 i32 i32) (result i64)
    ;; the report: calls so far, the data byte, the zeroed byte, where the allocator stands
    (i32.store8 (i32.const 600) (i32.add (i32.const 48) (global.get $calls)))
    (i32.store8 (i32.const 601) (i32.load8_u (i32.const 512)))
    (i32.store8 (i32.const 602)
      (i32.add (i32.const 48) (i32.add (i32.load8_u (i32.const 700)) (i32.load8_u (i32.const 100000)))))
    (i32.store8 (i32.const 603) (i32.add (i32.const 48) (i32.div_u (global.get $next) (i32.const 4096))))
    ;; now leave traces: the global, both bytes, the input's first byte, a byte on the second page
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (i32.store8 (i32.const 512) (i32.load8_u (local.get 2)))
    (i32.store8 (i32.const 700) (i32.const 7))
    (i32.store8 (i32.const 70000) (i32.const 9))
    {extra}
    (i64.or (i64.shl (i64.const 600) (i64.const 32)) (i64.const 4)))
)"#,
        manifest = MANIFEST.replace('"', "\\\""),
        manifest_len = MANIFEST.len(),
    )
}

/// The probe as a transform plugin whose answer is a valid envelope, `{"ok":{"body":{"report":"...."}}}` with
/// the same four-character report, for hosts reached over HTTP: the conformance corpus runs it in workerd too.
pub(crate) fn enveloped_probe() -> Vec<u8> {
    const ENVELOPE: &str = r#"{"ok":{"body":{"report":"...."}}}"#;
    let at = 800 + ENVELOPE.find("....").unwrap();
    let copy: String =
        (0..4).map(|k| format!("(i32.store8 (i32.const {}) (i32.load8_u (i32.const {})))", at + k, 600 + k)).collect();
    let extra =
        format!("{copy} (return (i64.or (i64.shl (i64.const 800) (i64.const 32)) (i64.const {})))", ENVELOPE.len());
    let text = probe(&extra).replace(
        r#"(data (i32.const 512) "A")"#,
        &format!(r#"(data (i32.const 512) "A") (data (i32.const 800) "{}")"#, ENVELOPE.replace('"', "\\\"")),
    );
    wat::parse_str(text).unwrap()
}

fn load(name: &str, wat_text: &str) -> Plugins {
    super::plugins::load_wat(name, wat_text, Duration::from_millis(200)).unwrap()
}

fn call(plugins: &Plugins, name: &str, input: &str) -> Result<String, String> {
    let call = PluginCall {
        plugin: name.into(),
        hook: Hook::TransformRequest,
        config: b"{}".to_vec().into(),
        input: input.as_bytes().to_vec(),
    };
    plugins.call(&call).map(|out| String::from_utf8(out).unwrap())
}

#[test]
fn resets_skip_the_scan_until_a_call_writes_a_page_it_never_wrote() {
    // `w...`: also write a byte on a page no call wrote before (page 24; the report's third character reads it).
    let extra = r#"
    (if (i32.eq (i32.load8_u (local.get 2)) (i32.const 119)) (then (i32.store8 (i32.const 100000) (i32.const 5))))"#;
    let plugins = load("probe", &probe(extra));
    let fresh = "0A01";
    let counts = gatehouse_host::runtime::reset_counts;
    for _ in 0..4 {
        assert_eq!(call(&plugins, "probe", "x").unwrap(), fresh);
    }
    let (quiet, scanned) = counts();
    for _ in 0..4 {
        assert_eq!(call(&plugins, "probe", "y").unwrap(), fresh);
    }
    if !gatehouse_host::reuse::dirty::available() {
        return;
    }
    // The same pages as before: no fault, so no scan (the host's own allocations on this thread may fault now
    // and then; such a call scans, which is never wrong).
    assert!(counts().0 >= quiet + 3, "calls that write only pages already written skip the scan: {:?}", counts());
    // A new page faults: that reset scans, finds it and puts it back; the calls after it skip the scan again.
    assert_eq!(call(&plugins, "probe", "w").unwrap(), fresh);
    assert_eq!(counts().1, scanned + 1, "a call that wrote a new page is followed by a scan");
    for input in ["x", "w", "y", "x"] {
        assert_eq!(call(&plugins, "probe", input).unwrap(), fresh, "after input {input:?}");
    }
    assert!(counts().0 >= quiet + 7, "the page is now known: {:?}", counts());
}

#[test]
fn every_call_sees_a_fresh_instance_state() {
    // `g...`: grow memory (the instance cannot be reset and is dropped); `t...`: trap after leaving traces;
    // `l...`: spin until the deadline stops it.
    let extra = r#"
    (if (i32.eq (i32.load8_u (local.get 2)) (i32.const 103))
      (then (drop (memory.grow (i32.const 1))) (i32.store8 (i32.const 140000) (i32.const 1))))
    (if (i32.eq (i32.load8_u (local.get 2)) (i32.const 116)) (then unreachable))
    (if (i32.eq (i32.load8_u (local.get 2)) (i32.const 108)) (then (loop $spin (br $spin))))"#;
    let plugins = load("probe", &probe(extra));
    if gatehouse_host::reuse::dirty::available() {
        assert!(plugins.get("probe").unwrap().reuses_instances(), "the probe can be reset, so it is reused");
    }
    // The allocator's global starts at page 1 and the two regions (config, input) are small: "1".
    let fresh = "0A01";
    for input in ["x", "y", "g", "z", "zz", "x", "y"] {
        assert_eq!(call(&plugins, "probe", input).unwrap(), fresh, "after input {input:?}");
    }
    assert!(call(&plugins, "probe", "t").unwrap_err().contains("trapped"));
    assert_eq!(call(&plugins, "probe", "x").unwrap(), fresh, "after a trap");
    assert!(call(&plugins, "probe", "l").unwrap_err().contains("time"));
    assert_eq!(call(&plugins, "probe", "x").unwrap(), fresh, "after a timeout");
    // Concurrent calls each get their own instance.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for input in ["a", "g", "b"] {
                    assert_eq!(call(&plugins, "probe", input).unwrap(), fresh);
                }
            });
        }
    });
}

#[test]
fn modules_whose_state_cannot_be_reset_get_a_fresh_instance_per_call() {
    // A table written at run time: no reuse, and still every call starts fresh.
    let extra = r#"(table.set $t (i32.const 0) (ref.func $f))"#;
    let text = probe(extra).replace(
        r#"(memory (export "memory") 2)"#,
        r#"(memory (export "memory") 2) (table $t 1 funcref) (func $f) (elem declare func $f)"#,
    );
    let plugins = load("table-writer", &text);
    assert!(!plugins.get("table-writer").unwrap().reuses_instances());
    for input in ["x", "y"] {
        assert_eq!(call(&plugins, "table-writer", input).unwrap(), "0A01");
    }

    let analysed = |text: &str| prepare(&wat::parse_str(text).unwrap()).initial;
    let with_start = probe("").replace(r#"(global $next"#, r#"(start $s) (func $s) (global $next"#);
    assert!(analysed(&with_start).is_none(), "a start function could change memory before the first call");
    let data_drop = probe("(data.drop 1)");
    assert!(analysed(&data_drop).is_none(), "dropped segments are state");
    let two_memories =
        probe("").replace(r#"(memory (export "memory") 2)"#, r#"(memory (export "memory") 2) (memory 1)"#);
    assert!(analysed(&two_memories).is_none());

    // What the analysis reads from the probe: the image and the initial values of the mutable globals.
    let initial = analysed(&probe("")).unwrap();
    assert_eq!(initial.memory.len(), 2 << 16);
    assert_eq!(&initial.memory[..MANIFEST.len()], MANIFEST.as_bytes());
    assert_eq!(initial.memory[512], b'A');
    assert!(initial.memory[513..].iter().all(|b| *b == 0));
    let globals: Vec<(&str, Option<i32>)> = initial.globals.iter().map(|(n, v)| (n.as_str(), v.i32())).collect();
    assert_eq!(globals, [("__gatehouse_global_0", Some(4096)), ("__gatehouse_global_1", Some(0))]);
}

#[test]
fn built_in_plugins_reuse_instances_and_answer_as_fresh_ones() {
    let config = br#"{"redact": ["/metadata/user_email"], "max_items": {"/instances": 2}}"#.to_vec();
    let r = PluginRef {
        name: "transform".into(),
        module: ModuleSource::Builtin("transform".into()),
        sha256: None,
        config: config.clone().into(),
        hooks: vec![],
    };
    let run = |plugins: &Plugins, body: &str| {
        let call = PluginCall {
            plugin: "transform".into(),
            hook: Hook::TransformRequest,
            config: config.clone().into(),
            input: format!(r#"{{"route":"r","model":"m","body":{body}}}"#).into_bytes(),
        };
        String::from_utf8(plugins.call(&call).unwrap()).unwrap()
    };
    let a = r#"{"instances": [[1]], "metadata": {"user_email": "a@example.com", "n": 1}}"#;
    let b = r#"{"instances": [[1], [2], [3]]}"#;
    let c = r#"{"instances": [[4]], "padding": "PADDING-PADDING-PADDING-PADDING-PADDING-PADDING"}"#;
    let fresh = |body: &str| run(&Plugins::load([&r], Duration::from_secs(5), 64 << 20).unwrap(), body);
    let (fa, fb, fc) = (fresh(a), fresh(b), fresh(c));
    assert!(fa.contains("\"ok\"") && !fa.contains("a@example.com"), "{fa}");
    assert!(fb.contains("\"reject\""), "{fb}");
    let plugins = Plugins::load([&r], Duration::from_secs(5), 64 << 20).unwrap();
    if gatehouse_host::reuse::dirty::available() {
        assert!(plugins.get("transform").unwrap().reuses_instances());
    }
    for _ in 0..50 {
        assert_eq!(run(&plugins, c), fc);
        assert_eq!(run(&plugins, a), fa);
        assert_eq!(run(&plugins, b), fb);
    }
}
