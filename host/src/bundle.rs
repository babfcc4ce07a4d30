//! `gatehouse bundle`: a deployable Cloudflare Worker from a configuration. The Worker is the engine core
//! (`gatehouse_core.wasm`, the same engine built for wasm32), the JavaScript shim that performs its I/O, the
//! plugin modules (byte for byte the files the native host loads) and the configuration with every file it
//! names, compiled into `bundle.js`. Secrets never go into the bundle: each secret file a credential names is
//! read from a Worker binding instead (`wrangler secret put`).

use crate::HostError;
use gatehouse_engine::credentials::SecretSource;
use gatehouse_engine::{Engine, ModuleSource};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

/// The shim, from `host/worker/shim.js`.
pub const SHIM: &str = include_str!("../worker/shim.js");
/// The Workers compatibility date the bundle is written for.
pub const COMPATIBILITY_DATE: &str = "2025-09-01";

/// The compatibility flags the shim needs: `enable_request_signal` tells it when a caller hangs up, so the
/// exchange still gets its audit record (status 499, `caller-gone`) and the upstream request is cancelled.
pub const COMPATIBILITY_FLAGS: &[&str] = &["enable_request_signal"];

/// What a bundle holds.
#[derive(Debug, Clone)]
pub struct Report {
    /// Files written (relative to the output directory) and their sizes in bytes.
    pub files: Vec<(String, u64)>,
    /// Worker bindings to set, with what each must hold.
    pub secrets: Vec<(String, String)>,
    /// sha256 of each plugin module, by plugin name.
    pub plugins: Vec<(String, String)>,
}

/// The binding name a bundle uses for a secret file.
pub fn binding_name(provider: &str, field: &str) -> String {
    let clean: String =
        provider.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("GATEHOUSE_{clean}_{}", field.to_ascii_uppercase())
}

/// Writes the Worker for `config` into `out`.
pub fn bundle(config: &str, out: &Path) -> Result<Report, HostError> {
    let files = RefCell::new(BTreeMap::<String, String>::new());
    let dirs = RefCell::new(BTreeMap::<String, Vec<String>>::new());
    let read = |p: &str| -> Result<String, String> {
        let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
        files.borrow_mut().insert(p.to_owned(), text.clone());
        Ok(text)
    };
    let list = |p: &str| -> Option<Vec<String>> {
        let names: Vec<String> =
            std::fs::read_dir(p).ok()?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        dirs.borrow_mut().insert(p.to_owned(), names.clone());
        Some(names)
    };
    let engine = Engine::load(config, &read, &list, Arc::new(crate::SystemClock::new()))?;
    // The same checks as `serve`: imports, manifests, hooks, pins.
    let server = &engine.config.server;
    let loaded = crate::runtime::Plugins::load(
        engine.plugins(),
        std::time::Duration::from_millis(server.plugin_timeout_ms),
        server.plugin_memory_bytes,
    )?;

    std::fs::create_dir_all(out.join("plugins"))?;
    let mut report = Report { files: vec![], secrets: vec![], plugins: vec![] };
    let mut write = |name: &str, bytes: &[u8]| -> Result<(), HostError> {
        std::fs::write(out.join(name), bytes)?;
        report.files.push((name.to_owned(), bytes.len() as u64));
        Ok(())
    };
    write("worker.js", SHIM.as_bytes())?;
    write("gatehouse_core.wasm", gatehouse_plugin_artifacts::WORKER_CORE)?;

    let mut imports =
        String::from("// Written by `gatehouse bundle`; do not edit.\nimport core from \"./gatehouse_core.wasm\";\n");
    let mut table = String::new();
    let mut plugins = Vec::new();
    let mut reusable = Vec::new();
    for (i, p) in engine.plugins().enumerate() {
        let bytes = match &p.module {
            ModuleSource::Builtin(b) => gatehouse_plugin_artifacts::builtin(b)
                .ok_or_else(|| HostError::Bundle(format!("no built-in plugin `{b}`")))?
                .to_vec(),
            ModuleSource::Path(path) => std::fs::read(path)?,
        };
        let file = format!("plugins/{}.wasm", p.name.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"));
        // The module as the native host runs it: with its mutable globals exported when its instances can be
        // reset (`reuse::prepare`), so the shim can put a used instance back in its initial state.
        let prepared = crate::reuse::prepare(&bytes);
        if prepared.initial.is_some() {
            reusable.push(p.name.clone());
        }
        write(&file, &prepared.bytes)?;
        let _ = writeln!(imports, "import p{i} from \"./{file}\";");
        let _ = writeln!(table, "  {}: p{i},", serde_json::to_string(&p.name).unwrap_or_default());
        plugins.push((p.name.clone(), loaded.get(&p.name).map(|l| l.sha256.clone()).unwrap_or_default()));
    }

    let mut bindings = BTreeMap::new();
    for (name, spec) in &engine.config.credentials {
        for (field, source) in spec.secret_sources() {
            match source {
                SecretSource::File(path) => {
                    let binding = binding_name(name, field);
                    report.secrets.push((binding.clone(), format!("the contents of {path}")));
                    bindings.insert(path, binding);
                }
                SecretSource::Env(var) => report.secrets.push((var.clone(), format!("what ${var} holds"))),
            }
        }
    }
    let data = serde_json::json!({
        "config_file": config,
        "files": *files.borrow(),
        "dirs": *dirs.borrow(),
        "secret_bindings": bindings,
        "reusable": reusable,
    });
    let module = format!(
        "{imports}\nexport {{ core }};\nexport const plugins = {{\n{table}}};\nexport const bundle = {data};\n"
    );
    write("bundle.js", module.as_bytes())?;

    let flags = COMPATIBILITY_FLAGS;
    let mut wrangler = format!(
        "# Written by `gatehouse bundle`. Deploy with `wrangler deploy` in this directory.\n\
         name = \"gatehouse\"\nmain = \"worker.js\"\ncompatibility_date = \"{COMPATIBILITY_DATE}\"\ncompatibility_flags = {flags:?}\n\n\
         [[rules]]\ntype = \"CompiledWasm\"\nglobs = [\"**/*.wasm\"]\nfallthrough = false\n"
    );
    if !report.secrets.is_empty() {
        wrangler.push_str("\n# Secrets, never in the bundle; set each with `wrangler secret put NAME`:\n");
        for (binding, what) in &report.secrets {
            let _ = writeln!(wrangler, "#   {binding}: {what}");
        }
    }
    write("wrangler.toml", wrangler.as_bytes())?;
    report.plugins = plugins;
    Ok(report)
}
