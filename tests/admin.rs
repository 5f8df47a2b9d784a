//! The admin listener: health, readiness, metrics, and its own client-certificate requirement.

mod support;

use anyhow::{Context as _, Result};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;
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
    assert_eq!(admin(&running, "DELETE", "/revocations").await?.status, 405);
    assert_eq!(admin(&running, "GET", "/nope").await?.status, 404);
    Ok(())
}

/// A family as a parser reads it: its type, its help and how many samples it has.
type Families = BTreeMap<String, (String, String, usize)>;

/// `text` as Python's `prometheus_client` parses it (`scripts/test` installs it): with its
/// Prometheus text parser, or with `openmetrics` its OpenMetrics one.
fn parsed(text: &str, openmetrics: bool) -> Result<Families> {
    let module = if openmetrics {
        "prometheus_client.openmetrics.parser"
    } else {
        "prometheus_client.parser"
    };
    let script = format!(
        "import json, sys\nfrom {module} import text_string_to_metric_families as parse\n\
         print(json.dumps({{f.name: [f.type, f.documentation, len(f.samples)] \
         for f in parse(sys.stdin.read())}}))"
    );
    let mut python = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("python3 is needed, with prometheus_client (scripts/test installs it)")?;
    python
        .stdin
        .take()
        .context("python3's stdin")?
        .write_all(text.as_bytes())?;
    let out = python.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{module} refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: BTreeMap<String, (String, String, usize)> = serde_json::from_slice(&out.stdout)?;
    Ok(families)
}

/// The families an OpenMetrics text declares, read from its `# HELP` and `# TYPE` lines, with
/// the sample lines that follow each.
fn declared(openmetrics: &str) -> Families {
    let mut families = Families::new();
    let mut current = String::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            current = name.to_owned();
            families.entry(current.clone()).or_default().1 = help.to_owned();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            families.entry(name.to_owned()).or_default().0 = kind.to_owned();
        } else if !line.starts_with('#')
            && let Some(family) = families.get_mut(&current)
        {
            family.2 += 1;
        }
    }
    families
}

#[tokio::test]
async fn metrics_speak_the_format_the_scraper_asks_for() -> Result<()> {
    let pki = Pki::new()?;
    let (upstream, _stop) = echo_upstream().await?;
    let text = format!(
        "{}[[route]]\nname = \"r\"\nhost = \"*\"\nupstream = \"http://{upstream}\"\nlogin = \"none\"\nallow = [{{ spiffe = [\"spiffe://example.org/**\"] }}]\n",
        base_config("", &pki.path("d.log"))
    );
    let running = spawn(&pki, &text).await?;
    // A fresh start: every series of a bounded label set is there, at 0, and so are the build
    // and the standard process metrics.
    let fresh = metrics(&running).await?;
    for series in [
        "vigil_tls_handshake_failures_total{reason=\"unknown_issuer\"} 0",
        "vigil_connections_rejected_total{reason=\"max_connections_per_source\"} 0",
        "vigil_connections_cut_total{reason=\"session_unverifiable\"} 0",
        "vigil_revocations_total{reason=\"device\"} 0",
        "vigil_admin_refusals_total{reason=\"token_invalid\"} 0",
        "vigil_limits_hit_total{limit=\"body_size\"} 0",
        "vigil_refusals_total{route=\"r\",fault=\"upstream\"} 0",
        "vigil_refusals_total{route=\"(none)\",fault=\"client\"} 0",
        "vigil_upstream_errors_total{route=\"r\",kind=\"connect\"} 0",
        "vigil_device_inventory_last_success_timestamp_seconds 0",
        "vigil_build_info{version=\"",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_virtual_memory_bytes ",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(fresh.contains(series), "missing {series} in\n{fresh}");
    }
    assert!(
        !fresh.contains("vigil_identity_provider_up"),
        "no [oidc], no provider series"
    );
    let web = client_config(Some(&pki.workload(SPIFFE_WEB)?), pki.ca.cert_pem(), &[])?;
    assert_eq!(get(running.addr, web, "/x", "").await?.status, 200);
    let addr = running.admin.context("admin listener")?;
    let scrape = |accept: &str| {
        let headers = format!("Host: {addr}\r\n{accept}");
        let running = &running;
        async move { admin_raw(running, "GET", "/metrics", &headers, "").await }
    };
    const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
    // What Prometheus itself sends, and what a plain text scraper sends.
    let prometheus = "Accept: application/openmetrics-text;version=1.0.0;q=0.5,\
        application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2\r\n";
    let om = scrape(prometheus).await?;
    assert_eq!(om.status, 200);
    assert_eq!(om.header("content-type").as_deref(), Some(OPENMETRICS));
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
    for accept in [
        "",
        "Accept: */*\r\n",
        "Accept: text/plain;version=0.0.4\r\n",
    ] {
        let plain = scrape(accept).await?;
        assert_eq!(plain.status, 200);
        assert_eq!(
            plain.header("content-type").as_deref(),
            Some(PROMETHEUS),
            "{accept}"
        );
        assert!(!plain.body.contains("# EOF"), "{}", plain.body);
    }
    let plain = scrape("").await?;
    assert!(
        plain
            .body
            .contains("# TYPE vigil_requests_total counter\nvigil_requests_total{"),
        "{}",
        plain.body
    );

    // Both parse to the families the registry declares, each with its type, help and samples.
    let declared = declared(&om.body);
    for (family, kind) in [
        ("vigil_requests", "counter"),
        ("vigil_connections_open", "gauge"),
        ("vigil_request_duration_seconds", "histogram"),
        (
            "vigil_config_last_reload_success_timestamp_seconds",
            "gauge",
        ),
        ("vigil_tls_handshake_failures", "counter"),
        ("vigil_upstream_errors", "counter"),
        ("vigil_build_info", "gauge"),
        (
            "vigil_device_inventory_last_success_timestamp_seconds",
            "gauge",
        ),
        ("process_cpu_seconds", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert_eq!(
            declared.get(family).map(|f| f.0.as_str()),
            Some(kind),
            "{family}"
        );
    }
    // Zero-valued series are samples like any other.
    assert!(
        declared["vigil_tls_handshake_failures"].2 >= 20,
        "{declared:?}"
    );
    assert!(declared.len() >= 10, "{declared:?}");
    for (family, (kind, help, _)) in &declared {
        assert!(
            ["counter", "gauge", "histogram"].contains(&kind.as_str()) && !help.is_empty(),
            "{family}: {kind} {help:?}"
        );
    }
    // Every family is in the documentation's list, under the name its samples have.
    let docs = include_str!("../docs/configuration.md");
    for (family, (kind, _, _)) in &declared {
        let name = if kind == "counter" {
            format!("`{family}_total`")
        } else {
            format!("`{family}`")
        };
        assert!(
            docs.contains(&format!("| {name} |")),
            "{name} is not documented"
        );
    }
    assert_eq!(parsed(&om.body, true)?, declared, "OpenMetrics");
    assert_eq!(parsed(&plain.body, false)?, declared, "Prometheus text");
    Ok(())
}

/// One request to the admin listener over HTTP/2 (prior knowledge, plain TCP): the status,
/// the headers and the body, which must arrive whole.
async fn admin_h2(
    running: &vigil::Running,
    method: &str,
    path: &str,
) -> Result<(u16, http::HeaderMap, bytes::Bytes)> {
    use http_body_util::{BodyExt, Empty};
    let addr = running.admin.context("admin listener off")?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = tokio::time::timeout(STEP, sender.send_request(req)).await??;
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(STEP, body.collect())
        .await?
        .with_context(|| format!("{method} {path} over HTTP/2: the body failed"))?;
    Ok((parts.status.as_u16(), parts.headers, body.to_bytes()))
}

#[tokio::test]
async fn admin_answers_head_with_headers_and_no_body() -> Result<()> {
    let pki = Pki::new()?;
    let running = spawn(
        &pki,
        &format!(
            "{}[[route]]\nname = \"r\"\nhost = \"*\"\nupstream = \"http://127.0.0.1:9\"\nlogin = \"none\"\nallow = [{{}}]\n",
            base_config("", &pki.path("d.log"))
        ),
    )
    .await?;
    for (path, status) in [
        ("/healthz", 200),
        ("/readyz", 200),
        ("/metrics", 200),
        ("/reload", 405),
        ("/nope", 404),
    ] {
        let (got, _, body) = admin_h2(&running, "GET", path).await?;
        assert_eq!(got, status, "GET {path}");
        let (got, headers, empty) = admin_h2(&running, "HEAD", path).await?;
        assert_eq!(got, status, "HEAD {path} over HTTP/2");
        assert!(empty.is_empty(), "HEAD {path} over HTTP/2 has a body");
        if path != "/metrics" && path != "/readyz" {
            let len = headers.get("content-length").and_then(|v| v.to_str().ok());
            assert_eq!(len, Some(body.len().to_string().as_str()), "HEAD {path}");
        }
        let h1 = admin(&running, "HEAD", path).await?;
        assert_eq!(h1.status, status, "HEAD {path} over HTTP/1.1");
        assert!(h1.body.is_empty(), "HEAD {path} over HTTP/1.1 has a body");
    }
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
    running.shutdown().await;
    // The one revocation that passed the gate names the operator's certificate.
    let actions = admin_actions(&pki.path("d.log"));
    assert_eq!(actions.len(), 1, "{actions:#?}");
    let ops = "spiffe://example.org/ns/ops/sa/oncall";
    assert_eq!(actions[0]["action"], "revoke");
    assert_eq!(actions[0]["actor"], ops);
    assert_eq!(actions[0]["via"], "certificate");
    assert_eq!(actions[0]["certificate"], ops);
    assert_eq!(actions[0]["outcome"], "ok");
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

/// The admin actions written to the decision log at `path`.
fn admin_actions(path: &std::path::Path) -> Vec<serde_json::Value> {
    decisions(path)
        .into_iter()
        .filter(|l| l["kind"] == "admin_action")
        .collect()
}

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
    // Without tokens on a loopback listener, the actor is loopback.
    let actions = admin_actions(&pki.path("d.log"));
    assert_eq!(actions.len(), 5, "{actions:#?}");
    assert!(
        actions
            .iter()
            .all(|a| a["actor"] == "loopback" && a["via"] == "loopback" && a["outcome"] == "ok"),
        "{actions:#?}"
    );
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

    // Each action that passed the gate is in the audit trail, in order, with the name of the
    // token that ordered it and how it ended; the calls the gate refused are not.
    let actions = admin_actions(&pki.path("d.log"));
    let summary: Vec<_> = actions
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap_or_default(),
                a["actor"].as_str().unwrap_or_default(),
                a["outcome"].as_str().unwrap_or_default(),
                a["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("revoke", "ops", "ok", 200),
            ("reload", "ci", "ok", 200),
            ("restore", "ci", "refused", 404),
            ("reload", "ci", "refused", 422),
        ],
        "{actions:#?}"
    );
    for a in &actions {
        assert_eq!(a["v"], 1, "{a}");
        assert_eq!(a["via"], "token", "{a}");
        assert_eq!(a["client"], "127.0.0.1", "{a}");
        assert!(a["certificate"].is_null(), "{a}");
        assert!(a["time"].is_string(), "{a}");
    }
    assert_eq!(actions[0]["target"], serde_json::json!({ "user": "alice" }));
    assert_eq!(actions[1]["generation"], 2);
    assert_eq!(actions[2]["target"], serde_json::json!({ "device": "00" }));
    assert_eq!(actions[3]["generation"], 2);
    assert!(
        actions[3]["errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty()),
        "{}",
        actions[3]
    );
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

/// `[log] admin_actions` sends the audit trail to its own destination (a path relative to the
/// configuration's directory), out of the decision log.
#[tokio::test]
async fn admin_actions_can_have_their_own_destination() -> Result<()> {
    let pki = Pki::new()?;
    let text = format!(
        "{}[[route]]\nname = \"r\"\nhost = \"*\"\nupstream = \"http://127.0.0.1:9\"\nlogin = \"none\"\nallow = [{{ spiffe = [\"spiffe://example.org/**\"] }}]\n",
        base_config("", &pki.path("d.log"))
            .replace("[log]\n", "[log]\nadmin_actions = \"actions.log\"\n")
    );
    let path = pki.path("vigil.toml");
    std::fs::write(&path, text)?;
    let running = vigil::start_file(&path).await?;
    let own = host(&running)?;
    let r = admin_raw(&running, "POST", "/reload", &format!("{own}{JSON}"), "").await?;
    assert_eq!(r.status, 200, "{r:?}");
    running.shutdown().await;
    assert!(admin_actions(&pki.path("d.log")).is_empty());
    let actions = admin_actions(&pki.path("actions.log"));
    assert_eq!(actions.len(), 1, "{actions:#?}");
    assert_eq!(actions[0]["action"], "reload");
    assert_eq!(actions[0]["generation"], 2);
    assert!(
        actions[0].get("restart_required").is_none(),
        "{}",
        actions[0]
    );
    Ok(())
}

/// Reads until the peer closes (true) or `within` passes with the connection still open
/// (false). Whatever the server sends first (an HTTP/2 SETTINGS frame, a 408) is skipped.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// A TCP connection to `to` from the loopback address `from` (127.0.0.0/8 is all loopback).
async fn connect_from(from: [u8; 4], to: std::net::SocketAddr) -> Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((std::net::Ipv4Addr::from(from), 0).into())?;
    Ok(tokio::time::timeout(STEP, socket.connect(to)).await??)
}

#[tokio::test]
async fn admin_closes_connections_that_do_not_finish_a_request_in_time() -> Result<()> {
    let pki = Pki::new()?;
    let running = admin_proxy(
        &pki,
        "header_read_timeout = \"1s\"\nidle_timeout = \"1s\"\nbody_read_timeout = \"1s\"",
    )
    .await?;
    let addr = running.admin.context("admin")?;
    let started = tokio::time::Instant::now();
    // Silent; a head that never ends (the review's repro); a head trickled a byte at a time,
    // which keeps bytes moving; and HTTP/2's preface and SETTINGS with no request after them.
    let silent = tokio::net::TcpStream::connect(addr).await?;
    let mut partial = tokio::net::TcpStream::connect(addr).await?;
    partial
        .write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
        .await?;
    let trickled = tokio::net::TcpStream::connect(addr).await?;
    let (mut trickle_read, mut trickle_write) = trickled.into_split();
    let trickler = tokio::spawn(async move {
        let head = format!(
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nX-Slow: {}",
            "a".repeat(100)
        );
        for b in head.bytes() {
            if trickle_write.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut h2 = tokio::net::TcpStream::connect(addr).await?;
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await?;
    let mut silent = silent;
    let within = Duration::from_secs(5);
    assert!(
        closed_within(&mut silent, within).await,
        "a silent connection stays open"
    );
    assert!(
        closed_within(&mut partial, within).await,
        "an unfinished head stays open"
    );
    assert!(
        closed_within(&mut trickle_read, within).await,
        "a trickled head stays open"
    );
    assert!(
        closed_within(&mut h2, within).await,
        "an HTTP/2 connection without a request stays open"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    trickler.abort();

    // Answered keep-alive connections are closed when idle too, on HTTP/1.1 and HTTP/2.
    let mut kept = tokio::net::TcpStream::connect(addr).await?;
    kept.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    assert!(
        closed_within(&mut kept, within).await,
        "an idle HTTP/1.1 connection stays open"
    );
    let (mut sender, h2conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await?),
    )
    .await?;
    let h2conn = tokio::spawn(h2conn);
    let req = http::Request::builder()
        .uri(format!("http://{addr}/healthz"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = tokio::time::timeout(STEP, sender.send_request(req)).await??;
    assert_eq!(resp.status(), 200);
    drop(resp);
    assert!(
        tokio::time::timeout(within, h2conn).await.is_ok(),
        "an idle HTTP/2 connection stays open"
    );

    // A body that does not arrive in time gets 408; one too long gets 413.
    let mut slow = tokio::net::TcpStream::connect(addr).await?;
    slow.write_all(
        format!(
            "POST /revoke HTTP/1.1\r\nHost: {addr}\r\n{JSON}Content-Length: 100\r\n\r\n{{\"user\":"
        )
        .as_bytes(),
    )
    .await?;
    let reply = tokio::time::timeout(within, read_reply(&mut slow)).await??;
    assert_eq!(reply.status, 408, "{reply:?}");
    let big = format!("{{\"user\":\"{}\"}}", "a".repeat(20_000));
    let r = admin_raw(
        &running,
        "POST",
        "/revoke",
        &format!("Host: {addr}\r\n{JSON}"),
        &big,
    )
    .await?;
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(revoked_users(&running).await?, serde_json::json!({}));
    // Heads are small.
    let r = admin_raw(
        &running,
        "GET",
        "/healthz",
        &format!("Host: {addr}\r\nX-Big: {}\r\n", "a".repeat(20_000)),
        "",
    )
    .await?;
    assert_eq!(r.status, 431, "{r:?}");

    // The four that never sent a whole head are counted; idle keep-alive closes are not.
    let text = metrics(&running).await?;
    let series = "vigil_admin_refusals_total{reason=\"header_read_timeout\"} 4";
    assert!(text.contains(series), "missing {series} in\n{text}");
    running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn admin_connections_are_capped_overall_and_per_source() -> Result<()> {
    let pki = Pki::new()?;
    // The defaults: 64 admin connections, 16 from one source.
    let running = admin_proxy(&pki, "").await?;
    let addr = running.admin.context("admin")?;
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(connect_from([127, 0, 0, 1], addr).await?);
    }
    let mut over = connect_from([127, 0, 0, 1], addr).await?;
    assert!(
        closed_within(&mut over, Duration::from_secs(2)).await,
        "a 17th connection from one source is served"
    );
    // Another source is still served.
    let mut other = connect_from([127, 0, 0, 2], addr).await?;
    other
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    assert_eq!(read_reply(&mut other).await?.status, 200);
    // Three more sources fill the listener: a fifth is refused too.
    let mut others = Vec::new();
    for source in 2..5 {
        for _ in 0..16 {
            others.push(connect_from([127, 0, 0, source], addr).await?);
        }
    }
    let mut over = connect_from([127, 0, 0, 5], addr).await?;
    assert!(
        closed_within(&mut over, Duration::from_secs(2)).await,
        "a 65th admin connection is served"
    );
    // Once the silent ones are gone, their source is served again.
    drop(held);
    drop(others);
    let served = eventually(Duration::from_secs(5), || async {
        admin(&running, "GET", "/healthz")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(
        served,
        "the listener stays full after its connections closed"
    );
    for series in [
        "vigil_admin_refusals_total{reason=\"max_connections_per_source\"}",
        "vigil_admin_refusals_total{reason=\"max_connections\"}",
    ] {
        assert!(metric(&running, series).await? >= 1.0, "{series}");
    }
    running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn admin_tls_handshakes_are_bounded_and_limits_are_checked() -> Result<()> {
    let pki = Pki::new()?;
    let running = admin_proxy(&pki, "client_ca = [\"ca.pem\"]\nhandshake_timeout = \"1s\"").await?;
    let addr = running.admin.context("admin")?;
    // A client that connects and never says hello holds its slot for handshake_timeout only.
    let started = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await?;
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)).await,
        "a silent TLS client stays open"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    running.shutdown().await;

    // Limits that cannot be turned off refuse to be.
    for extra in [
        "max_connections = 0",
        "header_read_timeout = \"0s\"",
        "idle_timeout = \"0s\"",
    ] {
        let text = base_config("", &pki.path("d.log")).replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            &format!("[admin]\nlisten = \"127.0.0.1:0\"\n{extra}"),
        ) + "[[route]]\nname = \"r\"\nhost = \"*\"\nupstream = \"http://127.0.0.1:1\"\nlogin = \"none\"\nallow = [{ spiffe = [\"spiffe://example.org/**\"] }]\n";
        let ctx = vigil::config::Context::first()?;
        let e = vigil::config::load_text("t.toml", text, pki.dir.path(), &ctx)
            .err()
            .context(extra)?;
        let e = e.to_string();
        assert!(e.contains(extra) && e.contains("must be"), "{extra}: {e}");
    }
    Ok(())
}

/// `vigil health` against a TLS admin listener: with `--config` (the listener's certificate
/// pinned, the address given with `--admin` since the file says port 0) or with `--ca`, and a
/// client certificate. Without one, with one the listener does not allow, or against another
/// certificate than the configured one, it fails and says why.
#[tokio::test]
async fn vigil_health_speaks_tls_to_a_tls_admin_listener() -> Result<()> {
    let pki = Pki::new()?;
    let running = admin_proxy(
        &pki,
        "client_ca = [\"ca.pem\"]\nallow_spiffe = [\"spiffe://example.org/ns/ops/sa/*\"]",
    )
    .await?;
    let addr = running.admin.context("admin")?.to_string();
    let write = |name: &str, issued: &vigil::certs::Issued| -> Result<(String, String)> {
        let (cert, key) = (
            pki.path(&format!("{name}.pem")),
            pki.path(&format!("{name}.key")),
        );
        std::fs::write(&cert, &issued.cert_pem)?;
        std::fs::write(&key, &issued.key_pem)?;
        Ok((cert.display().to_string(), key.display().to_string()))
    };
    let (ops_cert, ops_key) = write(
        "probe",
        &pki.workload("spiffe://example.org/ns/ops/sa/probe")?,
    )?;
    let (web_cert, web_key) = write("web", &pki.workload(SPIFFE_WEB)?)?;
    let config = pki.path("vigil.toml").display().to_string();
    let ca = pki.path("ca.pem").display().to_string();
    let health = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_vigil"))
                .arg("health")
                .args(&args)
                .output()
        })
    };
    let passes = |out: &std::process::Output| out.status.success();
    let says = |out: &std::process::Output, text: &str| {
        out.status.code() == Some(1) && String::from_utf8_lossy(&out.stderr).contains(text)
    };

    let pinned = health(&[
        "--admin", &addr, "--config", &config, "--cert", &ops_cert, "--key", &ops_key, "--path",
        "/readyz",
    ])
    .await??;
    assert!(passes(&pinned), "{pinned:?}");
    for name in [None, Some("localhost")] {
        let mut args = vec![
            "--admin", &addr, "--ca", &ca, "--cert", &ops_cert, "--key", &ops_key,
        ];
        if let Some(name) = name {
            args.extend(["--server-name", name]);
        }
        let out = health(&args).await??;
        assert!(passes(&out), "{name:?}: {out:?}");
    }

    let no_cert = health(&["--admin", &addr, "--config", &config]).await??;
    assert!(says(&no_cert, "give --cert and --key"), "{no_cert:?}");
    let not_allowed = health(&[
        "--admin", &addr, "--config", &config, "--cert", &web_cert, "--key", &web_key, "--path",
        "/readyz",
    ])
    .await??;
    assert!(
        says(&not_allowed, "/readyz answered 403: "),
        "{not_allowed:?}"
    );
    let wrong_name = health(&[
        "--admin",
        &addr,
        "--ca",
        &ca,
        "--cert",
        &ops_cert,
        "--key",
        &ops_key,
        "--server-name",
        "elsewhere.test",
    ])
    .await??;
    assert!(says(&wrong_name, "TLS"), "{wrong_name:?}");
    // A file naming another certificate than the one the listener presents.
    let other = pki.ca.issue(&vigil::certs::LeafSpec::server(
        vec!["localhost".into()],
        vec!["127.0.0.1".parse()?],
    ))?;
    std::fs::write(pki.path("other.pem"), &other.cert_pem)?;
    std::fs::write(
        pki.path("other.toml"),
        "[admin]\nlisten = \"127.0.0.1:0\"\nclient_ca = [\"ca.pem\"]\ncert = \"other.pem\"\n",
    )?;
    let other_config = pki.path("other.toml").display().to_string();
    let impostor = health(&[
        "--admin",
        &addr,
        "--config",
        &other_config,
        "--cert",
        &ops_cert,
        "--key",
        &ops_key,
    ])
    .await??;
    assert!(
        says(&impostor, "other than the one the configuration names"),
        "{impostor:?}"
    );
    // Plain HTTP to a listener that speaks TLS gets no answer.
    let plain = health(&["--admin", &addr]).await??;
    assert_eq!(plain.status.code(), Some(1), "{plain:?}");
    Ok(())
}

/// A route a reload adds gets its per-route series at once, at 0, and its line in `/readyz`.
#[tokio::test]
async fn a_route_added_by_a_reload_has_its_series_at_zero() -> Result<()> {
    let pki = Pki::new()?;
    let running = admin_proxy(&pki, "").await?;
    let before = metrics(&running).await?;
    assert!(
        before.contains("vigil_refusals_total{route=\"r\",fault=\"policy\"} 0"),
        "{before}"
    );
    assert!(!before.contains("route=\"added\""), "{before}");
    let path = pki.path("vigil.toml");
    let text = std::fs::read_to_string(&path)?
        + "[[route]]\nname = \"added\"\nhost = \"added.test\"\nupstream = \"http://127.0.0.1:9\"\nlogin = \"none\"\nallow = [{ spiffe = [\"spiffe://example.org/**\"] }]\n";
    std::fs::write(&path, text)?;
    let reloaded = admin(&running, "POST", "/reload").await?;
    assert_eq!(reloaded.status, 200, "{reloaded:?}");
    let after = metrics(&running).await?;
    for series in [
        "vigil_refusals_total{route=\"added\",fault=\"client\"} 0",
        "vigil_refusals_total{route=\"added\",fault=\"internal\"} 0",
        "vigil_upstream_errors_total{route=\"added\",kind=\"timeout\"} 0",
        "vigil_refusals_total{route=\"r\",fault=\"policy\"} 0",
    ] {
        assert!(after.contains(series), "missing {series} in\n{after}");
    }
    let ready = admin(&running, "GET", "/readyz").await?.json();
    let names: Vec<&str> = ready["routes"]
        .as_array()
        .map(|rs| rs.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["r", "added"], "{ready}");
    Ok(())
}
