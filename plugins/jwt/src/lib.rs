//! OIDC/JWT bearer-token validation as a Gatehouse plugin.
//!
//! Issuers are chosen by the token's `iss` before any key is tried; each issuer has its own audiences,
//! algorithms, clock skew and required claims. Keys come only from the JWKS the host passes in: `jku`, `x5u`
//! and embedded `jwk` headers are refused, as are `alg: none`, every HMAC algorithm and any `crit` header.
#![deny(missing_docs)]

mod claims;
mod config;
mod keys;
mod token;

pub use config::{Config, IssuerConfig};

use gatehouse_plugin_sdk::{AuthnInput, AuthnVerdict, Hook, Manifest, Plugin, PluginError, Refusal, RefusalCode};

/// The plugin.
pub struct Jwt;

impl Plugin for Jwt {
    type Config = Config;

    fn manifest() -> Manifest {
        gatehouse_plugin_sdk::manifest("jwt", "authn", &[Hook::Authenticate], config::schema())
    }

    fn authenticate(config: &Config, input: AuthnInput) -> Result<AuthnVerdict, PluginError> {
        config.check()?;
        Ok(match validate(config, &input) {
            Ok(identity) => AuthnVerdict::Identity(identity),
            Err(refusal) => AuthnVerdict::Refusal(refusal),
        })
    }
}

gatehouse_plugin_sdk::export_plugin!(Jwt);

fn validate(config: &Config, input: &AuthnInput) -> Result<gatehouse_plugin_sdk::Identity, Refusal> {
    let token = token::Parsed::parse(&input.token)?;
    let issuer = token.issuer()?;
    let issuer_cfg = config
        .issuers
        .iter()
        .find(|i| i.issuer == issuer)
        .ok_or_else(|| invalid("the token's issuer is not trusted"))?;
    let alg = token.check_header(issuer_cfg)?;
    let jwks = input.jwks.as_ref().ok_or_else(|| Refusal {
        code: RefusalCode::InvalidToken,
        description: "no signing keys are known for the token's issuer".into(),
        unknown_key: true,
    })?;
    let kid = keys::verify(jwks, alg, token.kid(), token.signing_input(), token.signature())?;
    claims::check(issuer_cfg, &token.claims, input.now, kid)
}

pub(crate) fn invalid(description: impl Into<String>) -> Refusal {
    Refusal { code: RefusalCode::InvalidToken, description: description.into(), unknown_key: false }
}

#[cfg(test)]
mod tests;
