//! How long the TLS material in force stays usable: the server certificate's validity, each
//! client CA's, each CRL's `nextUpdate`.
//!
//! The dates are read once, when a configuration is loaded ([`Material`], kept in the
//! snapshot), and judged against the clock whenever someone asks ([`Status::at`]): time passes
//! without reloads, so a certificate valid at load can expire while it is served. `/readyz`,
//! `vigil check` and the periodic log line all judge at the moment they run; the metrics carry
//! the dates themselves, so an alert compares them with `time()`.

use crate::metrics::{CertificateLabels, CrlLabels, Metrics};
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate, X509Name};
use x509_parser::revocation_list::CertificateRevocationList;

/// How often a running Vigil logs material that is expiring or past, between reloads.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// How far in the future a certificate's `notBefore` may lie before it counts as not valid
/// yet: a certificate issued a moment ago by a CA whose clock runs a little ahead would
/// otherwise refuse the reload that rotates it in, and nothing would retry it.
pub const NOT_BEFORE_SKEW_SECS: i64 = super::crl::CRL_CLOCK_SKEW_SECS as i64;

/// The dates of a configuration's TLS material, read at load.
#[derive(Debug, Clone, Default)]
pub struct Material {
    /// The leaf of `[tls] cert`.
    pub server: Option<Cert>,
    /// Every certificate of every `[tls] client_ca` bundle.
    pub client_cas: Vec<Cert>,
    /// Every CRL of every `[tls] crl` file.
    pub crls: Vec<Crl>,
    /// `[tls] enforce_crl_expiry`: a CRL past its `nextUpdate` then refuses every client of
    /// its CA.
    pub enforce_crl_expiry: bool,
    /// `[tls] expiry_warning`; zero turns the warnings ahead of time off.
    pub warning: Duration,
}

/// One certificate's dates and names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cert {
    /// The file it was read from, as the configuration names it.
    pub file: String,
    /// The configuration key that names the file (`tls.cert`, `tls.client_ca.1`).
    pub key: String,
    /// Its subject's common name, or the whole subject when it has none.
    pub subject: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// Its DNS and IP subject alternative names.
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
}

impl Cert {
    /// The dates and names of one DER certificate.
    pub fn read(file: &str, key: &str, der: &[u8]) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| format!("{file}: not a valid certificate: {e}"))?;
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => dns_names.push(dns.to_ascii_lowercase()),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_of(bytes) {
                            ip_addresses.push(ip);
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            file: file.to_owned(),
            key: key.to_owned(),
            subject: common_name(cert.subject()),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            dns_names,
            ip_addresses,
        })
    }

    /// Whether a route's `host` (normalised: lower case, no trailing dot) is among this
    /// certificate's names, as a client checks it: a wildcard name `*.example.com` covers
    /// `a.example.com`, not `a.b.example.com` nor `example.com`; a route for `*.example.com`
    /// needs that wildcard name itself. `*` (any host) is never covered by one certificate and
    /// is not asked about.
    pub fn covers(&self, host: &str) -> bool {
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            return self.ip_addresses.contains(&ip);
        }
        self.dns_names.iter().any(|name| {
            name == host
                || name.strip_prefix("*.").is_some_and(|parent| {
                    host.strip_suffix(parent)
                        .and_then(|label| label.strip_suffix('.'))
                        .is_some_and(|label| !label.is_empty() && !label.contains('.'))
                })
        })
    }
}

/// One CRL's dates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    pub file: String,
    /// The configuration key that names the file (`tls.crl.0`).
    pub key: String,
    /// Its issuer's common name, or the whole name when it has none.
    pub issuer: String,
    /// Unix seconds.
    pub this_update: i64,
    /// Unix seconds; a CRL without one is refused at load (the handshake needs it).
    pub next_update: i64,
}

impl Crl {
    /// The dates of one DER CRL (already verified by [`super::crl::verify`]).
    pub fn read(file: &str, key: &str, der: &[u8]) -> Result<Self, String> {
        let (_, crl) = CertificateRevocationList::from_der(der)
            .map_err(|e| format!("{file}: not a valid CRL: {e}"))?;
        let next_update = crl
            .next_update()
            .ok_or_else(|| format!("{file}: the CRL has no nextUpdate"))?;
        Ok(Self {
            file: file.to_owned(),
            key: key.to_owned(),
            issuer: common_name(crl.issuer()),
            this_update: crl.last_update().timestamp(),
            next_update: next_update.timestamp(),
        })
    }
}

fn common_name(name: &X509Name<'_>) -> String {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map_or_else(|| name.to_string(), str::to_owned)
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Where a date stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Ok,
    /// Within `[tls] expiry_warning` of its end.
    Expiring,
    /// Past its end: a certificate's `notAfter`, a CRL's `nextUpdate`.
    Expired,
    /// A certificate more than [`NOT_BEFORE_SKEW_SECS`] before its `notBefore`.
    NotYetValid,
}

impl State {
    fn of(start: i64, end: i64, now: i64, warning: Duration) -> Self {
        let warning = i64::try_from(warning.as_secs()).unwrap_or(i64::MAX);
        if now.saturating_add(NOT_BEFORE_SKEW_SECS) < start {
            State::NotYetValid
        } else if now > end {
            State::Expired
        } else if warning > 0 && now >= end.saturating_sub(warning) {
            State::Expiring
        } else {
            State::Ok
        }
    }
}

/// A certificate at a moment, as `/readyz` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CertStatus {
    pub file: String,
    pub subject: String,
    pub not_before: i64,
    pub not_after: i64,
    pub state: State,
}

/// A CRL at a moment, as `/readyz` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CrlStatus {
    pub file: String,
    pub issuer: String,
    pub this_update: i64,
    pub next_update: i64,
    pub state: State,
}

/// The TLS material of a snapshot judged at one moment: what `/readyz` answers and what is
/// logged.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub server_certificate: Option<CertStatus>,
    pub client_ca: Vec<CertStatus>,
    pub crl: Vec<CrlStatus>,
    /// `[tls] expiry_warning` in seconds (0: off).
    pub expiry_warning_seconds: u64,
    pub enforce_crl_expiry: bool,
    /// Everything worth saying, most serious first.
    #[serde(skip)]
    findings: Vec<Finding>,
    /// Why the listener cannot serve, joined; empty when it can.
    #[serde(skip)]
    reason: String,
}

/// Which part of the material a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    ServerCertificate,
    ClientCa,
    Crl,
}

/// One thing expiring, past, or not valid yet.
#[derive(Debug, Clone)]
pub struct Finding {
    pub part: Part,
    pub state: State,
    /// The configuration key that names the file (`tls.cert`, `tls.crl.0`).
    pub key: String,
    pub file: String,
    /// For the operator: what, which one, when, and what follows.
    pub message: String,
    /// True when this keeps the listener from serving: a server certificate clients refuse,
    /// or a CRL past its `nextUpdate` with `enforce_crl_expiry`, which refuses every client
    /// of its CA.
    pub refuses_clients: bool,
}

impl Status {
    /// `material` judged at `now` (Unix seconds).
    pub fn at(material: &Material, now: i64) -> Self {
        let warning = material.warning;
        let cert = |c: &Cert| CertStatus {
            file: c.file.clone(),
            subject: c.subject.clone(),
            not_before: c.not_before,
            not_after: c.not_after,
            state: State::of(c.not_before, c.not_after, now, warning),
        };
        let crl = |c: &Crl| CrlStatus {
            file: c.file.clone(),
            issuer: c.issuer.clone(),
            this_update: c.this_update,
            next_update: c.next_update,
            // thisUpdate in the future is refused at load (beyond the allowed skew).
            state: State::of(i64::MIN, c.next_update, now, warning),
        };
        let mut findings = Vec::new();
        if let Some(server) = &material.server {
            findings.extend(cert_finding(Part::ServerCertificate, server, now, warning));
        }
        for ca in &material.client_cas {
            findings.extend(cert_finding(Part::ClientCa, ca, now, warning));
        }
        for c in &material.crls {
            findings.extend(crl_finding(c, now, warning, material.enforce_crl_expiry));
        }
        findings.sort_by_key(|f| (!f.refuses_clients, f.state == State::Expiring));
        let reason = findings
            .iter()
            .filter(|f| f.refuses_clients)
            .map(|f| f.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            server_certificate: material.server.as_ref().map(cert),
            client_ca: material.client_cas.iter().map(cert).collect(),
            crl: material.crls.iter().map(crl).collect(),
            expiry_warning_seconds: warning.as_secs(),
            enforce_crl_expiry: material.enforce_crl_expiry,
            findings,
            reason,
        }
    }

    /// `material` judged now.
    pub fn now(material: &Material) -> Self {
        Self::at(material, unix_now())
    }

    /// Whether the listener can serve with this material: its certificate is valid, and no
    /// CRL refuses every client for being past its `nextUpdate`.
    pub fn serving(&self) -> bool {
        self.reason.is_empty()
    }

    /// Why it cannot serve (see [`Status::serving`]), each finding's message joined with `; `.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// What keeps the listener from serving, one line each.
    pub fn problems(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.refuses_clients)
    }

    /// Everything expiring, past or not valid yet, most serious first.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// One log line per finding: error level for what is past (or not valid yet), warn level
    /// for what is within `expiry_warning`. `when` says what prompted the check.
    pub fn log(&self, when: &str) {
        for f in &self.findings {
            if f.state == State::Expiring {
                tracing::warn!(when, file = %f.file, key = %f.key, "{}", f.message);
            } else {
                tracing::error!(when, file = %f.file, key = %f.key, "{}", f.message);
            }
        }
    }
}

fn cert_finding(part: Part, c: &Cert, now: i64, warning: Duration) -> Option<Finding> {
    let state = State::of(c.not_before, c.not_after, now, warning);
    let what = match part {
        Part::ServerCertificate => format!("the server certificate {:?} ({})", c.subject, c.file),
        _ => format!("client CA {:?} ({})", c.subject, c.file),
    };
    let server = part == Part::ServerCertificate;
    let message = match state {
        State::Ok => return None,
        State::Expiring => format!(
            "{what} expires at {} (in {}): renew it",
            date(c.not_after),
            span(c.not_after - now)
        ),
        State::Expired if server => format!(
            "{what} expired at {} ({} ago): clients refuse it; install a renewed certificate",
            date(c.not_after),
            span(now - c.not_after)
        ),
        State::Expired => format!(
            "{what} expired at {} ({} ago): renew it and the certificates it issued",
            date(c.not_after),
            span(now - c.not_after)
        ),
        State::NotYetValid => format!(
            "{what} is not valid before {} (in {}){}; check this machine's clock",
            date(c.not_before),
            span(c.not_before - now),
            if server { ": clients refuse it" } else { "" }
        ),
    };
    Some(Finding {
        part,
        state,
        key: c.key.clone(),
        file: c.file.clone(),
        message,
        refuses_clients: server && state != State::Expiring,
    })
}

fn crl_finding(c: &Crl, now: i64, warning: Duration, enforce: bool) -> Option<Finding> {
    let state = State::of(i64::MIN, c.next_update, now, warning);
    let what = format!("the CRL of {:?} ({})", c.issuer, c.file);
    let message = match state {
        State::Expiring => format!(
            "{what} reaches its nextUpdate at {} (in {}): publish a fresh CRL before then{}",
            date(c.next_update),
            span(c.next_update - now),
            if enforce {
                ", or every client of that CA is refused (enforce_crl_expiry)"
            } else {
                ""
            }
        ),
        State::Expired if enforce => format!(
            "{what} is past its nextUpdate ({}, {} ago): every client of that CA is refused \
             (expired_crl, enforce_crl_expiry); publish a fresh CRL",
            date(c.next_update),
            span(now - c.next_update)
        ),
        State::Expired => format!(
            "{what} is past its nextUpdate ({}, {} ago): revocations published since are not \
             known (enforce_crl_expiry is off, so its clients are still accepted); publish a \
             fresh CRL",
            date(c.next_update),
            span(now - c.next_update)
        ),
        State::Ok | State::NotYetValid => return None,
    };
    Some(Finding {
        part: Part::Crl,
        state,
        key: c.key.clone(),
        file: c.file.clone(),
        message,
        refuses_clients: enforce && state == State::Expired,
    })
}

/// A Unix time as RFC 3339 UTC, to the second.
fn date(unix: i64) -> String {
    let at = if unix >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(unix.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(unix.unsigned_abs()))
    };
    at.map_or_else(
        || unix.to_string(),
        |t| humantime::format_rfc3339_seconds(t).to_string(),
    )
}

/// A length of time, to what matters at its size: days and hours beyond two days, hours and
/// minutes beyond an hour.
fn span(secs: i64) -> String {
    let s = secs.unsigned_abs();
    let (d, h, m) = (s / 86400, s % 86400 / 3600, s % 3600 / 60);
    match s {
        s if s >= 2 * 86400 => format!("{d}d {h}h"),
        s if s >= 3600 => format!("{}h {m}m", s / 3600),
        s if s >= 60 => format!("{m}m {}s", s % 60),
        s => format!("{s}s"),
    }
}

/// The Unix time now, in seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Material {
    /// Sets the `vigil_tls_*_timestamp_seconds` gauges to this material's dates, and removes
    /// the series of `previous` (the material being replaced) that this one no longer has: a
    /// rotated certificate updates its series, a removed CRL's series disappears. Series are
    /// keyed by file and name; of two certificates with the same file and name the one that
    /// ends first is shown (the one to alert on).
    pub fn publish(&self, previous: Option<&Material>, metrics: &Metrics) {
        let dates = &metrics.tls_dates;
        let new = self.series();
        for (labels, (not_before, not_after)) in &new.certs {
            dates
                .certificate_not_before
                .get_or_create(labels)
                .set(*not_before);
            dates
                .certificate_not_after
                .get_or_create(labels)
                .set(*not_after);
        }
        for (labels, (this_update, next_update)) in &new.crls {
            dates
                .crl_this_update
                .get_or_create(labels)
                .set(*this_update);
            dates
                .crl_next_update
                .get_or_create(labels)
                .set(*next_update);
        }
        if let Some(old) = previous.map(Material::series) {
            for labels in old.certs.keys().filter(|l| !new.certs.contains_key(*l)) {
                metrics.tls_dates.certificate_not_before.remove(labels);
                metrics.tls_dates.certificate_not_after.remove(labels);
            }
            for labels in old.crls.keys().filter(|l| !new.crls.contains_key(*l)) {
                metrics.tls_dates.crl_this_update.remove(labels);
                metrics.tls_dates.crl_next_update.remove(labels);
            }
        }
    }

    fn series(&self) -> Series {
        let mut series = Series::default();
        let roles = self
            .server
            .iter()
            .map(|c| ("server", c))
            .chain(self.client_cas.iter().map(|c| ("client_ca", c)));
        for (role, c) in roles {
            let labels = CertificateLabels {
                role,
                file: c.file.clone(),
                subject: c.subject.clone(),
            };
            let dates = series
                .certs
                .entry(labels)
                .or_insert((c.not_before, c.not_after));
            if c.not_after < dates.1 {
                *dates = (c.not_before, c.not_after);
            }
        }
        for c in &self.crls {
            let labels = CrlLabels {
                file: c.file.clone(),
                issuer: c.issuer.clone(),
            };
            let dates = series
                .crls
                .entry(labels)
                .or_insert((c.this_update, c.next_update));
            if c.next_update < dates.1 {
                *dates = (c.this_update, c.next_update);
            }
        }
        series
    }
}

#[derive(Default)]
struct Series {
    certs: std::collections::HashMap<CertificateLabels, (i64, i64)>,
    crls: std::collections::HashMap<CrlLabels, (i64, i64)>,
}

/// Logs the material in force every [`RECHECK_INTERVAL`] (see [`Status::log`]) until `stop`
/// is cancelled: between reloads, this is how an operator hears of a certificate crossing
/// into its warning window or past its end. `material` returns what is in force at each
/// tick.
pub async fn recheck(
    material: impl Fn() -> Arc<Material>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut ticks = tokio::time::interval(RECHECK_INTERVAL);
    // The first tick is immediate; start-up has logged already.
    ticks.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => Status::now(&material()).log("periodic check"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Cert {
        Cert {
            file: "server.pem".into(),
            key: "tls.cert".into(),
            subject: "server".into(),
            not_before: 1_000,
            not_after: 2_000_000,
            dns_names: names.iter().map(|n| (*n).to_owned()).collect(),
            ip_addresses: vec!["127.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))],
        }
    }

    #[test]
    fn hosts_are_covered_as_clients_check_names() {
        let c = cert(&["api.example.com", "*.apps.example.com"]);
        let cases = [
            ("api.example.com", true),
            ("API.example.com", false), // route hosts are normalised before asking
            ("www.example.com", false),
            ("a.apps.example.com", true),
            ("a.b.apps.example.com", false),
            ("apps.example.com", false),
            (".apps.example.com", false),
            ("*.apps.example.com", true),
            ("*.example.com", false),
            ("127.0.0.1", true),
            ("10.0.0.1", false),
        ];
        for (host, covered) in cases {
            assert_eq!(c.covers(host), covered, "{host}");
        }
    }

    #[test]
    fn states_follow_the_clock() {
        let day = Duration::from_secs(86400);
        let cases = [
            (1_000 - NOT_BEFORE_SKEW_SECS, State::Ok), // within the skew
            (1_000 - NOT_BEFORE_SKEW_SECS - 1, State::NotYetValid),
            (1_000, State::Ok),
            (2_000_000 - 86400 - 1, State::Ok),
            (2_000_000 - 86400, State::Expiring),
            (2_000_000, State::Expiring),
            (2_000_001, State::Expired),
        ];
        for (now, state) in cases {
            assert_eq!(State::of(1_000, 2_000_000, now, day), state, "{now}");
        }
        for (now, state) in [(0, State::Ok), (i64::MIN, State::Ok), (101, State::Expired)] {
            assert_eq!(
                State::of(i64::MIN, 100, now, Duration::ZERO),
                state,
                "{now}"
            );
        }
        assert_eq!(State::of(0, 100, 99, Duration::ZERO), State::Ok);
    }

    #[test]
    fn an_expired_server_certificate_or_a_stale_enforced_crl_stops_serving() {
        let crl = Crl {
            file: "ca.crl".into(),
            key: "tls.crl.0".into(),
            issuer: "Test CA".into(),
            this_update: 0,
            next_update: 5_000,
        };
        let mut material = Material {
            server: Some(cert(&[])),
            crls: vec![crl],
            enforce_crl_expiry: true,
            warning: Duration::from_secs(1_000),
            ..Material::default()
        };
        assert!(Status::at(&material, 2_000).serving());
        let soon = Status::at(&material, 4_500);
        assert!(soon.serving());
        assert_eq!(soon.crl[0].state, State::Expiring);
        assert!(soon.findings()[0].message.contains("nextUpdate"));
        let stale = Status::at(&material, 6_000);
        assert!(!stale.serving());
        assert!(
            stale
                .reason()
                .contains("every client of that CA is refused")
        );
        material.enforce_crl_expiry = false;
        let stale = Status::at(&material, 6_000);
        assert!(stale.serving());
        assert_eq!(stale.findings().len(), 1);
        let renew = Status::at(&material, 1_999_000);
        assert!(renew.serving());
        // The stale CRL comes first (past, not only expiring), then the certificate.
        assert_eq!(renew.findings().len(), 2);
        assert!(renew.findings()[1].message.contains("expires at"));
        let expired = Status::at(&material, 3_000_000);
        assert!(!expired.serving());
        assert!(expired.reason().contains("server certificate"));
        let json = serde_json::to_value(&expired).unwrap_or_default();
        assert_eq!(json["server_certificate"]["state"], "expired");
        assert_eq!(json["crl"][0]["next_update"], 5_000);
    }
}
