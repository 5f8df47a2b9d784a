//! Who a person or a service is, beyond the client certificate: browser sessions from an
//! OIDC login, and bearer access tokens for service-to-service calls.

pub mod oidc;
pub mod seal;
pub mod session;
pub mod verify;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A return path for after login: a path on this host, never an open redirect.
///
/// Anything that is not a plain absolute path after percent-decoding (`//host`, `/\host`,
/// `https://host`, control characters, or their encoded forms) becomes "/".
pub fn safe_return(rd: &str) -> String {
    let mut decoded = rd.to_owned();
    for _ in 0..3 {
        let next =
            url::form_urlencoded::parse(format!("x={}", decoded.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
        if next == decoded {
            break;
        }
        decoded = next;
    }
    let ok = decoded.starts_with('/')
        && !decoded.starts_with("//")
        && !decoded.contains('\\')
        && !decoded.chars().any(|c| c.is_control() || c.is_whitespace())
        && !rd.chars().any(|c| c.is_control() || c.is_whitespace());
    if ok { rd.to_owned() } else { "/".to_owned() }
}

/// `[session]`, compiled.
pub struct Sessions {
    pub ring: seal::KeyRing,
    pub lifetime: Duration,
    pub idle: Duration,
}

/// How an identity was established.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum Source {
    /// A browser session (OIDC login).
    Session {
        #[serde(default)]
        sid: String,
    },
    /// A bearer access token.
    Bearer {
        #[serde(default)]
        client_id: Option<String>,
        #[serde(default)]
        scopes: Vec<String>,
    },
}

impl Default for Source {
    fn default() -> Self {
        Source::Session { sid: String::new() }
    }
}

/// The person or service behind a request, as policy and upstreams see it (the `person` of a
/// facts document).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub subject: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Authentication methods (`amr`).
    #[serde(default)]
    pub amr: Vec<String>,
    /// True when `amr` holds a multi-factor method.
    #[serde(default)]
    pub mfa: bool,
    #[serde(default)]
    pub acr: Option<String>,
    /// The provider's risk claim, when it sends one.
    #[serde(default)]
    pub risk: Option<String>,
    #[serde(default)]
    pub claims: BTreeMap<String, serde_json::Value>,
    /// When the identity was last confirmed with the provider (Unix seconds).
    #[serde(default)]
    pub verified_at: i64,
    #[serde(default)]
    pub auth_time: Option<i64>,
    #[serde(default)]
    pub source: Source,
}

impl Identity {
    pub fn from_session(s: &session::Session, mfa_amr: &[String]) -> Self {
        Self {
            subject: s.sub.clone(),
            email: s.email.clone(),
            name: s.name.clone(),
            groups: s.groups.clone(),
            mfa: s.amr.iter().any(|m| mfa_amr.contains(m)),
            amr: s.amr.clone(),
            acr: s.acr.clone(),
            risk: s.risk.clone(),
            claims: s.claims.clone(),
            verified_at: s.verified_at,
            auth_time: s.auth_time,
            source: Source::Session { sid: s.sid.clone() },
        }
    }

    pub fn from_bearer(b: oidc::BearerClaims, groups_claim: &str) -> Self {
        let text = |n: &str| b.claims.get(n).and_then(|v| v.as_str()).map(str::to_owned);
        let groups = match b.claims.get(groups_claim) {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        Self {
            email: text("email"),
            name: text("name"),
            groups,
            amr: Vec::new(),
            mfa: false,
            acr: None,
            risk: None,
            verified_at: b.claims.get("iat").and_then(|v| v.as_i64()).unwrap_or(0),
            auth_time: None,
            claims: b.claims.clone().into_iter().collect(),
            subject: b.sub,
            source: Source::Bearer {
                client_id: b.client_id,
                scopes: b.scopes,
            },
        }
    }

    /// A claim by name, for rules and per-route headers: the well-known ones first, then the
    /// raw claims.
    pub fn claim(&self, name: &str) -> Vec<String> {
        match name {
            "sub" => vec![self.subject.clone()],
            "email" => self.email.iter().cloned().collect(),
            "name" => self.name.iter().cloned().collect(),
            "groups" => self.groups.clone(),
            "amr" => self.amr.clone(),
            "acr" => self.acr.iter().cloned().collect(),
            _ => match self.claims.get(name) {
                Some(serde_json::Value::String(s)) => vec![s.clone()],
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect(),
                Some(serde_json::Value::Null) | None => Vec::new(),
                Some(other) => vec![other.to_string()],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn return_paths_never_leave_the_host() {
        let cases = [
            ("/app/page?x=1", "/app/page?x=1"),
            ("/", "/"),
            ("", "/"),
            ("//evil.example", "/"),
            ("https://evil.example", "/"),
            ("/\\evil.example", "/"),
            ("\\\\evil.example", "/"),
            ("%2F%2Fevil.example", "/"),
            ("/%2F%2Fevil.example", "/"),
            ("%252F%252Fevil.example", "/"),
            ("/%5Cevil.example", "/"),
            ("/%09/evil.example", "/"),
            ("javascript:alert(1)", "/"),
            (" /x", "/"),
        ];
        for (input, want) in cases {
            assert_eq!(super::safe_return(input), want, "{input}");
        }
    }
}
