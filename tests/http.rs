//! What every answer looks like on the wire, whoever wrote it: a `HEAD` gets the headers a
//! `GET` would and no body, over HTTP/2 and HTTP/1.1; `Strict-Transport-Security` is Vigil's
//! on every answer, forwarded ones included.

mod support;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Empty};
use std::net::SocketAddr;
use support::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use vigil::certs::Issued;

/// What the pinning upstream says of HSTS; Vigil must not pass it on.
const UPSTREAM_HSTS: &str = "max-age=60; includeSubDomains; preload";
/// Vigil's HSTS by default: a year.
const DEFAULT_HSTS: &str = "max-age=31536000";

struct Fixture {
    pki: Pki,
    running: vigil::Running,
    web: Issued,
    _upstreams: CancellationToken,
}

impl Fixture {
    fn client(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        client_config(Some(&self.web), self.pki.ca.cert_pem(), alpn).expect("client config")
    }
}

/// An upstream whose every answer sets its own `Strict-Transport-Security`.
async fn pinning_upstream(stop: CancellationToken) -> Result<SocketAddr> {
    use hyper::service::service_fn;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let service = service_fn(|_req| async {
                http::Response::builder()
                    .header("strict-transport-security", UPSTREAM_HSTS)
                    .body(http_body_util::Full::new(Bytes::from_static(b"pinned\n")))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    Ok(addr)
}

/// Vigil with a provider that is never discovered (so login routes answer 503 to programs
/// and browsers), signed assertions (so `jwks.json` has a key), and three routes:
/// `/app` needs a sign-in, `/pinned` goes to an upstream that sets its own HSTS, and the
/// rest goes to the echo upstream, `/public/**` allowed for the web workload.
async fn fixture(extra_server: &str) -> Result<Fixture> {
    let pki = Pki::new()?;
    std::fs::write(
        pki.path("session.keys"),
        vigil::identity::seal::KeyRing::generate_line().map_err(anyhow::Error::msg)? + "\n",
    )?;
    std::fs::write(
        pki.path("assertion.pem"),
        vigil::forward::assertion::Signer::generate_pem().map_err(anyhow::Error::msg)?,
    )?;
    std::fs::write(pki.path("oidc.secret"), "secret\n")?;
    let stop = CancellationToken::new();
    let (echo, echo_stop) = echo_upstream().await?;
    let stopping = stop.clone();
    tokio::spawn(async move {
        stopping.cancelled().await;
        echo_stop.cancel();
    });
    let pinning = pinning_upstream(stop.clone()).await?;
    let nobody = dead_address().await?;
    let text = format!(
        r#"{}
[oidc]
issuer = "http://{nobody}"
client_id = "vigil"
client_secret_file = "oidc.secret"

[session]
keys_file = "session.keys"

[assertion]
keys_file = "assertion.pem"
issuer = "https://vigil.test"

[[route]]
name = "app"
host = "localhost"
path = "/app"
upstream = "http://{echo}"
login = "oidc"
allow = [{{ groups = ["staff"] }}]

[[route]]
name = "pinned"
host = "localhost"
path = "/pinned"
upstream = "http://{pinning}"
login = "none"
allow = [{{ spiffe = ["{SPIFFE_WEB}"] }}]

[[route]]
name = "api"
host = "localhost"
upstream = "http://{echo}"
login = "none"
allow = [{{ spiffe = ["{SPIFFE_WEB}"], paths = ["/public/**"] }}]
"#,
        base_config(extra_server, &pki.path("decisions.log")),
    );
    let running = spawn(&pki, &text).await?;
    Ok(Fixture {
        web: pki.workload(SPIFFE_WEB)?,
        pki,
        running,
        _upstreams: stop,
    })
}

/// One answer as the client got it: a body that failed (a reset stream) is an error.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn content_length(&self) -> Option<usize> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }
}

/// One HTTP/2 request on a fresh connection.
async fn h2(f: &Fixture, method: &str, path: &str, accept: Option<&str>) -> Result<Answer> {
    let tls = connect(f.running.addr, f.client(&[b"h2"]), "localhost").await?;
    anyhow::ensure!(
        tls.get_ref().1.alpn_protocol() == Some(&b"h2"[..]),
        "h2 was not negotiated"
    );
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"));
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    let resp =
        tokio::time::timeout(STEP, sender.send_request(req.body(Empty::<Bytes>::new())?)).await??;
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(STEP, body.collect())
        .await?
        .with_context(|| format!("{method} {path} over HTTP/2: the body failed"))?
        .to_bytes();
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.to_vec(),
    })
}

/// One HTTP/1.1 request on a fresh connection, read until the server closes it.
async fn h1(f: &Fixture, method: &str, path: &str, accept: Option<&str>) -> Result<Answer> {
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n{accept}Connection: close\r\n\r\n");
    let reply = raw(
        f.running.addr,
        f.client(&[b"http/1.1"]),
        "localhost",
        &request,
    )
    .await?;
    let mut headers = HeaderMap::new();
    for line in reply.head.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            headers.append(
                http::HeaderName::from_bytes(name.trim().as_bytes())?,
                http::HeaderValue::from_str(value.trim())?,
            );
        }
    }
    Ok(Answer {
        status: reply.status,
        headers,
        body: reply.body.into_bytes(),
    })
}

/// Answers Vigil writes itself, as (path, Accept, status): a refusal of each kind, a sign-in
/// Vigil cannot start (the provider is never discovered: 503 with `Retry-After`, for API
/// clients and browsers alike), and its own endpoints.
const OWN_ANSWERS: &[(&str, Option<&str>, u16)] = &[
    ("/private", None, 403),
    ("/.vigil/nowhere", None, 404),
    ("/app/", None, 503),
    ("/app/", Some("text/html"), 503),
    ("/.vigil/login?rd=/app/", Some("text/html"), 503),
    ("/.vigil/whoami", None, 200),
    ("/.vigil/jwks.json", None, 200),
    ("/.vigil/logged-out", Some("text/html"), 200),
];

#[tokio::test]
async fn head_gets_the_headers_of_get_and_no_body() -> Result<()> {
    let f = fixture("").await?;
    for http2 in [true, false] {
        let version = if http2 { "HTTP/2" } else { "HTTP/1.1" };
        for &(path, accept, status) in OWN_ANSWERS {
            let (get, head) = if http2 {
                (
                    h2(&f, "GET", path, accept).await?,
                    h2(&f, "HEAD", path, accept).await?,
                )
            } else {
                (
                    h1(&f, "GET", path, accept).await?,
                    h1(&f, "HEAD", path, accept).await?,
                )
            };
            let what = format!("HEAD {path} over {version}");
            assert_eq!(get.status, status, "GET {path} over {version}: {get:?}");
            assert!(!get.body.is_empty(), "GET {path} over {version}: {get:?}");
            assert_eq!(head.status, status, "{what}: {head:?}");
            assert!(head.body.is_empty(), "{what} has a body: {head:?}");
            // The length of what GET gets, or none at all.
            if let Some(len) = head.content_length() {
                assert_eq!(len, get.body.len(), "{what}: {head:?}");
            }
            for name in [
                "content-type",
                "cache-control",
                "www-authenticate",
                "retry-after",
            ] {
                assert_eq!(head.header(name), get.header(name), "{what}: {name}");
            }
            assert!(head.header("x-request-id").is_some(), "{what}: {head:?}");
        }

        // A HEAD that goes upstream comes back as the upstream answered it.
        let forwarded = if http2 {
            h2(&f, "HEAD", "/public/x", None).await?
        } else {
            h1(&f, "HEAD", "/public/x", None).await?
        };
        assert_eq!(forwarded.status, 200, "{version}: {forwarded:?}");
        assert!(forwarded.body.is_empty(), "{version}: {forwarded:?}");
        assert!(
            forwarded.content_length().is_some_and(|n| n > 0),
            "{version}: the upstream's Content-Length is kept: {forwarded:?}"
        );
        assert_eq!(forwarded.header("content-type"), Some("application/json"));
    }
    Ok(())
}

/// Every `Strict-Transport-Security` value of an answer.
fn hsts(answer: &Answer) -> Vec<&str> {
    answer
        .headers
        .get_all("strict-transport-security")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

#[tokio::test]
async fn hsts_is_on_every_answer_by_default_and_replaces_the_upstreams() -> Result<()> {
    let f = fixture("").await?;
    for http2 in [false, true] {
        for (path, status) in [
            ("/public/x", 200),
            ("/private", 403),
            ("/.vigil/whoami", 200),
            ("/pinned", 200),
        ] {
            let answer = if http2 {
                h2(&f, "GET", path, None).await?
            } else {
                h1(&f, "GET", path, None).await?
            };
            assert_eq!(answer.status, status, "{path}: {answer:?}");
            assert_eq!(hsts(&answer), [DEFAULT_HSTS], "{path} (h2: {http2})");
        }
    }
    Ok(())
}

#[tokio::test]
async fn hsts_can_be_turned_off_or_changed() -> Result<()> {
    let off = fixture("hsts_max_age = \"0s\"").await?;
    for (path, status) in [("/public/x", 200), ("/private", 403)] {
        let answer = h1(&off, "GET", path, None).await?;
        assert_eq!(answer.status, status, "{path}: {answer:?}");
        assert!(hsts(&answer).is_empty(), "{path}: {answer:?}");
    }
    // Off, Vigil says nothing of HSTS: an upstream's own passes as it was.
    let pinned = h1(&off, "GET", "/pinned", None).await?;
    assert_eq!(hsts(&pinned), [UPSTREAM_HSTS]);

    let wide = fixture("hsts_max_age = \"1h\"\nhsts_include_subdomains = true").await?;
    let answer = h2(&wide, "GET", "/pinned", None).await?;
    assert_eq!(hsts(&answer), ["max-age=3600; includeSubDomains"]);

    let pki = Pki::new()?;
    let text = format!(
        "{}[[route]]\nname = \"r\"\nhost = \"localhost\"\nupstream = \"http://127.0.0.1:9\"\nlogin = \"none\"\nallow = [{{}}]\n",
        base_config("hsts_max_age = \"1500ms\"", &pki.path("d.log"))
    );
    let refused = vigil::config::load_text(
        "test.toml",
        text,
        pki.dir.path(),
        &vigil::config::Context::first()?,
    );
    let problems = refused.err().context("a fraction of a second is refused")?;
    assert!(
        problems.to_string().contains("whole number of seconds"),
        "{problems}"
    );
    Ok(())
}
