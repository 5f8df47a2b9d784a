//! What an enforcement point passes on about the request it asks Vigil to decide, read in
//! the spellings nginx, Traefik and Envoy use, and canonicalised as a proxied request is.
//!
//! Only what an authenticated enforcement point sends is read here (see `authz`); anything
//! ambiguous (a header given twice, two spellings that disagree, several certificate headers)
//! is refused rather than guessed at, so the request decided is the one the enforcement point
//! will let through.

use crate::canonical::{normalize_host, normalize_path};
use crate::reason::{Code, Reason};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, Method};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::net::{IpAddr, SocketAddr};

/// The request an enforcement point asks about, canonical.
#[derive(Debug)]
pub struct Forwarded {
    pub method: Method,
    /// As [`normalize_host`] writes it.
    pub host: String,
    /// As [`normalize_path`] writes it: the path policy sees.
    pub path: String,
    pub query: Option<String>,
    /// The end client's address, as the enforcement point saw it.
    pub client: IpAddr,
    /// The end client's certificate chain as passed on, leaf first; not verified yet.
    pub chain: Vec<CertificateDer<'static>>,
}

/// The end client's certificate, as the enforcement points pass it on.
const CERT_HEADERS: &[&str] = &[
    // nginx: `$ssl_client_escaped_cert`, URL-escaped PEM.
    "x-ssl-client-cert",
    // Traefik `passTLSClientCert`: URL-escaped base64 DER, several joined by commas.
    "x-forwarded-tls-client-cert",
    // Envoy: `By=…;Hash=…;Cert="…";Chain="…"`, one element per proxy.
    "x-forwarded-client-cert",
];

/// At most this many certificates in a forwarded chain.
const MAX_CHAIN: usize = 8;

fn invalid(text: impl Into<String>) -> Reason {
    Reason::new(Code::AuthzForwardedInvalid, text)
}

/// Reads the request to decide. `below` is the check request's path after the endpoint's
/// (Envoy: the request itself, under the prefix), `None` when it asked for exactly the
/// endpoint's path (nginx, Traefik: the request named in headers). `max_target` bounds the
/// forwarded path and query as `[server] max_target_bytes` bounds a proxied one.
pub fn read(
    headers: &HeaderMap,
    method: &Method,
    below: Option<&str>,
    query: Option<&str>,
    max_target: Option<usize>,
) -> Result<Forwarded, Reason> {
    let method = forwarded_method(headers, method, below.is_some())?;
    let (path, query) = forwarded_target(headers, below, query, max_target)?;
    let host = forwarded_host(headers)?;
    let client = forwarded_client(headers)?;
    let chain = forwarded_chain(headers)?;
    Ok(Forwarded {
        method,
        host,
        path,
        query,
        client,
        chain,
    })
}

/// The one value of `name`, if any: a header given twice is refused.
fn one<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, Reason> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid(format!("{name} given more than once")));
    }
    first
        .to_str()
        .map(|v| Some(v.trim()))
        .map_err(|_| invalid(format!("{name} is not printable ASCII")))
}

/// The value of the first of `names` present, refusing two spellings that disagree.
fn either<'h>(headers: &'h HeaderMap, names: [&str; 2]) -> Result<Option<&'h str>, Reason> {
    match (one(headers, names[0])?, one(headers, names[1])?) {
        (Some(a), Some(b)) if a != b => {
            Err(invalid(format!("{} and {} disagree", names[0], names[1])))
        }
        (Some(a), _) | (None, Some(a)) => Ok(Some(a)),
        (None, None) => Ok(None),
    }
}

/// The method named in a header; without one, the check request's own only when it is the
/// request to decide itself (`below`: Envoy copies the original method onto it). A request
/// named in headers must name its method too: nginx's subrequest is a GET whatever the
/// original was, and deciding every request as a GET would let a DELETE through a rule that
/// allows reading.
fn forwarded_method(headers: &HeaderMap, own: &Method, below: bool) -> Result<Method, Reason> {
    let method = match either(headers, ["x-original-method", "x-forwarded-method"])? {
        Some(text) => Method::from_bytes(text.as_bytes())
            .map_err(|_| invalid(format!("forwarded method {text:?} is not a method")))?,
        None if below => own.clone(),
        None => {
            return Err(invalid(
                "no forwarded method (X-Original-Method or X-Forwarded-Method)",
            ));
        }
    };
    if method == Method::CONNECT {
        return Err(invalid("a CONNECT request is not decided"));
    }
    Ok(method)
}

fn forwarded_target(
    headers: &HeaderMap,
    below: Option<&str>,
    query: Option<&str>,
    max_target: Option<usize>,
) -> Result<(String, Option<String>), Reason> {
    let named = either(headers, ["x-original-uri", "x-forwarded-uri"])?;
    let (path, query) = match (below, named) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "the request to decide is named both by the path and by X-Original-URI or X-Forwarded-Uri",
            ));
        }
        (Some(path), None) => (path, query),
        (None, Some(uri)) => match uri.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (uri, None),
        },
        (None, None) => {
            return Err(invalid(
                "no forwarded URI (X-Original-URI or X-Forwarded-Uri)",
            ));
        }
    };
    let length = path.len() + query.map_or(0, |q| q.len() + 1);
    if let Some(limit) = max_target
        && length > limit
    {
        return Err(invalid(format!(
            "forwarded request target of {length} bytes is over the limit of {limit}"
        )));
    }
    if path.contains('#') || query.is_some_and(|q| q.contains('#')) {
        return Err(Reason::new(
            Code::AuthzForwardedPath,
            "fragment in the forwarded URI",
        ));
    }
    let path = normalize_path(path).map_err(|e| {
        Reason::new(
            Code::AuthzForwardedPath,
            format!("forwarded path: {}", e.reason()),
        )
    })?;
    Ok((path.into_owned(), query.map(str::to_owned)))
}

fn forwarded_host(headers: &HeaderMap) -> Result<String, Reason> {
    let text = match one(headers, "x-forwarded-host")? {
        Some(h) => h,
        None => one(headers, "host")?.ok_or_else(|| invalid("no forwarded host"))?,
    };
    if text.contains(',') {
        return Err(invalid("X-Forwarded-Host names more than one host"));
    }
    normalize_host(text).map_err(|e| invalid(format!("forwarded host: {}", e.reason())))
}

/// The end client's address: the last of `X-Forwarded-For`, the one the enforcement point
/// added itself (the ones before it are whatever the client sent).
fn forwarded_client(headers: &HeaderMap) -> Result<IpAddr, Reason> {
    let last = headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .ok_or_else(|| invalid("no forwarded client address (X-Forwarded-For)"))?;
    let text = last
        .to_str()
        .ok()
        .and_then(|v| v.rsplit(',').next())
        .map(str::trim)
        .unwrap_or("");
    text.parse::<IpAddr>()
        .or_else(|_| text.parse::<SocketAddr>().map(|a| a.ip()))
        .map(|ip| ip.to_canonical())
        .map_err(|_| {
            invalid(format!(
                "forwarded client address {text:?} is not an IP address"
            ))
        })
}

fn forwarded_chain(headers: &HeaderMap) -> Result<Vec<CertificateDer<'static>>, Reason> {
    let present: Vec<&str> = CERT_HEADERS
        .iter()
        .copied()
        .filter(|name| headers.contains_key(*name))
        .collect();
    let name = match present.as_slice() {
        [] => {
            return Err(Reason::new(
                Code::AuthzCertificateMissing,
                "no forwarded client certificate (X-SSL-Client-Cert, X-Forwarded-Tls-Client-Cert or X-Forwarded-Client-Cert)",
            ));
        }
        [one] => *one,
        _ => return Err(invalid("more than one forwarded client certificate header")),
    };
    let value = one(headers, name)?.unwrap_or("");
    let unreadable =
        |why: &str| Reason::new(Code::AuthzCertificateInvalid, format!("{name}: {why}"));
    let encoded = if name == "x-forwarded-client-cert" {
        envoy_certificate(value).map_err(|why| unreadable(&why))?
    } else {
        value.to_owned()
    };
    if encoded.is_empty() {
        return Err(Reason::new(
            Code::AuthzCertificateMissing,
            format!("{name} is empty: the client presented no certificate"),
        ));
    }
    let chain = certificates(&encoded).map_err(|why| unreadable(&why))?;
    Ok(chain)
}

/// The `Chain` (else `Cert`) of the last element of an `X-Forwarded-Client-Cert`: the one
/// the nearest proxy, the enforcement point, added.
fn envoy_certificate(value: &str) -> Result<String, String> {
    let elements = split_outside_quotes(value, ',');
    let last = elements.last().map_or("", |e| e.trim());
    let mut cert = None;
    let mut chain = None;
    for pair in split_outside_quotes(last, ';') {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not a key=value pair"));
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        match key.trim().to_ascii_lowercase().as_str() {
            "cert" => cert = Some(value.to_owned()),
            "chain" => chain = Some(value.to_owned()),
            _ => {}
        }
    }
    Ok(chain.or(cert).unwrap_or_default())
}

fn split_outside_quotes(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut quoted, mut start) = (false, 0);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Certificates from URL-escaped PEM (nginx, Envoy) or URL-escaped base64 DER joined by
/// commas (Traefik).
fn certificates(encoded: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = percent_decode(encoded)?;
    let chain: Vec<CertificateDer<'static>> = if text.contains("-----BEGIN") {
        CertificateDer::pem_slice_iter(text.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("not a PEM certificate ({e})"))?
    } else {
        text.split(',')
            .map(|one| {
                let compact: String = one.chars().filter(|c| !c.is_whitespace()).collect();
                STANDARD
                    .decode(compact)
                    .map(CertificateDer::from)
                    .map_err(|_| "neither PEM nor base64 DER".to_owned())
            })
            .collect::<Result<_, _>>()?
    };
    if chain.is_empty() {
        return Err("no certificate in it".into());
    }
    if chain.len() > MAX_CHAIN {
        return Err(format!("more than {MAX_CHAIN} certificates"));
    }
    Ok(chain)
}

/// `%XX` escapes decoded, strictly: a broken escape or bytes that are not UTF-8 are refused.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a broken %-escape")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not text once unescaped".to_owned())
}

#[cfg(test)]
mod tests;
