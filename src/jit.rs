//! Just-in-time access, as the admin API and the access pages order it: grants made, asked
//! for, approved, refused, revoked and expired, each checked against the route's `grants`
//! settings, written as a JSON audit event, announced as an alert, and followed at once by the
//! live verifier (what an ended grant allowed is cut).

use crate::access::{AccessError, AccessRequest, Grant, RequestState, Subject, new_id};
use crate::decision_log::{self, bounded};
use crate::state::{Change, Shared, changes};
use serde::Serialize;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The longest reason kept.
pub const MAX_REASON: usize = 500;

/// A grant to make, as the admin API or an approval names it.
#[derive(Debug, Clone)]
pub struct NewGrant {
    pub subject: Subject,
    pub route: String,
    /// Seconds.
    pub duration: u64,
    pub reason: String,
    pub requested_by: String,
    pub approved_by: String,
}

/// Why a grant or a request was refused; each maps to one status of the admin API and the
/// pages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no route {0:?}")]
    NoRoute(String),
    #[error("route {0:?} does not grant just-in-time access")]
    NoGrants(String),
    #[error("a grant on route {route:?} lasts at most {max}s, not {asked}s")]
    TooLong { route: String, max: u64, asked: u64 },
    #[error("a grant lasts longer than zero seconds")]
    TooShort,
    #[error("a reason is required")]
    NoReason,
    #[error("{0} is not an approver of route {1:?}")]
    NotApprover(String, String),
    #[error("{0}")]
    Subject(&'static str),
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The shared state could not be written: nothing was granted.
    #[error(transparent)]
    State(crate::fleet::Refused),
}

impl From<crate::fleet::Refused> for Refused {
    fn from(e: crate::fleet::Refused) -> Self {
        match e {
            crate::fleet::Refused::Conflict => Refused::State(crate::fleet::Refused::Conflict),
            other => Refused::State(other),
        }
    }
}

impl Refused {
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            Refused::NoRoute(_) | Refused::Access(AccessError::NoRequest(_)) => {
                StatusCode::NOT_FOUND
            }
            Refused::NotApprover(..) | Refused::Access(AccessError::OwnRequest) => {
                StatusCode::FORBIDDEN
            }
            Refused::Access(AccessError::AlreadyDecided(_))
            | Refused::State(crate::fleet::Refused::Conflict) => StatusCode::CONFLICT,
            Refused::State(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refused::Access(AccessError::TooManyGrants(_) | AccessError::TooManyRequests(_)) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// Who ordered a change, as the audit event names them.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    /// An admin token's name or certificate, or a person's email (else subject).
    pub name: &'a str,
    /// `token`, `certificate`, `loopback` (admin API) or `session` (the access pages).
    pub via: &'static str,
    pub client: std::net::IpAddr,
}

/// One change to grants or access requests, as written to the admin-action log.
#[derive(Debug, Serialize)]
struct Event<'a> {
    v: u32,
    /// `access`.
    kind: &'static str,
    time: String,
    /// `grant_created`, `grant_revoked`, `grant_expired`, `access_requested`,
    /// `access_approved`, `access_refused`.
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    via: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<std::net::IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grant: Option<&'a Grant>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<&'a AccessRequest>,
}

fn audit(
    shared: &Shared,
    event: &'static str,
    actor: Option<Actor<'_>>,
    grant: Option<&Grant>,
    request: Option<&AccessRequest>,
    announce: bool,
) {
    let line = Event {
        v: decision_log::SCHEMA,
        kind: "access",
        time: decision_log::now_rfc3339(),
        event,
        actor: actor.map(|a| a.name),
        via: actor.map(|a| a.via),
        client: actor.map(|a| a.client),
        grant,
        request,
    };
    shared.admin_actions.record(&line);
    shared
        .metrics
        .access
        .events
        .get_or_create(&crate::metrics::access::Event { event })
        .inc();
    tracing::info!(
        event,
        actor = actor.map(|a| a.name),
        grant = grant.map(|g| g.id.as_str()),
        subject = grant.map(|g| g.subject.key()),
        route = grant
            .map(|g| g.route.as_str())
            .or(request.map(|r| r.route.as_str())),
        "just-in-time access changed"
    );
    if announce {
        alert(shared, event, grant, request);
    }
}

/// Announces a change as an alert (the log, and the webhook when there is one), with the
/// grant and the request as its `detail`.
fn alert(
    shared: &Shared,
    event: &'static str,
    grant: Option<&Grant>,
    request: Option<&AccessRequest>,
) {
    use crate::alerts::{Event, Kind};
    let kind = match event {
        "grant_created" => Kind::GrantCreated,
        "grant_revoked" => Kind::GrantRevoked,
        "grant_expired" => Kind::GrantExpired,
        "access_requested" => Kind::GrantRequested,
        "access_approved" => Kind::GrantApproved,
        _ => Kind::GrantRefused,
    };
    let subject = grant
        .map(|g| g.subject.key())
        .or(request.map(|r| format!("user:{}", r.requester)));
    let route = grant
        .map(|g| g.route.clone())
        .or(request.map(|r| r.route.clone()));
    shared.alerts.send(Event {
        kind,
        subject,
        route,
        detail: serde_json::json!({ "grant": grant, "request": request }),
    });
}

/// The route's grant settings, if it has a route by that name that grants access.
fn settings(shared: &Shared, route: &str) -> Result<crate::access::GrantSettings, Refused> {
    let snapshot = shared.snapshot.load();
    let found = snapshot
        .routes
        .iter()
        .find(|r| r.name == route)
        .ok_or_else(|| Refused::NoRoute(route.to_owned()))?;
    found
        .grants
        .clone()
        .ok_or_else(|| Refused::NoGrants(route.to_owned()))
}

fn check_duration(route: &str, max: u64, asked: u64) -> Result<(), Refused> {
    if asked == 0 {
        return Err(Refused::TooShort);
    }
    if asked > max {
        return Err(Refused::TooLong {
            route: route.to_owned(),
            max,
            asked,
        });
    }
    Ok(())
}

/// Makes a grant (the admin API's `POST /grants`): written to the shared state first, so a
/// grant that other replicas would not know is never made.
pub async fn create(
    shared: &Shared,
    new: NewGrant,
    actor: Actor<'_>,
) -> Result<Arc<Grant>, Refused> {
    let settings = settings(shared, &new.route)?;
    check_duration(&new.route, settings.max, new.duration)?;
    let subject = new.subject.normalised();
    if let Some(why) = subject.invalid_for_grant() {
        return Err(Refused::Subject(why));
    }
    if new.reason.trim().is_empty() {
        return Err(Refused::NoReason);
    }
    let now = crate::identity::now();
    let grant = Grant {
        id: new_id(),
        subject,
        route: new.route,
        reason: bounded(new.reason.trim(), MAX_REASON),
        requested_by: new.requested_by,
        approved_by: new.approved_by,
        created_at: now,
        expires_at: now.saturating_add(new.duration as i64),
        request: None,
    };
    let _writing = shared.access.writing.lock().await;
    let count = shared.access.grant_count();
    if count >= crate::access::MAX_GRANTS {
        return Err(AccessError::TooManyGrants(count).into());
    }
    changes::commit(
        shared,
        &[Change::Grant {
            grant: grant.clone(),
        }],
        None,
    )
    .await?;
    let grant = Arc::new(grant);
    audit(
        shared,
        "grant_created",
        Some(actor),
        Some(&grant),
        None,
        true,
    );
    observe(shared, now);
    Ok(grant)
}

/// Ends grant `id` now, and what it allowed.
pub fn revoke(shared: &Shared, id: &str, actor: Actor<'_>) -> Option<Arc<Grant>> {
    let ended = shared.access.revoke(id)?;
    shared
        .fleet
        .announce(Change::EndGrant { id: id.to_owned() }.entry());
    audit(
        shared,
        "grant_revoked",
        Some(actor),
        Some(&ended),
        None,
        true,
    );
    observe(shared, crate::identity::now());
    shared.live.recheck_now();
    Some(ended)
}

/// The person asking for access, as the pages know them.
#[derive(Debug, Clone, Copy)]
pub struct Person<'a> {
    pub subject: &'a str,
    pub email: Option<&'a str>,
    pub groups: &'a [String],
}

impl Person<'_> {
    /// How pages, grants and events name the person: email, else subject.
    pub fn name(&self) -> &str {
        self.email.unwrap_or(self.subject)
    }
}

/// A person asks for `route` for `duration` seconds.
pub async fn ask(
    shared: &Shared,
    who: Person<'_>,
    route: &str,
    duration: u64,
    reason: &str,
    client: std::net::IpAddr,
) -> Result<AccessRequest, Refused> {
    let settings = settings(shared, route)?;
    check_duration(route, settings.max, duration)?;
    if reason.trim().is_empty() {
        return Err(Refused::NoReason);
    }
    let now = crate::identity::now();
    let _writing = shared.access.writing.lock().await;
    let (request, new) = shared.access.plan_ask(
        AccessRequest {
            id: new_id(),
            route: route.to_owned(),
            subject: who.subject.to_owned(),
            requester: who.name().to_owned(),
            reason: bounded(reason.trim(), MAX_REASON),
            duration,
            created_at: now,
            state: RequestState::Pending,
        },
        now,
    )?;
    let change = Change::Request {
        request: request.clone(),
    };
    changes::commit(shared, std::slice::from_ref(&change), None).await?;
    let actor = Actor {
        name: who.name(),
        via: "session",
        client,
    };
    // Asking again updates the request: written down, not announced again.
    audit(
        shared,
        "access_requested",
        Some(actor),
        None,
        Some(&request),
        new,
    );
    observe(shared, now);
    Ok(request)
}

/// An approver approves (`approve`) or refuses request `id`. Nobody decides their own request,
/// and only the route's approvers decide its requests. The decision is written to the shared
/// state only while the request is still pending there, so two approvers on two replicas never
/// both decide it.
pub async fn settle(
    shared: &Shared,
    who: Person<'_>,
    id: &str,
    approve: bool,
    client: std::net::IpAddr,
) -> Result<(AccessRequest, Option<Arc<Grant>>), Refused> {
    let _writing = shared.access.writing.lock().await;
    let pending = shared
        .access
        .request(id)
        .ok_or_else(|| AccessError::NoRequest(id.to_owned()))?;
    let settings = settings(shared, &pending.route)?;
    if !settings.approves(who.subject, who.email, who.groups) {
        return Err(Refused::NotApprover(
            who.name().to_owned(),
            pending.route.clone(),
        ));
    }
    if pending.state != RequestState::Pending {
        return Err(AccessError::AlreadyDecided(id.to_owned()).into());
    }
    if pending.subject == who.subject {
        return Err(AccessError::OwnRequest.into());
    }
    let now = crate::identity::now();
    let (request, grant) = decided(&pending, who, approve, settings.max, now);
    let mut made = vec![Change::Request {
        request: request.clone(),
    }];
    if let Some(grant) = &grant {
        let count = shared.access.grant_count();
        if count >= crate::access::MAX_GRANTS {
            return Err(AccessError::TooManyGrants(count).into());
        }
        made.push(Change::Grant {
            grant: grant.clone(),
        });
    }
    let was = Change::Request { request: pending };
    changes::commit(shared, &made, Some((&was, Some(&was)))).await?;
    let grant = grant.map(Arc::new);
    let actor = Actor {
        name: who.name(),
        via: "session",
        client,
    };
    let event = if approve {
        "access_approved"
    } else {
        "access_refused"
    };
    audit(
        shared,
        event,
        Some(actor),
        grant.as_deref(),
        Some(&request),
        true,
    );
    observe(shared, now);
    Ok((request, grant))
}

/// The request decided by `who`, and the grant an approval makes (never beyond the route's
/// `max` in force now).
fn decided(
    pending: &AccessRequest,
    who: Person<'_>,
    approve: bool,
    max: u64,
    now: i64,
) -> (AccessRequest, Option<Grant>) {
    let by = who.name().to_owned();
    let mut request = pending.clone();
    if !approve {
        request.state = RequestState::Refused { by, at: now };
        return (request, None);
    }
    let grant = Grant {
        id: new_id(),
        subject: Subject::User(pending.subject.clone()),
        route: pending.route.clone(),
        reason: pending.reason.clone(),
        requested_by: pending.requester.clone(),
        approved_by: by.clone(),
        created_at: now,
        expires_at: now.saturating_add(pending.duration.min(max) as i64),
        request: Some(pending.id.clone()),
    };
    request.state = RequestState::Approved {
        by,
        at: now,
        grant: grant.id.clone(),
    };
    (request, Some(grant))
}

/// Grants in force and requests pending, in the metrics.
pub fn observe(shared: &Shared, now: i64) {
    let metrics = &shared.metrics;
    metrics
        .access
        .grants_active
        .set(shared.access.list(now).len() as i64);
    let pending = shared
        .access
        .requests()
        .iter()
        .filter(|r| r.state == RequestState::Pending)
        .count();
    metrics.access.requests_pending.set(pending as i64);
}

/// Ends grants as they expire, until `stop`: each is written as an event and announced, and
/// the live verifier cuts what they allowed at once.
pub async fn expiry(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let now = crate::identity::now();
        for ended in shared.access.expire(now) {
            shared.live.recheck_now();
            // Every replica ends the grant; one writes and announces it.
            let what = format!("grant_expired:{}", ended.id);
            if shared.fleet.once(&what, 24 * 3600).await {
                audit(&shared, "grant_expired", None, Some(&ended), None, true);
            }
        }
        observe(&shared, now);
        // Wake at the next expiry (a second after it starts), or when grants change.
        let wait = shared
            .access
            .next_expiry()
            .map_or(std::time::Duration::from_secs(3600), |at| {
                std::time::Duration::from_secs(at.saturating_sub(now).clamp(0, 3600) as u64)
            });
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = shared.access.changed.notified() => {}
        }
    }
}
