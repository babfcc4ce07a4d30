//! The same configuration served by the Worker bundle in workerd.

use gatehouse_tests::workerd::Workerd;
use gatehouse_tests::*;
use jsonwebtoken::Algorithm;

#[tokio::test(flavor = "multi_thread")]
async fn smoke() {
    let idp = IdP::start(&["rsa1"]).await;
    let backend = Backend::start().await;
    let dir = std::env::temp_dir().join(format!("gatehouse-workerd-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        r#"
[[issuers]]
issuer = "{iss}"
audiences = ["{AUD}"]

[policies]
schema = "{p}/schema.cedarschema"
files = ["{p}"]
entities = "{p}/entities.json"

[backends.model]
url = "http://{b}"

[[routes]]
name = "predict"
path = "/v1/models/{{model}}:predict"
action = "predict"
backend = "model"
"#,
        iss = idp.issuer(),
        p = repo("policies"),
        b = backend.addr
    );
    std::fs::write(dir.join("gatehouse.toml"), config).unwrap();
    let w = Workerd::start(&dir.join("gatehouse.toml").display().to_string(), &dir.join("worker"));
    let alice = mint(Algorithm::RS256, "rsa1", &claims(&idp.issuer(), "alice", &["data-scientists"]));
    let r = post(&w.url("/v1/models/demo:predict"), Some(&alice), r#"{"instances": [1]}"#).await;
    println!("{}", w.output());
    assert_eq!(r.status, 200, "{}", r.body);
}
