//! The decision endpoint (`[authz]`) over real sockets: an enforcement point authenticated by
//! its client certificate asks about the request it holds, naming it in nginx's, Traefik's or
//! Envoy's spellings, and passes on the end client's certificate, which Vigil verifies itself.

mod support;

use anyhow::Result;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::PathBuf;
use support::*;
use tokio_util::sync::CancellationToken;
use vigil::certs::{Authority, Issued, LeafSpec};

const NGINX: &str = "spiffe://example.org/ns/ingress/sa/nginx";

struct Fixture {
    pki: Pki,
    running: vigil::Running,
    decisions: PathBuf,
    /// The enforcement point's own certificate.
    nginx: Issued,
    /// An end client's device certificate.
    laptop: Issued,
    /// An enforcement point known by its fingerprint.
    edge: Issued,
    /// A device certificate the CRL revokes, when the fixture has one.
    stolen: Option<Issued>,
    _upstream: CancellationToken,
}

impl Fixture {
    fn tls(&self, id: &Issued) -> rustls::ClientConfig {
        client_config(Some(id), self.pki.ca.cert_pem(), &[b"http/1.1"]).expect("client config")
    }

    /// A check request from `caller` for exactly the endpoint's path, with `headers`.
    async fn ask(&self, caller: &Issued, headers: &str) -> Result<Reply> {
        self.ask_at(caller, "/.vigil/authz", "GET", headers).await
    }

    async fn ask_at(
        &self,
        caller: &Issued,
        path: &str,
        method: &str,
        headers: &str,
    ) -> Result<Reply> {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n"
        );
        raw(self.running.addr, self.tls(caller), "localhost", &request).await
    }

    async fn line(&self, reply: &Reply) -> serde_json::Value {
        let id = reply.header("x-request-id").expect("a request id");
        decision_for(&self.decisions, &id)
            .await
            .expect("a decision line")
    }
}

/// URL-escapes a PEM certificate as nginx's `$ssl_client_escaped_cert` does.
fn escaped(pem: &str) -> String {
    pem.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn fingerprint(id: &Issued) -> String {
    let der = CertificateDer::from_pem_slice(id.cert_pem.as_bytes()).expect("a certificate");
    vigil::tls::PeerCert::from_der(der.as_ref())
        .expect("readable")
        .fingerprint_hex
}

/// nginx's headers for `method uri` on `app.test` from 198.51.100.7 presenting `client`.
fn nginx_headers(method: &str, uri: &str, client: &Issued) -> String {
    format!(
        "X-Original-Method: {method}\r\nX-Original-URI: {uri}\r\nX-Forwarded-Host: app.test\r\nX-Forwarded-For: 198.51.100.7\r\nX-SSL-Client-Cert: {}\r\n",
        escaped(&client.cert_pem)
    )
}

async fn fixture_with(with_crl: bool) -> Result<Fixture> {
    let pki = Pki::new()?;
    let mut tls_extra = "";
    let mut stolen = None;
    if with_crl {
        let device = pki.device("stolen-laptop")?;
        pki.write_crl(&[&device.serial], 1)?;
        stolen = Some(device);
        tls_extra = "crl = [\"ca.crl\"]";
    }
    let (upstream, stop) = echo_upstream().await?;
    std::fs::write(
        pki.path("assertion.pem"),
        vigil::forward::assertion::Signer::generate_pem().map_err(anyhow::Error::msg)?,
    )?;
    let decisions = pki.path("decisions.log");
    let nginx = pki.workload(NGINX)?;
    let edge = pki.device("edge-proxy")?;
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[tls]
cert = "server.pem"
key = "server.key"
client_ca = ["ca.pem"]
{tls_extra}

[admin]
listen = "127.0.0.1:0"

[log]
decisions = "{}"

[assertion]
keys_file = "assertion.pem"
issuer = "https://vigil.test"

[authz]
enforcement_points = [
  {{ name = "nginx", spiffe = "{NGINX}" }},
  {{ name = "edge", fingerprint = "{}" }},
]

[[route]]
name = "app"
host = "app.test"
upstream = "http://{upstream}"
login = "none"
headers = {{ "X-Remote-Device" = "device" }}
allow = [{{ cert_subject = ["*-laptop"], paths = ["/reports/**"], methods = ["GET"] }}]
"#,
        decisions.display(),
        fingerprint(&edge),
    );
    let running = spawn(&pki, &text).await?;
    Ok(Fixture {
        laptop: pki.device("alice-laptop")?,
        nginx,
        edge,
        stolen,
        pki,
        running,
        decisions,
        _upstream: stop,
    })
}

async fn fixture() -> Result<Fixture> {
    fixture_with(false).await
}

#[tokio::test]
async fn an_allowed_request_gets_the_identity_headers_and_the_assertion() -> Result<()> {
    let f = fixture().await?;
    let reply = f
        .ask(
            &f.nginx,
            &nginx_headers("GET", "/reports/./q1?year=2026", &f.laptop),
        )
        .await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    let device = fingerprint(&f.laptop);
    assert_eq!(
        reply.header("x-vigil-device").as_deref(),
        Some(device.as_str())
    );
    assert_eq!(
        reply.header("x-remote-device").as_deref(),
        Some(device.as_str())
    );
    let assertion = reply.header("x-vigil-assertion").expect("an assertion");
    let payload = assertion.split('.').nth(1).expect("a JWT");
    use base64::Engine;
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?;
    assert_eq!(claims["aud"], "app");
    assert_eq!(claims["device"], device.as_str());
    assert!(claims["cnf"]["x5t#S256"].is_string(), "{claims}");

    let line = f.line(&reply).await;
    assert_eq!(line["decision"], "allow", "{line}");
    assert_eq!(line["enforcement_point"], "nginx");
    assert_eq!(line["route"], "app");
    assert_eq!(line["host"], "app.test");
    assert_eq!(
        line["path"], "/reports/q1",
        "the canonical path is decided and logged"
    );
    assert_eq!(line["client"], "198.51.100.7");
    assert_eq!(line["device"], device.as_str());
    assert_eq!(line["subject"], "CN=alice-laptop");
    assert_eq!(line["codes"], serde_json::json!(["allowed_by_rule"]));
    assert!(
        line.get("upstream").is_none(),
        "nothing was forwarded: {line}"
    );
    let allowed = metric(
        &f.running,
        "vigil_authz_decisions_total{enforcement_point=\"nginx\",decision=\"allow\"}",
    )
    .await?;
    assert_eq!(allowed, 1.0);
    Ok(())
}

#[tokio::test]
async fn a_request_policy_refuses_is_denied_with_the_reason() -> Result<()> {
    let f = fixture().await?;
    let reply = f
        .ask(&f.nginx, &nginx_headers("DELETE", "/reports/q1", &f.laptop))
        .await?;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(reply.header("x-vigil-assertion").is_none());
    assert!(
        reply.body.contains("access denied by route 'app'"),
        "{}",
        reply.body
    );
    let line = f.line(&reply).await;
    assert_eq!(line["decision"], "deny");
    assert_eq!(line["method"], "DELETE");
    assert_eq!(line["enforcement_point"], "nginx");
    assert_eq!(line["codes"], serde_json::json!(["method_not_allowed"]));
    assert_eq!(line["fault"], "policy");

    // No route for the forwarded host: a denial nginx understands (403), not a 404.
    let other = nginx_headers("GET", "/reports/q1", &f.laptop).replace(
        "X-Forwarded-Host: app.test",
        "X-Forwarded-Host: nowhere.test",
    );
    let reply = f.ask(&f.nginx, &other).await?;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(
        f.line(&reply).await["codes"],
        serde_json::json!(["no_route"])
    );
    let denied = metric(
        &f.running,
        "vigil_authz_decisions_total{enforcement_point=\"nginx\",decision=\"deny\"}",
    )
    .await?;
    assert_eq!(denied, 2.0);
    Ok(())
}

#[tokio::test]
async fn a_client_that_is_no_enforcement_point_is_refused_and_nothing_it_sent_is_decided()
-> Result<()> {
    let f = fixture().await?;
    // The laptop asks about itself, and a workload not on the list about the laptop.
    let intruder = f.pki.workload("spiffe://example.org/ns/batch/sa/job")?;
    for caller in [&f.laptop, &intruder] {
        let reply = f
            .ask(caller, &nginx_headers("GET", "/reports/q1", &f.laptop))
            .await?;
        assert_eq!(reply.status, 403, "{reply:?}");
        assert!(
            reply.body.contains("not an enforcement point"),
            "{}",
            reply.body
        );
        assert!(reply.header("x-vigil-device").is_none());
        let line = f.line(&reply).await;
        assert_eq!(
            line["codes"],
            serde_json::json!(["authz_not_enforcement_point"])
        );
        assert_eq!(
            line["path"], "/.vigil/authz",
            "the forwarded request is not decided"
        );
        assert_eq!(line["client"], "127.0.0.1");
        assert_eq!(line["device"], fingerprint(caller).as_str());
        assert!(line.get("enforcement_point").is_none(), "{line}");
        assert!(line["route"].is_null());
    }
    let refused = metric(
        &f.running,
        "vigil_authz_decisions_total{enforcement_point=\"(none)\",decision=\"deny\"}",
    )
    .await?;
    assert_eq!(refused, 2.0);
    Ok(())
}

#[tokio::test]
async fn an_enforcement_point_known_by_its_fingerprint_may_ask() -> Result<()> {
    let f = fixture().await?;
    let reply = f
        .ask(&f.edge, &nginx_headers("GET", "/reports/q1", &f.laptop))
        .await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(f.line(&reply).await["enforcement_point"], "edge");
    // Another certificate with the same name is another fingerprint: refused.
    let lookalike = f.pki.device("edge-proxy")?;
    let reply = f
        .ask(&lookalike, &nginx_headers("GET", "/reports/q1", &f.laptop))
        .await?;
    assert_eq!(reply.status, 403, "{reply:?}");
    Ok(())
}

#[tokio::test]
async fn a_forwarded_certificate_from_a_foreign_ca_is_refused() -> Result<()> {
    let f = fixture().await?;
    let foreign = Authority::generate("Other CA")?;
    let stranger = foreign.issue(&LeafSpec::device("alice-laptop"))?;
    let reply = f
        .ask(&f.nginx, &nginx_headers("GET", "/reports/q1", &stranger))
        .await?;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(reply.body.contains("unknown_issuer"), "{}", reply.body);
    assert!(reply.header("x-vigil-device").is_none());
    let line = f.line(&reply).await;
    assert_eq!(
        line["codes"],
        serde_json::json!(["authz_certificate_refused"])
    );
    assert_eq!(line["enforcement_point"], "nginx");

    // An expired certificate of the right CA: the dates are checked, too.
    let mut old = LeafSpec::device("old-laptop");
    old.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    old.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let expired = f.pki.ca.issue(&old)?;
    let reply = f
        .ask(&f.nginx, &nginx_headers("GET", "/reports/q1", &expired))
        .await?;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(reply.body.contains("expired"), "{}", reply.body);
    Ok(())
}

#[tokio::test]
async fn a_forwarded_certificate_revoked_by_the_crl_is_refused() -> Result<()> {
    let f = fixture_with(true).await?;
    let stolen = f.stolen.as_ref().expect("a revoked device");
    let reply = f
        .ask(&f.nginx, &nginx_headers("GET", "/reports/q1", stolen))
        .await?;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(reply.body.contains("revoked"), "{}", reply.body);
    assert_eq!(
        f.line(&reply).await["codes"],
        serde_json::json!(["authz_certificate_refused"])
    );
    let good = f
        .ask(&f.nginx, &nginx_headers("GET", "/reports/q1", &f.laptop))
        .await?;
    assert_eq!(good.status, 200, "{good:?}");
    Ok(())
}

#[tokio::test]
async fn a_bad_forwarded_path_is_refused_never_allowed() -> Result<()> {
    let f = fixture().await?;
    for (uri, says) in [
        ("/reports/../../etc/passwd", "climbs above the root"),
        ("/reports/%2e%2e/%2e%2e/admin", "forwarded path"),
        ("/reports/a%2fb", "forwarded path"),
        ("reports/q1", "forwarded path"),
    ] {
        let reply = f
            .ask(&f.nginx, &nginx_headers("GET", uri, &f.laptop))
            .await?;
        assert_eq!(reply.status, 403, "{uri}: {reply:?}");
        assert!(reply.body.contains(says), "{uri}: {}", reply.body);
        let line = f.line(&reply).await;
        assert_eq!(
            line["codes"],
            serde_json::json!(["authz_forwarded_path"]),
            "{uri}"
        );
        assert_eq!(line["fault"], "client");
    }
    Ok(())
}

#[tokio::test]
async fn every_missing_or_ambiguous_forwarded_fact_is_refused_with_a_reason() -> Result<()> {
    let f = fixture().await?;
    let full = nginx_headers("GET", "/reports/q1", &f.laptop);
    let without = |name: &str| -> String {
        full.split("\r\n")
            .filter(|l| !l.is_empty() && !l.starts_with(name))
            .map(|l| format!("{l}\r\n"))
            .collect()
    };
    let cases = [
        (
            without("X-Original-URI"),
            "authz_forwarded_invalid",
            "no forwarded URI",
        ),
        (
            without("X-Original-Method"),
            "authz_forwarded_invalid",
            "no forwarded method",
        ),
        (
            without("X-Forwarded-For"),
            "authz_forwarded_invalid",
            "no forwarded client address",
        ),
        (
            without("X-SSL-Client-Cert"),
            "authz_certificate_missing",
            "no forwarded client certificate",
        ),
        (
            format!("{full}X-Forwarded-Uri: /reports/other\r\n"),
            "authz_forwarded_invalid",
            "disagree",
        ),
        (
            format!("{full}X-Forwarded-Tls-Client-Cert: AAAA\r\n"),
            "authz_forwarded_invalid",
            "more than one forwarded client certificate",
        ),
        (
            without("X-SSL-Client-Cert")
                + "X-SSL-Client-Cert: %2D%2D%2D%2D%2DBEGIN%20CERTIFICATE\r\n",
            "authz_certificate_invalid",
            "X-SSL-Client-Cert",
        ),
        (
            without("X-SSL-Client-Cert") + "X-SSL-Client-Cert: \r\n",
            "authz_certificate_missing",
            "presented no certificate",
        ),
    ];
    for (headers, code, says) in cases {
        let reply = f.ask(&f.nginx, &headers).await?;
        assert_eq!(reply.status, 403, "{code}: {reply:?}");
        assert!(
            reply.body.to_lowercase().contains(&says.to_lowercase()),
            "{says}: {}",
            reply.body
        );
        let line = f.line(&reply).await;
        assert_eq!(line["codes"], serde_json::json!([code]), "{line}");
        assert_eq!(line["enforcement_point"], "nginx");
    }
    Ok(())
}

#[tokio::test]
async fn traefik_and_envoy_spellings_are_decided_alike() -> Result<()> {
    let f = fixture().await?;
    let body: String = f
        .laptop
        .cert_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let traefik = format!(
        "X-Forwarded-Method: GET\r\nX-Forwarded-Uri: /reports/q1\r\nX-Forwarded-Host: app.test\r\nX-Forwarded-Proto: https\r\nX-Forwarded-For: 10.1.1.1, 203.0.113.9\r\nX-Forwarded-Tls-Client-Cert: {}\r\n",
        escaped(&body)
    );
    let reply = f.ask(&f.nginx, &traefik).await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(f.line(&reply).await["client"], "203.0.113.9");

    // Envoy: the check request is the request itself, under the endpoint's path.
    let envoy = format!(
        "X-Forwarded-Host: app.test\r\nX-Forwarded-For: 192.0.2.44\r\nX-Forwarded-Client-Cert: By={NGINX};Hash=00;Cert=\"{}\"\r\n",
        escaped(&f.laptop.cert_pem)
    );
    let reply = f
        .ask_at(&f.nginx, "/.vigil/authz/reports/q1?x=1", "GET", &envoy)
        .await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    let line = f.line(&reply).await;
    assert_eq!(line["path"], "/reports/q1");
    assert_eq!(line["client"], "192.0.2.44");
    let reply = f
        .ask_at(&f.nginx, "/.vigil/authz/reports/q1", "POST", &envoy)
        .await?;
    assert_eq!(
        reply.status, 403,
        "the check request's own method is decided: {reply:?}"
    );
    let reply = f
        .ask_at(&f.nginx, "/.vigil/authz/reports/../../x", "GET", &envoy)
        .await?;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(
        f.line(&reply).await["codes"],
        serde_json::json!(["authz_forwarded_path"])
    );
    Ok(())
}

/// `[authz]` for the world of people (a real OpenID Provider, routes on `localhost`).
const PEOPLE_AUTHZ: &str = r#"
[authz]
enforcement_points = [{ name = "nginx", spiffe = "spiffe://example.org/ns/ingress/sa/nginx" }]
"#;

/// nginx's headers for `GET uri` on `localhost` presenting `client`, with `extra` lines.
fn people_headers(uri: &str, client: &Issued, extra: &str) -> String {
    format!(
        "X-Original-Method: GET\r\nX-Original-URI: {uri}\r\nX-Forwarded-Host: localhost\r\nX-Forwarded-For: 198.51.100.8\r\nX-SSL-Client-Cert: {}\r\n{extra}",
        escaped(&client.cert_pem)
    )
}

async fn ask_world(w: &world::World, caller: &Issued, headers: &str) -> Result<Reply> {
    let request = format!(
        "GET /.vigil/authz HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n"
    );
    let tls = client_config(Some(caller), w.pki.ca.cert_pem(), &[b"http/1.1"])?;
    raw(w.running.addr, tls, "localhost", &request).await
}

#[tokio::test]
async fn a_forwarded_session_cookie_works_and_stays_bound_to_its_device() -> Result<()> {
    let w = world::world_with(PEOPLE_AUTHZ).await?;
    let nginx = w.pki.workload(NGINX)?;
    let (cookies, _) = w
        .sign_in(&w.alice_laptop, "/hello", support::idp::ALICE)
        .await?;
    let cookie = format!("Cookie: {cookies}\r\n");

    let reply = ask_world(
        &w,
        &nginx,
        &people_headers("/hello", &w.alice_laptop, &cookie),
    )
    .await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    let user = reply.header("x-vigil-user").expect("the signed-in person");
    assert!(!user.is_empty());
    assert!(reply.header("x-vigil-email").is_some(), "{reply:?}");
    assert!(reply.header("x-vigil-groups").is_some(), "{reply:?}");
    assert!(reply.header("x-vigil-assertion").is_some(), "{reply:?}");
    let line = decision_for(
        &w.decisions,
        &reply.header("x-request-id").unwrap_or_default(),
    )
    .await
    .expect("a line");
    assert_eq!(line["enforcement_point"], "nginx");
    assert_eq!(line["route"], "app");
    assert!(line["user"].is_string(), "{line}");

    // The same cookie with another device's certificate: not her session there.
    let stolen = ask_world(
        &w,
        &nginx,
        &people_headers("/hello", &w.bob_laptop, &cookie),
    )
    .await?;
    assert_eq!(stolen.status, 401, "{stolen:?}");
    let line = decision_for(
        &w.decisions,
        &stolen.header("x-request-id").unwrap_or_default(),
    )
    .await
    .expect("a line");
    assert_eq!(line["codes"], serde_json::json!(["session_other_device"]));

    // No cookie: a sign-in is needed, answered 401 (no redirect: auth_request cannot follow one).
    let none = ask_world(&w, &nginx, &people_headers("/hello", &w.alice_laptop, "")).await?;
    assert_eq!(none.status, 401, "{none:?}");
    assert!(none.header("location").is_none());

    // A bearer token passed on in Authorization works as on a bearer route.
    let workload = w.pki.workload(SPIFFE_WEB)?;
    let token = w.idp.client_credentials("orders:read").await?;
    let bearer = format!("Authorization: Bearer {token}\r\n");
    let reply = ask_world(
        &w,
        &nginx,
        &people_headers("/api/orders", &workload, &bearer),
    )
    .await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-vigil-user").as_deref(), Some("svc"));
    assert_eq!(
        reply.header("x-vigil-workload").as_deref(),
        Some(SPIFFE_WEB)
    );
    let forged = format!("Authorization: Bearer {token}x\r\n");
    let reply = ask_world(
        &w,
        &nginx,
        &people_headers("/api/orders", &workload, &forged),
    )
    .await?;
    assert_eq!(reply.status, 401, "{reply:?}");
    Ok(())
}

#[tokio::test]
async fn a_device_an_operator_revoked_is_refused_when_passed_on() -> Result<()> {
    let f = fixture().await?;
    let headers = nginx_headers("GET", "/reports/q1", &f.laptop);
    assert_eq!(f.ask(&f.nginx, &headers).await?.status, 200);
    let admin = f.running.admin.expect("admin listener");
    let body = format!("{{\"device\":\"{}\"}}", fingerprint(&f.laptop));
    let revoked = admin_raw(
        &f.running,
        "POST",
        "/revoke",
        &format!("Host: {admin}\r\nContent-Type: application/json\r\n"),
        &body,
    )
    .await?;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    let reply = f.ask(&f.nginx, &headers).await?;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(reply.body.contains("device revoked"), "{}", reply.body);
    assert_eq!(
        f.line(&reply).await["codes"],
        serde_json::json!(["authz_certificate_refused"])
    );
    Ok(())
}

#[tokio::test]
async fn a_reload_changes_who_may_ask_at_once() -> Result<()> {
    let pki = Pki::new()?;
    let (upstream, _stop) = echo_upstream().await?;
    let nginx = pki.workload(NGINX)?;
    let laptop = pki.device("alice-laptop")?;
    let log = pki.path("decisions.log");
    let text = |point: &str| {
        format!(
            "{}\n[authz]\nenforcement_points = [{{ name = \"nginx\", spiffe = \"{point}\" }}]\n\n[[route]]\nname = \"app\"\nhost = \"app.test\"\nupstream = \"http://{upstream}\"\nlogin = \"none\"\nallow = [{{ cert_subject = [\"*-laptop\"] }}]\n",
            base_config("", &log)
        )
    };
    let path = pki.path("vigil.toml");
    std::fs::write(&path, text(NGINX))?;
    let running = vigil::start_file(&path).await?;
    let tls = || client_config(Some(&nginx), pki.ca.cert_pem(), &[b"http/1.1"]);
    let request = format!(
        "GET /.vigil/authz HTTP/1.1\r\nHost: localhost\r\n{}Connection: close\r\n\r\n",
        nginx_headers("GET", "/reports/q1", &laptop)
    );
    let reply = raw(running.addr, tls()?, "localhost", &request).await?;
    assert_eq!(reply.status, 200, "{reply:?}");

    std::fs::write(&path, text("spiffe://example.org/ns/ingress/sa/other"))?;
    assert_eq!(admin(&running, "POST", "/reload").await?.status, 200);
    let reply = raw(running.addr, tls()?, "localhost", &request).await?;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(
        reply.body.contains("not an enforcement point"),
        "{}",
        reply.body
    );
    running.shutdown().await;
    Ok(())
}
