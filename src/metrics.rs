//! Prometheus metrics, registered once and shared by every stage.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
use std::fmt::Write;
use std::sync::Arc;

/// A route name as a label value; cloning it is a reference-count bump, not an allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteLabel(pub Arc<str>);

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: RouteLabel,
    /// allow, deny, or audit (denied by policy, let through in audit mode).
    pub decision: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FaultLabels {
    pub route: RouteLabel,
    /// client, policy, upstream or internal (see `error::Fault`).
    pub fault: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteOnly {
    pub route: RouteLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub route: RouteLabel,
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct Limit {
    pub limit: &'static str,
}

/// Every metric Vigil exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub refusals: Family<FaultLabels, Counter>,
    pub request_duration: Family<RouteOnly, Histogram>,
    pub handshake_failures: Family<Reason, Counter>,
    pub handshakes: Counter,
    pub connections_open: Gauge,
    pub connections_rejected: Family<Reason, Counter>,
    pub connections_cut: Family<Reason, Counter>,
    pub revocations: Family<Reason, Counter>,
    pub revocation_cutoff: Histogram,
    pub admin_refusals: Family<Reason, Counter>,
    pub tunnels_open: Gauge,
    pub limits_hit: Family<Limit, Counter>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub decision_log_dropped: Counter,
    pub config_generation: Gauge,
    pub device_inventory_stale: Gauge,
    pub device_inventory_devices: Gauge,
    pub config_reloads: Counter,
    pub config_reload_failures: Counter,
    pub config_last_reload_success: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("vigil");
        let r = &mut registry;
        // Registered in this order, which is the order of the exposition.
        Arc::new(Self {
            requests: metric(
                r,
                "requests",
                "Requests answered, by route, decision and status",
            ),
            refusals: metric(r, "refusals", "Refusals and errors, by route and fault"),
            request_duration: register(
                r,
                "request_duration_seconds",
                "Time from request head to response head, by route",
                Family::new_with_constructor(latency_histogram as fn() -> _),
            ),
            handshake_failures: metric(
                r,
                "tls_handshake_failures",
                "Failed TLS handshakes, by reason",
            ),
            handshakes: metric(r, "tls_handshakes", "Completed TLS handshakes"),
            connections_open: metric(
                r,
                "connections_open",
                "Downstream connections currently open (after the handshake)",
            ),
            connections_rejected: metric(
                r,
                "connections_rejected",
                "Connections closed at accept, by the limit reached (max_connections, max_connections_per_source, max_handshakes_per_source)",
            ),
            connections_cut: metric(
                r,
                "connections_cut",
                "Open connections closed because they no longer passed verification, by reason",
            ),
            revocations: metric(
                r,
                "revocations",
                "Revocations received, by kind (session, user, device, backchannel)",
            ),
            revocation_cutoff: register(
                r,
                "revocation_cutoff_seconds",
                "Time from a revocation (admin, back-channel logout, CRL reload) to an affected open connection being cut off",
                latency_histogram(),
            ),
            admin_refusals: metric(
                r,
                "admin_refusals",
                "Admin listener connections and requests refused before they were answered, by reason",
            ),
            tunnels_open: metric(
                r,
                "tunnels_open",
                "Upgraded connections (WebSocket and the like) currently spliced to an upstream",
            ),
            limits_hit: metric(r, "limits_hit", "Client limits reached, by limit"),
            upstream_errors: metric(
                r,
                "upstream_errors",
                "Failed upstream exchanges, by route and kind",
            ),
            decision_log_dropped: metric(
                r,
                "decision_log_dropped",
                "Decision log lines dropped because the writer fell behind",
            ),
            config_generation: metric(
                r,
                "config_generation",
                "Generation of the configuration snapshot in use",
            ),
            device_inventory_stale: metric(
                r,
                "device_inventory_stale",
                "1 when the device inventory could not be read for longer than max_stale",
            ),
            device_inventory_devices: metric(
                r,
                "device_inventory_devices",
                "Devices in the inventory",
            ),
            config_reloads: metric(r, "config_reloads", "Configuration reloads applied"),
            config_reload_failures: metric(
                r,
                "config_reload_failures",
                "Configuration reloads refused because the new configuration was invalid",
            ),
            config_last_reload_success: metric(
                r,
                "config_last_reload_success_timestamp_seconds",
                "Unix time of the last configuration load that was applied",
            ),
            registry,
        })
    }

    pub fn limit(&self, limit: &'static str) {
        self.limits_hit.get_or_create(&Limit { limit }).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A new metric of the type asked for, registered as `vigil_<name>` with `help`.
fn metric<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    register(registry, name, help, M::default())
}

/// `metric`, registered as `vigil_<name>` with `help`. A metric is a handle: the registry
/// and [`Metrics`] share one.
fn register<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}
