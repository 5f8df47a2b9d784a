//! `[upstream]` and a route's upstream: the URL requests are sent to, and the connection pool
//! that sends them, shared by routes with the same TLS settings and kept across reloads.

use super::compiler::Compiler;
use super::load::RawConfig;
use super::schema::{RouteSection, UpstreamSection};
use crate::forward::{ClientSettings, HttpClient, Upstream};
use crate::tls::outbound::{client_config, system_roots};
use crate::tls::{read_chain, read_key, read_roots};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// One load's upstream pools by TLS setting, each with a hash of the files behind it: the next
/// load keeps a pool whose files are unchanged.
#[derive(Default)]
pub(super) struct Pools(HashMap<ClientKey, (u64, HttpClient)>);

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

impl Compiler<'_> {
    /// `[upstream]`: the defaults every route's upstream starts from.
    pub(super) fn upstream_defaults(&mut self, u: &UpstreamSection) {
        self.longer_than_zero(&[
            ("upstream.connect_timeout", u.connect_timeout.0),
            ("upstream.response_timeout", u.response_timeout.0),
        ]);
    }

    /// The upstream of the route at `at`, with its pool from `pools`.
    pub(super) fn upstream(
        &mut self,
        at: &str,
        r: &RouteSection,
        raw: &RawConfig,
        pools: &mut Pools,
    ) -> Option<Upstream> {
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
        if scheme != http::uri::Scheme::HTTPS
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
        let client = self.client_for(at, client_key, pools)?;
        Some(Upstream {
            scheme,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            authority,
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
    fn client_for(&mut self, at: &str, key: ClientKey, pools: &mut Pools) -> Option<HttpClient> {
        let files: Vec<PathBuf> = [&key.ca, &key.cert, &key.key]
            .into_iter()
            .flatten()
            .map(|f| self.file(f))
            .collect();
        let material = material_hash(&files);
        if let Some((hash, client)) = pools.0.get(&key)
            && *hash == material
        {
            return Some(client.clone());
        }
        if let Some((hash, client)) = self.previous.and_then(|p| p.clients.0.get(&key))
            && *hash == material
        {
            let client = client.clone();
            pools.0.insert(key, (material, client.clone()));
            return Some(client);
        }
        let client = self.client(at, &key)?;
        pools.0.insert(key, (material, client.clone()));
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
