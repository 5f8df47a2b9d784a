//! A real browser: Debian's `chromium`, driven by npm `playwright-core` (`tests/browser/login.mjs`),
//! presents a device certificate to Vigil, signs in at the real OpenID Provider's form, lands on
//! the upstream page showing who it is, is refused a `mfa = true` route with a readable page,
//! and logs out through Vigil and the provider.
//!
//! Needs `/usr/bin/chromium` (`scripts/test` installs it with `apt-get install -y chromium`) and
//! Node.js; `npm ci` runs in `tests/browser` once per lock file.

mod support;

use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};
use support::idp::{ALICE, BOB, Idp, IdpOptions, PASSWORD};
use support::*;
use vigil::identity::seal::KeyRing;

const CHROMIUM: &str = "/usr/bin/chromium";
const SECRET: &str = "vigil-test-secret";
/// The whole browser run; `login.mjs` has its own, shorter watchdog.
const BROWSER_RUN: Duration = Duration::from_secs(90);
/// How long `npm ci` (or waiting for another process's `npm ci`) may take.
const INSTALL: Duration = Duration::from_secs(300);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("browser")
}

/// Vigil with an OIDC login in front of the echo upstream, a real provider, and the files the
/// browser needs (device certificates, the CA).
struct World {
    pki: Pki,
    idp: Idp,
    port: u16,
    _running: vigil::Running,
    _upstream: tokio_util::sync::CancellationToken,
}

async fn free_port() -> Result<u16> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?.port())
}

async fn world() -> Result<World> {
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
    let idp = Idp::start(IdpOptions {
        post_logout_redirect_uris: vec![format!("https://localhost:{port}/.vigil/logged-out")],
        ..IdpOptions::new(SECRET, &format!("https://localhost:{port}/.vigil/callback"))
    })
    .await?;
    let (upstream, stop) = echo_upstream().await?;
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"

[tls]
cert = "server.pem"
key = "server.key"
client_ca = ["ca.pem"]

[admin]
listen = "127.0.0.1:0"

[log]
decisions = "{decisions}"

[oidc]
issuer = "{issuer}"
client_id = "vigil"
client_secret_file = "oidc.secret"
scopes = ["openid", "email", "profile"]

[session]
keys_file = "session.keys"

[assertion]
keys_file = "assertion.pem"
issuer = "https://vigil.test"

[[route]]
name = "app"
host = "localhost"
upstream = "http://{upstream}"
login = "oidc"
allow = [{{ groups = ["engineering", "sales"] }}]

[[route]]
name = "admin"
host = "localhost"
path = "/admin"
upstream = "http://{upstream}"
login = "oidc"
allow = [{{ groups = ["admins", "sales"], mfa = true }}]
"#,
        decisions = pki.path("decisions.log").display(),
        issuer = idp.issuer,
    );
    std::fs::write(pki.path("vigil.toml"), config)?;
    let running = vigil::start_file(&pki.path("vigil.toml")).await?;
    let ready = eventually(Duration::from_secs(20), || async {
        admin(&running, "GET", "/readyz")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    anyhow::ensure!(ready, "Vigil never became ready (provider discovery)");
    Ok(World {
        pki,
        idp,
        port,
        _running: running,
        _upstream: stop,
    })
}

impl World {
    /// Writes a device certificate for `user`'s laptop and returns the user's entry of the
    /// browser's configuration.
    fn person(&self, user: &str) -> Result<serde_json::Value> {
        let device = self.pki.device(&format!("{user}-laptop"))?;
        let cert = self.pki.path(&format!("{user}-laptop.pem"));
        let key = self.pki.path(&format!("{user}-laptop.key"));
        std::fs::write(&cert, &device.cert_pem)?;
        std::fs::write(&key, &device.key_pem)?;
        Ok(serde_json::json!({
            "user": user,
            "password": PASSWORD,
            "email": format!("{user}@example.com"),
            "cert": cert,
            "key": key,
        }))
    }

    /// The JSON file `login.mjs` reads.
    fn browser_config(&self) -> Result<PathBuf> {
        let config = serde_json::json!({
            "base_url": format!("https://localhost:{}", self.port),
            "issuer": self.idp.issuer,
            "chromium": CHROMIUM,
            "ca": self.pki.path("ca.pem"),
            "no_mfa": self.person(BOB)?,
            "mfa": self.person(ALICE)?,
        });
        let path = self.pki.path("browser.json");
        std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
        Ok(path)
    }
}

/// Runs `node tests/browser/login.mjs CONFIG` with the test CA trusted by Node; returns its exit
/// status (None: killed after [`BROWSER_RUN`]) and everything it printed.
async fn run_browser(config: &Path, ca: &Path, log: &Path) -> Result<(Option<i32>, String)> {
    let out = std::fs::File::create(log)?;
    let mut child = Command::new("node")
        .arg(browser_dir().join("login.mjs"))
        .arg(config)
        .env("NODE_EXTRA_CA_CERTS", ca)
        .current_dir(browser_dir())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("spawning `node tests/browser/login.mjs` (is Node.js installed?)")?;
    // Polled, not waited on: Vigil and the provider's client run on this test's runtime.
    let deadline = Instant::now() + BROWSER_RUN;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok((status, std::fs::read_to_string(log).unwrap_or_default()))
}

/// Runs `npm ci` in `dir` unless `node_modules` was installed from the current lock file
/// (a marker holds a copy of it). A directory made with `create_dir` is the lock between test
/// processes; one older than [`INSTALL`] was left by a dead process.
fn ensure_installed(dir: &Path) -> Result<()> {
    let lock_file =
        std::fs::read(dir.join("package-lock.json")).context("tests/browser/package-lock.json")?;
    let marker = dir.join("node_modules").join(".vigil-installed-lock.json");
    let installed = || std::fs::read(&marker).is_ok_and(|m| m == lock_file);
    let lock = dir.join(".npm-ci.lock");
    let deadline = Instant::now() + INSTALL;
    loop {
        if installed() {
            return Ok(());
        }
        match std::fs::create_dir(&lock) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let stale = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age > INSTALL);
                if stale {
                    let _ = std::fs::remove_dir(&lock);
                } else if Instant::now() > deadline {
                    bail!(
                        "waited {INSTALL:?} for another `npm ci` ({})",
                        lock.display()
                    );
                } else {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", lock.display())),
        }
    }
    let result = (|| {
        if installed() {
            return Ok(());
        }
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .context("running `npm ci` in tests/browser (is npm installed?)")?;
        if !out.status.success() {
            bail!(
                "`npm ci` in tests/browser failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::write(&marker, &lock_file).with_context(|| format!("writing {}", marker.display()))
    })();
    let _ = std::fs::remove_dir(&lock);
    result
}

#[tokio::test]
async fn a_real_browser_logs_in_is_refused_without_mfa_and_logs_out() -> Result<()> {
    let started = Instant::now();
    anyhow::ensure!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: this test drives Debian's chromium. `scripts/test` installs it \
         (`apt-get install -y chromium`); run that, or install it by hand."
    );
    tokio::task::spawn_blocking(|| ensure_installed(&browser_dir()))
        .await
        .context("npm ci task")??;

    let w = world().await?;
    let config = w.browser_config()?;
    let (status, output) =
        run_browser(&config, &w.pki.path("ca.pem"), &w.pki.path("browser.log")).await?;
    match status {
        Some(0) => eprintln!("{output}"),
        Some(code) => bail!(
            "the browser test failed (exit {code}):\n{output}\n[idp stderr]\n{}",
            w.idp.stderr_tail()
        ),
        None => bail!("the browser test was killed after {BROWSER_RUN:?}:\n{output}"),
    }
    eprintln!("browser test took {:.1?} in all", started.elapsed());
    Ok(())
}
