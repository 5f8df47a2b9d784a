//! `[admin]`: the operator's listener. Its address, its client-certificate requirement, the
//! names it answers to, its bearer tokens, the rule that a listener reachable from other hosts
//! must authenticate whoever changes something, and its limits.

use super::compiler::Compiler;
use super::load::RawConfig;
use super::schema::{AdminSection, TlsSection};
use crate::policy::Pattern;
use crate::tls::{ServerTls, read_chain, read_key, read_roots};
use aws_lc_rs::digest::{SHA256, digest};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// `[admin]`, compiled; its parts are separate fields of the [`super::Snapshot`].
pub(super) struct Admin {
    /// `None`: the admin listener is off.
    pub listen: Option<SocketAddr>,
    pub tls: Option<AdminTls>,
    pub access: AdminAccess,
    pub limits: AdminLimits,
}

/// The admin listener's client-certificate requirement.
pub struct AdminTls {
    pub config: Arc<rustls::ServerConfig>,
    /// SPIFFE ID patterns allowed; empty allows any verified client.
    pub allow_spiffe: Vec<Pattern>,
}

/// How much of the process the admin listener may hold, and for how long; compiled from
/// `[admin]`. Read for every new admin connection, so a reload applies to the next one.
#[derive(Debug, Clone)]
pub struct AdminLimits {
    /// Admin connections open at once, handshakes included (at least 1).
    pub max_connections: usize,
    /// Admin connections from one source (see `server::Source`); 0 for no limit.
    pub max_connections_per_source: usize,
    pub handshake_timeout: Duration,
    /// From the connection's start, and from the end of one request to the next one's head.
    pub header_read_timeout: Duration,
    /// From a request's head to the end of its body, for the endpoints that read one.
    pub body_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/1.1 and cleartext (or TLS) HTTP/2 with those limits and small heads.
    pub http: auto::Builder<TokioExecutor>,
}

/// Longest admin request head: its requests are short, and a bearer token fits many times.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// HTTP/2 streams an admin connection may have open at once.
pub const MAX_STREAMS: u32 = 16;

/// Who may use the admin listener, beyond reaching it; compiled from `[admin]`.
#[derive(Debug, Clone, Default)]
pub struct AdminAccess {
    /// `[admin] names`: hosts clients may name besides the listener's own address.
    pub names: Vec<AdminName>,
    /// `[admin] token_file`: when not empty, every request that changes something must carry
    /// one of these as `Authorization: Bearer`.
    pub tokens: Vec<AdminToken>,
}

/// A host name the admin listener answers to; without a port it matches any port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminName {
    /// Lower case; IPv6 literals keep their brackets.
    pub host: String,
    pub port: Option<u16>,
}

/// One line of the token file. Only the SHA-256 of the token is kept, so comparing costs the
/// same whatever the presented token's length and contents.
#[derive(Clone)]
pub struct AdminToken {
    /// For the audit trail: who made the call.
    pub name: String,
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Tokens shorter than this are refused: a guessable token is no protection.
pub const MIN_TOKEN_LEN: usize = 32;

impl AdminAccess {
    /// The name of the token `presented` is, comparing against every configured token in
    /// constant time (no early exit, no dependence on where they differ).
    pub fn token_name(&self, presented: &[u8]) -> Option<&str> {
        let presented = sha256(presented);
        let mut found = None;
        for token in &self.tokens {
            let equal =
                aws_lc_rs::constant_time::verify_slices_are_equal(&token.digest, &presented)
                    .is_ok();
            if equal && found.is_none() {
                found = Some(token.name.as_str());
            }
        }
        found
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// Parses one `[admin] names` entry: `host` or `host:port`, a DNS name or an IP literal.
pub fn parse_name(text: &str) -> Result<AdminName, String> {
    let text = text.trim();
    let bad = || {
        format!(
            "{text:?} is not a host name: write it like \"vigil-admin.vigil.svc\" or \"vigil-admin.vigil.svc:9901\""
        )
    };
    if text.contains('*') {
        return Err(bad());
    }
    let (host, port) = split_authority(text).ok_or_else(bad)?;
    Ok(AdminName { host, port })
}

/// `host[:port]` split, host lower-cased (IPv6 literals keep their brackets); no user info,
/// no path, and a port, when there is a colon, that is a number.
pub fn split_authority(text: &str) -> Option<(String, Option<u16>)> {
    if text.is_empty() || text.contains(['@', '/', '?', '#']) {
        return None;
    }
    let authority: http::uri::Authority = text.parse().ok()?;
    let host = authority.host();
    let port = authority.port_u16();
    // `Authority` accepts `host:` and `host:junk` (port() is then None): refuse both.
    if host.is_empty() || (authority.as_str().len() > host.len() && port.is_none()) {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

/// Parses a token file: one token per line, `NAME TOKEN` or a bare `TOKEN` (named `line N`);
/// blank lines and lines starting with `#` are skipped. Errors never quote a token.
pub fn parse_tokens(text: &str) -> Result<Vec<AdminToken>, String> {
    let mut tokens: Vec<AdminToken> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (name, token) = match fields.as_slice() {
            [token] => (format!("line {n}"), *token),
            [name, token] => ((*name).to_owned(), *token),
            _ => {
                return Err(format!(
                    "line {n}: write one token per line, as NAME TOKEN or TOKEN"
                ));
            }
        };
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "line {n}: the token is shorter than {MIN_TOKEN_LEN} characters"
            ));
        }
        let b64token = token
            .trim_end_matches('=')
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
        if !b64token {
            return Err(format!(
                "line {n}: a token may only hold letters, digits and - . _ ~ + / (then =)"
            ));
        }
        let digest = sha256(token.as_bytes());
        if tokens.iter().any(|t| t.name == name) {
            return Err(format!("line {n}: the name {name:?} is used twice"));
        }
        if tokens.iter().any(|t| t.digest == digest) {
            return Err(format!("line {n}: the same token is listed twice"));
        }
        tokens.push(AdminToken { name, digest });
    }
    if tokens.is_empty() {
        return Err("no token in the file".into());
    }
    Ok(tokens)
}

impl Compiler<'_> {
    pub(super) fn admin(&mut self, raw: &RawConfig) -> Admin {
        let admin = &raw.admin;
        let listen = if admin.listen.is_empty() {
            None
        } else {
            self.socket_addr("admin.listen", &admin.listen)
        };
        let tls = match &raw.tls {
            Some(tls) if !admin.client_ca.is_empty() => self.admin_tls(admin, tls),
            _ => {
                if !admin.allow_spiffe.is_empty() {
                    self.problem_help(
                        "admin.allow_spiffe",
                        "allow_spiffe needs client certificates on the admin listener",
                        "set admin.client_ca too",
                    );
                }
                None
            }
        };
        Admin {
            listen,
            tls,
            access: self.admin_access(admin, listen),
            limits: self.admin_limits(admin),
        }
    }

    /// TLS 1.3 with client certificates from `[admin] client_ca`, checked against the same
    /// CRLs as the proxy listener's.
    fn admin_tls(&mut self, admin: &AdminSection, tls: &TlsSection) -> Option<AdminTls> {
        let cert = admin.cert.as_deref().unwrap_or(&tls.cert);
        let key_path = admin.key.as_deref().unwrap_or(&tls.key);
        let chain = read_chain(&self.file(cert))
            .map_err(|e| self.problem("admin.cert", e))
            .ok();
        let key = read_key(&self.file(key_path))
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
        let allow_spiffe = self.allow_spiffe(admin);
        // Without a certificate and key of its own, the admin listener uses [tls]'s, checked
        // there.
        let at = if admin.key.is_some() {
            "admin.key"
        } else {
            "admin.cert"
        };
        let fits = (admin.cert.is_none() && admin.key.is_none())
            || self.key_fits(at, cert, key_path, chain.as_deref(), key.as_ref());
        let (chain, key) = (chain?, key?);
        if !fits {
            return None;
        }
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

    fn allow_spiffe(&mut self, admin: &AdminSection) -> Vec<Pattern> {
        let mut allow_spiffe = Vec::new();
        for (i, p) in admin.allow_spiffe.iter().enumerate() {
            let key = format!("admin.allow_spiffe.{i}");
            if !p.starts_with("spiffe://") {
                self.problem(&key, format!("{p:?} is not a SPIFFE ID pattern"));
            } else if let Some(pattern) = self.pattern(&key, p) {
                allow_spiffe.push(pattern);
            }
        }
        allow_spiffe
    }

    /// `[admin]` connection limits and timeouts. None of them can be turned off: an admin
    /// listener without them lets anyone who reaches it hold file descriptors shared with the
    /// proxy listener.
    fn admin_limits(&mut self, admin: &AdminSection) -> AdminLimits {
        if admin.max_connections == 0 {
            self.problem_help(
                "admin.max_connections",
                "must be at least 1",
                "turn the admin listener off with admin.listen = \"\" instead",
            );
        }
        self.longer_than_zero(&[
            ("admin.handshake_timeout", admin.handshake_timeout.0),
            ("admin.header_read_timeout", admin.header_read_timeout.0),
            ("admin.body_read_timeout", admin.body_read_timeout.0),
            ("admin.idle_timeout", admin.idle_timeout.0),
        ]);
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(admin.header_read_timeout.0)
            .max_buf_size(MAX_HEAD_BYTES)
            .keep_alive(true);
        http.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEAD_BYTES as u32)
            .max_concurrent_streams(MAX_STREAMS)
            // No pings: idleness is judged by requests in progress (see `admin::serve`).
            .keep_alive_interval(None);
        AdminLimits {
            max_connections: admin.max_connections.max(1),
            max_connections_per_source: admin.connections_per_source(),
            handshake_timeout: admin.handshake_timeout.0,
            header_read_timeout: admin.header_read_timeout.0,
            body_read_timeout: admin.body_read_timeout.0,
            idle_timeout: admin.idle_timeout.0,
            http,
        }
    }

    /// `[admin] names` and `token_file`, and the refusal of a plain-HTTP listener off loopback
    /// that would let anyone who reaches it revoke and restore.
    fn admin_access(&mut self, admin: &AdminSection, listen: Option<SocketAddr>) -> AdminAccess {
        let mut names = Vec::new();
        for (i, name) in admin.names.iter().enumerate() {
            match parse_name(name) {
                Ok(n) => names.push(n),
                Err(e) => self.problem(&format!("admin.names.{i}"), e),
            }
        }
        let mut tokens = Vec::new();
        if let Some(file) = &admin.token_file {
            match std::fs::read_to_string(self.file(file)) {
                Ok(text) => match parse_tokens(&text) {
                    Ok(t) => tokens = t,
                    Err(e) => self.problem_help(
                        "admin.token_file",
                        format!("{file}: {e}"),
                        "one token per line (NAME TOKEN), e.g. `echo \"ops $(openssl rand -hex 32)\" >> FILE`",
                    ),
                },
                Err(e) => {
                    let why = crate::error::file_error(&e);
                    self.problem("admin.token_file", format!("{file}: {why}"));
                }
            }
        }
        if let Some(addr) = listen
            && !addr.ip().is_loopback()
            && admin.client_ca.is_empty()
            && admin.token_file.is_none()
        {
            self.problem_help(
                "admin.listen",
                format!(
                    "the admin listener on {addr} is plain HTTP off loopback with no authentication: \
                     anyone who reaches it could reload, revoke and restore"
                ),
                "set admin.token_file (bearer tokens for the endpoints that change something) \
                 or admin.client_ca (client certificates), or listen on 127.0.0.1",
            );
        }
        AdminAccess { names, tokens }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "0123456789abcdef0123456789abcdef";
    const T2: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn token_files() {
        let tokens = parse_tokens(&format!("# ops\n\nalice {T1}\r\n{T2}\n")).unwrap();
        let access = AdminAccess {
            names: Vec::new(),
            tokens,
        };
        assert_eq!(access.token_name(T1.as_bytes()), Some("alice"));
        assert_eq!(access.token_name(T2.as_bytes()), Some("line 4"));
        assert_eq!(access.token_name(b"0123456789abcdef0123456789abcdeX"), None);
        assert_eq!(access.token_name(b""), None);
        for (text, error) in [
            ("", "no token"),
            ("# nothing\n", "no token"),
            ("short", "shorter than 32"),
            (&format!("a b {T1}"), "one token per line"),
            (&format!("a {T1}\na {T2}"), "used twice"),
            (&format!("a {T1}\nb {T1}"), "listed twice"),
            ("0123456789abcdef0123456789abcde\"", "may only hold"),
        ] {
            let e = parse_tokens(text).unwrap_err();
            assert!(e.contains(error), "{text:?}: {e}");
            assert!(!e.contains(T1), "an error quotes a token: {e}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            parse_name("Vigil-Admin.vigil.svc").unwrap(),
            AdminName {
                host: "vigil-admin.vigil.svc".into(),
                port: None
            }
        );
        assert_eq!(parse_name("[fd00::1]:9901").unwrap().port, Some(9901));
        for bad in ["", "*.svc", "a@b", "http://x/", "a:b"] {
            assert!(parse_name(bad).is_err(), "{bad:?}");
        }
    }
}
