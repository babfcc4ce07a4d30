//! The conformance corpus (`tests/conformance/`): every case runs against the native host and against the
//! Worker bundle in workerd, both talking to the same loopback fakes, and both must give the expected answer.
//!
//! A case (`cases/*.json`) names a configuration template (`configs/<name>.toml`), describes the request (the
//! runner mints its token from a spec) and the expected answer: status, headers (`"*"` = present, `null` =
//! absent), a JSON subset of the body or a substring, the audit record's fields (a subset; `null` = no record
//! is written) and, for streams, the first chunk that must arrive before the backend releases the rest. A case
//! may also make its caller send less body than it declares (`declared_length`) or hang up before any answer
//! (`hang_up_after_ms`); only the status and the audit record are checked then (see `partial`).

use gatehouse_tests::cloud::*;
use gatehouse_tests::workerd::Workerd;
use gatehouse_tests::*;
use http_body_util::BodyExt;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

struct Fakes {
    /// The reuse probe (`reuse::enveloped_probe`) as a module file.
    probe: std::path::PathBuf,
    idp: IdP,
    backend: Backend,
    google: Google,
    azure: Azure,
    openai: OpenAi,
}

impl Fakes {
    async fn start() -> Fakes {
        let probe = std::env::temp_dir().join(format!("gatehouse-conformance-probe-{}.wasm", std::process::id()));
        std::fs::write(&probe, crate::reuse::enveloped_probe()).unwrap();
        Fakes {
            probe,
            idp: IdP::start(&["rsa1", "ec256", "ec384", "ed25519"]).await,
            backend: Backend::start().await,
            google: Google::start().await,
            azure: Azure::start().await,
            openai: OpenAi::start(&["sk-conformance"]).await,
        }
    }

    fn render(&self, template: &str, dir: &std::path::Path, audit: &str) -> String {
        let chaos = gatehouse_plugin_artifacts::path("chaos").unwrap();
        template
            .replace("{idp}", &self.idp.issuer())
            .replace("{backend}", &self.backend.addr.to_string())
            .replace("{sts}", &self.google.sts.to_string())
            .replace("{iam}", &self.google.iam.to_string())
            .replace("{vertex}", &self.google.vertex.to_string())
            .replace("{entra}", &self.azure.entra.to_string())
            .replace("{ml}", &self.azure.ml.to_string())
            .replace("{oai}", &self.openai.addr.to_string())
            .replace("{policies}", &repo("policies"))
            .replace("{chaos}", chaos)
            .replace("{probe}", &self.probe.display().to_string())
            .replace("{dir}", &dir.display().to_string())
            .replace("{audit}", audit)
            .replace("{wif_audience}", WIF_AUDIENCE)
            .replace("{service_account}", SERVICE_ACCOUNT)
            .replace("{tenant}", TENANT)
            .replace("{client_id}", CLIENT_ID)
    }

    /// Secret files the cloud configuration names.
    fn write_secrets(&self, dir: &std::path::Path) {
        let n = now();
        let k8s = json!({"iss": "https://kubernetes.default.svc", "sub": "system:serviceaccount:ml:gatehouse",
            "aud": WIF_AUDIENCE, "iat": n, "exp": n + 3600});
        std::fs::write(dir.join("k8s-token"), mint(Algorithm::RS256, "rsa1", &k8s)).unwrap();
        let a = json!({"iss": "https://oidc.prod-aks.azure.com/t/", "sub": "system:serviceaccount:ml:gatehouse",
            "aud": ENTRA_ASSERTION_AUDIENCE, "iat": n, "exp": n + 3600, "jti": "conformance"});
        std::fs::write(dir.join("azure-assertion"), mint(Algorithm::RS256, "rsa1", &a)).unwrap();
        std::fs::write(dir.join("openai-key"), "sk-conformance\n").unwrap();
    }

    fn release_streams(&self) {
        self.google.state.release.notify_one();
        self.openai.release.notify_one();
        self.backend.release.notify_one();
    }
}

/// A token from a case's spec.
fn token(spec: &Value, idp: &IdP) -> String {
    if let Some(raw) = spec.get("raw").and_then(Value::as_str) {
        return raw.to_owned();
    }
    let n = now();
    let iss = match spec.get("iss").and_then(Value::as_str) {
        None | Some("idp") => idp.issuer(),
        Some(other) => other.to_owned(),
    };
    let mut c = json!({"iss": iss, "sub": spec["sub"].as_str().unwrap_or("alice"), "aud": AUD,
        "exp": n + spec.get("exp_in").and_then(Value::as_i64).unwrap_or(300), "iat": n - 5,
        "groups": spec.get("groups").cloned().unwrap_or(json!([])), "jti": format!("jti-{n}")});
    if let Some(nbf) = spec.get("nbf_in").and_then(Value::as_i64) {
        c["nbf"] = json!(n + nbf);
    }
    if let Some(extra) = spec.get("claims").and_then(Value::as_object) {
        for (k, v) in extra {
            c[k] = v.clone();
        }
    }
    let kid = spec.get("kid").and_then(Value::as_str).unwrap_or("rsa1");
    match spec.get("forge").and_then(Value::as_str) {
        Some("alg_none") => return forge(json!({"alg": "none", "kid": kid}), &c, b""),
        Some("header") => {
            // A real RS256 signature over a header with extra members (crit, jku, ...).
            let mut header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
            for (k, v) in spec["header"].as_object().unwrap() {
                header[k] = v.clone();
            }
            return sign_raw(&header, &c);
        }
        Some("wrong_key") => {
            let good = mint(Algorithm::RS256, kid, &c);
            let other = mint(Algorithm::RS256, "rsa2", &c);
            return format!("{}.{}", good.rsplit_once('.').unwrap().0, other.rsplit_once('.').unwrap().1);
        }
        Some("hs256") => {
            let secret = serde_json::to_vec(&jwks(&["rsa1"])["keys"][0]).unwrap();
            let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
            h.kid = Some(kid.into());
            return jsonwebtoken::encode(&h, &c, &jsonwebtoken::EncodingKey::from_secret(&secret)).unwrap();
        }
        _ => {}
    }
    let alg = match spec.get("alg").and_then(Value::as_str).unwrap_or("RS256") {
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "PS256" => Algorithm::PS256,
        _ => Algorithm::RS256,
    };
    mint(alg, kid, &c)
}

/// Signs `header.claims` with rsa1 (RS256), whatever the header says.
fn sign_raw(header: &Value, claims: &Value) -> String {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!("{}.{}", e.encode(header.to_string()), e.encode(claims.to_string()));
    let pem = std::fs::read(repo("tests/keys/rsa1.pem")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::RS256).unwrap();
    format!("{input}.{sig}")
}

/// Whether `got` holds everything `want` says (objects: a subset, recursively; anything else: equal).
fn subset(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w.iter().all(|(k, v)| match g.get(k) {
            Some(gv) => subset(v, gv),
            None => v.is_null(),
        }),
        _ => want == got,
    }
}

struct Outcome {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

async fn send(base: &str, case: &Value, fakes: &Fakes) -> Result<Outcome, String> {
    let r = &case["request"];
    let path = r["path"].as_str().unwrap();
    let method = r.get("method").and_then(Value::as_str).unwrap_or("POST");
    let mut req = http::Request::builder().method(method).uri(format!("{base}{path}"));
    if let Some(spec) = r.get("token").filter(|t| !t.is_null()) {
        req = req.header("authorization", format!("Bearer {}", token(spec, &fakes.idp)));
    }
    for (n, v) in r.get("headers").and_then(Value::as_object).into_iter().flatten() {
        let v = v
            .as_str()
            .unwrap()
            .replace("{token:alice}", &token(&json!({"sub": "alice", "groups": ["data-scientists"]}), &fakes.idp));
        req = req.header(n.as_str(), v);
    }
    let body = match r.get("body") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    let res = client()
        .request(req.body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let mut stream = res.into_body();
    let mut text = String::new();
    if let Some(first) = case["expect"].get("stream_first").and_then(Value::as_str) {
        let frame = tokio::time::timeout(Duration::from_secs(5), stream.frame())
            .await
            .map_err(|_| "no first chunk within 5 s".to_owned())?
            .ok_or("the stream ended at once")?
            .map_err(|e| e.to_string())?;
        let chunk = String::from_utf8_lossy(&frame.into_data().unwrap_or_default()).into_owned();
        if !chunk.contains(first) {
            return Err(format!("the first chunk {chunk:?} lacks {first:?}"));
        }
        text.push_str(&chunk);
        fakes.release_streams();
    }
    let rest = tokio::time::timeout(Duration::from_secs(10), stream.collect())
        .await
        .map_err(|_| "the body did not end".to_owned())?;
    text.push_str(&String::from_utf8_lossy(&rest.map_err(|e| e.to_string())?.to_bytes()));
    Ok(Outcome { status, headers, body: text })
}

fn check(case: &Value, got: &Outcome, audit: Option<&Value>) -> Vec<String> {
    let e = &case["expect"];
    let mut errors = vec![];
    if let Some(s) = e.get("status").and_then(Value::as_u64)
        && u64::from(got.status) != s
    {
        errors.push(format!("status {} (expected {s}); body {}", got.status, got.body));
    }
    if got.headers.get("x-request-id").is_none() {
        errors.push("no x-request-id".into());
    }
    for (name, want) in e.get("headers").and_then(Value::as_object).into_iter().flatten() {
        let have = got.headers.get(name.as_str()).and_then(|v| v.to_str().ok());
        match (want, have) {
            (Value::Null, None) => {}
            (Value::Null, Some(h)) => errors.push(format!("header {name}: {h:?}, expected none")),
            (Value::String(w), Some(_)) if w == "*" => {}
            (Value::String(w), Some(h)) if w.ends_with('*') && h.starts_with(w.trim_end_matches('*')) => {}
            (Value::String(w), Some(h)) if w == h => {}
            (w, h) => errors.push(format!("header {name}: {h:?}, expected {w}")),
        }
    }
    if let Some(want) = e.get("json") {
        let body: Value = serde_json::from_str(&got.body).unwrap_or(Value::Null);
        if !subset(want, &body) {
            errors.push(format!("body {} does not contain {want}", got.body));
        }
    }
    for want in e.get("body_contains").and_then(Value::as_array).into_iter().flatten() {
        let w = want.as_str().unwrap();
        if !got.body.contains(w) {
            errors.push(format!("body {:?} lacks {w:?}", got.body));
        }
    }
    if let Some(want) = e.get("audit") {
        match audit {
            // `"audit": null`: the configuration keeps no records.
            None if want.is_null() => {}
            Some(a) if want.is_null() => errors.push(format!("audit {a}, expected none")),
            Some(a) if subset(want, a) => {}
            Some(a) => errors.push(format!("audit {a} does not contain {want}")),
            None => errors.push("no audit record".into()),
        }
    }
    errors
}

/// A case whose caller controls its connection: it may send less body than it declares (`declared_length`),
/// then either hangs up `hang_up_after_ms` later, before any answer, or waits for the answer (its `status` is
/// checked). The audit record is found by the token's subject (unique to the case). A hang-up reaches the
/// Worker through the edge stand-in, which cancels the invocation then (see `workerd::EDGE_JS`).
async fn partial(host: &Host, case: &Value, fakes: &Fakes) -> Vec<String> {
    use tokio::io::AsyncWriteExt;
    let r = &case["request"];
    let spec = &r["token"];
    let subject = spec["sub"].as_str().expect("a partial case names a unique subject");
    let body = match &r["body"] {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let hang_up = r.get("hang_up_after_ms").and_then(Value::as_u64);
    let token = token(spec, &fakes.idp);
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: gatehouse\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\n\
         x-hang-up-after-ms: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        r["path"].as_str().unwrap(),
        hang_up.unwrap_or(0),
        r.get("declared_length").and_then(Value::as_u64).unwrap_or(body.len() as u64),
    );
    let addr = match (host, hang_up) {
        (Host::Native(g), _) => g.addr,
        (Host::Workers(w), None) => w.addr,
        (Host::Workers(w), Some(_)) => w.edge,
    };
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut errors = vec![];
    match (host, hang_up) {
        (Host::Native(_), Some(ms)) => tokio::time::sleep(Duration::from_millis(ms)).await,
        (_, hang_up) => {
            let mut buf = Vec::new();
            let read = gatehouse_tests::raw_http::read_head(&mut s, &mut buf);
            let (_, answer) =
                tokio::time::timeout(Duration::from_secs(10), read).await.ok().and_then(Result::ok).unwrap_or_default();
            // Through the edge stand-in, the answer is the stand-in's 499: the Worker was cancelled.
            let want = if hang_up.is_some() { Some(499) } else { case["expect"].get("status").and_then(Value::as_u64) };
            if let Some(w) = want
                && !answer.starts_with(&format!("HTTP/1.1 {w}"))
            {
                errors.push(format!("answer {answer:?}, expected status {w}"));
            }
        }
    }
    drop(s);
    let want = &case["expect"]["audit"];
    // One record per exchange, however it ended: none more once the upstream timeout (500 ms) has passed.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let written = host.records().iter().filter(|r| r["subject"] == subject).count();
    if written > 1 {
        errors.push(format!("{written} audit records for one request"));
    }
    match host.audit("subject", subject).await {
        Some(a) if a.to_string().contains(token.rsplit('.').next().unwrap_or(&token)) => {
            errors.push("the audit record holds the caller's token".into())
        }
        Some(a) if subset(want, &a) => {}
        Some(a) => errors.push(format!("audit {a} does not contain {want}")),
        None => errors.push("no audit record".into()),
    }
    errors
}

enum Host {
    Native(Gateway),
    Workers(Workerd),
}

impl Host {
    fn name(&self) -> &'static str {
        match self {
            Host::Native(_) => "native",
            Host::Workers(_) => "workerd",
        }
    }
    fn base(&self) -> String {
        match self {
            Host::Native(g) => g.url(""),
            Host::Workers(w) => w.url(""),
        }
    }
    fn records(&self) -> Vec<Value> {
        match self {
            Host::Native(g) => g.audit(),
            Host::Workers(w) => w.audit(),
        }
    }

    /// The audit record with `field` equal to `value`, waiting up to 2 s for it.
    async fn audit(&self, field: &str, value: &str) -> Option<Value> {
        for _ in 0..100 {
            if let Some(r) = self.records().into_iter().find(|r| r[field] == value) {
                return Some(r);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_passes_on_both_hosts() {
    let root = repo("tests/conformance");
    let fakes = Arc::new(Fakes::start().await);
    // A case may name the trusted issuer as `{idp}` (its address is the fake's).
    let mut cases: Vec<(String, Value)> = std::fs::read_dir(format!("{root}/cases"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap().replace("{idp}", &fakes.idp.issuer()))
                    .unwrap(),
            )
        })
        .collect();
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(cases.len() >= 40, "the corpus has {} cases", cases.len());
    let mut by_config: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for (name, case) in cases {
        by_config.entry(case["config"].as_str().unwrap().to_owned()).or_default().push((name, case));
    }

    let mut failures = vec![];
    let mut ran = 0;
    for (config, cases) in by_config {
        let template = std::fs::read_to_string(format!("{root}/configs/{config}.toml")).unwrap();
        let base = std::env::temp_dir().join(format!("gatehouse-conformance-{}-{config}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        fakes.write_secrets(&base);
        // Native: the harness's gateway (audit to a file).
        let native = gateway(&fakes.render(&template, &base, "{dir}/audit.log")).await;
        fakes.write_secrets(&native.dir);
        // Workers: the bundle of the same configuration in workerd (audit with console.log).
        let file = base.join("gatehouse.toml");
        std::fs::write(&file, fakes.render(&template, &base, "stdout")).unwrap();
        let file_s = file.display().to_string();
        let out = base.join("worker");
        let workers = tokio::task::spawn_blocking(move || Workerd::start(&file_s, &out)).await.unwrap();
        for host in [Host::Native(native), Host::Workers(workers)] {
            for (name, case) in &cases {
                if ["declared_length", "hang_up_after_ms"].iter().any(|k| case["request"].get(k).is_some()) {
                    let errors = partial(&host, case, &fakes).await;
                    ran += 1;
                    failures.extend(errors.into_iter().map(|e| format!("{} {name}: {e}", host.name())));
                    continue;
                }
                let outcome = send(&host.base(), case, &fakes).await;
                let errors = match outcome {
                    Err(e) => vec![e],
                    Ok(got) => {
                        let id = got.headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                        let audit = if case["expect"].get("audit").is_some() {
                            host.audit("request_id", &id).await
                        } else {
                            None
                        };
                        check(case, &got, audit.as_ref())
                    }
                };
                ran += 1;
                for e in errors {
                    failures.push(format!("{} {name}: {e}", host.name()));
                }
            }
            if let Host::Workers(w) = &host
                && failures.iter().any(|f| f.starts_with("workerd"))
            {
                eprintln!("workerd output:\n{}", w.output());
            }
        }
    }
    assert!(failures.is_empty(), "{} of {ran} runs failed:\n{}", failures.len(), failures.join("\n"));
    eprintln!("conformance: {ran} runs (every case on both hosts) passed");
}
