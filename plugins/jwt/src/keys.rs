//! Choosing keys from a JWKS and verifying a signature with them.

use crate::invalid;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_plugin_sdk::{Refusal, RefusalCode};
use serde_json::Value;

/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// Verifies `signature` over `input` with a key of `jwks` fit for `alg` (the one named `kid`, if given).
/// Returns the `kid` of the key that verified.
pub fn verify(
    jwks: &Value,
    alg: &str,
    kid: Option<&str>,
    input: &[u8],
    signature: &[u8],
) -> Result<Option<String>, Refusal> {
    let keys =
        jwks.get("keys").and_then(Value::as_array).ok_or_else(|| invalid("the issuer's key set is malformed"))?;
    let candidates: Vec<&Value> = keys
        .iter()
        .filter(|k| kid.is_none() || k.get("kid").and_then(Value::as_str) == kid)
        .filter(|k| fits(k, alg))
        .collect();
    if candidates.is_empty() {
        return Err(Refusal {
            code: RefusalCode::InvalidToken,
            description: match kid {
                Some(_) => "the token's signing key (`kid`) is not in the issuer's key set".into(),
                None => "no key in the issuer's key set fits the token's algorithm".into(),
            },
            unknown_key: true,
        });
    }
    let mut last_problem = None;
    for key in candidates {
        match verify_with(key, alg, input, signature) {
            Ok(()) => return Ok(key.get("kid").and_then(Value::as_str).map(str::to_owned)),
            Err(problem) => last_problem = Some(problem),
        }
    }
    Err(invalid(last_problem.unwrap_or("the token's signature is invalid")))
}

/// Whether a JWK may be used with `alg`.
fn fits(key: &Value, alg: &str) -> bool {
    let s = |name: &str| key.get(name).and_then(Value::as_str);
    if s("use").is_some_and(|u| u != "sig") {
        return false;
    }
    if s("alg").is_some_and(|a| a != alg) {
        return false;
    }
    matches!(
        (alg, s("kty"), s("crv")),
        ("RS256" | "RS384" | "RS512" | "PS256", Some("RSA"), _)
            | ("ES256", Some("EC"), Some("P-256"))
            | ("ES384", Some("EC"), Some("P-384"))
            | ("EdDSA", Some("OKP"), Some("Ed25519"))
    )
}

fn member(key: &Value, name: &str) -> Result<Vec<u8>, &'static str> {
    key.get(name)
        .and_then(Value::as_str)
        .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
        .ok_or("a key in the issuer's key set is malformed")
}

fn verify_with(key: &Value, alg: &str, input: &[u8], sig: &[u8]) -> Result<(), &'static str> {
    const BAD_SIG: &str = "the token's signature is invalid";
    match alg {
        "RS256" | "RS384" | "RS512" | "PS256" => {
            let public = gatehouse_rsa::PublicKey::new(&member(key, "n")?, &member(key, "e")?)?;
            if public.bits() < MIN_RSA_BITS {
                return Err("the issuer's RSA key is shorter than 2048 bits");
            }
            (gatehouse_rsa::verify_jws(alg, &public, input, sig) == Some(true)).then_some(()).ok_or(BAD_SIG)
        }
        "ES256" => {
            use p256::ecdsa::signature::Verifier;
            let point = ec_point::<p256::NistP256>(key, 32)?;
            let vk = p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                .map_err(|_| "an EC key in the key set is invalid")?;
            let s = p256::ecdsa::Signature::from_slice(sig).map_err(|_| BAD_SIG)?;
            vk.verify(input, &s).map_err(|_| BAD_SIG)
        }
        "ES384" => {
            use p384::ecdsa::signature::Verifier;
            let point = ec_point::<p384::NistP384>(key, 48)?;
            let vk = p384::ecdsa::VerifyingKey::from_encoded_point(&point)
                .map_err(|_| "an EC key in the key set is invalid")?;
            let s = p384::ecdsa::Signature::from_slice(sig).map_err(|_| BAD_SIG)?;
            vk.verify(input, &s).map_err(|_| BAD_SIG)
        }
        "EdDSA" => {
            let x: [u8; 32] = member(key, "x")?.try_into().map_err(|_| "an Ed25519 key in the key set is invalid")?;
            let vk =
                ed25519_dalek::VerifyingKey::from_bytes(&x).map_err(|_| "an Ed25519 key in the key set is invalid")?;
            let s = ed25519_dalek::Signature::from_slice(sig).map_err(|_| BAD_SIG)?;
            vk.verify_strict(input, &s).map_err(|_| BAD_SIG)
        }
        _ => Err("unsupported algorithm"),
    }
}

fn ec_point<C>(key: &Value, size: usize) -> Result<elliptic_curve_point::Point<C>, &'static str>
where
    C: elliptic_curve_point::Curve,
{
    let x = member(key, "x")?;
    let y = member(key, "y")?;
    if x.len() != size || y.len() != size {
        return Err("an EC key in the key set has coordinates of the wrong size");
    }
    elliptic_curve_point::from_xy::<C>(&x, &y)
}

/// Building uncompressed SEC1 points for either curve.
mod elliptic_curve_point {
    pub use p256::elliptic_curve::sec1::EncodedPoint as Point;
    pub use p256::elliptic_curve::sec1::ModulusSize;
    pub trait Curve: p256::elliptic_curve::Curve<FieldBytesSize: ModulusSize> {}
    impl<C: p256::elliptic_curve::Curve<FieldBytesSize: ModulusSize>> Curve for C {}

    pub fn from_xy<C: Curve>(x: &[u8], y: &[u8]) -> Result<Point<C>, &'static str> {
        let mut sec1 = Vec::with_capacity(1 + x.len() + y.len());
        sec1.push(0x04);
        sec1.extend_from_slice(x);
        sec1.extend_from_slice(y);
        Point::<C>::from_bytes(&sec1).map_err(|_| "an EC key in the key set is invalid")
    }
}
