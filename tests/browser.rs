//! A real browser: Debian's `chromium`, driven by npm `playwright-core` (`tests/browser/login.mjs`),
//! presents a device certificate to Vigil, signs in at the real OpenID Provider's form, lands on
//! the upstream page showing who it is, is refused a `mfa = true` route with a readable page,
//! and logs out through Vigil and the provider.
//!
//! `tests/browser/access.mjs` does the same for just-in-time access: bob asks, alice approves,
//! the grant expires (see `a_person_asks_for_access_an_approver_grants_it_and_it_ends_by_itself`).
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

/// Runs `node tests/browser/SCRIPT CONFIG` with the test CA trusted by Node; returns its exit
/// status (None: killed after [`BROWSER_RUN`]) and everything it printed.
async fn run_browser(
    script: &str,
    config: &Path,
    ca: &Path,
    log: &Path,
) -> Result<(Option<i32>, String)> {
    let out = std::fs::File::create(log)?;
    let mut child = Command::new("node")
        .arg(browser_dir().join(script))
        .arg(config)
        .env("NODE_EXTRA_CA_CERTS", ca)
        .current_dir(browser_dir())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| {
            format!("spawning `node tests/browser/{script}` (is Node.js installed?)")
        })?;
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
    let (status, output) = run_browser(
        "login.mjs",
        &config,
        &w.pki.path("ca.pem"),
        &w.pki.path("browser.log"),
    )
    .await?;
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

/// Routes granting just-in-time access: `/db` to people with a grant (approved by admins), and
/// `/vault` likewise; a grant lasts at most 12 s, so the test sees it expire.
const ACCESS_ROUTES: &str = r#"
[[route]]
name = "db"
host = "localhost"
path = "/db"
upstream = "http://PAGES_UPSTREAM"
login = "oidc"
upgrades = ["websocket"]
allow = [{ grant = true }]
grants = { max = "12s", approvers = { groups = ["admins"] } }

[[route]]
name = "vault"
host = "localhost"
path = "/vault"
upstream = "http://PAGES_UPSTREAM"
login = "oidc"
allow = [{ grant = true }]
grants = { max = "1h", approvers = { groups = ["admins"] } }
"#;

#[tokio::test]
async fn a_person_asks_for_access_an_approver_grants_it_and_it_ends_by_itself() -> Result<()> {
    anyhow::ensure!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: `scripts/test` installs it (`apt-get install -y chromium`)"
    );
    tokio::task::spawn_blocking(|| ensure_installed(&browser_dir()))
        .await
        .context("npm ci task")??;
    let w = support::world::world_full("", false, "", ACCESS_ROUTES).await?;
    let config = serde_json::json!({
        "base_url": format!("https://localhost:{}", w.port),
        "issuer": w.idp.issuer,
        "chromium": CHROMIUM,
        "requester": person(&w, BOB)?,
        "approver": person(&w, ALICE)?,
    });
    let path = w.pki.path("access.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
    let (status, output) = run_browser(
        "access.mjs",
        &path,
        &w.pki.path("ca.pem"),
        &w.pki.path("access.log"),
    )
    .await?;
    match status {
        Some(0) => eprintln!("{output}"),
        Some(code) => bail!(
            "the access browser test failed (exit {code}):\n{output}\n[idp stderr]\n{}",
            w.idp.stderr_tail()
        ),
        None => bail!("the access browser test was killed after {BROWSER_RUN:?}:\n{output}"),
    }
    // What the log says: the events of the grant's life, and the allow that rested on it.
    let log = std::fs::read_to_string(&w.decisions)?;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let events: Vec<&str> = lines
        .iter()
        .filter(|l| l["kind"] == "access")
        .filter_map(|l| l["event"].as_str())
        .collect();
    for event in ["access_requested", "access_approved", "grant_expired"] {
        anyhow::ensure!(events.contains(&event), "no {event} event in {events:?}");
    }
    let approved = lines
        .iter()
        .find(|l| l["event"] == "access_approved")
        .context("approval")?;
    anyhow::ensure!(approved["actor"] == "alice@example.com", "{approved}");
    let grant = approved["grant"]["id"].as_str().context("grant id")?;
    anyhow::ensure!(
        approved["grant"]["subject"]["user"].is_string(),
        "{approved}"
    );
    let rested = lines.iter().any(|l| {
        l["kind"] == "decision"
            && l["grant"] == grant
            && l["codes"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c == "allowed_by_grant"))
    });
    anyhow::ensure!(rested, "no decision line rests on grant {grant}");
    let refused_own = lines.iter().any(|l| {
        l["codes"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "access_action_refused"))
            && l["reasons"].to_string().contains("own access request")
    });
    anyhow::ensure!(refused_own, "the self-approval is not in the log");
    let metrics = support::admin(&w.running, "GET", "/metrics").await?.body;
    anyhow::ensure!(
        metrics.contains("vigil_connections_cut_total{reason=\"grant_ended\"} 1")
            || metrics.contains("vigil_connections_cut_total{reason=\"grant_ended\"} 2"),
        "no connection cut for the ended grant:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("cut"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}
