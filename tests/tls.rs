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
