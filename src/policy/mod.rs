//! Who may do what on a route: a pure function from plain facts to a decision with reasons.
//!
//! Default deny: a route with no rules denies everything, and a request matching no rule is
//! denied with the reasons each rule gave.

pub mod pattern;

pub use pattern::Pattern;

use crate::identity::Identity;
use crate::posture::inventory::{Device, version_at_least};
use crate::tls::PeerCert;
use http::Method;
use ipnet::IpNet;
use std::net::IpAddr;

/// One `allow` entry: every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    pub spiffe: Vec<Pattern>,
    pub cert_subject: Vec<Pattern>,
    pub cert_san: Vec<Pattern>,
    pub cert_fingerprint: Vec<[u8; 32]>,
    pub methods: Vec<Method>,
    pub paths: Vec<Pattern>,
    pub networks: Vec<IpNet>,
    /// Email or subject patterns, made with [`Pattern::user`] (no wildcard covers `@`).
    pub users: Vec<Pattern>,
    /// Lower-case email domains, compared with the domain of a well-formed [`Address`].
    pub email_domains: Vec<String>,
    pub groups: Vec<String>,
    pub mfa: bool,
    /// Claim name and allowed values.
    pub claims: Vec<(String, Vec<String>)>,
    /// What the inventory must say about the device.
    pub device: Option<DeviceRequirement>,
    /// Minimum OS versions by OS name; an OS not listed is refused.
    pub min_os: Vec<(String, String)>,
    /// Maximum age of the device's last check-in, in seconds.
    pub max_check_in_age: Option<u64>,
}

/// `device = "compliant" | "managed" | "known" | "any"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequirement {
    Compliant,
    Managed,
    Known,
    Any,
}

impl DeviceRequirement {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "compliant" => Self::Compliant,
            "managed" => Self::Managed,
            "known" => Self::Known,
            "any" => Self::Any,
            _ => return None,
        })
    }
}

impl Rule {
    /// True when the rule needs the device inventory.
    pub fn needs_inventory(&self) -> bool {
        self.device.is_some_and(|d| d != DeviceRequirement::Any)
            || !self.min_os.is_empty()
            || self.max_check_in_age.is_some()
    }

    /// True when the rule says something about the person, so it needs a login.
    pub fn needs_identity(&self) -> bool {
        !self.users.is_empty()
            || !self.email_domains.is_empty()
            || !self.groups.is_empty()
            || self.mfa
            || !self.claims.is_empty()
    }
}

/// A route's rules, in the order written.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub rules: Vec<Rule>,
}

/// What policy gets to see of a request. Everything here has already been verified or
/// normalised; nothing comes straight from client-controlled text.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    /// The normalised path, the same one that is forwarded.
    pub path: &'a str,
    pub client_ip: IpAddr,
    pub peer: &'a PeerCert,
    /// The person or service beyond the certificate, when the route establishes one.
    pub identity: Option<&'a Identity>,
    /// The inventory's record of the device; `None` when unknown or stale.
    pub device: Option<&'a Device>,
}

/// The outcome, with the reasons that go into the decision log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// Index of the rule that allowed the request.
    pub rule: Option<usize>,
    pub reasons: Vec<String>,
}

impl Decision {
    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            allow: false,
            rule: None,
            reasons: vec![reason.into()],
        }
    }
}

/// Evaluates `policy` for `facts`. Pure: no clock, no I/O, no shared state.
pub fn evaluate(policy: &Policy, facts: &RequestFacts<'_>) -> Decision {
    if policy.rules.is_empty() {
        return Decision::deny("route has no allow rules");
    }
    let mut reasons = Vec::with_capacity(policy.rules.len());
    for (i, rule) in policy.rules.iter().enumerate() {
        match rule.check(facts) {
            Ok(()) => {
                return Decision {
                    allow: true,
                    rule: Some(i),
                    reasons: vec![format!("allowed by rule {}", i + 1)],
                };
            }
            Err(why) => reasons.push(format!("rule {}: {why}", i + 1)),
        }
    }
    Decision {
        allow: false,
        rule: None,
        reasons,
    }
}

impl Rule {
    /// `Err` names the first condition that does not hold.
    fn check(&self, f: &RequestFacts<'_>) -> Result<(), String> {
        if !self.spiffe.is_empty() {
            match &f.peer.spiffe_id {
                None => return Err("client certificate has no SPIFFE ID".into()),
                Some(id) if !self.spiffe.iter().any(|p| p.matches(id)) => {
                    return Err(format!("SPIFFE ID {id} not allowed"));
                }
                Some(_) => {}
            }
        }
        if !self.cert_subject.is_empty() {
            let cn = f.peer.common_name.as_deref().unwrap_or("");
            if !self.cert_subject.iter().any(|p| p.matches(cn)) {
                return Err(format!("certificate subject CN {cn:?} not allowed"));
            }
        }
        if !self.cert_san.is_empty()
            && !f
                .peer
                .sans()
                .any(|san| self.cert_san.iter().any(|p| p.matches(san)))
        {
            return Err("no certificate SAN allowed".into());
        }
        if !self.cert_fingerprint.is_empty() && !self.cert_fingerprint.contains(&f.peer.fingerprint)
        {
            return Err("certificate fingerprint not allowed".into());
        }
        if !self.methods.is_empty() && !self.methods.contains(f.method) {
            return Err(format!("method {} not allowed", f.method));
        }
        if !self.paths.is_empty() && !self.paths.iter().any(|p| p.matches(f.path)) {
            return Err(format!("path {} not allowed", f.path));
        }
        if !self.networks.is_empty() && !self.networks.iter().any(|n| n.contains(&f.client_ip)) {
            return Err(format!(
                "source address {} not in allowed networks",
                f.client_ip
            ));
        }
        if self.needs_inventory() {
            self.check_device(f.device)?;
        }
        if self.needs_identity() {
            self.check_identity(f.identity)?;
        }
        Ok(())
    }

    fn check_device(&self, device: Option<&Device>) -> Result<(), String> {
        let Some(d) = device else {
            return Err("device unknown to the inventory".into());
        };
        match self.device {
            Some(DeviceRequirement::Compliant) if !d.compliant => {
                return Err("device not compliant".into());
            }
            Some(DeviceRequirement::Managed) if !d.managed => {
                return Err("device not managed".into());
            }
            _ => {}
        }
        if !self.min_os.is_empty() {
            let Some(os) = &d.os else {
                return Err("device OS unknown".into());
            };
            match self
                .min_os
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(&os.name))
            {
                None => return Err(format!("OS {} not allowed", os.name)),
                Some((_, min)) if !version_at_least(&os.version, min) => {
                    return Err(format!("{} {} older than {min}", os.name, os.version));
                }
                Some(_) => {}
            }
        }
        if let Some(max) = self.max_check_in_age {
            match d.check_in_age(std::time::SystemTime::now()) {
                Some(age) if age <= max => {}
                _ => return Err("device check-in too old".into()),
            }
        }
        Ok(())
    }

    fn check_identity(&self, identity: Option<&Identity>) -> Result<(), String> {
        let Some(who) = identity else {
            return Err("no signed-in identity".into());
        };
        // Only a well-formed address is compared; any other email is as if there were none.
        let address = who.email.as_deref().and_then(Address::parse);
        if !self.users.is_empty()
            && !self.users.iter().any(|p| {
                p.matches(&who.subject) || address.as_ref().is_some_and(|a| p.matches(a.text))
            })
        {
            return Err(format!(
                "user {} not allowed",
                who.email.as_deref().unwrap_or(&who.subject)
            ));
        }
        if !self.email_domains.is_empty() {
            match &address {
                None if who.email.is_some() => {
                    return Err("email is not a well-formed address".into());
                }
                Some(a)
                    if self
                        .email_domains
                        .iter()
                        .any(|d| d.eq_ignore_ascii_case(a.domain)) => {}
                _ => return Err("email domain not allowed".into()),
            }
        }
        if !self.groups.is_empty() && !self.groups.iter().any(|g| who.groups.contains(g)) {
            return Err(format!(
                "not in any of the groups {}",
                self.groups.join(", ")
            ));
        }
        if self.mfa && !who.mfa {
            return Err("multi-factor login required".into());
        }
        for (claim, allowed) in &self.claims {
            let values = who.claim(claim);
            if !values.iter().any(|v| allowed.contains(v)) {
                return Err(format!("claim {claim} not allowed"));
            }
        }
        Ok(())
    }
}

/// An email address as policy compares it: exactly one `@`, a local part of at least one
/// character without whitespace or control characters, and a domain that is a plain DNS name:
/// ASCII letters, digits and `-` in dot-separated labels of 1 to 63 characters, at most 253 in all,
/// no leading or trailing dot or hyphen (so no `corp.com.`, no `[192.0.2.1]` literal, no
/// Unicode form: an internationalised domain must arrive in its `xn--` form). Anything else
/// (`a@evil.com@corp.com`, `"a@b"@corp.com`, `@corp.com`, `a@corp..com`) is not an address, and
/// matches no `users` or `email_domains` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address<'a> {
    /// The whole address, as the provider sent it.
    pub text: &'a str,
    pub local: &'a str,
    /// As sent; compare it case-insensitively.
    pub domain: &'a str,
}

impl<'a> Address<'a> {
    pub fn parse(text: &'a str) -> Option<Self> {
        let (local, domain) = text.split_once('@')?;
        if local.is_empty() || local.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        let label = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        // `split` on a domain with a second `@` leaves a label containing it, which fails.
        if domain.len() > 253 || !domain.split('.').all(label) {
            return None;
        }
        Some(Self {
            text,
            local,
            domain,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(spiffe: Option<&str>, cn: &str) -> PeerCert {
        PeerCert {
            subject: format!("CN={cn}"),
            common_name: Some(cn.into()),
            issuer: "CN=ca".into(),
            dns: vec![],
            emails: vec![],
            uris: spiffe.map(|s| vec![s.to_owned()]).unwrap_or_default(),
            spiffe_id: spiffe.map(str::to_owned),
            serial: vec![1],
            fingerprint: [7; 32],
            fingerprint_hex: "07".repeat(32),
            not_before: 0,
            not_after: i64::MAX,
        }
    }

    fn rule(f: impl FnOnce(&mut Rule)) -> Rule {
        let mut r = Rule::default();
        f(&mut r);
        r
    }

    #[test]
    fn table() {
        let web = peer(Some("spiffe://example.org/ns/frontend/sa/web"), "web");
        let batch = peer(Some("spiffe://example.org/ns/batch/sa/job"), "job");
        let laptop = peer(None, "demo-laptop");
        let frontend = rule(|r| {
            r.spiffe = vec![Pattern::new("spiffe://example.org/ns/frontend/sa/*").unwrap()];
            r.methods = vec![Method::GET, Method::POST];
            r.paths = vec![Pattern::new("/api/**").unwrap()];
            r.networks = vec!["127.0.0.0/8".parse().unwrap()];
        });
        let laptops = rule(|r| r.cert_subject = vec![Pattern::new("*-laptop").unwrap()]);
        let policy = Policy {
            rules: vec![frontend, laptops],
        };
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let remote: IpAddr = "192.0.2.1".parse().unwrap();
        let cases: &[(&PeerCert, Method, &str, IpAddr, bool, &str)] = &[
            (
                &web,
                Method::GET,
                "/api/x",
                local,
                true,
                "allowed by rule 1",
            ),
            (
                &web,
                Method::DELETE,
                "/api/x",
                local,
                false,
                "method DELETE not allowed",
            ),
            (
                &web,
                Method::GET,
                "/admin",
                local,
                false,
                "path /admin not allowed",
            ),
            (
                &web,
                Method::GET,
                "/api/x",
                remote,
                false,
                "not in allowed networks",
            ),
            (
                &batch,
                Method::GET,
                "/api/x",
                local,
                false,
                "SPIFFE ID spiffe://example.org/ns/batch/sa/job not allowed",
            ),
            (
                &laptop,
                Method::DELETE,
                "/anything",
                remote,
                true,
                "allowed by rule 2",
            ),
        ];
        for (peer, method, path, ip, allow, reason) in cases {
            let d = evaluate(
                &policy,
                &RequestFacts {
                    method,
                    path,
                    client_ip: *ip,
                    peer,
                    identity: None,
                    device: None,
                },
            );
            assert_eq!(d.allow, *allow, "{method} {path} {:?}", d.reasons);
            assert!(
                d.reasons.iter().any(|r| r.contains(reason)),
                "{method} {path}: {:?} lacks {reason}",
                d.reasons
            );
        }
    }

    #[test]
    fn no_rules_denies() {
        let p = peer(None, "x");
        let d = evaluate(
            &Policy::default(),
            &RequestFacts {
                method: &Method::GET,
                path: "/",
                client_ip: "127.0.0.1".parse().unwrap(),
                peer: &p,
                identity: None,
                device: None,
            },
        );
        assert!(!d.allow);
    }

    fn person(subject: &str, email: Option<&str>) -> Identity {
        Identity {
            subject: subject.into(),
            email: email.map(str::to_owned),
            name: None,
            groups: vec![],
            amr: vec![],
            mfa: false,
            acr: None,
            risk: None,
            claims: Default::default(),
            verified_at: 0,
            auth_time: None,
            source: crate::identity::Source::Session { sid: "s".into() },
        }
    }

    fn decide(rule: &Rule, who: &Identity) -> Decision {
        let p = peer(None, "laptop");
        evaluate(
            &Policy {
                rules: vec![rule.clone()],
            },
            &RequestFacts {
                method: &Method::GET,
                path: "/",
                client_ip: "127.0.0.1".parse().unwrap(),
                peer: &p,
                identity: Some(who),
                device: None,
            },
        )
    }

    #[test]
    fn addresses() {
        let ok = [
            ("alice@corp.com", "alice", "corp.com"),
            ("a.b+tag@eu.CORP.com", "a.b+tag", "eu.CORP.com"),
            ("x@xn--bcher-kva.de", "x", "xn--bcher-kva.de"),
            ("x@localhost", "x", "localhost"),
        ];
        for (text, local, domain) in ok {
            assert_eq!(
                Address::parse(text),
                Some(Address {
                    text,
                    local,
                    domain
                }),
                "{text}"
            );
        }
        let bad = [
            "a@evil.com@corp.com",
            "\"a@b\"@corp.com",
            "@corp.com",
            "alice",
            "alice@",
            "alice@corp.com.",
            "alice@.corp.com",
            "alice@corp..com",
            "alice@-corp.com",
            "alice@corp-.com",
            "alice@[192.0.2.1]",
            "alice@bücher.de",
            "alice@corp.com ",
            "al ice@corp.com",
            "alice\n@corp.com",
            "alice@corp_x.com",
        ];
        for text in bad {
            assert_eq!(Address::parse(text), None, "{text}");
        }
        let long = format!("a@{}.com", "x".repeat(63).repeat(4));
        assert_eq!(Address::parse(&long), None);
    }

    #[test]
    fn email_domains_compare_well_formed_addresses_only() {
        let corp = rule(|r| r.email_domains = vec!["corp.com".into()]);
        let cases = [
            (Some("alice@corp.com"), true, "allowed by rule 1"),
            (Some("alice@CORP.Com"), true, "allowed by rule 1"),
            (
                Some("a@evil.com@corp.com"),
                false,
                "email is not a well-formed address",
            ),
            (
                Some("alice@corp.com."),
                false,
                "email is not a well-formed address",
            ),
            (Some("alice@eu.corp.com"), false, "email domain not allowed"),
            (Some("alice@evil.com"), false, "email domain not allowed"),
            (None, false, "email domain not allowed"),
        ];
        for (email, allow, reason) in cases {
            let d = decide(&corp, &person("sub-1", email));
            assert_eq!(d.allow, allow, "{email:?}: {:?}", d.reasons);
            assert!(
                d.reasons.iter().any(|r| r.contains(reason)),
                "{email:?}: {:?} lacks {reason}",
                d.reasons
            );
        }
    }

    #[test]
    fn user_wildcards_never_cross_at() {
        let users = |p: &[&str]| {
            rule(|r| {
                r.users = p.iter().map(|p| Pattern::user(p).unwrap()).collect();
            })
        };
        let cases = [
            (&["*@corp.com"][..], "sub-1", Some("alice@corp.com"), true),
            (&["*@corp.com"], "sub-1", Some("a@evil.com@corp.com"), false),
            // A malformed email is not compared at all, even by a pattern spelling it out.
            (
                &["*@*@corp.com"],
                "sub-1",
                Some("a@evil.com@corp.com"),
                false,
            ),
            (&["alice*"], "sub-1", Some("alice@evil.com"), false),
            (&["alice*"], "alice-admin", Some("x@corp.com"), true),
            (&["alice@*"], "sub-1", Some("alice@corp.com"), true),
            (&["alice@corp.com"], "sub-1", Some("alice@corp.com"), true),
            (&["alice@corp.com"], "alice@corp.com", None, true),
            (&["*@corp.com"], "a@evil.com@corp.com", None, false),
            (&["shop-frontend"], "shop-frontend", None, true),
        ];
        for (patterns, subject, email, allow) in cases {
            let d = decide(&users(patterns), &person(subject, email));
            assert_eq!(
                d.allow, allow,
                "{patterns:?} {subject} {email:?}: {:?}",
                d.reasons
            );
        }
    }
}
