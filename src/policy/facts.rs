//! The facts document: everything a decision may look at, in one plain value.
//!
//! The request pipeline builds it from a request, the live verifier from an open connection or
//! stream, and `vigil policy explain` reads it from a JSON file ([`Document`]). Its JSON form is
//! documented field by field in `docs/facts.md`, with a JSON Schema beside it; every field here
//! has already been verified or normalised: nothing comes straight from client-controlled text.

use crate::access::Grant;
use crate::anomaly::blocks::Block;
use crate::fleet::Standing;
use crate::identity::Identity;
use crate::posture::Assessment;
use crate::posture::inventory::Device;
use crate::tls::PeerCert;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// One decision's facts, borrowed from where they live: a request builds this without copying
/// its certificate, identity or device record.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Facts<'a> {
    /// Unix seconds: when the decision is made.
    pub time: i64,
    pub request: Request<'a>,
    /// The verified client certificate of the connection.
    pub certificate: &'a PeerCert,
    /// The signed-in person (a session) or the service behind a bearer token; `None` on routes
    /// that identify with the certificate alone.
    pub person: Option<&'a Identity>,
    /// The device inventory's record of the certificate; `None` when there is no inventory,
    /// the device is not in it, or the inventory is stale.
    pub device: Option<&'a Device>,
    pub network: Network<'a>,
    /// The risk level and the signals behind it; `None` when `[risk]` is not configured.
    pub risk: Option<&'a Assessment>,
    /// The just-in-time grants in force for this subject on this route, the longest-lasting
    /// first.
    #[serde(skip_serializing_if = "<[Grant]>::is_empty")]
    pub grants: &'a [Grant],
    /// The block in force on this subject, if there is one: the request is denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<&'a Block>,
    /// How current this replica's copy of the fleet's shared state is; `None` when the state
    /// is kept in memory (`[state] backend = "memory"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_state: Option<Standing>,
}

/// The request, canonical: the same host and path that are forwarded.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Request<'a> {
    /// The route that serves the host and path; `None` when none does.
    pub route: Option<&'a str>,
    /// Lower-case, no trailing dot, no default port.
    pub host: &'a str,
    pub method: &'a str,
    /// Normalised: the path policy sees is the path forwarded.
    pub path: &'a str,
    /// The request's headers, as the client sent them (rules with `headers` look at them).
    pub headers: Headers<'a>,
}

/// A request's headers, names compared case-insensitively. A value that is not visible ASCII
/// text (with spaces and tabs) is never seen: no rule matches it.
#[derive(Debug, Clone, Copy)]
pub enum Headers<'a> {
    /// A request's own.
    Map(&'a http::HeaderMap),
    /// Kept from a request (an open stream's), or read from a document: lower-case names.
    List(&'a [(String, String)]),
}

impl Headers<'_> {
    /// No headers.
    pub const NONE: Headers<'static> = Headers::List(&[]);

    /// True when some value of header `name` (lower case) satisfies `test`; false when the
    /// header is absent.
    pub fn any(&self, name: &str, mut test: impl FnMut(&str) -> bool) -> bool {
        match self {
            Headers::Map(map) => map
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(test),
            Headers::List(list) => list.iter().any(|(n, v)| n == name && test(v)),
        }
    }

    /// Every header with a visible-ASCII value, names in lower case, in order.
    pub fn each(&self, mut f: impl FnMut(&str, &str)) {
        match self {
            Headers::Map(map) => {
                for (name, value) in map.iter() {
                    if let Ok(v) = value.to_str() {
                        f(name.as_str(), v);
                    }
                }
            }
            Headers::List(list) => {
                for (name, value) in list.iter() {
                    f(name, value);
                }
            }
        }
    }

    /// Every header, to keep beside an open stream whose policy may look at any.
    pub fn all(&self) -> Vec<(String, String)> {
        let mut kept = Vec::new();
        self.each(|name, value| kept.push((name.to_owned(), value.to_owned())));
        kept
    }

    /// The values of the headers in `names` (lower case), to keep beside an open stream.
    pub fn keep(&self, names: &[&str]) -> Vec<(String, String)> {
        let mut kept = Vec::new();
        for name in names {
            self.any(name, |v| {
                kept.push(((*name).to_owned(), v.to_owned()));
                false
            });
        }
        kept
    }
}

/// As a document writes them: an object of lower-case names, each with its values in order.
impl Serialize for Headers<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut by_name: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        match self {
            Headers::Map(map) => {
                for (name, value) in map.iter() {
                    if let Ok(v) = value.to_str() {
                        by_name.entry(name.as_str()).or_default().push(v);
                    }
                }
            }
            Headers::List(list) => {
                for (name, value) in list.iter() {
                    by_name.entry(name).or_default().push(value);
                }
            }
        }
        serializer.collect_map(by_name)
    }
}

/// Where the request comes from.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Network<'a> {
    /// The client's address (an IPv4 client on a dual-stack listener as plain IPv4).
    pub source: IpAddr,
    /// ISO 3166 code of the source, when `[risk] geoip` is configured and knows it.
    pub country: Option<&'a str>,
}

/// The grant in force on the facts' route at their time that lasts longest, if there is one.
pub fn grant_in_force<'a>(f: &Facts<'a>) -> Option<&'a Grant> {
    let route = f.request.route?;
    f.grants
        .iter()
        .filter(|g| g.route == route && g.expires_at > f.time)
        .max_by_key(|g| g.expires_at)
}

/// A facts document as read from JSON: owns what [`Facts`] borrows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// When absent, the reader fills in the current time.
    #[serde(default)]
    pub time: Option<i64>,
    pub request: RequestDocument,
    pub certificate: PeerCert,
    #[serde(default)]
    pub person: Option<Identity>,
    #[serde(default)]
    pub device: Option<Device>,
    pub network: NetworkDocument,
    #[serde(default)]
    pub risk: Option<Assessment>,
    #[serde(default)]
    pub grants: Vec<Grant>,
    #[serde(default)]
    pub block: Option<Block>,
    #[serde(default)]
    pub shared_state: Option<Standing>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestDocument {
    #[serde(default)]
    pub route: Option<String>,
    pub host: String,
    pub method: String,
    pub path: String,
    /// `{"name": ["value", ...]}`: lower-case names, values of visible ASCII.
    #[serde(default, deserialize_with = "header_list")]
    pub headers: Vec<(String, String)>,
}

/// A document's `request.headers`, refusing what no request could carry: a name that is not
/// a lower-case HTTP token, a value with control or non-ASCII characters.
fn header_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    use serde::de::Error;
    let map: Option<std::collections::BTreeMap<String, Vec<String>>> = Option::deserialize(d)?;
    let mut list = Vec::new();
    for (name, values) in map.unwrap_or_default() {
        let token = !name.is_empty()
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
            });
        if !token {
            return Err(D::Error::custom(format!(
                "header name {name:?} is not a lower-case HTTP header name"
            )));
        }
        for value in values {
            if !value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
            {
                return Err(D::Error::custom(format!(
                    "a value of header {name:?} is not visible ASCII text"
                )));
            }
            list.push((name.clone(), value));
        }
    }
    Ok(list)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDocument {
    pub source: IpAddr,
    #[serde(default)]
    pub country: Option<String>,
}

impl Document {
    /// The facts of this document, at its time or else at `now`.
    pub fn facts(&self, now: i64) -> Facts<'_> {
        Facts {
            time: self.time.unwrap_or(now),
            request: Request {
                route: self.request.route.as_deref(),
                host: &self.request.host,
                method: &self.request.method,
                path: &self.request.path,
                headers: Headers::List(&self.request.headers),
            },
            certificate: &self.certificate,
            person: self.person.as_ref(),
            device: self.device.as_ref(),
            network: Network {
                // As the server sees it: an IPv4-mapped address is plain IPv4.
                source: self.network.source.to_canonical(),
                country: self.network.country.as_deref(),
            },
            risk: self.risk.as_ref(),
            grants: &self.grants,
            block: self.block.as_ref(),
            shared_state: self.shared_state,
        }
    }
}

/// The header values a decision line never writes in clear: credentials. A rule may still name
/// them; the line then keeps their shape (the `Authorization` scheme, the cookies' names) with
/// `[redacted]` in place of every secret, so a rule on the scheme or on a cookie's presence
/// decides the same when the line is replayed.
pub const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

/// What a redacted secret is written as: visible ASCII, so the line reads back as a document.
pub const REDACTED: &str = "[redacted]";

impl<'a> Facts<'a> {
    /// These facts as a decision line keeps them (docs/decision-log.md, `facts`): a facts
    /// document, read back by [`Document`], holding only what `route`'s rules can look at of
    /// the request's headers and the person's claims, without credentials, tokens, session ids,
    /// the person's name or the device's owner. Serialised straight from what the facts borrow.
    pub fn kept(&self, route: Option<&'a super::RoutePolicy>) -> Kept<'a> {
        Kept {
            facts: *self,
            route,
        }
    }
}

/// [`Facts::kept`]: serialises as the facts document a decision line carries.
#[derive(Debug, Clone, Copy)]
pub struct Kept<'a> {
    facts: Facts<'a>,
    route: Option<&'a super::RoutePolicy>,
}

impl Serialize for Kept<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let f = &self.facts;
        let mut doc = serializer.serialize_struct("Facts", 9)?;
        doc.serialize_field("time", &f.time)?;
        doc.serialize_field(
            "request",
            &KeptRequest {
                request: &f.request,
                route: self.route,
            },
        )?;
        doc.serialize_field("certificate", &KeptCertificate(f.certificate))?;
        doc.serialize_field(
            "person",
            &f.person.map(|person| KeptPerson {
                person,
                route: self.route,
            }),
        )?;
        doc.serialize_field("device", &f.device.map(KeptDevice))?;
        doc.serialize_field("network", &f.network)?;
        doc.serialize_field("risk", &f.risk)?;
        // Absent when none, as a document may leave them out: most lines have neither.
        if f.grants.is_empty() {
            doc.skip_field("grants")?;
        } else {
            doc.serialize_field("grants", f.grants)?;
        }
        match f.block {
            Some(block) => doc.serialize_field("block", block)?,
            None => doc.skip_field("block")?,
        }
        doc.end()
    }
}

struct KeptRequest<'a> {
    request: &'a Request<'a>,
    route: Option<&'a super::RoutePolicy>,
}

impl Serialize for KeptRequest<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeStruct};
        let r = self.request;
        let mut out = serializer.serialize_struct("Request", 5)?;
        out.serialize_field("route", &r.route)?;
        out.serialize_field("host", r.host)?;
        out.serialize_field("method", r.method)?;
        out.serialize_field("path", r.path)?;
        // Only the headers the route's rules name, each once, in the rules' order.
        struct Named<'a>(&'a Headers<'a>, Option<&'a super::RoutePolicy>);
        impl Serialize for Named<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(None)?;
                // A policy may look at any header: its route keeps them all, reduced alike.
                if self.1.is_some_and(super::RoutePolicy::has_policy) {
                    let mut by_name: std::collections::BTreeMap<String, Vec<String>> =
                        Default::default();
                    self.0.each(|name, v| {
                        by_name
                            .entry(name.to_owned())
                            .or_default()
                            .push(kept_value(name, v).into_owned());
                    });
                    for (name, values) in &by_name {
                        map.serialize_entry(name, values)?;
                    }
                    return map.end();
                }
                let names = self.1.into_iter().flat_map(|route| {
                    route
                        .rules
                        .iter()
                        .flat_map(|r| r.headers.iter().map(|(n, _)| n.as_str()))
                });
                let mut seen: Vec<&str> = Vec::new();
                for name in names {
                    if seen.contains(&name) {
                        continue;
                    }
                    seen.push(name);
                    let mut values: Vec<String> = Vec::new();
                    self.0.any(name, |v| {
                        values.push(kept_value(name, v).into_owned());
                        false
                    });
                    if !values.is_empty() {
                        map.serialize_entry(name, &values)?;
                    }
                }
                map.end()
            }
        }
        out.serialize_field("headers", &Named(&r.headers, self.route))?;
        out.end()
    }
}

/// A header's value as a decision line writes it: credentials reduced to their shape.
pub fn kept_value<'v>(name: &str, value: &'v str) -> std::borrow::Cow<'v, str> {
    use std::borrow::Cow;
    match name {
        "authorization" | "proxy-authorization" => match value.trim().split_once([' ', '\t']) {
            Some((scheme, _)) => Cow::Owned(format!("{scheme} {REDACTED}")),
            None => Cow::Borrowed(REDACTED),
        },
        "cookie" => {
            let names: Vec<String> = value
                .split(';')
                .filter_map(|pair| {
                    let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
                    (!name.is_empty()).then(|| format!("{name}={REDACTED}"))
                })
                .collect();
            Cow::Owned(names.join("; "))
        }
        _ => Cow::Borrowed(value),
    }
}

/// The certificate, as JSON written once per certificate (its connection's every line shows
/// the same): kept facts are only ever written by serde_json, which copies it as it is.
struct KeptCertificate<'a>(&'a PeerCert);

impl Serialize for KeptCertificate<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = self.0;
        match c
            .written
            .get_or_write(|| serde_json::value::to_raw_value(&CertificateFields(c)))
        {
            Some(raw) => raw.serialize(serializer),
            None => CertificateFields(c).serialize(serializer),
        }
    }
}

/// Every field a document has for a certificate: all of them are what rules and the device
/// inventory match on, and none is secret.
struct CertificateFields<'a>(&'a PeerCert);

impl Serialize for CertificateFields<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let c = self.0;
        let mut out = serializer.serialize_struct("Certificate", 11)?;
        out.serialize_field("subject", &c.subject)?;
        out.serialize_field("common_name", &c.common_name)?;
        out.serialize_field("issuer", &c.issuer)?;
        out.serialize_field("dns", &c.dns)?;
        out.serialize_field("emails", &c.emails)?;
        out.serialize_field("uris", &c.uris)?;
        out.serialize_field("spiffe_id", &c.spiffe_id)?;
        out.serialize_field("serial", &c.serial_hex())?;
        out.serialize_field("fingerprint", &c.fingerprint_hex)?;
        out.serialize_field("not_before", &c.not_before)?;
        out.serialize_field("not_after", &c.not_after)?;
        out.end()
    }
}

/// The person without their name (no rule reads it), with only the claims the route's rules
/// name, and with the kind of sign-in but not its session id.
struct KeptPerson<'a> {
    person: &'a Identity,
    route: Option<&'a super::RoutePolicy>,
}

impl Serialize for KeptPerson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use crate::identity::Source;
        use serde::ser::{SerializeMap, SerializeStruct};
        struct Claims<'a>(&'a KeptPerson<'a>);
        impl Serialize for Claims<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(None)?;
                let claims = &self.0.person.claims;
                // A policy may look at any claim (`input.jwt`): its route keeps them all.
                if self.0.route.is_some_and(super::RoutePolicy::has_policy) {
                    for (name, value) in claims {
                        map.serialize_entry(name, value)?;
                    }
                    return map.end();
                }
                let names = self.0.route.into_iter().flat_map(|route| {
                    route
                        .rules
                        .iter()
                        .flat_map(|r| r.claims.iter().map(|(n, _)| n.as_str()))
                });
                let mut seen: Vec<&str> = Vec::new();
                for name in names {
                    if seen.contains(&name) {
                        continue;
                    }
                    seen.push(name);
                    if let Some(value) = claims.get(name) {
                        map.serialize_entry(name, value)?;
                    }
                }
                map.end()
            }
        }
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case", tag = "kind")]
        enum KeptSource<'a> {
            Session {},
            Bearer {
                client_id: &'a Option<String>,
                scopes: &'a [String],
            },
        }
        let p = self.person;
        let mut out = serializer.serialize_struct("Person", 10)?;
        out.serialize_field("subject", &p.subject)?;
        out.serialize_field("email", &p.email)?;
        out.serialize_field("groups", &p.groups)?;
        out.serialize_field("amr", &p.amr)?;
        out.serialize_field("mfa", &p.mfa)?;
        out.serialize_field("acr", &p.acr)?;
        out.serialize_field("risk", &p.risk)?;
        out.serialize_field("claims", &Claims(self))?;
        out.serialize_field("verified_at", &p.verified_at)?;
        out.serialize_field("auth_time", &p.auth_time)?;
        out.serialize_field(
            "source",
            &match &p.source {
                Source::Session { .. } => KeptSource::Session {},
                Source::Bearer { client_id, scopes } => KeptSource::Bearer { client_id, scopes },
            },
        )?;
        out.end()
    }
}

/// The inventory's record without its `owner`: no rule reads it, and it names a person.
struct KeptDevice<'a>(&'a Device);

impl Serialize for KeptDevice<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let d = self.0;
        let mut out = serializer.serialize_struct("Device", 7)?;
        out.serialize_field("fingerprint", &d.fingerprint)?;
        out.serialize_field("serial", &d.serial)?;
        out.serialize_field("subject", &d.subject)?;
        out.serialize_field("compliant", &d.compliant)?;
        out.serialize_field("managed", &d.managed)?;
        out.serialize_field("os", &d.os)?;
        out.serialize_field("last_check_in", &d.last_check_in)?;
        out.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Source;
    use crate::policy::{RoutePolicy, Rule};

    fn certificate() -> PeerCert {
        PeerCert {
            subject: "CN=laptop".into(),
            common_name: Some("laptop".into()),
            issuer: "CN=Test CA".into(),
            dns: vec![],
            emails: vec!["alice@example.com".into()],
            uris: vec![],
            spiffe_id: None,
            serial: vec![0x01, 0xab],
            fingerprint: [7; 32],
            fingerprint_hex: crate::hex::encode(&[7; 32]),
            not_before: 1_700_000_000,
            not_after: 1_800_000_000,
            written: Default::default(),
        }
    }

    fn person() -> Identity {
        Identity {
            subject: "alice".into(),
            email: Some("alice@example.com".into()),
            name: Some("Alice Liddell".into()),
            groups: vec!["engineering".into()],
            amr: vec!["pwd".into(), "otp".into()],
            mfa: true,
            acr: None,
            risk: None,
            claims: [
                ("department".to_owned(), serde_json::json!("r&d")),
                ("phone".to_owned(), serde_json::json!("+33 1 23 45 67 89")),
            ]
            .into_iter()
            .collect(),
            verified_at: 1_750_000_000,
            auth_time: Some(1_749_999_000),
            source: Source::Session {
                sid: "session-id-secret".into(),
            },
        }
    }

    fn device() -> Device {
        serde_json::from_value(serde_json::json!({
            "fingerprint": crate::hex::encode(&[7; 32]),
            "compliant": true,
            "managed": true,
            "owner": "alice@example.com",
            "os": {"name": "macOS", "version": "15.1"},
            "last_check_in": "2026-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    /// A route whose rules name three headers (two of them credentials) and one claim.
    fn route() -> RoutePolicy {
        let names = |list: &[&str]| list.iter().map(|n| ((*n).to_owned(), Vec::new())).collect();
        let claim = vec![("department".to_owned(), vec!["r&d".to_owned()])];
        RoutePolicy::new(
            "app",
            vec![
                Rule {
                    headers: names(&["x-api-version", "authorization"]),
                    claims: claim,
                    ..Rule::default()
                },
                Rule {
                    headers: names(&["cookie", "authorization"]),
                    ..Rule::default()
                },
            ],
        )
    }

    fn headers() -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer eyJhbGciOiJFUzI1NiJ9.secret-token"),
            ("cookie", "vigil_session=sealed-secret; theme=dark"),
            ("x-api-version", "2"),
            ("x-api-key", "not-named-by-any-rule"),
            ("user-agent", "curl/8"),
        ] {
            map.append(name, http::HeaderValue::from_static(value));
        }
        map
    }

    /// The kept facts read back as a document, decide alike, and hold no credential, token,
    /// session id, name, unnamed claim or header, or owner.
    #[test]
    fn kept_facts_are_a_document_without_secrets() {
        let (cert, who, dev, map, route) = (certificate(), person(), device(), headers(), route());
        let facts = Facts {
            time: 1_750_000_100,
            request: Request {
                route: Some("app"),
                host: "app.example.com",
                method: "GET",
                path: "/reports",
                headers: Headers::Map(&map),
            },
            certificate: &cert,
            person: Some(&who),
            device: Some(&dev),
            network: Network {
                source: "192.0.2.7".parse().unwrap(),
                country: Some("FR"),
            },
            risk: None,
            grants: &[],
            block: None,
            shared_state: None,
        };
        let text = serde_json::to_string(&facts.kept(Some(&route))).unwrap();
        for secret in [
            "eyJ",
            "secret-token",
            "sealed-secret",
            "dark",
            "session-id-secret",
            "Alice Liddell",
            "+33",
            "not-named-by-any-rule",
            "curl",
            "owner",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        let doc: Document = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(
            doc.request.headers,
            [
                ("authorization".to_owned(), "Bearer [redacted]".to_owned()),
                (
                    "cookie".to_owned(),
                    "vigil_session=[redacted]; theme=[redacted]".to_owned()
                ),
                ("x-api-version".to_owned(), "2".to_owned()),
            ]
        );
        let person = doc.person.as_ref().unwrap();
        assert_eq!(person.claims.keys().collect::<Vec<_>>(), ["department"]);
        assert!(person.name.is_none());
        assert_eq!(doc.certificate.serial, cert.serial);
        assert_eq!(doc.certificate.fingerprint, cert.fingerprint);
        assert_eq!(doc.device.as_ref().map(|d| d.owner.clone()), Some(None));
        // Written again from the document, the facts are the same text.
        let again = serde_json::to_string(&doc.facts(0).kept(Some(&route))).unwrap();
        assert_eq!(again, text);
    }

    #[test]
    fn credentials_keep_their_shape_only() {
        for (name, value, kept) in [
            ("authorization", "Bearer abc.def", "Bearer [redacted]"),
            ("authorization", "Basic YWxpY2U6cHc=", "Basic [redacted]"),
            ("authorization", "opaque", "[redacted]"),
            (
                "proxy-authorization",
                "Negotiate xyz",
                "Negotiate [redacted]",
            ),
            (
                "cookie",
                "a=1; b=2;c",
                "a=[redacted]; b=[redacted]; c=[redacted]",
            ),
            ("x-api-version", "2", "2"),
        ] {
            assert_eq!(kept_value(name, value), kept, "{name}: {value}");
        }
    }
}
