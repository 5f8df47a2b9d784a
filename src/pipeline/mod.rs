//! One request, top to bottom, as named phases over one per-request [`Context`]:
//! canonicalize -> route -> identify -> assess -> decide -> forward, with record (the decision
//! log line and metrics) at whichever phase answers, and finish for every answer on its way
//! out. Each phase is a function in the file named for it; this file only calls them in order.
//!
//! A request for `[authz] path` is another enforcement point asking for a decision: it goes to
//! [`authz`], which runs the same route, identify, assess, decide and record phases on the
//! request it names, and answers instead of forwarding.
//!
//! Every phase reads the one configuration snapshot taken when the request arrived, so a
//! request never sees half of a reload.

pub mod access;
pub mod assess;
pub mod authz;
pub mod canonicalize;
pub mod context;
pub mod decide;
pub mod endpoints;
pub mod finish;
pub mod forward;
pub mod forwarded;
pub mod identify;
pub mod record;
pub mod route;

pub use context::Context;

use crate::body::Body;
use crate::config::Snapshot;
use crate::connection::Connection;
use crate::policy::facts;
use crate::state::Shared;
use http::header::HeaderValue;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use route::Routed;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// A request id unique across restarts and replicas: a random per-process prefix and a counter
/// (`{prefix}-{n:08x}`, written by hand: this runs on every request).
fn next_request_id(prefix: &str) -> HeaderValue {
    let n = REQUEST_SEQ.fetch_add(1, Ordering::Relaxed);
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(8) as usize;
    let mut id = bytes::BytesMut::with_capacity(prefix.len() + 1 + digits);
    id.extend_from_slice(prefix.as_bytes());
    id.extend_from_slice(b"-");
    for i in (0..digits).rev() {
        bytes::BufMut::put_u8(&mut id, crate::hex::LOWER[((n >> (i * 4)) & 0xf) as usize]);
    }
    HeaderValue::from_maybe_shared(id.freeze())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Answers one request. Never fails: every problem becomes a response and a log line.
///
/// Everything logged while the request is handled carries its request id (a tracing span),
/// the same id as in the decision log and the `X-Request-Id` header.
pub async fn handle(
    shared: &Arc<Shared>,
    conn: &Arc<Connection>,
    req: Request<Incoming>,
) -> Response<Body> {
    use tracing::Instrument;
    let request_id = next_request_id(&shared.instance_id);
    let span = tracing::info_span!(
        "request",
        request_id = request_id.to_str().unwrap_or(""),
        conn = conn.id
    );
    handle_in_span(shared, conn, req, request_id)
        .instrument(span)
        .await
}

async fn handle_in_span(
    shared: &Arc<Shared>,
    conn: &Arc<Connection>,
    req: Request<Incoming>,
    request_id: HeaderValue,
) -> Response<Body> {
    let snapshot = shared.snapshot.load_full();
    let head = req.method() == Method::HEAD;
    let response = answer(shared, conn, &snapshot, req, request_id).await;
    finish::finish(&snapshot, head, response)
}

/// The answer to one request, from the phase that gives it.
async fn answer(
    shared: &Arc<Shared>,
    conn: &Arc<Connection>,
    snapshot: &Snapshot,
    req: Request<Incoming>,
    request_id: HeaderValue,
) -> Response<Body> {
    if let Some(authz) = &snapshot.authz
        && let Some(below) = authz.claims(req.uri().path())
    {
        let below = below.map(str::to_owned);
        return authz::handle(shared, conn, snapshot, authz, below, req, &request_id).await;
    }
    let mut cx = Context::new(shared, conn, snapshot, &request_id, &req);
    let target = match canonicalize::canonicalize(&req, conn, snapshot) {
        Ok(target) => target,
        Err(refusal) => {
            cx.path = canonicalize::loggable_path(req.uri().path());
            return cx.refuse(refusal, None);
        }
    };
    cx.host.clone_from(&target.host);
    cx.path = target.path.clone().into_owned();
    let route = match route::route(&mut cx, &target) {
        Ok(Routed::Route(route)) => route,
        Ok(Routed::Endpoint(rest)) => {
            let host = target.host.clone();
            return match access::handle(&mut cx, &rest, &host, req).await {
                Ok(answer) => answer,
                Err(req) => endpoints::handle(&mut cx, &rest, &host, req).await,
            };
        }
        Err(answer) => return *answer,
    };
    let identified = match identify::identify(&cx, &route, &req, &target).await {
        Ok(identified) => identified,
        Err(answer) => return answer,
    };
    let (now, assessed) = assess::identified(&mut cx, identified.identity.as_ref());
    let request = facts::Request {
        route: Some(&route.name),
        host: &target.host,
        method: req.method().as_str(),
        path: &target.path,
        headers: facts::Headers::Map(req.headers()),
    };
    let facts = decide::facts(
        now,
        request,
        conn,
        identified.identity.as_deref(),
        &assessed,
    );
    let decision = match decide::decide(&mut cx, &route, &req, &target, &facts) {
        Ok(decision) => decision,
        Err(answer) => return *answer,
    };
    let target = target.detach();
    forward::forward(
        &mut cx, &route, req, target, identified, &assessed, &decision,
    )
    .await
}
