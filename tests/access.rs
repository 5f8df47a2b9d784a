//! Just-in-time grants on the admin API, for workloads: a grant opens a route to a SPIFFE ID
//! for a time; revoking it (or its expiry) cuts the workload's open HTTP/2 connection; every
//! refusal of the API says why; the configuration's mistakes are reported by `vigil check`.
//! The people's side (asking, approving in a real browser) is in tests/browser.rs.

mod support;

use anyhow::{Context as _, Result};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::AsyncWriteExt;

const ROUTES: &str = r#"
[[route]]
name = "orders"
host = "localhost"
upstream = "http://UPSTREAM"
login = "none"
allow = [{ spiffe = ["spiffe://example.org/ns/batch/**"] }, { grant = true }]
grants = { max = "1h", approvers = { groups = ["sec-oncall"] } }

[[route]]
name = "plain"
host = "plain.test"
upstream = "http://UPSTREAM"
login = "none"
allow = [{ spiffe = ["spiffe://example.org/**"] }]
"#;

async fn proxy(pki: &Pki) -> Result<(vigil::Running, std::path::PathBuf)> {
    let (upstream, stop) = echo_upstream().await?;
    std::mem::forget(stop);
    let log = pki.path("decisions.log");
    let text = base_config("", &log) + &ROUTES.replace("UPSTREAM", &upstream.to_string());
    Ok((spawn(pki, &text).await?, log))
}

async fn post(running: &vigil::Running, path: &str, body: &str) -> Result<Reply> {
    let addr = running.admin.context("admin")?;
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes()).await?;
    read_reply(&mut tcp).await
}

/// An HTTP/2 connection as `who`, with a request sender and the connection's task.
async fn h2(
    running: &vigil::Running,
    pki: &Pki,
    who: &vigil::certs::Issued,
) -> Result<(
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
)> {
    let config = client_config(Some(who), pki.ca.cert_pem(), &[b"h2"])?;
    let tls = connect(running.addr, config, "localhost").await?;
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await?;
    Ok((sender, tokio::spawn(conn)))
}

fn request() -> Result<http::Request<http_body_util::Empty<bytes::Bytes>>> {
    Ok(http::Request::builder()
        .uri("https://localhost/orders/7")
        .body(http_body_util::Empty::new())?)
}

#[tokio::test]
async fn an_admin_grant_opens_a_route_to_a_workload_and_its_revocation_cuts_the_connection()
-> Result<()> {
    let pki = Pki::new()?;
    let (running, log) = proxy(&pki).await?;
    let web = pki.workload(SPIFFE_WEB)?;
    let (mut sender, connection) = h2(&running, &pki, &web).await?;
    assert_eq!(sender.send_request(request()?).await?.status(), 403);

    let made = post(
        &running,
        "/grants",
        &format!(r#"{{"subject": {{"spiffe": "{SPIFFE_WEB}"}}, "route": "orders", "duration": "30m", "reason": "CHG-77: backfill", "requested_by": "ticket CHG-77"}}"#),
    )
    .await?;
    assert_eq!(made.status, 201, "{made:?}");
    let grant: serde_json::Value = serde_json::from_str(&made.body)?;
    let id = grant["grant"]["id"].as_str().context("id")?.to_owned();
    assert_eq!(grant["grant"]["requested_by"], "ticket CHG-77");
    assert_eq!(grant["grant"]["approved_by"], "loopback");
    let lasts = grant["grant"]["expires_at"].as_i64().unwrap()
        - grant["grant"]["created_at"].as_i64().unwrap();
    assert_eq!(lasts, 1800);

    // The same connection gets through now, on the grant.
    assert_eq!(sender.send_request(request()?).await?.status(), 200);
    let listed = admin(&running, "GET", "/grants").await?;
    assert!(listed.body.contains(&id), "{listed:?}");
    assert_eq!(metric(&running, "vigil_grants_active").await?, 1.0);

    let revoked = post(&running, "/grants/revoke", &format!(r#"{{"id": "{id}"}}"#)).await?;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    let at = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(
        closed.is_ok(),
        "the HTTP/2 connection stayed open after the grant's revocation"
    );
    eprintln!("cut {:?} after the revocation", at.elapsed());
    assert!(
        metric(
            &running,
            "vigil_connections_cut_total{reason=\"grant_ended\"}"
        )
        .await?
            >= 1.0
    );
    // A new connection is refused again, with the reason.
    let (mut again, _conn) = h2(&running, &pki, &web).await?;
    assert_eq!(again.send_request(request()?).await?.status(), 403);
    assert_eq!(
        post(&running, "/grants/revoke", &format!(r#"{{"id": "{id}"}}"#))
            .await?
            .status,
        404
    );

    let written = eventually(STEP, || async {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("grant_revoked"))
    })
    .await;
    assert!(written, "the revocation never reached the log");
    let lines = std::fs::read_to_string(&log)?;
    let lines: Vec<serde_json::Value> = lines
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let allowed = lines
        .iter()
        .find(|l| l["kind"] == "decision" && l["grant"] == id.as_str())
        .context("no decision line names the grant")?;
    assert_eq!(
        allowed["codes"],
        serde_json::json!(["allowed_by_rule", "allowed_by_grant"])
    );
    let denied = lines
        .iter()
        .rfind(|l| l["kind"] == "decision" && l["decision"] == "deny")
        .context("a denial")?;
    assert!(
        denied["codes"].to_string().contains("grant_missing"),
        "{denied}"
    );
    let events: Vec<&str> = lines
        .iter()
        .filter(|l| l["kind"] == "access")
        .filter_map(|l| l["event"].as_str())
        .collect();
    assert_eq!(events, ["grant_created", "grant_revoked"]);
    let created = lines
        .iter()
        .find(|l| l["event"] == "grant_created")
        .unwrap();
    assert_eq!(created["actor"], "loopback");
    assert_eq!(created["via"], "loopback");
    assert_eq!(created["grant"]["subject"]["spiffe"], SPIFFE_WEB);
    Ok(())
}

#[tokio::test]
async fn a_grant_ends_by_itself_and_takes_its_connection_with_it() -> Result<()> {
    let pki = Pki::new()?;
    let (running, log) = proxy(&pki).await?;
    let web = pki.workload(SPIFFE_WEB)?;
    let made = post(
        &running,
        "/grants",
        &format!(r#"{{"subject": {{"spiffe": "{SPIFFE_WEB}"}}, "route": "orders", "duration": "2s", "reason": "a short look"}}"#),
    )
    .await?;
    assert_eq!(made.status, 201, "{made:?}");
    let (mut sender, connection) = h2(&running, &pki, &web).await?;
    assert_eq!(sender.send_request(request()?).await?.status(), 200);
    let closed = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(closed.is_ok(), "the connection outlived its grant");
    let (mut again, _conn) = h2(&running, &pki, &web).await?;
    assert_eq!(again.send_request(request()?).await?.status(), 403);
    assert_eq!(metric(&running, "vigil_grants_active").await?, 0.0);
    let expired = eventually(STEP, || async {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("\"event\":\"grant_expired\""))
    })
    .await;
    assert!(expired, "no grant_expired event in the log");
    Ok(())
}

#[tokio::test]
async fn the_grants_api_refuses_what_it_cannot_grant_and_says_why() -> Result<()> {
    let pki = Pki::new()?;
    let (running, _log) = proxy(&pki).await?;
    let cases: &[(&str, u16, &str)] = &[
        (
            r#"{"subject": {"spiffe": "spiffe://example.org/x"}, "route": "nope", "duration": "1h", "reason": "r"}"#,
            404,
            "no route",
        ),
        (
            r#"{"subject": {"spiffe": "spiffe://example.org/x"}, "route": "plain", "duration": "1h", "reason": "r"}"#,
            422,
            "does not grant",
        ),
        (
            r#"{"subject": {"spiffe": "spiffe://example.org/x"}, "route": "orders", "duration": "2h", "reason": "r"}"#,
            422,
            "at most 3600s",
        ),
        (
            r#"{"subject": {"spiffe": "spiffe://example.org/x"}, "route": "orders", "duration": "0s", "reason": "r"}"#,
            422,
            "longer than zero",
        ),
        (
            r#"{"subject": {"spiffe": "spiffe://example.org/x"}, "route": "orders", "duration": "1h", "reason": "  "}"#,
            422,
            "reason is required",
        ),
        (
            r#"{"subject": {"address": "127.0.0.1"}, "route": "orders", "duration": "1h", "reason": "r"}"#,
            422,
            "source address",
        ),
        (
            r#"{"subject": {"spiffe": "spiffe://example.org/x"}, "route": "orders", "duration": "soon", "reason": "r"}"#,
            400,
            "duration",
        ),
        (
            r#"{"subject": {"team": "x"}, "route": "orders", "duration": "1h", "reason": "r"}"#,
            400,
            "unknown variant",
        ),
        (
            r#"{"subject": {"spiffe": "spiffe://example.org/x"}, "route": "orders", "duration": "1h", "reason": "r", "extra": 1}"#,
            400,
            "unknown field",
        ),
        (r#"[1, 2]"#, 400, "JSON object"),
    ];
    for (body, status, says) in cases {
        let reply = post(&running, "/grants", body).await?;
        assert_eq!(reply.status, *status, "{body}: {reply:?}");
        assert!(reply.body.contains(says), "{body}: {reply:?}");
    }
    assert_eq!(post(&running, "/grants/revoke", "{}").await?.status, 400);
    assert_eq!(admin(&running, "PUT", "/grants").await?.status, 405);
    assert_eq!(metric(&running, "vigil_grants_active").await?, 0.0);
    Ok(())
}

#[test]
fn grant_settings_mistakes_are_reported_where_they_are() -> Result<()> {
    let pki = Pki::new()?;
    let route = |extra: &str| {
        base_config("", &pki.path("d.log"))
            + "[[route]]\nname = \"r\"\nhost = \"localhost\"\nupstream = \"http://127.0.0.1:9\"\nlogin = \"none\"\n"
            + extra
    };
    let cases = [
        ("allow = [{ grant = true }]\n", "allow", "grants nothing"),
        (
            "allow = [{ grant = true }]\ngrants = { max = \"1h\" }\n",
            "approvers",
            "nobody can approve",
        ),
        (
            "allow = [{ grant = true }]\ngrants = { max = \"1h\", default = \"2h\", approvers = { users = [\"a@example.com\"] } }\n",
            "default",
            "at most max",
        ),
        (
            "allow = [{ grant = true }]\ngrants = { max = \"soon\", approvers = { users = [\"a@example.com\"] } }\n",
            "max",
            "",
        ),
    ];
    let ctx = vigil::config::Context::first()?;
    for (extra, at, says) in cases {
        let problems = vigil::config::load_text("t.toml", route(extra), pki.dir.path(), &ctx)
            .err()
            .with_context(|| format!("{extra} was accepted"))?
            .to_string();
        assert!(problems.contains(at), "{extra}: {problems}");
        assert!(problems.contains(says), "{extra}: {problems}");
    }
    Ok(())
}

#[tokio::test]
async fn grant_changes_are_announced_on_the_alert_webhook_signed() -> Result<()> {
    let pki = Pki::new()?;
    let receiver = support::receiver::Receiver::start(&pki, &[]).await?;
    let secret = "a-secret-for-grant-alerts-32-byt";
    std::fs::write(pki.path("alerts.secret"), secret)?;
    let (upstream, stop) = echo_upstream().await?;
    std::mem::forget(stop);
    let alerts = format!(
        "\n[alerts]\nwebhook = \"https://localhost:{}/hook\"\nca = \"ca.pem\"\nsecret_file = \"alerts.secret\"\n",
        receiver.addr.port()
    );
    let text = base_config("", &pki.path("d.log"))
        + &alerts
        + &ROUTES.replace("UPSTREAM", &upstream.to_string());
    let running = spawn(&pki, &text).await?;
    let made = post(
        &running,
        "/grants",
        &format!(r#"{{"subject": {{"spiffe": "{SPIFFE_WEB}"}}, "route": "orders", "duration": "10m", "reason": "CHG-78"}}"#),
    )
    .await?;
    assert_eq!(made.status, 201, "{made:?}");
    let id = serde_json::from_str::<serde_json::Value>(&made.body)?["grant"]["id"]
        .as_str()
        .context("id")?
        .to_owned();
    let revoked = post(&running, "/grants/revoke", &format!(r#"{{"id": "{id}"}}"#)).await?;
    assert_eq!(revoked.status, 200);
    let both = eventually(STEP, || async { receiver.got().len() >= 2 }).await;
    assert!(both, "the receiver got {:?}", receiver.got());
    let got = receiver.got();
    let kinds: Vec<String> = got
        .iter()
        .map(|r| {
            assert!(
                support::receiver::verifies(secret.as_bytes(), r),
                "unsigned: {r:?}"
            );
            let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(doc["subject"], format!("spiffe:{SPIFFE_WEB}"));
            assert_eq!(doc["route"], "orders");
            assert_eq!(doc["detail"]["grant"]["id"], id.as_str());
            doc["kind"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(kinds, ["grant_created", "grant_revoked"]);
    Ok(())
}

#[tokio::test]
async fn an_operator_block_cuts_the_open_connection_of_the_blocked_workload() -> Result<()> {
    let pki = Pki::new()?;
    let (running, _log) = proxy(&pki).await?;
    let batch = pki.workload(SPIFFE_BATCH)?;
    let (mut sender, connection) = h2(&running, &pki, &batch).await?;
    assert_eq!(sender.send_request(request()?).await?.status(), 200);
    let blocked = post(
        &running,
        "/blocks",
        &format!(
            r#"{{"subject": {{"spiffe": "{SPIFFE_BATCH}"}}, "duration": "10m", "reason": "INC-9"}}"#
        ),
    )
    .await?;
    assert_eq!(blocked.status, 201, "{blocked:?}");
    let closed = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(
        closed.is_ok(),
        "the blocked workload's connection stayed open"
    );
    assert!(metric(&running, "vigil_connections_cut_total{reason=\"blocked\"}").await? >= 1.0);
    let (mut again, _conn) = h2(&running, &pki, &batch).await?;
    assert_eq!(again.send_request(request()?).await?.status(), 403);
    let lifted = post(
        &running,
        "/blocks/lift",
        &format!(r#"{{"subject": {{"spiffe": "{SPIFFE_BATCH}"}}}}"#),
    )
    .await?;
    assert_eq!(lifted.status, 200, "{lifted:?}");
    assert_eq!(again.send_request(request()?).await?.status(), 200);
    Ok(())
}
