//! JWT authentication: tokens minted here (RS256 with an openssl-made key, ES256 with ring) against
//! a JWKS served over HTTP by the test, for every way a token can be wrong.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use crate::support::{App, CLUSTERS, app_with_auth, app_with_authz, cluster};
use anyhow::{Context, Result, bail};
use axum::http::{Method, StatusCode};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hyperfleet_api::auth::JwtConfig;
use ring::{
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents},
};
use serde_json::{Value, json};

const ISSUER: &str = "https://sso.example.test/realms/hyperfleet";
const AUDIENCE: &str = "hyperfleet-api";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key with its public JWK.
enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

impl Signer {
    fn rsa() -> Result<Self> {
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-outform", "DER"])
            .output()?;
        if !out.status.success() {
            bail!("openssl: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Signer::Rsa(RsaKeyPair::from_der(&out.stdout).map_err(|e| anyhow::anyhow!("{e}"))?))
    }

    fn ec() -> Result<Self> {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Signer::Ec(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).map_err(|e| anyhow::anyhow!("{e}"))?))
    }

    fn alg(&self) -> &'static str {
        match self {
            Signer::Rsa(_) => "RS256",
            Signer::Ec(_) => "ES256",
        }
    }

    fn jwk(&self, kid: &str) -> Value {
        match self {
            Signer::Rsa(k) => {
                let c = RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
                json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64(&c.n), "e": b64(&c.e)})
            }
            Signer::Ec(k) => {
                let p = k.public_key().as_ref();
                json!({"kty": "EC", "kid": kid, "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65])})
            }
        }
    }

    /// The public key bytes, as an attacker would use them for an HMAC secret.
    fn public_bytes(&self) -> Vec<u8> {
        match self {
            Signer::Rsa(k) => k.public().as_ref().to_vec(),
            Signer::Ec(k) => k.public_key().as_ref().to_vec(),
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let rng = SystemRandom::new();
        match self {
            Signer::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig).map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok(sig)
            }
            Signer::Ec(k) => Ok(k.sign(&rng, message).map_err(|e| anyhow::anyhow!("{e}"))?.as_ref().to_vec()),
        }
    }

    fn token(&self, kid: &str, claims: &Value) -> Result<String> {
        let header = json!({"alg": self.alg(), "typ": "JWT", "kid": kid});
        let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        Ok(format!("{signing_input}.{}", b64(&self.sign(signing_input.as_bytes())?)))
    }
}

fn claims(email: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"iss": ISSUER, "aud": [AUDIENCE, "other"], "sub": "user-1", "email": email, "iat": now, "exp": now + 300})
}

/// A JWKS the test can change while the API runs.
async fn serve_jwks(keys: Arc<RwLock<Value>>) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/jwks", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let keys = keys.clone();
            async move { axum::Json(keys.read().map(|k| k.clone()).unwrap_or_default()) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

async fn call(
    app: &App,
    method: Method,
    token: Option<&str>,
    extra: &[(&str, &str)],
    body: Option<&str>,
) -> Result<(StatusCode, Value)> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(b) = &bearer {
        headers.push(("authorization", b));
    }
    let uri = if method == Method::POST { CLUSTERS.to_string() } else { format!("{CLUSTERS}?size=1") };
    let resp = app.send(method, &uri, &headers, body).await?;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await?;
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

#[tokio::test]
async fn every_bad_token_is_refused_and_good_ones_name_the_caller() -> Result<()> {
    let rsa = Signer::rsa()?;
    let ec = Signer::ec()?;
    let keys = Arc::new(RwLock::new(json!({"keys": [rsa.jwk("rsa-1"), ec.jwk("ec-1")]})));
    let url = serve_jwks(keys.clone()).await?;
    let app = app_with_auth(JwtConfig {
        enabled: true,
        jwks_url: Some(url),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        identity_header: Some("x-hyperfleet-identity".into()),
        trusted_proxies: vec!["10.0.0.0/24".into()],
        jwks_refresh_interval: Duration::ZERO,
        ..Default::default()
    })
    .await?;

    // No token at all.
    let resp = app.send(Method::GET, CLUSTERS, &[], None).await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let (status, v) = call(&app, Method::GET, None, &[], None).await?;
    assert_eq!((status, v["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("HYPERFLEET-AUT-001")));

    // Good tokens of both algorithms; the caller's email becomes created_by.
    for (signer, kid) in [(&rsa, "rsa-1"), (&ec, "ec-1")] {
        let token = signer.token(kid, &claims("ada@example.test"))?;
        let (status, _) = call(&app, Method::GET, Some(&token), &[], None).await?;
        assert_eq!(status, StatusCode::OK, "{}", signer.alg());
    }
    let token = ec.token("ec-1", &claims("ada@example.test"))?;
    let (status, created) = call(&app, Method::POST, Some(&token), &[], Some(&cluster("by-ada"))).await?;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        (created["created_by"].as_str(), created["updated_by"].as_str()),
        (Some("ada@example.test"), Some("ada@example.test"))
    );
    let via_gateway = [("x-hyperfleet-identity", "gateway-user")];
    let (_, created) = call(&app, Method::POST, Some(&token), &via_gateway, Some(&cluster("by-gateway"))).await?;
    assert_eq!(created["created_by"], "gateway-user", "the trusted header wins over the claim");
    // The same header from a peer that is not a trusted proxy is ignored.
    let bearer = format!("Bearer {token}");
    let stranger: std::net::SocketAddr = "10.9.8.7:5555".parse()?;
    let headers = [("x-hyperfleet-identity", "gateway-user"), ("authorization", bearer.as_str())];
    let resp = app.send_from(stranger, Method::POST, CLUSTERS, &headers, Some(&cluster("by-stranger"))).await?;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Value = serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 1 << 20).await?)?;
    assert_eq!(created["created_by"], "ada@example.test", "an untrusted peer's header is not believed");

    // Every way of being wrong: 401 HYPERFLEET-AUT-002, and nothing is written.
    let now = chrono::Utc::now().timestamp();
    let with = |patch: Value| {
        let mut c = claims("eve@example.test");
        for (k, v) in patch.as_object().cloned().unwrap_or_default() {
            c[k] = v;
        }
        c
    };
    let good = rsa.token("rsa-1", &claims("eve@example.test"))?;
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_payload = b64(with(json!({"email": "admin@example.test"})).to_string().as_bytes());
    parts[1] = &forged_payload;
    let tampered = parts.join(".");
    let none_header = b64(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes());
    let alg_none = format!("{none_header}.{}.", b64(claims("eve@example.test").to_string().as_bytes()));
    let hs_header = b64(json!({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).to_string().as_bytes());
    let hs_input = format!("{hs_header}.{}", b64(claims("eve@example.test").to_string().as_bytes()));
    let hs_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &rsa.public_bytes());
    let hs256 = format!("{hs_input}.{}", b64(ring::hmac::sign(&hs_key, hs_input.as_bytes()).as_ref()));
    let other_key = Signer::ec()?;
    let cases: Vec<(&str, String, &str)> = vec![
        ("tampered payload", tampered, "signature"),
        ("expired", rsa.token("rsa-1", &with(json!({"exp": now - 600})))?, "expired"),
        ("not yet valid", rsa.token("rsa-1", &with(json!({"nbf": now + 600})))?, "not yet valid"),
        ("no exp", rsa.token("rsa-1", &json!({"iss": ISSUER, "aud": AUDIENCE, "email": "e@x"}))?, "exp"),
        ("wrong issuer", rsa.token("rsa-1", &with(json!({"iss": "https://evil.test"})))?, "issuer"),
        ("wrong audience", rsa.token("rsa-1", &with(json!({"aud": "someone-else"})))?, "audience"),
        ("alg none", alg_none, "\"none\""),
        ("HS256 with the public key", hs256, "\"HS256\""),
        ("signed by an unknown key", other_key.token("ec-1", &claims("eve@example.test"))?, "signature"),
        ("RSA kid with an EC signature", ec.token("rsa-1", &claims("eve@example.test"))?, "not a ES256 key"),
        ("unknown kid", other_key.token("nope", &claims("eve@example.test"))?, "no signing key"),
        ("garbage", "not-a-token".into(), "three"),
        ("two parts", "a.b".into(), "three"),
        ("bad base64", "@@@.###.$$$".into(), "base64"),
    ];
    for (what, token, why) in cases {
        for method in [Method::GET, Method::POST] {
            let body = (method == Method::POST).then(|| cluster("by-eve"));
            let (status, v) = call(&app, method.clone(), Some(&token), &[], body.as_deref()).await?;
            assert_eq!(
                (status, v["code"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("HYPERFLEET-AUT-002")),
                "{what}: {v}"
            );
            let detail = v["detail"].as_str().unwrap_or_default();
            assert!(detail.contains(why), "{what}: {detail:?} should mention {why:?}");
        }
    }
    // A write needs an identity.
    let anonymous = rsa.token("rsa-1", &json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300}))?;
    assert_eq!(call(&app, Method::GET, Some(&anonymous), &[], None).await?.0, StatusCode::OK);
    assert_eq!(
        call(&app, Method::POST, Some(&anonymous), &[], Some(&cluster("nobody"))).await?.0,
        StatusCode::UNAUTHORIZED
    );

    // The OpenAPI document stays public.
    assert_eq!(app.send(Method::GET, "/api/hyperfleet/v1/openapi", &[], None).await?.status(), StatusCode::OK);

    // Key rotation: a token signed by a key that appears in the JWKS later is accepted, no restart.
    let rotated = Signer::ec()?;
    let token = rotated.token("ec-2", &claims("ada@example.test"))?;
    assert_eq!(call(&app, Method::GET, Some(&token), &[], None).await?.0, StatusCode::UNAUTHORIZED);
    *keys.write().map_err(|_| anyhow::anyhow!("poisoned"))? = json!({"keys": [rsa.jwk("rsa-1"), rotated.jwk("ec-2")]});
    assert_eq!(call(&app, Method::GET, Some(&token), &[], None).await?.0, StatusCode::OK, "the new kid is fetched");

    let (_, list) = call(&app, Method::GET, Some(&token), &[], None).await?;
    assert_eq!(list["total"], 3, "only the three good writes happened: {list}");
    let _ = list.get("items").context("items")?;
    app.done().await;
    Ok(())
}

/// `method uri` with `token`; the status and the JSON body.
async fn request(app: &App, method: Method, uri: &str, token: &str, body: Option<&str>) -> Result<(StatusCode, Value)> {
    let bearer = format!("Bearer {token}");
    let resp = app.send(method, uri, &[("authorization", bearer.as_str())], body).await?;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await?;
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

fn report(adapter: &str) -> String {
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    json!({
        "adapter": adapter, "observed_generation": 1, "observed_time": at,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "Checked"},
            {"type": "Applied", "status": "True", "reason": "Applied"},
            {"type": "Health", "status": "True", "reason": "Healthy"},
        ],
    })
    .to_string()
}

/// Who may do what: the sentinel reads, the adapter reads and reports under its own name only, an
/// operator group may do everything, anyone else nothing — 403 `HYPERFLEET-AUT-003`, nothing written.
#[tokio::test]
async fn authorization_rules_decide_what_each_identity_may_do() -> Result<()> {
    use hyperfleet_api::authz::{AuthzConfig, Rule};
    let signer = Signer::ec()?;
    let url = serve_jwks(Arc::new(RwLock::new(json!({"keys": [signer.jwk("k")]})))).await?;
    let rule = |subjects: &[&str], allow: &[&str]| Rule {
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        allow: allow.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let authz = AuthzConfig {
        rules: vec![
            rule(&["system:serviceaccount:hf:sentinel-sa"], &["read"]),
            rule(&["system:serviceaccount:hf:hyperfleet-adapter-sa"], &["read", "report:landing-zone"]),
            rule(&["system:serviceaccount:ops:*"], &["*"]),
        ],
    };
    let jwt = JwtConfig {
        enabled: true,
        jwks_url: Some(url),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        identity_claim: "sub".into(),
        // It stands for the cluster's own issuer: `system:serviceaccount:` subjects are believed.
        kubernetes: true,
        ..Default::default()
    };
    let app = app_with_authz(jwt, authz).await?;
    let token_for = |sub: &str| {
        let mut c = claims("unused@example.test");
        c["sub"] = json!(sub);
        signer.token("k", &c)
    };
    let (sentinel, adapter, ops, stranger) = (
        token_for("system:serviceaccount:hf:sentinel-sa")?,
        token_for("system:serviceaccount:hf:hyperfleet-adapter-sa")?,
        token_for("system:serviceaccount:ops:alice")?,
        token_for("system:serviceaccount:default:default")?,
    );

    let (status, created) = request(&app, Method::POST, CLUSTERS, &ops, Some(&cluster("by-ops"))).await?;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["created_by"], "system:serviceaccount:ops:alice", "audit fields carry the subject");
    let id = created["id"].as_str().context("id")?.to_string();
    let one = format!("{CLUSTERS}/{id}");
    let statuses = format!("{one}/statuses");

    assert_eq!(request(&app, Method::GET, &one, &sentinel, None).await?.0, StatusCode::OK);
    let denied: Vec<(&str, &str, Method, String, Option<String>)> = vec![
        ("the sentinel creating", &sentinel, Method::POST, CLUSTERS.into(), Some(cluster("by-sentinel"))),
        ("the adapter creating", &adapter, Method::POST, CLUSTERS.into(), Some(cluster("by-adapter"))),
        ("the adapter deleting", &adapter, Method::DELETE, one.clone(), None),
        ("the adapter force-deleting", &adapter, Method::POST, format!("{one}/force-delete"), Some("{}".into())),
        ("the sentinel reporting", &sentinel, Method::PUT, statuses.clone(), Some(report("landing-zone"))),
        ("the adapter reporting as another adapter", &adapter, Method::PUT, statuses.clone(), Some(report("dns"))),
        ("a stranger reading", &stranger, Method::GET, one.clone(), None),
    ];
    for (what, token, method, uri, body) in denied {
        let (status, v) = request(&app, method, &uri, token, body.as_deref()).await?;
        assert_eq!((status, v["code"].as_str()), (StatusCode::FORBIDDEN, Some("HYPERFLEET-AUT-003")), "{what}: {v}");
        assert!(v["detail"].as_str().unwrap_or("").contains("system:serviceaccount:"), "{what} names who: {v}");
    }
    let (_, v) = request(&app, Method::PUT, &statuses, &adapter, Some(&report("dns"))).await?;
    assert!(v["detail"].as_str().unwrap_or("").contains("only as adapter landing-zone"), "{v}");

    // Its own name is fine; nothing the refused calls attempted happened.
    let (status, v) = request(&app, Method::PUT, &statuses, &adapter, Some(&report("landing-zone"))).await?;
    assert!(status.is_success(), "{status}: {v}");
    let (_, list) = request(&app, Method::GET, &statuses, &ops, None).await?;
    let adapters: Vec<&str> =
        list["items"].as_array().into_iter().flatten().filter_map(|s| s["adapter"].as_str()).collect();
    assert_eq!(adapters, ["landing-zone"], "{list}");
    let (_, all) = request(&app, Method::GET, CLUSTERS, &ops, None).await?;
    assert_eq!(all["total"], 1, "{all}");
    let (_, cluster) = request(&app, Method::GET, &one, &ops, None).await?;
    assert!(cluster["deleted_time"].is_null(), "{cluster}");
    app.done().await;
    Ok(())
}

/// An identity is only as good as its issuer: an external IdP's token naming a `system:` identity
/// (a ServiceAccount the rules trust) or an unverified email is refused, groups from the token's
/// groups claim grant what rules give them, and a method no route serves is 405, not 403.
#[tokio::test]
async fn identities_are_scoped_to_their_issuer_and_groups_grant_permissions() -> Result<()> {
    use hyperfleet_api::authz::{AuthzConfig, Rule};
    let signer = Signer::ec()?;
    let url = serve_jwks(Arc::new(RwLock::new(json!({"keys": [signer.jwk("k")]})))).await?;
    let own = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let authz = AuthzConfig {
        rules: vec![
            Rule {
                subjects: own(&["system:serviceaccount:hf:hyperfleet-adapter-sa"]),
                allow: own(&["*"]),
                ..Default::default()
            },
            Rule { subjects: own(&["*@example.test"]), allow: own(&["read"]), ..Default::default() },
            Rule { groups: own(&["hyperfleet-admins"]), allow: own(&["write"]), ..Default::default() },
        ],
    };
    // An external IdP (not a Kubernetes issuer), naming callers by email.
    let jwt = JwtConfig {
        enabled: true,
        jwks_url: Some(url),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        ..Default::default()
    };
    let app = app_with_authz(jwt, authz).await?;
    let token = |patch: Value| {
        let mut c = claims("ada@example.test");
        for (k, v) in patch.as_object().cloned().unwrap_or_default() {
            c[k] = v;
        }
        signer.token("k", &c)
    };
    let impostor = token(json!({"email": "system:serviceaccount:hf:hyperfleet-adapter-sa"}))?;
    let unverified = token(json!({"email": "eve@example.test", "email_verified": false}))?;
    let reader = token(json!({"email_verified": true}))?;
    let admin = token(json!({"groups": ["users", "hyperfleet-admins"]}))?;
    let almost = token(json!({"groups": ["hyperfleet-admins-readonly"]}))?;

    for (what, t, why) in [
        ("a system: identity from an external IdP", &impostor, "reserved for Kubernetes ServiceAccount tokens"),
        ("an unverified email", &unverified, "not verified"),
    ] {
        for method in [Method::GET, Method::POST] {
            let body = (method == Method::POST).then(|| cluster("x"));
            let (status, v) = call(&app, method.clone(), Some(t), &[], body.as_deref()).await?;
            assert_eq!(
                (status, v["code"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("HYPERFLEET-AUT-002")),
                "{what} {method}: {v}"
            );
            assert!(v["detail"].as_str().unwrap_or("").contains(why), "{what}: {v}");
        }
    }
    assert_eq!(call(&app, Method::GET, Some(&reader), &[], None).await?.0, StatusCode::OK);
    let (status, v) = call(&app, Method::POST, Some(&reader), &[], Some(&cluster("by-reader"))).await?;
    assert_eq!((status, v["code"].as_str()), (StatusCode::FORBIDDEN, Some("HYPERFLEET-AUT-003")), "{v}");
    let (status, v) = call(&app, Method::POST, Some(&almost), &[], Some(&cluster("by-almost"))).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "group names match exactly: {v}");
    let (status, created) = call(&app, Method::POST, Some(&admin), &[], Some(&cluster("by-admin"))).await?;
    assert_eq!(status, StatusCode::CREATED, "a group grants write: {created}");
    assert_eq!(created["created_by"], "ada@example.test");
    // A read-only caller sending a method no route serves gets the router's answer.
    let resp = app.send(Method::OPTIONS, CLUSTERS, &[("authorization", &format!("Bearer {reader}"))], None).await?;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);

    let (_, all) = call(&app, Method::GET, Some(&reader), &[], None).await?;
    assert_eq!(all["total"], 1, "only the admin's create happened: {all}");
    app.done().await;
    Ok(())
}

/// A JWKS larger than the cap is not read (a hostile or broken IdP cannot balloon the API): its
/// keys are never loaded, so even a well-signed token is refused.
#[tokio::test]
async fn an_oversized_jwks_is_not_loaded() -> Result<()> {
    let signer = Signer::ec()?;
    let padded = json!({"keys": [signer.jwk("k")], "padding": "x".repeat(512 * 1024)});
    let url = serve_jwks(Arc::new(RwLock::new(padded))).await?;
    let jwt = JwtConfig {
        enabled: true,
        jwks_url: Some(url),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        ..Default::default()
    };
    let app = app_with_auth(jwt).await?;
    let token = signer.token("k", &claims("ada@example.test"))?;
    let (status, v) = call(&app, Method::GET, Some(&token), &[], None).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["detail"].as_str().unwrap_or("").contains("no signing key"), "{v}");
    app.done().await;
    Ok(())
}

/// While the IdP is down (here: it answers 503 after 2 s), a burst of tokens with unknown `kid`s
/// costs one JWKS fetch — the requests that find a reload running do not queue behind it for their
/// own — even with no minimum interval between reloads.
#[tokio::test]
async fn unknown_kids_while_the_idp_is_down_do_not_queue_fetches() -> Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/jwks", listener.local_addr()?);
    let counter = hits.clone();
    let down = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                // A slow, failing identity provider (not synchronisation: the system's input).
                tokio::time::sleep(Duration::from_secs(2)).await;
                StatusCode::SERVICE_UNAVAILABLE
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, down).await });
    let jwt = JwtConfig {
        enabled: true,
        jwks_url: Some(url),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        jwks_refresh_interval: Duration::ZERO,
        ..Default::default()
    };
    let app = Arc::new(app_with_auth(jwt).await?);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the start-up load");
    let signer = Signer::ec()?;
    let mut calls = Vec::new();
    for i in 0..20 {
        let token = signer.token(&format!("kid-{i}"), &claims("eve@example.test"))?;
        let app = app.clone();
        calls.push(tokio::spawn(async move { call(&app, Method::GET, Some(&token), &[], None).await }));
    }
    for c in calls {
        assert_eq!(c.await??.0, StatusCode::UNAUTHORIZED);
    }
    // The start-up load, and one reload for the whole burst (a serialised reload per request would
    // be 21).
    let fetches = hits.load(Ordering::SeqCst);
    assert!((2..=3).contains(&fetches), "{fetches} JWKS fetches for 20 requests");
    if let Ok(app) = Arc::try_unwrap(app) {
        app.done().await;
    }
    Ok(())
}

/// Several issuers side by side (the cluster's ServiceAccount issuer and an external IdP): each
/// token is checked with the keys, audience and identity claim of the issuer its `iss` names; a
/// token claiming one issuer but signed by the other's key is refused.
#[tokio::test]
async fn several_issuers_each_with_their_own_keys_audience_and_claim() -> Result<()> {
    use hyperfleet_api::auth::IssuerConfig;
    const CLUSTER: &str = "https://kubernetes.default.svc";
    let (idp, kube) = (Signer::rsa()?, Signer::ec()?);
    let idp_url = serve_jwks(Arc::new(RwLock::new(json!({"keys": [idp.jwk("idp-1")]})))).await?;
    let cluster_url = serve_jwks(Arc::new(RwLock::new(json!({"keys": [kube.jwk("sa-1")]})))).await?;
    let jwt = JwtConfig {
        enabled: true,
        jwks_url: Some(idp_url),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        issuers: vec![IssuerConfig {
            issuer: CLUSTER.into(),
            audience: "hyperfleet".into(),
            jwks_url: Some(cluster_url),
            identity_claim: Some("sub".into()),
            kubernetes: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    let app = app_with_auth(jwt).await?;
    let now = chrono::Utc::now().timestamp();
    let sa = |aud: &str| json!({"iss": CLUSTER, "aud": [aud], "sub": "system:serviceaccount:hf:hyperfleet-operator", "exp": now + 300});

    let person = idp.token("idp-1", &claims("ada@example.test"))?;
    let (status, created) = call(&app, Method::POST, Some(&person), &[], Some(&cluster("by-person"))).await?;
    assert_eq!((status, created["created_by"].as_str()), (StatusCode::CREATED, Some("ada@example.test")));
    let service = kube.token("sa-1", &sa("hyperfleet"))?;
    let (status, created) = call(&app, Method::POST, Some(&service), &[], Some(&cluster("by-service"))).await?;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["created_by"], "system:serviceaccount:hf:hyperfleet-operator", "that issuer's claim");

    for (what, token, why) in [
        ("the IdP's audience on a cluster token", kube.token("sa-1", &sa(AUDIENCE))?, "wrong audience"),
        ("a cluster token signed by the IdP's key", idp.token("idp-1", &sa("hyperfleet"))?, "no signing key"),
        (
            "an issuer nobody configured",
            idp.token("idp-1", &json!({"iss": "https://other.test", "aud": AUDIENCE, "exp": now + 300}))?,
            "wrong issuer",
        ),
    ] {
        let (status, v) = call(&app, Method::GET, Some(&token), &[], None).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {v}");
        assert!(v["detail"].as_str().unwrap_or("").contains(why), "{what}: {v}");
    }
    app.done().await;
    Ok(())
}

/// A key the issuer removes (rotated out, revoked) stops verifying tokens without a restart: the
/// keys are reloaded on a timer, not only for unknown `kid`s.
#[tokio::test]
async fn a_key_removed_from_the_jwks_stops_verifying() -> Result<()> {
    let (old, new) = (Signer::ec()?, Signer::ec()?);
    let keys = Arc::new(RwLock::new(json!({"keys": [old.jwk("old"), new.jwk("new")]})));
    let url = serve_jwks(keys.clone()).await?;
    let jwt = JwtConfig {
        enabled: true,
        jwks_url: Some(url),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        jwks_reload_interval: Duration::from_secs(1),
        ..Default::default()
    };
    let app = app_with_auth(jwt).await?;
    let (retired, current) =
        (old.token("old", &claims("ada@example.test"))?, new.token("new", &claims("ada@example.test"))?);
    assert_eq!(call(&app, Method::GET, Some(&retired), &[], None).await?.0, StatusCode::OK);
    *keys.write().map_err(|_| anyhow::anyhow!("poisoned"))? = json!({"keys": [new.jwk("new")]});
    hyperfleet_tests::eventually(Duration::from_secs(30), || async {
        Ok((call(&app, Method::GET, Some(&retired), &[], None).await?.0 == StatusCode::UNAUTHORIZED).then_some(()))
    })
    .await
    .context("the removed key still verifies")?;
    assert_eq!(call(&app, Method::GET, Some(&current), &[], None).await?.0, StatusCode::OK, "the kept key does");
    app.done().await;
    Ok(())
}

/// A change feed opened with a token ends when the token expires: an expired or revoked identity
/// does not keep reading (the client reconnects with a fresh token and its last resource_version).
#[tokio::test]
async fn a_watch_ends_when_its_token_expires() -> Result<()> {
    let signer = Signer::ec()?;
    let url = serve_jwks(Arc::new(RwLock::new(json!({"keys": [signer.jwk("k")]})))).await?;
    let jwt = JwtConfig {
        enabled: true,
        jwks_url: Some(url),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        leeway: Duration::ZERO,
        ..Default::default()
    };
    let app = app_with_auth(jwt).await?;
    let mut short = claims("ada@example.test");
    short["exp"] = json!(chrono::Utc::now().timestamp() + 3);
    let token = signer.token("k", &short)?;
    let bearer = format!("Bearer {token}");
    let resp =
        app.send(Method::GET, &format!("{CLUSTERS}?watch=true"), &[("authorization", bearer.as_str())], None).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    // The body ends (instead of streaming heartbeats forever) once the token has expired.
    let body = tokio::time::timeout(Duration::from_secs(60), axum::body::to_bytes(resp.into_body(), 1 << 20))
        .await
        .context("the watch outlived its token")??;
    assert!(chrono::Utc::now().timestamp() >= short["exp"].as_i64().unwrap_or(0), "ended before the expiry");
    let _ = body;
    app.done().await;
    Ok(())
}
