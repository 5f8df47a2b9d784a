//! The decision point: one pure function from the policy of the current configuration and
//! one facts document to a [`Decision`], with every reason.
//!
//! Default deny: no route, a route with no rules, or a request matching no rule is denied,
//! with the reasons each rule gave. Built-in rules decide first; the route's risk actions then
//! apply to an allow, and audit mode lets a denial through while logging it. The request
//! pipeline, the live verifier (everything that stays open) and `vigil policy explain` all call
//! [`decide`], so none of them can disagree with another.
//!
//! Pure: no clock (the time is a fact), no I/O, no shared state.

pub mod facts;
pub mod pattern;
pub mod rego;
pub mod window;

pub use facts::Facts;
pub use pattern::Pattern;

use crate::identity::Identity;
use crate::posture::inventory::{Device, version_at_least};
use crate::posture::{Action, RiskActions};
use crate::reason::{Code, Reason};
use http::Method;
use ipnet::IpNet;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// How a route establishes who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Login {
    /// The client certificate alone is the identity (services, or device-only access).
    None,
    /// People: a session from an OIDC login, bound to the device certificate.
    Oidc,
    /// Services: an access token from the provider, on top of the workload certificate.
    Bearer,
}

impl Login {
    pub fn as_str(self) -> &'static str {
        match self {
            Login::None => "none",
            Login::Oidc => "oidc",
            Login::Bearer => "bearer",
        }
    }
}

/// One `allow` entry: every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    pub spiffe: Vec<Pattern>,
    pub cert_subject: Vec<Pattern>,
    pub cert_san: Vec<Pattern>,
    pub cert_fingerprint: Vec<[u8; 32]>,
    pub methods: Vec<Method>,
    pub paths: Vec<Pattern>,
    pub networks: Vec<IpNet>,
    /// Email or subject patterns, made with [`Pattern::user`] (no wildcard covers `@`).
    pub users: Vec<Pattern>,
    /// Lower-case email domains, compared with the domain of a well-formed [`Address`].
    pub email_domains: Vec<String>,
    pub groups: Vec<String>,
    pub mfa: bool,
    /// Claim name and allowed values.
    pub claims: Vec<(String, Vec<String>)>,
    /// What the inventory must say about the device.
    pub device: Option<DeviceRequirement>,
    /// Minimum OS versions by OS name; an OS not listed is refused.
    pub min_os: Vec<(String, String)>,
    /// Maximum age of the device's last check-in, in seconds.
    pub max_check_in_age: Option<u64>,
    /// Request headers by lower-case name, each with the patterns one of its values must
    /// match.
    pub headers: Vec<(String, Vec<Pattern>)>,
    /// The hours and days the rule allows, in its time zone.
    pub window: Option<window::Window>,
    /// A just-in-time grant for the subject on the route must be in force.
    pub grant: bool,
}

/// `device = "compliant" | "managed" | "known" | "any"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequirement {
    Compliant,
    Managed,
    Known,
    Any,
}

impl DeviceRequirement {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "compliant" => Self::Compliant,
            "managed" => Self::Managed,
            "known" => Self::Known,
            "any" => Self::Any,
            _ => return None,
        })
    }
}

impl Rule {
    /// True when the rule needs the device inventory.
    pub fn needs_inventory(&self) -> bool {
        self.device.is_some_and(|d| d != DeviceRequirement::Any)
            || !self.min_os.is_empty()
            || self.max_check_in_age.is_some()
    }

    /// True when the rule says something about the person, so it needs a login.
    pub fn needs_identity(&self) -> bool {
        !self.users.is_empty()
            || !self.email_domains.is_empty()
            || !self.groups.is_empty()
            || self.mfa
            || !self.claims.is_empty()
    }
}

/// What one route allows: how it identifies, its rules in the order written, and what it does
/// at each risk level.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    pub name: String,
    pub login: Login,
    pub rules: Vec<Rule>,
    /// What to do at each risk level (used when `[risk]` is configured).
    pub risk: RiskActions,
    /// The route's own audit mode, when it has one; else the policy's applies.
    pub audit: Option<bool>,
    /// The route's Rego policy (`policy`): with rules, both must allow; alone, it decides.
    pub rego: Option<Arc<rego::Rego>>,
    /// A policy evaluated beside the enforced one, whose answer is only compared and logged
    /// (`shadow_policy`).
    pub shadow: Option<Arc<rego::Rego>>,
    /// Refuse the route while the replica's copy of the shared state is older than
    /// `[state] max_stale` (`require_shared_state`).
    pub require_shared_state: bool,
}

/// The request headers an open stream keeps to be decided again.
#[derive(Debug, PartialEq, Eq)]
pub enum KeptHeaders<'a> {
    /// The ones the rules name.
    Named(Vec<&'a str>),
    /// All of them: a policy may look at any.
    All,
}

impl RoutePolicy {
    /// True when a Rego policy (enforced or shadow) decides on the route: it may read any
    /// header or claim of the request.
    pub fn has_policy(&self) -> bool {
        self.rego.is_some() || self.shadow.is_some()
    }

    /// The route's policies with their role, `enforced` or `shadow`.
    pub fn policies(&self) -> impl Iterator<Item = (&Arc<rego::Rego>, &'static str)> {
        [
            (self.rego.as_ref(), "enforced"),
            (self.shadow.as_ref(), "shadow"),
        ]
        .into_iter()
        .filter_map(|(rego, role)| Some((rego?, role)))
    }

    /// What an open stream keeps of its request's headers to be decided again: the ones the
    /// route's rules look at, each once, or all of them on a route with a policy.
    pub fn header_names(&self) -> KeptHeaders<'_> {
        if self.has_policy() {
            return KeptHeaders::All;
        }
        let mut names: Vec<&str> = Vec::new();
        for (name, _) in self.rules.iter().flat_map(|r| &r.headers) {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        KeptHeaders::Named(names)
    }

    /// A route that identifies with the certificate alone, with `rules` and the default risk
    /// actions.
    pub fn new(name: impl Into<String>, rules: Vec<Rule>) -> Self {
        Self {
            name: name.into(),
            login: Login::None,
            rules,
            risk: RiskActions::default(),
            audit: None,
            rego: None,
            shadow: None,
            require_shared_state: false,
        }
    }
}

/// The policy of one configuration snapshot: every route's, and the settings that apply to all.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    routes: HashMap<String, Arc<RoutePolicy>>,
    /// Audit mode: a denial is logged as `audit` and let through.
    pub audit: bool,
    /// A `step_up` risk action is satisfied by a multi-factor sign-in at most this old
    /// (seconds).
    pub step_up_max_age: i64,
}

impl Policy {
    pub fn new(
        routes: impl IntoIterator<Item = Arc<RoutePolicy>>,
        audit: bool,
        step_up_max_age: i64,
    ) -> Self {
        Self {
            routes: routes.into_iter().map(|r| (r.name.clone(), r)).collect(),
            audit,
            step_up_max_age,
        }
    }

    pub fn route(&self, name: &str) -> Option<&RoutePolicy> {
        self.routes.get(name).map(Arc::as_ref)
    }

    /// True when denials on `route` (or on requests no route serves) are let through and
    /// logged: the route's own `audit` when it has one, else the policy's.
    pub fn audits(&self, route: Option<&RoutePolicy>) -> bool {
        route.and_then(|r| r.audit).unwrap_or(self.audit)
    }
}

/// What the decision lets happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allow,
    Deny,
    /// Denied, and let through because the configuration is in audit mode.
    Audit,
    /// The risk asks for a fresh multi-factor sign-in before the request may go through.
    StepUp,
}

impl Outcome {
    /// As the decision log writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Audit => "audit",
            Outcome::StepUp => "step_up",
        }
    }
}

/// The outcome, with the reasons that go into the decision log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub outcome: Outcome,
    /// The route's risk action limits it to GET, HEAD and OPTIONS.
    pub read_only: bool,
    /// Index (from 0) of the rule that allowed the request.
    pub rule: Option<usize>,
    /// The risk action that turned an allow into something else, if one did.
    pub risk_action: Option<RiskAction>,
    /// Why, in order; written to the decision log as `reasons` (texts) and `codes`.
    pub reasons: Vec<Reason>,
    /// What the route's Rego policy answered, when it was evaluated.
    pub policy: Option<PolicyRun>,
    /// Headers the policy adds upstream (lower-case names, checked values).
    pub headers: Vec<(String, String)>,
    /// What the route's shadow policy would have decided, when the route has one.
    pub shadow: Option<Shadow>,
    /// The just-in-time grant the allow rests on: a rule with `grant = true` allowed.
    pub grant: Option<String>,
}

/// One evaluation of a Rego policy, as a decision reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyRun {
    /// The policy file, as the configuration names it.
    pub name: Arc<str>,
    /// `allow`, `deny`, or how it failed: `undefined`, `malformed`, `error`, `budget`.
    pub result: &'static str,
    /// Time the evaluation took; not part of what was decided.
    #[serde(skip)]
    pub elapsed: Elapsed,
}

/// A duration that every decision compares equal on: how long something took is not a fact
/// of the decision.
#[derive(Debug, Clone, Copy, Default)]
pub struct Elapsed(pub std::time::Duration);

impl PartialEq for Elapsed {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Elapsed {}

/// What the route's shadow policy would have decided (before audit mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shadow {
    /// The shadow policy file.
    pub policy: Arc<str>,
    /// True when it decides as the enforced policy does; only disagreements are logged.
    #[serde(skip)]
    pub agrees: bool,
    pub decision: Outcome,
    pub reasons: Vec<Reason>,
    /// The shadow policy's own run.
    #[serde(skip)]
    pub run: Option<PolicyRun>,
}

/// A route's risk action, as a decision names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskAction {
    ReadOnly,
    StepUp,
    Deny,
}

impl Decision {
    /// `outcome` for `reasons`, by `rule` when one decided; nothing else said yet.
    fn new(outcome: Outcome, rule: Option<usize>, reasons: Vec<Reason>) -> Self {
        Self {
            outcome,
            read_only: false,
            rule,
            risk_action: None,
            reasons,
            policy: None,
            headers: Vec::new(),
            shadow: None,
            grant: None,
        }
    }

    pub fn deny(reason: Reason) -> Self {
        Self::new(Outcome::Deny, None, vec![reason])
    }

    /// True when the request goes through (allowed, or let through in audit mode).
    pub fn passes(&self) -> bool {
        matches!(self.outcome, Outcome::Allow | Outcome::Audit)
    }

    fn refuse(&mut self, action: RiskAction, reason: Reason) {
        self.outcome = Outcome::Deny;
        self.risk_action = Some(action);
        self.reasons.push(reason);
    }
}

/// The reason of a decision on a request that no route serves.
pub const NO_ROUTE: &str = "no route for this host and path";

/// Decides `facts` under `policy`. Pure: no clock, no I/O, no shared state.
pub fn decide(policy: &Policy, facts: &Facts<'_>) -> Decision {
    let route = facts.request.route.and_then(|name| policy.route(name));
    decide_on(policy, route, facts)
}

/// [`decide`], for a caller that has just routed the request and holds its route's policy
/// (the pipeline), so the route is not looked up again by name: `route` must be `policy`'s
/// own for `facts.request.route`.
pub fn decide_on(policy: &Policy, route: Option<&RoutePolicy>, facts: &Facts<'_>) -> Decision {
    let Some(route) = route else {
        return Decision::deny(Reason::new(Code::NoRoute, NO_ROUTE));
    };
    // A blocked subject is refused before anything else is looked at, in audit mode too.
    if let Some(block) = facts.block
        && block.until > facts.time
    {
        return Decision::deny(Reason::new(Code::Blocked, blocked(block)));
    }
    // Without a current copy of the fleet's state, a revocation or block made on another
    // replica may be missing here: refused, in audit mode too.
    if let Some(state) = facts.shared_state {
        if !state.synced {
            return Decision::deny(Reason::new(
                Code::SharedStateUnavailable,
                "the shared state has not been read from Redis yet",
            ));
        }
        if state.stale && route.require_shared_state {
            return Decision::deny(Reason::new(
                Code::SharedStateStale,
                format!(
                    "the shared state was last heard from Redis {:.1}s ago, over max_stale, and the route requires it",
                    state.age
                ),
            ));
        }
    }
    // A login route without its person is never decided by its rules, in audit mode neither:
    // a request gets there only signed in (or with a verified token).
    match route.login {
        Login::Oidc if facts.person.is_none() => {
            return Decision::deny(Reason::new(Code::SignInRequired, "sign-in required"));
        }
        Login::Bearer if facts.person.is_none() => {
            return Decision::deny(Reason::new(
                Code::BearerTokenRequired,
                "a valid bearer token is required",
            ));
        }
        _ => {}
    }
    let mut decision = decide_with(policy, route, route.rego.as_deref(), facts);
    if let Some(shadow) = &route.shadow {
        let other = decide_with(policy, route, Some(shadow), facts);
        decision.shadow = Some(Shadow {
            policy: shadow.label.clone(),
            agrees: other.outcome == decision.outcome,
            decision: other.outcome,
            reasons: other.reasons,
            run: other.policy,
        });
    }
    if decision.outcome == Outcome::Deny && policy.audits(Some(route)) {
        decision.outcome = Outcome::Audit;
    }
    decision
}

/// `blocked by <detector> until <time>: <reason>`.
fn blocked(block: &crate::anomaly::blocks::Block) -> String {
    let until = jiff::Timestamp::from_second(block.until)
        .map_or_else(|_| block.until.to_string(), |t| t.to_string());
    format!(
        "{} blocked by {} until {until}: {}",
        block.subject.kind(),
        block.by,
        block.reason
    )
}

/// The route's rules, then `rego` when they allow (or alone when there are none), then the
/// risk actions on an allow.
fn decide_with(
    policy: &Policy,
    route: &RoutePolicy,
    rego: Option<&rego::Rego>,
    facts: &Facts<'_>,
) -> Decision {
    let mut decision = match rego {
        Some(_) if route.rules.is_empty() => Decision::new(Outcome::Allow, None, Vec::new()),
        _ => evaluate(route, facts),
    };
    if decision.outcome == Outcome::Allow
        && let Some(rego) = rego
    {
        apply_policy(rego, facts, &mut decision);
    }
    if decision.outcome == Outcome::Allow
        && let Some(risk) = facts.risk
    {
        apply_risk(policy, route, facts, risk.level, &mut decision);
    }
    decision
}

/// The policy's answer, on a request the rules (if any) allowed.
fn apply_policy(rego: &rego::Rego, facts: &Facts<'_>, decision: &mut Decision) {
    use rego::{Answer, Failure};
    let evaluation = rego.evaluate(facts);
    let name = rego.label.clone();
    let result = match &evaluation.answer {
        Answer::Allow { .. } => "allow",
        Answer::Deny { .. } => "deny",
        Answer::Failed { kind, .. } => kind.as_str(),
    };
    decision.policy = Some(PolicyRun {
        name: name.clone(),
        result,
        elapsed: Elapsed(evaluation.elapsed),
    });
    match evaluation.answer {
        Answer::Allow {
            reasons,
            read_only,
            headers,
        } => {
            decision.reasons.push(Reason::new(
                Code::AllowedByPolicy,
                format!("allowed by policy {name}"),
            ));
            decision.reasons.extend(
                reasons
                    .into_iter()
                    .map(|r| Reason::new(Code::PolicyReason, r)),
            );
            decision.headers = headers;
            if read_only {
                decision.read_only = true;
                let method = facts.request.method;
                if !matches!(method, "GET" | "HEAD" | "OPTIONS") {
                    decision.outcome = Outcome::Deny;
                    decision.reasons.push(Reason::new(
                        Code::PolicyReadOnly,
                        format!("policy {name}: read-only, {method} refused"),
                    ));
                }
            }
        }
        Answer::Deny { reasons } => {
            decision.outcome = Outcome::Deny;
            decision.rule = None;
            decision.reasons.push(Reason::new(
                Code::PolicyDenied,
                format!("denied by policy {name}"),
            ));
            decision.reasons.extend(
                reasons
                    .into_iter()
                    .map(|r| Reason::new(Code::PolicyReason, r)),
            );
        }
        Answer::Failed { kind, error } => {
            decision.outcome = Outcome::Deny;
            decision.rule = None;
            let code = match kind {
                Failure::Undefined => Code::PolicyUndefined,
                Failure::Malformed => Code::PolicyMalformed,
                Failure::Error => Code::PolicyError,
                Failure::Budget => Code::PolicyBudget,
            };
            decision
                .reasons
                .push(Reason::new(code, format!("policy {name}: {error}")));
        }
    }
}

/// The route's rules, first match wins.
fn evaluate(route: &RoutePolicy, facts: &Facts<'_>) -> Decision {
    if route.rules.is_empty() {
        return Decision::deny(Reason::new(Code::NoAllowRules, "route has no allow rules"));
    }
    let mut reasons = Vec::with_capacity(route.rules.len());
    for (i, rule) in route.rules.iter().enumerate() {
        match rule.check(facts) {
            Ok(()) => {
                let mut decision = Decision::new(
                    Outcome::Allow,
                    Some(i),
                    vec![Reason::new(Code::AllowedByRule, allowed_by(i))],
                );
                if rule.grant
                    && let Some(grant) = facts::grant_in_force(facts)
                {
                    decision.reasons.push(Reason::new(
                        Code::AllowedByGrant,
                        format!(
                            "grant {} for {} approved by {}",
                            grant.id,
                            grant.subject.key(),
                            grant.approved_by
                        ),
                    ));
                    decision.grant = Some(grant.id.clone());
                }
                return decision;
            }
            Err(why) => reasons.push(Reason::new(why.code, format!("rule {}: {why}", i + 1))),
        }
    }
    Decision::new(Outcome::Deny, None, reasons)
}

/// `allowed by rule N` (N from 1); the common ones without formatting, since every allowed
/// request writes one.
fn allowed_by(rule: usize) -> String {
    const FIRST: [&str; 8] = [
        "allowed by rule 1",
        "allowed by rule 2",
        "allowed by rule 3",
        "allowed by rule 4",
        "allowed by rule 5",
        "allowed by rule 6",
        "allowed by rule 7",
        "allowed by rule 8",
    ];
    match FIRST.get(rule) {
        Some(text) => (*text).to_owned(),
        None => format!("allowed by rule {}", rule + 1),
    }
}

/// What the route does at the request's risk level, applied to an allow.
fn apply_risk(
    policy: &Policy,
    route: &RoutePolicy,
    facts: &Facts<'_>,
    level: crate::posture::Level,
    decision: &mut Decision,
) {
    let level_name = level.as_str();
    match route.risk.for_level(level) {
        Action::Allow => {}
        Action::ReadOnly => {
            decision.read_only = true;
            let method = facts.request.method;
            if !matches!(method, "GET" | "HEAD" | "OPTIONS") {
                decision.refuse(
                    RiskAction::ReadOnly,
                    Reason::new(
                        Code::RiskReadOnly,
                        format!("{level_name} risk: read-only, {method} refused"),
                    ),
                );
            }
        }
        Action::StepUp => {
            let person = facts.person;
            let fresh = person
                .and_then(|p| p.auth_time)
                .is_some_and(|t| facts.time - t <= policy.step_up_max_age);
            let mfa = person.is_some_and(|p| p.mfa);
            if fresh && !mfa {
                // Just authenticated, and still without a second factor: sending the person
                // back would loop.
                decision.refuse(
                    RiskAction::StepUp,
                    Reason::new(
                        Code::RiskStepUpWithoutMfa,
                        format!(
                            "{level_name} risk: step-up needs multi-factor, the sign-in had none"
                        ),
                    ),
                );
            } else if !(fresh && mfa) {
                decision.outcome = Outcome::StepUp;
                decision.risk_action = Some(RiskAction::StepUp);
                decision.reasons.push(Reason::new(
                    Code::RiskStepUp,
                    format!("{level_name} risk: step-up sign-in required"),
                ));
            }
        }
        Action::Deny => decision.refuse(
            RiskAction::Deny,
            Reason::new(Code::RiskDenied, format!("{level_name} risk: denied")),
        ),
    }
}

impl Rule {
    /// `Err` names the first condition that does not hold.
    fn check(&self, f: &Facts<'_>) -> Result<(), Reason> {
        let peer = f.certificate;
        let method = f.request.method;
        let path = f.request.path;
        let source = f.network.source;
        if !self.spiffe.is_empty() {
            match &peer.spiffe_id {
                None => {
                    return Err(Reason::new(
                        Code::SpiffeMissing,
                        "client certificate has no SPIFFE ID",
                    ));
                }
                Some(id) if !self.spiffe.iter().any(|p| p.matches(id)) => {
                    return Err(Reason::new(
                        Code::SpiffeNotAllowed,
                        format!("SPIFFE ID {id} not allowed"),
                    ));
                }
                Some(_) => {}
            }
        }
        if !self.cert_subject.is_empty() {
            let cn = peer.common_name.as_deref().unwrap_or("");
            if !self.cert_subject.iter().any(|p| p.matches(cn)) {
                return Err(Reason::new(
                    Code::CertSubjectNotAllowed,
                    format!("certificate subject CN {cn:?} not allowed"),
                ));
            }
        }
        if !self.cert_san.is_empty()
            && !peer
                .sans()
                .any(|san| self.cert_san.iter().any(|p| p.matches(san)))
        {
            return Err(Reason::new(
                Code::CertSanNotAllowed,
                "no certificate SAN allowed",
            ));
        }
        if !self.cert_fingerprint.is_empty() && !self.cert_fingerprint.contains(&peer.fingerprint) {
            return Err(Reason::new(
                Code::CertFingerprintNotAllowed,
                "certificate fingerprint not allowed",
            ));
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m.as_str() == method) {
            return Err(Reason::new(
                Code::MethodNotAllowed,
                format!("method {method} not allowed"),
            ));
        }
        if !self.paths.is_empty() && !self.paths.iter().any(|p| p.matches(path)) {
            return Err(Reason::new(
                Code::PathNotAllowed,
                format!("path {path} not allowed"),
            ));
        }
        if !self.networks.is_empty() && !self.networks.iter().any(|n| n.contains(&source)) {
            return Err(Reason::new(
                Code::NetworkNotAllowed,
                format!("source address {source} not in allowed networks"),
            ));
        }
        for (name, patterns) in &self.headers {
            let headers = &f.request.headers;
            if !headers.any(name, |_| true) {
                return Err(Reason::new(
                    Code::HeaderMissing,
                    format!("header {name} missing"),
                ));
            }
            // The value is not quoted in the reason: it may be a credential.
            if !headers.any(name, |v| patterns.iter().any(|p| p.matches(v))) {
                return Err(Reason::new(
                    Code::HeaderNotAllowed,
                    format!("header {name} not allowed"),
                ));
            }
        }
        if let Some(window) = &self.window {
            window.check(f.time)?;
        }
        if self.grant && facts::grant_in_force(f).is_none() {
            return Err(Reason::new(
                Code::GrantMissing,
                "no just-in-time grant in force for this route",
            ));
        }
        if self.needs_inventory() {
            self.check_device(f.device, f.time)?;
        }
        if self.needs_identity() {
            self.check_identity(f.person)?;
        }
        Ok(())
    }

    fn check_device(&self, device: Option<&Device>, now: i64) -> Result<(), Reason> {
        let Some(d) = device else {
            return Err(Reason::new(
                Code::DeviceUnknown,
                "device unknown to the inventory",
            ));
        };
        match self.device {
            Some(DeviceRequirement::Compliant) if !d.compliant => {
                return Err(Reason::new(
                    Code::DeviceNoncompliant,
                    "device not compliant",
                ));
            }
            Some(DeviceRequirement::Managed) if !d.managed => {
                return Err(Reason::new(Code::DeviceUnmanaged, "device not managed"));
            }
            _ => {}
        }
        if !self.min_os.is_empty() {
            let Some(os) = &d.os else {
                return Err(Reason::new(Code::OsUnknown, "device OS unknown"));
            };
            match self
                .min_os
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(&os.name))
            {
                None => {
                    return Err(Reason::new(
                        Code::OsNotAllowed,
                        format!("OS {} not allowed", os.name),
                    ));
                }
                Some((_, min)) if !version_at_least(&os.version, min) => {
                    return Err(Reason::new(
                        Code::OsTooOld,
                        format!("{} {} older than {min}", os.name, os.version),
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(max) = self.max_check_in_age {
            match d.check_in_age(now) {
                Some(age) if age <= max => {}
                _ => return Err(Reason::new(Code::CheckInStale, "device check-in too old")),
            }
        }
        Ok(())
    }

    fn check_identity(&self, identity: Option<&Identity>) -> Result<(), Reason> {
        let Some(who) = identity else {
            return Err(Reason::new(Code::IdentityMissing, "no signed-in identity"));
        };
        // Only a well-formed address is compared; any other email is as if there were none.
        let address = who.email.as_deref().and_then(Address::parse);
        if !self.users.is_empty()
            && !self.users.iter().any(|p| {
                p.matches(&who.subject) || address.as_ref().is_some_and(|a| p.matches(a.text))
            })
        {
            return Err(Reason::new(
                Code::UserNotAllowed,
                format!(
                    "user {} not allowed",
                    who.email.as_deref().unwrap_or(&who.subject)
                ),
            ));
        }
        if !self.email_domains.is_empty() {
            match &address {
                None if who.email.is_some() => {
                    return Err(Reason::new(
                        Code::EmailMalformed,
                        "email is not a well-formed address",
                    ));
                }
                Some(a)
                    if self
                        .email_domains
                        .iter()
                        .any(|d| d.eq_ignore_ascii_case(a.domain)) => {}
                _ => {
                    return Err(Reason::new(
                        Code::EmailDomainNotAllowed,
                        "email domain not allowed",
                    ));
                }
            }
        }
        if !self.groups.is_empty() && !self.groups.iter().any(|g| who.groups.contains(g)) {
            return Err(Reason::new(
                Code::NotInGroup,
                format!("not in any of the groups {}", self.groups.join(", ")),
            ));
        }
        if self.mfa && !who.mfa {
            return Err(Reason::new(
                Code::MfaRequired,
                "multi-factor login required",
            ));
        }
        for (claim, allowed) in &self.claims {
            let values = who.claim(claim);
            if !values.iter().any(|v| allowed.contains(v)) {
                return Err(Reason::new(
                    Code::ClaimNotAllowed,
                    format!("claim {claim} not allowed"),
                ));
            }
        }
        Ok(())
    }
}

/// An email address as policy compares it: exactly one `@`, a local part of at least one
/// character without whitespace or control characters, and a domain that is a plain DNS name:
/// ASCII letters, digits and `-` in dot-separated labels of 1 to 63 characters, at most 253 in all,
/// no leading or trailing dot or hyphen (so no `corp.com.`, no `[192.0.2.1]` literal, no
/// Unicode form: an internationalised domain must arrive in its `xn--` form). Anything else
/// (`a@evil.com@corp.com`, `"a@b"@corp.com`, `@corp.com`, `a@corp..com`) is not an address, and
/// matches no `users` or `email_domains` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address<'a> {
    /// The whole address, as the provider sent it.
    pub text: &'a str,
    pub local: &'a str,
    /// As sent; compare it case-insensitively.
    pub domain: &'a str,
}

impl<'a> Address<'a> {
    pub fn parse(text: &'a str) -> Option<Self> {
        let (local, domain) = text.split_once('@')?;
        if local.is_empty() || local.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        let label = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        // `split` on a domain with a second `@` leaves a label containing it, which fails.
        if domain.len() > 253 || !domain.split('.').all(label) {
            return None;
        }
        Some(Self {
            text,
            local,
            domain,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::posture::{Assessment, Level};
    use crate::tls::PeerCert;
    use std::net::IpAddr;

    /// One route, `r`, with `rules`, in a policy of its own.
    fn one_route(rules: Vec<Rule>) -> Policy {
        Policy::new([Arc::new(RoutePolicy::new("r", rules))], false, 300)
    }

    fn facts<'a>(
        peer: &'a PeerCert,
        method: &'a str,
        path: &'a str,
        source: IpAddr,
        person: Option<&'a Identity>,
    ) -> Facts<'a> {
        Facts {
            time: 1_000_000,
            request: facts::Request {
                route: Some("r"),
                host: "app.example.com",
                method,
                path,
                headers: facts::Headers::NONE,
            },
            certificate: peer,
            person,
            device: None,
            network: facts::Network {
                source,
                country: None,
            },
            risk: None,
            grants: &[],
            block: None,
            shared_state: None,
        }
    }

    fn peer(spiffe: Option<&str>, cn: &str) -> PeerCert {
        PeerCert {
            subject: format!("CN={cn}"),
            common_name: Some(cn.into()),
            issuer: "CN=ca".into(),
            dns: vec![],
            emails: vec![],
            uris: spiffe.map(|s| vec![s.to_owned()]).unwrap_or_default(),
            spiffe_id: spiffe.map(str::to_owned),
            serial: vec![1],
            fingerprint: [7; 32],
            fingerprint_hex: "07".repeat(32),
            not_before: 0,
            not_after: i64::MAX,
            written: Default::default(),
        }
    }

    fn rule(f: impl FnOnce(&mut Rule)) -> Rule {
        let mut r = Rule::default();
        f(&mut r);
        r
    }

    #[test]
    fn table() {
        let web = peer(Some("spiffe://example.org/ns/frontend/sa/web"), "web");
        let batch = peer(Some("spiffe://example.org/ns/batch/sa/job"), "job");
        let laptop = peer(None, "demo-laptop");
        let frontend = rule(|r| {
            r.spiffe = vec![Pattern::new("spiffe://example.org/ns/frontend/sa/*").unwrap()];
            r.methods = vec![Method::GET, Method::POST];
            r.paths = vec![Pattern::new("/api/**").unwrap()];
            r.networks = vec!["127.0.0.0/8".parse().unwrap()];
        });
        let laptops = rule(|r| r.cert_subject = vec![Pattern::new("*-laptop").unwrap()]);
        let policy = one_route(vec![frontend, laptops]);
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let remote: IpAddr = "192.0.2.1".parse().unwrap();
        type Case<'a> = (&'a PeerCert, Method, &'a str, IpAddr, bool, &'a str, Code);
        let cases: &[Case<'_>] = &[
            (
                &web,
                Method::GET,
                "/api/x",
                local,
                true,
                "allowed by rule 1",
                Code::AllowedByRule,
            ),
            (
                &web,
                Method::DELETE,
                "/api/x",
                local,
                false,
                "rule 1: method DELETE not allowed",
                Code::MethodNotAllowed,
            ),
            (
                &web,
                Method::GET,
                "/admin",
                local,
                false,
                "rule 1: path /admin not allowed",
                Code::PathNotAllowed,
            ),
            (
                &web,
                Method::GET,
                "/api/x",
                remote,
                false,
                "rule 1: source address 192.0.2.1 not in allowed networks",
                Code::NetworkNotAllowed,
            ),
            (
                &batch,
                Method::GET,
                "/api/x",
                local,
                false,
                "rule 1: SPIFFE ID spiffe://example.org/ns/batch/sa/job not allowed",
                Code::SpiffeNotAllowed,
            ),
            (
                &laptop,
                Method::GET,
                "/api/x",
                local,
                true,
                "allowed by rule 2",
                Code::AllowedByRule,
            ),
            (
                &laptop,
                Method::DELETE,
                "/anything",
                remote,
                true,
                "allowed by rule 2",
                Code::AllowedByRule,
            ),
        ];
        for (peer, method, path, ip, allow, reason, code) in cases {
            let d = super::decide(&policy, &facts(peer, method.as_str(), path, *ip, None));
            assert_eq!(d.passes(), *allow, "{method} {path} {:?}", d.reasons);
            assert!(
                d.reasons
                    .iter()
                    .any(|r| r.text == *reason && r.code == *code),
                "{method} {path}: {:?} lacks {reason} ({code})",
                d.reasons
            );
        }
        // A denial lists every rule's first failing condition, each with its own code.
        let d = super::decide(&policy, &facts(&batch, "GET", "/api/x", local, None));
        let codes: Vec<Code> = d.reasons.iter().map(|r| r.code).collect();
        assert_eq!(
            codes,
            [Code::SpiffeNotAllowed, Code::CertSubjectNotAllowed],
            "{:?}",
            d.reasons
        );
    }

    /// A route's own `audit` wins over the policy's, both ways; a login route without its
    /// person is denied in audit mode too.
    #[test]
    fn audit_per_route() {
        let p = peer(None, "x");
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let never = rule(|r| r.cert_subject = vec![Pattern::new("nobody").unwrap()]);
        for (global, route, expected) in [
            (false, None, Outcome::Deny),
            (true, None, Outcome::Audit),
            (false, Some(true), Outcome::Audit),
            (true, Some(false), Outcome::Deny),
        ] {
            let mut route_policy = RoutePolicy::new("r", vec![never.clone()]);
            route_policy.audit = route;
            let policy = Policy::new([Arc::new(route_policy)], global, 300);
            let decision = super::decide(&policy, &facts(&p, "GET", "/", local, None));
            assert_eq!(
                decision.outcome, expected,
                "global {global}, route {route:?}"
            );
        }
        let mut login = RoutePolicy::new("r", vec![Rule::default()]);
        login.login = Login::Oidc;
        login.audit = Some(true);
        let policy = Policy::new([Arc::new(login)], true, 300);
        let decision = super::decide(&policy, &facts(&p, "GET", "/", local, None));
        assert_eq!(decision.outcome, Outcome::Deny);
    }

    /// A rule with a time window allows within it only, at the facts' time: the same request
    /// decided at another moment gets another answer.
    #[test]
    fn a_time_window_is_decided_at_the_facts_time() {
        let p = peer(None, "ops-laptop");
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let days: Vec<String> = ["mon", "tue", "wed", "thu", "fri"]
            .map(String::from)
            .to_vec();
        let office = rule(|r| {
            r.cert_subject = vec![Pattern::new("*-laptop").unwrap()];
            r.window = window::Window::new(Some("08:00-19:00"), &days, Some("Europe/Paris")).ok();
        });
        assert!(office.window.is_some());
        let policy = one_route(vec![office]);
        let mut f = facts(&p, "GET", "/", local, None);
        // Tuesday 13 January 2026, 10:00 in Paris.
        f.time = 1_768_294_800;
        assert_eq!(super::decide(&policy, &f).outcome, Outcome::Allow);
        // The same day at 20:00 in Paris.
        f.time += 10 * 3600;
        let late = super::decide(&policy, &f);
        assert_eq!(late.outcome, Outcome::Deny);
        assert_eq!(late.reasons[0].code, Code::OutsideHours);
        assert_eq!(
            late.reasons[0].text,
            "rule 1: outside the allowed hours 08:00-19:00 (Europe/Paris): it is 20:00 there"
        );
    }

    /// Risk actions and audit mode, decided purely from the facts: each case is a route's
    /// action at the request's level, the method, the person's sign-in, audit mode, and the
    /// outcome with its last reason.
    #[test]
    fn risk_and_audit() {
        let p = peer(Some("spiffe://example.org/a"), "a");
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let allow_all = rule(|r| r.spiffe = vec![Pattern::new("spiffe://example.org/*").unwrap()]);
        let mut fresh_mfa = person("alice", None);
        fresh_mfa.mfa = true;
        fresh_mfa.auth_time = Some(1_000_000 - 60);
        let mut fresh_no_mfa = fresh_mfa.clone();
        fresh_no_mfa.mfa = false;
        let mut stale_mfa = fresh_mfa.clone();
        stale_mfa.auth_time = Some(1_000_000 - 3600);
        type Case<'a> = (
            Action,
            &'a str,
            Option<&'a Identity>,
            bool,
            Outcome,
            &'a str,
        );
        let cases: &[Case<'_>] = &[
            (
                Action::Allow,
                "POST",
                None,
                false,
                Outcome::Allow,
                "allowed by rule 1",
            ),
            (
                Action::ReadOnly,
                "GET",
                None,
                false,
                Outcome::Allow,
                "allowed by rule 1",
            ),
            (
                Action::ReadOnly,
                "POST",
                None,
                false,
                Outcome::Deny,
                "medium risk: read-only, POST refused",
            ),
            (
                Action::ReadOnly,
                "POST",
                None,
                true,
                Outcome::Audit,
                "medium risk: read-only, POST refused",
            ),
            (
                Action::Deny,
                "GET",
                None,
                false,
                Outcome::Deny,
                "medium risk: denied",
            ),
            (
                Action::Deny,
                "GET",
                None,
                true,
                Outcome::Audit,
                "medium risk: denied",
            ),
            (
                Action::StepUp,
                "GET",
                None,
                false,
                Outcome::StepUp,
                "medium risk: step-up sign-in required",
            ),
            (
                Action::StepUp,
                "GET",
                Some(&stale_mfa),
                false,
                Outcome::StepUp,
                "medium risk: step-up sign-in required",
            ),
            // A step-up is not waived by audit mode: it is not a denial.
            (
                Action::StepUp,
                "GET",
                None,
                true,
                Outcome::StepUp,
                "medium risk: step-up sign-in required",
            ),
            (
                Action::StepUp,
                "GET",
                Some(&fresh_mfa),
                false,
                Outcome::Allow,
                "allowed by rule 1",
            ),
            (
                Action::StepUp,
                "GET",
                Some(&fresh_no_mfa),
                false,
                Outcome::Deny,
                "medium risk: step-up needs multi-factor, the sign-in had none",
            ),
        ];
        let medium = Assessment {
            level: Level::Medium,
            score: 2,
            signals: vec!["device not compliant".into()],
        };
        for (i, (action, method, who, audit, outcome, reason)) in cases.iter().enumerate() {
            let mut route = RoutePolicy::new("r", vec![allow_all.clone()]);
            route.risk.medium = *action;
            let policy = Policy::new([Arc::new(route)], *audit, 300);
            let mut f = facts(&p, method, "/", local, *who);
            f.risk = Some(&medium);
            let d = super::decide(&policy, &f);
            assert_eq!(d.outcome, *outcome, "case {i}: {d:?}");
            assert_eq!(
                d.reasons.last().map(|r| r.text.as_str()),
                Some(*reason),
                "case {i}"
            );
            assert_eq!(d.read_only, *action == Action::ReadOnly, "case {i}");
        }
        // Without an assessment, risk actions do not apply.
        let mut route = RoutePolicy::new("r", vec![allow_all]);
        route.risk.medium = Action::Deny;
        let policy = Policy::new([Arc::new(route)], false, 300);
        let d = super::decide(&policy, &facts(&p, "GET", "/", local, None));
        assert_eq!(d.outcome, Outcome::Allow);
    }

    /// Each device and person condition fails with its own code.
    #[test]
    fn conditions_fail_with_their_codes() {
        use crate::posture::inventory::Os;
        let p = peer(None, "laptop");
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let old_mac = Device {
            fingerprint: None,
            serial: None,
            subject: None,
            compliant: false,
            managed: false,
            owner: None,
            os: Some(Os {
                name: "macOS".into(),
                version: "13.6".into(),
            }),
            last_check_in: None,
        };
        let compliant = rule(|r| r.device = Some(DeviceRequirement::Compliant));
        let managed = rule(|r| r.device = Some(DeviceRequirement::Managed));
        let new_os = rule(|r| r.min_os = vec![("macos".into(), "14.0".into())]);
        let windows = rule(|r| r.min_os = vec![("windows".into(), "11".into())]);
        let groups = rule(|r| r.groups = vec!["wiki-admins".into()]);
        let mfa = rule(|r| r.mfa = true);
        let alice = person("alice", Some("alice@corp.com"));
        let cases = [
            (
                &compliant,
                None,
                None,
                Code::DeviceUnknown,
                "device unknown to the inventory",
            ),
            (
                &compliant,
                Some(&old_mac),
                None,
                Code::DeviceNoncompliant,
                "device not compliant",
            ),
            (
                &managed,
                Some(&old_mac),
                None,
                Code::DeviceUnmanaged,
                "device not managed",
            ),
            (
                &new_os,
                Some(&old_mac),
                None,
                Code::OsTooOld,
                "macOS 13.6 older than 14.0",
            ),
            (
                &windows,
                Some(&old_mac),
                None,
                Code::OsNotAllowed,
                "OS macOS not allowed",
            ),
            (
                &groups,
                None,
                None,
                Code::IdentityMissing,
                "no signed-in identity",
            ),
            (
                &groups,
                None,
                Some(&alice),
                Code::NotInGroup,
                "not in any of the groups wiki-admins",
            ),
            (
                &mfa,
                None,
                Some(&alice),
                Code::MfaRequired,
                "multi-factor login required",
            ),
        ];
        for (rule, device, who, code, text) in cases {
            let mut f = facts(&p, "GET", "/", local, who);
            f.device = device;
            let d = super::decide(&one_route(vec![rule.clone()]), &f);
            assert_eq!(
                d.reasons,
                [Reason::new(code, format!("rule 1: {text}"))],
                "{code}"
            );
        }
    }

    #[test]
    fn allowed_reasons_count_from_one() {
        for i in [0, 1, 7, 8, 41] {
            assert_eq!(allowed_by(i), format!("allowed by rule {}", i + 1));
        }
    }

    #[test]
    fn login_routes_need_their_person() {
        let p = peer(None, "laptop");
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let mut route = RoutePolicy::new("r", vec![Rule::default()]);
        route.login = Login::Oidc;
        let policy = Policy::new([Arc::new(route)], false, 300);
        let d = super::decide(&policy, &facts(&p, "GET", "/", local, None));
        assert_eq!(d.reasons, ["sign-in required"]);
        let audited = Policy::new(policy.routes.values().cloned(), true, 300);
        let d = super::decide(&audited, &facts(&p, "GET", "/", local, None));
        assert_eq!(d.outcome, Outcome::Deny, "audit mode never signs anyone in");
        let who = person("alice", None);
        let d = super::decide(&policy, &facts(&p, "GET", "/", local, Some(&who)));
        assert_eq!(d.outcome, Outcome::Allow);
    }

    #[test]
    fn no_rules_denies() {
        let p = peer(None, "x");
        let local = "127.0.0.1".parse().unwrap();
        let d = super::decide(&one_route(vec![]), &facts(&p, "GET", "/", local, None));
        assert_eq!(d.outcome, Outcome::Deny);
        assert_eq!(d.reasons, ["route has no allow rules"]);
        let d = super::decide(&Policy::default(), &facts(&p, "GET", "/", local, None));
        assert_eq!(d.reasons, [NO_ROUTE]);
    }

    #[test]
    fn grants_allow_what_their_rules_let_them_and_blocks_deny_first() {
        use crate::access::{Grant, Subject};
        use crate::anomaly::blocks::Block;
        let p = peer(Some("spiffe://example.org/ns/a/sa/b"), "x");
        let local = "127.0.0.1".parse().unwrap();
        let policy = one_route(vec![rule(|r| r.grant = true)]);
        let mut f = facts(&p, "GET", "/", local, None);
        let d = super::decide(&policy, &f);
        assert_eq!(d.outcome, Outcome::Deny);
        assert_eq!(d.reasons[0].code, Code::GrantMissing);
        let grant = |route: &str, expires_at| Grant {
            id: "g1".into(),
            subject: Subject::Spiffe("spiffe://example.org/ns/a/sa/b".into()),
            route: route.into(),
            reason: "incident".into(),
            requested_by: "ops".into(),
            approved_by: "admin".into(),
            created_at: 0,
            expires_at,
            request: None,
        };
        // A grant for another route, or expired at the facts' time, does not hold.
        let others = [grant("elsewhere", 2_000_000), grant("r", 1_000_000)];
        f.grants = &others;
        assert_eq!(super::decide(&policy, &f).outcome, Outcome::Deny);
        let good = [grant("r", 1_000_001)];
        f.grants = &good;
        let d = super::decide(&policy, &f);
        assert_eq!(d.outcome, Outcome::Allow);
        assert_eq!(d.grant.as_deref(), Some("g1"));
        assert_eq!(d.reasons[1].code, Code::AllowedByGrant);
        // A block denies before the rules, in audit mode too.
        let block = Block {
            subject: Subject::Spiffe("spiffe://example.org/ns/a/sa/b".into()),
            reason: "11 denials in 1h".into(),
            by: "denials".into(),
            since: 0,
            until: 1_000_060,
        };
        f.block = Some(&block);
        let audited = Policy::new(
            [Arc::new(RoutePolicy::new(
                "r",
                vec![rule(|r| r.grant = true)],
            ))],
            true,
            300,
        );
        for policy in [&policy, &audited] {
            let d = super::decide(policy, &f);
            assert_eq!(d.outcome, Outcome::Deny);
            assert_eq!(d.reasons[0].code, Code::Blocked);
            assert!(
                d.reasons[0]
                    .text
                    .starts_with("spiffe blocked by denials until"),
                "{d:?}"
            );
        }
        f.time = 1_000_060;
        f.block = Some(&block);
        f.grants = &[];
        assert_eq!(
            super::decide(&policy, &f).reasons[0].code,
            Code::GrantMissing
        );
    }

    #[test]
    fn without_a_current_shared_state_the_fleet_fails_closed() {
        use crate::fleet::Standing;
        let p = peer(None, "x");
        let local = "127.0.0.1".parse().unwrap();
        let route = |require: bool, audit: Option<bool>| {
            let mut r = RoutePolicy::new("r", vec![Rule::default()]);
            r.require_shared_state = require;
            r.audit = audit;
            Policy::new([Arc::new(r)], false, 300)
        };
        let mut f = facts(&p, "GET", "/", local, None);
        let standing = |synced, stale| Standing {
            synced,
            age: if stale { 12.0 } else { 0.2 },
            stale,
        };
        // In memory, and with a current copy: the rules decide.
        for state in [None, Some(standing(true, false))] {
            f.shared_state = state;
            for require in [false, true] {
                assert_eq!(
                    super::decide(&route(require, None), &f).outcome,
                    Outcome::Allow
                );
            }
        }
        // Never read since the start: every route refuses, in audit mode too.
        f.shared_state = Some(standing(false, true));
        for (require, audit) in [(false, None), (true, None), (false, Some(true))] {
            let d = super::decide(&route(require, audit), &f);
            assert_eq!(d.outcome, Outcome::Deny);
            assert_eq!(d.reasons[0].code, Code::SharedStateUnavailable);
        }
        // Read once and gone stale: only the routes that require it refuse.
        f.shared_state = Some(standing(true, true));
        assert_eq!(
            super::decide(&route(false, None), &f).outcome,
            Outcome::Allow
        );
        for audit in [None, Some(true)] {
            let d = super::decide(&route(true, audit), &f);
            assert_eq!(d.outcome, Outcome::Deny);
            assert_eq!(d.reasons[0].code, Code::SharedStateStale);
            assert!(d.reasons[0].text.contains("12.0s"), "{d:?}");
        }
    }

    fn person(subject: &str, email: Option<&str>) -> Identity {
        Identity {
            subject: subject.into(),
            email: email.map(str::to_owned),
            name: None,
            groups: vec![],
            amr: vec![],
            mfa: false,
            acr: None,
            risk: None,
            claims: Default::default(),
            verified_at: 0,
            auth_time: None,
            source: crate::identity::Source::Session { sid: "s".into() },
        }
    }

    fn decide(rule: &Rule, who: &Identity) -> Decision {
        let p = peer(None, "laptop");
        let local = "127.0.0.1".parse().unwrap();
        super::decide(
            &one_route(vec![rule.clone()]),
            &facts(&p, "GET", "/", local, Some(who)),
        )
    }

    #[test]
    fn addresses() {
        let ok = [
            ("alice@corp.com", "alice", "corp.com"),
            ("a.b+tag@eu.CORP.com", "a.b+tag", "eu.CORP.com"),
            ("x@xn--bcher-kva.de", "x", "xn--bcher-kva.de"),
            ("x@localhost", "x", "localhost"),
        ];
        for (text, local, domain) in ok {
            assert_eq!(
                Address::parse(text),
                Some(Address {
                    text,
                    local,
                    domain
                }),
                "{text}"
            );
        }
        let bad = [
            "a@evil.com@corp.com",
            "\"a@b\"@corp.com",
            "@corp.com",
            "alice",
            "alice@",
            "alice@corp.com.",
            "alice@.corp.com",
            "alice@corp..com",
            "alice@-corp.com",
            "alice@corp-.com",
            "alice@[192.0.2.1]",
            "alice@bücher.de",
            "alice@corp.com ",
            "al ice@corp.com",
            "alice\n@corp.com",
            "alice@corp_x.com",
        ];
        for text in bad {
            assert_eq!(Address::parse(text), None, "{text}");
        }
        let long = format!("a@{}.com", "x".repeat(63).repeat(4));
        assert_eq!(Address::parse(&long), None);
    }

    #[test]
    fn email_domains_compare_well_formed_addresses_only() {
        let corp = rule(|r| r.email_domains = vec!["corp.com".into()]);
        let cases = [
            (Some("alice@corp.com"), true, "allowed by rule 1"),
            (Some("alice@CORP.Com"), true, "allowed by rule 1"),
            (
                Some("a@evil.com@corp.com"),
                false,
                "email is not a well-formed address",
            ),
            (
                Some("alice@corp.com."),
                false,
                "email is not a well-formed address",
            ),
            (Some("alice@eu.corp.com"), false, "email domain not allowed"),
            (Some("alice@evil.com"), false, "email domain not allowed"),
            (None, false, "email domain not allowed"),
        ];
        for (email, allow, reason) in cases {
            let d = decide(&corp, &person("sub-1", email));
            assert_eq!(d.passes(), allow, "{email:?}: {:?}", d.reasons);
            assert!(
                d.reasons.iter().any(|r| r.text.contains(reason)),
                "{email:?}: {:?} lacks {reason}",
                d.reasons
            );
        }
    }

    #[test]
    fn user_wildcards_never_cross_at() {
        let users = |p: &[&str]| {
            rule(|r| {
                r.users = p.iter().map(|p| Pattern::user(p).unwrap()).collect();
            })
        };
        let cases = [
            (&["*@corp.com"][..], "sub-1", Some("alice@corp.com"), true),
            (&["*@corp.com"], "sub-1", Some("a@evil.com@corp.com"), false),
            // A malformed email is not compared at all, even by a pattern spelling it out.
            (
                &["*@*@corp.com"],
                "sub-1",
                Some("a@evil.com@corp.com"),
                false,
            ),
            (&["alice*"], "sub-1", Some("alice@evil.com"), false),
            (&["alice*"], "alice-admin", Some("x@corp.com"), true),
            (&["alice@*"], "sub-1", Some("alice@corp.com"), true),
            (&["alice@corp.com"], "sub-1", Some("alice@corp.com"), true),
            (&["alice@corp.com"], "alice@corp.com", None, true),
            (&["*@corp.com"], "a@evil.com@corp.com", None, false),
            (&["shop-frontend"], "shop-frontend", None, true),
        ];
        for (patterns, subject, email, allow) in cases {
            let d = decide(&users(patterns), &person(subject, email));
            assert_eq!(
                d.passes(),
                allow,
                "{patterns:?} {subject} {email:?}: {:?}",
                d.reasons
            );
        }
    }
}
