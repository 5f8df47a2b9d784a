//! One request, top to bottom: canonicalise -> route -> decide -> log -> forward.
//!
//! Each stage reads the one configuration snapshot taken when the request arrived, so a
//! request never sees half of a reload.

use crate::body::{self, Body};
use crate::canonical::header_safe;
use crate::canonical::{host_without_port, normalize_host, normalize_path};
use crate::config::Snapshot;
use crate::connection::Connection;
use crate::decision_log::{self, Entry};
use crate::error::Refusal;
use crate::forward::assertion::Signer;
use crate::forward::{self, ForwardError, Outbound};
use crate::identity::session::{self, Rejected};
use crate::identity::verify::Verdict;
use crate::identity::{self, Identity};
use crate::metrics::{RequestLabels, RouteLabel, RouteOnly, UpstreamErrorLabels};
use crate::policy::{self, Decision, RequestFacts};
use crate::posture::{self, Action};
use crate::routing::{Login, Route};
use crate::state::Shared;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The request as every later stage sees it.
#[derive(Debug)]
pub struct Canonical<'a> {
    /// Lower-case, no trailing dot, no default port.
    pub host: String,
    /// Normalised path: the one policy sees and the one forwarded.
    pub path: Cow<'a, str>,
    pub query: Option<&'a str>,
}

/// Builds the canonical request, refusing anything ambiguous.
pub fn canonicalize<'a>(
    req: &'a Request<Incoming>,
    conn: &Connection,
    snapshot: &Snapshot,
) -> Result<Canonical<'a>, Refusal> {
    let headers = req.headers();
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
    if req.method() == Method::CONNECT {
        return Err(Refusal::MethodNotAllowed);
    }
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
    if let Some(why) = crate::canonical::websocket_refusal(req.method(), headers) {
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
    Ok(Canonical { host, path, query })
}

/// A refused path for the decision log: at most 1 KiB of it, so a long target cannot make long
/// log lines.
fn loggable_path(path: &str) -> String {
    const MAX: usize = 1024;
    if path.len() <= MAX {
        return path.to_owned();
    }
    let mut end = MAX;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &path[..end])
}

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// A request id unique across restarts and replicas: a random per-process prefix and a counter.
fn next_request_id(prefix: &str) -> HeaderValue {
    let n = REQUEST_SEQ.fetch_add(1, Ordering::Relaxed);
    HeaderValue::try_from(format!("{prefix}-{n:08x}"))
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
    let started = Instant::now();
    let snapshot = shared.snapshot.load_full();
    let mut record = Record {
        shared,
        conn,
        snapshot: &snapshot,
        request_id: &request_id,
        method: req.method().clone(),
        host: String::new(),
        path: String::new(),
        route: None,
        identity: None,
        risk: None,
        html: wants_html(&req),
        started,
    };

    let canonical = match canonicalize(&req, conn, &snapshot) {
        Ok(c) => c,
        Err(refusal) => {
            record.path = loggable_path(req.uri().path());
            return record.refuse(refusal, None);
        }
    };
    record.host.clone_from(&canonical.host);
    record.path = canonical.path.clone().into_owned();

    let hostname = host_without_port(&canonical.host);
    if let Some(rest) = canonical.path.strip_prefix("/.vigil/") {
        // Vigil's own endpoints exist on every host that has a route.
        if !snapshot.routes.serves_host(hostname) {
            return record.refuse(Refusal::NoRoute, None);
        }
        record.route = snapshot.routes.find(hostname, &canonical.path).cloned();
        let rest = rest.to_owned();
        let host = canonical.host.clone();
        return crate::endpoints::handle(&mut record, &rest, &host, req).await;
    }
    let Some(route) = snapshot.routes.find(hostname, &canonical.path).cloned() else {
        return record.refuse(Refusal::NoRoute, None);
    };
    record.route = Some(route.clone());

    // Who is asking, beyond the certificate.
    let mut set_cookies = Vec::new();
    let mut session = None;
    let mut bearer = None;
    let identity = match route.login {
        Login::None => None,
        Login::Oidc => match verified_session(shared, &snapshot, conn, req.headers()).await {
            Ok((open, identity, cookies)) => {
                set_cookies = cookies;
                session = Some(open);
                Some(identity)
            }
            Err(why) => return record.login_required(&why, &req, &canonical),
        },
        Login::Bearer => match identify_bearer(&snapshot, &route, req.headers()).await {
            Ok((identity, _))
                if shared
                    .revocations
                    .subject(&identity.subject, identity.verified_at) =>
            {
                return record.refuse_with(
                    Refusal::Unauthorized("a valid bearer token is required".into()),
                    "token issued before its subject was revoked".into(),
                );
            }
            Ok((identity, token)) => {
                bearer = Some((Arc::new(identity.clone()), token));
                Some(identity)
            }
            Err(BearerRefusal::Unavailable) => {
                return record.refuse(
                    Refusal::Unavailable("identity provider not available".into()),
                    None,
                );
            }
            Err(BearerRefusal::Invalid(why)) => {
                // The detail goes to the decision log only; the client learns the category.
                return record.refuse_with(
                    Refusal::Unauthorized("a valid bearer token is required".into()),
                    why,
                );
            }
        },
    };
    record.identity = identity.clone();

    let device = snapshot
        .devices
        .as_ref()
        .and_then(|inventory| inventory.lookup(&conn.peer));
    let facts = RequestFacts {
        method: req.method(),
        path: &canonical.path,
        client_ip: conn.remote.ip(),
        peer: &conn.peer,
        identity: identity.as_ref(),
        device: device.as_ref(),
    };
    let mut decision = policy::evaluate(&route.policy, &facts);
    let who = identity
        .as_ref()
        .map_or(conn.peer.fingerprint_hex.as_str(), |i| i.subject.as_str());
    let now = identity::now();
    if let Some(assessment) = assess_risk(
        shared,
        &snapshot,
        conn,
        identity.as_ref(),
        device.as_ref(),
        true,
    ) {
        if decision.allow {
            match route.risk.for_level(assessment.level) {
                Action::Allow => {}
                Action::ReadOnly => {
                    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
                        decision.allow = false;
                        decision.reasons.push(format!(
                            "{} risk: read-only, {} refused",
                            assessment.level.as_str(),
                            req.method()
                        ));
                    }
                }
                Action::StepUp => {
                    let fresh = identity
                        .as_ref()
                        .and_then(|i| i.auth_time)
                        .is_some_and(|t| {
                            let max_age = snapshot
                                .risk
                                .as_ref()
                                .map_or(300, |r| r.step_up_max_age.as_secs() as i64);
                            now - t <= max_age
                        });
                    let mfa = identity.as_ref().is_some_and(|i| i.mfa);
                    if fresh && !mfa {
                        // Just authenticated, and still without a second factor: sending the
                        // person back would loop.
                        decision.allow = false;
                        decision.reasons.push(format!(
                            "{} risk: step-up needs multi-factor, the sign-in had none",
                            assessment.level.as_str()
                        ));
                    } else if !(fresh && mfa) {
                        record.risk = Some(assessment);
                        return record.step_up(&req, &canonical, route.login);
                    }
                }
                Action::Deny => {
                    decision.allow = false;
                    decision
                        .reasons
                        .push(format!("{} risk: denied", assessment.level.as_str()));
                }
            }
        }
        record.risk = Some(assessment);
    }
    let audit_pass = !decision.allow && snapshot.audit;
    if !decision.allow && !audit_pass {
        shared.posture.record_denial(who, now);
        let public = format!("access denied by route '{}'", route.name);
        return record.refuse(Refusal::Forbidden(public), Some(&decision));
    }

    // After the decision: an unauthorised client learns nothing about the route's limits.
    let limit = route.max_body_bytes.or(snapshot.max_body_bytes);
    if let (Some(limit), Some(len)) = (limit, content_length(&req))
        && len > limit
    {
        shared.metrics.limit("body_size");
        return record.refuse(Refusal::PayloadTooLarge, Some(&decision));
    }

    let identity_headers = identity_headers(
        &snapshot,
        &route,
        conn,
        identity.as_ref(),
        record.risk.as_ref(),
        device.as_ref(),
    );
    let path = canonical.path.into_owned();
    let host = canonical.host;
    let query = canonical.query.map(str::to_owned);
    let (parts, incoming) = req.into_parts();
    let (incoming, read_deadline) = body::with_read_deadline(incoming, snapshot.body_read_timeout);
    let req = Request::from_parts(parts, incoming);
    let outbound = Outbound {
        host: &host,
        path: &path,
        query: query.as_deref(),
        request_id: &request_id,
        max_body_bytes: limit,
        strip: &route.strip,
        identity: identity_headers,
        upgrades: &route.upgrades,
        session,
        authorization: bearer.as_ref().map(|(_, token)| token.clone()),
        bearer: bearer.map(|(identity, _)| identity),
    };
    let result = forward::forward(&route.upstream, conn, req, outbound).await;
    read_deadline.disarm();
    let result = match result {
        // Whatever the upstream side reports (an HTTP/2 upstream sees a reset stream), the
        // cause was the client's body.
        Err(_) if read_deadline.fired() => {
            Err(ForwardError::BodyTimeout(snapshot.body_read_timeout))
        }
        other => other,
    };
    let kind = if audit_pass { "audit" } else { "allow" };
    match result {
        Ok(mut response) => {
            let removed = response
                .extensions_mut()
                .remove::<forward::UpgradeRemoved>();
            let headers = response.headers_mut();
            headers.insert(crate::canonical::X_REQUEST_ID.clone(), request_id.clone());
            for cookie in set_cookies {
                headers.append(header::SET_COOKIE, cookie);
            }
            match removed {
                Some(note) => {
                    let mut reasons = decision.reasons.clone();
                    reasons.push(note.0);
                    record.log(kind, &reasons, response.status());
                }
                None => record.log(kind, &decision.reasons, response.status()),
            }
            response
        }
        Err(err) => {
            let (refusal, label) = match &err {
                ForwardError::Connect(_) => (Refusal::BadGateway, "connect"),
                ForwardError::Upstream(_) => (Refusal::BadGateway, "exchange"),
                ForwardError::Timeout(_) => (Refusal::GatewayTimeout, "timeout"),
                ForwardError::BodyTooLarge(_) => (Refusal::PayloadTooLarge, "body_too_large"),
                ForwardError::BodyTimeout(_) => (Refusal::RequestTimeout, "body_read_timeout"),
            };
            if label == "body_too_large" {
                shared.metrics.limit("body_size");
            } else if label == "body_read_timeout" {
                shared.metrics.limit("body_read_timeout");
            } else {
                shared
                    .metrics
                    .upstream_errors
                    .get_or_create(&UpstreamErrorLabels {
                        route: RouteLabel(route.label.clone()),
                        kind: label,
                    })
                    .inc();
            }
            tracing::warn!(request_id = ?request_id, route = %route.name, error = %err, "forwarding failed");
            let mut reasons = decision.reasons.clone();
            reasons.push(err.to_string());
            let response = refusal.response(&request_id, record.html);
            record.log(kind, &reasons, response.status());
            response
        }
    }
}

/// The risk of a request from `conn` by `identity`, when `[risk]` is configured. `remember`
/// notes the device as seen for the user (a real request does; a `whoami` look does not).
pub fn assess_risk(
    shared: &Shared,
    snapshot: &Snapshot,
    conn: &Connection,
    identity: Option<&Identity>,
    device: Option<&posture::inventory::Device>,
    remember: bool,
) -> Option<posture::Assessment> {
    let settings = snapshot.risk.as_ref()?;
    let country = settings
        .geoip
        .as_ref()
        .and_then(|g| g.country(conn.remote.ip()));
    let who = identity.map_or(conn.peer.fingerprint_hex.as_str(), |i| i.subject.as_str());
    let now = identity::now();
    Some(posture::assess(
        settings,
        &posture::RiskFacts {
            device,
            inventory: snapshot.devices.is_some(),
            client_ip: conn.remote.ip(),
            country: country.as_deref(),
            idp_risk: identity.and_then(|i| i.risk.as_deref()),
            recent_denials: shared
                .posture
                .recent_denials(who, now, settings.denial_window),
            first_seen_device: identity.is_some_and(|i| {
                shared
                    .posture
                    .first_seen(&i.subject, &conn.peer.fingerprint_hex, remember)
            }),
        },
    ))
}

/// A browser navigation that can follow a redirect to the login page.
fn wants_html(req: &Request<Incoming>) -> bool {
    (req.method() == Method::GET || req.method() == Method::HEAD)
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"))
}

/// The session of this request, checked against the connection's device certificate; with the
/// cookies to set when its idle clock moved.
pub fn identify_session(
    snapshot: &Snapshot,
    conn: &Connection,
    headers: &http::HeaderMap,
) -> Result<(Identity, Vec<HeaderValue>), Rejected> {
    read_session(snapshot, conn, headers).map(|(_, identity, cookies)| (identity, cookies))
}

/// The open session of a request, with its identity and any cookie refresh.
fn read_session(
    snapshot: &Snapshot,
    conn: &Connection,
    headers: &http::HeaderMap,
) -> Result<(session::Session, Identity, Vec<HeaderValue>), Rejected> {
    let (Some(sessions), Some(provider)) = (&snapshot.sessions, &snapshot.oidc) else {
        return Err(Rejected::Absent);
    };
    let mut session = session::read(headers, &sessions.ring)?;
    let now = identity::now();
    session.check(
        &conn.peer.fingerprint_hex,
        now,
        sessions.idle.as_secs() as i64,
    )?;
    let identity = Identity::from_session(&session, &provider.settings.mfa_amr);
    let mut cookies = Vec::new();
    if now - session.last_seen >= 60 {
        session.last_seen = now;
        let present = session::chunks_present(headers);
        match session::write(&session, &sessions.ring, now, present) {
            Ok(c) => cookies = c,
            Err(e) => tracing::warn!(error = %e, "cannot update the session cookie"),
        }
    }
    Ok((session, identity, cookies))
}

/// [`identify_session`], then re-verified with the provider when the last verification is
/// older than `[verify] interval`.
async fn verified_session(
    shared: &Shared,
    snapshot: &Snapshot,
    conn: &Connection,
    headers: &http::HeaderMap,
) -> Result<(session::Session, Identity, Vec<HeaderValue>), Rejected> {
    let (session, identity, cookies) = read_session(snapshot, conn, headers)?;
    if let Some(why) = shared.revocations.session(&session) {
        return Err(Rejected::Revoked(why));
    }
    let (Some(sessions), Some(provider)) = (&snapshot.sessions, &snapshot.oidc) else {
        return Err(Rejected::Absent);
    };
    match shared
        .reverifier
        .judge(provider, &session, snapshot.verify)
        .await
    {
        Verdict::Current | Verdict::Stale { .. } => Ok((session, identity, cookies)),
        Verdict::Refreshed(mut fresh) => {
            let now = identity::now();
            fresh.last_seen = now;
            let present = session::chunks_present(headers);
            let cookies = session::write(&fresh, &sessions.ring, now, present).unwrap_or_default();
            let identity = Identity::from_session(&fresh, &provider.settings.mfa_amr);
            Ok((*fresh, identity, cookies))
        }
        Verdict::Refused(why) => Err(why),
    }
}

/// Why a bearer token was not accepted.
enum BearerRefusal {
    /// The provider's keys are not known yet: fail closed, but as unavailable, not as bad.
    Unavailable,
    Invalid(String),
}

/// The identity of a request's bearer token, with the `Authorization` value to send upstream:
/// rebuilt from the token that was verified, never the client's own bytes.
async fn identify_bearer(
    snapshot: &Snapshot,
    route: &Route,
    headers: &http::HeaderMap,
) -> Result<(Identity, HeaderValue), BearerRefusal> {
    let provider = snapshot.oidc.as_ref().ok_or(BearerRefusal::Unavailable)?;
    if !provider.is_ready() {
        return Err(BearerRefusal::Unavailable);
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or_else(|| BearerRefusal::Invalid("no bearer token".to_owned()))?;
    let audience = route.bearer_audience.as_deref().unwrap_or_default();
    let claims = provider
        .verify_bearer(token, audience, &route.bearer_scopes)
        .await
        .map_err(BearerRefusal::Invalid)?;
    let authorization = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| BearerRefusal::Invalid("token is not a valid header value".to_owned()))?;
    Ok((
        Identity::from_bearer(claims, &provider.settings.groups_claim),
        authorization,
    ))
}

/// The identity headers for the upstream: Vigil's own, the route's legacy ones, and the
/// signed assertion.
fn identity_headers(
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
    claims.insert("login".into(), route.login.as_str().into());
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

fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// What the decision log and metrics need to know about a request as it goes.
pub struct Record<'a> {
    pub shared: &'a Arc<Shared>,
    pub conn: &'a Arc<Connection>,
    pub snapshot: &'a Snapshot,
    pub request_id: &'a HeaderValue,
    pub method: Method,
    pub host: String,
    pub path: String,
    pub route: Option<Arc<Route>>,
    pub identity: Option<Identity>,
    pub risk: Option<posture::Assessment>,
    /// The client is a browser that should get HTML pages.
    pub html: bool,
    pub started: Instant,
}

impl Record<'_> {
    pub fn refuse(&self, refusal: Refusal, decision: Option<&Decision>) -> Response<Body> {
        let response = refusal.response(self.request_id, self.html);
        let mut reasons = match decision {
            Some(d) => d.reasons.clone(),
            None => Vec::new(),
        };
        if decision.is_none() || !matches!(refusal, Refusal::Forbidden(_)) {
            reasons.push(refusal.reason().to_owned());
        }
        self.log("deny", &reasons, response.status());
        response
    }

    /// Refuses with the public reason of `refusal`, logging `detail` as the reason.
    pub fn refuse_with(&self, refusal: Refusal, detail: String) -> Response<Body> {
        let response = refusal.response(self.request_id, self.html);
        self.log(
            "deny",
            &[refusal.reason().to_owned(), detail],
            response.status(),
        );
        response
    }

    /// No acceptable session: browsers go to the provider, other clients get 401.
    fn login_required(
        &self,
        why: &Rejected,
        req: &Request<Incoming>,
        canonical: &Canonical<'_>,
    ) -> Response<Body> {
        let reason = why.to_string();
        if *why != Rejected::Absent {
            tracing::info!(request_id = ?self.request_id, reason = %reason, "session refused");
        }
        if self.snapshot.oidc.is_none() || self.snapshot.sessions.is_none() {
            return self.refuse(
                Refusal::Unavailable("sign-in is not configured".into()),
                None,
            );
        }
        if !self.html {
            return self.refuse(
                Refusal::Unauthorized(format!("sign-in required ({reason})")),
                None,
            );
        }
        let clear = *why != Rejected::Absent;
        self.to_provider(
            req,
            canonical,
            false,
            clear,
            format!("sign-in required: {reason}"),
        )
    }

    /// The risk asks for a fresh multi-factor login: browsers on a login route go through the
    /// provider again (`prompt=login`, `max_age=0`); other clients are refused.
    fn step_up(
        &self,
        req: &Request<Incoming>,
        canonical: &Canonical<'_>,
        login: Login,
    ) -> Response<Body> {
        let level = self.risk.as_ref().map_or("elevated", |r| r.level.as_str());
        if login != Login::Oidc || !self.html {
            return self.refuse(
                Refusal::Unauthorized(format!("{level} risk: fresh multi-factor sign-in required")),
                None,
            );
        }
        self.to_provider(
            req,
            canonical,
            true,
            false,
            format!("{level} risk: step-up sign-in required"),
        )
    }

    /// Sends a browser to the provider to sign in (again, with `step_up`), returning to this
    /// request's path; `clear_session` also deletes the session cookie it came with.
    fn to_provider(
        &self,
        req: &Request<Incoming>,
        canonical: &Canonical<'_>,
        step_up: bool,
        clear_session: bool,
        reason: String,
    ) -> Response<Body> {
        let (Some(provider), Some(sessions)) = (&self.snapshot.oidc, &self.snapshot.sessions)
        else {
            return self.refuse(
                Refusal::Unavailable("sign-in is not configured".into()),
                None,
            );
        };
        let mut return_to = canonical.path.to_string();
        if let Some(q) = req.uri().query() {
            return_to.push('?');
            return_to.push_str(q);
        }
        match provider.begin(&sessions.ring, &canonical.host, &return_to, step_up) {
            Ok(redirect) => {
                let mut response =
                    crate::endpoints::redirect(StatusCode::FOUND, &redirect.location);
                let headers = response.headers_mut();
                headers.append(header::SET_COOKIE, redirect.cookie);
                if clear_session {
                    for c in session::clear(session::chunks_present(req.headers())) {
                        headers.append(header::SET_COOKIE, c);
                    }
                }
                headers.insert(
                    crate::canonical::X_REQUEST_ID.clone(),
                    self.request_id.clone(),
                );
                self.log("deny", &[reason], StatusCode::FOUND);
                response
            }
            Err(e) => self.refuse(Refusal::from(&e), None),
        }
    }

    pub fn log(&self, decision: &'static str, reasons: &[String], status: StatusCode) {
        let latency = self.started.elapsed();
        let route_name = self.route.as_ref().map(|r| r.name.as_str());
        let peer = &self.conn.peer;
        let (user, groups) = match &self.identity {
            Some(who) => (
                Some(who.email.as_deref().unwrap_or(&who.subject)),
                who.groups.as_slice(),
            ),
            None => (None, &[][..]),
        };
        self.shared.decisions.record(&Entry {
            time: decision_log::now_rfc3339(),
            request_id: self.request_id.to_str().unwrap_or(""),
            route: route_name,
            host: &self.host,
            method: self.method.as_str(),
            path: &self.path,
            client: self.conn.remote.ip(),
            device: &peer.fingerprint_hex,
            subject: &peer.subject,
            workload: peer.spiffe_id.as_deref(),
            user,
            groups,
            decision,
            reasons,
            risk: self.risk.as_ref(),
            mode: if self.snapshot.audit {
                "audit"
            } else {
                "enforce"
            },
            status: status.as_u16(),
            latency_ms: latency.as_secs_f64() * 1000.0,
        });
        let label = match &self.route {
            Some(r) => RouteLabel(r.label.clone()),
            None => RouteLabel(self.shared.no_route_label.clone()),
        };
        let metrics = &self.shared.metrics;
        metrics
            .requests
            .get_or_create(&RequestLabels {
                route: label.clone(),
                decision,
                status: status.as_u16(),
            })
            .inc();
        metrics
            .request_duration
            .get_or_create(&RouteOnly { route: label })
            .observe(latency.as_secs_f64());
    }
}
