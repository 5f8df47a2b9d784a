//! `[authz]`: the path on the proxy listener where other enforcement points (nginx
//! `auth_request`, Envoy ext_authz, Traefik forwardAuth) ask for Vigil's decision, and the
//! enforcement points allowed to ask, each known by its client certificate.

use super::compiler::Compiler;
use super::schema::AuthzSection;
use crate::policy::Pattern;
use crate::tls::PeerCert;
use std::sync::Arc;

/// `[authz]`, compiled.
#[derive(Debug)]
pub struct Authz {
    /// Exactly this path: the request to decide is named in headers; below it (after a `/`):
    /// the request to decide is the request itself, its path what follows.
    pub path: String,
    pub points: Vec<EnforcementPoint>,
}

/// One enforcement point allowed to ask for decisions.
#[derive(Debug)]
pub struct EnforcementPoint {
    /// Its name in the decision log and the metrics.
    pub name: Arc<str>,
    pub credential: Credential,
}

/// What an enforcement point's client certificate must carry.
#[derive(Debug)]
pub enum Credential {
    Spiffe(Pattern),
    /// Lower-case hex, no colons.
    Fingerprint(String),
}

impl Authz {
    /// The enforcement point whose certificate `peer` is, if any: the first that matches.
    pub fn point_for(&self, peer: &PeerCert) -> Option<&EnforcementPoint> {
        self.points.iter().find(|p| match &p.credential {
            Credential::Spiffe(pattern) => peer
                .spiffe_id
                .as_deref()
                .is_some_and(|id| pattern.matches(id)),
            Credential::Fingerprint(hex) => *hex == peer.fingerprint_hex,
        })
    }

    /// Where a request for `raw_path` stands: `None` when it is not for this endpoint;
    /// `Some(None)` for exactly the path; `Some(Some(rest))` below it, `rest` starting with `/`.
    pub fn claims<'p>(&self, raw_path: &'p str) -> Option<Option<&'p str>> {
        let rest = raw_path.strip_prefix(self.path.as_str())?;
        if rest.is_empty() {
            Some(None)
        } else if rest.starts_with('/') {
            Some(Some(rest))
        } else {
            None
        }
    }
}

/// Vigil's own endpoints, which `[authz] path` must not take over.
const ENDPOINTS: &[&str] = &[
    "login",
    "callback",
    "logout",
    "logged-out",
    "whoami",
    "jwks.json",
    "backchannel",
];

/// A fingerprint as written (hex, any case, colons allowed) in the form logs use.
fn fingerprint(text: &str) -> Option<String> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

impl Compiler<'_> {
    pub(super) fn authz(&mut self, section: Option<&AuthzSection>) -> Option<Arc<Authz>> {
        let section = section?;
        let before = self.reported();
        self.authz_path(&section.path);
        if section.enforcement_points.is_empty() {
            self.problem_help(
                "authz",
                "[authz] lists no enforcement point: nobody could ask for decisions",
                "add one, like enforcement_points = [{ name = \"nginx\", spiffe = \"spiffe://example.org/ns/ingress/sa/nginx\" }], or remove [authz]",
            );
        }
        let mut points: Vec<EnforcementPoint> = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for (i, point) in section.enforcement_points.iter().enumerate() {
            let at = format!("authz.enforcement_points.{i}");
            let name = &point.name;
            let well_formed = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !well_formed {
                self.problem_help(
                    &format!("{at}.name"),
                    format!("enforcement point name {name:?} is not usable in logs and metrics"),
                    "use 1 to 64 letters, digits, '-', '_' or '.'",
                );
            } else if names.contains(&name.as_str()) {
                self.problem(
                    &format!("{at}.name"),
                    format!("enforcement point name {name:?} is used twice"),
                );
            }
            names.push(name);
            if let Some(credential) = self.credential(&at, point) {
                points.push(EnforcementPoint {
                    name: Arc::from(name.as_str()),
                    credential,
                });
            }
        }
        (self.reported() == before).then(|| {
            Arc::new(Authz {
                path: section.path.clone(),
                points,
            })
        })
    }

    fn authz_path(&mut self, path: &str) {
        let canonical = crate::canonical::normalize_path(path)
            .is_ok_and(|p| p == path && !path.ends_with('/') && !path.contains('?'));
        let endpoint = path.strip_prefix("/.vigil/").unwrap_or("");
        let own = ENDPOINTS
            .iter()
            .any(|e| endpoint == *e || endpoint.starts_with(&format!("{e}/")));
        if !canonical || endpoint.is_empty() || own {
            self.problem_help(
                "authz.path",
                format!("{path:?} cannot be the decision endpoint's path"),
                "use a path under /.vigil/ that is none of Vigil's own endpoints, without a trailing slash, like \"/.vigil/authz\"",
            );
        }
    }

    fn credential(
        &mut self,
        at: &str,
        point: &super::schema::EnforcementPointSection,
    ) -> Option<Credential> {
        match (&point.spiffe, &point.fingerprint) {
            (Some(id), None) => {
                if !id.starts_with("spiffe://") {
                    self.problem_help(
                        &format!("{at}.spiffe"),
                        format!("{id:?} is not a SPIFFE ID (spiffe://trust-domain/path)"),
                        "write the SPIFFE ID of the enforcement point's client certificate",
                    );
                    return None;
                }
                self.pattern(&format!("{at}.spiffe"), id)
                    .map(Credential::Spiffe)
            }
            (None, Some(text)) => match fingerprint(text) {
                Some(hex) => Some(Credential::Fingerprint(hex)),
                None => {
                    self.problem_help(
                        &format!("{at}.fingerprint"),
                        format!("{text:?} is not a SHA-256 fingerprint"),
                        "write the 64 hex digits of the certificate's SHA-256 fingerprint (colons allowed), as `openssl x509 -noout -fingerprint -sha256` prints it",
                    );
                    None
                }
            },
            _ => {
                self.problem_help(
                    at,
                    "an enforcement point needs exactly one of `spiffe` and `fingerprint`",
                    "name its client certificate by its SPIFFE ID or by its SHA-256 fingerprint",
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Authz, fingerprint};

    #[test]
    fn the_endpoint_claims_its_path_and_what_is_below_it_only() {
        let authz = Authz {
            path: "/.vigil/authz".into(),
            points: Vec::new(),
        };
        assert_eq!(authz.claims("/.vigil/authz"), Some(None));
        assert_eq!(authz.claims("/.vigil/authz/"), Some(Some("/")));
        assert_eq!(authz.claims("/.vigil/authz/a/b"), Some(Some("/a/b")));
        assert_eq!(authz.claims("/.vigil/authzx"), None);
        assert_eq!(authz.claims("/.vigil/Authz"), None);
        assert_eq!(authz.claims("/app/.vigil/authz"), None);
    }

    #[test]
    fn fingerprints_are_read_as_openssl_and_vigil_write_them() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(fingerprint(&hex).as_deref(), Some(hex.as_str()));
        assert_eq!(fingerprint(&colons).as_deref(), Some(hex.as_str()));
        assert_eq!(fingerprint("00"), None);
        assert_eq!(fingerprint(&"zz".repeat(32)), None);
    }
}
