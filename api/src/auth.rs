//! JWT authentication (reference §2.11): RS256 and ES256 tokens checked against a JWKS (URL or
//! file), with issuer, audience, expiry and not-before; the caller's identity (a claim, or a
//! header set by a trusted gateway) becomes `created_by`/`updated_by`.
//!
//! Only RS256 and ES256 are accepted, and only with a key of the matching type: `alg: none`,
//! HMAC (including "HS256 signed with the public key") and anything else are refused. Signatures
//! are verified with `ring`, the crypto provider the rest of the service already uses.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use axum::{
    extract::{FromRequestParts, Request, State},
    http::{Method, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::Utc;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{error::ApiError, model::SYSTEM_IDENTITY};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Require a valid bearer token on every `/api/hyperfleet/v1` route except the OpenAPI
    /// document. Also set by `ENABLE_JWT` (as the seed chart does).
    pub enabled: bool,
    /// JWKS URL of the issuer. Also set by `JWKS_URL`.
    pub jwks_url: Option<String>,
    /// JWKS file (instead of, or in addition to, the URL).
    pub jwks_file: Option<PathBuf>,
    /// CA bundle for the JWKS URL (default: the system roots).
    pub jwks_ca_file: Option<PathBuf>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required member of `aud`, when set.
    pub audience: Option<String>,
    /// Claim naming the caller (`email`; `sub` for Kubernetes service-account tokens).
    pub identity_claim: String,
    /// Header a trusted gateway sets with the caller's identity; it wins over the claim.
    pub identity_header: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "hyperfleet_common::config::duration")]
    pub leeway: Duration,
    /// Unknown `kid`s reload the keys at most this often.
    #[serde(with = "hyperfleet_common::config::duration")]
    pub jwks_refresh_interval: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            enabled: false,
            jwks_url: None,
            jwks_file: None,
            jwks_ca_file: None,
            issuer: None,
            audience: None,
            identity_claim: "email".into(),
            identity_header: None,
            leeway: Duration::from_secs(30),
            jwks_refresh_interval: Duration::from_secs(10),
        }
    }
}

impl JwtConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.enabled && self.jwks_url.is_none() && self.jwks_file.is_none() {
            return Err("jwt.enabled needs jwt.jwks_url (JWKS_URL) or jwt.jwks_file".into());
        }
        if let Some(url) = &self.jwks_url
            && !(url.starts_with("https://")
                || url.starts_with("http://127.0.0.1")
                || url.starts_with("http://localhost"))
        {
            return Err(format!("jwt.jwks_url {url:?} must be https (plain http only on loopback)"));
        }
        if self.identity_claim.is_empty() {
            return Err("jwt.identity_claim must not be empty".into());
        }
        Ok(())
    }
}

/// The caller, as the handlers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Identity {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Identity>().cloned().unwrap_or_else(|| Identity(SYSTEM_IDENTITY.into())))
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

/// A verification key.
#[derive(Debug, Clone)]
enum Key {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    P256 { point: Vec<u8> },
}

fn b64(s: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).map_err(|e| format!("bad base64url: {e}"))
}

impl Key {
    fn from_jwk(k: &Jwk) -> Option<Key> {
        match (k.kty.as_str(), k.crv.as_deref()) {
            ("RSA", _) => Some(Key::Rsa { n: b64(k.n.as_deref()?).ok()?, e: b64(k.e.as_deref()?).ok()? }),
            ("EC", Some("P-256")) => {
                let (x, y) = (b64(k.x.as_deref()?).ok()?, b64(k.y.as_deref()?).ok()?);
                (x.len() == 32 && y.len() == 32).then(|| Key::P256 { point: [&[4u8][..], &x, &y].concat() })
            }
            _ => None,
        }
    }

    fn verify(&self, alg: &str, message: &[u8], sig: &[u8]) -> Result<(), String> {
        let ok = match (alg, self) {
            ("RS256", Key::Rsa { n, e }) => {
                RsaPublicKeyComponents { n, e }.verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig).is_ok()
            }
            ("ES256", Key::P256 { point }) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(message, sig).is_ok()
            }
            _ => return Err(format!("the key for this token is not a {alg} key")),
        };
        if ok { Ok(()) } else { Err("signature does not verify".into()) }
    }
}

struct Keys {
    by_kid: HashMap<String, Key>,
    /// Keys without a `kid`.
    anonymous: Vec<Key>,
    loaded: Option<Instant>,
}

/// Verifies tokens; shared by every request.
pub struct Authenticator {
    cfg: JwtConfig,
    keys: RwLock<Keys>,
    refresh: tokio::sync::Mutex<()>,
    http: reqwest::Client,
}

/// Why a request is refused.
#[derive(Debug)]
pub enum AuthError {
    Missing,
    Invalid(String),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => ApiError::Unauthenticated("Authentication required: send a bearer token".into()),
            AuthError::Invalid(why) => ApiError::InvalidToken(format!("Invalid token: {why}")),
        }
    }
}

impl Authenticator {
    pub async fn new(cfg: JwtConfig) -> Result<Arc<Self>, String> {
        cfg.validate()?;
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(ca) = &cfg.jwks_ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("jwt.jwks_ca_file {}: {e}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("jwt.jwks_ca_file: {e}"))? {
                http = http.add_root_certificate(cert);
            }
        }
        let auth = Arc::new(Authenticator {
            keys: RwLock::new(Keys { by_kid: HashMap::new(), anonymous: Vec::new(), loaded: None }),
            refresh: tokio::sync::Mutex::new(()),
            http: http.build().map_err(|e| format!("JWKS HTTP client: {e}"))?,
            cfg,
        });
        // A file must be readable now; an identity provider that is down is retried on demand.
        if let Err(e) = auth.reload().await {
            if auth.cfg.jwks_url.is_none() {
                return Err(e);
            }
            tracing::warn!(error = %e, "JWKS not loaded yet; will retry when a token arrives");
        }
        Ok(auth)
    }

    async fn fetch(&self) -> Result<Vec<Jwk>, String> {
        let mut keys = Vec::new();
        if let Some(path) = &self.cfg.jwks_file {
            let text = std::fs::read_to_string(path).map_err(|e| format!("jwt.jwks_file {}: {e}", path.display()))?;
            let set: JwkSet =
                serde_json::from_str(&text).map_err(|e| format!("jwt.jwks_file {}: {e}", path.display()))?;
            keys.extend(set.keys);
        }
        if let Some(url) = &self.cfg.jwks_url {
            let resp = self.http.get(url).send().await.map_err(|e| format!("JWKS {url}: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("JWKS {url}: HTTP {}", resp.status()));
            }
            let set: JwkSet = resp.json().await.map_err(|e| format!("JWKS {url}: {e}"))?;
            keys.extend(set.keys);
        }
        Ok(keys)
    }

    async fn reload(&self) -> Result<(), String> {
        let jwks = self.fetch().await?;
        let mut next = Keys { by_kid: HashMap::new(), anonymous: Vec::new(), loaded: Some(Instant::now()) };
        for jwk in &jwks {
            match (Key::from_jwk(jwk), &jwk.kid) {
                (Some(key), Some(kid)) => {
                    next.by_kid.insert(kid.clone(), key);
                }
                (Some(key), None) => next.anonymous.push(key),
                (None, _) => tracing::debug!(kty = %jwk.kty, "JWKS key of an unsupported type ignored"),
            }
        }
        tracing::info!(keys = next.by_kid.len() + next.anonymous.len(), "JWKS loaded");
        if let Ok(mut keys) = self.keys.write() {
            *keys = next;
        }
        Ok(())
    }

    fn lookup(&self, kid: Option<&str>) -> Vec<Key> {
        let Ok(keys) = self.keys.read() else { return Vec::new() };
        match kid {
            Some(kid) => keys.by_kid.get(kid).cloned().into_iter().collect(),
            None => keys.by_kid.values().chain(&keys.anonymous).cloned().collect(),
        }
    }

    /// Reloads the keys for an unknown `kid`, at most once per `jwks_refresh_interval`.
    async fn refresh_for_unknown_kid(&self) {
        let _one_at_a_time = self.refresh.lock().await;
        let recent =
            self.keys.read().ok().and_then(|k| k.loaded).is_some_and(|t| t.elapsed() < self.cfg.jwks_refresh_interval);
        if !recent && let Err(e) = self.reload().await {
            tracing::warn!(error = %e, "JWKS reload failed");
        }
    }

    /// Verifies a compact JWS and its claims; returns the claims.
    pub async fn verify(&self, token: &str) -> Result<Map<String, Value>, AuthError> {
        let invalid = |why: &str| AuthError::Invalid(why.to_string());
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(invalid("not a compact JWS (three dot-separated parts)"));
        };
        let header: Map<String, Value> =
            serde_json::from_slice(&b64(h).map_err(|e| invalid(&e))?).map_err(|_| invalid("header is not JSON"))?;
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        if !matches!(alg, "RS256" | "ES256") {
            return Err(AuthError::Invalid(format!("algorithm {alg:?} is not accepted (RS256, ES256)")));
        }
        let kid = header.get("kid").and_then(Value::as_str);
        let sig = b64(s).map_err(|e| invalid(&e))?;
        let message = format!("{h}.{p}");
        let mut candidates = self.lookup(kid);
        if candidates.is_empty() {
            self.refresh_for_unknown_kid().await;
            candidates = self.lookup(kid);
        }
        if candidates.is_empty() {
            return Err(AuthError::Invalid(format!("no signing key {}", kid.unwrap_or("(no kid)"))));
        }
        let mut last = String::new();
        let verified = candidates.iter().any(|k| match k.verify(alg, message.as_bytes(), &sig) {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        });
        if !verified {
            return Err(AuthError::Invalid(last));
        }
        let claims: Map<String, Value> =
            serde_json::from_slice(&b64(p).map_err(|e| invalid(&e))?).map_err(|_| invalid("payload is not JSON"))?;
        self.check_claims(&claims)?;
        Ok(claims)
    }

    fn check_claims(&self, claims: &Map<String, Value>) -> Result<(), AuthError> {
        let now = Utc::now().timestamp();
        let leeway = i64::try_from(self.cfg.leeway.as_secs()).unwrap_or(0);
        let time = |name: &str| claims.get(name).and_then(Value::as_i64);
        match time("exp") {
            None => return Err(AuthError::Invalid("no exp claim".into())),
            Some(exp) if now > exp + leeway => return Err(AuthError::Invalid("token expired".into())),
            _ => {}
        }
        if time("nbf").is_some_and(|nbf| now + leeway < nbf) {
            return Err(AuthError::Invalid("token not yet valid".into()));
        }
        if let Some(iss) = &self.cfg.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(iss)
        {
            return Err(AuthError::Invalid("wrong issuer".into()));
        }
        if let Some(aud) = &self.cfg.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => a == aud,
                Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(aud)),
                _ => false,
            };
            if !ok {
                return Err(AuthError::Invalid("wrong audience".into()));
            }
        }
        Ok(())
    }

    /// The caller's identity: the trusted header if configured and present, else the claim.
    fn identity(&self, parts: &axum::http::HeaderMap, claims: &Map<String, Value>) -> Option<String> {
        let from_header = self
            .cfg
            .identity_header
            .as_deref()
            .and_then(|h| parts.get(h))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let raw =
            from_header.or_else(|| claims.get(&self.cfg.identity_claim).and_then(Value::as_str).map(String::from))?;
        let id = raw.trim();
        (!id.is_empty() && id.chars().count() <= 256 && !id.chars().any(char::is_control)).then(|| id.to_string())
    }
}

/// Middleware: refuses requests without a valid token; records the caller's identity.
pub async fn authenticate(State(auth): State<Arc<Authenticator>>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let Some(token) = token else {
        return ApiError::from(AuthError::Missing).into_response();
    };
    let claims = match auth.verify(&token).await {
        Ok(c) => c,
        Err(e) => {
            metrics::counter!("hyperfleet_api_auth_failures_total").increment(1);
            return ApiError::from(e).into_response();
        }
    };
    match auth.identity(req.headers(), &claims) {
        Some(id) => {
            req.extensions_mut().insert(Identity(id));
        }
        None if req.method() != Method::GET && req.method() != Method::HEAD => {
            return ApiError::from(AuthError::Invalid(format!(
                "no usable identity in claim {:?} for a write",
                auth.cfg.identity_claim
            )))
            .into_response();
        }
        None => {}
    }
    next.run(req).await
}
