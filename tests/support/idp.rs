//! A real OpenID Provider for the integration tests: the npm package `oidc-provider`, run by
//! `tests/idp/server.mjs` on 127.0.0.1 over plain http (see `tests/idp/README.md`).
//!
//! [`Idp::start`] installs the npm packages once (`npm ci`, guarded across test processes),
//! spawns `node`, and waits for the server's ready line. Dropping the [`Idp`] kills the process.
//! [`login_flow`] signs a user in through the provider's login form the way a browser would,
//! without a browser.
#![allow(dead_code)]

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How long the server may take to print its ready line.
const READY: Duration = Duration::from_secs(20);
/// How long one HTTP exchange with the provider may take.
const STEP: Duration = Duration::from_secs(10);
/// How long `npm ci` (or waiting for another process's `npm ci`) may take.
const INSTALL: Duration = Duration::from_secs(300);
/// At most this many redirects and form posts in one [`login_flow`].
const MAX_HOPS: usize = 20;

/// The test users `tests/idp/server.mjs` knows (the password of both is [`PASSWORD`]).
pub const ALICE: &str = "alice";
pub const BOB: &str = "bob";
pub const PASSWORD: &str = "password";

/// TLS material the provider uses for its back-channel logout requests to an https
/// `backchannel_logout_uri` (Vigil's own listener).
#[derive(Clone, Debug, Default)]
pub struct BackchannelTls {
    /// PEM CA certificate(s) that the logout URI's server certificate chains to.
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key, for a listener that requires mTLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Clone, Debug, Default)]
pub struct IdpOptions {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub backchannel_logout_uri: Option<String>,
    /// Optional extras; `..Default::default()` leaves them off.
    pub backchannel_tls: Option<BackchannelTls>,
    /// Lifetime of access and ID tokens (the server's default is 300 s).
    pub access_token_ttl: Option<Duration>,
    /// Rotate the refresh token on every refresh (the old one then fails, and replaying it
    /// revokes the grant).
    pub rotate_refresh_tokens: bool,
}

impl IdpOptions {
    /// The first-party client `vigil` with one redirect URI.
    pub fn new(client_secret: &str, redirect_uri: &str) -> Self {
        Self {
            client_id: "vigil".into(),
            client_secret: client_secret.into(),
            redirect_uris: vec![redirect_uri.into()],
            ..Self::default()
        }
    }
}

pub struct Idp {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub issuer: String,
    pub port: u16,
    /// The client-credentials client (bearer tokens for service-to-service calls).
    pub service_client_id: String,
    pub service_client_secret: String,
    /// The resource indicator of the API; it is the `aud` of the service client's JWTs.
    pub resource: String,
    child: Option<Child>,
    _stdin: Option<ChildStdin>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Drop for Idp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("idp")
}

impl Idp {
    pub async fn start(opts: IdpOptions) -> Result<Idp> {
        if opts.redirect_uris.is_empty() {
            bail!("IdpOptions.redirect_uris is empty");
        }
        let dir = idp_dir();
        {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || ensure_installed(&dir))
                .await
                .context("npm install task")??;
        }
        // Node normally prints its ready line within a second. On a loaded machine a start has
        // been seen to hang silently; a fresh process is the cure, so try a few times.
        let mut last = None;
        for attempt in 1..=3 {
            match Self::spawn(&opts, &dir).await {
                Ok(idp) => return Ok(idp),
                Err(e) => {
                    eprintln!("[idp] start attempt {attempt} failed: {e:#}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the IdP did not start")))
    }

    async fn spawn(opts: &IdpOptions, dir: &Path) -> Result<Idp> {
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("server.mjs"))
            .args([
                "--port",
                "0",
                "--issuer-host",
                "127.0.0.1",
                "--exit-with-stdin",
            ])
            .args([
                "--client-id",
                &opts.client_id,
                "--client-secret",
                &opts.client_secret,
            ]);
        for uri in &opts.redirect_uris {
            cmd.args(["--redirect-uri", uri]);
        }
        for uri in &opts.post_logout_redirect_uris {
            cmd.args(["--post-logout-redirect-uri", uri]);
        }
        if let Some(uri) = &opts.backchannel_logout_uri {
            cmd.args(["--backchannel-logout-uri", uri]);
        }
        if let Some(tls) = &opts.backchannel_tls {
            for (flag, path) in [
                ("--backchannel-ca", &tls.ca),
                ("--backchannel-cert", &tls.cert),
                ("--backchannel-key", &tls.key),
            ] {
                if let Some(path) = path {
                    cmd.arg(flag).arg(path);
                }
            }
        }
        if let Some(ttl) = opts.access_token_ttl {
            cmd.args(["--access-token-ttl", &ttl.as_secs().max(1).to_string()]);
        }
        if opts.rotate_refresh_tokens {
            cmd.arg("--rotate-refresh-tokens");
        }
        cmd.current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .context("spawning `node tests/idp/server.mjs` (is Node.js >= 20.18 installed?)")?;

        // stderr: kept (last lines) for error messages, and echoed so that a failing test
        // shows what the provider said.
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(err) = child.stderr.take() {
            let tail = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("Unsupported runtime") {
                        continue;
                    }
                    eprintln!("[idp] {line}");
                    let mut tail = tail.lock().unwrap();
                    if tail.len() == 50 {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            });
        }
        // stdout: the first line is the ready line; keep draining the rest.
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let out = child.stdout.take().context("node stdout")?;
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            for _ in lines {}
        });
        let stdin = child.stdin.take();

        let mut idp = Idp {
            issuer: String::new(),
            port: 0,
            service_client_id: String::new(),
            service_client_secret: String::new(),
            resource: String::new(),
            child: Some(child),
            _stdin: stdin,
            stderr,
        };
        let line = match tokio::time::timeout(READY, rx).await {
            Ok(Ok(line)) => line,
            Ok(Err(_)) => bail!("the IdP exited before it was ready:\n{}", idp.stderr_tail()),
            Err(_) => bail!(
                "the IdP was not ready within {READY:?}:\n{}",
                idp.stderr_tail()
            ),
        };
        let ready: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("the IdP's ready line is not JSON: {line:?}"))?;
        let text = |key: &str| -> Result<String> {
            ready[key]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("ready line has no {key}: {line}"))
        };
        idp.issuer = text("issuer")?;
        idp.service_client_id = text("service_client_id")?;
        idp.service_client_secret = text("service_client_secret")?;
        idp.resource = text("resource")?;
        idp.port = ready["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .with_context(|| format!("ready line has no port: {line}"))?;
        Ok(idp)
    }

    /// The last lines the provider wrote to stderr (back-channel errors show up here).
    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr.lock().unwrap();
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Stops the provider now (it is down from here on), as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `/.well-known/openid-configuration`.
    pub async fn discovery(&self) -> Result<serde_json::Value> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let reply = request("GET", &url, &[], Vec::new()).await?;
        reply.ok_json()
    }

    /// Marks the user disabled: logins are refused and refresh-token grants for them fail with
    /// `invalid_grant`. Tokens already issued stay valid until they expire.
    pub async fn disable_user(&self, id: &str) -> Result<()> {
        self.admin_post(
            &format!("/__admin/users/{}", encode(id)),
            r#"{"disabled":true}"#,
        )
        .await
        .map(drop)
    }

    pub async fn enable_user(&self, id: &str) -> Result<()> {
        self.admin_post(
            &format!("/__admin/users/{}", encode(id)),
            r#"{"disabled":false}"#,
        )
        .await
        .map(drop)
    }

    /// Merges `claims` (an object, e.g. `{"groups": ["sales"], "risk": "high"}`; `null` removes
    /// a claim) into the user's claims. The next refresh or login sees them.
    pub async fn set_claims(&self, id: &str, claims: serde_json::Value) -> Result<()> {
        if !claims.is_object() {
            bail!("claims must be a JSON object, got {claims}");
        }
        let body = serde_json::json!({ "claims": claims }).to_string();
        self.admin_post(&format!("/__admin/users/{}", encode(id)), &body)
            .await
            .map(drop)
    }

    /// Sets the authentication methods (`amr`) the user's next sign-ins report.
    pub async fn set_amr(&self, id: &str, amr: &[&str]) -> Result<()> {
        let body = serde_json::json!({ "amr": amr }).to_string();
        self.admin_post(&format!("/__admin/users/{}", encode(id)), &body)
            .await
            .map(drop)
    }

    /// Ends every provider session of the user and revokes all their grants (so refresh tokens
    /// fail with `invalid_grant`), sending a back-channel logout token for each session to the
    /// client's `backchannel_logout_uri`. Returns the server's report, e.g.
    /// `{"sessions":1,"grants":1,"backchannel":[{"client_id":"vigil","sid":"...","ok":true}]}`.
    pub async fn revoke_user(&self, id: &str) -> Result<serde_json::Value> {
        self.admin_post(&format!("/__admin/users/{}/revoke", encode(id)), "")
            .await
    }

    /// A client-credentials access token (a JWT with `aud` = [`Idp::resource`]) for the service
    /// client, with the given space-separated scopes (e.g. `orders:read`).
    pub async fn client_credentials(&self, scope: &str) -> Result<String> {
        let form = form_encode(&[("grant_type", "client_credentials"), ("scope", scope)]);
        let (status, body) = self
            .token_request(&self.service_client_id, &self.service_client_secret, &form)
            .await?;
        if status != 200 {
            bail!("client_credentials: {status} {body}");
        }
        body["access_token"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no access_token in {body}"))
    }

    /// POSTs an `application/x-www-form-urlencoded` body to the token endpoint with
    /// client_secret_basic and returns the status and JSON body, whatever the status.
    pub async fn token_request(
        &self,
        client_id: &str,
        client_secret: &str,
        form: &str,
    ) -> Result<(u16, serde_json::Value)> {
        let basic = base64(format!("{}:{}", encode(client_id), encode(client_secret)).as_bytes());
        let reply = request(
            "POST",
            &format!("{}/token", self.issuer),
            &[
                ("authorization", format!("Basic {basic}")),
                ("content-type", "application/x-www-form-urlencoded".into()),
            ],
            form.as_bytes().to_vec(),
        )
        .await?;
        let json = serde_json::from_slice(&reply.body).with_context(|| {
            format!("token endpoint answered {}: {}", reply.status, reply.text())
        })?;
        Ok((reply.status, json))
    }

    /// Makes the provider path `path` (e.g. `/token`) misbehave: `Some("hang")` accepts requests
    /// and never answers them, `Some("reset")` drops the connection without answering, `None`
    /// restores it (and drops the requests held by a hang).
    pub async fn fault(&self, path: &str, mode: Option<&str>) -> Result<()> {
        let body = serde_json::json!({ "path": path, "mode": mode }).to_string();
        self.admin_post("/__admin/fault", &body).await.map(drop)
    }

    /// RFC 7662 introspection of `token` at the provider, as the client `client_id`; the answer's
    /// `active` says whether the token is still good.
    pub async fn introspect(
        &self,
        client_id: &str,
        client_secret: &str,
        token: &str,
    ) -> Result<serde_json::Value> {
        let basic = base64(format!("{}:{}", encode(client_id), encode(client_secret)).as_bytes());
        let reply = request(
            "POST",
            &format!("{}/token/introspection", self.issuer),
            &[
                ("authorization", format!("Basic {basic}")),
                ("content-type", "application/x-www-form-urlencoded".into()),
            ],
            form_encode(&[("token", token)]).into_bytes(),
        )
        .await?;
        reply.ok_json().context("introspection")
    }

    async fn admin_post(&self, path: &str, body: &str) -> Result<serde_json::Value> {
        let reply = request(
            "POST",
            &format!("{}{path}", self.issuer),
            &[("content-type", "application/json".into())],
            body.as_bytes().to_vec(),
        )
        .await?;
        reply.ok_json().with_context(|| format!("POST {path}"))
    }
}

// -------------------------------------------------------------------------------------------
// npm ci, once, whatever number of test processes start at the same time

/// Runs `npm ci` in `dir` unless `node_modules` was installed from the current
/// package-lock.json. A directory created with `create_dir` (atomic) is the lock between
/// processes; a lock older than [`INSTALL`] is taken to be left by a dead process.
/// Runs `npm ci` in `dir` (tests/idp, tests/browser) unless `node_modules` was installed from
/// its current lock file; safe across test threads and processes.
pub fn ensure_installed(dir: &Path) -> Result<()> {
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let _guard = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());

    let lock_file = std::fs::read(dir.join("package-lock.json"))
        .with_context(|| format!("{}/package-lock.json", dir.display()))?;
    let marker = dir.join("node_modules").join(".vigil-installed-lock.json");
    let installed = || std::fs::read(&marker).is_ok_and(|m| m == lock_file);
    if installed() {
        return Ok(());
    }

    let lock = dir.join(".npm-ci.lock");
    let deadline = std::time::Instant::now() + INSTALL;
    loop {
        match std::fs::create_dir(&lock) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if installed() {
                    return Ok(());
                }
                let stale = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age > INSTALL);
                if stale {
                    let _ = std::fs::remove_dir(&lock);
                    continue;
                }
                if std::time::Instant::now() > deadline {
                    bail!(
                        "waited {INSTALL:?} for another process's `npm ci` ({} exists)",
                        lock.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", lock.display())),
        }
    }
    struct Unlock<'a>(&'a Path);
    impl Drop for Unlock<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(self.0);
        }
    }
    let _unlock = Unlock(&lock);
    if installed() {
        return Ok(());
    }

    let out = Command::new("npm")
        .args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--prefer-offline",
            "--loglevel=error",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("running `npm ci` in tests/idp (is npm installed?)")?;
    if !out.status.success() {
        bail!(
            "`npm ci` in tests/idp failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(&marker, &lock_file).with_context(|| format!("writing {}", marker.display()))?;
    Ok(())
}

// -------------------------------------------------------------------------------------------
// A browser without a browser

/// Signs `user` in through the provider as a browser would: starts at `authorize_url` (the URL
/// Vigil redirected to), follows redirects with a cookie jar, fills the login form's `login` and
/// `password`, submits any further form (consent, should one appear), and returns the first
/// redirect that leaves the provider: Vigil's callback URL with `code` and `state` (or `error`).
///
/// A page without a form (an error page, or the login form again after a refused login) is an
/// error that carries the page's status and text.
pub async fn login_flow(authorize_url: &str, user: &str, password: &str) -> Result<String> {
    let start = Url::parse(authorize_url)?;
    let mut jar = CookieJar::default();
    let mut url = start.clone();
    let mut method = "GET";
    let mut body: Vec<u8> = Vec::new();
    let mut submitted_login = false;

    for _ in 0..MAX_HOPS {
        let mut headers = Vec::new();
        if let Some(cookie) = jar.header(&url) {
            headers.push(("cookie", cookie));
        }
        if method == "POST" {
            headers.push(("content-type", "application/x-www-form-urlencoded".into()));
        }
        let reply = request(
            method,
            &url.to_string(),
            &headers,
            std::mem::take(&mut body),
        )
        .await?;
        jar.store(&url, &reply.set_cookies);

        if (300..400).contains(&reply.status) {
            let location = reply
                .location
                .as_deref()
                .with_context(|| format!("{} {url}: redirect without Location", reply.status))?;
            let next = url.join(location)?;
            if next.scheme != start.scheme || next.authority != start.authority {
                return Ok(next.to_string());
            }
            url = next;
            method = "GET";
            continue;
        }

        let page = reply.text();
        let Some(form) = Form::first(&page) else {
            bail!(
                "{} {url}: page without a form:\n{}",
                reply.status,
                page_text(&page)
            );
        };
        let mut fields = form.hidden.clone();
        if form.inputs.iter().any(|n| n == "login") {
            if submitted_login {
                bail!(
                    "the login was refused ({}):\n{}",
                    reply.status,
                    page_text(&page)
                );
            }
            submitted_login = true;
            fields.push(("login".into(), user.into()));
            fields.push(("password".into(), password.into()));
        }
        let pairs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        body = form_encode(&pairs).into_bytes();
        url = url.join(&form.action)?;
        method = "POST";
    }
    bail!("no redirect out of the provider after {MAX_HOPS} steps")
}

/// The first `<form>` of a page: its action, its hidden inputs and the names of its other inputs.
struct Form {
    action: String,
    hidden: Vec<(String, String)>,
    inputs: Vec<String>,
}

impl Form {
    fn first(page: &str) -> Option<Form> {
        let start = page.find("<form")?;
        let end = page[start..]
            .find("</form>")
            .map_or(page.len(), |e| start + e);
        let html = &page[start..end];
        let open = &html[..html.find('>')?];
        let action = attr(open, "action").unwrap_or_default();
        let mut hidden = Vec::new();
        let mut inputs = Vec::new();
        let mut rest = html;
        while let Some(i) = rest.find("<input") {
            let tag_end = rest[i..].find('>').map_or(rest.len(), |e| i + e);
            let tag = &rest[i..tag_end];
            if let Some(name) = attr(tag, "name") {
                if attr(tag, "type").is_some_and(|t| t.eq_ignore_ascii_case("hidden")) {
                    hidden.push((name, attr(tag, "value").unwrap_or_default()));
                } else {
                    inputs.push(name);
                }
            }
            rest = &rest[tag_end..];
        }
        Some(Form {
            action,
            hidden,
            inputs,
        })
    }
}

/// The value of `name="..."` (or `'...'`) in one tag, entities decoded.
fn attr(tag: &str, name: &str) -> Option<String> {
    let mut from = 0;
    while let Some(i) = tag[from..].find(name) {
        let at = from + i;
        from = at + name.len();
        let before_ok = at == 0 || tag.as_bytes()[at - 1].is_ascii_whitespace();
        let rest = tag[from..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let rest = rest[1..].trim_start();
        let quote = rest.chars().next()?;
        let value = if quote == '"' || quote == '\'' {
            let rest = &rest[1..];
            &rest[..rest.find(quote)?]
        } else {
            let end = rest
                .find(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/')
                .unwrap_or(rest.len());
            &rest[..end]
        };
        return Some(unescape(value));
    }
    None
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A page's text without tags, for error messages.
fn page_text(page: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in page.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    unescape(&out.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Cookies by host, path and name: enough for one provider on one host.
#[derive(Default)]
struct CookieJar {
    cookies: Vec<Cookie>,
}

struct Cookie {
    host: String,
    path: String,
    name: String,
    value: String,
}

impl CookieJar {
    fn store(&mut self, url: &Url, set_cookies: &[String]) {
        for line in set_cookies {
            let mut parts = line.split(';');
            let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
                continue;
            };
            let (name, value) = (name.trim().to_owned(), value.trim().to_owned());
            // RFC 6265 5.1.4: the default path is the request path up to its last '/'.
            let mut path = match url.path().rfind('/') {
                Some(0) | None => "/".to_owned(),
                Some(i) => url.path()[..i].to_owned(),
            };
            let mut expired = value.is_empty();
            for attribute in parts {
                let (k, v) = attribute.split_once('=').unwrap_or((attribute, ""));
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "path" if v.starts_with('/') => path = v.to_owned(),
                    "max-age" => expired |= v.parse::<i64>().is_ok_and(|s| s <= 0),
                    "expires" => expired |= v.contains("1970"),
                    _ => {}
                }
            }
            let host = url.host().to_owned();
            self.cookies
                .retain(|c| !(c.host == host && c.path == path && c.name == name));
            if !expired {
                self.cookies.push(Cookie {
                    host,
                    path,
                    name,
                    value,
                });
            }
        }
    }

    fn header(&self, url: &Url) -> Option<String> {
        let path = url.path();
        let mut matching: Vec<&Cookie> = self
            .cookies
            .iter()
            .filter(|c| {
                c.host == url.host()
                    && (path == c.path
                        || (path.starts_with(&c.path)
                            && (c.path.ends_with('/') || path[c.path.len()..].starts_with('/'))))
            })
            .collect();
        // Longer paths first, as browsers send them.
        matching.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        if matching.is_empty() {
            return None;
        }
        Some(
            matching
                .iter()
                .map(|c| format!("{}={}", c.name, c.value))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }
}

/// An absolute http(s) URL split into what the flow needs.
#[derive(Clone, Debug, PartialEq)]
struct Url {
    scheme: String,
    /// host[:port]
    authority: String,
    /// path and query, starting with '/'.
    target: String,
}

impl Url {
    fn parse(s: &str) -> Result<Url> {
        let (scheme, rest) = s
            .split_once("://")
            .with_context(|| format!("not an absolute URL: {s}"))?;
        if scheme != "http" && scheme != "https" {
            bail!("unsupported scheme in {s}");
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        let mut target = rest[end..].split('#').next().unwrap_or("").to_owned();
        if !target.starts_with('/') {
            target.insert(0, '/');
        }
        Ok(Url {
            scheme: scheme.to_ascii_lowercase(),
            authority: authority.to_ascii_lowercase(),
            target,
        })
    }

    /// Resolves a Location or form action: absolute URLs and absolute paths (what the
    /// provider sends), and query-only references.
    fn join(&self, reference: &str) -> Result<Url> {
        if reference.contains("://") {
            Url::parse(reference)
        } else if reference.starts_with("//") {
            Url::parse(&format!("{}:{reference}", self.scheme))
        } else if reference.starts_with('/') {
            Ok(Url {
                target: reference.split('#').next().unwrap_or("/").to_owned(),
                ..self.clone()
            })
        } else if reference.starts_with('?') {
            Ok(Url {
                target: format!("{}{reference}", self.path()),
                ..self.clone()
            })
        } else if reference.is_empty() {
            Ok(self.clone())
        } else {
            Err(anyhow!(
                "relative reference {reference:?} from {self} is not supported"
            ))
        }
    }

    fn host(&self) -> &str {
        match self.authority.rfind(':') {
            Some(i) if !self.authority.ends_with(']') => &self.authority[..i],
            _ => &self.authority,
        }
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("/")
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.target)
    }
}

// -------------------------------------------------------------------------------------------
// Plain HTTP/1.1 to the provider on loopback

struct HttpReply {
    status: u16,
    location: Option<String>,
    set_cookies: Vec<String>,
    body: Bytes,
}

impl HttpReply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn ok_json(&self) -> Result<serde_json::Value> {
        if !(200..300).contains(&self.status) {
            bail!("HTTP {}: {}", self.status, self.text());
        }
        serde_json::from_slice(&self.body).with_context(|| format!("not JSON: {}", self.text()))
    }
}

/// The body of a GET, as text (plain http on loopback only).
pub async fn get_text(url: &str) -> Result<String> {
    Ok(request("GET", url, &[], Vec::new()).await?.text())
}

/// One request on a fresh connection. Only `http://` (the provider is plain http on loopback).
async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<HttpReply> {
    let parsed = Url::parse(url)?;
    if parsed.scheme != "http" {
        bail!("only http:// is spoken here: {url}");
    }
    let addr = if parsed.authority.contains(':') {
        parsed.authority.clone()
    } else {
        format!("{}:80", parsed.authority)
    };
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(parsed.target.as_str())
            .header("host", parsed.authority.as_str());
        for (name, value) in headers {
            builder = builder.header(*name, value.as_str());
        }
        let response = sender
            .send_request(builder.body(Full::new(Bytes::from(body)))?)
            .await?;
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let set_cookies = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok(HttpReply {
            status,
            location,
            set_cookies,
            body,
        })
    };
    tokio::time::timeout(STEP, exchange)
        .await
        .with_context(|| format!("{method} {url} timed out"))?
        .with_context(|| format!("{method} {url}"))
}

/// application/x-www-form-urlencoded.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
