//! Text to typed sections, collecting every problem instead of stopping at the first.
//!
//! The document is parsed once into a spanned tree; each section and each route is then
//! deserialised on its own, and keys nobody reads are reported with a suggestion taken from
//! the keys the schema has there (see `keys.rs`).

use super::diagnostics::{Problem, suggest};
use super::keys::Keys;
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

/// A top-level table and what reading it needs.
struct Entry<'e, 'd> {
    name: &'e str,
    value: Spanned<DeValue<'d>>,
    locator: &'e Locator,
    problems: &'e mut Vec<Problem>,
}

impl Entry<'_, '_> {
    fn read<T: DeserializeOwned>(self) -> Option<T> {
        section(self.name, self.value, self.locator, self.problems)
    }

    fn read_or_default<T: DeserializeOwned + Default>(self) -> T {
        self.read().unwrap_or_default()
    }

    /// `[[route]]`: each route on its own, so a broken one does not hide the others.
    fn read_routes(self) -> Vec<Option<RouteSection>> {
        let DeValue::Array(items) = self.value.into_inner() else {
            self.problems.push(
                Problem::at(
                    self.locator.value("route"),
                    "`route` must be an array of tables",
                )
                .with_help("write each route as a [[route]] table"),
            );
            return Vec::new();
        };
        let mut routes = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let path = format!("route.{i}");
            routes.push(section(&path, item, self.locator, self.problems));
        }
        routes
    }
}

/// Reads one section into its place in [`RawConfig`].
type Read = fn(&mut RawConfig, Entry<'_, '_>);

/// Every section by name, with where its typed value goes: the one list of section names.
/// A section with problems stays at its default.
const SECTIONS: &[(&str, Read)] = &[
    ("server", |raw, e| raw.server = e.read_or_default()),
    ("tls", |raw, e| raw.tls = e.read()),
    ("admin", |raw, e| raw.admin = e.read_or_default()),
    ("log", |raw, e| raw.log = e.read_or_default()),
    ("audit", |raw, e| raw.audit = e.read_or_default()),
    ("upstream", |raw, e| raw.upstream = e.read_or_default()),
    ("oidc", |raw, e| raw.oidc = e.read()),
    ("session", |raw, e| raw.session = e.read()),
    ("assertion", |raw, e| raw.assertion = e.read()),
    ("verify", |raw, e| raw.verify = e.read_or_default()),
    ("devices", |raw, e| raw.devices = e.read()),
    ("risk", |raw, e| raw.risk = e.read()),
    ("route", |raw, e| raw.routes = e.read_routes()),
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
        match SECTIONS.iter().find(|(known, _)| *known == name) {
            Some((_, read)) => read(
                &mut raw,
                Entry {
                    name,
                    value,
                    locator: &locator,
                    problems: &mut problems,
                },
            ),
            None => {
                let names: Vec<&str> = SECTIONS.iter().map(|(known, _)| *known).collect();
                problems.push(
                    Problem::at(Some(key.span()), format!("unknown section `{name}`")).with_help(
                        suggest(name, &names)
                            .unwrap_or_else(|| format!("known sections: {}", names.join(", "))),
                    ),
                );
            }
        }
    }
    (raw, locator, problems)
}

/// Deserialises one section, reporting unknown keys (with suggestions) and type errors.
///
/// A key is unknown when serde did not read it: serde_ignored reports each such key with its
/// path. serde stops at the first type error, so after each one the offending key is taken out
/// and the section is read again: one run reports every bad value in the section.
fn section<T: DeserializeOwned>(
    path: &str,
    mut value: Spanned<DeValue<'_>>,
    locator: &Locator,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let mut unknown = Vec::new();
    let mut failed = false;
    for _ in 0..64 {
        let mut ignored = Vec::new();
        let result: Result<T, toml::de::Error> =
            serde_ignored::deserialize(value.clone().into_deserializer(), |p| {
                ignored.push(dotted(&p))
            });
        for key in ignored {
            if !unknown.contains(&key) {
                unknown.push(key);
            }
        }
        match result {
            Ok(v) => {
                report_unknown::<T>(path, &unknown, locator, problems);
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
    report_unknown::<T>(path, &unknown, locator, problems);
    None
}

/// A path as the locator writes it (`allow.0.spiffe`): serde_ignored's own rendering marks
/// each option it passed through with `?`, which the document does not have.
fn dotted(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => join(&dotted(parent), &index.to_string()),
        Path::Map { parent, key } => join(&dotted(parent), key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => dotted(parent),
    }
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

/// Reports keys nobody read, each suggesting the closest key the schema has in its table.
fn report_unknown<T: DeserializeOwned>(
    path: &str,
    unknown: &[String],
    locator: &Locator,
    problems: &mut Vec<Problem>,
) {
    if unknown.is_empty() {
        return;
    }
    let keys = Keys::of::<T>();
    for rel in unknown {
        let full = join(path, rel);
        let (table, key) = rel.rsplit_once('.').unwrap_or(("", rel));
        let candidates = keys.at(table);
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

    /// Every key of every section, each table written once.
    const EVERY_KEY: &str = r#"
[server]
listen = "127.0.0.1:8443"
max_connections = 10
max_connections_per_source = 5
max_handshakes_per_source = 5
handshake_timeout = "10s"
header_read_timeout = "10s"
idle_timeout = "2m"
max_header_bytes = 32768
body_read_timeout = "30s"
max_body_bytes = 1024
max_target_bytes = 1024
hsts_max_age = "365d"
hsts_include_subdomains = false
max_concurrent_streams = 128
drain_timeout = "30s"
proxy_protocol = { from = ["10.0.0.0/8"], timeout = "5s" }

[tls]
cert = "server.pem"
key = "server.key"
client_ca = ["ca.pem"]
crl = ["ca.crl"]
allow_unknown_revocation = false
enforce_crl_expiry = true
session_tickets = true
key_exchange = ["X25519"]

[admin]
listen = "127.0.0.1:9901"
client_ca = ["ca.pem"]
allow_spiffe = ["spiffe://example.org/ops"]
cert = "admin.pem"
key = "admin.key"
names = ["vigil-admin.internal"]
token_file = "admin.tokens"
max_connections = 64
max_connections_per_source = 16
handshake_timeout = "10s"
header_read_timeout = "10s"
body_read_timeout = "10s"
idle_timeout = "1m"

[log]
decisions = "stdout"
admin_actions = "decisions"
format = "json"
level = "info"

[audit]
mode = "enforce"

[upstream]
connect_timeout = "5s"
response_timeout = "60s"
pool_idle_timeout = "90s"
pool_max_idle_per_host = 64

[oidc]
issuer = "https://idp.example.org"
client_id = "vigil"
client_secret_file = "client.secret"
client_secret_env = "VIGIL_CLIENT_SECRET"
redirect_url = "https://app.example.org/.vigil/callback"
scopes = ["openid"]
groups_claim = "groups"
risk_claim = "risk"
mfa_amr = ["mfa"]
post_logout_redirect_url = "/"
userinfo = true
algorithms = ["ES256"]
clock_skew = "1m"
login_timeout = "10m"
check_interval = "30s"
ca = "idp.pem"

[session]
keys_file = "session.keys"
lifetime = "8h"
idle = "1h"

[assertion]
keys_file = "assertion.pem"
issuer = "vigil"
lifetime = "2m"

[verify]
interval = "5m"
max_stale = "10m"

[devices]
source = "devices.json"
key = "fingerprint"
refresh = "30s"
max_stale = "15m"
ca = "mdm.pem"

[risk]
device_unknown = 40
device_noncompliant = 40
stale_check_in = 20
untrusted_network = 20
idp_risk_medium = 30
idp_risk_high = 60
recent_denial = 10
first_seen_device = 15
medium = 30
high = 60
trusted_networks = ["10.0.0.0/8"]
check_in_max_age = "1d"
denial_window = "5m"
step_up_max_age = "5m"
geoip_database = "country.mmdb"
allowed_countries = ["DE"]
country_not_allowed = 40
country_unknown = 0

[[route]]
name = "app"
host = "app.example.org"
path = "/"
upstream = "https://10.0.0.12:8443"
login = "bearer"
bearer_audience = "api"
bearer_scopes = ["read"]
headers = { X-User = "email" }
preserve_host = false
upstream_ca = "upstream-ca.pem"
upstream_cert = "upstream.pem"
upstream_key = "upstream.key"
connect_timeout = "5s"
response_timeout = "60s"
max_body_bytes = 1024
upgrades = ["websocket"]
risk = { low = "allow", medium = "read_only", high = "deny" }

[[route.allow]]
spiffe = ["spiffe://example.org/ns/*/sa/*"]
cert_subject = ["laptop-*"]
cert_san = ["*.example.org"]
cert_fingerprint = ["00"]
methods = ["GET"]
paths = ["/api/**"]
networks = ["10.0.0.0/8"]
users = ["*@example.org"]
email_domains = ["example.org"]
groups = ["staff"]
mfa = true
claims = { team = ["a"] }
device = "compliant"
min_os = { macOS = "14.0" }
max_check_in_age = "1d"
"#;

    /// A key the schema has is never reported unknown, and the suggestions know every key
    /// serde reads: both come from the schema types.
    #[test]
    fn every_key_of_the_schema_is_read_and_known() {
        let (_raw, locator, problems) = parse(EVERY_KEY);
        assert!(problems.is_empty(), "{problems:?}");
        let sections = [
            ("server", Keys::walk::<ServerSection>()),
            ("tls", Keys::walk::<TlsSection>()),
            ("admin", Keys::walk::<AdminSection>()),
            ("log", Keys::walk::<LogSection>()),
            ("audit", Keys::walk::<AuditSection>()),
            ("upstream", Keys::walk::<UpstreamSection>()),
            ("oidc", Keys::walk::<OidcSection>()),
            ("session", Keys::walk::<SessionSection>()),
            ("assertion", Keys::walk::<AssertionSection>()),
            ("verify", Keys::walk::<VerifySection>()),
            ("devices", Keys::walk::<DevicesSection>()),
            ("risk", Keys::walk::<RiskSection>()),
            ("route.0", Keys::walk::<RouteSection>()),
        ];
        let names: Vec<&str> = SECTIONS.iter().map(|(name, _)| *name).collect();
        let tested: Vec<&str> = sections
            .iter()
            .map(|(at, _)| at.trim_end_matches(".0"))
            .collect();
        assert_eq!(names, tested, "a section is missing from this test");
        for (at, keys) in &sections {
            let Ok(keys) = keys else {
                panic!("the walk over `{at}` stopped at a type it cannot feed");
            };
            for path in keys.paths() {
                let written = format!("{at}.{}", path.replace('*', "0"));
                assert!(
                    locator.keys.contains_key(&written),
                    "`{written}` is in the schema but not in EVERY_KEY: add it"
                );
            }
            // Every key written in a table the schema describes is one it knows.
            for written in locator.keys.keys() {
                let Some(rel) = written.strip_prefix(&format!("{at}.")) else {
                    continue;
                };
                let (table, key) = rel.rsplit_once('.').unwrap_or(("", rel));
                let known = keys.at(table);
                assert!(
                    known.is_empty() || known.contains(&key),
                    "`{written}` is read but not among the known keys {known:?}"
                );
            }
        }
    }

    #[test]
    fn a_misspelt_proxy_protocol_key_is_suggested() {
        let text = "[server]\nproxy_protocol = { form = [\"10.0.0.0/8\"] }\n";
        let (_raw, _loc, problems) = parse(text);
        let p = problems
            .iter()
            .find(|p| p.message == "unknown key `server.proxy_protocol.form`");
        assert_eq!(
            p.and_then(|p| p.help.as_deref()),
            Some("did you mean `from`?"),
            "{problems:?}"
        );
    }

    #[test]
    fn unknown_keys_in_nested_tables_are_located_and_suggested() {
        let text = "[[route]]\nname = \"a\"\nrisk = { lo = \"deny\" }\nallow = [{ mfaa = true }]\n";
        let (_raw, _loc, problems) = parse(text);
        let found = |message: &str| {
            problems
                .iter()
                .find(|p| p.message == message)
                .unwrap_or_else(|| panic!("no {message:?} in {problems:?}"))
        };
        let lo = found("unknown key `route.0.risk.lo`");
        assert_eq!(lo.help.as_deref(), Some("did you mean `low`?"));
        assert_eq!(lo.span.clone().map(|s| &text[s]), Some("lo"));
        let mfa = found("unknown key `route.0.allow.0.mfaa`");
        assert_eq!(mfa.help.as_deref(), Some("did you mean `mfa`?"));
        assert_eq!(mfa.span.clone().map(|s| &text[s]), Some("mfaa"));
    }

    #[test]
    fn syntax_errors_have_spans() {
        let (_raw, _loc, problems) = parse("[server\nlisten = 1");
        assert!(!problems.is_empty());
        assert!(problems[0].span.is_some());
    }
}
