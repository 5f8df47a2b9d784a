//! Metrics of Rego policies: evaluations by result, their time, and shadow disagreements.

use super::{RouteLabel, metric, register};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::fmt::Write as _;
use std::sync::Arc;

/// A policy file, as the configuration names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyLabel(pub Arc<str>);

impl EncodeLabelValue for PolicyLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EvaluationLabels {
    pub route: RouteLabel,
    pub policy: PolicyLabel,
    /// `enforced` or `shadow`.
    pub role: &'static str,
    /// allow, deny, undefined, malformed, error or budget.
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PolicyLabels {
    pub route: RouteLabel,
    pub policy: PolicyLabel,
    pub role: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ShadowLabels {
    pub route: RouteLabel,
    pub policy: PolicyLabel,
    /// The enforced decision and the shadow's: allow, deny or step_up.
    pub enforced: &'static str,
    pub shadow: &'static str,
}

pub struct Policies {
    pub evaluations: Family<EvaluationLabels, Counter>,
    pub evaluation_duration: Family<PolicyLabels, Histogram>,
    pub shadow_disagreements: Family<ShadowLabels, Counter>,
}

impl Policies {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            evaluations: metric(
                r,
                "policy_evaluations",
                "Rego policy evaluations, by route, policy file, role (enforced or shadow) and result (allow, deny, undefined, malformed, error, budget)",
            ),
            evaluation_duration: register(
                r,
                "policy_evaluation_seconds",
                "Time of one Rego policy evaluation, by route, policy file and role",
                Family::new_with_constructor(evaluation_histogram as fn() -> _),
            ),
            shadow_disagreements: metric(
                r,
                "policy_shadow_disagreements",
                "Requests on which a route's shadow policy decided otherwise than the enforced decision, by route, shadow policy file and both decisions",
            ),
        }
    }
}

/// Every result an evaluation can have.
pub const RESULTS: &[&str] = &["allow", "deny", "undefined", "malformed", "error", "budget"];

impl Policies {
    /// The evaluation series of every route's policies, at 0.
    pub fn precreate<'a>(&self, routes: impl IntoIterator<Item = &'a crate::routing::Route>) {
        for route in routes {
            let policies = [
                (route.policy.rego.as_ref(), "enforced"),
                (route.policy.shadow.as_ref(), "shadow"),
            ];
            for (rego, role) in policies {
                let Some(rego) = rego else { continue };
                for result in RESULTS {
                    let _ = self.evaluations.get_or_create(&EvaluationLabels {
                        route: RouteLabel(route.label.clone()),
                        policy: PolicyLabel(rego.label.clone()),
                        role,
                        result,
                    });
                }
            }
        }
    }

    /// One decision's policy runs: the enforced policy's, the shadow's, and a disagreement.
    pub fn record(&self, route: &Arc<str>, decision: &crate::policy::Decision) {
        let route = RouteLabel(route.clone());
        let shadow = decision.shadow.as_ref();
        let runs = [
            (decision.policy.as_ref(), "enforced"),
            (shadow.and_then(|s| s.run.as_ref()), "shadow"),
        ];
        for (run, role) in runs {
            let Some(run) = run else { continue };
            let policy = PolicyLabel(run.name.clone());
            self.evaluations
                .get_or_create(&EvaluationLabels {
                    route: route.clone(),
                    policy: policy.clone(),
                    role,
                    result: run.result,
                })
                .inc();
            self.evaluation_duration
                .get_or_create(&PolicyLabels {
                    route: route.clone(),
                    policy,
                    role,
                })
                .observe(run.elapsed.0.as_secs_f64());
        }
        if let Some(shadow) = shadow.filter(|s| !s.agrees) {
            self.shadow_disagreements
                .get_or_create(&ShadowLabels {
                    route,
                    policy: PolicyLabel(shadow.policy.clone()),
                    enforced: decision.outcome.as_str(),
                    shadow: shadow.decision.as_str(),
                })
                .inc();
        }
    }
}

fn evaluation_histogram() -> Histogram {
    // 1 µs to ~16 ms.
    Histogram::new(exponential_buckets(0.000_001, 2.0, 15))
}
