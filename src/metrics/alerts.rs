//! Metrics of alerts: each alert's fate by kind, and the queue waiting for the webhook.

use super::metric;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct Labels {
    /// One of [`super::labels::ALERT_KINDS`].
    pub kind: &'static str,
    /// One of [`super::labels::ALERT_RESULTS`].
    pub result: &'static str,
}

pub struct Alerts {
    /// Alerts by kind and by what became of them at the webhook.
    pub total: Family<Labels, Counter>,
    /// Alerts waiting for delivery.
    pub queued: Gauge,
}

impl Alerts {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            total: metric(
                r,
                "alerts",
                "Alerts handed to the webhook, by kind and result (sent: the receiver answered 2xx; failed: every attempt failed or the receiver refused it; dropped: pushed out of a full queue or left when the webhook was removed)",
            ),
            queued: metric(
                r,
                "alerts_queued",
                "Alerts waiting for delivery to the webhook",
            ),
        }
    }

    /// Every `kind` and `result` pair at 0.
    pub(super) fn precreate(&self) {
        for kind in super::labels::ALERT_KINDS {
            for result in super::labels::ALERT_RESULTS {
                let _ = self.total.get_or_create(&Labels { kind, result });
            }
        }
    }
}
