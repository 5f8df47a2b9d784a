//! Just-in-time access: grants that give a subject (a user, a group, a SPIFFE ID or a device)
//! a route for a bounded time, for a reason, approved by someone; and the access requests
//! people make themselves, waiting for an approver.
//!
//! Grants are facts of the decision (the facts document's `grants`): a rule with
//! `grant = true` or a Rego policy may require them. They end on their own at `expires_at`, or
//! when revoked; what they allowed is then cut off by the live verifier. Kept in memory, per
//! replica, bounded in number.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::Notify;

/// A route's `grants`: how long a grant may last and who approves requests for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantSettings {
    /// Seconds.
    pub max: u64,
    /// Seconds; what the request form offers first.
    pub default: u64,
    pub approver_groups: Vec<String>,
    /// Emails (lower case) or subjects.
    pub approver_users: Vec<String>,
}

impl GrantSettings {
    /// True when the person `subject` (with `email` and `groups`) approves requests here.
    pub fn approves(&self, subject: &str, email: Option<&str>, groups: &[String]) -> bool {
        self.approver_groups.iter().any(|g| groups.contains(g))
            || self
                .approver_users
                .iter()
                .any(|u| u == subject || email.is_some_and(|e| e.eq_ignore_ascii_case(u)))
    }
}

/// Who a grant or a block is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Subject {
    /// A person: their subject (`sub`) or email address (compared without case).
    User(String),
    /// Everyone in a group of the provider's `groups` claim.
    Group(String),
    /// A workload's SPIFFE ID.
    Spiffe(String),
    /// A device certificate's SHA-256 fingerprint, hex.
    Device(String),
    /// A source address (blocks only).
    Address(std::net::IpAddr),
}

impl Subject {
    /// The kind, as metrics and logs name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::User(_) => "user",
            Subject::Group(_) => "group",
            Subject::Spiffe(_) => "spiffe",
            Subject::Device(_) => "device",
            Subject::Address(_) => "address",
        }
    }

    /// `kind:value`, as the admin API and alerts name a subject.
    pub fn key(&self) -> String {
        match self {
            Subject::User(v) | Subject::Group(v) | Subject::Spiffe(v) | Subject::Device(v) => {
                format!("{}:{v}", self.kind())
            }
            Subject::Address(a) => format!("address:{a}"),
        }
    }

    /// The normal form: device fingerprints in lower case without colons.
    pub fn normalised(self) -> Self {
        match self {
            Subject::Device(d) => Subject::Device(d.replace(':', "").to_ascii_lowercase()),
            Subject::Address(a) => Subject::Address(a.to_canonical()),
            other => other,
        }
    }

    /// Why the subject cannot be one of a grant, if it cannot: what each kind must look like.
    pub fn invalid_for_grant(&self) -> Option<&'static str> {
        match self {
            Subject::User(v) | Subject::Group(v) if v.trim().is_empty() => {
                Some("a user or group subject is not empty")
            }
            Subject::Spiffe(id) if !id.starts_with("spiffe://") || id.len() <= 9 => {
                Some("a spiffe subject is a SPIFFE ID like spiffe://example.org/ns/a/sa/b")
            }
            Subject::Device(fp) if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some("a device subject is a SHA-256 certificate fingerprint in hex")
            }
            Subject::Address(_) => Some("a grant cannot be for a source address"),
            _ => None,
        }
    }

    /// True when the subject names `who`.
    pub fn matches(&self, who: &Who<'_>) -> bool {
        match self {
            Subject::User(u) => {
                who.user.is_some_and(|sub| sub == u)
                    || who.email.is_some_and(|e| e.eq_ignore_ascii_case(u))
            }
            Subject::Group(g) => who.groups.iter().any(|have| have == g),
            Subject::Spiffe(id) => who.spiffe == Some(id.as_str()),
            Subject::Device(d) => who.device == d,
            Subject::Address(a) => who.address == Some(*a),
        }
    }
}

/// Everything a request says about who is asking, for matching grants and blocks.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    /// The person's subject, when signed in (or a bearer token's).
    pub user: Option<&'a str>,
    pub email: Option<&'a str>,
    pub groups: &'a [String],
    pub spiffe: Option<&'a str>,
    /// The client certificate's fingerprint, lower-case hex.
    pub device: &'a str,
    pub address: Option<std::net::IpAddr>,
}

/// One grant: `subject` may use `route` until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub id: String,
    pub subject: Subject,
    pub route: String,
    pub reason: String,
    /// Who asked: a person's email or subject, or the admin caller.
    pub requested_by: String,
    /// Who approved: an approver's email or subject, or the admin caller.
    pub approved_by: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; the grant no longer holds from then on.
    pub expires_at: i64,
    /// The access request it came from, when it came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

/// What an access request is waiting for, or how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum RequestState {
    Pending,
    Approved { by: String, at: i64, grant: String },
    Refused { by: String, at: i64 },
}

/// A person asking for a route for some time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequest {
    pub id: String,
    pub route: String,
    /// The person's subject.
    pub subject: String,
    /// How the person is named on pages and in grants: email, else subject.
    pub requester: String,
    pub reason: String,
    /// Seconds asked for.
    pub duration: u64,
    pub created_at: i64,
    #[serde(flatten)]
    pub state: RequestState,
}

/// Why a grant or an access request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("{0} grants are active, the most there may be")]
    TooManyGrants(usize),
    #[error("{0} access requests are pending, the most there may be")]
    TooManyRequests(usize),
    #[error("no access request {0}")]
    NoRequest(String),
    #[error("access request {0} was already decided")]
    AlreadyDecided(String),
    #[error("nobody approves their own access request")]
    OwnRequest,
}

/// Grants in force at most, and access requests kept at most.
pub const MAX_GRANTS: usize = 10_000;
pub const MAX_REQUESTS: usize = 10_000;
/// Pending requests one person may have at once.
pub const MAX_PENDING_PER_PERSON: usize = 10;
/// How long a decided request stays listed for its requester.
pub const DECIDED_KEPT_SECONDS: i64 = 24 * 3600;

/// The grants in force and the access requests, for the life of the process.
#[derive(Default)]
pub struct Access {
    /// Fast path: no grant was ever made.
    any: AtomicBool,
    grants: RwLock<Vec<Arc<Grant>>>,
    requests: RwLock<VecDeque<AccessRequest>>,
    /// Woken when a grant is made or ends, so the expiry task sleeps until the next expiry.
    pub changed: Notify,
    /// Held while a change that lets someone in (a grant, an approval) is checked, written
    /// to the shared state and applied, so two of them never decide on the same request.
    pub writing: tokio::sync::Mutex<()>,
}

/// A random id: 16 hex digits.
pub fn new_id() -> String {
    let mut random = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut random);
    crate::hex::encode(&random)
}

impl Access {
    /// Adds `grant`, unless too many are in force.
    pub fn grant(&self, grant: Grant) -> Result<Arc<Grant>, AccessError> {
        let grant = Arc::new(grant);
        let mut grants = self.grants.write().unwrap_or_else(|e| e.into_inner());
        if grants.len() >= MAX_GRANTS {
            return Err(AccessError::TooManyGrants(grants.len()));
        }
        grants.push(grant.clone());
        self.any.store(true, Ordering::Release);
        drop(grants);
        self.changed.notify_one();
        Ok(grant)
    }

    /// Ends grant `id` now; the ended grant, if there was one.
    pub fn revoke(&self, id: &str) -> Option<Arc<Grant>> {
        let mut grants = self.grants.write().unwrap_or_else(|e| e.into_inner());
        let at = grants.iter().position(|g| g.id == id)?;
        let ended = grants.swap_remove(at);
        drop(grants);
        self.changed.notify_one();
        Some(ended)
    }

    /// Removes the grants expired at `now` and returns them.
    pub fn expire(&self, now: i64) -> Vec<Arc<Grant>> {
        if !self.any.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut grants = self.grants.write().unwrap_or_else(|e| e.into_inner());
        let (ended, kept): (Vec<_>, Vec<_>) = grants.drain(..).partition(|g| g.expires_at <= now);
        *grants = kept;
        ended
    }

    /// When the next grant expires.
    pub fn next_expiry(&self) -> Option<i64> {
        let grants = self.grants.read().unwrap_or_else(|e| e.into_inner());
        grants.iter().map(|g| g.expires_at).min()
    }

    /// The grants in force at `now`.
    pub fn list(&self, now: i64) -> Vec<Arc<Grant>> {
        let grants = self.grants.read().unwrap_or_else(|e| e.into_inner());
        grants
            .iter()
            .filter(|g| g.expires_at > now)
            .cloned()
            .collect()
    }

    /// Is a grant with this id in force at `now`?
    pub fn holds(&self, id: &str, now: i64) -> bool {
        let grants = self.grants.read().unwrap_or_else(|e| e.into_inner());
        grants.iter().any(|g| g.id == id && g.expires_at > now)
    }

    /// The grants in force at `now` for `who` on `route`, soonest expiry last. Empty (and no
    /// lock taken) while no grant was ever made.
    pub fn active(&self, route: &str, who: &Who<'_>, now: i64) -> Vec<Grant> {
        if !self.any.load(Ordering::Acquire) {
            return Vec::new();
        }
        let grants = self.grants.read().unwrap_or_else(|e| e.into_inner());
        let mut found: Vec<Grant> = grants
            .iter()
            .filter(|g| g.route == route && g.expires_at > now && g.subject.matches(who))
            .map(|g| (**g).clone())
            .collect();
        // The one that lasts longest first: an allow rests on it.
        found.sort_by_key(|g| std::cmp::Reverse(g.expires_at));
        found
    }

    /// Records a person's request for `route`, and whether it is new. A pending request of the
    /// same person for the same route is updated instead (reason and duration), so asking
    /// twice makes one request.
    pub fn ask(
        &self,
        mut request: AccessRequest,
        now: i64,
    ) -> Result<(AccessRequest, bool), AccessError> {
        let mut requests = self.requests.write().unwrap_or_else(|e| e.into_inner());
        requests.retain(|r| {
            r.state == RequestState::Pending || decided_at(r) + DECIDED_KEPT_SECONDS > now
        });
        if let Some(existing) = requests.iter_mut().find(|r| {
            r.state == RequestState::Pending
                && r.subject == request.subject
                && r.route == request.route
        }) {
            existing.reason = request.reason;
            existing.duration = request.duration;
            return Ok((existing.clone(), false));
        }
        let pending = |r: &&AccessRequest| r.state == RequestState::Pending;
        if requests
            .iter()
            .filter(pending)
            .filter(|r| r.subject == request.subject)
            .count()
            >= MAX_PENDING_PER_PERSON
        {
            return Err(AccessError::TooManyRequests(MAX_PENDING_PER_PERSON));
        }
        if requests.len() >= MAX_REQUESTS {
            // Decided requests make room first; pending ones are never dropped.
            match requests
                .iter()
                .position(|r| r.state != RequestState::Pending)
            {
                Some(at) => {
                    requests.remove(at);
                }
                None => return Err(AccessError::TooManyRequests(requests.len())),
            }
        }
        request.state = RequestState::Pending;
        requests.push_back(request.clone());
        Ok((request, true))
    }

    /// Puts `grant` in force as it is, replacing one with the same id: a grant made on
    /// another replica, or read back from the shared state. An expired one is ignored.
    pub fn put_grant(&self, grant: Grant, now: i64) {
        if grant.expires_at <= now {
            return;
        }
        let mut grants = self.grants.write().unwrap_or_else(|e| e.into_inner());
        grants.retain(|g| g.id != grant.id);
        if grants.len() < MAX_GRANTS {
            grants.push(Arc::new(grant));
            self.any.store(true, Ordering::Release);
        }
        drop(grants);
        self.changed.notify_one();
    }

    /// Puts `request` in as it stands, replacing one with the same id.
    pub fn put_request(&self, request: AccessRequest, now: i64) {
        let mut requests = self.requests.write().unwrap_or_else(|e| e.into_inner());
        requests.retain(|r| {
            r.id != request.id
                && (r.state == RequestState::Pending || decided_at(r) + DECIDED_KEPT_SECONDS > now)
        });
        if requests.len() >= MAX_REQUESTS {
            requests.pop_front();
        }
        requests.push_back(request);
    }

    /// Replaces every grant and request with `grants` and `requests` (the shared state as
    /// read back whole after a reconnect).
    pub fn replace(&self, grants: Vec<Grant>, mut requests: Vec<AccessRequest>, now: i64) {
        let mut kept: Vec<Arc<Grant>> = grants
            .into_iter()
            .filter(|g| g.expires_at > now)
            .map(Arc::new)
            .collect();
        kept.truncate(MAX_GRANTS);
        requests.sort_by_key(|r| r.created_at);
        if !kept.is_empty() {
            self.any.store(true, Ordering::Release);
        }
        *self.grants.write().unwrap_or_else(|e| e.into_inner()) = kept;
        let mut list = self.requests.write().unwrap_or_else(|e| e.into_inner());
        *list = requests.into_iter().collect();
        while list.len() > MAX_REQUESTS {
            list.pop_front();
        }
        drop(list);
        self.changed.notify_one();
    }

    /// What asking would record, without recording it: the person's pending request for the
    /// route updated, or `request` as a new one, and whether it is new.
    pub fn plan_ask(
        &self,
        mut request: AccessRequest,
        now: i64,
    ) -> Result<(AccessRequest, bool), AccessError> {
        let requests = self.requests.read().unwrap_or_else(|e| e.into_inner());
        let pending = |r: &&AccessRequest| r.state == RequestState::Pending;
        if let Some(existing) = requests
            .iter()
            .filter(pending)
            .find(|r| r.subject == request.subject && r.route == request.route)
        {
            let mut updated = existing.clone();
            updated.reason = request.reason;
            updated.duration = request.duration;
            return Ok((updated, false));
        }
        let mine = requests
            .iter()
            .filter(pending)
            .filter(|r| r.subject == request.subject)
            .count();
        if mine >= MAX_PENDING_PER_PERSON {
            return Err(AccessError::TooManyRequests(MAX_PENDING_PER_PERSON));
        }
        let open = requests
            .iter()
            .filter(|r| {
                r.state == RequestState::Pending || decided_at(r) + DECIDED_KEPT_SECONDS > now
            })
            .count();
        if open >= MAX_REQUESTS && requests.iter().all(|r| r.state == RequestState::Pending) {
            return Err(AccessError::TooManyRequests(open));
        }
        request.state = RequestState::Pending;
        Ok((request, true))
    }

    /// How many grants are kept (some may have just expired).
    pub fn grant_count(&self) -> usize {
        self.grants.read().map(|g| g.len()).unwrap_or(0)
    }

    /// The request `id`, as it stands.
    pub fn request(&self, id: &str) -> Option<AccessRequest> {
        let requests = self.requests.read().unwrap_or_else(|e| e.into_inner());
        requests.iter().find(|r| r.id == id).cloned()
    }

    /// Every request kept, oldest first.
    pub fn requests(&self) -> Vec<AccessRequest> {
        let requests = self.requests.read().unwrap_or_else(|e| e.into_inner());
        requests.iter().cloned().collect()
    }

    /// Decides pending request `id` by `approver` (a person's subject, and how they are
    /// named): `approve` makes the grant `make` builds from it; else it is refused.
    pub fn settle(
        &self,
        id: &str,
        approver: (&str, &str),
        approve: bool,
        now: i64,
        make: impl FnOnce(&AccessRequest) -> Grant,
    ) -> Result<(AccessRequest, Option<Arc<Grant>>), AccessError> {
        let mut requests = self.requests.write().unwrap_or_else(|e| e.into_inner());
        let request = requests
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or_else(|| AccessError::NoRequest(id.to_owned()))?;
        if request.state != RequestState::Pending {
            return Err(AccessError::AlreadyDecided(id.to_owned()));
        }
        if request.subject == approver.0 {
            return Err(AccessError::OwnRequest);
        }
        let by = approver.1.to_owned();
        if !approve {
            request.state = RequestState::Refused { by, at: now };
            return Ok((request.clone(), None));
        }
        let grant = self.grant(make(request))?;
        request.state = RequestState::Approved {
            by,
            at: now,
            grant: grant.id.clone(),
        };
        Ok((request.clone(), Some(grant)))
    }
}

fn decided_at(r: &AccessRequest) -> i64 {
    match &r.state {
        RequestState::Pending => r.created_at,
        RequestState::Approved { at, .. } | RequestState::Refused { at, .. } => *at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who<'a>(user: &'a str, groups: &'a [String]) -> Who<'a> {
        Who {
            user: Some(user),
            email: Some("Bob@Example.com"),
            groups,
            spiffe: None,
            device: "ab12",
            address: None,
        }
    }

    fn grant(id: &str, subject: Subject, expires_at: i64) -> Grant {
        Grant {
            id: id.into(),
            subject,
            route: "db".into(),
            reason: "incident".into(),
            requested_by: "bob".into(),
            approved_by: "alice".into(),
            created_at: 0,
            expires_at,
            request: None,
        }
    }

    #[test]
    fn grants_match_their_subject_route_and_time() {
        let access = Access::default();
        let groups = vec!["eng".to_owned()];
        assert!(access.active("db", &who("bob", &groups), 10).is_empty());
        access
            .grant(grant("1", Subject::User("bob@example.com".into()), 100))
            .unwrap();
        access
            .grant(grant("2", Subject::Group("eng".into()), 200))
            .unwrap();
        access
            .grant(grant("3", Subject::Device("ab12".into()), 50))
            .unwrap();
        let found = access.active("db", &who("bob", &groups), 10);
        assert_eq!(
            found.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
            ["2", "1", "3"]
        );
        assert!(access.active("other", &who("bob", &groups), 10).is_empty());
        assert_eq!(access.active("db", &who("carol", &[]), 60).len(), 1);
        assert_eq!(access.expire(100).len(), 2);
        assert_eq!(access.next_expiry(), Some(200));
        assert!(access.revoke("2").is_some());
        assert!(access.revoke("2").is_none());
        assert!(access.list(0).is_empty());
    }

    fn request(id: &str, subject: &str) -> AccessRequest {
        AccessRequest {
            id: id.into(),
            route: "db".into(),
            subject: subject.into(),
            requester: subject.into(),
            reason: "r".into(),
            duration: 60,
            created_at: 0,
            state: RequestState::Pending,
        }
    }

    #[test]
    fn requests_wait_for_someone_else() {
        let access = Access::default();
        access.ask(request("r1", "bob"), 0).unwrap();
        // Asking again updates the pending request.
        let (again, new) = access.ask(request("r2", "bob"), 0).unwrap();
        assert_eq!(again.id, "r1");
        assert!(!new);
        let make = |r: &AccessRequest| grant("g", Subject::User(r.subject.clone()), 60);
        assert_eq!(
            access.settle("r1", ("bob", "bob"), true, 1, make),
            Err(AccessError::OwnRequest)
        );
        let (done, made) = access
            .settle("r1", ("alice", "alice"), true, 1, make)
            .unwrap();
        assert!(matches!(done.state, RequestState::Approved { .. }));
        assert_eq!(made.unwrap().id, "g");
        assert_eq!(
            access.settle("r1", ("carol", "carol"), false, 2, make),
            Err(AccessError::AlreadyDecided("r1".into()))
        );
        assert!(matches!(
            access.settle("nope", ("carol", "carol"), false, 2, make),
            Err(AccessError::NoRequest(_))
        ));
    }

    #[test]
    fn one_person_has_few_pending_requests() {
        let access = Access::default();
        for i in 0..MAX_PENDING_PER_PERSON {
            let mut r = request(&format!("r{i}"), "mallory");
            r.route = format!("route{i}");
            access.ask(r, 0).unwrap();
        }
        let mut r = request("rx", "mallory");
        r.route = "another".into();
        assert!(matches!(
            access.ask(r, 0),
            Err(AccessError::TooManyRequests(_))
        ));
    }
}
