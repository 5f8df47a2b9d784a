//! Prometheus metrics, registered once and shared by every stage, and exposed in the text
//! format the scraper asks for.

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

/// A certificate's series: the server certificate or one client CA, by file and subject.
/// Bounded: one per certificate the configuration names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CertificateLabels {
    /// `server` or `client_ca`.
    pub role: &'static str,
    /// The file, as the configuration names it.
    pub file: String,
    /// The subject's common name (the whole subject when it has none).
    pub subject: String,
}

/// A CRL's series, by file and issuer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CrlLabels {
    pub file: String,
    /// The issuer's common name (the whole name when it has none).
    pub issuer: String,
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
    pub tls_dates: TlsDates,
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
                "Connections closed at accept, by the limit reached (max_connections, max_connections_per_source, max_handshakes_per_source) or before TLS for their PROXY protocol header (proxy_header_missing, proxy_header_invalid, proxy_header_timeout, proxy_header_untrusted)",
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
            tls_dates: TlsDates::register(r),
            registry,
        })
    }

    pub fn limit(&self, limit: &'static str) {
        self.limits_hit.get_or_create(&Limit { limit }).inc();
    }

    /// Every family, in `format`.
    pub fn render(&self, format: Exposition) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        match format {
            Exposition::OpenMetrics => out,
            Exposition::Prometheus => prometheus_text(&out),
        }
    }
}

/// The dates of the TLS material in force (`tls::lifecycle`), as Unix times: set at start-up
/// and by every applied reload, so an alert compares them with `time()`.
pub struct TlsDates {
    pub certificate_not_before: Family<CertificateLabels, Gauge>,
    pub certificate_not_after: Family<CertificateLabels, Gauge>,
    pub crl_this_update: Family<CrlLabels, Gauge>,
    pub crl_next_update: Family<CrlLabels, Gauge>,
}

impl TlsDates {
    fn register(r: &mut Registry) -> Self {
        Self {
            certificate_not_before: metric(
                r,
                "tls_certificate_not_before_timestamp_seconds",
                "Unix time from which a certificate in force is valid, by role (server, client_ca), file and subject",
            ),
            certificate_not_after: metric(
                r,
                "tls_certificate_not_after_timestamp_seconds",
                "Unix time at which a certificate in force expires, by role (server, client_ca), file and subject",
            ),
            crl_this_update: metric(
                r,
                "tls_crl_this_update_timestamp_seconds",
                "Unix time a CRL in force was issued (thisUpdate), by file and issuer",
            ),
            crl_next_update: metric(
                r,
                "tls_crl_next_update_timestamp_seconds",
                "Unix time by which a CRL in force must be replaced (nextUpdate), by file and issuer",
            ),
        }
    }
}

/// The two text formats of `/metrics`. prometheus-client writes only OpenMetrics, which a
/// parser of the older Prometheus format misreads: it takes a counter's samples
/// (`vigil_requests_total`) for untyped metrics of their own, since that format names a
/// family exactly as its samples are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0.0, for a scraper that asks for it (Prometheus does).
    OpenMetrics,
    /// The Prometheus text format 0.0.4, for every other scraper.
    Prometheus,
}

impl Exposition {
    /// The format for a request's `Accept`: OpenMetrics when it is asked for at least as much
    /// as plain text (`text/plain`, `text/*`, `*/*`), the Prometheus text format otherwise.
    pub fn for_accept(accept: Option<&str>) -> Self {
        let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
        for range in accept.unwrap_or("").split(',') {
            let mut params = range.split(';');
            let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = params
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Exposition::OpenMetrics
        } else {
            Exposition::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// prometheus-client's OpenMetrics text in the Prometheus text format 0.0.4. The samples are
/// the same in both; what differs is the name of a family in its `# HELP` and `# TYPE` lines,
/// which 0.0.4 takes from the samples: a counter `x` (samples `x_total`) is the family
/// `x_total`, an info `x` (samples `x_info`) the gauge `x_info`. 0.0.4 has no `# UNIT`, no
/// `# EOF`, and no types but counter, gauge, histogram, summary and untyped.
fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len() + 1024);
    // prometheus-client writes `# HELP` first, then `# TYPE`, then the samples.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "gauge" | "histogram" | "summary" => ("", kind),
                _ => ("", "untyped"),
            };
            if let Some((_, text)) = help.take().filter(|(named, _)| *named == name) {
                let _ = writeln!(out, "# HELP {name}{suffix} {text}");
            }
            let _ = writeln!(out, "# TYPE {name}{suffix} {kind}");
        } else if !(line.starts_with("# UNIT ") || line == "# EOF") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scraper_chooses_the_format() {
        let cases = [
            (None, Exposition::Prometheus),
            (Some(""), Exposition::Prometheus),
            (Some("*/*"), Exposition::Prometheus),
            (Some("text/plain; version=0.0.4"), Exposition::Prometheus),
            (
                Some("application/openmetrics-text"),
                Exposition::OpenMetrics,
            ),
            (
                Some("Application/OpenMetrics-Text; version=1.0.0; charset=utf-8"),
                Exposition::OpenMetrics,
            ),
            // Prometheus 2 and 3.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                Exposition::OpenMetrics,
            ),
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                Exposition::OpenMetrics,
            ),
            // Asked for less than plain text, or not at all.
            (
                Some("text/plain;q=0.9, application/openmetrics-text;q=0.5"),
                Exposition::Prometheus,
            ),
            (
                Some("application/openmetrics-text;q=0"),
                Exposition::Prometheus,
            ),
        ];
        for (accept, expected) in cases {
            assert_eq!(Exposition::for_accept(accept), expected, "{accept:?}");
        }
    }

    #[test]
    fn families_are_named_as_their_samples_in_the_prometheus_format() {
        let openmetrics = "# HELP vigil_requests Requests.\n# TYPE vigil_requests counter\n\
            vigil_requests_total{route=\"r\"} 1\n\
            # HELP vigil_open Open.\n# TYPE vigil_open gauge\nvigil_open 2\n\
            # HELP vigil_build Build.\n# TYPE vigil_build info\nvigil_build_info{v=\"1\"} 1\n\
            # HELP vigil_wait_seconds Wait.\n# TYPE vigil_wait_seconds histogram\n\
            # UNIT vigil_wait_seconds seconds\n\
            vigil_wait_seconds_sum 0.5\nvigil_wait_seconds_count 1\n\
            vigil_wait_seconds_bucket{le=\"+Inf\"} 1\n# EOF\n";
        let expected = "# HELP vigil_requests_total Requests.\n# TYPE vigil_requests_total counter\n\
            vigil_requests_total{route=\"r\"} 1\n\
            # HELP vigil_open Open.\n# TYPE vigil_open gauge\nvigil_open 2\n\
            # HELP vigil_build_info Build.\n# TYPE vigil_build_info gauge\nvigil_build_info{v=\"1\"} 1\n\
            # HELP vigil_wait_seconds Wait.\n# TYPE vigil_wait_seconds histogram\n\
            vigil_wait_seconds_sum 0.5\nvigil_wait_seconds_count 1\n\
            vigil_wait_seconds_bucket{le=\"+Inf\"} 1\n";
        assert_eq!(prometheus_text(openmetrics), expected);
    }

    /// Every family Vigil registers keeps its samples, and its name (what dashboards and
    /// alerts use) is the same in both formats.
    #[test]
    fn both_formats_carry_the_same_samples() {
        let metrics = Metrics::new();
        metrics.handshakes.inc();
        let samples = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned)
                .collect()
        };
        let openmetrics = metrics.render(Exposition::OpenMetrics);
        let prometheus = metrics.render(Exposition::Prometheus);
        assert_eq!(samples(&openmetrics), samples(&prometheus));
        assert!(
            prometheus.contains(
                "# TYPE vigil_tls_handshakes_total counter\nvigil_tls_handshakes_total 1\n"
            )
        );
        assert!(
            openmetrics
                .contains("# TYPE vigil_tls_handshakes counter\nvigil_tls_handshakes_total 1\n")
        );
    }
}
