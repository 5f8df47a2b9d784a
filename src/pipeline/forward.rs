//! The forward phase: what an allowed request takes upstream (its identity headers and signed
//! assertion, rebuilt; its body, bounded in size and time) and how the upstream's answer or
//! failure comes back.

use super::assess::Assessed;
use super::canonicalize::Detached;
use super::context::Context;
use super::finish::Relayed;
use super::identify::Identified;
use crate::body::{self, Body};
use crate::canonical::{X_REQUEST_ID, header_safe};
use crate::config::Snapshot;
use crate::connection::Connection;
use crate::error::Refusal;
use crate::forward::assertion::Signer;
use crate::forward::{self, ForwardError, Outbound};
use crate::identity::{self, Identity};
use crate::metrics::{RouteLabel, UpstreamErrorLabels};
use crate::policy::facts::Headers;
use crate::policy::{Decision, KeptHeaders, Outcome};
use crate::posture;
use crate::reason::{Code, Reason};
use crate::routing::Route;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;

/// Forwards a request `decision` let through, and answers with the upstream's response or the
/// refusal its failure maps to.
pub async fn forward(
    cx: &mut Context<'_>,
    route: &Route,
    req: Request<Incoming>,
    target: Detached,
    identified: Identified,
    assessed: &Assessed,
    decision: &Decision,
) -> Response<Body> {
    let snapshot = cx.snapshot;
    // After the decision: an unauthorised client learns nothing about the route's limits.
    let limit = route.max_body_bytes.or(snapshot.max_body_bytes);
    if let (Some(limit), Some(len)) = (limit, content_length(&req))
        && len > limit
    {
        cx.shared.metrics.limit("body_size");
        return cx.refuse(Refusal::PayloadTooLarge, Some(decision));
    }
    // The policy's headers first: a route's own identity headers replace any of the same name.
    let mut identity = policy_headers(decision);
    identity.extend(identity_headers(
        snapshot,
        route,
        cx.conn,
        identified.identity.as_deref(),
        cx.risk.as_ref(),
        assessed.device.as_ref(),
    ));
    let kept_headers = match route.policy.header_names() {
        KeptHeaders::Named(names) if names.is_empty() => Vec::new(),
        KeptHeaders::Named(names) => Headers::Map(req.headers()).keep(&names),
        KeptHeaders::All => Headers::Map(req.headers()).all(),
    };
    let (parts, incoming) = req.into_parts();
    let (incoming, read_deadline) = body::with_read_deadline(incoming, snapshot.body_read_timeout);
    let req = Request::from_parts(parts, incoming);
    let bearer = identified.bearer;
    let outbound = Outbound {
        host: &target.host,
        path: &target.path,
        query: target.query.as_deref(),
        request_id: cx.request_id,
        max_body_bytes: limit,
        strip: &route.strip,
        identity,
        upgrades: &route.upgrades,
        session: identified.session,
        authorization: bearer.as_ref().map(|(_, token)| token.clone()),
        bearer: bearer.map(|(identity, _)| identity),
        kept_headers,
    };
    cx.forwarded = true;
    let result = forward::forward(&route.upstream, cx.conn, req, outbound).await;
    read_deadline.disarm();
    let result = match result {
        // Whatever the upstream side reports (an HTTP/2 upstream sees a reset stream), the
        // cause was the client's body.
        Err(_) if read_deadline.fired() => {
            Err(ForwardError::BodyTimeout(snapshot.body_read_timeout))
        }
        other => other,
    };
    match result {
        Ok(response) => answered(cx, response, identified.cookies, decision),
        Err(err) => failed(cx, route, &err, decision),
    }
}

/// The upstream's answer, with the request id and the session cookies to set, marked as
/// relayed for the finish phase.
fn answered(
    cx: &mut Context<'_>,
    mut response: Response<Body>,
    cookies: Vec<HeaderValue>,
    decision: &Decision,
) -> Response<Body> {
    let removed = response
        .extensions_mut()
        .remove::<forward::UpgradeRemoved>();
    response.extensions_mut().insert(Relayed);
    cx.endpoint = response
        .extensions()
        .get::<forward::Served>()
        .map(|served| served.0.clone());
    let headers = response.headers_mut();
    headers.insert(X_REQUEST_ID.clone(), cx.request_id.clone());
    for cookie in cookies {
        headers.append(header::SET_COOKIE, cookie);
    }
    let kind = passed_as(decision);
    match removed {
        Some(note) => {
            let mut reasons = decision.reasons.clone();
            reasons.push(Reason::new(Code::UpgradeRemoved, note.0));
            cx.log(kind, &reasons, response.status());
        }
        None => cx.log(kind, &decision.reasons, response.status()),
    }
    response
}

/// A forwarding failure, as the client sees it and as metrics count it.
fn failed(
    cx: &Context<'_>,
    route: &Route,
    err: &ForwardError,
    decision: &Decision,
) -> Response<Body> {
    let (refusal, label, code) = match err {
        ForwardError::Connect(_) => (Refusal::BadGateway, "connect", Code::UpstreamUnreachable),
        ForwardError::Upstream(_) => (Refusal::BadGateway, "exchange", Code::UpstreamFailed),
        ForwardError::Timeout(_) => (Refusal::GatewayTimeout, "timeout", Code::UpstreamTimeout),
        ForwardError::Overloaded => (
            Refusal::Unavailable("upstream overloaded".into()),
            "shed",
            Code::UpstreamOverloaded,
        ),
        ForwardError::BodyTooLarge(_) => (
            Refusal::PayloadTooLarge,
            "body_too_large",
            Code::BodyTooLarge,
        ),
        ForwardError::BodyTimeout(_) => (
            Refusal::RequestTimeout,
            "body_read_timeout",
            Code::BodyTimeout,
        ),
    };
    let metrics = &cx.shared.metrics;
    match label {
        "body_too_large" => metrics.limit("body_size"),
        "body_read_timeout" => metrics.limit("body_read_timeout"),
        kind => {
            metrics
                .upstream_errors
                .get_or_create(&UpstreamErrorLabels {
                    route: RouteLabel(route.label.clone()),
                    kind,
                })
                .inc();
        }
    }
    tracing::warn!(request_id = cx.request_id.to_str().unwrap_or(""), route = %route.name, error = %err, "forwarding failed");
    let mut reasons = decision.reasons.clone();
    reasons.push(Reason::new(code, err.to_string()));
    let response = refusal.response(cx.request_id, cx.html);
    cx.write(
        passed_as(decision),
        &reasons,
        response.status(),
        Some(refusal.fault()),
    );
    response
}

/// How the decision log names a decision that let the request through.
pub(super) fn passed_as(decision: &Decision) -> &'static str {
    if decision.outcome == Outcome::Audit {
        "audit"
    } else {
        "allow"
    }
}

/// The identity headers for the upstream: Vigil's own, the route's legacy ones, and the
/// signed assertion.
/// The headers a Rego policy's answer adds upstream (checked when the policy answered).
pub(super) fn policy_headers(decision: &Decision) -> Vec<(HeaderName, HeaderValue)> {
    decision
        .headers
        .iter()
        .filter_map(|(name, value)| {
            Some((
                HeaderName::from_bytes(name.as_bytes()).ok()?,
                HeaderValue::from_str(value).ok()?,
            ))
        })
        .collect()
}

pub(super) fn identity_headers(
    snapshot: &Snapshot,
    route: &Route,
    conn: &Connection,
    identity: Option<&Identity>,
    risk: Option<&posture::Assessment>,
    device: Option<&posture::inventory::Device>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    if let Some(who) = identity {
        out.push((X_VIGIL_USER.clone(), header_safe(&who.subject)));
        if let Some(email) = &who.email {
            out.push((X_VIGIL_EMAIL.clone(), header_safe(email)));
        }
        if !who.groups.is_empty() {
            out.push((X_VIGIL_GROUPS.clone(), header_safe(&who.groups.join(","))));
        }
    }
    for (name, claim) in &route.headers {
        let value = match claim.as_str() {
            "device" => Some(conn.peer.fingerprint_hex.clone()),
            "workload" => conn.peer.spiffe_id.clone(),
            other => identity
                .map(|who| who.claim(other).join(","))
                .filter(|v| !v.is_empty()),
        };
        if let Some(v) = value {
            out.push((name.clone(), header_safe(&v)));
        }
    }
    if let Some(signer) = &snapshot.signer
        && let Some(token) = assertion(signer, route, conn, identity, risk, device)
    {
        out.push((X_VIGIL_ASSERTION.clone(), token));
    }
    out
}

/// The signed assertion for this request. Signing costs more than the rest of a request, so
/// a connection reuses its last assertion while everything it says is unchanged and it has
/// at least three quarters of its lifetime left.
fn assertion(
    signer: &Signer,
    route: &Route,
    conn: &Connection,
    identity: Option<&Identity>,
    risk: Option<&posture::Assessment>,
    device: Option<&posture::inventory::Device>,
) -> Option<HeaderValue> {
    use std::hash::{Hash, Hasher};
    let now = identity::now();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    route.name.hash(&mut hasher);
    if let Some(who) = identity {
        who.subject.hash(&mut hasher);
        who.verified_at.hash(&mut hasher);
        who.mfa.hash(&mut hasher);
        if let identity::Source::Session { sid } = &who.source {
            sid.hash(&mut hasher);
        }
    }
    risk.map(|r| r.level).hash(&mut hasher);
    device.map(|d| d.compliant).hash(&mut hasher);
    let key = hasher.finish();
    let reuse_for = (signer.lifetime.as_secs() as i64 / 4).max(1);
    if let Ok(cached) = conn.assertion.lock()
        && let Some(c) = cached.as_ref()
        && c.key == key
        && now - c.issued_at < reuse_for
    {
        return Some(c.value.clone());
    }

    let mut claims = serde_json::Map::new();
    let subject = identity
        .map(|w| w.subject.clone())
        .or_else(|| conn.peer.spiffe_id.clone())
        .unwrap_or_else(|| conn.peer.fingerprint_hex.clone());
    claims.insert("sub".into(), subject.into());
    claims.insert("aud".into(), route.name.clone().into());
    claims.insert("login".into(), route.policy.login.as_str().into());
    claims.insert(
        "cnf".into(),
        serde_json::json!({ "x5t#S256": URL_SAFE_NO_PAD.encode(conn.peer.fingerprint) }),
    );
    claims.insert("device".into(), conn.peer.fingerprint_hex.clone().into());
    if let Some(d) = device {
        claims.insert("device_compliant".into(), d.compliant.into());
    }
    if let Some(r) = risk {
        claims.insert("risk".into(), r.level.as_str().into());
    }
    if let Some(id) = &conn.peer.spiffe_id {
        claims.insert("spiffe".into(), id.clone().into());
    }
    if let Some(who) = identity {
        if let Some(email) = &who.email {
            claims.insert("email".into(), email.clone().into());
        }
        claims.insert("groups".into(), who.groups.clone().into());
        claims.insert("amr".into(), who.amr.clone().into());
        claims.insert("mfa".into(), who.mfa.into());
        claims.insert("verified_at".into(), who.verified_at.into());
    }
    let token = match signer.sign(claims, now) {
        Ok(token) => HeaderValue::from_str(&token).ok()?,
        Err(e) => {
            tracing::error!(error = %e, "cannot sign the assertion");
            return None;
        }
    };
    if let Ok(mut cached) = conn.assertion.lock() {
        *cached = Some(crate::connection::CachedAssertion {
            key,
            issued_at: now,
            value: token.clone(),
        });
    }
    Some(token)
}

static X_VIGIL_USER: HeaderName = HeaderName::from_static("x-vigil-user");
static X_VIGIL_EMAIL: HeaderName = HeaderName::from_static("x-vigil-email");
static X_VIGIL_GROUPS: HeaderName = HeaderName::from_static("x-vigil-groups");
static X_VIGIL_ASSERTION: HeaderName = HeaderName::from_static("x-vigil-assertion");

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
