//! Prometheus metrics, registered once and shared by every stage, and exposed in the text
//! format the scraper asks for.
//!
//! Every family with a bounded label set is created whole at start (and, for per-route
//! families, at each reload for new routes), so that a failure that never happened reads 0
//! rather than being absent: `rate()` and alerts then work from the first scrape. The label
//! values are listed once, in [`labels`]; tests beside this module check that the code
//! emits no value the lists lack.

pub mod access;
pub mod alerts;
pub mod detectors;
pub mod fleet;
pub mod policy;
pub mod process;

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

/// One route's series that every request of it touches, looked up by its first request and
/// kept with the route: the next ones bump them without hashing labels. Series are never
/// removed (a removed route's stay), so a kept one stays the one `/metrics` shows.
#[derive(Debug, Default)]
pub struct RouteSeries {
    duration: std::sync::OnceLock<Histogram>,
    /// `vigil_requests_total` for the answer most requests get: allowed, 200.
    allowed_ok: std::sync::OnceLock<Counter>,
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

/// One endpoint of one route's upstream. Bounded by the configuration: the addresses its
/// upstream URLs name or resolve to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EndpointLabels {
    pub route: RouteLabel,
    /// `ip:port`.
    pub endpoint: String,
}

/// The families of the upstream stacks, handed to each route's stack (see
/// `forward::Upstream::attach`), which creates its endpoints' series and keeps them current.
#[derive(Clone, Default)]
pub struct UpstreamFamilies {
    /// `vigil_upstream_endpoint_healthy{route,endpoint}`: 1 while neither unhealthy nor ejected.
    pub healthy: Family<EndpointLabels, Gauge>,
    /// `vigil_upstream_endpoint_ejections_total{route,endpoint}`.
    pub ejections: Family<EndpointLabels, Counter>,
    /// `vigil_upstream_endpoint_in_flight{route,endpoint}`: requests awaiting its answer.
    pub in_flight: Family<EndpointLabels, Gauge>,
    /// `vigil_upstream_retries_total{route}`.
    pub retries: Family<RouteOnly, Counter>,
}

impl UpstreamFamilies {
    fn register(r: &mut Registry) -> Self {
        Self {
            healthy: metric(
                r,
                "upstream_endpoint_healthy",
                "1 while the endpoint is neither unhealthy by its health checks nor ejected, 0 otherwise",
            ),
            ejections: metric(
                r,
                "upstream_endpoint_ejections",
                "Times the endpoint was ejected for consecutive connect failures or 5xx answers",
            ),
            in_flight: metric(
                r,
                "upstream_endpoint_in_flight",
                "Requests sent to the endpoint that await its response head",
            ),
            retries: metric(
                r,
                "upstream_retries",
                "Requests sent again after a failed attempt, by route",
            ),
        }
    }
}

/// A decision made for an `[authz]` enforcement point. Bounded: one per enforcement point
/// the configuration names, and `(none)` for callers that are none of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AuthzLabels {
    pub enforcement_point: RouteLabel,
    /// allow, deny, or audit.
    pub decision: &'static str,
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

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct Issuer {
    pub issuer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    /// `release` or `debug`.
    profile: &'static str,
}

/// The values of every bounded label, each list the one place they are named. Code that
/// counts a new value must add it here; the tests check that it did.
pub mod labels {
    /// `vigil_tls_handshake_failures_total{reason}` (see `tls::handshake_failure_reason`).
    pub const HANDSHAKE_FAILURES: &[&str] = &[
        "timeout",
        "closed_by_client",
        "io",
        "no_certificate",
        "expired",
        "not_yet_valid",
        "unknown_issuer",
        "revoked",
        "unknown_revocation_status",
        "expired_crl",
        "bad_signature",
        "wrong_purpose",
        "bad_certificate",
        "bad_crl",
        "no_shared_key_exchange",
        "protocol_version",
        "incompatible",
        "alert_from_client",
        "protocol_error",
        "other",
        "device_revoked",
    ];
    /// `vigil_connections_rejected_total{reason}` (`server::Refused`).
    pub const CONNECTION_REJECTIONS: &[&str] = &[
        "max_connections",
        "max_connections_per_source",
        "max_handshakes_per_source",
        "proxy_header_missing",
        "proxy_header_invalid",
        "proxy_header_timeout",
        "proxy_header_untrusted",
    ];
    /// `vigil_connections_cut_total{reason}` (`live`), besides the certificate checks of
    /// [`HANDSHAKE_FAILURES`] a connection can fail again after a reload (the series of both
    /// lists are created).
    pub const CUTS: &[&str] = &[
        "certificate_expired",
        "device_revoked",
        "session_revoked",
        "session_expired",
        "session_ended",
        "session_unverifiable",
        "token_expired",
        "token_revoked",
        "route_removed",
        "risk",
        "policy",
        "grant_ended",
        "blocked",
        "shared_state",
    ];
    /// `vigil_access_events_total{event}` (`jit`).
    pub const ACCESS_EVENTS: &[&str] = &[
        "grant_created",
        "grant_revoked",
        "grant_expired",
        "access_requested",
        "access_approved",
        "access_refused",
    ];
    /// `vigil_alerts_total{kind}`: the alert kinds, as alerts name them.
    pub const ALERT_KINDS: &[&str] = &[
        "block",
        "block_lifted",
        "detector_fired",
        "grant_requested",
        "grant_approved",
        "grant_refused",
        "grant_expired",
        "grant_revoked",
        "grant_created",
    ];
    /// `vigil_detector_fired_total{detector}` and `vigil_detector_evictions_total{detector}`:
    /// the detectors of `[detectors]`.
    pub const DETECTORS: &[&str] = &[
        "denials",
        "failed_logins",
        "addresses",
        "countries",
        "revoked",
    ];
    /// `vigil_detector_fired_total{action}`.
    pub const DETECTOR_ACTIONS: &[&str] = &["block", "raise_risk"];
    /// `vigil_alerts_total{result}`: what became of an alert at the webhook.
    pub const ALERT_RESULTS: &[&str] = &["sent", "failed", "dropped"];
    /// `vigil_revocations_total{reason}`: the kinds of revocation.
    pub const REVOCATIONS: &[&str] = &["session", "user", "device", "backchannel", "logout"];
    /// `vigil_admin_refusals_total{reason}` (`admin::gate::Refusal`, `admin::limits`).
    pub const ADMIN_REFUSALS: &[&str] = &[
        "max_connections",
        "max_connections_per_source",
        "handshake_timeout",
        "header_read_timeout",
        "client_certificate",
        "host",
        "origin",
        "token_missing",
        "token_invalid",
        "content_type",
    ];
    /// `vigil_limits_hit_total{limit}`.
    pub const LIMITS: &[&str] = &[
        "header_read_timeout",
        "header_size",
        "idle_timeout",
        "target_size",
        "body_size",
        "body_read_timeout",
    ];
    /// `vigil_refusals_total{route,fault}` (`error::Fault`).
    pub const FAULTS: &[&str] = &["client", "policy", "upstream", "internal"];
    /// `vigil_upstream_errors_total{route,kind}`.
    pub const UPSTREAM_ERRORS: &[&str] = &["connect", "exchange", "timeout", "shed"];
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
    pub upstreams: UpstreamFamilies,
    pub authz_decisions: Family<AuthzLabels, Counter>,
    pub decision_log_dropped: Counter,
    pub config: ConfigFamilies,
    pub tls_dates: TlsDates,
    pub components: Components,
    pub policies: policy::Policies,
    pub access: access::Access,
    pub alerts: alerts::Alerts,
    pub detectors: detectors::Detectors,
    pub fleet: fleet::Fleet,
    /// The standard `process_*` families, without the prefix.
    process: Registry,
}

/// The state of what Vigil depends on (the identity provider, the device inventory), set at
/// scrape time from what `/readyz` reads.
pub struct Components {
    pub device_inventory_stale: Gauge,
    pub device_inventory_devices: Gauge,
    pub identity_provider_up: Family<Issuer, Gauge>,
    pub identity_provider_last_success: Family<Issuer, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub device_inventory_last_success: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Components {
    fn register(r: &mut Registry) -> Self {
        Self {
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
            identity_provider_up: metric(
                r,
                "identity_provider_up",
                "1 while the identity provider is discovered and answering, 0 while it is not (sign-ins then answer 503), by issuer; absent without [oidc]",
            ),
            identity_provider_last_success: metric(
                r,
                "identity_provider_last_success_timestamp_seconds",
                "Unix time of the last answer from the identity provider (discovery, check or token exchange), by issuer; 0 before the first",
            ),
            device_inventory_last_success: metric(
                r,
                "device_inventory_last_success_timestamp_seconds",
                "Unix time of the last successful read of the device inventory; 0 before the first and without [devices]",
            ),
        }
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut metrics = Self::register();
        metrics.build_info();
        metrics.precreate();
        Arc::new(metrics)
    }

    /// Every family, registered in the order of the exposition.
    fn register() -> Self {
        let r = &mut Registry::with_prefix("vigil");
        Self {
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
                "Revocations received, by kind (session, user, device, backchannel, logout)",
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
            upstreams: UpstreamFamilies::register(r),
            authz_decisions: metric(
                r,
                "authz_decisions",
                "Decisions made for [authz] enforcement points, by enforcement point ((none) for a caller that is none of them) and decision",
            ),
            decision_log_dropped: metric(
                r,
                "decision_log_dropped",
                "Decision log lines dropped because the writer fell behind",
            ),
            config: ConfigFamilies::register(r),
            tls_dates: TlsDates::register(r),
            components: Components::register(r),
            policies: policy::Policies::register(r),
            access: access::Access::register(r),
            alerts: alerts::Alerts::register(r),
            detectors: detectors::Detectors::register(r),
            fleet: fleet::Fleet::register(r),
            process: process_registry(),
            registry: std::mem::take(r),
        }
    }

    /// `vigil_build_info`: the version running, as the labels of a gauge that is always 1 (a
    /// gauge rather than an OpenMetrics info, so that it has one name and one type in both
    /// formats, as `prometheus_build_info` has).
    fn build_info(&mut self) {
        let labels = BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        };
        let build: Family<BuildLabels, Gauge> = Family::default();
        build.get_or_create(&labels).set(1);
        self.registry.register(
            "build_info",
            "The version of Vigil running, as labels (always 1)",
            build,
        );
    }

    /// Every series of the families whose label values are fixed, at 0.
    fn precreate(&self) {
        for reason in labels::HANDSHAKE_FAILURES {
            let _ = self.handshake_failures.get_or_create(&Reason { reason });
        }
        for reason in labels::CONNECTION_REJECTIONS {
            let _ = self.connections_rejected.get_or_create(&Reason { reason });
        }
        for reason in labels::CUTS.iter().chain(labels::HANDSHAKE_FAILURES) {
            let _ = self.connections_cut.get_or_create(&Reason { reason });
        }
        for reason in labels::REVOCATIONS {
            let _ = self.revocations.get_or_create(&Reason { reason });
        }
        for reason in labels::ADMIN_REFUSALS {
            let _ = self.admin_refusals.get_or_create(&Reason { reason });
        }
        for event in labels::ACCESS_EVENTS {
            let _ = self.access.events.get_or_create(&access::Event { event });
        }
        for limit in labels::LIMITS {
            let _ = self.limits_hit.get_or_create(&Limit { limit });
        }
        self.alerts.precreate();
        self.detectors.precreate();
    }

    /// Counts a request of `route` (`None`: of no route, labelled `no_route`) answered
    /// `status` after `decision`, and observes its `latency`.
    pub fn request(
        &self,
        route: Option<(&Arc<str>, &RouteSeries)>,
        no_route: &Arc<str>,
        decision: &'static str,
        status: u16,
        latency: f64,
    ) {
        let label = || RouteLabel(route.map_or(no_route, |(label, _)| label).clone());
        let count = || {
            self.requests
                .get_or_create(&RequestLabels {
                    route: label(),
                    decision,
                    status,
                })
                .clone()
        };
        let observe = || {
            self.request_duration
                .get_or_create(&RouteOnly { route: label() })
                .clone()
        };
        match route {
            Some((_, series)) => {
                if decision == "allow" && status == 200 {
                    series.allowed_ok.get_or_init(count).inc();
                } else {
                    count().inc();
                }
                series.duration.get_or_init(observe).observe(latency);
            }
            None => {
                count().inc();
                observe().observe(latency);
            }
        }
    }

    /// Counts a decision made for the enforcement point `point` (`(none)`: a caller that is
    /// none of them).
    pub fn authz_decision(&self, point: &Arc<str>, decision: &'static str) {
        self.authz_decisions
            .get_or_create(&AuthzLabels {
                enforcement_point: RouteLabel(point.clone()),
                decision,
            })
            .inc();
    }

    /// Every series of the per-route families for `routes`, at 0 (those already there keep
    /// their counts). Called at start and after each reload; the series of a route that was
    /// removed stay, as counters must not go back.
    pub fn precreate_routes<'a>(&self, routes: impl IntoIterator<Item = &'a Arc<str>>) {
        for route in routes {
            for fault in labels::FAULTS {
                let _ = self.refusals.get_or_create(&FaultLabels {
                    route: RouteLabel(route.clone()),
                    fault,
                });
            }
            for kind in labels::UPSTREAM_ERRORS {
                let _ = self.upstream_errors.get_or_create(&UpstreamErrorLabels {
                    route: RouteLabel(route.clone()),
                    kind,
                });
            }
        }
    }

    /// The refusals of requests for no route (`route="(none)"`), at 0.
    pub fn precreate_no_route(&self, label: &Arc<str>) {
        for fault in labels::FAULTS {
            let _ = self.refusals.get_or_create(&FaultLabels {
                route: RouteLabel(label.clone()),
                fault,
            });
        }
    }

    pub fn limit(&self, limit: &'static str) {
        self.limits_hit.get_or_create(&Limit { limit }).inc();
    }

    /// Every family, in `format`.
    pub fn render(&self, format: Exposition) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::with_capacity(16 * 1024);
        let encoded = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &self.process))
            .and_then(|()| encode_eof(&mut out));
        if encoded.is_err() {
            out.clear();
        }
        match format {
            Exposition::OpenMetrics => out,
            Exposition::Prometheus => prometheus_text(&out),
        }
    }
}

/// The configuration in force and its reloads (`reload`).
pub struct ConfigFamilies {
    pub generation: Gauge,
    pub reloads: Counter,
    pub reload_failures: Counter,
    pub last_reload_success: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl ConfigFamilies {
    fn register(r: &mut Registry) -> Self {
        Self {
            generation: metric(
                r,
                "config_generation",
                "Generation of the configuration snapshot in use",
            ),
            reloads: metric(r, "config_reloads", "Configuration reloads applied"),
            reload_failures: metric(
                r,
                "config_reload_failures",
                "Configuration reloads refused because the new configuration was invalid",
            ),
            last_reload_success: metric(
                r,
                "config_last_reload_success_timestamp_seconds",
                "Unix time of the last configuration load that was applied",
            ),
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

/// The standard `process_*` families, in a registry of their own: without the prefix.
fn process_registry() -> Registry {
    let mut process = Registry::default();
    process.register_collector(Box::new(process::ProcessCollector));
    process
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

    /// The snake_case string literals in the item of `source` that starts at the line holding
    /// `start`, up to the closing brace at that line's indentation: the label values a
    /// function can return or pass on.
    fn literals_in<'a>(source: &'a str, start: &str) -> Vec<&'a str> {
        let at = source
            .find(start)
            .unwrap_or_else(|| panic!("{start:?} not found"));
        let line_start = source[..at].rfind('\n').map_or(0, |i| i + 1);
        let indent = &source[line_start..at];
        let indent = &indent[..indent.len() - indent.trim_start().len()];
        let end = source[at..]
            .find(&format!("\n{indent}}}\n"))
            .map_or(source.len(), |i| at + i);
        snake_case_literals(&source[at..end])
    }

    /// The literal right after each `pattern` (which ends with an opening quote) in `source`.
    fn literals_after<'a>(source: &'a str, pattern: &str) -> Vec<&'a str> {
        source
            .match_indices(pattern)
            .filter_map(|(i, _)| {
                let rest = &source[i + pattern.len()..];
                rest.find('"').map(|end| &rest[..end])
            })
            .collect()
    }

    fn snake_case_literals(text: &str) -> Vec<&str> {
        text.split('"')
            .skip(1)
            .step_by(2)
            .filter(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            })
            .collect()
    }

    fn covered(what: &str, list: &[&str], emitted: &[&str]) {
        assert!(!emitted.is_empty(), "{what}: nothing found to check");
        for value in emitted {
            assert!(
                list.contains(value),
                "{what}: the code counts {value:?}, which metrics::labels does not list"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for value in list {
            assert!(seen.insert(value), "{what}: {value:?} listed twice");
        }
    }

    /// Each list holds every value its code can count (so the series exists, at 0, before
    /// the first), and nothing twice.
    #[test]
    fn the_label_lists_cover_what_the_code_counts() {
        let tls = include_str!("tls/mod.rs");
        let handshakes: Vec<&str> = literals_in(tls, "pub fn handshake_failure_reason(")
            .into_iter()
            .chain(literals_in(tls, "pub fn tls_failure_reason("))
            .chain(literals_in(tls, "pub fn verify_again("))
            .chain(literals_in(include_str!("server.rs"), "fn check_client("))
            .chain(literals_after(
                include_str!("server.rs"),
                "handshake_failed(shared, peer, \"",
            ))
            .chain(literals_after(
                include_str!("server.rs"),
                "handshake_failed(shared, remote, \"",
            ))
            .collect();
        covered(
            "handshake failures",
            labels::HANDSHAKE_FAILURES,
            &handshakes,
        );

        let server = include_str!("server.rs");
        let rejections = literals_in(server, "pub fn reason(self) -> &'static str");
        covered(
            "connection rejections",
            labels::CONNECTION_REJECTIONS,
            &rejections,
        );

        let live = include_str!("live.rs");
        let cuts: Vec<&str> = literals_in(live, "pub async fn sweep(")
            .into_iter()
            .chain(literals_in(live, "fn verdict("))
            .chain(literals_in(live, "fn session_now("))
            .chain(literals_in(live, "fn rested_on("))
            .collect();
        let mut all_cuts: Vec<&str> = labels::CUTS
            .iter()
            .chain(labels::HANDSHAKE_FAILURES)
            .copied()
            .collect();
        all_cuts.sort_unstable();
        all_cuts.dedup();
        covered("cuts", &all_cuts, &cuts);

        let admin = include_str!("admin.rs");
        let revocations: Vec<&str> = literals_after(admin, "done.push(\"")
            .into_iter()
            .chain(literals_after(
                include_str!("pipeline/endpoints.rs"),
                "reason: \"",
            ))
            .collect();
        covered("revocations", labels::REVOCATIONS, &revocations);
        assert_eq!(
            revocations.len(),
            labels::REVOCATIONS.len(),
            "{revocations:?}"
        );

        let admin_refusals: Vec<&str> =
            literals_in(include_str!("admin/gate.rs"), "pub fn reason(&self)")
                .into_iter()
                .chain(literals_in(
                    include_str!("admin/limits.rs"),
                    "pub fn reason(self)",
                ))
                .chain(literals_in(admin, "async fn connection("))
                .chain(literals_in(admin, "async fn http<I>("))
                .collect();
        covered("admin refusals", labels::ADMIN_REFUSALS, &admin_refusals);

        let limits: Vec<&str> = [
            include_str!("server.rs"),
            include_str!("pipeline/forward.rs"),
            include_str!("pipeline/endpoints.rs"),
            include_str!("pipeline/canonicalize.rs"),
        ]
        .into_iter()
        .flat_map(|source| literals_after(source, "limit(\""))
        .collect();
        covered("limits", labels::LIMITS, &limits);

        let faults = literals_in(include_str!("error.rs"), "pub fn as_str(self)");
        covered("faults", labels::FAULTS, &faults);
        assert_eq!(faults.len(), labels::FAULTS.len());

        let forward = include_str!("pipeline/forward.rs");
        let kinds: Vec<&str> = literals_in(forward, "fn failed(")
            .into_iter()
            .filter(|k| !["body_too_large", "body_read_timeout", "body_size"].contains(k))
            .collect();
        covered("upstream errors", labels::UPSTREAM_ERRORS, &kinds);
    }

    /// A fresh start has every bounded series, at 0.
    #[test]
    fn bounded_series_exist_at_zero_from_the_start() {
        let metrics = Metrics::new();
        metrics.precreate_routes([&Arc::from("app")]);
        let text = metrics.render(Exposition::Prometheus);
        for series in [
            "vigil_tls_handshake_failures_total{reason=\"unknown_issuer\"} 0",
            "vigil_connections_rejected_total{reason=\"proxy_header_untrusted\"} 0",
            "vigil_connections_cut_total{reason=\"session_unverifiable\"} 0",
            "vigil_connections_cut_total{reason=\"revoked\"} 0",
            "vigil_revocations_total{reason=\"backchannel\"} 0",
            "vigil_admin_refusals_total{reason=\"token_invalid\"} 0",
            "vigil_limits_hit_total{limit=\"header_size\"} 0",
            "vigil_refusals_total{route=\"app\",fault=\"upstream\"} 0",
            "vigil_upstream_errors_total{route=\"app\",kind=\"timeout\"} 0",
        ] {
            assert!(text.contains(series), "missing {series}");
        }
        assert!(text.contains(&format!(
            "vigil_build_info{{version=\"{}\",",
            env!("CARGO_PKG_VERSION")
        )));
    }

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
            // The process metrics are read anew at each scrape: compare their names only.
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| match l.split_once(' ') {
                    Some((name, _)) if name.starts_with("process_") => name.to_owned(),
                    _ => l.to_owned(),
                })
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
