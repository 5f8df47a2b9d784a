//! The record phase: one decision log line and the request metrics for every answer, with the
//! fault of every refusal.

use super::context::Context;
use crate::body::Body;
use crate::decision_log::{self, Entry};
use crate::error::{Fault, Refusal};
use crate::metrics::{FaultLabels, RequestLabels, RouteLabel, RouteOnly};
use crate::policy::Decision;
use http::{Response, StatusCode};

impl Context<'_> {
    /// Answers with `refusal`, logging the decision's reasons (when policy decided) and the
    /// refusal's own.
    pub fn refuse(&self, refusal: Refusal, decision: Option<&Decision>) -> Response<Body> {
        let response = refusal.response(self.request_id, self.html);
        let mut reasons = match decision {
            Some(d) => d.reasons.clone(),
            None => Vec::new(),
        };
        if decision.is_none() || !matches!(refusal, Refusal::Forbidden(_)) {
            reasons.push(refusal.reason().to_owned());
        }
        self.write("deny", &reasons, response.status(), Some(refusal.fault()));
        response
    }

    /// Refuses with the public reason of `refusal`, logging `detail` as the reason.
    pub fn refuse_with(&self, refusal: Refusal, detail: String) -> Response<Body> {
        let response = refusal.response(self.request_id, self.html);
        self.write(
            "deny",
            &[refusal.reason().to_owned(), detail],
            response.status(),
            Some(refusal.fault()),
        );
        response
    }

    /// Logs an answer. A `deny` that is not a [`Refusal`] (a redirect to sign in, a failed
    /// callback) gets the fault its status implies.
    pub fn log(&self, decision: &'static str, reasons: &[String], status: StatusCode) {
        let fault = (decision == "deny").then(|| Fault::of_status(status));
        self.write(decision, reasons, status, fault);
    }

    /// Logs an answer, with whose fault it was when it is an error.
    pub fn write(
        &self,
        decision: &'static str,
        reasons: &[String],
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
        self.shared.decisions.record(&Entry {
            time: decision_log::now_rfc3339(),
            request_id: self.request_id.to_str().unwrap_or(""),
            route: route_name,
            host: &self.host,
            method: self.method.as_str(),
            path: &self.path,
            client: self.conn.remote.ip(),
            device: &peer.fingerprint_hex,
            subject: &peer.subject,
            workload: peer.spiffe_id.as_deref(),
            user,
            groups,
            decision,
            reasons,
            fault: fault.map(Fault::as_str),
            risk: self.risk.as_ref(),
            mode: if self.snapshot.policy.audit {
                "audit"
            } else {
                "enforce"
            },
            status: status.as_u16(),
            latency_ms: decision_log::millis(latency),
        });
        let label = match &self.route {
            Some(r) => RouteLabel(r.label.clone()),
            None => RouteLabel(self.shared.no_route_label.clone()),
        };
        let metrics = &self.shared.metrics;
        metrics
            .requests
            .get_or_create(&RequestLabels {
                route: label.clone(),
                decision,
                status: status.as_u16(),
            })
            .inc();
        if let Some(fault) = fault {
            metrics
                .refusals
                .get_or_create(&FaultLabels {
                    route: label.clone(),
                    fault: fault.as_str(),
                })
                .inc();
        }
        metrics
            .request_duration
            .get_or_create(&RouteOnly { route: label })
            .observe(latency.as_secs_f64());
    }
}
