//! The assess phase: what the inventory says of the device, where the request comes from, and
//! the risk level with the signals behind it. The live verifier assesses what stays open the
//! same way.

use crate::access::Who;
use crate::anomaly::detect::Seen;
use crate::config::Snapshot;
use crate::connection::Connection;
use crate::identity::Identity;
use crate::posture::{self, Assessment, inventory::Device};
use crate::state::Shared;

/// What assessing a request found.
#[derive(Debug, Default)]
pub struct Assessed {
    /// The inventory's record of the device; `None` when there is no inventory, the device is
    /// not in it, or the inventory is stale.
    pub device: Option<Device>,
    /// The source's country, when `[risk] geoip` is configured and knows it.
    pub country: Option<String>,
    /// `None` when `[risk]` is not configured.
    pub risk: Option<Assessment>,
    /// The grants in force for the subject on the route.
    pub grants: Vec<crate::access::Grant>,
    /// The block in force on the subject, if one is.
    pub block: Option<crate::anomaly::blocks::Block>,
    /// How current the replica's copy of the shared state is; `None` in memory.
    pub shared_state: Option<crate::fleet::Standing>,
}

/// Assesses an identified request as the pipeline does: its identity and risk are told to
/// the context for the decision line. Returns the moment of the decision with what it found.
pub fn identified(
    cx: &mut super::Context<'_>,
    identity: Option<&std::sync::Arc<Identity>>,
) -> (i64, Assessed) {
    cx.identity = identity.cloned();
    let identity = identity.map(|i| &**i);
    let now = crate::identity::now();
    let route = cx.route.as_ref().map(|r| r.name.as_str());
    let mut assessed = assess(cx.shared, cx.snapshot, cx.conn, identity, route, now, true);
    let seen = Seen::Request {
        country: assessed.country.as_deref(),
    };
    if cx
        .shared
        .detect(cx.snapshot, seen, &who(cx.conn, identity), now)
    {
        // A detector fired on this very request: its block or risk signal applies to it.
        assessed = assess(cx.shared, cx.snapshot, cx.conn, identity, route, now, false);
    }
    cx.risk.clone_from(&assessed.risk);
    (now, assessed)
}

/// Who `identity` on `conn` is, for grants and blocks.
pub fn who<'a>(conn: &'a Connection, identity: Option<&'a Identity>) -> Who<'a> {
    Who {
        user: identity.map(|i| i.subject.as_str()),
        email: identity.and_then(|i| i.email.as_deref()),
        groups: identity.map_or(&[], |i| i.groups.as_slice()),
        spiffe: conn.peer.spiffe_id.as_deref(),
        device: &conn.peer.fingerprint_hex,
        address: Some(conn.remote.ip()),
    }
}

/// Assesses a request (or an open stream) from `conn` by `identity` for `route` at `now`.
/// `remember` notes the device as seen for the user: a request does; a `whoami` look and the
/// verifier do not.
pub fn assess(
    shared: &Shared,
    snapshot: &Snapshot,
    conn: &Connection,
    identity: Option<&Identity>,
    route: Option<&str>,
    now: i64,
    remember: bool,
) -> Assessed {
    let device = snapshot
        .devices
        .as_ref()
        .and_then(|inventory| inventory.lookup(&conn.peer));
    let who = who(conn, identity);
    let grants = route.map_or_else(Vec::new, |r| shared.access.active(r, &who, now));
    let block = shared.blocks.find(&who, now);
    let shared_state = shared.fleet.standing();
    let Some(settings) = snapshot.risk.as_ref() else {
        return Assessed {
            device,
            grants,
            block,
            shared_state,
            ..Assessed::default()
        };
    };
    let raised = shared.detectors.raised(&who, now);
    let source = conn.remote.ip();
    let country = settings.geoip.as_ref().and_then(|g| g.country(source));
    let who = identity.map_or(conn.peer.fingerprint_hex.as_str(), |i| i.subject.as_str());
    let risk = posture::assess(
        settings,
        &posture::RiskFacts {
            now,
            device: device.as_ref(),
            inventory: snapshot.devices.is_some(),
            client_ip: source,
            country: country.as_deref(),
            idp_risk: identity.and_then(|i| i.risk.as_deref()),
            recent_denials: shared.recent_denials(who, now, settings.denial_window),
            first_seen_device: identity.is_some_and(|i| {
                shared.first_seen(&i.subject, &conn.peer.fingerprint_hex, remember)
            }),
            detectors: &raised,
        },
    );
    Assessed {
        device,
        country,
        risk: Some(risk),
        grants,
        block,
        shared_state,
    }
}
