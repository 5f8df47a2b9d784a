//! Vigil's own endpoints under `/.vigil/` on every routed host: login, callback, logout,
//! the signed-out page, `whoami` and the assertion keys.

use super::context::Context as Record;
use super::identify::identify_session;
use crate::body::{self, Body};
use crate::canonical::X_REQUEST_ID;
use crate::error::{Refusal, escape, page, redirect};
use crate::identity::session;
use crate::identity::{self, Identity};
use crate::reason::{Code, Reason};
use crate::state::{Change, changes};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

/// Answers `/.vigil/<rest>`. `HEAD` is answered as `GET` (the finish phase drops the body),
/// except on the callback: a `HEAD` there (a link checker, a prefetch) must not use up a login.
pub async fn handle(
    record: &mut Record<'_>,
    rest: &str,
    host: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let method = match req.method() {
        &Method::HEAD if rest != "callback" => Method::GET,
        other => other.clone(),
    };
    match (method, rest) {
        (Method::GET, "whoami") => whoami(record, &req),
        (Method::GET, "jwks.json") => jwks(record),
        (Method::GET, "login") => login(record, host, &req),
        (Method::GET, "callback") => callback(record, host, &req).await,
        (Method::GET, "logout") => logout_page(record, &req),
        (Method::POST, "logout") => logout(record, host, req).await,
        (Method::POST, "backchannel") => backchannel(record, req).await,
        (Method::GET, "logged-out") => {
            let mut r = html(StatusCode::OK, "Signed out", "You are signed out.", record);
            record.log(
                "allow",
                &[Reason::new(
                    Code::VigilEndpoint,
                    "vigil endpoint logged-out",
                )],
                StatusCode::OK,
            );
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        (
            _,
            "whoami" | "jwks.json" | "login" | "callback" | "logged-out" | "logout" | "backchannel",
        ) => record.refuse(Refusal::MethodNotAllowed, None),
        _ => record.refuse(Refusal::NoRoute, None),
    }
}

pub(super) fn html(
    status: StatusCode,
    title: &str,
    message: &str,
    record: &Record<'_>,
) -> Response<Body> {
    let mut response = Response::new(body::full(page(
        title,
        message,
        record.request_id.to_str().unwrap_or(""),
    )));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(X_REQUEST_ID.clone(), record.request_id.clone());
    response
}

fn json(status: StatusCode, value: serde_json::Value, record: &Record<'_>) -> Response<Body> {
    let mut response = Response::new(body::full(value.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_REQUEST_ID.clone(), record.request_id.clone());
    response
}

/// The session of this request as [`identify_session`] sees it, unless it was revoked (by an
/// operator, the provider, or its own logout): a logged-out copy of the cookie is not shown
/// as signed in, and cannot log out again.
pub(super) fn signed_in(
    record: &Record<'_>,
    headers: &http::HeaderMap,
) -> Option<(Identity, Vec<HeaderValue>)> {
    let found = identify_session(record.snapshot, record.conn, headers).ok()?;
    let sessions = record.snapshot.sessions.as_ref()?;
    let session = session::read(headers, &sessions.ring).ok()?;
    record
        .shared
        .revocations
        .session(&session)
        .is_none()
        .then_some(found)
}

/// The caller's identity: certificate, device, and the signed-in person when there is one.
fn whoami(record: &mut Record<'_>, req: &Request<Incoming>) -> Response<Body> {
    let peer = &record.conn.peer;
    let signed_in = signed_in(record, req.headers());
    let mut cookies = Vec::new();
    let user = signed_in.map(|(who, set)| {
        cookies = set;
        who
    });
    let csrf = user.as_ref().and_then(|who| logout_token(record, who));
    record.identity = user.clone().map(std::sync::Arc::new);
    let assessed = super::assess::assess(
        record.shared,
        record.snapshot,
        record.conn,
        user.as_ref(),
        record.route.as_ref().map(|r| r.name.as_str()),
        identity::now(),
        false,
    );
    let (device, risk) = (assessed.device, assessed.risk);
    let payload = serde_json::json!({
        "request_id": record.request_id.to_str().unwrap_or(""),
        "route": record.route.as_ref().map(|r| r.name.as_str()),
        "certificate": {
            "subject": peer.subject,
            "issuer": peer.issuer,
            "serial": peer.serial_hex(),
            "fingerprint_sha256": peer.fingerprint_hex,
            "spiffe_id": peer.spiffe_id,
            "dns": peer.dns,
            "emails": peer.emails,
            "uris": peer.uris,
            "not_before": peer.not_before,
            "not_after": peer.not_after,
        },
        "device": {
            "fingerprint_sha256": peer.fingerprint_hex,
            "inventory": device,
            "known": device.is_some(),
        },
        "risk": risk,
        "user": user,
        "logout_csrf": csrf,
        "client_address": record.conn.remote.ip().to_string(),
    });
    let mut response = json(StatusCode::OK, payload, record);
    for c in cookies {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    record.log(
        "allow",
        &[Reason::new(Code::VigilEndpoint, "vigil endpoint whoami")],
        StatusCode::OK,
    );
    response
}

fn jwks(record: &Record<'_>) -> Response<Body> {
    let keys = record
        .snapshot
        .signer
        .as_ref()
        .map_or_else(|| serde_json::json!({ "keys": [] }), |s| s.jwks());
    let mut response = json(StatusCode::OK, keys, record);
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    record.log(
        "allow",
        &[Reason::new(Code::VigilEndpoint, "vigil endpoint jwks.json")],
        StatusCode::OK,
    );
    response
}

/// `/.vigil/login?rd=/path`: starts a login by hand, returning to `rd` on this host.
fn login(record: &Record<'_>, host: &str, req: &Request<Incoming>) -> Response<Body> {
    if record.snapshot.oidc.is_none() || record.snapshot.sessions.is_none() {
        return record.refuse(Refusal::NoRoute, None);
    }
    let rd = query_param(req, "rd").unwrap_or_default();
    let return_to = identity::safe_return(&rd);
    let step_up = query_param(req, "step_up").is_some_and(|v| v == "1");
    let started = Reason::new(Code::SignInStarted, "sign-in started");
    start_login(record, host, &return_to, step_up, ("allow", started))
}

/// Sends the browser to the provider to sign in, back to `return_to` on `host` after; logs
/// the answer as `logged` (decision and reason).
pub(super) fn start_login(
    record: &Record<'_>,
    host: &str,
    return_to: &str,
    step_up: bool,
    logged: (&'static str, Reason),
) -> Response<Body> {
    let (Some(provider), Some(sessions)) = (&record.snapshot.oidc, &record.snapshot.sessions)
    else {
        return record.refuse(Refusal::NoRoute, None);
    };
    match provider.begin(&sessions.ring, host, return_to, step_up) {
        Ok(start) => {
            let mut response = redirect(StatusCode::FOUND, &start.location);
            response
                .headers_mut()
                .append(header::SET_COOKIE, start.cookie);
            record.log(logged.0, &[logged.1], StatusCode::FOUND);
            response
        }
        Err(e) => record.refuse_login(&e),
    }
}

/// `/.vigil/callback`: finishes a login and sets the session cookie.
async fn callback(record: &mut Record<'_>, host: &str, req: &Request<Incoming>) -> Response<Body> {
    let (Some(provider), Some(sessions)) = (&record.snapshot.oidc, &record.snapshot.sessions)
    else {
        return record.refuse(Refusal::NoRoute, None);
    };
    let query = req.uri().query().unwrap_or("");
    let finished = provider
        .finish(
            &sessions.ring,
            &record.shared.revocations.used_states,
            host,
            query,
            req.headers(),
            &record.conn.peer.fingerprint_hex,
            sessions.lifetime,
        )
        .await;
    match finished {
        Ok(done) => {
            let now = identity::now();
            let present = session::chunks_present(req.headers());
            let cookies = match session::write(&done.session, &sessions.ring, now, present) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot write the session cookie");
                    return record.refuse_as(
                        Code::SessionNotStored,
                        Refusal::Unavailable("the session could not be stored".into()),
                    );
                }
            };
            let who = Identity::from_session(&done.session, &provider.settings.mfa_amr);
            record.identity = Some(std::sync::Arc::new(who));
            let mut response = redirect(StatusCode::SEE_OTHER, &done.return_to);
            let headers = response.headers_mut();
            headers.append(header::SET_COOKIE, done.clear_cookie);
            for c in cookies {
                headers.append(header::SET_COOKIE, c);
            }
            record.log(
                "allow",
                &[Reason::new(Code::SignedIn, "signed in")],
                StatusCode::SEE_OTHER,
            );
            response
        }
        Err(e) => {
            tracing::info!(request_id = record.request_id.to_str().unwrap_or(""), error = %e, "sign-in failed");
            let status = e.status();
            // The client's doing (not the provider's): a failed sign-in for the detectors.
            if status.is_client_error() {
                let who = super::assess::who(record.conn, None);
                let seen = crate::anomaly::detect::Seen::FailedLogin;
                record
                    .shared
                    .detect(record.snapshot, seen, &who, identity::now());
            }
            let mut response = html(status, "Sign-in failed", &e.to_string(), record);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if !record.html {
                response = json(
                    status,
                    serde_json::json!({
                        "status": status.as_u16(),
                        "error": status.canonical_reason().unwrap_or("error"),
                        "reason": e.to_string(),
                        "request_id": record.request_id.to_str().unwrap_or(""),
                    }),
                    record,
                );
            }
            // The provider did not answer: the person may try again once it does.
            if matches!(
                status,
                StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
            ) {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(crate::error::RETRY_AFTER_SECONDS),
                );
            }
            record.log(
                "deny",
                &[Reason::new(
                    Code::SignInFailed,
                    format!("sign-in failed: {e}"),
                )],
                status,
            );
            response
        }
    }
}

/// The CSRF token for logging out: a MAC of the session id with the session key.
fn logout_token(record: &Record<'_>, who: &Identity) -> Option<String> {
    let sessions = record.snapshot.sessions.as_ref()?;
    match &who.source {
        identity::Source::Session { sid } => Some(sessions.ring.tag(sid.as_bytes())),
        identity::Source::Bearer { .. } => None,
    }
}

/// `GET /.vigil/logout`: a page with a button, since logging out changes state.
fn logout_page(record: &Record<'_>, req: &Request<Incoming>) -> Response<Body> {
    let signed_in = signed_in(record, req.headers());
    let Some((who, _)) = signed_in else {
        let r = html(
            StatusCode::OK,
            "Signed out",
            "You are not signed in.",
            record,
        );
        record.log(
            "allow",
            &[Reason::new(
                Code::VigilEndpoint,
                "vigil endpoint logout (not signed in)",
            )],
            StatusCode::OK,
        );
        return r;
    };
    let token = logout_token(record, &who).unwrap_or_default();
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign out</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\"><h1>Sign out</h1>\
         <p>Signed in as {}.</p><form method=\"post\" action=\"/.vigil/logout\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\" id=\"sign-out\">Sign out</button>\
         </form></body></html>",
        escape(who.email.as_deref().unwrap_or(&who.subject)),
        escape(&token)
    );
    let mut response = Response::new(body::full(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    record.log(
        "allow",
        &[Reason::new(
            Code::VigilEndpoint,
            "vigil endpoint logout page",
        )],
        StatusCode::OK,
    );
    response
}

/// `POST /.vigil/logout`: checks the CSRF token (form field `csrf` or header `X-Vigil-CSRF`)
/// and the Origin, ends the session and sends the person to the provider's logout.
async fn logout(record: &mut Record<'_>, host: &str, req: Request<Incoming>) -> Response<Body> {
    let (Some(provider), Some(sessions)) = (&record.snapshot.oidc, &record.snapshot.sessions)
    else {
        return record.refuse(Refusal::NoRoute, None);
    };
    if let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        && origin != format!("https://{host}")
    {
        return record.refuse_as(
            Code::LogoutCrossSite,
            Refusal::Forbidden("cross-site logout refused".into()),
        );
    }
    let present = session::chunks_present(req.headers());
    let Some((who, _)) = signed_in(record, req.headers()) else {
        let mut response = redirect(StatusCode::SEE_OTHER, "/.vigil/logged-out");
        for c in session::clear(present) {
            response.headers_mut().append(header::SET_COOKIE, c);
        }
        record.log(
            "allow",
            &[Reason::new(
                Code::LogoutWithoutSession,
                "logout without a session",
            )],
            StatusCode::SEE_OTHER,
        );
        return response;
    };
    let header_token = req
        .headers()
        .get("x-vigil-csrf")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let form = match read_form(record, body, 8 * 1024).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let form_token = url::form_urlencoded::parse(&form)
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.into_owned());
    let token = header_token.or(form_token).unwrap_or_default();
    let identity::Source::Session { sid } = &who.source else {
        return record.refuse(Refusal::BadRequest("not a session"), None);
    };
    if !sessions.ring.verify_tag(sid.as_bytes(), &token) {
        record.identity = Some(std::sync::Arc::new(who));
        return record.refuse_as(
            Code::LogoutTokenInvalid,
            Refusal::Forbidden("missing or wrong logout token".into()),
        );
    }
    record.identity = Some(std::sync::Arc::new(who));
    end_session(record, provider, &sessions.ring, &headers);
    let mut response = redirect(StatusCode::SEE_OTHER, &provider.logout_url(host));
    for c in session::clear(present) {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    record.log(
        "allow",
        &[Reason::new(Code::SignedOut, "signed out")],
        StatusCode::SEE_OTHER,
    );
    response
}

/// Ends the session a verified logout request carries: its id is revoked until the session's
/// absolute expiry, so a copy of the cookie made before the logout is refused from now on (and
/// tunnels opened under it are cut at the next sweep, which starts now); its refresh token is
/// revoked at the provider when it has a revocation endpoint, in the background, so a slow
/// or failing provider never holds up or undoes the logout.
fn end_session(
    record: &Record<'_>,
    provider: &std::sync::Arc<identity::oidc::Provider>,
    ring: &identity::seal::KeyRing,
    headers: &http::HeaderMap,
) {
    let Ok(session) = session::read(headers, ring) else {
        return;
    };
    let change = Change::LogOut {
        sid: session.sid.clone(),
        until: session.expires_at,
    };
    changes::announce(record.shared, change);
    record
        .shared
        .metrics
        .revocations
        .get_or_create(&crate::metrics::Reason { reason: "logout" })
        .inc();
    record.shared.live.recheck_now();
    let Some(refresh_token) = session.refresh_token else {
        return;
    };
    let provider = provider.clone();
    let sub = session.sub;
    tokio::spawn(async move {
        match provider.revoke_refresh_token(&refresh_token).await {
            Ok(true) => {
                tracing::info!(user = %sub, "refresh token revoked at the identity provider")
            }
            Ok(false) => {
                tracing::debug!(user = %sub, "the identity provider has no revocation endpoint; refresh token left to expire")
            }
            Err(e) => {
                tracing::warn!(user = %sub, error = %e, "revoking the refresh token at the identity provider failed; the session is ended here all the same")
            }
        }
    });
}

/// The form body of one of Vigil's own POST endpoints: at most `limit` bytes (413), received
/// whole within `[server] body_read_timeout` (408), like a body forwarded upstream.
pub(super) async fn read_form(
    record: &Record<'_>,
    body: Incoming,
    limit: usize,
) -> Result<bytes::Bytes, Response<Body>> {
    match body::read_whole(body, limit, record.snapshot.body_read_timeout).await {
        Ok(form) => Ok(form),
        // A body that broke off is refused like one that is too large, as before.
        Err(body::ReadRefusal::TooLarge | body::ReadRefusal::Broken) => {
            record.shared.metrics.limit("body_size");
            Err(record.refuse(Refusal::PayloadTooLarge, None))
        }
        Err(body::ReadRefusal::Timeout) => {
            record.shared.metrics.limit("body_read_timeout");
            Err(record.refuse(Refusal::RequestTimeout, None))
        }
    }
}

/// `POST /.vigil/backchannel`: OIDC back-channel logout. The provider posts a signed logout
/// token; the sessions it names (by provider session, or all of the user's) end at once.
async fn backchannel(record: &mut Record<'_>, req: Request<Incoming>) -> Response<Body> {
    let Some(provider) = &record.snapshot.oidc else {
        return record.refuse(Refusal::NoRoute, None);
    };
    let (_, body) = req.into_parts();
    let form = match read_form(record, body, 16 * 1024).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let token = url::form_urlencoded::parse(&form)
        .find(|(k, _)| k == "logout_token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    match provider.verify_logout_token(&token).await {
        Ok((sub, sid)) => {
            let at = identity::now();
            if sid.is_none() {
                // No provider session named: every session of the user ends.
                if let Some(sub) = sub.clone() {
                    changes::announce(record.shared, Change::RevokeUser { sub, at });
                }
            } else {
                let change = Change::ProviderLogout {
                    sid: sid.clone(),
                    sub: sub.clone(),
                    at,
                };
                changes::announce(record.shared, change);
            }
            record
                .shared
                .metrics
                .revocations
                .get_or_create(&crate::metrics::Reason {
                    reason: "backchannel",
                })
                .inc();
            record.shared.live.recheck_now();
            tracing::info!(
                sub = sub.as_deref(),
                sid = sid.as_deref(),
                "back-channel logout"
            );
            let mut response = json(StatusCode::OK, serde_json::json!({ "ok": true }), record);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            record.log(
                "allow",
                &[Reason::new(
                    Code::BackchannelLogout,
                    format!("back-channel logout of {}", sub.or(sid).unwrap_or_default()),
                )],
                StatusCode::OK,
            );
            response
        }
        Err(why) => {
            let response = json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": "invalid_request", "error_description": why }),
                record,
            );
            record.log(
                "deny",
                &[Reason::new(
                    Code::BackchannelRefused,
                    format!("back-channel logout refused: {why}"),
                )],
                StatusCode::BAD_REQUEST,
            );
            response
        }
    }
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(req.uri().query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
