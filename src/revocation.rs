//! Revocations ordered by operators (admin API) or the identity provider (back-channel
//! logout): by session, by user, by device. Checked on every request and by the live
//! connection verifier, so they take effect at once, not at the next interval.
//!
//! Kept in memory, per replica. A revocation of a user ends every session issued to them
//! until now; a later login is new and allowed.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::identity::session::Session;

/// What was revoked, for `GET /revocations`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Listing {
    pub sessions: HashSet<String>,
    pub users: HashMap<String, i64>,
    pub devices: HashMap<String, i64>,
    pub provider_sessions: HashSet<String>,
}

#[derive(Default)]
pub struct Revocations {
    /// Fast path: nothing was ever revoked.
    any: AtomicBool,
    inner: RwLock<Listing>,
}

impl Revocations {
    pub fn revoke_session(&self, sid: &str) {
        self.edit(|l| {
            l.sessions.insert(sid.to_owned());
        });
    }

    /// Ends the user's sessions issued up to `at` (Unix seconds).
    pub fn revoke_user(&self, sub: &str, at: i64) {
        self.edit(|l| {
            l.users.insert(sub.to_owned(), at);
        });
    }

    /// Blocks a device certificate (SHA-256 fingerprint, hex) from `at` on.
    pub fn revoke_device(&self, fingerprint: &str, at: i64) {
        let fingerprint = fingerprint.to_ascii_lowercase();
        self.edit(|l| {
            l.devices.insert(fingerprint, at);
        });
    }

    /// Ends the sessions that came from one provider session (`sid` of a logout token).
    pub fn revoke_provider_session(&self, idp_sid: &str) {
        self.edit(|l| {
            l.provider_sessions.insert(idp_sid.to_owned());
        });
    }

    /// Lifts a device block.
    pub fn restore_device(&self, fingerprint: &str) -> bool {
        let mut removed = false;
        self.edit(|l| {
            removed = l
                .devices
                .remove(&fingerprint.to_ascii_lowercase())
                .is_some()
        });
        removed
    }

    fn edit(&self, f: impl FnOnce(&mut Listing)) {
        if let Ok(mut l) = self.inner.write() {
            f(&mut l);
        }
        self.any.store(true, Ordering::Release);
    }

    /// Why `session` may no longer be used, if it may not.
    pub fn session(&self, session: &Session) -> Option<&'static str> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let l = self.inner.read().ok()?;
        if l.sessions.contains(&session.sid) {
            return Some("session revoked");
        }
        if l.users
            .get(&session.sub)
            .is_some_and(|at| session.issued_at <= *at)
        {
            return Some("user's sessions revoked");
        }
        if let Some(idp_sid) = &session.idp_sid
            && l.provider_sessions.contains(idp_sid)
        {
            return Some("logged out at the identity provider");
        }
        if l.devices.contains_key(&session.device) {
            return Some("device revoked");
        }
        None
    }

    /// Whether a device certificate is blocked.
    pub fn device(&self, fingerprint: &str) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        self.inner
            .read()
            .map(|l| l.devices.contains_key(fingerprint))
            .unwrap_or(false)
    }

    pub fn listing(&self) -> Listing {
        self.inner.read().map(|l| l.clone()).unwrap_or_default()
    }
}
