//! OIDC session cost: requests that carry a valid session cookie through a `login = "oidc"` route,
//! against requests through the workload-certificate route (`login = "none"`, a SPIFFE rule) of
//! the same Vigil process, on the same upstream, from the same client certificate, in the same
//! run. The difference is what opening the session costs on every request: reading the sealed
//! cookie, opening it, checking it against the connection's certificate, and the identity headers.
//!
//! The real test provider (`tests/idp/server.mjs`) runs on loopback; one login (alice) through it
//! gives the session cookie. `[verify] interval` is an hour, so no request in the run talks to the
//! provider. Vigil runs twice: with `[assertion]` (a signed JWT upstream on every request, both
//! routes) and without, which shows what signing the assertion costs.

use super::idp::{ALICE, Idp, IdpOptions, PASSWORD, login_flow};
use super::{SessionCookie, admin_call, free_addr, instance_dir, set_cookies, wait_readyz};
use crate::{
    Ctx, Endpoint, Proxy, Row, Scenario, Target, connect, opt, print_table, ratio, row_json,
    spawn_vigil, timeout, vigil_base_config, workload_route,
};
use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use http::header::{ACCEPT, COOKIE, HOST, LOCATION, USER_AGENT};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENT_SECRET: &str = "vigil-bench-secret";
/// The workload route's path prefix and the path the load asks for there.
const WORKLOAD_PATH: &str = "/svc/bench";
/// The OIDC route's.
const OIDC_PATH: &str = "/app/bench";

/// What the scenario measured.
pub struct OidcReport {
    /// `[assertion]` on, then off.
    pub runs: Vec<OidcRun>,
}

/// One Vigil configuration: keep-alive and latency, each with a `workload` and an `oidc` row.
pub struct OidcRun {
    pub assertion: bool,
    pub keep_alive: Vec<Row>,
    pub latency: Vec<Row>,
    /// How long the login took (redirect, provider login form, callback).
    pub login: Duration,
    /// Responses that re-sealed the session cookie (Vigil does so at most once a minute).
    pub cookie_updates: u64,
}

impl OidcRun {
    fn label(&self) -> &'static str {
        label(self.assertion)
    }

    fn cpu(&self, rows: &[Row], target: &str) -> Option<f64> {
        rows.iter()
            .find(|r| r.target == target)
            .and_then(|r| r.proxy_cpu_ns)
    }

    fn row<'a>(rows: &'a [Row], target: &str) -> Option<&'a Row> {
        rows.iter().find(|r| r.target == target)
    }

    /// oidc/workload proxy CPU per keep-alive request.
    fn keep_alive_cpu_ratio(&self) -> Option<f64> {
        ratio(
            self.cpu(&self.keep_alive, "oidc"),
            self.cpu(&self.keep_alive, "workload"),
        )
    }

    fn latency_ratio(&self, pick: fn(&Row) -> Option<f64>) -> Option<f64> {
        ratio(
            Self::row(&self.latency, "oidc").and_then(pick),
            Self::row(&self.latency, "workload").and_then(pick),
        )
    }
}

impl OidcReport {
    pub fn errors(&self) -> u64 {
        self.runs
            .iter()
            .flat_map(|r| r.keep_alive.iter().chain(&r.latency))
            .map(|r| r.errors)
            .sum()
    }

    fn run(&self, assertion: bool) -> Option<&OidcRun> {
        self.runs.iter().find(|r| r.assertion == assertion)
    }

    /// Assertion on / off, proxy CPU per keep-alive request, for one route.
    fn assertion_ratio(&self, target: &str) -> Option<f64> {
        let (on, off) = (self.run(true)?, self.run(false)?);
        ratio(
            on.cpu(&on.keep_alive, target),
            off.cpu(&off.keep_alive, target),
        )
    }

    /// µs of proxy CPU per keep-alive request the assertion adds, for one route.
    fn assertion_cost_us(&self, target: &str) -> Option<f64> {
        let (on, off) = (self.run(true)?, self.run(false)?);
        Some((on.cpu(&on.keep_alive, target)? - off.cpu(&off.keep_alive, target)?) / 1000.0)
    }

    pub fn print_summary(&self) {
        println!("\n== summary: OIDC session cost (oidc route / workload route, same process) ==");
        for run in &self.runs {
            let session_us = run
                .cpu(&run.keep_alive, "oidc")
                .zip(run.cpu(&run.keep_alive, "workload"))
                .map(|(o, w)| (o - w) / 1000.0);
            println!(
                "{:<16} CPU per keep-alive request {:>5}x ({} µs more)   latency p50 {}x   p99 {}x",
                run.label(),
                opt(run.keep_alive_cpu_ratio(), 2),
                opt(session_us, 1),
                opt(run.latency_ratio(|r| r.p50_us), 2),
                opt(run.latency_ratio(|r| r.p99_us), 2),
            );
        }
        if self.run(true).is_some() && self.run(false).is_some() {
            println!(
                "assertion on/off CPU per keep-alive request: workload {}x ({} µs),   oidc {}x ({} µs)",
                opt(self.assertion_ratio("workload"), 2),
                opt(self.assertion_cost_us("workload"), 1),
                opt(self.assertion_ratio("oidc"), 2),
                opt(self.assertion_cost_us("oidc"), 1),
            );
        }
    }

    pub fn json(&self) -> Value {
        let runs: Vec<Value> = self
            .runs
            .iter()
            .map(|run| {
                json!({
                    "assertion": run.assertion,
                    "keep_alive": run.keep_alive.iter().map(row_json).collect::<Vec<_>>(),
                    "latency": run.latency.iter().map(row_json).collect::<Vec<_>>(),
                    "login_seconds": run.login.as_secs_f64(),
                    "session_cookie_updates": run.cookie_updates,
                    "ratios_oidc_to_workload": {
                        "cpu_per_keep_alive_request": run.keep_alive_cpu_ratio(),
                        "latency_p50": run.latency_ratio(|r| r.p50_us),
                        "latency_p99": run.latency_ratio(|r| r.p99_us),
                    },
                })
            })
            .collect();
        json!({
            "description": "requests with a valid session cookie through a login = \"oidc\" route \
                            (groups rule) against the login = \"none\" workload route (SPIFFE \
                            rule) of the same Vigil process, same upstream and client certificate; \
                            [verify] interval 1h (no provider calls during the run)",
            "runs": runs,
            "ratios_assertion_on_to_off": {
                "cpu_per_keep_alive_request_workload": self.assertion_ratio("workload"),
                "cpu_per_keep_alive_request_oidc": self.assertion_ratio("oidc"),
            },
            "assertion_cost_us_per_request": {
                "workload": self.assertion_cost_us("workload"),
                "oidc": self.assertion_cost_us("oidc"),
            },
        })
    }
}

/// Whether `run` failed because Node.js is not there (the scenario is then skipped, not failed).
pub fn is_missing_node(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.to_string().contains(NO_NODE))
}

const NO_NODE: &str = "Node.js (node) is not installed";

pub async fn run(ctx: &Ctx<'_>) -> Result<OidcReport> {
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok {
        bail!("{NO_NODE}; the test provider in tests/idp needs it (scripts/bench installs it)");
    }
    let dir = instance_dir(ctx.dir, "oidc")?;
    std::fs::write(dir.join("oidc.secret"), format!("{CLIENT_SECRET}\n"))
        .context("writing oidc.secret")?;
    // The keys as an operator makes them.
    for (kind, file) in [("session", "session.keys"), ("assertion", "assertion.pem")] {
        let out = Command::new(ctx.vigil_bin)
            .args(["keys", kind])
            .arg(dir.join(file))
            .output()
            .with_context(|| format!("running vigil keys {kind}"))?;
        if !out.status.success() {
            bail!(
                "vigil keys {kind} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }

    let with = (free_addr()?, free_addr()?);
    let without = (free_addr()?, free_addr()?);
    let callback = |addr: SocketAddr| format!("https://localhost:{}/.vigil/callback", addr.port());
    let idp = Idp::start(IdpOptions {
        redirect_uris: vec![callback(with.0), callback(without.0)],
        ..IdpOptions::new(CLIENT_SECRET, &callback(with.0))
    })
    .await
    .context("starting the test OpenID Provider (tests/idp)")?;
    println!("\nOpenID Provider: {} (tests/idp/server.mjs)", idp.issuer);

    let mut runs = Vec::new();
    for (assertion, (addr, admin)) in [(true, with), (false, without)] {
        runs.push(one_config(ctx, &dir, &idp, assertion, addr, admin).await?);
    }
    Ok(OidcReport { runs })
}

fn config(
    addr: SocketAddr,
    admin: SocketAddr,
    decisions: &Path,
    issuer: &str,
    upstream: SocketAddr,
    assertion: bool,
) -> String {
    let assertion = if assertion {
        "\n[assertion]\nkeys_file = \"assertion.pem\"\n"
    } else {
        ""
    };
    let mut text = vigil_base_config(addr, Some(admin), decisions);
    text.push_str(&format!(
        r#"
[oidc]
issuer = "{issuer}"
client_id = "vigil"
client_secret_file = "oidc.secret"

[session]
keys_file = "session.keys"
{assertion}
# No re-verification with the provider during the run.
[verify]
interval = "1h"
"#
    ));
    text.push_str(&workload_route(
        "workload",
        "localhost",
        Some("/svc"),
        upstream,
    ));
    text.push_str(&format!(
        r#"
[[route]]
name = "app"
host = "localhost"
path = "/app"
upstream = "http://{upstream}"
login = "oidc"
allow = [{{ groups = ["engineering"] }}]
"#
    ));
    text
}

async fn one_config(
    ctx: &Ctx<'_>,
    dir: &Path,
    idp: &Idp,
    assertion: bool,
    addr: SocketAddr,
    admin: SocketAddr,
) -> Result<OidcRun> {
    let name: &'static str = if assertion {
        "vigil-oidc"
    } else {
        "vigil-oidc-no-assertion"
    };
    let decisions = crate::logs_dir(ctx.dir)?.join(format!("{name}-decisions.log"));
    let path = dir.join(format!("{name}.toml"));
    let text = config(
        addr,
        admin,
        &decisions,
        &idp.issuer,
        ctx.upstream,
        assertion,
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;

    let workload = Endpoint {
        path: WORKLOAD_PATH,
        ..Endpoint::new(addr, Some(ctx.tls.clone()))
    };
    let proxy = spawn_vigil(ctx.vigil_bin, name, &path, workload.clone(), ctx.pinned).await?;
    wait_readyz(admin)
        .await
        .context("waiting for provider discovery")?;

    let t0 = Instant::now();
    let cookie = Arc::new(
        login(&workload, addr)
            .await
            .with_context(|| format!("signing {ALICE} in through {name}"))?,
    );
    let login_time = t0.elapsed();
    let oidc = Endpoint {
        path: OIDC_PATH,
        cookie: Some(cookie.clone()),
        ..Endpoint::new(addr, Some(ctx.tls.clone()))
    };
    // The cookie works before anything is measured.
    let (mut conn, _) = timeout(crate::CONNECT_TIMEOUT, connect(&oidc)).await?;
    timeout(crate::REQUEST_TIMEOUT, crate::request(&oidc, &mut conn))
        .await
        .context("a request with the fresh session cookie")?;
    conn.close().await;
    let (_, body) = admin_call(admin, "GET", "/readyz").await?;
    let ready: Value = serde_json::from_slice(&body).unwrap_or_default();
    if ready["identity_provider"]["ready"] != json!(true) {
        bail!("the provider is not ready after the login: {ready}");
    }
    println!(
        "{name}: {ALICE} signed in in {:.0} ms; session cookie {} bytes",
        login_time.as_secs_f64() * 1000.0,
        cookie.header().len()
    );

    let targets = [
        Target {
            name: "workload",
            ep: workload,
            proxy: Some(&proxy),
        },
        Target {
            name: "oidc",
            ep: oidc,
            proxy: Some(&proxy),
        },
    ];
    let label = label(assertion);
    let keep_alive = measure(ctx, &targets, Scenario::KeepAlive(ctx.args.connections)).await?;
    print_table(
        &format!(
            "oidc session, {label}: {}",
            Scenario::KeepAlive(ctx.args.connections).title()
        ),
        &keep_alive,
        ("oidc", "workload"),
    );
    let latency = measure(ctx, &targets, Scenario::Latency).await?;
    print_table(
        &format!("oidc session, {label}: {}", Scenario::Latency.title()),
        &latency,
        ("oidc", "workload"),
    );
    check_alive(&proxy, name)?;
    Ok(OidcRun {
        assertion,
        keep_alive,
        latency,
        login: login_time,
        cookie_updates: cookie.updates(),
    })
}

fn label(assertion: bool) -> &'static str {
    if assertion {
        "[assertion] on"
    } else {
        "[assertion] off"
    }
}

async fn measure(ctx: &Ctx<'_>, targets: &[Target<'_>], scenario: Scenario) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for t in targets {
        eprintln!("... oidc session: {}: {}", scenario.key(), t.name);
        rows.push(
            ctx.bench
                .scenario(t, scenario, ctx.warmup, ctx.measure)
                .await?,
        );
    }
    Ok(rows)
}

fn check_alive(proxy: &Proxy, name: &str) -> Result<()> {
    match proxy.exited() {
        Some(msg) => Err(anyhow!("{name} {msg} during the run")),
        None => Ok(()),
    }
}

/// One response of a browser-like GET (`Accept: text/html`) over `ep`'s TLS: status, headers.
async fn browse(
    ep: &Endpoint,
    host: &str,
    target: &str,
    cookie: Option<&str>,
) -> Result<(StatusCode, HeaderMap, Bytes)> {
    let (mut conn, _) = timeout(crate::CONNECT_TIMEOUT, connect(ep)).await?;
    let mut req = Request::get(target)
        .header(HOST, host)
        .header(ACCEPT, "text/html")
        .header(USER_AGENT, "vigil-bench");
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    let req = req.body(Empty::<Bytes>::new())?;
    let exchange = async {
        conn.sender.ready().await?;
        let response = conn.sender.send_request(req).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        anyhow::Ok((parts.status, parts.headers, body))
    };
    let answer = timeout(crate::REQUEST_TIMEOUT, exchange)
        .await
        .with_context(|| format!("GET {target}"))?;
    conn.close().await;
    Ok(answer)
}

/// Signs alice in as a browser on the load generator's certificate would: the OIDC route
/// redirects to the provider, the provider's login form is filled in, and Vigil's callback sets
/// the session cookie, bound to that certificate.
async fn login(ep: &Endpoint, addr: SocketAddr) -> Result<SessionCookie> {
    let host = format!("localhost:{}", addr.port());
    let (status, headers, body) = browse(ep, &host, "/app/", None).await?;
    if status != StatusCode::FOUND {
        bail!(
            "GET /app/ without a session: expected 302 to the provider, got {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    let authorize = header_text(&headers, LOCATION).context("302 without Location")?;
    let login_cookie = set_cookies(&headers)
        .into_iter()
        .filter(|(_, _, deletes)| !deletes)
        .map(|(n, v, _)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let back = login_flow(&authorize, ALICE, PASSWORD)
        .await
        .context("the provider's login")?;
    let prefix = format!("https://{host}");
    let target = back
        .strip_prefix(&prefix)
        .with_context(|| format!("the provider sent the browser elsewhere: {back}"))?;
    let (status, headers, body) = browse(ep, &host, target, Some(&login_cookie)).await?;
    if status != StatusCode::SEE_OTHER {
        bail!(
            "the callback answered {status}, not 303: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    SessionCookie::from_login(&headers)
}

fn header_text(headers: &HeaderMap, name: http::header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
