//! Debian's real nginx in front of a real upstream, asking Vigil's decision endpoint with
//! `auth_request` over mTLS: what Vigil allows reaches the upstream with the identity headers
//! nginx took from Vigil's answer, what it denies is refused by nginx with Vigil's status, an
//! nginx that does not name the original method is refused (its subrequest is always a GET),
//! and an nginx that is no configured enforcement point is refused by Vigil.
//!
//! nginx runs from its own configuration and prefix in a temporary directory, on loopback
//! ports only, for as long as the test. `scripts/test` installs it (`nginx-light`); the test
//! is skipped, saying so, only where no nginx binary exists at all.

mod support;

use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;
use vigil::certs::Issued;

const NGINX: &str = "spiffe://example.org/ns/ingress/sa/nginx";
const ROGUE: &str = "spiffe://example.org/ns/ingress/sa/rogue";

fn nginx_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("nginx"))
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|p| p.is_file())
}

/// A running nginx, stopped when dropped.
struct Nginx {
    child: std::process::Child,
    error_log: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn errors(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }
}

/// One nginx server: `port` in front of the upstream, asking Vigil at `vigil` with the
/// client certificate `cert`/`key` (files in `dir`).
fn server_block(port: u16, vigil: u16, upstream: &str, cert: &str, key: &str) -> String {
    let with_method = "      proxy_set_header X-Original-Method $request_method;\n";
    server_block_with(port, vigil, upstream, cert, key, with_method)
}

/// [`server_block`] with `method` as the line that names the original method (or none).
fn server_block_with(
    port: u16,
    vigil: u16,
    upstream: &str,
    cert: &str,
    key: &str,
    method: &str,
) -> String {
    format!(
        r#"
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate server.pem;
    ssl_certificate_key server.key;
    ssl_client_certificate ca.pem;
    ssl_verify_client optional;

    location / {{
      auth_request /_vigil;
      auth_request_set $vigil_user $upstream_http_x_vigil_user;
      auth_request_set $vigil_device $upstream_http_x_vigil_device;
      auth_request_set $vigil_assertion $upstream_http_x_vigil_assertion;
      proxy_set_header X-Vigil-User $vigil_user;
      proxy_set_header X-Vigil-Device $vigil_device;
      proxy_set_header X-Vigil-Assertion $vigil_assertion;
      proxy_pass http://{upstream};
    }}

    location = /_vigil {{
      internal;
      proxy_pass https://127.0.0.1:{vigil}/.vigil/authz;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
{method}      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;
      proxy_http_version 1.1;
      proxy_ssl_certificate {cert};
      proxy_ssl_certificate_key {key};
      proxy_ssl_trusted_certificate ca.pem;
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
      proxy_ssl_server_name on;
      proxy_ssl_protocols TLSv1.3;
      # Both servers of this nginx reach Vigil at the same address, so they would share one
      # cache of TLS sessions: the second would resume the first's session, and with it the
      # first's certificate. Each full handshake here presents its own.
      proxy_ssl_session_reuse off;
    }}
  }}
"#
    )
}

async fn start_nginx(binary: &Path, dir: &Path, servers: &str, ports: &[u16]) -> Result<Nginx> {
    let d = dir.display();
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log info;
events {{ worker_connections 64; }}
http {{
  access_log {d}/nginx-access.log;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
{servers}
}}
"#
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let child = std::process::Command::new(binary)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("starting nginx")?;
    let nginx = Nginx {
        child,
        error_log: dir.join("nginx-error.log"),
    };
    for port in ports {
        let up = eventually(STEP, || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", *port))
                .await
                .is_ok()
        })
        .await;
        anyhow::ensure!(up, "nginx did not listen on {port}: {}", nginx.errors());
    }
    Ok(nginx)
}

fn write_identity(dir: &Path, name: &str, id: &Issued) -> Result<()> {
    std::fs::write(dir.join(format!("{name}.pem")), &id.cert_pem)?;
    std::fs::write(dir.join(format!("{name}.key")), &id.key_pem)?;
    Ok(())
}

#[tokio::test]
async fn nginx_auth_request_asks_vigil_and_enforces_its_answer() -> Result<()> {
    let Some(binary) = nginx_binary() else {
        eprintln!(
            "SKIPPED: no nginx binary on PATH or at /usr/sbin/nginx (scripts/test installs nginx-light)"
        );
        return Ok(());
    };
    tokio::time::timeout(Duration::from_secs(60), run(&binary)).await?
}

async fn run(binary: &Path) -> Result<()> {
    let pki = Pki::new()?;
    let dir = pki.dir.path().to_path_buf();
    let (upstream, _stop) = echo_upstream().await?;
    let log = pki.path("decisions.log");
    write_identity(&dir, "nginx", &pki.workload(NGINX)?)?;
    write_identity(&dir, "rogue", &pki.workload(ROGUE)?)?;
    std::fs::write(
        pki.path("assertion.pem"),
        vigil::forward::assertion::Signer::generate_pem().map_err(anyhow::Error::msg)?,
    )?;
    let text = format!(
        r#"{}
[assertion]
keys_file = "assertion.pem"
issuer = "https://vigil.test"

[authz]
enforcement_points = [{{ name = "nginx", spiffe = "{NGINX}" }}]

[[route]]
name = "app"
host = "app.test"
upstream = "http://{upstream}"
login = "none"
allow = [{{ cert_subject = ["*-laptop"], paths = ["/reports/**"], methods = ["GET"] }}]
"#,
        base_config("", &log)
    );
    let running = spawn(&pki, &text).await?;
    let vigil = running.addr.port();
    let (good, rogue) = (world::free_port().await?, world::free_port().await?);
    let forgetful = world::free_port().await?;
    let upstream = upstream.to_string();
    let servers = server_block(good, vigil, &upstream, "nginx.pem", "nginx.key")
        + &server_block(rogue, vigil, &upstream, "rogue.pem", "rogue.key")
        + &server_block_with(forgetful, vigil, &upstream, "nginx.pem", "nginx.key", "");
    let nginx = start_nginx(binary, &dir, &servers, &[good, rogue, forgetful]).await?;
    let laptop = pki.device("alice-laptop")?;
    let ca = pki.ca.cert_pem().to_owned();
    let ask = |port: u16, client: Option<&Issued>, method: &str, path: &str| {
        let config = client_config(client, &ca, &[b"http/1.1"]).expect("client config");
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n");
        async move {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            raw(addr, config, "localhost", &request).await
        }
    };

    // Allowed: the upstream answers, with the identity Vigil sent nginx.
    let allowed = ask(good, Some(&laptop), "GET", "/reports/q1?year=2026").await?;
    assert_eq!(allowed.status, 200, "{allowed:?}\n{}", nginx.errors());
    let device = allowed
        .upstream_header("x-vigil-device")
        .unwrap_or_default();
    assert_eq!(device.len(), 64, "{allowed:?}");
    assert!(
        allowed
            .upstream_header("x-vigil-assertion")
            .is_some_and(|a| a.split('.').count() == 3),
        "{allowed:?}"
    );
    let lines = decisions_of(&log, "allow").await;
    let line = lines.last().context("an allow line")?;
    assert_eq!(line["enforcement_point"], "nginx");
    assert_eq!(line["path"], "/reports/q1");
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["device"], device.as_str());

    // Denied by policy (method, then path): nginx answers Vigil's 403, nothing reaches upstream.
    for (method, path) in [("DELETE", "/reports/q1"), ("GET", "/admin")] {
        let denied = ask(good, Some(&laptop), method, path).await?;
        assert_eq!(denied.status, 403, "{method} {path}: {denied:?}");
        assert!(denied.upstream_header("x-vigil-device").is_none());
    }
    // A path nginx passes on as it came but Vigil cannot canonicalise (an escaped slash that
    // an upstream could read as a separator) is refused, never let through.
    let climbing = ask(good, Some(&laptop), "GET", "/reports/x%2f..%2f..%2fadmin").await?;
    assert_eq!(climbing.status, 403, "{climbing:?}");
    // No client certificate at nginx: nothing to pass on, so Vigil refuses.
    let anonymous = ask(good, None, "GET", "/reports/q1").await?;
    assert_eq!(anonymous.status, 403, "{anonymous:?}");

    // An nginx that does not name the original method: its subrequest is a GET whatever the
    // request was, so Vigil refuses rather than decide a DELETE as a GET.
    for method in ["DELETE", "GET"] {
        let unnamed = ask(forgetful, Some(&laptop), method, "/reports/q1").await?;
        assert_eq!(unnamed.status, 403, "{method}: {unnamed:?}");
    }

    // An nginx whose certificate is not on the list is refused by Vigil, whatever it says.
    let refused = ask(rogue, Some(&laptop), "GET", "/reports/q1").await?;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.upstream_header("x-vigil-device").is_none());
    let expected = [
        "method_not_allowed",
        "path_not_allowed",
        "authz_forwarded_path",
        "authz_certificate_missing",
        "authz_forwarded_invalid",
        "authz_not_enforcement_point",
    ];
    let mut codes: Vec<String> = Vec::new();
    let all = eventually(STEP, || {
        codes = decisions(&log)
            .iter()
            .filter(|l| l["decision"] == "deny")
            .map(|l| l["codes"][0].as_str().unwrap_or("").to_owned())
            .collect();
        let ok = expected.iter().all(|e| codes.iter().any(|c| c == e));
        async move { ok }
    })
    .await;
    assert!(all, "expected {expected:?} among {codes:?}");
    drop(nginx);
    running.shutdown().await;
    Ok(())
}

/// The decision lines with `decision`, once there is at least one.
async fn decisions_of(path: &Path, decision: &str) -> Vec<serde_json::Value> {
    let mut found = Vec::new();
    eventually(STEP, || {
        found = decisions(path)
            .into_iter()
            .filter(|d| d["decision"] == decision)
            .collect();
        let ok = !found.is_empty();
        async move { ok }
    })
    .await;
    found
}
