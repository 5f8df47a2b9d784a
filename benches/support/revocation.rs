//! Revocation: how long a revoked person keeps being served, and what re-verifying live sessions
//! with the provider costs.
//!
//! **Latency.** For `[verify] interval` 1 s and 10 s, a Vigil instance of its own with one
//! `login = "oidc"` route; alice signs in [`SESSIONS`] times through the test provider (each
//! login a distinct session), the logins staggered over one interval so the sessions sit at
//! different points of their verification cycle. Each session has its own keep-alive TLS
//! connection and sends `GET /` every [`PERIOD`], taking in the cookie Vigil re-seals on every
//! refresh. A little more than one interval after the last login, alice is disabled at the
//! provider (T0); each session's latency is the time from T0 to its first refused response (401:
//! the requests are not browser navigations). Vigil re-verifies a session on the first request
//! after `verified_at + interval`, in whole Unix seconds, so at 1 s every session is re-verified
//! on its first request of each new second, whatever its login time.
//!
//! One more round does the same for an operator's revocation: the same sealed sessions, on an
//! instance with `interval = "1h"` (nothing but the revocation can refuse them), and
//! `POST /revoke {"user":"alice"}` to its admin listener at T0. Vigil's own
//! `vigil_revocation_cutoff_seconds` histogram counts connections cut off (revoked devices, CRLs,
//! tunnels); a user revocation refuses the next request and cuts no keep-alive connection, so
//! the histogram is read and shown next to the measured figure.
//!
//! **Cost.** [`MINTED`] live sessions without as many logins: one real login, its cookie opened
//! with the session key ring from the instance's keys file, then cloned with a new random `sid`,
//! `verified_at` spread at random over one verification interval and `last_seen` now, and sealed
//! again with `session::write`. They all carry alice's one refresh token (the provider does not
//! rotate refresh tokens unless told to; a preflight checks that concurrent refreshes with it
//! succeed). The keep-alive scenario cycles through the cookies round-robin, once with
//! re-verification on (`interval` [`VERIFY_ON`]) and once off (`interval = "24h"`), on two
//! instances sharing the keys file. A refresh shows as a response that re-seals the cookie.

use super::idp::{ALICE, Idp, IdpOptions, PASSWORD, login_flow};
use super::{
    SESSION_COOKIE, SessionCookie, admin_call, free_addr, instance_dir, percentile_ms, set_cookies,
    wait_readyz,
};
use crate::{
    BODY_LEN, CONNECT_TIMEOUT, Conn, Cpu, Ctx, Endpoint, Proxy, REQUEST_TIMEOUT, Row, Tally,
    Target, connect, cpu_delta, opt, print_table, ratio, read_cpu, row_json, spawn_vigil, timeout,
    vigil_base_config, workload_route,
};
use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, COOKIE, HOST, LOCATION, USER_AGENT};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_rustls::TlsConnector;
use vigil::identity::oidc::random_token;
use vigil::identity::seal::{KeyRing, Purpose};
use vigil::identity::session::{self, Session};

const CLIENT_SECRET: &str = "vigil-bench-secret";
/// Signed-in sessions in the latency rounds.
const SESSIONS: usize = 50;
/// How often each session sends a request.
const PERIOD: Duration = Duration::from_millis(20);
/// The `[verify] interval`s of the latency rounds, in seconds.
const INTERVALS: [u64; 2] = [1, 10];
/// `[verify] max_stale` everywhere: an unreachable provider refuses sessions soon.
const MAX_STALE: &str = "1s";
/// How long after the order a session may still be served before it counts as never refused,
/// beyond one interval.
const GRACE: Duration = Duration::from_secs(5);
/// Live sessions in the cost scenario.
const MINTED: usize = 10_000;
/// `[verify] interval` with re-verification on, in seconds (the off run uses 24 h).
const VERIFY_ON: u64 = 30;
/// Sessions due for verification refreshed at once before the cost runs.
const PREFLIGHT: usize = 20;
/// The readiness route's path prefix and probe path; the login route is everything else.
const READY_PATH: &str = "/svc/ready";

/// What the scenario measured.
pub struct RevocationReport {
    /// The provider rounds (1 s, 10 s), then the admin round.
    pub rounds: Vec<LatencyRound>,
    pub cost: CostReport,
}

/// One revocation order against [`SESSIONS`] live sessions.
pub struct LatencyRound {
    /// `provider` (alice disabled at the provider) or `admin` (`POST /revoke`).
    pub kind: &'static str,
    /// `[verify] interval` of the instance.
    pub interval: Duration,
    pub sessions: usize,
    /// T0 to the first refused response, per refused session, sorted.
    pub latencies_ns: Vec<u64>,
    /// Refusals by status (401, 302).
    pub statuses: Vec<(u16, usize)>,
    /// Sessions still served [`GRACE`] after one interval past T0.
    pub not_refused: usize,
    /// Sessions refused before T0 (something else went wrong).
    pub early: usize,
    /// Sessions whose cookie Vigil re-sealed (a refresh) before T0.
    pub refreshed_before: usize,
    /// Failed requests and connections other than the refusals.
    pub errors: u64,
    pub messages: Vec<String>,
    pub requests: u64,
    /// How long the order itself took (the provider's admin hook, or `POST /revoke`).
    pub order: Duration,
    /// How far into its Unix second T0 fell.
    pub t0_subsec: Duration,
    /// All the round's logins (none for the admin round).
    pub logins: Duration,
    /// `vigil_revocation_cutoff_seconds` count and sum after the round (admin round only).
    pub cutoff_metric: Option<(f64, f64)>,
}

impl LatencyRound {
    fn ms(&self, p: f64) -> Option<f64> {
        percentile_ms(&self.latencies_ns, p)
    }

    fn failures(&self) -> u64 {
        self.errors + self.not_refused as u64 + self.early as u64
    }

    fn label(&self) -> String {
        match self.kind {
            "admin" => "POST /revoke {\"user\":\"alice\"}".into(),
            _ => "alice disabled at the provider".into(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "order": self.kind,
            "description": self.label(),
            "verify_interval_s": self.interval.as_secs_f64(),
            "sessions": self.sessions,
            "refused": self.latencies_ns.len(),
            "refusal_statuses": self.statuses.iter().map(|(s, n)| json!({"status": s, "count": n})).collect::<Vec<_>>(),
            "not_refused": self.not_refused,
            "refused_before_order": self.early,
            "latency_ms": {
                "min": self.ms(0.0),
                "p50": self.ms(50.0),
                "p90": self.ms(90.0),
                "p99": self.ms(99.0),
                "max": self.ms(100.0),
                "all": self.latencies_ns.iter().map(|ns| *ns as f64 / 1e6).collect::<Vec<_>>(),
            },
            "sessions_reverified_before_order": self.refreshed_before,
            "requests": self.requests,
            "errors": self.errors,
            "error_messages": self.messages,
            "order_ms": self.order.as_secs_f64() * 1000.0,
            "t0_ms_into_unix_second": self.t0_subsec.as_secs_f64() * 1000.0,
            "logins_seconds": self.logins.as_secs_f64(),
            "vigil_revocation_cutoff_seconds": self.cutoff_metric.map(|(count, sum)| json!({"count": count, "sum": sum})),
        })
    }
}

/// The keep-alive scenario over [`MINTED`] sessions, re-verification on and off.
pub struct CostReport {
    pub sessions: usize,
    pub connections: usize,
    /// The keep-alive rows, `on` then `off`.
    pub rows: Vec<Row>,
    /// What else each run counted, in the same order.
    pub runs: Vec<CostRun>,
    /// Concurrent refreshes with the shared refresh token before the runs: succeeded, tried.
    pub preflight: (usize, usize),
    pub preflight_messages: Vec<String>,
    /// Time to mint (open, clone, seal) the sessions of one run.
    pub mint: Duration,
}

pub struct CostRun {
    pub target: &'static str,
    pub interval: Duration,
    /// The measured time.
    pub wall: Duration,
    /// Responses that re-sealed a session (one per refresh with the provider).
    pub refreshes: u64,
    /// Responses refusing a session (a failed or impossible refresh).
    pub refused: u64,
    /// Latency of the requests that carried a refresh, sorted.
    pub refresh_ns: Vec<u64>,
    /// The provider's CPU time during the measured time, when its process was found.
    pub idp_cpu_ns: Option<u64>,
}

impl CostRun {
    fn refresh_rate(&self) -> f64 {
        self.refreshes as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn idp_us_per_refresh(&self) -> Option<f64> {
        let ns = self.idp_cpu_ns?;
        (self.refreshes > 0).then(|| ns as f64 / self.refreshes as f64 / 1000.0)
    }

    fn idp_busy(&self) -> Option<f64> {
        self.idp_cpu_ns
            .map(|ns| ns as f64 / self.wall.as_nanos().max(1) as f64)
    }

    fn line(&self) -> String {
        format!(
            "{:<4} interval {:>6}: {} refreshes ({:.0}/s), {} refused; requests that refreshed: \
             p50 {} ms, p99 {} ms; provider CPU {} ({} µs per refresh)",
            self.target,
            human(self.interval),
            self.refreshes,
            self.refresh_rate(),
            self.refused,
            opt(percentile_ms(&self.refresh_ns, 50.0), 1),
            opt(percentile_ms(&self.refresh_ns, 99.0), 1),
            self.idp_busy()
                .map_or_else(|| "-".into(), |b| format!("{:.0}%", b * 100.0)),
            opt(self.idp_us_per_refresh(), 0),
        )
    }
}

impl CostReport {
    fn run(&self, target: &str) -> Option<&CostRun> {
        self.runs.iter().find(|r| r.target == target)
    }

    fn row(&self, target: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.target == target)
    }

    fn ratio_of(&self, pick: fn(&Row) -> Option<f64>) -> Option<f64> {
        ratio(
            self.row("on").and_then(pick),
            self.row("off").and_then(pick),
        )
    }

    fn errors(&self) -> u64 {
        self.rows.iter().map(|r| r.errors).sum::<u64>()
            + (self.preflight.1 - self.preflight.0) as u64
    }

    fn title(&self) -> String {
        format!(
            "re-verification cost: {} live sessions (one refresh token), {} keep-alive \
             connections, each request the next session round-robin; `on` re-verifies every {}, \
             `off` every 24h",
            self.sessions,
            self.connections,
            human(Duration::from_secs(VERIFY_ON))
        )
    }

    fn print(&self) {
        print_table(&self.title(), &self.rows, ("on", "off"));
        for run in &self.runs {
            println!("{}", run.line());
        }
        println!(
            "preflight: {}/{} concurrent refreshes with the shared refresh token succeeded; \
             sessions minted in {:.0} ms per run",
            self.preflight.0,
            self.preflight.1,
            self.mint.as_secs_f64() * 1000.0
        );
        println!(
            "(a refresh shows as a re-sealed cookie; the provider runs on the load generator's \
             core, so its CPU competes with the load, not with the proxy)"
        );
        for m in &self.preflight_messages {
            println!("!!! preflight: {m}");
        }
        for run in &self.runs {
            if run.refused > 0 {
                println!(
                    "!!! {}: {} REFUSED requests (refresh failures)",
                    run.target, run.refused
                );
            }
        }
    }

    fn json(&self) -> Value {
        let runs: Vec<Value> = self
            .runs
            .iter()
            .zip(&self.rows)
            .map(|(r, row)| {
                json!({
                    "verify": r.target,
                    "verify_interval_s": r.interval.as_secs_f64(),
                    "row": row_json(row),
                    "refreshes": r.refreshes,
                    "refreshes_per_s": r.refresh_rate(),
                    "refused": r.refused,
                    "refreshing_request_ms": {
                        "p50": percentile_ms(&r.refresh_ns, 50.0),
                        "p99": percentile_ms(&r.refresh_ns, 99.0),
                        "max": percentile_ms(&r.refresh_ns, 100.0),
                    },
                    "provider_cpu_us_per_refresh": r.idp_us_per_refresh(),
                    "provider_core_busy": r.idp_busy(),
                })
            })
            .collect();
        json!({
            "description": self.title(),
            "sessions": self.sessions,
            "concurrency": self.connections,
            "runs": runs,
            "preflight_refreshes_ok": self.preflight.0,
            "preflight_refreshes_tried": self.preflight.1,
            "preflight_error_messages": self.preflight_messages,
            "mint_ms": self.mint.as_secs_f64() * 1000.0,
            "ratios_on_to_off": {
                "req_per_s": self.ratio_of(|r| Some(r.req_per_s())),
                "proxy_cpu_per_request": self.ratio_of(|r| r.proxy_cpu_ns),
                "latency_p50": self.ratio_of(|r| r.p50_us),
                "latency_p99": self.ratio_of(|r| r.p99_us),
            },
        })
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// The latency table and what each round noted.
fn print_rounds(rounds: &[LatencyRound]) {
    println!(
        "\n== revocation latency: {SESSIONS} sessions of alice, each on its own keep-alive \
             connection sending GET / every {} ms; time from the order (T0) to each session's \
             first refused response ==",
        PERIOD.as_millis()
    );
    println!(
        "{:<34} {:>6} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "order",
        "verify",
        "sessions",
        "refused",
        "min ms",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "errors"
    );
    for r in rounds {
        println!(
            "{:<34} {:>6} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7}",
            r.label(),
            human(r.interval),
            r.sessions,
            r.latencies_ns.len(),
            opt(r.ms(0.0), 1),
            opt(r.ms(50.0), 1),
            opt(r.ms(90.0), 1),
            opt(r.ms(99.0), 1),
            opt(r.ms(100.0), 1),
            r.failures(),
        );
    }
    for r in rounds {
        let statuses = r
            .statuses
            .iter()
            .map(|(s, n)| format!("{n}x {s}"))
            .collect::<Vec<_>>()
            .join(", ");
        let logins = if r.kind == "admin" {
            "the same sealed sessions as the 10 s round, on a new instance".to_owned()
        } else {
            format!(
                "logins {:.1} s, {}/{} sessions re-verified before T0",
                r.logins.as_secs_f64(),
                r.refreshed_before,
                r.sessions
            )
        };
        println!(
            "{} (verify {}): {logins}; order took {:.1} ms; T0 {:.0} ms into its Unix \
                 second; refusals {statuses}; {} requests",
            r.kind,
            human(r.interval),
            r.order.as_secs_f64() * 1000.0,
            r.t0_subsec.as_secs_f64() * 1000.0,
            r.requests,
        );
        if let Some((count, sum)) = r.cutoff_metric {
            println!(
                "{}: Vigil's vigil_revocation_cutoff_seconds after the round: count {count}, \
                     sum {sum:.3} s (it times connections cut off; a user revocation refuses \
                     requests and cuts no keep-alive connection)",
                r.kind
            );
        }
        if r.failures() > 0 {
            println!(
                "!!! {} ({}): {} not refused, {} refused before T0, {} other errors: {:?}",
                r.kind,
                human(r.interval),
                r.not_refused,
                r.early,
                r.errors,
                r.messages
            );
        }
    }
    println!(
        "(a session is re-verified on its first request once Unix seconds now - verified_at \
             >= interval; at 1 s all sessions are due at every second boundary, so their \
             latencies cluster at 1000 ms - T0's offset into its second, plus the refresh)"
    );
}

impl RevocationReport {
    pub fn errors(&self) -> u64 {
        self.rounds.iter().map(LatencyRound::failures).sum::<u64>() + self.cost.errors()
    }

    fn round(&self, kind: &str, interval: u64) -> Option<&LatencyRound> {
        self.rounds
            .iter()
            .find(|r| r.kind == kind && (kind == "admin" || r.interval.as_secs() == interval))
    }

    pub fn print_summary(&self) {
        println!("\n== summary: revocation ==");
        for interval in INTERVALS {
            if let Some(r) = self.round("provider", interval) {
                println!(
                    "alice disabled at the provider, verify every {:>3}: p50 {} ms   p90 {} ms   \
                     max {} ms   ({}/{} refused)",
                    human(r.interval),
                    opt(r.ms(50.0), 0),
                    opt(r.ms(90.0), 0),
                    opt(r.ms(100.0), 0),
                    r.latencies_ns.len(),
                    r.sessions
                );
            }
        }
        if let Some(r) = self.round("admin", 0) {
            println!(
                "POST /revoke (admin):                       p50 {} ms   p90 {} ms   max {} ms   \
                 ({}/{} refused; request period {} ms)",
                opt(r.ms(50.0), 1),
                opt(r.ms(90.0), 1),
                opt(r.ms(100.0), 1),
                r.latencies_ns.len(),
                r.sessions,
                PERIOD.as_millis()
            );
        }
        let c = &self.cost;
        println!(
            "{} live sessions, re-verification on ({}) / off: req/s {}x   proxy CPU per request \
             {}x   p50 {}x   p99 {}x",
            c.sessions,
            human(Duration::from_secs(VERIFY_ON)),
            opt(c.ratio_of(|r| Some(r.req_per_s())), 2),
            opt(c.ratio_of(|r| r.proxy_cpu_ns), 2),
            opt(c.ratio_of(|r| r.p50_us), 2),
            opt(c.ratio_of(|r| r.p99_us), 2),
        );
        if let Some(on) = c.run("on") {
            println!(
                "  on: {} refreshes ({:.0}/s), {} refused",
                on.refreshes,
                on.refresh_rate(),
                on.refused
            );
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "description": "revocation latency (alice disabled at the provider, [verify] \
                            interval 1 s and 10 s; operator POST /revoke) over signed-in \
                            sessions sending a request every period, and the cost of \
                            re-verification on throughput with many live sessions",
            "request_period_ms": PERIOD.as_secs_f64() * 1000.0,
            "max_stale": MAX_STALE,
            "latency": self.rounds.iter().map(LatencyRound::json).collect::<Vec<_>>(),
            "reverification_cost": self.cost.json(),
        })
    }
}

pub async fn run(ctx: &Ctx<'_>) -> Result<RevocationReport> {
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok {
        bail!(
            "Node.js (node) is not installed; the test provider in tests/idp needs it \
             (scripts/bench installs it)"
        );
    }
    let dir = instance_dir(ctx.dir, "revocation")?;
    std::fs::write(dir.join("oidc.secret"), format!("{CLIENT_SECRET}\n"))
        .context("writing oidc.secret")?;
    let out = Command::new(ctx.vigil_bin)
        .args(["keys", "session"])
        .arg(dir.join("session.keys"))
        .output()
        .context("running vigil keys session")?;
    if !out.status.success() {
        bail!(
            "vigil keys session failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    // Provider rounds, the admin round, cost on, cost off: each instance on its own addresses.
    let addrs: Vec<(SocketAddr, SocketAddr)> = (0..5)
        .map(|_| Ok((free_addr()?, free_addr()?)))
        .collect::<Result<_>>()?;
    let callbacks: Vec<String> = addrs
        .iter()
        .map(|(a, _)| format!("https://localhost:{}/.vigil/callback", a.port()))
        .collect();
    let idp = Idp::start(IdpOptions {
        redirect_uris: callbacks.clone(),
        ..IdpOptions::new(CLIENT_SECRET, &callbacks[0])
    })
    .await
    .context("starting the test OpenID Provider (tests/idp)")?;
    println!(
        "\nOpenID Provider for the revocation scenario: {} (tests/idp/server.mjs)",
        idp.issuer
    );

    let mut rounds = Vec::new();
    let mut last_cookies = Vec::new();
    for (i, interval) in INTERVALS.into_iter().enumerate() {
        let (round, cookies) = provider_round(ctx, &dir, &idp, interval, addrs[i]).await?;
        rounds.push(round);
        last_cookies = cookies;
    }
    rounds.push(admin_round(ctx, &dir, &idp, &last_cookies, addrs[2]).await?);
    print_rounds(&rounds);

    let cost = cost(ctx, &dir, &idp, addrs[3], addrs[4]).await?;
    cost.print();
    Ok(RevocationReport { rounds, cost })
}

fn config(
    addr: SocketAddr,
    admin: SocketAddr,
    decisions: &Path,
    issuer: &str,
    upstream: SocketAddr,
    interval: &str,
) -> String {
    let mut text = vigil_base_config(addr, Some(admin), decisions);
    text.push_str(&format!(
        r#"
[oidc]
issuer = "{issuer}"
client_id = "vigil"
client_secret_file = "oidc.secret"

[session]
keys_file = "session.keys"

[verify]
interval = "{interval}"
max_stale = "{MAX_STALE}"
"#
    ));
    // The workload route only answers the readiness probe.
    text.push_str(&workload_route(
        "ready",
        "localhost",
        Some("/svc"),
        upstream,
    ));
    text.push_str(&format!(
        r#"
[[route]]
name = "app"
host = "localhost"
upstream = "http://{upstream}"
login = "oidc"
allow = [{{ groups = ["engineering"] }}]
"#
    ));
    text
}

/// Writes `<name>.toml` in `dir`, starts Vigil on it and waits until the provider is
/// discovered.
async fn start(
    ctx: &Ctx<'_>,
    dir: &Path,
    idp: &Idp,
    name: &'static str,
    (addr, admin): (SocketAddr, SocketAddr),
    interval: &str,
) -> Result<Proxy> {
    let decisions = crate::logs_dir(ctx.dir)?.join(format!("{name}-decisions.log"));
    let path = dir.join(format!("{name}.toml"));
    let text = config(addr, admin, &decisions, &idp.issuer, ctx.upstream, interval);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let ready = Endpoint {
        path: READY_PATH,
        ..Endpoint::new(addr, Some(ctx.tls.clone()))
    };
    let proxy = spawn_vigil(ctx.vigil_bin, name, &path, ready, ctx.pinned).await?;
    wait_readyz(admin)
        .await
        .with_context(|| format!("{name}: waiting for provider discovery"))?;
    Ok(proxy)
}

fn check_alive(proxy: &Proxy, name: &str) -> Result<()> {
    match proxy.exited() {
        Some(msg) => Err(anyhow!("{name} {msg} during the run")),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// One GET on `conn`: status, headers and body. `html` asks as a browser navigation does.
async fn get(
    conn: &mut Conn,
    target: &str,
    host: &str,
    cookie: Option<HeaderValue>,
    html: bool,
) -> Result<(StatusCode, HeaderMap, Bytes)> {
    let mut req = Request::get(target)
        .header(HOST, host)
        .header(USER_AGENT, "vigil-bench");
    if html {
        req = req.header(ACCEPT, "text/html");
    }
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    let req = req.body(Empty::<Bytes>::new())?;
    conn.sender
        .ready()
        .await
        .context("connection closed by the server")?;
    let response = conn
        .sender
        .send_request(req)
        .await
        .context("sending the request")?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .context("reading the response body")?
        .to_bytes();
    Ok((parts.status, parts.headers, body))
}

/// One browser-like GET on a new connection.
async fn navigate(
    ep: &Endpoint,
    host: &str,
    target: &str,
    cookie: Option<&str>,
) -> Result<(StatusCode, HeaderMap, Bytes)> {
    let (mut conn, _) = timeout(CONNECT_TIMEOUT, connect(ep)).await?;
    let cookie = cookie
        .map(HeaderValue::from_str)
        .transpose()
        .context("cookie is not a header value")?;
    let answer = timeout(REQUEST_TIMEOUT, get(&mut conn, target, host, cookie, true))
        .await
        .with_context(|| format!("GET {target}"));
    conn.close().await;
    answer
}

/// Signs alice in as a browser on the load generator's certificate: `GET /` redirects to the
/// provider with a new pending-login cookie, the provider's form is filled in, and the callback
/// sets the session cookie.
async fn sign_in(tls: &TlsConnector, addr: SocketAddr) -> Result<SessionCookie> {
    let ep = Endpoint::new(addr, Some(tls.clone()));
    let host = format!("localhost:{}", addr.port());
    let (status, headers, body) = navigate(&ep, &host, "/", None).await?;
    if status != StatusCode::FOUND {
        bail!(
            "GET / without a session: expected 302 to the provider, got {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    let authorize = headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .context("302 without Location")?
        .to_owned();
    let pending = set_cookies(&headers)
        .into_iter()
        .filter(|(_, _, deletes)| !deletes)
        .map(|(n, v, _)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let back = login_flow(&authorize, ALICE, PASSWORD)
        .await
        .context("the provider's login")?;
    let target = back
        .strip_prefix(&format!("https://{host}"))
        .with_context(|| format!("the provider sent the browser elsewhere: {back}"))?;
    let (status, headers, body) = navigate(&ep, &host, target, Some(&pending)).await?;
    if status != StatusCode::SEE_OTHER {
        bail!(
            "the callback answered {status}, not 303: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    SessionCookie::from_login(&headers)
}

/// A POST with a JSON body to the admin listener, on a new connection.
async fn admin_post(addr: SocketAddr, path: &str, body: &str) -> Result<(StatusCode, Bytes)> {
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the admin listener {addr}"))?;
        tcp.set_nodelay(true)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        let driver = tokio::spawn(conn);
        let req = Request::post(path)
            .header(HOST, addr.to_string())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))?;
        let response = sender.send_request(req).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        drop(sender);
        let _ = driver.await;
        anyhow::Ok((status, body))
    };
    timeout(REQUEST_TIMEOUT, exchange)
        .await
        .with_context(|| format!("POST http://{addr}{path}"))
}

// ---------------------------------------------------------------------------------------------
// Latency rounds

/// One watched session's outcome.
struct Watched {
    /// When its first refused response arrived, and its status.
    refused: Option<(Instant, StatusCode)>,
    tally: Tally,
}

/// After `phase`, sends `GET /` with `cookie` every [`PERIOD`] on one keep-alive connection
/// until a response refuses the session or `stop` is set; takes in every re-sealed cookie.
async fn watch(
    addr: SocketAddr,
    tls: TlsConnector,
    cookie: Arc<SessionCookie>,
    stop: Arc<AtomicBool>,
    phase: Duration,
) -> Watched {
    tokio::time::sleep(phase).await;
    let ep = Endpoint::new(addr, Some(tls));
    let mut tally = Tally::default();
    let mut conn: Option<Conn> = None;
    let mut refused = None;
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Some(c) = conn.as_mut() else {
            match timeout(CONNECT_TIMEOUT, connect(&ep)).await {
                Ok((c, _)) => conn = Some(c),
                Err(e) => tally.error(&e.context("connecting")),
            }
            continue;
        };
        let once = get(c, "/", "localhost", Some(cookie.header()), false);
        match timeout(REQUEST_TIMEOUT, once).await {
            Ok((status, headers, body)) => {
                cookie.update(&headers);
                if status == StatusCode::OK && body.len() == BODY_LEN {
                    tally.ok += 1;
                } else if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FOUND) {
                    refused = Some((Instant::now(), status));
                    break;
                } else {
                    let shown = &body[..body.len().min(200)];
                    tally.error(&anyhow!(
                        "status {status}: {}",
                        String::from_utf8_lossy(shown)
                    ));
                }
            }
            Err(e) => {
                tally.error(&e);
                conn = None;
            }
        }
    }
    if let Some(c) = conn {
        c.close().await;
    }
    Watched { refused, tally }
}

/// Waits for the watchers until `deadline`, then stops the rest.
async fn collect(
    set: &mut JoinSet<Watched>,
    stop: &AtomicBool,
    deadline: Instant,
) -> Vec<Result<Watched>> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::from_std(deadline);
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(joined)) => out.push(joined.map_err(|e| anyhow!("watch task failed: {e}"))),
            Ok(None) => break,
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                while let Some(joined) = set.join_next().await {
                    out.push(joined.map_err(|e| anyhow!("watch task failed: {e}")));
                }
                break;
            }
        }
    }
    out
}

/// The round's figures from the watchers' outcomes.
fn tally_round(
    kind: &'static str,
    interval: Duration,
    results: Vec<Result<Watched>>,
    t0: Instant,
) -> LatencyRound {
    let mut round = LatencyRound {
        kind,
        interval,
        sessions: results.len(),
        latencies_ns: Vec::new(),
        statuses: Vec::new(),
        not_refused: 0,
        early: 0,
        refreshed_before: 0,
        errors: 0,
        messages: Vec::new(),
        requests: 0,
        order: Duration::ZERO,
        t0_subsec: Duration::ZERO,
        logins: Duration::ZERO,
        cutoff_metric: None,
    };
    let mut all = Tally::default();
    for result in results {
        let watched = match result {
            Ok(w) => w,
            Err(e) => {
                all.error(&e);
                continue;
            }
        };
        round.requests += watched.tally.ok + watched.tally.errors;
        match watched.refused {
            Some((at, status)) if at >= t0 => {
                round.requests += 1;
                round.latencies_ns.push((at - t0).as_nanos() as u64);
                let code = status.as_u16();
                match round.statuses.iter_mut().find(|(s, _)| *s == code) {
                    Some((_, n)) => *n += 1,
                    None => round.statuses.push((code, 1)),
                }
            }
            Some((_, status)) => {
                round.requests += 1;
                round.early += 1;
                all.error(&anyhow!("refused ({status}) before the order"));
            }
            None => round.not_refused += 1,
        }
        all.merge(watched.tally);
    }
    round.latencies_ns.sort_unstable();
    round.statuses.sort_unstable();
    round.errors = all.errors - round.early as u64;
    round.messages = all.messages;
    round
}

fn subsec_now() -> Duration {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_nanos(u64::from(since.subsec_nanos()))
}

/// Alice disabled at the provider, `interval_s` re-verification. Returns the round and the
/// sessions' cookies (as last re-sealed).
async fn provider_round(
    ctx: &Ctx<'_>,
    dir: &Path,
    idp: &Idp,
    interval_s: u64,
    addrs: (SocketAddr, SocketAddr),
) -> Result<(LatencyRound, Vec<Arc<SessionCookie>>)> {
    let name: &'static str = match interval_s {
        1 => "vigil-revoke-1s",
        10 => "vigil-revoke-10s",
        _ => "vigil-revoke",
    };
    let interval = Duration::from_secs(interval_s);
    let proxy = start(ctx, dir, idp, name, addrs, &format!("{interval_s}s")).await?;
    eprintln!(
        "... revocation: {SESSIONS} logins over {interval_s} s, then alice disabled at the provider"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let mut set = JoinSet::new();
    let mut cookies = Vec::with_capacity(SESSIONS);
    // Staggered over one interval, so the sessions are due at different points of it.
    let stagger = interval / SESSIONS as u32;
    let began = Instant::now();
    for i in 0..SESSIONS {
        tokio::time::sleep_until(tokio::time::Instant::from_std(began + stagger * i as u32)).await;
        let cookie = Arc::new(
            sign_in(&ctx.tls, addrs.0)
                .await
                .with_context(|| format!("{name}: signing {ALICE} in (login {})", i + 1))?,
        );
        cookies.push(cookie.clone());
        // Each login takes its time: the sessions' request phases differ already.
        let phase = Duration::ZERO;
        set.spawn(watch(addrs.0, ctx.tls.clone(), cookie, stop.clone(), phase));
    }
    let logins = began.elapsed();
    // A little more than one interval: every session has been re-verified at least once.
    tokio::time::sleep(interval + Duration::from_millis(1500)).await;
    let refreshed_before = cookies.iter().filter(|c| c.updates() > 0).count();

    let t0 = Instant::now();
    let t0_subsec = subsec_now();
    idp.disable_user(ALICE)
        .await
        .context("disabling alice at the provider")?;
    let order = t0.elapsed();
    let results = collect(&mut set, &stop, t0 + interval + GRACE).await;
    idp.enable_user(ALICE)
        .await
        .context("enabling alice at the provider again")?;
    check_alive(&proxy, name)?;

    let mut round = tally_round("provider", interval, results, t0);
    round.order = order;
    round.t0_subsec = t0_subsec;
    round.logins = logins;
    round.refreshed_before = refreshed_before;
    Ok((round, cookies))
}

/// `POST /revoke {"user":"alice"}` against the given sessions, on an instance that never
/// re-verifies during the round.
async fn admin_round(
    ctx: &Ctx<'_>,
    dir: &Path,
    idp: &Idp,
    cookies: &[Arc<SessionCookie>],
    addrs: (SocketAddr, SocketAddr),
) -> Result<LatencyRound> {
    let name = "vigil-revoke-admin";
    let proxy = start(ctx, dir, idp, name, addrs, "1h").await?;
    eprintln!(
        "... revocation: {} sessions, then POST /revoke on the admin listener",
        cookies.len()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = JoinSet::new();
    // Request phases spread evenly over one period, as independent browsers' would be.
    let step = PERIOD / cookies.len().max(1) as u32;
    for (i, cookie) in cookies.iter().enumerate() {
        let phase = step * i as u32;
        set.spawn(watch(
            addrs.0,
            ctx.tls.clone(),
            cookie.clone(),
            stop.clone(),
            phase,
        ));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let t0 = Instant::now();
    let t0_subsec = subsec_now();
    let (status, body) = admin_post(addrs.1, "/revoke", r#"{"user":"alice"}"#).await?;
    let order = t0.elapsed();
    if status != StatusCode::OK {
        stop.store(true, Ordering::Relaxed);
        while set.join_next().await.is_some() {}
        bail!(
            "POST /revoke answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let results = collect(&mut set, &stop, t0 + GRACE).await;
    // Give the connection verifier the sweep the revocation ordered, then read its histogram.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, metrics) = admin_call(addrs.1, "GET", "/metrics").await?;
    let metrics = String::from_utf8_lossy(&metrics);
    let metric = |suffix: &str| -> Option<f64> {
        let key = format!("vigil_revocation_cutoff_seconds_{suffix}");
        metrics.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
    };
    check_alive(&proxy, name)?;

    let mut round = tally_round("admin", Duration::from_secs(3600), results, t0);
    round.order = order;
    round.t0_subsec = t0_subsec;
    round.cutoff_metric = metric("count").zip(metric("sum"));
    Ok(round)
}

// ---------------------------------------------------------------------------------------------
// Cost with many live sessions

/// The sealed session in a `Cookie` header of session chunks (`name=value; name.1=value`).
fn sealed_of(header: &str) -> Result<String> {
    let mut chunks: Vec<(usize, &str)> = header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix(SESSION_COOKIE)?;
            let index = match rest.strip_prefix('.') {
                Some(n) => n.parse().ok()?,
                None if rest.is_empty() => 0,
                None => return None,
            };
            Some((index, value))
        })
        .collect();
    if chunks.is_empty() {
        bail!("no {SESSION_COOKIE} in {header:?}");
    }
    chunks.sort_unstable();
    Ok(chunks.into_iter().map(|(_, v)| v).collect())
}

/// The `Cookie` header a browser sends for the session cookies in `set` (from
/// `session::write`, or a response's `Set-Cookie`), or None when `set` stores no session.
fn cookie_header<'a>(set: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    let mut pairs: Vec<(String, String)> = set
        .filter_map(|line| {
            let mut parts = line.split(';');
            let (name, value) = parts.next()?.split_once('=')?;
            let (name, value) = (name.trim(), value.trim());
            let deletes = parts.any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            (name.starts_with(SESSION_COOKIE) && !deletes && !value.is_empty())
                .then(|| (name.to_owned(), value.to_owned()))
        })
        .collect();
    if pairs.is_empty() {
        return None;
    }
    pairs.sort();
    let text = pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    HeaderValue::try_from(text).ok()
}

fn random_below(n: u64) -> Result<u64> {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow!("no randomness"))?;
    Ok(u64::from_le_bytes(bytes) % n.max(1))
}

/// `n` sessions cloned from `base`: each a new random `sid`, `verified_at` at random within the
/// last `spread_s` seconds (`spread_s` 0: exactly `due_s` ago), `last_seen` now; sealed.
fn mint(
    base: &Session,
    ring: &KeyRing,
    n: usize,
    spread_s: u64,
    due_s: i64,
) -> Result<Vec<HeaderValue>> {
    let now = vigil::identity::now();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = base.clone();
        s.sid = random_token();
        s.verified_at = if spread_s == 0 {
            now - due_s
        } else {
            now - random_below(spread_s)? as i64
        };
        s.last_seen = now;
        let set = session::write(&s, ring, now, 0).map_err(|e| anyhow!("sealing: {e}"))?;
        let header = cookie_header(set.iter().filter_map(|v| v.to_str().ok()))
            .context("session::write set no session cookie")?;
        out.push(header);
    }
    Ok(out)
}

/// The cookies the load cycles through, kept current as Vigil re-seals them.
struct Pool {
    slots: Vec<Mutex<HeaderValue>>,
    next: AtomicUsize,
}

impl Pool {
    fn new(cookies: Vec<HeaderValue>) -> Arc<Self> {
        Arc::new(Self {
            slots: cookies.into_iter().map(Mutex::new).collect(),
            next: AtomicUsize::new(0),
        })
    }
}

#[derive(Default)]
struct PoolTally {
    refreshes: u64,
    refused: u64,
    refresh_ns: Vec<u64>,
}

impl PoolTally {
    fn merge(&mut self, other: PoolTally) {
        self.refreshes += other.refreshes;
        self.refused += other.refused;
        self.refresh_ns.extend(other.refresh_ns);
    }
}

/// Requests back to back on `conn` until `deadline`, each with the pool's next cookie;
/// reconnects after an error.
async fn pool_loop(
    ep: Endpoint,
    pool: Arc<Pool>,
    conn: Option<Conn>,
    deadline: Instant,
) -> (Option<Conn>, Tally, PoolTally) {
    let mut tally = Tally::default();
    let mut stats = PoolTally::default();
    let mut conn = conn;
    while Instant::now() < deadline {
        let Some(c) = conn.as_mut() else {
            match timeout(CONNECT_TIMEOUT, connect(&ep)).await {
                Ok((c, _)) => conn = Some(c),
                Err(e) => {
                    tally.error(&e.context("reconnecting"));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            continue;
        };
        let i = pool.next.fetch_add(1, Ordering::Relaxed) % pool.slots.len();
        let cookie = pool.slots[i]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let t0 = Instant::now();
        match timeout(
            REQUEST_TIMEOUT,
            get(c, "/", "localhost", Some(cookie), false),
        )
        .await
        {
            Ok((status, headers, body)) => {
                let ns = t0.elapsed().as_nanos() as u64;
                let fresh = cookie_header(
                    headers
                        .get_all(http::header::SET_COOKIE)
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                );
                if let Some(fresh) = fresh {
                    *pool.slots[i].lock().unwrap_or_else(|e| e.into_inner()) = fresh;
                    stats.refreshes += 1;
                    stats.refresh_ns.push(ns);
                }
                if status == StatusCode::OK && body.len() == BODY_LEN {
                    tally.ok += 1;
                    tally.latencies_ns.push(ns);
                } else {
                    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FOUND) {
                        stats.refused += 1;
                    }
                    let shown = &body[..body.len().min(200)];
                    tally.error(&anyhow!(
                        "status {status}: {}",
                        String::from_utf8_lossy(shown)
                    ));
                }
            }
            Err(e) => {
                tally.error(&e);
                conn = None;
            }
        }
    }
    (conn, tally, stats)
}

async fn pool_round(
    ep: &Endpoint,
    pool: &Arc<Pool>,
    conns: Vec<Option<Conn>>,
    deadline: Instant,
) -> (Vec<Option<Conn>>, Tally, PoolTally) {
    let mut set = JoinSet::new();
    for conn in conns {
        set.spawn(pool_loop(ep.clone(), pool.clone(), conn, deadline));
    }
    let mut back = Vec::new();
    let mut total = Tally::default();
    let mut stats = PoolTally::default();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((c, t, s)) => {
                back.push(c);
                total.merge(t);
                stats.merge(s);
            }
            Err(e) => total.error(&anyhow!("load task failed: {e}")),
        }
    }
    (back, total, stats)
}

/// The provider's process: the `node` child of this process.
fn idp_pid() -> Option<u32> {
    crate::children_of(std::process::id())
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "node")
        })
}

/// The keep-alive scenario over the pool: warm-up, then the measured time.
async fn cost_run(
    ctx: &Ctx<'_>,
    target: &'static str,
    proxy: &Proxy,
    addr: SocketAddr,
    pool: &Arc<Pool>,
    interval: Duration,
) -> Result<(Row, CostRun)> {
    let ep = Endpoint::new(addr, Some(ctx.tls.clone()));
    let t = Target {
        name: target,
        ep: ep.clone(),
        proxy: Some(proxy),
    };
    let me = [std::process::id()];
    let mut conns = Vec::with_capacity(ctx.args.connections);
    let mut opening = Tally::default();
    for _ in 0..ctx.args.connections {
        match timeout(CONNECT_TIMEOUT, connect(&ep)).await {
            Ok((c, _)) => conns.push(Some(c)),
            Err(e) => {
                opening.error(&e);
                conns.push(None);
            }
        }
    }
    let (conns, _, _) = pool_round(&ep, pool, conns, Instant::now() + ctx.warmup).await;
    let idp = idp_pid();
    let idp_start: Option<Cpu> = idp.and_then(|p| read_cpu(&[p]).ok());
    let start = ctx.bench.sample(&t, &me)?;
    let (conns, mut tally, mut stats) =
        pool_round(&ep, pool, conns, Instant::now() + ctx.measure).await;
    let end = ctx.bench.sample(&t, &me)?;
    let idp_end: Option<Cpu> = idp.and_then(|p| read_cpu(&[p]).ok());
    for c in conns.into_iter().flatten() {
        c.close().await;
    }
    tally.merge(opening);
    stats.refresh_ns.sort_unstable();
    let idp_cpu_ns = idp_start
        .zip(idp_end)
        .map(|(a, b)| cpu_delta(&a, &b, ctx.bench.clk_tck).0);
    let row = ctx.bench.row(&t, tally, &start, &end);
    let run = CostRun {
        target,
        interval,
        wall: row.wall,
        refreshes: stats.refreshes,
        refused: stats.refused,
        refresh_ns: stats.refresh_ns,
        idp_cpu_ns,
    };
    Ok((row, run))
}

/// [`PREFLIGHT`] sessions due for verification, one request each, all at once: every one must
/// be refreshed (200 and a re-sealed cookie) with the shared refresh token.
async fn preflight(
    ctx: &Ctx<'_>,
    addr: SocketAddr,
    cookies: Vec<HeaderValue>,
) -> (usize, Vec<String>) {
    let mut set = JoinSet::new();
    for cookie in cookies {
        let ep = Endpoint::new(addr, Some(ctx.tls.clone()));
        set.spawn(async move {
            let (mut conn, _) = timeout(CONNECT_TIMEOUT, connect(&ep)).await?;
            let answer = timeout(
                REQUEST_TIMEOUT,
                get(&mut conn, "/", "localhost", Some(cookie), false),
            )
            .await;
            conn.close().await;
            let (status, headers, body) = answer?;
            let resealed = cookie_header(
                headers
                    .get_all(http::header::SET_COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            )
            .is_some();
            if status != StatusCode::OK || !resealed {
                bail!(
                    "status {status}, cookie re-sealed: {resealed}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                );
            }
            anyhow::Ok(())
        });
    }
    let mut ok = 0;
    let mut messages = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                let text = format!("{e:#}");
                if messages.len() < 5 && !messages.contains(&text) {
                    messages.push(text);
                }
            }
            Err(e) => messages.push(format!("task failed: {e}")),
        }
    }
    (ok, messages)
}

async fn cost(
    ctx: &Ctx<'_>,
    dir: &Path,
    idp: &Idp,
    on_addrs: (SocketAddr, SocketAddr),
    off_addrs: (SocketAddr, SocketAddr),
) -> Result<CostReport> {
    let ring = KeyRing::from_file(&dir.join("session.keys")).map_err(|e| anyhow!(e))?;
    let on_interval = Duration::from_secs(VERIFY_ON);
    let mut rows = Vec::new();
    let mut runs = Vec::new();

    let name = "vigil-verify-on";
    let proxy = start(ctx, dir, idp, name, on_addrs, &human(on_interval)).await?;
    let login = sign_in(&ctx.tls, on_addrs.0)
        .await
        .with_context(|| format!("{name}: signing {ALICE} in"))?;
    let sealed = sealed_of(login.header().to_str()?)?;
    let plain = ring
        .open(Purpose::Session, &sealed)
        .map_err(|e| anyhow!("opening alice's session cookie: {e}"))?;
    let base: Session =
        serde_json::from_slice(&plain).context("alice's session is not a Session")?;
    if base.refresh_token.is_none() {
        bail!("alice's session has no refresh token: nothing to re-verify with");
    }

    let due = mint(&base, &ring, PREFLIGHT, 0, VERIFY_ON as i64)?;
    let (preflight_ok, preflight_messages) = preflight(ctx, on_addrs.0, due).await;

    eprintln!("... revocation: {MINTED} live sessions, re-verification every {VERIFY_ON} s");
    let t = Instant::now();
    let pool = Pool::new(mint(&base, &ring, MINTED, VERIFY_ON, 0)?);
    let mint_time = t.elapsed();
    let (row, run) = cost_run(ctx, "on", &proxy, on_addrs.0, &pool, on_interval).await?;
    rows.push(row);
    runs.push(run);
    check_alive(&proxy, name)?;
    drop(proxy);

    let name = "vigil-verify-off";
    let proxy = start(ctx, dir, idp, name, off_addrs, "24h").await?;
    eprintln!("... revocation: {MINTED} live sessions, re-verification off");
    let pool = Pool::new(mint(&base, &ring, MINTED, VERIFY_ON, 0)?);
    let off_interval = Duration::from_secs(86_400);
    let (row, run) = cost_run(ctx, "off", &proxy, off_addrs.0, &pool, off_interval).await?;
    rows.push(row);
    runs.push(run);
    check_alive(&proxy, name)?;

    Ok(CostReport {
        sessions: MINTED,
        connections: ctx.args.connections,
        rows,
        runs,
        preflight: (preflight_ok, PREFLIGHT),
        preflight_messages,
        mint: mint_time,
    })
}
