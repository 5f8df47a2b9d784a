//! The admin API of just-in-time access: `GET /grants` (grants in force and access requests),
//! `POST /grants` (make one, for automation such as a ticketing hook) and
//! `POST /grants/revoke` (end one now). Each change is an `access` audit event
//! ([`crate::jit`]).

use super::{actions, gate, json};
use crate::access::Subject;
use crate::body::Body;
use crate::jit::{self, Actor, NewGrant};
use crate::state::Shared;
use http::{Response, StatusCode};
use serde::Deserialize;

/// `POST /grants`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    subject: Subject,
    route: String,
    /// Like `"1h"` or `"90m"`.
    duration: String,
    reason: String,
    /// Default: the caller.
    #[serde(default)]
    requested_by: Option<String>,
    /// Default: the caller.
    #[serde(default)]
    approved_by: Option<String>,
}

fn refused(status: StatusCode, error: impl std::fmt::Display) -> Response<Body> {
    json(
        status,
        serde_json::json!({ "ok": false, "error": error.to_string() }),
    )
}

fn actor<'a>(conn: &gate::Conn, caller: &'a gate::Caller) -> Actor<'a> {
    let (name, via) = actions::actor(conn, caller);
    Actor {
        name,
        via,
        client: conn.remote.ip(),
    }
}

/// Names given by the caller are bounded like reasons and must be printable.
fn name(given: Option<String>, default: &str) -> Result<String, &'static str> {
    let name = given.unwrap_or_else(|| default.to_owned());
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        return Err("requested_by and approved_by are non-empty printable text");
    }
    Ok(crate::decision_log::bounded(name.trim(), 256))
}

/// `POST /grants`: 201 with the grant made.
pub async fn create(
    shared: &Shared,
    conn: &gate::Conn,
    caller: &gate::Caller,
    body: Option<serde_json::Value>,
) -> Response<Body> {
    let Some(body) = body else {
        return refused(
            StatusCode::BAD_REQUEST,
            "send a JSON object with subject, route, duration and reason",
        );
    };
    let create: Create = match serde_json::from_value(body) {
        Ok(c) => c,
        Err(e) => return refused(StatusCode::BAD_REQUEST, e),
    };
    let duration = match humantime::parse_duration(&create.duration) {
        Ok(d) => d.as_secs(),
        Err(e) => {
            return refused(
                StatusCode::BAD_REQUEST,
                format!("duration {:?}: {e}", create.duration),
            );
        }
    };
    if create.reason.chars().any(|c| c.is_control() && c != '\n') {
        return refused(StatusCode::BAD_REQUEST, "reason is printable text");
    }
    let actor = actor(conn, caller);
    let (requested_by, approved_by) = match (
        name(create.requested_by, actor.name),
        name(create.approved_by, actor.name),
    ) {
        (Ok(r), Ok(a)) => (r, a),
        (Err(e), _) | (_, Err(e)) => return refused(StatusCode::BAD_REQUEST, e),
    };
    let new = NewGrant {
        subject: create.subject,
        route: create.route,
        duration,
        reason: create.reason,
        requested_by,
        approved_by,
    };
    match jit::create(shared, new, actor).await {
        Ok(grant) => json(
            StatusCode::CREATED,
            serde_json::json!({ "ok": true, "grant": *grant }),
        ),
        Err(why) => refused(why.status(), why),
    }
}

/// `POST /grants/revoke` with `{"id": "..."}`: the grant ends now, and every connection,
/// stream and tunnel it allowed is cut.
pub fn revoke(
    shared: &Shared,
    conn: &gate::Conn,
    caller: &gate::Caller,
    body: Option<serde_json::Value>,
) -> Response<Body> {
    let Some(id) = body.as_ref().and_then(|b| b["id"].as_str()) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "send a JSON object with the grant's id",
        );
    };
    match jit::revoke(shared, id, actor(conn, caller)) {
        Some(grant) => json(
            StatusCode::OK,
            serde_json::json!({ "ok": true, "revoked": *grant }),
        ),
        None => refused(StatusCode::NOT_FOUND, format!("no grant {id:?} in force")),
    }
}

/// `GET /grants`: the grants in force and the access requests kept.
pub fn list(shared: &Shared) -> Response<Body> {
    let now = crate::identity::now();
    let grants: Vec<_> = shared
        .access
        .list(now)
        .iter()
        .map(|g| (**g).clone())
        .collect();
    json(
        StatusCode::OK,
        serde_json::json!({ "grants": grants, "requests": shared.access.requests() }),
    )
}
