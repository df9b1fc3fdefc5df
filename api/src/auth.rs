//! JWT authentication (reference §2.11): RS256 and ES256 tokens checked against the JWKS (URL or
//! file) of the issuer their `iss` names — one or several issuers, e.g. the cluster's own
//! ServiceAccount issuer beside an external IdP — with issuer, audience, expiry and not-before; the
//! caller's identity (a claim, or a header set by a gateway on a trusted connection) becomes
//! `created_by`/`updated_by`, and [`crate::authz`] decides what it may do.
//!
//! Only RS256 and ES256 are accepted, and only with a key of the matching type: `alg: none`,
//! HMAC (including "HS256 signed with the public key") and anything else are refused. Signatures
//! are verified with `ring`, the crypto provider the rest of the service already uses.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, FromRequestParts, Request, State},
    http::request::Parts,
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::Utc;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{
    authz::{Action, AuthzConfig},
    domain::model::SYSTEM_IDENTITY,
    error::ApiError,
};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Require a valid bearer token on every `/api/hyperfleet/v1` route except the OpenAPI
    /// document. Also set by `ENABLE_JWT` (as the seed chart does).
    pub enabled: bool,
    /// JWKS URL of the issuer. Also set by `JWKS_URL`. (This and the next six keys describe one
    /// issuer; `issuers` adds more.)
    pub jwks_url: Option<String>,
    /// JWKS file (instead of, or in addition to, the URL).
    pub jwks_file: Option<PathBuf>,
    /// CA bundle for the JWKS URL (default: the system roots).
    pub jwks_ca_file: Option<PathBuf>,
    /// Bearer token sent with the JWKS request, read at each fetch (the kube-apiserver serves its
    /// keys only to authenticated callers: a projected ServiceAccount token).
    pub jwks_token_file: Option<PathBuf>,
    /// Required `iss` (required when enabled).
    pub issuer: Option<String>,
    /// Required member of `aud` (required when enabled).
    pub audience: Option<String>,
    /// Claim naming the caller (`email`; `sub` for Kubernetes service-account tokens).
    pub identity_claim: String,
    /// Claim listing the caller's groups (a string array), which `authz.rules[].groups` match.
    pub groups_claim: String,
    /// The top-level issuer is a Kubernetes ServiceAccount issuer: only such an issuer's callers may
    /// have identities starting with `system:` (see [`IssuerConfig::kubernetes`]).
    pub kubernetes: bool,
    /// More issuers, each with its own keys, audience and identity claim; a token is checked
    /// against the one its `iss` names.
    pub issuers: Vec<IssuerConfig>,
    /// Header a trusted gateway sets with the caller's identity; it wins over the claim, but only
    /// on connections from `trusted_proxies`.
    pub identity_header: Option<String>,
    /// Peers (IP addresses or CIDRs) whose `identity_header` is believed.
    pub trusted_proxies: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "hyperfleet_common::config::duration")]
    pub leeway: Duration,
    /// Unknown `kid`s reload the keys at most this often (failed reloads included).
    #[serde(with = "hyperfleet_common::config::duration")]
    pub jwks_refresh_interval: Duration,
    /// The keys are also reloaded this often, so a key the issuer removed (rotated out, revoked)
    /// stops verifying tokens without a restart.
    #[serde(with = "hyperfleet_common::config::duration")]
    pub jwks_reload_interval: Duration,
}

/// One token issuer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// Required member of `aud`.
    pub audience: String,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_ca_file: Option<PathBuf>,
    pub jwks_token_file: Option<PathBuf>,
    /// Claim naming the caller; default `jwt.identity_claim`.
    pub identity_claim: Option<String>,
    /// Claim listing the caller's groups; default `jwt.groups_claim`.
    pub groups_claim: Option<String>,
    /// A Kubernetes ServiceAccount issuer (the kube-apiserver's). Identities starting with
    /// `system:` (`system:serviceaccount:<ns>:<sa>`, the names the chart's rules grant) are
    /// believed only from such an issuer, so an external identity provider that lets users pick
    /// their own `sub` or `email` cannot pass for the sentinel or the adapter.
    pub kubernetes: bool,
    /// Learn `issuer` (when empty) at start from `<origin of jwks_url>/.well-known/openid-configuration`
    /// (with the same CA and token): the cluster's ServiceAccount issuer differs between
    /// distributions (`https://kubernetes.default.svc`, `….cluster.local`, an EKS OIDC URL).
    pub discover: bool,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            enabled: false,
            jwks_url: None,
            jwks_file: None,
            jwks_ca_file: None,
            jwks_token_file: None,
            issuer: None,
            audience: None,
            identity_claim: "email".into(),
            groups_claim: "groups".into(),
            kubernetes: false,
            issuers: Vec::new(),
            identity_header: None,
            trusted_proxies: Vec::new(),
            leeway: Duration::from_secs(30),
            jwks_refresh_interval: Duration::from_secs(10),
            jwks_reload_interval: Duration::from_secs(300),
        }
    }
}

/// The largest JWKS document read (a few keys are a few kB).
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// `https://…`, or `http://` to a loopback host exactly (`localhost`, `127.0.0.0/8`, `::1`).
fn jwks_url_ok(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else { return false };
    let Some(host) = u.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']')) else { return false };
    match u.scheme() {
        "https" => true,
        "http" => host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        _ => false,
    }
}

/// A CIDR or a single address.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl JwtConfig {
    /// Every issuer: the top-level one (when any of its keys is set) first, then `issuers`.
    pub fn all_issuers(&self) -> Vec<IssuerConfig> {
        let mut out = Vec::new();
        if self.jwks_url.is_some() || self.jwks_file.is_some() || self.issuer.is_some() || self.audience.is_some() {
            out.push(IssuerConfig {
                issuer: self.issuer.clone().unwrap_or_default(),
                audience: self.audience.clone().unwrap_or_default(),
                jwks_url: self.jwks_url.clone(),
                jwks_file: self.jwks_file.clone(),
                jwks_ca_file: self.jwks_ca_file.clone(),
                jwks_token_file: self.jwks_token_file.clone(),
                identity_claim: None,
                groups_claim: None,
                kubernetes: self.kubernetes,
                discover: false,
            });
        }
        out.extend(self.issuers.iter().cloned());
        out
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.identity_claim.is_empty() {
            return Err("jwt.identity_claim must not be empty".into());
        }
        if self.groups_claim.is_empty() {
            return Err("jwt.groups_claim must not be empty".into());
        }
        let issuers = self.all_issuers();
        if self.enabled && issuers.is_empty() {
            return Err("jwt.enabled needs an issuer: jwt.jwks_url (JWKS_URL) or jwt.jwks_file with jwt.issuer and jwt.audience, or jwt.issuers".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, iss) in issuers.iter().enumerate() {
            let name = if iss.issuer.is_empty() { format!("issuer #{}", i + 1) } else { iss.issuer.clone() };
            if iss.discover && iss.jwks_url.is_none() {
                return Err(format!(
                    "jwt: {name}: discover needs jwks_url (the discovery document is read from its origin)"
                ));
            }
            if self.enabled && iss.issuer.is_empty() && !iss.discover {
                return Err(format!(
                    "jwt: {name} has no issuer: any token signed by its keys would be accepted; set jwt.issuer (or issuers[].issuer)"
                ));
            }
            if self.enabled && iss.audience.is_empty() {
                return Err(format!(
                    "jwt: {name} has no audience: tokens meant for any other service would be accepted; set jwt.audience (or issuers[].audience)"
                ));
            }
            if iss.jwks_url.is_none() && iss.jwks_file.is_none() {
                return Err(format!("jwt: {name} needs jwks_url or jwks_file"));
            }
            if let Some(url) = &iss.jwks_url
                && !jwks_url_ok(url)
            {
                return Err(format!(
                    "jwt: {name}: jwks_url {url:?} must be https (plain http only to a loopback host)"
                ));
            }
            if iss.identity_claim.as_deref().is_some_and(str::is_empty) {
                return Err(format!("jwt: {name}: identity_claim must not be empty"));
            }
            if iss.groups_claim.as_deref().is_some_and(str::is_empty) {
                return Err(format!("jwt: {name}: groups_claim must not be empty"));
            }
            if !iss.issuer.is_empty() && !seen.insert(iss.issuer.clone()) {
                return Err(format!("jwt: issuer {name} is configured twice"));
            }
        }
        if self.jwks_reload_interval < Duration::from_secs(1) {
            return Err("jwt.jwks_reload_interval must be at least 1s".into());
        }
        if self.identity_header.is_some() && self.trusted_proxies.is_empty() {
            return Err("jwt.identity_header needs jwt.trusted_proxies: the gateways whose header is believed (any caller could set it otherwise)".into());
        }
        for p in &self.trusted_proxies {
            let Some(cidr) = Cidr::parse(p) else {
                return Err(format!("jwt.trusted_proxies: {p:?} is not an IP address or CIDR"));
            };
            let loopback: [IpAddr; 3] =
                [[127, 0, 0, 1].into(), [127, 0, 0, 6].into(), std::net::Ipv6Addr::LOCALHOST.into()];
            if loopback.iter().any(|ip| cidr.contains(*ip)) {
                return Err(format!(
                    "jwt.trusted_proxies: {p:?} includes loopback; behind kubectl port-forward or an Istio sidecar \
                     (127.0.0.6) every caller comes from loopback and could set the identity header"
                ));
            }
        }
        Ok(())
    }
}

/// The verified token's `exp` (Unix seconds), for what outlives a request: a watch stream ends then.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenExpiry(pub i64);

impl TokenExpiry {
    /// The moment it expires, on the runtime's clock.
    pub fn deadline(self) -> tokio::time::Instant {
        let left = self.0.saturating_sub(Utc::now().timestamp()).max(0);
        tokio::time::Instant::now() + Duration::from_secs(u64::try_from(left).unwrap_or(0))
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
}

/// One issuer's configuration, keys and refresh state.
struct Issuer {
    cfg: IssuerConfig,
    identity_claim: String,
    groups_claim: String,
    keys: RwLock<Keys>,
    /// Held while a reload runs; a request that finds it held does not wait for it.
    refresh: tokio::sync::Mutex<()>,
    /// The last reload attempt, successful or not: unknown `kid`s reload at most once per
    /// `jwks_refresh_interval`, also while the identity provider is down.
    last_attempt: RwLock<Option<Instant>>,
    http: reqwest::Client,
}

/// Verifies tokens and decides what their holders may do; shared by every request.
pub struct Authenticator {
    issuers: Vec<Issuer>,
    identity_header: Option<String>,
    trusted_proxies: Vec<Cidr>,
    leeway: i64,
    refresh_interval: Duration,
    authz: AuthzConfig,
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

impl Issuer {
    fn new(cfg: IssuerConfig, defaults: &JwtConfig) -> Result<Issuer, String> {
        // No redirects: the request may carry a bearer token, and the keys come from where the
        // configuration says, not from wherever that server points.
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &cfg.jwks_ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("jwt jwks_ca_file {}: {e}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("jwt jwks_ca_file: {e}"))? {
                http = http.add_root_certificate(cert);
            }
        }
        Ok(Issuer {
            identity_claim: cfg.identity_claim.clone().unwrap_or_else(|| defaults.identity_claim.clone()),
            groups_claim: cfg.groups_claim.clone().unwrap_or_else(|| defaults.groups_claim.clone()),
            keys: RwLock::new(Keys { by_kid: HashMap::new(), anonymous: Vec::new() }),
            refresh: tokio::sync::Mutex::new(()),
            last_attempt: RwLock::new(None),
            http: http.build().map_err(|e| format!("JWKS HTTP client: {e}"))?,
            cfg,
        })
    }

    async fn fetch(&self) -> Result<Vec<Jwk>, String> {
        let mut keys = Vec::new();
        if let Some(path) = &self.cfg.jwks_file {
            let text =
                tokio::fs::read_to_string(path).await.map_err(|e| format!("jwt jwks_file {}: {e}", path.display()))?;
            let set: JwkSet =
                serde_json::from_str(&text).map_err(|e| format!("jwt jwks_file {}: {e}", path.display()))?;
            keys.extend(set.keys);
        }
        if let Some(url) = &self.cfg.jwks_url {
            let resp = self.get(url).await?.send().await.map_err(|e| format!("JWKS {url}: {e}"))?;
            let body = capped_body(&format!("JWKS {url}"), resp).await?;
            let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("JWKS {url}: {e}"))?;
            keys.extend(set.keys);
        }
        Ok(keys)
    }

    /// A GET to the issuer, with `jwks_token_file`'s token (read now: it rotates) when configured.
    async fn get(&self, url: &str) -> Result<reqwest::RequestBuilder, String> {
        let req = self.http.get(url);
        match &self.cfg.jwks_token_file {
            Some(path) => {
                let token = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| format!("jwt jwks_token_file {}: {e}", path.display()))?;
                Ok(req.bearer_auth(token.trim()))
            }
            None => Ok(req),
        }
    }

    /// The `issuer` of the OpenID discovery document at the JWKS URL's origin.
    async fn discover_issuer(&self) -> Result<String, String> {
        let jwks = self.cfg.jwks_url.as_deref().unwrap_or_default();
        let mut url = reqwest::Url::parse(jwks).map_err(|e| format!("jwks_url {jwks:?}: {e}"))?;
        url.set_path("/.well-known/openid-configuration");
        url.set_query(None);
        let resp = self.get(url.as_str()).await?.send().await.map_err(|e| format!("{url}: {e}"))?;
        let body = capped_body(url.as_str(), resp).await?;
        let doc: Value = serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))?;
        doc.get("issuer")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .ok_or_else(|| format!("{url}: no issuer in the discovery document"))
    }

    async fn reload(&self) -> Result<(), String> {
        if let Ok(mut t) = self.last_attempt.write() {
            *t = Some(Instant::now());
        }
        let jwks = self.fetch().await?;
        let mut next = Keys { by_kid: HashMap::new(), anonymous: Vec::new() };
        for jwk in &jwks {
            match (Key::from_jwk(jwk), &jwk.kid) {
                (Some(key), Some(kid)) => {
                    next.by_kid.insert(kid.clone(), key);
                }
                (Some(key), None) => next.anonymous.push(key),
                (None, _) => tracing::debug!(kty = %jwk.kty, "JWKS key of an unsupported type ignored"),
            }
        }
        let count = next.by_kid.len() + next.anonymous.len();
        if let Ok(mut keys) = self.keys.write() {
            // Said at info when the key set changes (a rotation), else only at debug: the keys
            // are reloaded every `jwks_reload_interval`.
            let same = keys.anonymous.len() == next.anonymous.len()
                && keys.by_kid.len() == next.by_kid.len()
                && next.by_kid.keys().all(|k| keys.by_kid.contains_key(k));
            *keys = next;
            drop(keys);
            if same {
                tracing::debug!(issuer = %self.cfg.issuer, keys = count, "JWKS reloaded, unchanged");
            } else {
                tracing::info!(issuer = %self.cfg.issuer, keys = count, "JWKS loaded");
            }
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

    /// Reloads the keys for an unknown `kid`: at most once per `interval` (a failed attempt
    /// counts), and never queueing a fetch behind another: a request that finds a reload running
    /// (another request's, or the periodic one) waits for that one to finish — it may bring the key
    /// — and starts its own only if the key is still unknown and no attempt was recent. So a burst
    /// of such tokens while the identity provider is down costs one fetch, not one each.
    async fn refresh_for_unknown_kid(&self, kid: Option<&str>, interval: Duration) {
        for _ in 0..2 {
            let recent = self.last_attempt.read().ok().and_then(|t| *t).is_some_and(|t| t.elapsed() < interval);
            if recent {
                return;
            }
            match self.refresh.try_lock() {
                Ok(_only_one) => {
                    if let Err(e) = self.reload().await {
                        tracing::warn!(issuer = %self.cfg.issuer, error = %e, "JWKS reload failed");
                    }
                    return;
                }
                Err(_) => {
                    // Bounded by the fetch's own timeouts; then look again.
                    let _ = tokio::time::timeout(Duration::from_secs(10), self.refresh.lock()).await;
                    if !self.lookup(kid).is_empty() {
                        return;
                    }
                }
            }
        }
    }
}

/// A successful response's body, at most [`MAX_JWKS_BYTES`] (by its length, and while streaming).
async fn capped_body(what: &str, mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    if !resp.status().is_success() {
        return Err(format!("{what}: HTTP {}", resp.status()));
    }
    if resp.content_length().is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
        return Err(format!("{what}: larger than {MAX_JWKS_BYTES} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{what}: {e}"))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("{what}: larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// How long the start waits for the issuer's discovery document (the apiserver, a network policy
/// or an RBAC binding still settling) before it gives up.
const DISCOVERY_WAIT: Duration = Duration::from_secs(60);

/// The unverified `iss` of a compact JWS, to pick the issuer whose keys must verify it.
fn unverified_issuer(payload: &str) -> Option<String> {
    let claims: Map<String, Value> = serde_json::from_slice(&b64(payload).ok()?).ok()?;
    claims.get("iss").and_then(Value::as_str).map(String::from)
}

impl Authenticator {
    pub async fn new(cfg: JwtConfig, authz: AuthzConfig) -> Result<Arc<Self>, String> {
        cfg.validate()?;
        authz.validate()?;
        let mut issuers = Vec::new();
        for iss in cfg.all_issuers() {
            let mut issuer = Issuer::new(iss, &cfg)?;
            if issuer.cfg.discover && issuer.cfg.issuer.is_empty() {
                let deadline = Instant::now() + DISCOVERY_WAIT;
                let mut delay = Duration::from_millis(250);
                let found = loop {
                    match issuer.discover_issuer().await {
                        Ok(found) => break found,
                        Err(e) if Instant::now() + delay > deadline => {
                            return Err(format!("jwt: cannot discover the issuer: {e}"));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?delay, "issuer discovery failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                };
                tracing::info!(issuer = %found, "token issuer discovered");
                issuer.cfg.issuer = found;
            }
            if issuers.iter().any(|i: &Issuer| i.cfg.issuer == issuer.cfg.issuer) {
                return Err(format!("jwt: issuer {} is configured twice", issuer.cfg.issuer));
            }
            issuers.push(issuer);
        }
        let auth = Arc::new(Authenticator {
            issuers,
            identity_header: cfg.identity_header.clone(),
            trusted_proxies: cfg.trusted_proxies.iter().filter_map(|p| Cidr::parse(p)).collect(),
            leeway: i64::try_from(cfg.leeway.as_secs()).unwrap_or(i64::MAX),
            refresh_interval: cfg.jwks_refresh_interval,
            authz,
        });
        // A file must be readable now; an identity provider that is down is retried on demand.
        for iss in &auth.issuers {
            if let Err(e) = iss.reload().await {
                if iss.cfg.jwks_url.is_none() {
                    return Err(e);
                }
                tracing::warn!(issuer = %iss.cfg.issuer, error = %e, "JWKS not loaded yet; will retry when a token arrives");
            }
        }
        // A key the issuer removed must stop verifying: reload on a timer too (the task holds only
        // a weak reference, so it ends with the authenticator).
        let weak = Arc::downgrade(&auth);
        let every = cfg.jwks_reload_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(auth) = weak.upgrade() else { return };
                for iss in &auth.issuers {
                    let Ok(_only_one) = iss.refresh.try_lock() else { continue };
                    if let Err(e) = iss.reload().await {
                        tracing::warn!(issuer = %iss.cfg.issuer, error = %e, "periodic JWKS reload failed; keeping the keys");
                    }
                }
            }
        });
        if auth.authz.rules.is_empty() {
            tracing::warn!(
                "authz.rules is empty: every authenticated caller may read, write, force-delete and report as any adapter"
            );
        }
        Ok(auth)
    }

    /// Verifies a compact JWS and its claims.
    async fn verify(&self, token: &str) -> Result<Verified<'_>, AuthError> {
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
        // The issuer is chosen by the token's own claim, then must sign it; with one issuer
        // configured, a token without `iss` still reaches the signature check (and fails on `iss`).
        let claimed = unverified_issuer(p);
        let issuer = match (&claimed, self.issuers.as_slice()) {
            (Some(iss), all) => all.iter().find(|i| &i.cfg.issuer == iss),
            (None, [only]) => Some(only),
            (None, _) => None,
        }
        .ok_or_else(|| invalid("wrong issuer"))?;
        let kid = header.get("kid").and_then(Value::as_str);
        let sig = b64(s).map_err(|e| invalid(&e))?;
        let message = format!("{h}.{p}");
        let mut candidates = issuer.lookup(kid);
        if candidates.is_empty() {
            issuer.refresh_for_unknown_kid(kid, self.refresh_interval).await;
            candidates = issuer.lookup(kid);
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
        self.check_claims(&issuer.cfg, &claims)?;
        Ok(Verified { claims, issuer })
    }

    fn check_claims(&self, iss: &IssuerConfig, claims: &Map<String, Value>) -> Result<(), AuthError> {
        let now = Utc::now().timestamp();
        let time = |name: &str| claims.get(name).and_then(Value::as_i64);
        match time("exp") {
            None => return Err(AuthError::Invalid("no exp claim".into())),
            Some(exp) if now > exp.saturating_add(self.leeway) => {
                return Err(AuthError::Invalid("token expired".into()));
            }
            _ => {}
        }
        if time("nbf").is_some_and(|nbf| now.saturating_add(self.leeway) < nbf) {
            return Err(AuthError::Invalid("token not yet valid".into()));
        }
        if claims.get("iss").and_then(Value::as_str) != Some(iss.issuer.as_str()) {
            return Err(AuthError::Invalid("wrong issuer".into()));
        }
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => *a == iss.audience,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(iss.audience.as_str())),
            _ => false,
        };
        if !ok {
            return Err(AuthError::Invalid("wrong audience".into()));
        }
        Ok(())
    }

    /// The caller's identity: the gateway's header when it comes from a trusted proxy, else the
    /// issuer's identity claim (`None` when there is none usable). A claim is refused when it is
    /// an `email` its issuer says is unverified, or a `system:` name from an issuer that is not a
    /// Kubernetes ServiceAccount issuer.
    fn identity(
        &self,
        headers: &axum::http::HeaderMap,
        peer: Option<IpAddr>,
        token: &Verified<'_>,
    ) -> Result<Option<String>, AuthError> {
        let usable = |raw: &str| {
            let id = raw.trim();
            (!id.is_empty() && id.chars().count() <= 256 && !id.chars().any(char::is_control)).then(|| id.to_string())
        };
        let trusted = peer.is_some_and(|ip| self.trusted_proxies.iter().any(|c| c.contains(ip)));
        let from_header = self
            .identity_header
            .as_deref()
            .filter(|_| trusted)
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok());
        let claim = token.issuer.identity_claim.as_str();
        let id = match from_header {
            // A gateway names people from its own login, never the cluster's ServiceAccounts.
            Some(raw) => usable(raw),
            None => {
                let unverified = matches!(token.claims.get("email_verified"), Some(Value::Bool(false)))
                    || token.claims.get("email_verified").and_then(Value::as_str) == Some("false");
                if claim == "email" && unverified {
                    return Err(AuthError::Invalid("the email claim is not verified (email_verified is false)".into()));
                }
                token.claims.get(claim).and_then(Value::as_str).and_then(usable)
            }
        };
        let Some(id) = id else { return Ok(None) };
        if id.starts_with("system:") && (from_header.is_some() || !token.issuer.cfg.kubernetes) {
            return Err(AuthError::Invalid(format!(
                "identity {id:?} is reserved for Kubernetes ServiceAccount tokens; issuer {} is not one (kubernetes: true)",
                token.issuer.cfg.issuer
            )));
        }
        Ok(Some(id))
    }
}

/// A verified token: its claims and the issuer whose keys signed it.
struct Verified<'a> {
    claims: Map<String, Value>,
    issuer: &'a Issuer,
}

/// At most this many groups of a token are looked at.
const MAX_GROUPS: usize = 256;

impl Verified<'_> {
    /// The caller's groups: the issuer's groups claim, a string or an array of strings. `system:`
    /// groups count only from a Kubernetes issuer, as `system:` identities do.
    fn groups(&self) -> Vec<String> {
        let names: Vec<&str> = match self.claims.get(&self.issuer.groups_claim) {
            Some(Value::String(g)) => vec![g.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).take(MAX_GROUPS).collect(),
            _ => Vec::new(),
        };
        names
            .into_iter()
            .filter(|g| self.issuer.cfg.kubernetes || !g.starts_with("system:"))
            .map(String::from)
            .collect()
    }
}

/// Middleware: refuses requests without a valid token or without the permission they need;
/// records the caller's identity and permissions.
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
    let refuse = |e: AuthError| {
        metrics::counter!("hyperfleet_api_auth_failures_total").increment(1);
        ApiError::from(e).into_response()
    };
    let verified = match auth.verify(&token).await {
        Ok(v) => v,
        Err(e) => return refuse(e),
    };
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let action = Action::of(req.method(), req.uri().path());
    let identity = match auth.identity(req.headers(), peer, &verified) {
        Ok(Some(id)) => id,
        Ok(None) if action != Action::Read => {
            let claim = &verified.issuer.identity_claim;
            return refuse(AuthError::Invalid(format!("no usable identity in claim {claim:?} for a write")));
        }
        Ok(None) => SYSTEM_IDENTITY.to_string(),
        Err(e) => return refuse(e),
    };
    let grants = auth.authz.grants(&identity, &verified.groups());
    if !grants.allows(action) {
        metrics::counter!("hyperfleet_api_authorization_denials_total").increment(1);
        return ApiError::Forbidden(grants.refusal(action)).into_response();
    }
    req.extensions_mut().insert(Identity(identity));
    req.extensions_mut().insert(grants);
    if let Some(exp) = verified.claims.get("exp").and_then(Value::as_i64) {
        req.extensions_mut().insert(TokenExpiry(exp));
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> JwtConfig {
        JwtConfig {
            enabled: true,
            jwks_url: Some("https://idp.example.test/jwks".into()),
            issuer: Some("https://idp.example.test/".into()),
            audience: Some("hyperfleet".into()),
            ..Default::default()
        }
    }

    #[test]
    fn enabled_needs_issuer_audience_and_a_safe_jwks_url() {
        assert!(enabled().validate().is_ok());
        let cases: Vec<(JwtConfig, &str)> = vec![
            (JwtConfig { issuer: None, ..enabled() }, "has no issuer"),
            (JwtConfig { audience: None, ..enabled() }, "has no audience"),
            (JwtConfig { jwks_url: Some("http://localhost.evil.example/jwks".into()), ..enabled() }, "must be https"),
            (JwtConfig { jwks_url: Some("http://127.0.0.1.nip.io/jwks".into()), ..enabled() }, "must be https"),
            (JwtConfig { jwks_url: Some("ftp://idp/jwks".into()), ..enabled() }, "must be https"),
            (JwtConfig { identity_header: Some("x-user".into()), ..enabled() }, "trusted_proxies"),
            (
                JwtConfig {
                    identity_header: Some("x-user".into()),
                    trusted_proxies: vec!["127.0.0.0/8".into()],
                    ..enabled()
                },
                "includes loopback",
            ),
            (
                JwtConfig {
                    identity_header: Some("x-user".into()),
                    trusted_proxies: vec!["10.0.0.0/33".into()],
                    ..enabled()
                },
                "not an IP address or CIDR",
            ),
            (
                JwtConfig {
                    issuers: vec![IssuerConfig {
                        issuer: "https://idp.example.test/".into(),
                        audience: "x".into(),
                        jwks_file: Some("/k".into()),
                        ..Default::default()
                    }],
                    ..enabled()
                },
                "configured twice",
            ),
        ];
        for (cfg, why) in cases {
            let err = cfg.validate().expect_err(why);
            assert!(err.contains(why), "{err}");
        }
        for ok in ["http://localhost:8080/jwks", "http://127.0.0.1/jwks", "http://[::1]:9/jwks"] {
            assert!(JwtConfig { jwks_url: Some(ok.into()), ..enabled() }.validate().is_ok(), "{ok}");
        }
    }

    #[test]
    fn trusted_proxies_match_addresses_and_networks() {
        let net = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(net.contains("10.1.200.3".parse().expect("ip")));
        assert!(!net.contains("10.2.0.1".parse().expect("ip")));
        assert!(net.contains("::ffff:10.1.0.9".parse().expect("ip")), "v4-mapped v6 peers");
        let one = Cidr::parse("127.0.0.1").expect("ip");
        assert!(one.contains("127.0.0.1".parse().expect("ip")) && !one.contains("127.0.0.2".parse().expect("ip")));
        assert!(Cidr::parse("fd00::/8").expect("v6").contains("fd12::1".parse().expect("ip")));
        assert!(Cidr::parse("0.0.0.0/0").expect("all").contains("8.8.8.8".parse().expect("ip")));
        assert!(Cidr::parse("nonsense").is_none() && Cidr::parse("10.0.0.0/40").is_none());
    }

    #[test]
    fn expiry_with_leeway_cannot_overflow() {
        let auth = Authenticator {
            issuers: Vec::new(),
            identity_header: None,
            trusted_proxies: Vec::new(),
            leeway: i64::MAX,
            refresh_interval: Duration::ZERO,
            authz: AuthzConfig::default(),
        };
        let iss = IssuerConfig { issuer: "i".into(), audience: "a".into(), ..Default::default() };
        let mut claims = Map::new();
        claims.insert("iss".into(), "i".into());
        claims.insert("aud".into(), "a".into());
        claims.insert("exp".into(), i64::MAX.into());
        claims.insert("nbf".into(), i64::MAX.into());
        // No panic (debug builds check overflow); a huge leeway accepts the token.
        assert!(auth.check_claims(&iss, &claims).is_ok());
    }
}
