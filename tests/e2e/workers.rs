//! The Worker bundle itself: the same plugin modules as the native host, no secret inside, and what
//! `wrangler deploy` needs. (Behaviour in workerd is the conformance corpus's job.)

use gatehouse_host::bundle::{binding_name, bundle};
use gatehouse_tests::*;
use sha2::Digest;

#[test]
fn the_bundle_holds_the_native_modules_and_no_secret() {
    let dir = std::env::temp_dir().join(format!("gatehouse-bundle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let secret = "projected-token-that-must-not-be-bundled";
    std::fs::write(dir.join("token"), secret).unwrap();
    let config = format!(
        r#"
[[issuers]]
issuer = "https://idp.example"
audiences = ["{AUD}"]

[policies]
schema = "{p}/schema.cedarschema"
files = ["{p}"]
entities = "{p}/entities.json"

[plugins.vertex]
builtin = "vertex-ai"
config = {{ project = "p", location = "us-central1", endpoints = {{ demo = "1" }} }}

[credentials.gcp]
kind = "gcp_workload_identity"
audience = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q"
subject_token = {{ file = "{d}/token" }}

[backends.vertex]
url = "https://us-central1-aiplatform.googleapis.com"
adapter = "vertex"
credential = "gcp"

[[routes]]
name = "predict"
path = "/v1/models/{{model}}:predict"
action = "predict"
backend = "vertex"
"#,
        p = repo("policies"),
        d = dir.display()
    );
    std::fs::write(dir.join("gatehouse.toml"), config).unwrap();
    let out = dir.join("worker");
    let report = bundle(&dir.join("gatehouse.toml").display().to_string(), &out).unwrap();

    // The modules as the native host runs them: the built-in files, with their mutable globals exported where
    // instances can be reset (both built-ins here can).
    for (name, builtin) in [("jwt", "jwt"), ("vertex", "vertex-ai")] {
        let bundled = std::fs::read(out.join(format!("plugins/{name}.wasm"))).unwrap();
        let native = gatehouse_host::reuse::prepare(gatehouse_plugin_artifacts::builtin(builtin).unwrap());
        assert!(native.initial.is_some(), "{name} is resettable");
        assert_eq!(sha2::Sha256::digest(&bundled), sha2::Sha256::digest(&native.bytes), "{name}");
    }
    let core = std::fs::read(out.join("gatehouse_core.wasm")).unwrap();
    assert_eq!(core, gatehouse_plugin_artifacts::WORKER_CORE);

    for entry in
        std::fs::read_dir(&out).unwrap().flatten().chain(std::fs::read_dir(out.join("plugins")).unwrap().flatten())
    {
        if entry.path().is_file() {
            let bytes = std::fs::read(entry.path()).unwrap();
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{}", entry.path().display());
        }
    }
    let binding = binding_name("gcp", "subject_token");
    assert_eq!(binding, "GATEHOUSE_GCP_SUBJECT_TOKEN");
    assert!(report.secrets.iter().any(|(b, _)| *b == binding));
    let wrangler = std::fs::read_to_string(out.join("wrangler.toml")).unwrap();
    assert!(
        wrangler.contains("main = \"worker.js\"") && wrangler.contains("CompiledWasm") && wrangler.contains(&binding)
    );
    assert!(wrangler.contains("compatibility_flags = [\"enable_request_signal\"]"), "{wrangler}");
    let js = std::fs::read_to_string(out.join("bundle.js")).unwrap();
    assert!(js.contains(&format!("\"{}/token\":\"{binding}\"", dir.display())), "secret file mapped to its binding");
    assert!(js.contains(r#""reusable":["jwt","vertex"]"#), "{js}");
}
