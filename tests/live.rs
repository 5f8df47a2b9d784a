//! Continuous verification of live connections and revocation: open connections do not
//! outlive their certificate, device or session.

mod support;

use anyhow::{Context as _, Result};
use rustls::pki_types::pem::PemObject;
use std::time::{Duration, Instant};
use support::idp::ALICE;
use support::world::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A proxy started from a file with an (initially empty) CRL, for workload certificates.
async fn workload_proxy(pki: &Pki) -> Result<(vigil::Running, std::path::PathBuf)> {
    let (upstream, stop) = echo_upstream().await?;
    std::mem::forget(stop);
    pki.write_crl(&[], 1)?;
    let config = pki.path("vigil.toml");
    let text = format!(
        "{}[[route]]\nname = \"r\"\nhost = \"localhost\"\nupstream = \"http://{upstream}\"\nlogin = \"none\"\nallow = [{{ spiffe = [\"spiffe://example.org/**\"] }}]\n",
        base_config("", &pki.path("d.log")).replace(
            "client_ca = [\"ca.pem\"]",
            "client_ca = [\"ca.pem\"]\ncrl = [\"ca.crl\"]"
        )
    );
    std::fs::write(&config, text)?;
    Ok((vigil::start_file(&config).await?, config))
}

#[tokio::test]
async fn a_certificate_put_on_the_crl_loses_its_open_http2_connection() -> Result<()> {
    let pki = Pki::new()?;
    let (running, _) = workload_proxy(&pki).await?;
    let victim = pki.workload(SPIFFE_WEB)?;
    let config = client_config(Some(&victim), pki.ca.cert_pem(), &[b"h2"])?;
    let tls = connect(running.addr, config, "localhost").await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await?;
    let connection = tokio::spawn(conn);
    let request = || {
        http::Request::builder()
            .uri("https://localhost/x")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
    };
    assert_eq!(sender.send_request(request()?).await?.status(), 200);

    pki.write_crl(&[&victim.serial], 2)?;
    let revoked_at = Instant::now();
    assert_eq!(admin(&running, "POST", "/reload").await?.status, 200);
    let closed = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(
        closed.is_ok(),
        "the HTTP/2 connection stayed open after the CRL reload"
    );
    eprintln!("cut off {:?} after the reload", revoked_at.elapsed());
    assert!(sender.send_request(request()?).await.is_err());
    assert!(metric(&running, "vigil_connections_cut_total{reason=\"revoked\"}").await? >= 1.0);
    // And it cannot come back.
    let again = get(
        running.addr,
        client_config(Some(&victim), pki.ca.cert_pem(), &[])?,
        "/x",
        "",
    )
    .await;
    assert!(again.is_err());
    Ok(())
}

#[tokio::test]
async fn admin_device_revocation_is_immediate() -> Result<()> {
    let pki = Pki::new()?;
    let (running, _) = workload_proxy(&pki).await?;
    let laptop = pki.workload(SPIFFE_WEB)?;
    let config = client_config(Some(&laptop), pki.ca.cert_pem(), &[b"http/1.1"])?;
    let mut tls = connect(running.addr, config.clone(), "localhost").await?;
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let reply = read_reply(&mut tls).await?;
    assert_eq!(reply.status, 200);
    let fingerprint = reply
        .upstream_header("x-vigil-device")
        .context("device header")?;

    let admin_addr = running.admin.context("admin")?;
    let body = format!("{{\"device\":\"{fingerprint}\"}}");
    let mut tcp = tokio::net::TcpStream::connect(admin_addr).await?;
    tcp.write_all(format!("POST /revoke HTTP/1.1\r\nHost: {admin_addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes()).await?;
    let answer = read_reply(&mut tcp).await?;
    assert_eq!(answer.status, 200, "{answer:?}");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await?
        .unwrap_or(0);
    assert_eq!(n, 0, "the revoked device's connection stayed open");
    eprintln!(
        "device cut off {:?} after the revocation",
        started.elapsed()
    );
    assert!(
        get(running.addr, config.clone(), "/x", "").await.is_err(),
        "a revoked device got in again"
    );
    let listing = admin(&running, "GET", "/revocations").await?;
    assert!(listing.body.contains(&fingerprint));

    let mut tcp = tokio::net::TcpStream::connect(admin_addr).await?;
    tcp.write_all(format!("POST /restore HTTP/1.1\r\nHost: {admin_addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes()).await?;
    assert_eq!(read_reply(&mut tcp).await?.status, 200);
    assert_eq!(get(running.addr, config, "/x", "").await?.status, 200);
    Ok(())
}

async fn post_admin(running: &vigil::Running, path: &str, body: &str) -> Result<Reply> {
    let admin_addr = running.admin.context("admin")?;
    let mut tcp = tokio::net::TcpStream::connect(admin_addr).await?;
    tcp.write_all(format!("POST {path} HTTP/1.1\r\nHost: {admin_addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes()).await?;
    read_reply(&mut tcp).await
}

#[tokio::test]
async fn admin_session_and_user_revocation() -> Result<()> {
    let w = world().await?;
    let (first, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    let (second, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    let sid = w
        .visit(&w.alice_laptop, "/.vigil/whoami", &first)
        .await?
        .json()["user"]["source"]["sid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!sid.is_empty());
    assert_eq!(
        post_admin(&w.running, "/revoke", &format!("{{\"session\":\"{sid}\"}}"))
            .await?
            .status,
        200
    );
    assert_eq!(
        w.visit(&w.alice_laptop, "/hello", &first).await?.status,
        302
    );
    assert_eq!(
        w.visit(&w.alice_laptop, "/hello", &second).await?.status,
        200
    );

    assert_eq!(
        post_admin(&w.running, "/revoke", "{\"user\":\"alice\"}")
            .await?
            .status,
        200
    );
    assert_eq!(
        w.visit(&w.alice_laptop, "/hello", &second).await?.status,
        302
    );
    // A login after the revocation is a new one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (third, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    assert_eq!(
        w.visit(&w.alice_laptop, "/hello", &third).await?.status,
        200
    );
    assert_eq!(post_admin(&w.running, "/revoke", "{}").await?.status, 400);
    assert_eq!(
        post_admin(&w.running, "/revoke", "{\"device\":\"nope\"}")
            .await?
            .status,
        400
    );
    Ok(())
}

#[tokio::test]
async fn backchannel_logout_ends_the_session() -> Result<()> {
    let w = world_opts("", true).await?;
    let (session, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    assert_eq!(
        w.visit(&w.alice_laptop, "/hello", &session).await?.status,
        200
    );
    let report = w.idp.revoke_user(ALICE).await?;
    eprintln!("provider report: {report}");
    let ended = eventually(Duration::from_secs(5), || async {
        w.visit(&w.alice_laptop, "/hello", &session)
            .await
            .is_ok_and(|r| r.status == 302)
    })
    .await;
    assert!(ended, "the session survived the back-channel logout");
    assert!(
        metric(
            &w.running,
            "vigil_revocations_total{reason=\"backchannel\"}"
        )
        .await?
            >= 1.0
    );
    // A forged logout token is refused.
    let forged = "logout_token=eyJhbGciOiJub25lIn0.eyJzdWIiOiJib2IifQ.";
    let request = format!(
        "POST /.vigil/backchannel HTTP/1.1\r\nHost: localhost:{}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{forged}",
        w.port,
        forged.len()
    );
    let reply = raw(
        w.running.addr,
        w.browser(&w.bob_laptop),
        "localhost",
        &request,
    )
    .await?;
    assert_eq!(reply.status, 400);
    Ok(())
}

/// Vigil's own endpoints read their bodies under `body_read_timeout` too: a back-channel
/// logout trickled a byte at a time gets 408 instead of holding the connection.
#[tokio::test]
async fn a_trickled_backchannel_body_gets_408() -> Result<()> {
    let w = world().await?;
    let tls = connect(w.running.addr, w.browser(&w.bob_laptop), "localhost").await?;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let head = format!(
        "POST /.vigil/backchannel HTTP/1.1\r\nHost: localhost:{}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\nlogout_token=",
        w.port
    );
    wr.write_all(head.as_bytes()).await?;
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if wr.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    let reply = tokio::time::timeout(Duration::from_secs(15), read_reply(&mut rd)).await??;
    trickle.abort();
    assert_eq!(reply.status, 408, "{reply:?}");
    let id = reply.json()["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let line = decision_for(&w.decisions, &id)
        .await
        .expect("decision line");
    assert_eq!(line["status"], 408, "{line}");
    assert!(
        metric(
            &w.running,
            "vigil_limits_hit_total{limit=\"body_read_timeout\"}"
        )
        .await?
            >= 1.0
    );
    Ok(())
}

#[tokio::test]
async fn websocket_closed_when_the_user_is_disabled() -> Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let w = world_with("\n[verify]\ninterval = \"1s\"\nmax_stale = \"1s\"").await?;
    let (session, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    let tls = connect(w.running.addr, w.browser(&w.alice_laptop), "localhost").await?;
    let request = http::Request::builder()
        .uri(format!("wss://localhost:{}/ws", w.port))
        .header("Host", format!("localhost:{}", w.port))
        .header("Cookie", session.clone())
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .body(())?;
    let (mut socket, response) =
        tokio::time::timeout(STEP, tokio_tungstenite::client_async(request, tls)).await??;
    assert_eq!(response.status(), 101);
    socket.send(Message::text("ping")).await?;
    assert_eq!(
        tokio::time::timeout(STEP, socket.next())
            .await?
            .transpose()?,
        Some(Message::text("ping"))
    );

    w.idp.disable_user(ALICE).await?;
    let disabled_at = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the WebSocket outlived the disabled user");
    eprintln!(
        "tunnel closed {:?} after the user was disabled",
        disabled_at.elapsed()
    );
    assert!(
        metric(
            &w.running,
            "vigil_connections_cut_total{reason=\"session_ended\"}"
        )
        .await?
            >= 1.0
    );
    Ok(())
}

/// An upstream of server-sent events: to every request, an event every 100 ms for a minute.
async fn sse_upstream() -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let start = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n";
                if stream.write_all(start.as_bytes()).await.is_err() {
                    return;
                }
                for n in 0..600 {
                    let event = format!("data: {n}\n\n");
                    let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                    if stream.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let _ = stream.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    Ok(addr)
}

/// A world with two more routes served by the SSE upstream: `/events` for engineering
/// (sessions) and `/feed` for the `svc` service (bearer tokens).
async fn world_with_events() -> Result<World> {
    world_with_events_and("").await
}

/// [`world_with_events`] with more configuration (e.g. a `[verify]` section).
async fn world_with_events_and(extra: &str) -> Result<World> {
    let w = world_with(extra).await?;
    let sse = sse_upstream().await?;
    let text = format!(
        "{}\n[[route]]\nname = \"events\"\nhost = \"localhost\"\npath = \"/events\"\nupstream = \"http://{sse}\"\nlogin = \"oidc\"\nallow = [{{ groups = [\"engineering\"] }}]\n\n[[route]]\nname = \"feed\"\nhost = \"localhost\"\npath = \"/feed\"\nupstream = \"http://{sse}\"\nlogin = \"bearer\"\nbearer_audience = \"https://api.test\"\nallow = [{{ users = [\"svc\"] }}]\n",
        w.config_text
    );
    std::fs::write(w.pki.path("vigil.toml"), text)?;
    let reload = admin(&w.running, "POST", "/reload").await?;
    anyhow::ensure!(reload.status == 200, "reload refused: {reload:?}");
    Ok(w)
}

async fn session_id(w: &World, cookies: &str) -> Result<String> {
    let sid = w
        .visit(&w.alice_laptop, "/.vigil/whoami", cookies)
        .await?
        .json()["user"]["source"]["sid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(!sid.is_empty(), "no session id in whoami");
    Ok(sid)
}

#[tokio::test]
async fn an_event_stream_ends_when_its_session_is_revoked() -> Result<()> {
    let w = world_with_events().await?;
    let (session, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    let sid = session_id(&w, &session).await?;
    let mut tls = connect(w.running.addr, w.browser(&w.alice_laptop), "localhost").await?;
    let request = format!(
        "GET /events HTTP/1.1\r\nHost: localhost:{}\r\nAccept: text/event-stream\r\nCookie: {session}\r\n\r\n",
        w.port
    );
    tls.write_all(request.as_bytes()).await?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: 3\n") {
        let n = tokio::time::timeout(STEP, tls.read(&mut buf)).await??;
        anyhow::ensure!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));

    let revoked = post_admin(&w.running, "/revoke", &format!("{{\"session\":\"{sid}\"}}")).await?;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    let revoked_at = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the event stream outlived its revoked session"
    );
    eprintln!(
        "event stream cut {:?} after the revocation",
        revoked_at.elapsed()
    );
    assert!(
        metric(
            &w.running,
            "vigil_connections_cut_total{reason=\"session_revoked\"}"
        )
        .await?
            >= 1.0
    );
    Ok(())
}

#[tokio::test]
async fn only_the_revoked_sessions_http2_stream_is_reset() -> Result<()> {
    use http_body_util::BodyExt;
    let w = world_with_events().await?;
    let (first, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    let (second, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    let sid = session_id(&w, &first).await?;
    let config = client_config(Some(&w.alice_laptop), w.pki.ca.cert_pem(), &[b"h2"])?;
    let tls = connect(w.running.addr, config, "localhost").await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await?;
    let connection = tokio::spawn(conn);
    let mut open = |cookie: &str| {
        let req = http::Request::builder()
            .uri(format!("https://localhost:{}/events", w.port))
            .header("cookie", cookie)
            .header("accept", "text/event-stream")
            .body(http_body_util::Empty::<bytes::Bytes>::new());
        let sent = req.map(|r| sender.send_request(r));
        async move { anyhow::Ok(tokio::time::timeout(STEP, sent?).await??) }
    };
    let doomed = open(&first).await?;
    let kept = open(&second).await?;
    assert_eq!(doomed.status(), 200);
    assert_eq!(kept.status(), 200);
    let mut doomed = doomed.into_body();
    let mut kept = kept.into_body();
    for body in [&mut doomed, &mut kept] {
        let frame = tokio::time::timeout(STEP, body.frame()).await?;
        assert!(matches!(frame, Some(Ok(_))), "no first event");
    }

    let revoked = post_admin(&w.running, "/revoke", &format!("{{\"session\":\"{sid}\"}}")).await?;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match doomed.frame().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    })
    .await;
    let error = ended.context("the revoked session's stream kept flowing")?;
    let error = error.context("the stream ended cleanly instead of being reset")?;
    eprintln!("revoked stream ended with: {error}");
    // The other session's stream on the same connection keeps flowing.
    for _ in 0..3 {
        let frame = tokio::time::timeout(STEP, kept.frame()).await?;
        assert!(matches!(frame, Some(Ok(_))), "the other stream was cut too");
    }
    assert!(!connection.is_finished(), "the whole connection was closed");
    assert!(
        metric(
            &w.running,
            "vigil_connections_cut_total{reason=\"session_revoked\"}"
        )
        .await?
            >= 1.0
    );
    Ok(())
}

/// Reads from `stream` until `needle` has been seen.
async fn read_until<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    needle: &str,
) -> Result<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = tokio::time::timeout(STEP, stream.read(&mut buf)).await??;
        anyhow::ensure!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&seen).to_string())
}

#[tokio::test]
async fn a_bearer_stream_lives_with_its_token() -> Result<()> {
    let w = world_with_events().await?;
    let token = w.idp.client_credentials("orders:read").await?;
    let workload = w.pki.workload(SPIFFE_WEB)?;
    let config = client_config(Some(&workload), w.pki.ca.cert_pem(), &[b"http/1.1"])?;
    let mut tls = connect(w.running.addr, config, "localhost").await?;
    let request = format!(
        "GET /feed HTTP/1.1\r\nHost: localhost:{}\r\nAuthorization: Bearer {token}\r\n\r\n",
        w.port
    );
    tls.write_all(request.as_bytes()).await?;
    let head = read_until(&mut tls, "data: 1\n").await?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // A sweep re-decides the stream with the token's identity: it still passes.
    assert_eq!(admin(&w.running, "POST", "/reload").await?.status, 200);
    read_until(&mut tls, "data: 8\n").await?;

    // Revoking the token's subject ends it.
    let revoked = post_admin(&w.running, "/revoke", "{\"user\":\"svc\"}").await?;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stream outlived its token's revocation");
    assert!(
        metric(
            &w.running,
            "vigil_connections_cut_total{reason=\"token_revoked\"}"
        )
        .await?
            >= 1.0
    );
    assert_eq!(
        metric(&w.running, "vigil_connections_cut_total{reason=\"policy\"}").await?,
        0.0
    );
    Ok(())
}

/// Opens `GET /events` from Alice's laptop with `session` and reads its first events.
async fn open_events(w: &World, session: &str) -> Result<impl tokio::io::AsyncRead + Unpin> {
    let mut tls = connect(w.running.addr, w.browser(&w.alice_laptop), "localhost").await?;
    let request = format!(
        "GET /events HTTP/1.1\r\nHost: localhost:{}\r\nAccept: text/event-stream\r\nCookie: {session}\r\n\r\n",
        w.port
    );
    tls.write_all(request.as_bytes()).await?;
    let seen = read_until(&mut tls, "data: 1\n").await?;
    anyhow::ensure!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    Ok(tls)
}

/// Whether `stream` is closed (or reset) within `within`, reading (and dropping) what comes.
async fn closes_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// The live-connection verifier never waits for the provider: with the token endpoint hung,
/// a stream whose session is due for re-verification keeps flowing on its last verification
/// (`max_stale` is long), and a device revoked meanwhile loses its connection at once, not
/// after the provider's client gives up.
#[tokio::test]
async fn a_hung_provider_does_not_hold_up_the_sweep() -> Result<()> {
    let w = world_with_events_and("\n[verify]\ninterval = \"1s\"\nmax_stale = \"60s\"").await?;
    let (session, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    let mut stream = open_events(&w, &session).await?;
    let (bobs, _) = w.sign_in(&w.bob_laptop, "/", support::idp::BOB).await?;
    let mut bob = connect(w.running.addr, w.browser(&w.bob_laptop), "localhost").await?;
    bob.write_all(
        format!(
            "GET /hello HTTP/1.1\r\nHost: localhost:{}\r\nCookie: {bobs}\r\n\r\n",
            w.port
        )
        .as_bytes(),
    )
    .await?;
    let reply = read_reply(&mut bob).await?;
    assert_eq!(reply.status, 200, "{reply:?}");

    w.idp.fault("/token", Some("hang")).await?;
    // Alice's session is due within a second: sweeps start its refresh, which hangs.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(w.bob_laptop.cert_pem.as_bytes())?;
    let fingerprint = vigil::tls::peer::PeerCert::from_der(&der)
        .map_err(anyhow::Error::msg)?
        .fingerprint_hex;
    let revoked = post_admin(
        &w.running,
        "/revoke",
        &format!("{{\"device\":\"{fingerprint}\"}}"),
    )
    .await?;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    let revoked_at = Instant::now();
    let cut = closes_within(&mut bob, Duration::from_secs(2)).await;
    let waited = revoked_at.elapsed();
    // Alice's stream stands: it is within interval + max_stale of its last verification.
    let flowing = read_until(&mut stream, "data: 40\n").await;
    w.idp.fault("/token", None).await?;
    assert!(
        cut,
        "the revoked device's connection was not cut within 2 s while the provider hung"
    );
    eprintln!("device cut off {waited:?} after the revocation, with the provider hung");
    flowing.context("the stream under a session within max_stale was cut")?;
    assert!(
        metric(
            &w.running,
            "vigil_connections_cut_total{reason=\"device_revoked\"}"
        )
        .await?
            >= 1.0
    );
    Ok(())
}

/// A stream whose session passes `interval + max_stale` while the provider hangs is cut with
/// `session_unverifiable` within about one sweep of that deadline, not held open by the
/// refresh.
#[tokio::test]
async fn a_stream_is_cut_when_its_session_runs_out_of_max_stale_with_a_hung_provider() -> Result<()>
{
    let w = world_with_events_and("\n[verify]\ninterval = \"1s\"\nmax_stale = \"3s\"").await?;
    let (session, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    // Verified at this second or the one before: the deadline is 3 to 4 s from now.
    let signed_in = Instant::now();
    let mut stream = open_events(&w, &session).await?;
    w.idp.fault("/token", Some("hang")).await?;
    let early = closes_within(
        &mut stream,
        Duration::from_millis(2500).saturating_sub(signed_in.elapsed()),
    )
    .await;
    let cut = !early
        && closes_within(
            &mut stream,
            Duration::from_millis(5500).saturating_sub(signed_in.elapsed()),
        )
        .await;
    let at = signed_in.elapsed();
    w.idp.fault("/token", None).await?;
    assert!(!early, "the stream was cut before interval + max_stale");
    assert!(
        cut,
        "the stream outlived interval + max_stale (plus a sweep) with the provider hung"
    );
    eprintln!("stream cut {at:?} after the sign-in (deadline 3-4 s)");
    assert!(
        metric(
            &w.running,
            "vigil_connections_cut_total{reason=\"session_unverifiable\"}"
        )
        .await?
            >= 1.0
    );
    Ok(())
}

/// With a healthy provider, a stream is never cut for being judged late: with `max_stale = 0`
/// a session is past its deadline the moment it is due, and the stream stands while the
/// refresh that sweep started is answered, then carries on with the fresh verification.
#[tokio::test]
async fn a_stream_survives_prompt_re_verifications_with_max_stale_zero() -> Result<()> {
    let w = world_with_events_and("\n[verify]\ninterval = \"1s\"\nmax_stale = \"0s\"").await?;
    let (session, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    let mut stream = open_events(&w, &session).await?;
    // About four re-verifications.
    let seen = read_until(&mut stream, "data: 45\n").await;
    seen.context("the stream was cut although the provider answered every re-verification")?;
    assert_eq!(
        metric(
            &w.running,
            "vigil_connections_cut_total{reason=\"session_unverifiable\"}"
        )
        .await
        .unwrap_or(0.0),
        0.0
    );
    Ok(())
}

/// One case of the decision-point table: a route's rules and risk actions, what the inventory
/// says of the device, whether the client's network is trusted, audit mode, and the request.
struct DecisionCase {
    name: &'static str,
    allow: &'static str,
    risk: &'static str,
    compliant: bool,
    trusted: bool,
    audit: bool,
    method: &'static str,
    path: &'static str,
    /// The decision all three must reach.
    want: &'static str,
}

const DECISION_CASES: &[DecisionCase] = &[
    DecisionCase {
        name: "rules allow, low risk",
        allow: r#"[{ spiffe = ["spiffe://example.org/ns/frontend/**"], methods = ["GET", "POST"] }]"#,
        risk: r#"{ low = "allow", medium = "read_only", high = "deny" }"#,
        compliant: true,
        trusted: true,
        audit: false,
        method: "GET",
        path: "/events/a",
        want: "allow",
    },
    DecisionCase {
        name: "rules deny the method",
        allow: r#"[{ spiffe = ["spiffe://example.org/ns/frontend/**"], methods = ["GET", "POST"] }]"#,
        risk: r#"{ low = "allow", medium = "read_only", high = "deny" }"#,
        compliant: true,
        trusted: true,
        audit: false,
        method: "DELETE",
        path: "/events/a",
        want: "deny",
    },
    DecisionCase {
        name: "rules deny, audit lets it through",
        allow: r#"[{ spiffe = ["spiffe://example.org/ns/frontend/**"], methods = ["GET", "POST"] }]"#,
        risk: r#"{ low = "allow", medium = "read_only", high = "deny" }"#,
        compliant: true,
        trusted: true,
        audit: true,
        method: "DELETE",
        path: "/events/a",
        want: "audit",
    },
    DecisionCase {
        name: "medium risk (untrusted network) is read-only: GET passes",
        allow: r#"[{ spiffe = ["spiffe://example.org/ns/frontend/**"] }]"#,
        risk: r#"{ low = "allow", medium = "read_only", high = "deny" }"#,
        compliant: true,
        trusted: false,
        audit: false,
        method: "GET",
        path: "/events/a",
        want: "allow",
    },
    DecisionCase {
        name: "medium risk (untrusted network) is read-only: POST refused",
        allow: r#"[{ spiffe = ["spiffe://example.org/ns/frontend/**"] }]"#,
        risk: r#"{ low = "allow", medium = "read_only", high = "deny" }"#,
        compliant: true,
        trusted: false,
        audit: false,
        method: "POST",
        path: "/events/a",
        want: "deny",
    },
    DecisionCase {
        name: "high risk (untrusted network, device not compliant) denied",
        allow: r#"[{ spiffe = ["spiffe://example.org/ns/frontend/**"] }]"#,
        risk: r#"{ low = "allow", medium = "allow", high = "deny" }"#,
        compliant: false,
        trusted: false,
        audit: false,
        method: "GET",
        path: "/events/a",
        want: "deny",
    },
    DecisionCase {
        name: "high risk denied, audit lets it through",
        allow: r#"[{ spiffe = ["spiffe://example.org/ns/frontend/**"] }]"#,
        risk: r#"{ low = "allow", medium = "allow", high = "deny" }"#,
        compliant: false,
        trusted: false,
        audit: true,
        method: "GET",
        path: "/events/a",
        want: "audit",
    },
    DecisionCase {
        name: "a device rule refuses a non-compliant device",
        allow: r#"[{ spiffe = ["spiffe://example.org/ns/frontend/**"], device = "compliant" }]"#,
        risk: r#"{ low = "allow", medium = "allow", high = "allow" }"#,
        compliant: false,
        trusted: true,
        audit: false,
        method: "GET",
        path: "/events/a",
        want: "deny",
    },
];

impl DecisionCase {
    /// The case's configuration; `audit` overrides its own mode.
    fn config(&self, pki: &Pki, upstream: std::net::SocketAddr, audit: bool) -> String {
        let trusted = if self.trusted {
            "127.0.0.0/8"
        } else {
            "192.0.2.0/24"
        };
        format!(
            "{}\n[audit]\nmode = \"{}\"\n\n[devices]\nsource = \"devices.json\"\n\n[risk]\ndevice_unknown = 40\ndevice_noncompliant = 40\nstale_check_in = 0\nuntrusted_network = 30\nrecent_denial = 0\nfirst_seen_device = 0\nmedium = 30\nhigh = 60\ntrusted_networks = [\"{trusted}\"]\n\n[[route]]\nname = \"events\"\nhost = \"localhost\"\npath = \"/events\"\nupstream = \"http://{upstream}\"\nlogin = \"none\"\nallow = {}\nrisk = {}\n",
            base_config("", &pki.path("decisions.log")),
            if audit { "audit" } else { "enforce" },
            self.allow,
            self.risk,
        )
    }
}

/// Sends `method path` on a new connection as `who` and returns the connection, the status
/// and the request id once the response head has arrived.
async fn request_head(
    running: &vigil::Running,
    pki: &Pki,
    who: &vigil::certs::Issued,
    method: &str,
    path: &str,
) -> Result<(impl tokio::io::AsyncRead + Unpin, u16, String)> {
    let config = client_config(Some(who), pki.ca.cert_pem(), &[])?;
    let mut tls = connect(running.addr, config, "localhost").await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nContent-Length: 0\r\n\r\n",
        running.addr.port()
    );
    tls.write_all(head.as_bytes()).await?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(STEP, tls.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "connection closed before the response head");
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("status")?;
    let id = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-request-id")
                .then(|| value.trim().to_owned())
        })
        .context("x-request-id")?;
    Ok((tls, status, id))
}

/// The decision point agrees with itself: the same cases through a real request (its decision
/// log line), through the live verifier's re-decision of an open stream (and what a sweep then
/// does to it), and through `vigil policy explain --input FACTS.json`, risk and audit included.
#[tokio::test]
async fn request_verifier_and_explain_decide_alike() -> Result<()> {
    let pki = Pki::new()?;
    let sse = sse_upstream().await?;
    let web = pki.workload(SPIFFE_WEB)?;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(web.cert_pem.as_bytes())?;
    let peer = vigil::tls::PeerCert::from_der(der.as_ref()).map_err(anyhow::Error::msg)?;
    let ctx = vigil::config::Context::first()?;
    for case in DECISION_CASES {
        let now = humantime::format_rfc3339(std::time::SystemTime::now()).to_string();
        let device = serde_json::json!({
            "fingerprint": peer.fingerprint_hex, "compliant": case.compliant, "managed": true,
            "os": { "name": "Linux", "version": "6.1" }, "last_check_in": now,
        });
        std::fs::write(
            pki.path("devices.json"),
            serde_json::json!({ "devices": [device] }).to_string(),
        )?;
        let text = case.config(&pki, sse, case.audit);
        let running = spawn(&pki, &text).await?;

        // 1. A real request, as its decision log line tells it.
        let (_, status, id) = request_head(&running, &pki, &web, case.method, case.path).await?;
        let line = decision_for(&pki.path("decisions.log"), &id)
            .await
            .with_context(|| format!("{}: no decision line", case.name))?;
        assert_eq!(line["decision"], case.want, "{}: request {line}", case.name);
        let want_status = if case.want == "deny" { 403 } else { 200 };
        assert_eq!(status, want_status, "{}", case.name);

        // 2. The verifier: a stream opened under the same configuration in audit mode (so it
        // passes whatever the case), then re-decided under the case's own.
        let load = |audit: bool| {
            vigil::config::load_text(
                "case.toml",
                case.config(&pki, sse, audit),
                pki.dir.path(),
                &ctx,
            )
            .map_err(|p| anyhow::anyhow!("{p}"))
        };
        running
            .shared
            .snapshot
            .store(std::sync::Arc::new(load(true)?));
        let (mut stream, status, _) =
            request_head(&running, &pki, &web, case.method, case.path).await?;
        assert_eq!(status, 200, "{}: the audited stream was refused", case.name);
        running
            .shared
            .snapshot
            .store(std::sync::Arc::new(load(case.audit)?));
        let snapshot = running.shared.snapshot.load_full();
        let conns = running.shared.live.connections();
        let redecided = conns
            .iter()
            .find_map(|conn| {
                let streams = conn.streams.lock().ok()?;
                let s = streams.first()?;
                vigil::live::redecide(
                    &running.shared,
                    &snapshot,
                    conn,
                    &s.origin,
                    None,
                    vigil::identity::now(),
                )
            })
            .with_context(|| format!("{}: no open stream to re-decide", case.name))?;
        assert_eq!(
            redecided.outcome.as_str(),
            case.want,
            "{}: verifier {redecided:?}",
            case.name
        );
        assert_eq!(
            serde_json::json!(redecided.reasons),
            line["reasons"],
            "{}: the verifier's reasons differ from the request's",
            case.name
        );
        let codes: Vec<&str> = redecided.reasons.iter().map(|r| r.code.as_str()).collect();
        assert_eq!(
            serde_json::json!(codes),
            line["codes"],
            "{}: the verifier's codes differ from the request's",
            case.name
        );
        vigil::live::sweep(&running.shared).await;
        let cut = closes_within(&mut stream, Duration::from_secs(3)).await;
        assert_eq!(
            cut,
            case.want == "deny",
            "{}: stream cut = {cut}",
            case.name
        );

        // 3. explain, from a facts document written as its documentation says.
        let facts = serde_json::json!({
            "request": { "host": "localhost", "method": case.method, "path": case.path },
            "certificate": peer,
            "device": device,
            "network": { "source": "127.0.0.1" },
        });
        std::fs::write(pki.path("facts.json"), facts.to_string())?;
        std::fs::write(pki.path("case.toml"), &text)?;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["policy", "explain", "--format", "json", "--config"])
            .arg(pki.path("case.toml"))
            .arg("--input")
            .arg(pki.path("facts.json"))
            .output()?;
        let explained: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{}: {}", case.name, String::from_utf8_lossy(&out.stderr)))?;
        assert_eq!(
            explained["decision"], case.want,
            "{}: explain {explained}",
            case.name
        );
        assert_eq!(
            explained["reasons"], line["reasons"],
            "{}: explain",
            case.name
        );
        assert_eq!(
            explained["codes"], line["codes"],
            "{}: explain's codes",
            case.name
        );
        let code = if case.want == "deny" { 2 } else { 0 };
        assert_eq!(out.status.code(), Some(code), "{}", case.name);

        // 4. explain, from the facts the request's own decision line kept: read back as a
        // document and decided under the same configuration, they give the logged decision.
        assert_eq!(line["outcome"], case.want, "{}: {line}", case.name);
        let kept: vigil::policy::facts::Document = serde_json::from_value(line["facts"].clone())
            .with_context(|| format!("{}: the line's facts are not a document", case.name))?;
        assert_eq!(
            kept.request.route.as_deref(),
            Some("events"),
            "{}",
            case.name
        );
        std::fs::write(pki.path("kept.json"), line["facts"].to_string())?;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["policy", "explain", "--format", "json", "--config"])
            .arg(pki.path("case.toml"))
            .arg("--input")
            .arg(pki.path("kept.json"))
            .output()?;
        let explained: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{}: {}", case.name, String::from_utf8_lossy(&out.stderr)))?;
        assert_eq!(
            explained["decision"], line["outcome"],
            "{}: explain of the logged facts {explained}",
            case.name
        );
        assert_eq!(explained["reasons"], line["reasons"], "{}", case.name);
        assert_eq!(explained["codes"], line["codes"], "{}", case.name);
        assert_eq!(explained["risk"], line["risk"], "{}", case.name);
        eprintln!("{}: {} {}", case.name, case.want, line["reasons"]);
        drop(stream);
        running.shutdown().await;
    }
    Ok(())
}

/// An open stream keeps the request headers its route's rules name: decided again after a
/// reload, it goes on while they still match and is cut once they no longer do.
#[tokio::test]
async fn a_stream_is_decided_again_on_the_headers_it_came_with() -> Result<()> {
    let pki = Pki::new()?;
    let sse = sse_upstream().await?;
    let config = pki.path("vigil.toml");
    let write = |versions: &str| -> Result<()> {
        let text = format!(
            "{}[[route]]\nname = \"events\"\nhost = \"localhost\"\nupstream = \"http://{sse}\"\nlogin = \"none\"\nallow = [{{ spiffe = [\"spiffe://example.org/**\"], headers = {{ x-api-version = [{versions}] }} }}]\n",
            base_config("", &pki.path("d.log"))
        );
        Ok(std::fs::write(&config, text)?)
    };
    write("\"2\"")?;
    let running = vigil::start_file(&config).await?;
    let web = pki.workload(SPIFFE_WEB)?;
    let open = |version: &'static str| {
        let config = client_config(Some(&web), pki.ca.cert_pem(), &[b"http/1.1"]);
        let addr = running.addr;
        async move {
            let mut tls = connect(addr, config?, "localhost").await?;
            let request = format!(
                "GET /events HTTP/1.1\r\nHost: localhost\r\nX-Api-Version: {version}\r\nAccept: text/event-stream\r\n\r\n"
            );
            tls.write_all(request.as_bytes()).await?;
            anyhow::Ok(tls)
        }
    };
    let mut stream = open("2").await?;
    let seen = read_until(&mut stream, "data: 1\n").await?;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    let mut refused = open("3").await?;
    let seen = read_until(&mut refused, "\r\n").await?;
    assert!(seen.starts_with("HTTP/1.1 403"), "{seen}");

    // Still allowed: the stream goes on.
    write("\"2\", \"4\"")?;
    assert_eq!(admin(&running, "POST", "/reload").await?.status, 200);
    assert!(!closes_within(&mut stream, Duration::from_millis(1500)).await);
    // No longer: it is cut.
    write("\"3\"")?;
    assert_eq!(admin(&running, "POST", "/reload").await?.status, 200);
    assert!(
        closes_within(&mut stream, Duration::from_secs(10)).await,
        "the stream outlived the rule its headers passed"
    );
    assert!(metric(&running, "vigil_connections_cut_total{reason=\"policy\"}").await? >= 1.0);
    Ok(())
}
