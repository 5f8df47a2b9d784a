//! Metrics of just-in-time access: grants in force, requests pending, and every change.

use super::metric;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct Event {
    /// One of [`super::labels::ACCESS_EVENTS`].
    pub event: &'static str,
}

pub struct Access {
    /// Just-in-time grants in force.
    pub grants_active: Gauge,
    /// Access requests waiting for an approver.
    pub requests_pending: Gauge,
    /// Changes to grants and access requests, by `event`.
    pub events: Family<Event, Counter>,
}

impl Access {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            grants_active: metric(r, "grants_active", "Just-in-time grants in force"),
            requests_pending: metric(
                r,
                "access_requests_pending",
                "Just-in-time access requests waiting for an approver",
            ),
            events: metric(
                r,
                "access_events",
                "Changes to just-in-time grants and access requests, by event (grant_created, grant_revoked, grant_expired, access_requested, access_approved, access_refused)",
            ),
        }
    }
}
