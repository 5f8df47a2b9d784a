//! The finish phase: what every answer gets on its way downstream, whoever wrote it. An
//! answer to `HEAD` carries no body, and `Strict-Transport-Security` is Vigil's.
//!
//! Only HTTP/1.1 drops the body of an answer to `HEAD` by itself (see [`body::headers_only`]),
//! so every answer Vigil writes (refusals, sign-in redirects, its own endpoints) leaves here
//! without its body, announcing the length a `GET` would get. An upstream's answer is left
//! as the upstream framed it: its client never reads a body for `HEAD`, and its
//! `Content-Length` is already the one a `GET` would get.

use crate::body::{self, Body};
use crate::config::Snapshot;
use http::Response;
use http::header;

/// Marks an answer that came from the upstream, as opposed to one Vigil wrote itself.
#[derive(Debug, Clone, Copy)]
pub struct Relayed;

/// `response` as it goes downstream, for a request whose method was `HEAD` when `head`.
pub fn finish(snapshot: &Snapshot, head: bool, mut response: Response<Body>) -> Response<Body> {
    let relayed = response.extensions_mut().remove::<Relayed>().is_some();
    if head && !relayed {
        response = body::headers_only(response);
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
