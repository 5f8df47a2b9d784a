//! The record phase: one decision log line and the request metrics for every answer, with the
//! fault of every refusal.

use super::context::Context;
use crate::body::Body;
use crate::decision_log::{self, Entry};
use crate::error::{Fault, Refusal};
use crate::identity::oidc::LoginError;
use crate::metrics::{FaultLabels, RouteLabel};
use crate::policy::Decision;
use crate::reason::{Code, Reason};
use http::{Response, StatusCode};

/// The code of a refusal's own reason. A refusal whose reason is written where it is made
/// (`Forbidden`, `Unauthorized`, `Unavailable`) gets its code there too, through
/// [`Context::refuse_as`]; the codes here for those are only fallbacks.
pub fn code_of(refusal: &Refusal) -> Code {
    match refusal {
        Refusal::BadRequest(_) => Code::BadRequest,
        Refusal::Misdirected => Code::Misdirected,
        Refusal::NoRoute => Code::NoRoute,
        Refusal::Forbidden(_) => Code::Forbidden,
        Refusal::Unauthorized(_) => Code::Unauthorized,
        Refusal::Unavailable(_) => Code::Unavailable,
        Refusal::MethodNotAllowed => Code::MethodNotSupported,
        Refusal::PayloadTooLarge => Code::BodyTooLarge,
        Refusal::UriTooLong(_) => Code::UriTooLong,
        Refusal::BadGateway => Code::UpstreamFailed,
        Refusal::GatewayTimeout => Code::UpstreamTimeout,
        Refusal::RequestTimeout => Code::BodyTimeout,
        Refusal::Unreadable(_) => Code::AuthzForwardedInvalid,
    }
}

impl Context<'_> {
    /// Answers with `refusal`, logging the decision's reasons (when policy decided) and the
    /// refusal's own.
    pub fn refuse(&self, refusal: Refusal, decision: Option<&Decision>) -> Response<Body> {
        let mut reasons = match decision {
            Some(d) => d.reasons.clone(),
            None => Vec::new(),
        };
        if decision.is_none() || !matches!(refusal, Refusal::Forbidden(_)) {
            reasons.push(Reason::new(code_of(&refusal), refusal.reason()));
        }
        self.answer(refusal, &reasons)
    }

    /// Answers with `refusal`, logging its reason under `code`.
    pub fn refuse_as(&self, code: Code, refusal: Refusal) -> Response<Body> {
        let reason = Reason::new(code, refusal.reason());
        self.answer(refusal, &[reason])
    }

    /// Answers with `refusal` (its reason logged under `code`), logging `detail` after it:
    /// what the client is not told.
    pub fn refuse_with(&self, code: Code, refusal: Refusal, detail: Reason) -> Response<Body> {
        let reasons = [Reason::new(code, refusal.reason()), detail];
        self.answer(refusal, &reasons)
    }

    /// Answers a login that could not be started: the provider not available, or the login
    /// refused.
    pub fn refuse_login(&self, e: &LoginError) -> Response<Body> {
        let refusal = Refusal::from(e);
        let code = match refusal {
            Refusal::Unavailable(_) => Code::ProviderUnavailable,
            _ => Code::SignInFailed,
        };
        self.refuse_as(code, refusal)
    }

    fn answer(&self, refusal: Refusal, reasons: &[Reason]) -> Response<Body> {
        let response = match self.enforcement_point {
            Some(_) => refusal.response_as(
                refusal.status_for_enforcement_point(),
                self.request_id,
                self.html,
            ),
            None => refusal.response(self.request_id, self.html),
        };
        self.write("deny", reasons, response.status(), Some(refusal.fault()));
        response
    }

    /// Logs an answer. A `deny` that is not a [`Refusal`] (a redirect to sign in, a failed
    /// callback) gets the fault its status implies.
    pub fn log(&self, decision: &'static str, reasons: &[Reason], status: StatusCode) {
        let fault = (decision == "deny").then(|| Fault::of_status(status));
        self.write(decision, reasons, status, fault);
    }

    /// Logs an answer, with whose fault it was when it is an error.
    pub fn write(
        &self,
        decision: &'static str,
        reasons: &[Reason],
        status: StatusCode,
        fault: Option<Fault>,
    ) {
        let latency = self.started.elapsed();
        let route_name = self.route.as_ref().map(|r| r.name.as_str());
        let peer = &self.conn.peer;
        let (user, groups) = match &self.identity {
            Some(who) => (
                Some(who.email.as_deref().unwrap_or(&who.subject)),
                who.groups.as_slice(),
            ),
            None => (None, &[][..]),
        };
        let upstream = match &self.route {
            Some(route) if self.forwarded => Some(route.upstream.authority.as_str()),
            _ => None,
        };
        let decided = self.decided.as_ref();
        let entry = Entry {
            v: decision_log::SCHEMA,
            kind: "decision",
            time: decision_log::now_rfc3339(),
            request_id: self.request_id.to_str().unwrap_or(""),
            route: route_name,
            host: &self.host,
            method: self.method.as_str(),
            path: &self.path,
            user_agent: self.user_agent.as_deref(),
            client: &self.conn.shown.client_ip,
            tls: self.conn.tls_version,
            device: &peer.fingerprint_hex,
            subject: &peer.subject,
            workload: peer.spiffe_id.as_deref(),
            user,
            groups,
            decision,
            outcome: decided.map(|d| d.outcome.as_str()),
            reasons,
            codes: reasons,
            fault: fault.map(Fault::as_str),
            risk: self.risk.as_ref(),
            upstream,
            endpoint: self.endpoint.as_deref(),
            policy: self.policy.as_ref(),
            shadow: self.shadow.as_ref(),
            grant: decided.and_then(|d| d.grant.as_deref()),
            mode: if self
                .snapshot
                .policy
                .audits(self.route.as_ref().map(|r| &*r.policy))
            {
                "audit"
            } else {
                "enforce"
            },
            enforcement_point: self.enforcement_point.as_deref(),
            status: status.as_u16(),
            latency_ms: decision_log::millis(latency),
        };
        let facts = decided.and_then(|d| d.facts.as_deref());
        self.shared.decisions.record_with_facts(&entry, facts);
        let route = self.route.as_ref();
        let metrics = &self.shared.metrics;
        metrics.request(
            route.map(|r| (&r.label, &r.series)),
            &self.shared.no_route_label,
            decision,
            status.as_u16(),
            latency.as_secs_f64(),
        );
        if let Some(fault) = fault {
            let label = route.map_or(&self.shared.no_route_label, |r| &r.label);
            metrics
                .refusals
                .get_or_create(&FaultLabels {
                    route: RouteLabel(label.clone()),
                    fault: fault.as_str(),
                })
                .inc();
        }
        if let Some(point) = &self.enforcement_point {
            metrics.authz_decision(point, decision);
        }
    }
}
