//! Engine tests over the repository's real policies and a small configuration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use gatehouse_engine::decision_tests;
use gatehouse_engine::policy::{PolicyStore, Source};
use gatehouse_engine::{ConfigError, Engine};
use std::sync::Arc;

fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

fn source(path: &str) -> Source {
    Source { name: path.into(), text: std::fs::read_to_string(repo(path)).unwrap() }
}

fn store() -> PolicyStore {
    PolicyStore::load(
        &source("policies/schema.cedarschema"),
        &[source("policies/models.cedar")],
        Some(&source("policies/entities.json")),
    )
    .unwrap()
}

#[test]
fn decision_corpus_passes() {
    let store = store();
    let dir = repo("policies/tests");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for outcome in decision_tests::run(&store, &path.display().to_string(), &text).unwrap() {
            assert!(outcome.passed, "{}", outcome.at);
            count += 1;
        }
    }
    assert!(count >= 8);
}

#[test]
fn policy_errors_name_file_and_line() {
    let bad = Source {
        name: "bad.cedar".into(),
        text:
            "permit(principal, action, resource);\n\npermit(principal, action, resource) when { context.nope == 1 };\n"
                .into(),
    };
    let err = PolicyStore::load(&source("policies/schema.cedarschema"), &[bad], None).unwrap_err();
    let locs = err.locations();
    assert_eq!(locs[0].file, "bad.cedar");
    assert_eq!(locs[0].line, 3, "{err}");

    let syntax =
        Source { name: "syntax.cedar".into(), text: "permit(principal, action, resource);\nforbid(oops".into() };
    let err = PolicyStore::load(&source("policies/schema.cedarschema"), &[syntax], None).unwrap_err();
    assert_eq!(err.locations()[0].line, 2, "{err}");

    let schema =
        Source { name: "s.cedarschema".into(), text: "namespace X {\n entity A;\n entity B in [Nope];\n}".into() };
    let err = PolicyStore::load(&schema, &[], None).unwrap_err();
    assert_eq!(err.locations()[0].file, "s.cedarschema", "{err}");
}

struct FixedClock;
impl gatehouse_engine::Clock for FixedClock {
    fn unix_secs(&self) -> i64 {
        1_800_000_000
    }
    fn micros(&self) -> u64 {
        0
    }
}

fn load(config: &str) -> Result<Engine, ConfigError> {
    let files = move |path: &str| -> Result<String, String> {
        if path == "/cfg/gatehouse.toml" {
            return Ok(config.to_owned());
        }
        let rel = path.trim_start_matches("/cfg/");
        std::fs::read_to_string(repo(rel)).map_err(|e| e.to_string())
    };
    Engine::load("/cfg/gatehouse.toml", &files, &|_| None, Arc::new(FixedClock))
}

const GOOD: &str = r#"
[[issuers]]
issuer = "https://idp.test"
audiences = ["api://gatehouse"]

[policies]
schema = "policies/schema.cedarschema"
files = ["policies/models.cedar"]
entities = "policies/entities.json"

[backends.demo]
url = "http://127.0.0.1:9"

[[routes]]
name = "predict"
path = "/v1/models/{model}:predict"
action = "predict"
backend = "demo"
"#;

#[test]
fn a_good_config_loads() {
    let engine = load(GOOD).unwrap();
    assert_eq!(engine.plugins().count(), 1);
    assert_eq!(engine.policies.len(), 5);
}

#[test]
fn credential_and_adapter_errors_name_the_line() {
    let with = |extra: &str, backend: &str| {
        GOOD.replace(
            "[backends.demo]\nurl = \"http://127.0.0.1:9\"",
            &format!("{extra}\n[backends.demo]\nurl = \"http://127.0.0.1:9\"\n{backend}"),
        )
    };
    let line_of = |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let text = with("", "credential = \"gcp\"");
    let err = load(&text).unwrap_err();
    assert!(err.to_string().contains("backend `demo`: unknown credential `gcp`"), "{err}");
    assert_eq!(err.locations()[0].line, line_of(&text, "[backends.demo]"), "{err}");

    let gcp = "[credentials.gcp]\nkind = \"gcp_workload_identity\"\naudience = \"//iam.googleapis.com/x\"\nsubject_token = { file = \"/t\" }\nsts_url = \"ftp://x\"\n";
    let text = with(gcp, "credential = \"gcp\"");
    let err = load(&text).unwrap_err();
    assert!(err.to_string().contains("credentials `gcp`: sts_url must be an http:// or https:// URL"), "{err}");
    assert_eq!(err.locations()[0].line, line_of(&text, "[credentials.gcp]"), "{err}");

    let text = with("[credentials.k]\nkind = \"static_key\"\nkey = { vault = \"x\" }\n", "");
    let err = load(&text).unwrap_err();
    assert!(err.to_string().contains("vault"), "{err}");
    assert!(err.locations()[0].line >= line_of(&text, "[credentials.k]"), "{err}");

    let err = load(&with("", "adapter = \"my-adapter\"")).unwrap_err();
    assert!(err.to_string().contains("plugin `my-adapter` is not built in"), "{err}");

    let ok = load(&with(
        gcp.replace("ftp://x", "https://sts.example").as_str(),
        "adapter = \"vertex-ai\"\ncredential = \"gcp\"",
    ))
    .unwrap();
    let adapter = ok.plugins().find(|p| p.name == "vertex-ai").unwrap();
    assert_eq!(adapter.hooks, vec![gatehouse_plugin_abi::Hook::AdaptRequest]);
}

#[test]
fn config_errors_name_the_line() {
    let err = load(&GOOD.replace("backend = \"demo\"", "backend = \"nope\"")).unwrap_err();
    assert!(err.to_string().starts_with("/cfg/gatehouse.toml:"), "{err}");
    assert!(err.to_string().contains("unknown backend `nope`"), "{err}");
    let err = load(&GOOD.replace("audiences = [\"api://gatehouse\"]", "audiences = [\"api://gatehouse\"]\nbogus = 1"))
        .unwrap_err();
    assert_eq!(err.locations()[0].line, 5, "{err}");
    let err = load(&GOOD.replace("{model}:predict\"", "{modle}:predict\"")).unwrap_err();
    assert!(err.to_string().contains("`{model}` is not a parameter"), "{err}");
}
