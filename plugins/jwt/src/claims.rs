//! Claim checks and the identity they produce.

use crate::config::IssuerConfig;
use crate::invalid;
use gatehouse_plugin_sdk::{Identity, PrincipalKind, Refusal};
use serde_json::{Map, Value};

/// Checks time, audience and required claims, then builds the identity.
pub fn check(
    cfg: &IssuerConfig,
    claims: &Map<String, Value>,
    now: i64,
    kid: Option<String>,
) -> Result<Identity, Refusal> {
    let skew = cfg.clock_skew_secs;
    let exp = numeric(claims, "exp")?.ok_or_else(|| invalid("the token has no `exp` claim"))?;
    if now > exp.saturating_add(skew) {
        return Err(invalid("the token has expired"));
    }
    if let Some(nbf) = numeric(claims, "nbf")?
        && now.saturating_add(skew) < nbf
    {
        return Err(invalid("the token is not valid yet (`nbf`)"));
    }
    if let Some(iat) = numeric(claims, "iat")?
        && now.saturating_add(skew) < iat
    {
        return Err(invalid("the token was issued in the future (`iat`)"));
    }
    let audiences = list(claims.get("aud"));
    if !audiences.iter().any(|a| cfg.audiences.iter().any(|c| c == a)) {
        return Err(invalid("the token is not meant for this audience"));
    }
    if let Some(missing) = cfg.required_claims.iter().find(|c| !claims.contains_key(c.as_str())) {
        return Err(invalid(format!("the token lacks the required claim `{missing}`")));
    }
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("the token has no `sub` claim"))?;
    let scopes = match &cfg.scopes_claim {
        Some(name) => strings(claims.get(name)),
        None => strings(claims.get("scope").or_else(|| claims.get("scp"))),
    };
    let kind = match &cfg.service_when {
        Some(rule) if claims.get(&rule.claim).and_then(Value::as_str) == Some(rule.equals.as_str()) => {
            PrincipalKind::Service
        }
        _ => PrincipalKind::User,
    };
    Ok(Identity {
        issuer: cfg.issuer.clone(),
        subject: subject.to_owned(),
        kind,
        groups: strings(claims.get(&cfg.groups_claim)),
        scopes,
        kid,
        jti: claims.get("jti").and_then(Value::as_str).map(str::to_owned),
        expires_at: exp,
        claims: claims.clone(),
    })
}

/// A NumericDate claim: absent, or a number (fractions truncated).
fn numeric(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, Refusal> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| invalid(format!("the token's `{name}` claim is not a number"))),
    }
}

/// A claim that is one string or an array of strings (`aud`).
fn list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        other => strings(other),
    }
}

/// A claim that is a string, a space-separated string or an array of strings.
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}
