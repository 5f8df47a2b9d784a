//! Vigil: an identity-aware mTLS reverse proxy.
//!
//! Every connection proves who it is with a client certificate (TLS 1.3 only); every request is
//! canonicalised once, routed, decided by default-deny policy, logged, and only then forwarded
//! with identity headers the client could not have forged.
//!
//! # Layout
//! Modules follow a request through the proxy, and are layered without cycles: each uses only
//! modules below it.
//! - [`server`]: accept loop, connection limits (in all and per source), the TLS handshake,
//!   serving exactly the protocol ALPN chose, idle and drain handling.
//! - [`proxy_protocol`]: the PROXY protocol header a load balancer sends before TLS, read
//!   with bounded size and time, naming the client it connected for.
//! - [`pipeline`]: one request as named phases over one per-request
//!   [`pipeline::Context`]: [`pipeline::canonicalize`], [`pipeline::route`],
//!   [`pipeline::identify`] (sessions, re-verification, bearer tokens), [`pipeline::assess`]
//!   (device record, country, risk), [`pipeline::decide`] (the facts document and the
//!   decision), [`pipeline::record`] (decision log and metrics), [`pipeline::forward`],
//!   Vigil's own `/.vigil/` [`pipeline::endpoints`], [`pipeline::authz`] (the decision other
//!   enforcement points ask for, about the request [`pipeline::forwarded`] reads from what they
//!   pass on), and [`pipeline::finish`] (what every
//!   answer gets on its way out: no body for `HEAD`, Vigil's `Strict-Transport-Security`).
//! - [`live`]: the verifier: open connections and every response still streaming re-checked
//!   and cut off when they no longer pass, re-decided with the pipeline's own identify, assess
//!   and decide.
//! - [`explain`]: `vigil policy explain`: the decision on a facts document, without a server.
//! - [`replay`]: `vigil policy replay`: a decision log decided again under another
//!   configuration, and the requests whose outcome would change.
//! - [`health`]: `vigil health`: one probe of the admin listener, plain or TLS, for container
//!   health checks.
//! - [`reload`]: the configuration and every file it names, reloaded and swapped whole.
//! - [`admin`]: Prometheus metrics, health and readiness (per route, with the state of each
//!   component), revocation, blocks; the admin listener's
//!   gate (own Host, own origin, JSON bodies, tokens), its own limits, and the audit trail of
//!   the actions ordered there.
//! - [`anomaly`]: detectors counting denials, failed sign-ins, refusals for revoked
//!   credentials and distinct addresses and countries in bounded sliding windows, and the
//!   blocks they (or operators) put on subjects.
//! - [`alerts`]: events for operators (blocks, detectors, grants), logged and delivered off
//!   the request path to a signed webhook with bounded retries and a bounded queue.
//! - [`state`]: what every connection shares: the snapshot in force and the run-time state
//!   beside it. [`connection`]: one connection after its handshake, the registry of open
//!   ones, and the streams open on each.
//! - [`config`]: the TOML schema, every problem at once with line and column, and the compiled
//!   immutable [`config::Snapshot`] a request reads.
//! - [`routing`]: host and path-prefix matching, most specific first.
//! - [`policy`]: the decision point: rules, linear-time patterns, the facts document
//!   ([`policy::Facts`]) and the pure `decide(&Policy, &Facts) -> Decision`.
//! - [`forward`]: the upstream stack (endpoints with their pools, balancing, health checks,
//!   outlier ejection, limits, retries, timeouts), header hygiene, the upgrades a route
//!   allows, response bodies registered for re-decision, the signed assertion.
//! - [`identity`]: OIDC login, sealed sessions, bearer tokens, re-verification with the
//!   provider. [`revocation`]: revocations by session, user, device and logout.
//! - [`posture`]: the device inventory, GeoIP, and the risk engine.
//! - [`decision_log`]: one JSON line per decision, written off the request path.
//! - [`reason`]: why a request was answered as it was: a stable code and a text, made
//!   together where the decision or the refusal is made.
//! - [`log_format`]: diagnostics as flat JSON lines, span fields (`request_id`) included.
//! - [`metrics`]: the Prometheus registry, the one list of each bounded label's values, and the
//!   standard process metrics.
//! - [`tls`]: the rustls server configuration and key exchange groups, client-certificate
//!   verification with CRLs (each verified against its CA when loaded), handshake failure
//!   reasons, [`tls::PeerCert`] (the identity read from the certificate), SPIFFE IDs, the
//!   TLS of Vigil's own outbound connections, and [`tls::lifecycle`]: the dates of the
//!   certificates and CRLs in force, judged against the clock when asked.
//! - [`canonical`]: the one canonical form of host, path and headers that every stage uses.
//! - [`framing`]: watches every HTTP/1 request's framing on the wire (Transfer-Encoding with
//!   Content-Length, fragments, anything it cannot follow) for the whole connection.
//! - [`body`]: body types, bounded whole-body reads and read deadlines.
//! - [`error`]: every answer Vigil gives itself, with its status and whose fault it was.
//! - [`hex`]: hex as Vigil writes and reads it.
//! - [`certs`]: a development PKI with rcgen (`vigil certs`); [`demo`]: everything on
//!   built-in defaults (`vigil demo`).

pub mod access;
pub mod admin;
pub mod alerts;
pub mod anomaly;
pub mod body;
pub mod canonical;
pub mod certs;
pub mod config;
pub mod connection;
pub mod decision_log;
pub mod demo;
pub mod error;
pub mod explain;
pub mod fleet;
pub mod forward;
pub mod framing;
pub mod health;
pub mod hex;
pub mod identity;
pub mod jit;
pub mod live;
pub mod log_format;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod policy_tests;
pub mod posture;
pub mod proxy_protocol;
pub mod reason;
pub mod reload;
pub mod replay;
pub mod revocation;
pub mod routing;
pub mod server;
pub mod state;
pub mod tls;

use config::Snapshot;
use state::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A proxy started in this process.
pub struct Running {
    /// The bound downstream address (the real port when the config said 0).
    pub addr: SocketAddr,
    /// The bound admin address, when the admin listener is on.
    pub admin: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    pub readiness: Arc<admin::Readiness>,
    /// Present when started from a file: reloads it on demand and on change.
    pub reloader: Option<Arc<reload::Reloader>>,
    shutdown: CancellationToken,
    admin_stop: CancellationToken,
    proxy: JoinHandle<()>,
    admin_task: Option<JoinHandle<()>>,
    /// The alert sender: after the drain it has `alerts::FLUSH` to empty its queue.
    alerts_task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, drains open connections (up to `drain_timeout`), then returns.
    pub async fn shutdown(self) {
        self.readiness.set(false);
        self.shutdown.cancel();
        let _ = self.proxy.await;
        // The admin listener outlives the drain, so probes see "not ready" meanwhile.
        self.admin_stop.cancel();
        if let Some(admin) = self.admin_task {
            let _ = admin.await;
        }
        let _ = self.alerts_task.await;
        // Last, so that what the drain and the admin listener logged is written too.
        let (decisions, actions) = (
            self.shared.decisions.clone(),
            self.shared.admin_actions.clone(),
        );
        let _ = tokio::task::spawn_blocking(move || {
            decisions.close();
            actions.close();
        })
        .await;
    }

    /// A token that stops this proxy when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the decision log {target}: {source}")]
    DecisionLog {
        target: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(Box<config::Problems>),
    #[error("TLS set-up failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// Loads `path`, starts serving it, and reloads it when it (or a file it names) changes, on
/// SIGHUP (wired by the binary) and on `POST /reload`.
pub async fn start_file(path: &std::path::Path) -> Result<Running, StartError> {
    let context = config::Context::first()?;
    let file = path.to_path_buf();
    let first = context.clone();
    let snapshot = tokio::task::spawn_blocking(move || config::load_file(&file, &first))
        .await
        .map_err(|e| StartError::Tls(rustls::Error::General(e.to_string())))?
        .map_err(|p| StartError::Config(Box::new(p)))?;
    start_reloadable(snapshot, path, context).await
}

/// Starts serving `snapshot`, already loaded from `path` with `context`, and reloads `path`
/// from then on (see [`start_file`]).
pub async fn start_reloadable(
    snapshot: Snapshot,
    path: &std::path::Path,
    context: config::Context,
) -> Result<Running, StartError> {
    launch(snapshot, Some((path.to_path_buf(), context))).await
}

/// Binds the listeners and starts serving `snapshot`, which never changes.
pub async fn start(snapshot: Snapshot) -> Result<Running, StartError> {
    launch(snapshot, None).await
}

async fn launch(
    snapshot: Snapshot,
    file: Option<(std::path::PathBuf, config::Context)>,
) -> Result<Running, StartError> {
    // Some dependencies build TLS configs from the process default; make it ours.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let metrics = metrics::Metrics::new();
    let open = |target: &str| {
        decision_log::DecisionLog::open(&decision_log::Target::parse(target), metrics.clone())
            .map_err(|source| StartError::DecisionLog {
                target: target.to_owned(),
                source,
            })
    };
    let decisions = open(&snapshot.log.decisions)?;
    let admin_actions = match snapshot.log.admin_actions.as_str() {
        "decisions" => decisions.clone(),
        other => open(other)?,
    };
    let listener = TcpListener::bind(snapshot.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: snapshot.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: snapshot.listen,
        source,
    })?;
    let admin_listener = match snapshot.admin {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|source| StartError::Bind { addr: a, source })?,
        ),
        None => None,
    };
    let admin = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

    if let Some(provider) = &snapshot.oidc {
        provider.start();
    }
    if let Some(inventory) = &snapshot.devices {
        inventory.start(metrics.clone());
    }
    snapshot.certificates.publish(None, &metrics);
    tls::lifecycle::Status::now(&snapshot.certificates).log("start-up");
    let shared = Shared::new(snapshot, metrics, decisions, admin_actions);
    let readiness = Arc::new(admin::Readiness::default());
    let shutdown = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let reloader = file.map(|(path, context)| {
        let reloader = reload::Reloader::new(&path, shared.clone(), context);
        tokio::spawn(reloader.clone().watch(admin_stop.clone()));
        reloader
    });
    tokio::spawn(live::verifier(shared.clone(), admin_stop.clone()));
    state::changes::start(&shared, admin_stop.clone());
    tokio::spawn(jit::expiry(shared.clone(), admin_stop.clone()));
    tokio::spawn(admin::blocks::expiry(shared.clone(), admin_stop.clone()));
    let alerts_task = tokio::spawn(alerts::deliver(shared.alerts.clone(), admin_stop.clone()));
    let current = shared.clone();
    tokio::spawn(tls::lifecycle::recheck(
        move || current.snapshot.load().certificates.clone(),
        admin_stop.clone(),
    ));
    let proxy = tokio::spawn(server::serve(listener, shared.clone(), shutdown.clone()));
    let admin_task = admin_listener.map(|l| {
        tokio::spawn(admin::serve(
            l,
            admin::State {
                shared: shared.clone(),
                readiness: readiness.clone(),
                reloader: reloader.clone(),
            },
            admin_stop.clone(),
        ))
    });
    readiness.set(true);
    tracing::info!(%addr, admin = admin.map(tracing::field::display), "vigil listening");
    Ok(Running {
        addr,
        admin,
        shared,
        readiness,
        reloader,
        shutdown,
        admin_stop,
        proxy,
        admin_task,
        alerts_task,
    })
}
