//! The policy decision corpus (`policies/tests/*.json`): each case is a question and the expected decision,
//! Cedar-style. `gatehouse test` and the engine's own tests run it through the same function.

use crate::config::line_containing;
use crate::error::Located;
use crate::policy::{PolicyStore, PrincipalKind, Question};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// One case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case shows.
    pub name: String,
    /// Who asks.
    pub principal: Principal,
    /// The action id.
    pub action: String,
    /// The model id.
    pub resource: String,
    /// Context attributes; missing ones take defaults (POST, `/`, 127.0.0.1, no scopes, size 0).
    #[serde(default)]
    pub context: Map<String, Value>,
    /// The expected outcome.
    pub expect: Expect,
}

/// The principal of a case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    /// `user` or `service`.
    #[serde(default)]
    pub kind: PrincipalKind,
    /// Entity id (the `sub`).
    pub id: String,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Issuer.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// E-mail.
    #[serde(default)]
    pub email: Option<String>,
}

fn default_issuer() -> String {
    "https://issuer.test".into()
}

/// The expected outcome.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `allow` or `deny`.
    pub decision: String,
    /// The determining policies, when the case pins them.
    #[serde(default)]
    pub policy_ids: Option<Vec<String>>,
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Where the case is.
    pub at: Located,
    /// Whether it passed.
    pub passed: bool,
}

/// Runs every case of one corpus file.
pub fn run(store: &PolicyStore, file: &str, text: &str) -> Result<Vec<Outcome>, Located> {
    let cases: Vec<Case> = serde_json::from_str(text)
        .map_err(|e| Located::new(file, e.line(), format!("not a list of decision cases: {e}")))?;
    Ok(cases.iter().map(|c| check(store, file, text, c)).collect())
}

fn check(store: &PolicyStore, file: &str, text: &str, case: &Case) -> Outcome {
    let line = line_containing(text, &format!("\"{}\"", case.name));
    let mut context = json!({
        "method": "POST", "path": "/", "route": "test",
        "client_ip": {"__extn": {"fn": "ip", "arg": "127.0.0.1"}},
        "time": 1_800_000_000i64, "scopes": [], "issuer": case.principal.issuer, "payload_size": 0, "inference": {},
    });
    if let Some(obj) = context.as_object_mut() {
        for (k, v) in &case.context {
            let v = match (k.as_str(), v) {
                ("client_ip", Value::String(ip)) => json!({"__extn": {"fn": "ip", "arg": ip}}),
                _ => v.clone(),
            };
            obj.insert(k.clone(), v);
        }
    }
    let q = Question {
        kind: case.principal.kind,
        principal: case.principal.id.clone(),
        issuer: case.principal.issuer.clone(),
        email: case.principal.email.clone(),
        groups: case.principal.groups.clone(),
        action: case.action.clone(),
        resource: case.resource.clone(),
        context,
    };
    let d = store.authorize(&q);
    let got = if d.allowed { "allow" } else { "deny" };
    let mut problems = Vec::new();
    if got != case.expect.decision {
        problems.push(format!("expected {}, got {got}", case.expect.decision));
    }
    if let Some(ids) = &case.expect.policy_ids {
        let mut want = ids.clone();
        want.sort();
        if want != d.policy_ids {
            problems.push(format!("expected policies {want:?}, got {:?}", d.policy_ids));
        }
    }
    if !d.errors.is_empty() {
        problems.push(format!("evaluation errors: {}", d.errors.join("; ")));
    }
    let passed = problems.is_empty();
    let message =
        if passed { format!("{} ({got})", case.name) } else { format!("{}: {}", case.name, problems.join("; ")) };
    Outcome { at: Located::new(file, line, message), passed }
}
