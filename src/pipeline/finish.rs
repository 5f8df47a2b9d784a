//! The finish phase: what every answer gets on its way downstream, whoever wrote it. An
//! answer to `HEAD` carries no body, and `Strict-Transport-Security` is Vigil's.
//!
//! Only HTTP/1.1 drops the body of an answer to `HEAD` by itself; HTTP/2 sends whatever body
//! it is given, and a client resets a `HEAD` stream that carries data (PROTOCOL_ERROR). So
//! every answer Vigil writes (refusals, sign-in redirects, its own endpoints) leaves here
//! without its body, announcing the length a `GET` would get. An upstream's answer is left
//! as the upstream framed it: its client never reads a body for `HEAD`, and its
//! `Content-Length` is already the one a `GET` would get.

use crate::body::{self, Body};
use crate::config::Snapshot;
use http::Response;
use http::header::{self, HeaderValue};
use http_body::Body as _;

/// Marks an answer that came from the upstream, as opposed to one Vigil wrote itself.
#[derive(Debug, Clone, Copy)]
pub struct Relayed;

/// `response` as it goes downstream, for a request whose method was `HEAD` when `head`.
pub fn finish(snapshot: &Snapshot, head: bool, mut response: Response<Body>) -> Response<Body> {
    let relayed = response.extensions_mut().remove::<Relayed>().is_some();
    if head && !relayed {
        response = without_body(response);
    }
    // Replaces an upstream's own: it does not know which hosts Vigil serves over TLS. With
    // HSTS turned off, an upstream's header passes as it was.
    if let Some(hsts) = &snapshot.hsts {
        response
            .headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    response
}

/// The headers of `response` with the length of its body, and no body.
fn without_body(response: Response<Body>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    if let Some(len) = body.size_hint().exact()
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Response::from_parts(parts, body::empty())
}
