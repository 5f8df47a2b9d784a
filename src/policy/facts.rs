//! The facts document: everything a decision may look at, in one plain value.
//!
//! The request pipeline builds it from a request, the live verifier from an open connection or
//! stream, and `vigil policy explain` reads it from a JSON file ([`Document`]). Its JSON form is
//! documented field by field in `docs/facts.md`, with a JSON Schema beside it; every field here
//! has already been verified or normalised: nothing comes straight from client-controlled text.

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
        }
    }
}
