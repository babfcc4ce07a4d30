//! Splitting and decoding a compact JWS, and the header checks that come before any key is tried.

use crate::config::IssuerConfig;
use crate::invalid;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_plugin_sdk::Refusal;
use serde_json::{Map, Value};

/// A token split and decoded, not yet verified.
pub struct Parsed<'t> {
    header: Map<String, Value>,
    pub claims: Map<String, Value>,
    signing_input: &'t str,
    signature: Vec<u8>,
}

const MAX_TOKEN_LEN: usize = 16 * 1024;

impl<'t> Parsed<'t> {
    pub fn parse(token: &'t str) -> Result<Self, Refusal> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid("the token is too long"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(invalid("the token is not a compact JWS (three base64url parts)"));
        };
        let header = decode_object(h, "header")?;
        let claims = decode_object(p, "payload")?;
        let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| invalid("the token's signature is not base64url"))?;
        let signing_input = token.get(..h.len() + 1 + p.len()).unwrap_or_default();
        Ok(Parsed { header, claims, signing_input, signature })
    }

    pub fn issuer(&self) -> Result<&str, Refusal> {
        self.claims.get("iss").and_then(Value::as_str).ok_or_else(|| invalid("the token has no `iss` claim"))
    }

    /// Checks the header against the issuer's rules and returns the algorithm.
    pub fn check_header(&self, issuer: &IssuerConfig) -> Result<&str, Refusal> {
        let alg =
            self.header.get("alg").and_then(Value::as_str).ok_or_else(|| invalid("the token header has no `alg`"))?;
        if alg.eq_ignore_ascii_case("none") {
            return Err(invalid("unsigned tokens (`alg: none`) are refused"));
        }
        if alg.starts_with("HS") {
            return Err(invalid(format!("symmetric algorithm `{alg}` is refused")));
        }
        if !issuer.algorithms.iter().any(|a| a == alg) {
            return Err(invalid(format!("algorithm `{alg}` is not allowed for this issuer")));
        }
        if self.header.contains_key("crit") {
            return Err(invalid("the token has critical header extensions this gateway does not understand"));
        }
        for name in ["jku", "x5u", "jwk"] {
            if self.header.contains_key(name) {
                return Err(invalid(format!("header `{name}` is refused: keys come only from the issuer's JWKS")));
            }
        }
        if let Some(typ) = self.header.get("typ").and_then(Value::as_str) {
            let t = typ.to_ascii_lowercase();
            if !matches!(t.as_str(), "jwt" | "at+jwt" | "application/jwt" | "application/at+jwt") {
                return Err(invalid(format!("token type `{typ}` is not accepted")));
            }
        }
        Ok(alg)
    }

    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }

    pub fn signing_input(&self) -> &[u8] {
        self.signing_input.as_bytes()
    }

    pub fn signature(&self) -> &[u8] {
        &self.signature
    }
}

fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, Refusal> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| invalid(format!("the token {what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(invalid(format!("the token {what} is not a JSON object"))),
    }
}
