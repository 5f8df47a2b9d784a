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

    /// The dotted path of the value written exactly at `span`, the innermost when several
    /// share it.
    pub fn path_of(&self, span: &Range<usize>) -> Option<&str> {
        self.values
            .iter()
            .filter(|(_, at)| *at == span)
            .map(|(path, _)| path.as_str())
            .max_by_key(|path| path.len())
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
    pub policy: PolicySection,
    pub authz: Option<AuthzSection>,
    pub alerts: Option<AlertsSection>,
    pub detectors: Option<DetectorsSection>,
    pub state: Option<StateSection>,
    /// Routes in file order; `None` where a route could not be read.
    pub routes: Vec<Option<RouteSection>>,
    /// Sections written in the file that could not be read (their problems are reported):
    /// what depends on them must not be reported missing as well.
    pub unreadable: Vec<String>,
}

impl RawConfig {
    /// True when the optional section `[name]` is not in the file: absent, rather than
    /// written but unreadable (whose problems are already reported).
    pub fn lacks(&self, name: &str) -> bool {
        let absent = match name {
            "tls" => self.tls.is_none(),
            "oidc" => self.oidc.is_none(),
            "session" => self.session.is_none(),
            "assertion" => self.assertion.is_none(),
            "devices" => self.devices.is_none(),
            "risk" => self.risk.is_none(),
            "authz" => self.authz.is_none(),
            "alerts" => self.alerts.is_none(),
            "detectors" => self.detectors.is_none(),
            "state" => self.state.is_none(),
            _ => false,
        };
        absent && !self.unreadable.iter().any(|u| u == name)
    }
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

/// Reads one section into its place in [`RawConfig`]; false when it could not be read.
type Read = fn(&mut RawConfig, Entry<'_, '_>) -> bool;

/// Every section by name, with where its typed value goes: the one list of section names.
/// A section that cannot be read stays at its default, and is listed as unreadable.
const SECTIONS: &[(&str, Read)] = &[
    ("server", |raw, e| {
        e.read().map(|v| raw.server = v).is_some()
    }),
    ("tls", |raw, e| {
        e.read().map(|v| raw.tls = Some(v)).is_some()
    }),
    ("admin", |raw, e| e.read().map(|v| raw.admin = v).is_some()),
    ("log", |raw, e| e.read().map(|v| raw.log = v).is_some()),
    ("audit", |raw, e| e.read().map(|v| raw.audit = v).is_some()),
    ("upstream", |raw, e| {
        e.read().map(|v| raw.upstream = v).is_some()
    }),
    ("oidc", |raw, e| {
        e.read().map(|v| raw.oidc = Some(v)).is_some()
    }),
    ("session", |raw, e| {
        e.read().map(|v| raw.session = Some(v)).is_some()
    }),
    ("assertion", |raw, e| {
        e.read().map(|v| raw.assertion = Some(v)).is_some()
    }),
    ("verify", |raw, e| {
        e.read().map(|v| raw.verify = v).is_some()
    }),
    ("devices", |raw, e| {
        e.read().map(|v| raw.devices = Some(v)).is_some()
    }),
    ("risk", |raw, e| {
        e.read().map(|v| raw.risk = Some(v)).is_some()
    }),
    ("policy", |raw, e| {
        e.read().map(|v| raw.policy = v).is_some()
    }),
    ("authz", |raw, e| {
        e.read().map(|v| raw.authz = Some(v)).is_some()
    }),
    ("alerts", |raw, e| {
        e.read().map(|v| raw.alerts = Some(v)).is_some()
    }),
    ("detectors", |raw, e| {
        e.read().map(|v| raw.detectors = Some(v)).is_some()
    }),
    ("state", |raw, e| {
        e.read().map(|v| raw.state = Some(v)).is_some()
    }),
    ("route", |raw, e| {
        raw.routes = e.read_routes();
        true
    }),
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
            Some((_, read)) => {
                let entry = Entry {
                    name,
                    value,
                    locator: &locator,
                    problems: &mut problems,
                };
                if !read(&mut raw, entry) {
                    raw.unreadable.push(name.to_owned());
                }
            }
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
/// and the section is read again: one run reports every bad value in the section, and the
/// section is still returned (with the defaults of the keys taken out) so that what is compiled
/// from it is checked too. `None` when it cannot be read even so (a required key was bad or
/// missing): its problems are reported, and the section is [`RawConfig::unreadable`].
fn section<T: DeserializeOwned>(
    path: &str,
    mut value: Spanned<DeValue<'_>>,
    locator: &Locator,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let mut unknown = Vec::new();
    // Keys taken out for a bad value: their absence is not a problem of its own.
    let mut removed: Vec<String> = Vec::new();
    let mut read = None;
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
                read = Some(v);
                break;
            }
            Err(err) => {
                let message = err.message();
                let consequence =
                    missing_field(message).is_some_and(|f| removed.iter().any(|r| r == f));
                let span = err.span().or_else(|| locator.value(path));
                if !consequence {
                    let at = span
                        .as_ref()
                        .and_then(|s| locator.path_of(s))
                        .unwrap_or(path);
                    problems.push(Problem::at(
                        span.clone(),
                        format!("`{at}`: {}", in_words(message)),
                    ));
                }
                match span {
                    Some(span) if remove_value_at(value.get_mut(), &span) => {
                        if let Some(key) = locator.path_of(&span).and_then(|p| p.rsplit('.').next())
                        {
                            removed.push(key.to_owned());
                        }
                    }
                    _ => break,
                }
            }
        }
    }
    report_unknown::<T>(path, &unknown, locator, problems);
    read
}

/// The field a serde "missing field" error names.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.strip_suffix('`')
}

/// serde's messages in the words of a configuration file: `invalid type: string "many",
/// expected usize` is "expected a whole number (0 or more), found the string "many"". A
/// message Vigil's own parsers wrote (durations, addresses) is already in words and is kept.
fn in_words(message: &str) -> String {
    if let Some(field) = missing_field(message) {
        return format!("missing key `{field}`");
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            return format!(
                "expected {}, found {}",
                expected_words(expected),
                found_words(found)
            );
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ")
        && let Some((found, expected)) = rest.split_once(", expected ")
    {
        let expected = expected.strip_prefix("one of ").unwrap_or(expected);
        return format!("{found} is not one of the values allowed here: {expected}");
    }
    if let Some(rest) = message.strip_prefix("invalid length ")
        && let Some((length, expected)) = rest.split_once(", expected ")
    {
        return format!("expected {expected}, found {length} item(s)");
    }
    message.to_owned()
}

/// What serde expected (a Rust type or its own description), as a value in a file.
fn expected_words(expected: &str) -> String {
    let words = match expected {
        "usize" | "u64" | "u32" | "u128" => "a whole number (0 or more)",
        "u16" => "a whole number from 0 to 65535",
        "u8" => "a whole number from 0 to 255",
        "isize" | "i64" | "i32" | "i16" | "i8" | "i128" => "a whole number",
        "f64" | "f32" => "a number",
        "a boolean" => "true or false",
        "a string" | "a borrowed string" | "a character" => "a string in quotes",
        "a sequence" => "a list, like [\"a\", \"b\"]",
        "a map" => "a table",
        _ if expected.starts_with("struct ") || expected.starts_with("a map") => "a table",
        _ => expected,
    };
    words.to_owned()
}

/// The value serde found, as written in a file.
fn found_words(found: &str) -> String {
    let quoted = |prefix: &str| {
        found
            .strip_prefix(prefix)
            .map(|v| v.trim_matches('`').to_owned())
    };
    if let Some(text) = found.strip_prefix("string ") {
        format!("the string {text}")
    } else if let Some(n) = quoted("integer ").or_else(|| quoted("floating point ")) {
        format!("the number {n}")
    } else if let Some(b) = quoted("boolean ") {
        b
    } else {
        match found {
            "sequence" => "a list".to_owned(),
            "map" => "a table".to_owned(),
            "unit value" => "nothing".to_owned(),
            _ => found.to_owned(),
        }
    }
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
            messages
                .iter()
                .any(|m| m.contains("`server.max_connections`: expected a whole number")),
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
    fn serde_messages_are_put_in_words() {
        let cases = [
            (
                "invalid type: string \"many\", expected usize",
                "expected a whole number (0 or more), found the string \"many\"",
            ),
            (
                "invalid type: integer `5`, expected a string",
                "expected a string in quotes, found the number 5",
            ),
            (
                "invalid type: string \"yes\", expected a boolean",
                "expected true or false, found the string \"yes\"",
            ),
            (
                "invalid value: integer `-1`, expected u64",
                "expected a whole number (0 or more), found the number -1",
            ),
            (
                "invalid type: integer `70000`, expected u16",
                "expected a whole number from 0 to 65535, found the number 70000",
            ),
            (
                "invalid type: string \"GET\", expected a sequence",
                "expected a list, like [\"a\", \"b\"], found the string \"GET\"",
            ),
            (
                "invalid type: sequence, expected struct RiskSection",
                "expected a table, found a list",
            ),
            ("missing field `upstream`", "missing key `upstream`"),
            (
                "unknown variant `oidcc`, expected one of `none`, `oidc`",
                "`oidcc` is not one of the values allowed here: `none`, `oidc`",
            ),
            // Vigil's own messages are kept.
            (
                "invalid duration \"soon\" (expected number at 0)",
                "invalid duration \"soon\" (expected number at 0)",
            ),
        ];
        for (serde, words) in cases {
            assert_eq!(in_words(serde), words, "{serde}");
        }
    }

    /// A bad value does not hide the rest of its section: the key taken out for it is read
    /// as its default, the section is still compiled, and a required key taken out is not
    /// reported missing as well.
    #[test]
    fn a_bad_value_leaves_the_rest_of_its_section_read() {
        let text = "[tls]\ncert = 5\nkey = \"k\"\nsession_tickets = \"yes\"\n\n[server]\nmax_connections = \"x\"\nidle_timeout = \"1m\"\n";
        let (raw, _loc, mut problems) = parse(text);
        problems.sort_by_key(|p| p.span.as_ref().map(|s| s.start));
        let messages: Vec<_> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "`tls.cert`: expected a string in quotes, found the number 5",
                "`tls.session_tickets`: expected true or false, found the string \"yes\"",
                "`server.max_connections`: expected a whole number (0 or more), found the string \"x\"",
            ],
        );
        // [tls] lost a required key: unreadable, but not absent.
        assert!(raw.tls.is_none());
        assert!(!raw.lacks("tls"));
        assert!(raw.lacks("oidc"));
        // [server] is read, with the default for the bad key and the good key kept.
        assert_eq!(
            raw.server.idle_timeout.0,
            std::time::Duration::from_secs(60)
        );
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
expiry_warning = "14d"

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
decision_facts = true

[audit]
mode = "enforce"

[upstream]
connect_timeout = "5s"
response_timeout = "60s"
pool_idle_timeout = "90s"
pool_max_idle_per_host = 64
resolve_interval = "30s"

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

[policy]
data = ["data/*.json"]
max_instructions = 100000
timeout = "5ms"

[authz]
path = "/.vigil/authz"
enforcement_points = [{ name = "nginx", spiffe = "spiffe://example.org/ingress", fingerprint = "00" }]

[alerts]
webhook = "https://alerts.example.org/vigil"
ca = "alerts-ca.pem"
secret_file = "alerts.secret"
queue = 100
retries = 3
timeout = "5s"
backoff = "200ms"
backoff_max = "30s"

[detectors]
table_size = 100000

[detectors.denials]
threshold = 10
window = "1h"
per = ["user", "device", "address"]
action = "block"
block_for = "15m"
weight = 30
raise_for = "1h"

[detectors.failed_logins]
threshold = 5
window = "1h"
per = ["user"]
action = "raise_risk"
block_for = "15m"
weight = 30
raise_for = "1h"

[detectors.addresses]
threshold = 5
window = "1h"
per = ["user"]
action = "raise_risk"
block_for = "15m"
weight = 30
raise_for = "1h"

[detectors.countries]
threshold = 5
window = "1h"
per = ["user"]
action = "raise_risk"
block_for = "15m"
weight = 30
raise_for = "1h"

[detectors.revoked]
threshold = 5
window = "1h"
per = ["user"]
action = "raise_risk"
block_for = "15m"
weight = 30
raise_for = "1h"

[state]
backend = "redis"
url = "rediss://redis.example.org:6379/0"
username = "vigil"
password_file = "redis.password"
ca = "redis-ca.pem"
prefix = "vigil"
max_stale = "10s"
timeout = "500ms"

[[route]]
name = "app"
host = "app.example.org"
path = "/"
upstream = [{ url = "https://10.0.0.12:8443", weight = 2 }]
balance = "round_robin"
health = { path = "/healthz", interval = "5s", unhealthy = 3, healthy = 2 }
outlier = { consecutive_failures = 5, base_ejection = "10s", max_ejection = "5m" }
max_connections = 100
max_pending = 1024
max_requests_per_connection = 1000
retries = 2
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
audit = true
policy = "app.rego"
policy_query = "data.app.allow"
shadow_policy = "app-next.rego"
shadow_policy_query = "data.app.allow"
grants = { max = "4h", default = "1h", approvers = { groups = ["sec-oncall"], users = ["alice@example.org"] } }
require_shared_state = true

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
headers = { authorization = ["Bearer *"] }
hours = "08:00-19:00"
days = ["mon"]
timezone = "Europe/Paris"
grant = true
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
            ("policy", Keys::walk::<PolicySection>()),
            ("authz", Keys::walk::<AuthzSection>()),
            ("alerts", Keys::walk::<AlertsSection>()),
            ("detectors", Keys::walk::<DetectorsSection>()),
            ("state", Keys::walk::<StateSection>()),
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
