//! SPIFFE IDs: the identity of a workload certificate, in its URI SAN.

/// SPIFFE ID size limit from the SPIFFE-ID spec.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Trust domain size limit from the SPIFFE-ID spec.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Checks the shape of a SPIFFE ID per the SPIFFE-ID spec: `spiffe://`, a
/// trust domain of `[a-z0-9._-]` (at most 255 bytes), then an optional path
/// of non-empty `[A-Za-z0-9._-]` segments that are not `.` or `..`; no query,
/// fragment, port or userinfo; at most 2048 bytes. An ID without a path names
/// the trust domain itself and is accepted here (issuing a workload
/// certificate additionally requires a path).
///
/// The error is a human-readable reason, without the ID itself.
pub fn validate(s: &str) -> Result<(), String> {
    if s.len() > MAX_SPIFFE_ID_LEN {
        return Err(format!(
            "is {} bytes long; the limit is {MAX_SPIFFE_ID_LEN}",
            s.len()
        ));
    }
    let Some(rest) = s.strip_prefix("spiffe://") else {
        if s.get(..9)
            .is_some_and(|p| p.eq_ignore_ascii_case("spiffe://"))
        {
            return Err("scheme must be lower-case \"spiffe://\"".to_owned());
        }
        return Err("must start with \"spiffe://\"".to_owned());
    };
    if rest.contains('?') {
        return Err("must not contain a query ('?')".to_owned());
    }
    if rest.contains('#') {
        return Err("must not contain a fragment ('#')".to_owned());
    }
    let (trust_domain, path) = match rest.split_once('/') {
        Some((td, path)) => (td, Some(path)),
        None => (rest, None),
    };
    if trust_domain.is_empty() {
        return Err("trust domain is empty".to_owned());
    }
    if trust_domain.contains('@') {
        return Err("must not contain userinfo ('@')".to_owned());
    }
    if trust_domain.contains(':') {
        return Err("trust domain must not contain a port (':')".to_owned());
    }
    if let Some(c) = trust_domain
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "trust domain contains {c:?}; only a-z, 0-9, '.', '-' and '_' are allowed"
        ));
    }
    if trust_domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(format!(
            "trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes"
        ));
    }
    if let Some(path) = path {
        for segment in path.split('/') {
            if segment.is_empty() {
                return Err("path has an empty segment (double or trailing '/')".to_owned());
            }
            if segment == "." || segment == ".." {
                return Err("path must not contain '.' or '..' segments".to_owned());
            }
            if let Some(c) = segment
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
            {
                return Err(format!(
                    "path contains {c:?}; only letters, digits, '.', '-' and '_' are allowed"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let good = [
            "spiffe://vigil.test/ns/demo/sa/client",
            "spiffe://example.org",
            "spiffe://my_domain-1.example/a.b/c-d/E_F/..x/x..",
            "spiffe://a/b",
        ];
        for id in good {
            assert_eq!(validate(id), Ok(()), "{id}");
        }
        let long_path = format!("spiffe://a/{}", "x".repeat(MAX_SPIFFE_ID_LEN));
        let long_td = format!("spiffe://{}/x", "a".repeat(256));
        let bad: &[&str] = &[
            "",
            "http://vigil.test/x",
            "SPIFFE://vigil.test/x",
            "spiffe:/vigil.test/x",
            "spiffe://",
            "spiffe:///x",
            "spiffe://Vigil.test/x",
            "spiffe://vigil.test:8443/x",
            "spiffe://user@vigil.test/x",
            "spiffe://vigil.test/x?y=1",
            "spiffe://vigil.test/x#frag",
            "spiffe://vigil.test/",
            "spiffe://vigil.test//x",
            "spiffe://vigil.test/x/",
            "spiffe://vigil.test/./x",
            "spiffe://vigil.test/x/..",
            "spiffe://vigil.test/x%20y",
            "spiffe://vigil.test/x y",
            "spiffe://vigil.test/é",
            "spiffe://vigil.tést/x",
            &long_path,
            &long_td,
        ];
        for id in bad {
            assert!(validate(id).is_err(), "{id:?} should be rejected");
        }
        assert!(
            validate("SPIFFE://x/y")
                .expect_err("upper-case scheme")
                .contains("lower-case")
        );
        assert_eq!(
            validate(&format!(
                "spiffe://a/{}",
                "x".repeat(MAX_SPIFFE_ID_LEN - 11)
            )),
            Ok(())
        );
    }
}
