//! Header hygiene: never panics; after the request-side hygiene the forwarder applies, no
//! hop-by-hop header, no header the client named in `Connection` and no spoofable header (in
//! any alias spelling) is left, and no Vigil cookie; `header_safe` always gives a valid header
//! value that decodes back to its input.
//!
//! Input: lines. The first is a comma-separated list of a route's extra identity header names
//! (`strip`); every other line is `name: value`, appended to the request's headers (invalid
//! names or values are skipped) and also given, whole, to `header_safe`.

#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use vigil::canonical::{alias_key, header_safe, is_spoofable, remove_hop_by_hop};
use vigil::identity::session;

/// RFC 9110 §7.6.1 plus the non-standard ones, written out again on purpose: a name dropped
/// from the module's list must fail here.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Names upstreams trust for identity, address or the original request, in alias form.
const SPOOFABLE: &[&str] = &[
    "forwarded",
    "x-forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-originating-ip",
    "x-remote-addr",
    "x-request-id",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-original-host",
    "x-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-client-cert",
    "x-ssl-client-cert",
    "ssl-client-cert",
];

/// How CGI-style upstreams see a name: lower case, `_` and `.` read as `-`.
fn alias(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' | b'.' => '-',
            b => char::from(b.to_ascii_lowercase()),
        })
        .collect()
}

fn spoofable(name: &str, extra: &[String]) -> bool {
    let a = alias(name);
    a.starts_with("x-vigil-")
        || a.starts_with("x-forwarded-")
        || SPOOFABLE.contains(&a.as_str())
        || extra.iter().any(|e| alias(e) == a)
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let extra: Vec<String> = lines
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .map(|l| {
            l.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| alias_key(s).into_owned())
                .collect()
        })
        .unwrap_or_default();

    let mut headers = HeaderMap::new();
    for line in lines {
        if let Ok(text) = std::str::from_utf8(line) {
            check_header_safe(text);
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = line[colon + 1..].trim_ascii();
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    for name in headers.keys() {
        let key = alias_key(name.as_str());
        assert_eq!(*key, alias(name.as_str()), "alias_key({name})");
        assert_eq!(alias_key(&key), key, "alias_key not idempotent for {name}");
        assert_eq!(
            is_spoofable(name, &extra),
            spoofable(name.as_str(), &extra),
            "is_spoofable({name}, {extra:?})"
        );
    }

    // The names the client listed as connection options.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect();
    let asked_upgrade = named.contains(&header::UPGRADE);
    let had_upgrade = headers.contains_key(header::UPGRADE);

    // What the forwarder does before adding its own headers.
    let upgrade = remove_hop_by_hop(&mut headers);
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_spoofable(n, &extra))
        .cloned()
        .collect();
    for n in spoofed {
        headers.remove(&n);
    }
    session::strip_from_request(&mut headers);

    assert_eq!(
        upgrade.is_some(),
        asked_upgrade && had_upgrade,
        "upgrade {upgrade:?}"
    );
    for name in headers.keys() {
        assert!(
            !HOP_BY_HOP.contains(&name.as_str()),
            "hop-by-hop {name} forwarded"
        );
        assert!(
            !named.contains(name),
            "{name} was named in Connection but forwarded"
        );
        assert!(
            !spoofable(name.as_str(), &extra),
            "spoofable {name} forwarded"
        );
    }
    for (name, _) in session::cookies(&headers) {
        assert!(
            !name.starts_with(session::VIGIL_COOKIE_PREFIX),
            "cookie {name:?} forwarded"
        );
    }
});

/// Output is visible ASCII or inner spaces, and percent-decodes back to the input.
fn check_header_safe(input: &str) {
    let out = header_safe(input);
    let b = out.as_bytes();
    assert!(
        out.to_str().is_ok(),
        "{input:?} -> {out:?}: not visible ASCII"
    );
    assert!(
        b.iter().all(|&c| (0x20..0x7f).contains(&c)),
        "{input:?} -> {out:?}: control or non-ASCII byte"
    );
    assert!(
        b.first() != Some(&b' ') && b.last() != Some(&b' '),
        "{input:?} -> {out:?}: space at an end"
    );
    assert!(
        HeaderValue::from_bytes(b).is_ok(),
        "{input:?}: invalid value"
    );
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("hex digits");
            decoded.push(u8::from_str_radix(hex, 16).expect("hex digits"));
            i += 3;
        } else {
            decoded.push(b[i]);
            i += 1;
        }
    }
    assert_eq!(
        decoded,
        input.as_bytes(),
        "{input:?} -> {out:?}: does not decode back"
    );
}
