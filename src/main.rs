//! The `vigil` command: argument parsing and logging set-up; everything else is in the library.

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;
use vigil::certs;
use vigil::config;

#[derive(Parser)]
#[command(name = "vigil", version, about = "Identity-aware mTLS reverse proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a configuration until SIGTERM or Ctrl-C.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration: print every problem with its location; exit 1 if any.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Evaluate a described request against a configuration and print the decision and its
    /// reasons, without running a server.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run a demo on built-in defaults: dev PKI, a demo upstream and the proxy.
    Demo {
        /// Where the dev PKI and demo.toml go.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
    /// Development certificates: a CA, leaves and CRLs.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Session and assertion keys: generate a new key and put it first in FILE, so it seals or
    /// signs from the next reload on while the old keys still open or verify.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Probe a running Vigil's admin listener (container health checks, exec probes): exit 0
    /// when the path answers 200; otherwise print why (the `reason` of `/readyz`) and exit 1.
    /// Plain HTTP, or TLS when the listener has `client_ca`: with --config, the address and
    /// the listener's certificate (pinned) come from the configuration file.
    Health {
        /// The admin listener's address; default: `[admin] listen` of --config, else
        /// 127.0.0.1:9901.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// `/healthz` (alive) or `/readyz` (ready for traffic).
        #[arg(long, default_value = "/healthz")]
        path: String,
        /// The configuration file Vigil runs with: its admin address, whether the listener
        /// speaks TLS, and its certificate, which the probe then trusts (and nothing else).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Speak TLS, trusting this CA bundle for the listener's certificate.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Client certificate chain (PEM) for a TLS listener, one its client_ca trusts.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// The client certificate's key (PEM).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// The name to check the listener's certificate for with --ca; default: its IP.
        #[arg(long)]
        server_name: Option<String>,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a dev CA, server, device and workload certificates and an empty CRL to DIR.
    Init {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Regenerate everything, including the CA: certificates the old CA issued are no
        /// longer trusted where the new CA is.
        #[arg(long)]
        force: bool,
    },
    /// Issue one more certificate from the CA in DIR.
    Issue(IssueArgs),
    /// Add a certificate to DIR/ca.crl.
    Revoke {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// The certificate to revoke.
        #[arg(long, conflicts_with = "serial", required_unless_present = "serial")]
        cert: Option<PathBuf>,
        /// Its serial number in hex.
        #[arg(long)]
        serial: Option<String>,
        /// When the CRL says the next one is due; at least 1h (Vigil refuses every client once
        /// it has passed).
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        next_update: std::time::Duration,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// The decision on a request (described by flags, or a facts document) and its reasons.
    Explain(ExplainArgs),
    /// Decide every decision of a decision log again under another configuration and list the
    /// requests whose outcome would change: exit 0 when none would, 1 when some would, 2 when
    /// the log or the configuration cannot be read.
    Replay(ReplayArgs),
    /// Run the `test_*` rules of the Rego files under PATHS (default: the current directory),
    /// with the `.json` files there merged under `data`: exit 0 when all pass, 1 when one
    /// fails, 2 when the files cannot be loaded.
    Test(TestArgs),
}

#[derive(Args)]
struct TestArgs {
    /// Files or directories, searched recursively.
    paths: Vec<PathBuf>,
    /// List passing tests too.
    #[arg(long, short)]
    verbose: bool,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// How a report is printed.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// For people.
    Text,
    /// One JSON document, for machines.
    Json,
}

#[derive(Args)]
struct ReplayArgs {
    /// The configuration to decide under, loaded as `vigil check` loads it.
    #[arg(long, short)]
    config: PathBuf,
    /// The decision log (JSON lines, as `[log] decisions` writes them); `-` for standard input.
    #[arg(long)]
    log: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Args)]
struct ExplainArgs {
    #[arg(long, short)]
    config: PathBuf,
    /// A facts document (JSON, see docs/facts.md) to decide instead of a described request.
    #[arg(long, conflicts_with_all = ["url", "cert", "method", "from", "user", "email", "groups", "mfa", "headers"])]
    input: Option<PathBuf>,
    /// The request URL, like https://wiki.example.com/page.
    #[arg(long, required_unless_present = "input")]
    url: Option<String>,
    #[arg(long, default_value = "GET")]
    method: String,
    /// The client certificate (PEM) the request comes with.
    #[arg(long, required_unless_present = "input")]
    cert: Option<PathBuf>,
    /// Source address of the request.
    #[arg(long, default_value = "127.0.0.1")]
    from: IpAddr,
    /// A signed-in person: subject.
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    email: Option<String>,
    #[arg(long = "group")]
    groups: Vec<String>,
    /// The person signed in with a second factor.
    #[arg(long)]
    mfa: bool,
    /// A request header, as `Name: value` (repeat for more).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Decide at this moment instead of now (RFC 3339, like 2026-01-13T20:00:00+01:00, or
    /// Unix seconds); with --input, instead of the document's own time too.
    #[arg(long, value_parser = parse_moment)]
    at: Option<i64>,
    /// `text`: the decision, rule, risk and reasons for people; `json`: one JSON document with
    /// all of it and the facts decided (docs/facts.md).
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// An RFC 3339 timestamp or Unix seconds, as Unix seconds.
fn parse_moment(text: &str) -> Result<i64, String> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_second())
        .map_err(|e| format!("{text:?} is not a moment (RFC 3339, like 2026-01-13T20:00:00Z, or Unix seconds): {e}"))
}

#[derive(Subcommand)]
enum KeysCommand {
    /// A new AES-256 session key (base64, one per line) at the top of FILE.
    Session { file: PathBuf },
    /// A new P-256 assertion signing key (PKCS#8 PEM) at the top of FILE.
    Assertion { file: PathBuf },
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Device,
    Workload,
    Server,
}

#[derive(Args)]
struct IssueArgs {
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    #[arg(long, value_enum)]
    kind: KindArg,
    /// File stem and common name.
    #[arg(long)]
    name: String,
    /// SPIFFE ID (workload certificates).
    #[arg(long)]
    spiffe_id: Option<String>,
    #[arg(long)]
    dns: Vec<String>,
    #[arg(long)]
    ip: Vec<IpAddr>,
    #[arg(long)]
    email: Vec<String>,
    /// Lifetime, e.g. "1h" for a short-lived certificate: at least 1m, and not past the CA's
    /// notAfter. Default one year, or until the CA's notAfter if that comes first.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<std::time::Duration>,
    #[arg(long)]
    force: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run(&config),
        Command::Demo { dir, listen, admin } => {
            init_tracing("info", "text");
            runtime()?.block_on(async {
                let stop = shutdown_signal();
                vigil::demo::run(&vigil::demo::Options { dir, listen, admin }, stop)
                    .await
                    .map_err(anyhow::Error::msg)
            })
        }
        Command::Certs(cmd) => certs_command(cmd),
        Command::Health {
            admin,
            path,
            config,
            ca,
            cert,
            key,
            server_name,
        } => health(&vigil::health::Options {
            admin,
            path,
            config,
            ca,
            cert,
            key,
            server_name,
        }),
        Command::Keys(cmd) => keys_command(cmd),
        Command::Policy(PolicyCommand::Explain(args)) => explain(&args),
        Command::Policy(PolicyCommand::Replay(args)) => replay(&args),
        Command::Policy(PolicyCommand::Test(args)) => policy_test(&args),
    }
}

/// `vigil policy test`: exit 1 when a test fails, 2 when the files do not load.
fn policy_test(args: &TestArgs) -> anyhow::Result<()> {
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths.clone()
    };
    let report = match vigil::policy_tests::run(&paths) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    match args.format {
        Format::Text => print!("{}", report.text(args.verbose)),
        Format::Json => println!("{:#}", serde_json::to_value(&report)?),
    }
    if report.failed > 0 || report.tests.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// `vigil policy replay`: the changes as they are found, then the summary. Exit 1 when some
/// outcome would change; 2 on bad input (a log that cannot be read, a line that is not JSON, a
/// configuration that does not load) or a report that cannot be written, after what was found
/// before it.
fn replay(args: &ReplayArgs) -> anyhow::Result<()> {
    let bad = |message: &dyn std::fmt::Display| -> ! {
        eprintln!("vigil policy replay: {message}");
        std::process::exit(2);
    };
    let snapshot = match config::Context::first().map(|ctx| config::load_file(&args.config, &ctx)) {
        Ok(Ok(s)) => s,
        Ok(Err(problems)) => bad(&format_args!(
            "{}: does not load\n{problems}",
            args.config.display()
        )),
        Err(e) => bad(&e),
    };
    let log: Box<dyn std::io::BufRead> = if args.log.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        match std::fs::File::open(&args.log) {
            Ok(file) => Box::new(std::io::BufReader::with_capacity(1 << 16, file)),
            Err(e) => bad(&format_args!("{}: {e}", args.log.display())),
        }
    };
    match replay_report(&snapshot, log, args) {
        Ok(0) => Ok(()),
        Ok(_) => std::process::exit(1),
        Err(e) => bad(&format_args!("{e:#}")),
    }
}

/// Writes the report of replaying `log` to stdout; the number of changed outcomes.
fn replay_report(
    snapshot: &config::Snapshot,
    log: Box<dyn std::io::BufRead>,
    args: &ReplayArgs,
) -> anyhow::Result<usize> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let json = args.format == Format::Json;
    if json {
        write!(out, "{{\"changed\":[")?;
    }
    let mut first = true;
    let mut failed: Option<anyhow::Error> = None;
    let result = vigil::replay::replay(snapshot, log, |change| {
        let text = if json {
            serde_json::to_string(change)
                .map(|c| format!("{}{c}", if first { "" } else { "," }))
                .map_err(anyhow::Error::from)
        } else {
            Ok(change.text())
        };
        first = false;
        if failed.is_none()
            && let Err(e) = text.and_then(|t| Ok(out.write_all(t.as_bytes())?))
        {
            failed = Some(e);
        }
    });
    if let Some(e) = failed {
        return Err(e.context("writing the report"));
    }
    let summary = match result {
        Ok(summary) => summary,
        Err(e) => {
            // The JSON document stays whole: what was found before the bad line, and why the
            // replay stopped there.
            if json {
                let error = serde_json::json!({ "line": e.line(), "message": e.to_string() });
                writeln!(out, "],\"error\":{error}}}")?;
            }
            out.flush()?;
            anyhow::bail!("{}: {e}", args.log.display());
        }
    };
    if json {
        writeln!(out, "],\"summary\":{}}}", serde_json::to_string(&summary)?)?;
    } else {
        writeln!(out, "{}", summary.text())?;
    }
    out.flush()?;
    Ok(summary.changed)
}

fn explain(args: &ExplainArgs) -> anyhow::Result<()> {
    use rustls::pki_types::pem::PemObject;
    let ctx = config::Context::first()?;
    let snapshot = match config::load_file(&args.config, &ctx) {
        Ok(s) => s,
        Err(problems) => {
            eprintln!("{problems}");
            std::process::exit(1);
        }
    };
    let now = args.at.unwrap_or_else(vigil::identity::now);
    let mut doc = match (&args.input, &args.url, &args.cert) {
        (Some(input), _, _) => {
            let json =
                std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
            vigil::explain::read_document(&json)?
        }
        (None, Some(url), Some(cert)) => {
            let der = rustls::pki_types::CertificateDer::from_pem_file(cert)
                .with_context(|| format!("reading {}", cert.display()))?;
            let certificate =
                vigil::tls::PeerCert::from_der(der.as_ref()).map_err(anyhow::Error::msg)?;
            vigil::explain::Described {
                url,
                method: &args.method,
                certificate,
                source: args.from,
                user: args
                    .user
                    .as_deref()
                    .map(|sub| (sub, args.email.as_deref(), args.groups.as_slice(), args.mfa)),
                headers: &args.headers,
            }
            .document(&snapshot, now)?
        }
        _ => bail!("give --input FACTS.json, or --url and --cert"),
    };
    if args.at.is_some() {
        doc.time = Some(now);
    }
    let explained = vigil::explain::explain(&snapshot, doc, now);
    match args.format {
        Format::Json => println!("{:#}", explained.report),
        Format::Text => print!("{}", vigil::explain::text(&explained.report)),
    }
    if !explained.passes {
        std::process::exit(2);
    }
    Ok(())
}

fn keys_command(cmd: KeysCommand) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (file, new) = match cmd {
        KeysCommand::Session { file } => (
            file,
            vigil::identity::seal::KeyRing::generate_line().map_err(anyhow::Error::msg)? + "\n",
        ),
        KeysCommand::Assertion { file } => (
            file,
            vigil::forward::assertion::Signer::generate_pem().map_err(anyhow::Error::msg)?,
        ),
    };
    let old = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let tmp = file.with_extension("new");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    out.write_all(new.as_bytes())?;
    out.write_all(old.as_bytes())?;
    out.sync_all()?;
    std::fs::rename(&tmp, &file)?;
    let count = if new.starts_with("-----") {
        (old.matches("BEGIN PRIVATE KEY").count() + 1).to_string()
    } else {
        (old.lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .count()
            + 1)
        .to_string()
    };
    println!("{}: new key first, {count} key(s) in all", file.display());
    Ok(())
}

fn health(options: &vigil::health::Options) -> anyhow::Result<()> {
    match vigil::health::probe(options) {
        Ok(()) => Ok(()),
        Err(failure) => {
            eprintln!("vigil health: {failure}");
            std::process::exit(1);
        }
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let ctx = config::Context::first()?;
    match config::load_file(path, &ctx) {
        Ok(snapshot) => {
            let warnings = &snapshot.warnings;
            if !warnings.items.is_empty() {
                eprintln!("{warnings}\n");
            }
            if !warnings.for_check.is_empty() {
                let problems = config::Problems::in_file_order(
                    warnings.source.clone(),
                    warnings.for_check.clone(),
                );
                eprintln!("{problems}");
                std::process::exit(1);
            }
            println!(
                "{}: ok ({} route{})",
                path.display(),
                snapshot.routes.len(),
                if snapshot.routes.len() == 1 { "" } else { "s" }
            );
            if snapshot.state.is_some() {
                // Key files cannot be compared from here: the line is for comparing replicas.
                println!(
                    "every replica sharing this state must hold the same keys: {}",
                    snapshot.key_ids()
                );
            }
            Ok(())
        }
        Err(problems) => {
            eprintln!("{problems}");
            std::process::exit(1);
        }
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let ctx = config::Context::first()?;
    let snapshot = match config::load_file(path, &ctx) {
        Ok(s) => s,
        Err(problems) => {
            eprintln!("{problems}");
            eprintln!("refusing to start with an invalid configuration");
            std::process::exit(1);
        }
    };
    init_tracing(&snapshot.log.level, &snapshot.log.format);
    runtime()?.block_on(async {
        // The handlers are in place before the listener is bound: a SIGTERM or SIGHUP that
        // arrives as soon as clients can connect must not take its default action (ending the
        // process without a drain).
        let stop = shutdown_signal();
        let hup = hangups();
        let running = vigil::start_reloadable(snapshot, path, ctx).await?;
        if let (Some(reloader), Some(hup)) = (running.reloader.clone(), hup) {
            tokio::spawn(reload_on_sighup(reloader, hup));
        }
        stop.cancelled().await;
        tracing::info!("shutting down");
        running.shutdown().await;
        Ok(())
    })
}

fn hangups() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup())
        .map_err(|e| tracing::error!(error = %e, "cannot listen for SIGHUP"))
        .ok()
}

async fn reload_on_sighup(
    reloader: std::sync::Arc<vigil::reload::Reloader>,
    mut hup: tokio::signal::unix::Signal,
) {
    while hup.recv().await.is_some() {
        let _ = reloader.reload("SIGHUP").await;
    }
}

fn certs_command(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init { dir, force } => {
            let report = certs::init(&dir, force)?;
            for line in report.lines() {
                println!("{line}");
            }
            if let Some(replaced) = &report.replaced_ca {
                warn_replaced_ca(&dir, replaced);
            }
        }
        CertsCommand::Issue(a) => {
            let opts = certs::IssueOptions {
                kind: match a.kind {
                    KindArg::Device => certs::Kind::Device,
                    KindArg::Workload => certs::Kind::Workload,
                    KindArg::Server => certs::Kind::Server,
                },
                name: a.name,
                spiffe_id: a.spiffe_id,
                dns: a.dns,
                ips: a.ip,
                emails: a.email,
                ttl: a.ttl,
                force: a.force,
            };
            let issued = certs::issue_to_dir(&a.dir, &opts)?;
            println!("created {} {}", issued.cert.display(), issued.summary);
            println!("created {}", issued.key.display());
            if issued.capped {
                eprintln!(
                    "note: {} ends with its CA, at {}, before the default lifetime of one year",
                    issued.cert.display(),
                    certs::rfc3339(issued.summary.not_after)
                );
            }
        }
        CertsCommand::Revoke {
            dir,
            cert,
            serial,
            next_update,
        } => {
            let serial = match (cert, serial) {
                (Some(path), _) => {
                    let pem = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    certs::serial_of(&pem)?
                }
                (None, Some(hex)) => vigil::hex::parse_serial(&hex).map_err(anyhow::Error::msg)?,
                (None, None) => bail!("give --cert FILE or --serial HEX"),
            };
            let (crl, count) = certs::revoke_in_dir(&dir, &serial, next_update)?;
            println!(
                "revoked serial {} in {} ({count} entr{})",
                vigil::hex::encode(&serial),
                crl.display(),
                if count == 1 { "y" } else { "ies" }
            );
        }
    }
    Ok(())
}

/// `certs init --force` was asked to replace the CA and did: say, where it cannot be missed,
/// what that breaks and what to do about it.
fn warn_replaced_ca(dir: &std::path::Path, replaced: &certs::ReplacedCa) {
    let old = replaced
        .old
        .as_ref()
        .map_or_else(|| "unreadable".to_owned(), ToString::to_string);
    eprintln!(
        "WARNING: replaced the CA in {} (the old {} was: {old}).",
        dir.display(),
        certs::CA_CERT_FILE
    );
    eprintln!(
        "WARNING: every certificate the old CA issued is no longer trusted by configurations \
         that trust the new {}: devices, workloads and upstreams holding one are refused, and \
         clients that still trust the old CA refuse the new server certificate.",
        certs::CA_CERT_FILE
    );
    for orphan in &replaced.orphans {
        eprintln!(
            "WARNING: {} is still signed by the old CA: issue it again (vigil certs issue --force).",
            orphan.display()
        );
    }
    eprintln!(
        "WARNING: to recover, put the new {} wherever the old one is trusted (client_ca, \
         upstream_ca, clients' trust stores), hand out the new certificates, and reload.",
        certs::CA_CERT_FILE
    );
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn init_tracing(level: &str, format: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder
            .with_ansi(false)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(vigil::log_format::Json)
            .init();
    } else {
        let colour = vigil::log_format::colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        );
        builder.with_ansi(colour).init();
    }
}

/// Cancelled on SIGTERM or SIGINT. Both handlers are registered before this returns, so a
/// signal sent right after is never handled by the default action.
fn shutdown_signal() -> CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let t = token.clone();
    let term = signal(SignalKind::terminate())
        .map_err(|e| tracing::error!(error = %e, "cannot listen for SIGTERM"))
        .ok();
    let int = signal(SignalKind::interrupt())
        .map_err(|e| tracing::error!(error = %e, "cannot listen for SIGINT"))
        .ok();
    tokio::spawn(async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(term) => {}
            () = wait(int) => {}
        }
        t.cancel();
    });
    token
}
