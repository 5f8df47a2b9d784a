//! One entry of a route's `allow` list, compiled into a [`Rule`]: patterns parsed, values
//! checked, every problem reported at the list item it is about.

use super::compiler::Compiler;
use super::schema::RuleSection;
use crate::canonical::normalize_host;
use crate::policy::window::Window;
use crate::policy::{DeviceRequirement, Pattern, Rule};

impl Compiler<'_> {
    /// The rule at `at` (`route.N.allow.J`).
    pub(super) fn rule(&mut self, at: &str, r: &RuleSection) -> Rule {
        let mut rule = Rule::default();
        self.certificate_rule(at, r, &mut rule);
        for (i, m) in r.methods.iter().enumerate() {
            match http::Method::from_bytes(m.as_bytes()) {
                Ok(method) if m.bytes().all(|b| b.is_ascii_uppercase()) => {
                    rule.methods.push(method)
                }
                _ => self.problem_help(
                    &format!("{at}.methods.{i}"),
                    format!("invalid method {m:?}"),
                    "methods are upper case, like \"GET\"",
                ),
            }
        }
        for (i, p) in r.paths.iter().enumerate() {
            if !p.starts_with('/') {
                self.problem(
                    &format!("{at}.paths.{i}"),
                    format!("path pattern {p:?} must start with /"),
                );
                continue;
            }
            if let Some(pat) = self.pattern(&format!("{at}.paths.{i}"), p) {
                rule.paths.push(pat);
            }
        }
        rule.networks = self.networks(&format!("{at}.networks"), &r.networks);
        self.identity_rule(at, r, &mut rule);
        rule.headers = self.header_conditions(at, r);
        rule.window = self.window(at, r);
        rule.grant = r.grant.unwrap_or(false);
        rule
    }

    /// `headers = { name = [patterns] }`: names are HTTP header names (any case, compared
    /// lower-case), each with at least one pattern.
    fn header_conditions(&mut self, at: &str, r: &RuleSection) -> Vec<(String, Vec<Pattern>)> {
        let mut conditions = Vec::with_capacity(r.headers.len());
        for (name, patterns) in &r.headers {
            let key = format!("{at}.headers.{name}");
            let Ok(header) = http::HeaderName::from_bytes(name.as_bytes()) else {
                self.problem(&key, format!("{name:?} is not an HTTP header name"));
                continue;
            };
            let lower = header.as_str();
            if lower.starts_with("x-vigil-")
                || lower.starts_with("x-forwarded-")
                || lower == "forwarded"
            {
                self.problem_help(
                    &key,
                    format!("{name} is a header Vigil sets for the upstream: the rule would match what the client claims"),
                    "decide on the identity itself (spiffe, users, groups, ...), not on the header that carries it upstream",
                );
                continue;
            }
            if lower == "host" {
                self.problem_help(
                    &key,
                    "the host is matched by the route's host, not by a header rule",
                    "HTTP/2 requests carry no Host header: give the route its host",
                );
                continue;
            }
            if patterns.is_empty() {
                self.problem_help(
                    &key,
                    format!("header {name} has no patterns: it would never match"),
                    "list the values it may have, like [\"Bearer *\"]",
                );
                continue;
            }
            let compiled: Vec<Pattern> = patterns
                .iter()
                .enumerate()
                .filter_map(|(i, p)| self.pattern(&format!("{key}.{i}"), p))
                .collect();
            conditions.push((header.as_str().to_owned(), compiled));
        }
        conditions
    }

    /// `hours`, `days` and `timezone`: a window when either of the first two is given.
    fn window(&mut self, at: &str, r: &RuleSection) -> Option<Window> {
        if r.hours.is_none() && r.days.is_empty() {
            if r.timezone.is_some() {
                self.problem(
                    &format!("{at}.timezone"),
                    "timezone applies to hours and days, and the rule has neither",
                );
            }
            return None;
        }
        match Window::new(r.hours.as_deref(), &r.days, r.timezone.as_deref()) {
            Ok(window) => Some(window),
            Err((key, message)) => {
                self.problem(&format!("{at}.{key}"), message);
                None
            }
        }
    }

    /// The conditions on the client certificate: SPIFFE ID, subject, SANs, fingerprint.
    fn certificate_rule(&mut self, at: &str, r: &RuleSection, rule: &mut Rule) {
        for (i, p) in r.spiffe.iter().enumerate() {
            if !p.starts_with("spiffe://") {
                self.problem(
                    &format!("{at}.spiffe.{i}"),
                    format!("{p:?} is not a SPIFFE ID pattern (spiffe://trust-domain/path)"),
                );
                continue;
            }
            if let Some(pat) = self.pattern(&format!("{at}.spiffe.{i}"), p) {
                rule.spiffe.push(pat);
            }
        }
        for (i, p) in r.cert_subject.iter().enumerate() {
            if let Some(pat) = self.pattern(&format!("{at}.cert_subject.{i}"), p) {
                rule.cert_subject.push(pat);
            }
        }
        for (i, p) in r.cert_san.iter().enumerate() {
            if let Some(pat) = self.pattern(&format!("{at}.cert_san.{i}"), p) {
                rule.cert_san.push(pat);
            }
        }
        for (i, f) in r.cert_fingerprint.iter().enumerate() {
            let parsed = crate::hex::parse_serial(f)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok());
            match parsed {
                Some(fp) => rule.cert_fingerprint.push(fp),
                None => self.problem(
                    &format!("{at}.cert_fingerprint.{i}"),
                    format!("{f:?} is not a SHA-256 fingerprint (64 hex digits)"),
                ),
            }
        }
    }

    /// The conditions on the person (or bearer subject) and their device.
    fn identity_rule(&mut self, at: &str, r: &RuleSection, rule: &mut Rule) {
        for (i, p) in r.users.iter().enumerate() {
            match Pattern::user(p) {
                Ok(pat) => rule.users.push(pat),
                Err(e) => self.problem(&format!("{at}.users.{i}"), e),
            }
        }
        for (i, d) in r.email_domains.iter().enumerate() {
            let d = d.trim_start_matches('@').to_ascii_lowercase();
            if d.is_empty() || d.contains('@') || normalize_host(&d).is_err() {
                self.problem(
                    &format!("{at}.email_domains.{i}"),
                    format!("{d:?} is not a domain"),
                );
            } else {
                rule.email_domains.push(d);
            }
        }
        rule.groups = r.groups.clone();
        rule.mfa = r.mfa.unwrap_or(false);
        if let Some(d) = &r.device {
            match DeviceRequirement::parse(d) {
                Some(req) => rule.device = Some(req),
                None => self.problem_help(
                    &format!("{at}.device"),
                    format!("unknown device requirement {d:?}"),
                    "\"compliant\", \"managed\", \"known\" or \"any\"",
                ),
            }
        }
        rule.min_os = r
            .min_os
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        rule.max_check_in_age = r.max_check_in_age.map(|d| d.0.as_secs());
        rule.claims = r
            .claims
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }
}
