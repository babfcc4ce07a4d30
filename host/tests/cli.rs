//! The `gatehouse` command line, run as a user would: check, authorize, test, and the demo with `token`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn gatehouse() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    c
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gatehouse-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn check_accepts_the_example_and_names_file_and_line_of_errors() {
    let ok = gatehouse().args(["check", "--config", "examples/basic/gatehouse.toml"]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    let dir = tmp("check");
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
    std::fs::write(dir.join("bad.cedar"), "@id(\"a\")\npermit(principal, action, resource);\n\n@id(\"b\")\npermit(principal, action, resource)\nwhen { context.no_such_fact };\n").unwrap();
    let config = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/basic/gatehouse.toml"))
        .unwrap()
        .replace("../../policies/schema.cedarschema", &format!("{policies}/schema.cedarschema"))
        .replace("files = [\"../../policies\"]", "files = [\"bad.cedar\"]")
        .replace("../../policies/entities.json", &format!("{policies}/entities.json"));
    std::fs::write(dir.join("gatehouse.toml"), config).unwrap();
    let out = gatehouse().args(["check", "--config"]).arg(dir.join("gatehouse.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.cedar:6:"), "{err}");
    assert!(err.contains("policy `b`"), "{err}");
}

#[test]
fn authorize_explains_a_decision_offline() {
    let dir = tmp("authorize");
    let req = dir.join("request.json");
    std::fs::write(&req, r#"{"path": "/v1/models/fraud-scorer:predict", "identity": {"issuer": "https://example.okta.com/oauth2/default", "subject": "alice", "groups": ["data-scientists"]}}"#).unwrap();
    let out = gatehouse()
        .args(["authorize", "--config", "examples/basic/gatehouse.toml", "--request"])
        .arg(&req)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "deny exits 2");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "deny");
    assert!(v["policies"][0].as_str().unwrap().starts_with("restricted-models-need-owners ("), "{v}");
}

#[test]
fn test_runs_the_decision_corpus() {
    let out = gatehouse().args(["test", "--config", "examples/basic/gatehouse.toml"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.trim_end().ends_with("passed, 0 failed"), "{text}");
}

#[test]
fn the_demo_allows_and_denies_with_dev_tokens() {
    let mut demo = gatehouse()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut stderr = BufReader::new(demo.stderr.take().unwrap());
    stderr.read_line(&mut first).unwrap();
    let addr = first.split("http://").nth(1).unwrap().split(' ').next().unwrap().to_owned();
    let call = |token: &str| {
        use std::io::{Read, Write};
        let body = r#"{"instances": [[1, 2]]}"#;
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "POST /v1/models/demo:predict HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer.split(' ').nth(1).unwrap().to_owned()
    };
    let token = |args: &[&str]| {
        let out = gatehouse().arg("token").args(args).args(["--listen", &addr]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let alice = token(&["--sub", "alice", "--groups", "data-scientists"]);
    let bob = token(&["--sub", "bob"]);
    let (a, b) = (call(&alice), call(&bob));
    demo.kill().unwrap();
    demo.wait().unwrap();
    drop(stderr);
    assert_eq!(a, "200");
    assert_eq!(b, "403");
}
