//! Revocations ordered by operators (admin API), the identity provider (back-channel
//! logout) or the person (logout): by session, by user, by device; and the sign-in states
//! already used at the callback, which no second callback may use. Checked on every request and by the live
//! connection verifier, so they take effect at once, not at the next interval.
//!
//! Kept in memory by each replica; with `[state] backend = "redis"` every change is also
//! written to Redis and announced to the other replicas, which apply it here the same way
//! (see `state::changes`), and a replica that (re)connects reads them all. A revocation of a user ends every session issued to them
//! until now; a later login is new and allowed. A session ended by its person's logout is
//! remembered only until the session's own absolute expiry (after which no copy of its cookie
//! opens anyway), so logouts do not accumulate.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::identity::session::Session;

/// What was revoked, for `GET /revocations`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Listing {
    pub sessions: HashSet<String>,
    /// Sessions ended by a logout, with the session's absolute expiry (Unix seconds), when the
    /// entry is dropped.
    pub logged_out: HashMap<String, i64>,
    pub users: HashMap<String, i64>,
    pub devices: HashMap<String, i64>,
    pub provider_sessions: HashSet<String>,
    /// Back-channel logouts by subject, for sessions that carry no provider session id.
    pub provider_logouts: HashMap<String, i64>,
}

#[derive(Default)]
pub struct Revocations {
    /// Fast path: nothing was ever revoked.
    any: AtomicBool,
    inner: RwLock<Listing>,
    /// Sign-in `state`s whose callback was handled (success or failure).
    pub used_states: crate::identity::oidc::UsedStates,
}

impl Revocations {
    pub fn revoke_session(&self, sid: &str) {
        self.edit(|l| {
            l.sessions.insert(sid.to_owned());
        });
    }

    /// Ends one session at its person's logout: every copy of its cookie is refused from now
    /// on. `expires_at` is the session's absolute expiry; the entry is kept until then, and
    /// expired entries are dropped whenever a logout is recorded.
    pub fn log_out_session(&self, sid: &str, expires_at: i64, now: i64) {
        self.edit(|l| {
            l.logged_out.retain(|_, until| *until > now);
            if expires_at > now {
                l.logged_out.insert(sid.to_owned(), expires_at);
            }
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

    /// A back-channel logout naming provider session `sid` (when given) of user `sub` (when
    /// given), at `at`: the named provider session ends; sessions that carry no provider
    /// session id end when their user matches.
    pub fn provider_logout(&self, sid: Option<&str>, sub: Option<&str>, at: i64) {
        self.edit(|l| {
            if let Some(sid) = sid {
                l.provider_sessions.insert(sid.to_owned());
            }
            if let Some(sub) = sub {
                l.provider_logouts.insert(sub.to_owned(), at);
            }
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
        if l.logged_out.contains_key(&session.sid) {
            return Some("session ended by logout");
        }
        if l.users
            .get(&session.sub)
            .is_some_and(|at| session.issued_at <= *at)
        {
            return Some("user's sessions revoked");
        }
        match &session.idp_sid {
            Some(idp_sid) if l.provider_sessions.contains(idp_sid) => {
                return Some("logged out at the identity provider");
            }
            None if l
                .provider_logouts
                .get(&session.sub)
                .is_some_and(|at| session.issued_at <= *at) =>
            {
                return Some("logged out at the identity provider");
            }
            _ => {}
        }
        if l.devices.contains_key(&session.device) {
            return Some("device revoked");
        }
        None
    }

    /// Whether a credential of `sub` issued at `issued_at` (a bearer token's `iat`) was revoked
    /// with its user.
    pub fn subject(&self, sub: &str, issued_at: i64) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        self.inner
            .read()
            .map(|l| l.users.get(sub).is_some_and(|at| issued_at <= *at))
            .unwrap_or(false)
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

    /// Replaces every revocation with `listing` (the shared state as read back whole); the
    /// sign-in states used here are kept.
    pub fn replace(&self, listing: Listing) {
        let any = listing.sessions.len()
            + listing.logged_out.len()
            + listing.users.len()
            + listing.devices.len()
            + listing.provider_sessions.len()
            + listing.provider_logouts.len()
            > 0;
        if let Ok(mut l) = self.inner.write() {
            *l = listing;
        }
        if any {
            self.any.store(true, Ordering::Release);
        }
    }

    pub fn listing(&self) -> Listing {
        self.inner.read().map(|l| l.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(sid: &str, sub: &str, idp_sid: Option<&str>, issued_at: i64) -> Session {
        Session {
            sid: sid.into(),
            sub: sub.into(),
            email: None,
            name: None,
            groups: vec![],
            amr: vec![],
            acr: None,
            risk: None,
            claims: Default::default(),
            device: "ab".into(),
            issued_at,
            verified_at: issued_at,
            auth_time: None,
            expires_at: i64::MAX,
            last_seen: issued_at,
            refresh_token: None,
            idp_sid: idp_sid.map(str::to_owned),
        }
    }

    #[test]
    fn table() {
        let r = Revocations::default();
        let a = session("s1", "alice", Some("p1"), 100);
        let b = session("s2", "alice", None, 100);
        let c = session("s3", "bob", Some("p3"), 100);
        assert_eq!(r.session(&a), None);
        r.revoke_session("s1");
        assert_eq!(r.session(&a), Some("session revoked"));
        assert_eq!(r.session(&b), None);
        // A provider logout of p3 for bob: bob's p3 session ends; alice's sessions stay.
        r.provider_logout(Some("p3"), Some("bob"), 200);
        assert!(r.session(&c).is_some());
        assert_eq!(r.session(&b), None);
        // Sessions without a provider session id end on a logout for their user.
        r.provider_logout(Some("p9"), Some("alice"), 200);
        assert!(r.session(&b).is_some());
        // A user revocation ends sessions issued up to then, not later ones.
        r.revoke_user("carol", 150);
        assert!(r.session(&session("s4", "carol", None, 120)).is_some());
        assert_eq!(r.session(&session("s5", "carol", Some("x"), 160)), None);
        // A logout ends that session (every copy of its cookie), and is forgotten once the
        // session would have expired anyway.
        let d = session("s6", "dave", None, 100);
        r.log_out_session("s6", 500, 100);
        assert_eq!(r.session(&d), Some("session ended by logout"));
        r.log_out_session("s7", 900, 600);
        assert!(!r.listing().logged_out.contains_key("s6"));
        assert!(r.listing().logged_out.contains_key("s7"));
        r.log_out_session("s8", 100, 600);
        assert!(!r.listing().logged_out.contains_key("s8"));
        r.revoke_device("AB", 1);
        assert!(r.device("ab"));
        assert!(r.restore_device("ab"));
        assert!(!r.device("ab"));
    }
}
