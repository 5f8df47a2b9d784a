//! Text to typed sections, collecting every problem instead of stopping at the first.
//!
//! The document is parsed once into a spanned tree; each section and each route is then
//! deserialised on its own, and keys nobody reads are reported with a suggestion.

use super::diagnostics::{Problem, suggest};
use super::schema::*;
use serde::de::{DeserializeOwned, IntoDeserializer};
use std::collections::HashMap;
use std::ops::Range;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Spans of every key and value in the document, by dotted path (`route.0.allow.1.spiffe`).
#[derive(Debug, Default)]
pub struct Locator {
    /// The document did not parse; nothing else is known.
    unparsed: bool,
    keys: HashMap<String, Range<usize>>,
    values: HashMap<String, Range<usize>>,
}

impl Locator {
    /// True when the document could not be parsed at all.
    pub fn unparsed(&self) -> bool {
        self.unparsed
    }

    /// Where the value at `path` is written, for problems about a value.
    pub fn value(&self, path: &str) -> Option<Range<usize>> {
        self.values.get(path).cloned()
    }

    /// Where the key at `path` is written, falling back to its value.
    pub fn key(&self, path: &str) -> Option<Range<usize>> {
        self.keys
            .get(path)
            .or_else(|| self.values.get(path))
            .cloned()
    }

    fn walk(&mut self, prefix: &str, value: &Spanned<DeValue<'_>>) {
        self.values.insert(prefix.to_owned(), value.span());
        match value.get_ref() {
            DeValue::Table(table) => self.walk_table(prefix, table),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.walk(&join(prefix, &i.to_string()), item);
                }
            }
            _ => {}
        }
    }

    fn walk_table(&mut self, prefix: &str, table: &DeTable<'_>) {
        for (key, value) in table {
            let path = join(prefix, key.get_ref());
            self.keys.insert(path.clone(), key.span());
            self.walk(&path, value);
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Every section, typed; sections with problems are left at their defaults (and reported).
#[derive(Debug, Default)]
pub struct RawConfig {
    pub server: ServerSection,
    pub tls: Option<TlsSection>,
    pub admin: AdminSection,
    pub log: LogSection,
    pub audit: AuditSection,
    pub upstream: UpstreamSection,
    pub oidc: Option<OidcSection>,
    pub session: Option<SessionSection>,
    pub assertion: Option<AssertionSection>,
    pub verify: VerifySection,
    pub devices: Option<DevicesSection>,
    pub risk: Option<RiskSection>,
    /// Routes in file order; `None` where a route could not be read.
    pub routes: Vec<Option<RouteSection>>,
}

const SECTIONS: &[&str] = &[
    "server",
    "tls",
    "admin",
    "log",
    "audit",
    "upstream",
    "oidc",
    "session",
    "assertion",
    "verify",
    "devices",
    "risk",
    "route",
];
const DEVICES_KEYS: &[&str] = &["source", "key", "refresh", "max_stale", "ca"];
const RISK_KEYS: &[&str] = &[
    "device_unknown",
    "device_noncompliant",
    "stale_check_in",
    "untrusted_network",
    "idp_risk_medium",
    "idp_risk_high",
    "recent_denial",
    "first_seen_device",
    "medium",
    "high",
    "trusted_networks",
    "check_in_max_age",
    "denial_window",
    "step_up_max_age",
    "geoip_database",
    "allowed_countries",
    "country_not_allowed",
    "country_unknown",
];
const VERIFY_KEYS: &[&str] = &["interval", "max_stale"];
const OIDC_KEYS: &[&str] = &[
    "issuer",
    "client_id",
    "client_secret_file",
    "client_secret_env",
    "redirect_url",
    "scopes",
    "groups_claim",
    "risk_claim",
    "mfa_amr",
    "post_logout_redirect_url",
    "userinfo",
    "algorithms",
    "clock_skew",
    "login_timeout",
    "ca",
];
const SESSION_KEYS: &[&str] = &["keys_file", "lifetime", "idle"];
const ASSERTION_KEYS: &[&str] = &["keys_file", "issuer", "lifetime"];
const SERVER_KEYS: &[&str] = &[
    "listen",
    "max_connections",
    "max_connections_per_source",
    "max_handshakes_per_source",
    "handshake_timeout",
    "header_read_timeout",
    "idle_timeout",
    "body_read_timeout",
    "max_header_bytes",
    "max_body_bytes",
    "max_concurrent_streams",
    "drain_timeout",
];
const TLS_KEYS: &[&str] = &[
    "cert",
    "key",
    "client_ca",
    "crl",
    "allow_unknown_revocation",
    "enforce_crl_expiry",
    "session_tickets",
    "key_exchange",
];
const ADMIN_KEYS: &[&str] = &[
    "listen",
    "client_ca",
    "allow_spiffe",
    "cert",
    "key",
    "names",
    "token_file",
    "max_connections",
    "max_connections_per_source",
    "handshake_timeout",
    "header_read_timeout",
    "body_read_timeout",
    "idle_timeout",
];
const LOG_KEYS: &[&str] = &["decisions", "format", "level"];
const AUDIT_KEYS: &[&str] = &["mode"];
const UPSTREAM_KEYS: &[&str] = &[
    "connect_timeout",
    "response_timeout",
    "pool_idle_timeout",
    "pool_max_idle_per_host",
];
pub(crate) const ROUTE_KEYS: &[&str] = &[
    "name",
    "host",
    "path",
    "upstream",
    "login",
    "allow",
    "preserve_host",
    "upstream_ca",
    "upstream_cert",
    "upstream_key",
    "connect_timeout",
    "response_timeout",
    "max_body_bytes",
    "bearer_audience",
    "bearer_scopes",
    "headers",
    "risk",
];
pub(crate) const RULE_KEYS: &[&str] = &[
    "spiffe",
    "cert_subject",
    "cert_san",
    "cert_fingerprint",
    "methods",
    "paths",
    "networks",
    "users",
    "email_domains",
    "groups",
    "mfa",
    "claims",
    "device",
    "min_os",
    "max_check_in_age",
];

/// Parses `text`, returning the typed sections, the span index and every problem found.
pub fn parse(text: &str) -> (RawConfig, Locator, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut raw = RawConfig::default();
    let mut locator = Locator::default();

    let (root, syntax) = DeTable::parse_recoverable(text);
    for err in syntax {
        problems.push(Problem::at(err.span(), err.message().to_owned()));
    }
    if !problems.is_empty() {
        // A syntax error can shift everything after it; reporting type errors on a
        // half-parsed tree would only add noise.
        locator.unparsed = true;
        return (raw, locator, problems);
    }
    locator.walk_table("", root.get_ref());

    for (key, value) in root.into_inner() {
        let name = key.get_ref().as_ref();
        match name {
            "server" => {
                if let Some(v) = section(name, value, SERVER_KEYS, &locator, &mut problems) {
                    raw.server = v;
                }
            }
            "tls" => raw.tls = section(name, value, TLS_KEYS, &locator, &mut problems),
            "admin" => {
                if let Some(v) = section(name, value, ADMIN_KEYS, &locator, &mut problems) {
                    raw.admin = v;
                }
            }
            "log" => {
                if let Some(v) = section(name, value, LOG_KEYS, &locator, &mut problems) {
                    raw.log = v;
                }
            }
            "audit" => {
                if let Some(v) = section(name, value, AUDIT_KEYS, &locator, &mut problems) {
                    raw.audit = v;
                }
            }
            "upstream" => {
                if let Some(v) = section(name, value, UPSTREAM_KEYS, &locator, &mut problems) {
                    raw.upstream = v;
                }
            }
            "oidc" => raw.oidc = section(name, value, OIDC_KEYS, &locator, &mut problems),
            "session" => raw.session = section(name, value, SESSION_KEYS, &locator, &mut problems),
            "assertion" => {
                raw.assertion = section(name, value, ASSERTION_KEYS, &locator, &mut problems)
            }
            "devices" => raw.devices = section(name, value, DEVICES_KEYS, &locator, &mut problems),
            "risk" => raw.risk = section(name, value, RISK_KEYS, &locator, &mut problems),
            "verify" => {
                if let Some(v) = section(name, value, VERIFY_KEYS, &locator, &mut problems) {
                    raw.verify = v;
                }
            }
            "route" => match value.into_inner() {
                DeValue::Array(items) => {
                    for (i, item) in items.into_iter().enumerate() {
                        let path = format!("route.{i}");
                        raw.routes
                            .push(section(&path, item, ROUTE_KEYS, &locator, &mut problems));
                    }
                }
                _ => problems.push(
                    Problem::at(locator.value("route"), "`route` must be an array of tables")
                        .with_help("write each route as a [[route]] table"),
                ),
            },
            other => problems.push(
                Problem::at(Some(key.span()), format!("unknown section `{other}`")).with_help(
                    suggest(other, SECTIONS)
                        .unwrap_or_else(|| format!("known sections: {}", SECTIONS.join(", "))),
                ),
            ),
        }
    }
    (raw, locator, problems)
}

/// Deserialises one section, reporting unknown keys (with suggestions) and type errors.
///
/// serde stops at the first type error, so after each one the offending key is taken out and
/// the section is read again: one run reports every bad value in the section.
fn section<T: DeserializeOwned>(
    path: &str,
    mut value: Spanned<DeValue<'_>>,
    known: &[&str],
    locator: &Locator,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let mut unknown = Vec::new();
    let mut failed = false;
    for _ in 0..64 {
        let mut ignored = Vec::new();
        let result: Result<T, toml::de::Error> =
            serde_ignored::deserialize(value.clone().into_deserializer(), |p| {
                ignored.push(p.to_string())
            });
        for key in ignored {
            if !unknown.contains(&key) {
                unknown.push(key);
            }
        }
        match result {
            Ok(v) => {
                report_unknown(path, &unknown, known, locator, problems);
                return (!failed).then_some(v);
            }
            Err(err) => {
                failed = true;
                let message = err.message().to_owned();
                let span = err.span().or_else(|| locator.value(path));
                problems.push(Problem::at(span.clone(), format!("in `{path}`: {message}")));
                match span {
                    Some(span) if remove_value_at(value.get_mut(), &span) => continue,
                    _ => break,
                }
            }
        }
    }
    report_unknown(path, &unknown, known, locator, problems);
    None
}

/// Takes out the innermost table entry whose value contains `span`.
fn remove_value_at(value: &mut DeValue<'_>, span: &Range<usize>) -> bool {
    let contains = |v: &Spanned<DeValue<'_>>| {
        let s = v.span();
        s.start <= span.start && span.end <= s.end
    };
    match value {
        DeValue::Table(table) => {
            let mut hit = None;
            for (key, v) in table.iter_mut() {
                if contains(v) {
                    if remove_value_at(v.get_mut(), span) {
                        return true;
                    }
                    hit = Some(key.clone());
                    break;
                }
            }
            match hit {
                Some(key) => table.remove(&key).is_some(),
                None => false,
            }
        }
        DeValue::Array(items) => items
            .iter_mut()
            .find(|v| contains(v))
            .is_some_and(|v| remove_value_at(v.get_mut(), span)),
        _ => false,
    }
}

fn report_unknown(
    path: &str,
    unknown: &[String],
    known: &[&str],
    locator: &Locator,
    problems: &mut Vec<Problem>,
) {
    for rel in unknown {
        let full = join(path, rel);
        let key = rel.rsplit('.').next().unwrap_or(rel);
        // Keys inside an `allow` rule are checked against the rule's keys.
        let candidates = if rel.starts_with("allow.") {
            RULE_KEYS
        } else {
            known
        };
        problems.push(
            Problem::at(locator.key(&full), format!("unknown key `{full}`")).with_help(
                suggest(key, candidates)
                    .unwrap_or_else(|| format!("known keys here: {}", candidates.join(", "))),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_unknown_key_and_type_error_at_once() {
        let text = r#"
[server]
lisen = "127.0.0.1:1"
max_connections = "many"

[[route]]
name = "a"
host = "a.test"
upstream = "http://127.0.0.1:1"
upstrem_ca = "x"

[[route]]
name = "b"
host = "b.test"
upstream = "http://127.0.0.1:1"
allow = [{ spife = ["spiffe://x/y"] }]

[bogus]
"#;
        let (_raw, _loc, problems) = parse(text);
        let messages: Vec<_> = problems.iter().map(|p| p.message.clone()).collect();
        assert!(
            messages.iter().any(|m| m.contains("`server.lisen`")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("in `server`")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("route.0.upstrem_ca")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("route.1.allow.0.spife")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("unknown section `bogus`")),
            "{messages:?}"
        );
        let spife = problems
            .iter()
            .find(|p| p.message.contains("spife"))
            .and_then(|p| p.help.clone());
        assert_eq!(spife.as_deref(), Some("did you mean `spiffe`?"));
        assert!(problems.iter().all(|p| p.span.is_some()));
    }

    #[test]
    fn every_type_error_in_a_section_is_reported() {
        let text =
            "[server]\nmax_connections = \"lots\"\nidle_timeout = \"soon\"\nmax_body_bytes = -1\n";
        let (_raw, _loc, problems) = parse(text);
        assert_eq!(problems.len(), 3, "{problems:?}");
        let lines: Vec<usize> = problems
            .iter()
            .map(|p| {
                super::super::diagnostics::line_col(text, p.span.clone().unwrap_or(0..0).start).0
            })
            .collect();
        assert!(
            lines.contains(&2) && lines.contains(&3) && lines.contains(&4),
            "{lines:?}"
        );
    }

    #[test]
    fn syntax_errors_have_spans() {
        let (_raw, _loc, problems) = parse("[server\nlisten = 1");
        assert!(!problems.is_empty());
        assert!(problems[0].span.is_some());
    }
}
