//! The downstream TLS endpoint: post-quantum key exchange and CRLs verified against their issuer.

mod support;

use anyhow::Result;
use rustls::NamedGroup;
use rustls::crypto::SupportedKxGroup;
use rustls::crypto::aws_lc_rs::kx_group;
use std::sync::Arc;
use support::*;
use vigil::certs::{Authority, Issued, LeafSpec};

const ROUTE: &str = r#"
[[route]]
name = "api"
host = "localhost"
upstream = "http://UPSTREAM"
login = "none"
allow = [{ spiffe = ["spiffe://example.org/**"] }]
"#;

trait Parts {
    fn chain(&self) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>>;
    fn key(&self) -> Result<rustls::pki_types::PrivateKeyDer<'static>>;
}

impl Parts for Issued {
    fn chain(&self) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
        use rustls::pki_types::pem::PemObject;
        Ok(
            rustls::pki_types::CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()?,
        )
    }
    fn key(&self) -> Result<rustls::pki_types::PrivateKeyDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        Ok(rustls::pki_types::PrivateKeyDer::from_pem_slice(
            self.key_pem.as_bytes(),
        )?)
    }
}

async fn start(pki: &Pki, tls_extra: &str) -> Result<(vigil::Running, impl Drop)> {
    let (upstream, stop) = echo_upstream().await?;
    let log = pki.path("decisions.log");
    let text = format!(
        "{}{}",
        base_config("", &log).replace(
            "client_ca = [\"ca.pem\"]",
            &format!("client_ca = [\"ca.pem\"]\n{tls_extra}")
        ),
        ROUTE.replace("UPSTREAM", &upstream.to_string())
    );
    Ok((spawn(pki, &text).await?, stop.drop_guard()))
}

/// Connects with `config`, sends one request; the group the handshake used and the status.
async fn exchange(
    running: &vigil::Running,
    config: rustls::ClientConfig,
) -> Result<(Option<NamedGroup>, u16)> {
    use tokio::io::AsyncWriteExt;
    let mut tls = connect(running.addr, config, "localhost").await?;
    let group = tls
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .map(|g| g.name());
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let reply = read_reply(&mut tls).await?;
    Ok((group, reply.status))
}

async fn failures(running: &vigil::Running, reason: &str) -> bool {
    let series = format!("vigil_tls_handshake_failures_total{{reason=\"{reason}\"}}");
    eventually(STEP, || {
        let series = series.clone();
        async move { metric(running, &series).await.unwrap_or(0.0) >= 1.0 }
    })
    .await
}

fn roots(pki: &Pki) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let _ = roots.add(pki.ca.cert_der().clone());
    roots
}

/// A client offering only `groups` for the key exchange, TLS 1.3, no resumption.
fn only(
    pki: &Pki,
    who: &Issued,
    groups: &[&'static dyn SupportedKxGroup],
) -> Result<rustls::ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = groups.to_vec();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(pki))
        .with_client_auth_cert(who.chain()?, who.key()?)?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

#[tokio::test]
async fn post_quantum_key_exchange_is_offered_by_default() -> Result<()> {
    let pki = Pki::new()?;
    let web = pki.workload(SPIFFE_WEB)?;
    let (running, _stop) = start(&pki, "").await?;

    // A client that only knows the hybrid: its ClientHello carries a 1 216-byte ML-KEM key
    // share, about 1.2 KB more than usual, so it spans more than one TCP segment.
    let pq = only(&pki, &web, &[kx_group::X25519MLKEM768])?;
    let (group, status) = exchange(&running, pq).await?;
    assert_eq!(group, Some(NamedGroup::X25519MLKEM768));
    assert_eq!(status, 200);

    // A classical client still works.
    let classic = only(&pki, &web, &[kx_group::X25519])?;
    assert_eq!(
        exchange(&running, classic).await?,
        (Some(NamedGroup::X25519), 200)
    );
    let p256 = only(&pki, &web, &[kx_group::SECP256R1])?;
    assert_eq!(
        exchange(&running, p256).await?,
        (Some(NamedGroup::secp256r1), 200)
    );

    // A client that prefers the hybrid and also offers X25519 (as browsers do) gets the hybrid.
    let both = only(&pki, &web, &[kx_group::X25519MLKEM768, kx_group::X25519])?;
    assert_eq!(
        exchange(&running, both).await?,
        (Some(NamedGroup::X25519MLKEM768), 200)
    );
    Ok(())
}

#[tokio::test]
async fn key_exchange_can_be_restricted() -> Result<()> {
    let pki = Pki::new()?;
    let web = pki.workload(SPIFFE_WEB)?;
    let (running, _stop) = start(&pki, "key_exchange = [\"X25519\"]").await?;

    let classic = only(&pki, &web, &[kx_group::X25519])?;
    assert_eq!(
        exchange(&running, classic).await?,
        (Some(NamedGroup::X25519), 200)
    );
    // A client offering both falls back to X25519 (the key share it sent), no retry needed.
    let both = only(&pki, &web, &[kx_group::X25519MLKEM768, kx_group::X25519])?;
    assert_eq!(
        exchange(&running, both).await?,
        (Some(NamedGroup::X25519), 200)
    );
    // A post-quantum-only client has nothing in common with this listener.
    let pq = only(&pki, &web, &[kx_group::X25519MLKEM768])?;
    let err = exchange(&running, pq)
        .await
        .expect_err("a PQ-only client was served");
    assert!(
        format!("{err:#}").contains("HandshakeFailure"),
        "client saw: {err:#}"
    );
    assert!(
        failures(&running, "no_shared_key_exchange").await,
        "no vigil_tls_handshake_failures_total{{reason=\"no_shared_key_exchange\"}}"
    );
    Ok(())
}

/// Two CAs with the same name in client_ca; the CRL comes from the first. A client of the second
/// cannot have its revocation checked: its handshake fails as `bad_signature` (the CRL does not
/// verify with its CA's key), not as `other`.
#[tokio::test]
async fn a_crl_that_does_not_verify_at_the_handshake_is_a_bad_signature() -> Result<()> {
    let pki = Pki::new()?;
    let twin = Authority::generate("Test CA")?;
    std::fs::write(
        pki.path("both.pem"),
        format!("{}{}", pki.ca.cert_pem(), twin.cert_pem()),
    )?;
    pki.write_crl(&[], 1)?;
    let (upstream, stop) = echo_upstream().await?;
    let _stop = stop.drop_guard();
    let log = pki.path("decisions.log");
    let text = format!(
        "{}{}",
        base_config("", &log).replace(
            "client_ca = [\"ca.pem\"]",
            "client_ca = [\"both.pem\"]\ncrl = [\"ca.crl\"]"
        ),
        ROUTE.replace("UPSTREAM", &upstream.to_string())
    );
    let running = spawn(&pki, &text).await?;
    let good = pki.workload(SPIFFE_WEB)?;
    assert_eq!(
        exchange(&running, only(&pki, &good, &[kx_group::X25519])?)
            .await?
            .1,
        200
    );
    let twins_client = twin.issue(&LeafSpec::workload(SPIFFE_WEB))?;
    assert!(
        exchange(&running, only(&pki, &twins_client, &[kx_group::X25519])?)
            .await
            .is_err()
    );
    assert!(
        failures(&running, "bad_signature").await,
        "no vigil_tls_handshake_failures_total{{reason=\"bad_signature\"}}"
    );
    Ok(())
}

/// A CRL a few seconds from its nextUpdate: the metric carries the date, the log warns, and
/// once it is past `/readyz` turns 503 with the reason (every client of that CA is refused);
/// a fresh CRL brings readiness back, and a removed one's series disappear.
#[tokio::test]
async fn a_crl_nearing_and_passing_its_next_update_is_reported() -> Result<()> {
    let logs = captured_logs();
    let pki = Pki::new()?;
    let web = pki.workload(SPIFFE_WEB)?;
    let next = time::OffsetDateTime::now_utc() + time::Duration::seconds(4);
    std::fs::write(pki.path("ca.crl"), pki.ca.crl_pem(&[], 1, next)?)?;
    let (upstream, stop) = echo_upstream().await?;
    let _stop = stop.drop_guard();
    let text = format!(
        "{}{}",
        base_config("", &pki.path("decisions.log")).replace(
            "client_ca = [\"ca.pem\"]",
            "client_ca = [\"ca.pem\"]\ncrl = [\"ca.crl\"]\nexpiry_warning = \"1h\"",
        ),
        ROUTE.replace("UPSTREAM", &upstream.to_string())
    );
    let config = pki.path("vigil.toml");
    std::fs::write(&config, &text)?;
    let running = vigil::start_file(&config).await?;

    let series = "vigil_tls_crl_next_update_timestamp_seconds{file=\"ca.crl\",issuer=\"Test CA\"}";
    assert_eq!(
        metric(&running, series).await?,
        next.unix_timestamp() as f64
    );
    let text_metrics = metrics(&running).await?;
    assert!(
        text_metrics.contains(
            "vigil_tls_certificate_not_after_timestamp_seconds{role=\"server\",file=\"server.pem\""
        ),
        "{text_metrics}"
    );
    assert!(
        text_metrics.contains(
            "vigil_tls_certificate_not_after_timestamp_seconds{role=\"client_ca\",file=\"ca.pem\",subject=\"Test CA\"}"
        ),
        "{text_metrics}"
    );
    let logged =
        String::from_utf8_lossy(&logs.lock().map(|b| b.clone()).unwrap_or_default()).into_owned();
    assert!(
        logged.lines().any(|l| l.contains("WARN")
            && l.contains("the CRL of \"Test CA\" (ca.crl) reaches its nextUpdate")),
        "{logged}"
    );
    let ready = admin(&running, "GET", "/readyz").await?;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json()["certificates"]["crl"][0]["state"], "expiring");
    assert_eq!(
        ready.json()["certificates"]["crl"][0]["next_update"],
        next.unix_timestamp()
    );
    let (_, status) =
        exchange(&running, client_config(Some(&web), pki.ca.cert_pem(), &[])?).await?;
    assert_eq!(status, 200);

    // Past its nextUpdate: not ready, with the reason, and clients are refused.
    let unready = eventually(std::time::Duration::from_secs(15), || async {
        admin(&running, "GET", "/readyz")
            .await
            .is_ok_and(|r| r.status == 503)
    })
    .await;
    assert!(unready, "/readyz stayed 200 past the CRL's nextUpdate");
    let ready = admin(&running, "GET", "/readyz").await?;
    let reason = ready.json()["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("the CRL of \"Test CA\" (ca.crl) is past its nextUpdate"),
        "{reason}"
    );
    assert_eq!(ready.json()["certificates"]["crl"][0]["state"], "expired");
    let refused = exchange(&running, client_config(Some(&web), pki.ca.cert_pem(), &[])?).await;
    assert!(!matches!(refused, Ok((_, 200))), "{refused:?}");
    assert!(failures(&running, "expired_crl").await);

    // A fresh CRL: ready again, and the metric follows.
    let fresh = time::OffsetDateTime::now_utc() + time::Duration::days(30);
    std::fs::write(pki.path("ca.crl"), pki.ca.crl_pem(&[], 2, fresh)?)?;
    assert_eq!(admin(&running, "POST", "/reload").await?.status, 200);
    let ready = admin(&running, "GET", "/readyz").await?;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(
        metric(&running, series).await?,
        fresh.unix_timestamp() as f64
    );

    // Without the CRL, its series are gone.
    std::fs::write(&config, text.replace("crl = [\"ca.crl\"]\n", ""))?;
    assert_eq!(admin(&running, "POST", "/reload").await?.status, 200);
    let text_metrics = metrics(&running).await?;
    assert!(!text_metrics.contains("file=\"ca.crl\""), "{text_metrics}");
    running.shutdown().await;
    Ok(())
}

/// A server certificate that expires while it is served: `/readyz` turns 503 naming it, a
/// reload that still brings it is refused, and a renewed one brings readiness back with its
/// new `notAfter` in the metric.
#[tokio::test]
async fn a_server_certificate_expiring_while_served_is_reported() -> Result<()> {
    let pki = Pki::new()?;
    let now = time::OffsetDateTime::now_utc();
    let short = pki.ca.issue(
        &LeafSpec::server(vec!["localhost".into()], vec![]).validity(
            now - time::Duration::hours(1),
            now + time::Duration::seconds(3),
        ),
    )?;
    std::fs::write(pki.path("server.pem"), &short.cert_pem)?;
    std::fs::write(pki.path("server.key"), &short.key_pem)?;
    let (upstream, stop) = echo_upstream().await?;
    let _stop = stop.drop_guard();
    let config = pki.path("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "{}{}",
            base_config("", &pki.path("decisions.log")),
            ROUTE.replace("UPSTREAM", &upstream.to_string())
        ),
    )?;
    let running = vigil::start_file(&config).await?;
    let series = "vigil_tls_certificate_not_after_timestamp_seconds{role=\"server\",file=\"server.pem\",subject=\"localhost\"}";
    let not_after = (now + time::Duration::seconds(3)).unix_timestamp() as f64;
    assert_eq!(metric(&running, series).await?, not_after);
    let ready = admin(&running, "GET", "/readyz").await?;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(
        ready.json()["certificates"]["server_certificate"]["state"],
        "expiring"
    );

    let unready = eventually(std::time::Duration::from_secs(15), || async {
        admin(&running, "GET", "/readyz")
            .await
            .is_ok_and(|r| r.status == 503)
    })
    .await;
    assert!(
        unready,
        "/readyz stayed 200 past the server certificate's notAfter"
    );
    let ready = admin(&running, "GET", "/readyz").await?;
    let reason = ready.json()["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("the server certificate \"localhost\" (server.pem) expired at"),
        "{reason}"
    );

    // A reload with the same certificate is refused, naming it; the snapshot stays.
    let refused = admin(&running, "POST", "/reload").await?;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(refused.body.contains("expired at"), "{}", refused.body);

    let renewed = pki
        .ca
        .issue(&LeafSpec::server(vec!["localhost".into()], vec![]))?;
    std::fs::write(pki.path("server.pem"), &renewed.cert_pem)?;
    std::fs::write(pki.path("server.key"), &renewed.key_pem)?;
    assert_eq!(admin(&running, "POST", "/reload").await?.status, 200);
    let ready = admin(&running, "GET", "/readyz").await?;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert!(metric(&running, series).await? > not_after + 86400.0);
    running.shutdown().await;
    Ok(())
}
