//! Hot reload: routes, server certificates and CRLs change while traffic flows, with zero
//! failed requests; invalid changes keep the old configuration and are reported.

mod support;

use anyhow::Result;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use support::*;
use tokio::io::AsyncWriteExt;
use vigil::certs::LeafSpec;

/// Two configurations that differ in routes, policy, upstream, server certificate and CRL.
fn config_text(which: char, log: &Path, up_a: SocketAddr, up_b: SocketAddr) -> String {
    let (server, crl, upstream, paths) = match which {
        'a' => ("server-a", "crl-a.pem", up_a, r#"["/**"]"#),
        _ => ("server-b", "crl-b.pem", up_b, r#"["/public/**"]"#),
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[tls]
cert = "{server}.pem"
key = "{server}.key"
client_ca = ["ca.pem"]
crl = ["{crl}"]

[admin]
listen = "127.0.0.1:0"

[log]
decisions = "{}"

[[route]]
name = "route-{which}"
host = "localhost"
upstream = "http://{upstream}"
login = "none"
allow = [{{ spiffe = ["spiffe://example.org/**"], paths = {paths} }}]
"#,
        log.display()
    )
}

/// Writes `text` to `path` the way editors and config managers do: a new file renamed over.
fn replace_file(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

struct Setup {
    pki: Pki,
    running: vigil::Running,
    config: std::path::PathBuf,
    up_a: SocketAddr,
    up_b: SocketAddr,
    victim: vigil::certs::Issued,
    server_a_serial: Vec<u8>,
    server_b_serial: Vec<u8>,
    _stops: Vec<tokio_util::sync::CancellationToken>,
}

async fn setup() -> Result<Setup> {
    let pki = Pki::new()?;
    let mut serials = Vec::new();
    for name in ["server-a", "server-b"] {
        let cert = pki
            .ca
            .issue(&LeafSpec::server(vec!["localhost".into()], vec![]))?;
        std::fs::write(pki.path(&format!("{name}.pem")), &cert.cert_pem)?;
        std::fs::write(pki.path(&format!("{name}.key")), &cert.key_pem)?;
        serials.push(cert.serial);
    }
    let victim = pki.workload("spiffe://example.org/ns/victim/sa/x")?;
    let next = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    std::fs::write(pki.path("crl-a.pem"), pki.ca.crl_pem(&[], 1, next)?)?;
    let revoked = vigil::certs::Revoked {
        serial: victim.serial.clone(),
        at: time::OffsetDateTime::now_utc() - time::Duration::minutes(1),
    };
    std::fs::write(pki.path("crl-b.pem"), pki.ca.crl_pem(&[revoked], 2, next)?)?;
    let (up_a, stop_a) = echo_upstream().await?;
    let (up_b, stop_b) = echo_upstream().await?;
    let config = pki.path("vigil.toml");
    std::fs::write(
        &config,
        config_text('a', &pki.path("decisions.log"), up_a, up_b),
    )?;
    let running = vigil::start_file(&config).await?;
    Ok(Setup {
        server_a_serial: serials[0].clone(),
        server_b_serial: serials[1].clone(),
        pki,
        running,
        config,
        up_a,
        up_b,
        victim,
        _stops: vec![stop_a, stop_b],
    })
}

fn strip(serial: &[u8]) -> Vec<u8> {
    serial.iter().copied().skip_while(|b| *b == 0).collect()
}

/// The serial of the certificate the server presents on a full handshake.
async fn served_serial(addr: SocketAddr, mut config: rustls::ClientConfig) -> Result<Vec<u8>> {
    config.resumption = rustls::client::Resumption::disabled();
    let tls = connect(addr, config, "localhost").await?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no server certificate"))?;
    let peer = vigil::tls::PeerCert::from_der(cert.as_ref()).map_err(anyhow::Error::msg)?;
    Ok(strip(&peer.serial))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_reloads_under_load_fail_no_request() -> Result<()> {
    let s = setup().await?;
    let addr = s.running.addr;
    let web = client_config(
        Some(&s.pki.workload("spiffe://example.org/ns/web/sa/x")?),
        s.pki.ca.cert_pem(),
        &[b"http/1.1"],
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));

    // Keep-alive client: alternates an allowed path and one only config A allows.
    let keepalive = {
        let (stop, failures, served, web) =
            (stop.clone(), failures.clone(), served.clone(), web.clone());
        let (up_a, up_b) = (s.up_a.to_string(), s.up_b.to_string());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut tls) = connect(addr, web.clone(), "localhost").await else {
                    failures.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                for _ in 0..50 {
                    i += 1;
                    let path = if i.is_multiple_of(2) {
                        "/public/x"
                    } else {
                        "/private/x"
                    };
                    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
                    if tls.write_all(req.as_bytes()).await.is_err() {
                        failures.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    match read_reply(&mut tls).await {
                        Ok(r) => {
                            let via = r.upstream_header("host").unwrap_or_default();
                            let consistent = match (path, r.status) {
                                (_, 200) if via == up_a => true,
                                ("/public/x", 200) if via == up_b => true,
                                ("/private/x", 403) => true,
                                _ => false,
                            };
                            if !consistent {
                                eprintln!("inconsistent: {path} -> {} via {via}", r.status);
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        // A response still streaming when a reload withdraws what allowed
                        // it is cut, with its connection (HTTP/1.1): only config A allows
                        // /private/x, so its answer may be cut by a reload to B. Nothing
                        // else may fail.
                        Err(_) if path == "/private/x" => break,
                        Err(e) => {
                            eprintln!("keep-alive request for {path} failed: {e}");
                            failures.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
        })
    };
    // New connection per request: every handshake during the reloads must succeed.
    let handshakes = {
        let (stop, failures, served, web) =
            (stop.clone(), failures.clone(), served.clone(), web.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match get(addr, web.clone(), "/public/y", "").await {
                    Ok(r) if r.status == 200 => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("fresh-connection request failed: {other:?}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    let log = s.pki.path("decisions.log");
    let victim = client_config(Some(&s.victim), s.pki.ca.cert_pem(), &[b"http/1.1"])?;
    for n in 0..100 {
        let which = if n % 2 == 0 { 'b' } else { 'a' };
        replace_file(&s.config, &config_text(which, &log, s.up_a, s.up_b))?;
        let answer = admin(&s.running, "POST", "/reload").await?;
        assert_eq!(answer.status, 200, "{answer:?}");
        // Every tenth reload, check the new certificate and CRL are in force.
        if n % 10 == 0 || n % 10 == 1 {
            let serial = served_serial(addr, web.clone()).await?;
            let want = if which == 'b' {
                &s.server_b_serial
            } else {
                &s.server_a_serial
            };
            assert_eq!(
                serial,
                strip(want),
                "reload {n}: old server certificate served"
            );
            let victim_ok = get(addr, victim.clone(), "/public/z", "")
                .await
                .is_ok_and(|r| r.status == 200);
            assert_eq!(victim_ok, which == 'a', "reload {n}: CRL not applied");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    keepalive.await?;
    handshakes.await?;
    let served = served.load(Ordering::Relaxed);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed requests during reloads ({served} served)"
    );
    assert!(
        served > 200,
        "only {served} requests were served during the reloads"
    );
    assert!(metric(&s.running, "vigil_config_reloads_total").await? >= 100.0);
    Ok(())
}

#[tokio::test]
async fn invalid_changes_keep_the_old_config_and_are_reported_everywhere() -> Result<()> {
    let logs = captured_logs();
    let s = setup().await?;
    let log = s.pki.path("decisions.log");
    let good = config_text('a', &log, s.up_a, s.up_b);
    let web = client_config(
        Some(&s.pki.workload("spiffe://example.org/ns/web/sa/x")?),
        s.pki.ca.cert_pem(),
        &[],
    )?;
    std::fs::write(
        s.pki.path("broken.crl"),
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )?;
    let cases = [
        (
            "syntax error",
            good.replace("[[route]]", "[[route]"),
            "vigil.toml:",
        ),
        (
            "missing key file",
            good.replace("server-a.key", "gone-7f3a.key"),
            "gone-7f3a.key",
        ),
        (
            "bad CRL",
            good.replace("crl-a.pem", "broken.crl"),
            "broken.crl: not a valid CRL",
        ),
        (
            "bad policy",
            good.replace(r#"paths = ["/**"]"#, r#"networks = ["10.0.0.300/8"]"#),
            "is not a network",
        ),
    ];
    let mut failures_before = metric(&s.running, "vigil_config_reload_failures_total").await?;
    for (what, text, needle) in cases {
        replace_file(&s.config, &text)?;
        let answer = admin(&s.running, "POST", "/reload").await?;
        assert_eq!(answer.status, 422, "{what}: {answer:?}");
        assert!(
            answer.body.contains(needle),
            "{what}: answer lacks {needle:?}: {}",
            answer.body
        );
        let ready = admin(&s.running, "GET", "/readyz").await?;
        assert!(
            ready.body.contains(needle),
            "{what}: /readyz lacks {needle:?}: {}",
            ready.body
        );
        let failures = metric(&s.running, "vigil_config_reload_failures_total").await?;
        assert!(
            failures > failures_before,
            "{what}: failure metric did not move"
        );
        failures_before = failures;
        let logged = eventually(STEP, || {
            let logs = logs.clone();
            async move {
                let text =
                    String::from_utf8_lossy(&logs.lock().map(|l| l.clone()).unwrap_or_default())
                        .to_string();
                text.contains("configuration reload refused") && text.contains(needle)
            }
        })
        .await;
        assert!(logged, "{what}: not in the log");
        // Still serving the old configuration.
        let reply = get(s.running.addr, web.clone(), "/private/x", "").await?;
        assert_eq!(reply.status, 200, "{what}: {reply:?}");
        assert_eq!(reply.upstream_header("host"), Some(s.up_a.to_string()));
        assert_eq!(
            served_serial(s.running.addr, web.clone()).await?,
            strip(&s.server_a_serial)
        );
    }
    // A good configuration clears the error.
    replace_file(&s.config, &good)?;
    assert_eq!(admin(&s.running, "POST", "/reload").await?.status, 200);
    let ready = admin(&s.running, "GET", "/readyz").await?;
    assert!(ready.body.contains("\"last_error\":null"), "{}", ready.body);
    Ok(())
}

#[tokio::test]
async fn file_changes_are_picked_up_by_the_watcher() -> Result<()> {
    let s = setup().await?;
    let log = s.pki.path("decisions.log");
    let web = client_config(
        Some(&s.pki.workload("spiffe://example.org/ns/web/sa/x")?),
        s.pki.ca.cert_pem(),
        &[],
    )?;
    assert_eq!(
        get(s.running.addr, web.clone(), "/private/x", "")
            .await?
            .status,
        200
    );
    let generation = s.running.shared.snapshot.load().generation;
    replace_file(&s.config, &config_text('b', &log, s.up_a, s.up_b))?;
    let applied = eventually(Duration::from_secs(10), || async {
        s.running.shared.snapshot.load().generation > generation
    })
    .await;
    assert!(applied, "the watcher did not reload");
    assert_eq!(
        get(s.running.addr, web.clone(), "/private/x", "")
            .await?
            .status,
        403
    );

    // A change to a file the configuration names (the CRL) is picked up too.
    let generation = s.running.shared.snapshot.load().generation;
    let next = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let text = s.pki.ca.crl_pem(&[], 3, next)?;
    replace_file(&s.pki.path("crl-b.pem"), &text)?;
    let applied = eventually(Duration::from_secs(10), || async {
        s.running.shared.snapshot.load().generation > generation
    })
    .await;
    assert!(applied, "a CRL change did not reload");
    let victim = client_config(Some(&s.victim), s.pki.ca.cert_pem(), &[])?;
    assert_eq!(
        get(s.running.addr, victim, "/public/x", "").await?.status,
        200
    );
    Ok(())
}

#[tokio::test]
async fn listener_changes_need_a_restart() -> Result<()> {
    let s = setup().await?;
    let log = s.pki.path("decisions.log");
    let text = config_text('a', &log, s.up_a, s.up_b)
        .replace(
            "listen = \"127.0.0.1:0\"\n\n[tls]",
            "listen = \"127.0.0.1:1\"\n\n[tls]",
        )
        .replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            "[admin]\nlisten = \"127.0.0.1:2\"",
        );
    replace_file(&s.config, &text)?;
    let answer = admin(&s.running, "POST", "/reload").await?;
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("server.listen"), "{}", answer.body);
    // Addresses as addresses, not as `Some(..)`.
    assert!(
        answer
            .body
            .contains("admin.listen 127.0.0.1:0 -> 127.0.0.1:2"),
        "{}",
        answer.body
    );
    let ready = admin(&s.running, "GET", "/readyz").await?;
    assert!(ready.body.contains("restart_required"), "{}", ready.body);
    // Still listening where it was.
    let web = client_config(
        Some(&s.pki.workload("spiffe://example.org/ns/web/sa/x")?),
        s.pki.ca.cert_pem(),
        &[],
    )?;
    assert_eq!(get(s.running.addr, web, "/x", "").await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn log_lines_carry_the_request_id_of_the_decision() -> Result<()> {
    let logs = captured_logs();
    let pki = Pki::new()?;
    let dead = dead_address().await?;
    let log = pki.path("decisions.log");
    let text = format!(
        "{}[[route]]\nname = \"dead\"\nhost = \"localhost\"\nupstream = \"http://{dead}\"\nlogin = \"none\"\nallow = [{{ spiffe = [\"spiffe://example.org/**\"] }}]\n",
        base_config("", &log)
    );
    let running = spawn(&pki, &text).await?;
    let web = client_config(
        Some(&pki.workload("spiffe://example.org/ns/web/sa/x")?),
        pki.ca.cert_pem(),
        &[],
    )?;
    let reply = get(running.addr, web, "/x", "").await?;
    assert_eq!(reply.status, 502);
    let id = reply.header("x-request-id").unwrap_or_default();
    assert!(decision_for(&log, &id).await.is_some());
    let found = eventually(STEP, || {
        let logs = logs.clone();
        let id = id.clone();
        async move {
            let text = String::from_utf8_lossy(&logs.lock().map(|l| l.clone()).unwrap_or_default())
                .to_string();
            text.lines()
                .any(|l| l.contains("forwarding failed") && l.contains(&id))
        }
    })
    .await;
    assert!(found, "no log line with request id {id}");
    Ok(())
}

/// A reload that brings a CRL which does not verify against its CA (one flipped bit in its
/// signature, or a CRL from another CA with the same name) is refused, and the CRL in force
/// keeps applying: its revoked client is still refused, a good client still served.
#[tokio::test]
async fn a_crl_with_a_bad_signature_is_refused_at_reload() -> Result<()> {
    use rustls::pki_types::CertificateRevocationListDer;
    use rustls::pki_types::pem::PemObject;
    let s = setup().await?;
    let log = s.pki.path("decisions.log");
    // Config B: crl-b.pem revokes the victim.
    replace_file(&s.config, &config_text('b', &log, s.up_a, s.up_b))?;
    assert_eq!(admin(&s.running, "POST", "/reload").await?.status, 200);
    let web = client_config(
        Some(&s.pki.workload("spiffe://example.org/ns/web/sa/x")?),
        s.pki.ca.cert_pem(),
        &[],
    )?;
    let victim = client_config(Some(&s.victim), s.pki.ca.cert_pem(), &[])?;
    let served = |r: Result<Reply>| r.is_ok_and(|r| r.status == 200);
    assert!(!served(
        get(s.running.addr, victim.clone(), "/public/x", "").await
    ));
    assert_eq!(
        get(s.running.addr, web.clone(), "/public/x", "")
            .await?
            .status,
        200
    );

    let next = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    // An empty CRL (it would let the victim in) with one bit of its signature flipped.
    let mut flipped =
        CertificateRevocationListDer::from_pem_slice(s.pki.ca.crl_pem(&[], 3, next)?.as_bytes())?
            .as_ref()
            .to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    let impostor = vigil::certs::Authority::generate("Test CA")?;
    let cases: [(&str, Vec<u8>, &str); 2] = [
        ("flipped bit", flipped, "signature does not verify"),
        (
            "same-name CA",
            impostor.crl_pem(&[], 4, next)?.into_bytes(),
            "another CA with the same name",
        ),
    ];
    let mut failures_before = metric(&s.running, "vigil_config_reload_failures_total").await?;
    for (what, bytes, needle) in cases {
        let tmp = s.pki.path("crl-b.tmp");
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, s.pki.path("crl-b.pem"))?;
        let answer = admin(&s.running, "POST", "/reload").await?;
        assert_eq!(answer.status, 422, "{what}: {answer:?}");
        assert!(
            answer.body.contains("crl-b.pem") && answer.body.contains(needle),
            "{what}: {}",
            answer.body
        );
        let ready = admin(&s.running, "GET", "/readyz").await?;
        assert!(ready.body.contains(needle), "{what}: {}", ready.body);
        let failures = metric(&s.running, "vigil_config_reload_failures_total").await?;
        assert!(
            failures > failures_before,
            "{what}: failure metric did not move"
        );
        failures_before = failures;
        // The old CRL is still in force.
        assert!(
            !served(get(s.running.addr, victim.clone(), "/public/x", "").await),
            "{what}: the revoked client got in"
        );
        assert_eq!(
            get(s.running.addr, web.clone(), "/public/x", "")
                .await?
                .status,
            200,
            "{what}"
        );
    }
    assert!(
        metric(
            &s.running,
            "vigil_tls_handshake_failures_total{reason=\"revoked\"}"
        )
        .await?
            >= 3.0
    );
    // A good CRL from the right CA is taken.
    replace_file(&s.pki.path("crl-b.pem"), &s.pki.ca.crl_pem(&[], 5, next)?)?;
    assert_eq!(admin(&s.running, "POST", "/reload").await?.status, 200);
    assert_eq!(
        get(s.running.addr, victim, "/public/x", "").await?.status,
        200
    );
    Ok(())
}

/// TLS skips certificate verification on a resumed session, so Vigil does it itself: a
/// session ticket from before a reload that revoked its client's certificate gets nowhere.
#[tokio::test]
async fn a_resumed_session_is_checked_against_the_crl_in_force() -> Result<()> {
    let s = setup().await?;
    let addr = s.running.addr;
    let victim = client_config(Some(&s.victim), s.pki.ca.cert_pem(), &[])?;
    assert_eq!(
        get(addr, victim.clone(), "/public/x", "").await?.status,
        200
    );
    // Config B: crl-b.pem revokes the victim.
    let log = s.pki.path("decisions.log");
    replace_file(&s.config, &config_text('b', &log, s.up_a, s.up_b))?;
    assert_eq!(admin(&s.running, "POST", "/reload").await?.status, 200);
    let mut tls = connect(addr, victim, "localhost").await?;
    assert_eq!(
        tls.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    // The server may have closed the connection already: only the answer matters.
    let _ = tls
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert!(
        read_reply(&mut tls).await.is_err(),
        "a resumed session of a revoked certificate was served"
    );
    let refused = eventually(STEP, || async {
        metric(
            &s.running,
            "vigil_tls_handshake_failures_total{reason=\"revoked\"}",
        )
        .await
        .is_ok_and(|n| n >= 1.0)
    })
    .await;
    assert!(refused, "the refusal was not counted as revoked");
    Ok(())
}
