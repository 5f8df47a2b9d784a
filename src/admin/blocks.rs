//! The admin API of blocks: `GET /blocks` (the blocks in force), `POST /blocks` (block a
//! subject for a while, `by = "admin"`) and `POST /blocks/lift` (end a block now). Each change
//! is an admin action line ([`actions::block`]) and an alert; and [`expiry`] ends blocks whose
//! time ran out.

use super::{actions, gate, json};
use crate::access::Subject;
use crate::anomaly::blocks::Block;
use crate::anomaly::detect;
use crate::body::Body;
use crate::state::{Change, Shared, changes};
use http::{Response, StatusCode};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The longest block an operator may order.
const MAX_BLOCK: Duration = Duration::from_secs(365 * 86400);
/// The longest reason kept.
const MAX_REASON: usize = 500;

/// `POST /blocks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    subject: Subject,
    /// Like `"15m"` or `"2h"`.
    duration: String,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /blocks/lift`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Lift {
    subject: Subject,
}

fn refused(status: StatusCode, error: impl std::fmt::Display) -> Response<Body> {
    json(
        status,
        serde_json::json!({ "ok": false, "error": error.to_string() }),
    )
}

/// The subject in its normal form, or why it cannot be blocked.
fn subject(subject: Subject) -> Result<Subject, &'static str> {
    let subject = match subject.normalised() {
        // Emails are compared without case.
        Subject::User(u) if u.contains('@') => Subject::User(u.to_ascii_lowercase()),
        other => other,
    };
    match &subject {
        Subject::Group(_) => Err("a block names a user, device, spiffe or address, not a group"),
        Subject::Address(_) => Ok(subject),
        other => other.invalid_for_grant().map_or(Ok(subject), Err),
    }
}

/// `POST /blocks` (`creating`) or `POST /blocks/lift` with its JSON body: the answer, written
/// as an admin action.
pub async fn change(
    shared: &Shared,
    conn: &gate::Conn,
    caller: &gate::Caller,
    creating: bool,
    body: Option<serde_json::Value>,
) -> Response<Body> {
    let (response, named) = if creating {
        create(shared, conn, caller, body)
    } else {
        lift(shared, conn, caller, body).await
    };
    actions::block(
        shared,
        conn,
        caller,
        creating,
        (named.as_ref(), response.status()),
    );
    response
}

fn create(
    shared: &Shared,
    conn: &gate::Conn,
    caller: &gate::Caller,
    body: Option<serde_json::Value>,
) -> (Response<Body>, Option<Subject>) {
    let Some(body) = body else {
        let why = "send a JSON object with subject and duration";
        return (refused(StatusCode::BAD_REQUEST, why), None);
    };
    let create: Create = match serde_json::from_value(body) {
        Ok(c) => c,
        Err(e) => return (refused(StatusCode::BAD_REQUEST, e), None),
    };
    let subject = match subject(create.subject) {
        Ok(s) => s,
        Err(why) => return (refused(StatusCode::BAD_REQUEST, why), None),
    };
    let duration = match humantime::parse_duration(create.duration.trim()) {
        Ok(d) if !d.is_zero() && d <= MAX_BLOCK => d,
        Ok(_) => {
            let why = "duration is longer than zero and at most 365 days";
            return (refused(StatusCode::BAD_REQUEST, why), Some(subject));
        }
        Err(e) => {
            let why = format!("duration {:?}: {e}", create.duration);
            return (refused(StatusCode::BAD_REQUEST, why), Some(subject));
        }
    };
    let reason = create
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or("blocked by an operator");
    if reason.chars().any(char::is_control) {
        let why = "reason is printable text";
        return (refused(StatusCode::BAD_REQUEST, why), Some(subject));
    }
    let now = crate::identity::now();
    let block = Block {
        subject: subject.clone(),
        reason: crate::decision_log::bounded(reason, MAX_REASON),
        by: "admin".to_owned(),
        since: now,
        until: now.saturating_add(duration.as_secs() as i64),
    };
    let new = detect::blocked(&shared.acting(), &block);
    let (actor, _) = actions::actor(conn, caller);
    tracing::warn!(subject = %subject.key(), by = %actor, remote = %conn.remote, "block ordered by an operator");
    let response = json(
        StatusCode::CREATED,
        serde_json::json!({ "ok": true, "new": new, "block": block }),
    );
    (response, Some(subject))
}

async fn lift(
    shared: &Shared,
    conn: &gate::Conn,
    caller: &gate::Caller,
    body: Option<serde_json::Value>,
) -> (Response<Body>, Option<Subject>) {
    let lift: Lift = match body.map(serde_json::from_value) {
        Some(Ok(l)) => l,
        Some(Err(e)) => return (refused(StatusCode::BAD_REQUEST, e), None),
        None => {
            let why = "send a JSON object with the subject";
            return (refused(StatusCode::BAD_REQUEST, why), None);
        }
    };
    let subject = match subject(lift.subject) {
        Ok(s) => s,
        Err(why) => return (refused(StatusCode::BAD_REQUEST, why), None),
    };
    let now = crate::identity::now();
    let Some(block) = shared
        .blocks
        .list(now)
        .into_iter()
        .find(|b| b.subject == subject)
    else {
        let why = format!("{} is not blocked", subject.key());
        return (refused(StatusCode::NOT_FOUND, why), Some(subject));
    };
    // Written to the shared state first: no replica lets the subject in alone.
    let change = Change::Lift {
        subject: subject.clone(),
    };
    if let Err(e) = changes::commit(shared, &[change], None).await {
        return (refused(StatusCode::SERVICE_UNAVAILABLE, e), Some(subject));
    }
    let (actor, _) = actions::actor(conn, caller);
    detect::lifted(&shared.acting(), &block, actor);
    let response = json(
        StatusCode::OK,
        serde_json::json!({ "ok": true, "lifted": block }),
    );
    (response, Some(subject))
}

/// `GET /blocks`: the blocks in force, oldest first.
pub fn list(shared: &Shared) -> Response<Body> {
    let blocks = shared.blocks.list(crate::identity::now());
    json(StatusCode::OK, serde_json::json!({ "blocks": blocks }))
}

/// Ends blocks as their time runs out (checked every second), until `stop`: each is
/// announced as a `block_lifted` alert and `vigil_blocks_active` follows. A block stops
/// applying at its `until` whether or not this has run yet.
pub async fn expiry(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = crate::identity::now();
        for block in shared.blocks.expire(now) {
            // Every replica ends the block; one announces it.
            let what = format!("block_lifted:{}:{}", block.subject.key(), block.until);
            if shared.fleet.once(&what, 24 * 3600).await {
                detect::lifted(&shared.acting(), &block, "expired");
            }
        }
        detect::observe_blocks(&shared.acting());
    }
}
