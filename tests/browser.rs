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
use std::time::{Duration, Instant};
use support::idp::{ALICE, BOB, PASSWORD, ensure_installed};
use support::world::{World, world};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run; `login.mjs` has its own, shorter watchdog.
const BROWSER_RUN: Duration = Duration::from_secs(90);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("browser")
}

/// Writes a device certificate for `user`'s laptop and returns the user's entry of the
/// browser's configuration.
fn person(w: &World, user: &str) -> Result<serde_json::Value> {
    {
        let device = w.pki.device(&format!("{user}-laptop"))?;
        let cert = w.pki.path(&format!("{user}-laptop.pem"));
        let key = w.pki.path(&format!("{user}-laptop.key"));
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
}

/// The JSON file `login.mjs` reads.
fn browser_config(w: &World) -> Result<PathBuf> {
    let config = serde_json::json!({
        "base_url": format!("https://localhost:{}", w.port),
        "issuer": w.idp.issuer,
        "chromium": CHROMIUM,
        "ca": w.pki.path("ca.pem"),
        "no_mfa": person(w, BOB)?,
        "mfa": person(w, ALICE)?,
    });
    let path = w.pki.path("browser.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
    Ok(path)
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
    let config = browser_config(&w)?;
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
