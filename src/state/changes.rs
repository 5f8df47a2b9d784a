//! One change to the state replicas share, as it is stored in Redis and announced on the
//! stream: each names the one entry of the state it puts or removes, and applying it is the
//! same on the replica that made it, on every replica that reads it from the stream, and on
//! one that reads the whole state back after a reconnect.

use super::Shared;
use crate::access::{AccessRequest, Grant, RequestState, Subject};
use crate::anomaly::blocks::Block;
use crate::fleet::{self, Entry, Refused};
use crate::revocation::Revocations;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Weak};

/// How long a person's device stays known to the risk engine after it was last recorded.
const SEEN_KEPT_SECONDS: i64 = 90 * 24 * 3600;
/// How long a request nobody decided is kept in the shared state.
const PENDING_KEPT_SECONDS: i64 = 30 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    RevokeSession {
        sid: String,
    },
    /// A session ended by its person's logout, remembered until its absolute expiry.
    LogOut {
        sid: String,
        until: i64,
    },
    RevokeUser {
        sub: String,
        at: i64,
    },
    RevokeDevice {
        fingerprint: String,
        at: i64,
    },
    RestoreDevice {
        fingerprint: String,
    },
    ProviderLogout {
        sid: Option<String>,
        sub: Option<String>,
        at: i64,
    },
    Grant {
        grant: Grant,
    },
    EndGrant {
        id: String,
    },
    Request {
        request: AccessRequest,
    },
    Block {
        block: Block,
    },
    Lift {
        subject: Subject,
    },
    /// The risk engine saw `user` on `device`.
    Seen {
        user: String,
        device: String,
        at: i64,
    },
}

/// What a change does to the stored state: the entry it puts (and when the entry may be
/// dropped, Unix seconds) or removes.
pub enum Slot {
    Put { field: String, expires: Option<i64> },
    Remove { field: String },
}

impl Change {
    pub fn slot(&self) -> Slot {
        let put = |field: String, expires: Option<i64>| Slot::Put { field, expires };
        match self {
            Change::RevokeSession { sid } => put(format!("session:{sid}"), None),
            Change::LogOut { sid, until } => put(format!("logout:{sid}"), Some(*until)),
            Change::RevokeUser { sub, .. } => put(format!("user:{sub}"), None),
            Change::RevokeDevice { fingerprint, .. } => put(format!("device:{fingerprint}"), None),
            Change::RestoreDevice { fingerprint } => Slot::Remove {
                field: format!("device:{fingerprint}"),
            },
            Change::ProviderLogout { sid, sub, .. } => put(
                format!(
                    "idp:{}|{}",
                    sid.as_deref().unwrap_or(""),
                    sub.as_deref().unwrap_or("")
                ),
                None,
            ),
            Change::Grant { grant } => put(format!("grant:{}", grant.id), Some(grant.expires_at)),
            Change::EndGrant { id } => Slot::Remove {
                field: format!("grant:{id}"),
            },
            Change::Request { request } => {
                let kept = match &request.state {
                    RequestState::Pending => request.created_at + PENDING_KEPT_SECONDS,
                    RequestState::Approved { at, .. } | RequestState::Refused { at, .. } => {
                        at + crate::access::DECIDED_KEPT_SECONDS
                    }
                };
                put(format!("request:{}", request.id), Some(kept))
            }
            Change::Block { block } => {
                put(format!("block:{}", block.subject.key()), Some(block.until))
            }
            Change::Lift { subject } => Slot::Remove {
                field: format!("block:{}", subject.key()),
            },
            Change::Seen { user, device, at } => put(
                format!("seen:{user}|{device}"),
                Some(at + SEEN_KEPT_SECONDS),
            ),
        }
    }

    /// The change as the shared state stores and announces it.
    pub fn entry(&self) -> Entry {
        if let Change::Block { block } = self {
            return crate::anomaly::blocks::entry(block);
        }
        let json = serde_json::to_string(self).unwrap_or_default();
        match self.slot() {
            Slot::Put { field, expires } => Entry::put(field, json, expires),
            Slot::Remove { field } => Entry::remove(field, json),
        }
    }

    /// Whether the change can only take access away (or is harmless): such a change takes
    /// effect on its own replica at once and is written to Redis as soon as it can be, retried
    /// until it is. A change that lets someone in is written to Redis first, and refused when
    /// it cannot be.
    pub fn restricts(&self) -> bool {
        !matches!(
            self,
            Change::RestoreDevice { .. }
                | Change::Grant { .. }
                | Change::Request { .. }
                | Change::Lift { .. }
        )
    }
}

/// Makes a change that takes access away (or is harmless): in force here at once, and
/// written to the shared state and announced to the other replicas as soon as Redis answers.
pub fn announce(shared: &Shared, change: Change) {
    debug_assert!(change.restricts());
    apply(shared, &change, crate::identity::now());
    shared.fleet.announce(change.entry());
}

/// Makes changes that let someone in: written to the shared state first (when `expect`, an
/// entry and what it must hold now, still holds), then in force here. Refused when the shared
/// state cannot be written.
pub async fn commit(
    shared: &Shared,
    changes: &[Change],
    expect: Option<(&Change, Option<&Change>)>,
) -> Result<(), Refused> {
    let entries: Vec<Entry> = changes.iter().map(Change::entry).collect();
    let expect = expect.map(|(of, holds)| (of.entry().field, holds.map(|c| c.entry())));
    let expect_ref = expect.as_ref().map(|(field, holds)| {
        (
            field.as_str(),
            holds.as_ref().and_then(|e| e.value.as_deref()),
        )
    });
    shared.fleet.commit(&entries, expect_ref).await?;
    let now = crate::identity::now();
    for change in changes {
        apply(shared, change, now);
    }
    Ok(())
}

/// Applies a change made elsewhere (another replica, or read back from Redis) to this
/// replica's state. No event is written or announced here: the replica that made the change
/// did that. Open connections are checked again when the change can take access away.
pub fn apply(shared: &Shared, change: &Change, now: i64) {
    apply_to(&shared.revocations, shared, change, now);
    if change.restricts() {
        shared.live.recheck_now();
    }
}

fn apply_to(revocations: &Revocations, shared: &Shared, change: &Change, now: i64) {
    match change.clone() {
        Change::RevokeSession { sid } => revocations.revoke_session(&sid),
        Change::LogOut { sid, until } => revocations.log_out_session(&sid, until, now),
        Change::RevokeUser { sub, at } => revocations.revoke_user(&sub, at),
        Change::RevokeDevice { fingerprint, at } => revocations.revoke_device(&fingerprint, at),
        Change::RestoreDevice { fingerprint } => {
            revocations.restore_device(&fingerprint);
        }
        Change::ProviderLogout { sid, sub, at } => {
            revocations.provider_logout(sid.as_deref(), sub.as_deref(), at);
        }
        Change::Grant { grant } => shared.access.put_grant(grant, now),
        Change::EndGrant { id } => {
            shared.access.revoke(&id);
        }
        Change::Request { request } => shared.access.put_request(request, now),
        Change::Block { block } => {
            shared.blocks.block(block);
            crate::anomaly::detect::observe_blocks(&shared.acting());
        }
        Change::Lift { subject } => {
            shared.blocks.lift(&subject);
            crate::anomaly::detect::observe_blocks(&shared.acting());
        }
        Change::Seen { user, device, .. } => {
            shared.posture.first_seen(&user, &device, true);
        }
    }
}

/// Replaces this replica's shared state with `changes`, the whole state read back from
/// Redis, then applies `pending` (this replica's changes not yet written there) again.
fn replace(shared: &Shared, changes: &[Change], pending: &[Change], now: i64) {
    let revocations = Revocations::default();
    let mut grants: Vec<Grant> = Vec::new();
    let mut requests: Vec<AccessRequest> = Vec::new();
    let mut blocks: Vec<Block> = Vec::new();
    for change in changes {
        match change {
            Change::Grant { grant } => grants.push(grant.clone()),
            Change::Request { request } => requests.push(request.clone()),
            Change::Block { block } => blocks.push(block.clone()),
            Change::Seen { user, device, .. } => {
                shared.posture.first_seen(user, device, true);
            }
            other => apply_to(&revocations, shared, other, now),
        }
    }
    shared.revocations.replace(revocations.listing());
    shared.access.replace(grants, requests, now);
    shared.blocks.replace(blocks, now);
    for change in pending {
        apply_to(&shared.revocations, shared, change, now);
    }
    crate::anomaly::detect::observe_blocks(&shared.acting());
    shared.live.recheck_now();
}

/// Every change in force here that takes access away: what a Redis that lost the state is
/// given back.
fn restrictive(shared: &Shared, now: i64) -> Vec<Change> {
    let l = shared.revocations.listing();
    let mut changes: Vec<Change> = Vec::new();
    changes.extend(
        l.sessions
            .into_iter()
            .map(|sid| Change::RevokeSession { sid }),
    );
    changes.extend(
        l.logged_out
            .into_iter()
            .map(|(sid, until)| Change::LogOut { sid, until }),
    );
    changes.extend(
        l.users
            .into_iter()
            .map(|(sub, at)| Change::RevokeUser { sub, at }),
    );
    changes.extend(
        l.devices
            .into_iter()
            .map(|(fingerprint, at)| Change::RevokeDevice { fingerprint, at }),
    );
    changes.extend(
        l.provider_sessions
            .into_iter()
            .map(|sid| Change::ProviderLogout {
                sid: Some(sid),
                sub: None,
                at: now,
            }),
    );
    changes.extend(
        l.provider_logouts
            .into_iter()
            .map(|(sub, at)| Change::ProviderLogout {
                sid: None,
                sub: Some(sub),
                at,
            }),
    );
    changes.extend(
        shared
            .blocks
            .list(now)
            .into_iter()
            .map(|block| Change::Block { block }),
    );
    changes
}

/// This replica, as the shared state acts on it.
pub struct Replica(pub Weak<Shared>);

fn read(json: &str) -> Option<Change> {
    match serde_json::from_str(json) {
        Ok(change) => Some(change),
        Err(e) => {
            tracing::warn!(error = %e, "shared state: a change could not be read; ignored");
            None
        }
    }
}

impl fleet::Sink for Replica {
    fn replace(&self, values: &[String], pending: &[Entry]) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        let changes: Vec<Change> = values.iter().filter_map(|v| read(v)).collect();
        let pending: Vec<Change> = pending.iter().filter_map(|e| read(&e.event)).collect();
        replace(&shared, &changes, &pending, crate::identity::now());
    }

    fn apply(&self, event: &str) {
        if let (Some(shared), Some(change)) = (self.0.upgrade(), read(event)) {
            apply(&shared, &change, crate::identity::now());
        }
    }

    fn recheck(&self) {
        if let Some(shared) = self.0.upgrade() {
            shared.live.recheck_now();
        }
    }

    fn keys(&self) -> String {
        let Some(shared) = self.0.upgrade() else {
            return String::new();
        };
        shared.snapshot.load().key_ids()
    }

    fn restrictive(&self) -> Vec<Entry> {
        let Some(shared) = self.0.upgrade() else {
            return Vec::new();
        };
        restrictive(&shared, crate::identity::now())
            .iter()
            .map(Change::entry)
            .collect()
    }

    fn fire(&self, fire: &fleet::Fire, total: u32, at: i64) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        let Ok(subject) = serde_json::from_str::<Subject>(&fire.subject) else {
            return;
        };
        let snapshot = shared.snapshot.load();
        if let Some(detectors) = &snapshot.detectors {
            detectors.fire_for_fleet(&shared.acting(), fire.detector, subject, total, at);
        }
    }
}

/// Starts sharing `shared`'s state with the other replicas, when `[state]` says so.
pub fn start(shared: &Arc<Shared>, stop: tokio_util::sync::CancellationToken) {
    shared
        .fleet
        .start(Arc::new(Replica(Arc::downgrade(shared))), stop);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_reads_back_as_written() {
        let changes = [
            Change::RevokeSession { sid: "s".into() },
            Change::LogOut {
                sid: "s".into(),
                until: 9,
            },
            Change::ProviderLogout {
                sid: None,
                sub: Some("bob".into()),
                at: 3,
            },
            Change::Lift {
                subject: Subject::Address("127.0.0.1".parse().unwrap()),
            },
            Change::Request {
                request: AccessRequest {
                    id: "r".into(),
                    route: "db".into(),
                    subject: "bob".into(),
                    requester: "bob@example.com".into(),
                    reason: "incident".into(),
                    duration: 60,
                    created_at: 1,
                    state: RequestState::Approved {
                        by: "alice".into(),
                        at: 2,
                        grant: "g".into(),
                    },
                },
            },
        ];
        for change in changes {
            let text = serde_json::to_string(&change).unwrap();
            let back: Change = serde_json::from_str(&text).unwrap();
            assert_eq!(back, change, "{text}");
        }
    }
}
