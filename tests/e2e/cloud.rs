//! Cloud backends with short-lived credentials, against loopback fakes of Google STS, IAM Credentials,
//! Vertex AI, Entra ID, Azure ML and an OpenAI-compatible server.

use gatehouse_tests::cloud::*;
use gatehouse_tests::*;
use http_body_util::BodyExt;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

struct Cloud {
    idp: IdP,
    google: Google,
    azure: Azure,
    openai: OpenAi,
    gw: Gateway,
}

/// Refresh margins in seconds: (google, azure).
async fn cloud(refresh_before: (i64, i64)) -> Cloud {
    let idp = IdP::start(&["rsa1"]).await;
    let google = Google::start().await;
    let azure = Azure::start().await;
    let openai = OpenAi::start(&["sk-old", "sk-new"]).await;
    let (g, a) = refresh_before;
    let config = format!(
        r#"
[server]
audit = "{{dir}}/audit.log"
reveal_policy_ids = true

[forward_auth]
enabled = true
pass_credentials = true

[[issuers]]
issuer = "{iss}"
audiences = ["{AUD}"]

[policies]
schema = "{{policies}}/schema.cedarschema"
files = ["{{policies}}"]
entities = "{{policies}}/entities.json"

[plugins.vertex]
builtin = "vertex-ai"
config = {{ project = "acme-ml", location = "us-central1", endpoints = {{ demo = "1234567890", quota = "quota" }}, publisher_models = {{ gemini = "gemini-2.0-flash" }} }}

[plugins.azure]
builtin = "azure-ml"
config = {{ deployments = {{ churn = "blue" }} }}

[plugins.openai]
builtin = "openai"
config = {{ models = {{ assistant = "gpt-4o-mini" }} }}

[credentials.gcp]
kind = "gcp_workload_identity"
audience = "{WIF_AUDIENCE}"
subject_token = {{ file = "{{dir}}/k8s-token" }}
service_account = "{SERVICE_ACCOUNT}"
sts_url = "http://{sts}/v1/token"
iam_url = "http://{iam}"
refresh_before_secs = {g}

[credentials.gcp-delegated]
kind = "gcp_workload_identity"
audience = "{WIF_AUDIENCE}"
subject_token = "caller"
service_account = "{SERVICE_ACCOUNT}"
sts_url = "http://{sts}/v1/token"
iam_url = "http://{iam}"

[credentials.entra]
kind = "azure_federated"
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
assertion = {{ file = "{{dir}}/azure-assertion" }}
authority = "http://{entra}"
refresh_before_secs = {a}

[credentials.openai-key]
kind = "static_key"
key = {{ file = "{{dir}}/openai-key" }}
reread_secs = 1

[backends.vertex]
url = "http://{vertex}"
adapter = "vertex"
credential = "gcp"

[backends.azure]
url = "http://{ml}"
adapter = "azure"
credential = "entra"

[backends.openai]
url = "http://{oai}"
adapter = "openai"
credential = "openai-key"

[backends.plain]
url = "http://{oai}"
credential = "openai-key"

[[routes]]
name = "plain"
path = "/v1/plain/{{model}}:predict"
action = "predict"
backend = "plain"

[[routes]]
name = "vertex-predict"
path = "/v1/models/{{model}}:predict"
action = "predict"
backend = "vertex"

[[routes]]
name = "vertex-delegated"
path = "/v1/delegated/{{model}}:predict"
action = "predict"
backend = "vertex"
credential = "gcp-delegated"

[[routes]]
name = "vertex-generate"
path = "/v1/models/{{model}}:generateContent"
action = "generate"
backend = "vertex"

[[routes]]
name = "vertex-stream"
path = "/v1/models/{{model}}:streamGenerateContent"
action = "generate"
backend = "vertex"

[[routes]]
name = "azure-score"
path = "/v1/azure/{{model}}:score"
action = "predict"
backend = "azure"

[[routes]]
name = "chat"
path = "/v1/chat/completions"
action = "chat"
model = "assistant"
backend = "openai"
"#,
        iss = idp.issuer(),
        sts = google.sts,
        iam = google.iam,
        vertex = google.vertex,
        entra = azure.entra,
        ml = azure.ml,
        oai = openai.addr,
    );
    let gw = gateway(&config).await;
    // The workload's own projected token, as the kubelet would write it.
    let n = now();
    let k8s = json!({"iss": "https://kubernetes.default.svc", "sub": "system:serviceaccount:ml:gatehouse",
        "aud": WIF_AUDIENCE, "iat": n, "exp": n + 3600});
    std::fs::write(gw.dir.join("k8s-token"), mint(Algorithm::RS256, "rsa1", &k8s)).unwrap();
    write_assertion(&gw, "assertion-1");
    std::fs::write(gw.dir.join("openai-key"), "sk-old\n").unwrap();
    Cloud { idp, google, azure, openai, gw }
}

fn write_assertion(gw: &Gateway, jti: &str) {
    let n = now();
    let a = json!({"iss": "https://oidc.prod-aks.azure.com/tenant/", "sub": "system:serviceaccount:ml:gatehouse",
        "aud": ENTRA_ASSERTION_AUDIENCE, "iat": n, "exp": n + 3600, "jti": jti});
    std::fs::write(gw.dir.join("azure-assertion"), mint(Algorithm::RS256, "rsa1", &a)).unwrap();
}

impl Cloud {
    fn token(&self, sub: &str, groups: &[&str]) -> String {
        mint(Algorithm::RS256, "rsa1", &claims(&self.idp.issuer(), sub, groups))
    }

    fn alice(&self) -> String {
        self.token("alice", &["data-scientists"])
    }

    /// The audit log must not hold any credential the fakes issued or the gateway read.
    fn assert_no_secrets_in_audit(&self) {
        let text = self.gw.audit_text();
        for secret in ["ya29.", "sts-federated", "fake-entra", "sk-old", "sk-new", "eyJ"] {
            assert!(!text.contains(secret), "the audit log holds `{secret}`:\n{text}");
        }
        let assertion = std::fs::read_to_string(self.gw.dir.join("azure-assertion")).unwrap();
        assert!(!text.contains(assertion.trim()));
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(5), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn vertex_prediction_with_workload_identity_federation() {
    let c = cloud((300, 300)).await;
    let body = r#"{"instances": [{"amount": 12.5}, {"amount": 900}], "parameters": {"threshold": 0.5}}"#;
    let r = post(&c.gw.url("/v1/models/demo:predict"), Some(&c.alice()), body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["predictions"].as_array().unwrap().len(), 2);
    assert_eq!(r.json()["deployedModelId"], "4242");
    let seen = c.google.state.predictions.lock().unwrap()[0].clone();
    assert_eq!(seen["path"], "/v1/projects/acme-ml/locations/us-central1/endpoints/1234567890:predict");
    assert_eq!(seen["body"], serde_json::from_str::<Value>(body).unwrap());

    // Cached: no second exchange or impersonation.
    let r = post(&c.gw.url("/v1/models/demo:predict"), Some(&c.alice()), body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((c.google.exchanges(), c.google.impersonations()), (1, 1));
    assert_eq!(c.google.state.subjects.lock().unwrap().clone(), vec!["system:serviceaccount:ml:gatehouse"]);

    // Denied callers cost no credential and reach nothing.
    let r = post(&c.gw.url("/v1/models/demo:predict"), Some(&c.token("bob", &["marketing"])), body).await;
    assert_eq!(r.status, 403);
    // The adapter refuses a payload Vertex would refuse.
    let r = post(&c.gw.url("/v1/models/demo:predict"), Some(&c.alice()), r#"{"inputs": [1]}"#).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["detail"].as_str().unwrap().contains("instances"), "{}", r.body);
    assert_eq!(c.google.state.predictions.lock().unwrap().len(), 2);

    let audit = c.gw.audit();
    assert_eq!(audit[0]["credential"]["provider"], "gcp");
    assert_eq!(audit[0]["credential"]["kind"], "gcp_workload_identity");
    assert_eq!(audit[0]["credential"]["identity"], SERVICE_ACCOUNT);
    assert_eq!(audit[0]["credential"]["cached"], false);
    assert!(audit[0]["credential"]["expires_at"].as_i64().unwrap() > now() + 3000);
    assert_eq!(audit[1]["credential"]["cached"], true);
    assert_eq!(
        audit[0]["inference"],
        json!({"operation": "predict", "model_name": "1234567890", "instances": 2, "stream": false})
    );
    assert!(audit[2]["credential"].is_null());
    c.assert_no_secrets_in_audit();
}

#[tokio::test]
async fn policies_see_adapter_facts_and_generation_streams() {
    let c = cloud((300, 300)).await;
    let ask = |max: u32| {
        json!({"contents": [{"role": "user", "parts": [{"text": "Summarise this claim"}]}],
               "generationConfig": {"maxOutputTokens": max}})
        .to_string()
    };
    let r = post(&c.gw.url("/v1/models/gemini:generateContent"), Some(&c.alice()), ask(4000)).await;
    assert_eq!(r.status, 403, "more than 1,000 output tokens: {}", r.body);
    let r = post(&c.gw.url("/v1/models/gemini:generateContent"), Some(&c.alice()), ask(800)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["candidates"][0]["content"]["parts"][0]["text"], "A short answer.");
    let audit = c.gw.audit();
    assert_eq!(audit[0]["inference"]["max_tokens"], 4000);
    assert_eq!(audit[1]["policy_ids"], json!(["data-scientists-generate-capped"]));

    // streamGenerateContent: the first event arrives while Vertex still holds the rest.
    let req = http::Request::post(c.gw.url("/v1/models/gemini:streamGenerateContent"))
        .header("authorization", format!("Bearer {}", c.alice()))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(ask(500))))
        .unwrap();
    let res = client().request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.unwrap().unwrap().unwrap();
    let first = String::from_utf8(first.into_data().unwrap().to_vec()).unwrap();
    assert!(first.starts_with("data: ") && first.contains("First"), "{first}");
    assert!(!c.google.state.finished.load(Ordering::SeqCst));
    c.google.state.release.notify_one();
    let rest = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(rest.contains(" last."), "{rest}");
    let seen = c.google.state.predictions.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen["query"], "alt=sse");
    assert_eq!(c.google.exchanges(), 1);
}

#[tokio::test]
async fn backend_errors_become_problems() {
    let c = cloud((300, 300)).await;
    let r = post(&c.gw.url("/v1/models/quota:predict"), Some(&c.alice()), r#"{"instances": [1]}"#).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.header("retry-after"), "1");
    assert_eq!(r.header("content-type"), "application/problem+json");
    let p = r.json();
    assert_eq!(p["type"], "urn:gatehouse:problem:backend-error");
    assert_eq!(p["title"], "Vertex AI: RESOURCE_EXHAUSTED");
    assert!(p["detail"].as_str().unwrap().starts_with("Quota exceeded"));
    let audit = c.gw.audit();
    assert_eq!((audit[0]["status"].as_u64(), audit[0]["upstream_status"].as_u64()), (Some(429), Some(429)));
    assert_eq!(audit[0]["reason"], "backend-error");

    // Azure ML: the model's own failure (424) is the gateway's 502, with the endpoint's explanation.
    let r =
        post(&c.gw.url("/v1/azure/churn:score"), Some(&c.alice()), r#"{"input_data": {"data": [["explode"]]}}"#).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["title"], "Azure ML: the model failed");
    c.assert_no_secrets_in_audit();
}

#[tokio::test]
async fn credentials_refresh_before_expiry_and_outlive_an_outage_but_never_expiry() {
    let c = cloud((4, 300)).await;
    c.google.state.lifetime.store(8, Ordering::SeqCst);
    let url = c.gw.url("/v1/models/demo:predict");
    let body = r#"{"instances": [1]}"#;
    let t0 = Instant::now();
    assert_eq!(post(&url, Some(&c.alice()), body).await.status, 200);
    assert_eq!(c.google.impersonations(), 1);

    // Inside the refresh window: served with the cached credential, refreshed in the background.
    tokio::time::sleep_until((t0 + Duration::from_millis(4500)).into()).await;
    assert_eq!(post(&url, Some(&c.alice()), body).await.status, 200);
    eventually("the background refresh", || c.google.impersonations() == 2).await;

    // STS and IAM go down: the still-valid credential keeps serving.
    c.google.state.down.store(true, Ordering::SeqCst);
    tokio::time::sleep_until((t0 + Duration::from_millis(9000)).into()).await;
    let r = post(&url, Some(&c.alice()), body).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Once it has expired it is never used: 503, and the audit record says why.
    tokio::time::sleep_until((t0 + Duration::from_millis(13_500)).into()).await;
    let r = post(&url, Some(&c.alice()), body).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), "5");
    assert_eq!(r.json()["type"], "urn:gatehouse:problem:credential-unavailable");
    let audit = c.gw.audit();
    let last = audit.last().unwrap();
    assert_eq!(last["reason"], "credential-unavailable");
    assert!(last["detail"].as_str().unwrap().contains("Google STS answered 503"), "{last}");
    assert!(last["credential"]["error"].as_str().unwrap().contains("Google STS"));
    assert_eq!(audit[1]["credential"]["refresh_started"], true);
    c.assert_no_secrets_in_audit();
}

#[tokio::test]
async fn user_delegated_credentials_are_per_caller() {
    let c = cloud((300, 300)).await;
    let url = c.gw.url("/v1/delegated/demo:predict");
    let carol = c.token("carol", &["data-scientists"]);
    for t in [c.alice(), c.alice(), carol] {
        let r = post(&url, Some(&t), r#"{"instances": [1]}"#).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(c.google.state.subjects.lock().unwrap().clone(), vec!["alice", "carol"]);
    assert_eq!(c.google.impersonations(), 2);
    c.assert_no_secrets_in_audit();
}

#[tokio::test]
async fn azure_ml_with_a_federated_assertion_rotated_on_disk() {
    let c = cloud((300, 4)).await;
    c.azure.state.lifetime.store(8, Ordering::SeqCst);
    let url = c.gw.url("/v1/azure/churn:score");
    let body =
        r#"{"input_data": {"columns": ["tenure", "plan"], "index": [0, 1], "data": [[3, "pro"], [40, "free"]]}}"#;
    let t0 = Instant::now();
    let r = post(&url, Some(&c.alice()), body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["deployment"], "blue");
    assert_eq!(r.json()["predictions"].as_array().unwrap().len(), 2);
    let (token, deployment) = c.azure.state.seen.lock().unwrap()[0].clone();
    assert!(token.starts_with("eyJ0eXAi.fake-entra-1"));
    assert_eq!(deployment.as_deref(), Some("blue"));

    // The kubelet rotates the assertion; the next refresh presents the new one.
    write_assertion(&c.gw, "assertion-2");
    tokio::time::sleep_until((t0 + Duration::from_millis(4500)).into()).await;
    assert_eq!(post(&url, Some(&c.alice()), body).await.status, 200);
    eventually("the refresh with the new assertion", || c.azure.assertions().len() == 2).await;
    assert_eq!(c.azure.assertions(), vec!["assertion-1", "assertion-2"]);

    // A caller cannot pin another deployment: its header is not passed.
    let req = http::Request::post(&url)
        .header("authorization", format!("Bearer {}", c.alice()))
        .header("azureml-model-deployment", "green")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let res = client().request(req).await.unwrap();
    let v: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["deployment"], "blue");
    let audit = c.gw.audit();
    assert_eq!(audit[0]["credential"]["identity"], CLIENT_ID);
    assert_eq!(audit[0]["inference"]["deployment"], "blue");
    assert_eq!(audit[0]["inference"]["instances"], 2);
    c.assert_no_secrets_in_audit();
}

#[tokio::test]
async fn static_key_rotates_without_restart_and_chat_streams() {
    let c = cloud((300, 300)).await;
    let url = c.gw.url("/v1/chat/completions");
    let chat = |stream: bool| {
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 500, "stream": stream}).to_string()
    };
    let r = post(&url, Some(&c.alice()), chat(false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["model"], "gpt-4o-mini");
    assert_eq!(c.openai.seen_keys.lock().unwrap().clone(), vec!["sk-old"]);

    std::fs::write(c.gw.dir.join("openai-key"), "sk-new\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(post(&url, Some(&c.alice()), chat(false)).await.status, 200);
    let mut last = String::new();
    for _ in 0..50 {
        assert_eq!(post(&url, Some(&c.alice()), chat(false)).await.status, 200);
        last = c.openai.seen_keys.lock().unwrap().last().cloned().unwrap();
        if last == "sk-new" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, "sk-new", "the rotated key was picked up without a restart");

    // Chat completions with stream: true arrive incrementally.
    let req = http::Request::post(&url)
        .header("authorization", format!("Bearer {}", c.alice()))
        .body(http_body_util::Full::new(bytes::Bytes::from(chat(true))))
        .unwrap();
    let res = client().request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.unwrap().unwrap().unwrap();
    let first = String::from_utf8(first.into_data().unwrap().to_vec()).unwrap();
    assert!(first.contains("\"Hel\""), "{first}");
    assert!(!c.openai.finished.load(Ordering::SeqCst));
    c.openai.release.notify_one();
    let rest = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");

    // No output cap: the policy refuses chat on a large model.
    let r = post(&url, Some(&c.alice()), r#"{"messages": [{"role": "user", "content": "hi"}]}"#).await;
    assert_eq!(r.status, 403);
    let audit = c.gw.audit();
    assert_eq!(audit[0]["credential"]["kind"], "static_key");
    assert!(audit[0]["credential"]["identity"].as_str().unwrap().starts_with("file:"));
    c.assert_no_secrets_in_audit();
}

#[tokio::test]
async fn forward_auth_grants_carry_the_upstream_credential() {
    let c = cloud((300, 300)).await;
    let req = |token: &str| {
        http::Request::get(c.gw.url("/_gatehouse/auth"))
            .header("authorization", format!("Bearer {token}"))
            .header("x-original-method", "POST")
            .header("x-original-uri", "/v1/plain/demo:predict")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    // One token for both requests: a token minted per request differs once a second boundary passes (`iat`),
    // and the decision cache is keyed by the token.
    let alice = c.alice();
    for _ in 0..2 {
        let res = client().request(req(&alice)).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["authorization"], "Bearer sk-old");
        assert_eq!(res.headers()["x-gatehouse-subject"], "alice");
    }
    let res = client().request(req(&c.token("bob", &[]))).await.unwrap();
    assert_eq!(res.status(), 403);
    assert!(res.headers().get("authorization").is_none());
    let audit = c.gw.audit();
    assert_eq!(audit[0]["credential"]["kind"], "static_key");
    assert_eq!(audit[1]["cached"], true, "the decision came from the cache, the credential from its own");
    c.assert_no_secrets_in_audit();
}

#[tokio::test]
async fn oauth2_client_credentials_single_flight_and_private_key_jwt() {
    let idp = IdP::start(&["rsa1"]).await;
    let backend = Backend::start().await;
    let oauth = OAuth::start().await;
    let key = repo("tests/keys/rsa1.pem");
    let config = format!(
        r#"
[server]
audit = "{{dir}}/audit.log"

[[issuers]]
issuer = "{iss}"
audiences = ["{AUD}"]

[policies]
schema = "{{policies}}/schema.cedarschema"
files = ["{{policies}}"]
entities = "{{policies}}/entities.json"

[credentials.basic]
kind = "oauth2_client_credentials"
token_url = "http://{oauth}/oauth2/token"
client_id = "{OAUTH_CLIENT}"
client_secret = {{ env = "GATEHOUSE_TEST_OAUTH_SECRET" }}
scope = "models.invoke"

[credentials.signed]
kind = "oauth2_client_credentials"
token_url = "http://{oauth}/oauth2/token"
client_id = "{OAUTH_CLIENT}"
auth_method = "private_key_jwt"
private_key = {{ file = "{key}" }}
key_id = "rsa1"
scope = "models.invoke"

[backends.model]
url = "http://{backend}"
credential = "basic"

[[routes]]
name = "basic"
path = "/v1/models/{{model}}:predict"
action = "predict"
backend = "model"

[[routes]]
name = "signed"
path = "/v1/signed/{{model}}:predict"
action = "predict"
backend = "model"
credential = "signed"
"#,
        iss = idp.issuer(),
        oauth = oauth.addr,
        backend = backend.addr,
    );
    // SAFETY of the test: only this test reads this variable.
    unsafe { std::env::set_var("GATEHOUSE_TEST_OAUTH_SECRET", OAUTH_SECRET) };
    let gw = gateway(&config).await;
    let alice = mint(Algorithm::RS256, "rsa1", &claims(&idp.issuer(), "alice", &["data-scientists"]));

    // Eight concurrent requests on a cold cache: one grant, all eight carry its token.
    let url = gw.url("/v1/models/demo:predict");
    let replies = crate::futures_join(8, || {
        let (url, alice) = (url.clone(), alice.clone());
        async move { post(&url, Some(&alice), r#"{"instances": [1]}"#).await }
    })
    .await;
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["headers"]["authorization"], "Bearer at-0");
    }
    assert_eq!(oauth.grants.lock().unwrap().clone(), vec!["client_secret_basic"]);

    let r = post(&gw.url("/v1/signed/demo:predict"), Some(&alice), r#"{"instances": [1]}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["headers"]["authorization"], "Bearer at-1");
    assert_eq!(oauth.grants.lock().unwrap().clone(), vec!["client_secret_basic", "private_key_jwt"]);
    let text = gw.audit_text();
    assert!(!text.contains("at-0") && !text.contains("at-1") && !text.contains(OAUTH_SECRET), "{text}");
}
