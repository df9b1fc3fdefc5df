//! TLS is verified, never skipped: the broker and the database are reachable over TLS with the
//! local CA, and refused with an unrelated CA or without one.

use anyhow::Result;
use hyperfleet_common::{broker::BrokerConfig, config::Secret};
use hyperfleet_tests::{LocalEnv, share_infra};
use sqlx::{Connection, PgConnection};

fn broker(env: &LocalEnv, ca: Option<&str>) -> Result<BrokerConfig> {
    Ok(BrokerConfig { url: Secret::new(env.get("HF_AMQPS_URL")?), ca_file: ca.map(Into::into), ..Default::default() })
}

#[tokio::test]
async fn amqps_connects_with_the_right_ca() -> Result<()> {
    let _infra = share_infra().await;
    let env = LocalEnv::load()?;
    let conn = broker(&env, Some(env.get("HF_AMQPS_CA_FILE")?))?.connect("hyperfleet-tls-test").await?;
    assert!(conn.status().connected());
    conn.close(200, "done".into()).await?;
    Ok(())
}

#[tokio::test]
async fn amqps_refuses_a_server_signed_by_another_ca() -> Result<()> {
    let _infra = share_infra().await;
    let env = LocalEnv::load()?;
    for ca in [Some(env.get("HF_WRONG_CA_FILE")?), None] {
        let err = broker(&env, ca)?.connect("hyperfleet-tls-test").await.err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("certificate") || msg.contains("UnknownIssuer"),
            "ca={ca:?}: expected a certificate error, got {msg:?}"
        );
        let url = env.get("HF_AMQPS_URL")?;
        let password = url.split('@').next().and_then(|creds| creds.rsplit(':').next()).unwrap_or(url);
        assert!(!msg.contains(password), "the error must not echo the broker password");
    }
    Ok(())
}

#[tokio::test]
async fn amqps_presents_a_client_certificate_when_configured() -> Result<()> {
    let _infra = share_infra().await;
    let env = LocalEnv::load()?;
    let cfg = BrokerConfig {
        cert_file: Some(env.get("HF_AMQPS_CLIENT_CERT")?.into()),
        key_file: Some(env.get("HF_AMQPS_CLIENT_KEY")?.into()),
        ..broker(&env, Some(env.get("HF_AMQPS_CA_FILE")?))?
    };
    let conn = cfg.connect("hyperfleet-tls-client-cert").await?;
    assert!(conn.status().connected());
    conn.close(200, "done".into()).await?;
    Ok(())
}

#[tokio::test]
async fn postgres_verify_full_checks_the_server_certificate() -> Result<()> {
    let _infra = share_infra().await;
    let env = LocalEnv::load()?;
    let mut ok = PgConnection::connect_with(&env.pg_options("postgres")?).await?;
    let tls: bool =
        sqlx::query_scalar("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetch_one(&mut ok).await?;
    assert!(tls, "the connection must be encrypted");
    ok.close().await?;

    let wrong = env.pg_options("postgres")?.ssl_root_cert(env.get("HF_WRONG_CA_FILE")?);
    let err = PgConnection::connect_with(&wrong).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"), "got {err:?}");
    Ok(())
}
