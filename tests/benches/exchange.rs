//! The gateway's own work per request, without the network: one engine exchange driven to its `Forward` step
//! the way the native host drives it (keys from the host's key store, plugin calls in the host's wasmtime
//! runtime), in `bench/run`'s configuration: an RS256 token from a rotation of 1,000 (verified once, then
//! answered by the verified-token cache), Cedar with 1,004 policies, the transform plugin on the same body.
//! The part of a request's CPU that is Gatehouse's own rather than hyper's and the kernel's.
//!
//! Run: `cargo bench -p gatehouse-tests --bench exchange`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use gatehouse_engine::jwks::Want;
use gatehouse_engine::{Input, RequestHead, Step};
use gatehouse_tests::bench::per_call;
use gatehouse_tests::*;

const BODY: &[u8] = br#"{"instances": [[1.0, 2.0, 3.0]], "metadata": {"user_email": "a@example.com"}}"#;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let idp = rt.block_on(IdP::start(&["rsa1"]));
    let dir = std::env::temp_dir().join(format!("gatehouse-bench-exchange-{}", std::process::id()));
    bench::write_policies(&dir.join("policies"), 1000);
    let config = format!(
        r#"
[server]
audit = "off"
[[issuers]]
issuer = "{iss}"
audiences = ["{AUD}"]
[plugins.limits]
builtin = "transform"
config = {{ redact = ["/metadata/user_email"], max_items = {{ "/instances" = 64 }} }}
[policies]
schema = "{policies}/schema.cedarschema"
files = ["{dir}/policies"]
entities = "{policies}/entities.json"
[backends.model]
url = "http://127.0.0.1:9"
[[routes]]
name = "predict"
path = "/v1/models/{{model}}:predict"
action = "predict"
backend = "model"
transform = ["limits"]
"#,
        iss = idp.issuer(),
        policies = repo("policies"),
        dir = dir.display(),
    );
    let path = dir.join("gatehouse.toml");
    std::fs::write(&path, config).unwrap();
    let client = gatehouse_host::client::build();
    let loaded = gatehouse_host::load_file(path.to_str().unwrap(), &client).unwrap();
    let tokens = bench::rotating_tokens(&idp.issuer(), 1000);

    let mut n = 0usize;
    let mut request = || {
        let token = &tokens[n % tokens.len()];
        n += 1;
        let head = RequestHead {
            request_id: format!("{:032x}", n),
            method: "POST".into(),
            path: "/v1/models/demo:predict".into(),
            query: None,
            headers: vec![
                ("host".into(), "127.0.0.1:18005".into()),
                ("content-length".into(), BODY.len().to_string()),
                ("content-type".into(), "application/json".into()),
                ("authorization".into(), format!("Bearer {token}")),
            ],
            client_ip: "127.0.0.1".into(),
            decide_only: false,
        };
        let (mut ex, mut step) = loaded.engine.start(head);
        loop {
            let input = match step {
                Step::FetchKeys { issuer, .. } => Input::Keys(rt.block_on(loaded.keys.keys(issuer, Want::Current))),
                Step::ReadBody { .. } => Input::Body(BODY.to_vec()),
                Step::CallPlugin(call) => Input::PluginOutput(loaded.plugins.call(&call)),
                Step::Forward(up) => {
                    assert!(up.body.len() < BODY.len(), "the transform redacts");
                    break;
                }
                other => panic!("unexpected step {other:?}"),
            };
            step = ex.resume(input);
        }
        ex.upstream_responded(200, Some("application/json"));
        // Audit is off: the host takes no record (`Exchange::keeps_record`).
        assert!(!ex.keeps_record());
    };
    // Every token verified once (the JWT plugin in wasm), then the steady state.
    for _ in 0..tokens.len() {
        request();
    }
    let t = per_call(50_000, &mut request);
    let _ = std::fs::remove_dir_all(&dir);
    println!("exchange to the forward step, token cached, 1,004 policies, one transform: {t:.1} µs per request");
}
