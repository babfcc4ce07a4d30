//! Unit tests: tokens minted with `jsonwebtoken` and the test keys in `tests/keys`.

use super::*;
use gatehouse_plugin_sdk::AuthnInput;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

const NOW: i64 = 1_800_000_000;
const ISS: &str = "https://idp.test";

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/../../tests/keys/{name}.pem", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn jwks() -> Value {
    let text = std::fs::read_to_string(format!("{}/../../tests/keys/jwks.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn config() -> Config {
    serde_json::from_value(json!({"issuers": [{
        "issuer": ISS, "audiences": ["api://gatehouse"],
        "algorithms": ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"],
        "required_claims": ["email"],
        "service_when": {"claim": "idtyp", "equals": "app"}
    }]}))
    .unwrap()
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "alice", "aud": "api://gatehouse", "exp": NOW + 300, "iat": NOW - 10,
           "nbf": NOW - 10, "email": "alice@example.com", "groups": ["data-scientists"], "scope": "predict read",
           "jti": "j-1"})
}

fn mint(alg: Algorithm, kid: &str, claims: &Value) -> String {
    let pem = key_file(kid);
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    encode(&header, claims, &key).unwrap()
}

fn run(token: String) -> AuthnVerdict {
    let input = AuthnInput { token, now: NOW, jwks: Some(jwks()) };
    Jwt::authenticate(&config(), input).unwrap()
}

fn refused(token: String) -> Refusal {
    match run(token) {
        AuthnVerdict::Refusal(r) => r,
        AuthnVerdict::Identity(i) => panic!("accepted: {i:?}"),
    }
}

/// Builds a token by hand from a header, claims and raw signature bytes.
fn forge(header: Value, claims: &Value, sig: &[u8]) -> String {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!("{}.{}.{}", e.encode(header.to_string()), e.encode(claims.to_string()), e.encode(sig))
}

#[test]
fn every_algorithm_verifies() {
    for (alg, kid) in [
        (Algorithm::RS256, "rsa1"),
        (Algorithm::RS384, "rsa1"),
        (Algorithm::RS512, "rsa2"),
        (Algorithm::PS256, "rsa2"),
        (Algorithm::ES256, "ec256"),
        (Algorithm::ES384, "ec384"),
        (Algorithm::EdDSA, "ed25519"),
    ] {
        match run(mint(alg, kid, &claims())) {
            AuthnVerdict::Identity(id) => {
                assert_eq!(id.subject, "alice");
                assert_eq!(id.kid.as_deref(), Some(kid));
                assert_eq!(id.groups, vec!["data-scientists"]);
                assert_eq!(id.scopes, vec!["predict", "read"]);
                assert_eq!(id.kind, gatehouse_plugin_sdk::PrincipalKind::User);
            }
            AuthnVerdict::Refusal(r) => panic!("{alg:?} refused: {}", r.description),
        }
    }
}

#[test]
fn time_claims_are_checked_with_skew() {
    let mut c = claims();
    c["exp"] = json!(NOW - 61);
    assert!(refused(mint(Algorithm::RS256, "rsa1", &c)).description.contains("expired"));
    c["exp"] = json!(NOW - 59);
    assert!(matches!(run(mint(Algorithm::RS256, "rsa1", &c)), AuthnVerdict::Identity(_)));
    let mut c = claims();
    c["nbf"] = json!(NOW + 120);
    assert!(refused(mint(Algorithm::RS256, "rsa1", &c)).description.contains("not valid yet"));
    let mut c = claims();
    c["iat"] = json!(NOW + 120);
    assert!(refused(mint(Algorithm::RS256, "rsa1", &c)).description.contains("future"));
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert!(refused(mint(Algorithm::RS256, "rsa1", &c)).description.contains("`exp`"));
}

#[test]
fn issuer_audience_and_required_claims() {
    let mut c = claims();
    c["iss"] = json!("https://evil.test");
    assert!(refused(mint(Algorithm::RS256, "rsa1", &c)).description.contains("issuer"));
    let mut c = claims();
    c["aud"] = json!(["other", "api://nope"]);
    assert!(refused(mint(Algorithm::RS256, "rsa1", &c)).description.contains("audience"));
    let mut c = claims();
    c["aud"] = json!(["other", "api://gatehouse"]);
    assert!(matches!(run(mint(Algorithm::RS256, "rsa1", &c)), AuthnVerdict::Identity(_)));
    let mut c = claims();
    c.as_object_mut().unwrap().remove("email");
    assert!(refused(mint(Algorithm::RS256, "rsa1", &c)).description.contains("`email`"));
}

#[test]
fn service_principals_are_recognised() {
    let mut c = claims();
    c["idtyp"] = json!("app");
    match run(mint(Algorithm::ES256, "ec256", &c)) {
        AuthnVerdict::Identity(id) => assert_eq!(id.kind, gatehouse_plugin_sdk::PrincipalKind::Service),
        AuthnVerdict::Refusal(r) => panic!("{}", r.description),
    }
}

#[test]
fn bad_signature_is_refused() {
    let token = mint(Algorithm::RS256, "rsa1", &claims());
    let (rest, sig) = token.rsplit_once('.').unwrap();
    let mut sig: Vec<char> = sig.chars().collect();
    sig[10] = if sig[10] == 'A' { 'B' } else { 'A' };
    let tampered = format!("{rest}.{}", sig.into_iter().collect::<String>());
    assert!(refused(tampered).description.contains("signature"));
    // Signed by rsa2 but claiming rsa1's kid.
    let other = mint(Algorithm::RS256, "rsa2", &claims());
    let (_, sig2) = other.rsplit_once('.').unwrap();
    assert!(refused(format!("{rest}.{sig2}")).description.contains("signature"));
}

#[test]
fn dangerous_headers_are_refused() {
    let c = claims();
    assert!(refused(forge(json!({"alg": "none"}), &c, b"")).description.contains("none"));
    assert!(refused(forge(json!({"alg": "NONE", "kid": "rsa1"}), &c, b"")).description.contains("none"));
    // HS256 "signed" with the RSA public key as the HMAC secret: refused before any key is tried.
    let hs = {
        let secret = serde_json::to_vec(&jwks()["keys"][0]).unwrap();
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("rsa1".into());
        encode(&h, &c, &EncodingKey::from_secret(&secret)).unwrap()
    };
    assert!(refused(hs).description.contains("symmetric"));
    for extra in [
        json!({"crit": ["exp"]}),
        json!({"jku": "https://evil/jwks"}),
        json!({"x5u": "https://evil"}),
        json!({"jwk": {"kty": "OKP"}}),
    ] {
        let mut header = json!({"alg": "RS256", "kid": "rsa1"});
        header.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let token = mint(Algorithm::RS256, "rsa1", &c);
        let sig = token.rsplit_once('.').unwrap().1;
        use base64::Engine as _;
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig).unwrap();
        let r = refused(forge(header, &c, &sig));
        assert_eq!(r.code, gatehouse_plugin_sdk::RefusalCode::InvalidToken);
        assert!(!r.unknown_key);
    }
}

#[test]
fn unknown_kid_asks_for_fresh_keys() {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rotated".into());
    let token = encode(&h, &claims(), &EncodingKey::from_rsa_pem(&key_file("rsa1")).unwrap()).unwrap();
    let r = refused(token);
    assert!(r.unknown_key, "{r:?}");
}

#[test]
fn algorithm_must_be_allowed_for_the_issuer() {
    let mut cfg = config();
    cfg.issuers[0].algorithms = vec!["ES256".into()];
    let input = AuthnInput { token: mint(Algorithm::RS256, "rsa1", &claims()), now: NOW, jwks: Some(jwks()) };
    match Jwt::authenticate(&cfg, input).unwrap() {
        AuthnVerdict::Refusal(r) => assert!(r.description.contains("not allowed")),
        AuthnVerdict::Identity(_) => panic!("accepted"),
    }
}

#[test]
fn garbage_is_refused_not_a_crash() {
    for t in ["", "a.b", "a.b.c.d", "!!.??.**", "eyJ9.eyJ9.", "e30.e30.", "W10.e30.AA"] {
        refused(t.to_owned());
    }
}

#[test]
fn weak_configurations_are_rejected() {
    let cfg: Config = serde_json::from_value(json!({"issuers": [{"issuer": ISS, "audiences": []}]})).unwrap();
    assert_eq!(cfg.check().unwrap_err().code, "bad_config");
    let cfg: Config =
        serde_json::from_value(json!({"issuers": [{"issuer": ISS, "audiences": ["a"], "algorithms": ["HS256"]}]}))
            .unwrap();
    assert_eq!(cfg.check().unwrap_err().code, "bad_config");
}

/// Regenerates `tests/corpus/*.json` from native runs: `cargo test -p gatehouse-plugin-jwt -- --ignored bless`.
/// The host's corpus test then checks that the wasm module answers exactly the same.
#[test]
#[ignore]
fn bless_corpus() {
    let dir = format!("{}/tests/corpus", env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = serde_json::to_value(json!({"issuers": [{
        "issuer": ISS, "audiences": ["api://gatehouse"],
        "algorithms": ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"],
        "groups_claim": "groups"
    }]}))
    .unwrap();
    let mut expired = claims();
    expired["exp"] = json!(NOW - 3600);
    let mut wrong_aud = claims();
    wrong_aud["aud"] = json!("api://other");
    let cases = vec![
        ("rs256-valid", mint(Algorithm::RS256, "rsa1", &claims())),
        ("ps256-valid", mint(Algorithm::PS256, "rsa2", &claims())),
        ("es256-valid", mint(Algorithm::ES256, "ec256", &claims())),
        ("es384-valid", mint(Algorithm::ES384, "ec384", &claims())),
        ("eddsa-valid", mint(Algorithm::EdDSA, "ed25519", &claims())),
        ("expired", mint(Algorithm::RS256, "rsa1", &expired)),
        ("wrong-audience", mint(Algorithm::ES256, "ec256", &wrong_aud)),
        ("alg-none", forge(json!({"alg": "none"}), &claims(), b"")),
    ];
    for (name, token) in cases {
        let input = json!({"token": token, "now": NOW, "jwks": jwks()});
        let out = gatehouse_plugin_sdk::rt::call(
            &serde_json::to_vec(&cfg).unwrap(),
            &serde_json::to_vec(&input).unwrap(),
            Jwt::authenticate,
        );
        let case = json!({"hook": "authenticate", "config": cfg, "input": input, "expect": out});
        std::fs::write(format!("{dir}/{name}.json"), serde_json::to_string_pretty(&case).unwrap() + "\n").unwrap();
    }
}
