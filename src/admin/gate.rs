//! The one gate every admin request passes before it is routed.
//!
//! What it defends against is a caller who can make a request reach the listener but is not an
//! operator: a web page in a browser on the same host or network (CSRF, DNS rebinding) and,
//! with a token configured, any neighbour that can open a connection.
//!
//! - Every request must name the listener itself as its host: its own address (any IP literal
//!   with the listener's port when it is bound to an unspecified address, since DNS rebinding
//!   always goes through a DNS name), `localhost` when the connection came over loopback, or
//!   one of `[admin] names`. A rebinding page names the attacker's domain and is refused.
//! - A browser's `Origin` must be the listener itself, and `Sec-Fetch-Site` must not say
//!   `cross-site` or `same-site` (another port on the same host is the same site).
//! - A request that can change something, which is any method but GET and HEAD whatever its
//!   path (so endpoints added later are gated without being listed), must also carry a bearer
//!   token when `[admin] token_file` is set, and say `Content-Type: application/json`. A
//!   browser sends that type across origins only after a CORS preflight, which this listener
//!   never approves: no HTML form or "simple" request can reach a handler.

use crate::config::admin::{AdminAccess, split_authority};
use http::header::{self, HeaderName};
use http::{Method, Request, StatusCode};
use std::net::{IpAddr, SocketAddr};

/// What the gate knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct Conn {
    /// The listener's bound address: its IP may be unspecified (`0.0.0.0`, `::`), its port is
    /// the real one even when the configuration said 0.
    pub bound: SocketAddr,
    /// This connection's local address: the interface the client reached.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Whether the listener speaks TLS with client certificates (`[admin] client_ca`).
    pub tls: bool,
    /// The client certificate's SPIFFE ID, on a TLS listener.
    pub spiffe: Option<String>,
    /// Whether the client certificate passed `[admin] allow_spiffe`.
    pub permitted: bool,
}

/// Who made an admin call that passed the gate, for the audit trail.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The name of the bearer token presented, on a call that changes something.
    pub token: Option<String>,
    pub spiffe: Option<String>,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.token, &self.spiffe) {
            (Some(t), Some(s)) => write!(f, "token {t:?}, certificate {s}"),
            (Some(t), None) => write!(f, "token {t:?}"),
            (None, Some(s)) => write!(f, "certificate {s}"),
            (None, None) => f.write_str("unauthenticated"),
        }
    }
}

/// Why the gate turned a request away. The message is safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The client certificate's SPIFFE ID is not in `allow_spiffe`: usually a workload
    /// certificate from the same CA used where an operator's was meant.
    #[error("this client certificate may not use the admin listener")]
    ClientCertificate,
    /// The request names another host: a DNS-rebinding page, a misrouted request, or a name
    /// missing from `[admin] names`.
    #[error("{0}")]
    Host(&'static str),
    /// A browser page from another origin: cross-site request forgery.
    #[error("{0}")]
    Origin(&'static str),
    /// A call that changes something, without a bearer token.
    #[error("this call needs an admin token: send Authorization: Bearer TOKEN")]
    TokenMissing,
    /// A token that is not in `[admin] token_file`, or a malformed Authorization header.
    #[error("the admin token is not valid")]
    TokenInvalid,
    /// A call that changes something with another body type than JSON, as an HTML form or a
    /// cross-site "simple" request sends.
    #[error("send the body as Content-Type: application/json (an empty body too)")]
    ContentType,
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::ClientCertificate | Self::Origin(_) => StatusCode::FORBIDDEN,
            Self::Host(_) => StatusCode::MISDIRECTED_REQUEST,
            Self::TokenMissing | Self::TokenInvalid => StatusCode::UNAUTHORIZED,
            Self::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The `reason` label of `vigil_admin_refusals_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ClientCertificate => "client_certificate",
            Self::Host(_) => "host",
            Self::Origin(_) => "origin",
            Self::TokenMissing => "token_missing",
            Self::TokenInvalid => "token_invalid",
            Self::ContentType => "content_type",
        }
    }
}

/// Whether a request may change something: any method but GET and HEAD.
pub fn changes_something(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD)
}

/// Lets a request through to the endpoints, or says why not.
pub fn check<B>(req: &Request<B>, conn: &Conn, access: &AdminAccess) -> Result<Caller, Refusal> {
    if conn.tls && !conn.permitted {
        return Err(Refusal::ClientCertificate);
    }
    let (host, port) = authority(req)?;
    if !is_own(&host, port, conn, access) {
        return Err(Refusal::Host(
            "this request names a host that is not the admin listener's (see [admin] names)",
        ));
    }
    if let Some(origin) = single(req, &header::ORIGIN).map_err(Refusal::Origin)? {
        let default = if conn.tls { 443 } else { 80 };
        let own = strip_scheme(origin, conn.tls)
            .and_then(split_authority)
            .is_some_and(|(h, p)| h == host && p.unwrap_or(default) == port.unwrap_or(default));
        if !own {
            return Err(Refusal::Origin(
                "requests from web pages of other origins are refused",
            ));
        }
    }
    let fetch_site = HeaderName::from_static("sec-fetch-site");
    if let Some(site) = single(req, &fetch_site).map_err(Refusal::Origin)?
        && !matches!(site, "same-origin" | "none")
    {
        return Err(Refusal::Origin(
            "requests from web pages of other origins are refused",
        ));
    }
    let mut caller = Caller {
        token: None,
        spiffe: conn.spiffe.clone(),
    };
    if !changes_something(req.method()) {
        return Ok(caller);
    }
    if !access.tokens.is_empty() {
        let value = single(req, &header::AUTHORIZATION)
            .map_err(|_| Refusal::TokenInvalid)?
            .ok_or(Refusal::TokenMissing)?;
        let token = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(Refusal::TokenInvalid)?;
        let name = access
            .token_name(token.as_bytes())
            .ok_or(Refusal::TokenInvalid)?;
        caller.token = Some(name.to_owned());
    }
    let json = single(req, &header::CONTENT_TYPE)
        .ok()
        .flatten()
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(Refusal::ContentType);
    }
    Ok(caller)
}

/// The value of a header sent at most once, as text.
fn single<'r, B>(req: &'r Request<B>, name: &HeaderName) -> Result<Option<&'r str>, &'static str> {
    let mut values = req.headers().get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("a header that may appear once was sent more than once");
    }
    first
        .to_str()
        .map(|v| Some(v.trim()))
        .map_err(|_| "a header value that is not text")
}

/// The host the request names, lower case, and its port if given: the Host header, or the
/// request target's authority (HTTP/2 `:authority`, an absolute-form target), which must agree
/// when both are sent.
fn authority<B>(req: &Request<B>) -> Result<(String, Option<u16>), Refusal> {
    let header = single(req, &header::HOST).map_err(Refusal::Host)?;
    let text = match (req.uri().authority(), header) {
        (Some(target), Some(host)) if !target.as_str().eq_ignore_ascii_case(host) => {
            return Err(Refusal::Host(
                "the request target and the Host header name different hosts",
            ));
        }
        (Some(target), _) => target.as_str(),
        (None, Some(host)) => host,
        (None, None) => return Err(Refusal::Host("the request names no host")),
    };
    split_authority(text).ok_or(Refusal::Host("the Host header is malformed"))
}

fn strip_scheme(origin: &str, tls: bool) -> Option<&str> {
    let scheme = if tls { "https://" } else { "http://" };
    let head = origin.get(..scheme.len())?;
    head.eq_ignore_ascii_case(scheme)
        .then(|| &origin[scheme.len()..])
}

/// Whether `host:port` is the listener itself (see the module docs).
fn is_own(host: &str, port: Option<u16>, conn: &Conn, access: &AdminAccess) -> bool {
    let port = port.unwrap_or(if conn.tls { 443 } else { 80 });
    if access
        .names
        .iter()
        .any(|n| n.host == host && n.port.is_none_or(|p| p == port))
    {
        return true;
    }
    if port != conn.bound.port() {
        return false;
    }
    if host == "localhost" {
        return conn.local.ip().to_canonical().is_loopback();
    }
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let Ok(ip) = literal.parse::<IpAddr>() else {
        return false;
    };
    let (ip, bound) = (ip.to_canonical(), conn.bound.ip().to_canonical());
    bound.is_unspecified() || ip == bound || ip == conn.local.ip().to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::admin::{AdminName, parse_tokens};

    fn conn(bound: &str, local: &str) -> Conn {
        Conn {
            bound: bound.parse().unwrap(),
            local: local.parse().unwrap(),
            remote: "127.0.0.1:50000".parse().unwrap(),
            tls: false,
            spiffe: None,
            permitted: true,
        }
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/revoke");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn host_ok(c: &Conn, access: &AdminAccess, host: &str) -> bool {
        check(&request("GET", &[("host", host)]), c, access).is_ok()
    }

    #[test]
    fn hosts() {
        let none = AdminAccess::default();
        let loopback = conn("127.0.0.1:9901", "127.0.0.1:9901");
        for (host, ok) in [
            ("127.0.0.1:9901", true),
            ("localhost:9901", true),
            ("LOCALHOST:9901", true),
            ("localhost", false),
            ("127.0.0.1:9902", false),
            ("127.0.0.2:9901", false),
            ("attacker.example:9901", false),
            ("attacker.example", false),
            ("127.0.0.1:9901@attacker.example", false),
            ("127.0.0.1:", false),
            ("127.0.0.1:x", false),
            ("", false),
        ] {
            assert_eq!(host_ok(&loopback, &none, host), ok, "{host}");
        }
        let v6 = conn("[::1]:9901", "[::1]:9901");
        assert!(host_ok(&v6, &none, "[::1]:9901"));
        assert!(host_ok(&v6, &none, "localhost:9901"));
        assert!(!host_ok(&v6, &none, "127.0.0.1:9901"));

        // Bound to every interface: any IP literal with the listener's port (a kubelet probe
        // names the pod IP), localhost only over loopback, never a DNS name.
        let pod = conn("0.0.0.0:9901", "10.1.2.3:9901");
        assert!(host_ok(&pod, &none, "10.1.2.3:9901"));
        assert!(host_ok(&pod, &none, "192.0.2.7:9901"));
        assert!(host_ok(&pod, &none, "[fd00::1]:9901"));
        assert!(!host_ok(&pod, &none, "10.1.2.3:80"));
        assert!(!host_ok(&pod, &none, "localhost:9901"));
        assert!(!host_ok(&pod, &none, "vigil-admin.vigil.svc:9901"));
        let mapped = conn("[::]:9901", "[::ffff:127.0.0.1]:9901");
        assert!(host_ok(&mapped, &none, "localhost:9901"));

        let named = AdminAccess {
            names: vec![
                AdminName {
                    host: "vigil-admin.vigil.svc".into(),
                    port: None,
                },
                AdminName {
                    host: "ops.example".into(),
                    port: Some(8080),
                },
            ],
            tokens: Vec::new(),
        };
        assert!(host_ok(&pod, &named, "vigil-admin.vigil.svc"));
        assert!(host_ok(&pod, &named, "Vigil-Admin.vigil.svc:9901"));
        assert!(host_ok(&pod, &named, "ops.example:8080"));
        assert!(!host_ok(&pod, &named, "ops.example:9901"));
        assert!(!host_ok(
            &pod,
            &named,
            "vigil-admin.vigil.svc.attacker.example"
        ));

        // Two Host headers, or a target that disagrees with Host.
        let two = request("GET", &[("host", "127.0.0.1:9901"), ("host", "evil")]);
        assert!(matches!(
            check(&two, &loopback, &none),
            Err(Refusal::Host(_))
        ));
        let absolute = Request::builder()
            .uri("http://attacker.example/revoke")
            .header("host", "127.0.0.1:9901")
            .body(())
            .unwrap();
        assert!(matches!(
            check(&absolute, &loopback, &none),
            Err(Refusal::Host(_))
        ));
        let h2 = Request::builder()
            .uri("http://127.0.0.1:9901/metrics")
            .body(())
            .unwrap();
        assert!(check(&h2, &loopback, &none).is_ok());
    }

    #[test]
    fn origins_and_fetch_metadata() {
        let none = AdminAccess::default();
        let c = conn("127.0.0.1:9901", "127.0.0.1:9901");
        let host = ("host", "127.0.0.1:9901");
        let json = ("content-type", "application/json");
        for (origin, ok) in [
            ("http://127.0.0.1:9901", true),
            ("HTTP://127.0.0.1:9901", true),
            ("https://127.0.0.1:9901", false),
            ("http://127.0.0.1:8080", false),
            ("http://localhost:9901", false),
            ("http://attacker.example", false),
            ("http://127.0.0.1:9901/x", false),
            ("null", false),
        ] {
            let r = request("POST", &[host, json, ("origin", origin)]);
            assert_eq!(check(&r, &c, &none).is_ok(), ok, "{origin}");
        }
        for (site, ok) in [
            ("same-origin", true),
            ("none", true),
            ("same-site", false),
            ("cross-site", false),
        ] {
            let r = request("POST", &[host, json, ("sec-fetch-site", site)]);
            assert_eq!(check(&r, &c, &none).is_ok(), ok, "{site}");
            let r = request("GET", &[host, ("sec-fetch-site", site)]);
            assert_eq!(check(&r, &c, &none).is_ok(), ok, "GET {site}");
        }
    }

    #[test]
    fn calls_that_change_something() {
        let c = conn("127.0.0.1:9901", "127.0.0.1:9901");
        let host = ("host", "127.0.0.1:9901");
        let none = AdminAccess::default();
        for (ct, ok) in [
            (Some("application/json"), true),
            (Some("Application/JSON; charset=utf-8"), true),
            (Some("text/plain"), false),
            (Some("application/x-www-form-urlencoded"), false),
            (Some("multipart/form-data; boundary=x"), false),
            (Some("application/jsonx"), false),
            (None, false),
        ] {
            let mut headers = vec![host];
            headers.extend(ct.map(|v| ("content-type", v)));
            for method in ["POST", "DELETE", "PUT", "OPTIONS", "PATCH"] {
                let r = check(&request(method, &headers), &c, &none);
                assert_eq!(r.is_ok(), ok, "{method} {ct:?}");
                if !ok {
                    assert_eq!(r.unwrap_err(), Refusal::ContentType);
                }
            }
            // Reading needs no content type.
            assert!(check(&request("GET", &headers), &c, &none).is_ok());
        }

        let token = "0123456789abcdef0123456789abcdef";
        let access = AdminAccess {
            names: Vec::new(),
            tokens: parse_tokens(&format!("ops {token}\n")).unwrap(),
        };
        let json = ("content-type", "application/json");
        let bearer = format!("Bearer {token}");
        let lower = format!("bearer {token}");
        let wrong = format!("Bearer {token}x");
        let basic = format!("Basic {token}");
        for (auth, expect) in [
            (None, Err(Refusal::TokenMissing)),
            (Some(wrong.as_str()), Err(Refusal::TokenInvalid)),
            (Some(basic.as_str()), Err(Refusal::TokenInvalid)),
            (Some("Bearer"), Err(Refusal::TokenInvalid)),
            (Some(bearer.as_str()), Ok(Some("ops".to_owned()))),
            (Some(lower.as_str()), Ok(Some("ops".to_owned()))),
        ] {
            let mut headers = vec![host, json];
            headers.extend(auth.map(|v| ("authorization", v)));
            let got = check(&request("POST", &headers), &c, &access).map(|c| c.token);
            assert_eq!(got, expect, "{auth:?}");
        }
        let twice = request(
            "POST",
            &[
                host,
                json,
                ("authorization", &bearer),
                ("authorization", &bearer),
            ],
        );
        assert_eq!(
            check(&twice, &c, &access).unwrap_err(),
            Refusal::TokenInvalid
        );
        // Reading needs no token.
        assert!(check(&request("GET", &[host]), &c, &access).is_ok());
    }
}
