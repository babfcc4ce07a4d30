//! Short-lived upstream credentials: the providers' configuration, the sans-IO flows that obtain a credential
//! (the host performs the reads and HTTP calls a [`Flow`] asks for) and the cache that keeps each credential
//! until just before it expires.
//!
//! Providers:
//! - `gcp_workload_identity`: RFC 8693 token exchange at Google STS, then (optionally) service-account
//!   impersonation with IAM Credentials `generateAccessToken`.
//! - `azure_federated`: Entra ID client-credentials grant with a federated `client_assertion`.
//! - `oauth2_client_credentials`: any OAuth 2.0 token endpoint, with a client secret.
//! - `static_key`: a key read from a file or environment variable, re-read periodically so rotation needs
//!   no restart.
//!
//! Cache rules: a credential is used while `now < expires_at - EXPIRY_MARGIN`; from `refresh_at` (its expiry
//! less `refresh_before_secs`, less a jitter) one request at a time starts a background refresh while the
//! credential keeps serving; a failed refresh keeps the old credential until it expires and is retried after
//! [`RETRY_AFTER_FAILURE`] seconds; an expired credential is never used.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A credential is not used in its last seconds (at most this many, at most a sixth of its lifetime): the
/// upstream call itself takes time.
pub const EXPIRY_MARGIN: i64 = 10;
/// Seconds between refresh attempts while a provider fails.
pub const RETRY_AFTER_FAILURE: i64 = 5;
/// How long one refresh may be under way before another request may start one.
const REFRESH_LEASE: i64 = 30;
/// Largest number of cached credentials (user-delegated credentials are per caller).
const CAPACITY: usize = 10_000;

const GOOGLE_STS: &str = "https://sts.googleapis.com/v1/token";
const GOOGLE_IAM: &str = "https://iamcredentials.googleapis.com";
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const ENTRA: &str = "https://login.microsoftonline.com";
const AZURE_ML_SCOPE: &str = "https://ml.azure.com/.default";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A secret the host reads when a flow asks: a file (re-read at every refresh: Kubernetes projected tokens,
/// mounted secrets) or an environment variable (a Worker binding on Cloudflare).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretSource {
    /// A file's contents (trimmed).
    File(String),
    /// An environment variable's value (trimmed).
    Env(String),
}

/// Where the subject token of a Google token exchange comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SubjectToken {
    /// A file re-read at every refresh (a Kubernetes projected service-account token).
    File(String),
    /// An environment variable.
    Env(String),
    /// An OIDC client-credentials grant at the caller-independent workload's IdP.
    ClientCredentials(ClientCredentials),
    /// The caller's own verified token (user-delegated federation): one credential per caller.
    Caller,
}

/// `[credentials.NAME]`: one provider.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProviderSpec {
    /// Google workload identity federation.
    GcpWorkloadIdentity(Gcp),
    /// Entra ID with a federated assertion.
    AzureFederated(Azure),
    /// A generic OAuth 2.0 client-credentials grant.
    Oauth2ClientCredentials(ClientCredentials),
    /// A key from a file or the environment.
    StaticKey(StaticKey),
}

/// `kind = "gcp_workload_identity"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gcp {
    /// The workload identity pool provider:
    /// `//iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER`.
    pub audience: String,
    /// Where the subject token comes from.
    pub subject_token: SubjectToken,
    /// The subject token's type (default `urn:ietf:params:oauth:token-type:jwt`).
    #[serde(default = "jwt_type")]
    pub subject_token_type: String,
    /// OAuth scope (default cloud-platform).
    #[serde(default = "cloud_platform")]
    pub scope: String,
    /// Impersonate this service account (email) after the exchange; without it the federated token is used
    /// directly (the principal needs direct resource access).
    #[serde(default)]
    pub service_account: Option<String>,
    /// Requested lifetime of the impersonated token (at most 3600 without an org policy change).
    #[serde(default = "hour")]
    pub lifetime_secs: u64,
    /// Google STS token endpoint.
    #[serde(default = "google_sts")]
    pub sts_url: String,
    /// IAM Credentials API base URL.
    #[serde(default = "google_iam")]
    pub iam_url: String,
    /// Refresh this long before expiry.
    #[serde(default = "five_minutes")]
    pub refresh_before_secs: i64,
    /// Time allowed for each HTTP call.
    #[serde(default = "ten_seconds")]
    pub timeout_ms: u64,
}

/// `kind = "azure_federated"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Azure {
    /// Directory (tenant) id.
    pub tenant_id: String,
    /// Application (client) id of the app registration or user-assigned managed identity.
    pub client_id: String,
    /// The federated assertion (e.g. `{ file = "/var/run/secrets/azure/tokens/azure-identity-token" }`).
    pub assertion: SecretSource,
    /// Scope (default `https://ml.azure.com/.default`).
    #[serde(default = "azure_ml_scope")]
    pub scope: String,
    /// Authority host (default the public cloud's).
    #[serde(default = "entra")]
    pub authority: String,
    /// Refresh this long before expiry.
    #[serde(default = "five_minutes")]
    pub refresh_before_secs: i64,
    /// Time allowed for the token call.
    #[serde(default = "ten_seconds")]
    pub timeout_ms: u64,
}

/// `kind = "oauth2_client_credentials"` (and the subject-token grant of `gcp_workload_identity`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCredentials {
    /// Token endpoint.
    pub token_url: String,
    /// Client id.
    pub client_id: String,
    /// Client secret (`client_secret_basic`, `client_secret_post`).
    #[serde(default)]
    pub client_secret: Option<SecretSource>,
    /// RSA private key, PEM (PKCS#8 or PKCS#1), for `private_key_jwt` (RFC 7523): the client signs an RS256
    /// assertion for each token request instead of sending a secret.
    #[serde(default)]
    pub private_key: Option<SecretSource>,
    /// `kid` of the assertion's header (the key's id at the authorization server).
    #[serde(default)]
    pub key_id: Option<String>,
    /// Scope, if the endpoint wants one.
    #[serde(default)]
    pub scope: Option<String>,
    /// `audience` parameter (Auth0, Okta custom servers).
    #[serde(default)]
    pub audience: Option<String>,
    /// `client_secret_basic` (default), `client_secret_post` or `private_key_jwt`.
    #[serde(default = "basic")]
    pub auth_method: String,
    /// Refresh this long before expiry.
    #[serde(default = "five_minutes")]
    pub refresh_before_secs: i64,
    /// Time allowed for the token call.
    #[serde(default = "ten_seconds")]
    pub timeout_ms: u64,
}

/// `kind = "static_key"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticKey {
    /// Where the key is.
    pub key: SecretSource,
    /// Header that carries it (default `authorization`).
    #[serde(default = "authorization")]
    pub header: String,
    /// Text before the key in the header (default `Bearer `).
    #[serde(default = "bearer_prefix")]
    pub prefix: String,
    /// Re-read the key this often, in seconds, so a rotated key is picked up without restart.
    #[serde(default = "minute")]
    pub reread_secs: i64,
}

fn jwt_type() -> String {
    JWT_TOKEN_TYPE.into()
}
fn cloud_platform() -> String {
    CLOUD_PLATFORM.into()
}
fn hour() -> u64 {
    3600
}
fn google_sts() -> String {
    GOOGLE_STS.into()
}
fn google_iam() -> String {
    GOOGLE_IAM.into()
}
fn five_minutes() -> i64 {
    300
}
fn minute() -> i64 {
    60
}
fn ten_seconds() -> u64 {
    10_000
}
fn azure_ml_scope() -> String {
    AZURE_ML_SCOPE.into()
}
fn entra() -> String {
    ENTRA.into()
}
fn basic() -> String {
    "client_secret_basic".into()
}
fn authorization() -> String {
    "authorization".into()
}
fn bearer_prefix() -> String {
    "Bearer ".into()
}

impl ProviderSpec {
    /// The `kind` as written in the configuration.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderSpec::GcpWorkloadIdentity(_) => "gcp_workload_identity",
            ProviderSpec::AzureFederated(_) => "azure_federated",
            ProviderSpec::Oauth2ClientCredentials(_) => "oauth2_client_credentials",
            ProviderSpec::StaticKey(_) => "static_key",
        }
    }

    /// Whether each caller gets its own credential (the caller's token is the subject).
    pub fn per_caller(&self) -> bool {
        matches!(self, ProviderSpec::GcpWorkloadIdentity(Gcp { subject_token: SubjectToken::Caller, .. }))
    }

    /// Checks what serde cannot: URLs, lifetimes, the auth method.
    pub fn validate(&self) -> Result<(), String> {
        let url = |u: &str, what: &str| {
            if u.starts_with("https://") || u.starts_with("http://") {
                Ok(())
            } else {
                Err(format!("{what} must be an http:// or https:// URL"))
            }
        };
        let cc = |c: &ClientCredentials| {
            url(&c.token_url, "token_url")?;
            match (c.auth_method.as_str(), &c.client_secret, &c.private_key) {
                ("client_secret_basic" | "client_secret_post", Some(_), None) | ("private_key_jwt", None, Some(_)) => {
                    Ok(())
                }
                ("client_secret_basic" | "client_secret_post", _, _) => {
                    Err(format!("auth_method `{}` needs `client_secret` and no `private_key`", c.auth_method))
                }
                ("private_key_jwt", _, _) => {
                    Err("auth_method `private_key_jwt` needs `private_key` and no `client_secret`".to_owned())
                }
                _ => Err("auth_method must be `client_secret_basic`, `client_secret_post` or `private_key_jwt`".into()),
            }
        };
        match self {
            ProviderSpec::GcpWorkloadIdentity(g) => {
                url(&g.sts_url, "sts_url")?;
                url(&g.iam_url, "iam_url")?;
                if !g.audience.starts_with("//iam.googleapis.com/") && !g.audience.starts_with("//") {
                    return Err(
                        "audience must be the provider's resource name, `//iam.googleapis.com/projects/…`".into()
                    );
                }
                if !(1..=43_200).contains(&g.lifetime_secs) {
                    return Err("lifetime_secs must be between 1 and 43200".into());
                }
                if let SubjectToken::ClientCredentials(c) = &g.subject_token {
                    cc(c)?;
                }
                Ok(())
            }
            ProviderSpec::AzureFederated(a) => url(&a.authority, "authority"),
            ProviderSpec::Oauth2ClientCredentials(c) => cc(c),
            ProviderSpec::StaticKey(k) if k.reread_secs < 0 => Err("reread_secs must not be negative".into()),
            ProviderSpec::StaticKey(k) if k.header.is_empty() => Err("header must not be empty".into()),
            ProviderSpec::StaticKey(_) => Ok(()),
        }
    }

    /// The secrets this provider reads, with the field that names each: a Workers bundle binds each to an
    /// environment binding.
    pub fn secret_sources(&self) -> Vec<(&'static str, SecretSource)> {
        let cc = |c: &ClientCredentials| {
            let mut v = Vec::new();
            if let Some(s) = &c.client_secret {
                v.push(("client_secret", s.clone()));
            }
            if let Some(s) = &c.private_key {
                v.push(("private_key", s.clone()));
            }
            v
        };
        match self {
            ProviderSpec::GcpWorkloadIdentity(g) => match &g.subject_token {
                SubjectToken::File(p) => vec![("subject_token", SecretSource::File(p.clone()))],
                SubjectToken::Env(e) => vec![("subject_token", SecretSource::Env(e.clone()))],
                SubjectToken::ClientCredentials(c) => cc(c),
                SubjectToken::Caller => vec![],
            },
            ProviderSpec::AzureFederated(a) => vec![("assertion", a.assertion.clone())],
            ProviderSpec::Oauth2ClientCredentials(c) => cc(c),
            ProviderSpec::StaticKey(k) => vec![("key", k.key.clone())],
        }
    }

    fn refresh_before(&self) -> i64 {
        match self {
            ProviderSpec::GcpWorkloadIdentity(g) => g.refresh_before_secs,
            ProviderSpec::AzureFederated(a) => a.refresh_before_secs,
            ProviderSpec::Oauth2ClientCredentials(c) => c.refresh_before_secs,
            ProviderSpec::StaticKey(_) => 0,
        }
    }
}

/// A configured provider.
#[derive(Debug)]
pub struct Provider {
    /// Its name (`[credentials.NAME]`).
    pub name: String,
    /// Its configuration.
    pub spec: ProviderSpec,
}

/// A value that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(v: impl Into<String>) -> Secret {
        Secret(v.into())
    }
    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// An upstream credential: the header to send and what the audit may say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The provider's name.
    pub provider: String,
    /// The provider's kind.
    pub kind: &'static str,
    /// Who the credential speaks for (service account, client id, key source); never the secret.
    pub identity: String,
    /// Header name.
    pub header: String,
    /// Header value (the secret).
    pub value: Secret,
    /// Unix time after which the credential is invalid.
    pub expires_at: i64,
}

/// An HTTP call a flow needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpCall {
    /// Method.
    pub method: String,
    /// URL.
    pub url: String,
    /// Headers (may carry a secret: never log them).
    pub headers: Vec<(String, String)>,
    /// Body.
    #[serde(with = "body_text")]
    pub body: Vec<u8>,
    /// Time allowed for the whole call.
    pub timeout_ms: u64,
}

/// The answer to an [`HttpCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpReply {
    /// Status.
    pub status: u16,
    /// Body (at most 1 MiB).
    #[serde(with = "body_text")]
    pub body: Vec<u8>,
}

mod body_text {
    //! Bodies of token calls are text (form or JSON); serialized as strings for hosts that speak JSON.
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(b))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        String::deserialize(d).map(String::into_bytes)
    }
}

/// What a flow needs from the host next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    /// Read this secret; answer with [`Fed::Read`].
    Read(SecretSource),
    /// Make this call; answer with [`Fed::Http`].
    Http(HttpCall),
    /// The flow is over (the credential, if any, is in the cache).
    Done,
}

/// What the host feeds a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fed {
    /// A secret's value, or why it could not be read.
    Read(Result<String, String>),
    /// The reply, or why the call failed (connection, timeout).
    Http(Result<HttpReply, String>),
}

#[derive(Debug, Clone)]
enum Stage {
    Start,
    /// GCP: reading the subject token (or the secret of its client-credentials grant), then that grant.
    SubjectSecret,
    SubjectGrant,
    Sts,
    Iam,
    /// Azure, OAuth 2.0: reading the assertion or secret, then the token call.
    Secret,
    Token,
    /// Static key.
    Key,
    Done,
}

/// One attempt to obtain a credential. The host drives it with [`Flow::start`] and [`Flow::resume`] until
/// [`Need::Done`]; the result is then in the cache and in [`Flow::outcome`]. Flows with the same
/// [`Flow::key`] obtain the same credential: a host runs one at a time per key and lets the others wait.
#[derive(Clone)]
pub struct Flow {
    provider: Arc<Provider>,
    cache: Arc<CredentialCache>,
    key: String,
    caller_token: Option<Secret>,
    caller_expires: Option<i64>,
    background: bool,
    now: i64,
    entropy: u64,
    jitter: i64,
    stage: Stage,
    subject: Option<Secret>,
    outcome: Option<Result<Arc<Credential>, String>>,
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow").field("provider", &self.provider.name).field("stage", &self.stage).finish()
    }
}

impl Flow {
    /// The cache key of the credential this flow obtains.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The provider's name.
    pub fn provider(&self) -> &str {
        &self.provider.name
    }

    /// The result, once [`Need::Done`] was returned.
    pub fn outcome(&self) -> Option<Result<Arc<Credential>, String>> {
        self.outcome.clone()
    }

    /// The first need. A flow for a missing credential first looks in the cache again: another flow with the
    /// same key may have finished since.
    pub fn start(&mut self) -> Need {
        self.stage = Stage::Start;
        if !self.background
            && let Lookup::Use(cred, _) = self.cache.lookup(&self.key, self.now)
        {
            self.stage = Stage::Done;
            self.outcome = Some(Ok(cred));
            return Need::Done;
        }
        match self.step(None) {
            Ok(need) => need,
            Err(e) => self.fail(e),
        }
    }

    /// Feeds the host's answer to the last need; returns the next.
    pub fn resume(&mut self, fed: Fed) -> Need {
        match self.step(Some(fed)) {
            Ok(need) => need,
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: String) -> Need {
        let message = format!("credential `{}`: {e}", self.provider.name);
        self.cache.failed(&self.key, self.now);
        self.stage = Stage::Done;
        self.outcome = Some(Err(message));
        Need::Done
    }

    fn succeed(&mut self, identity: String, header: String, value: String, expires_at: i64, refresh_at: i64) -> Need {
        // Refresh by the credential's own lifetime; a per-caller credential also ends with the caller's token.
        let refresh_at = refresh_at.min(expires_at.saturating_sub(self.provider.spec.refresh_before() + self.jitter));
        let expires_at = self.caller_expires.map_or(expires_at, |c| expires_at.min(c));
        let cred = Arc::new(Credential {
            provider: self.provider.name.clone(),
            kind: self.provider.spec.kind(),
            identity,
            header,
            value: Secret(value),
            expires_at,
        });
        self.cache.store(&self.key, Arc::clone(&cred), refresh_at.max(self.now), self.now);
        self.stage = Stage::Done;
        self.outcome = Some(Ok(cred));
        Need::Done
    }

    fn step(&mut self, fed: Option<Fed>) -> Result<Need, String> {
        let spec = self.provider.spec.clone();
        match (self.stage.clone(), spec, fed) {
            (Stage::Start, ProviderSpec::GcpWorkloadIdentity(g), None) => match &g.subject_token {
                SubjectToken::File(p) => self.read(Stage::SubjectSecret, SecretSource::File(p.clone())),
                SubjectToken::Env(v) => self.read(Stage::SubjectSecret, SecretSource::Env(v.clone())),
                SubjectToken::ClientCredentials(c) => self.read(Stage::SubjectSecret, c.secret_source()),
                SubjectToken::Caller => {
                    self.subject = self.caller_token.clone();
                    if self.subject.is_none() {
                        return Err("the route's credential needs the caller's token, which is gone".into());
                    }
                    self.sts(&g)
                }
            },
            (Stage::SubjectSecret, ProviderSpec::GcpWorkloadIdentity(g), Some(Fed::Read(r))) => {
                let value = r.map_err(|e| format!("cannot read the subject token source: {e}"))?;
                match &g.subject_token {
                    SubjectToken::ClientCredentials(c) => {
                        self.stage = Stage::SubjectGrant;
                        Ok(Need::Http(client_credentials_call(c, &value, self.now, self.entropy)?))
                    }
                    _ => {
                        self.subject = Some(Secret(value));
                        self.sts(&g)
                    }
                }
            }
            (Stage::SubjectGrant, ProviderSpec::GcpWorkloadIdentity(g), Some(Fed::Http(r))) => {
                let (token, _) = oauth_token(r, "the subject token grant")?;
                self.subject = Some(token);
                self.sts(&g)
            }
            (Stage::Sts, ProviderSpec::GcpWorkloadIdentity(g), Some(Fed::Http(r))) => {
                let (token, expires_in) = oauth_token(r, "Google STS")?;
                let expires_at = self.now + expires_in;
                match &g.service_account {
                    None => {
                        let identity = format!("federated:{}", g.audience);
                        let value = format!("Bearer {}", token.0);
                        Ok(self.succeed(identity, "authorization".into(), value, expires_at, i64::MAX))
                    }
                    Some(sa) => {
                        self.stage = Stage::Iam;
                        let url = format!(
                            "{}/v1/projects/-/serviceAccounts/{}:generateAccessToken",
                            g.iam_url.trim_end_matches('/'),
                            percent_encode(sa)
                        );
                        let body = serde_json::json!({"scope": [g.scope], "lifetime": format!("{}s", g.lifetime_secs)});
                        Ok(Need::Http(HttpCall {
                            method: "POST".into(),
                            url,
                            headers: vec![
                                ("authorization".into(), format!("Bearer {}", token.0)),
                                ("content-type".into(), "application/json".into()),
                                ("accept".into(), "application/json".into()),
                            ],
                            body: body.to_string().into_bytes(),
                            timeout_ms: g.timeout_ms,
                        }))
                    }
                }
            }
            (Stage::Iam, ProviderSpec::GcpWorkloadIdentity(g), Some(Fed::Http(r))) => {
                let reply = r.map_err(|e| format!("IAM Credentials: {e}"))?;
                let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
                if reply.status != 200 {
                    let why = v.pointer("/error/message").and_then(|m| m.as_str()).unwrap_or("no explanation");
                    let status = v.pointer("/error/status").and_then(|m| m.as_str()).unwrap_or("");
                    return Err(format!("IAM Credentials answered {} {status}: {why}", reply.status));
                }
                let token = v.get("accessToken").and_then(|t| t.as_str()).ok_or("IAM Credentials: no accessToken")?;
                let expire = v.get("expireTime").and_then(|t| t.as_str()).ok_or("IAM Credentials: no expireTime")?;
                let expires_at = parse_rfc3339(expire).ok_or("IAM Credentials: unreadable expireTime")?;
                let sa = g.service_account.clone().unwrap_or_default();
                let value = format!("Bearer {token}");
                Ok(self.succeed(sa, "authorization".into(), value, expires_at, i64::MAX))
            }
            (Stage::Start, ProviderSpec::AzureFederated(a), None) => self.read(Stage::Secret, a.assertion.clone()),
            (Stage::Secret, ProviderSpec::AzureFederated(a), Some(Fed::Read(r))) => {
                let assertion = r.map_err(|e| format!("cannot read the federated assertion: {e}"))?;
                self.stage = Stage::Token;
                let form = form(&[
                    ("client_id", &a.client_id),
                    ("scope", &a.scope),
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", &assertion),
                ]);
                let url = format!("{}/{}/oauth2/v2.0/token", a.authority.trim_end_matches('/'), a.tenant_id);
                Ok(Need::Http(form_post(url, form, vec![], a.timeout_ms)))
            }
            (Stage::Token, ProviderSpec::AzureFederated(a), Some(Fed::Http(r))) => {
                let (token, expires_in) = oauth_token(r, "Entra ID")?;
                let value = format!("Bearer {}", token.0);
                Ok(self.succeed(a.client_id.clone(), "authorization".into(), value, self.now + expires_in, i64::MAX))
            }
            (Stage::Start, ProviderSpec::Oauth2ClientCredentials(c), None) => {
                self.read(Stage::Secret, c.secret_source())
            }
            (Stage::Secret, ProviderSpec::Oauth2ClientCredentials(c), Some(Fed::Read(r))) => {
                let secret = r.map_err(|e| format!("cannot read the client secret or key: {e}"))?;
                self.stage = Stage::Token;
                Ok(Need::Http(client_credentials_call(&c, &secret, self.now, self.entropy)?))
            }
            (Stage::Token, ProviderSpec::Oauth2ClientCredentials(c), Some(Fed::Http(r))) => {
                let (token, expires_in) = oauth_token(r, "the token endpoint")?;
                let value = format!("Bearer {}", token.0);
                Ok(self.succeed(c.client_id.clone(), "authorization".into(), value, self.now + expires_in, i64::MAX))
            }
            (Stage::Start, ProviderSpec::StaticKey(k), None) => self.read(Stage::Key, k.key.clone()),
            (Stage::Key, ProviderSpec::StaticKey(k), Some(Fed::Read(r))) => {
                let key = r.map_err(|e| format!("cannot read the key: {e}"))?;
                if key.is_empty() {
                    return Err("the key source is empty".into());
                }
                let identity = match &k.key {
                    SecretSource::File(p) => format!("file:{p}"),
                    SecretSource::Env(v) => format!("env:{v}"),
                };
                let value = format!("{}{key}", k.prefix);
                // A static key does not expire; it is re-read every `reread_secs` and, while the source is
                // unreadable, the last good key keeps serving.
                Ok(self.succeed(identity, k.header.clone(), value, i64::MAX / 2, self.now + k.reread_secs))
            }
            (stage, _, _) => Err(format!("internal: unexpected input at stage {stage:?}")),
        }
    }

    fn read(&mut self, stage: Stage, source: SecretSource) -> Result<Need, String> {
        self.stage = stage;
        Ok(Need::Read(source))
    }

    fn sts(&mut self, g: &Gcp) -> Result<Need, String> {
        let subject = self.subject.take().ok_or("no subject token")?;
        self.stage = Stage::Sts;
        let body = form(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("audience", &g.audience),
            ("scope", &g.scope),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("subject_token", subject.expose()),
            ("subject_token_type", &g.subject_token_type),
        ]);
        Ok(Need::Http(form_post(g.sts_url.clone(), body, vec![], g.timeout_ms)))
    }
}

fn form_post(url: String, body: String, mut headers: Vec<(String, String)>, timeout_ms: u64) -> HttpCall {
    headers.push(("content-type".into(), "application/x-www-form-urlencoded".into()));
    headers.push(("accept".into(), "application/json".into()));
    HttpCall { method: "POST".into(), url, headers, body: body.into_bytes(), timeout_ms }
}

impl ClientCredentials {
    fn secret_source(&self) -> SecretSource {
        self.private_key.clone().or_else(|| self.client_secret.clone()).unwrap_or(SecretSource::Env(String::new()))
    }
}

/// Signs an RFC 7523 client assertion: RS256, `iss` = `sub` = client id, `aud` = token endpoint, five minutes.
pub fn client_assertion(c: &ClientCredentials, pem: &str, now: i64, entropy: u64) -> Result<String, String> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::signature::{SignatureEncoding, Signer};
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|_| "the private key is not an RSA key in PEM (PKCS#8 or PKCS#1)".to_owned())?;
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let (Some(kid), Some(h)) = (&c.key_id, header.as_object_mut()) {
        h.insert("kid".into(), kid.clone().into());
    }
    let jti = crate::audit::sha256_hex(format!("{}\n{now}\n{entropy}", c.client_id).as_bytes());
    let claims = serde_json::json!({"iss": c.client_id, "sub": c.client_id, "aud": c.token_url,
        "iat": now, "nbf": now, "exp": now + 300, "jti": jti});
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key);
    let sig = signer.try_sign(input.as_bytes()).map_err(|_| "signing the client assertion failed".to_owned())?;
    Ok(format!("{input}.{}", b64(&sig.to_bytes())))
}

fn client_credentials_call(c: &ClientCredentials, secret: &str, now: i64, entropy: u64) -> Result<HttpCall, String> {
    let mut params: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
    if let Some(s) = &c.scope {
        params.push(("scope", s));
    }
    if let Some(a) = &c.audience {
        params.push(("audience", a));
    }
    let mut headers = Vec::new();
    let assertion;
    if c.auth_method == "private_key_jwt" {
        assertion = client_assertion(c, secret, now, entropy)?;
        params.push(("client_id", &c.client_id));
        params.push(("client_assertion_type", JWT_BEARER));
        params.push(("client_assertion", &assertion));
    } else if c.auth_method == "client_secret_post" {
        params.push(("client_id", &c.client_id));
        params.push(("client_secret", secret));
    } else {
        // RFC 6749 §2.3.1: both parts form-encoded before base64.
        let pair = format!("{}:{}", percent_encode(&c.client_id), percent_encode(secret));
        let basic = base64::engine::general_purpose::STANDARD.encode(pair);
        headers.push(("authorization".into(), format!("Basic {basic}")));
    }
    Ok(form_post(c.token_url.clone(), form(&params), headers, c.timeout_ms))
}

/// Reads an OAuth 2.0 token response (RFC 6749 §5.1; errors §5.2): the token and its lifetime.
fn oauth_token(r: Result<HttpReply, String>, who: &str) -> Result<(Secret, i64), String> {
    let reply = r.map_err(|e| format!("{who}: {e}"))?;
    let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    if reply.status != 200 {
        let error = v.get("error").and_then(|e| e.as_str()).unwrap_or("no error code");
        let why = v.get("error_description").and_then(|e| e.as_str()).unwrap_or("");
        return Err(format!("{who} answered {}: {error} {why}", reply.status).trim_end().to_owned());
    }
    let token = v.get("access_token").and_then(|t| t.as_str()).ok_or_else(|| format!("{who}: no access_token"))?;
    let expires_in = match v.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        // Entra ID's v1 endpoint and some servers send it as a string.
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("{who}: no expires_in"))?;
    Ok((Secret(token.to_owned()), expires_in))
}

/// `application/x-www-form-urlencoded`.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v))).collect::<Vec<_>>().join("&")
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` (and `±HH:MM` offsets) into Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    if b.len() < 20 || b.get(4) != Some(&b'-') || b.get(10).is_none_or(|c| !matches!(c, b'T' | b't' | b' ')) {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = s.get(19..)?;
    if let Some(frac) = rest.strip_prefix('.') {
        rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (o.get(1..3)?.parse::<i64>().ok()? * 3600 + o.get(4..6)?.parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

#[derive(Debug)]
struct Entry {
    cred: Arc<Credential>,
    usable_until: i64,
    refresh_at: i64,
    /// A refresh is under way (or failed) until then: no other request starts one.
    lease_until: i64,
}

/// The credential cache of one engine.
#[derive(Debug, Default)]
pub struct CredentialCache {
    entries: Mutex<HashMap<String, Entry>>,
}

/// What the cache has for a key.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A credential to use, and whether the caller should start a background refresh.
    Use(Arc<Credential>, bool),
    /// Nothing usable: obtain one now.
    Missing,
}

impl CredentialCache {
    /// Looks `key` up at `now`; when a refresh is due and none is under way, the answer asks the caller to
    /// start one (and leases it to that caller).
    pub fn lookup(&self, key: &str, now: i64) -> Lookup {
        let Ok(mut map) = self.entries.lock() else { return Lookup::Missing };
        match map.get_mut(key) {
            Some(e) if now < e.usable_until => {
                let refresh = now >= e.refresh_at && now >= e.lease_until;
                if refresh {
                    e.lease_until = now + REFRESH_LEASE;
                }
                Lookup::Use(Arc::clone(&e.cred), refresh)
            }
            _ => Lookup::Missing,
        }
    }

    fn store(&self, key: &str, cred: Arc<Credential>, refresh_at: i64, now: i64) {
        let Ok(mut map) = self.entries.lock() else { return };
        if map.len() >= CAPACITY && !map.contains_key(key) {
            map.retain(|_, e| now < e.usable_until);
            if map.len() >= CAPACITY {
                map.clear();
            }
        }
        let margin = EXPIRY_MARGIN.min((cred.expires_at - now) / 6).max(0);
        let usable_until = cred.expires_at - margin;
        map.insert(
            key.to_owned(),
            Entry { cred, usable_until, refresh_at: refresh_at.min(usable_until), lease_until: 0 },
        );
    }

    fn failed(&self, key: &str, now: i64) {
        if let Ok(mut map) = self.entries.lock()
            && let Some(e) = map.get_mut(key)
        {
            e.lease_until = now + RETRY_AFTER_FAILURE;
        }
    }

    /// How many credentials are cached.
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |m| m.len())
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A flow for `provider` under `key`. `caller` is the caller's token and expiry, for per-caller providers.
pub(crate) fn flow(
    provider: Arc<Provider>,
    cache: Arc<CredentialCache>,
    key: String,
    caller: Option<(Secret, i64)>,
    background: bool,
    now: i64,
    entropy: u64,
) -> Flow {
    let margin = provider.spec.refresh_before();
    let jitter = if margin >= 10 { (entropy % (margin as u64 / 10 + 1)) as i64 } else { 0 };
    let (caller_token, caller_expires) = caller.map_or((None, None), |(t, e)| (Some(t), Some(e)));
    Flow {
        provider,
        cache,
        key,
        caller_token,
        caller_expires,
        background,
        now,
        entropy,
        jitter,
        stage: Stage::Start,
        subject: None,
        outcome: None,
    }
}

/// The audit view of the credential a request used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialAudit {
    /// Provider name.
    pub provider: String,
    /// Provider kind.
    pub kind: String,
    /// Who the credential speaks for.
    pub identity: Option<String>,
    /// Its expiry (Unix seconds).
    pub expires_at: Option<i64>,
    /// It came from the cache.
    pub cached: bool,
    /// This request started a background refresh.
    pub refresh_started: bool,
    /// Why none could be had.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2014-10-02T15:01:23Z"), Some(1_412_262_083));
        assert_eq!(parse_rfc3339("2014-10-02T15:01:23.045123456Z"), Some(1_412_262_083));
        assert_eq!(parse_rfc3339("2014-10-02T17:01:23+02:00"), Some(1_412_262_083));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800));
        assert_eq!(parse_rfc3339("2014-13-02T15:01:23Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form(&[("a b", "x/y=z&"), ("k", "é")]), "a%20b=x%2Fy%3Dz%26&k=%C3%A9");
    }

    fn provider(spec: ProviderSpec) -> Arc<Provider> {
        Arc::new(Provider { name: "p".into(), spec })
    }

    fn drive(flow: &mut Flow, mut answer: impl FnMut(&Need) -> Fed) -> Vec<Need> {
        let mut seen = vec![];
        let mut need = flow.start();
        while need != Need::Done {
            let fed = answer(&need);
            seen.push(need);
            need = flow.resume(fed);
        }
        seen
    }

    fn ok(status: u16, body: serde_json::Value) -> Fed {
        Fed::Http(Ok(HttpReply { status, body: body.to_string().into_bytes() }))
    }

    #[test]
    fn gcp_exchange_then_impersonation() {
        let spec: ProviderSpec = toml::from_str(
            r#"kind = "gcp_workload_identity"
               audience = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q"
               subject_token = { file = "/var/run/token" }
               service_account = "sa@proj.iam.gserviceaccount.com"
               refresh_before_secs = 300"#,
        )
        .unwrap();
        spec.validate().unwrap();
        let cache = Arc::new(CredentialCache::default());
        let mut f = flow(provider(spec), Arc::clone(&cache), "k".into(), None, false, 1_000_000, 7);
        let seen = drive(&mut f, |need| match need {
            Need::Read(SecretSource::File(p)) if p == "/var/run/token" => Fed::Read(Ok("subject.jwt".into())),
            Need::Http(c) if c.url == GOOGLE_STS => {
                let body = String::from_utf8(c.body.clone()).unwrap();
                assert!(body.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"));
                assert!(body.contains("subject_token=subject.jwt"));
                ok(
                    200,
                    serde_json::json!({"access_token": "fed", "token_type": "Bearer", "expires_in": 3599,
                    "issued_token_type": ACCESS_TOKEN_TYPE}),
                )
            }
            Need::Http(c) => {
                assert_eq!(
                    c.url,
                    "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/sa%40proj.iam.gserviceaccount.com:generateAccessToken"
                );
                assert!(c.headers.contains(&("authorization".into(), "Bearer fed".into())));
                ok(200, serde_json::json!({"accessToken": "ya29.x", "expireTime": "1970-01-12T14:46:40Z"}))
            }
            n => panic!("unexpected {n:?}"),
        });
        assert_eq!(seen.len(), 3);
        let cred = f.outcome().unwrap().unwrap();
        assert_eq!(cred.value.expose(), "Bearer ya29.x");
        assert_eq!(cred.expires_at, 1_003_600);
        assert!(!format!("{cred:?}").contains("ya29"));
        // Refreshed 300 s (+ jitter 7 % 31) before expiry, unusable in its last 10 s.
        assert!(matches!(cache.lookup("k", 1_003_292), Lookup::Use(_, false)));
        assert!(matches!(cache.lookup("k", 1_003_293), Lookup::Use(_, true)));
        assert!(matches!(cache.lookup("k", 1_003_294), Lookup::Use(_, false)), "one refresh at a time");
        assert!(matches!(cache.lookup("k", 1_003_590), Lookup::Missing));

        // A short-lived credential keeps a sixth of its life as margin and is refreshed before that.
        let cache = CredentialCache::default();
        let cred = Arc::new(Credential {
            provider: "p".into(),
            kind: "static_key",
            identity: "i".into(),
            header: "h".into(),
            value: Secret::new("v"),
            expires_at: 112,
        });
        cache.store("s", cred, 106, 100);
        assert!(matches!(cache.lookup("s", 105), Lookup::Use(_, false)));
        assert!(matches!(cache.lookup("s", 106), Lookup::Use(_, true)));
        cache.failed("s", 106);
        assert!(matches!(cache.lookup("s", 109), Lookup::Use(_, false)), "retry only after RETRY_AFTER_FAILURE");
        assert!(matches!(cache.lookup("s", 110), Lookup::Missing));
    }

    #[test]
    fn errors_name_the_service_and_never_the_secret() {
        let spec: ProviderSpec = toml::from_str(
            r#"kind = "azure_federated"
               tenant_id = "t"
               client_id = "c"
               assertion = { env = "ASSERTION" }"#,
        )
        .unwrap();
        let cache = Arc::new(CredentialCache::default());
        let mut f = flow(provider(spec), cache, "k".into(), None, false, 100, 0);
        drive(&mut f, |need| match need {
            Need::Read(_) => Fed::Read(Ok("very-secret-assertion".into())),
            Need::Http(c) => {
                assert_eq!(c.url, "https://login.microsoftonline.com/t/oauth2/v2.0/token");
                ok(400, serde_json::json!({"error": "invalid_client", "error_description": "AADSTS700024: expired"}))
            }
            Need::Done => unreachable!(),
        });
        let e = f.outcome().unwrap().unwrap_err();
        assert_eq!(e, "credential `p`: Entra ID answered 400: invalid_client AADSTS700024: expired");
        assert!(!e.contains("very-secret"));
    }
}
