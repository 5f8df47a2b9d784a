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
