//! The decide phase: the request's facts document, the one decision over it
//! ([`policy::decide`]), and what a decision that is not "go on" answers.

use super::assess::Assessed;
use super::canonicalize::Target;
use super::context::{Context, Decided};
use crate::body::Body;
use crate::connection::Connection;
use crate::error::Refusal;
use crate::identity::Identity;
use crate::policy::{self, Decision, Facts, Outcome, facts};
use crate::reason::{Code, Reason};
use crate::routing::{Login, Route};
use http::{Request, Response};
use hyper::body::Incoming;

/// The facts of a request (or of a stream re-decided as if its request arrived now).
pub fn facts<'a>(
    time: i64,
    request: facts::Request<'a>,
    conn: &'a Connection,
    identity: Option<&'a Identity>,
    assessed: &'a Assessed,
) -> Facts<'a> {
    Facts {
        time,
        request,
        certificate: &conn.peer,
        person: identity,
        device: assessed.device.as_ref(),
        network: facts::Network {
            source: conn.remote.ip(),
            country: assessed.country.as_deref(),
        },
        risk: assessed.risk.as_ref(),
        grants: &assessed.grants,
        block: assessed.block.as_ref(),
        shared_state: assessed.shared_state,
    }
}

/// Decides the request. An allow (or an audited denial) goes on to forwarding; a denial is
/// answered with 403 and remembered by the risk engine; a step-up sends the person to sign in
/// again.
pub fn decide(
    cx: &mut Context<'_>,
    route: &Route,
    req: &Request<Incoming>,
    target: &Target<'_>,
    facts: &Facts<'_>,
) -> Result<Decision, Box<Response<Body>>> {
    let decision = policy::decide_on(&cx.snapshot.policy, Some(&route.policy), facts);
    if decision.policy.is_some() || decision.shadow.is_some() {
        record(&cx.shared.metrics.policies, &route.label, &decision);
        cx.policy.clone_from(&decision.policy);
        cx.shadow = decision.shadow.clone().filter(|s| !s.agrees);
    }
    cx.decided = Some(Decided {
        outcome: decision.outcome,
        facts: cx
            .snapshot
            .log
            .decision_facts
            .then(|| kept(facts, &route.policy))
            .flatten(),
        grant: decision.grant.clone(),
    });
    if let Some(person) = facts.person {
        cx.conn
            .note_person(&person.subject, person.email.as_deref());
    }
    if decision.passes()
        && let Some(grant) = &decision.grant
    {
        cx.conn.note_grant(grant);
    }
    match decision.outcome {
        Outcome::Allow | Outcome::Audit => Ok(decision),
        Outcome::StepUp => Err(Box::new(cx.step_up(req, target, route.policy.login))),
        Outcome::Deny => {
            let who = facts
                .person
                .map_or(cx.conn.peer.fingerprint_hex.as_str(), |i| {
                    i.subject.as_str()
                });
            cx.shared.record_denial(who, facts.time);
            let seen = crate::anomaly::detect::Seen::Denial;
            let asking = super::assess::who(cx.conn, facts.person);
            cx.shared.detect(cx.snapshot, seen, &asking, facts.time);
            let mut public = format!("access denied by route '{}'", route.name);
            // A policy's own reasons are written for the people it refuses.
            let told: Vec<&str> = decision
                .reasons
                .iter()
                .filter(|r| r.code == Code::PolicyReason)
                .map(|r| r.text.as_str())
                .collect();
            if !told.is_empty() {
                public = format!("{public}: {}", told.join("; "));
            }
            let mut response = cx.refuse(Refusal::Forbidden(public.clone()), Some(&decision));
            // A person a route could grant access to is offered to ask for it (not when
            // blocked: a block is not lifted by asking).
            if cx.html
                && facts.block.is_none()
                && let Some(who) = facts.person
                && let Some(form) = super::access::request_form(cx, route, who)
            {
                let id = cx.request_id.to_str().unwrap_or("");
                *response.body_mut() = super::access::denied_page(&public, id, &form);
            }
            Err(Box::new(response))
        }
    }
}

/// The line's `facts`: what the decision looked at, as a facts document without what privacy
/// leaves out ([`Facts::kept`]).
fn kept(facts: &Facts<'_>, route: &policy::RoutePolicy) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(1024);
    match serde_json::to_writer(&mut out, &facts.kept(Some(route))) {
        Ok(()) => Some(out),
        Err(e) => {
            tracing::error!(error = %e, "decision facts not serialisable");
            None
        }
    }
}

/// The metrics of one decision's policy runs: the enforced policy's, the shadow's, and a
/// disagreement.
fn record(policies: &crate::metrics::policy::Policies, route: &std::sync::Arc<str>, d: &Decision) {
    let shadow = d.shadow.as_ref();
    let runs = [
        (d.policy.as_ref(), "enforced"),
        (shadow.and_then(|s| s.run.as_ref()), "shadow"),
    ];
    for (run, role) in runs {
        if let Some(run) = run {
            policies.evaluated(route, &run.name, role, run.result, run.elapsed.0);
        }
    }
    if let Some(shadow) = shadow.filter(|s| !s.agrees) {
        policies.disagreed(
            route,
            &shadow.policy,
            d.outcome.as_str(),
            shadow.decision.as_str(),
        );
    }
}

impl Context<'_> {
    /// The risk asks for a fresh multi-factor login: browsers on a login route go through the
    /// provider again (`prompt=login`, `max_age=0`); other clients are refused.
    pub fn step_up(
        &self,
        req: &Request<Incoming>,
        target: &Target<'_>,
        login: Login,
    ) -> Response<Body> {
        let level = self.risk.as_ref().map_or("elevated", |r| r.level.as_str());
        if login != Login::Oidc || !self.html {
            return self.refuse_as(
                Code::RiskStepUp,
                Refusal::Unauthorized(format!("{level} risk: fresh multi-factor sign-in required")),
            );
        }
        self.to_provider(
            req,
            target,
            true,
            false,
            Reason::new(
                Code::RiskStepUp,
                format!("{level} risk: step-up sign-in required"),
            ),
        )
    }
}
