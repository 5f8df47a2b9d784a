//! Configuration: the file's schema, every problem reported at once, and the compiled,
//! immutable [`Snapshot`] that requests read.
//!
//! A snapshot is built whole (files read, certificates parsed, rules compiled) or not at all,
//! so whatever is swapped in is known to work.

pub mod admin;
mod alerts;
mod assertion;
pub mod authz;
mod certificates;
mod compiler;
mod detectors;
mod devices;
pub mod diagnostics;
mod hsts;
mod keys;
pub mod load;
mod log;
mod oidc;
mod policy;
mod risk;
mod routes;
mod rules;
pub mod schema;
mod server;
mod state;
mod tls;
mod upstream;

pub use admin::AdminTls;
pub use authz::Authz;
pub use diagnostics::{Problem, Problems, Source, Warnings};
pub use schema::LogSection;
pub use server::HttpServer;

use crate::forward::assertion::Signer;
use crate::identity::Sessions;
use crate::identity::oidc::Provider;
use crate::routing::RouteTable;
use crate::tls::Resumption;
use compiler::Compiler;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The compiled configuration. Immutable; a reload builds a new one.
pub struct Snapshot {
    /// Increases by one on every successful load.
    pub generation: u64,
    /// Where the configuration came from, for messages.
    pub source: String,
    pub listen: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// TLS with client certificates for the admin listener, when configured.
    pub admin_tls: Option<AdminTls>,
    /// The admin listener's accepted names and bearer tokens.
    pub admin_access: admin::AdminAccess,
    /// The admin listener's connection limits and timeouts.
    pub admin_limits: admin::AdminLimits,
    pub tls: Arc<rustls::ServerConfig>,
    /// The OpenID Provider, when `[oidc]` is configured.
    pub oidc: Option<Arc<Provider>>,
    /// Session keys and lifetimes, when `[session]` is configured.
    pub sessions: Option<Arc<Sessions>>,
    /// The device inventory, when `[devices]` is configured.
    pub devices: Option<Arc<crate::posture::inventory::Inventory>>,
    /// Risk weights and thresholds, when `[risk]` is configured.
    pub risk: Option<crate::posture::RiskSettings>,
    /// Continuous verification settings.
    pub verify: crate::identity::verify::Settings,
    /// The decision endpoint for other enforcement points, when `[authz]` is configured.
    pub authz: Option<Arc<Authz>>,
    /// Where alerts are delivered, when `[alerts] webhook` is configured; otherwise they are
    /// only logged.
    pub alerts: Option<Arc<crate::alerts::Webhook>>,
    /// The detectors that run, when `[detectors]` is configured; their counts live in
    /// `state::Shared`, so a reload keeps them.
    pub detectors: Option<Arc<crate::anomaly::detect::Settings>>,
    /// Where the state replicas share is kept: `None` in memory (`[state]`, bound at start).
    pub state: Option<Arc<crate::fleet::Settings>>,
    /// Signs `X-Vigil-Assertion`, when `[assertion]` is configured.
    pub signer: Option<Arc<Signer>>,
    /// The verifier inside `tls`, to re-check certificates of resumed sessions.
    pub client_verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    /// The dates of the server certificate, client CAs and CRLs behind `tls`, judged against
    /// the clock when asked (`/readyz`, the log, the metrics).
    pub certificates: Arc<crate::tls::lifecycle::Material>,
    /// What the load found worth saying without refusing the configuration.
    pub warnings: Warnings,
    pub routes: RouteTable,
    /// Every route's rules and risk actions, audit mode and step-up freshness: what
    /// [`crate::policy::decide`] reads.
    pub policy: crate::policy::Policy,
    pub max_connections: usize,
    /// Per-source shares of the connection slots (see `server::Sources`); 0 for no limit.
    pub max_connections_per_source: usize,
    pub max_handshakes_per_source: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_body_bytes: Option<u64>,
    /// Longest request target (path and query) in bytes; `None`: no limit of Vigil's own.
    pub max_target_bytes: Option<usize>,
    /// The `Strict-Transport-Security` value for every answer downstream; `None` when
    /// `[server] hsts_max_age` is `"0s"`.
    pub hsts: Option<http::HeaderValue>,
    /// Which peers are load balancers that send a PROXY protocol header, when
    /// `[server] proxy_protocol` is set.
    pub proxy_protocol: Option<crate::proxy_protocol::ProxyProtocol>,
    /// The HTTP/1.1 and HTTP/2 server settings, with the limits applied; a connection is
    /// served with the one its TLS handshake negotiated.
    pub http: HttpServer,
    pub log: LogSection,
    /// Every file the configuration refers to, including itself, for the watcher.
    pub files: Vec<PathBuf>,
    /// Upstream pools by TLS setting, with a hash of the files behind it, so a reload that
    /// does not touch them keeps the pools (and their warm connections).
    clients: upstream::Pools,
}

impl Snapshot {
    /// Gives every route's upstream stack its metric series (at start and after a reload).
    pub fn attach_upstreams(&self, families: &crate::metrics::UpstreamFamilies) {
        for route in self.routes.iter() {
            route.upstream.attach(families);
        }
    }

    /// The ids of the keys this configuration seals sessions and signs assertions with, in
    /// the order of their files (public values): every replica of a fleet must hold the same.
    pub fn key_ids(&self) -> String {
        let sessions = self
            .sessions
            .as_ref()
            .map(|s| s.ring.key_ids().join(","))
            .unwrap_or_default();
        let assertion = self
            .signer
            .as_ref()
            .map(|s| s.kids().join(","))
            .unwrap_or_default();
        format!("session={sessions} assertion={assertion}")
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("source", &self.source)
            .field("listen", &self.listen)
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}

/// What a load needs from the running process.
#[derive(Clone)]
pub struct Context {
    pub generation: u64,
    pub resumption: Resumption,
    /// The snapshot being replaced, whose upstream pools may be kept.
    pub previous: Option<Arc<Snapshot>>,
}

impl Context {
    /// For the first load of a process.
    pub fn first() -> Result<Self, rustls::Error> {
        Ok(Self {
            generation: 1,
            resumption: Resumption::new()?,
            previous: None,
        })
    }
}

/// Reads and compiles a configuration file.
pub fn load_file(path: &Path, ctx: &Context) -> Result<Snapshot, Problems> {
    let name = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return Err(Problems {
                source: Arc::new(Source {
                    name,
                    text: String::new(),
                }),
                items: vec![Problem::at(
                    None,
                    format!("cannot read the file: {}", crate::error::file_error(&e)),
                )],
            });
        }
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut snapshot = load_text(&name, text, &base, ctx)?;
    snapshot.files.push(path.to_path_buf());
    Ok(snapshot)
}

/// Compiles configuration text; relative file paths are resolved against `base`.
pub fn load_text(
    name: &str,
    text: String,
    base: &Path,
    ctx: &Context,
) -> Result<Snapshot, Problems> {
    let (raw, locator, mut items) = load::parse(&text);
    let source = Arc::new(Source {
        name: name.to_owned(),
        text,
    });
    if locator.unparsed() {
        // Syntax errors: nothing further can be said reliably.
        return Err(Problems::in_file_order(source, items));
    }
    let mut compiler = Compiler::new(base, &locator, &mut items, ctx.previous.as_deref());
    let snapshot = compiler.compile(&raw, name, ctx);
    let warnings = Warnings {
        source: source.clone(),
        items: std::mem::take(&mut compiler.warnings),
        for_check: std::mem::take(&mut compiler.for_check),
    };
    match snapshot {
        Some(mut s) if items.is_empty() => {
            s.warnings = warnings;
            Ok(s)
        }
        _ => Err(Problems::in_file_order(source, items)),
    }
}

impl Compiler<'_> {
    /// Compiles every section in turn, each reporting its own problems. `None` when a part
    /// the snapshot cannot do without failed; the caller refuses the snapshot whenever any
    /// problem was reported.
    fn compile(&mut self, raw: &load::RawConfig, name: &str, ctx: &Context) -> Option<Snapshot> {
        let server = self.server(&raw.server);
        let hsts = self.hsts(&raw.server);
        let log = self.log(&raw.log);
        let audit = self.audit(&raw.audit);
        let tls = self.tls(raw, &ctx.resumption);
        self.upstream_defaults(&raw.upstream);
        let devices = self.devices(raw.devices.as_ref());
        let policies = self.policy_shared(&raw.policy, devices.clone());
        let routes = self.routes(raw, &policies);
        let oidc = self.oidc(raw);
        let sessions = self.sessions(raw.session.as_ref());
        let verify = self.verify(&raw.verify);
        let signer = self.signer(raw.assertion.as_ref());
        let risk = self.risk(raw.risk.as_ref());
        let admin = self.admin(raw);
        let authz = self.authz(raw.authz.as_ref());
        let alerts = self.alerts(raw.alerts.as_ref());
        let detectors = self.detectors(raw.detectors.as_ref(), risk.as_ref());
        let state = self.state(raw);
        let (server, tls, routes) = (server?, tls?, routes?);
        let policy = crate::policy::Policy::new(
            routes.table.iter().map(|r| r.policy.clone()),
            audit,
            risk.as_ref()
                .map_or(300, |r| r.step_up_max_age.as_secs() as i64),
        );

        Some(Snapshot {
            generation: ctx.generation,
            source: name.to_owned(),
            listen: server.listen,
            admin: admin.listen,
            admin_tls: admin.tls,
            admin_access: admin.access,
            admin_limits: admin.limits,
            oidc,
            sessions,
            signer,
            authz,
            alerts,
            detectors,
            state,
            devices,
            risk,
            verify,
            tls: tls.config,
            client_verifier: tls.client_verifier,
            certificates: tls.material,
            warnings: Warnings::none(),
            routes: routes.table,
            policy,
            max_connections: server.max_connections,
            max_connections_per_source: server.max_connections_per_source,
            max_handshakes_per_source: server.max_handshakes_per_source,
            handshake_timeout: server.handshake_timeout,
            idle_timeout: server.idle_timeout,
            drain_timeout: server.drain_timeout,
            body_read_timeout: server.body_read_timeout,
            max_body_bytes: server.max_body_bytes,
            max_target_bytes: server.max_target_bytes,
            hsts,
            proxy_protocol: server.proxy_protocol,
            http: server.http,
            log,
            files: self.files(),
            clients: routes.pools,
        })
    }
}
