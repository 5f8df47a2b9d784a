//! The identify phase: who is asking beyond the certificate. A session (opened, bound to this
//! device certificate, not idle, expired or revoked, and re-verified with the provider when due)
//! on login routes; a verified bearer token whose subject is not revoked on bearer routes.
//!
//! The live verifier judges what stays open with the same rules: [`session_revoked`],
//! [`bearer_standing`] and [`conclude`] are shared by both.

use super::canonicalize::Target;
use super::context::Context;
use crate::body::Body;
use crate::config::Snapshot;
use crate::connection::Connection;
use crate::error::Refusal;
use crate::identity::session::{self, Session, SessionRefusal};
use crate::identity::verify::Verdict;
use crate::identity::{self, Identity};
use crate::reason::{Code, Reason};
use crate::routing::{Login, Route};
use crate::state::Shared;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;

/// Who a request was identified as.
#[derive(Default)]
pub struct Identified {
    /// Shared with the decision line (no copy of the person's claims per request).
    pub identity: Option<Arc<Identity>>,
    /// The session the request came with, as verified now (login routes).
    pub session: Option<Session>,
    /// The bearer token's identity and the `Authorization` to send upstream, rebuilt from the
    /// token that was verified (bearer routes).
    pub bearer: Option<(Arc<Identity>, HeaderValue)>,
    /// Cookies for the answer: the session's idle clock moved, or it was refreshed.
    pub cookies: Vec<HeaderValue>,
}

/// Identifies the request on `route`; a request that cannot be is answered here (a sign-in for
/// browsers, 401, or 503 when the provider is not available).
pub async fn identify(
    cx: &Context<'_>,
    route: &Route,
    req: &Request<Incoming>,
    target: &Target<'_>,
) -> Result<Identified, Response<Body>> {
    let (shared, snapshot) = (cx.shared, cx.snapshot);
    match route.policy.login {
        Login::None => Ok(Identified::default()),
        Login::Oidc => match verified_session(shared, snapshot, cx.conn, req.headers()).await {
            Ok((session, identity, cookies)) => Ok(Identified {
                identity: Some(identity),
                session: Some(session),
                bearer: None,
                cookies,
            }),
            Err(why) => {
                if matches!(why, SessionRefusal::Revoked(_)) {
                    revoked(cx, None);
                }
                Err(cx.login_required(&why, req, target))
            }
        },
        Login::Bearer => match identify_bearer(snapshot, route, req.headers()).await {
            Ok((identity, token)) => match bearer_standing(shared, &identity, identity::now()) {
                Some(why) => Err({
                    if why.code == Code::BearerSubjectRevoked {
                        revoked(cx, Some(&identity));
                    }
                    cx.refuse_with(
                        Code::BearerTokenRequired,
                        Refusal::Unauthorized("a valid bearer token is required".into()),
                        why,
                    )
                }),
                None => Ok(Identified {
                    identity: Some(Arc::new(identity.clone())),
                    bearer: Some((Arc::new(identity), token)),
                    session: None,
                    cookies: Vec::new(),
                }),
            },
            Err(BearerRefusal::Unavailable) => Err(cx.refuse_as(
                Code::ProviderUnavailable,
                Refusal::Unavailable("identity provider not available".into()),
            )),
            // The detail goes to the decision log only; the client learns the category.
            Err(BearerRefusal::Invalid(why)) => Err(cx.refuse_with(
                Code::BearerTokenRequired,
                Refusal::Unauthorized("a valid bearer token is required".into()),
                Reason::new(Code::BearerTokenInvalid, why),
            )),
        },
    }
}

/// Tells the detectors that this request was refused for a revoked credential.
fn revoked(cx: &Context<'_>, identity: Option<&Identity>) {
    let who = super::assess::who(cx.conn, identity);
    let seen = crate::anomaly::detect::Seen::Revoked;
    cx.shared.detect(cx.snapshot, seen, &who, identity::now());
}

/// A session revoked by an operator, a logout or the provider's back-channel.
pub fn session_revoked(shared: &Shared, session: &Session) -> Option<SessionRefusal> {
    shared
        .revocations
        .session(session)
        .map(SessionRefusal::Revoked)
}

/// Why a verified bearer token's identity no longer stands at `now`, if it does not: its
/// subject revoked since it was issued, or the token expired.
pub fn bearer_standing(shared: &Shared, token: &Identity, now: i64) -> Option<Reason> {
    if shared
        .revocations
        .subject(&token.subject, token.verified_at)
    {
        return Some(Reason::new(
            Code::BearerSubjectRevoked,
            "token issued before its subject was revoked",
        ));
    }
    let expired = token
        .claims
        .get("exp")
        .and_then(serde_json::Value::as_i64)
        .is_some_and(|exp| now >= exp);
    expired.then(|| Reason::new(Code::BearerTokenExpired, "token expired"))
}

/// A re-verification verdict as identification concludes it: go on (with the refreshed session
/// when there is one), or the session is refused.
pub fn conclude(verdict: Verdict) -> Result<Option<Box<Session>>, SessionRefusal> {
    match verdict {
        Verdict::Current | Verdict::Stale { .. } => Ok(None),
        Verdict::Refreshed(fresh) => Ok(Some(fresh)),
        Verdict::Refused(why) => Err(why),
    }
}

/// The session of this request, checked against the connection's device certificate; with the
/// cookies to set when its idle clock moved.
pub fn identify_session(
    snapshot: &Snapshot,
    conn: &Connection,
    headers: &http::HeaderMap,
) -> Result<(Identity, Vec<HeaderValue>), SessionRefusal> {
    read_session(snapshot, conn, headers)
        .map(|(_, identity, cookies)| (Arc::unwrap_or_clone(identity), cookies))
}

/// The open session of a request, with its identity and any cookie refresh.
fn read_session(
    snapshot: &Snapshot,
    conn: &Connection,
    headers: &http::HeaderMap,
) -> Result<(session::Session, Arc<Identity>, Vec<HeaderValue>), SessionRefusal> {
    let (Some(sessions), Some(provider)) = (&snapshot.sessions, &snapshot.oidc) else {
        return Err(SessionRefusal::Absent);
    };
    let mfa_amr = &provider.settings.mfa_amr;
    let sealed = session::sealed(headers)?;
    let (mut session, identity) = match conn.opened_session(&sealed, sessions, mfa_amr) {
        Some(opened) => opened,
        None => {
            let session = session::open(&sealed, &sessions.ring)?;
            let identity = Arc::new(Identity::from_session(&session, mfa_amr));
            conn.keep_opened_session(&sealed, sessions, &session, &identity, mfa_amr);
            (session, identity)
        }
    };
    let now = identity::now();
    session.check(
        &conn.peer.fingerprint_hex,
        now,
        sessions.idle.as_secs() as i64,
    )?;
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
pub async fn verified_session(
    shared: &Shared,
    snapshot: &Snapshot,
    conn: &Connection,
    headers: &http::HeaderMap,
) -> Result<(session::Session, Arc<Identity>, Vec<HeaderValue>), SessionRefusal> {
    let (session, identity, cookies) = read_session(snapshot, conn, headers)?;
    if let Some(why) = session_revoked(shared, &session) {
        return Err(why);
    }
    let (Some(sessions), Some(provider)) = (&snapshot.sessions, &snapshot.oidc) else {
        return Err(SessionRefusal::Absent);
    };
    let verdict = shared
        .reverifier
        .judge(provider, &session, snapshot.verify)
        .await;
    match conclude(verdict)? {
        None => Ok((session, identity, cookies)),
        Some(mut fresh) => {
            let now = identity::now();
            fresh.last_seen = now;
            let present = session::chunks_present(headers);
            let cookies = session::write(&fresh, &sessions.ring, now, present).unwrap_or_default();
            let identity = Arc::new(Identity::from_session(&fresh, &provider.settings.mfa_amr));
            Ok((*fresh, identity, cookies))
        }
    }
}

/// Why a bearer token was not accepted.
pub enum BearerRefusal {
    /// The provider's keys are not known yet: fail closed, but as unavailable, not as bad.
    Unavailable,
    Invalid(String),
}

/// The identity of a request's bearer token, with the `Authorization` value to send upstream:
/// rebuilt from the token that was verified, never the client's own bytes.
pub async fn identify_bearer(
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

impl Context<'_> {
    /// No acceptable session: browsers go to the provider, other clients get 401.
    pub fn login_required(
        &self,
        why: &SessionRefusal,
        req: &Request<Incoming>,
        target: &Target<'_>,
    ) -> Response<Body> {
        let reason = why.to_string();
        if *why != SessionRefusal::Absent {
            tracing::info!(request_id = self.request_id.to_str().unwrap_or(""), reason = %reason, "session refused");
        }
        let (Some(provider), Some(_)) = (&self.snapshot.oidc, &self.snapshot.sessions) else {
            return self.refuse_as(
                Code::SignInNotConfigured,
                Refusal::Unavailable("sign-in is not configured".into()),
            );
        };
        // A sign-in would need the provider: while it is down (or not discovered yet) the
        // answer is 503 with Retry-After, for browsers and API clients alike, rather than a
        // redirect to a provider that cannot answer or a 401 the client cannot act on.
        if let Err(down) = provider.available() {
            return self.refuse_with(
                Code::ProviderUnavailable,
                Refusal::from(&down),
                Reason::new(why.code(), format!("sign-in required: {reason}")),
            );
        }
        if !self.html {
            return self.refuse_as(
                why.code(),
                Refusal::Unauthorized(format!("sign-in required ({reason})")),
            );
        }
        let clear = *why != SessionRefusal::Absent;
        self.to_provider(
            req,
            target,
            false,
            clear,
            Reason::new(why.code(), format!("sign-in required: {reason}")),
        )
    }

    /// Sends a browser to the provider to sign in (again, with `step_up`), returning to this
    /// request's path; `clear_session` also deletes the session cookie it came with.
    pub fn to_provider(
        &self,
        req: &Request<Incoming>,
        target: &Target<'_>,
        step_up: bool,
        clear_session: bool,
        reason: Reason,
    ) -> Response<Body> {
        let (Some(provider), Some(sessions)) = (&self.snapshot.oidc, &self.snapshot.sessions)
        else {
            return self.refuse_as(
                Code::SignInNotConfigured,
                Refusal::Unavailable("sign-in is not configured".into()),
            );
        };
        let mut return_to = target.path.to_string();
        if let Some(q) = req.uri().query() {
            return_to.push('?');
            return_to.push_str(q);
        }
        match provider.begin(&sessions.ring, &target.host, &return_to, step_up) {
            Ok(redirect) => {
                let mut response = crate::error::redirect(StatusCode::FOUND, &redirect.location);
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
            Err(e) => self.refuse_login(&e),
        }
    }
}
