//! Metrics of the detectors and of blocks: blocks in force, detectors fired by action, and
//! keys evicted from the detectors' full tables.

use super::metric;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct Fired {
    /// One of [`super::labels::DETECTORS`].
    pub detector: &'static str,
    /// One of [`super::labels::DETECTOR_ACTIONS`].
    pub action: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct Detector {
    /// One of [`super::labels::DETECTORS`].
    pub detector: &'static str,
}

pub struct Detectors {
    /// Blocks in force (detectors' and operators').
    pub blocks_active: Gauge,
    /// Detectors fired, by detector and action.
    pub fired: Family<Fired, Counter>,
    /// Keys dropped from a detector's full table, by detector.
    pub evictions: Family<Detector, Counter>,
}

impl Detectors {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            blocks_active: metric(
                r,
                "blocks_active",
                "Subjects blocked now, by detectors or operators",
            ),
            fired: metric(
                r,
                "detector_fired",
                "Detectors whose count went over their threshold, by detector and action (block, raise_risk)",
            ),
            evictions: metric(
                r,
                "detector_evictions",
                "Keys dropped from a detector's full table to make room (table_size reached), by detector",
            ),
        }
    }

    /// Every detector and action at 0.
    pub(super) fn precreate(&self) {
        for detector in super::labels::DETECTORS {
            let _ = self.evictions.get_or_create(&Detector { detector });
            for action in super::labels::DETECTOR_ACTIONS {
                let _ = self.fired.get_or_create(&Fired { detector, action });
            }
        }
    }

    /// The eviction counter of `detector`, for its table to count into.
    pub fn evictions_of(&self, detector: &'static str) -> Counter {
        self.evictions.get_or_create(&Detector { detector }).clone()
    }
}
