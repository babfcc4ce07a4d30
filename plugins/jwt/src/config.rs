//! The plugin's configuration.

use gatehouse_plugin_sdk::PluginError;
use serde::Deserialize;

/// Configuration: the trusted issuers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Trusted issuers, matched exactly against `iss`.
    pub issuers: Vec<IssuerConfig>,
}

/// One trusted issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values; the token must name at least one.
    pub audiences: Vec<String>,
    /// Accepted signature algorithms.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Tolerated clock difference for `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_skew")]
    pub clock_skew_secs: i64,
    /// Claims that must be present.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// The claim that holds groups or roles.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// The claim that holds scopes; by default `scope`, then `scp`.
    #[serde(default)]
    pub scopes_claim: Option<String>,
    /// When this claim has this value, the caller is a service rather than a user.
    #[serde(default)]
    pub service_when: Option<ClaimEquals>,
}

/// A claim compared with a string.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimEquals {
    /// Claim name.
    pub claim: String,
    /// Expected value.
    pub equals: String,
}

/// Algorithms this plugin can verify.
pub const SUPPORTED: [&str; 7] = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"];

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}
fn default_skew() -> i64 {
    60
}
fn default_groups_claim() -> String {
    "groups".into()
}

impl Config {
    /// Refuses configurations that would weaken validation.
    pub fn check(&self) -> Result<(), PluginError> {
        if self.issuers.is_empty() {
            return Err(bad("no issuer is configured"));
        }
        for i in &self.issuers {
            if i.audiences.is_empty() {
                return Err(bad(format!("issuer `{}` has no audiences", i.issuer)));
            }
            if i.algorithms.is_empty() {
                return Err(bad(format!("issuer `{}` allows no algorithm", i.issuer)));
            }
            if let Some(a) = i.algorithms.iter().find(|a| !SUPPORTED.contains(&a.as_str())) {
                return Err(bad(format!("issuer `{}`: algorithm `{a}` is not supported", i.issuer)));
            }
            if !(0..=600).contains(&i.clock_skew_secs) {
                return Err(bad(format!("issuer `{}`: clock_skew_secs must be 0..=600", i.issuer)));
            }
        }
        Ok(())
    }
}

fn bad(msg: impl Into<String>) -> PluginError {
    PluginError::new("bad_config", msg)
}

/// The JSON description of the configuration, for the manifest.
pub fn schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "required": ["issuers"],
        "properties": {
            "issuers": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["issuer", "audiences"],
                    "properties": {
                        "issuer": {"type": "string"},
                        "audiences": {"type": "array", "items": {"type": "string"}},
                        "algorithms": {"type": "array", "items": {"enum": SUPPORTED}, "default": ["RS256"]},
                        "clock_skew_secs": {"type": "integer", "minimum": 0, "maximum": 600, "default": 60},
                        "required_claims": {"type": "array", "items": {"type": "string"}},
                        "groups_claim": {"type": "string", "default": "groups"},
                        "scopes_claim": {"type": "string"},
                        "service_when": {"type": "object", "properties": {"claim": {"type": "string"}, "equals": {"type": "string"}}}
                    }
                }
            }
        }
    })
}
