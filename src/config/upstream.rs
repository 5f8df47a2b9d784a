//! `[upstream]` and a route's upstream: the URLs requests are sent to, the endpoints they
//! resolve to, and the stack that balances, limits and retries across them. Endpoints are
//! shared by routes with the same TLS settings and kept across reloads, with their pools and
//! health.

use super::compiler::Compiler;
use super::load::RawConfig;
use super::schema::{OutlierSection, RouteSection, UpstreamSection};
use crate::forward::Upstream;
use crate::forward::discover::{Endpoints, HealthCheck, Plan, RouteState, Target, port};
use crate::forward::endpoint::{Outlier, Settings};
use crate::forward::stack::{Balancing, Limits, Stack};
use crate::tls::outbound::{client_config, system_roots};
use crate::tls::{read_chain, read_key, read_roots};
use http::uri::{Authority, Scheme};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One load's endpoints by TLS setting, each with a hash of the files behind it: the next
/// load keeps the endpoints of a setting whose files are unchanged.
#[derive(Default)]
pub(super) struct Pools(HashMap<ClientKey, (u64, Arc<Endpoints>)>);

/// Routes with the same upstream TLS settings and connection limits share endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
    max_connections: Option<usize>,
    max_requests_per_connection: Option<u32>,
}

/// One parsed upstream URL.
struct Url {
    scheme: Scheme,
    authority: Authority,
    path: String,
    weight: u32,
}

/// Weights above this would only grow the balancer.
const MAX_WEIGHT: u32 = 100;

impl Compiler<'_> {
    /// `[upstream]`: the defaults every route's upstream starts from.
    pub(super) fn upstream_defaults(&mut self, u: &UpstreamSection) {
        self.longer_than_zero(&[
            ("upstream.connect_timeout", u.connect_timeout.0),
            ("upstream.response_timeout", u.response_timeout.0),
            ("upstream.resolve_interval", u.resolve_interval.0),
        ]);
    }

    /// The upstream of the route at `at`, with its endpoints from `pools`.
    pub(super) fn upstream(
        &mut self,
        at: &str,
        r: &RouteSection,
        raw: &RawConfig,
        pools: &mut Pools,
    ) -> Option<Upstream> {
        let key = format!("{at}.upstream");
        let urls = self.upstream_urls(&key, r)?;
        let scheme = urls[0].scheme.clone();
        if scheme != Scheme::HTTPS
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
            max_connections: r.max_connections,
            max_requests_per_connection: r.max_requests_per_connection,
        };
        let limits = self.limits(at, r, raw);
        let health = self.health(at, r);
        let outlier = self.outlier(at, r.outlier.clone().unwrap_or_default());
        let endpoints = self.client_for(at, client_key, pools)?;
        let (limits, health, outlier) = (limits?, health?, outlier?);
        let targets = urls.iter().map(|url| target(url, &endpoints)).collect();
        let plan = Plan {
            scheme: scheme.clone(),
            targets,
            health,
            resolve_interval: raw.upstream.resolve_interval.0,
        };
        let route = Arc::new(RouteState {
            label: Arc::from(r.name.as_str()),
            outlier,
            changed: tokio::sync::Notify::new(),
            series: std::sync::OnceLock::new(),
        });
        let first = &urls[0];
        Some(Upstream {
            scheme,
            base_path: first.path.clone(),
            authority: first.authority.clone(),
            preserve_host: r.preserve_host,
            response_timeout: limits.response_timeout,
            stack: Stack::new(plan, endpoints, route, &limits),
        })
    }

    /// The route's URLs, parsed; all of one scheme and one base path.
    fn upstream_urls(&mut self, key: &str, r: &RouteSection) -> Option<Vec<Url>> {
        let listed = r.upstream.list();
        if listed.is_empty() {
            self.problem_help(
                key,
                "upstream lists no URL",
                "write upstream = \"http://10.0.0.12:8080\" or a list of URLs",
            );
            return None;
        }
        let mut urls = Vec::new();
        for (text, weight) in listed {
            if weight == 0 || weight > MAX_WEIGHT {
                self.problem(
                    key,
                    format!("upstream {text:?} has weight {weight}: it must be 1 to {MAX_WEIGHT}"),
                );
            }
            urls.extend(self.upstream_url(key, text, weight));
        }
        if urls.len() < r.upstream.list().len() {
            return None;
        }
        if let Some(other) = urls.iter().find(|u| u.scheme != urls[0].scheme) {
            self.problem_help(
                key,
                format!(
                    "the upstream URLs mix {}:// and {}://: every endpoint of a route shares its scheme and TLS settings",
                    urls[0].scheme, other.scheme
                ),
                "put the http:// and https:// endpoints in separate routes",
            );
            return None;
        }
        if let Some(other) = urls.iter().find(|u| u.path != urls[0].path) {
            self.problem(
                key,
                format!(
                    "the upstream URLs have different paths ({:?} and {:?}): every endpoint of a route shares its base path",
                    urls[0].path, other.path
                ),
            );
            return None;
        }
        Some(urls)
    }

    fn upstream_url(&mut self, key: &str, text: &str, weight: u32) -> Option<Url> {
        let uri: http::Uri = match text.parse() {
            Ok(u) => u,
            Err(e) => {
                self.problem(key, format!("invalid upstream URL {text:?}: {e}"));
                return None;
            }
        };
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => {
                self.problem_help(
                    key,
                    format!("upstream {text:?} needs http:// or https://"),
                    "write it like \"http://10.0.0.12:8080\"",
                );
                return None;
            }
        };
        let Some(authority) = uri.authority().cloned() else {
            self.problem(key, "upstream has no host");
            return None;
        };
        if uri.query().is_some() {
            self.problem(key, "upstream URL cannot have a query");
        }
        Some(Url {
            scheme,
            authority,
            path: uri.path().trim_end_matches('/').to_owned(),
            weight,
        })
    }

    /// `balance`, `max_pending`, `retries` and the response timeout.
    fn limits(&mut self, at: &str, r: &RouteSection, raw: &RawConfig) -> Option<Limits> {
        let balancing = match r.balance.as_deref() {
            None | Some("p2c") => Balancing::P2c,
            Some("round_robin") => Balancing::RoundRobin,
            Some(other) => {
                self.problem_help(
                    &format!("{at}.balance"),
                    format!("unknown balance {other:?}"),
                    "use \"p2c\" (the default) or \"round_robin\"",
                );
                return None;
            }
        };
        let zero = [
            ("max_connections", r.max_connections == Some(0)),
            ("max_pending", r.max_pending == Some(0)),
            (
                "max_requests_per_connection",
                r.max_requests_per_connection == Some(0),
            ),
        ];
        let mut ok = true;
        for (name, is_zero) in zero {
            if is_zero {
                self.problem(
                    &format!("{at}.{name}"),
                    format!("{name} must be at least 1"),
                );
                ok = false;
            }
        }
        ok.then(|| Limits {
            balancing,
            max_pending: r.max_pending.unwrap_or(1024),
            retries: r.retries.unwrap_or(2),
            response_timeout: r
                .response_timeout
                .unwrap_or(raw.upstream.response_timeout)
                .0,
        })
    }

    /// `health = { ... }`, checked: `Some(None)` when the route has none.
    fn health(&mut self, at: &str, r: &RouteSection) -> Option<Option<HealthCheck>> {
        let Some(h) = &r.health else {
            return Some(None);
        };
        let key = format!("{at}.health");
        let before = self.reported();
        if !h.path.starts_with('/') || h.path.parse::<http::uri::PathAndQuery>().is_err() {
            self.problem(
                &key,
                format!("health path {:?} must be a path starting with /", h.path),
            );
        }
        if h.interval.0.is_zero() {
            self.problem(&key, "health interval must be longer than 0s");
        }
        if h.unhealthy == 0 || h.healthy == 0 {
            self.problem(&key, "health unhealthy and healthy must be at least 1");
        }
        (self.reported() == before).then(|| {
            Some(HealthCheck {
                path: h.path.clone(),
                interval: h.interval.0,
                unhealthy: h.unhealthy,
                healthy: h.healthy,
            })
        })
    }

    fn outlier(&mut self, at: &str, o: OutlierSection) -> Option<Outlier> {
        if o.consecutive_failures > 0
            && (o.base_ejection.0.is_zero() || o.max_ejection.0 < o.base_ejection.0)
        {
            self.problem(
                &format!("{at}.outlier"),
                "outlier base_ejection must be longer than 0s and max_ejection at least as long",
            );
            return None;
        }
        Some(Outlier {
            failures: o.consecutive_failures,
            base: o.base_ejection.0,
            max: o.max_ejection.0,
        })
    }

    /// The endpoints for `key`: shared with earlier routes of this load, kept from the
    /// previous snapshot when its files are unchanged, or new.
    fn client_for(
        &mut self,
        at: &str,
        key: ClientKey,
        pools: &mut Pools,
    ) -> Option<Arc<Endpoints>> {
        let files: Vec<PathBuf> = [&key.ca, &key.cert, &key.key]
            .into_iter()
            .flatten()
            .map(|f| self.file(f))
            .collect();
        let material = material_hash(&files);
        if let Some((hash, endpoints)) = pools.0.get(&key)
            && *hash == material
        {
            return Some(endpoints.clone());
        }
        if let Some((hash, endpoints)) = self.previous.and_then(|p| p.clients.0.get(&key))
            && *hash == material
        {
            let endpoints = endpoints.clone();
            pools.0.insert(key, (material, endpoints.clone()));
            return Some(endpoints);
        }
        let endpoints = Arc::new(Endpoints::new(self.client(at, &key)?));
        pools.0.insert(key, (material, endpoints.clone()));
        Some(endpoints)
    }

    fn client(&mut self, at: &str, key: &ClientKey) -> Option<Settings> {
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
        Some(Settings {
            tls: Arc::new(tls),
            connect_timeout: key.connect_timeout,
            pool_idle_timeout: key.pool_idle_timeout,
            pool_max_idle_per_host: key.pool_max_idle_per_host,
            max_connections: key.max_connections,
            max_requests_per_connection: key.max_requests_per_connection,
        })
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

/// A URL's target: an IP address is its one endpoint; a host name starts with the addresses
/// its endpoints already have (kept from the previous snapshot) and is resolved by the
/// route's controller.
fn target(url: &Url, endpoints: &Endpoints) -> Target {
    let host = url.authority.host();
    let ip = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok();
    let (literal, found) = match ip {
        Some(ip) => {
            let addr = SocketAddr::new(ip, port(&url.authority, &url.scheme));
            (true, vec![endpoints.get(&url.authority, addr)])
        }
        None => (false, endpoints.live(&url.authority)),
    };
    Target {
        authority: url.authority.clone(),
        weight: url.weight,
        literal,
        endpoints: found,
    }
}
