//! The canonicalize phase: one canonical request target, refusing anything ambiguous.

use crate::canonical::{host_without_port, normalize_host, normalize_path};
use crate::config::Snapshot;
use crate::connection::Connection;
use crate::error::Refusal;
use http::header::{self, HeaderValue};
use http::{Method, Request};
use hyper::body::Incoming;
use std::borrow::Cow;
use std::sync::atomic::Ordering;

/// The request's target as every later phase sees it: the one canonical host and path.
#[derive(Debug)]
pub struct Target<'a> {
    /// Lower-case, no trailing dot, no default port.
    pub host: String,
    /// Normalised path: the one policy sees and the one forwarded.
    pub path: Cow<'a, str>,
    pub query: Option<&'a str>,
}

/// A [`Target`] that no longer borrows its request, for the phase that hands the request on.
#[derive(Debug)]
pub struct Detached {
    pub host: String,
    pub path: String,
    pub query: Option<String>,
}

impl Target<'_> {
    pub fn detach(self) -> Detached {
        Detached {
            host: self.host,
            path: self.path.into_owned(),
            query: self.query.map(str::to_owned),
        }
    }
}

/// Builds the canonical request, refusing anything ambiguous.
pub fn canonicalize<'a>(
    req: &'a Request<Incoming>,
    conn: &Connection,
    snapshot: &Snapshot,
) -> Result<Target<'a>, Refusal> {
    screen(req, conn, snapshot)?;
    if req.method() == Method::CONNECT {
        return Err(Refusal::MethodNotAllowed);
    }
    let host_header = unambiguous_headers(req.method(), req.headers())?;
    let from_header = match host_header {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Refusal::BadRequest("invalid Host header"))
                .and_then(|h| normalize_host(h).map_err(|e| Refusal::BadRequest(e.reason())))?,
        ),
        None => None,
    };
    let from_target = match req.uri().authority() {
        Some(a) => Some(normalize_host(a.as_str()).map_err(|e| Refusal::BadRequest(e.reason()))?),
        None => None,
    };
    let host = match (from_header, from_target) {
        (Some(h), Some(t)) if h != t => {
            return Err(Refusal::BadRequest(
                "Host header disagrees with the request target",
            ));
        }
        (Some(h), _) => h,
        (None, Some(t)) => t,
        (None, None) => return Err(Refusal::BadRequest("missing Host")),
    };
    if let Some(sni) = &conn.sni
        && !host_without_port(&host).eq_ignore_ascii_case(sni)
    {
        return Err(Refusal::Misdirected);
    }
    let path = normalize_path(req.uri().path()).map_err(|e| Refusal::BadRequest(e.reason()))?;
    let query = req.uri().query();
    if let Some(q) = query
        && q.bytes().any(|b| b == b'#')
    {
        return Err(Refusal::BadRequest("fragment in request target"));
    }
    Ok(Target { host, path, query })
}

/// The part of [`canonicalize`] every request goes through, the decision endpoint's included:
/// the HTTP/1 framing seen on the wire for it, and the length of its target.
pub fn screen(
    req: &Request<Incoming>,
    conn: &Connection,
    snapshot: &Snapshot,
) -> Result<(), Refusal> {
    if req.version() <= http::Version::HTTP_11 {
        let index = conn.h1_requests.fetch_add(1, Ordering::Relaxed);
        if let Some(why) = conn.framing.refusal(index) {
            return Err(Refusal::BadRequest(why));
        }
    }
    // Before any other work on the target: its length bounds what every later stage spends.
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if let Some(limit) = snapshot.max_target_bytes
        && target > limit
    {
        conn.metrics.limit("target_size");
        return Err(Refusal::UriTooLong(format!(
            "request target of {target} bytes is over the limit of {limit}"
        )));
    }
    Ok(())
}

/// A refused path for the decision log: at most 1 KiB of it, so a long target cannot make long
/// log lines.
pub fn loggable_path(path: &str) -> String {
    crate::decision_log::bounded(path, 1024)
}

/// Refuses headers that would let two readers of the request disagree: a second Host or
/// Authorization, conflicting body framing, a WebSocket handshake that is not one, control
/// characters. Returns the one Host header, if any.
pub fn unambiguous_headers<'r>(
    method: &Method,
    headers: &'r http::HeaderMap,
) -> Result<Option<&'r HeaderValue>, Refusal> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::BadRequest("duplicate Host header"));
    }
    // One credential per request: with two, Vigil would verify one and an upstream might
    // read the other.
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(Refusal::BadRequest("duplicate Authorization header"));
    }
    if let Some(why) = crate::canonical::websocket_refusal(method, headers) {
        return Err(Refusal::BadRequest(why));
    }
    if headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err(Refusal::BadRequest(
            "both Transfer-Encoding and Content-Length",
        ));
    }
    if headers.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return Err(Refusal::BadRequest("duplicate Content-Length header"));
    }
    for value in headers.values() {
        if value
            .as_bytes()
            .iter()
            .any(|&b| matches!(b, 0 | b'\r' | b'\n'))
        {
            return Err(Refusal::BadRequest("control character in a header value"));
        }
    }
    Ok(host_header)
}
