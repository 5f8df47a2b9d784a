//! The live verifier: everything that stays open (keep-alive and HTTP/2 connections, responses
//! still streaming, WebSocket tunnels) re-checked, so nothing outlives its identity or its
//! decision.
//!
//! The verifier runs every `[verify] interval`, and at once after a reload (a new CRL) or a
//! revocation. For each connection it checks that the client certificate has not expired,
//! still verifies against the current CAs and CRLs, and is not a revoked device. Every
//! response still streaming and every tunnel is a registered
//! [`Stream`](crate::connection::Stream) holding what its decision rested on; each is decided
//! again as if its request arrived now, with the pipeline's own phases: identify (its session
//! not revoked or expired and re-verified with the provider when due, its bearer token not
//! revoked or expired), assess (today's device record and risk) and
//! [`decide`](crate::policy::decide) (the rules, risk actions and audit mode in force). What no
//! longer passes is cut off: an HTTP/2 stream is reset on its own; anything else closes its
//! connection without waiting for in-flight requests.
//!
//! A sweep never waits for the identity provider: a session due for re-verification is
//! refreshed in the background and judged on what is known now (its last verification holds
//! until `interval + max_stale`, then it is cut), so a hung provider delays no other check.

use crate::config::Snapshot;
use crate::connection::{Connection, StreamOrigin};
use crate::identity::Identity;
use crate::identity::session::Session;
use crate::identity::session::SessionRefusal;
use crate::identity::verify::Change;
use crate::metrics::Reason;
use crate::pipeline::{assess, decide, identify};
use crate::policy::{Decision, Outcome, facts};
use crate::state::Shared;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs the verifier until `stop`.
pub async fn verifier(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let interval = shared.snapshot.load().verify.interval;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            () = shared.live.wake.notified() => {}
        }
        sweep(&shared).await;
    }
}

/// One pass over every live connection. It never waits for the identity provider: first
/// every connection's own checks (certificate expiry, device revocation, CAs and CRLs), then
/// every stream's, judging each session on what is known now and leaving any re-verification
/// due to a refresh in the background, whose answer applies at the sweep it wakes.
pub async fn sweep(shared: &Arc<Shared>) {
    let ordered = shared.live.ordered.lock().ok().and_then(|mut o| o.take());
    let snapshot = shared.snapshot.load_full();
    let now = crate::identity::now();
    let unix_now = rustls::pki_types::UnixTime::now();
    let mut standing = Vec::new();
    for conn in shared.live.connections() {
        if conn.kill.is_cancelled() {
            continue;
        }
        let reason = if now >= conn.peer.not_after {
            Some("certificate_expired")
        } else if shared.revocations.device(&conn.peer.fingerprint_hex) {
            Some("device_revoked")
        } else if let Some(reason) = rested_on(shared, &conn, now) {
            Some(reason)
        } else if conn.verified_generation() != snapshot.generation {
            // The CAs or CRLs may have changed since this connection was verified.
            match crate::tls::verify_again(snapshot.client_verifier.as_ref(), &conn.chain, unix_now)
            {
                Ok(()) => {
                    conn.set_verified_generation(snapshot.generation);
                    None
                }
                Err(reason) => Some(reason),
            }
        } else {
            None
        };
        match reason {
            Some(reason) => {
                cut(shared, &conn, reason);
                observe(shared, ordered);
            }
            None => standing.push(conn),
        }
    }
    for conn in standing {
        check_streams(shared, &snapshot, &conn, now, ordered);
    }
}

/// Why what the connection's requests rested on no longer stands: a grant that allowed one
/// ended (`grant_ended`), or its certificate, source address or a person it carried is
/// blocked (`blocked`).
fn rested_on(shared: &Shared, conn: &Connection, now: i64) -> Option<&'static str> {
    let Ok(standing) = conn.standing.lock() else {
        return None;
    };
    if standing
        .grants
        .iter()
        .any(|id| !shared.access.holds(id, now))
    {
        return Some("grant_ended");
    }
    let mut who = assess::who(conn, None);
    if shared.blocks.find(&who, now).is_some() {
        return Some("blocked");
    }
    for person in &standing.people {
        who.user = Some(person);
        if shared.blocks.find(&who, now).is_some() {
            return Some("blocked");
        }
    }
    None
}

/// Time from a revocation order to a connection it affects being cut.
fn observe(shared: &Shared, ordered: Option<std::time::Instant>) {
    if let Some(at) = ordered {
        shared
            .metrics
            .revocation_cutoff
            .observe(at.elapsed().as_secs_f64());
    }
}

/// Re-decides every stream on `conn` and cuts those that no longer pass: an HTTP/2 stream is
/// reset on its own, an HTTP/1.1 response or a tunnel ends with its connection.
fn check_streams(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    conn: &Connection,
    now: i64,
    ordered: Option<std::time::Instant>,
) {
    let streams: Vec<(u64, StreamOrigin, bool, CancellationToken)> = conn
        .streams
        .lock()
        .map(|t| {
            t.iter()
                .filter(|s| !s.cut.is_cancelled())
                .map(|s| (s.id, s.origin.clone(), s.http2, s.cut.clone()))
                .collect()
        })
        .unwrap_or_default();
    for (id, origin, http2, token) in streams {
        let Some(reason) = verdict(shared, snapshot, conn, id, &origin, now) else {
            continue;
        };
        // Cutting the stream, not the connection: its body fails, which resets an HTTP/2
        // stream alone and makes hyper close an HTTP/1.1 connection (a message cannot end
        // early), and a tunnel closes. A response that finished since the list was taken is
        // left alone, and so is the next request on its keep-alive connection.
        if !still_registered(conn, id) {
            continue;
        }
        let what = if http2 {
            "stream reset"
        } else {
            "connection closed"
        };
        tracing::info!(conn = conn.id, stream = id, remote = %conn.remote, subject = %conn.peer.subject, reason, what, "stream cut off: it no longer passes verification");
        count_cut(shared, reason);
        token.cancel();
        observe(shared, ordered);
    }
}

fn still_registered(conn: &Connection, id: u64) -> bool {
    conn.streams
        .lock()
        .map(|s| s.iter().any(|s| s.id == id))
        .unwrap_or(false)
}

/// Why the stream `id` on `conn` no longer passes, if it does not. A session due for
/// re-verification is judged without waiting for the provider (see
/// [`Reverifier::judge_now`](crate::identity::verify::Reverifier::judge_now)); when the
/// judgement stands on a refresh still in flight, the verifier is woken when its answer comes
/// or the session's deadline passes.
fn verdict(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    conn: &Connection,
    id: u64,
    origin: &StreamOrigin,
    now: i64,
) -> Option<&'static str> {
    let session = match &origin.session {
        Some(current) => match session_now(shared, snapshot, conn, id, current, now) {
            Ok(session) => Some(session),
            Err(reason) => return Some(reason),
        },
        None => None,
    };
    if let Some(token) = &origin.bearer
        && let Some(why) = identify::bearer_standing(shared, token, now)
    {
        return Some(if why.code == crate::reason::Code::BearerTokenExpired {
            "token_expired"
        } else {
            "token_revoked"
        });
    }
    let decision = redecide(shared, snapshot, conn, origin, session.as_ref(), now)?;
    let has = |code| decision.reasons.iter().any(|r| r.code == code);
    match decision.outcome {
        Outcome::Allow | Outcome::Audit => None,
        _ if has(crate::reason::Code::Blocked) => Some("blocked"),
        _ if has(crate::reason::Code::SharedStateUnavailable)
            || has(crate::reason::Code::SharedStateStale) =>
        {
            Some("shared_state")
        }
        _ if decision.reasons.first().map(|r| r.code) == Some(crate::reason::Code::NoRoute) => {
            Some("route_removed")
        }
        _ if decision.risk_action.is_some() => Some("risk"),
        _ => Some("policy"),
    }
}

/// The stream's session as it stands now: not revoked or expired, and re-verified when due
/// (a refreshed session replaces the stream's own).
fn session_now(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    conn: &Connection,
    id: u64,
    current: &Session,
    now: i64,
) -> Result<Session, &'static str> {
    if identify::session_revoked(shared, current).is_some() {
        return Err("session_revoked");
    }
    if now >= current.expires_at {
        return Err("session_expired");
    }
    let Some(provider) = &snapshot.oidc else {
        return Ok(current.clone());
    };
    let (verdict, watch) = shared
        .reverifier
        .judge_now(provider, current, snapshot.verify);
    if let Some(watch) = watch {
        let shared = Arc::downgrade(shared);
        tokio::spawn(async move {
            let change = watch.changed().await;
            if let Some(shared) = shared.upgrade() {
                match change {
                    Change::Refreshed => shared.live.wake.notify_one(),
                    Change::Ended | Change::Unverifiable => shared.live.recheck_now(),
                }
            }
        });
    }
    match identify::conclude(verdict) {
        Ok(None) => Ok(current.clone()),
        Ok(Some(fresh)) => {
            if let Ok(mut open) = conn.streams.lock() {
                for t in open.iter_mut().filter(|t| t.id == id) {
                    t.origin.session = Some((*fresh).clone());
                }
            }
            Ok(*fresh)
        }
        Err(SessionRefusal::Ended(_)) => Err("session_ended"),
        Err(_) => Err("session_unverifiable"),
    }
}

/// The decision on a stream as if its request arrived now: today's route, device record, risk
/// and the session's current claims (or the bearer token's), through the same
/// [`policy::decide`](crate::policy::decide) as a request.
pub fn redecide(
    shared: &Shared,
    snapshot: &Snapshot,
    conn: &Connection,
    origin: &StreamOrigin,
    session: Option<&Session>,
    now: i64,
) -> Option<Decision> {
    let host = crate::canonical::host_without_port(&origin.host);
    let route = snapshot.routes.find(host, &origin.path);
    let mfa_amr = snapshot
        .oidc
        .as_ref()
        .map(|p| p.settings.mfa_amr.as_slice())
        .unwrap_or_default();
    let from_session = session.map(|s| Identity::from_session(s, mfa_amr));
    let identity = from_session.as_ref().or(origin.bearer.as_deref());
    let name = route.map(|r| r.name.as_str());
    let assessed = assess::assess(shared, snapshot, conn, identity, name, now, false);
    let request = facts::Request {
        route: route.map(|r| r.name.as_str()),
        host: &origin.host,
        method: origin.method.as_str(),
        path: &origin.path,
        headers: facts::Headers::List(&origin.headers),
    };
    let facts = decide::facts(now, request, conn, identity, &assessed);
    Some(crate::policy::decide(&snapshot.policy, &facts))
}

/// Closes `conn` now, with a log line and a metric.
pub fn cut(shared: &Shared, conn: &Connection, reason: &'static str) {
    tracing::info!(conn = conn.id, remote = %conn.remote, subject = %conn.peer.subject, reason, "connection cut off: it no longer passes verification");
    count_cut(shared, reason);
    conn.kill.cancel();
}

fn count_cut(shared: &Shared, reason: &'static str) {
    shared
        .metrics
        .connections_cut
        .get_or_create(&Reason { reason })
        .inc();
}
