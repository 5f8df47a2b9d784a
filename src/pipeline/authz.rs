//! The decision endpoint (`[authz]`): Vigil's decision for another enforcement point (nginx
//! `auth_request`, Envoy ext_authz, Traefik forwardAuth) about the request it holds.
//!
//! The caller must be one of the configured enforcement points, known by the client
//! certificate of this connection; from anyone else nothing is read. The end client's
//! certificate it passes on is verified here as a handshake would verify it (the client CAs,
//! validity, the CRLs, operator revocations), and then stands for the end client in the same
//! phases a proxied request goes through: route, identify (sessions stay bound to that
//! certificate), assess, decide, record. An allow is answered 200 with the identity headers
//! and the assertion forwarding would add; every refusal is 403, or 401 for a sign-in or a
//! token, or 503 when something Vigil depends on is down.

use super::context::Context;
use super::forwarded::{self, Forwarded};
use super::{assess, canonicalize, decide, forward, identify};
use crate::body::{self, Body};
use crate::canonical::{X_REQUEST_ID, header_safe, host_without_port};
use crate::config::{Authz, Snapshot};
use crate::connection::{Activity, Connection};
use crate::error::Refusal;
use crate::policy::facts;
use crate::reason::{Code, Reason};
use crate::state::Shared;
use crate::tls::{PeerCert, verify_again};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio_util::sync::CancellationToken;

/// The label of callers that are no enforcement point, in `vigil_authz_decisions_total`.
const NONE: &str = "(none)";

/// Answers a request for the decision endpoint. `below` is its path after the endpoint's,
/// when it is the request to decide itself (Envoy).
pub async fn handle(
    shared: &Arc<Shared>,
    conn: &Arc<Connection>,
    snapshot: &Snapshot,
    authz: &Authz,
    below: Option<String>,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<Body> {
    let mut cx = Context::new(shared, conn, snapshot, request_id, &req);
    cx.html = false;
    cx.path = canonicalize::loggable_path(req.uri().path());
    if let Err(refusal) = canonicalize::screen(&req, conn, snapshot) {
        return cx.refuse(refusal, None);
    }
    let Some(point) = authz.point_for(&conn.peer) else {
        shared.metrics.authz_decision(&Arc::from(NONE), "deny");
        return cx.refuse_as(
            Code::AuthzNotEnforcementPoint,
            Refusal::Forbidden(
                "not an enforcement point: this client certificate may not ask for decisions"
                    .into(),
            ),
        );
    };
    cx.enforcement_point = Some(point.name.clone());
    if let Err(refusal) = canonicalize::unambiguous_headers(req.method(), req.headers()) {
        return cx.refuse(refusal, None);
    }
    let read = forwarded::read(
        req.headers(),
        req.method(),
        below.as_deref(),
        req.uri().query(),
        snapshot.max_target_bytes,
    );
    let asked = match read {
        Ok(asked) => asked,
        Err(why) => return refuse_forwarded(&cx, why),
    };
    let client = match end_client(shared, snapshot, &asked) {
        Ok(client) => client,
        Err(why) => return refuse_forwarded(&cx, why),
    };
    let started = cx.started;
    let mut cx = Context::new(shared, &client, snapshot, request_id, &req);
    cx.started = started;
    cx.html = false;
    cx.enforcement_point = Some(point.name.clone());
    cx.method = asked.method.clone();
    cx.host.clone_from(&asked.host);
    cx.path.clone_from(&asked.path);
    decide_for(&mut cx, &asked, &req).await
}

/// Refuses what an enforcement point passed on, under the reason's own code: unreadable input
/// is the client's fault, a certificate that does not verify is policy's.
fn refuse_forwarded(cx: &Context<'_>, why: Reason) -> Response<Body> {
    let refusal = match why.code {
        Code::AuthzCertificateRefused | Code::AuthzCertificateMissing => {
            Refusal::Forbidden(why.text)
        }
        _ => Refusal::Unreadable(why.text),
    };
    cx.refuse_as(why.code, refusal)
}

/// The end client as the enforcement point passed it on, once its certificate chain has been
/// verified against the CAs and CRLs in force and its device is not revoked: a connection
/// record of its own (never registered or counted as open), so every phase after this sees
/// the end client exactly as it would see a client connected to Vigil.
fn end_client(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    asked: &Forwarded,
) -> Result<Arc<Connection>, Reason> {
    let refused = |why: &str| {
        Reason::new(
            Code::AuthzCertificateRefused,
            format!("forwarded client certificate refused: {why}"),
        )
    };
    let now = rustls::pki_types::UnixTime::now();
    verify_again(snapshot.client_verifier.as_ref(), &asked.chain, now).map_err(refused)?;
    let leaf = asked.chain.first().map_or(&[][..], |c| c.as_ref());
    let peer = PeerCert::from_der(leaf).map_err(|e| {
        Reason::new(
            Code::AuthzCertificateInvalid,
            format!("forwarded client certificate cannot be read: {e}"),
        )
    })?;
    if shared.revocations.device(&peer.fingerprint_hex) {
        return Err(refused("device revoked"));
    }
    Ok(Arc::new(Connection {
        id: shared.next_connection_id(),
        remote: SocketAddr::new(asked.client, 0),
        peer_fingerprint: header_safe(&peer.fingerprint_hex),
        shown: crate::connection::Shown::new(asked.client, &peer),
        peer: Arc::new(peer),
        sni: None,
        tls_version: None,
        activity: Activity::new(),
        idle_timeout: snapshot.idle_timeout,
        closing: CancellationToken::new(),
        kill: CancellationToken::new(),
        chain: asked.chain.clone(),
        verified_generation: AtomicU64::new(snapshot.generation),
        assertion: std::sync::Mutex::new(None),
        opened_session: std::sync::Mutex::new(None),
        streams: std::sync::Mutex::new(Vec::new()),
        standing: Default::default(),
        registry: std::sync::Weak::new(),
        metrics: shared.metrics.clone(),
        framing: crate::framing::Findings::new(),
        h1_requests: AtomicU64::new(0),
        _permit: Box::new(()),
        counted: false,
    }))
}

/// Route, identify, assess and decide the forwarded request, as a proxied one would be; an
/// allow is answered with what forwarding would add upstream.
async fn decide_for(
    cx: &mut Context<'_>,
    asked: &Forwarded,
    req: &Request<Incoming>,
) -> Response<Body> {
    let target = canonicalize::Target {
        host: asked.host.clone(),
        path: Cow::Borrowed(asked.path.as_str()),
        query: asked.query.as_deref(),
    };
    let found = cx
        .snapshot
        .routes
        .find(host_without_port(&target.host), &target.path)
        .cloned();
    let Some(route) = found else {
        return cx.refuse(Refusal::NoRoute, None);
    };
    cx.route = Some(route.clone());
    let identified = match identify::identify(cx, &route, req, &target).await {
        Ok(identified) => identified,
        Err(answer) => return answer,
    };
    let (now, assessed) = assess::identified(cx, identified.identity.as_ref());
    let request = facts::Request {
        route: Some(&route.name),
        host: &target.host,
        method: asked.method.as_str(),
        path: &target.path,
        headers: facts::Headers::Map(req.headers()),
    };
    let facts = decide::facts(
        now,
        request,
        cx.conn,
        identified.identity.as_deref(),
        &assessed,
    );
    let decision = match decide::decide(cx, &route, req, &target, &facts) {
        Ok(decision) => decision,
        Err(answer) => return *answer,
    };
    allowed(cx, &route, identified, &assessed, &decision)
}

/// An allow: 200 with the headers forwarding would add upstream (the workload and device,
/// the person, the route's own identity headers, the signed assertion), and the session
/// cookies to set when its idle clock moved.
fn allowed(
    cx: &Context<'_>,
    route: &crate::routing::Route,
    identified: identify::Identified,
    assessed: &assess::Assessed,
    decision: &crate::policy::Decision,
) -> Response<Body> {
    let mut response = Response::new(body::empty());
    let headers = response.headers_mut();
    let conn = cx.conn;
    if let Some(id) = &conn.peer.spiffe_id {
        headers.insert(crate::forward::X_VIGIL_WORKLOAD.clone(), header_safe(id));
    }
    headers.insert(
        crate::forward::X_VIGIL_DEVICE.clone(),
        conn.peer_fingerprint.clone(),
    );
    // The policy's headers first: the route's own identity headers replace any of the same
    // name, as on a forwarded request.
    for (name, value) in forward::policy_headers(decision) {
        headers.insert(name, value);
    }
    let identity_headers = forward::identity_headers(
        cx.snapshot,
        route,
        conn,
        identified.identity.as_deref(),
        cx.risk.as_ref(),
        assessed.device.as_ref(),
    );
    for (name, value) in identity_headers {
        headers.insert(name, value);
    }
    headers.insert(X_REQUEST_ID.clone(), cx.request_id.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for cookie in identified.cookies {
        headers.append(header::SET_COOKIE, cookie);
    }
    cx.log(
        forward::passed_as(decision),
        &decision.reasons,
        StatusCode::OK,
    );
    response
}
