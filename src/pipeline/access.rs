//! Just-in-time access pages under `/.vigil/access`: people ask for a route themselves from
//! its denial page, approvers see the requests waiting for them and approve or refuse them.
//! Plain server-rendered HTML, readable without JavaScript; every form carries a CSRF token
//! bound to the session, and a state-changing request from another site is refused.

use super::context::Context as Record;
use super::endpoints::{html, read_form, signed_in, start_login};
use crate::access::{AccessRequest, GrantSettings, RequestState};
use crate::body::{self, Body};
use crate::error::{Refusal, escape, redirect};
use crate::identity::{self, Identity};
use crate::jit::{self, Person};
use crate::reason::{Code, Reason};
use crate::routing::Route;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::fmt::Write as _;

/// Answers `/.vigil/<rest>` when it is an access page; gives the request back otherwise.
pub async fn handle(
    record: &mut Record<'_>,
    rest: &str,
    host: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, Request<Incoming>> {
    use http::Method;
    Ok(match (req.method(), rest) {
        (&Method::GET | &Method::HEAD, "access") => overview(record, host, &req),
        (&Method::POST, "access/request") => ask(record, host, req).await,
        (&Method::POST, "access/decide") => decide(record, host, req).await,
        (_, "access" | "access/request" | "access/decide") => {
            record.refuse(Refusal::MethodNotAllowed, None)
        }
        _ => return Err(req),
    })
}

/// The durations a request form offers, within the route's `max`.
const CHOICES: [u64; 8] = [
    900,
    1800,
    3600,
    7200,
    4 * 3600,
    8 * 3600,
    12 * 3600,
    24 * 3600,
];

/// The CSRF token of the access forms: a MAC of the session id, apart from the logout's.
fn token(record: &Record<'_>, who: &Identity) -> Option<String> {
    let sessions = record.snapshot.sessions.as_ref()?;
    match &who.source {
        identity::Source::Session { sid } => {
            Some(sessions.ring.tag(format!("access:{sid}").as_bytes()))
        }
        identity::Source::Bearer { .. } => None,
    }
}

fn person(who: &Identity) -> Person<'_> {
    Person {
        subject: &who.subject,
        email: who.email.as_deref(),
        groups: &who.groups,
    }
}

/// `1h`, `90m`, `4h30m`: a duration as the pages write it.
fn human(seconds: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds)).to_string()
}

fn when(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map_or_else(|_| unix.to_string(), |t| t.to_string())
}

fn page(title: &str, body: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head>\
         <body style=\"font-family:sans-serif;max-width:48em;margin:4em auto\"><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    let mut response = Response::new(body::full(html));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    response
}

/// The form a denial page on a route that grants access offers a signed-in person.
pub fn request_form(record: &Record<'_>, route: &Route, who: &Identity) -> Option<String> {
    let settings = route.grants.as_ref()?;
    let token = token(record, who)?;
    let mut options = String::new();
    let mut offered: Vec<u64> = CHOICES
        .iter()
        .copied()
        .filter(|c| *c < settings.max)
        .collect();
    offered.push(settings.max);
    if !offered.contains(&settings.default) {
        offered.push(settings.default);
        offered.sort_unstable();
    }
    for seconds in offered {
        let selected = if seconds == settings.default {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            options,
            "<option value=\"{s}s\"{selected}>{h}</option>",
            s = seconds,
            h = escape(&human(seconds))
        );
    }
    Some(format!(
        "<h2>Request access</h2><p>Ask the approvers of <strong>{route}</strong> for time-limited access.</p>\
         <form method=\"post\" action=\"/.vigil/access/request\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
         <input type=\"hidden\" name=\"route\" value=\"{route}\">\
         <p><label>Reason<br><textarea name=\"reason\" id=\"reason\" required maxlength=\"{max}\" rows=\"3\" cols=\"50\"></textarea></label></p>\
         <p><label>For <select name=\"duration\" id=\"duration\">{options}</select></label></p>\
         <p><button type=\"submit\" id=\"request-access\">Request access</button></p></form>",
        route = escape(&route.name),
        token = escape(&token),
        max = jit::MAX_REASON,
    ))
}

/// A denial page with the request form, for a signed-in person on a route granting access.
pub fn denied_page(message: &str, request_id: &str, form: &str) -> Body {
    body::full(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Access denied</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head>\
         <body style=\"font-family:sans-serif;max-width:48em;margin:4em auto\">\
         <h1>Access denied</h1><p>{m}</p>{form}\
         <p><a href=\"/.vigil/access\">Your access requests</a></p>\
         <p><small>Request id: <code>{r}</code></small></p></body></html>",
        m = escape(message),
        r = escape(request_id),
    ))
}

/// `GET /.vigil/access`: the person's requests and grants, and the requests waiting for
/// them as an approver. Not signed in: off to sign in, back here after.
pub fn overview(record: &mut Record<'_>, host: &str, req: &Request<Incoming>) -> Response<Body> {
    let Some((who, cookies)) = signed_in(record, req.headers()) else {
        return sign_in_first(record, host);
    };
    let token = token(record, &who).unwrap_or_default();
    let now = identity::now();
    // The routes whose requests this person decides.
    let approves: Vec<&str> = record
        .snapshot
        .routes
        .iter()
        .filter(|r| {
            r.grants.as_ref().is_some_and(|g: &GrantSettings| {
                g.approves(&who.subject, who.email.as_deref(), &who.groups)
            })
        })
        .map(|r| r.name.as_str())
        .collect();
    let requests = record.shared.access.requests();
    let mut out = format!(
        "<p>Signed in as <strong>{}</strong>.</p>",
        escape(person(&who).name())
    );
    if !approves.is_empty() {
        let waiting: Vec<&AccessRequest> = requests
            .iter()
            .filter(|r| r.state == RequestState::Pending && approves.contains(&r.route.as_str()))
            .collect();
        out.push_str("<h2>Waiting for your approval</h2>");
        approvals(&mut out, &waiting, &who, &token);
    }
    out.push_str("<h2>Your requests</h2>");
    own_requests(&mut out, &requests, &who);
    out.push_str("<h2>Your grants</h2>");
    own_grants(&mut out, record, &who, now);
    let mut response = page("Access requests", &out);
    for c in cookies {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    record.identity = Some(std::sync::Arc::new(who));
    record.log(
        "allow",
        &[Reason::new(Code::VigilEndpoint, "vigil endpoint access")],
        StatusCode::OK,
    );
    response
}

/// The grants in force for the person (and for this device and workload certificate).
fn own_grants(out: &mut String, record: &Record<'_>, who: &Identity, now: i64) {
    let asking = super::assess::who(record.conn, Some(who));
    let mut listed = false;
    for g in record.shared.access.list(now) {
        if !g.subject.matches(&asking) {
            continue;
        }
        listed = true;
        let _ = write!(
            out,
            "<p class=\"grant\">{} until {} (approved by {})</p>",
            escape(&g.route),
            escape(&when(g.expires_at)),
            escape(&g.approved_by)
        );
    }
    if !listed {
        out.push_str("<p>None in force.</p>");
    }
}

fn approvals(out: &mut String, waiting: &[&AccessRequest], who: &Identity, token: &str) {
    if waiting.is_empty() {
        out.push_str("<p>No request is waiting.</p>");
        return;
    }
    out.push_str("<table><tr><th>Who</th><th>Route</th><th>For</th><th>Reason</th><th></th></tr>");
    for r in waiting {
        let _ = write!(
            out,
            "<tr id=\"request-{id}\"><td>{who}</td><td>{route}</td><td>{for_}</td><td>{reason}</td><td>",
            id = escape(&r.id),
            who = escape(&r.requester),
            route = escape(&r.route),
            for_ = escape(&human(r.duration)),
            reason = escape(&r.reason),
        );
        if r.subject == who.subject {
            out.push_str("your own request: another approver decides it");
        } else {
            for (decision, label) in [("approve", "Approve"), ("refuse", "Refuse")] {
                let _ = write!(
                    out,
                    "<form method=\"post\" action=\"/.vigil/access/decide\" style=\"display:inline\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
                     <input type=\"hidden\" name=\"id\" value=\"{id}\">\
                     <input type=\"hidden\" name=\"decision\" value=\"{decision}\">\
                     <button type=\"submit\" id=\"{decision}-{id}\">{label}</button></form> ",
                    token = escape(token),
                    id = escape(&r.id),
                );
            }
        }
        out.push_str("</td></tr>");
    }
    out.push_str("</table>");
}

fn own_requests(out: &mut String, requests: &[AccessRequest], who: &Identity) {
    let mine: Vec<&AccessRequest> = requests
        .iter()
        .filter(|r| r.subject == who.subject)
        .collect();
    if mine.is_empty() {
        out.push_str("<p>None.</p>");
        return;
    }
    for r in mine.iter().rev() {
        let state = match &r.state {
            RequestState::Pending => "waiting for approval".to_owned(),
            RequestState::Approved { by, .. } => format!("approved by {by}"),
            RequestState::Refused { by, .. } => format!("refused by {by}"),
        };
        let _ = write!(
            out,
            "<p class=\"own-request\" id=\"own-{id}\">{route} for {for_}: <strong class=\"state\">{state}</strong></p>",
            id = escape(&r.id),
            route = escape(&r.route),
            for_ = escape(&human(r.duration)),
            state = escape(&state),
        );
    }
}

fn sign_in_first(record: &Record<'_>, host: &str) -> Response<Body> {
    let required = Reason::new(Code::SignInRequired, "sign-in required");
    start_login(record, host, "/.vigil/access", false, ("deny", required))
}

/// What a state-changing access form sent, once its origin, session and token are checked.
struct Posted {
    who: Identity,
    form: Vec<(String, String)>,
}

impl Posted {
    fn field(&self, name: &str) -> &str {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Checks a POST to an access form: same origin, signed in, the session's CSRF token.
async fn posted(
    record: &mut Record<'_>,
    host: &str,
    req: Request<Incoming>,
) -> Result<Posted, Response<Body>> {
    let headers = req.headers();
    let origin_ok = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|origin| origin == format!("https://{host}"));
    let fetched_cross_site = headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site");
    if !origin_ok || fetched_cross_site {
        return Err(record.refuse_as(
            Code::AccessCrossSite,
            Refusal::Forbidden("cross-site request refused".into()),
        ));
    }
    let Some((who, _)) = signed_in(record, req.headers()) else {
        return Err(record.refuse_as(
            Code::SignInRequired,
            Refusal::Unauthorized("sign in first".into()),
        ));
    };
    record.identity = Some(std::sync::Arc::new(who.clone()));
    let (_, body) = req.into_parts();
    let form = read_form(record, body, 8 * 1024).await?;
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&form).into_owned().collect();
    let posted = Posted { who, form };
    let expected = token(record, &posted.who);
    let sessions = record.snapshot.sessions.as_ref();
    let valid = match (&posted.who.source, sessions) {
        (identity::Source::Session { sid }, Some(s)) => s
            .ring
            .verify_tag(format!("access:{sid}").as_bytes(), posted.field("csrf")),
        _ => false,
    };
    if expected.is_none() || !valid {
        return Err(record.refuse_as(
            Code::AccessTokenInvalid,
            Refusal::Forbidden("missing or wrong form token".into()),
        ));
    }
    Ok(posted)
}

/// `POST /.vigil/access/request`: route, reason, duration.
pub async fn ask(record: &mut Record<'_>, host: &str, req: Request<Incoming>) -> Response<Body> {
    let posted = match posted(record, host, req).await {
        Ok(p) => p,
        Err(response) => return response,
    };
    let route = posted.field("route");
    let duration = match humantime::parse_duration(posted.field("duration")) {
        Ok(d) => d.as_secs(),
        Err(_) => 0,
    };
    let client = record.conn.remote.ip();
    match jit::ask(
        record.shared,
        person(&posted.who),
        route,
        duration,
        posted.field("reason"),
        client,
    )
    .await
    {
        Ok(request) => {
            record.log(
                "allow",
                &[Reason::new(
                    Code::AccessRequested,
                    format!(
                        "access to route {} requested ({})",
                        request.route, request.id
                    ),
                )],
                StatusCode::SEE_OTHER,
            );
            redirect(StatusCode::SEE_OTHER, "/.vigil/access")
        }
        Err(why) => refused(record, why),
    }
}

/// `POST /.vigil/access/decide`: id, decision (`approve` or `refuse`).
pub async fn decide(record: &mut Record<'_>, host: &str, req: Request<Incoming>) -> Response<Body> {
    let posted = match posted(record, host, req).await {
        Ok(p) => p,
        Err(response) => return response,
    };
    let approve = match posted.field("decision") {
        "approve" => true,
        "refuse" => false,
        _ => {
            return record.refuse_as(
                Code::AccessActionRefused,
                Refusal::BadRequest("decision is approve or refuse"),
            );
        }
    };
    let client = record.conn.remote.ip();
    match jit::settle(
        record.shared,
        person(&posted.who),
        posted.field("id"),
        approve,
        client,
    )
    .await
    {
        Ok((request, grant)) => {
            let reason = match grant {
                Some(g) => Reason::new(
                    Code::AccessApproved,
                    format!("access request {} approved: grant {}", request.id, g.id),
                ),
                None => Reason::new(
                    Code::AccessDeclined,
                    format!("access request {} refused", request.id),
                ),
            };
            record.log("allow", &[reason], StatusCode::SEE_OTHER);
            redirect(StatusCode::SEE_OTHER, "/.vigil/access")
        }
        Err(why) => refused(record, why),
    }
}

/// A request or decision that was refused: a page saying why.
fn refused(record: &Record<'_>, why: jit::Refused) -> Response<Body> {
    let status = why.status();
    let mut response = html(status, "Access request refused", &why.to_string(), record);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    record.log(
        "deny",
        &[Reason::new(Code::AccessActionRefused, why.to_string())],
        status,
    );
    response
}
