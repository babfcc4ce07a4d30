//! The load generator the benchmarks share: N connections for S seconds against one URL, with bearer tokens in
//! rotation; requests/s and latency percentiles.

use super::client;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BODY: &str = r#"{"instances": [[1.0, 2.0, 3.0]]}"#;
pub const PATH: &str = "/v1/models/demo:predict";

pub struct Figures {
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub count: usize,
}

#[derive(Clone)]
pub enum Shape {
    /// POST the body to the URL.
    Proxy,
    /// GET the URL with nginx-style `X-Original-*` headers.
    SubRequest,
}

pub async fn load(url: String, shape: Shape, tokens: Arc<Vec<String>>, conns: usize, secs: u64) -> Figures {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (url, shape, tokens, next) = (url.clone(), shape.clone(), tokens.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let mut req = match shape {
                    Shape::Proxy => http::Request::post(&url).header("content-type", "application/json"),
                    Shape::SubRequest => {
                        http::Request::get(&url).header("x-original-method", "POST").header("x-original-uri", PATH)
                    }
                };
                if !tokens.is_empty() {
                    let t = &tokens[next.fetch_add(1, Ordering::Relaxed) % tokens.len()];
                    req = req.header("authorization", format!("Bearer {t}"));
                }
                let body = match shape {
                    Shape::Proxy => Bytes::from_static(BODY.as_bytes()),
                    Shape::SubRequest => Bytes::new(),
                };
                let t0 = Instant::now();
                let res = c.request(req.body(Full::new(body)).unwrap()).await.unwrap();
                assert_eq!(res.status(), 200);
                res.into_body().collect().await.unwrap();
                lat.push(t0.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Figures { rps: all.len() as f64 / secs as f64, p50: pct(0.50), p99: pct(0.99), count: all.len() }
}

pub fn print(name: &str, f: &Figures) {
    println!(
        "{name:<44} {:>9.0} req/s   p50 {:>9.1} µs   p99 {:>9.1} µs",
        f.rps,
        f.p50.as_secs_f64() * 1e6,
        f.p99.as_secs_f64() * 1e6
    );
}

/// `n` RS256 tokens (subjects `user-0`..) of group `data-scientists`, valid for an hour: the rotation set of the
/// benchmarks.
pub fn rotating_tokens(issuer: &str, n: usize) -> Arc<Vec<String>> {
    Arc::new(
        (0..n)
            .map(|i| {
                let mut c = super::claims(issuer, &format!("user-{i}"), &["data-scientists"]);
                c["exp"] = serde_json::json!(super::now() + 3600);
                super::mint(jsonwebtoken::Algorithm::RS256, "rsa1", &c)
            })
            .collect(),
    )
}

/// Microseconds per call of `f`: the fastest of five batches of `n / 5` calls after a warm-up (this machine is
/// a shared VM: the minimum is the figure that repeats).
pub fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..n / 10 {
        f();
    }
    let batch = (n / 5).max(1);
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..batch {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / f64::from(batch)
        })
        .fold(f64::INFINITY, f64::min)
}

/// The benchmarks' tenant list, rule `i` of `n`: one permit per user and model, group rules, and forbids for
/// large payloads. Written in Cedar (for `bench/run` and the policy benchmark) and in Rego (for regorus).
pub enum TenantRule {
    /// Members of `team-{team}` may predict with `m{model}`.
    Group { id: usize, team: usize, model: usize },
    /// User `u{id}` is refused any request with a payload over 100 bytes.
    Forbid { id: usize },
    /// User `u{id}` may predict with `m{model}`.
    Permit { id: usize, model: usize },
}

pub fn tenant_rules(n: usize) -> impl Iterator<Item = TenantRule> {
    (0..n).map(|i| match i % 10 {
        0 => TenantRule::Group { id: i, team: i % 50, model: i % 200 },
        1 => TenantRule::Forbid { id: i },
        _ => TenantRule::Permit { id: i, model: i % 200 },
    })
}

impl TenantRule {
    /// The rule in Cedar, entity types prefixed with `ns` (`""` or `"Gatehouse::"`).
    pub fn cedar(&self, ns: &str) -> String {
        match self {
            TenantRule::Group { id, team, model } => format!(
                "@id(\"g{id}\") permit(principal in {ns}Group::\"team-{team}\", action == {ns}Action::\"predict\", resource == {ns}Model::\"m{model}\");"
            ),
            TenantRule::Forbid { id } => format!(
                "@id(\"f{id}\") forbid(principal == {ns}User::\"u{id}\", action, resource) when {{ context.payload_size > 100 }};"
            ),
            TenantRule::Permit { id, model } => format!(
                "@id(\"p{id}\") permit(principal == {ns}User::\"u{id}\", action == {ns}Action::\"predict\", resource == {ns}Model::\"m{model}\");"
            ),
        }
    }

    /// The rule in Rego (package `gatehouse`, see [`rego_module`]), groups as a list in the input. One line:
    /// regorus refuses files of more than 20,000 lines.
    pub fn rego(&self) -> String {
        match self {
            TenantRule::Group { team, model, .. } => format!(
                "permit if {{ \"team-{team}\" in input.principal.groups; input.action == \"predict\"; input.resource == \"m{model}\" }}"
            ),
            TenantRule::Forbid { id } => {
                format!("forbid if {{ input.principal.id == \"u{id}\"; input.context.payload_size > 100 }}")
            }
            TenantRule::Permit { id, model } => format!(
                "permit if {{ input.principal.id == \"u{id}\"; input.action == \"predict\"; input.resource == \"m{model}\" }}"
            ),
        }
    }
}

/// `n` tenant rules as one Rego module with Cedar's semantics: allowed when some permit matches and no forbid.
pub fn rego_module(n: usize) -> String {
    let mut text =
        String::from("package gatehouse\n\ndefault allow := false\n\nallow if {\n  permit\n  not forbid\n}\n\n");
    for rule in tenant_rules(n) {
        text.push_str(&rule.rego());
        text.push('\n');
    }
    text
}
