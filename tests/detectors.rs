//! Detectors over real sockets: eleven denials block a workload (one signed alert of each kind
//! at a real HTTPS receiver, 403 `blocked` without reaching the upstream, access back once the
//! block is lifted on the admin API), distinct source addresses from clients bound to other
//! 127.0.0.x addresses, distinct countries raising the risk so that a route's risk action
//! applies, and the configuration mistakes `vigil check` reports.

mod support;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::receiver::Receiver;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket};

const SECRET: &str = "detectors-alert-secret-0123456789";
const WAIT: Duration = Duration::from_secs(10);
const WORKLOAD: &str = "spiffe://example.org/ns/apps/sa/billing";

/// An upstream that answers 200 and counts the requests it got.
async fn counting_upstream() -> Result<(SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async {
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from("up"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok((addr, hits))
}

/// The signed alerts of `kind` the receiver got.
fn kinds(receiver: &Receiver, kind: &str) -> Vec<serde_json::Value> {
    receiver.signed_of_kind(SECRET.as_bytes(), kind)
}

/// `GET path` over a fresh connection from source address `from`.
async fn get_from(
    proxy: SocketAddr,
    from: IpAddr,
    config: rustls::ClientConfig,
    path: &str,
) -> Result<Reply> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let tcp = socket.connect(proxy).await?;
    let name = ServerName::try_from("localhost")?;
    let mut tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .context("handshake timed out")??;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    read_reply(&mut tls).await
}

/// A call to the admin API with a JSON body.
async fn admin_json(running: &vigil::Running, path: &str, body: &str) -> Result<Reply> {
    let addr = running.admin.context("admin listener off")?;
    let headers = format!("Host: {addr}\r\nContent-Type: application/json\r\n");
    admin_raw(running, "POST", path, &headers, body).await
}

/// A configuration with one workload route allowing only `/ok/`, and `extra` sections.
fn config(pki: &Pki, upstream: SocketAddr, extra: &str, route_extra: &str) -> String {
    format!(
        "{}{extra}\n[[route]]\nname = \"billing\"\nhost = \"localhost\"\nupstream = \"http://{upstream}\"\nlogin = \"none\"\nallow = [{{ spiffe = [\"{WORKLOAD}\"], paths = [\"/ok/**\"] }}]\n{route_extra}\n",
        base_config("", &pki.path("d.log")),
    )
}

/// True when the decision line has reason code `code`.
fn has_code(line: &serde_json::Value, code: &str) -> bool {
    line["codes"]
        .as_array()
        .is_some_and(|codes| codes.iter().any(|c| c == code))
}

#[tokio::test]
async fn eleven_denials_block_the_workload_until_the_block_is_lifted() -> Result<()> {
    let pki = Pki::new()?;
    std::fs::write(pki.path("alerts.secret"), SECRET)?;
    let receiver = Receiver::start(&pki, &[]).await?;
    let (upstream, hits) = counting_upstream().await?;
    let extra = format!(
        "\n[alerts]\nwebhook = \"https://127.0.0.1:{}/hook\"\nca = \"ca.pem\"\nsecret_file = \"alerts.secret\"\n\n[detectors]\n[detectors.denials]\nper = [\"device\"]\nblock_for = \"10m\"\n",
        receiver.addr.port()
    );
    let running = spawn(&pki, &config(&pki, upstream, &extra, "")).await?;
    let billing = pki.workload(WORKLOAD)?;
    let client = || client_config(Some(&billing), pki.ca.cert_pem(), &[b"http/1.1"]);
    let fired = "vigil_detector_fired_total{detector=\"denials\",action=\"block\"}";
    assert_eq!(metric(&running, fired).await?, 0.0);
    assert_eq!(get(running.addr, client()?, "/ok/a", "").await?.status, 200);
    for _ in 0..10 {
        assert_eq!(
            get(running.addr, client()?, "/secret", "").await?.status,
            403
        );
    }
    // Ten denials are not more than ten: still allowed.
    assert_eq!(get(running.addr, client()?, "/ok/b", "").await?.status, 200);
    assert_eq!(
        get(running.addr, client()?, "/secret", "").await?.status,
        403
    );
    assert_eq!(metric(&running, fired).await?, 1.0);
    assert_eq!(metric(&running, "vigil_blocks_active").await?, 1.0);
    let before = hits.load(Ordering::SeqCst);
    let blocked = get(running.addr, client()?, "/ok/c", "").await?;
    assert_eq!(blocked.status, 403);
    let id = blocked.header("x-request-id").context("no request id")?;
    let line = decision_for(&pki.path("d.log"), &id)
        .await
        .context("no line")?;
    assert!(has_code(&line, "blocked"), "{line}");
    assert!(line.get("upstream").is_none(), "{line}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before,
        "a blocked request reached the upstream"
    );
    // More denials while blocked do not fire again.
    assert_eq!(
        get(running.addr, client()?, "/secret", "").await?.status,
        403
    );
    assert_eq!(metric(&running, fired).await?, 1.0);

    let listed = admin(&running, "GET", "/blocks").await?.json();
    let blocks = listed["blocks"].as_array().context("no blocks")?;
    assert_eq!(blocks.len(), 1, "{listed}");
    assert_eq!(blocks[0]["by"], "denials");
    let device = blocks[0]["subject"]["device"]
        .as_str()
        .context("no device")?
        .to_owned();

    assert!(
        eventually(WAIT, || async {
            !kinds(&receiver, "block").is_empty() && !kinds(&receiver, "detector_fired").is_empty()
        })
        .await,
        "the alerts did not arrive"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fired_alerts = kinds(&receiver, "detector_fired");
    assert_eq!(fired_alerts.len(), 1, "{fired_alerts:?}");
    assert_eq!(fired_alerts[0]["detail"]["detector"], "denials");
    assert_eq!(fired_alerts[0]["detail"]["count"], 11);
    assert_eq!(kinds(&receiver, "block").len(), 1);
    assert_eq!(
        kinds(&receiver, "block")[0]["subject"],
        format!("device:{device}")
    );
    assert_eq!(receiver.forged(SECRET.as_bytes()), 0);

    let body = format!("{{\"subject\": {{\"device\": \"{device}\"}}}}");
    assert_eq!(
        admin_json(&running, "/blocks/lift", &body).await?.status,
        200
    );
    assert_eq!(get(running.addr, client()?, "/ok/d", "").await?.status, 200);
    assert_eq!(
        admin_json(&running, "/blocks/lift", &body).await?.status,
        404
    );
    assert_eq!(metric(&running, "vigil_blocks_active").await?, 0.0);
    assert!(
        eventually(WAIT, || async {
            kinds(&receiver, "block_lifted").len() == 1
        })
        .await
    );
    let lifts = || {
        decisions(&pki.path("d.log"))
            .into_iter()
            .filter(|l| l["kind"] == "admin_action" && l["action"] == "lift_block")
            .collect::<Vec<_>>()
    };
    assert!(eventually(WAIT, || async { lifts().len() == 2 }).await);
    let actions = lifts();
    assert_eq!(actions[1]["outcome"], "refused");
    assert_eq!(actions[0]["target"]["subject"], format!("device:{device}"));
    running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_operator_blocks_an_address_and_the_block_ends_by_itself() -> Result<()> {
    let pki = Pki::new()?;
    let (upstream, _) = counting_upstream().await?;
    let running = spawn(&pki, &config(&pki, upstream, "", "")).await?;
    let billing = pki.workload(WORKLOAD)?;
    let client = || client_config(Some(&billing), pki.ca.cert_pem(), &[b"http/1.1"]);
    let from: IpAddr = "127.0.0.7".parse()?;
    let body = r#"{"subject": {"address": "127.0.0.7"}, "duration": "2s", "reason": "scanning"}"#;
    let made = admin_json(&running, "/blocks", body).await?;
    assert_eq!(made.status, 201, "{}", made.body);
    assert_eq!(made.json()["block"]["by"], "admin");
    assert_eq!(
        get_from(running.addr, from, client()?, "/ok/")
            .await?
            .status,
        403
    );
    assert_eq!(get(running.addr, client()?, "/ok/", "").await?.status, 200);
    let bad = admin_json(
        &running,
        "/blocks",
        r#"{"subject": {"group": "staff"}, "duration": "1m"}"#,
    )
    .await?;
    assert_eq!(bad.status, 400);
    assert!(
        eventually(WAIT, || async {
            metric(&running, "vigil_blocks_active").await.unwrap_or(1.0) == 0.0
        })
        .await
    );
    assert_eq!(
        get_from(running.addr, from, client()?, "/ok/")
            .await?
            .status,
        200
    );
    running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn distinct_source_addresses_block_the_workload() -> Result<()> {
    let pki = Pki::new()?;
    let (upstream, _) = counting_upstream().await?;
    let extra = "\n[detectors]\n[detectors.addresses]\nthreshold = 2\n";
    let running = spawn(&pki, &config(&pki, upstream, extra, "")).await?;
    let billing = pki.workload(WORKLOAD)?;
    let client = || client_config(Some(&billing), pki.ca.cert_pem(), &[b"http/1.1"]);
    for from in ["127.0.0.1", "127.0.0.2", "127.0.0.1", "127.0.0.2"] {
        let reply = get_from(running.addr, from.parse()?, client()?, "/ok/").await?;
        assert_eq!(reply.status, 200, "from {from}");
    }
    // A third address is more than two: this very request is refused.
    let third = get_from(running.addr, "127.0.0.3".parse()?, client()?, "/ok/").await?;
    assert_eq!(third.status, 403);
    let id = third.header("x-request-id").context("no request id")?;
    let line = decision_for(&pki.path("d.log"), &id)
        .await
        .context("no line")?;
    assert!(has_code(&line, "blocked"), "{line}");
    let fired = "vigil_detector_fired_total{detector=\"addresses\",action=\"block\"}";
    assert_eq!(metric(&running, fired).await?, 1.0);
    assert_eq!(
        get_from(running.addr, "127.0.0.1".parse()?, client()?, "/ok/")
            .await?
            .status,
        403
    );
    running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn distinct_countries_raise_the_risk_and_the_route_denies_it() -> Result<()> {
    let pki = Pki::new()?;
    support::mmdb::write_country_db(
        &pki.path("countries.mmdb"),
        &[
            ("127.0.0.1".parse()?, 32, "DE"),
            ("127.0.0.2".parse()?, 32, "DE"),
            ("127.0.0.3".parse()?, 32, "FR"),
        ],
    )?;
    let (upstream, hits) = counting_upstream().await?;
    let extra = "\n[risk]\ngeoip_database = \"countries.mmdb\"\n\n[detectors]\n[detectors.countries]\naction = \"raise_risk\"\nweight = 60\nraise_for = \"10m\"\n";
    let risk = "risk = { low = \"allow\", medium = \"allow\", high = \"deny\" }";
    let running = spawn(&pki, &config(&pki, upstream, extra, risk)).await?;
    let billing = pki.workload(WORKLOAD)?;
    let client = || client_config(Some(&billing), pki.ca.cert_pem(), &[b"http/1.1"]);
    for from in ["127.0.0.1", "127.0.0.2", "127.0.0.1"] {
        let reply = get_from(running.addr, from.parse()?, client()?, "/ok/").await?;
        assert_eq!(reply.status, 200, "from {from}");
    }
    let before = hits.load(Ordering::SeqCst);
    let france = get_from(running.addr, "127.0.0.3".parse()?, client()?, "/ok/").await?;
    assert_eq!(france.status, 403);
    let id = france.header("x-request-id").context("no request id")?;
    let line = decision_for(&pki.path("d.log"), &id)
        .await
        .context("no line")?;
    assert_eq!(line["risk"]["level"], "high", "{line}");
    assert!(
        line.to_string().contains("detector countries fired"),
        "{line}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), before);
    // The signal stays on the workload, from any address, for raise_for.
    assert_eq!(
        get_from(running.addr, "127.0.0.1".parse()?, client()?, "/ok/")
            .await?
            .status,
        403
    );
    let fired = "vigil_detector_fired_total{detector=\"countries\",action=\"raise_risk\"}";
    assert_eq!(metric(&running, fired).await?, 1.0);
    assert_eq!(metric(&running, "vigil_blocks_active").await?, 0.0);
    running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn vigil_check_names_the_detector_mistakes() -> Result<()> {
    let pki = Pki::new()?;
    let text = format!(
        "{}\n[detectors]\ntable_size = 10\n[detectors.denials]\nper = [\"user\", \"tenant\"]\naction = \"raise_risk\"\n[detectors.countries]\n[detectors.revoked]\naction = \"ban\"\nthreshold = 0\n[detectors.addresses]\nper = [\"address\"]\n",
        base_config("", &pki.path("d.log")),
    );
    std::fs::write(pki.path("bad.toml"), &text)?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["check", "--config"])
        .arg(pki.path("bad.toml"))
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for expected in [
        "must be at least 100",
        "unknown \"tenant\"",
        "raise_risk needs [risk]",
        "the country detector needs [risk] geoip_database",
        "unknown action \"ban\"",
        "must be at least 1\n",
        "counts per person",
    ] {
        assert!(said.contains(expected), "{expected:?} not in:\n{said}");
    }
    Ok(())
}

/// The SHA-256 fingerprint of an issued certificate, hex.
fn fingerprint(issued: &vigil::certs::Issued) -> Result<String> {
    let der = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .next()
        .context("no certificate")??;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
    Ok(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

#[tokio::test]
async fn a_revoked_device_that_keeps_trying_is_blocked() -> Result<()> {
    let pki = Pki::new()?;
    let (upstream, _) = counting_upstream().await?;
    let extra = "\n[detectors]\n[detectors.revoked]\nper = [\"device\"]\n";
    let running = spawn(&pki, &config(&pki, upstream, extra, "")).await?;
    let billing = pki.workload(WORKLOAD)?;
    let client = || client_config(Some(&billing), pki.ca.cert_pem(), &[b"http/1.1"]);
    let fp = fingerprint(&billing)?;
    let revoked = admin_json(&running, "/revoke", &format!("{{\"device\": \"{fp}\"}}")).await?;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    let fired = "vigil_detector_fired_total{detector=\"revoked\",action=\"block\"}";
    for _ in 0..3 {
        let _ = get(running.addr, client()?, "/ok/", "").await;
    }
    assert_eq!(metric(&running, fired).await?, 0.0);
    let _ = get(running.addr, client()?, "/ok/", "").await;
    assert_eq!(metric(&running, fired).await?, 1.0);
    let listed = admin(&running, "GET", "/blocks").await?.json();
    assert_eq!(
        listed["blocks"][0]["subject"]["device"],
        fp.as_str(),
        "{listed}"
    );
    assert_eq!(listed["blocks"][0]["by"], "revoked");
    running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_reload_keeps_the_counts_and_applies_the_new_threshold() -> Result<()> {
    let pki = Pki::new()?;
    let (upstream, _) = counting_upstream().await?;
    let with = |threshold: u32| {
        let extra = format!(
            "\n[detectors]\n[detectors.denials]\nper = [\"device\"]\nthreshold = {threshold}\n"
        );
        config(&pki, upstream, &extra, "")
    };
    std::fs::write(pki.path("vigil.toml"), with(10))?;
    let running = vigil::start_file(&pki.path("vigil.toml")).await?;
    let billing = pki.workload(WORKLOAD)?;
    let client = || client_config(Some(&billing), pki.ca.cert_pem(), &[b"http/1.1"]);
    for _ in 0..6 {
        assert_eq!(
            get(running.addr, client()?, "/secret", "").await?.status,
            403
        );
    }
    std::fs::write(pki.path("vigil.toml"), with(7))?;
    let reloaded = admin(&running, "POST", "/reload").await?;
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    assert_eq!(get(running.addr, client()?, "/ok/", "").await?.status, 200);
    // The seventh denial is not more than seven; the eighth is.
    assert_eq!(
        get(running.addr, client()?, "/secret", "").await?.status,
        403
    );
    assert_eq!(get(running.addr, client()?, "/ok/", "").await?.status, 200);
    assert_eq!(
        get(running.addr, client()?, "/secret", "").await?.status,
        403
    );
    assert_eq!(get(running.addr, client()?, "/ok/", "").await?.status, 403);
    running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn failed_sign_ins_at_the_callback_block_the_device() -> Result<()> {
    let pki = Pki::new()?;
    let (upstream, _) = counting_upstream().await?;
    std::fs::write(
        pki.path("session.keys"),
        vigil::identity::seal::KeyRing::generate_line().map_err(anyhow::Error::msg)? + "\n",
    )?;
    std::fs::write(pki.path("oidc.secret"), "an-oidc-client-secret\n")?;
    // The provider is never asked: a callback without its sign-in cookie fails before.
    let idp = dead_address().await?;
    let extra = format!(
        "\n[oidc]\nissuer = \"http://{idp}\"\nclient_id = \"vigil\"\nclient_secret_file = \"oidc.secret\"\n\n[session]\nkeys_file = \"session.keys\"\n\n[detectors]\n[detectors.failed_logins]\nper = [\"device\"]\n"
    );
    let running = spawn(&pki, &config(&pki, upstream, &extra, "")).await?;
    let billing = pki.workload(WORKLOAD)?;
    let client = || client_config(Some(&billing), pki.ca.cert_pem(), &[b"http/1.1"]);
    let callback = "/.vigil/callback?state=forged&code=guessed";
    for _ in 0..5 {
        assert_eq!(
            get(running.addr, client()?, callback, "").await?.status,
            400
        );
    }
    assert_eq!(get(running.addr, client()?, "/ok/", "").await?.status, 200);
    assert_eq!(
        get(running.addr, client()?, callback, "").await?.status,
        400
    );
    let fired = "vigil_detector_fired_total{detector=\"failed_logins\",action=\"block\"}";
    assert_eq!(metric(&running, fired).await?, 1.0);
    assert_eq!(get(running.addr, client()?, "/ok/", "").await?.status, 403);
    running.shutdown().await;
    Ok(())
}
