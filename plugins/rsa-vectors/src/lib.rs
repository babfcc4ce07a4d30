//! A test plugin: the RSA verification the JWT plugin uses (`gatehouse-rsa`), behind the `authenticate` hook,
//! so signature test vectors (Wycheproof) run through the very code a built plugin runs: wasm32 with `simd128`,
//! whose inner loops differ from the native build's. Never configure it in production.
//!
//! The vector travels in the input's `jwks` member: `{"alg": "RS256" | "RS384" | "RS512" | "PS256", "n", "e",
//! "msg", "sig"}`, byte strings in unpadded base64url, and optionally `"repeat": N` to verify N times in the
//! one call (the benchmark's way to time the verification without the call around it). A signature that
//! verifies gives an identity with subject `verified`; any other gives an `invalid_token` refusal.
#![deny(missing_docs)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_plugin_sdk::{
    AuthnInput, AuthnVerdict, Hook, Identity, Manifest, Plugin, PluginError, PrincipalKind, Refusal, RefusalCode,
};
use gatehouse_rsa::{PublicKey, verify_jws};
use serde::Deserialize;

/// The plugin.
pub struct RsaVectors;

/// Configuration: none.
#[derive(Debug, Deserialize)]
pub struct Config {}

/// One test vector.
#[derive(Debug, Deserialize)]
struct Vector {
    alg: String,
    n: String,
    e: String,
    msg: String,
    sig: String,
    #[serde(default)]
    repeat: Option<u32>,
}

impl Plugin for RsaVectors {
    type Config = Config;

    fn manifest() -> Manifest {
        gatehouse_plugin_sdk::manifest(
            "rsa-vectors",
            "authn",
            &[Hook::Authenticate],
            gatehouse_plugin_sdk::serde_json::json!({"type": "object"}),
        )
    }

    fn authenticate(_: &Config, input: AuthnInput) -> Result<AuthnVerdict, PluginError> {
        let bad = |what: &str| PluginError::new("invalid_input", format!("the vector's {what} is malformed"));
        let v: Vector = serde_json::from_value(input.jwks.unwrap_or_default()).map_err(|_| bad("shape"))?;
        let bytes = |name: &str, s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|_| bad(name));
        let (n, e, msg, sig) = (bytes("n", &v.n)?, bytes("e", &v.e)?, bytes("msg", &v.msg)?, bytes("sig", &v.sig)?);
        let once = || {
            let (n, e, msg, sig) = core::hint::black_box((&n, &e, &msg, &sig));
            PublicKey::new(n, e).is_ok_and(|key| verify_jws(&v.alg, &key, msg, sig) == Some(true))
        };
        let verified = (0..v.repeat.unwrap_or(1).max(1)).fold(true, |all, _| once() && all);
        Ok(if verified {
            AuthnVerdict::Identity(Identity {
                issuer: "rsa-vectors".into(),
                subject: "verified".into(),
                kind: PrincipalKind::default(),
                groups: vec![],
                scopes: vec![],
                kid: None,
                jti: None,
                expires_at: 0,
                claims: Default::default(),
            })
        } else {
            AuthnVerdict::Refusal(Refusal {
                code: RefusalCode::InvalidToken,
                description: "the signature does not verify".into(),
                unknown_key: false,
            })
        })
    }
}

gatehouse_plugin_sdk::export_plugin!(RsaVectors);
