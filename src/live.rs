//! Live connections: a registry of every open downstream connection and the verifier that
//! re-checks them, so a keep-alive, HTTP/2 or WebSocket connection does not outlive its
//! identity.
//!
//! The verifier runs every `[verify] interval`, and at once after a reload (a new CRL) or a
//! revocation. For each connection it checks that the client certificate has not expired,
//! still verifies against the current CAs and CRLs, and is not a revoked device; for each
//! tunnel (WebSocket) opened under a login it checks the session is not revoked and
//! re-verifies it with the provider when due. What no longer passes is cut off: the
//! connection is closed without waiting for in-flight requests.

use crate::identity::session::Rejected;
use crate::identity::session::Session;
use crate::identity::verify::Verdict;
use crate::metrics::Reason;
use crate::server::{Connection, Shared};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Every open connection, by id.
#[derive(Default)]
pub struct Registry {
    connections: Mutex<HashMap<u64, Weak<Connection>>>,
    /// Wakes the verifier before its interval (reload, revocation).
    wake: Notify,
    /// When the oldest pending wake was ordered, for the cut-off latency metric.
    ordered: Mutex<Option<std::time::Instant>>,
}

impl Registry {
    pub fn insert(&self, conn: &Arc<Connection>) {
        if let Ok(mut map) = self.connections.lock() {
            map.insert(conn.id, Arc::downgrade(conn));
        }
    }

    pub fn remove(&self, id: u64) {
        if let Ok(mut map) = self.connections.lock() {
            map.remove(&id);
        }
    }

    /// Asks the verifier to re-check every connection now (after a reload or a revocation).
    pub fn recheck_now(&self) {
        if let Ok(mut ordered) = self.ordered.lock() {
            ordered.get_or_insert_with(std::time::Instant::now);
        }
        self.wake.notify_one();
    }

    pub fn len(&self) -> usize {
        self.connections.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Vec<Arc<Connection>> {
        self.connections
            .lock()
            .map(|m| m.values().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }
}

/// What a tunnel was opened for: re-checked while it is open, as if it were a new request.
#[derive(Clone)]
pub struct TunnelOrigin {
    pub host: String,
    pub path: String,
    pub method: http::Method,
    /// The session the upgrade request came with, on login routes.
    pub session: Option<Session>,
}

/// An open tunnel on a connection.
pub struct TunnelSession {
    pub id: u64,
    pub origin: TunnelOrigin,
}

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

/// One pass over every live connection.
pub async fn sweep(shared: &Shared) {
    let ordered = shared.live.ordered.lock().ok().and_then(|mut o| o.take());
    let snapshot = shared.snapshot.load_full();
    let now = crate::identity::now();
    let unix_now = rustls::pki_types::UnixTime::now();
    for conn in shared.live.snapshot() {
        if conn.kill.is_cancelled() {
            continue;
        }
        let reason =
            if now >= conn.peer.not_after {
                Some("certificate_expired")
            } else if shared.revocations.device(&conn.peer.fingerprint_hex) {
                Some("device_revoked")
            } else if conn.verified_generation() != snapshot.generation {
                // The CAs or CRLs may have changed since this connection was verified.
                let chain = &conn.chain;
                match chain.split_first() {
                    Some((leaf, intermediates)) => match snapshot
                        .client_verifier
                        .verify_client_cert(leaf, intermediates, unix_now)
                    {
                        Ok(_) => {
                            conn.set_verified_generation(snapshot.generation);
                            None
                        }
                        Err(e) => Some(crate::tls::tls_failure_reason(&e)),
                    },
                    None => Some("no_certificate"),
                }
            } else {
                None
            };
        if let Some(reason) = reason {
            cut(shared, &conn, reason);
            observe(shared, ordered);
            continue;
        }
        if let Some(reason) = check_tunnels(shared, &snapshot, &conn, now).await {
            cut(shared, &conn, reason);
            observe(shared, ordered);
        }
    }
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

async fn check_tunnels(
    shared: &Shared,
    snapshot: &crate::config::Snapshot,
    conn: &Connection,
    now: i64,
) -> Option<&'static str> {
    let tunnels: Vec<(u64, TunnelOrigin)> = conn
        .tunnels
        .lock()
        .map(|t| t.iter().map(|t| (t.id, t.origin.clone())).collect())
        .unwrap_or_default();
    for (id, origin) in tunnels {
        let mut session = origin.session.clone();
        if let Some(current) = &session {
            if shared.revocations.session(current).is_some() {
                return Some("session_revoked");
            }
            if now >= current.expires_at {
                return Some("session_expired");
            }
            if let Some(provider) = &snapshot.oidc {
                match shared
                    .reverifier
                    .judge(provider, current, snapshot.verify)
                    .await
                {
                    Verdict::Current | Verdict::Stale { .. } => {}
                    Verdict::Refreshed(fresh) => {
                        if let Ok(mut open) = conn.tunnels.lock() {
                            for t in open.iter_mut().filter(|t| t.id == id) {
                                t.origin.session = Some((*fresh).clone());
                            }
                        }
                        session = Some(*fresh);
                    }
                    Verdict::Refused(Rejected::Ended(_)) => return Some("session_ended"),
                    Verdict::Refused(_) => return Some("session_unverifiable"),
                }
            }
        }
        if let Some(reason) = still_allowed(snapshot, conn, &origin, session.as_ref()) {
            return Some(reason);
        }
    }
    None
}

/// The current configuration's decision for a tunnel, with today's device record and the
/// session's current claims: a tunnel whose request would now be denied is cut.
fn still_allowed(
    snapshot: &crate::config::Snapshot,
    conn: &Connection,
    origin: &TunnelOrigin,
    session: Option<&Session>,
) -> Option<&'static str> {
    if snapshot.audit {
        return None;
    }
    let host = crate::canonical::host_without_port(&origin.host);
    let Some(route) = snapshot.routes.find(host, &origin.path) else {
        return Some("route_removed");
    };
    let mfa_amr = snapshot
        .oidc
        .as_ref()
        .map(|p| p.settings.mfa_amr.clone())
        .unwrap_or_default();
    let identity = session.map(|s| crate::identity::Identity::from_session(s, &mfa_amr));
    let device = snapshot
        .devices
        .as_ref()
        .and_then(|inventory| inventory.lookup(&conn.peer));
    let decision = crate::policy::evaluate(
        &route.policy,
        &crate::policy::RequestFacts {
            method: &origin.method,
            path: &origin.path,
            client_ip: conn.remote.ip(),
            peer: &conn.peer,
            identity: identity.as_ref(),
            device: device.as_ref(),
        },
    );
    (!decision.allow).then_some("policy")
}

/// Closes `conn` now, with a log line and a metric.
pub fn cut(shared: &Shared, conn: &Connection, reason: &'static str) {
    tracing::info!(conn = conn.id, remote = %conn.remote, subject = %conn.peer.subject, reason, "connection cut off: it no longer passes verification");
    shared
        .metrics
        .connections_cut
        .get_or_create(&Reason { reason })
        .inc();
    conn.kill.cancel();
}
