//! Device posture from the inventory, and risk levels mapped to route actions.

mod support;

use anyhow::Result;
use rustls::pki_types::pem::PemObject;
use std::time::Duration;
use support::*;

fn fingerprint(issued: &vigil::certs::Issued) -> Result<String> {
    let der = rustls::pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())?;
    Ok(vigil::tls::PeerCert::from_der(der.as_ref())
        .map_err(anyhow::Error::msg)?
        .fingerprint_hex)
}

fn inventory(entries: &[(&str, bool, &str)]) -> String {
    let now = humantime::format_rfc3339(std::time::SystemTime::now()).to_string();
    let devices: Vec<serde_json::Value> = entries
        .iter()
        .map(|(fp, compliant, os)| {
            serde_json::json!({
                "fingerprint": fp, "compliant": compliant, "managed": true,
                "owner": "alice@example.com",
                "os": { "name": "macOS", "version": os },
                "last_check_in": now,
            })
        })
        .collect();
    serde_json::json!({ "devices": devices }).to_string()
}

fn replace_file(path: &std::path::Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

async fn proxy(pki: &Pki, devices: &str, risk: &str, rules: &str) -> Result<vigil::Running> {
    let (upstream, stop) = echo_upstream().await?;
    std::mem::forget(stop);
    let text = format!(
        "{}{devices}{risk}\n[[route]]\nname = \"r\"\nhost = \"localhost\"\nupstream = \"http://{upstream}\"\nlogin = \"none\"\n{rules}\n",
        base_config("", &pki.path("d.log")),
    );
    let config = pki.path("vigil.toml");
    std::fs::write(&config, text)?;
    Ok(vigil::start_file(&config).await?)
}

const DEVICES: &str =
    "\n[devices]\nsource = \"devices.json\"\nrefresh = \"200ms\"\nmax_stale = \"1s\"\n";

#[tokio::test]
async fn a_device_falling_out_of_compliance_loses_access() -> Result<()> {
    let pki = Pki::new()?;
    let laptop = pki.workload(SPIFFE_WEB)?;
    let fp = fingerprint(&laptop)?;
    let file = pki.path("devices.json");
    std::fs::write(&file, inventory(&[(&fp, true, "14.5")]))?;
    let running = proxy(
        &pki,
        DEVICES,
        "",
        "allow = [{ spiffe = [\"spiffe://example.org/**\"], device = \"compliant\", min_os = { macOS = \"14.0\" } }]",
    )
    .await?;
    let client = client_config(Some(&laptop), pki.ca.cert_pem(), &[])?;
    assert_eq!(
        get(running.addr, client.clone(), "/x", "").await?.status,
        200
    );
    let whoami = get(running.addr, client.clone(), "/.vigil/whoami", "")
        .await?
        .json();
    assert_eq!(whoami["device"]["inventory"]["compliant"], true);

    replace_file(&file, &inventory(&[(&fp, false, "14.5")]))?;
    let changed_at = std::time::Instant::now();
    let denied = eventually(Duration::from_secs(5), || async {
        get(running.addr, client.clone(), "/x", "")
            .await
            .is_ok_and(|r| r.status == 403)
    })
    .await;
    assert!(denied, "a non-compliant device kept access");
    eprintln!(
        "access ended {:?} after the inventory changed",
        changed_at.elapsed()
    );

    // An old OS is refused too.
    replace_file(&file, &inventory(&[(&fp, true, "13.6")]))?;
    let denied_os = eventually(Duration::from_secs(5), || async {
        get(running.addr, client.clone(), "/x", "")
            .await
            .is_ok_and(|r| r.status == 403)
    })
    .await;
    assert!(denied_os);
    // An unknown device.
    let stranger = client_config(Some(&pki.workload(SPIFFE_BATCH)?), pki.ca.cert_pem(), &[])?;
    let reply = get(running.addr, stranger, "/x", "").await?;
    assert_eq!(reply.status, 403);
    let id = reply.json()["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let line = decision_for(&pki.path("d.log"), &id)
        .await
        .expect("decision");
    assert!(
        line["reasons"]
            .to_string()
            .contains("device unknown to the inventory"),
        "{line}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unreadable_inventory_fails_closed_after_max_stale() -> Result<()> {
    let pki = Pki::new()?;
    let laptop = pki.workload(SPIFFE_WEB)?;
    let file = pki.path("devices.json");
    std::fs::write(&file, inventory(&[(&fingerprint(&laptop)?, true, "14.5")]))?;
    let running = proxy(
        &pki,
        DEVICES,
        "",
        "allow = [{ spiffe = [\"spiffe://example.org/**\"], device = \"known\" }]",
    )
    .await?;
    let client = client_config(Some(&laptop), pki.ca.cert_pem(), &[])?;
    assert_eq!(
        get(running.addr, client.clone(), "/x", "").await?.status,
        200
    );
    std::fs::remove_file(&file)?;
    // The last good data holds for a while...
    assert_eq!(
        get(running.addr, client.clone(), "/x", "").await?.status,
        200
    );
    // ...then every device is unknown.
    let closed = eventually(Duration::from_secs(5), || async {
        get(running.addr, client.clone(), "/x", "")
            .await
            .is_ok_and(|r| r.status == 403)
    })
    .await;
    assert!(closed, "a stale inventory still allowed");
    let ready = admin(&running, "GET", "/readyz").await?.json();
    assert_eq!(ready["device_inventory"]["stale"], true, "{ready}");
    assert!(ready["device_inventory"]["last_error"].is_string());
    assert_eq!(metric(&running, "vigil_device_inventory_stale").await?, 1.0);
    Ok(())
}

#[tokio::test]
async fn medium_risk_is_read_only_and_high_risk_is_denied() -> Result<()> {
    let pki = Pki::new()?;
    let laptop = pki.workload(SPIFFE_WEB)?;
    let file = pki.path("devices.json");
    std::fs::write(&file, inventory(&[(&fingerprint(&laptop)?, true, "14.5")]))?;
    // Loopback is outside the trusted networks: +30, medium.
    let risk = "\n[risk]\ntrusted_networks = [\"10.0.0.0/8\"]\nuntrusted_network = 30\nmedium = 30\nhigh = 60\n";
    let running = proxy(
        &pki,
        DEVICES,
        risk,
        "allow = [{ spiffe = [\"spiffe://example.org/**\"] }]\nrisk = { low = \"allow\", medium = \"read_only\", high = \"deny\" }",
    )
    .await?;
    let client = client_config(Some(&laptop), pki.ca.cert_pem(), &[])?;
    assert_eq!(
        get(running.addr, client.clone(), "/x", "").await?.status,
        200
    );
    let post =
        "POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let reply = raw(running.addr, client.clone(), "localhost", post).await?;
    assert_eq!(reply.status, 403);
    let id = reply.json()["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let line = decision_for(&pki.path("d.log"), &id)
        .await
        .expect("decision");
    assert_eq!(line["risk"]["level"], "medium", "{line}");
    assert!(line["reasons"].to_string().contains("read-only"), "{line}");
    assert!(
        line["risk"]["signals"]
            .to_string()
            .contains("outside trusted networks")
    );
    let whoami = get(running.addr, client.clone(), "/.vigil/whoami", "")
        .await?
        .json();
    assert_eq!(whoami["risk"]["level"], "medium");

    // A non-compliant device on an untrusted network: high, denied even for GET.
    replace_file(
        &file,
        &inventory(&[(&fingerprint(&laptop)?, false, "14.5")]),
    )?;
    let denied = eventually(Duration::from_secs(5), || async {
        get(running.addr, client.clone(), "/x", "")
            .await
            .is_ok_and(|r| r.status == 403)
    })
    .await;
    assert!(denied, "high risk was let through");
    Ok(())
}

#[tokio::test]
async fn device_rules_without_an_inventory_are_a_config_error() -> Result<()> {
    let pki = Pki::new()?;
    let text = format!(
        "{}[[route]]\nname = \"r\"\nhost = \"*\"\nupstream = \"http://127.0.0.1:9\"\nlogin = \"none\"\nallow = [{{ device = \"compliant\" }}]\nrisk = {{ medium = \"maybe\" }}\n",
        base_config("", &pki.path("d.log"))
    );
    let ctx = vigil::config::Context::first()?;
    let err = vigil::config::load_text("t.toml", text, pki.dir.path(), &ctx)
        .err()
        .map(|p| p.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("device rules need the device inventory"),
        "{err}"
    );
    assert!(
        err.contains("route risk actions need a [risk] section"),
        "{err}"
    );
    assert!(err.contains("unknown risk action \"maybe\""), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_source_country_outside_the_allowed_ones_raises_the_risk() -> Result<()> {
    let pki = Pki::new()?;
    support::mmdb::write_country_db(
        &pki.path("countries.mmdb"),
        &[
            ("127.0.0.0".parse()?, 8, "DE"),
            ("192.0.2.0".parse()?, 24, "FR"),
        ],
    )?;
    let db = vigil::posture::geo::GeoIp::open(&pki.path("countries.mmdb"))
        .map_err(anyhow::Error::msg)?;
    assert_eq!(db.country("127.0.0.1".parse()?).as_deref(), Some("DE"));
    assert_eq!(db.country("192.0.2.9".parse()?).as_deref(), Some("FR"));
    assert_eq!(db.country("10.0.0.1".parse()?), None);

    let laptop = pki.workload(SPIFFE_WEB)?;
    let client = client_config(Some(&laptop), pki.ca.cert_pem(), &[])?;
    let rules = "allow = [{ spiffe = [\"spiffe://example.org/**\"] }]\nrisk = { low = \"allow\", medium = \"read_only\", high = \"deny\" }";
    let post =
        "POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    // Loopback is in "DE": allowed in the first configuration, not in the second.
    for (allowed, status) in [("DE", 200), ("FR", 403)] {
        let risk = format!(
            "\n[risk]\ngeoip_database = \"countries.mmdb\"\nallowed_countries = [\"{allowed}\"]\n"
        );
        let running = proxy(&pki, "", &risk, rules).await?;
        assert_eq!(
            get(running.addr, client.clone(), "/x", "").await?.status,
            200
        );
        let reply = raw(running.addr, client.clone(), "localhost", post).await?;
        assert_eq!(reply.status, status, "allowed {allowed}: {reply:?}");
        if status == 403 {
            let id = reply.json()["request_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let line = decision_for(&pki.path("d.log"), &id)
                .await
                .expect("decision");
            assert!(
                line["risk"]["signals"]
                    .to_string()
                    .contains("source country DE not allowed"),
                "{line}"
            );
        }
        running.shutdown().await;
    }
    Ok(())
}

#[tokio::test]
async fn an_open_websocket_is_cut_when_its_device_falls_out_of_compliance() -> Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let pki = Pki::new()?;
    let laptop = pki.workload(SPIFFE_WEB)?;
    let fp = fingerprint(&laptop)?;
    let file = pki.path("devices.json");
    std::fs::write(&file, inventory(&[(&fp, true, "14.5")]))?;
    let ws = ws_echo_upstream().await?;
    let text = format!(
        "{}{DEVICES}\n[verify]\ninterval = \"1s\"\n\n[[route]]\nname = \"ws\"\nhost = \"localhost\"\nupstream = \"http://{ws}\"\nlogin = \"none\"\nallow = [{{ spiffe = [\"spiffe://example.org/**\"], device = \"compliant\" }}]\n",
        base_config("", &pki.path("d.log")),
    );
    std::fs::write(pki.path("vigil.toml"), text)?;
    let running = vigil::start_file(&pki.path("vigil.toml")).await?;
    let tls = connect(
        running.addr,
        client_config(Some(&laptop), pki.ca.cert_pem(), &[b"http/1.1"])?,
        "localhost",
    )
    .await?;
    let (mut socket, _) = tokio::time::timeout(
        STEP,
        tokio_tungstenite::client_async("wss://localhost/chat", tls),
    )
    .await??;
    socket.send(Message::text("hi")).await?;
    assert_eq!(
        tokio::time::timeout(STEP, socket.next())
            .await?
            .transpose()?,
        Some(Message::text("hi"))
    );

    replace_file(&file, &inventory(&[(&fp, false, "14.5")]))?;
    let changed = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the tunnel outlived the device's compliance"
    );
    eprintln!(
        "tunnel cut {:?} after the inventory changed",
        changed.elapsed()
    );
    assert!(metric(&running, "vigil_connections_cut_total{reason=\"policy\"}").await? >= 1.0);
    Ok(())
}

/// An MDM export served over https with an ETag; counts conditional requests answered 304.
async fn mdm_server(
    pki: &Pki,
    body: std::sync::Arc<std::sync::Mutex<String>>,
    not_modified: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Result<std::net::SocketAddr> {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let cert = pki.ca.issue(&vigil::certs::LeafSpec::server(
        vec![],
        vec!["127.0.0.1".parse()?],
    ))?;
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())?;
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body, not_modified) =
                (acceptor.clone(), body.clone(), not_modified.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let text = body.lock().map(|b| b.clone()).unwrap_or_default();
                    let etag = format!(
                        "\"{:x}\"",
                        text.len() * 31 + text.bytes().map(usize::from).sum::<usize>()
                    );
                    let same = req
                        .headers()
                        .get("if-none-match")
                        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
                    let response = if same {
                        not_modified.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        http::Response::builder()
                            .status(304)
                            .header("etag", &etag)
                            .body(Full::new(bytes::Bytes::new()))
                    } else {
                        http::Response::builder()
                            .header("etag", &etag)
                            .body(Full::new(bytes::Bytes::from(text)))
                    };
                    async move { response }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

#[tokio::test]
async fn an_https_inventory_is_polled_with_etags() -> Result<()> {
    let pki = Pki::new()?;
    let laptop = pki.workload(SPIFFE_WEB)?;
    let fp = fingerprint(&laptop)?;
    let body = std::sync::Arc::new(std::sync::Mutex::new(inventory(&[(&fp, true, "14.5")])));
    let not_modified = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mdm = mdm_server(&pki, body.clone(), not_modified.clone()).await?;
    let devices = format!(
        "\n[devices]\nsource = \"https://{mdm}/export\"\nca = \"ca.pem\"\nrefresh = \"200ms\"\nmax_stale = \"30s\"\n"
    );
    let running = proxy(
        &pki,
        &devices,
        "",
        "allow = [{ spiffe = [\"spiffe://example.org/**\"], device = \"compliant\" }]",
    )
    .await?;
    let client = client_config(Some(&laptop), pki.ca.cert_pem(), &[])?;
    let allowed = eventually(Duration::from_secs(5), || async {
        get(running.addr, client.clone(), "/x", "")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(allowed, "the https inventory was never loaded");
    let polled = eventually(Duration::from_secs(5), || async {
        not_modified.load(std::sync::atomic::Ordering::Relaxed) >= 2
    })
    .await;
    assert!(
        polled,
        "no conditional polling (If-None-Match answered 304)"
    );
    *body.lock().map_err(|_| anyhow::anyhow!("lock"))? = inventory(&[(&fp, false, "14.5")]);
    let denied = eventually(Duration::from_secs(5), || async {
        get(running.addr, client.clone(), "/x", "")
            .await
            .is_ok_and(|r| r.status == 403)
    })
    .await;
    assert!(denied, "the changed export was not picked up");
    let ready = admin(&running, "GET", "/readyz").await?.json();
    assert_eq!(ready["device_inventory"]["stale"], false);
    Ok(())
}
