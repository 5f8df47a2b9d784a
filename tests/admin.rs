//! The admin listener: health, readiness, metrics, and its own client-certificate requirement.

mod support;

use anyhow::{Context as _, Result};
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
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: {admin_addr}\r\nConnection: close\r\n\r\n");
    let send = |config: rustls::ClientConfig, request: String| async move {
        let mut tls = connect(admin_addr, config, "localhost").await?;
        tls.write_all(request.as_bytes()).await?;
        read_reply(&mut tls).await
    };
    let ask = |config: rustls::ClientConfig| send(config, request.clone());
    let ops = client_config(
        Some(&pki.workload("spiffe://example.org/ns/ops/sa/oncall")?),
        pki.ca.cert_pem(),
        &[],
    )?;
    let reply = ask(ops.clone()).await?;
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("vigil_config_generation"));
    // A client certificate does not exempt a call from the gate: a browser holding the
    // operator's certificate can still be led to another origin's page.
    let body = "{\"user\":\"alice\"}";
    let post = |extra: &str| {
        format!(
            "POST /revoke HTTP/1.1\r\nHost: {admin_addr}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    for (extra, status) in [
        ("Content-Type: text/plain\r\n".to_owned(), 415),
        (format!("{JSON}Origin: https://attacker.example\r\n"), 403),
        (format!("{JSON}Origin: http://{admin_addr}\r\n"), 403),
        (format!("{JSON}Origin: https://{admin_addr}\r\n"), 200),
    ] {
        assert_eq!(
            send(ops.clone(), post(&extra)).await?.status,
            status,
            "{extra:?}"
        );
    }

    let web = client_config(Some(&pki.workload(SPIFFE_WEB)?), pki.ca.cert_pem(), &[])?;
    assert_eq!(ask(web).await?.status, 403);
    let anonymous = client_config(None, pki.ca.cert_pem(), &[])?;
    assert!(ask(anonymous).await.is_err());
    Ok(())
}

/// A proxy whose admin listener is on loopback; `admin_extra` is appended to `[admin]`.
/// Started from a file, so that `POST /reload` works.
async fn admin_proxy(pki: &Pki, admin_extra: &str) -> Result<vigil::Running> {
    let (upstream, stop) = echo_upstream().await?;
    // The upstream is never called: these tests talk to the admin listener only.
    std::mem::forget(stop);
    let text = format!(
        "{}[[route]]\nname = \"r\"\nhost = \"*\"\nupstream = \"http://{upstream}\"\nlogin = \"none\"\nallow = [{{ spiffe = [\"spiffe://example.org/**\"] }}]\n",
        base_config("", &pki.path("d.log")).replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            &format!("[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}")
        )
    );
    let path = pki.path("vigil.toml");
    std::fs::write(&path, text)?;
    Ok(vigil::start_file(&path).await?)
}

fn host(running: &vigil::Running) -> Result<String> {
    Ok(format!(
        "Host: {}\r\n",
        running.admin.context("admin listener off")?
    ))
}

const JSON: &str = "Content-Type: application/json\r\n";

async fn revoked_users(running: &vigil::Running) -> Result<serde_json::Value> {
    Ok(admin(running, "GET", "/revocations").await?.json()["users"].clone())
}

#[tokio::test]
async fn admin_refuses_foreign_hosts_other_origins_and_simple_requests() -> Result<()> {
    let pki = Pki::new()?;
    let running = admin_proxy(&pki, "").await?;
    let own = host(&running)?;
    let port = running.admin.context("admin")?.port();
    let body = "{\"user\":\"alice\"}";

    // DNS rebinding: a page on attacker.example, its name resolved to 127.0.0.1.
    for foreign in [
        "Host: attacker.example\r\n".to_owned(),
        format!("Host: attacker.example:{port}\r\n"),
        format!("Host: 127.0.0.1:{}\r\n", port.wrapping_add(1)),
        String::new(),
    ] {
        let r = admin_raw(
            &running,
            "POST",
            "/revoke",
            &format!("{foreign}{JSON}"),
            body,
        )
        .await?;
        assert_eq!(r.status, 421, "{foreign:?}: {r:?}");
        assert_eq!(r.json()["refused"], "host");
        assert!(r.json()["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // An absolute-form target naming another host than Host.
    let r = admin_raw(
        &running,
        "POST",
        "http://attacker.example/revoke",
        &format!("{own}{JSON}"),
        body,
    )
    .await?;
    assert_eq!(r.status, 421, "{r:?}");
    // Reading is refused too: /metrics and /readyz reveal route names.
    for path in ["/metrics", "/readyz", "/revocations", "/healthz"] {
        let r = admin_raw(&running, "GET", path, "Host: attacker.example\r\n", "").await?;
        assert_eq!(r.status, 421, "{path}");
    }

    // CSRF: a form or a fetch from another origin's page in the operator's browser.
    for (headers, status, reason) in [
        (
            format!("{own}{JSON}Origin: http://attacker.example\r\n"),
            403,
            "origin",
        ),
        (format!("{own}{JSON}Origin: null\r\n"), 403, "origin"),
        (
            format!(
                "{own}{JSON}Origin: http://127.0.0.1:{}\r\n",
                port.wrapping_add(1)
            ),
            403,
            "origin",
        ),
        (
            format!("{own}{JSON}Sec-Fetch-Site: cross-site\r\n"),
            403,
            "origin",
        ),
        (
            format!("{own}Content-Type: text/plain\r\n"),
            415,
            "content_type",
        ),
        (
            format!("{own}Content-Type: application/x-www-form-urlencoded\r\n"),
            415,
            "content_type",
        ),
        (
            format!("{own}Content-Type: multipart/form-data; boundary=x\r\n"),
            415,
            "content_type",
        ),
        (own.clone(), 415, "content_type"),
    ] {
        let r = admin_raw(&running, "POST", "/revoke", &headers, body).await?;
        assert_eq!(r.status, status, "{headers:?}: {r:?}");
        assert_eq!(r.json()["refused"], reason, "{headers:?}");
    }
    // An empty-body reload is a call that changes something too.
    let r = admin_raw(&running, "POST", "/reload", &own, "").await?;
    assert_eq!(r.status, 415, "{r:?}");
    // Nothing refused was applied.
    assert_eq!(revoked_users(&running).await?, serde_json::json!({}));

    // The operator's own calls: the listener's address, localhost over loopback, and a
    // browser on the listener's own page.
    let ok = admin_raw(&running, "POST", "/revoke", &format!("{own}{JSON}"), body).await?;
    assert_eq!(ok.status, 200, "{ok:?}");
    for headers in [
        format!("Host: localhost:{port}\r\n{JSON}"),
        format!("{own}Content-Type: application/json; charset=utf-8\r\n"),
        format!("{own}{JSON}Origin: http://127.0.0.1:{port}\r\nSec-Fetch-Site: same-origin\r\n"),
    ] {
        let r = admin_raw(&running, "POST", "/revoke", &headers, "{\"user\":\"bob\"}").await?;
        assert_eq!(r.status, 200, "{headers:?}: {r:?}");
    }
    let r = admin_raw(&running, "POST", "/reload", &format!("{own}{JSON}"), "").await?;
    assert_eq!(r.status, 200, "{r:?}");
    let users = revoked_users(&running).await?;
    assert!(
        users.get("alice").is_some() && users.get("bob").is_some(),
        "{users}"
    );

    // Every refusal is counted by reason.
    let text = metrics(&running).await?;
    for series in [
        "vigil_admin_refusals_total{reason=\"host\"} 9",
        "vigil_admin_refusals_total{reason=\"origin\"} 4",
        "vigil_admin_refusals_total{reason=\"content_type\"} 5",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
    running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn admin_token_guards_calls_that_change_something() -> Result<()> {
    let pki = Pki::new()?;
    let (ops, ci) = (
        "0123456789abcdef0123456789abcdef",
        "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMy",
    );
    std::fs::write(
        pki.path("admin.tokens"),
        format!("# operators\nops {ops}\nci {ci}\n"),
    )?;
    let running = admin_proxy(&pki, "token_file = \"admin.tokens\"").await?;
    let own = host(&running)?;
    let body = "{\"user\":\"alice\"}";

    for (auth, status, reason) in [
        (String::new(), 401, "token_missing"),
        (
            format!("Authorization: Bearer {ops}x\r\n"),
            401,
            "token_invalid",
        ),
        (
            format!("Authorization: Basic {ops}\r\n"),
            401,
            "token_invalid",
        ),
        (
            "Authorization: Bearer \r\n".to_owned(),
            401,
            "token_invalid",
        ),
    ] {
        let r = admin_raw(
            &running,
            "POST",
            "/revoke",
            &format!("{own}{JSON}{auth}"),
            body,
        )
        .await?;
        assert_eq!(r.status, status, "{auth:?}: {r:?}");
        assert_eq!(r.json()["refused"], reason);
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer"))
        );
    }
    let r = admin_raw(&running, "POST", "/reload", &format!("{own}{JSON}"), "").await?;
    assert_eq!(r.status, 401);
    assert_eq!(revoked_users(&running).await?, serde_json::json!({}));

    // Reading needs no token: probes and scrapes keep working.
    for path in ["/healthz", "/readyz", "/metrics", "/revocations"] {
        assert_eq!(admin(&running, "GET", path).await?.status, 200, "{path}");
    }
    // `vigil health` (container health checks) sends the address it connects to as Host.
    let addr = running.admin.context("admin")?.to_string();
    let health = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["health", "--admin", &addr, "--path", "/readyz"])
            .output()
    })
    .await??;
    assert!(health.status.success(), "{health:?}");

    let bearer = |t: &str| format!("{own}{JSON}Authorization: Bearer {t}\r\n");
    let r = admin_raw(&running, "POST", "/revoke", &bearer(ops), body).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(revoked_users(&running).await?.get("alice").is_some());

    // The token file is reloaded like every file the configuration names: a token taken
    // out of it stops working.
    std::fs::write(pki.path("admin.tokens"), format!("ci {ci}\n"))?;
    let r = admin_raw(&running, "POST", "/reload", &bearer(ci), "").await?;
    assert_eq!(r.status, 200, "{r:?}");
    let r = admin_raw(&running, "POST", "/revoke", &bearer(ops), body).await?;
    assert_eq!(r.status, 401, "a removed token still works: {r:?}");
    let r = admin_raw(
        &running,
        "POST",
        "/restore",
        &bearer(ci),
        "{\"device\":\"00\"}",
    )
    .await?;
    assert_eq!(r.status, 404, "{r:?}");

    // A token file left empty would protect nothing: the reload is refused and the last good
    // tokens stay in force.
    std::fs::write(pki.path("admin.tokens"), "")?;
    let r = admin_raw(&running, "POST", "/reload", &bearer(ci), "").await?;
    assert_eq!(r.status, 422, "{r:?}");
    let r = admin_raw(&running, "POST", "/revoke", &format!("{own}{JSON}"), body).await?;
    assert_eq!(r.status, 401, "{r:?}");
    running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn admin_names_are_accepted_as_hosts() -> Result<()> {
    let pki = Pki::new()?;
    let running = admin_proxy(
        &pki,
        "names = [\"vigil-admin.internal\", \"ops.example:8080\"]",
    )
    .await?;
    let port = running.admin.context("admin")?.port();
    for (name, status) in [
        ("vigil-admin.internal".to_owned(), 200),
        (format!("VIGIL-ADMIN.internal:{port}"), 200),
        ("ops.example:8080".to_owned(), 200),
        (format!("ops.example:{port}"), 421),
        ("vigil-admin.internal.attacker.example".to_owned(), 421),
    ] {
        let r = admin_raw(&running, "GET", "/readyz", &format!("Host: {name}\r\n"), "").await?;
        assert_eq!(r.status, status, "{name}");
    }
    let r = admin_raw(
        &running,
        "POST",
        "/revoke",
        &format!("Host: vigil-admin.internal\r\nOrigin: http://vigil-admin.internal\r\n{JSON}"),
        "{\"user\":\"alice\"}",
    )
    .await?;
    assert_eq!(r.status, 200, "{r:?}");
    running.shutdown().await;
    Ok(())
}
