//! `cargo bench --bench proxy` (or `scripts/bench`): Vigil against nginx as an mTLS reverse proxy,
//! against the floor and against the upstream itself, in one run. The floor (`floor.rs`, built
//! as the `floor` example) is a minimal hyper and rustls reverse proxy that checks nothing: the
//! same mTLS and forwarding over a keep-alive pool, and no routing, rules, logs, metrics or header
//! hygiene, so Vigil's ratio to it is what everything Vigil does beyond that costs.
//!
//! The proxy under test runs as its own process pinned to core 0; this process (the load
//! generator and the upstream) pins itself to core 1. On two shared cores req/s is capped by the
//! load generator, so the numbers that matter are the proxy's own CPU time per request and per full
//! handshake (nanoseconds on-CPU from `/proc/PID/task/*/schedstat`), latency at one connection, and
//! memory per idle TLS connection (RSS from `/proc/PID/smaps_rollup`), reported as ratios to nginx
//! and to the floor.
//!
//! Every TLS connection presents a client certificate, offers TLS 1.3 only and X25519 only (every
//! proxy then does the same key exchange), and never resumes a session, so each one is a full
//! handshake. The direct target is plain HTTP: the upstream has no TLS.
//!
//! Three more groups of scenarios measure Vigil against itself, each on an instance of its own
//! (pinned the same way): the cost of an OIDC session on every request, as a ratio to the
//! workload-certificate route in the same process, with and without the signed assertion
//! (`support/oidc.rs`, against the test provider in `tests/idp`); requests/s, latency and CPU
//! while the configuration is reloaded every 100 ms, as a ratio to the same run without reloads
//! (`support/reload.rs`); and revocation latency (a user disabled at the provider, at two
//! re-verification intervals, and an operator's revocation) with the cost of re-verifying 10k
//! live sessions, as a ratio to the same run without (`support/revocation.rs`). One more, `kx`,
//! measures the CPU of a full handshake with the hybrid post-quantum key exchange
//! (X25519MLKEM768) against X25519 alone, on one Vigil instance, as a ratio; `rego` a route
//! decided by a Rego policy against a built-in rule; `alerts` keep-alive requests while alerts
//! are raised and posted to a webhook that never answers, against no webhook
//! (`support/alerts.rs`). `upstreams` measures CPU per keep-alive request through a route's
//! upstream stack against the direct pool of a build before it, and requests/s spread across
//! two endpoints (`support/upstreams.rs`). `detectors` measures CPU per keep-alive request with
//! every `[detectors]` detector on, against none. `--only` and `--skip` choose the groups.

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, COOKIE, HOST, HeaderValue, USER_AGENT};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use vigil::certs::{Authority, LeafSpec};

/// The OIDC-session, reload and revocation scenarios, and the test OpenID Provider's harness.
mod support;

/// The core the proxy under test runs on; this process takes [`LOADGEN_CORE`].
const PROXY_CORE: &str = "0";
const LOADGEN_CORE: &str = "1";
/// Size of the upstream's fixed response body.
const BODY_LEN: usize = 100;
const CLIENT_SPIFFE_ID: &str = "spiffe://vigil.test/ns/bench/sa/loadgen";
/// The path the load generator asks for, unless a scenario says otherwise.
const DEFAULT_PATH: &str = "/bench";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Concurrency while opening the idle connections.
const IDLE_OPEN_CONCURRENCY: usize = 8;
/// Aims from the acceptance text.
const AIM_KEEPALIVE_CPU: f64 = 0.65;
const AIM_HANDSHAKE_CPU: f64 = 0.30;
const AIM_IDLE_KIB: f64 = 16.0;
/// Aims against the floor: CPU per keep-alive request, memory per idle connection; and CPU per
/// full handshake against rustls's server handshake alone.
const AIM_FLOOR_KEEPALIVE_CPU: f64 = 1.15;
const AIM_FLOOR_IDLE: f64 = 1.0;
const AIM_HANDSHAKE_ALONE: f64 = 1.3;

const USAGE: &str = "\
usage: cargo bench --bench proxy -- [options]      (or scripts/bench [options])

  --seconds N                 measured time per scenario and target (default 5; warm-up is extra)
  --connections N             keep-alive connections (default 16)
  --handshake-connections N   concurrent new-connection loops in the handshake scenario (default 4)
  --idle N                    idle TLS connections for the memory scenario (default 1000)
  --vigil PATH                the vigil binary (default: <target dir>/release/vigil)
  --only LIST                 run only these scenario groups (comma-separated; default: all):
                                compare  Vigil against nginx, the floor proxy (benches/
                                         floor.rs) and the upstream directly: idle memory,
                                         keep-alive, latency, handshakes
                                oidc     a valid session cookie on a login = \"oidc\" route
                                         against the workload-certificate route, [assertion]
                                         on and off (needs Node.js: tests/idp)
                                reload   keep-alive while POST /reload every --reload-every
                                revocation
                                         time to refusal after a user is disabled at the
                                         provider ([verify] interval 1 s and 10 s) or revoked
                                         by POST /revoke; keep-alive over 10k live sessions,
                                         re-verification on and off (needs Node.js)
                                kx       full handshakes with X25519MLKEM768 against X25519
                                         only, on one Vigil; CPU per handshake as a ratio
                                rego     keep-alive through a route decided by a Rego policy
                                         against the same route with a built-in rule; CPU
                                         per request as a ratio and a difference
                                alerts   keep-alive while alerts are raised, posted to a
                                         webhook that never answers, against no webhook;
                                         CPU per request and latency as ratios
                                upstreams
                                         keep-alive through the upstream stack against the
                                         pool of a build before it (VIGIL_BENCH_BASELINE
                                         =path of its vigil binary), and two endpoints: req/s
                                         and the share each served
                                detectors
                                         keep-alive with every [detectors] detector on
                                         (nothing firing) against the same route without
                                         them; CPU per request as a ratio and a difference
                                fleet    keep-alive with [state] in Redis against memory
                                         (CPU per request as a ratio), and revocation
                                         propagation across three replicas (p50/p99/max
                                         over 100 revocations); needs redis-server
  --skip LIST                 leave these scenario groups out
  --reload-every MS           reload interval of the reload scenario (default 100)
  --no-nginx                  skip the nginx comparison
  --keep-temp                 keep the temp dir (configs, logs, certificates) and print its path
  --help                      this text";

/// `scenario` on each of `targets` twice, taking turns, half the measured time each: drift on
/// the shared machine falls on all of them alike.
async fn alternately(
    ctx: &Ctx<'_>,
    group: &str,
    targets: &[Target<'_>],
    scenario: Scenario,
) -> Result<Vec<Row>> {
    let half = ctx.measure / 2;
    let mut rows: Vec<Row> = Vec::new();
    for round in 0..2 {
        for t in targets {
            eprintln!("... {group}: {} (round {})", t.name, round + 1);
            let row = ctx.bench.scenario(t, scenario, ctx.warmup, half).await?;
            match rows.iter_mut().find(|r| r.target == t.name) {
                Some(r) => r.absorb(row),
                None => rows.push(row),
            }
        }
    }
    Ok(rows)
}

/// Keep-alive on each of two Vigil `instances` (named as in `pair`), taken in turns: the rows,
/// printed under `what`; an error when either instance exited meanwhile.
async fn keep_alive_pair(
    ctx: &Ctx<'_>,
    group: &str,
    instances: &[(&'static str, Proxy)],
    what: &str,
    pair: (&str, &str),
) -> Result<Vec<Row>> {
    let targets: Vec<Target> = instances
        .iter()
        .map(|(name, proxy)| Target {
            name,
            ep: Endpoint::new(proxy.addr, Some(ctx.tls.clone())),
            proxy: Some(proxy),
        })
        .collect();
    let scenario = Scenario::KeepAlive(ctx.args.connections);
    let rows = alternately(ctx, group, &targets, scenario).await?;
    print_table(
        &format!("{group}: {}; {what}", scenario.title()),
        &rows,
        pair,
    );
    for (name, proxy) in instances {
        if let Some(msg) = proxy.exited() {
            bail!("vigil ({name}) {msg} during the {group} scenario");
        }
    }
    Ok(rows)
}

/// The policy of the `rego` scenario: what the built-in rule says (the load generator's SPIFFE
/// ID), with the allowed paths in data, as a policy written for it would.
const BENCH_POLICY: &str = r#"package bench
import rego.v1

default allow := false

allow if {
    input.spiffe_id in data.bench.callers
    some prefix in data.bench.paths
    startswith(input.path, prefix)
}
"#;

/// Keep-alive requests through a route decided by [`BENCH_POLICY`] against the same route with
/// a built-in rule: two Vigil instances on the proxy core, each measured twice, alternating.
async fn rego_cost(ctx: &Ctx<'_>) -> Result<Vec<Row>> {
    let mut instances = Vec::new();
    for name in ["rego", "rules"] {
        let dir = support::instance_dir(ctx.dir, &format!("rego-{name}"))?;
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port()?);
        let route = if name == "rego" {
            std::fs::write(dir.join("bench.rego"), BENCH_POLICY)?;
            let data =
                json!({ "bench": { "callers": [CLIENT_SPIFFE_ID], "paths": ["/bench", "/api"] } });
            std::fs::write(dir.join("bench.json"), data.to_string())?;
            format!(
                "\n[policy]\ndata = [\"bench.json\"]\n\n[[route]]\nname = \"bench\"\nhost = \"*\"\nupstream = \"http://{}\"\nlogin = \"none\"\npolicy = \"bench.rego\"\n",
                ctx.upstream
            )
        } else {
            workload_route("bench", "*", None, ctx.upstream)
        };
        let decisions = logs_dir(&dir)?.join("vigil-decisions.log");
        let path = dir.join("vigil.toml");
        std::fs::write(&path, vigil_base_config(addr, None, &decisions) + &route)?;
        let ep = Endpoint::new(addr, Some(ctx.tls.clone()));
        let label = if name == "rego" {
            "vigil-rego"
        } else {
            "vigil-rules"
        };
        instances.push((
            name,
            spawn_vigil(ctx.vigil_bin, label, &path, ep, ctx.pinned).await?,
        ));
    }
    keep_alive_pair(
        ctx,
        "rego",
        &instances,
        "the route decided by a Rego policy, or by a built-in rule",
        ("rego", "rules"),
    )
    .await
}

/// `[detectors]` with every detector that needs no GeoIP database, at its defaults but
/// per device only (the load generator is one client on one address: per address it would be
/// the same key).
const BENCH_DETECTORS: &str = "\n[detectors]\n[detectors.denials]\nper = [\"device\"]\n[detectors.failed_logins]\nper = [\"device\"]\n[detectors.revoked]\nper = [\"device\"]\n[detectors.addresses]\n";

/// Keep-alive requests through a workload route with every detector on against the same
/// route without `[detectors]`: two Vigil instances on the proxy core, measured alternately.
async fn detectors_cost(ctx: &Ctx<'_>) -> Result<Vec<Row>> {
    let mut instances = Vec::new();
    for name in ["detectors-on", "detectors-off"] {
        let dir = support::instance_dir(ctx.dir, name)?;
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port()?);
        let detectors = if name == "detectors-on" {
            BENCH_DETECTORS
        } else {
            ""
        };
        let decisions = logs_dir(&dir)?.join("vigil-decisions.log");
        let path = dir.join("vigil.toml");
        let text = vigil_base_config(addr, None, &decisions)
            + detectors
            + &workload_route("bench", "*", None, ctx.upstream);
        std::fs::write(&path, text)?;
        let ep = Endpoint::new(addr, Some(ctx.tls.clone()));
        let label = if name == "detectors-on" {
            "vigil-detectors-on"
        } else {
            "vigil-detectors-off"
        };
        instances.push((
            name,
            spawn_vigil(ctx.vigil_bin, label, &path, ep, ctx.pinned).await?,
        ));
    }
    keep_alive_pair(
        ctx,
        "detectors",
        &instances,
        "every detector on, or none",
        ("detectors-on", "detectors-off"),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Arguments

#[derive(Debug, Clone)]
struct Args {
    seconds: f64,
    connections: usize,
    handshake_connections: usize,
    idle: usize,
    vigil: Option<PathBuf>,
    parts: Vec<Part>,
    reload_every: Duration,
    no_nginx: bool,
    keep_temp: bool,
}

/// The groups of scenarios `--only` and `--skip` choose from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Compare,
    Oidc,
    Reload,
    Revocation,
    Kx,
    Rego,
    Alerts,
    Upstreams,
    Detectors,
    Fleet,
}

impl Part {
    const ALL: [Part; 10] = [
        Part::Compare,
        Part::Oidc,
        Part::Reload,
        Part::Revocation,
        Part::Kx,
        Part::Rego,
        Part::Alerts,
        Part::Upstreams,
        Part::Detectors,
        Part::Fleet,
    ];

    fn name(self) -> &'static str {
        match self {
            Part::Compare => "compare",
            Part::Oidc => "oidc",
            Part::Reload => "reload",
            Part::Revocation => "revocation",
            Part::Kx => "kx",
            Part::Rego => "rego",
            Part::Alerts => "alerts",
            Part::Upstreams => "upstreams",
            Part::Detectors => "detectors",
            Part::Fleet => "fleet",
        }
    }

    fn list(text: &str, what: &str) -> Result<Vec<Part>> {
        text.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| {
                Part::ALL
                    .into_iter()
                    .find(|p| p.name() == n)
                    .ok_or_else(|| anyhow!("{what}: unknown scenario group {n:?}\n\n{USAGE}"))
            })
            .collect()
    }
}

impl Args {
    fn parse() -> Result<Option<Self>> {
        let mut args = Args {
            seconds: 5.0,
            connections: 16,
            handshake_connections: 4,
            idle: 1000,
            vigil: None,
            parts: Part::ALL.to_vec(),
            reload_every: Duration::from_millis(100),
            no_nginx: false,
            keep_temp: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = |what: &str| -> Result<String> {
                match inline.clone() {
                    Some(v) => Ok(v),
                    None => it
                        .next()
                        .ok_or_else(|| anyhow!("{what} needs a value\n\n{USAGE}")),
                }
            };
            match name.as_str() {
                // cargo passes --bench to harness = false benches.
                "--bench" => {}
                "--help" | "-h" => {
                    println!("{USAGE}");
                    return Ok(None);
                }
                "--seconds" => {
                    args.seconds = parse_num(&value("--seconds")?, "--seconds")?;
                    if !(args.seconds > 0.0 && args.seconds <= 600.0) {
                        bail!("--seconds must be in (0, 600]");
                    }
                }
                "--connections" => {
                    args.connections = parse_count(&value("--connections")?, "--connections")?;
                }
                "--handshake-connections" => {
                    args.handshake_connections = parse_count(
                        &value("--handshake-connections")?,
                        "--handshake-connections",
                    )?;
                }
                "--idle" => args.idle = parse_count(&value("--idle")?, "--idle")?,
                "--vigil" => args.vigil = Some(PathBuf::from(value("--vigil")?)),
                "--only" => args.parts = Part::list(&value("--only")?, "--only")?,
                "--skip" => {
                    let skip = Part::list(&value("--skip")?, "--skip")?;
                    args.parts.retain(|p| !skip.contains(p));
                }
                "--reload-every" => {
                    let ms = parse_num(&value("--reload-every")?, "--reload-every")?;
                    if !(1.0..=60_000.0).contains(&ms) {
                        bail!("--reload-every must be between 1 and 60000 (milliseconds)");
                    }
                    args.reload_every = Duration::from_secs_f64(ms / 1000.0);
                }
                "--no-nginx" => args.no_nginx = true,
                "--keep-temp" => args.keep_temp = true,
                other => bail!("unknown argument {other:?}\n\n{USAGE}"),
            }
        }
        if args.parts.is_empty() {
            bail!("--only/--skip left no scenario to run\n\n{USAGE}");
        }
        Ok(Some(args))
    }

    fn runs(&self, part: Part) -> bool {
        self.parts.contains(&part)
    }
}

fn parse_num(text: &str, what: &str) -> Result<f64> {
    text.parse::<f64>()
        .with_context(|| format!("{what}: {text:?} is not a number"))
}

fn parse_count(text: &str, what: &str) -> Result<usize> {
    let n = text
        .parse::<usize>()
        .with_context(|| format!("{what}: {text:?} is not a whole number"))?;
    if n == 0 || n > 20_000 {
        bail!("{what} must be between 1 and 20000");
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Entry point

fn main() -> Result<()> {
    let Some(args) = Args::parse()? else {
        return Ok(());
    };
    // Before pinning: afterwards `nproc` would count the one allowed core.
    let nproc = command_text(Path::new("nproc"), &[]).unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = if cores >= 2 {
        // Before any thread exists, so everything this process starts stays on the core.
        pin_to(std::process::id(), LOADGEN_CORE)?;
        true
    } else {
        println!("WARNING: only {cores} core available: nothing is pinned");
        false
    };
    raise_fd_limit(args.idle);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        tokio::select! {
            result = run(args, pinned, nproc) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    })
}

async fn run(args: Args, pinned: bool, nproc: String) -> Result<()> {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs();
    let vigil_bin = vigil_binary(&args)?;
    let nginx_bin = if args.no_nginx || !args.runs(Part::Compare) {
        None
    } else {
        find_nginx()
    };
    let env = environment(&vigil_bin, nginx_bin.as_deref(), nproc);
    print_environment(&env, &args);

    let tmp = tempfile::Builder::new()
        .prefix("vigil-bench-")
        .tempdir()
        .context("creating a temp dir")?;
    let dir = tmp.path().to_path_buf();
    let pki = Pki::create(&dir)?;

    let upstream = Upstream::start().await?;
    println!("upstream: http://{} (in this process)", upstream.addr);

    let measure = Duration::from_secs_f64(args.seconds);
    let warmup = Duration::from_secs_f64((args.seconds / 5.0).clamp(0.2, 1.0));
    let bench = Bench {
        served: upstream.served.clone(),
        clk_tck: clk_tck(),
    };
    let ctx = Ctx {
        args: &args,
        bench: &bench,
        vigil_bin: &vigil_bin,
        dir: &dir,
        tls: TlsConnector::from(pki.client_config()?),
        upstream: upstream.addr,
        pinned,
        warmup,
        measure,
    };
    let mut report = Report::default();
    let mut notes: Vec<String> = Vec::new();
    // Scenarios that could not be measured although they were asked for.
    let mut failed: Vec<String> = Vec::new();

    if args.runs(Part::Compare) {
        compare(&ctx, &env, nginx_bin.as_deref(), &mut report, &mut notes).await?;
    }
    if args.runs(Part::Oidc) {
        eprintln!("... oidc session: starting the OpenID Provider");
        match support::oidc::run(&ctx).await {
            Ok(r) => report.oidc = Some(r),
            Err(e) if support::oidc::is_missing_node(&e) => {
                let msg = format!("oidc session scenario SKIPPED: {e:#}");
                println!("\n*** {msg} ***");
                notes.push(msg);
            }
            Err(e) => {
                let msg = format!("oidc session scenario FAILED: {e:#}");
                println!("\n!!! {msg}");
                failed.push(msg);
            }
        }
    }
    if args.runs(Part::Reload) {
        match support::reload::run(&ctx).await {
            Ok(r) => report.reload = Some(r),
            Err(e) => {
                let msg = format!("reload scenario FAILED: {e:#}");
                println!("\n!!! {msg}");
                failed.push(msg);
            }
        }
    }

    if args.runs(Part::Revocation) {
        eprintln!("... revocation: starting the OpenID Provider");
        match support::revocation::run(&ctx).await {
            Ok(r) => report.revocation = Some(r),
            Err(e) if support::oidc::is_missing_node(&e) => {
                let msg = format!("revocation scenario SKIPPED: {e:#}");
                println!("\n*** {msg} ***");
                notes.push(msg);
            }
            Err(e) => {
                let msg = format!("revocation scenario FAILED: {e:#}");
                println!("\n!!! {msg}");
                failed.push(msg);
            }
        }
    }

    if args.runs(Part::Kx) {
        match key_exchange(&ctx, &pki).await {
            Ok(rows) => report.kx = rows,
            Err(e) => {
                let msg = format!("key exchange scenario FAILED: {e:#}");
                println!("\n!!! {msg}");
                failed.push(msg);
            }
        }
    }

    if args.runs(Part::Rego) {
        match rego_cost(&ctx).await {
            Ok(rows) => report.rego = rows,
            Err(e) => {
                let msg = format!("rego scenario FAILED: {e:#}");
                println!("\n!!! {msg}");
                failed.push(msg);
            }
        }
    }

    if args.runs(Part::Alerts) {
        match support::alerts::alerts_cost(&ctx).await {
            Ok(alerts) => report.alerts = Some(alerts),
            Err(e) => {
                let msg = format!("alerts scenario FAILED: {e:#}");
                println!("\n!!! {msg}");
                failed.push(msg);
            }
        }
    }

    if args.runs(Part::Upstreams) {
        match support::upstreams::run(&ctx).await {
            Ok(r) => report.upstreams = Some(r),
            Err(e) => {
                let msg = format!("upstreams scenario FAILED: {e:#}");
                println!("\n!!! {msg}");
                failed.push(msg);
            }
        }
    }

    if args.runs(Part::Detectors) {
        match detectors_cost(&ctx).await {
            Ok(rows) => report.detectors = rows,
            Err(e) => {
                let msg = format!("detectors scenario FAILED: {e:#}");
                println!("\n!!! {msg}");
                failed.push(msg);
            }
        }
    }

    if args.runs(Part::Fleet) {
        match support::fleet::run(&ctx).await {
            Ok(r) => report.fleet = Some(r),
            Err(e) if support::fleet::is_missing_redis(&e) => {
                let msg = format!("fleet scenario SKIPPED: {e:#}");
                println!("\n*** {msg} ***");
                notes.push(msg);
            }
            Err(e) => {
                let msg = format!("fleet scenario FAILED: {e:#}");
                println!("\n!!! {msg}");
                failed.push(msg);
            }
        }
    }

    notes.extend(failed.iter().cloned());
    let summary = summarise(&report, &mut notes);
    let json = report_json(&report, &env, &args, &summary, &notes, started);
    let path = write_json(&json, started)?;
    println!("\nresults written to {}", path.display());

    if args.keep_temp {
        let kept = tmp.keep();
        println!("temp dir kept: {}", kept.display());
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    if report.total_errors() > 0 {
        bail!(
            "{} requests, connections or reloads FAILED during the run; see the tables above",
            report.total_errors()
        );
    }
    Ok(())
}

/// What every scenario needs.
struct Ctx<'a> {
    args: &'a Args,
    bench: &'a Bench,
    vigil_bin: &'a Path,
    /// The temp dir: the PKI is here; each scenario writes its own files under it.
    dir: &'a Path,
    /// The load generator's client certificate, TLS 1.3, X25519, no resumption.
    tls: TlsConnector,
    upstream: SocketAddr,
    pinned: bool,
    warmup: Duration,
    measure: Duration,
}

/// Vigil against nginx, the floor proxy (benches/floor.rs) and the upstream directly: idle
/// memory, keep-alive, latency, handshakes. The proxies are stopped before it returns.
async fn compare(
    ctx: &Ctx<'_>,
    env: &Environment,
    nginx_bin: Option<&Path>,
    report: &mut Report,
    notes: &mut Vec<String>,
) -> Result<()> {
    let args = ctx.args;
    let vigil = start_vigil(ctx.vigil_bin, ctx.dir, ctx.upstream, ctx.pinned).await?;
    let mut skipped = Vec::new();
    let nginx = match (nginx_bin, args.no_nginx) {
        (_, true) => {
            skipped.push("nginx comparison skipped (--no-nginx)".to_owned());
            None
        }
        (None, false) => {
            skipped.push(
                "nginx comparison SKIPPED: nginx is not installed (scripts/bench installs it)"
                    .into(),
            );
            None
        }
        (Some(bin), false) => {
            match start_nginx(bin, ctx.dir, &env.nginx_configure, ctx.upstream, ctx.pinned).await {
                Ok(n) => Some(n),
                Err(e) => {
                    skipped.push(format!(
                        "nginx comparison SKIPPED: nginx did not start: {e:#}"
                    ));
                    None
                }
            }
        }
    };
    let floor = match floor_binary() {
        Ok(bin) => match start_floor(&bin, ctx.dir, ctx.upstream, ctx.pinned).await {
            Ok(f) => Some(f),
            Err(e) => {
                skipped.push(format!(
                    "floor comparison SKIPPED: the floor proxy did not start: {e:#}"
                ));
                None
            }
        },
        Err(e) => {
            skipped.push(format!("floor comparison SKIPPED: {e:#}"));
            None
        }
    };
    for n in &skipped {
        println!("\n*** {n} ***");
    }
    notes.extend(skipped);

    let mut targets = vec![Target {
        name: "vigil",
        ep: Endpoint::new(vigil.addr, Some(ctx.tls.clone())),
        proxy: Some(&vigil),
    }];
    if let Some(n) = &nginx {
        targets.push(Target {
            name: "nginx",
            ep: Endpoint::new(n.addr, Some(ctx.tls.clone())),
            proxy: Some(n),
        });
    }
    if let Some(f) = &floor {
        targets.push(Target {
            name: "floor",
            ep: Endpoint::new(f.addr, Some(ctx.tls.clone())),
            proxy: Some(f),
        });
    }
    targets.push(Target {
        name: "direct",
        ep: Endpoint::new(ctx.upstream, None),
        proxy: None,
    });

    println!();
    for t in &targets {
        let (_, info) = timeout(CONNECT_TIMEOUT, connect(&t.ep)).await?;
        let pin = t
            .proxy
            .map(|p| format!(", proxy cpus {}", cpus_allowed(p.pid)))
            .unwrap_or_default();
        println!(
            "{:<6} {}{}",
            t.name,
            info.unwrap_or_else(|| "plain HTTP/1.1 (no TLS)".into()),
            pin
        );
    }

    // Idle memory first, while the proxies' heaps are small: a heap already grown by the other
    // scenarios would hide part of what idle connections cost.
    let mut idle = Vec::new();
    for t in targets.iter().filter(|t| t.proxy.is_some()) {
        eprintln!("... idle memory: {}", t.name);
        idle.push(ctx.bench.idle_memory(t, args.idle).await?);
    }
    print_idle(&idle, args.idle);
    report.idle = idle;

    let scenarios = [
        Scenario::KeepAlive(args.connections),
        Scenario::Latency,
        Scenario::Handshake(args.handshake_connections),
    ];
    for scenario in scenarios {
        let mut rows = Vec::new();
        for t in &targets {
            eprintln!("... {}: {}", scenario.key(), t.name);
            rows.push(
                ctx.bench
                    .scenario(t, scenario, ctx.warmup, ctx.measure)
                    .await?,
            );
        }
        print_scenario(scenario, &rows);
        report.scenarios.push((scenario, rows));
    }

    for t in &targets {
        if let Some(p) = t.proxy
            && let Some(msg) = p.exited()
        {
            notes.push(format!("{} {msg} during the run", t.name));
        }
    }
    let pki = Pki::load(ctx.dir)?;
    let alone = rustls_handshake_alone(ctx.dir, &pki, 400)?;
    println!(
        "\n== handshake: rustls's server side alone, in memory (the same certificates, TLS 1.3, X25519, client certificate verified), median of 400 =="
    );
    println!("{alone:.1} µs per handshake");
    report.handshake_alone_us = Some(alone);
    Ok(())
}

/// The CPU a rustls server spends on one full TLS 1.3 handshake with a client certificate,
/// without sockets, HTTP or anything of a proxy: a client and a server connection in this
/// process trading their records in memory, only the server's part timed (this thread is
/// pinned to its core). The median of `rounds`, in microseconds: what a proxy's handshake
/// cannot go below.
fn rustls_handshake_alone(dir: &Path, pki: &Pki, rounds: usize) -> Result<f64> {
    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
    let mut provider = default_provider();
    provider.kx_groups = vec![kx_group::X25519];
    let provider = Arc::new(provider);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone())?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let chain =
        CertificateDer::pem_file_iter(dir.join("server.pem"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key"))?;
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    server_config.send_tls13_tickets = 0;
    let server_config = Arc::new(server_config);
    let client_config = pki.client_config()?;
    let name = ServerName::try_from("localhost")?;
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let mut client = rustls::ClientConnection::new(client_config.clone(), name.clone())?;
        let started = Instant::now();
        let mut server = rustls::ServerConnection::new(server_config.clone())?;
        let mut spent = started.elapsed();
        for _ in 0..8 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire)?;
            }
            let started = Instant::now();
            let mut rd = &wire[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd)?;
                server.process_new_packets()?;
            }
            let mut back = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut back)?;
            }
            spent += started.elapsed();
            let mut rd = &back[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd)?;
                client.process_new_packets()?;
            }
        }
        if client.is_handshaking() || server.is_handshaking() {
            bail!("the in-memory handshake did not complete");
        }
        times.push(spent);
    }
    times.sort();
    Ok(times[times.len() / 2].as_secs_f64() * 1e6)
}

/// Full handshakes with the hybrid post-quantum key exchange against X25519 alone, on one Vigil
/// (its default `[tls] key_exchange` accepts both): the same handshake scenario twice, the
/// client offering only X25519MLKEM768, then only X25519; each measured twice, alternating, so
/// drift on the shared machine falls on both. The ratio of proxy CPU per handshake is what the
/// post-quantum key exchange costs the proxy.
async fn key_exchange(ctx: &Ctx<'_>, pki: &Pki) -> Result<Vec<Row>> {
    use rustls::crypto::aws_lc_rs::kx_group;
    let args = ctx.args;
    let vigil = start_vigil(ctx.vigil_bin, ctx.dir, ctx.upstream, ctx.pinned).await?;
    let targets = [
        Target {
            name: "X25519MLKEM768",
            ep: Endpoint::new(
                vigil.addr,
                Some(TlsConnector::from(
                    pki.client_config_with(kx_group::X25519MLKEM768)?,
                )),
            ),
            proxy: Some(&vigil),
        },
        Target {
            name: "X25519",
            ep: Endpoint::new(vigil.addr, Some(ctx.tls.clone())),
            proxy: Some(&vigil),
        },
    ];
    println!();
    for t in &targets {
        let (_, info) = timeout(CONNECT_TIMEOUT, connect(&t.ep)).await?;
        println!("kx {:<15} {}", t.name, info.unwrap_or_default());
    }
    let scenario = Scenario::Handshake(args.handshake_connections);
    let rows = alternately(ctx, "kx", &targets, scenario).await?;
    print_table(
        &format!(
            "key exchange: {}; the client offers X25519MLKEM768 only, or X25519 only",
            scenario.title()
        ),
        &rows,
        ("X25519MLKEM768", "X25519"),
    );
    if let Some(msg) = vigil.exited() {
        bail!("vigil {msg} during the key exchange scenario");
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Environment and processes

fn pin_to(pid: u32, core: &str) -> Result<()> {
    let out = Command::new("taskset")
        .args(["-a", "-cp", core, &pid.to_string()])
        .output()
        .context("running taskset (util-linux) to pin the load generator")?;
    if !out.status.success() {
        bail!(
            "taskset -a -cp {core} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The soft and hard limits on open files of this process.
fn fd_limits() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut values = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(u64::MAX));
    Some((values.next()?, values.next()?))
}

/// Thousands of sockets need more than the usual 1024 descriptors (the proxies hold two per
/// idle connection); children inherit the limit.
fn raise_fd_limit(idle: usize) {
    let want = 2 * idle as u64 + 1024;
    let Some((soft, hard)) = fd_limits() else {
        return;
    };
    if soft >= want {
        return;
    }
    let target = want.max(65_536);
    let pid = std::process::id().to_string();
    for limit in [format!("{target}:{target}"), format!("{hard}:{hard}")] {
        let _ = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={limit}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if fd_limits().is_some_and(|(s, _)| s >= want) {
            return;
        }
    }
    let now = fd_limits().map_or(soft, |(s, _)| s);
    println!(
        "WARNING: open-file limit {now} is below the {want} that --idle {idle} needs; \
         raise it (ulimit -n) or lower --idle"
    );
}

fn cpus_allowed(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

/// `<target dir>/release`, where scripts/bench builds the binaries.
fn release_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    target.join("release")
}

fn vigil_binary(args: &Args) -> Result<PathBuf> {
    let path = match &args.vigil {
        Some(p) => p.clone(),
        None => release_dir().join("vigil"),
    };
    if !path.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release --bin vigil` (scripts/bench does)",
            path.display()
        );
    }
    Ok(path)
}

/// The floor proxy (benches/floor.rs), built as an example.
fn floor_binary() -> Result<PathBuf> {
    let path = release_dir().join("examples").join("floor");
    if !path.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release --example floor` (scripts/bench \
             does)",
            path.display()
        );
    }
    Ok(path)
}

fn find_nginx() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("nginx"))
            .find(|p| p.is_file())
    });
    from_path.or_else(|| {
        let sbin = PathBuf::from("/usr/sbin/nginx");
        sbin.is_file().then_some(sbin)
    })
}

struct Environment {
    vigil_version: String,
    nginx_version: Option<String>,
    nginx_configure: String,
    nproc: String,
    kernel: String,
    cpu: String,
    loadavg: String,
}

fn command_text(program: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Some(text.trim().to_owned())
}

fn environment(vigil: &Path, nginx: Option<&Path>, nproc: String) -> Environment {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "?".into());
    Environment {
        vigil_version: command_text(vigil, &["--version"]).unwrap_or_else(|| "?".into()),
        nginx_version: nginx.and_then(|n| command_text(n, &["-v"])),
        nginx_configure: nginx
            .and_then(|n| command_text(n, &["-V"]))
            .unwrap_or_default(),
        nproc,
        kernel: command_text(Path::new("uname"), &["-sr"]).unwrap_or_else(|| "?".into()),
        cpu,
        loadavg: std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
    }
}

fn print_environment(env: &Environment, args: &Args) {
    println!("== Vigil proxy benchmark ==");
    println!("vigil:   {}", env.vigil_version);
    println!(
        "nginx:   {}",
        env.nginx_version
            .as_deref()
            .unwrap_or(if args.runs(Part::Compare) {
                "not installed"
            } else {
                "not used (no compare scenarios)"
            })
    );
    println!("nproc:   {}   cpu: {}   {}", env.nproc, env.cpu, env.kernel);
    println!("loadavg: {}", env.loadavg);
    if let Some(one) = env
        .loadavg
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        && one > 0.5
    {
        println!(
            "note: the machine is already busy (1-min load {one}): req/s and latency will be \
                 noisy; CPU per request much less so"
        );
    }
    println!(
        "proxy pinned to core {PROXY_CORE}; load generator and upstream pinned to core \
         {LOADGEN_CORE}; {} s per scenario and target",
        args.seconds
    );
    println!(
        "scenarios: {}",
        args.parts
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// A child process that is stopped (SIGTERM, then SIGKILL with its children) when dropped.
struct ChildGuard {
    name: &'static str,
    child: Child,
}

impl ChildGuard {
    fn spawn(name: &'static str, mut cmd: Command, dir: &Path) -> Result<Self> {
        let stdout = File::create(dir.join(format!("{name}.stdout")))
            .with_context(|| format!("creating {name}.stdout"))?;
        let stderr = File::create(dir.join(format!("{name}.stderr")))
            .with_context(|| format!("creating {name}.stderr"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self { name, child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.pid().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop on SIGTERM: killing it", self.name);
        let children = children_of(self.pid());
        let _ = self.child.kill();
        let _ = self.child.wait();
        for c in children {
            let _ = Command::new("kill")
                .args(["-KILL", &c.to_string()])
                .status();
        }
    }
}

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| stat_fields(&s).and_then(|f| f.get(1)?.parse::<u32>().ok()))
                == Some(pid)
        })
        .collect()
}

/// The fields of /proc/PID/stat after the command name, so index 0 is field 3 (state).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

fn clk_tck() -> u64 {
    command_text(Path::new("getconf"), &["CLK_TCK"])
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A proxy under test, running as its own process.
struct Proxy {
    kind: &'static str,
    /// Stops the process when the proxy is dropped.
    _guard: ChildGuard,
    pid: u32,
    addr: SocketAddr,
    /// nginx: the worker processes; they do all the work. Vigil and the floor: the process
    /// itself.
    workers: Vec<u32>,
}

impl Proxy {
    fn cpu_pids(&self) -> &[u32] {
        &self.workers
    }

    fn exited(&self) -> Option<String> {
        if !Path::new(&format!("/proc/{}", self.pid)).exists() {
            return Some("EXITED".into());
        }
        let now = if self.kind == "nginx" {
            children_of(self.pid)
        } else {
            vec![self.pid]
        };
        (now != self.workers)
            .then(|| format!("changed worker processes {:?} -> {now:?}", self.workers))
    }
}

async fn wait_ready(name: &str, ep: &Endpoint, guard: &mut ChildGuard, dir: &Path) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("not tried");
    while Instant::now() < deadline {
        if let Some(status) = guard.child.try_wait()? {
            bail!(
                "{name} exited ({status}) before it was ready; its stderr:\n{}",
                tail(&dir.join(format!("{name}.stderr")))
            );
        }
        let attempt = async {
            let (mut conn, _) = connect(ep).await?;
            request(ep, &mut conn).await
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = format!("{e:#}"),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{name} was not ready after {READY_TIMEOUT:?} (last attempt: {last}); its stderr:\n{}",
        tail(&dir.join(format!("{name}.stderr")))
    )
}

/// `dir/logs`, where the proxies' per-request logs go.
fn logs_dir(dir: &Path) -> Result<PathBuf> {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    Ok(logs)
}

fn pinned_command(program: &Path, pinned: bool) -> Command {
    if pinned {
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(PROXY_CORE).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// The `[server]`, `[tls]`, `[admin]` and `[log]` sections every bench instance of Vigil uses;
/// `dir` holds `server.pem`, `server.key` and `ca.pem`. `admin`: None turns the listener off.
fn vigil_base_config(addr: SocketAddr, admin: Option<SocketAddr>, decisions: &Path) -> String {
    let admin = admin.map(|a| a.to_string()).unwrap_or_default();
    // Long timeouts so the idle connections outlive the memory measurement; a short drain so
    // the process stops promptly at the end.
    format!(
        r#"# Written by benches/proxy.rs
[server]
listen = "{addr}"
header_read_timeout = "300s"
idle_timeout = "300s"
# The load generator is one source: no per-source share; room for --idle 10000 and more.
max_connections_per_source = 0
max_connections = 50000
drain_timeout = "1s"

[tls]
cert = "server.pem"
key = "server.key"
client_ca = ["ca.pem"]

[admin]
listen = "{admin}"

[log]
decisions = "{decisions}"
level = "warn"
"#,
        decisions = decisions.display(),
    )
}

/// The workload route: any host, the load generator's SPIFFE ID.
fn workload_route(name: &str, host: &str, path: Option<&str>, upstream: SocketAddr) -> String {
    let path = path
        .map(|p| format!("path = \"{p}\"\n"))
        .unwrap_or_default();
    format!(
        r#"
[[route]]
name = "{name}"
host = "{host}"
{path}upstream = "http://{upstream}"
login = "none"
allow = [{{ spiffe = ["{CLIENT_SPIFFE_ID}"] }}]
"#
    )
}

async fn start_vigil(bin: &Path, dir: &Path, upstream: SocketAddr, pinned: bool) -> Result<Proxy> {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port()?);
    // Logs go to their own directory: Vigil watches the directories of its configuration files
    // for changes, and a log written beside them would wake that watcher on every request.
    let decisions = logs_dir(dir)?.join("vigil-decisions.log");
    // Every check on: the route's rule, the decision log with its facts, metrics, and the
    // signed assertion on every forwarded request.
    let keys = dir.join("assertion.pem");
    if !keys.exists() {
        let out = Command::new(bin)
            .args(["keys", "assertion"])
            .arg(&keys)
            .output()
            .context("running vigil keys assertion")?;
        if !out.status.success() {
            bail!(
                "vigil keys assertion failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let config = vigil_base_config(addr, None, &decisions)
        + "\n[assertion]\nkeys_file = \"assertion.pem\"\n"
        + &workload_route("bench", "*", None, upstream);
    let path = dir.join("vigil.toml");
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    let tls = TlsConnector::from(Pki::load(dir)?.client_config()?);
    spawn_vigil(bin, "vigil", &path, Endpoint::new(addr, Some(tls)), pinned).await
}

/// Runs `vigil run --config <config>` (its stdout and stderr beside the config file, as
/// `<name>.stdout` and `<name>.stderr`) and waits until `ready` answers a request.
async fn spawn_vigil(
    bin: &Path,
    name: &'static str,
    config: &Path,
    ready: Endpoint,
    pinned: bool,
) -> Result<Proxy> {
    let dir = config.parent().context("config file without a directory")?;
    let mut cmd = pinned_command(bin, pinned);
    cmd.arg("run").arg("--config").arg(config);
    let mut guard = ChildGuard::spawn(name, cmd, dir)?;
    wait_ready(name, &ready, &mut guard, dir).await?;
    let pid = guard.pid();
    Ok(Proxy {
        kind: "vigil",
        _guard: guard,
        pid,
        addr: ready.addr,
        workers: vec![pid],
    })
}

fn nginx_config(dir: &Path, configure: &str, addr: SocketAddr, upstream: SocketAddr) -> String {
    let d = dir.display();
    let mut temp_paths = format!(
        "    client_body_temp_path {d}/nginx-tmp/body;\n    proxy_temp_path {d}/nginx-tmp/proxy;\n"
    );
    // Modules compiled in create their default temp dirs under /var unless told otherwise; naming
    // a path for a module that is not compiled in is an error.
    for module in ["fastcgi", "uwsgi", "scgi"] {
        if !configure.contains(&format!("--without-http_{module}_module")) {
            let _ = writeln!(temp_paths, "    {module}_temp_path {d}/nginx-tmp/{module};");
        }
    }
    let user = if command_text(Path::new("id"), &["-u"]).as_deref() == Some("0") {
        // As root the worker would otherwise switch to nobody, who cannot enter the temp dir.
        "user root;\n"
    } else {
        ""
    };
    format!(
        r#"# Written by benches/proxy.rs
{user}worker_processes 1;
worker_rlimit_nofile 65536;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;

events {{
    worker_connections 16384;
}}

http {{
    access_log {d}/logs/nginx-access.log;
{temp_paths}
    # Like Vigil's bench config: connections stay open for the whole run.
    keepalive_timeout 300s;
    keepalive_requests 1000000;

    upstream bench_upstream {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}

    server {{
        listen {addr} ssl;
        server_name localhost;
        ssl_certificate {d}/server.pem;
        ssl_certificate_key {d}/server.key;
        ssl_protocols TLSv1.3;
        ssl_verify_client on;
        ssl_client_certificate {d}/ca.pem;
        ssl_verify_depth 2;

        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Some identity for the upstream, as Vigil sends (nginx cannot read the SPIFFE ID).
            proxy_set_header X-Client-Verify $ssl_client_verify;
            proxy_set_header X-Client-Subject $ssl_client_s_dn;
        }}
    }}
}}
"#
    )
}

async fn start_nginx(
    bin: &Path,
    dir: &Path,
    configure: &str,
    upstream: SocketAddr,
    pinned: bool,
) -> Result<Proxy> {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port()?);
    std::fs::create_dir_all(dir.join("nginx-tmp")).context("creating nginx-tmp")?;
    logs_dir(dir)?;
    let path = dir.join("nginx.conf");
    std::fs::write(&path, nginx_config(dir, configure, addr, upstream))
        .with_context(|| format!("writing {}", path.display()))?;
    let mut cmd = pinned_command(bin, pinned);
    cmd.arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"]);
    let mut guard = ChildGuard::spawn("nginx", cmd, dir)?;
    let ep = Endpoint::new(
        addr,
        Some(TlsConnector::from(Pki::load(dir)?.client_config()?)),
    );
    if let Err(e) = wait_ready("nginx", &ep, &mut guard, dir).await {
        bail!(
            "{e:#}\nnginx-error.log:\n{}",
            tail(&dir.join("nginx-error.log"))
        );
    }
    let pid = guard.pid();
    let workers = children_of(pid);
    if workers.is_empty() {
        bail!("nginx master {pid} has no worker process");
    }
    Ok(Proxy {
        kind: "nginx",
        _guard: guard,
        pid,
        addr,
        workers,
    })
}

/// Runs the floor proxy (benches/floor.rs) on the certificates in `dir`, forwarding to
/// `upstream`, and waits until it answers a request.
async fn start_floor(bin: &Path, dir: &Path, upstream: SocketAddr, pinned: bool) -> Result<Proxy> {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port()?);
    let mut cmd = pinned_command(bin, pinned);
    cmd.arg(addr.to_string()).arg(upstream.to_string()).arg(dir);
    let mut guard = ChildGuard::spawn("floor", cmd, dir)?;
    let ep = Endpoint::new(
        addr,
        Some(TlsConnector::from(Pki::load(dir)?.client_config()?)),
    );
    wait_ready("floor", &ep, &mut guard, dir).await?;
    let pid = guard.pid();
    Ok(Proxy {
        kind: "floor",
        _guard: guard,
        pid,
        addr,
        workers: vec![pid],
    })
}

// ---------------------------------------------------------------------------------------------
// PKI

struct Pki {
    ca: CertificateDer<'static>,
    client_chain: Vec<CertificateDer<'static>>,
    client_key: PrivateKeyDer<'static>,
}

impl Pki {
    /// A CA, a server certificate for localhost and 127.0.0.1, and the load generator's
    /// workload certificate, written to `dir`.
    fn create(dir: &Path) -> Result<Self> {
        let ca = Authority::generate("Vigil Bench CA").context("generating the bench CA")?;
        let server = ca
            .issue(&LeafSpec::server(
                vec!["localhost".into()],
                vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            ))
            .context("issuing the server certificate")?;
        let client = ca
            .issue(&LeafSpec::workload(CLIENT_SPIFFE_ID))
            .context("issuing the client certificate")?;
        for (name, text) in [
            ("ca.pem", ca.cert_pem()),
            ("server.pem", &server.cert_pem),
            ("server.key", &server.key_pem),
            ("client.pem", &client.cert_pem),
            ("client.key", &client.key_pem),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Self::load(dir)
    }

    fn load(dir: &Path) -> Result<Self> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        };
        let ca = CertificateDer::from_pem_slice(&read("ca.pem")?).context("parsing ca.pem")?;
        let client_chain = vec![
            CertificateDer::from_pem_slice(&read("client.pem")?).context("parsing client.pem")?,
        ];
        let client_key =
            PrivateKeyDer::from_pem_slice(&read("client.key")?).context("parsing client.key")?;
        Ok(Self {
            ca,
            client_chain,
            client_key,
        })
    }

    /// TLS 1.3 only, X25519 only, client certificate always, never a resumed session.
    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        self.client_config_with(rustls::crypto::aws_lc_rs::kx_group::X25519)
    }

    /// As [`Pki::client_config`], offering `group` as the only key exchange.
    fn client_config_with(
        &self,
        group: &'static dyn rustls::crypto::SupportedKxGroup,
    ) -> Result<Arc<rustls::ClientConfig>> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.kx_groups = vec![group];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).context("adding the bench CA")?;
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 client config")?
            .with_root_certificates(roots)
            .with_client_auth_cert(self.client_chain.clone(), self.client_key.clone_key())
            .context("client certificate")?;
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream

struct Upstream {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
}

impl Upstream {
    /// HTTP/1.1 with keep-alive; every request gets the same 100-byte body.
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the upstream")?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicU64::new(0));
        let mut text = b"hello from the vigil bench upstream ".to_vec();
        text.resize(BODY_LEN - 1, b'.');
        text.push(b'\n');
        let body = Bytes::from(text);
        let counter = served.clone();
        tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let counter = counter.clone();
                let body = body.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<Incoming>| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        let mut response = Response::new(Full::new(body.clone()));
                        response
                            .headers_mut()
                            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, served })
    }
}

// ---------------------------------------------------------------------------------------------
// Load generator

#[derive(Clone)]
struct Endpoint {
    addr: SocketAddr,
    /// None: plain HTTP.
    tls: Option<TlsConnector>,
    /// The path every request asks for.
    path: &'static str,
    /// A session cookie to present, kept up to date from the proxy's `Set-Cookie`.
    cookie: Option<Arc<support::SessionCookie>>,
}

impl Endpoint {
    /// `/bench` on `addr`, no cookie.
    fn new(addr: SocketAddr, tls: Option<TlsConnector>) -> Self {
        Self {
            addr,
            tls,
            path: DEFAULT_PATH,
            cookie: None,
        }
    }
}

struct Target<'a> {
    name: &'static str,
    ep: Endpoint,
    proxy: Option<&'a Proxy>,
}

struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Conn {
    /// Closes the connection (close_notify and FIN) and waits until it is gone.
    async fn close(self) {
        drop(self.sender);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.driver).await;
    }
}

async fn timeout<T>(limit: Duration, f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| anyhow!("timed out after {limit:?}"))?
}

/// Opens a connection: TCP, then (for proxies) a full TLS 1.3 handshake with the client
/// certificate. Returns the negotiated TLS parameters when there is TLS.
async fn connect(ep: &Endpoint) -> Result<(Conn, Option<String>)> {
    let tcp = TcpStream::connect(ep.addr)
        .await
        .with_context(|| format!("connecting to {}", ep.addr))?;
    tcp.set_nodelay(true)?;
    match &ep.tls {
        None => Ok((http1(tcp).await?, None)),
        Some(tls) => {
            let stream = tls
                .connect(ServerName::try_from("localhost")?, tcp)
                .await
                .context("TLS handshake")?;
            let (_, session) = stream.get_ref();
            let info = format!(
                "{:?} {:?} {}",
                session.protocol_version().context("no TLS version")?,
                session
                    .negotiated_cipher_suite()
                    .context("no cipher suite")?
                    .suite(),
                session
                    .negotiated_key_exchange_group()
                    .map_or("?".into(), |g| format!("{:?}", g.name())),
            );
            Ok((http1(stream).await?, Some(info)))
        }
    }
}

async fn http1<I>(io: I) -> Result<Conn>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .context("HTTP/1.1 client handshake")?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Conn { sender, driver })
}

/// One GET of `ep.path` (with `ep.cookie`); anything but a 200 with the upstream's exact body is
/// an error.
async fn request(ep: &Endpoint, conn: &mut Conn) -> Result<()> {
    let mut req = Request::get(ep.path)
        .header(HOST, "localhost")
        .header(USER_AGENT, "vigil-bench");
    if let Some(cookie) = &ep.cookie {
        req = req.header(COOKIE, cookie.header());
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
    let status = response.status();
    if let Some(cookie) = &ep.cookie {
        cookie.update(response.headers());
    }
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the response body")?
        .to_bytes();
    if status != StatusCode::OK {
        let shown = &body[..body.len().min(200)];
        bail!("status {status}: {}", String::from_utf8_lossy(shown));
    }
    if body.len() != BODY_LEN {
        bail!("a {}-byte body, expected {BODY_LEN}", body.len());
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    /// The first few distinct error messages.
    messages: Vec<String>,
    latencies_ns: Vec<u64>,
}

impl Tally {
    fn error(&mut self, e: &anyhow::Error) {
        self.errors += 1;
        let text = format!("{e:#}");
        if self.messages.len() < 5 && !self.messages.contains(&text) {
            self.messages.push(text);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.errors += other.errors;
        for m in other.messages {
            if self.messages.len() < 5 && !self.messages.contains(&m) {
                self.messages.push(m);
            }
        }
        self.latencies_ns.extend(other.latencies_ns);
    }
}

/// Sends requests back to back on `conn` until `deadline`; reconnects after an error.
async fn keepalive_loop(
    ep: Endpoint,
    conn: Option<Conn>,
    deadline: Instant,
) -> (Option<Conn>, Tally) {
    let mut tally = Tally::default();
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
        let t0 = Instant::now();
        match timeout(REQUEST_TIMEOUT, request(&ep, c)).await {
            Ok(()) => {
                tally.latencies_ns.push(t0.elapsed().as_nanos() as u64);
                tally.ok += 1;
            }
            Err(e) => {
                tally.error(&e);
                conn = None;
            }
        }
    }
    (conn, tally)
}

/// A new connection (full handshake) for every request, `loops` at a time, until `deadline`.
async fn handshake_round(ep: &Endpoint, loops: usize, deadline: Instant) -> Tally {
    let mut set = JoinSet::new();
    for _ in 0..loops {
        let ep = ep.clone();
        set.spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let once = async {
                    let (mut conn, _) = connect(&ep).await?;
                    request(&ep, &mut conn).await?;
                    Ok::<_, anyhow::Error>(conn)
                };
                match timeout(CONNECT_TIMEOUT + REQUEST_TIMEOUT, once).await {
                    Ok(conn) => {
                        tally.latencies_ns.push(t0.elapsed().as_nanos() as u64);
                        tally.ok += 1;
                        conn.close().await;
                    }
                    Err(e) => {
                        tally.error(&e);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            tally
        });
    }
    let mut total = Tally::default();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(t) => total.merge(t),
            Err(e) => total.error(&anyhow!("load task failed: {e}")),
        }
    }
    total
}

async fn keepalive_round(
    ep: &Endpoint,
    conns: Vec<Option<Conn>>,
    deadline: Instant,
) -> (Vec<Option<Conn>>, Tally) {
    let mut set = JoinSet::new();
    for conn in conns {
        set.spawn(keepalive_loop(ep.clone(), conn, deadline));
    }
    let mut back = Vec::new();
    let mut total = Tally::default();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((c, t)) => {
                back.push(c);
                total.merge(t);
            }
            Err(e) => total.error(&anyhow!("load task failed: {e}")),
        }
    }
    (back, total)
}

// ---------------------------------------------------------------------------------------------
// Measurements from /proc

/// CPU time of a set of processes: per thread on-CPU nanoseconds, plus utime+stime in ticks.
#[derive(Debug, Clone, Default)]
struct Cpu {
    threads: BTreeMap<u32, u64>,
    ticks: u64,
}

fn read_cpu(pids: &[u32]) -> Result<Cpu> {
    let mut cpu = Cpu::default();
    for &pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat (did the process exit?)"))?;
        let fields = stat_fields(&stat).context("unreadable /proc/PID/stat")?;
        let field = |i: usize| -> Result<u64> {
            fields
                .get(i)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("/proc/{pid}/stat: no field {}", i + 3))
        };
        cpu.ticks += field(11)? + field(12)?; // fields 14 (utime) and 15 (stime)
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("listing /proc/{pid}/task"))?;
        for task in tasks {
            let task = task?;
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // A thread may exit between listing and reading; it then simply is not counted.
            if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat"))
                && let Some(ns) = text.split_whitespace().next().and_then(|v| v.parse().ok())
            {
                cpu.threads.insert(tid, ns);
            }
        }
    }
    Ok(cpu)
}

/// CPU nanoseconds spent between two samples, and where the number comes from. schedstat is
/// nanosecond-exact but forgets threads that exit; then fall back to the tick counters.
fn cpu_delta(before: &Cpu, after: &Cpu, clk_tck: u64) -> (u64, &'static str) {
    let all_alive = before.threads.keys().all(|t| after.threads.contains_key(t));
    if all_alive && !before.threads.is_empty() {
        let ns = after
            .threads
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(before.threads.get(tid).copied().unwrap_or(0)))
            .sum();
        (ns, "schedstat")
    } else {
        let ticks = after.ticks.saturating_sub(before.ticks);
        (ticks * 1_000_000_000 / clk_tck.max(1), "stat ticks")
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    rss_kib: u64,
    pss_kib: Option<u64>,
}

fn read_mem(pid: u32) -> Result<Mem> {
    let kib = |text: &str, key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        && let Some(rss) = kib(&text, "Rss:")
    {
        return Ok(Mem {
            rss_kib: rss,
            pss_kib: kib(&text, "Pss:"),
        });
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    Ok(Mem {
        rss_kib: kib(&text, "VmRSS:").context("no VmRSS")?,
        pss_kib: None,
    })
}

// ---------------------------------------------------------------------------------------------
// Scenarios

#[derive(Debug, Clone, Copy)]
enum Scenario {
    KeepAlive(usize),
    Latency,
    Handshake(usize),
}

impl Scenario {
    fn key(self) -> &'static str {
        match self {
            Scenario::KeepAlive(_) => "keep_alive",
            Scenario::Latency => "latency",
            Scenario::Handshake(_) => "handshake",
        }
    }

    fn title(self) -> String {
        match self {
            Scenario::KeepAlive(c) => {
                format!("keep-alive: {c} connections, requests back to back; CPU per request")
            }
            Scenario::Latency => {
                "latency: 1 connection, one request at a time; CPU per request".into()
            }
            Scenario::Handshake(c) => format!(
                "handshake: a new connection per request (full TLS 1.3 handshake with client \
                 certificate, no resumption), {c} at a time; CPU per handshake+request"
            ),
        }
    }
}

/// One target's numbers for one scenario.
struct Row {
    target: &'static str,
    ok: u64,
    errors: u64,
    messages: Vec<String>,
    wall: Duration,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    /// Proxy CPU ns per successful request (None for direct).
    proxy_cpu_ns: Option<f64>,
    proxy_busy: Option<f64>,
    cpu_source: Option<&'static str>,
    loadgen_cpu_ns: Option<f64>,
    upstream_served: u64,
}

impl Row {
    fn req_per_s(&self) -> f64 {
        self.ok as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Adds another measurement of the same target: counts and time add up, per-request CPU is
    /// weighted by requests, latency percentiles are kept from the larger sample.
    fn absorb(&mut self, other: Row) {
        let (a, b) = (self.ok as f64, other.ok as f64);
        let weighted = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if a + b > 0.0 => Some((x * a + y * b) / (a + b)),
            (x, None) => x,
            (None, y) => y,
            _ => None,
        };
        let wall = self.wall + other.wall;
        let busy = |x: Option<f64>, w: Duration| x.map(|x| x * w.as_secs_f64());
        self.proxy_busy = match (
            busy(self.proxy_busy, self.wall),
            busy(other.proxy_busy, other.wall),
        ) {
            (Some(x), Some(y)) => Some((x + y) / wall.as_secs_f64().max(1e-9)),
            _ => None,
        };
        self.proxy_cpu_ns = weighted(self.proxy_cpu_ns, other.proxy_cpu_ns);
        self.loadgen_cpu_ns = weighted(self.loadgen_cpu_ns, other.loadgen_cpu_ns);
        if other.ok > self.ok {
            self.p50_us = other.p50_us;
            self.p99_us = other.p99_us;
        }
        if other.cpu_source == Some("stat ticks") {
            self.cpu_source = other.cpu_source;
        }
        self.ok += other.ok;
        self.errors += other.errors;
        for m in other.messages {
            if self.messages.len() < 5 && !self.messages.contains(&m) {
                self.messages.push(m);
            }
        }
        self.wall = wall;
        self.upstream_served += other.upstream_served;
    }
}

struct IdleRow {
    target: &'static str,
    opened: usize,
    errors: u64,
    messages: Vec<String>,
    closed_early: usize,
    before: Mem,
    /// With every connection's handshake done, before any request on them.
    handshaken: Mem,
    after: Mem,
}

impl IdleRow {
    fn rss_kib_per_conn(&self) -> Option<f64> {
        (self.opened > 0)
            .then(|| (self.after.rss_kib as f64 - self.before.rss_kib as f64) / self.opened as f64)
    }

    fn handshaken_kib_per_conn(&self) -> Option<f64> {
        (self.opened > 0).then(|| {
            (self.handshaken.rss_kib as f64 - self.before.rss_kib as f64) / self.opened as f64
        })
    }

    fn pss_kib_per_conn(&self) -> Option<f64> {
        let (b, a) = (self.before.pss_kib?, self.after.pss_kib?);
        (self.opened > 0).then(|| (a as f64 - b as f64) / self.opened as f64)
    }
}

struct Bench {
    served: Arc<AtomicU64>,
    clk_tck: u64,
}

fn percentile_us(sorted_ns: &[u64], p: f64) -> Option<f64> {
    if sorted_ns.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted_ns.len() as f64).ceil() as usize;
    Some(sorted_ns[rank.clamp(1, sorted_ns.len()) - 1] as f64 / 1000.0)
}

impl Bench {
    async fn scenario(
        &self,
        t: &Target<'_>,
        scenario: Scenario,
        warmup: Duration,
        measure: Duration,
    ) -> Result<Row> {
        let me = [std::process::id()];
        match scenario {
            Scenario::KeepAlive(n) => {
                let (row, ()) = self
                    .keep_alive_with(t, n, warmup, measure, |_| async {})
                    .await?;
                Ok(row)
            }
            Scenario::Latency => {
                let (conn, _) = timeout(CONNECT_TIMEOUT, connect(&t.ep)).await?;
                let (conns, _) =
                    keepalive_round(&t.ep, vec![Some(conn)], Instant::now() + warmup).await;
                let start = self.sample(t, &me)?;
                let (conns, tally) = keepalive_round(&t.ep, conns, Instant::now() + measure).await;
                let end = self.sample(t, &me)?;
                for c in conns.into_iter().flatten() {
                    c.close().await;
                }
                Ok(self.row(t, tally, &start, &end))
            }
            Scenario::Handshake(loops) => {
                handshake_round(&t.ep, loops, Instant::now() + warmup).await;
                let start = self.sample(t, &me)?;
                let tally = handshake_round(&t.ep, loops, Instant::now() + measure).await;
                let end = self.sample(t, &me)?;
                // Let the closed connections finish on the proxy's side before the next scenario.
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(self.row(t, tally, &start, &end))
            }
        }
    }

    /// The keep-alive scenario: `n` connections, requests back to back. `during` runs beside the
    /// load for the measured time only (not the warm-up); it gets the end of that time, and
    /// what it returns comes back with the row.
    async fn keep_alive_with<F, Fut>(
        &self,
        t: &Target<'_>,
        n: usize,
        warmup: Duration,
        measure: Duration,
        during: F,
    ) -> Result<(Row, Fut::Output)>
    where
        F: FnOnce(Instant) -> Fut,
        Fut: Future,
    {
        let me = [std::process::id()];
        let mut conns = Vec::with_capacity(n);
        let mut opening = Tally::default();
        for _ in 0..n {
            match timeout(CONNECT_TIMEOUT, connect(&t.ep)).await {
                Ok((c, _)) => conns.push(Some(c)),
                Err(e) => {
                    opening.error(&e);
                    conns.push(None);
                }
            }
        }
        let (conns, _) = keepalive_round(&t.ep, conns, Instant::now() + warmup).await;
        let start = self.sample(t, &me)?;
        let deadline = Instant::now() + measure;
        let ((conns, mut tally), side) =
            tokio::join!(keepalive_round(&t.ep, conns, deadline), during(deadline));
        let end = self.sample(t, &me)?;
        for c in conns.into_iter().flatten() {
            c.close().await;
        }
        tally.merge(opening);
        Ok((self.row(t, tally, &start, &end), side))
    }

    fn sample(&self, t: &Target<'_>, me: &[u32]) -> Result<Sample> {
        Ok(Sample {
            at: Instant::now(),
            proxy: t.proxy.map(|p| read_cpu(p.cpu_pids())).transpose()?,
            loadgen: read_cpu(me)?,
            served: self.served.load(Ordering::Relaxed),
        })
    }

    fn row(&self, t: &Target<'_>, mut tally: Tally, start: &Sample, end: &Sample) -> Row {
        tally.latencies_ns.sort_unstable();
        let wall = end.at - start.at;
        let per = |ns: u64| (tally.ok > 0).then(|| ns as f64 / tally.ok as f64);
        let (proxy_ns, source) = match (&start.proxy, &end.proxy) {
            (Some(a), Some(b)) => {
                let (ns, src) = cpu_delta(a, b, self.clk_tck);
                (Some(ns), Some(src))
            }
            _ => (None, None),
        };
        let (loadgen_ns, _) = cpu_delta(&start.loadgen, &end.loadgen, self.clk_tck);
        Row {
            target: t.name,
            ok: tally.ok,
            errors: tally.errors,
            messages: tally.messages,
            wall,
            p50_us: percentile_us(&tally.latencies_ns, 50.0),
            p99_us: percentile_us(&tally.latencies_ns, 99.0),
            proxy_cpu_ns: proxy_ns.and_then(per),
            proxy_busy: proxy_ns.map(|ns| ns as f64 / wall.as_nanos().max(1) as f64),
            cpu_source: source,
            loadgen_cpu_ns: per(loadgen_ns),
            upstream_served: end.served - start.served,
        }
    }

    /// Opens `n` TLS connections, one request on each, and leaves them idle: the growth of the
    /// proxy's resident memory divided by `n`.
    async fn idle_memory(&self, t: &Target<'_>, n: usize) -> Result<IdleRow> {
        let proxy = t.proxy.context("idle memory needs a proxy")?;
        let mem_pid = *proxy.workers.first().context("no proxy process")?;
        // A little traffic first, so lazily built state is not counted per connection.
        let (conn, _) = timeout(CONNECT_TIMEOUT, connect(&t.ep)).await?;
        let (conns, _) = keepalive_round(
            &t.ep,
            vec![Some(conn)],
            Instant::now() + Duration::from_millis(200),
        )
        .await;
        for c in conns.into_iter().flatten() {
            c.close().await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = read_mem(mem_pid)?;

        let gate = Arc::new(Semaphore::new(IDLE_OPEN_CONCURRENCY));
        let mut set = JoinSet::new();
        for _ in 0..n {
            let ep = t.ep.clone();
            let gate = gate.clone();
            set.spawn(async move {
                let _permit = gate.acquire_owned().await?;
                timeout(CONNECT_TIMEOUT, connect(&ep))
                    .await
                    .map(|(conn, _)| conn)
            });
        }
        let mut tally = Tally::default();
        let mut open = Vec::with_capacity(n);
        gather(&mut set, &mut open, &mut tally).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        // What a connection costs with its handshake done and no request yet, then after one.
        let handshaken = read_mem(mem_pid)?;
        let mut set = JoinSet::new();
        for mut conn in open.drain(..) {
            let ep = t.ep.clone();
            let gate = gate.clone();
            set.spawn(async move {
                let _permit = gate.acquire_owned().await?;
                timeout(REQUEST_TIMEOUT, request(&ep, &mut conn)).await?;
                Ok::<_, anyhow::Error>(conn)
            });
        }
        gather(&mut set, &mut open, &mut tally).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = read_mem(mem_pid)?;
        let closed_early = open.iter().filter(|c| c.sender.is_closed()).count();
        let opened = open.len();
        let mut closing = JoinSet::new();
        for c in open {
            closing.spawn(c.close());
        }
        while closing.join_next().await.is_some() {}
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(IdleRow {
            target: t.name,
            opened,
            errors: tally.errors + closed_early as u64,
            messages: tally.messages,
            closed_early,
            before,
            handshaken,
            after,
        })
    }
}

/// The connections `set`'s tasks end with, into `open`; their failures into `tally`.
async fn gather<C: 'static>(set: &mut JoinSet<Result<C>>, open: &mut Vec<C>, tally: &mut Tally) {
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(c)) => open.push(c),
            Ok(Err(e)) => tally.error(&e),
            Err(e) => tally.error(&anyhow!("load task failed: {e}")),
        }
    }
}

struct Sample {
    at: Instant,
    proxy: Option<Cpu>,
    loadgen: Cpu,
    served: u64,
}

// ---------------------------------------------------------------------------------------------
// Report

#[derive(Default)]
struct Report {
    idle: Vec<IdleRow>,
    scenarios: Vec<(Scenario, Vec<Row>)>,
    oidc: Option<support::oidc::OidcReport>,
    reload: Option<support::reload::ReloadReport>,
    revocation: Option<support::revocation::RevocationReport>,
    /// rustls's server handshake alone, in memory: microseconds (median).
    handshake_alone_us: Option<f64>,
    /// The key exchange scenario: X25519MLKEM768, then X25519.
    kx: Vec<Row>,
    /// The Rego scenario: the route with a policy, then with a built-in rule.
    rego: Vec<Row>,
    /// The alerts scenario: a dead webhook, then none.
    alerts: Option<support::alerts::AlertsReport>,
    upstreams: Option<support::upstreams::UpstreamsReport>,
    /// The detectors scenario: every detector on, then none.
    detectors: Vec<Row>,
    fleet: Option<support::fleet::FleetReport>,
}

impl Report {
    /// Failed requests and connections in every scenario, failed reloads, and sessions not
    /// refused after a revocation.
    fn total_errors(&self) -> u64 {
        self.idle.iter().map(|r| r.errors).sum::<u64>()
            + self
                .scenarios
                .iter()
                .flat_map(|(_, rows)| rows.iter().map(|r| r.errors))
                .sum::<u64>()
            + self.oidc.as_ref().map_or(0, |o| o.errors())
            + self.reload.as_ref().map_or(0, |r| r.errors())
            + self.revocation.as_ref().map_or(0, |r| r.errors())
            + self.kx.iter().map(|r| r.errors).sum::<u64>()
            + self.rego.iter().map(|r| r.errors).sum::<u64>()
            + self
                .alerts
                .as_ref()
                .map_or(0, |a| a.rows.iter().map(|r| r.errors).sum::<u64>())
            + self
                .upstreams
                .as_ref()
                .map_or(0, |u| u.rows.iter().map(|r| r.errors).sum::<u64>())
            + self.detectors.iter().map(|r| r.errors).sum::<u64>()
            + self.fleet.as_ref().map_or(0, |f| f.errors())
    }

    /// Proxy CPU per keep-alive request with the detectors on: the ratio to the same route
    /// without them, and the difference in µs.
    fn detectors_cost(&self) -> (Option<f64>, Option<f64>) {
        let cpu = |name: &str| {
            self.detectors
                .iter()
                .find(|r| r.target == name)
                .and_then(|r| r.proxy_cpu_ns)
        };
        let (on, off) = (cpu("detectors-on"), cpu("detectors-off"));
        (ratio(on, off), on.zip(off).map(|(a, b)| (a - b) / 1000.0))
    }

    /// Dead webhook over none: proxy CPU per request, latency p50 and p99.
    fn alerts_ratios(&self) -> [Option<f64>; 3] {
        let Some(a) = &self.alerts else {
            return [None; 3];
        };
        let row = |name: &str| a.rows.iter().find(|r| r.target == name);
        let of = |pick: fn(&Row) -> Option<f64>| {
            ratio(row("dead").and_then(pick), row("off").and_then(pick))
        };
        [of(|r| r.proxy_cpu_ns), of(|r| r.p50_us), of(|r| r.p99_us)]
    }

    /// Proxy CPU per keep-alive request through the Rego route: the ratio to the built-in
    /// rule's, and the difference in µs.
    fn rego_cost(&self) -> (Option<f64>, Option<f64>) {
        let cpu = |name: &str| {
            self.rego
                .iter()
                .find(|r| r.target == name)
                .and_then(|r| r.proxy_cpu_ns)
        };
        let (rego, rules) = (cpu("rego"), cpu("rules"));
        (
            ratio(rego, rules),
            rego.zip(rules).map(|(a, b)| (a - b) / 1000.0),
        )
    }

    /// Proxy and load-generator CPU per full handshake, X25519MLKEM768 over X25519.
    fn kx_ratios(&self) -> (Option<f64>, Option<f64>) {
        let row = |name: &str| self.kx.iter().find(|r| r.target == name);
        let (pq, classic) = (row("X25519MLKEM768"), row("X25519"));
        (
            ratio(
                pq.and_then(|r| r.proxy_cpu_ns),
                classic.and_then(|r| r.proxy_cpu_ns),
            ),
            ratio(
                pq.and_then(|r| r.loadgen_cpu_ns),
                classic.and_then(|r| r.loadgen_cpu_ns),
            ),
        )
    }

    fn row(&self, key: &str, target: &str) -> Option<&Row> {
        self.scenarios
            .iter()
            .find(|(s, _)| s.key() == key)
            .and_then(|(_, rows)| rows.iter().find(|r| r.target == target))
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn print_scenario(scenario: Scenario, rows: &[Row]) {
    print_table_with(
        &scenario.title(),
        rows,
        &[("vigil", "nginx"), ("vigil", "floor")],
    );
}

/// One scenario's rows in the common table, then `a/b` ratios when both rows are there.
fn print_table(title: &str, rows: &[Row], pair: (&str, &str)) {
    print_table_with(title, rows, &[pair]);
}

/// As [`print_table`], with the ratios of each pair in `pairs`.
fn print_table_with(title: &str, rows: &[Row], pairs: &[(&str, &str)]) {
    println!("\n== {title} ==");
    let w = rows
        .iter()
        .map(|r| r.target.len())
        .max()
        .unwrap_or(0)
        .max(8);
    println!(
        "{:<w$} {:>9} {:>7} {:>9} {:>9} {:>9} {:>14} {:>10} {:>14}",
        "target",
        "requests",
        "errors",
        "req/s",
        "p50 µs",
        "p99 µs",
        "proxy CPU µs",
        "proxy busy",
        "loadgen CPU µs"
    );
    for r in rows {
        println!(
            "{:<w$} {:>9} {:>7} {:>9.0} {:>9} {:>9} {:>14} {:>10} {:>14}{}",
            r.target,
            r.ok,
            r.errors,
            r.req_per_s(),
            opt(r.p50_us, 0),
            opt(r.p99_us, 0),
            opt(r.proxy_cpu_ns.map(|ns| ns / 1000.0), 1),
            r.proxy_busy
                .map_or_else(|| "-".into(), |b| format!("{:.0}%", b * 100.0)),
            opt(r.loadgen_cpu_ns.map(|ns| ns / 1000.0), 1),
            if r.target == "direct" {
                "   (plain HTTP to the upstream, no TLS, no proxy)"
            } else {
                ""
            }
        );
    }
    let find = |name: &str| rows.iter().find(|r| r.target == name);
    for &(a, b) in pairs {
        if let (Some(x), Some(y)) = (find(a), find(b)) {
            println!(
                "{a}/{b}: proxy CPU {}x   p50 {}x   p99 {}x   req/s {}x",
                opt(ratio(x.proxy_cpu_ns, y.proxy_cpu_ns), 2),
                opt(ratio(x.p50_us, y.p50_us), 2),
                opt(ratio(x.p99_us, y.p99_us), 2),
                opt(ratio(Some(x.req_per_s()), Some(y.req_per_s())), 2),
            );
        }
    }
    for r in rows {
        let proxied = r.target != "direct";
        if proxied && r.upstream_served != r.ok {
            println!(
                "note: {}: the upstream served {} requests for {} answered",
                r.target, r.upstream_served, r.ok
            );
        }
        if r.cpu_source == Some("stat ticks") {
            println!(
                "note: {}: a proxy thread exited, CPU from 10 ms ticks (coarse)",
                r.target
            );
        }
        if r.errors > 0 {
            println!("!!! {}: {} ERRORS: {:?}", r.target, r.errors, r.messages);
        }
    }
}

fn print_idle(rows: &[IdleRow], n: usize) {
    println!(
        "\n== idle memory: {n} TLS connections, one request each, then idle; proxy RSS growth =="
    );
    println!(
        "{:<8} {:>7} {:>7} {:>14} {:>13} {:>12} {:>17} {:>12}",
        "target",
        "open",
        "errors",
        "RSS before KiB",
        "RSS after KiB",
        "KiB/conn",
        "before a request",
        "PSS KiB/conn"
    );
    for r in rows {
        println!(
            "{:<8} {:>7} {:>7} {:>14} {:>13} {:>12} {:>17} {:>12}",
            r.target,
            r.opened,
            r.errors,
            r.before.rss_kib,
            r.after.rss_kib,
            opt(r.rss_kib_per_conn(), 1),
            opt(r.handshaken_kib_per_conn(), 1),
            opt(r.pss_kib_per_conn(), 1),
        );
    }
    println!("(before a request: KiB per connection with its handshake done, before its request)");
    println!("(nginx: the worker process; its master holds no connections)");
    let find = |name: &str| rows.iter().find(|r| r.target == name);
    for other in ["nginx", "floor"] {
        if let (Some(v), Some(n)) = (find("vigil"), find(other)) {
            println!(
                "vigil/{other}: KiB per idle connection {}x",
                opt(ratio(v.rss_kib_per_conn(), n.rss_kib_per_conn()), 2)
            );
        }
    }
    for r in rows {
        if r.errors > 0 {
            println!(
                "!!! {}: {} ERRORS ({} connections closed before the measurement ended): {:?}",
                r.target, r.errors, r.closed_early, r.messages
            );
        }
    }
}

struct Summary {
    keepalive_cpu: Option<f64>,
    handshake_cpu: Option<f64>,
    latency_p50: Option<f64>,
    latency_p99: Option<f64>,
    idle_kib_vigil: Option<f64>,
    idle_ratio: Option<f64>,
    /// The same ratios to the floor proxy (benches/floor.rs).
    floor: FloorRatios,
}

/// Vigil as a ratio to the floor proxy: what Vigil's checks and bookkeeping cost over a proxy
/// that does nothing but mTLS and forwarding.
struct FloorRatios {
    keepalive_cpu: Option<f64>,
    handshake_cpu: Option<f64>,
    latency_p50: Option<f64>,
    latency_p99: Option<f64>,
    idle_kib: Option<f64>,
}

fn verdict(value: Option<f64>, aim: f64) -> &'static str {
    match value {
        Some(v) if v <= aim => "meets the aim",
        Some(_) => "MISSES the aim",
        None => "not measured",
    }
}

fn summarise(report: &Report, notes: &mut Vec<String>) -> Summary {
    let cpu = |key: &str, t: &str| report.row(key, t).and_then(|r| r.proxy_cpu_ns);
    let lat = |t: &str| report.row("latency", t);
    let idle = |t: &str| report.idle.iter().find(|r| r.target == t);
    let s = Summary {
        keepalive_cpu: ratio(cpu("keep_alive", "vigil"), cpu("keep_alive", "nginx")),
        handshake_cpu: ratio(cpu("handshake", "vigil"), cpu("handshake", "nginx")),
        latency_p50: ratio(
            lat("vigil").and_then(|r| r.p50_us),
            lat("nginx").and_then(|r| r.p50_us),
        ),
        latency_p99: ratio(
            lat("vigil").and_then(|r| r.p99_us),
            lat("nginx").and_then(|r| r.p99_us),
        ),
        idle_kib_vigil: idle("vigil").and_then(IdleRow::rss_kib_per_conn),
        idle_ratio: ratio(
            idle("vigil").and_then(IdleRow::rss_kib_per_conn),
            idle("nginx").and_then(IdleRow::rss_kib_per_conn),
        ),
        floor: FloorRatios {
            keepalive_cpu: ratio(cpu("keep_alive", "vigil"), cpu("keep_alive", "floor")),
            handshake_cpu: ratio(cpu("handshake", "vigil"), cpu("handshake", "floor")),
            latency_p50: ratio(
                lat("vigil").and_then(|r| r.p50_us),
                lat("floor").and_then(|r| r.p50_us),
            ),
            latency_p99: ratio(
                lat("vigil").and_then(|r| r.p99_us),
                lat("floor").and_then(|r| r.p99_us),
            ),
            idle_kib: ratio(
                idle("vigil").and_then(IdleRow::rss_kib_per_conn),
                idle("floor").and_then(IdleRow::rss_kib_per_conn),
            ),
        },
    };
    if !report.scenarios.is_empty() {
        println!("\n== summary: Vigil as a ratio to nginx ==");
        println!(
            "CPU per keep-alive request   {:>6}x   (aim <= {AIM_KEEPALIVE_CPU}: {})",
            opt(s.keepalive_cpu, 2),
            verdict(s.keepalive_cpu, AIM_KEEPALIVE_CPU)
        );
        println!(
            "CPU per full handshake       {:>6}x   (aim <= {AIM_HANDSHAKE_CPU}: {})",
            opt(s.handshake_cpu, 2),
            verdict(s.handshake_cpu, AIM_HANDSHAKE_CPU)
        );
        println!(
            "latency at 1 connection      p50 {}x   p99 {}x",
            opt(s.latency_p50, 2),
            opt(s.latency_p99, 2)
        );
        println!(
            "memory per idle TLS conn     {} KiB (aim <= {AIM_IDLE_KIB} KiB: {}),   {}x nginx",
            opt(s.idle_kib_vigil, 1),
            verdict(s.idle_kib_vigil, AIM_IDLE_KIB),
            opt(s.idle_ratio, 2)
        );
        let f = &s.floor;
        println!("\n== summary: Vigil as a ratio to the floor (mTLS and forwarding, no checks) ==");
        println!(
            "CPU per keep-alive request   {:>6}x   (aim <= {AIM_FLOOR_KEEPALIVE_CPU}: {})",
            opt(f.keepalive_cpu, 2),
            verdict(f.keepalive_cpu, AIM_FLOOR_KEEPALIVE_CPU)
        );
        println!(
            "CPU per full handshake       {:>6}x",
            opt(f.handshake_cpu, 2)
        );
        println!(
            "latency at 1 connection      p50 {}x   p99 {}x",
            opt(f.latency_p50, 2),
            opt(f.latency_p99, 2)
        );
        println!(
            "memory per idle TLS conn     {:>6}x   (aim <= {AIM_FLOOR_IDLE}: {})",
            opt(f.idle_kib, 2),
            verdict(f.idle_kib, AIM_FLOOR_IDLE)
        );
        let handshake = cpu("handshake", "vigil").map(|ns| ns / 1000.0);
        println!(
            "CPU per full handshake       {:>6}x rustls's server handshake alone, in memory ({} µs; aim <= {AIM_HANDSHAKE_ALONE}: {})",
            opt(ratio(handshake, report.handshake_alone_us), 2),
            opt(report.handshake_alone_us, 1),
            verdict(
                ratio(handshake, report.handshake_alone_us),
                AIM_HANDSHAKE_ALONE
            )
        );
        // What the aim is measured against: a proxy's handshake is more than rustls's (the
        // TCP connection, its system calls, the request on it), and the floor shows how much.
        let floor_handshake = cpu("handshake", "floor").map(|ns| ns / 1000.0);
        println!(
            "                             {:>6}x for the floor, which checks nothing",
            opt(ratio(floor_handshake, report.handshake_alone_us), 2),
        );
    }
    if let Some(o) = &report.oidc {
        o.print_summary();
    }
    if let Some(r) = &report.reload {
        r.print_summary();
    }
    if let Some(r) = &report.revocation {
        r.print_summary();
    }
    if !report.kx.is_empty() {
        let (proxy, loadgen) = report.kx_ratios();
        println!("\n== summary: key exchange, X25519MLKEM768 as a ratio to X25519 ==");
        println!(
            "proxy CPU per full handshake {:>6}x   (load generator, the client side: {}x)",
            opt(proxy, 2),
            opt(loadgen, 2)
        );
    }
    if !report.rego.is_empty() {
        let (ratio, extra) = report.rego_cost();
        println!("\n== summary: a Rego route against the same route with a built-in rule ==");
        println!(
            "proxy CPU per keep-alive request {:>6}x   ({} µs more per request)",
            opt(ratio, 3),
            opt(extra, 2)
        );
    }
    if let Some(a) = &report.alerts {
        let [cpu, p50, p99] = report.alerts_ratios();
        println!("\n== summary: alerts to a dead webhook, as a ratio to no webhook ==");
        println!(
            "proxy CPU per keep-alive request {:>6}x   latency p50 {}x   p99 {}x   ({} alerts raised; dead webhook: {} dropped, {} failed)",
            opt(cpu, 3),
            opt(p50, 3),
            opt(p99, 3),
            a.raised,
            a.dead_counts.0,
            a.dead_counts.1
        );
    }
    if !report.detectors.is_empty() {
        let (ratio, extra) = report.detectors_cost();
        println!("\n== summary: every detector on against none ==");
        println!(
            "proxy CPU per keep-alive request {:>6}x   ({} µs more per request)",
            opt(ratio, 3),
            opt(extra, 2)
        );
    }
    if let Some(f) = &report.fleet {
        let [p50, p99, max] = f.propagation();
        println!("\n== summary: the shared state in Redis against memory ==");
        println!(
            "proxy CPU per keep-alive request {:>6}x   revocation reaches the other replicas in p50 {} ms, p99 {} ms, max {} ms ({} samples, {} missed)",
            opt(f.cost(), 3),
            opt(p50, 1),
            opt(p99, 1),
            opt(max, 1),
            f.propagation_ns.len(),
            f.missed
        );
    }
    let errors = report.total_errors();
    if errors > 0 {
        notes.push(format!("{errors} ERRORS during the run"));
    }
    if !notes.is_empty() {
        println!();
        for n in notes.iter() {
            println!("*** {n} ***");
        }
    }
    s
}

fn row_json(r: &Row) -> Value {
    json!({
        "target": r.target,
        "requests": r.ok,
        "errors": r.errors,
        "error_messages": r.messages,
        "seconds": r.wall.as_secs_f64(),
        "req_per_s": r.req_per_s(),
        "p50_us": r.p50_us,
        "p99_us": r.p99_us,
        "proxy_cpu_us_per_request": r.proxy_cpu_ns.map(|ns| ns / 1000.0),
        "proxy_core_busy": r.proxy_busy,
        "proxy_cpu_source": r.cpu_source,
        "loadgen_cpu_us_per_request": r.loadgen_cpu_ns.map(|ns| ns / 1000.0),
        "upstream_served": r.upstream_served,
        "transport": if r.target == "direct" { "plain HTTP/1.1, no TLS" } else { "TLS 1.3 mTLS, HTTP/1.1" },
    })
}

fn report_json(
    report: &Report,
    env: &Environment,
    args: &Args,
    s: &Summary,
    notes: &[String],
    started: u64,
) -> Value {
    let scenarios: serde_json::Map<String, Value> = report
        .scenarios
        .iter()
        .map(|(sc, rows)| {
            let concurrency = match sc {
                Scenario::KeepAlive(c) | Scenario::Handshake(c) => *c,
                Scenario::Latency => 1,
            };
            (
                sc.key().to_owned(),
                json!({
                    "description": sc.title(),
                    "concurrency": concurrency,
                    "targets": rows.iter().map(row_json).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    let idle: Vec<Value> = report
        .idle
        .iter()
        .map(|r| {
            json!({
                "target": r.target,
                "connections": r.opened,
                "errors": r.errors,
                "error_messages": r.messages,
                "closed_early": r.closed_early,
                "rss_before_kib": r.before.rss_kib,
                "rss_after_kib": r.after.rss_kib,
                "pss_before_kib": r.before.pss_kib,
                "pss_after_kib": r.after.pss_kib,
                "rss_kib_per_connection": r.rss_kib_per_conn(),
                "rss_kib_per_connection_before_a_request": r.handshaken_kib_per_conn(),
                "pss_kib_per_connection": r.pss_kib_per_conn(),
            })
        })
        .collect();
    json!({
        "unix_time": started,
        "vigil_version": env.vigil_version,
        "nginx_version": env.nginx_version,
        "nproc": env.nproc,
        "cpu": env.cpu,
        "kernel": env.kernel,
        "loadavg_at_start": env.loadavg,
        "settings": {
            "scenario_groups": args.parts.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "seconds_per_scenario": args.seconds,
            "reload_every_ms": args.reload_every.as_secs_f64() * 1000.0,
            "keep_alive_connections": args.connections,
            "handshake_connections": args.handshake_connections,
            "idle_connections": args.idle,
            "proxy_core": PROXY_CORE,
            "loadgen_core": LOADGEN_CORE,
            "tls": "TLS 1.3, X25519, client certificate (ECDSA P-256), no resumption",
            "body_bytes": BODY_LEN,
        },
        "scenarios": scenarios,
        "idle_memory": idle,
        "rustls_server_handshake_alone_us": report.handshake_alone_us,
        "ratios_vigil_to_nginx": {
            "cpu_per_keep_alive_request": s.keepalive_cpu,
            "cpu_per_full_handshake": s.handshake_cpu,
            "latency_p50": s.latency_p50,
            "latency_p99": s.latency_p99,
            "kib_per_idle_connection": s.idle_ratio,
        },
        "ratios_vigil_to_floor": {
            "cpu_per_keep_alive_request": s.floor.keepalive_cpu,
            "cpu_per_full_handshake": s.floor.handshake_cpu,
            "latency_p50": s.floor.latency_p50,
            "latency_p99": s.floor.latency_p99,
            "kib_per_idle_connection": s.floor.idle_kib,
        },
        "aims": {
            "cpu_per_keep_alive_request": AIM_KEEPALIVE_CPU,
            "cpu_per_full_handshake": AIM_HANDSHAKE_CPU,
            "kib_per_idle_connection": AIM_IDLE_KIB,
        },
        "vigil_kib_per_idle_connection": s.idle_kib_vigil,
        "oidc_session": report.oidc.as_ref().map(support::oidc::OidcReport::json),
        "reload": report.reload.as_ref().map(support::reload::ReloadReport::json),
        "revocation": report.revocation.as_ref().map(support::revocation::RevocationReport::json),
        "key_exchange": (!report.kx.is_empty()).then(|| {
            let (proxy, loadgen) = report.kx_ratios();
            json!({
                "description": "full TLS 1.3 handshakes with a client certificate and one request, \
                    on one Vigil; the client offers only X25519MLKEM768, or only X25519",
                "concurrency": args.handshake_connections,
                "targets": report.kx.iter().map(row_json).collect::<Vec<_>>(),
                "ratio_proxy_cpu_per_handshake_x25519mlkem768_to_x25519": proxy,
                "ratio_loadgen_cpu_per_handshake_x25519mlkem768_to_x25519": loadgen,
            })
        }),
        "rego": (!report.rego.is_empty()).then(|| {
            let (ratio, extra) = report.rego_cost();
            json!({
                "description": "keep-alive requests on a workload route decided by a Rego policy \
                    (the SPIFFE ID and the path checked against data), against the same route \
                    with a built-in rule; two Vigil instances, measured alternately",
                "targets": report.rego.iter().map(row_json).collect::<Vec<_>>(),
                "ratio_proxy_cpu_per_request_rego_to_rules": ratio,
                "extra_proxy_cpu_us_per_request": extra,
            })
        }),
        "alerts": report.alerts.as_ref().map(|a| {
            let [cpu, p50, p99] = report.alerts_ratios();
            json!({
                "description": "keep-alive requests while grants are made on the admin listener \
                    at a fixed rate, each raising an alert: posted to a webhook that accepts \
                    connections and never answers (dead), or with no webhook (off)",
                "alerts_per_second_each": support::alerts::ALERTS_PER_SECOND,
                "alerts_raised": a.raised,
                "dead_webhook_dropped": a.dead_counts.0,
                "dead_webhook_failed": a.dead_counts.1,
                "targets": a.rows.iter().map(row_json).collect::<Vec<_>>(),
                "ratio_proxy_cpu_per_request_dead_to_off": cpu,
                "ratio_latency_p50_dead_to_off": p50,
                "ratio_latency_p99_dead_to_off": p99,
            })
        }),
        "upstreams": report.upstreams.as_ref().map(support::upstreams::UpstreamsReport::json),
        "detectors": (!report.detectors.is_empty()).then(|| {
            let (ratio, extra) = report.detectors_cost();
            json!({
                "description": "keep-alive requests on a workload route with every detector of \
                    [detectors] on (denials, failed sign-ins, revoked credentials, distinct \
                    addresses; nothing firing), against the same route without [detectors]; two \
                    Vigil instances, measured alternately",
                "targets": report.detectors.iter().map(row_json).collect::<Vec<_>>(),
                "ratio_proxy_cpu_per_request_detectors_on_to_off": ratio,
                "extra_proxy_cpu_us_per_request": extra,
            })
        }),
        "fleet": report.fleet.as_ref().map(support::fleet::FleetReport::json),
        "total_errors": report.total_errors(),
        "notes": notes,
    })
}

fn write_json(value: &Value, started: u64) -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("proxy-{started}.json"));
    let text = serde_json::to_string_pretty(value).context("serialising the results")?;
    std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
