//! Configuration: the file's schema, every problem reported at once, and the compiled,
//! immutable [`Snapshot`] that requests read.
//!
//! A snapshot is built whole (files read, certificates parsed, rules compiled) or not at all,
//! so whatever is swapped in is known to work.

pub mod admin;
pub mod diagnostics;
pub mod load;
pub mod schema;

pub use diagnostics::{Problem, Problems, Source};

use crate::canonical::{normalize_host, normalize_path};
use crate::forward::assertion::Signer;
use crate::forward::{ClientSettings, HttpClient, Upstream};
use crate::identity::Sessions;
use crate::identity::oidc::Provider;
use crate::identity::seal::KeyRing;
use crate::policy::{Pattern, Policy, RoutePolicy, Rule};
use crate::routing::{Login, Route, RouteTable};
use crate::tls::outbound::{client_config, system_roots};
use crate::tls::{Crls, Resumption, ServerTls, read_chain, read_key, read_roots};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use load::Locator;
use schema::*;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
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
    /// Signs `X-Vigil-Assertion`, when `[assertion]` is configured.
    pub signer: Option<Arc<Signer>>,
    /// The verifier inside `tls`, to re-check certificates of resumed sessions.
    pub client_verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    pub routes: RouteTable,
    /// Every route's rules and risk actions, audit mode and step-up freshness: what
    /// [`crate::policy::decide`] reads.
    pub policy: Policy,
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
    /// The HTTP/1.1 and HTTP/2 server settings, with the limits applied; a connection is
    /// served with the one its TLS handshake negotiated.
    pub http: HttpServer,
    pub log: LogSection,
    /// Every file the configuration refers to, including itself, for the watcher.
    pub files: Vec<PathBuf>,
    /// Upstream pools by TLS setting, with a hash of the files behind it, so a reload that
    /// does not touch them keeps the pools (and their warm connections).
    clients: HashMap<ClientKey, (u64, HttpClient)>,
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

/// How the proxy listener speaks HTTP. There is no sniffing of the first bytes: ALPN `h2` is
/// served as HTTP/2 only, anything else as HTTP/1.1 only, so a client cannot negotiate one
/// protocol and speak the other (an HTTP/1.1 connection that claimed `h2` would escape the
/// framing watcher, which only watches HTTP/1 connections).
#[derive(Clone)]
pub struct HttpServer {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
}

/// The admin listener's client-certificate requirement.
pub struct AdminTls {
    pub config: Arc<rustls::ServerConfig>,
    /// SPIFFE ID patterns allowed; empty allows any verified client.
    pub allow_spiffe: Vec<Pattern>,
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
                items: vec![Problem::at(None, format!("cannot read the file: {e}"))],
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
        return Err(Problems { source, items });
    }
    let mut compiler = Compiler {
        base,
        locator: &locator,
        problems: &mut items,
        files: RefCell::new(Vec::new()),
        previous: ctx.previous.as_deref(),
        clients: HashMap::new(),
    };
    let snapshot = compiler.compile(raw, name, ctx);
    match snapshot {
        Some(s) if items.is_empty() => Ok(s),
        _ => Err(Problems { source, items }),
    }
}

struct Compiler<'a> {
    base: &'a Path,
    locator: &'a Locator,
    problems: &'a mut Vec<Problem>,
    /// Files read so far.
    files: RefCell<Vec<PathBuf>>,
    previous: Option<&'a Snapshot>,
    clients: HashMap<ClientKey, (u64, HttpClient)>,
}

impl Compiler<'_> {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        let span = self.locator.value(path);
        self.problems.push(Problem::at(span, message));
    }

    fn problem_help(&mut self, path: &str, message: impl Into<String>, help: impl Into<String>) {
        let span = self.locator.value(path);
        self.problems
            .push(Problem::at(span, message).with_help(help));
    }

    /// The path of a file the configuration names, resolved and remembered for the watcher.
    fn file(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        let path = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        };
        self.files.borrow_mut().push(path.clone());
        path
    }

    fn compile(&mut self, raw: load::RawConfig, name: &str, ctx: &Context) -> Option<Snapshot> {
        let listen = self.socket_addr("server.listen", &raw.server.listen);
        let admin = if raw.admin.listen.is_empty() {
            None
        } else {
            self.socket_addr("admin.listen", &raw.admin.listen)
        };
        let server = &raw.server;
        if server.max_header_bytes < 8192 {
            self.problem("server.max_header_bytes", "must be at least 8192");
        }
        if server.max_connections == 0 {
            self.problem("server.max_connections", "must be at least 1");
        }
        if server.max_concurrent_streams == 0 {
            self.problem("server.max_concurrent_streams", "must be at least 1");
        }
        let mut durations = vec![
            ("verify.interval", raw.verify.interval),
            ("upstream.connect_timeout", raw.upstream.connect_timeout),
            ("upstream.response_timeout", raw.upstream.response_timeout),
            ("server.handshake_timeout", server.handshake_timeout),
            ("server.header_read_timeout", server.header_read_timeout),
            ("server.idle_timeout", server.idle_timeout),
            ("server.body_read_timeout", server.body_read_timeout),
        ];
        if let Some(s) = &raw.session {
            durations.push(("session.lifetime", s.lifetime));
            durations.push(("session.idle", s.idle));
        }
        if let Some(o) = &raw.oidc {
            durations.push(("oidc.login_timeout", o.login_timeout));
        }
        for (key, d) in durations {
            if d.0.is_zero() {
                self.problem(key, "must be longer than zero");
            }
        }
        match raw.log.format.as_str() {
            "text" | "json" => {}
            other => self.problem_help(
                "log.format",
                format!("unknown log format {other:?}"),
                "use \"text\" or \"json\"",
            ),
        }
        let audit = match raw.audit.mode.as_deref() {
            None | Some("enforce") => false,
            Some("audit") => true,
            Some(other) => {
                self.problem_help(
                    "audit.mode",
                    format!("unknown mode {other:?}"),
                    "use \"enforce\" or \"audit\"",
                );
                false
            }
        };

        let tls = match &raw.tls {
            Some(tls) => self.server_tls(tls, &raw.admin.client_ca, &ctx.resumption),
            None => {
                self.problems.push(
                    Problem::at(None, "missing [tls] section")
                        .with_help("Vigil only speaks TLS: give cert, key and client_ca"),
                );
                None
            }
        };
        let routes = self.routes(&raw);
        let oidc = self.oidc(&raw, ctx);
        let sessions = self.sessions(&raw);
        let signer = self.signer(&raw);
        let devices = self.devices(&raw, ctx);
        let risk = self.risk(&raw);
        let admin_tls = match &raw.tls {
            Some(tls) if !raw.admin.client_ca.is_empty() => self.admin_tls(&raw.admin, tls),
            _ => {
                if !raw.admin.allow_spiffe.is_empty() {
                    self.problem_help(
                        "admin.allow_spiffe",
                        "allow_spiffe needs client certificates on the admin listener",
                        "set admin.client_ca too",
                    );
                }
                None
            }
        };
        let admin_access = self.admin_access(&raw.admin, admin);
        let admin_limits = self.admin_limits(&raw.admin);
        let tls = tls?;

        let mut http = HttpServer {
            http1: http1::Builder::new(),
            http2: http2::Builder::new(TokioExecutor::new()),
        };
        http.http1
            .timer(TokioTimer::new())
            .header_read_timeout(server.header_read_timeout.0)
            .max_buf_size(server.max_header_bytes.max(8192))
            // The buffer bound alone is approximate (one read can carry a head past it);
            // this one is checked against the parsed head, so a larger head always gets 431.
            .max_header_size(server.max_header_bytes)
            .keep_alive(true);
        http.http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(server.max_concurrent_streams)
            // No server pings: they would count as activity and keep idle connections open
            // forever; `idle_timeout` finds dead peers instead.
            .keep_alive_interval(None);

        let routes = routes?;
        let policy = Policy::new(
            routes.iter().map(|r| r.policy.clone()),
            audit,
            risk.as_ref()
                .map_or(300, |r| r.step_up_max_age.as_secs() as i64),
        );
        Some(Snapshot {
            generation: ctx.generation,
            source: name.to_owned(),
            listen: listen?,
            admin,
            admin_tls,
            admin_access,
            admin_limits,
            oidc,
            sessions,
            signer,
            devices,
            risk,
            verify: crate::identity::verify::Settings {
                interval: raw.verify.interval.0,
                max_stale: raw.verify.max_stale.0,
            },
            tls: tls.0,
            client_verifier: tls.1,
            routes,
            policy,
            max_connections: server.max_connections,
            max_connections_per_source: server.connections_per_source(),
            max_handshakes_per_source: server.handshakes_per_source(),
            handshake_timeout: server.handshake_timeout.0,
            idle_timeout: server.idle_timeout.0,
            drain_timeout: server.drain_timeout.0,
            body_read_timeout: server.body_read_timeout.0,
            max_body_bytes: (server.max_body_bytes > 0).then_some(server.max_body_bytes),
            max_target_bytes: (server.max_target_bytes > 0).then_some(server.max_target_bytes),
            http,
            log: LogSection {
                decisions: match raw.log.decisions.as_str() {
                    "stdout" | "stderr" | "off" | "" | "-" => raw.log.decisions.clone(),
                    path => self.base.join(path).display().to_string(),
                },
                ..raw.log
            },
            files: {
                let mut files = self.files.take();
                files.sort();
                files.dedup();
                files
            },
            clients: std::mem::take(&mut self.clients),
        })
    }

    fn socket_addr(&mut self, key: &str, text: &str) -> Option<SocketAddr> {
        match text.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem_help(
                    key,
                    format!("{text:?} is not an IP address and port"),
                    "write it like \"127.0.0.1:8443\" or \"[::]:8443\"",
                );
                None
            }
        }
    }

    fn server_tls(
        &mut self,
        tls: &TlsSection,
        admin_ca: &[String],
        resumption: &Resumption,
    ) -> Option<(
        Arc<rustls::ServerConfig>,
        Arc<dyn rustls::server::danger::ClientCertVerifier>,
    )> {
        let chain = read_chain(&self.file(&tls.cert))
            .map_err(|e| self.problem("tls.cert", e))
            .ok();
        let key = read_key(&self.file(&tls.key))
            .map_err(|e| self.problem("tls.key", e))
            .ok();
        let mut roots = rustls::RootCertStore::empty();
        if tls.client_ca.is_empty() {
            self.problem_help(
                "tls.client_ca",
                "no client CA: every client certificate would be refused",
                "list the PEM bundles of the CAs that issue device and workload certificates",
            );
        }
        let mut roots_ok = true;
        let mut issuers = Vec::new();
        for (i, ca) in tls.client_ca.iter().enumerate() {
            match read_roots(&self.file(ca), &mut roots) {
                Ok(certs) => issuers.extend(certs),
                Err(e) => {
                    self.problem(&format!("tls.client_ca.{i}"), e);
                    roots_ok = false;
                }
            }
        }
        let crls = self.crls(tls, issuers, admin_ca, true);
        let key_exchange = self.key_exchange(tls);
        let (chain, key) = (chain?, key?);
        if !roots_ok || roots.is_empty() {
            return None;
        }
        ServerTls {
            chain,
            key,
            client_roots: roots,
            crls,
            allow_unknown_revocation: tls.allow_unknown_revocation,
            enforce_crl_expiry: tls.enforce_crl_expiry,
            session_tickets: tls.session_tickets,
            key_exchange: key_exchange?,
        }
        .build(Some(resumption))
        .map_err(|e| self.problem("tls", e))
        .ok()
    }

    /// `[tls] crl`, each verified against the CA that issued it, which must be in
    /// `[tls] client_ca` or `[admin] client_ca` (whose own errors are reported where they are
    /// read). Both listeners get the same list; `report` is off for the second reading.
    fn crls(
        &mut self,
        tls: &TlsSection,
        mut issuers: Vec<rustls::pki_types::CertificateDer<'static>>,
        more_issuers: &[String],
        report: bool,
    ) -> Vec<rustls::pki_types::CertificateRevocationListDer<'static>> {
        for ca in more_issuers {
            let mut scratch = rustls::RootCertStore::empty();
            if let Ok(certs) = read_roots(&self.file(ca), &mut scratch) {
                issuers.extend(certs);
            }
        }
        let mut crls = Crls::new(issuers);
        for (i, crl) in tls.crl.iter().enumerate() {
            if let Err(e) = crls.read(&self.file(crl))
                && report
            {
                self.problem(&format!("tls.crl.{i}"), e);
            }
        }
        crls.into_vec()
    }

    /// `[tls] key_exchange`: known group names, each once, at least one.
    fn key_exchange(
        &mut self,
        tls: &TlsSection,
    ) -> Option<Vec<&'static dyn rustls::crypto::SupportedKxGroup>> {
        let names = crate::tls::KEY_EXCHANGE_NAMES;
        if tls.key_exchange.is_empty() {
            self.problem_help(
                "tls.key_exchange",
                "no key exchange group: every handshake would fail",
                format!(
                    "leave the key out for the default {:?}",
                    crate::tls::DEFAULT_KEY_EXCHANGE
                ),
            );
            return None;
        }
        let mut groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup> = Vec::new();
        let mut ok = true;
        for (i, name) in tls.key_exchange.iter().enumerate() {
            let key = format!("tls.key_exchange.{i}");
            match crate::tls::key_exchange_group(name) {
                Some(g) if groups.iter().any(|have| have.name() == g.name()) => {
                    self.problem(&key, format!("{name:?} is listed twice"));
                    ok = false;
                }
                Some(g) => groups.push(g),
                None => {
                    let help = diagnostics::suggest(name, names)
                        .unwrap_or_else(|| format!("known groups: {}", names.join(", ")));
                    self.problem_help(&key, format!("unknown key exchange group {name:?}"), help);
                    ok = false;
                }
            }
        }
        ok.then_some(groups)
    }

    fn oidc(&mut self, raw: &load::RawConfig, ctx: &Context) -> Option<Arc<Provider>> {
        let o = raw.oidc.as_ref()?;
        let before = self.problems.len();
        if url::Url::parse(&o.issuer).map_or(true, |u| !matches!(u.scheme(), "https" | "http")) {
            self.problem(
                "oidc.issuer",
                format!("{:?} is not an http(s) URL", o.issuer),
            );
        }
        let secret = match (&o.client_secret_file, &o.client_secret_env) {
            (Some(file), None) => std::fs::read_to_string(self.file(file))
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| self.problem("oidc.client_secret_file", format!("{file}: {e}")))
                .ok(),
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| {
                    self.problem(
                        "oidc.client_secret_env",
                        format!("environment variable {var} is not set"),
                    )
                })
                .ok(),
            _ => {
                self.problem_help(
                    "oidc",
                    "give exactly one of client_secret_file and client_secret_env",
                    "secrets never go in the configuration file itself",
                );
                None
            }
        };
        let mut algorithms = Vec::new();
        for (i, name) in o.algorithms.iter().enumerate() {
            match crate::identity::oidc::algorithm(name) {
                Some(a) => algorithms.push(a),
                None => self.problem_help(
                    &format!("oidc.algorithms.{i}"),
                    format!("algorithm {name:?} is not accepted"),
                    "asymmetric algorithms only: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA",
                ),
            }
        }
        if !o.scopes.iter().any(|s| s == "openid") {
            self.problem("oidc.scopes", "scopes must include \"openid\"");
        }
        if let Some(url) = &o.redirect_url
            && !url.starts_with("https://")
        {
            self.problem("oidc.redirect_url", "the redirect URL must be https://");
        }
        let ca = self.optional_file("oidc.ca", o.ca.as_ref());
        let standard = [
            "sub", "email", "name", "groups", "amr", "acr", "device", "workload",
        ];
        let mut keep_claims: Vec<String> = raw
            .routes
            .iter()
            .flatten()
            .flat_map(|r| {
                r.allow
                    .iter()
                    .flat_map(|rule| rule.claims.keys().cloned())
                    .chain(r.headers.values().cloned())
            })
            .filter(|c| !standard.contains(&c.as_str()))
            .collect();
        keep_claims.sort();
        keep_claims.dedup();
        if self.problems.len() > before {
            return None;
        }
        let settings = crate::identity::oidc::Settings {
            issuer: o.issuer.clone(),
            client_id: o.client_id.clone(),
            client_secret: secret?,
            redirect_url: o.redirect_url.clone(),
            scopes: o.scopes.clone(),
            groups_claim: o.groups_claim.clone(),
            risk_claim: o.risk_claim.clone(),
            keep_claims,
            mfa_amr: o.mfa_amr.clone(),
            post_logout_redirect: o.post_logout_redirect_url.clone(),
            userinfo: o.userinfo,
            algorithms,
            clock_skew: o.clock_skew.0,
            login_timeout: o.login_timeout.0,
            ca,
        };
        if let Some(previous) = ctx.previous.as_ref().and_then(|p| p.oidc.clone())
            && previous.settings == settings
        {
            return Some(previous);
        }
        Provider::new(settings)
            .map(Arc::new)
            .map_err(|e| self.problem("oidc", e))
            .ok()
    }

    fn sessions(&mut self, raw: &load::RawConfig) -> Option<Arc<Sessions>> {
        let s = raw.session.as_ref()?;
        let ring = KeyRing::from_file(&self.file(&s.keys_file))
            .map_err(|e| self.problem("session.keys_file", e))
            .ok()?;
        if s.idle.0 > s.lifetime.0 {
            self.problem(
                "session.idle",
                "the idle timeout is longer than the lifetime",
            );
        }
        Some(Arc::new(Sessions {
            ring,
            lifetime: s.lifetime.0,
            idle: s.idle.0,
        }))
    }

    fn signer(&mut self, raw: &load::RawConfig) -> Option<Arc<Signer>> {
        let a = raw.assertion.as_ref()?;
        if a.lifetime.0.is_zero() || a.lifetime.0 > Duration::from_secs(3600) {
            self.problem("assertion.lifetime", "between 1 second and 1 hour");
        }
        Signer::from_file(&self.file(&a.keys_file), a.issuer.clone(), a.lifetime.0)
            .map(Arc::new)
            .map_err(|e| self.problem("assertion.keys_file", e))
            .ok()
    }

    fn devices(
        &mut self,
        raw: &load::RawConfig,
        ctx: &Context,
    ) -> Option<Arc<crate::posture::inventory::Inventory>> {
        use crate::posture::inventory::{Inventory, Key, Settings, Source};
        let d = raw.devices.as_ref()?;
        let source = if d.source.starts_with("https://") {
            Source::Url(d.source.clone())
        } else if d.source.contains("://") {
            self.problem("devices.source", "a URL source must be https://");
            return None;
        } else {
            Source::File(self.file(&d.source))
        };
        let key = match d.key.as_str() {
            "fingerprint" => Key::Fingerprint,
            "serial" => Key::Serial,
            "subject" => Key::Subject,
            other => {
                self.problem_help(
                    "devices.key",
                    format!("unknown key {other:?}"),
                    "\"fingerprint\", \"serial\" or \"subject\"",
                );
                return None;
            }
        };
        if d.refresh.0.is_zero() {
            self.problem("devices.refresh", "must be longer than zero");
        }
        let ca = self.optional_file("devices.ca", d.ca.as_ref());
        let settings = Settings {
            source,
            key,
            refresh: d.refresh.0,
            max_stale: d.max_stale.0,
            ca,
        };
        if let Some(previous) = ctx.previous.as_ref().and_then(|p| p.devices.clone())
            && previous.settings == settings
        {
            return Some(previous);
        }
        Inventory::load(settings)
            .map(Arc::new)
            .map_err(|e| self.problem("devices.source", e))
            .ok()
    }

    fn risk(&mut self, raw: &load::RawConfig) -> Option<crate::posture::RiskSettings> {
        let r = raw.risk.as_ref()?;
        let trusted = self.networks("risk.trusted_networks", &r.trusted_networks);
        if r.medium == 0 || r.high < r.medium {
            self.problem("risk", "thresholds need 0 < medium <= high");
        }
        let geoip = match &r.geoip_database {
            Some(path) => crate::posture::geo::GeoIp::open(&self.file(path))
                .map(Arc::new)
                .map_err(|e| self.problem("risk.geoip_database", e))
                .ok(),
            None => None,
        };
        let mut allowed_countries = Vec::new();
        for (i, c) in r.allowed_countries.iter().enumerate() {
            if c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()) {
                allowed_countries.push(c.to_ascii_uppercase());
            } else {
                self.problem(
                    &format!("risk.allowed_countries.{i}"),
                    format!("{c:?} is not an ISO 3166 country code like \"DE\""),
                );
            }
        }
        if !allowed_countries.is_empty() && r.geoip_database.is_none() {
            self.problem(
                "risk.allowed_countries",
                "allowed_countries needs geoip_database",
            );
        }
        Some(crate::posture::RiskSettings {
            device_unknown: r.device_unknown,
            device_noncompliant: r.device_noncompliant,
            stale_check_in: r.stale_check_in,
            untrusted_network: r.untrusted_network,
            idp_risk_medium: r.idp_risk_medium,
            idp_risk_high: r.idp_risk_high,
            recent_denial: r.recent_denial,
            first_seen_device: r.first_seen_device,
            medium: r.medium,
            high: r.high,
            trusted_networks: trusted,
            check_in_max_age: r.check_in_max_age.0,
            denial_window: r.denial_window.0,
            step_up_max_age: r.step_up_max_age.0,
            allowed_countries,
            geoip,
            country_not_allowed: r.country_not_allowed,
            country_unknown: r.country_unknown,
        })
    }

    fn admin_tls(&mut self, admin: &AdminSection, tls: &TlsSection) -> Option<AdminTls> {
        let cert = admin.cert.as_deref().unwrap_or(&tls.cert);
        let key = admin.key.as_deref().unwrap_or(&tls.key);
        let chain = read_chain(&self.file(cert))
            .map_err(|e| self.problem("admin.cert", e))
            .ok();
        let key = read_key(&self.file(key))
            .map_err(|e| self.problem("admin.key", e))
            .ok();
        let mut roots = rustls::RootCertStore::empty();
        for (i, ca) in admin.client_ca.iter().enumerate() {
            if let Err(e) = read_roots(&self.file(ca), &mut roots) {
                self.problem(&format!("admin.client_ca.{i}"), e);
            }
        }
        // The same CRLs as the proxy listener (their problems are reported there).
        let issuers = [&tls.client_ca[..], &admin.client_ca[..]].concat();
        let crls = self.crls(tls, Vec::new(), &issuers, false);
        // Problems with the names are reported for the proxy listener.
        let key_exchange = tls
            .key_exchange
            .iter()
            .filter_map(|name| crate::tls::key_exchange_group(name))
            .collect();
        let mut allow_spiffe = Vec::new();
        for (i, p) in admin.allow_spiffe.iter().enumerate() {
            let key = format!("admin.allow_spiffe.{i}");
            if !p.starts_with("spiffe://") {
                self.problem(&key, format!("{p:?} is not a SPIFFE ID pattern"));
            } else if let Some(pattern) = self.pattern(&key, p) {
                allow_spiffe.push(pattern);
            }
        }
        let (chain, key) = (chain?, key?);
        if roots.is_empty() {
            return None;
        }
        let (config, _) = ServerTls {
            chain,
            key,
            client_roots: roots,
            crls,
            allow_unknown_revocation: tls.allow_unknown_revocation,
            enforce_crl_expiry: tls.enforce_crl_expiry,
            session_tickets: false,
            key_exchange,
        }
        // No resumption: every admin connection proves its certificate afresh.
        .build(None)
        .map_err(|e| self.problem("admin", e))
        .ok()?;
        Some(AdminTls {
            config,
            allow_spiffe,
        })
    }

    fn routes(&mut self, raw: &load::RawConfig) -> Option<RouteTable> {
        if raw.routes.is_empty() {
            self.problems.push(
                Problem::at(None, "no [[route]]: every request would get 404")
                    .with_help("add a [[route]] with name, host, upstream, login and allow"),
            );
            return None;
        }
        let mut names = HashSet::new();
        let mut places = HashSet::new();
        let mut routes = Vec::new();
        let mut all_ok = true;
        for (i, route) in raw.routes.iter().enumerate() {
            let Some(route) = route else {
                all_ok = false;
                continue;
            };
            let at = format!("route.{i}");
            if route.name.trim().is_empty() {
                self.problem(&format!("{at}.name"), "route name is empty");
            } else if !names.insert(route.name.clone()) {
                self.problem(
                    &format!("{at}.name"),
                    format!("duplicate route name {:?}", route.name),
                );
            }
            match self.route(&at, route, raw) {
                Some(compiled) => {
                    if !places.insert((compiled.host.clone(), compiled.path.clone())) {
                        self.problem(
                            &format!("{at}.path"),
                            format!(
                                "another route already serves host {:?} path {:?}",
                                compiled.host, compiled.path
                            ),
                        );
                    }
                    routes.push(compiled);
                }
                None => all_ok = false,
            }
        }
        all_ok.then(|| RouteTable::new(routes))
    }

    fn route(&mut self, at: &str, r: &RouteSection, raw: &load::RawConfig) -> Option<Route> {
        let before = self.problems.len();
        let host = self.route_host(&format!("{at}.host"), &r.host);
        let path = match r.path.as_deref() {
            None | Some("/") => "/".to_owned(),
            Some(p) => match normalize_path(p) {
                Ok(n) if n == p || n.trim_end_matches('/') == p.trim_end_matches('/') => {
                    p.trim_end_matches('/').to_owned()
                }
                Ok(n) => {
                    self.problem_help(
                        &format!("{at}.path"),
                        format!("path {p:?} is not in normal form"),
                        format!("write {n:?}"),
                    );
                    String::new()
                }
                Err(e) => {
                    self.problem(&format!("{at}.path"), format!("invalid path {p:?}: {e}"));
                    String::new()
                }
            },
        };
        let login = match r.login.as_deref() {
            Some("none") => Some(Login::None),
            Some("oidc") => {
                if raw.oidc.is_none() || raw.session.is_none() {
                    self.problem_help(
                        &format!("{at}.login"),
                        "login = \"oidc\" needs the [oidc] and [session] sections",
                        "configure the provider in [oidc] and the session keys in [session]",
                    );
                }
                Some(Login::Oidc)
            }
            Some("bearer") => {
                if raw.oidc.is_none() {
                    self.problem(
                        &format!("{at}.login"),
                        "login = \"bearer\" needs the [oidc] section (whose keys verify the tokens)",
                    );
                }
                if r.bearer_audience.is_none() {
                    self.problem_help(
                        &format!("{at}.login"),
                        "login = \"bearer\" needs bearer_audience",
                        "the audience (aud) the provider issues this API's access tokens for",
                    );
                }
                Some(Login::Bearer)
            }
            Some(other) => {
                self.problem_help(
                    &format!("{at}.login"),
                    format!("unknown login {other:?}"),
                    "\"none\" (certificate identity), \"oidc\" (people) or \"bearer\" (service tokens)",
                );
                None
            }
            None => {
                self.problems.push(
                    Problem::at(self.locator.value(at), format!("{at}: missing `login`"))
                        .with_help("say how callers are identified: login = \"none\" for certificate identity"),
                );
                None
            }
        };
        let mut rules = Vec::new();
        for (j, rule) in r.allow.iter().enumerate() {
            let compiled = self.rule(&format!("{at}.allow.{j}"), rule);
            if compiled.needs_identity() && login == Some(Login::None) {
                self.problem_help(
                    &format!("{at}.allow.{j}"),
                    "this rule is about people (users, groups, mfa, claims) but the route has login = \"none\"",
                    "use login = \"oidc\" for people or \"bearer\" for service tokens",
                );
            }
            rules.push(compiled);
        }
        let mut headers = Vec::new();
        let mut strip = Vec::new();
        for (name, claim) in &r.headers {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => {
                    strip.push(crate::canonical::alias_key(h.as_str()).into_owned());
                    headers.push((h, claim.clone()));
                }
                Err(_) => self.problem(
                    &format!("{at}.headers.{name}"),
                    format!("{name:?} is not a valid header name"),
                ),
            }
        }
        if r.login.as_deref() != Some("bearer")
            && (r.bearer_audience.is_some() || !r.bearer_scopes.is_empty())
        {
            self.problem(
                &format!("{at}.bearer_audience"),
                "bearer_audience and bearer_scopes apply only to login = \"bearer\"",
            );
        }
        if r.allow.is_empty() {
            self.problems.push(
                Problem::at(
                    self.locator.value(at),
                    format!(
                        "route {:?} has no allow rules: it would deny everything",
                        r.name
                    ),
                )
                .with_help(
                    "add allow = [{ spiffe = [\"spiffe://example.org/ns/*/sa/*\"] }] or similar",
                ),
            );
        }
        let mut risk_actions = crate::posture::RiskActions::default();
        if let Some(table) = &r.risk {
            if raw.risk.is_none() {
                self.problem(
                    &format!("{at}.risk"),
                    "route risk actions need a [risk] section",
                );
            }
            for (level, value, slot) in [
                ("low", &table.low, &mut risk_actions.low),
                ("medium", &table.medium, &mut risk_actions.medium),
                ("high", &table.high, &mut risk_actions.high),
            ] {
                if let Some(text) = value {
                    match crate::posture::Action::parse(text) {
                        Some(action) => *slot = action,
                        None => self.problems.push(
                            Problem::at(
                                self.locator.value(&format!("{at}.risk.{level}")),
                                format!("unknown risk action {text:?}"),
                            )
                            .with_help("\"allow\", \"read_only\", \"step_up\" or \"deny\""),
                        ),
                    }
                }
            }
        }
        if rules.iter().any(Rule::needs_inventory) && raw.devices.is_none() {
            self.problem_help(
                &format!("{at}.allow"),
                "device rules need the device inventory",
                "configure [devices] with the MDM export",
            );
        }
        let upgrades = self.upgrades(at, r);
        let upstream = self.upstream(at, r, raw);
        if self.problems.len() > before {
            return None;
        }
        Some(Route {
            label: Arc::from(r.name.as_str()),
            name: r.name.clone(),
            host: host?,
            path,
            policy: Arc::new(RoutePolicy {
                name: r.name.clone(),
                login: login?,
                rules,
                risk: risk_actions,
            }),
            upstream: upstream?,
            max_body_bytes: r.max_body_bytes.map(|n| if n == 0 { u64::MAX } else { n }),
            bearer_audience: r.bearer_audience.clone(),
            bearer_scopes: r.bearer_scopes.clone(),
            headers,
            strip,
            upgrades,
        })
    }

    /// A route's `upgrades`: protocol names (tokens), never one that carries HTTP itself.
    fn upgrades(&mut self, at: &str, r: &RouteSection) -> Vec<String> {
        let Some(list) = &r.upgrades else {
            return vec!["websocket".to_owned()];
        };
        let mut out = Vec::new();
        for (j, name) in list.iter().enumerate() {
            let key = format!("{at}.upgrades.{j}");
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                self.problem_help(
                    &key,
                    format!("{name:?} is not an upgrade protocol name"),
                    "a protocol name as in the Upgrade header, without version, e.g. \"websocket\"",
                );
            } else if crate::canonical::NEVER_UPGRADE
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
            {
                self.problem_help(
                    &key,
                    format!("upgrade {name:?} is never allowed: its tunnel would carry requests past routing and policy"),
                    "remove it; only protocols that do not carry HTTP (such as \"websocket\") may be listed",
                );
            } else {
                out.push(name.to_ascii_lowercase());
            }
        }
        out
    }

    fn route_host(&mut self, key: &str, host: &str) -> Option<String> {
        if host == "*" {
            return Some(host.to_owned());
        }
        let (wild, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host),
        };
        match normalize_host(name) {
            Ok(_) if has_port(name) => {
                self.problem_help(
                    key,
                    format!("route host {host:?} has a port"),
                    "routes match on the host name alone; drop the port",
                );
                None
            }
            Ok(n) => Some(if wild { format!("*.{n}") } else { n }),
            Err(e) => {
                self.problem(key, format!("invalid host {host:?}: {e}"));
                None
            }
        }
    }

    fn rule(&mut self, at: &str, r: &RuleSection) -> Rule {
        let mut rule = Rule::default();
        for (i, p) in r.spiffe.iter().enumerate() {
            if !p.starts_with("spiffe://") {
                self.problem(
                    &format!("{at}.spiffe.{i}"),
                    format!("{p:?} is not a SPIFFE ID pattern (spiffe://trust-domain/path)"),
                );
                continue;
            }
            if let Some(pat) = self.pattern(&format!("{at}.spiffe.{i}"), p) {
                rule.spiffe.push(pat);
            }
        }
        for (i, p) in r.cert_subject.iter().enumerate() {
            if let Some(pat) = self.pattern(&format!("{at}.cert_subject.{i}"), p) {
                rule.cert_subject.push(pat);
            }
        }
        for (i, p) in r.cert_san.iter().enumerate() {
            if let Some(pat) = self.pattern(&format!("{at}.cert_san.{i}"), p) {
                rule.cert_san.push(pat);
            }
        }
        for (i, f) in r.cert_fingerprint.iter().enumerate() {
            let parsed = crate::hex::parse_serial(f)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok());
            match parsed {
                Some(fp) => rule.cert_fingerprint.push(fp),
                None => self.problem(
                    &format!("{at}.cert_fingerprint.{i}"),
                    format!("{f:?} is not a SHA-256 fingerprint (64 hex digits)"),
                ),
            }
        }
        for (i, m) in r.methods.iter().enumerate() {
            match http::Method::from_bytes(m.as_bytes()) {
                Ok(method) if m.bytes().all(|b| b.is_ascii_uppercase()) => {
                    rule.methods.push(method)
                }
                _ => self.problem_help(
                    &format!("{at}.methods.{i}"),
                    format!("invalid method {m:?}"),
                    "methods are upper case, like \"GET\"",
                ),
            }
        }
        for (i, p) in r.paths.iter().enumerate() {
            if !p.starts_with('/') {
                self.problem(
                    &format!("{at}.paths.{i}"),
                    format!("path pattern {p:?} must start with /"),
                );
                continue;
            }
            if let Some(pat) = self.pattern(&format!("{at}.paths.{i}"), p) {
                rule.paths.push(pat);
            }
        }
        rule.networks = self.networks(&format!("{at}.networks"), &r.networks);
        self.identity_rule(at, r, &mut rule);
        rule
    }

    fn identity_rule(&mut self, at: &str, r: &RuleSection, rule: &mut Rule) {
        for (i, p) in r.users.iter().enumerate() {
            match Pattern::user(p) {
                Ok(pat) => rule.users.push(pat),
                Err(e) => self.problem(&format!("{at}.users.{i}"), e),
            }
        }
        for (i, d) in r.email_domains.iter().enumerate() {
            let d = d.trim_start_matches('@').to_ascii_lowercase();
            if d.is_empty() || d.contains('@') || normalize_host(&d).is_err() {
                self.problem(
                    &format!("{at}.email_domains.{i}"),
                    format!("{d:?} is not a domain"),
                );
            } else {
                rule.email_domains.push(d);
            }
        }
        rule.groups = r.groups.clone();
        rule.mfa = r.mfa.unwrap_or(false);
        if let Some(d) = &r.device {
            match crate::policy::DeviceRequirement::parse(d) {
                Some(req) => rule.device = Some(req),
                None => self.problem_help(
                    &format!("{at}.device"),
                    format!("unknown device requirement {d:?}"),
                    "\"compliant\", \"managed\", \"known\" or \"any\"",
                ),
            }
        }
        rule.min_os = r
            .min_os
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        rule.max_check_in_age = r.max_check_in_age.map(|d| d.0.as_secs());
        rule.claims = r
            .claims
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }

    /// Networks in CIDR form (a bare address is its own /32 or /128), each problem reported at
    /// `key.i`.
    fn networks(&mut self, key: &str, list: &[String]) -> Vec<ipnet::IpNet> {
        let mut nets = Vec::with_capacity(list.len());
        for (i, n) in list.iter().enumerate() {
            match n
                .parse::<ipnet::IpNet>()
                .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            {
                Ok(net) => nets.push(net.trunc()),
                Err(_) => self.problem_help(
                    &format!("{key}.{i}"),
                    format!("{n:?} is not a network"),
                    "write it in CIDR form, like \"10.0.0.0/8\"",
                ),
            }
        }
        nets
    }

    /// The bytes of an optional file setting, reporting a read error at `key`.
    fn optional_file(&mut self, key: &str, value: Option<&String>) -> Option<Vec<u8>> {
        let value = value?;
        std::fs::read(self.file(value))
            .map_err(|e| self.problem(key, format!("{value}: {e}")))
            .ok()
    }

    fn pattern(&mut self, key: &str, text: &str) -> Option<Pattern> {
        Pattern::new(text).map_err(|e| self.problem(key, e)).ok()
    }

    fn upstream(&mut self, at: &str, r: &RouteSection, raw: &load::RawConfig) -> Option<Upstream> {
        let key = format!("{at}.upstream");
        let uri: http::Uri = match r.upstream.parse() {
            Ok(u) => u,
            Err(e) => {
                self.problem(&key, format!("invalid upstream URL {:?}: {e}", r.upstream));
                return None;
            }
        };
        let scheme = match uri.scheme_str() {
            Some("http") => http::uri::Scheme::HTTP,
            Some("https") => http::uri::Scheme::HTTPS,
            _ => {
                self.problem_help(
                    &key,
                    format!("upstream {:?} needs http:// or https://", r.upstream),
                    "write it like \"http://10.0.0.12:8080\"",
                );
                return None;
            }
        };
        let Some(authority) = uri.authority().cloned() else {
            self.problem(&key, "upstream has no host");
            return None;
        };
        if uri.query().is_some() {
            self.problem(&key, "upstream URL cannot have a query");
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let is_https = scheme == http::uri::Scheme::HTTPS;
        if !is_https
            && (r.upstream_ca.is_some() || r.upstream_cert.is_some() || r.upstream_key.is_some())
        {
            self.problem(
                &key,
                "upstream_ca, upstream_cert and upstream_key need an https:// upstream",
            );
        }
        let client_key = ClientKey {
            ca: r.upstream_ca.clone(),
            cert: r.upstream_cert.clone(),
            key: r.upstream_key.clone(),
            connect_timeout: r.connect_timeout.unwrap_or(raw.upstream.connect_timeout).0,
            pool_idle_timeout: raw.upstream.pool_idle_timeout.0,
            pool_max_idle_per_host: raw.upstream.pool_max_idle_per_host,
        };
        let client = self.client_for(at, client_key)?;
        Some(Upstream {
            scheme,
            authority,
            base_path,
            preserve_host: r.preserve_host,
            response_timeout: r
                .response_timeout
                .unwrap_or(raw.upstream.response_timeout)
                .0,
            client,
        })
    }

    /// The pool for `key`: shared with earlier routes of this load, kept from the previous
    /// snapshot when its files are unchanged, or new.
    fn client_for(&mut self, at: &str, key: ClientKey) -> Option<HttpClient> {
        let files: Vec<PathBuf> = [&key.ca, &key.cert, &key.key]
            .into_iter()
            .flatten()
            .map(|f| self.file(f))
            .collect();
        let material = material_hash(&files);
        if let Some((hash, client)) = self.clients.get(&key)
            && *hash == material
        {
            return Some(client.clone());
        }
        if let Some((hash, client)) = self.previous.and_then(|p| p.clients.get(&key))
            && *hash == material
        {
            let client = client.clone();
            self.clients.insert(key, (material, client.clone()));
            return Some(client);
        }
        let client = self.client(at, &key)?;
        self.clients.insert(key, (material, client.clone()));
        Some(client)
    }

    fn client(&mut self, at: &str, key: &ClientKey) -> Option<HttpClient> {
        let roots = match &key.ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                if let Err(e) = read_roots(&self.file(ca), &mut roots) {
                    self.problem(&format!("{at}.upstream_ca"), e);
                    return None;
                }
                roots
            }
            None => system_roots(),
        };
        let identity = match (&key.cert, &key.key) {
            (Some(cert), Some(k)) => {
                let chain = read_chain(&self.file(cert))
                    .map_err(|e| self.problem(&format!("{at}.upstream_cert"), e));
                let pk = read_key(&self.file(k))
                    .map_err(|e| self.problem(&format!("{at}.upstream_key"), e));
                Some((chain.ok()?, pk.ok()?))
            }
            (None, None) => None,
            _ => {
                self.problem(
                    &format!("{at}.upstream_cert"),
                    "upstream_cert and upstream_key go together",
                );
                return None;
            }
        };
        let tls = client_config(roots, identity)
            .map_err(|e| self.problem(&format!("{at}.upstream"), e))
            .ok()?;
        Some(
            ClientSettings {
                tls,
                connect_timeout: key.connect_timeout,
                pool_idle_timeout: key.pool_idle_timeout,
                pool_max_idle_per_host: key.pool_max_idle_per_host,
            }
            .build(),
        )
    }
}

/// True when a host as written carries a port (`example.com:443`, `[::1]:8443`).
fn has_port(host: &str) -> bool {
    match host.strip_prefix('[') {
        Some(rest) => rest
            .split_once(']')
            .is_some_and(|(_, after)| !after.is_empty()),
        None => host.contains(':'),
    }
}

/// A hash of the files' contents (unreadable files hash as absent; reading them for real
/// reports the error).
fn material_hash(files: &[PathBuf]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        std::fs::read(f).ok().hash(&mut hasher);
    }
    hasher.finish()
}

/// Routes with the same upstream TLS settings share one connection pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
}
