//! The admin listener: health, readiness, metrics, and its own client-certificate requirement.

mod support;

use anyhow::Result;
use support::*;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn health_readiness_and_metrics() -> Result<()> {
    let pki = Pki::new()?;
    let (upstream, _stop) = echo_upstream().await?;
    let text = format!(
        "{}[[route]]\nname = \"r\"\nhost = \"*\"\nupstream = \"http://{upstream}\"\nlogin = \"none\"\nallow = [{{ spiffe = [\"spiffe://example.org/**\"] }}]\n",
        base_config("", &pki.path("d.log"))
    );
    let running = spawn(&pki, &text).await?;
    assert_eq!(admin(&running, "GET", "/healthz").await?.status, 200);
    let ready = admin(&running, "GET", "/readyz").await?;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["ready"], true);
    let web = client_config(Some(&pki.workload(SPIFFE_WEB)?), pki.ca.cert_pem(), &[])?;
    assert_eq!(get(running.addr, web, "/x", "").await?.status, 200);
    let text = metrics(&running).await?;
    for series in [
        "vigil_requests_total{route=\"r\",decision=\"allow\",status=\"200\"} 1",
        "vigil_request_duration_seconds_count{route=\"r\"} 1",
        "vigil_tls_handshakes_total",
        "vigil_connections_open",
        "vigil_config_generation 1",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
    assert_eq!(admin(&running, "POST", "/reload").await?.status, 409);
    assert_eq!(admin(&running, "DELETE", "/metrics").await?.status, 405);
    assert_eq!(admin(&running, "GET", "/nope").await?.status, 404);
    Ok(())
}

#[tokio::test]
async fn admin_listener_can_require_allowed_client_certificates() -> Result<()> {
    let pki = Pki::new()?;
    let (upstream, _stop) = echo_upstream().await?;
    let text = format!(
        "{}[[route]]\nname = \"r\"\nhost = \"*\"\nupstream = \"http://{upstream}\"\nlogin = \"none\"\nallow = [{{ spiffe = [\"spiffe://example.org/**\"] }}]\n",
        base_config("", &pki.path("d.log")).replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            "[admin]\nlisten = \"127.0.0.1:0\"\nclient_ca = [\"ca.pem\"]\nallow_spiffe = [\"spiffe://example.org/ns/ops/sa/*\"]"
        )
    );
    let running = spawn(&pki, &text).await?;
    let admin_addr = running.admin.expect("admin on");

    // Plain HTTP gets nothing.
    assert!(admin(&running, "GET", "/metrics").await.is_err());
    let request = "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
    let ask = |config: rustls::ClientConfig| async move {
        let mut tls = connect(admin_addr, config, "localhost").await?;
        tls.write_all(request.as_bytes()).await?;
        read_reply(&mut tls).await
    };
    let ops = client_config(
        Some(&pki.workload("spiffe://example.org/ns/ops/sa/oncall")?),
        pki.ca.cert_pem(),
        &[],
    )?;
    let reply = ask(ops).await?;
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("vigil_config_generation"));

    let web = client_config(Some(&pki.workload(SPIFFE_WEB)?), pki.ca.cert_pem(), &[])?;
    assert_eq!(ask(web).await?.status, 403);
    let anonymous = client_config(None, pki.ca.cert_pem(), &[])?;
    assert!(ask(anonymous).await.is_err());
    Ok(())
}
