//! Metrics of the state replicas share (`[state] backend = "redis"`): how current this
//! replica's copy is, and the traffic with Redis.

use super::metric;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

pub struct Fleet {
    /// 1 once the whole state was read from Redis.
    pub synced: Gauge,
    /// Seconds since Redis last answered the stream reader.
    pub age: Gauge<f64, AtomicU64>,
    /// 1 while the copy is older than `[state] max_stale` (or was never read).
    pub stale: Gauge,
    /// Times the connection to Redis was lost.
    pub reconnects: Counter,
    /// Times the whole state was read back.
    pub resyncs: Counter,
    /// Changes of other replicas applied here.
    pub applied: Counter,
    /// This replica's changes written to Redis.
    pub written: Counter,
    /// This replica's changes waiting for Redis.
    pub queued: Gauge,
    /// Other replicas whose session or assertion keys differ from this one's.
    pub keys_differ: Gauge,
}

impl Fleet {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            synced: metric(
                r,
                "state_synced",
                "1 once this replica has read the shared state from Redis",
            ),
            age: metric(
                r,
                "state_age_seconds",
                "Seconds since Redis last answered this replica",
            ),
            stale: metric(
                r,
                "state_stale",
                "1 while this replica's copy of the shared state is older than [state] max_stale",
            ),
            reconnects: metric(
                r,
                "state_reconnects",
                "Times the connection to Redis was lost",
            ),
            resyncs: metric(
                r,
                "state_resyncs",
                "Times the whole shared state was read from Redis",
            ),
            applied: metric(
                r,
                "state_changes_applied",
                "Changes made on other replicas applied here",
            ),
            written: metric(
                r,
                "state_changes_written",
                "This replica's changes written to Redis",
            ),
            queued: metric(
                r,
                "state_changes_queued",
                "This replica's changes waiting for Redis",
            ),
            keys_differ: metric(
                r,
                "state_keys_differ",
                "Other replicas whose session or assertion key ids differ from this replica's",
            ),
        }
    }

    /// Whether the copy was read, how old it is (seconds), whether that is too old.
    pub fn observe(&self, synced: bool, age: f64, stale: bool) {
        self.synced.set(i64::from(synced));
        self.stale.set(i64::from(stale));
        self.age.set(age.max(0.0));
    }
}
