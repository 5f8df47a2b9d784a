//! A complete world for tests about people: a PKI, a real OpenID Provider (npm
//! `oidc-provider`), an echo upstream and Vigil started from a configuration file with
//! `[oidc]`, `[session]`, `[assertion]` and routes for people, admins and services.

use super::idp::{Idp, IdpOptions, PASSWORD, login_flow};
use super::*;
use anyhow::{Context as _, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use vigil::certs::Issued;
use vigil::identity::seal::KeyRing;

pub const SECRET: &str = "vigil-test-secret";

pub struct World {
    pub pki: Pki,
    pub idp: Idp,
    pub running: vigil::Running,
    pub port: u16,
    pub decisions: PathBuf,
    pub alice_laptop: Issued,
    pub bob_laptop: Issued,
    pub config_text: String,
    _upstream: tokio_util::sync::CancellationToken,
}

pub async fn free_port() -> Result<u16> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?.port())
}

pub fn routes(upstream: SocketAddr, ws: SocketAddr) -> String {
    format!(
        r#"
[[route]]
name = "stepup"
host = "localhost"
path = "/stepup"
upstream = "http://{upstream}"
login = "oidc"
allow = [{{ groups = ["engineering", "sales"] }}]
risk = {{ low = "allow", medium = "step_up", high = "deny" }}

[[route]]
name = "ws"
host = "localhost"
path = "/ws"
upstream = "http://{ws}"
login = "oidc"
allow = [{{ groups = ["engineering"] }}]

[[route]]
name = "app"
host = "localhost"
upstream = "http://{upstream}"
login = "oidc"
headers = {{ "X-Remote-User" = "email", "X-Remote-Risk" = "risk" }}
allow = [{{ groups = ["engineering", "sales"] }}]

[[route]]
name = "admin"
host = "localhost"
path = "/admin"
upstream = "http://{upstream}"
login = "oidc"
allow = [{{ groups = ["admins", "sales"], mfa = true }}]

[[route]]
name = "api"
host = "localhost"
path = "/api"
upstream = "http://{upstream}"
login = "bearer"
bearer_audience = "https://api.test"
bearer_scopes = ["orders:read"]
allow = [{{ users = ["svc"] }}]
"#
    )
}

pub async fn world_with(session: &str) -> Result<World> {
    world_opts(session, false).await
}

/// A world whose provider sends back-channel logouts to Vigil (over mTLS, with a workload
/// certificate of the test CA).
pub async fn world_opts(session: &str, backchannel: bool) -> Result<World> {
    world_full(session, backchannel, "", "").await
}

/// A world with more `[oidc]` keys (`oidc`) and more routes (`routes`, where `UPSTREAM` stands
/// for the echo upstream's address and `PAGES_UPSTREAM` for [`page_and_ws_upstream`]'s),
/// listed before the world's own.
pub async fn world_full(
    session: &str,
    backchannel: bool,
    oidc: &str,
    more_routes: &str,
) -> Result<World> {
    world_build(session, backchannel, oidc, more_routes, false).await
}

/// A world whose provider rotates refresh tokens: a refresh token works once, and spending it
/// again revokes the whole grant.
pub async fn world_rotating(session: &str) -> Result<World> {
    world_build(session, false, "", "", true).await
}

async fn world_build(
    session: &str,
    backchannel: bool,
    oidc: &str,
    more_routes: &str,
    rotate_refresh_tokens: bool,
) -> Result<World> {
    let pki = Pki::new()?;
    std::fs::write(
        pki.path("session.keys"),
        KeyRing::generate_line().map_err(anyhow::Error::msg)? + "\n",
    )?;
    std::fs::write(
        pki.path("assertion.pem"),
        vigil::forward::assertion::Signer::generate_pem().map_err(anyhow::Error::msg)?,
    )?;
    std::fs::write(pki.path("oidc.secret"), format!("{SECRET}\n"))?;
    let port = free_port().await?;
    let backchannel_tls = if backchannel {
        let idp_cert = pki.workload("spiffe://example.org/ns/idp/sa/provider")?;
        std::fs::write(pki.path("idp.pem"), &idp_cert.cert_pem)?;
        std::fs::write(pki.path("idp.key"), &idp_cert.key_pem)?;
        Some(super::idp::BackchannelTls {
            ca: Some(pki.path("ca.pem")),
            cert: Some(pki.path("idp.pem")),
            key: Some(pki.path("idp.key")),
        })
    } else {
        None
    };
    let idp = Idp::start(IdpOptions {
        post_logout_redirect_uris: vec![format!("https://localhost:{port}/.vigil/logged-out")],
        backchannel_logout_uri: backchannel
            .then(|| format!("https://localhost:{port}/.vigil/backchannel")),
        backchannel_tls,
        rotate_refresh_tokens,
        ..IdpOptions::new(SECRET, &format!("https://localhost:{port}/.vigil/callback"))
    })
    .await?;
    let (upstream, stop) = echo_upstream().await?;
    let ws = ws_echo_upstream().await?;
    let pages = page_and_ws_upstream().await?;
    let decisions = pki.path("decisions.log");
    let config_text = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
body_read_timeout = "2s"

[tls]
cert = "server.pem"
key = "server.key"
client_ca = ["ca.pem"]

[admin]
listen = "127.0.0.1:0"

[log]
decisions = "{}"

[oidc]
issuer = "{}"
client_id = "vigil"
client_secret_file = "oidc.secret"
scopes = ["openid", "email", "profile"]
{oidc}

[session]
keys_file = "session.keys"
{session}

[assertion]
keys_file = "assertion.pem"
issuer = "https://vigil.test"
{}
{}"#,
        decisions.display(),
        idp.issuer,
        if session.contains("[risk]") {
            ""
        } else {
            // Loopback is trusted and nothing else raises the level: risk stays low unless a
            // test changes the provider's risk claim.
            "[risk]\ntrusted_networks = [\"127.0.0.0/8\"]\n"
        },
        more_routes
            .replace("PAGES_UPSTREAM", &pages.to_string())
            .replace("UPSTREAM", &upstream.to_string())
            + &routes(upstream, ws)
    );
    let config = pki.path("vigil.toml");
    std::fs::write(&config, &config_text)?;
    let running = vigil::start_file(&config).await?;
    // Ready, and the provider discovered (a route that needs none makes Vigil ready before).
    let ready = eventually(Duration::from_secs(20), || async {
        admin(&running, "GET", "/readyz")
            .await
            .is_ok_and(|r| r.status == 200 && r.json()["identity_provider"]["ready"] == true)
    })
    .await;
    anyhow::ensure!(ready, "Vigil never became ready (provider discovery)");
    Ok(World {
        alice_laptop: pki.device("alice-laptop")?,
        bob_laptop: pki.device("bob-laptop")?,
        pki,
        idp,
        running,
        port,
        decisions,
        config_text,
        _upstream: stop,
    })
}

pub async fn world() -> Result<World> {
    world_with("").await
}

impl World {
    /// `POST /.vigil/logout` from `device` with the session's CSRF token.
    pub async fn log_out(&self, device: &Issued, session: &str) -> Result<Reply> {
        let token = self.visit(device, "/.vigil/whoami", session).await?.json()["logout_csrf"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let body = format!("csrf={token}");
        let request = format!(
            "POST /.vigil/logout HTTP/1.1\r\nHost: localhost:{}\r\nCookie: {session}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        self.send(device, &request).await
    }

    /// Sends `request` (a whole HTTP/1.1 request) from `device`, as a browser would.
    pub async fn send(&self, device: &Issued, request: &str) -> Result<Reply> {
        raw(
            self.running.addr,
            self.browser(device),
            "localhost",
            request,
        )
        .await
    }

    pub fn browser(&self, device: &Issued) -> rustls::ClientConfig {
        client_config(Some(device), self.pki.ca.cert_pem(), &[b"http/1.1"]).expect("client config")
    }

    /// GET with cookies, as a browser navigation.
    pub async fn visit(&self, device: &Issued, path: &str, cookies: &str) -> Result<Reply> {
        let cookie = if cookies.is_empty() {
            String::new()
        } else {
            format!("Cookie: {cookies}\r\n")
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\nAccept: text/html\r\n{cookie}Connection: close\r\n\r\n",
            self.port
        );
        self.send(device, &request).await
    }

    /// Signs `user` in from `device`, starting at `path`; returns the session cookie pairs and
    /// where the callback sent the browser.
    pub async fn sign_in(
        &self,
        device: &Issued,
        path: &str,
        user: &str,
    ) -> Result<(String, String)> {
        let start = self.visit(device, path, "").await?;
        anyhow::ensure!(
            start.status == 302,
            "expected a redirect to the provider: {start:?}"
        );
        let authorize = start.header("location").context("no Location")?;
        anyhow::ensure!(authorize.starts_with(&self.idp.issuer), "{authorize}");
        let login_cookie = cookie_pairs(&start);
        let callback = login_flow(&authorize, user, PASSWORD).await?;
        let back = self.callback(device, &callback, &login_cookie).await?;
        anyhow::ensure!(back.status == 303, "callback refused: {back:?}");
        Ok((
            cookie_pairs(&back),
            back.header("location").unwrap_or_default(),
        ))
    }

    pub async fn callback(&self, device: &Issued, url: &str, cookies: &str) -> Result<Reply> {
        let url = url::Url::parse(url)?;
        let path = format!("{}?{}", url.path(), url.query().unwrap_or(""));
        self.visit(device, &path, cookies).await
    }
}

/// The `name=value` pairs a response sets (ignoring ones it deletes).
pub fn cookie_pairs(reply: &Reply) -> String {
    reply
        .head
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("set-cookie")
                .then(|| v.trim().to_owned())
        })
        .filter(|c| !c.contains("Max-Age=0"))
        .filter_map(|c| c.split(';').next().map(str::to_owned))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Cookies after a response: the pairs it set replace those of the same name.
pub fn merge_cookies(old: &str, reply: &Reply) -> String {
    let set = cookie_pairs(reply);
    if set.is_empty() {
        return old.to_owned();
    }
    let mut jar: Vec<(String, String)> = old
        .split("; ")
        .chain(set.split("; "))
        .filter_map(|p| p.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let mut seen = std::collections::HashSet::new();
    jar.reverse();
    jar.retain(|(k, _)| seen.insert(k.clone()));
    jar.reverse();
    jar.into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}
