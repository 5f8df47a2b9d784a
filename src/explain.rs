//! `vigil policy explain`: the decision on a facts document under a configuration, with every
//! reason, without a server. The document comes from a JSON file or is built from flags; either
//! way it goes through the same [`policy::decide`] as a request.

use crate::canonical::{host_without_port, normalize_host, normalize_path};
use crate::config::Snapshot;
use crate::identity::{Identity, Source};
use crate::policy::facts::{Document, NetworkDocument, RequestDocument};
use crate::policy::{self, Outcome};
use crate::posture;
use crate::tls::PeerCert;
use serde_json::{Value, json};
use std::net::IpAddr;

/// A request described on the command line.
pub struct Described<'a> {
    pub url: &'a str,
    pub method: &'a str,
    pub certificate: PeerCert,
    pub source: IpAddr,
    /// A signed-in person: subject, email, groups, multi-factor.
    pub user: Option<(&'a str, Option<&'a str>, &'a [String], bool)>,
    /// Request headers, each written `Name: value`.
    pub headers: &'a [String],
}

/// Why a description is not a request Vigil would decide.
#[derive(Debug, thiserror::Error)]
pub enum Undecidable {
    #[error("--url: {0}")]
    Url(String),
    /// Vigil would answer 400 before any decision.
    #[error("path refused with 400: {0}")]
    Path(&'static str),
    #[error("host: {0}")]
    Host(&'static str),
    #[error("--method: {0}")]
    Method(String),
    #[error("--header: {0}")]
    Header(String),
    #[error("facts document: {0}")]
    Document(String),
}

impl Described<'_> {
    /// The facts document of this request at `now`: its route found as a request's would be,
    /// its device record from the inventory as loaded.
    pub fn document(self, snapshot: &Snapshot, now: i64) -> Result<Document, Undecidable> {
        let url: http::Uri = self
            .url
            .parse()
            .map_err(|e: http::uri::InvalidUri| Undecidable::Url(e.to_string()))?;
        let host = normalize_host(url.authority().map_or("", |a| a.as_str()))
            .map_err(|e| Undecidable::Host(e.reason()))?;
        let path = normalize_path(url.path()).map_err(|e| Undecidable::Path(e.reason()))?;
        let method = http::Method::from_bytes(self.method.as_bytes())
            .map_err(|e| Undecidable::Method(e.to_string()))?;
        let device = snapshot
            .devices
            .as_ref()
            .and_then(|d| d.lookup(&self.certificate));
        let headers = self
            .headers
            .iter()
            .map(|h| header_line(h))
            .collect::<Result<Vec<_>, _>>()?;
        let person = self.user.map(|(sub, email, groups, mfa)| Identity {
            subject: sub.to_owned(),
            email: email.map(str::to_owned),
            name: None,
            groups: groups.to_vec(),
            amr: Vec::new(),
            mfa,
            acr: None,
            risk: None,
            claims: Default::default(),
            verified_at: now,
            auth_time: None,
            source: Source::Session {
                sid: "explain".into(),
            },
        });
        Ok(Document {
            time: Some(now),
            request: RequestDocument {
                route: None,
                host,
                method: method.as_str().to_owned(),
                path: path.into_owned(),
                headers,
            },
            certificate: self.certificate,
            person,
            device,
            network: NetworkDocument {
                source: self.source,
                country: None,
            },
            risk: None,
            grants: Vec::new(),
            block: None,
            shared_state: None,
        })
    }
}

/// `Name: value` as a document's header: the name lower-cased, the value trimmed, both as a
/// request could carry them.
fn header_line(line: &str) -> Result<(String, String), Undecidable> {
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| Undecidable::Header(format!("{line:?}: write it as \"Name: value\"")))?;
    let name = http::HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| Undecidable::Header(format!("{name:?} is not an HTTP header name")))?;
    let value = value.trim();
    http::HeaderValue::from_str(value)
        .ok()
        .filter(|v| v.to_str().is_ok())
        .ok_or_else(|| {
            Undecidable::Header(format!("the value of {name} is not visible ASCII text"))
        })?;
    Ok((name.as_str().to_owned(), value.to_owned()))
}

/// Reads a facts document from JSON, with its host and path in canonical form as a request's
/// would be (a path Vigil would refuse with 400 is refused here too).
pub fn read_document(json: &[u8]) -> Result<Document, Undecidable> {
    let mut doc: Document =
        serde_json::from_slice(json).map_err(|e| Undecidable::Document(e.to_string()))?;
    doc.request.host =
        normalize_host(&doc.request.host).map_err(|e| Undecidable::Host(e.reason()))?;
    doc.request.path = normalize_path(&doc.request.path)
        .map_err(|e| Undecidable::Path(e.reason()))?
        .into_owned();
    Ok(doc)
}

/// What explain found: the decision as JSON, and whether it lets the request through.
pub struct Explained {
    pub report: Value,
    pub passes: bool,
}

/// Makes `doc` ready to be decided under `snapshot` at `now` (when the document gives no
/// time): a document without a route is routed by its host and path; one without a risk
/// assessment is assessed from its own facts when `[risk]` is configured (without the run-time
/// memory of a server: no recent denials, no first-seen devices). Returns what the reader
/// should know about how it was filled in.
pub fn prepare(snapshot: &Snapshot, doc: &mut Document, now: i64) -> Vec<&'static str> {
    let mut notes = Vec::new();
    if doc.request.route.is_none() {
        let host = host_without_port(&doc.request.host);
        doc.request.route = snapshot
            .routes
            .find(host, &doc.request.path)
            .map(|r| r.name.clone());
    }
    if doc.risk.is_none()
        && let Some(settings) = &snapshot.risk
    {
        if doc.network.country.is_none() {
            doc.network.country = settings
                .geoip
                .as_ref()
                .and_then(|g| g.country(doc.network.source.to_canonical()));
        }
        doc.risk = Some(assess(snapshot, settings, doc, now));
        notes.push(
            "risk assessed from the document's facts, without recent denials or first-seen devices",
        );
    }
    notes
}

/// Decides `doc` under `snapshot` at `now` (when the document gives no time), after
/// [`prepare`].
pub fn explain(snapshot: &Snapshot, mut doc: Document, now: i64) -> Explained {
    let mut notes = prepare(snapshot, &mut doc, now);
    let route = doc
        .request
        .route
        .as_deref()
        .and_then(|name| snapshot.policy.route(name));
    if route.is_some_and(|r| r.login != policy::Login::None) && doc.person.is_none() {
        notes.push(
            "this route needs a signed-in person or a bearer token: give --user (and --group, --email, --mfa), or a person in the document",
        );
    }
    let facts = doc.facts(now);
    let decision = policy::decide(&snapshot.policy, &facts);
    let status = match decision.outcome {
        _ if route.is_none() => 404,
        Outcome::Allow | Outcome::Audit => 200,
        Outcome::StepUp => 401,
        Outcome::Deny => 403,
    };
    let report = json!({
        "route": route.map(|r| r.name.as_str()),
        "login": route.map(|r| r.login.as_str()),
        "host": facts.request.host,
        "method": facts.request.method,
        "path": facts.request.path,
        "time": jiff::Timestamp::from_second(facts.time).ok().map(|t| t.to_string()),
        "decision": decision.outcome.as_str(),
        "status": status,
        "rule": decision.rule.map(|i| i + 1),
        "grant": decision.grant,
        "policy": decision.policy.as_ref().map(|run| json!({
            "name": run.name,
            "query": route.and_then(|r| r.rego.as_ref()).map(|r| r.query.as_str()),
            "result": run.result,
        })),
        "headers": decision.headers.iter().map(|(n, v)| json!({ n: v })).collect::<Vec<_>>(),
        "shadow": decision.shadow.as_ref().map(|s| json!({
            "policy": s.policy,
            "decision": s.decision,
            "agrees": s.agrees,
            "reasons": s.reasons,
        })),
        "read_only": decision.read_only,
        "risk_action": decision.risk_action,
        "risk_level": facts.risk.map(|r| r.level.as_str()),
        "mode": if snapshot.policy.audits(route) { "audit" } else { "enforce" },
        "reasons": decision.reasons,
        "codes": decision.reasons.iter().map(|r| r.code).collect::<Vec<_>>(),
        "risk": facts.risk,
        "note": (!notes.is_empty()).then(|| notes.join("; ")),
        "certificate": {
            "subject": facts.certificate.subject,
            "spiffe_id": facts.certificate.spiffe_id,
            "fingerprint_sha256": facts.certificate.fingerprint_hex,
        },
        "device_inventory": facts.device,
        "facts": facts,
    });
    Explained {
        report,
        passes: decision.passes(),
    }
}

/// The report for people (`--format text`): the same decision, rule, risk and reasons as the
/// JSON report, since it is written from it, one fact per line.
pub fn text(report: &Value) -> String {
    use std::fmt::Write;
    let str_of = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "decision:  {} ({}, {})",
        str_of(&report["decision"]),
        report["status"],
        str_of(&report["mode"])
    );
    let route = match report["route"].as_str() {
        Some(name) => format!("{name} (login {})", str_of(&report["login"])),
        None => "none: no route serves this host and path".to_owned(),
    };
    let _ = writeln!(out, "route:     {route}");
    let _ = writeln!(
        out,
        "request:   {} {}{} at {}",
        str_of(&report["method"]),
        str_of(&report["host"]),
        str_of(&report["path"]),
        str_of(&report["time"])
    );
    let rule = match report["rule"].as_u64() {
        Some(n) => format!("rule {n}"),
        None => "none".to_owned(),
    };
    let _ = writeln!(out, "rule:      {rule}");
    if let Some(grant) = report["grant"].as_str() {
        let _ = writeln!(out, "grant:     {grant}");
    }
    if let Some(policy) = report["policy"].as_object() {
        let _ = writeln!(
            out,
            "policy:    {} ({}): {}",
            str_of(&policy["name"]),
            str_of(&policy["query"]),
            str_of(&policy["result"])
        );
    }
    if let Some(shadow) = report["shadow"].as_object() {
        let agrees = if shadow["agrees"] == true {
            "agrees"
        } else {
            "disagrees"
        };
        let _ = writeln!(
            out,
            "shadow:    {}: {} ({agrees})",
            str_of(&shadow["policy"]),
            str_of(&shadow["decision"])
        );
    }
    if let Some(level) = report["risk_level"].as_str() {
        let signals: Vec<String> = report["risk"]["signals"]
            .as_array()
            .into_iter()
            .flatten()
            .map(str_of)
            .collect();
        let mut risk = format!("{level} (score {})", report["risk"]["score"]);
        if !signals.is_empty() {
            let _ = write!(risk, ": {}", signals.join(", "));
        }
        if let Some(action) = report["risk_action"].as_str() {
            let _ = write!(risk, "; action {action}");
        }
        let _ = writeln!(out, "risk:      {risk}");
    }
    if report["read_only"] == true {
        let _ = writeln!(out, "read-only: only GET, HEAD and OPTIONS");
    }
    let _ = writeln!(out, "reasons:");
    let reasons = report["reasons"].as_array().map_or(&[][..], Vec::as_slice);
    let codes = report["codes"].as_array().map_or(&[][..], Vec::as_slice);
    for (reason, code) in reasons.iter().zip(codes) {
        let _ = writeln!(out, "  - {} [{}]", str_of(reason), str_of(code));
    }
    if let Some(note) = report["note"].as_str() {
        let _ = writeln!(out, "note:      {note}");
    }
    out
}

fn assess(
    snapshot: &Snapshot,
    settings: &posture::RiskSettings,
    doc: &Document,
    now: i64,
) -> posture::Assessment {
    posture::assess(
        settings,
        &posture::RiskFacts {
            now: doc.time.unwrap_or(now),
            device: doc.device.as_ref(),
            inventory: snapshot.devices.is_some(),
            client_ip: doc.network.source.to_canonical(),
            country: doc.network.country.as_deref(),
            idp_risk: doc.person.as_ref().and_then(|p| p.risk.as_deref()),
            recent_denials: 0,
            first_seen_device: false,
            detectors: &[],
        },
    )
}
