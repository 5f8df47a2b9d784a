//! The core proxy over real sockets: TLS refusals, identity, rules, hygiene, limits, upstreams.

mod support;

use anyhow::Result;
use rustls::pki_types::pem::PemObject;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use vigil::certs::{Authority, Issued, LeafSpec};

struct Fixture {
    pki: Pki,
    running: vigil::Running,
    decisions: PathBuf,
    upstream: SocketAddr,
    web: Issued,
    batch: Issued,
    laptop: Issued,
    _upstream_stop: CancellationToken,
}

impl Fixture {
    fn as_identity(&self, id: &Issued) -> rustls::ClientConfig {
        client_config(Some(id), self.pki.ca.cert_pem(), &[b"http/1.1"]).expect("client config")
    }
    fn web(&self) -> rustls::ClientConfig {
        self.as_identity(&self.web)
    }
}

const API_ROUTE: &str = r#"
[[route]]
name = "api"
host = "localhost"
upstream = "http://UPSTREAM"
login = "none"
allow = [
  { spiffe = ["spiffe://example.org/ns/frontend/sa/*"], paths = ["/public/**", "/ws"], methods = ["GET", "POST"] },
  { cert_subject = ["*-laptop"], paths = ["/laptops/**"] },
]
"#;

async fn fixture_with(extra_server: &str, routes: &str, tail: &str) -> Result<Fixture> {
    let pki = Pki::new()?;
    let (upstream, stop) = echo_upstream().await?;
    let decisions = pki.path("decisions.log");
    let text = format!(
        "{}{}{}",
        base_config(extra_server, &decisions),
        tail,
        routes.replace("UPSTREAM", &upstream.to_string())
    );
    let running = spawn(&pki, &text).await?;
    Ok(Fixture {
        web: pki.workload(SPIFFE_WEB)?,
        batch: pki.workload(SPIFFE_BATCH)?,
        laptop: pki.device("alice-laptop")?,
        pki,
        running,
        decisions,
        upstream,
        _upstream_stop: stop,
    })
}

async fn fixture() -> Result<Fixture> {
    fixture_with("", API_ROUTE, "").await
}

#[tokio::test]
async fn allowed_workload_reaches_upstream_with_identity_headers() -> Result<()> {
    let f = fixture().await?;
    let agent = format!("probe/1.0 {}", "x".repeat(400));
    let reply = get(
        f.running.addr,
        f.web(),
        "/public/hello?x=1",
        &format!("User-Agent: {agent}\r\n"),
    )
    .await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["path"], "/public/hello");
    assert_eq!(body["query"], "x=1");
    assert_eq!(
        reply.upstream_header("x-vigil-workload").as_deref(),
        Some(SPIFFE_WEB)
    );
    let fingerprint = reply.upstream_header("x-vigil-device").unwrap_or_default();
    assert_eq!(fingerprint.len(), 64, "{fingerprint}");
    assert_eq!(
        reply.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        reply.upstream_header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    assert_eq!(
        reply.upstream_header("x-forwarded-host").as_deref(),
        Some("localhost")
    );
    let request_id = reply
        .header("x-request-id")
        .expect("request id on the response");
    assert_eq!(
        reply.upstream_header("x-request-id"),
        Some(request_id.clone())
    );
    assert_eq!(reply.upstream_header("host"), Some(f.upstream.to_string()));

    let line = decision_for(&f.decisions, &request_id)
        .await
        .expect("decision line");
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["route"], "api");
    assert_eq!(line["workload"], SPIFFE_WEB);
    assert_eq!(line["device"], fingerprint);
    assert_eq!(line["status"], 200);
    assert_eq!(line["mode"], "enforce");
    assert_eq!(line["v"], 1);
    assert_eq!(line["kind"], "decision");
    assert_eq!(line["reasons"], serde_json::json!(["allowed by rule 1"]));
    assert_eq!(line["codes"], serde_json::json!(["allowed_by_rule"]));
    assert_eq!(line["tls"], "TLSv1.3");
    assert_eq!(line["upstream"], f.upstream.to_string());
    // The client's User-Agent, cut to 256 bytes and marked as cut.
    let logged = line["user_agent"].as_str().unwrap_or_default();
    assert_eq!(logged, format!("{}…", &agent[..256]), "{line}");
    Ok(())
}

#[tokio::test]
async fn denied_workload_gets_403_with_reason_in_decision_log() -> Result<()> {
    let f = fixture().await?;
    let reply = get(f.running.addr, f.as_identity(&f.batch), "/public/hello", "").await?;
    assert_eq!(reply.status, 403);
    let body = reply.json();
    assert_eq!(body["reason"], "access denied by route 'api'");
    let request_id = body["request_id"].as_str().unwrap_or_default().to_owned();
    assert!(!request_id.is_empty());
    // Nothing about the rules leaks to the client.
    assert!(!reply.body.contains("frontend"), "{}", reply.body);

    let line = decision_for(&f.decisions, &request_id)
        .await
        .expect("decision line");
    assert_eq!(line["decision"], "deny");
    assert_eq!(line["status"], 403);
    assert_eq!(line["workload"], SPIFFE_BATCH);
    let reasons = line["reasons"].to_string();
    assert!(
        reasons.contains("SPIFFE ID spiffe://example.org/ns/batch/sa/job not allowed"),
        "{reasons}"
    );
    assert!(reasons.contains("certificate subject CN"), "{reasons}");
    assert_eq!(
        line["codes"],
        serde_json::json!(["spiffe_not_allowed", "cert_subject_not_allowed"])
    );
    // Not forwarded: no upstream; no User-Agent sent: null.
    assert!(line.get("upstream").is_none(), "{line}");
    assert!(line["user_agent"].is_null(), "{line}");

    // Wrong method for an allowed workload.
    let reply = raw(
        f.running.addr,
        f.web(),
        "localhost",
        "DELETE /public/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert_eq!(reply.status, 403);
    Ok(())
}

/// Every refusal says whose fault it probably was, in the decision log and in
/// `vigil_refusals_total`; an answer that is not a refusal has no fault.
#[tokio::test]
async fn refusals_record_who_caused_them() -> Result<()> {
    let dead = dead_address().await?;
    let routes = format!(
        "{API_ROUTE}\n[[route]]\nname = \"dead\"\nhost = \"localhost\"\npath = \"/dead\"\nupstream = \"http://{dead}\"\nlogin = \"none\"\nallow = [{{}}]\n"
    );
    let f = fixture_with("", &routes, "").await?;
    let cases = [
        (
            "GET /public/x HTTP/1.1",
            200,
            None,
            &["allowed_by_rule"][..],
        ),
        (
            "DELETE /public/x HTTP/1.1",
            403,
            Some("policy"),
            &["method_not_allowed", "cert_subject_not_allowed"],
        ),
        (
            "GET /public/%2e%2e/%2e%2e/x HTTP/1.1",
            400,
            Some("client"),
            &["bad_request"],
        ),
        (
            "GET /dead HTTP/1.1",
            502,
            Some("upstream"),
            &["allowed_by_rule", "upstream_unreachable"],
        ),
    ];
    for (line, status, fault, codes) in cases {
        let reply = raw(
            f.running.addr,
            f.web(),
            "localhost",
            &format!("{line}\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        )
        .await?;
        assert_eq!(reply.status, status, "{line}");
        let id = reply.header("x-request-id").unwrap_or_default();
        let logged = decision_for(&f.decisions, &id)
            .await
            .expect("decision line");
        assert_eq!(logged["fault"].as_str(), fault, "{line}: {logged}");
        assert_eq!(
            logged["codes"],
            serde_json::json!(codes),
            "{line}: {logged}"
        );
        let reasons = logged["reasons"].as_array().map_or(0, Vec::len);
        assert_eq!(reasons, codes.len(), "{line}: {logged}");
    }
    let series = |route: &str, fault: &str| {
        format!("vigil_refusals_total{{route=\"{route}\",fault=\"{fault}\"}}")
    };
    assert_eq!(metric(&f.running, &series("api", "policy")).await?, 1.0);
    assert_eq!(metric(&f.running, &series("(none)", "client")).await?, 1.0);
    assert_eq!(metric(&f.running, &series("dead", "upstream")).await?, 1.0);
    Ok(())
}

#[tokio::test]
async fn device_certificate_rules() -> Result<()> {
    let f = fixture().await?;
    let laptop = f.as_identity(&f.laptop);
    assert_eq!(
        get(f.running.addr, laptop.clone(), "/laptops/x", "")
            .await?
            .status,
        200
    );
    assert_eq!(
        get(f.running.addr, laptop, "/public/x", "").await?.status,
        403
    );
    Ok(())
}

#[tokio::test]
async fn spoofed_identity_headers_are_stripped() -> Result<()> {
    let f = fixture().await?;
    let spoof = "X-Vigil-User: mallory\r\n\
                 X_Vigil_User: mallory\r\n\
                 x.vigil.email: mallory@example.org\r\n\
                 X-VIGIL-WORKLOAD: spiffe://example.org/ns/admin/sa/root\r\n\
                 X-Vigil-Device: 00\r\n\
                 X-Forwarded-For: 10.9.9.9\r\n\
                 X-Forwarded-Host: admin.internal\r\n\
                 Forwarded: for=10.9.9.9\r\n\
                 X-Real-IP: 10.9.9.9\r\n\
                 X-Request-Id: chosen-by-client\r\n\
                 X-HTTP-Method-Override: DELETE\r\n\
                 X-Method-Override: DELETE\r\n\
                 Connection: X-Vigil-Workload, X-Forwarded-For, X-Request-Id\r\n";
    let reply = get(f.running.addr, f.web(), "/public/x", spoof).await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    let headers = reply.upstream_headers();
    for (name, value) in &headers {
        let alias = name.replace(['_', '.'], "-");
        assert!(
            !value.contains("mallory") && !value.contains("10.9.9.9"),
            "{name}: {value}"
        );
        assert!(
            !alias.contains("method-override"),
            "{name} reached upstream"
        );
        assert_ne!(alias, "forwarded");
        assert_ne!(alias, "x-real-ip");
    }
    let count = |n: &str| headers.iter().filter(|(k, _)| k == n).count();
    assert_eq!(count("x-vigil-workload"), 1);
    assert_eq!(
        reply.upstream_header("x-vigil-workload").as_deref(),
        Some(SPIFFE_WEB)
    );
    assert_eq!(count("x-forwarded-for"), 1);
    assert_eq!(
        reply.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_ne!(
        reply.upstream_header("x-request-id").as_deref(),
        Some("chosen-by-client")
    );
    assert_ne!(
        reply.upstream_header("x-vigil-device").as_deref(),
        Some("00")
    );
    assert!(reply.upstream_header("x-vigil-user").is_none());
    Ok(())
}

#[tokio::test]
async fn path_tricks_neither_bypass_rules_nor_reach_upstream_unnormalised() -> Result<()> {
    let f = fixture().await?;
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("/public/../admin", 403, None),
        ("/public/%2e%2e/admin", 403, None),
        ("/public/%2E%2E/admin", 403, None),
        ("/public/.%2e/admin", 403, None),
        ("/public/..%2fadmin", 400, None),
        ("/public/%2Fadmin", 400, None),
        ("/public/%252e%252e/admin", 400, None),
        ("/public/%255c..%255cadmin", 400, None),
        ("/public/..%5cadmin", 400, None),
        ("/public/%00", 400, None),
        ("/public/x;a=b", 400, None),
        ("/../public/x", 400, None),
        ("/public/a/./b/../c", 200, Some("/public/a/c")),
        ("//public//x", 200, Some("/public/x")),
        ("/public/%7euser/%41", 200, Some("/public/~user/A")),
        ("/public/%3f", 200, Some("/public/%3F")),
        ("/public%2f..%2fadmin", 400, None),
    ];
    for (path, status, upstream_path) in cases {
        let reply = get(f.running.addr, f.web(), path, "").await?;
        assert_eq!(reply.status, *status, "{path}: {reply:?}");
        match upstream_path {
            Some(p) => assert_eq!(reply.json()["path"], *p, "{path}"),
            None => assert!(
                reply.json().get("headers").is_none(),
                "{path} reached the upstream"
            ),
        }
    }
    Ok(())
}

#[tokio::test]
async fn ambiguous_requests_are_refused() -> Result<()> {
    let f = fixture().await?;
    let cases: Vec<(String, u16)> = vec![
        ("GET /public/x HTTP/1.1\r\nHost: localhost\r\nHost: other.test\r\nConnection: close\r\n\r\n".into(), 400),
        ("GET /public/x HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n".into(), 421),
        ("GET https://other.test/public/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(), 400),
        ("POST /public/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nConnection: close\r\n\r\n0\r\n\r\n".into(), 400),
        ("GET /public/x HTTP/1.1\r\nHost: localhost\r\nX-Bad: a\0b\r\nConnection: close\r\n\r\n".into(), 400),
        ("GET /public/x#frag HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(), 400),
        ("GET /nothing-here HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(), 403),
        ("GET /public/x HTTP/1.1\r\nHost: LOCALHOST.:443\r\nConnection: close\r\n\r\n".into(), 200),
        ("CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\nConnection: close\r\n\r\n".into(), 405),
    ];
    for (request, status) in cases {
        let reply = raw(f.running.addr, f.web(), "localhost", &request).await;
        match reply {
            Ok(r) => assert_eq!(r.status, status, "{request:?}: {r:?}"),
            Err(e) => panic!("{request:?}: {e}"),
        }
    }
    // A host with no route, on a connection opened for that host.
    let reply = raw(
        f.running.addr,
        f.web(),
        "other.test",
        "GET / HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert_eq!(reply.status, 404);
    Ok(())
}

/// Sends `request` on an open connection: `Some(status)` of the answer, `None` when the
/// connection was closed instead.
async fn answer_on<S>(stream: &mut S, request: &str) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if stream.write_all(request.as_bytes()).await.is_err() {
        return None;
    }
    read_reply(stream).await.ok().map(|r| r.status)
}

const LATER_FRAGMENT: &str =
    "GET /public/b#frag HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
const LATER_TE_CL: &str = "POST /public/b HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nConnection: close\r\n\r\n0\r\n\r\n";

/// A connection is served as exactly the protocol its TLS handshake negotiated. A client that
/// negotiates `h2` and then speaks HTTP/1.1 would otherwise be served as HTTP/1.1 without the
/// framing watcher (which watches only HTTP/1 connections), so a `#fragment` or
/// Transfer-Encoding + Content-Length request would pass.
#[tokio::test]
async fn a_connection_speaks_only_the_protocol_alpn_chose() -> Result<()> {
    let f = fixture().await?;
    let h2 = client_config(Some(&f.web), f.pki.ca.cert_pem(), &[b"h2"])?;
    for later in [LATER_FRAGMENT, LATER_TE_CL] {
        let mut tls = connect(f.running.addr, h2.clone(), "localhost").await?;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let answer = answer_on(&mut tls, later).await;
        assert_eq!(
            answer, None,
            "HTTP/1.1 after ALPN h2: {later:?} got {answer:?}"
        );
    }
    // A plain request gets no answer either: HTTP/1.1 bytes are not HTTP/2.
    let mut tls = connect(f.running.addr, h2.clone(), "localhost").await?;
    let plain = "GET /public/a HTTP/1.1\r\nHost: localhost\r\n\r\n";
    assert_eq!(answer_on(&mut tls, plain).await, None);
    // HTTP/2 on that ALPN, and HTTP/1.1 on `http/1.1`, are served as before.
    let (status, _) = h2_get(f.running.addr, h2, "https://localhost/public/a").await?;
    assert_eq!(status, 200);
    let mut tls = connect(f.running.addr, f.web(), "localhost").await?;
    assert_eq!(answer_on(&mut tls, plain).await, Some(200));
    Ok(())
}

/// The framing watcher keeps watching after an `Upgrade` request that was answered without
/// upgrading: a later `#fragment` or Transfer-Encoding + Content-Length request is refused.
#[tokio::test]
async fn framing_checks_hold_after_an_upgrade_request_that_was_not_upgraded() -> Result<()> {
    let f = fixture().await?;
    // The echo upstream does not upgrade: it answers 200 and the connection stays HTTP/1.1.
    let upgrade = "GET /public/a HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    for later in [LATER_FRAGMENT, LATER_TE_CL] {
        let mut tls = connect(f.running.addr, f.web(), "localhost").await?;
        assert_eq!(answer_on(&mut tls, upgrade).await, Some(200));
        let answer = answer_on(&mut tls, later).await;
        assert!(
            matches!(answer, None | Some(400)),
            "after an Upgrade request answered 200: {later:?} got {answer:?}"
        );
    }
    Ok(())
}

/// A `Content-Length` too long for the watcher to keep does not make it lose its place
/// silently: the request is refused and the connection closed, so a later `#fragment` or
/// Transfer-Encoding + Content-Length request cannot slip through.
#[tokio::test]
async fn framing_checks_hold_after_a_long_content_length() -> Result<()> {
    let f = fixture().await?;
    // hyper reads this length as 5 (leading zeros are allowed); a watcher that kept only its
    // start would take the body for the next request head and place what follows wrongly.
    let long_length = format!(
        "POST /public/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}5\r\n\r\na\r\n\r\n",
        "0".repeat(80)
    );
    for later in [LATER_FRAGMENT, LATER_TE_CL] {
        let mut tls = connect(f.running.addr, f.web(), "localhost").await?;
        // Refused by Vigil (400) or forwarded: either way, what follows must be checked.
        let first = answer_on(&mut tls, &long_length).await;
        assert!(matches!(first, None | Some(200 | 400)), "{first:?}");
        let answer = answer_on(&mut tls, later).await;
        assert!(
            matches!(answer, None | Some(400)),
            "after a long Content-Length: {later:?} got {answer:?}"
        );
    }
    // Ordinary keep-alive traffic, fixed-length and chunked, is not affected.
    let mut tls = connect(f.running.addr, f.web(), "localhost").await?;
    for _ in 0..3 {
        let post = "POST /public/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(answer_on(&mut tls, post).await, Some(200));
        let chunked = "POST /public/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\n\r\n";
        assert_eq!(answer_on(&mut tls, chunked).await, Some(200));
    }
    Ok(())
}

#[tokio::test]
async fn oversized_headers_and_bodies_are_refused() -> Result<()> {
    let f = fixture_with("max_body_bytes = 1024", API_ROUTE, "").await?;
    let big = format!("X-Big: {}\r\n", "a".repeat(40 * 1024));
    let reply = get(f.running.addr, f.web(), "/public/x", &big).await?;
    assert_eq!(reply.status, 431, "{reply:?}");

    let body = "b".repeat(2000);
    let declared = format!(
        "POST /public/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n{body}"
    );
    let reply = raw(f.running.addr, f.web(), "localhost", &declared).await?;
    assert_eq!(reply.status, 413);

    let chunked = format!(
        "POST /public/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n7d0\r\n{body}\r\n0\r\n\r\n"
    );
    let reply = raw(f.running.addr, f.web(), "localhost", &chunked).await?;
    assert_eq!(reply.status, 413, "{reply:?}");

    let small = "POST /public/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    assert_eq!(
        raw(f.running.addr, f.web(), "localhost", small)
            .await?
            .status,
        200
    );
    assert!(metric(&f.running, "vigil_limits_hit_total{limit=\"body_size\"}").await? >= 2.0);
    Ok(())
}

#[tokio::test]
async fn long_request_targets_get_414_on_http1_and_http2() -> Result<()> {
    // The default limit, 8 KiB of path and query; well inside `max_header_bytes`, so it is
    // Vigil that answers, not the HTTP layer.
    let f = fixture().await?;
    // The query counts too: long ones are padded there, the longest in the path.
    let target = |len: usize| {
        let head = if len < 10_000 {
            "/public/x?q="
        } else {
            "/public/"
        };
        format!("{head}{}", "a".repeat(len - head.len()))
    };
    let h2 = client_config(Some(&f.web), f.pki.ca.cert_pem(), &[b"h2"])?;
    for len in [8192, 7000] {
        let reply = get(f.running.addr, f.web(), &target(len), "").await?;
        assert_eq!(reply.status, 200, "HTTP/1.1, {len} bytes");
        let (status, _) = h2_get(
            f.running.addr,
            h2.clone(),
            &format!("https://localhost{}", target(len)),
        )
        .await?;
        assert_eq!(status, 200, "HTTP/2, {len} bytes");
    }
    for len in [8193, 30_000] {
        let reply = get(f.running.addr, f.web(), &target(len), "").await?;
        assert_eq!(reply.status, 414, "HTTP/1.1, {len} bytes: {reply:?}");
        let body = reply.json();
        assert_eq!(
            body["reason"],
            format!("request target of {len} bytes is over the limit of 8192")
        );
        let line = decision_for(&f.decisions, body["request_id"].as_str().unwrap_or(""))
            .await
            .expect("decision line");
        assert_eq!(line["decision"], "deny");
        assert_eq!(line["status"], 414);
        assert!(
            line["reasons"]
                .to_string()
                .contains("over the limit of 8192"),
            "{line}"
        );
        // A long path is cut short in the log.
        let logged = line["path"].as_str().unwrap_or("");
        assert!(logged.starts_with("/public/x") || logged.starts_with("/public/aaa"));
        assert!(logged.len() <= 1024 + '…'.len_utf8(), "{logged}");

        let (status, body) = h2_get(
            f.running.addr,
            h2.clone(),
            &format!("https://localhost{}", target(len)),
        )
        .await?;
        assert_eq!(status, 414, "HTTP/2, {len} bytes: {body}");
    }
    assert!(metric(&f.running, "vigil_limits_hit_total{limit=\"target_size\"}").await? >= 4.0);
    Ok(())
}

#[tokio::test]
async fn refused_handshakes_fail_with_a_reason_metric() -> Result<()> {
    let pki = Pki::new()?;
    let now = time::OffsetDateTime::now_utc();
    let expired = pki.ca.issue(&LeafSpec::workload(SPIFFE_WEB).validity(
        now - time::Duration::days(10),
        now - time::Duration::days(1),
    ))?;
    let future = pki.ca.issue(&LeafSpec::workload(SPIFFE_WEB).validity(
        now + time::Duration::days(1),
        now + time::Duration::days(10),
    ))?;
    let other_ca = Authority::generate("Other CA")?;
    let foreign = other_ca.issue(&LeafSpec::workload(SPIFFE_WEB))?;
    let revoked = pki.workload(SPIFFE_WEB)?;
    let good = pki.workload(SPIFFE_WEB)?;
    pki.write_crl(&[&revoked.serial], 1)?;

    let (upstream, _stop) = echo_upstream().await?;
    let log = pki.path("decisions.log");
    let text = format!(
        "{}{}",
        base_config("", &log).replace(
            "client_ca = [\"ca.pem\"]",
            "client_ca = [\"ca.pem\"]\ncrl = [\"ca.crl\"]"
        ),
        API_ROUTE.replace("UPSTREAM", &upstream.to_string())
    );
    let running = spawn(&pki, &text).await?;
    let roots = pki.ca.cert_pem();

    let attempt = |config: rustls::ClientConfig| async move {
        match connect(running.addr, config, "localhost").await {
            Err(_) => false,
            Ok(mut tls) => {
                let _ = tls
                    .write_all(
                        b"GET /public/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                    )
                    .await;
                read_reply(&mut tls).await.is_ok()
            }
        }
    };
    assert!(
        attempt(client_config(Some(&good), roots, &[])?).await,
        "a good certificate works"
    );
    let tls12 = {
        let mut roots_store = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(roots.as_bytes()) {
            roots_store.add(c?)?;
        }
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(good.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(good.key_pem.as_bytes())?;
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])?
        .with_root_certificates(roots_store)
        .with_client_auth_cert(chain, key)?
    };
    let cases: Vec<(&str, rustls::ClientConfig)> = vec![
        ("no_certificate", client_config(None, roots, &[])?),
        ("expired", client_config(Some(&expired), roots, &[])?),
        ("not_yet_valid", client_config(Some(&future), roots, &[])?),
        ("unknown_issuer", client_config(Some(&foreign), roots, &[])?),
        ("revoked", client_config(Some(&revoked), roots, &[])?),
        ("protocol_version", tls12),
    ];
    for (reason, config) in cases {
        assert!(!attempt(config).await, "{reason}: the request went through");
        let series = format!("vigil_tls_handshake_failures_total{{reason=\"{reason}\"}}");
        let seen = eventually(STEP, || {
            let series = series.clone();
            let running = &running;
            async move { metric(running, &series).await.unwrap_or(0.0) >= 1.0 }
        })
        .await;
        assert!(seen, "no metric {series}");
    }
    // Nothing refused at the handshake reached the decision log or the upstream: only the
    // good request's line is there (lines are written in batches).
    let written = eventually(STEP, || {
        let n = decisions(&log).len();
        async move { n >= 1 }
    })
    .await;
    assert!(written);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(decisions(&log).len(), 1);
    Ok(())
}

#[tokio::test]
async fn session_resumption_works() -> Result<()> {
    let f = fixture().await?;
    let config = f.web();
    let mut first = connect(f.running.addr, config.clone(), "localhost").await?;
    first
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    assert_eq!(read_reply(&mut first).await?.status, 200);
    let mut second = connect(f.running.addr, config, "localhost").await?;
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    second
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let reply = read_reply(&mut second).await?;
    assert_eq!(reply.status, 200);
    // The resumed connection still carries the certificate identity.
    assert_eq!(
        reply.upstream_header("x-vigil-workload").as_deref(),
        Some(SPIFFE_WEB)
    );
    Ok(())
}

#[tokio::test]
async fn dead_and_slow_upstreams_give_502_and_504() -> Result<()> {
    let pki = Pki::new()?;
    let dead = dead_address().await?;
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_addr = silent.local_addr()?;
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let decisions = pki.path("decisions.log");
    let text = format!(
        r#"{}
[[route]]
name = "dead"
host = "localhost"
path = "/dead"
upstream = "http://{dead}"
login = "none"
allow = [{{ spiffe = ["spiffe://example.org/**"] }}]

[[route]]
name = "slow"
host = "localhost"
path = "/slow"
upstream = "http://{silent_addr}"
login = "none"
response_timeout = "500ms"
allow = [{{ spiffe = ["spiffe://example.org/**"] }}]
"#,
        base_config("", &decisions)
    );
    let running = spawn(&pki, &text).await?;
    let web = client_config(Some(&pki.workload(SPIFFE_WEB)?), pki.ca.cert_pem(), &[])?;

    let started = std::time::Instant::now();
    let reply = get(running.addr, web.clone(), "/dead/x", "").await?;
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_eq!(reply.json()["reason"], "upstream unavailable");
    let id = reply.json()["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let line = decision_for(&decisions, &id).await.expect("decision line");
    assert!(
        line["reasons"].to_string().contains("upstream unreachable"),
        "{line}"
    );

    let reply = get(running.addr, web, "/slow/x", "").await?;
    assert_eq!(reply.status, 504, "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(
        metric(
            &running,
            "vigil_upstream_errors_total{route=\"dead\",kind=\"connect\"}"
        )
        .await?
            >= 1.0
    );
    assert!(
        metric(
            &running,
            "vigil_upstream_errors_total{route=\"slow\",kind=\"timeout\"}"
        )
        .await?
            >= 1.0
    );
    hold.abort();
    Ok(())
}

#[tokio::test]
async fn slow_request_headers_are_cut_off() -> Result<()> {
    let f = fixture_with("header_read_timeout = \"1s\"", API_ROUTE, "").await?;
    // Part of a head, and nothing at all after the handshake: both are cut off.
    for start in [&b"GET /public/x HTTP/1.1\r\nHost: local"[..], b""] {
        let mut tls = connect(f.running.addr, f.web(), "localhost").await?;
        tls.write_all(start).await?;
        let started = std::time::Instant::now();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(8), tls.read(&mut buf))
            .await?
            .unwrap_or(0);
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    assert!(
        metric(
            &f.running,
            "vigil_limits_hit_total{limit=\"header_read_timeout\"}"
        )
        .await?
            >= 1.0
    );
    Ok(())
}

/// An upstream that reads the whole request body before answering with its length.
async fn body_reading_upstream() -> Result<SocketAddr> {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let len = req.into_body().collect().await.map(|b| b.to_bytes().len());
                        let text = format!("{len:?}");
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(text)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// A body sent a byte at a time gets 408 at `body_read_timeout`, over HTTP/1.1 and HTTP/2,
/// long before the upstream's response timeout; the HTTP/1.1 connection is closed.
#[tokio::test]
async fn trickled_request_bodies_get_408() -> Result<()> {
    let upstream = body_reading_upstream().await?;
    let route = format!(
        r#"
[[route]]
name = "upload"
host = "localhost"
upstream = "http://{upstream}"
login = "none"
response_timeout = "30s"
allow = [{{ spiffe = ["spiffe://example.org/**"] }}]
"#
    );
    let f = fixture_with("body_read_timeout = \"1s\"", &route, "").await?;

    // A body that arrives in time is forwarded whole.
    let ok = "POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let reply = raw(f.running.addr, f.web(), "localhost", ok).await?;
    assert_eq!((reply.status, reply.body.as_str()), (200, "Ok(5)"));

    let tls = connect(f.running.addr, f.web(), "localhost").await?;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let started = std::time::Instant::now();
    wr.write_all(b"POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nabc")
        .await?;
    let trickle = tokio::spawn(async move {
        for _ in 0..97 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if wr.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    let reply = read_reply(&mut rd).await?;
    assert_eq!(reply.status, 408, "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(reply.header("connection").as_deref(), Some("close"));
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(STEP, rd.read(&mut buf))
        .await?
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection stays open");
    trickle.abort();
    let id = reply.json()["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let line = decision_for(&f.decisions, &id)
        .await
        .expect("decision line");
    assert_eq!(line["status"], 408);
    assert!(
        line["reasons"]
            .to_string()
            .contains("request body not received within"),
        "{line}"
    );

    // HTTP/2: the same deadline on the stream.
    use http_body_util::BodyExt;
    let config = client_config(Some(&f.web), f.pki.ca.cert_pem(), &[b"h2"])?;
    let tls = connect(f.running.addr, config, "localhost").await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await?;
    tokio::spawn(conn);
    let frames = Box::pin(futures_util::stream::unfold(0u32, |i| async move {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        (i < 100).then(|| {
            let frame = http_body::Frame::data(bytes::Bytes::from_static(b"x"));
            (Ok::<_, std::convert::Infallible>(frame), i + 1)
        })
    }));
    let req = http::Request::builder()
        .method("POST")
        .uri("https://localhost/up")
        .body(http_body_util::StreamBody::new(frames))?;
    let started = std::time::Instant::now();
    let resp = tokio::time::timeout(STEP, sender.send_request(req)).await??;
    assert_eq!(resp.status(), 408);
    assert!(started.elapsed() < Duration::from_secs(5));
    let _ = resp.into_body().collect().await;
    assert!(
        metric(
            &f.running,
            "vigil_limits_hit_total{limit=\"body_read_timeout\"}"
        )
        .await?
            >= 2.0
    );
    Ok(())
}

#[tokio::test]
async fn idle_connections_are_closed() -> Result<()> {
    let f = fixture_with(
        "idle_timeout = \"1s\"\nheader_read_timeout = \"30s\"",
        API_ROUTE,
        "",
    )
    .await?;
    let mut tls = connect(f.running.addr, f.web(), "localhost").await?;
    tls.write_all(b"GET /public/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    assert_eq!(read_reply(&mut tls).await?.status, 200);
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(8), tls.read(&mut buf))
        .await?
        .unwrap_or(0);
    assert_eq!(n, 0, "the idle connection was not closed");
    assert!(metric(&f.running, "vigil_limits_hit_total{limit=\"idle_timeout\"}").await? >= 1.0);
    Ok(())
}

#[tokio::test]
async fn connections_over_the_limit_are_closed() -> Result<()> {
    let f = fixture_with(
        "max_connections = 2\nmax_connections_per_source = 0",
        API_ROUTE,
        "",
    )
    .await?;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tls = connect(f.running.addr, f.web(), "localhost").await?;
        tls.write_all(b"GET /public/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await?;
        assert_eq!(read_reply(&mut tls).await?.status, 200);
        held.push(tls);
    }
    let third = get(f.running.addr, f.web(), "/public/x", "").await;
    assert!(third.is_err(), "{third:?}");
    assert!(
        metric(
            &f.running,
            "vigil_connections_rejected_total{reason=\"max_connections\"}"
        )
        .await?
            >= 1.0
    );
    drop(held);
    let freed = eventually(STEP, || async {
        get(f.running.addr, f.web(), "/public/x", "")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(freed, "slots were not released");
    Ok(())
}

/// A TCP connection to `addr` from the loopback address `from`.
async fn tcp_from(from: [u8; 4], addr: SocketAddr) -> Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    Ok(socket.connect(addr).await?)
}

/// An mTLS connection to the proxy from the loopback address `from`.
async fn tls_from(
    from: [u8; 4],
    addr: SocketAddr,
    config: rustls::ClientConfig,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tcp_from(from, addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    Ok(tokio::time::timeout(STEP, connector.connect(name, tcp)).await??)
}

/// A full request over a new mTLS connection from `from`.
async fn served_from(from: [u8; 4], f: &Fixture) -> Result<u16> {
    let mut tls = tls_from(from, f.running.addr, f.web()).await?;
    let get = "GET /public/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    tls.write_all(get.as_bytes()).await?;
    Ok(read_reply(&mut tls).await?.status)
}

/// Opens `n` TCP connections from `from` that never start TLS; returns those the proxy kept
/// open (the others it closed at once).
async fn silent_sockets(
    from: [u8; 4],
    addr: SocketAddr,
    n: usize,
) -> Result<Vec<tokio::net::TcpStream>> {
    let mut opened = Vec::new();
    for _ in 0..n {
        opened.push(tcp_from(from, addr).await?);
    }
    let mut held = Vec::new();
    for mut s in opened {
        let mut buf = [0u8; 1];
        // A socket the proxy closed at once reads end-of-file; a held one reads nothing.
        let read = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
        if read.is_err() {
            held.push(s);
        }
    }
    Ok(held)
}

/// With the default per-source shares, one address filling `max_connections` with silent
/// TCP connections does not lock the others out.
#[tokio::test]
async fn one_source_cannot_take_every_connection_slot() -> Result<()> {
    let f = fixture_with("max_connections = 8", API_ROUTE, "").await?;
    let held = silent_sockets([127, 0, 0, 1], f.running.addr, 8).await?;
    assert!(held.len() < 8, "one source holds every slot");
    assert_eq!(served_from([127, 0, 0, 2], &f).await?, 200);
    drop(held);
    Ok(())
}

/// Explicit per-source limits on open connections and on handshakes in progress, their
/// metrics, and silent connections holding a slot only until `handshake_timeout`.
#[tokio::test]
async fn per_source_limits_on_connections_and_handshakes() -> Result<()> {
    let f = fixture_with(
        "max_connections = 8\nmax_connections_per_source = 4\nmax_handshakes_per_source = 2\nhandshake_timeout = \"2s\"",
        API_ROUTE,
        "",
    )
    .await?;
    // Open connections: four from one address, a fifth is refused, another address is served.
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut tls = tls_from([127, 0, 0, 1], f.running.addr, f.web()).await?;
        tls.write_all(b"GET /public/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await?;
        assert_eq!(read_reply(&mut tls).await?.status, 200);
        open.push(tls);
    }
    assert!(
        served_from([127, 0, 0, 1], &f).await.is_err(),
        "a fifth connection"
    );
    assert_eq!(served_from([127, 0, 0, 2], &f).await?, 200);
    assert!(
        metric(
            &f.running,
            "vigil_connections_rejected_total{reason=\"max_connections_per_source\"}"
        )
        .await?
            >= 1.0
    );
    drop(open);

    // Handshakes in progress: silent sockets from one address hold two handshake places.
    let held = silent_sockets([127, 0, 0, 3], f.running.addr, 8).await?;
    assert_eq!(held.len(), 2);
    assert!(
        served_from([127, 0, 0, 3], &f).await.is_err(),
        "a third handshake"
    );
    assert_eq!(served_from([127, 0, 0, 2], &f).await?, 200);
    assert!(
        metric(
            &f.running,
            "vigil_connections_rejected_total{reason=\"max_handshakes_per_source\"}"
        )
        .await?
            >= 1.0
    );
    // A silent connection holds its slot only until handshake_timeout.
    for mut s in held {
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(STEP, s.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
    }
    let freed = eventually(STEP, || async {
        served_from([127, 0, 0, 3], &f)
            .await
            .is_ok_and(|s| s == 200)
    })
    .await;
    assert!(freed, "handshake places were not released");
    Ok(())
}

#[tokio::test]
async fn http2_requests_are_served() -> Result<()> {
    let f = fixture().await?;
    let config = client_config(Some(&f.web), f.pki.ca.cert_pem(), &[b"h2", b"http/1.1"])?;
    let (status, body) = h2_get(
        f.running.addr,
        config.clone(),
        "https://localhost/public/h2",
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(json["path"], "/public/h2");
    assert_eq!(json["version"], "HTTP/1.1");
    let (status, _) = h2_get(
        f.running.addr,
        config.clone(),
        "https://localhost/public/%2e%2e/admin",
    )
    .await?;
    assert_eq!(status, 403);
    let (status, _) = h2_get(f.running.addr, config, "https://other.test/public/x").await?;
    assert_eq!(status, 421);
    Ok(())
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() -> Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let pki = Pki::new()?;
    let ws_addr = ws_echo_upstream().await?;
    let decisions = pki.path("decisions.log");
    let text = format!(
        "{}{}",
        base_config("", &decisions),
        API_ROUTE.replace("UPSTREAM", &ws_addr.to_string())
    );
    let running = spawn(&pki, &text).await?;
    let config = client_config(
        Some(&pki.workload(SPIFFE_WEB)?),
        pki.ca.cert_pem(),
        &[b"http/1.1"],
    )?;
    let tls = connect(running.addr, config, "localhost").await?;
    let (mut socket, response) = tokio::time::timeout(
        STEP,
        tokio_tungstenite::client_async("wss://localhost/ws", tls),
    )
    .await??;
    assert_eq!(response.status(), 101);
    for i in 0..3 {
        socket.send(Message::text(format!("hello {i}"))).await?;
        let echoed = tokio::time::timeout(STEP, socket.next()).await?;
        assert_eq!(
            echoed.transpose()?,
            Some(Message::text(format!("hello {i}")))
        );
    }
    assert!(metric(&running, "vigil_tunnels_open").await? >= 1.0);
    socket.close(None).await?;

    // A denied workload cannot open the tunnel.
    let config = client_config(
        Some(&pki.workload(SPIFFE_BATCH)?),
        pki.ca.cert_pem(),
        &[b"http/1.1"],
    )?;
    let tls = connect(running.addr, config, "localhost").await?;
    let denied = tokio_tungstenite::client_async("wss://localhost/ws", tls).await;
    assert!(denied.is_err());
    Ok(())
}

#[tokio::test]
async fn audit_mode_logs_denials_and_lets_them_through() -> Result<()> {
    let f = fixture_with("", API_ROUTE, "\n[audit]\nmode = \"audit\"\n").await?;
    let reply = get(f.running.addr, f.as_identity(&f.batch), "/public/x", "").await?;
    assert_eq!(reply.status, 200);
    let id = reply.header("x-request-id").unwrap_or_default();
    let line = decision_for(&f.decisions, &id)
        .await
        .expect("decision line");
    assert_eq!(line["decision"], "audit");
    assert_eq!(line["mode"], "audit");
    assert!(line["reasons"].to_string().contains("not allowed"));
    Ok(())
}

/// `audit = true` on one route lets its denials through and logs them as `audit`, while the
/// route beside it is enforced; `audit = false` enforces a route under `[audit] mode = "audit"`.
#[tokio::test]
async fn audit_mode_per_route() -> Result<()> {
    let routes = r#"
[[route]]
name = "trial"
host = "localhost"
path = "/trial"
upstream = "http://UPSTREAM"
login = "none"
audit = true
allow = [{ spiffe = ["spiffe://example.org/ns/frontend/sa/*"] }]

[[route]]
name = "strict"
host = "localhost"
path = "/strict"
upstream = "http://UPSTREAM"
login = "none"
audit = false
allow = [{ spiffe = ["spiffe://example.org/ns/frontend/sa/*"] }]

[[route]]
name = "api"
host = "localhost"
upstream = "http://UPSTREAM"
login = "none"
allow = [{ spiffe = ["spiffe://example.org/ns/frontend/sa/*"] }]
"#;
    for (global, expected) in [
        ("", [200, 403, 403]),
        ("\n[audit]\nmode = \"audit\"\n", [200, 403, 200]),
    ] {
        let f = fixture_with("", routes, global).await?;
        for ((path, route), status) in [
            ("/trial/x", "trial"),
            ("/strict/x", "strict"),
            ("/x", "api"),
        ]
        .into_iter()
        .zip(expected)
        {
            let reply = get(f.running.addr, f.as_identity(&f.batch), path, "").await?;
            assert_eq!(reply.status, status, "{path} with {global:?}");
            let id = reply.header("x-request-id").unwrap_or_default();
            let line = decision_for(&f.decisions, &id)
                .await
                .expect("decision line");
            assert_eq!(line["route"], route);
            let (decision, mode) = if status == 200 {
                ("audit", "audit")
            } else {
                ("deny", "enforce")
            };
            assert_eq!(line["decision"], decision, "{line}");
            assert_eq!(line["mode"], mode, "{line}");
        }
    }
    Ok(())
}

/// `headers` rules over HTTP/1.1 and HTTP/2: a matching value allows, any of a repeated
/// header's values may match, a missing or unmatched header denies with its reason, and the
/// value is never written to the log.
#[tokio::test]
async fn header_rules_match_the_request_headers() -> Result<()> {
    let routes = r#"
[[route]]
name = "api"
host = "localhost"
upstream = "http://UPSTREAM"
login = "none"
allow = [{ spiffe = ["spiffe://example.org/ns/frontend/sa/*"], headers = { authorization = ["Bearer *"], x-api-version = ["2", "3"] } }]
"#;
    let f = fixture_with("", routes, "").await?;
    let token = "Authorization: Bearer abc.def\r\n";
    for (extra, status, code) in [
        (format!("{token}X-Api-Version: 2\r\n"), 200, None),
        (
            format!("{token}x-api-version: 9\r\nX-API-Version: 3\r\n"),
            200,
            None,
        ),
        (
            "X-Api-Version: 2\r\n".to_owned(),
            403,
            Some("header_missing"),
        ),
        (
            "Authorization: Basic c2VjcmV0\r\nX-Api-Version: 2\r\n".to_owned(),
            403,
            Some("header_not_allowed"),
        ),
        (
            format!("{token}X-Api-Version: 4\r\n"),
            403,
            Some("header_not_allowed"),
        ),
    ] {
        let reply = get(f.running.addr, f.web(), "/x", &extra).await?;
        assert_eq!(reply.status, status, "{extra:?}: {reply:?}");
        let id = reply.header("x-request-id").unwrap_or_default();
        let line = decision_for(&f.decisions, &id)
            .await
            .expect("decision line");
        if let Some(code) = code {
            assert_eq!(line["codes"][0], code, "{line}");
        }
        assert!(!line.to_string().contains("c2VjcmV0"), "{line}");
    }

    // HTTP/2: the same rules on the same header map.
    let h2 = client_config(Some(&f.web), f.pki.ca.cert_pem(), &[b"h2"])?;
    let tls = connect(f.running.addr, h2, "localhost").await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await?;
    tokio::spawn(conn);
    for (version, status) in [("3", 200), ("1", 403)] {
        let req = http::Request::builder()
            .uri("https://localhost/x")
            .header("authorization", "Bearer abc")
            .header("x-api-version", version)
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        assert_eq!(resp.status().as_u16(), status, "h2 x-api-version {version}");
    }
    Ok(())
}

/// A rule's `hours` are checked at the time of the request: a window around now allows, the
/// same rule with a window later today denies, with the reason and its code in the log.
#[tokio::test]
async fn time_windows_decide_at_the_time_of_the_request() -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let clock = |offset_hours: i64| {
        let minutes = ((now / 60) as i64 + offset_hours * 60).rem_euclid(24 * 60);
        format!("{:02}:{:02}", minutes / 60, minutes % 60)
    };
    let open = format!("{}-{}", clock(-1), clock(1));
    let later = format!("{}-{}", clock(2), clock(3));
    let routes = format!(
        r#"
[[route]]
name = "open"
host = "localhost"
path = "/open"
upstream = "http://UPSTREAM"
login = "none"
allow = [{{ spiffe = ["spiffe://example.org/ns/frontend/sa/*"], hours = "{open}", timezone = "UTC" }}]

[[route]]
name = "later"
host = "localhost"
path = "/later"
upstream = "http://UPSTREAM"
login = "none"
allow = [{{ spiffe = ["spiffe://example.org/ns/frontend/sa/*"], hours = "{later}", timezone = "Asia/Kolkata" }}]
"#
    );
    // Kolkata is UTC+05:30 all year: the later window, written in its local time.
    let kolkata = |h: &str| -> String {
        let (hh, mm) = h.split_once(':').unwrap_or(("0", "0"));
        let minutes = (hh.parse::<i64>().unwrap_or(0) * 60 + mm.parse::<i64>().unwrap_or(0) + 330)
            .rem_euclid(24 * 60);
        format!("{:02}:{:02}", minutes / 60, minutes % 60)
    };
    let (from, to) = later.split_once('-').unwrap_or_default();
    let routes = routes.replace(&later, &format!("{}-{}", kolkata(from), kolkata(to)));
    let f = fixture_with("", &routes, "").await?;
    let reply = get(f.running.addr, f.web(), "/open/x", "").await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = get(f.running.addr, f.web(), "/later/x", "").await?;
    assert_eq!(reply.status, 403, "{reply:?}");
    let id = reply.header("x-request-id").unwrap_or_default();
    let line = decision_for(&f.decisions, &id)
        .await
        .expect("decision line");
    assert_eq!(line["codes"][0], "outside_hours", "{line}");
    assert!(
        line["reasons"][0]
            .as_str()
            .is_some_and(|r| r.contains("(Asia/Kolkata): it is")),
        "{line}"
    );
    Ok(())
}

#[tokio::test]
async fn whoami_describes_the_caller() -> Result<()> {
    let f = fixture().await?;
    let reply = get(f.running.addr, f.web(), "/.vigil/whoami", "").await?;
    assert_eq!(reply.status, 200);
    let json = reply.json();
    assert_eq!(json["certificate"]["spiffe_id"], SPIFFE_WEB);
    assert_eq!(json["route"], "api");
    Ok(())
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() -> Result<()> {
    let pki = Pki::new()?;
    // An upstream that answers after a second.
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let slow_addr = slow.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = slow.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndone",
                    )
                    .await;
            });
        }
    });
    let decisions = pki.path("decisions.log");
    let text = format!(
        "{}{}",
        base_config("drain_timeout = \"10s\"", &decisions),
        API_ROUTE.replace("UPSTREAM", &slow_addr.to_string())
    );
    let running = spawn(&pki, &text).await?;
    let addr = running.addr;
    let config = client_config(Some(&pki.workload(SPIFFE_WEB)?), pki.ca.cert_pem(), &[])?;
    let in_flight = tokio::spawn(get(addr, config.clone(), "/public/x", ""));
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::timeout(Duration::from_secs(15), running.shutdown()).await?;
    let reply = in_flight.await??;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "done");
    assert!(
        get(addr, config, "/public/x", "").await.is_err(),
        "still accepting after shutdown"
    );
    Ok(())
}

#[tokio::test]
async fn https_upstream_with_mutual_tls() -> Result<()> {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let pki = Pki::new()?;
    // The upstream's own certificate, and the one Vigil presents to it.
    let upstream_cert = pki
        .ca
        .issue(&LeafSpec::server(vec![], vec!["127.0.0.1".parse()?]))?;
    let proxy_identity = pki.device("vigil-proxy")?;
    std::fs::write(pki.path("proxy-client.pem"), &proxy_identity.cert_pem)?;
    std::fs::write(pki.path("proxy-client.key"), &proxy_identity.key_pem)?;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.cert_der().clone())?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()?;
    let chain =
        rustls::pki_types::CertificateDer::pem_slice_iter(upstream_cert.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(upstream_cert.key_pem.as_bytes())?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let presented = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| vigil::tls::PeerCert::from_der(c.as_ref()).ok())
                    .and_then(|p| p.common_name)
                    .unwrap_or_default();
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let body = format!(
                        "{} {} via {presented} {:?}",
                        req.method(),
                        req.uri().path(),
                        req.version()
                    );
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            bytes::Bytes::from(body),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });

    let decisions = pki.path("decisions.log");
    let text = format!(
        r#"{}
[[route]]
name = "secure"
host = "localhost"
upstream = "https://{upstream}"
upstream_ca = "ca.pem"
upstream_cert = "proxy-client.pem"
upstream_key = "proxy-client.key"
login = "none"
allow = [{{ spiffe = ["spiffe://example.org/**"] }}]
"#,
        base_config("", &decisions)
    );
    let running = spawn(&pki, &text).await?;
    let web = client_config(Some(&pki.workload(SPIFFE_WEB)?), pki.ca.cert_pem(), &[])?;
    let reply = get(running.addr, web, "/over/tls", "").await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.body.starts_with("GET /over/tls via vigil-proxy"),
        "{}",
        reply.body
    );
    // ALPN picked HTTP/2 to the upstream.
    assert!(reply.body.ends_with("HTTP/2.0"), "{}", reply.body);

    // Without the client identity, the upstream refuses Vigil, which answers 502.
    let text = text.replace(
        "upstream_cert = \"proxy-client.pem\"\nupstream_key = \"proxy-client.key\"\n",
        "",
    );
    let running = spawn(&pki, &text).await?;
    let web = client_config(Some(&pki.workload(SPIFFE_WEB)?), pki.ca.cert_pem(), &[])?;
    assert_eq!(get(running.addr, web, "/over/tls", "").await?.status, 502);
    Ok(())
}

#[tokio::test]
async fn bodies_stream_both_ways_over_http2() -> Result<()> {
    use http_body_util::{BodyExt, Full};
    let f = fixture().await?;
    let config = client_config(Some(&f.web), f.pki.ca.cert_pem(), &[b"h2"])?;
    let tls = connect(f.running.addr, config, "localhost").await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await?;
    tokio::spawn(conn);
    let payload = "z".repeat(256 * 1024);
    let req = http::Request::builder()
        .method("POST")
        .uri("https://localhost/public/upload")
        .body(Full::new(bytes::Bytes::from(payload.clone())))?;
    let resp = sender.send_request(req).await?;
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await?.to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(json["method"], "POST");
    assert!(json["headers"].to_string().contains("x-vigil-workload"));
    Ok(())
}

/// What a raw upstream received: every byte of every connection, and how many connections
/// were closed by the other side.
#[derive(Default)]
struct Recording {
    bytes: std::sync::Mutex<Vec<u8>>,
    closed: std::sync::atomic::AtomicUsize,
}

impl Recording {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().map(|b| b.clone()).unwrap_or_default())
            .to_string()
    }
}

/// An upstream that answers `101 Switching Protocols` with `Upgrade: {switch_to}` to every
/// request, whatever it asked for, and records every byte it receives afterwards too (the
/// worst case: an upstream that accepts any upgrade and would serve what comes through it).
async fn switching_upstream(
    switch_to: &'static str,
) -> Result<(SocketAddr, std::sync::Arc<Recording>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let recording = std::sync::Arc::new(Recording::default());
    let rec = recording.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 8192];
                let mut switched = false;
                loop {
                    let read = tokio::time::timeout(STEP, stream.read(&mut buf)).await;
                    let n = match read {
                        Ok(Ok(n)) => n,
                        _ => 0,
                    };
                    if n == 0 {
                        rec.closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                    if let Ok(mut all) = rec.bytes.lock() {
                        all.extend_from_slice(&buf[..n]);
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if !switched && seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        switched = true;
                        let answer = format!(
                            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {switch_to}\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
                        );
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok((addr, recording))
}

#[tokio::test]
async fn h2c_upgrade_cannot_smuggle_requests_past_the_decision() -> Result<()> {
    let pki = Pki::new()?;
    let (upstream, recording) = switching_upstream("h2c").await?;
    let decisions = pki.path("decisions.log");
    let text = format!(
        "{}{}",
        base_config("", &decisions),
        API_ROUTE.replace("UPSTREAM", &upstream.to_string())
    );
    let running = spawn(&pki, &text).await?;
    let web = client_config(
        Some(&pki.workload(SPIFFE_WEB)?),
        pki.ca.cert_pem(),
        &[b"http/1.1"],
    )?;
    // An allowed request asking for h2c, and right behind it, bytes meant for the tunnel:
    // a request for a path the workload may not use, with a forged identity.
    let attack = "GET /public/a HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n\
                  GET /admin HTTP/1.1\r\nHost: localhost\r\nX-Vigil-User: mallory\r\nConnection: close\r\n\r\n";
    let mut tls = connect(running.addr, web, "localhost").await?;
    tls.write_all(attack.as_bytes()).await?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(STEP, tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_string();
    let statuses: Vec<&str> = answer
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .collect();
    assert!(
        matches!(
            statuses.first().copied(),
            Some("HTTP/1.1 502 Bad Gateway" | "HTTP/1.1 200 OK")
        ),
        "{answer}"
    );
    assert!(!answer.contains(" 101 "), "{answer}");

    // The upstream was asked for a plain GET, nothing more; its 101 closed its connection.
    let closed = eventually(STEP, || async {
        recording.closed.load(std::sync::atomic::Ordering::SeqCst) >= 1
    })
    .await;
    assert!(closed, "Vigil kept the switched upstream connection open");
    let seen = recording.text();
    let lower = seen.to_ascii_lowercase();
    assert!(!lower.contains("upgrade"), "{seen}");
    assert!(!lower.contains("http2-settings"), "{seen}");
    assert!(!seen.contains("/admin"), "{seen}");
    assert!(!seen.contains("mallory"), "{seen}");
    assert_eq!(seen.matches(" HTTP/1.1\r\n").count(), 1, "{seen}");
    assert!(seen.starts_with("GET /public/a HTTP/1.1\r\n"), "{seen}");

    // The decision log says what was removed and why the answer was 502.
    let logged = eventually(STEP, || async {
        support::decisions(&decisions)
            .iter()
            .any(|l| l["path"] == "/public/a")
    })
    .await;
    assert!(logged, "no decision line for /public/a");
    let lines = support::decisions(&decisions);
    let first = lines
        .iter()
        .find(|l| l["path"] == "/public/a")
        .expect("decision line for /public/a");
    let reasons = first["reasons"].to_string();
    assert!(
        reasons.contains("upgrade to h2c not allowed on this route"),
        "{reasons}"
    );
    assert!(reasons.contains("switched protocols"), "{reasons}");
    assert_eq!(first["status"], 502);
    if let Some(admin_line) = lines.iter().find(|l| l["path"] == "/admin") {
        assert_eq!(admin_line["decision"], "deny", "{admin_line}");
    }
    Ok(())
}

#[tokio::test]
async fn a_101_to_another_protocol_than_asked_gives_502() -> Result<()> {
    let pki = Pki::new()?;
    let (upstream, recording) = switching_upstream("h2c").await?;
    let decisions = pki.path("decisions.log");
    let text = format!(
        "{}{}",
        base_config("", &decisions),
        API_ROUTE.replace("UPSTREAM", &upstream.to_string())
    );
    let running = spawn(&pki, &text).await?;
    let web = client_config(
        Some(&pki.workload(SPIFFE_WEB)?),
        pki.ca.cert_pem(),
        &[b"http/1.1"],
    )?;
    let websocket = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let reply = get(running.addr, web.clone(), "/ws", websocket).await?;
    assert_eq!(reply.status, 502, "{reply:?}");
    let line = decision_for(
        &decisions,
        &reply.header("x-request-id").unwrap_or_default(),
    )
    .await
    .expect("decision line");
    assert!(
        line["reasons"]
            .to_string()
            .contains("switched protocols to \\\"h2c\\\""),
        "{line}"
    );
    let closed = eventually(STEP, || async {
        recording.closed.load(std::sync::atomic::Ordering::SeqCst) >= 1
    })
    .await;
    assert!(closed, "Vigil kept the switched upstream connection open");
    assert!(recording.text().contains("upgrade: websocket"));

    // A WebSocket handshake RFC 6455 would refuse never reaches the upstream.
    let before = recording.text().len();
    for bad in [
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n",
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    ] {
        let reply = get(running.addr, web.clone(), "/ws", bad).await?;
        assert_eq!(reply.status, 400, "{bad}: {reply:?}");
    }
    assert_eq!(recording.text().len(), before);
    Ok(())
}

/// A 101 to a WebSocket handshake is spliced only when its `Sec-WebSocket-Accept` answers this
/// request's key (RFC 6455 §4.2.2): an upstream that switches to whatever it is asked for,
/// without reading the handshake, gets no tunnel through which undecided requests could pass.
#[tokio::test]
async fn a_websocket_101_without_the_right_accept_gives_502() -> Result<()> {
    let pki = Pki::new()?;
    // Its accept answers the RFC's sample key, not the key sent below.
    let (upstream, recording) = switching_upstream("websocket").await?;
    let decisions = pki.path("decisions.log");
    let text = format!(
        "{}{}",
        base_config("", &decisions),
        API_ROUTE.replace("UPSTREAM", &upstream.to_string())
    );
    let running = spawn(&pki, &text).await?;
    let web = client_config(
        Some(&pki.workload(SPIFFE_WEB)?),
        pki.ca.cert_pem(),
        &[b"http/1.1"],
    )?;
    let attack = "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\nSec-WebSocket-Version: 13\r\n\r\n\
                  GET /admin HTTP/1.1\r\nHost: localhost\r\nX-Vigil-User: mallory\r\nConnection: close\r\n\r\n";
    let mut tls = connect(running.addr, web, "localhost").await?;
    tls.write_all(attack.as_bytes()).await?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(STEP, tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    assert!(!answer.contains(" 101 "), "{answer}");
    let closed = eventually(STEP, || async {
        recording.closed.load(std::sync::atomic::Ordering::SeqCst) >= 1
    })
    .await;
    assert!(closed, "Vigil kept the switched upstream connection open");
    let seen = recording.text();
    assert!(!seen.contains("/admin"), "{seen}");
    assert!(!seen.contains("mallory"), "{seen}");
    let logged = eventually(STEP, || async {
        support::decisions(&decisions)
            .iter()
            .any(|l| l["path"] == "/ws")
    })
    .await;
    assert!(logged, "no decision line for /ws");
    let lines = support::decisions(&decisions);
    let line = lines
        .iter()
        .find(|l| l["path"] == "/ws")
        .expect("decision line for /ws");
    assert!(
        line["reasons"]
            .to_string()
            .contains("without a valid Sec-WebSocket-Accept"),
        "{line}"
    );
    Ok(())
}

#[tokio::test]
async fn a_route_without_upgrades_never_tunnels() -> Result<()> {
    let pki = Pki::new()?;
    let (upstream, recording) = switching_upstream("websocket").await?;
    let decisions = pki.path("decisions.log");
    let route = API_ROUTE.replace("login = \"none\"", "login = \"none\"\nupgrades = []");
    let text = format!(
        "{}{}",
        base_config("", &decisions),
        route.replace("UPSTREAM", &upstream.to_string())
    );
    let running = spawn(&pki, &text).await?;
    let web = client_config(
        Some(&pki.workload(SPIFFE_WEB)?),
        pki.ca.cert_pem(),
        &[b"http/1.1"],
    )?;
    let websocket = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let reply = get(running.addr, web, "/ws", websocket).await?;
    // The upstream was sent a plain GET and answered 101 anyway: nobody asked for it.
    assert_eq!(reply.status, 502, "{reply:?}");
    assert!(!recording.text().to_ascii_lowercase().contains("upgrade"));
    Ok(())
}

#[tokio::test]
async fn upgrades_that_carry_http_are_a_configuration_error() -> Result<()> {
    let pki = Pki::new()?;
    let ctx = vigil::config::Context::first()?;
    for bad in ["\"h2c\"", "\"H2C\"", "\"HTTP\"", "\"websocket/13\"", "\"\""] {
        let route = API_ROUTE.replace(
            "login = \"none\"",
            &format!("login = \"none\"\nupgrades = [{bad}]"),
        );
        let text = format!("{}{}", base_config("", &pki.path("d.log")), route);
        let err = vigil::config::load_text("test.toml", text, pki.dir.path(), &ctx)
            .err()
            .map(|p| p.to_string())
            .unwrap_or_default();
        assert!(err.contains("upgrades"), "{bad}: {err}");
    }
    Ok(())
}

/// One HTTP/2 request with extra headers, on a fresh connection: (status, body).
async fn h2_request(
    addr: SocketAddr,
    config: rustls::ClientConfig,
    uri: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    let tls = connect(addr, config, "localhost").await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await?;
    tokio::spawn(conn);
    let mut req = http::Request::builder().uri(uri);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = tokio::time::timeout(
        STEP,
        sender.send_request(req.body(Empty::<bytes::Bytes>::new())?),
    )
    .await??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).to_string()))
}

#[tokio::test]
async fn two_authorization_headers_are_refused_on_a_workload_route() -> Result<()> {
    let f = fixture().await?;
    let two = "Authorization: Basic YTpi\r\nAuthorization: Bearer x\r\n";
    let reply = get(f.running.addr, f.web(), "/public/x", two).await?;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.json()["reason"], "duplicate Authorization header");
    assert!(reply.json().get("headers").is_none());
    let h2 = client_config(Some(&f.web), f.pki.ca.cert_pem(), &[b"h2"])?;
    let (status, body) = h2_request(
        f.running.addr,
        h2,
        "https://localhost/public/x",
        &[
            ("authorization", "Basic YTpi"),
            ("authorization", "Bearer x"),
        ],
    )
    .await?;
    assert_eq!(status, 400, "{body}");
    // One is passed on as sent.
    let reply = get(
        f.running.addr,
        f.web(),
        "/public/x",
        "Authorization: Basic YTpi\r\n",
    )
    .await?;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.upstream_header("authorization").as_deref(),
        Some("Basic YTpi")
    );
    Ok(())
}

#[tokio::test]
async fn bearer_routes_forward_exactly_the_verified_token() -> Result<()> {
    let w = support::world::world().await?;
    let workload = w.pki.workload(SPIFFE_WEB)?;
    let h1 = client_config(Some(&workload), w.pki.ca.cert_pem(), &[])?;
    let h2 = client_config(Some(&workload), w.pki.ca.cert_pem(), &[b"h2"])?;
    let token = w.idp.client_credentials("orders:read").await?;

    let two = format!("Authorization: Bearer {token}\r\nAuthorization: Bearer forged\r\n");
    let reply = get(w.running.addr, h1.clone(), "/api/orders", &two).await?;
    assert_eq!(reply.status, 400, "{reply:?}");
    let two_h2 = [
        ("authorization", format!("Bearer {token}")),
        ("authorization", "Bearer forged".to_owned()),
    ];
    let two_h2: Vec<(&str, &str)> = two_h2.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, body) = h2_request(
        w.running.addr,
        h2.clone(),
        &format!("https://localhost:{}/api/orders", w.port),
        &two_h2,
    )
    .await?;
    assert_eq!(status, 400, "{body}");

    // Sent with an odd scheme spelling and spacing, it arrives as the verified token alone.
    let odd = format!("Authorization: bearer   {token}\r\n");
    let reply = get(w.running.addr, h1, "/api/orders", &odd).await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    let sent: Vec<String> = reply
        .upstream_headers()
        .into_iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(sent, vec![format!("Bearer {token}")]);
    let (status, body) = h2_request(
        w.running.addr,
        h2,
        &format!("https://localhost:{}/api/orders", w.port),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.matches("authorization: ").count(), 1, "{body}");
    Ok(())
}

#[tokio::test]
async fn websockets_over_http2_are_refused_cleanly() -> Result<()> {
    use http_body_util::Empty;
    let f = fixture().await?;
    let config = client_config(Some(&f.web), f.pki.ca.cert_pem(), &[b"h2"])?;
    let tls = connect(f.running.addr, config, "localhost").await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await?;
    let connection = tokio::spawn(conn);
    // RFC 8441: CONNECT with :protocol = websocket.
    let mut req = http::Request::builder()
        .method("CONNECT")
        .uri("https://localhost/ws")
        .header("sec-websocket-version", "13")
        .body(Empty::<bytes::Bytes>::new())?;
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let answer = tokio::time::timeout(STEP, sender.send_request(req)).await?;
    match answer {
        Ok(response) => assert_ne!(response.status().as_u16() / 100, 2, "{response:?}"),
        Err(e) => eprintln!("extended CONNECT refused: {e}"),
    }
    // The connection itself stays usable.
    let plain = http::Request::builder()
        .uri("https://localhost/public/after")
        .body(Empty::<bytes::Bytes>::new())?;
    let after = tokio::time::timeout(STEP, sender.send_request(plain)).await??;
    assert_eq!(after.status(), 200);
    assert!(!connection.is_finished());
    Ok(())
}
