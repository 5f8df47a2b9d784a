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
    /// The evaluation series of `(route, policy file, role)`, at 0 for every result.
    pub fn precreate(&self, series: impl IntoIterator<Item = (Arc<str>, Arc<str>, &'static str)>) {
        for (route, policy, role) in series {
            for result in RESULTS {
                let _ = self.evaluations.get_or_create(&EvaluationLabels {
                    route: RouteLabel(route.clone()),
                    policy: PolicyLabel(policy.clone()),
                    role,
                    result,
                });
            }
        }
    }

    /// One evaluation of `policy` on `route`, in `role` (`enforced` or `shadow`).
    pub fn evaluated(
        &self,
        route: &Arc<str>,
        policy: &Arc<str>,
        role: &'static str,
        result: &'static str,
        elapsed: std::time::Duration,
    ) {
        let route = RouteLabel(route.clone());
        let policy = PolicyLabel(policy.clone());
        self.evaluations
            .get_or_create(&EvaluationLabels {
                route: route.clone(),
                policy: policy.clone(),
                role,
                result,
            })
            .inc();
        self.evaluation_duration
            .get_or_create(&PolicyLabels {
                route,
                policy,
                role,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A request on which the shadow `policy` decided `shadow` and the route `enforced`.
    pub fn disagreed(
        &self,
        route: &Arc<str>,
        policy: &Arc<str>,
        enforced: &'static str,
        shadow: &'static str,
    ) {
        self.shadow_disagreements
            .get_or_create(&ShadowLabels {
                route: RouteLabel(route.clone()),
                policy: PolicyLabel(policy.clone()),
                enforced,
                shadow,
            })
            .inc();
    }
}

fn evaluation_histogram() -> Histogram {
    // 1 µs to ~16 ms.
    Histogram::new(exponential_buckets(0.000_001, 2.0, 15))
}
