//! Prometheus metrics, registered once and shared by every stage.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
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
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route, decision and status",
            requests.clone(),
        );
        let request_duration =
            Family::<RouteOnly, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head, by route",
            request_duration.clone(),
        );
        let handshake_failures = Family::<Reason, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "Failed TLS handshakes, by reason",
            handshake_failures.clone(),
        );
        let handshakes = Counter::default();
        registry.register(
            "tls_handshakes",
            "Completed TLS handshakes",
            handshakes.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Downstream connections currently open (after the handshake)",
            connections_open.clone(),
        );
        let connections_rejected = Family::<Reason, Counter>::default();
        registry.register(
            "connections_rejected",
            "Connections closed at accept, by the limit reached (max_connections, max_connections_per_source, max_handshakes_per_source)",
            connections_rejected.clone(),
        );
        let connections_cut = Family::<Reason, Counter>::default();
        registry.register(
            "connections_cut",
            "Open connections closed because they no longer passed verification, by reason",
            connections_cut.clone(),
        );
        let revocations = Family::<Reason, Counter>::default();
        registry.register(
            "revocations",
            "Revocations received, by kind (session, user, device, backchannel)",
            revocations.clone(),
        );
        let revocation_cutoff = latency_histogram();
        registry.register(
            "revocation_cutoff_seconds",
            "Time from a revocation (admin, back-channel logout, CRL reload) to an affected open connection being cut off",
            revocation_cutoff.clone(),
        );
        let admin_refusals = Family::<Reason, Counter>::default();
        registry.register(
            "admin_refusals",
            "Admin listener connections and requests refused before they were answered, by reason",
            admin_refusals.clone(),
        );
        let tunnels_open = Gauge::default();
        registry.register(
            "tunnels_open",
            "Upgraded connections (WebSocket and the like) currently spliced to an upstream",
            tunnels_open.clone(),
        );
        let limits_hit = Family::<Limit, Counter>::default();
        registry.register(
            "limits_hit",
            "Client limits reached, by limit",
            limits_hit.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed upstream exchanges, by route and kind",
            upstream_errors.clone(),
        );
        let decision_log_dropped = Counter::default();
        registry.register(
            "decision_log_dropped",
            "Decision log lines dropped because the writer fell behind",
            decision_log_dropped.clone(),
        );
        let config_generation = Gauge::default();
        registry.register(
            "config_generation",
            "Generation of the configuration snapshot in use",
            config_generation.clone(),
        );
        let device_inventory_stale = Gauge::default();
        registry.register(
            "device_inventory_stale",
            "1 when the device inventory could not be read for longer than max_stale",
            device_inventory_stale.clone(),
        );
        let device_inventory_devices = Gauge::default();
        registry.register(
            "device_inventory_devices",
            "Devices in the inventory",
            device_inventory_devices.clone(),
        );
        let config_reloads = Counter::default();
        registry.register(
            "config_reloads",
            "Configuration reloads applied",
            config_reloads.clone(),
        );
        let config_reload_failures = Counter::default();
        registry.register(
            "config_reload_failures",
            "Configuration reloads refused because the new configuration was invalid",
            config_reload_failures.clone(),
        );
        let config_last_reload_success = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last configuration load that was applied",
            config_last_reload_success.clone(),
        );
        Arc::new(Self {
            registry,
            requests,
            request_duration,
            handshake_failures,
            handshakes,
            connections_open,
            connections_rejected,
            connections_cut,
            revocations,
            revocation_cutoff,
            admin_refusals,
            tunnels_open,
            limits_hit,
            upstream_errors,
            decision_log_dropped,
            config_generation,
            device_inventory_stale,
            device_inventory_devices,
            config_reloads,
            config_reload_failures,
            config_last_reload_success,
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

fn latency_histogram() -> Histogram {
    // 100 µs to ~52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}
