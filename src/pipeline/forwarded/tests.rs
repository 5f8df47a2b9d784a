//! Every spelling the enforcement points use, and every bad input refused with its reason.

use super::*;
use http::HeaderValue;

fn pem() -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    rcgen::CertificateParams::new(vec!["client".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate")
        .pem()
}

/// URL-escapes every byte that is not unreserved, as nginx's `$ssl_client_escaped_cert` does.
fn escaped(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    map
}

/// Header names and values, in order.
type Pairs = Vec<(String, String)>;

fn nginx(extra: &[(&str, &str)]) -> Pairs {
    let mut pairs = vec![
        ("x-original-uri".to_owned(), "/a/./b?x=1".to_owned()),
        ("x-original-method".to_owned(), "POST".to_owned()),
        ("x-forwarded-host".to_owned(), "App.Example.org".to_owned()),
        ("x-forwarded-for".to_owned(), "198.51.100.7".to_owned()),
        ("x-ssl-client-cert".to_owned(), escaped(&pem())),
    ];
    for (name, value) in extra {
        pairs.retain(|(n, _)| n != name);
        if !value.is_empty() {
            pairs.push(((*name).to_owned(), (*value).to_owned()));
        }
    }
    pairs
}

fn read_pairs(pairs: &[(String, String)], below: Option<&str>) -> Result<Forwarded, Reason> {
    let borrowed: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    read(&headers(&borrowed), &Method::GET, below, None, Some(8192))
}

#[test]
fn nginx_spellings_are_read_and_canonicalised() {
    let f = read_pairs(&nginx(&[]), None).expect("read");
    assert_eq!(f.method, Method::POST);
    assert_eq!(f.host, "app.example.org");
    assert_eq!(f.path, "/a/b");
    assert_eq!(f.query.as_deref(), Some("x=1"));
    assert_eq!(f.client, "198.51.100.7".parse::<IpAddr>().expect("ip"));
    assert_eq!(f.chain.len(), 1);
}

#[test]
fn traefik_spellings_are_read() {
    let der = pem();
    let body: String = der.lines().filter(|l| !l.starts_with("-----")).collect();
    let pairs: Vec<(String, String)> = [
        ("x-forwarded-method", "DELETE"),
        ("x-forwarded-uri", "/items/7"),
        ("x-forwarded-host", "app.example.org"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-for", "10.9.9.9, 203.0.113.5"),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
    .chain([("x-forwarded-tls-client-cert".to_owned(), escaped(&body))])
    .collect();
    let f = read_pairs(&pairs, None).expect("read");
    assert_eq!(f.method, Method::DELETE);
    assert_eq!(f.path, "/items/7");
    // The last address is the one the enforcement point saw; the ones before, the client's.
    assert_eq!(f.client, "203.0.113.5".parse::<IpAddr>().expect("ip"));
    assert_eq!(f.chain.len(), 1);
}

#[test]
fn envoy_names_the_request_by_its_own_path_and_xfcc() {
    let cert = escaped(&pem());
    let xfcc = format!(
        "By=spiffe://a/b;Hash=00;Cert=\"{}\",By=spiffe://c/d;Hash=11;Subject=\"CN=x,O=y\";Cert=\"{cert}\"",
        escaped("not a certificate")
    );
    let map = headers(&[
        ("host", "app.example.org"),
        ("x-forwarded-for", "192.0.2.1"),
        ("x-forwarded-client-cert", &xfcc),
    ]);
    let f = read(&map, &Method::PUT, Some("/orders/%7e1"), Some("q=2"), None).expect("read");
    assert_eq!(f.method, Method::PUT);
    assert_eq!(f.path, "/orders/~1");
    assert_eq!(f.query.as_deref(), Some("q=2"));
    assert_eq!(
        f.chain.len(),
        1,
        "the last element's certificate is the one read"
    );
}

/// Each of `cases` is refused with its code and a reason that says so.
fn refused(cases: Vec<(Pairs, Code, &str)>) {
    for (pairs, code, text) in cases {
        let why = read_pairs(&pairs, None).expect_err("refused");
        assert_eq!(why.code, code, "{why:?} for {pairs:?}");
        assert!(why.text.contains(text), "{why:?} should say {text:?}");
    }
}

#[test]
fn every_bad_forwarded_fact_is_refused_with_its_reason() {
    refused(vec![
        (
            nginx(&[("x-original-uri", "")]),
            Code::AuthzForwardedInvalid,
            "no forwarded URI",
        ),
        (
            nginx(&[("x-original-uri", "/../etc")]),
            Code::AuthzForwardedPath,
            "climbs above the root",
        ),
        (
            nginx(&[("x-original-uri", "/a%2fb")]),
            Code::AuthzForwardedPath,
            "forwarded path",
        ),
        (
            nginx(&[("x-original-uri", "/a#b")]),
            Code::AuthzForwardedPath,
            "fragment",
        ),
        (
            nginx(&[("x-original-uri", "http://evil/a")]),
            Code::AuthzForwardedPath,
            "forwarded path",
        ),
        (
            nginx(&[("x-forwarded-uri", "/other")]),
            Code::AuthzForwardedInvalid,
            "disagree",
        ),
        (
            nginx(&[("x-original-method", "")]),
            Code::AuthzForwardedInvalid,
            "no forwarded method",
        ),
        (
            nginx(&[("x-original-method", "GE T")]),
            Code::AuthzForwardedInvalid,
            "not a method",
        ),
        (
            nginx(&[("x-original-method", "CONNECT")]),
            Code::AuthzForwardedInvalid,
            "CONNECT",
        ),
        (
            nginx(&[("x-forwarded-host", "")]),
            Code::AuthzForwardedInvalid,
            "no forwarded host",
        ),
        (
            nginx(&[("x-forwarded-host", "a.example, b.example")]),
            Code::AuthzForwardedInvalid,
            "more than one host",
        ),
        (
            nginx(&[("x-forwarded-host", "a b")]),
            Code::AuthzForwardedInvalid,
            "forwarded host",
        ),
        (
            nginx(&[("x-forwarded-for", "")]),
            Code::AuthzForwardedInvalid,
            "no forwarded client address",
        ),
        (
            nginx(&[("x-forwarded-for", "somewhere")]),
            Code::AuthzForwardedInvalid,
            "not an IP address",
        ),
    ]);
}

#[test]
fn every_bad_forwarded_certificate_is_refused_with_its_reason() {
    refused(vec![
        (
            nginx(&[("x-ssl-client-cert", "")]),
            Code::AuthzCertificateMissing,
            "no forwarded client certificate",
        ),
        (
            nginx(&[("x-ssl-client-cert", "%zz")]),
            Code::AuthzCertificateInvalid,
            "broken %-escape",
        ),
        (
            nginx(&[("x-ssl-client-cert", "%2B1")]),
            Code::AuthzCertificateInvalid,
            "neither PEM nor base64",
        ),
        (
            nginx(&[(
                "x-ssl-client-cert",
                "-----BEGIN%20CERTIFICATE-----%0Agarbage",
            )]),
            Code::AuthzCertificateInvalid,
            "not a PEM certificate",
        ),
    ]);
}

#[test]
fn ambiguity_is_refused_not_guessed() {
    let mut pairs = nginx(&[]);
    pairs.push(("x-forwarded-tls-client-cert".to_owned(), "AAAA".to_owned()));
    let why = read_pairs(&pairs, None).expect_err("two certificate headers");
    assert!(
        why.text
            .contains("more than one forwarded client certificate header")
    );

    let mut pairs = nginx(&[]);
    pairs.push(("x-original-uri".to_owned(), "/again".to_owned()));
    let why = read_pairs(&pairs, None).expect_err("two URIs");
    assert!(
        why.text.contains("x-original-uri given more than once"),
        "{why:?}"
    );

    let why = read_pairs(&nginx(&[]), Some("/below")).expect_err("path and header");
    assert!(why.text.contains("named both by the path"), "{why:?}");

    let map = headers(&[
        ("host", "app.example.org"),
        ("x-forwarded-for", "192.0.2.1"),
        ("x-forwarded-client-cert", "By=spiffe://a/b;Hash=00"),
    ]);
    let why = read(&map, &Method::GET, Some("/"), None, None).expect_err("no Cert");
    assert_eq!(why.code, Code::AuthzCertificateMissing);
}

#[test]
fn a_long_forwarded_target_is_refused() {
    let long = format!("/{}", "a".repeat(100));
    let pairs = nginx(&[("x-original-uri", &long)]);
    let borrowed: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let why = read(&headers(&borrowed), &Method::GET, None, None, Some(64)).expect_err("long");
    assert!(why.text.contains("over the limit of 64"), "{why:?}");
}
